"""Tests of lib.report: the figures of step 06, the run report (inputs present, absent, too few) and run comparison."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib.runs import write_json, write_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONDITIONS = ("CF", "MT", "FT-CoT")


def make_run(root: Path, name: str = "synthetic", n_items: int = 40, seeds=(0,), test_sets=("csqa", "arc-easy"),
             with_optional: bool = True, rng_seed: int = 0) -> Path:
    """A run folder with what steps 03-05 write: items, runs, losses, acceptance, manifest (and ratings, metrics)."""
    rng = np.random.default_rng(rng_seed)
    run_dir = root / name
    p_right = {"CF": 0.4, "MT": 0.75, "FT-CoT": 0.55}
    students = {"gpt2": 124_000_000, "gpt2-medium": 355_000_000}
    items, runs, ratings = [], [], []
    for cond in CONDITIONS:
        for student, size in students.items():
            for seed in seeds:
                run = f"{cond}__{student}__seed{seed}"
                runs.append({"run": run, "condition": cond, "student": student, "seed": seed, "n_params": size})
                write_jsonl(run_dir / "04_training" / run / "losses.jsonl",
                            [{"run": run, "step": s, "term": "total", "loss": 3 / s} for s in range(1, 11)])
                for ts in test_sets:
                    for i in range(n_items):
                        cec = float(rng.uniform(0.6, 0.95))
                        row = {"run": run, "condition": cond, "student": student, "seed": seed, "test_set": ts,
                               "item_id": f"{ts}-{i}", "prediction": 0, "correct": int(rng.random() < p_right[cond]),
                               "unparseable": 0, "rationale": "r", "rationale_len": int(rng.integers(5, 60)),
                               "output": "o", "cec": cec, "cec_fc": cec, "cec_bf": cec, "seconds": 0.1}
                        if with_optional:
                            row.update(bleu=cec * 0.3 + rng.random() * 0.1, rouge_l=cec * 0.5, bertscore=cec * 0.9)
                            ratings += [{"run": run, "item_id": row["item_id"], "rater": rater,
                                         "completeness": int(rng.integers(1, 6)),
                                         "contrastiveness": int(rng.integers(1, 6)),
                                         "soundness": int(rng.integers(1, 6)), "justification": "ok"}
                                        for rater in ("judge:gpt-4o", "h01")]
                        items.append(row)
    write_jsonl(run_dir / "05_evaluation" / "items.jsonl", items)
    if with_optional:
        write_jsonl(run_dir / "05_evaluation" / "ratings.jsonl", ratings)
        write_jsonl(run_dir / "05_evaluation" / "causal_items.jsonl",
                    [{"run": "CAUSAL__gpt2__seed0", "condition": "CAUSAL", "student": "gpt2", "seed": 0,
                      "item_id": f"claim-{i}", "cec": 0.5, "cec_fc": 0.4, "cec_bf": 0.6} for i in range(3)])
    write_jsonl(run_dir / "04_training" / "runs.jsonl", runs)
    write_json(run_dir / "03_counterfactuals" / "acceptance.json",
               {"accepted": 3, "attempted": 8, "reasons": {"accepted": 3, "votes below threshold": 5},
                "new_target_distractor_rank": {"1": 6, "2": 2}})
    steps = {s: {"status": "ok", "wall_s": 1.5, "finished": "2026-01-01T00:00:00+00:00", "artifacts": {"a": "b"}}
             for s in ("01_data", "02_teacher", "03_counterfactuals", "04_training", "05_evaluation")}
    steps["06_statistics"] = {"status": "stale"}
    write_json(run_dir / "manifest.json", {
        "run": name, "params_file": "params/x.yaml", "overrides": [], "git": {"commit": "abc123def456", "dirty": True},
        "environment": {"python": "3.11.7", "platform": "linux", "packages": {"statsmodels": "0.15.0"}},
        "code": {"lib_sha256": "feed"}, "seeds": {"run": 0, "training": list(seeds)},
        "inputs": {"data": {"data/x.jsonl": "0123abcd"}, "models": {"gpt2": {"sha256": "5678ef"}}, "embedder": "e"},
        "params": {"run": {"seed": 0, "name": name}, "statistics": {"outcomes": ["correct", "cec"], "n_boot": 200},
                   "training": {"seeds": list(seeds)}},
        "steps": steps})
    return run_dir


def images(page: str) -> list[bytes]:
    """The PNGs embedded in an HTML page."""
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


def test_report_with_every_input_has_every_table_and_figure(tmp_path):
    from lib import report, stats

    run_dir = make_run(tmp_path)
    tables = stats.load_run_tables(run_dir)
    assert tables.ratings is not None and len(tables.ratings) == 2 * len(tables.items)
    assert set(tables.items["student_size"]) == {"124M params", "355M params"}
    sections = stats.analyse(tables, n_boot=200)
    figures = report.run_figures(tables, run_dir / "06_statistics")
    assert not [k for k, f in figures.items() if isinstance(f, str)]
    path = report.write_run_report(run_dir, sections, figures)
    assert path == run_dir / "06_statistics" / "report.html"
    page = path.read_text()
    assert "input is absent" not in page.lower() and "Figure absent" not in page
    pngs = images(page)
    assert len(pngs) == len(report.FIGURES) and all(p.startswith(PNG_MAGIC) for p in pngs)
    for name, _ in report.FIGURES.values():
        assert (run_dir / "06_statistics" / name).read_bytes().startswith(PNG_MAGIC)
    for title in ("Tukey-Kramer HSD on correct", "Two-way ANOVA on correct", "Kruskal-Wallis", "McNemar",
                  "Regression of soundness ratings", "CEC against BLEU", "CAUSAL students"):
        assert title in page
    assert re.search(r"MT beats CF by \d+\.\d points \((p = 0\.\d{3}|p &lt; 0\.001)\)", page)
    # provenance from the manifest, and the caveat about this step's own record
    for fact in ("abc123def456", "uncommitted changes", "0123abcd", "statsmodels", "0.15.0", "05_evaluation"):
        assert fact in page
    assert "provenance of steps 01-05 is final" in page
    assert "<script" not in page and "src='http" not in page  # self-contained


def test_report_without_optional_inputs_says_they_are_absent(tmp_path):
    from lib import report

    run_dir = make_run(tmp_path, with_optional=False, test_sets=("csqa",))
    (run_dir / "03_counterfactuals" / "acceptance.json").unlink()
    page = report.build_run_report(run_dir).read_text()
    assert "ratings.jsonl is absent" in page
    assert "no item has BLEU, ROUGE-L or BERTScore" in page
    assert "acceptance.json is absent" in page
    assert "no CAUSAL run in this study" in page
    assert len(images(page)) == len(report.FIGURES) - 3  # no metrics scatter, ratings or acceptance figure
    assert "Tukey-Kramer HSD on correct" in page and "MT beats CF" in page


def test_report_with_too_few_observations_explains_instead_of_failing(tmp_path):
    from lib import report

    run_dir = make_run(tmp_path, n_items=2, test_sets=("csqa",), with_optional=False)
    items = pd.read_json(run_dir / "05_evaluation" / "items.jsonl", lines=True)
    items = items[items["student"] == "gpt2"].assign(correct=0)
    write_jsonl(run_dir / "05_evaluation" / "items.jsonl", items.to_dict("records"))
    page = report.build_run_report(run_dir, tmp_path / "r.html").read_text()
    assert "Too few observations or absent inputs" in page
    assert "one training seed per condition" in page
    assert "no within-group variance" in page and "two levels of student_size" in page
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"\bnan\b", text, flags=re.IGNORECASE)


def test_compare_runs_cli(tmp_path):
    from lib.report import main

    a = make_run(tmp_path, "run-a", n_items=20, with_optional=False)
    b = make_run(tmp_path, "run-b", n_items=20, with_optional=False, seeds=(0, 1), rng_seed=1)
    out = tmp_path / "comparison.html"
    assert main([str(a), str(b), "-o", str(out)]) == 0
    page = out.read_text()
    assert "Runs compared: run-a, run-b" in page
    assert "training.seeds" in page  # the params that differ
    assert page.count("<h3>run-a</h3>") == 1 and page.count("<h3>run-b</h3>") == 1
    assert "Accuracy (%) by condition, run beside run" in page
    assert main([str(tmp_path / "nope"), str(a)]) == 2


def test_single_run_cli_leaves_the_run_folder_alone(tmp_path):
    from lib.report import main

    run_dir = make_run(tmp_path, n_items=10, with_optional=False)
    before = sorted(p for p in run_dir.rglob("*"))
    assert main([str(run_dir), "-o", str(tmp_path / "one.html")]) == 0
    assert "Run report: synthetic" in (tmp_path / "one.html").read_text()
    assert sorted(p for p in run_dir.rglob("*")) == before


@pytest.mark.parametrize("fn", ["plot_ood_heatmap", "plot_cec_vs_metrics", "plot_ratings"])
def test_new_figures_write_png(tmp_path, fn):
    from lib import report, stats

    tables = stats.load_run_tables(make_run(tmp_path, n_items=10))
    data = tables.ratings if fn == "plot_ratings" else tables.items
    getattr(report, fn)(data, path=tmp_path / f"{fn}.png")
    assert (tmp_path / f"{fn}.png").read_bytes().startswith(PNG_MAGIC)
    if fn != "plot_ood_heatmap":
        with pytest.raises(ValueError, match="needs"):
            getattr(report, fn)(data.drop(columns=["bleu", "rouge_l", "bertscore", "completeness",
                                                   "contrastiveness", "soundness"], errors="ignore"))


def test_ratings_without_usable_scores_are_reported_as_absent(tmp_path):
    from lib import report, stats

    run_dir = make_run(tmp_path, n_items=10)
    ratings = pd.read_json(run_dir / "05_evaluation" / "ratings.jsonl", lines=True)
    rows = ratings.assign(completeness=None, contrastiveness=None, soundness=None,
                          failure="unparseable: no completeness score").to_dict("records")
    write_jsonl(run_dir / "05_evaluation" / "ratings.jsonl", rows)
    (run_dir / "06_statistics").mkdir()
    (run_dir / "06_statistics" / "ratings.png").write_bytes(b"stale")
    tables = stats.load_run_tables(run_dir)
    figures = report.run_figures(tables, run_dir / "06_statistics")
    assert isinstance(figures["ratings"], str) and "failed" in figures["ratings"]
    assert not (run_dir / "06_statistics" / "ratings.png").exists()
    section = stats.analyse(tables, n_boot=200)["ols_ratings"]
    assert not section.ran and f"{len(rows)} of {len(rows)} ratings failed" in section.notes[0]
