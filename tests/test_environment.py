"""The two environment files pin the same packages, and CI runs the README's test command."""

import re
import tomllib

import yaml

from lib.files import PROJECT_ROOT


def pins_from_pyproject() -> dict[str, str]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return dict(_pin(r) for r in reqs)


def pins_from_environment() -> dict[str, str]:
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return dict(_pin(r) for r in pip)


def _pin(req: str) -> tuple[str, str]:
    name, sep, version = req.partition("==")
    assert sep, f"{req!r} is not pinned with =="
    return re.sub(r"[-_.]+", "-", name.strip().lower()), version.strip()


def test_pyproject_and_environment_pin_the_same_versions():
    assert pins_from_pyproject() == pins_from_environment()


def test_ci_runs_the_readme_test_command():
    readme = (PROJECT_ROOT / "README.md").read_text()
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    command = ".venv/bin/python -m pytest -q"
    assert command in readme and command in ci
