"""Publishing a run: the run folder's layout, adapters in bf16 that load like the originals, timings."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from lib.evaluation import load_student
from lib.files import read_json, write_json, write_jsonl
from lib.models import TINY_GEMMA
from lib.params import TrainingParams
from lib.publish import publish
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
    return run_dir, row


def test_a_published_run_keeps_its_layout_and_its_adapters_load_as_trained(tmp_path):
    run_dir, row = finished_run(tmp_path)
    dest = tmp_path / "results"
    publish(run_dir, dest)
    assert (dest / "05_evaluation" / "items.jsonl").exists() and (dest / "06_statistics" / "tukey_correct.csv").exists()
    assert not (dest / "06_statistics" / "accuracy.png").exists()  # the report embeds the figures
    assert (dest / "04_training" / row["run"] / "losses.jsonl").exists()
    assert "04_training,ok,12.5" in (dest / "timings.csv").read_text()
    adapter = dest / "adapters" / row["run"]
    assert {t.dtype for t in load_file(str(adapter / "adapter_model.safetensors")).values()} == {torch.bfloat16}
    assert read_json(adapter / "added_tokens.json") == row["added_tokens"] and row["added_tokens"]
    original, tok = load_student(TINY_GEMMA, run_dir / "04_training" / row["adapter"], "cpu", "lora")
    published, tok2 = load_student(TINY_GEMMA, adapter, "cpu", "lora")
    assert tok2.convert_tokens_to_ids(STRATEGY) == tok.convert_tokens_to_ids(STRATEGY)
    ids = tok(STRATEGY[0] + " Q: where?", return_tensors="pt")["input_ids"]
    assert tok2(STRATEGY[0] + " Q: where?", return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(published(ids).logits, original(ids).logits, rtol=0.05, atol=0.05)


def test_an_adapter_over_the_size_limit_is_listed_with_the_command_that_retrains_it(tmp_path):
    run_dir, row = finished_run(tmp_path)
    publish(run_dir, tmp_path / "results", max_adapter_mb=0.0)
    assert not (tmp_path / "results" / "adapters" / row["run"]).exists()
    readme = (tmp_path / "results" / "adapters" / "README.md").read_text()
    assert row["run"] in readme and "training.conditions=[CFD]" in readme
