"""Publishing a run: the run folder's layout, adapters in bf16 that are the measured students, timings."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lib.evaluation import load_student
from lib.files import PROJECT_ROOT, read_json, read_jsonl, write_json, write_jsonl
from lib.models import TINY_GEMMA
from lib.params import TrainingParams
from lib.publish import publish, results_table
from lib.run_tables import load_run_tables
from lib.student_cache import student_weights_hash
from lib.training import StudentRun, train_run
from tests.test_examples import all_examples

STRATEGY = ["[Pick directly]", "[Rule out]"]  # not in the tiny tokenizer: CFD adds them


def finished_run(tmp_path):
    """A run folder with one trained CFD run (strategy tokens added), a BASE row, items and a manifest."""
    run_dir = tmp_path / "run"
    params = TrainingParams(students=[TINY_GEMMA], conditions=["CFD"], max_steps=1, batch_size=2, save_steps=0)
    row = train_run(StudentRun("CFD", TINY_GEMMA, 0), all_examples("CFD"), params,
                    run_dir / "04_training" / "CFD__unrevised__tiny-random-gemma3__seed0", "cpu", strategy_tokens=STRATEGY)
    write_jsonl(run_dir / "04_training" / "runs.jsonl", [{"run": "BASE__x", "condition": "BASE", "adapter": None}, row])
    write_jsonl(run_dir / "05_evaluation" / "items.jsonl", [{"run": row["run"], "item_id": "q0", "correct": 1}])
    (run_dir / "05_evaluation" / "summary.csv").write_text("condition,accuracy\nCFD,1.0\n")
    (run_dir / "06_statistics").mkdir(parents=True)
    (run_dir / "06_statistics" / "tukey_correct.csv").write_text("a,b\n")
    (run_dir / "06_statistics" / "accuracy.png").write_bytes(b"not published")
    write_json(run_dir / "manifest.json", {"steps": {"04_training": {"status": "ok", "wall_s": 12.5,
                                                                     "precision": {"training": "fp32"}}}})
    (run_dir / "progress.log").write_text("2026-11-30 04:52:14 04_training CFD: step 1/1\n")
    (run_dir / "04_training.html").write_text("<html>the executed notebook</html>")
    return run_dir, row


def test_a_published_run_keeps_its_layout_and_its_adapters_load_as_trained(tmp_path):
    run_dir, row = finished_run(tmp_path)
    dest = tmp_path / "results"
    publish(run_dir, dest, max_adapter_mb=10.0)
    assert read_jsonl(dest / "05_evaluation" / "items.jsonl.gz") == read_jsonl(run_dir / "05_evaluation" / "items.jsonl")
    assert (dest / "06_statistics" / "tukey_correct.csv").exists()
    assert load_run_tables(dest).items["item_id"].tolist() == ["q0"]  # the report reads the published .gz
    assert not (dest / "06_statistics" / "accuracy.png").exists()  # the report embeds the figures
    assert (dest / "04_training" / row["run"] / "losses.jsonl").exists()
    assert "04_training,ok,12.5" in (dest / "timings.csv").read_text()
    assert (dest / "progress.log").read_text() == (run_dir / "progress.log").read_text()  # every stage's times
    assert (dest / "notebooks" / "04_training.html").read_text() == "<html>the executed notebook</html>"  # handout
    assert sorted(p.name for p in (dest / "notebooks").iterdir()) == ["04_training.html"]
    adapter = dest / "adapters" / row["run"]
    assert {t.dtype for t in load_file(str(adapter / "adapter_model.safetensors")).values()} == {torch.bfloat16}
    assert read_json(adapter / "added_tokens.json") == row["added_tokens"] and row["added_tokens"]
    measured = run_dir / "04_training" / row["adapter"]
    # the published student is the measured one, byte for byte: a cached output of step 05 is keyed by this hash
    assert student_weights_hash(TINY_GEMMA, adapter) == student_weights_hash(TINY_GEMMA, measured)
    original, tok = load_student(TINY_GEMMA, measured, "cpu", "lora")
    published, tok2 = load_student(TINY_GEMMA, adapter, "cpu", "lora")
    assert tok2.convert_tokens_to_ids(STRATEGY) == tok.convert_tokens_to_ids(STRATEGY)
    ids = tok(STRATEGY[0] + " Q: where?", return_tensors="pt")["input_ids"]
    assert tok2(STRATEGY[0] + " Q: where?", return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(published(ids).logits, original(ids).logits)


def test_an_adapter_over_the_size_limit_is_listed_with_the_command_that_retrains_it(tmp_path):
    run_dir, row = finished_run(tmp_path)
    publish(run_dir, tmp_path / "results", max_adapter_mb=0.0)
    assert not (tmp_path / "results" / "adapters" / row["run"]).exists()
    readme = (tmp_path / "results" / "adapters" / "README.md").read_text()
    assert row["run"] in readme and "training.conditions=[CFD]" in readme


def test_an_adapter_within_10_mb_is_published_and_a_larger_one_is_listed(tmp_path):
    from safetensors.torch import save_file

    run_dir, row = finished_run(tmp_path)
    src = run_dir / "04_training" / row["adapter"] / "adapter_model.safetensors"
    weights = load_file(str(src))
    weights["lora_wide.weight"] = torch.zeros(3_780_000)  # 7.2 MB in bf16, as LoRA r 16 on Gemma 3 270M
    save_file(weights, str(src))
    publish(run_dir, tmp_path / "results")  # within the 10 MB per adapter the project keeps in git: published
    assert (tmp_path / "results" / "adapters" / row["run"] / "adapter_model.safetensors").exists()

    weights["lora_wide.weight"] = torch.zeros(5_800_000)  # 11.1 MB in bf16: over the limit, listed instead
    save_file(weights, str(src))
    publish(run_dir, tmp_path / "results")
    assert not (tmp_path / "results" / "adapters" / row["run"]).exists()
    assert f"{row['run']}: 11.1 MB in bf16, over 10 MB" in (tmp_path / "results" / "adapters" / "README.md").read_text()


def test_publishing_again_replaces_the_runs_files_and_keeps_notes_written_beside_them(tmp_path):
    run_dir, row = finished_run(tmp_path)
    dest = tmp_path / "results"
    publish(run_dir, dest)
    (dest / "recipe_sweep.md").write_text("# the sweep\n")
    (dest / "06_statistics" / "tukey_stale.csv").write_text("from an earlier configuration\n")
    (run_dir / "05_evaluation" / "summary.csv").write_text("condition,accuracy\nCFD,0.5\n")
    publish(run_dir, dest)
    assert (dest / "recipe_sweep.md").read_text() == "# the sweep\n"
    assert not (dest / "06_statistics" / "tukey_stale.csv").exists()
    assert "CFD,0.5" in (dest / "05_evaluation" / "summary.csv").read_text()


def published_tables(dest, ft_accuracy: float = 0.33):
    """A published study's summary.csv (per seed), 06 accuracy table (pooled) and mcnemar.csv: BASE, FT (two seeds)
    and TEACHER on two test sets; BASE is at its best in cloze norm on csqa and in cloze on arc."""
    readings = {"BASE": (0.08, 0.225, 0.40, 0.44), "FT": (0.33, 0.33, 0.45, 0.48), "TEACHER": (0.765, None, None, None)}
    columns = ("accuracy", "loglik_norm_accuracy", "cloze_accuracy", "cloze_norm_accuracy")
    rows, stats, tests = [], [], []
    for test_set in ("arc", "csqa"):
        for condition, student, seeds in (("TEACHER", "PaLM", [0]), ("FT", "gemma", [0, 1]), ("BASE", "gemma", [0])):
            if condition == "TEACHER" and test_set == "arc":
                continue  # the teacher answered the in-distribution questions only
            values = dict(zip(columns, readings[condition]))
            if test_set == "arc" and condition == "BASE":
                values["cloze_accuracy"] = 0.60
            for seed in seeds:  # FT's seeds: 2 points either side of its pooled value on the cloze readings
                shift = 0.0 if len(seeds) == 1 else (-0.02 if seed == 0 else 0.02)
                rows.append({"condition": condition, "student": student, "seed": seed, "test_set": test_set, "n": 500,
                             **{c: None if v is None else v + shift * (c.startswith("cloze")) for c, v in values.items()},
                             "parse_rate": 0.97})
            stats.append({"test_set": test_set, "student": student, "condition": condition, "n": 500 * len(seeds),
                          "n_items": 500, "n_seeds": len(seeds), "parse_rate": 0.97,
                          **{c: v for c, v in values.items()},
                          **{f"{c}_ci_low": None if v is None else v - 0.05 for c, v in values.items()},
                          **{f"{c}_ci_high": None if v is None else v + 0.05 for c, v in values.items()}})
            stats[-1]["accuracy"] = ft_accuracy if condition == "FT" else values["accuracy"]
            if condition == "FT":
                for seed in seeds:
                    for reading in ("correct", "cloze_correct", "cloze_norm_correct"):
                        tests.append({"test_set": test_set, "student": student, "seed": seed, "group1": "BASE",
                                      "group2": "FT", "only1": 21, "only2": 43 + seed, "p": 0.0081 / (seed + 1),
                                      "reading": reading})
    (dest / "05_evaluation").mkdir(parents=True)
    (dest / "06_statistics").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(dest / "05_evaluation" / "summary.csv", index=False)
    pd.DataFrame(stats).to_csv(dest / "06_statistics" / "accuracy.csv", index=False)
    pd.DataFrame(tests).to_csv(dest / "06_statistics" / "mcnemar.csv", index=False)


def test_the_results_table_shows_every_reading_and_each_condition_against_base_at_its_best(tmp_path):
    published_tables(tmp_path)
    lines = results_table(tmp_path).splitlines()
    assert lines[0] == ("| condition | student | seeds | test set | generated | parse | answer text | cloze | cloze norm "
                        "| vs BASE at its best |")
    assert [line.split(" | ")[0] for line in lines[2:7]] == ["| BASE", "| BASE", "| FT", "| FT", "| TEACHER"]
    assert lines[2] == ("| BASE | gemma | – | csqa | 8.0 (3.0–13.0) | 97% | 22.5 (17.5–27.5) | 40.0 (35.0–45.0) "
                        "| **44.0** (39.0–49.0) | – |")  # the teacher's test set first; BASE's best in bold
    assert "| **60.0** (55.0–65.0) | 44.0 (39.0–49.0) |" in lines[3]  # on arc BASE is at its best in cloze
    assert lines[4].startswith("| FT | gemma | 2 | csqa |")
    # each seed's difference beside its own test: the range alone is sorted, the tests are in seed order
    assert lines[4].endswith("| cloze norm +4.0 [+2.0, +6.0]; seed 0 +2.0, p = 0.0081; seed 1 +6.0, p = 0.004 |")
    assert lines[5].endswith("| cloze -15.0 [-17.0, -13.0]; seed 0 -17.0, p = 0.0081; seed 1 -13.0, p = 0.004 |")
    assert lines[6] == "| TEACHER | PaLM | – | csqa | 76.5 (71.5–81.5) | 97% | – | – | – | – |"
    assert "n = 500 items per test set" in results_table(tmp_path)


def test_one_seed_against_base_shows_the_discordant_items(tmp_path):
    published_tables(tmp_path)
    summary = pd.read_csv(tmp_path / "05_evaluation" / "summary.csv")
    summary[summary["seed"] == 0].to_csv(tmp_path / "05_evaluation" / "summary.csv", index=False)
    tests = pd.read_csv(tmp_path / "06_statistics" / "mcnemar.csv")
    tests[tests["seed"] == 0].to_csv(tmp_path / "06_statistics" / "mcnemar.csv", index=False)
    stats = pd.read_csv(tmp_path / "06_statistics" / "accuracy.csv")
    stats.loc[stats["condition"] == "FT", "n_seeds"] = 1
    stats.to_csv(tmp_path / "06_statistics" / "accuracy.csv", index=False)
    ft = [line for line in results_table(tmp_path).splitlines() if line.startswith("| FT | gemma | 1 | csqa")]
    assert ft[0].endswith("| cloze norm +2.0; 43 vs 21, p = 0.0081 |")  # right where BASE is wrong vs the reverse


def test_the_results_table_refuses_statistics_computed_on_other_items(tmp_path):
    published_tables(tmp_path, ft_accuracy=0.31)
    with pytest.raises(ValueError, match="differ for"):
        results_table(tmp_path)


def test_the_readme_shows_the_published_reference_results():
    dest = PROJECT_ROOT / "results" / "reference-csqa"
    if not (dest / "06_statistics" / "accuracy.csv").exists():
        pytest.skip("no reference study published yet")
    assert results_table(dest) in (PROJECT_ROOT / "README.md").read_text(), (
        "README.md's Results table differs from results/reference-csqa: paste "
        "`python -m lib.publish --table results/reference-csqa` into it")


def test_a_published_student_answers_another_test_set_as_step_05_would(tmp_path, monkeypatch):
    import lib.evaluation as ev
    from lib.params import load_params
    from lib.published import evaluate_published

    run_dir, row = finished_run(tmp_path)
    params = load_params(PROJECT_ROOT / "params" / "smoke.yaml", {"evaluation.max_new_tokens": 8})
    write_json(run_dir / "params.json", params.model_dump(mode="json"))
    dest = tmp_path / "results"
    publish(run_dir, dest)
    shutil.rmtree(run_dir)  # the published folder alone
    lines = (PROJECT_ROOT / "data" / "sample" / "arc_sample.jsonl").read_text().splitlines()[:3]
    (tmp_path / "other.jsonl").write_text("\n".join(lines) + "\n")
    loaded, real_load = [], ev.load_student
    monkeypatch.setattr(ev, "load_student", lambda *a: loaded.append(a) or real_load(*a))
    rows = evaluate_published(dest, row["run"], str(tmp_path / "other.jsonl"), "arc", device="cpu")
    assert [r.test_set for r in rows] == ["other"] * 3 and {r.condition for r in rows} == {"CFD"}
    assert loaded[0][1] == dest / "adapters" / row["run"]  # the published bf16 adapter, not a retrained one
    assert all(r.loglik_pred is not None for r in rows) and all(r.faithfulness_perturbed is None for r in rows)
    with pytest.raises(KeyError, match="has no run 'FT__x'"):
        evaluate_published(dest, "FT__x", str(tmp_path / "other.jsonl"), "arc", device="cpu")
