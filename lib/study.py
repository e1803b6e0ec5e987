"""Run a whole study: validate params, then execute notebooks 01-06 with papermill, skipping cached steps.

    python -m lib.study params/quickstart.yaml [--set section.key=value ...] [--steps 02,04-05] [--run-dir DIR]
                                               [--reuse results/<study>/parts/<part> ...]

Each step's executed notebook lands in the run folder beside its artifacts (`<run>/<step>.ipynb`, an HTML
copy `<run>/<step>.html` to read without Jupyter, `<run>/<step>/`), and `<run>/manifest.json` records params, code, environment, input hashes and
every step's status. A step is skipped when its fingerprint matches the manifest's record: every params
key the step reads (STEP_PARAMS), the weights of the models it uses, the lib code, its notebook, the
run's input files (data, replayed teacher files, human ratings for step 06) and every upstream artifact.

A study too long for one sitting runs in parts: each part (a few conditions or seeds) is published with
`python -m lib.publish`, and the next session starts its run folder from the parts with `--reuse` (lib.reuse): their
trained adapters and their students' outputs are used wherever this code and these params ask for exactly them.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from lib.files import atomic_write_text, PROJECT_ROOT, read_json, resolve_path, sha256_file, sha256_json, write_json
from lib.params import load_params, ParamsError, StudyParams
from lib.ratings import HUMAN_RATINGS
from lib.runs import note_progress, PROGRESS_LOG, STEPS

log = logging.getLogger("lib.study")

NOTEBOOKS = PROJECT_ROOT / "notebooks"
# Every params key each step reads, as dotted prefixes ("teacher" = the whole section). This is the one place
# that says so: a step's fingerprint covers exactly these, plus `run` (minus its name), which every step reads.
STEP_PARAMS = {
    "01_data": ("data",),
    "02_teacher": ("teacher",),
    "03_counterfactuals": ("counterfactual", "teacher"),
    "04_training": ("training", "counterfactual.strategy_tokens"),
    "05_evaluation": ("evaluation", "teacher", "counterfactual.strategy_tokens", "training.rationale_filter",
                      "data.train.name"),
    "06_statistics": ("statistics", "training.conditions", "training.students"),
}
# The models whose weights each step's results depend on (teacher: steps 02-03 and the judge of step 05).
STEP_MODELS = {
    "02_teacher": ("teacher",),
    "03_counterfactuals": ("teacher",),
    "04_training": ("students",),
    "05_evaluation": ("teacher", "students"),
}

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "sentence-transformers", "papermill",
            "statsmodels", "seaborn", "pandas", "numpy", "pydantic", "openai")


def parse_steps(text: str | None) -> list[str]:
    """`02,04-05` -> the named steps in study order; None -> all steps."""
    if not text:
        return list(STEPS)
    numbers: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            numbers.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ParamsError(f"--steps {text!r}: use step numbers and ranges such as 02,04-05") from None
    unknown = sorted(n for n in numbers if not 1 <= n <= len(STEPS))
    if unknown:
        raise ParamsError(f"--steps {text!r}: no step {unknown[0]:02d}; steps are 01-{len(STEPS):02d}")
    return [s for i, s in enumerate(STEPS, 1) if i in numbers]


def code_hash() -> str:
    """sha256 over every source and template file of lib/ (the code version a step ran with)."""
    files = sorted(p for p in (PROJECT_ROOT / "lib").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return sha256_json({str(p.relative_to(PROJECT_ROOT)): sha256_file(p) for p in files})


def input_files(params: StudyParams) -> dict[str, str]:
    """sha256 of every local data file the params name."""
    d = params.data
    sources = [d.train.source] + ([d.test.source] if d.test else []) + [s.source for s in d.ood]
    sources += [d.claims.source] if d.claims else []
    out = {}
    for src in sources:
        path = resolve_path(src)
        if path.is_file():
            out[src] = sha256_file(path)
    if params.teacher.backend == "replay" and params.teacher.replay_dir:
        folder = resolve_path(params.teacher.replay_dir)
        replayed = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".arrow"))
        out.update({str(p.relative_to(folder.parent)): sha256_file(p) for p in replayed})
    return out


def params_read(step: str, params: StudyParams) -> dict[str, Any]:
    """The values of every params key `step` reads (STEP_PARAMS), by dotted key."""
    dumped = params.model_dump(mode="json")
    out: dict[str, Any] = {"run": {k: v for k, v in dumped["run"].items() if k != "name"}}
    for dotted in STEP_PARAMS[step]:
        node: Any = dumped
        for part in dotted.split("."):
            node = node[part]
        out[dotted] = node
    return out


def models_read(step: str, params: StudyParams) -> dict[str, Any]:
    """The provenance (content hashes) of the models whose weights `step`'s results depend on."""
    from lib.models import model_provenance

    roles = STEP_MODELS.get(step, ())
    specs = ([params.teacher.model] if "teacher" in roles and params.teacher.backend == "local" else []) + (
        list(params.training.students) if "students" in roles else [])
    return {spec: model_provenance(spec) for spec in specs}


def step_inputs(step: str, run_dir: Path) -> dict[str, str]:
    """Files outside the step folders that a step reads: the human ratings for step 06."""
    path = run_dir / HUMAN_RATINGS
    return {HUMAN_RATINGS: sha256_file(path)} if step == "06_statistics" and path.is_file() else {}


def git_state() -> dict[str, Any]:
    """The commit the code came from and whether the tree had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment() -> dict[str, Any]:
    """Python, platform and the versions of the packages that shape results."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}


def artifact_hashes(step_dir: Path) -> dict[str, str]:
    """sha256 of every file a step wrote, by path relative to the run folder."""
    if not step_dir.is_dir():
        return {}
    return {str(p.relative_to(step_dir.parent)): sha256_file(p) for p in sorted(step_dir.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def precision_used(params: StudyParams) -> dict[str, str]:
    """The number format of each operation on this machine (run.precision resolved on run.device, lib.precision)."""
    from lib.models import number_formats

    return number_formats(params.run)


def precision_record(params: StudyParams) -> dict[str, Any]:
    """What decided the number formats: run.precision, the plan on this machine and the bf16 probe behind `auto`."""
    from lib.models import bf16_speedups, pick_device

    device = pick_device(params.run.device)
    return {"requested": params.run.precision, "plan": precision_used(params),
            "bf16_speedups": bf16_speedups(device) if params.run.precision == "auto" else None}


def fingerprint(step: str, params: StudyParams, run_dir: Path, code: str, inputs: dict[str, str]) -> str:
    """What a step's result depends on, hashed: equal fingerprints mean the step can be skipped.

    run.precision counts as resolved on this machine: `auto` continued on a machine with native bf16 recomputes.
    """
    upstream = STEPS[: STEPS.index(step)]
    return sha256_json({
        "step": step,
        "params": params_read(step, params),
        "precision": precision_used(params),
        "models": models_read(step, params),
        "code": code,
        "notebook": sha256_file(NOTEBOOKS / f"{step}.ipynb"),
        "inputs": inputs,
        "step_inputs": step_inputs(step, run_dir),
        "upstream": {u: artifact_hashes(run_dir / u) for u in upstream},
    })


def is_cached(record: dict | None, fp: str, run_dir: Path, step: str) -> bool:
    """True when the manifest's record of a step matches `fp` and its artifacts are intact."""
    if not record or record.get("status") == "failed" or record.get("fingerprint") != fp:
        return False
    return artifact_hashes(run_dir / step) == record.get("artifacts")


def execute(step: str, params: StudyParams, run_dir: Path, force: bool = False) -> None:
    """Execute one notebook with papermill into the run folder (written atomically)."""
    import papermill as pm

    target = run_dir / f"{step}.ipynb"
    partial = run_dir / f".{step}.partial.ipynb"
    # The kernel inherits this environment: put this checkout first so notebooks import the same lib as the runner.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(PROJECT_ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *paths])
    try:
        pm.execute_notebook(
            str(NOTEBOOKS / f"{step}.ipynb"), str(partial),
            parameters={"params": params.model_dump(mode="json"), "params_file": "", "run_dir": str(run_dir),
                        "force": force},
            kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar={"desc": f"{step} cells", "unit": "cell"},
            log_output=False,
            extra_arguments=["--IPKernelApp.log_level=ERROR"],  # no start-up chatter (e.g. the TCP transport warning)
        )
    finally:
        if partial.exists():
            os.replace(partial, target)
            write_handout(target)


def write_handout(notebook: Path) -> Path | None:
    """The executed notebook as self-contained HTML beside it (`<run>/<step>.html`), for readers without Jupyter."""
    from nbconvert import HTMLExporter

    try:
        html, _ = HTMLExporter(embed_images=True).from_filename(str(notebook))
    except Exception as exc:  # a handout is a convenience: never fail the study over it
        log.warning("could not write the HTML copy of %s: %s", notebook.name, exc)
        return None
    return atomic_write_text(notebook.with_suffix(".html"), html)


def run_study(params: StudyParams, run_dir: Path, steps: list[str], params_file: str = "", overrides: list[str] | None = None,
              force: bool = False) -> dict[str, Any]:
    """Execute the selected steps in order, skipping cached ones; returns the manifest."""
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = run_dir / "manifest.json"
    old = read_json(manifest_path) if manifest_path.exists() else {}
    code = code_hash()
    inputs = input_files(params)
    from lib.models import model_provenance

    specs = {params.teacher.model, *params.training.students}
    manifest: dict[str, Any] = {
        "schema": 1,
        "run": params.run.name,
        "run_dir": str(run_dir),
        "created": old.get("created") or _now(),
        "updated": _now(),
        "params_file": params_file,
        "overrides": overrides or [],
        "params": params.model_dump(mode="json"),
        "git": git_state(),
        "environment": environment(),
        "seeds": {"run": params.run.seed, "training": params.training.seeds},
        "precision": precision_record(params),
        "code": {"lib_sha256": code},
        "inputs": {"data": inputs, "models": {s: model_provenance(s) for s in sorted(specs)},
                   "embedder": params.evaluation.embedder},
        "steps": dict(old.get("steps", {})),
    }
    write_json(run_dir / "params.json", manifest["params"])
    write_json(manifest_path, manifest)
    for i, step in enumerate(steps, 1):
        fp = fingerprint(step, params, run_dir, code, inputs)
        label = f"[{i}/{len(steps)}] {step}"
        if not force and is_cached(manifest["steps"].get(step), fp, run_dir, step):
            log.info("%s cached (inputs unchanged since %s)", label, manifest["steps"][step].get("finished"))
            manifest["steps"][step]["status"] = "cached"
            continue
        log.info("%s running ... (follow it: tail -f %s)", label, run_dir / PROGRESS_LOG)
        note_progress(run_dir, step, "running")
        started, t0 = _now(), time.perf_counter()
        record: dict[str, Any] = {"fingerprint": fp, "started": started, "notebook": f"{step}.ipynb",
                                  "precision": precision_used(params)}
        try:
            execute(step, params, run_dir, force)
        except Exception as exc:  # a failed step is recorded, then the run stops
            record.update(status="failed", wall_s=round(time.perf_counter() - t0, 1), finished=_now(),
                          error=_short_error(exc), artifacts=artifact_hashes(run_dir / step))
            manifest["steps"][step] = record
            _invalidate_downstream(manifest, step)
            write_json(manifest_path, manifest)
            note_progress(run_dir, step, f"failed after {record['wall_s']} s: {record['error']}")
            raise StepFailed(f"{step} failed after {record['wall_s']} s: {record['error']}\n"
                             f"See the executed notebook {run_dir / (step + '.ipynb')}") from None
        record.update(status="ok", wall_s=round(time.perf_counter() - t0, 1), finished=_now(),
                      artifacts=artifact_hashes(run_dir / step))
        manifest["steps"][step] = record
        _invalidate_downstream(manifest, step)
        write_json(manifest_path, manifest)
        log.info("%s done in %.1f s (%d artifacts in %s/)", label, record["wall_s"], len(record["artifacts"]), step)
        note_progress(run_dir, step, f"done in {record['wall_s']} s")
    write_json(manifest_path, manifest)
    return manifest


def _invalidate_downstream(manifest: dict, step: str) -> None:
    """A re-executed step makes later records stale; their fingerprints will tell, so only mark them."""
    for later in STEPS[STEPS.index(step) + 1:]:
        if later in manifest["steps"] and manifest["steps"][later].get("status") in ("ok", "cached"):
            manifest["steps"][later]["status"] = "stale"


class StepFailed(RuntimeError):
    """A notebook raised; the message points at the executed copy."""


def _short_error(exc: Exception) -> str:
    """The error's name and message, without papermill's long traceback."""
    name = getattr(exc, "ename", type(exc).__name__)
    value = getattr(exc, "evalue", str(exc))
    return f"{name}: {value}"[:2000]


def _now() -> str:
    """UTC time in ISO format."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m lib.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("params", help="study params file, e.g. params/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one param (value parsed as YAML); repeatable")
    parser.add_argument("--steps", help="steps to run, e.g. 02,04-05 (default: all)")
    parser.add_argument("--run-dir", help="run folder (default: outputs/<run.name>)")
    parser.add_argument("--force", action="store_true",
                        help="re-execute steps even when cached, retraining and regenerating what they would reuse")
    parser.add_argument("--reuse", action="append", default=[], metavar="PUBLISHED",
                        help="seed the run folder with a published part's trained runs and student outputs, each used "
                             "only where this code and these params ask for exactly it (lib.reuse); repeatable")
    parser.add_argument("--check", action="store_true", help="validate params and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # its per-notebook chatter hides the step lines
    try:
        params = load_params(args.params, args.overrides)
        steps = parse_steps(args.steps)
    except ParamsError as exc:
        log.error("invalid params:\n%s", exc)
        return 2
    if args.check:
        log.info("%s: params are valid", args.params)
        return 0
    run_dir = Path(args.run_dir).resolve() if args.run_dir else PROJECT_ROOT / "outputs" / params.run.name
    if args.reuse and args.force:
        log.error("--reuse and --force contradict each other: --force retrains and regenerates everything a reused "
                  "part would give; use one of them")
        return 2
    missing = [p for p in args.reuse if not (Path(p) / "04_training" / "runs.jsonl").exists()]
    if missing:
        log.error("--reuse %s: not a published run folder (no 04_training/runs.jsonl); give a folder written by "
                  "python -m lib.publish, e.g. results/reference-csqa/parts/<part>", missing[0])
        return 2
    if args.reuse:
        from lib.models import number_formats
        from lib.reuse import reuse_published
        from lib.teacher import teacher_cache_path

        training_format = number_formats(params.run)["training"]
        for part in args.reuse:
            reuse_published(Path(part), run_dir, training_format, teacher_cache_path(params.teacher.cache, run_dir))
    t0 = time.perf_counter()
    try:
        run_study(params, run_dir, steps, params_file=str(args.params), overrides=args.overrides, force=args.force)
    except StepFailed as exc:
        log.error("%s", exc)
        return 1
    log.info("study finished in %.1f s; results in %s", time.perf_counter() - t0, run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
