"""The run report: one self-contained HTML file per run, runs side by side, and notebook displays of results.

    python -m lib.report outputs/a -o report.html       # rebuild one run's report from its files
    python -m lib.report outputs/a outputs/b -o comparison.html   # compare runs side by side

The report shows the sections of lib.findings, the figures of lib.figures and the provenance of the run's manifest.
Runs that differ only in their seeds are combined in the comparison (`seed_sweeps`, `pool_seeds`).
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

import pandas as pd
from matplotlib.figure import Figure

from lib.figures import FIGURES, run_figures
from lib.files import atomic_write_text, read_json
from lib.findings import accuracy_section, analyse, cochran_section, mcnemar_section, Section, tukey_section
from lib.run_tables import load_run_tables, RunTables

log = logging.getLogger(__name__)


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


def show_sections(sections: dict, prefix: str) -> object:
    """Render in a notebook every section whose key starts with `prefix` (e.g. "tukey" for all outcomes)."""
    from IPython.display import HTML

    chosen = [s for k, s in sections.items() if k.startswith(prefix)]
    return HTML("\n".join(section_html(s) for s in chosen) or f"<p>No analysis named {html.escape(prefix)}.</p>")


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


def section_html(section: Section) -> str:
    """One analysis section (lib.findings.Section) as HTML: explanation, sentences, notes, table."""
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
    run_dir = Path(run_dir)
    path = Path(path) if path is not None else run_dir / "06_statistics" / "report.html"
    return atomic_write_text(path, render_run_report(run_dir, sections, figures))


def _statistics_params(run_dir: Path) -> dict:
    """The statistics params a run was made with (params.json, else the manifest) with defaults, its run.seed and
    training.conditions (None when unknown)."""
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
    run_dir = Path(run_dir)
    p = _statistics_params(run_dir)
    tables = load_run_tables(run_dir)
    sections = analyse(tables, outcomes=p["outcomes"], alpha=p["alpha"], n_boot=p["n_boot"], seed=p["seed"],
                             reference=p["reference"], conditions=p["conditions"])
    return write_run_report(run_dir, sections, run_figures(tables, n_boot=p["n_boot"], seed=p["seed"]), path)


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
    pooled = pool_seeds({n: items[n] for n in names}, {n: params[n].get("run.seed") for n in names})
    runs_of_seed = pooled.groupby("seed")["run_dir"].nunique()
    repeated = sorted(runs_of_seed[runs_of_seed > 1].index)
    if repeated:
        return (f"<div class='note'><b>Not combined:</b> {html.escape(', '.join(names))} differ only in their seeds, "
                f"but repeat {html.escape(repeated[0])}; combining them would count that seed twice.</div>")
    tables = RunTables(items=pooled, runs=None, ratings=None, losses=None, acceptance=None)
    section = accuracy_section(tables, n_boot=n_boot)
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
            tables = load_run_tables(rd)
        except FileNotFoundError as exc:
            headlines.append(f"<h3>{html.escape(name)}</h3><div class='absent'><b>Input absent:</b> "
                             f"{html.escape(str(exc))}</div>")
            continue
        if manifest.get("params"):  # a run without a manifest cannot be shown to differ only in its seeds
            items[name] = tables.items
        acc = accuracy_section(tables, n_boot=n_boot)
        if acc.ran:
            t = acc.table.assign(run=name)
            t["accuracy (95% CI)"] = [f"{a * 100:.1f} ({lo * 100:.1f}-{hi * 100:.1f})" if pd.notna(lo)
                                      else f"{a * 100:.1f}"
                                      for a, lo, hi in zip(t["accuracy"], t["ci_low"], t["ci_high"])]
            acc_parts.append(t)
        paired = [cochran_section(tables), mcnemar_section(tables)]  # unit: the test item, paired
        headlines.append(f"<h3>{html.escape(name)}</h3>" + "".join(map(section_html, paired))
                         + section_html(tukey_section(tables, "correct")))  # unit: the training run
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
        body += ["<h2>Accuracy (%) by condition, run beside run</h2>",
                 wide.to_html(index=False, border=0, na_rep="–")]
        if "cec" in acc.columns and acc["cec"].notna().any():
            cec = acc.pivot_table(index=keys, columns="run", values="cec", aggfunc="first").reset_index()
            body += ["<h2>Mean CEC by condition</h2>", _table_html(cec)]
    body += ["<h2>Paired tests on items (Cochran's Q, McNemar) and Tukey-Kramer over training runs, per run</h2>",
             *headlines]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Runs compared</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    """Command line: one run folder rebuilds its report; several write a comparison."""
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
