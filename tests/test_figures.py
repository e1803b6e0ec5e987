"""Tests of lib.figures: every plot writes a PNG (or nothing without a path), says what it needs, and draws the
statistics it shows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.test_report import make_run, PNG_MAGIC
from tests.test_stats import synthetic_items


def test_plots_write_png_files(tmp_path):
    from matplotlib.figure import Figure

    from lib.figures import plot_accuracy, plot_cec, plot_loss_curves

    items = synthetic_items(120)
    losses = pd.DataFrame([{"run": r, "step": s, "loss": 3 / (s + 1) + k, "term": t}
                           for r in ("MT-s0", "CF-s0") for s in range(20)
                           for k, t in enumerate(("answer", "rationale"))])
    for fn, data, name in [(plot_accuracy, items, "acc.png"), (plot_loss_curves, losses, "loss.png"),
                           (plot_cec, items, "cec.png"), (plot_cec, items.assign(cec=np.nan), "no_cec.png")]:
        path = tmp_path / "figs" / name
        fig = fn(data, path=path)
        assert isinstance(fig, Figure)
        data_bytes = path.read_bytes()
        assert data_bytes.startswith(PNG_MAGIC) and len(data_bytes) > 5000
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["acc.png", "cec.png", "loss.png", "no_cec.png"]


def test_plot_without_path_writes_nothing(tmp_path, monkeypatch):
    from lib.figures import plot_accuracy

    monkeypatch.chdir(tmp_path)
    fig = plot_accuracy(synthetic_items(60))
    assert fig.axes[0].get_ylabel().startswith("Accuracy")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fn", ["plot_ood_heatmap", "plot_cec_vs_metrics", "plot_ratings"])
def test_new_figures_write_png(tmp_path, fn):
    from lib import figures, run_tables

    tables = run_tables.load_run_tables(make_run(tmp_path, n_items=10))
    data = tables.ratings if fn == "plot_ratings" else tables.items
    getattr(figures, fn)(data, path=tmp_path / f"{fn}.png")
    assert (tmp_path / f"{fn}.png").read_bytes().startswith(PNG_MAGIC)
    if fn != "plot_ood_heatmap":
        with pytest.raises(ValueError, match="needs"):
            getattr(figures, fn)(data.drop(columns=["bleu", "rouge_l", "bertscore", "completeness",
                                                    "contrastiveness", "soundness"], errors="ignore"))


def test_accuracy_figure_draws_the_cluster_bootstrap_intervals(tmp_path):
    from matplotlib.container import ErrorbarContainer

    from lib import run_tables, stats
    from lib.figures import plot_accuracy

    items = run_tables.load_run_tables(make_run(tmp_path, n_items=10, seeds=(0, 1, 2), with_optional=False)).items
    fig = plot_accuracy(items, n_boot=200)
    table = stats.accuracy_table(items, by=["condition", "test_set"], n_boot=200)
    drawn = sorted(tuple(np.round(seg[:, 1], 6)) for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)
                   for seg in c.lines[2][0].get_segments())
    expected = zip(table["ci_low"] * 100, table["ci_high"] * 100)
    assert drawn == sorted(tuple(np.round([lo, hi], 6)) for lo, hi in expected)
