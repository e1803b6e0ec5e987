"""Run folders: a step that opens replaces what it wrote before, except the training runs it reuses by config."""

from lib.files import PROJECT_ROOT
from lib.runs import open_step

SMOKE = str(PROJECT_ROOT / "params" / "smoke.yaml")


def test_opening_a_step_removes_what_its_previous_execution_wrote(tmp_path):
    stale = tmp_path / "06_statistics" / "tukey_bleu.csv"  # an outcome no longer in statistics.outcomes
    stale.parent.mkdir()
    stale.write_text("old")
    (tmp_path / "01_data" / "tests").mkdir(parents=True)
    (tmp_path / "01_data" / "tests" / "old-ood.jsonl").write_text("{}\n")
    upstream = tmp_path / "05_evaluation" / "items.jsonl"
    upstream.parent.mkdir()
    upstream.write_text("{}\n")
    ctx = open_step("06_statistics", {}, SMOKE, str(tmp_path))
    assert ctx.out.is_dir() and not any(ctx.out.iterdir())
    assert upstream.exists()  # other steps' artifacts are untouched
    open_step("01_data", {}, SMOKE, str(tmp_path))
    assert not (tmp_path / "01_data" / "tests").exists()


def test_training_keeps_its_runs_and_force_reaches_the_context(tmp_path):
    adapter = tmp_path / "04_training" / "FT__tiny__seed0" / "adapter" / "adapter_model.safetensors"
    adapter.parent.mkdir(parents=True)
    adapter.write_bytes(b"weights")
    ctx = open_step("04_training", {}, SMOKE, str(tmp_path), force=True)
    assert adapter.exists() and ctx.force
    assert not open_step("05_evaluation", {}, SMOKE, str(tmp_path)).force


def test_progress_lines_are_appended_to_the_runs_progress_log(tmp_path):
    from lib.runs import note_progress, PROGRESS_LOG

    note_progress(tmp_path, "04_training", "FT: step 5/10")
    note_progress(tmp_path, "05_evaluation", "run 1/2 done")
    lines = (tmp_path / PROGRESS_LOG).read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["04_training FT: step 5/10", "05_evaluation run 1/2 done"]
