"""Tests of lib.report and lib.run_tables: reading a run folder, the run report (inputs present, absent, too few;
each test with its unit) and run comparison."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib.files import write_json, write_jsonl
from lib.ratings import HUMAN_RATINGS, JUDGE_RATINGS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONDITIONS = ("CF", "MT", "FT-CoT")


def make_run(root: Path, name: str = "synthetic", n_items: int = 40, seeds=(0,), test_sets=("csqa", "arc-easy"),
             with_optional: bool = True, rng_seed: int = 0, run_seed: int = 0) -> Path:
    """A run folder with what steps 03-05 write: items, runs, losses, acceptance, manifest; with_optional adds the
    judge's and human ratings, text metrics, log-likelihood accuracy, faithfulness and CAUSAL explanations."""
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
                            row.update(bleu=cec * 0.3 + rng.random() * 0.1, rouge_l=cec * 0.5, bertscore=cec * 0.9,
                                       loglik_correct=int(rng.random() < p_right[cond]),
                                       faithfulness_perturbed=int(rng.random() < 0.3),
                                       faithfulness_counterfactual=int(rng.random() < 0.4),
                                       faithfulness_cf_follows=int(rng.random() < 0.2))
                            ratings += [{"run": run, "item_id": row["item_id"], "rater": rater,
                                         "completeness": int(rng.integers(1, 6)),
                                         "contrastiveness": int(rng.integers(1, 6)),
                                         "soundness": int(rng.integers(1, 6)), "justification": "ok"}
                                        for rater in ("judge:gpt-4o", "h01")]
                        items.append(row)
    write_jsonl(run_dir / "05_evaluation" / "items.jsonl", items)
    if with_optional:
        write_jsonl(run_dir / "05_evaluation" / JUDGE_RATINGS, [r for r in ratings if r["rater"].startswith("judge:")])
        write_jsonl(run_dir / HUMAN_RATINGS, [r for r in ratings if not r["rater"].startswith("judge:")])
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
        "params": {"run": {"seed": run_seed, "name": name},
                   "statistics": {"outcomes": ["correct", "cec", "loglik_correct"], "n_boot": 200},
                   "training": {"seeds": list(seeds), "conditions": list(CONDITIONS)}},
        "steps": steps})
    return run_dir


def images(page: str) -> list[bytes]:
    """The PNGs embedded in an HTML page."""
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


def test_report_with_every_input_has_every_table_and_figure(tmp_path):
    from lib import figures, findings, report, run_tables

    run_dir = make_run(tmp_path, n_items=30, seeds=(0, 1, 2))
    tables = run_tables.load_run_tables(run_dir)
    assert tables.ratings is not None and len(tables.ratings) == 2 * len(tables.items)
    assert set(tables.items["student_size"]) == {"124M params", "355M params"}
    sections = findings.analyse(tables, n_boot=200)
    figs = figures.run_figures(tables, run_dir / "06_statistics")
    assert not [k for k, f in figs.items() if isinstance(f, str)]
    path = report.write_run_report(run_dir, sections, figs)
    assert path == run_dir / "06_statistics" / "report.html"
    page = path.read_text()
    assert "input is absent" not in page.lower() and "Figure absent" not in page
    pngs = images(page)
    assert len(pngs) == len(figures.FIGURES) and all(p.startswith(PNG_MAGIC) for p in pngs)
    for name, _ in figures.FIGURES.values():
        assert (run_dir / "06_statistics" / name).read_bytes().startswith(PNG_MAGIC)
    for title in ("Tukey-Kramer HSD on correct over training runs", "correct per training run", "Two-way ANOVA on "
                  "correct", "Kruskal-Wallis", "McNemar", "Cochran&#x27;s Q", "Regression of soundness ratings",
                  "CEC against BLEU", "CAUSAL students"):
        assert title in page, title
    assert re.search(r"MT beats CF on the generated answer by \d+\.\d points \(Tukey-Kramer over 3 and 3 training "
                     r"runs, (p = 0\.\d{3}|p &lt; 0\.001)\)", page)
    assert re.search(r"MT beats CF by \d+\.\d points on the option log-likelihood \(summed, lm-eval&#x27;s acc\) "
                     r"\(on 30 shared items", page)  # McNemar on the second reading
    for unit in ("Unit: training run (3 seeds per condition)", "Unit: test item, paired within one seed",
                 "<th>unit</th>"):
        assert unit in page, unit
    # provenance from the manifest, and the caveat about this step's own record
    for fact in ("abc123def456", "uncommitted changes", "0123abcd", "statsmodels", "0.15.0", "05_evaluation"):
        assert fact in page
    assert "provenance of steps 01-05 is final" in page
    assert "<script" not in page and "src='http" not in page  # self-contained


def test_report_without_optional_inputs_says_they_are_absent(tmp_path):
    from lib import figures, report

    run_dir = make_run(tmp_path, with_optional=False, test_sets=("csqa",))
    (run_dir / "03_counterfactuals" / "acceptance.json").unlink()
    page = report.build_run_report(run_dir).read_text()
    assert "no ratings in this run" in page
    assert "no item has BLEU, ROUGE-L or BERTScore" in page
    assert "acceptance.json is absent" in page
    assert "no CAUSAL run in this study" in page
    assert len(images(page)) == len(figures.FIGURES) - 3  # no metrics scatter, ratings or acceptance figure
    assert "Tukey-Kramer HSD on correct" in page and "MT beats CF by" in page  # McNemar, paired on items
    assert "Tukey-Kramer over training runs needs at least two condition groups with two runs (seeds) each" in page


def test_report_with_too_few_observations_explains_instead_of_failing(tmp_path):
    from lib import report

    run_dir = make_run(tmp_path, n_items=2, test_sets=("csqa",), with_optional=False)
    items = pd.read_json(run_dir / "05_evaluation" / "items.jsonl", lines=True)
    items = items[items["student"] == "gpt2"].assign(correct=0)
    write_jsonl(run_dir / "05_evaluation" / "items.jsonl", items.to_dict("records"))
    page = report.build_run_report(run_dir, tmp_path / "r.html").read_text()
    assert "Too few observations or absent inputs" in page
    assert "one training seed per condition" in page
    assert "not computed over test items instead" in page and "two levels of student_size" in page
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
    assert "Paired tests on items (Cochran's Q, McNemar) and Tukey-Kramer over training runs" in page
    assert "MT beats CF on the generated answer by" in page  # run-b has two seeds: Tukey-Kramer over its runs
    assert "Accuracy (%) by condition, run beside run" in page
    assert main([str(tmp_path / "nope"), str(a)]) == 2


def test_single_run_cli_leaves_the_run_folder_alone(tmp_path):
    from lib.report import main

    run_dir = make_run(tmp_path, n_items=10, with_optional=False)
    before = sorted(p for p in run_dir.rglob("*"))
    assert main([str(run_dir), "-o", str(tmp_path / "one.html")]) == 0
    assert "Run report: synthetic" in (tmp_path / "one.html").read_text()
    assert sorted(p for p in run_dir.rglob("*")) == before


def test_ratings_without_usable_scores_are_reported_as_absent(tmp_path):
    from lib import figures, findings, run_tables

    run_dir = make_run(tmp_path, n_items=10)
    ratings = pd.read_json(run_dir / "05_evaluation" / JUDGE_RATINGS, lines=True)
    rows = ratings.assign(completeness=None, contrastiveness=None, soundness=None,
                          failure="unparseable: no completeness score").to_dict("records")
    write_jsonl(run_dir / "05_evaluation" / JUDGE_RATINGS, rows)
    (run_dir / HUMAN_RATINGS).unlink()
    (run_dir / "06_statistics").mkdir()
    (run_dir / "06_statistics" / "ratings.png").write_bytes(b"stale")
    tables = run_tables.load_run_tables(run_dir)
    figs = figures.run_figures(tables, run_dir / "06_statistics")
    assert isinstance(figs["ratings"], str) and "failed" in figs["ratings"]
    assert not (run_dir / "06_statistics" / "ratings.png").exists()
    section = findings.analyse(tables, n_boot=200)["ols_ratings"]
    assert not section.ran and f"{len(rows)} of {len(rows)} ratings failed" in section.notes[0]


# --- step 06 with each optional part of the study switched off -----------------------------------------------------

def switch_off(run_dir: Path, part: str) -> list[str]:
    """Make a full run folder look like one made with `part` off; returns what the report must say instead."""
    from lib.files import read_jsonl

    items_path = run_dir / "05_evaluation" / "items.jsonl"
    items = read_jsonl(items_path)
    if part == "judge":  # evaluation.judge: false writes an empty judge file; no human ratings imported
        write_jsonl(run_dir / "05_evaluation" / JUDGE_RATINGS, [])
        (run_dir / HUMAN_RATINGS).unlink()
        return ["no ratings in this run: neither the judge"]
    if part == "loglik":  # evaluation.loglik: false leaves loglik_pred / loglik_correct null
        write_jsonl(items_path, [dict(r, loglik_pred=None, loglik_correct=None) for r in items])
        return ["no log-likelihood accuracy (evaluation.loglik is off", "no item has a value for loglik_correct"]
    if part == "text_metrics":  # evaluation.text_metrics: false leaves BLEU, ROUGE-L, BERTScore NaN
        write_jsonl(items_path, [dict(r, bleu=float("nan"), rouge_l=float("nan"), bertscore=float("nan"))
                                 for r in items])
        return ["no item has BLEU, ROUGE-L or BERTScore (evaluation.text_metrics is off)",
                "BLEU / ROUGE-L / BERTScore (or CEC) are absent"]
    if part == "faithfulness":  # evaluation.faithfulness: false leaves the probes null
        write_jsonl(items_path, [dict(r, faithfulness_perturbed=None, faithfulness_counterfactual=None,
                                      faithfulness_cf_follows=None) for r in items])
        return ["no item has a faithfulness probe (evaluation.faithfulness is off"]
    if part == "ood":  # data.ood: []
        write_jsonl(items_path, [r for r in items if r["test_set"] == "csqa"])
        return ["one test set (csqa): there is no out-of-distribution result (data.ood lists no set)"]
    if part == "causal":  # no claims / no CAUSAL condition: step 05 writes an empty causal_items.jsonl
        write_jsonl(run_dir / "05_evaluation" / "causal_items.jsonl", [])
        return ["no CAUSAL run in this study explained a held-out claim"]
    assert part == "mc_items"  # training.conditions: [CAUSAL] only: no student answers test questions
    write_jsonl(items_path, [])
    return ["No test item was answered (05_evaluation/items.jsonl is empty)", "no test item was answered"]


@pytest.mark.parametrize("part", ["judge", "loglik", "text_metrics", "faithfulness", "ood", "causal", "mc_items"])
def test_step_06_finishes_with_an_optional_part_off_and_says_so(tmp_path, part):
    from lib import figures, findings, report, run_tables

    run_dir = make_run(tmp_path, n_items=10)
    expected = switch_off(run_dir, part)
    out = run_dir / "06_statistics"  # what notebook 06 does, start to end
    tables = run_tables.load_run_tables(run_dir)
    sections = findings.analyse(tables, outcomes=["correct", "loglik_correct"], n_boot=100)
    findings.write_analysis(sections, out)
    page = report.write_run_report(run_dir, sections, figures.run_figures(tables, out)).read_text()
    for phrase in expected:
        assert phrase in page, phrase
    assert sections["mcnemar"].ran == sections["cochran"].ran == (part != "mc_items")
    assert not sections["tukey_correct"].ran  # one seed: no Tukey-Kramer over runs, and none over items
    assert sections["causal_explanations"].ran == (part != "causal")


def test_ratings_are_read_from_the_judge_file_and_the_human_file_of_the_run_folder(tmp_path):
    from lib import run_tables

    run_dir = make_run(tmp_path, n_items=6)

    def raters() -> set[str]:
        return set(run_tables.load_run_tables(run_dir).ratings["rater"])

    assert raters() == {"judge:gpt-4o", "h01"}
    (run_dir / "05_evaluation" / JUDGE_RATINGS).unlink()
    assert raters() == {"h01"}
    write_jsonl(run_dir / "05_evaluation" / JUDGE_RATINGS, [])  # the judge switched off writes an empty file
    assert raters() == {"h01"}
    (run_dir / HUMAN_RATINGS).unlink()
    assert run_tables.load_run_tables(run_dir).ratings is None


# --- seed sweeps -----------------------------------------------------------------------------------------------------

def test_compare_runs_combines_runs_that_differ_only_in_seeds(tmp_path):
    from lib import run_tables, stats
    from lib.files import read_json
    from lib.report import compare_runs

    sweep = [make_run(tmp_path, f"seed{s}", n_items=15, with_optional=False, rng_seed=s, run_seed=s) for s in (0, 1)]
    other = make_run(tmp_path, "lr", n_items=15, with_optional=False, rng_seed=2, run_seed=2)
    manifest = read_json(other / "manifest.json")
    manifest["params"]["training"]["lr"] = 1e-3
    write_json(other / "manifest.json", manifest)
    page = compare_runs([*sweep, other], n_boot=200)
    assert "Runs that differ only in their seeds, combined" in page
    assert "Accuracy of seed0, seed1 combined" in page and "lr combined" not in page
    assert "These runs differ only in their seeds (run.seed), so this combines them" in page
    assert "Accuracy (%) by condition, run beside run" in page  # the side by side stays
    pooled = pd.concat([run_tables.load_run_tables(rd).items.assign(seed=f"run.seed {s}")
                        for s, rd in enumerate(sweep)])
    table = stats.accuracy_table(pooled, by=["test_set", "student", "condition"], n_boot=200)
    row = table.set_index(["test_set", "student", "condition"]).loc[("csqa", "gpt2", "MT")]
    assert (row["n_items"], row["n_seeds"]) == (15, 2)
    assert (f"[csqa, gpt2] MT: {row['accuracy'] * 100:.1f}% of 15 items x 2 seeds correct (95% CI "
            f"{row['ci_low'] * 100:.1f}-{row['ci_high'] * 100:.1f})") in page


def test_compare_runs_does_not_count_a_repeated_seed_twice(tmp_path):
    from lib.report import compare_runs

    a = make_run(tmp_path, "a", n_items=8, with_optional=False)
    b = make_run(tmp_path, "b", n_items=8, with_optional=False, rng_seed=1)
    page = compare_runs([a, b], n_boot=200)
    assert "Not combined:" in page and "repeat run.seed 0, training seed 0" in page


def frame_the_conditions(run_dir: Path) -> None:
    """Turn a make_run folder into one with BASE, TEACHER and MT / CF trained on unrevised and revised rationales."""
    from lib.files import read_jsonl

    items = [dict(r, rationale_source="unrevised") for r in read_jsonl(run_dir / "05_evaluation" / "items.jsonl")]
    rng = np.random.default_rng(1)
    revised = [dict(r, run=r["run"].replace("__", "__revised__", 1), rationale_source="revised",
                    correct=int(rng.random() < 0.5)) for r in items if r["condition"] in ("MT", "CF")]
    base = [dict(r, run=r["run"].replace("FT-CoT", "BASE"), condition="BASE", correct=int(rng.random() < 0.2))
            for r in items if r["condition"] == "FT-CoT" and r["seed"] == 0]
    teacher = [dict(r, run="TEACHER__unrevised__PaLM-540B__seed0", condition="TEACHER", student="PaLM-540B",
                    train_set="", correct=int(rng.random() < 0.9), cec=None, cec_fc=None, cec_bf=None)
               for r in items if r["condition"] == "MT" and r["student"] == "gpt2" and r["test_set"] == "csqa"]
    write_jsonl(run_dir / "05_evaluation" / "items.jsonl", items + revised + base + teacher)
    runs = read_jsonl(run_dir / "04_training" / "runs.jsonl")
    revised_runs = [dict(r, run=r["run"].replace("__", "__revised__", 1)) for r in runs if r["condition"] != "FT-CoT"]
    base_runs = [dict(r, run=r["run"].replace("FT-CoT", "BASE"), condition="BASE") for r in runs
                 if r["condition"] == "FT-CoT"]
    write_jsonl(run_dir / "04_training" / "runs.jsonl", runs + revised_runs + base_runs)


def test_report_shows_base_teacher_and_the_revision_factor(tmp_path):
    from lib import figures, report, run_tables

    run_dir = make_run(tmp_path, n_items=20, with_optional=False)
    frame_the_conditions(run_dir)
    tables = run_tables.load_run_tables(run_dir)
    fig = figures.plot_accuracy(tables.items, n_boot=100)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["BASE", "CF:revised", "CF:unrevised",
                                                                     "FT-CoT", "MT:revised", "MT:unrevised", "TEACHER"]
    heat = figures.plot_ood_heatmap(tables.items)
    labels = [t.get_text() for t in heat.axes[0].texts]
    assert "nan" not in " ".join(labels) and len(labels) == 7 * 2 - 1  # TEACHER: the in-distribution set only
    page = report.build_run_report(run_dir, tmp_path / "r.html").read_text()
    for phrase in ("Two-way ANOVA on correct: condition x revision", "left out of the condition x revision design: "
                   "BASE, FT-CoT", "MT x revised", "TEACHER (the teacher&#x27;s own answers) is left out",
                   "[csqa, PaLM-540B] TEACHER:"):
        assert phrase in page, phrase
    # McNemar pairs the teacher with the conditions of every student and seed
    assert re.search(r"\[csqa, gpt2-medium, 0\] (TEACHER|MT:revised) (beats|vs) (MT:revised|TEACHER)", page)
