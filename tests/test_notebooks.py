"""The committed notebooks: clean, in sync with their jupytext .py pairs, parameters papermill can read, no logic."""

import ast

import nbformat
import pytest
from papermill.translators import PythonTranslator

from lib.files import PROJECT_ROOT
from lib.runs import STEPS

NOTEBOOKS = PROJECT_ROOT / "notebooks"


def load(step: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{step}.ipynb", as_version=4)


@pytest.mark.parametrize("step", STEPS)
def test_notebook_is_clean_and_starts_with_a_lesson(step):
    nb = load(step)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {step[:2]}")
    assert "**Goals**" in nb.cells[0].source and "**Reads**" in nb.cells[0].source
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Try it") and last.source.count("\n1. ") == 1


@pytest.mark.parametrize("step", STEPS)
def test_parameters_cell_is_readable_by_papermill(step):
    cells = [c for c in load(step).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    names = {p.name: p for p in PythonTranslator.inspect(cells[0])}
    assert set(names) == {"params", "params_file", "run_dir", "force"}
    assert all(p.help for p in names.values())


UNDER_THE_HOOD = "under-the-hood"  # a cell that computes one item by hand and asserts the library agrees


@pytest.mark.parametrize("step", STEPS)
def test_notebooks_hold_no_logic(step):
    for cell in load(step).cells:
        if cell.cell_type != "code" or UNDER_THE_HOOD in cell.metadata.get("tags", []):
            continue
        tree = ast.parse(cell.source)
        kinds = {type(n).__name__ for n in ast.walk(tree)}
        assert not kinds & {"FunctionDef", "ClassDef", "For", "While", "If", "Try", "Lambda"}, cell.source
        assert cell.source.startswith("# "), f"each code cell opens with a '# verb phrase' comment: {cell.source[:60]}"


@pytest.mark.parametrize("step", STEPS[1:])
def test_each_method_notebook_works_one_item_by_hand(step):
    cells = [c for c in load(step).cells if UNDER_THE_HOOD in c.metadata.get("tags", [])]
    assert cells, f"{step} has no cell tagged {UNDER_THE_HOOD}"
    for cell in cells:
        code = [line for line in cell.source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert len(code) <= 16, f"{step}: an under-the-hood cell is short ({len(code)} lines of code)"
        assert cell.source.startswith("# ") and any(isinstance(n, ast.Assert) for n in ast.walk(ast.parse(cell.source)))


def cells_of(nb: nbformat.NotebookNode) -> list[tuple[str, str, list[str]]]:
    """What a pair must agree on: each cell's type, source and tags."""
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("step", STEPS)
def test_each_notebook_is_in_sync_with_its_jupytext_pair(step):
    import jupytext

    paired = jupytext.read(NOTEBOOKS / f"{step}.py", fmt="py:percent")
    assert cells_of(paired) == cells_of(load(step)), (
        f"notebooks/{step}.ipynb and notebooks/{step}.py differ: after editing one, run "
        f"`.venv/bin/jupytext --sync notebooks/{step}.py` (JupyterLab with jupytext saves both)")


def test_pairs_are_declared_for_jupyterlab():
    config = (NOTEBOOKS / "jupytext.toml").read_text()
    assert 'formats = "ipynb,py:percent"' in config
