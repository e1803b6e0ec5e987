"""Figures of the study: accuracy, CEC, ratings, loss curves, counterfactual acceptance, rationale lengths,
data size and teachers.

Figures are built on matplotlib's Agg canvas directly (no pyplot), so they render the same in a notebook, a script
or a headless job and never pile up in pyplot's figure registry. Each function returns the Figure; given `path`, it
also writes a PNG atomically. `run_figures` draws every figure of step 06's report (FIGURES: file name, caption), or
says why one is absent.
"""

from __future__ import annotations

import io
import logging
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lib.files import atomic_write_bytes
from lib.ratings import DIMENSIONS
from lib.run_tables import rated_dimensions, ratings_absent_note, RunTables, TEXT_METRICS, with_arms
from lib.stats import accuracy_table, over_seeds
from lib.training_tables import multi_term_losses

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


def _note_figure(title: str, message: str) -> Figure:
    """A small figure that states why a plot is absent (for the notebook; the report prints the note as text)."""
    fig = _new_figure(6.0, 1.6)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()
    fig.suptitle(title)
    return fig


def plot_accuracy(items: pd.DataFrame, path: str | Path | None = None, n_boot: int = 1000, seed: int = 0) -> Figure:
    """Bar chart of accuracy (%) by condition, one bar colour per test set, with 95% CI error bars from a cluster
    bootstrap over test items (lib.stats.accuracy_table: the seeds of an item are resampled together); a condition
    trained on both rationale sources has a bar per source (lib.run_tables.with_arms)."""
    _require(items, ["condition", "test_set", "correct"], "plot_accuracy")
    table = accuracy_table(with_arms(items), by=["condition", "test_set"], n_boot=n_boot, seed=seed)
    conditions = sorted(table["condition"].astype(str).unique())
    test_sets = sorted(table["test_set"].astype(str).unique())
    fig = _new_figure(max(5.0, 1.2 * len(conditions) + 2), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / len(test_sets)
    for j, (test_set, colour) in enumerate(zip(test_sets, sns.color_palette(n_colors=len(test_sets)))):
        rows = table[table["test_set"].astype(str) == test_set]
        x = [conditions.index(str(c)) + (j - (len(test_sets) - 1) / 2) * width for c in rows["condition"]]
        acc = rows["accuracy"].to_numpy() * 100
        err = np.nan_to_num(np.vstack([acc - rows["ci_low"].to_numpy() * 100, rows["ci_high"].to_numpy() * 100 - acc]))
        bars = ax.bar(x, acc, width, color=colour, label=test_set, yerr=err, capsize=3)  # no interval: no error bar
        ax.bar_label(bars, fmt="%.0f", padding=2, fontsize=8)  # print each bar's value, so a 0% bar is still visible
    ax.set_xticks(range(len(conditions)), conditions)
    ax.set(xlabel="Condition (BASE: untrained student; TEACHER: the teacher)",
           ylabel="Accuracy (% of test items correct)", ylim=(0, 100),
           title="Error bars: 95% CI, cluster bootstrap over test items")
    fig.suptitle("Accuracy by condition")
    ax.legend(title="Test set", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _finish(fig, path)


DATA_SIZE_READINGS = {"accuracy": "generated answer", "cloze_norm_accuracy": "lm-eval cloze acc_norm"}


def plot_data_size(curve: pd.DataFrame, path: str | Path | None = None,
                   readings: dict[str, str] = DATA_SIZE_READINGS) -> Figure:
    """Accuracy (%) against training questions (log axis), a line per condition with 95% CI bars, a panel per test
    set (columns) and reading (rows: `readings`, column to label, those the table has values of; the table of
    lib.data_size); BASE, untrained, is a dashed line at its first size's accuracy."""
    _require(curve, ["train_questions", "test_set", "condition", "accuracy", "ci_low", "ci_high"], "plot_data_size")
    test_sets = sorted(curve["test_set"].astype(str).unique())
    shown = {col: label for col, label in readings.items() if col in curve and curve[col].notna().any()}
    if not shown:
        raise ValueError(f"plot_data_size: the table has no values of {', '.join(readings)}")
    fig = _new_figure(4.5 * len(test_sets) + 1.5, 3.6 * len(shown) + 0.4)
    grid = fig.subplots(len(shown), len(test_sets), squeeze=False, sharey=True, sharex=True)
    conditions = sorted(curve["condition"].astype(str).unique())
    colours = dict(zip(conditions, sns.color_palette(n_colors=len(conditions))))
    for axes, (column, label) in zip(grid, shown.items()):
        low, high = ("ci_low", "ci_high") if column == "accuracy" else (f"{column}_ci_low", f"{column}_ci_high")
        for ax, test_set in zip(axes, test_sets):
            for condition in conditions:
                rows = curve[(curve["test_set"].astype(str) == test_set) & (curve["condition"] == condition)]
                rows = rows.dropna(subset=[column]).sort_values("train_questions")
                if rows.empty:
                    continue
                acc = rows[column].to_numpy() * 100
                if condition == "BASE":
                    ax.axhline(acc[0], color=colours[condition], linestyle="--", label="BASE (untrained)")
                    continue
                bounds = rows.reindex(columns=[low, high]).to_numpy(dtype=float) * 100
                err = np.vstack([acc - bounds[:, 0], bounds[:, 1] - acc])
                ax.errorbar(rows["train_questions"], acc, yerr=np.nan_to_num(err), marker="o", capsize=3,
                            color=colours[condition], label=condition)
            ax.set_xscale("log")
            ax.set(title=f"{test_set}: {label}", xlabel="Training questions (log scale)", ylim=(0, 100))
        axes[0].set_ylabel("Accuracy (% of test items correct)")
    grid[0][-1].legend(title="Condition", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Accuracy by training-set size (error bars: 95% CI over test items)")
    return _finish(fig, path)


def plot_teachers(table: pd.DataFrame, reading: str = "cloze_norm_correct", path: str | Path | None = None) -> Figure:
    """Accuracy (%) of one `reading` by teacher with 95% CI bars, a panel per test set (the table of
    lib.teacher_comparison); BASE, untrained, is a dashed line."""
    _require(table, ["teacher", "condition", "test_set", "reading", "accuracy", "ci_low", "ci_high"], "plot_teachers")
    rows = table[table["reading"] == reading]
    if rows.empty:
        raise ValueError(f"plot_teachers: the table has no rows of reading {reading!r}; it has "
                         f"{', '.join(sorted(table['reading'].astype(str).unique()))}: pass one of them")
    test_sets = sorted(rows["test_set"].astype(str).unique())
    teachers = list(dict.fromkeys(rows.loc[rows["condition"] != "BASE", "teacher"].astype(str)))
    fig = _new_figure(max(4.5, 1.6 * len(teachers) + 1.0) * len(test_sets), 4.5)
    axes = fig.subplots(1, len(test_sets), squeeze=False, sharey=True)[0]
    colours = sns.color_palette(n_colors=len(teachers))
    for ax, test_set in zip(axes, test_sets):
        panel = rows[rows["test_set"].astype(str) == test_set]
        for x, (teacher, colour) in enumerate(zip(teachers, colours)):
            point = panel[panel["teacher"].astype(str) == teacher]
            if point.empty:
                continue
            acc = point["accuracy"].to_numpy() * 100
            err = np.vstack([acc - point["ci_low"].to_numpy() * 100, point["ci_high"].to_numpy() * 100 - acc])
            ax.errorbar([x], acc, yerr=np.nan_to_num(err), marker="o", capsize=4, color=colour, linestyle="none")
        for base in panel.loc[panel["condition"] == "BASE", "accuracy"].to_numpy() * 100:
            ax.axhline(base, color="0.4", linestyle="--", label="BASE (untrained)")
        labels = [textwrap.fill(t, 18, break_on_hyphens=False) for t in teachers]
        ax.set_xticks(range(len(teachers)), labels, fontsize=8)
        ax.set(title=test_set, xlabel="Teacher of the rationales", ylim=(0, 100), xlim=(-0.5, len(teachers) - 0.5))
    axes[0].set_ylabel(f"Accuracy (% of test items correct; {reading})")
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    condition = ", ".join(sorted(set(rows["condition"].astype(str)) - {"BASE"}))
    fig.suptitle(f"{condition} accuracy by teacher (error bars: 95% CI over test items)")
    return _finish(fig, path)


def plot_ood_heatmap(items: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Heatmap of accuracy (%) and test items by condition (rows; per rationale source when there are two) and test
    set (columns): in- vs out-of-distribution."""
    _require(items, ["condition", "test_set", "correct", "item_id"], "plot_ood_heatmap")
    items = with_arms(items)
    table = items.pivot_table(index="condition", columns="test_set", values="correct", aggfunc="mean") * 100
    counts = items.pivot_table(index="condition", columns="test_set", values="item_id", aggfunc="nunique").fillna(0)
    fig = _new_figure(max(4.5, 1.6 * table.shape[1] + 2.5), max(2.5, 0.55 * table.shape[0] + 1.5))
    ax = fig.add_subplot()
    labels = table.map(lambda v: f"{v:.1f}").astype(str) + "\n(" + counts.astype(int).astype(str) + " items)"
    sns.heatmap(table, annot=labels, fmt="", vmin=0, vmax=100, cmap="viridis", cbar_kws={"label": "accuracy (%)"},
                ax=ax)
    ax.set(xlabel="Test set", ylabel="Condition")
    fig.suptitle("Accuracy by test set (in and out of distribution)")
    return _finish(fig, path)


def plot_cec(items: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Box plot of per-item CEC by condition (per rationale source when there are two, with the items as dots), for the
    conditions with a CEC (not TEACHER, whose rationale is the reference); a note instead when no item has one."""
    _require(items, ["condition", "cec"], "plot_cec")
    data = over_seeds(with_arms(items), ["cec"]).dropna(subset=["cec"])
    conditions = sorted(data["condition"].astype(str).unique())
    fig = _new_figure(max(5.0, 1.2 * len(conditions) + 2), 4.0)
    ax = fig.add_subplot()
    ax.set(xlabel="Training condition", ylabel="CEC (1 = same content as the teacher)",
           title="One dot per test item (mean over seeds)")
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


def plot_cec_vs_metrics(items: pd.DataFrame, metrics: Sequence[str] = TEXT_METRICS,
                        path: str | Path | None = None) -> Figure:
    """Scatter of CEC against each explanation metric present, one panel per metric, coloured by condition (per
    rationale source when there are two)."""
    present = [m for m in metrics if m in items.columns and items[m].notna().any()]
    if not present or "cec" not in items.columns:
        raise ValueError(f"plot_cec_vs_metrics needs column cec and one of {', '.join(metrics)} with values")
    items = with_arms(items)
    fig = _new_figure(4.0 * len(present) + 1.5, 3.8)
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    hue_order = sorted(items["condition"].astype(str).unique())
    for ax, m in zip(axes, present):
        data = items.dropna(subset=["cec", m]).assign(condition=lambda d: d["condition"].astype(str))
        sns.scatterplot(data=data, x=m, y="cec", hue="condition", hue_order=hue_order, ax=ax, legend=ax is axes[-1],
                        alpha=0.7)
        ax.set(xlabel=m, ylabel="CEC", title=f"CEC vs {m} (n={len(data)})")
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.0, 1.0), title="Condition")
    fig.suptitle("Does CEC agree with surface and embedding metrics?")
    return _finish(fig, path)


def plot_ratings(ratings: pd.DataFrame, dimensions: Sequence[str] = DIMENSIONS,
                 path: str | Path | None = None) -> Figure:
    """Distribution of ratings per dimension and condition (per rationale source when there are two; one panel per
    dimension), judge and humans pooled."""
    present = [d for d in dimensions if d in ratings.columns and ratings[d].notna().any()
               and pd.api.types.is_numeric_dtype(ratings[d])]
    if not present:
        raise ValueError(f"plot_ratings needs one of the columns {', '.join(dimensions)} with values")
    long = with_arms(ratings).melt(id_vars=["condition"], value_vars=present, var_name="dimension",
                                   value_name="rating").dropna()
    long["condition"] = long["condition"].astype(str)
    fig = _new_figure(3.6 * len(present) + 1.5, 3.8)
    axes = fig.subplots(1, len(present), squeeze=False, sharey=True)[0]
    order = sorted(long["condition"].unique())
    for ax, dim in zip(axes, present):
        sns.boxplot(data=long[long["dimension"] == dim], x="condition", y="rating", order=order,
                    color="lightsteelblue", showfliers=False, ax=ax)
        sns.stripplot(data=long[long["dimension"] == dim], x="condition", y="rating", order=order, color="0.25",
                      size=3, alpha=0.4, jitter=0.25, ax=ax)
        ax.set(xlabel="Training condition", ylabel="Rating (Likert)", title=dim)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"Ratings by condition ({ratings['rater'].nunique()} rater(s))")
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


def plot_losses(losses: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Loss curves of the trained runs, one panel per loss term; a figure with a note when none was trained (BASE only)."""
    if len(losses):
        return plot_loss_curves(losses, path=path)
    return _finish(_note_figure("Loss curves", "No trained run in this study (BASE is untrained)."), path)


def plot_term_losses(losses: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Loss curves per term of the MT / CF / MT+CF runs; a figure with a note when none was trained."""
    multi = multi_term_losses(losses)
    if len(multi):
        return plot_loss_curves(multi, path=path)
    return _finish(_note_figure("Loss terms", "No MT, CF or MT+CF run in this study: no loss terms to compare."), path)


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


def plot_rationale_lengths(rows: list, path: str | Path | None = None) -> Figure:
    """Histogram of rationale lengths in words, one colour per split."""
    data = pd.DataFrame({"split": [r.split for r in rows], "words": [len(r.rationale.split()) for r in rows]})
    fig = _new_figure(6.0, 3.5)
    ax = fig.add_subplot()
    sns.histplot(data=data, x="words", hue="split", multiple="dodge", shrink=0.9, ax=ax)
    ax.set(xlabel="rationale length (words)", ylabel="questions", title="Teacher rationale lengths")
    return _finish(fig, path)


FIGURES = {  # file name, caption
    "accuracy": ("accuracy_by_condition.png", "Accuracy by condition with 95% confidence intervals from a cluster "
                                              "bootstrap over test items (the seeds of an item resampled together). "
                                              "BASE is the untrained student (the floor), TEACHER the teacher's own "
                                              "answers to the in-distribution questions (the ceiling)."),
    "ood": ("ood_heatmap.png", "Accuracy by condition and test set (out-of-distribution sets beside the "
                               "in-distribution one; TEACHER answered the in-distribution set only)."),
    "cec": ("cec_by_condition.png", "Per-item CEC by condition (mean over seeds)."),
    "cec_vs_metrics": ("cec_vs_metrics.png", "CEC against BLEU, ROUGE-L and BERTScore on the same explanations."),
    "ratings": ("ratings.png", "Distribution of ratings by condition."),
    "loss": ("loss_curves.png", "Training loss curves of every run."),
    "acceptance": ("acceptance.png", "Counterfactual questions: outcomes and which distractor became the target."),
}


def run_figures(tables: RunTables, out: str | Path | None = None, n_boot: int = 1000,
                seed: int = 0) -> dict[str, Figure | str]:
    """Every figure of the report (written to `out` when given); an absent input gives a note string instead."""
    items = tables.items
    out = Path(out) if out is not None else None
    path = {k: (out / name if out is not None else None) for k, (name, _) in FIGURES.items()}
    no_items = "No test item was answered (05_evaluation/items.jsonl is empty); this input is absent."
    figs: dict[str, Figure | str] = {
        "accuracy": plot_accuracy(items, path=path["accuracy"], n_boot=n_boot, seed=seed) if len(items) else no_items,
        "ood": plot_ood_heatmap(items, path=path["ood"]) if len(items) else no_items}
    if items["test_set"].nunique() == 1:
        log.info("only one test set: the heatmap has no out-of-distribution column")
    figs["cec"] = (plot_cec(items, path=path["cec"]) if "cec" in items and items["cec"].notna().any()
                   else "No item has a CEC score (no teacher reference or no rationale); this input is absent.")
    metrics = [m for m in TEXT_METRICS if m in items.columns and items[m].notna().any()]
    figs["cec_vs_metrics"] = (plot_cec_vs_metrics(items, path=path["cec_vs_metrics"])
                              if metrics and "cec" in items and items["cec"].notna().any() else
                              "BLEU / ROUGE-L / BERTScore (or CEC) are absent from 05_evaluation/items.jsonl; "
                              "this input is absent.")
    figs["ratings"] = (plot_ratings(tables.ratings, path=path["ratings"]) if rated_dimensions(tables.ratings) else
                       ratings_absent_note(tables.ratings))
    figs["loss"] = (plot_loss_curves(tables.losses, path=path["loss"]) if tables.losses is not None else
                    "No loss curves (04_training/<run>/losses.jsonl is absent); this input is absent.")
    figs["acceptance"] = (plot_acceptance(tables.acceptance, path=path["acceptance"]) if tables.acceptance else
                          "No counterfactual acceptance (03_counterfactuals/acceptance.json is absent); "
                          "this input is absent.")
    for key, fig in figs.items():  # a PNG from an earlier execution would contradict the note
        if isinstance(fig, str) and path[key] is not None:
            path[key].unlink(missing_ok=True)
    return figs


def show_figure(figure: Figure | str) -> object:
    """Render a figure of run_figures in a notebook (PNG), or the note that says why it is absent."""
    from IPython.display import Image, Markdown

    if isinstance(figure, str):
        return Markdown(f"**Figure absent:** {figure}")
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return Image(data=buf.getvalue(), format="png")
