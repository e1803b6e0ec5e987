"""The runner: all six notebooks through papermill on the smoke study, step caching, failures and --steps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lib.files import PROJECT_ROOT, read_json
from lib.params import ParamsError
from lib.runs import STEPS
from lib.study import parse_steps

SMOKE = PROJECT_ROOT / "params" / "smoke.yaml"


def run_study(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lib.study", str(SMOKE), *args], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=900)


def test_parse_steps():
    assert parse_steps("02,04-05") == ["02_teacher", "04_training", "05_evaluation"]
    assert parse_steps(None) == list(STEPS)
    with pytest.raises(ParamsError, match="no step 07"):
        parse_steps("06-07")
    with pytest.raises(ParamsError, match="step numbers"):
        parse_steps("data")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    return run_dir, run_study("--run-dir", str(run_dir))


def test_smoke_study_runs_all_notebooks(smoke_run):
    run_dir, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = read_json(run_dir / "manifest.json")
    assert [manifest["steps"][s]["status"] for s in STEPS] == ["ok"] * 6
    for step in STEPS:
        nb = json.loads((run_dir / f"{step}.ipynb").read_text())
        assert nb["metadata"]["papermill"]["exception"] is None
        injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert injected and "smoke" in "".join(injected[0]["source"])
        handout = (run_dir / f"{step}.html").read_text()
        assert handout.startswith("<!DOCTYPE html>") and "injected-parameters" in handout
    assert manifest["params"]["run"]["name"] == "smoke"
    assert set(manifest["inputs"]["data"]) == {"data/sample/commonsenseqa_sample.jsonl",
                                               "data/sample/climate_fever_sample.jsonl",
                                               "data/sample/arc_sample.jsonl"}
    assert manifest["environment"]["packages"]["torch"]
    assert "commit" in manifest["git"] and manifest["seeds"]["run"] == 0
    assert (run_dir / "06_statistics" / "accuracy.csv").exists()
    assert (run_dir / "06_statistics" / "accuracy_by_condition.png").stat().st_size > 1000
    items = [json.loads(line) for line in (run_dir / "05_evaluation" / "items.jsonl").read_text().splitlines()]
    assert {i["condition"] for i in items} == {"BASE", "FT", "FT-CoT", "MT", "CF", "MT+CF", "CFD", "TEACHER"}
    assert {i["rationale_source"] for i in items if i["condition"] == "MT"} == {"unrevised", "revised"}
    assert {i["test_set"] for i in items} == {"csqa-sample", "arc-sample"}  # in and out of distribution
    assert {i["student"] for i in items} == {"tiny-random-gemma3", "tiny-random-t5"}
    t5 = [i for i in items if i["student"] == "tiny-random-t5"]
    assert all(i["loglik_pred"] is None for i in t5)  # option scoring is for causal LMs only
    causal = [json.loads(line) for line in (run_dir / "05_evaluation" / "causal_items.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (run_dir / "02_teacher" / "causal.jsonl").read_text().splitlines()]
    n_test_pairs = sum(p["split"] == "test" for p in pairs)
    assert n_test_pairs and len(causal) == 2 * n_test_pairs  # every CAUSAL student explains every held-out pair
    assert {c["condition"] for c in causal} == {"CAUSAL"}
    assert "CAUSAL students" in (run_dir / "06_statistics" / "findings.md").read_text()
    for name in ("ood_matrix.csv", "faithfulness.csv", "judge_ratings.jsonl", "correlations.csv", "human_sheet.html"):
        assert (run_dir / "05_evaluation" / name).exists(), name


def _logged_losses(run_dir: Path) -> list[float]:
    """Every loss value the training runs of a study logged (losses.jsonl of each run folder)."""
    return [json.loads(line)["loss"] for path in (run_dir / "04_training").glob("*/losses.jsonl")
            for line in path.read_text().splitlines() if line.strip()]


def test_every_logged_training_loss_is_a_cross_entropy(smoke_run):
    """No training step of any condition logged a loss below 0 (a cross-entropy never is)."""
    losses = _logged_losses(smoke_run[0])
    assert losses and min(losses) >= 0


def test_the_smoke_study_runs_every_notebook_in_bf16(tmp_path):
    """run.precision: bf16 forced through all six notebooks, so a bf16-only defect fails on any CPU (on one without
    native bf16, torch emulates it; tiny models keep that to seconds): each under-the-hood cell recomputes in the
    format the library used, and every logged loss stays >= 0."""
    run_dir = tmp_path / "run"
    # the by-hand cells need a decoder student that writes rationales (MT); the rest of the grid adds minutes, not checks
    proc = run_study("--run-dir", str(run_dir), "--set", "run.precision=bf16", "--set", "training.conditions=[BASE,MT]",
                     "--set", "training.students=[tiny-random-gemma3]", "--set", "training.rationale_sources=[unrevised]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = read_json(run_dir / "manifest.json")
    assert [manifest["steps"][s]["status"] for s in STEPS] == ["ok"] * 6
    assert all(set(manifest["steps"][s]["precision"].values()) == {"bf16"} for s in STEPS)
    losses = _logged_losses(run_dir)
    assert losses and min(losses) >= 0
    for step in ("04_training", "05_evaluation"):  # the by-hand cells recomputed in bf16, as the library computed
        shown = _cell_outputs(run_dir / f"{step}.ipynb")
        assert "'format': 'bf16'" in shown and "'format': 'fp32'" not in shown, step


def _cell_outputs(notebook: Path) -> str:
    """The plain-text outputs of every cell of an executed notebook, joined."""
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(o.get("data", {}).get("text/plain", "")) for c in cells for o in c.get("outputs", []))


def test_rerun_is_cached_and_a_changed_param_reruns_downstream(smoke_run):
    run_dir, first = smoke_run
    assert first.returncode == 0
    before = {s: (run_dir / f"{s}.ipynb").stat().st_mtime_ns for s in STEPS}
    again = run_study("--run-dir", str(run_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("cached") == 6
    assert {s: (run_dir / f"{s}.ipynb").stat().st_mtime_ns for s in STEPS} == before
    # a key step 05 reads that asks the students nothing new: 05 and 06 run again, every output from the student cache
    changed = run_study("--run-dir", str(run_dir), "--set", "evaluation.human_sheet_items=3")
    assert changed.returncode == 0, changed.stderr[-3000:]
    manifest = read_json(run_dir / "manifest.json")
    statuses = [manifest["steps"][s]["status"] for s in STEPS]
    assert statuses == ["cached"] * 4 + ["ok"] * 2
    assert manifest["params"]["evaluation"]["human_sheet_items"] == 3


def _adapter_hashes(run_dir: Path) -> dict[str, str]:
    """sha256 of each current run's adapter weights, by run name."""
    from lib.files import read_jsonl, sha256_file

    train = run_dir / "04_training"
    return {r["run"]: sha256_file(next((train / r["adapter"]).glob("*.safetensors")))
            for r in read_jsonl(train / "runs.jsonl") if r["adapter"]}


def test_a_changed_lr_retrains_every_run_and_a_dropped_ood_set_is_not_evaluated(smoke_run, tmp_path):
    import shutil

    first_dir, first = smoke_run
    assert first.returncode == 0
    run_dir = tmp_path / "run"  # a copy: the smoke run keeps its adapters, which the tests below reuse
    shutil.copytree(first_dir, run_dir)
    # FT and MT of both students (one task, two tasks; decoder, encoder-decoder): retraining is decided per run
    grid = ["--set", "training.conditions=[BASE,FT,MT]", "--set", "training.rationale_sources=[unrevised]"]
    before = {r: h for r, h in _adapter_hashes(run_dir).items() if r.startswith(("FT__", "MT__unrevised"))}
    retrained = run_study("--run-dir", str(run_dir), "--steps", "04", "--set", "training.lr=0.001", *grid)
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    after = _adapter_hashes(run_dir)
    assert len(before) == 4 and set(after) == set(before) and all(after[r] != before[r] for r in before)
    assert not any(r.get("resumed_from") for r in read_jsonl_rows(run_dir / "04_training" / "runs.jsonl"))
    no_ood = run_study("--run-dir", str(run_dir), "--steps", "01-06", "--set", "training.lr=0.001",
                       "--set", "data.ood=[]", *grid)
    assert no_ood.returncode == 0, no_ood.stderr[-3000:]
    assert _adapter_hashes(run_dir) == after  # same examples, same config: the trained runs are reused
    items = read_jsonl_rows(run_dir / "05_evaluation" / "items.jsonl")
    assert {i["test_set"] for i in items} == {"csqa-sample"}
    assert {i["condition"] for i in items} >= {"BASE", "TEACHER"}
    assert [p.name for p in (run_dir / "01_data" / "tests").iterdir()] == ["csqa-sample.jsonl"]
    assert "data.ood" in (run_dir / "06_statistics" / "report.html").read_text()  # step 06 says the OOD set is off


def read_jsonl_rows(path: Path) -> list[dict]:
    """The rows of a jsonl artifact."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_step_without_upstream_fails_and_says_what_to_run(tmp_path):
    proc = run_study("--run-dir", str(tmp_path / "empty"), "--steps", "04")
    assert proc.returncode == 1
    assert "01_data" in proc.stderr and "--steps 01" in proc.stderr
    manifest = read_json(tmp_path / "empty" / "manifest.json")
    assert manifest["steps"]["04_training"]["status"] == "failed"
    assert (tmp_path / "empty" / "04_training.ipynb").exists()


def test_a_notebook_runs_on_its_own_with_its_defaults(tmp_path):
    """As in JupyterLab: no injected params, the default params file, only the run folder changed."""
    import papermill as pm

    out = tmp_path / "01_data.ipynb"
    pm.execute_notebook(str(PROJECT_ROOT / "notebooks" / "01_data.ipynb"), str(out),
                        parameters={"run_dir": str(tmp_path / "run")}, cwd=str(PROJECT_ROOT / "notebooks"),
                        kernel_name="python3", progress_bar=False)
    summary = read_json(tmp_path / "run" / "01_data" / "summary.json")
    assert summary["in_distribution"] == "csqa-sample" and summary["train"] > 0


def _fingerprints(tmp_path: Path, overrides: list[str] | None = None) -> dict[str, str]:
    """Every step's fingerprint for the smoke params with `overrides`, over an empty run folder."""
    from lib.params import load_params
    from lib.study import fingerprint, input_files

    params = load_params(SMOKE, overrides or [])
    return {s: fingerprint(s, params, tmp_path, "code", input_files(params)) for s in STEPS}


@pytest.mark.parametrize("override, changed", [
    ("counterfactual.strategy_tokens.positive='[Direct]'", {"03_counterfactuals", "04_training", "05_evaluation"}),
    ("training.rationale_filter=correct", {"04_training", "05_evaluation"}),
    ("teacher.n_shots=0", {"02_teacher", "03_counterfactuals", "05_evaluation"}),
    ("training.lr=0.001", {"04_training"}),
    ("statistics.n_boot=300", {"06_statistics"}),
])
def test_a_fingerprint_covers_every_params_key_its_step_reads(tmp_path, override, changed):
    before, after = _fingerprints(tmp_path), _fingerprints(tmp_path, [override])
    assert {s for s in STEPS if before[s] != after[s]} == changed


def test_human_ratings_and_replayed_jsonl_files_are_fingerprinted(tmp_path):
    from lib.params import load_params
    from lib.ratings import HUMAN_RATINGS
    from lib.study import input_files

    before = _fingerprints(tmp_path)
    (tmp_path / HUMAN_RATINGS).write_text('{"run": "r", "item_id": "q1", "rater": "h1", "soundness": 5}\n')
    after = _fingerprints(tmp_path)
    assert {s for s in STEPS if before[s] != after[s]} == {"06_statistics"}

    replay = tmp_path / "replay" / "cqa"
    (replay / "llm").mkdir(parents=True)
    (replay / "cqa_train.json").write_text("[]")
    (replay / "llm" / "rationales.jsonl").write_text("{}\n")
    params = load_params(SMOKE, ["teacher.backend=replay", f"teacher.replay_dir={replay}"])
    assert {"cqa/cqa_train.json", "cqa/llm/rationales.jsonl"} <= set(input_files(params))


EVALUATION_PARTS = ["evaluation.judge", "evaluation.loglik", "evaluation.text_metrics", "evaluation.faithfulness"]


# The four parts of step 05 are switched off in one run (each notebook branch still runs without its part; that each
# alone leaves step 06 whole is tests/test_report.py::test_step_06_finishes_with_an_optional_part_off_and_says_so):
# one papermill run instead of four keeps CI under its 20 minutes. No OOD set (data.ood=[]) is the lr test's second
# run above; these copies reuse the smoke run's trained students.
@pytest.mark.parametrize("overrides, steps, absent", [
    ([f"{key}=false" for key in EVALUATION_PARTS], "05-06", EVALUATION_PARTS),
    (["data.claims=null", "training.conditions=[FT,FT-CoT,MT,CFD]"], "01-06", ["data.claims"]),
])
def test_each_optional_part_switched_off_runs_through_step_06_and_the_report_says_so(smoke_run, tmp_path, overrides,
                                                                                     steps, absent):
    import shutil

    run_dir, first = smoke_run
    assert first.returncode == 0
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    sets = [arg for o in overrides for arg in ("--set", o)]
    proc = run_study("--run-dir", str(copy), "--steps", steps, *sets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (copy / "06_statistics" / "report.html").read_text()
    assert [key for key in absent if key not in report] == []
