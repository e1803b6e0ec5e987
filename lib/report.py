"""Figures of the study: accuracy by condition, training loss curves and CEC distributions.

Figures are built on matplotlib's Agg canvas directly (no pyplot), so they render the same in a
notebook, a script or a headless job and never pile up in pyplot's figure registry. Each function
returns the Figure; given `path`, it also writes a PNG atomically.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lib.runs import atomic_write_bytes

log = logging.getLogger(__name__)


def _new_figure(width: float, height: float) -> Figure:
    """A Figure drawn by the Agg canvas, independent of the session's pyplot backend."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write `fig` as a PNG at `path` through a temp file and a rename."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    """Save the figure when a path is given, and return it."""
    if path is not None:
        log.info("wrote %s", save_png(fig, path))
    return fig


def _require(df: pd.DataFrame, columns: list[str], what: str) -> None:
    """Raise when a table lacks a column a plot needs."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs column(s) {', '.join(missing)}; the table has {', '.join(map(str, df.columns))}")


def plot_accuracy(items: pd.DataFrame, path: str | Path | None = None, n_boot: int = 1000, seed: int = 0) -> Figure:
    """Bar chart of accuracy (%) by condition, one bar colour per test set, with bootstrap 95% CI error bars."""
    _require(items, ["condition", "test_set", "correct"], "plot_accuracy")
    data = items.assign(accuracy=items["correct"].astype(float) * 100)
    conditions = sorted(data["condition"].astype(str).unique())
    fig = _new_figure(max(5.0, 1.2 * len(conditions) + 2), 4.0)
    ax = fig.add_subplot()
    sns.barplot(data=data, x="condition", y="accuracy", hue="test_set", order=conditions,
                hue_order=sorted(data["test_set"].astype(str).unique()), errorbar=("ci", 95), n_boot=n_boot,
                seed=seed, capsize=0.1, ax=ax)
    ax.set(xlabel="Training condition", ylabel="Accuracy (% of test items correct)", ylim=(0, 100),
           title="Error bars: 95% bootstrap confidence interval")
    fig.suptitle("Student accuracy by training condition")
    ax.legend(title="Test set", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _finish(fig, path)


def plot_loss_curves(losses: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Training loss by step, one line per run, one panel per loss term (e.g. answer, rationale, total)."""
    _require(losses, ["run", "step", "loss"], "plot_loss_curves")
    data = losses if "term" in losses else losses.assign(term="loss")
    terms = list(dict.fromkeys(data["term"].astype(str)))
    fig = _new_figure(4.5 * len(terms) + 1.5, 3.8)
    axes = fig.subplots(1, len(terms), sharey=False, squeeze=False)[0]
    for ax, term in zip(axes, terms):
        sns.lineplot(data=data[data["term"].astype(str) == term], x="step", y="loss", hue="run",
                     hue_order=sorted(data["run"].astype(str).unique()), ax=ax, legend=ax is axes[-1])
        ax.set(xlabel="Training step", ylabel="Loss (cross-entropy)", title=f"Loss term: {term}")
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.0, 1.0), title="Run")
    fig.suptitle("Training loss curves")
    return _finish(fig, path)


def plot_cec(items: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Box plot of per-item CEC by condition (with the items as dots); a note instead when no item has a CEC."""
    _require(items, ["condition", "cec"], "plot_cec")
    data = items.dropna(subset=["cec"])
    conditions = sorted(items["condition"].astype(str).unique())
    fig = _new_figure(max(5.0, 1.2 * len(conditions) + 2), 4.0)
    ax = fig.add_subplot()
    ax.set(xlabel="Training condition", ylabel="CEC (1 = same content as the teacher)",
           title="One dot per test item")
    fig.suptitle("Explanation coherence with the teacher's rationale (CEC)")
    if data.empty:
        log.warning("plot_cec: no item has a CEC score (no teacher reference or no rationale)")
        ax.text(0.5, 0.5, "No CEC scores: no item had both a rationale and a teacher reference",
                ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set(xticks=[], yticks=[], title="")
        return _finish(fig, path)
    data = data.assign(condition=data["condition"].astype(str))
    sns.boxplot(data=data, x="condition", y="cec", order=conditions, color="lightsteelblue", showfliers=False, ax=ax)
    sns.stripplot(data=data, x="condition", y="cec", order=conditions, color="0.25", size=2, alpha=0.4,
                  jitter=0.25, ax=ax)
    ax.set(xlabel="Training condition", ylabel="CEC (1 = same content as the teacher)")
    return _finish(fig, path)


def show_markdown(text: str) -> object:
    """Render markdown in a notebook (plain text elsewhere)."""
    from IPython.display import Markdown

    return Markdown(text)


def show_markdown_table(rows: list[dict]) -> object:
    """Render a list of dicts as a markdown table, so **bold** marks inside cells show."""
    if not rows:
        return show_markdown("*(nothing to show)*")
    cols = list(rows[0])
    esc = [[str(r.get(c, "")).replace("|", "\\|").replace("\n", " ") for c in cols] for r in rows]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(e) + " |" for e in esc]
    return show_markdown("\n".join(lines))


def frame_of(summary: dict[str, dict]) -> pd.DataFrame:
    """A nested summary ({split: {metric: value}}) as a table with one row per split."""
    return pd.DataFrame(summary).T


def plot_rationale_lengths(rows: list, path: str | Path | None = None) -> Figure:
    """Histogram of rationale lengths in words, one colour per split."""
    data = pd.DataFrame({"split": [r.split for r in rows], "words": [len(r.rationale.split()) for r in rows]})
    fig = _new_figure(6.0, 3.5)
    ax = fig.add_subplot()
    sns.histplot(data=data, x="words", hue="split", multiple="dodge", shrink=0.9, ax=ax)
    ax.set(xlabel="rationale length (words)", ylabel="questions", title="Teacher rationale lengths")
    return _finish(fig, path)


def plot_acceptance(acceptance: dict, path: str | Path | None = None) -> Figure:
    """Counterfactual outcomes by reason, and which distractor (by rank) became the new target."""
    fig = _new_figure(9.0, 3.5)
    left, right = fig.subplots(1, 2)
    reasons = pd.Series(acceptance["reasons"]).sort_values()
    left.barh(reasons.index, reasons.values, color="tab:blue")
    left.set(xlabel="questions", title=f"Outcomes ({acceptance['accepted']}/{acceptance['attempted']} accepted)")
    ranks = pd.Series(acceptance["new_target_distractor_rank"])
    right.bar(ranks.index.astype(str), ranks.values, color="tab:orange")
    right.set(xlabel="distractor rank (1 = first wrong option)", ylabel="counterfactuals", title="New target")
    return _finish(fig, path)
