"""The shape of lib/: every import points down the layer order written here, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"

# The layer order, lowest first. A module imports only modules listed before it; a leaf imports nothing of ours.
# Notebooks call the stage and analysis modules; stage modules call foundations and the stages upstream of them.
LAYERS: dict[str, list[str]] = {
    "leaf": ["files", "questions", "metrics", "head_loss", "precision", "batching"],
    "foundation": ["conditions", "params", "runs", "response_cache", "models", "prompts", "ratings"],
    "stage": ["question_checks", "data", "recorded", "teacher_engine", "openai_api", "teacher", "counterfactual", "multiview", "examples", "training", "training_tables",
              "scoring", "standard_readings", "student_cache", "evaluation", "evaluation_tables"],
    "analysis": ["stats", "run_tables", "results_table", "findings", "figures", "data_size", "teacher_comparison", "report", "reuse", "publish", "published"],
    "runner": ["study"],
}
ORDER = [m for layer in LAYERS.values() for m in layer]


def lib_imports(path: Path) -> dict[str, int]:
    """The lib modules a file imports, anywhere in it (functions included), with the line of the first import."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "lib":
                names = [a.name for a in node.names]
            elif node.module.startswith("lib."):
                names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("lib.")]
        for name in names:
            found.setdefault(name, node.lineno)
    return found


def modules() -> list[str]:
    """Every module of lib/ (the package's __init__ aside)."""
    return sorted(p.stem for p in LIB.glob("*.py") if p.stem != "__init__")


def test_every_module_has_a_place_in_the_layer_order():
    """A new module is placed in LAYERS; a removed one leaves it."""
    assert sorted(ORDER) == modules(), (
        f"not in LAYERS: {sorted(set(modules()) - set(ORDER))}; in LAYERS but not in lib/: "
        f"{sorted(set(ORDER) - set(modules()))}")


@pytest.mark.parametrize("module", modules())
def test_imports_point_down_the_layer_order(module):
    """No upward import and so no cycle: each lib import of `module` is of a module placed before it."""
    if module not in ORDER:
        pytest.skip(f"{module} has no place in LAYERS (the test above fails)")
    rank = ORDER.index(module)
    upward = {name: line for name, line in lib_imports(LIB / f"{module}.py").items()
              if name not in ORDER or ORDER.index(name) >= rank}
    assert not upward, "; ".join(f"lib/{module}.py:{line} imports lib.{name}, placed at or above it in LAYERS"
                                 for name, line in upward.items())


def test_leaves_import_nothing_of_ours():
    """Leaf modules are the ground every other module stands on."""
    for module in LAYERS["leaf"]:
        assert not lib_imports(LIB / f"{module}.py"), f"lib/{module}.py is a leaf but imports {lib_imports(LIB / f'{module}.py')}"


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    """An import hidden in a function body counts like one at the top."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from lib.report import x\n    import lib.stats\n")
    assert lib_imports(source) == {"report": 2, "stats": 3}


@pytest.mark.parametrize("module", modules())
def test_modules_stay_readable_in_one_sitting(module):
    """About 500 lines at most, unless the module's docstring says why it is longer."""
    path = LIB / f"{module}.py"
    n = len(path.read_text(encoding="utf-8").splitlines())
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert n <= 560 or "Longer than" in doc, f"lib/{module}.py has {n} lines: split it, or say at its top why not"
