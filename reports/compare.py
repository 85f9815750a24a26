"""Run A against run B, cell by cell: how much slower or bigger is B, and is it a regression?

A cell is matched on (impl, spec_hash, batch, scenario); repeats on each side are pooled. The step-time
samples the significance test compares are, in order of preference:

1. with at least 3 repeats on both sides, each repeat's ``median_s``: repeats are separate processes,
   so the test sees the variation between processes (memory layout, clocks, neighbours) as well;
2. else ``step_stats.window_times_s`` (per-step seconds, one per timed window), pooled: windows of one
   process are not independent of each other, so this p-value is optimistic, and the row says so;
3. otherwise there is nothing to test: the ratio of medians is still reported, ``p_value`` is NaN and
   the cell is never called a regression (``samples`` says why).

A cell is a **regression** when B is significantly different (two-sided Mann-Whitney U,
``harness.measure.stats.mann_whitney_slower``, p < ``alpha``) AND the step-time ratio B/A exceeds
``1 + threshold``; an **improvement** is the mirror image (ratio below ``1 - threshold``). A cell that
ran in A and fails in B is flagged ``new_failure`` (not a timing regression: there is no time to compare).

Framework-free: never imports torch, jax, keras or tensorflow.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from harness.measure.stats import mann_whitney_slower
from harness.row import Row, parse_row
from harness.store import load_rows
from reports.cells import row_status

__all__ = ["compare_runs", "print_comparison", "cell_id", "step_samples", "cells_summary"]


def cell_id(row: Row) -> tuple:
    """What identifies a cell across runs: impl, spec hash, batch and scenario (and whether it is a sweep
    probe, so that probes are never pooled with the benchmark cell of the same batch), and its precision."""
    sweep = row.rest.get("sweep") if isinstance(row.rest.get("sweep"), dict) else {}
    ident = row.identity
    batch = sweep.get("probe_batch", ident.batch)
    return (str(ident.impl), str(ident.spec_hash or ""), int(batch) if batch is not None else None,
            ident.scenario or None, bool(row.rest.get("sweep")), ident.precision)


def cells_summary(rows: list[Row], limit: int = 4) -> str:
    """The cells of a run in a few words (``torch dense b64, flax dense b64 and 3 more``), for the
    one-line error when two runs share no cell."""
    seen: dict[tuple, str] = {}
    for r in map(parse_row, rows):
        impl, _, batch, scenario, sweep, _ = cell_id(r)
        seen.setdefault(cell_id(r), f"{r.label} {r.identity.spec_name or '?'} b{batch}"
                        + (f" {scenario}" if scenario else "") + (" (sweep)" if sweep else ""))
    names = list(dict.fromkeys(seen.values()))
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "no cells"


def step_samples(rows: list[Row]) -> tuple[list[float], str]:
    """Per-step times to test, pooled over the ok repeats, and what they are (see the module docstring)."""
    stats = [r.timing.step_stats for r in map(parse_row, rows) if row_status(r) == "ok" and r.timing.step_stats]
    medians = [float(s.median_s) for s in stats if s.median_s is not None]
    if len(medians) >= 3:
        return medians, "repeat medians"
    windows = [s.window_times_s for s in stats]
    if stats and all(isinstance(w, list) and w for w in windows):
        return [float(x) for w in windows for x in w], "windows"
    return medians, "none"


def _median_of(values: Any) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def compare_runs(run_a_rows: Any, run_b_rows: Any, threshold: float = 0.05, alpha: float = 0.05) -> list[dict]:
    """Compare every cell present in both runs; one dict per cell, sorted by step-time ratio (worst first).

    ``run_a_rows`` / ``run_b_rows``: lists of stored rows (or anything :func:`harness.store.load_rows`
    accepts: JSONL paths, directories, run ids). Keys of each dict: ``impl``, ``spec_name``, ``spec_hash``,
    ``batch``, ``scenario``, ``sweep``, ``status`` ("compared", "failed in A", "failed in B", "failed in both"),
    ``median_a_s``, ``median_b_s``, ``ratio`` (step time B/A), ``ratio_ci_low``, ``ratio_ci_high``,
    ``p_value``, ``significant``, ``samples`` ("windows", "repeat medians", or "none"), ``n_a``, ``n_b``,
    ``peak_a_bytes``, ``peak_b_bytes``, ``memory_ratio`` (peak memory B/A), ``regression``,
    ``improvement``, ``new_failure``, ``note``.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    rows_a = _as_rows(run_a_rows)
    rows_b = _as_rows(run_b_rows)
    a_cells = _by_cell(rows_a)
    b_cells = _by_cell(rows_b)
    out = []
    for key in sorted(set(a_cells) & set(b_cells), key=lambda k: tuple(str(x) for x in k)):
        ra, rb = a_cells[key], b_cells[key]
        ok_a = [r for r in ra if row_status(r) == "ok"]
        ok_b = [r for r in rb if row_status(r) == "ok"]
        impl, spec_hash, batch, scenario, sweep, precision = key
        res: dict[str, Any] = {
            "impl": impl, "spec_name": ra[0].identity.spec_name, "spec_hash": spec_hash, "batch": batch,
            "scenario": scenario, "sweep": sweep, "precision": precision,
            "median_a_s": _median_of(r.median_step_s for r in ok_a),
            "median_b_s": _median_of(r.median_step_s for r in ok_b),
            "peak_a_bytes": _median_of(r.memory.peak_bytes for r in ok_a if r.memory),
            "peak_b_bytes": _median_of(r.memory.peak_bytes for r in ok_b if r.memory),
            "ratio": math.nan, "ratio_ci_low": math.nan, "ratio_ci_high": math.nan, "p_value": math.nan,
            "significant": False, "samples": "none", "n_a": 0, "n_b": 0, "memory_ratio": math.nan,
            "regression": False, "improvement": False, "new_failure": bool(ok_a) and not ok_b, "note": "",
        }
        if res["peak_a_bytes"] and res["peak_b_bytes"] is not None:
            res["memory_ratio"] = res["peak_b_bytes"] / res["peak_a_bytes"]
        if not ok_a or not ok_b:
            res["status"] = "failed in both" if not ok_a and not ok_b else "failed in A" if not ok_a else "failed in B"
            kinds = {r.outcome.failure_kind for r in (ra if not ok_a else rb) if row_status(r) != "ok"}
            res["note"] = "failure kind: " + ", ".join(sorted(str(k) for k in kinds))
            out.append(res)
            continue
        res["status"] = "compared"
        xa, kind_a = step_samples(ok_a)
        xb, kind_b = step_samples(ok_b)
        if kind_a == kind_b and kind_a != "none":
            test = mann_whitney_slower(xa, xb, alpha=alpha)
            res.update(ratio=test["ratio"], ratio_ci_low=test["ratio_ci_low"], ratio_ci_high=test["ratio_ci_high"],
                       p_value=test["p_value"], significant=test["significant"], samples=kind_a,
                       n_a=len(xa), n_b=len(xb))
            if kind_a == "windows":
                res["note"] = ("windows of one process per side: the p-value leaves out variation between "
                               "processes; use --repeats 3 or more for a sound test")
        else:
            if res["median_a_s"] and res["median_b_s"] is not None:
                res["ratio"] = res["median_b_s"] / res["median_a_s"]
            res["note"] = ("no significance test: rows store no window_times_s and fewer than 3 repeats "
                           f"(A: {kind_a}, B: {kind_b})")
        r = res["ratio"]
        res["regression"] = bool(res["significant"] and math.isfinite(r) and r > 1 + threshold)
        res["improvement"] = bool(res["significant"] and math.isfinite(r) and r < 1 - threshold)
        out.append(res)
    out.sort(key=lambda d: (-(d["ratio"] if math.isfinite(d["ratio"]) else -math.inf), str(d["impl"])))
    return out


def _as_rows(x: Any) -> list[Row]:
    """Typed rows through the one loader, whether given rows, paths or run ids."""
    if isinstance(x, list) and all(isinstance(r, Mapping) for r in x):
        return [parse_row(r) for r in x]
    return load_rows(x)


def _by_cell(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(cell_id(r), []).append(r)
    return out


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:{spec}}{suffix}"


#: the comparison's columns, in order, with their justification in the terminal table
COLUMNS = (("impl", "left"), ("spec", "left"), ("batch", "right"), ("A median", "right"), ("B median", "right"),
           ("B/A time", "right"), ("95% CI", "right"), ("p", "right"), ("B/A memory", "right"), ("verdict", "left"))
#: how the terminal table colours a verdict
_MARKUP = {"new failure": "[red bold]new failure[/red bold]", "regression": "[red bold]regression[/red bold]",
           "improvement": "[green]improvement[/green]", "untested": "[yellow]untested[/yellow]"}


def verdict(d: Mapping[str, Any]) -> str:
    if d["new_failure"]:
        return "new failure"
    if d["regression"]:
        return "regression"
    if d["improvement"]:
        return "improvement"
    if d["status"] != "compared":
        return str(d["status"])
    return "untested" if d["samples"] == "none" else "same"


def comparison_rows(comparisons: list[dict]) -> list[dict[str, str]]:
    """Each cell's line as plain text, by :data:`COLUMNS` name: what the table, CSV and Markdown show."""
    rows = []
    for d in comparisons:
        spec = str(d.get("spec_name") or d["spec_hash"]) + (f" [{d['scenario']}]" if d.get("scenario") else "")
        ci = "—" if not math.isfinite(d["ratio_ci_low"]) else f"{d['ratio_ci_low']:.3f}–{d['ratio_ci_high']:.3f}"
        values = (str(d["impl"]), spec, str(d["batch"]), _fmt(_ms(d["median_a_s"]), ".3f", " ms"),
                  _fmt(_ms(d["median_b_s"]), ".3f", " ms"), _fmt(d["ratio"], ".3f"), ci, _fmt(d["p_value"], ".3g"),
                  _fmt(d["memory_ratio"], ".3f"), verdict(d))
        rows.append(dict(zip([c for c, _ in COLUMNS], values, strict=True)))
    return rows


def print_comparison(comparisons: list[dict], console: Any = None, title: str = "run B against run A") -> None:
    """A rich table: one line per cell, regressions in red, improvements in green, new failures flagged."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title=escape(title))
    for col, just in COLUMNS:
        table.add_column(col, justify=just)
    for row in comparison_rows(comparisons):
        cells = {name: escape(value) for name, value in row.items()}
        cells["verdict"] = _MARKUP.get(row["verdict"], cells["verdict"])
        table.add_row(*cells.values())
    console.print(table)
    notes = {d["note"] for d in comparisons if d["note"] and d["status"] == "compared"}
    for n in sorted(notes):
        console.print(f"[yellow]note:[/yellow] {escape(n)}")


def write_comparison(comparisons: list[dict], fmt: str, stream: Any) -> None:
    """The whole table as ``csv`` (one header line, every figure as the table prints it) or ``md`` (a Markdown
    table), for a file or another tool: nothing is cut to a terminal's width."""
    rows = comparison_rows(comparisons)
    names = [c for c, _ in COLUMNS]
    if fmt == "csv":
        import csv

        writer = csv.DictWriter(stream, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    if fmt != "md":
        raise ValueError(f"unknown format {fmt!r}")
    stream.write("| " + " | ".join(names) + " |\n")
    stream.write("|" + "|".join("---:" if just == "right" else "---" for _, just in COLUMNS) + "|\n")
    for row in rows:
        stream.write("| " + " | ".join(_md_cell(row[n]) for n in names) + " |\n")


def _md_cell(value: str) -> str:
    return value.replace("|", "\\|")  # a pipe would end the Markdown cell


def _ms(s: float | None) -> float | None:
    return None if s is None else s * 1e3
