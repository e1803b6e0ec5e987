"""Figures of the study and the run report: one self-contained HTML file per run, and runs side by side.

    python -m lib.report outputs/a -o report.html       # rebuild one run's report from its files
    python -m lib.report outputs/a outputs/b -o comparison.html   # compare runs side by side

Figures are built on matplotlib's Agg canvas directly (no pyplot), so they render the same in a
notebook, a script or a headless job and never pile up in pyplot's figure registry. Each function
returns the Figure; given `path`, it also writes a PNG atomically.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lib.files import atomic_write_bytes
from lib.training import multi_term_losses

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
    """Bar chart of accuracy (%) by condition, one bar colour per test set, with 95% CI error bars from a cluster
    bootstrap over test items (lib.stats.accuracy_table: the seeds of an item are resampled together); a condition
    trained on both rationale sources has a bar per source (lib.stats.with_arms)."""
    from lib.stats import accuracy_table, with_arms

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


def plot_cec(items: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Box plot of per-item CEC by condition (per rationale source when there are two, with the items as dots), for the
    conditions with a CEC (not TEACHER, whose rationale is the reference); a note instead when no item has one."""
    from lib.stats import over_seeds, with_arms

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


def _note_figure(title: str, message: str) -> Figure:
    """A small figure that states why a plot is absent (for the notebook; the report prints the note as text)."""
    fig = _new_figure(6.0, 1.6)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()
    fig.suptitle(title)
    return fig


def plot_ood_heatmap(items: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Heatmap of accuracy (%) and test items by condition (rows; per rationale source when there are two) and test
    set (columns): in- vs out-of-distribution."""
    from lib.stats import with_arms

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


def plot_cec_vs_metrics(items: pd.DataFrame, metrics: Sequence[str] = ("bleu", "rouge_l", "bertscore"),
                        path: str | Path | None = None) -> Figure:
    """Scatter of CEC against each explanation metric present, one panel per metric, coloured by condition (per
    rationale source when there are two)."""
    from lib.stats import with_arms

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


def plot_ratings(ratings: pd.DataFrame, dimensions: Sequence[str] = ("completeness", "contrastiveness", "soundness"),
                 path: str | Path | None = None) -> Figure:
    """Distribution of ratings per dimension and condition (per rationale source when there are two; one panel per
    dimension), judge and humans pooled."""
    from lib.stats import with_arms

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


def run_figures(tables, out: str | Path | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Figure | str]:
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
    metrics = [m for m in ("bleu", "rouge_l", "bertscore") if m in items.columns and items[m].notna().any()]
    figs["cec_vs_metrics"] = (plot_cec_vs_metrics(items, path=path["cec_vs_metrics"])
                              if metrics and "cec" in items and items["cec"].notna().any() else
                              "BLEU / ROUGE-L / BERTScore (or CEC) are absent from 05_evaluation/items.jsonl; "
                              "this input is absent.")
    from lib.stats import rated_dimensions, ratings_absent_note

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


# --- HTML report ---------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #345}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#eef2f6}td:first-child,th:first-child{text-align:left}
.note{background:#fff6dd;border-left:4px solid #e0a800;padding:.4em .8em;margin:.4em 0}
.absent{background:#f1f1f1;border-left:4px solid #999;padding:.4em .8em;margin:.4em 0}
.expl{color:#555;font-style:italic}.sig{font-weight:600}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
img{max-width:100%}details{margin:.5em 0}pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.8em}
.runs{display:grid;gap:1em}
"""


def _table_html(df: pd.DataFrame, max_rows: int = 200) -> str:
    """A table as HTML with numbers rounded for reading (the CSV keeps full precision)."""
    shown = df.head(max_rows)
    more = f"<p>… {len(df) - max_rows} more rows in the CSV.</p>" if len(df) > max_rows else ""
    return shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–", border=0, escape=True) + more


def section_html(section) -> str:
    """One analysis section (lib.stats.Section) as HTML: explanation, sentences, notes, table."""
    parts = [f"<h3>{html.escape(section.title)}</h3>", f"<p class='expl'>{html.escape(section.explanation)}</p>"]
    if section.sentences:
        parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in section.sentences) + "</ul>")
    for note in section.notes:
        cls = "absent" if "input is absent" in note else "note"
        label = "Input absent" if cls == "absent" else "Not tested / caution"
        parts.append(f"<div class='{cls}'><b>{label}:</b> {html.escape(note)}</div>")
    if section.ran:
        parts.append(f"<details open><summary>Table ({len(section.table)} rows; "
                     f"06_statistics/{html.escape(section.key)}.csv)</summary>{_table_html(section.table)}</details>")
    elif not section.notes:
        parts.append("<div class='note'>Nothing to report.</div>")
    return "\n".join(parts)


def figure_html(fig: Figure | str, caption: str) -> str:
    """A figure embedded as a base64 PNG with its caption, or the note that says why it is absent."""
    if isinstance(fig, str):
        return f"<figure><div class='absent'><b>Figure absent:</b> {html.escape(fig)}</div>" \
               f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _read_manifest(run_dir: Path) -> dict:
    """The run's manifest.json, or {} when absent."""
    from lib.files import read_json

    path = run_dir / "manifest.json"
    return read_json(path) if path.exists() else {}


def provenance_html(manifest: dict, this_step: str = "06_statistics") -> str:
    """Git state, environment, inputs, params and each step's status from the manifest."""
    if not manifest:
        return "<div class='absent'><b>Input absent:</b> no manifest.json in the run folder, so the provenance " \
               "of these numbers is unknown.</div>"
    git = manifest.get("git", {})
    env = manifest.get("environment", {})
    rows = [{"step": s, "status": r.get("status"), "wall_s": r.get("wall_s"), "finished": r.get("finished"),
             "artifacts": len(r.get("artifacts", {}))} for s, r in sorted(manifest.get("steps", {}).items())]
    dirty = {True: "yes: uncommitted changes, so the commit alone does not reproduce this run", False: "no",
             None: "unknown"}[git.get("dirty")]
    inputs = manifest.get("inputs", {})
    hashes = [{"input": k, "sha256": v} for k, v in inputs.get("data", {}).items()]
    hashes += [{"input": f"model {k}", "sha256": (v or {}).get("sha256") if isinstance(v, dict) else v}
               for k, v in inputs.get("models", {}).items()]
    packages = [{"package": k, "version": v} for k, v in env.get("packages", {}).items()]
    parts = [
        "<table>",
        *(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in [
            ("run", manifest.get("run")), ("params file", manifest.get("params_file")),
            ("overrides", " ".join(manifest.get("overrides", [])) or "none"),
            ("git commit", git.get("commit")), ("uncommitted changes", dirty),
            ("lib sha256", manifest.get("code", {}).get("lib_sha256")),
            ("python", env.get("python")), ("platform", env.get("platform")),
            ("seeds", json.dumps(manifest.get("seeds"))), ("embedder", inputs.get("embedder")),
            ("created / updated", f"{manifest.get('created')} / {manifest.get('updated')}")]),
        "</table>",
        f"<p>Steps as recorded in manifest.json. Step {this_step} is the one writing this report: the runner records "
        f"its status and artifacts only after the notebook finishes, so its row (if any) is from an earlier run and "
        f"reads running or stale. The provenance of steps 01-05 is final.</p>",
        _table_html(pd.DataFrame(rows)) if rows else "<p>No steps recorded.</p>",
        "<details><summary>Input hashes (sha256)</summary>" + _table_html(pd.DataFrame(hashes)) + "</details>"
        if hashes else "",
        "<details><summary>Package versions</summary>" + _table_html(pd.DataFrame(packages)) + "</details>"
        if packages else "",
        "<details><summary>Params (resolved)</summary><pre>" +
        html.escape(json.dumps(manifest.get("params", {}), indent=2, sort_keys=True)) + "</pre></details>",
    ]
    return "\n".join(parts)


def _summary_html(sections: dict) -> str:
    """The top-of-report box: what the data supports, and which analyses could not run."""
    skipped = [s.title for s in sections.values() if not s.ran]
    ran = [s.title for s in sections.values() if s.ran]
    parts = [f"<p>{len(ran)} of {len(sections)} analyses ran.</p>"]
    if skipped:
        parts.append("<div class='note'><b>Too few observations or absent inputs</b> for: "
                     + html.escape("; ".join(skipped)) + ". Each section below says why. With few test items or "
                     "one seed, read the numbers as a check that the pipeline works, not as evidence.</div>")
    return "\n".join(parts)


def render_run_report(run_dir: str | Path, sections: dict, figures: dict[str, Figure | str],
                      manifest: dict | None = None) -> str:
    """The whole report of one run as a self-contained HTML string."""
    run_dir = Path(run_dir)
    manifest = _read_manifest(run_dir) if manifest is None else manifest
    name = manifest.get("run") or run_dir.name
    items = sections["accuracy"].table if "accuracy" in sections else None
    counts = ""
    if items is not None and {"n"} <= set(items.columns):
        counts = f"<p>{int(items['n'].sum())} evaluated (run, item) pairs.</p>"
    body = [
        f"<h1>Run report: {html.escape(str(name))}</h1>",
        f"<p>Run folder <code>{html.escape(str(run_dir))}</code>; report written "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.</p>", counts,
        "<h2>Summary</h2>", _summary_html(sections),
        "<h2>Results</h2>", *(section_html(s) for s in sections.values()),
        "<h2>Figures</h2>", *(figure_html(figures[k], FIGURES[k][1]) for k in FIGURES if k in figures),
        "<h2>Provenance</h2>", provenance_html(manifest),
    ]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Run report: {html.escape(str(name))}"
            f"</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_run_report(run_dir: str | Path, sections: dict, figures: dict[str, Figure | str],
                     path: str | Path | None = None) -> Path:
    """Write the run's report (default run_dir/06_statistics/report.html) atomically; returns its path."""
    from lib.files import atomic_write_text

    run_dir = Path(run_dir)
    path = Path(path) if path is not None else run_dir / "06_statistics" / "report.html"
    return atomic_write_text(path, render_run_report(run_dir, sections, figures))


def _statistics_params(run_dir: Path) -> dict:
    """The statistics params a run was made with (params.json, else the manifest) with defaults, its run.seed and
    training.conditions (None when unknown)."""
    from lib.files import read_json

    params = read_json(run_dir / "params.json") if (run_dir / "params.json").exists() else \
        _read_manifest(run_dir).get("params", {})
    stats_params = {"outcomes": ["correct", "cec"], "n_boot": 1000, "alpha": 0.05, "reference": None,
                    **params.get("statistics", {})}
    stats_params["seed"] = params.get("run", {}).get("seed", 0)
    stats_params["conditions"] = params.get("training", {}).get("conditions")
    return stats_params


def build_run_report(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Analyse a finished run folder from its files and write its report to `path` (default RUN/06_statistics/).

    Only the report is written: the step's CSVs and PNGs stay as notebook 06 made them.
    """
    from lib import stats

    run_dir = Path(run_dir)
    p = _statistics_params(run_dir)
    tables = stats.load_run_tables(run_dir)
    sections = stats.analyse(tables, outcomes=p["outcomes"], alpha=p["alpha"], n_boot=p["n_boot"], seed=p["seed"],
                             reference=p["reference"], conditions=p["conditions"])
    return write_run_report(run_dir, sections, run_figures(tables, n_boot=p["n_boot"], seed=p["seed"]), path)


# --- several runs side by side ---------------------------------------------------------------------------------

def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1} (lists as JSON)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


SEED_PARAMS = ("run.name", "run.seed", "training.seeds")  # the params in which the runs of a seed sweep differ


def seed_sweeps(params: dict[str, dict[str, object]]) -> list[list[str]]:
    """Groups of two or more runs (by name) whose params, commit and code differ only in SEED_PARAMS."""
    groups: dict[str, list[str]] = {}
    for name, flat in params.items():
        same = {k: v for k, v in flat.items() if k not in SEED_PARAMS}
        groups.setdefault(json.dumps(same, sort_keys=True, default=str), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def pool_seeds(items: dict[str, pd.DataFrame], run_seeds: dict[str, object]) -> pd.DataFrame:
    """The items of runs that differ only in seeds as one table: run_dir names each row's run folder, run is
    prefixed by it, and `seed` names both seeds (run.seed, training seed), so every seed of the sweep is its own."""
    return pd.concat([df.assign(run_dir=name, run=name + "/" + df["run"].astype(str),
                                seed=f"run.seed {run_seeds[name]}, training seed " + df["seed"].astype(str))
                      for name, df in items.items()], ignore_index=True)


def pooled_accuracy_html(names: list[str], items: dict[str, pd.DataFrame], params: dict[str, dict],
                         n_boot: int) -> str:
    """The accuracy of a seed sweep's runs combined (cluster bootstrap over test items), or why they are not."""
    from lib import stats

    pooled = pool_seeds({n: items[n] for n in names}, {n: params[n].get("run.seed") for n in names})
    runs_of_seed = pooled.groupby("seed")["run_dir"].nunique()
    repeated = sorted(runs_of_seed[runs_of_seed > 1].index)
    if repeated:
        return (f"<div class='note'><b>Not combined:</b> {html.escape(', '.join(names))} differ only in their seeds, "
                f"but repeat {html.escape(repeated[0])}; combining them would count that seed twice.</div>")
    tables = stats.RunTables(items=pooled, runs=None, ratings=None, losses=None, acceptance=None)
    section = stats.accuracy_section(tables, n_boot=n_boot)
    differ = [k for k in SEED_PARAMS[1:] if len({json.dumps(params[n].get(k)) for n in names}) > 1]
    section.title = f"Accuracy of {', '.join(names)} combined"
    section.explanation = (f"These runs differ only in their seeds ({', '.join(differ)}), so this combines them: "
                           "their items are pooled with the seed column naming each run's seeds. "
                           + section.explanation)
    per_item = pooled.groupby(["test_set", "item_id"])["seed"].nunique()
    if (per_item < pooled["seed"].nunique()).any():
        section.notes.append(f"{int((per_item < pooled['seed'].nunique()).sum())} of {len(per_item)} test items were "
                             "not answered under every seed (run.seed also draws the data split); each item counts "
                             "once in the intervals whatever its number of seeds.")
    return section_html(section)


def compare_runs(run_dirs: Sequence[str | Path], n_boot: int = 1000) -> str:
    """Several runs as one HTML page: params that differ, the accuracy of runs that differ only in seeds combined,
    accuracy and CEC run beside run, and each run's headline tests."""
    from lib import stats

    names, acc_parts, headlines, params, items = [], [], [], {}, {}
    for rd in map(Path, run_dirs):
        manifest = _read_manifest(rd)
        name = str(manifest.get("run") or rd.name)
        name = name if name not in names else f"{name} ({rd})"
        names.append(name)
        params[name] = _flatten(manifest.get("params", {}))
        params[name]["git.commit"] = (manifest.get("git", {}).get("commit") or "")[:10]
        params[name]["git.dirty"] = manifest.get("git", {}).get("dirty")
        params[name]["code.lib_sha256"] = manifest.get("code", {}).get("lib_sha256")
        try:
            tables = stats.load_run_tables(rd)
        except FileNotFoundError as exc:
            headlines.append(f"<h3>{html.escape(name)}</h3><div class='absent'><b>Input absent:</b> "
                             f"{html.escape(str(exc))}</div>")
            continue
        if manifest.get("params"):  # a run without a manifest cannot be shown to differ only in its seeds
            items[name] = tables.items
        acc = stats.accuracy_section(tables, n_boot=n_boot)
        if acc.ran:
            t = acc.table.assign(run=name)
            t["accuracy (95% CI)"] = [f"{a * 100:.1f} ({lo * 100:.1f}-{hi * 100:.1f})" if pd.notna(lo)
                                      else f"{a * 100:.1f}" for a, lo, hi in zip(t["accuracy"], t["ci_low"], t["ci_high"])]
            acc_parts.append(t)
        tukey = stats.tukey_section(tables, "correct")
        mcn = stats.mcnemar_section(tables)
        headlines.append(f"<h3>{html.escape(name)}</h3>" + section_html(tukey) + section_html(mcn))
    frame = pd.DataFrame(params)
    differ = frame[frame.astype(str).nunique(axis=1) > 1] if len(names) > 1 else frame
    body = [f"<h1>Runs compared: {html.escape(', '.join(names))}</h1>",
            "<h2>Params that differ</h2>",
            differ.reset_index(names="param").to_html(index=False, border=0, na_rep="–") if len(differ)
            else "<p>The runs have identical params.</p>"]
    sweeps = seed_sweeps({n: params[n] for n in items})
    if sweeps:
        body += ["<h2>Runs that differ only in their seeds, combined</h2>",
                 *(pooled_accuracy_html(group, items, params, n_boot) for group in sweeps)]
    if acc_parts:
        acc = pd.concat(acc_parts, ignore_index=True)
        keys = [c for c in ("test_set", "student", "condition") if c in acc.columns]
        wide = acc.pivot_table(index=keys, columns="run", values="accuracy (95% CI)", aggfunc="first").reset_index()
        body += ["<h2>Accuracy (%) by condition, run beside run</h2>", wide.to_html(index=False, border=0, na_rep="–")]
        if "cec" in acc.columns and acc["cec"].notna().any():
            cec = acc.pivot_table(index=keys, columns="run", values="cec", aggfunc="first").reset_index()
            body += ["<h2>Mean CEC by condition</h2>", _table_html(cec)]
    body += ["<h2>Tukey-Kramer and McNemar per run</h2>", *headlines]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Runs compared</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    """Command line: one run folder rebuilds its report; several write a comparison."""
    from lib.files import atomic_write_text

    parser = argparse.ArgumentParser(prog="python -m lib.report", description="Build a run's report.html, or "
                                     "compare several run folders side by side.")
    parser.add_argument("run_dirs", nargs="+", help="run folders (outputs/<run>)")
    parser.add_argument("-o", "--output", help="HTML path to write (default report.html for one run folder, "
                        "comparison.html for several); the run folders are not changed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    missing = [d for d in args.run_dirs if not Path(d).is_dir()]
    if missing:
        log.error("not a run folder: %s", ", ".join(missing))
        return 2
    if len(args.run_dirs) == 1:
        path = build_run_report(args.run_dirs[0], args.output or "report.html")
    else:
        path = atomic_write_text(args.output or "comparison.html", compare_runs(args.run_dirs))
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def show_sections(sections: dict, prefix: str) -> object:
    """Render in a notebook every section whose key starts with `prefix` (e.g. "tukey" for all outcomes)."""
    from IPython.display import HTML

    chosen = [s for k, s in sections.items() if k.startswith(prefix)]
    return HTML("\n".join(section_html(s) for s in chosen) or f"<p>No analysis named {html.escape(prefix)}.</p>")


def show_figure(figure: Figure | str) -> object:
    """Render a figure of run_figures in a notebook (PNG), or the note that says why it is absent."""
    from IPython.display import Image

    if isinstance(figure, str):
        return show_markdown(f"**Figure absent:** {figure}")
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return Image(data=buf.getvalue(), format="png")
