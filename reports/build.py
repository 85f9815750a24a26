"""One run's report: ``report.md``, a self-contained ``report.html`` and PNG plots, plus the index of runs.

Layout on disk::

    reports/out/index.md, index.html     every run built so far, newest first
    reports/out/<run-id>/report.md       reads on its own (GitHub tables, plots as image links)
    reports/out/<run-id>/report.html     one file: inline CSS, plots embedded as base64
    reports/out/<run-id>/plots/*.png
    reports/out/<run-id>/meta.json       what the index lists

Rows are grouped by *cell*: spec (name and hash), batch and impl. Rows with a ``scenario`` (a leak
anti-pattern) or a ``sweep`` key (a batch-size probe) are kept apart: they are evidence for the
diagnosis and the sweep map, never candidates for a recommendation.

Repeats of one (impl, spec, batch) are aggregated like this:

* step time: the median over repeats of each repeat's ``median_s`` (and likewise for the quartiles,
  the mean and the compile time);
* peak memory: the largest peak of any repeat (a peak is a maximum);
* leak verdict: the worst of the repeats (``leak`` > ``inconclusive`` > ``no leak``), shown with that
  repeat's slope and CI;
* status: ``ok`` only when every repeat was ok;
* the 95% CI used by the tie rule: with one repeat, that repeat's t-interval of the mean; with several,
  the envelope of the per-repeat intervals (lowest low to highest high). The envelope is conservative on
  purpose: a winner is declared only when no repeat of a rival could overlap it.

Framework-free: this module must never import torch, jax, keras or tensorflow.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from harness.failures import ADVICE
from harness.leak import format_bytes
from harness.store import DEFAULT_RESULTS_DIR, read_rows

__all__ = [
    "Recommendation", "ImplCell", "build_report", "load_rows", "recommend", "summarize_impl", "is_side_row",
    "update_index",
]

DEFAULT_OUT_ROOT = Path("reports/out")
_LEAK_RANK = {"leak": 2, "inconclusive": 1, "no leak": 0}
OUTCOME_COLORS = {
    "ok": "#2ca02c", "device_oom": "#d62728", "host_oom": "#ff7f0e", "int32_overflow": "#9467bd",
    "nan_loss": "#8c564b", "timeout": "#7f7f7f", "crash_signal": "#1f1f1f", "compile_error": "#e377c2",
    "skipped": "#c7c7c7", "framework_missing": "#bcbd22", "error": "#f7b6d2",
}


# =============================================================================== loading


def load_rows(results: Any, results_dir: str | Path = DEFAULT_RESULTS_DIR) -> list[dict[str, Any]]:
    """Rows from JSONL files, directories of them, run ids (``<results_dir>/<id>.jsonl``) or row dicts."""
    if isinstance(results, (str, Path, dict)):
        results = [results]
    rows: list[dict[str, Any]] = []
    for item in results:
        if isinstance(item, dict):
            rows.append(item)
            continue
        p = Path(item)
        if p.is_dir():
            files = sorted(p.glob("*.jsonl"))
        elif p.is_file():
            files = [p]
        elif (Path(results_dir) / f"{item}.jsonl").is_file():
            files = [Path(results_dir) / f"{item}.jsonl"]
        else:
            raise FileNotFoundError(f"no results at {item!r}: not a file, a directory, or a run id in {results_dir}/")
        for f in files:
            rows.extend(read_rows(f))
    return rows


def is_side_row(row: dict[str, Any]) -> bool:
    """True for scenario and sweep rows, which are never candidates for a recommendation."""
    return bool(row.get("scenario")) or bool(row.get("sweep"))


def row_status(row: dict[str, Any]) -> str:
    status = row.get("status")
    if status in ("ok", "failed", "skipped"):
        return status
    return "ok" if isinstance(row.get("step_stats"), dict) else "failed"


def _get(d: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _median(values: Iterable[Any]) -> float | None:
    vals = [v for v in (_num(x) for x in values) if v is not None]
    return statistics.median(vals) if vals else None


# =============================================================================== aggregation


@dataclass
class ImplCell:
    """One impl at one (spec, batch): its repeats aggregated (see the module docstring)."""

    impl: str
    label: str
    rows: list[dict[str, Any]]
    status: str
    failure_kind: str | None = None
    failure_message: str = ""
    n_repeats: int = 0
    n_ok: int = 0
    median_s: float | None = None
    q1_s: float | None = None
    q3_s: float | None = None
    mean_s: float | None = None
    ci_low_s: float | None = None
    ci_high_s: float | None = None
    samples_per_s: float | None = None
    compile_s: float | None = None
    peak_bytes: float | None = None
    cpu_standin: bool = False
    leak_verdict: str | None = None
    slope: float | None = None
    slope_ci_low: float | None = None
    slope_ci_high: float | None = None
    leak_reason: str = ""
    leak_cause: dict[str, Any] = field(default_factory=dict)
    preflight_estimate: float | None = None

    @property
    def eligible(self) -> bool:
        return self.status == "ok" and self.leak_verdict != "leak" and self.median_s is not None

    @property
    def has_ci(self) -> bool:
        return self.ci_low_s is not None and self.ci_high_s is not None

    def ci_text(self) -> str:
        return f"{fmt_time(self.ci_low_s)}–{fmt_time(self.ci_high_s)}" if self.has_ci else "n/a"


def summarize_impl(rows: list[dict[str, Any]]) -> ImplCell:
    """Aggregate the repeats of one impl at one (spec, batch)."""
    if not rows:
        raise ValueError("no rows to summarise")
    impl = str(rows[0].get("impl", "?"))
    label = str(rows[0].get("row") or impl)
    statuses = [row_status(r) for r in rows]
    ok = [r for r, s in zip(rows, statuses, strict=True) if s == "ok"]
    if all(s == "ok" for s in statuses):
        status = "ok"
    elif "failed" in statuses:
        status = "failed"
    else:
        status = "skipped"
    cell = ImplCell(impl=impl, label=label, rows=rows, status=status, n_repeats=len(rows), n_ok=len(ok))
    bad = next((r for r, s in zip(rows, statuses, strict=True) if s == status), None) if status != "ok" else None
    if bad is not None:
        cell.failure_kind = bad.get("failure_kind") or status
        cell.failure_message = str(bad.get("failure_message") or "")
        if len(rows) > 1:
            cell.failure_message += f" ({statuses.count(status)} of {len(rows)} repeats)"
    if ok:
        st = [r.get("step_stats") or {} for r in ok]
        cell.median_s = _median(s.get("median_s") for s in st)
        cell.q1_s = _median(s.get("q1_s") for s in st)
        cell.q3_s = _median(s.get("q3_s") for s in st)
        cell.mean_s = _median(s.get("mean_s") for s in st)
        lows = [_num(s.get("ci95_low_s")) for s in st]
        highs = [_num(s.get("ci95_high_s")) for s in st]
        if all(v is not None for v in lows + highs):
            cell.ci_low_s, cell.ci_high_s = min(lows), max(highs)
        batch = _num(ok[0].get("batch"))
        cell.samples_per_s = batch / cell.median_s if batch and cell.median_s else None
        cell.compile_s = _median(r.get("compile_s") for r in ok)
        peaks = [v for v in (_num(_get(r, "memory", "peak_bytes")) for r in ok) if v is not None]
        cell.peak_bytes = max(peaks) if peaks else None
        cell.cpu_standin = any(_get(r, "memory", "cpu_standin") for r in ok)
        worst = max(ok, key=lambda r: _LEAK_RANK.get(_get(r, "leak", "verdict"), -1))
        leak = worst.get("leak") or {}
        cell.leak_verdict = leak.get("verdict")
        cell.slope = _num(leak.get("slope_bytes_per_batch"))
        cell.slope_ci_low = _num(leak.get("slope_ci_low"))
        cell.slope_ci_high = _num(leak.get("slope_ci_high"))
        cell.leak_reason = str(leak.get("reason") or "")
        cell.leak_cause = leak.get("cause") or {}
    cell.preflight_estimate = _median(_get(r, "preflight", "estimate_bytes") for r in rows)
    return cell


def group_cells(rows: list[dict[str, Any]]) -> dict[tuple, dict[int, list[ImplCell]]]:
    """Plain rows grouped as {(spec_name, spec_hash, kmer): {batch: [ImplCell, ...]}}."""
    by: dict[tuple, dict[int, dict[str, list[dict]]]] = {}
    for r in rows:
        if is_side_row(r):
            continue
        key = (str(r.get("spec_name", "?")), str(r.get("spec_hash", "")), r.get("kmer"))
        by.setdefault(key, {}).setdefault(int(r.get("batch") or 0), {}).setdefault(str(r.get("impl")), []).append(r)
    out: dict[tuple, dict[int, list[ImplCell]]] = {}
    for key in sorted(by, key=lambda k: (k[0], str(k[2]), k[1])):
        out[key] = {}
        for batch in sorted(by[key]):
            out[key][batch] = _order([summarize_impl(v) for v in by[key][batch].values()])
    return out


def _order(cells: list[ImplCell]) -> list[ImplCell]:
    """Eligible rows fastest first, then ok-but-leaking, then failed and skipped."""
    def key(c: ImplCell):
        rank = 0 if c.eligible else 1 if c.status == "ok" else 2
        return rank, c.median_s if c.median_s is not None else math.inf, c.impl
    return sorted(cells, key=key)


# =============================================================================== recommendation


@dataclass(frozen=True)
class Recommendation:
    """``choice``: the impl to use (None if none is eligible); ``tie``: every impl tied with the fastest
    (empty when the fastest won outright); ``reason``: one paragraph with the numbers."""

    choice: str | None
    tie: list[str]
    reason: str


def _overlap(a: ImplCell, b: ImplCell) -> bool:
    """Do the 95% CIs overlap? An unmeasured CI (one window) can never separate two rows."""
    if not (a.has_ci and b.has_ci):
        return True
    return a.ci_low_s <= b.ci_high_s and b.ci_low_s <= a.ci_high_s


def recommend(rows_for_cell: list[dict[str, Any]]) -> Recommendation:
    """Which impl to train with at one (spec, batch), and why.

    Rules, in order:

    1. A row that failed, was skipped, or whose leak verdict is ``leak`` is never recommended (an
       ``inconclusive`` verdict is allowed, and said). Scenario and sweep rows are ignored.
    2. Among the eligible rows the fastest by median step time wins, unless its 95% CI of the mean
       overlaps the CI of another eligible row: then it is a tie between the fastest and every row whose
       CI overlaps the fastest's, broken by the lowest peak memory (and named a tie).
    3. With no eligible row, ``choice`` is None and the reason names what failed.

    Several repeats of one impl are aggregated as the module docstring says.
    """
    by_impl: dict[str, list[dict]] = {}
    for r in rows_for_cell:
        if not is_side_row(r):
            by_impl.setdefault(str(r.get("impl")), []).append(r)
    if not by_impl:
        return Recommendation(None, [], "No rows were measured for this cell.")
    cells = [summarize_impl(v) for v in by_impl.values()]
    eligible = sorted([c for c in cells if c.eligible], key=lambda c: (c.median_s, c.impl))
    excluded = [_exclusion(c) for c in sorted(cells, key=lambda c: c.impl) if not c.eligible]
    not_eligible = (" Not eligible: " + "; ".join(excluded) + ".") if excluded else ""
    if not eligible:
        return Recommendation(None, [], "No impl can be recommended: " + "; ".join(excluded) + ".")
    fastest = eligible[0]
    others = eligible[1:]
    tied = [c for c in others if _overlap(fastest, c)]
    inconclusive = [c for c in eligible if c.leak_verdict == "inconclusive"]
    tail = not_eligible
    leaking_faster = [c for c in cells if c.status == "ok" and c.leak_verdict == "leak"
                      and c.median_s is not None and c.median_s < fastest.median_s]
    if leaking_faster:
        tail += " " + ", ".join(f"**{c.label}**" for c in leaking_faster) + \
            f" had a faster median ({', '.join(fmt_time(c.median_s) for c in leaking_faster)}) but leaks."
    if inconclusive:
        tail += " Leak verdict inconclusive for " + "; ".join(
            f"{c.label} ({c.leak_reason or 'no reason given'})" for c in inconclusive) + "."

    if not tied:
        reason = (f"**{fastest.label}** is fastest at {fmt_time(fastest.median_s)} per step"
                  f"{_sps(fastest)}, 95% CI of the mean {fastest.ci_text()}")
        if others:
            nxt = others[0]
            reason += (f"; {nxt.median_s / fastest.median_s:.2f}× faster than the next, {nxt.label} "
                       f"({fmt_time(nxt.median_s)}, CI {nxt.ci_text()}), and no other CI overlaps.")
        else:
            reason += "; it is the only eligible impl."
        return Recommendation(fastest.impl, [], reason + tail)

    group = [fastest, *tied]
    by_mem = sorted(group, key=lambda c: (c.peak_bytes if c.peak_bytes is not None else math.inf, c.median_s))
    choice = by_mem[0]
    spread = max(c.median_s for c in group) / fastest.median_s - 1
    no_ci = [c.label for c in group if not c.has_ci]
    reason = (f"Tie between {_and([c.label for c in group])}: their 95% CIs of the mean overlap ("
              + ", ".join(f"{c.label} {c.ci_text()}" for c in group)
              + f"), so the {spread:.1%} spread in median step time ("
              + ", ".join(fmt_time(c.median_s) for c in group) + ") is not resolved.")
    if no_ci:
        reason += f" ({_and(no_ci)}: one timing window only, no CI.)"
    reason += (" Tie broken by peak memory: **" + choice.label + "** peaks at " + _mem(choice)
               + (" vs " + ", ".join(f"{c.label} {_mem(c)}" for c in by_mem[1:]) if len(by_mem) > 1 else "")
               + ".")
    if choice is not fastest:
        reason += f" ({fastest.label} had the lowest median, {fmt_time(fastest.median_s)}.)"
    return Recommendation(choice.impl, [c.impl for c in group], reason + tail)


def _exclusion(c: ImplCell) -> str:
    if c.status == "failed":
        return f"{c.label} failed ({c.failure_kind}: {_short(c.failure_message, 100)})"
    if c.status == "skipped":
        return f"{c.label} was skipped ({_short(c.failure_message, 100) or 'no reason given'})"
    if c.leak_verdict == "leak":
        return f"{c.label} leaks ({_rate(c.slope)}, CI {_rate(c.slope_ci_low)} to {_rate(c.slope_ci_high)})"
    return f"{c.label} has no step timing"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sps(c: ImplCell) -> str:
    return f" ({c.samples_per_s:,.0f} samples/s)" if c.samples_per_s else ""


def _mem(c: ImplCell) -> str:
    return (format_bytes(c.peak_bytes) + (" RSS" if c.cpu_standin else "")) if c.peak_bytes is not None else "n/a"


# =============================================================================== formatting


def fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _rate(b: float | None) -> str:
    return "n/a" if b is None else f"{format_bytes(b)}/batch"


def _short(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _code(text: str) -> str:
    text = " ".join(str(text).split()).replace("`", "'")
    return f"`{text}`" if text else ""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


# =============================================================================== document model


@dataclass
class Doc:
    """A tiny block model rendered to both Markdown and HTML, so the two always say the same."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", items))

    def table(self, headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> None:
        self.blocks.append(("table", headers, rows, right or set()))

    def img(self, rel: str, alt: str) -> None:
        self.blocks.append(("img", rel, alt))

    def raw_html(self, html_text: str, md_text: str) -> None:
        self.blocks.append(("raw", html_text, md_text))

    # ------------------------------------------------------------------ markdown

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif kind == "p":
                out += [b[1], ""]
            elif kind == "note":
                out += [f"<sub>{b[1]}</sub>", ""]
            elif kind == "ul":
                out += [f"- {i}" for i in b[1]] + [""]
            elif kind == "table":
                _, headers, rows, right = b
                cell = lambda t: " ".join(str(t).split()).replace("|", "\\|") or " "
                out.append("| " + " | ".join(cell(h) for h in headers) + " |")
                out.append("|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|")
                out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "img":
                out += [f"![{b[2]}]({b[1]})", ""]
            elif kind == "raw":
                out += [b[2], ""]
        return "\n".join(out).rstrip() + "\n"

    # ------------------------------------------------------------------ html

    def html(self, base: Path) -> str:
        body: list[str] = [f"<h1>{_inline(self.title)}</h1>"]
        ids: dict[str, int] = {}
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                level = min(6, b[1])
                anchor = re.sub(r"[^a-z0-9]+", "-", b[2].lower()).strip("-") or "section"
                n = ids.get(anchor, 0)
                ids[anchor] = n + 1
                anchor = anchor if n == 0 else f"{anchor}-{n}"
                body.append(f'<h{level} id="{anchor}">{_inline(b[2])}</h{level}>')
            elif kind == "p":
                body.append(f"<p>{_inline(b[1])}</p>")
            elif kind == "note":
                body.append(f'<p class="note">{_inline(b[1])}</p>')
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
            elif kind == "table":
                _, headers, rows, right = b
                cls = lambda i, right=right: ' class="num"' if i in right else ""
                head = "".join(f"<th{cls(i)}>{_inline(h)}</th>" for i, h in enumerate(headers))
                trs = "".join("<tr>" + "".join(f"<td{cls(i)}>{_inline(c)}</td>" for i, c in enumerate(row))
                              + "</tr>" for row in rows)
                body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody>'
                            f"</table></div>")
            elif kind == "img":
                path = base / b[1]
                src = ("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()) if path.exists() \
                    else html.escape(b[1], quote=True)
                body.append(f'<figure><img src="{src}" alt="{html.escape(b[2], quote=True)}">'
                            f"<figcaption>{_inline(b[2])}</figcaption></figure>")
            elif kind == "raw":
                body.append(b[1])
        return _page(self.title, "\n".join(body))


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#1f2328;line-height:1.5}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;
margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #d0d7de;padding:4px 8px;
vertical-align:top}th{background:#f6f8fa;text-align:left}td.num,th.num{text-align:right;white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}.scroll{overflow-x:auto}
code{background:#f3f4f6;padding:1px 4px;border-radius:4px;font-size:.9em;word-break:break-word}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#57606a}
.note{font-size:.85em;color:#57606a}a{color:#0969da}
.swatch{display:inline-block;min-width:1.2em;padding:0 4px;border-radius:3px;color:#fff;font-size:.85em}
"""


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


_CODE = re.compile(r"`([^`]*)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _inline(text: str) -> str:
    """The Markdown subset the report uses (code spans, bold, links) as HTML, everything else escaped."""
    parts = _CODE.split(str(text))
    out = []
    for i, part in enumerate(parts):
        esc = html.escape(part, quote=True)
        if i % 2:
            out.append(f"<code>{esc}</code>")
            continue
        esc = _BOLD.sub(r"<strong>\1</strong>", esc)
        esc = _LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', esc)
        out.append(esc)
    return "".join(out)


# =============================================================================== params


def _params_index(params_check: Any) -> dict[str, dict[str, Any]]:
    """Normalise ``params_check`` to {spec: {"expected": (t, nt) | None, "impls": {impl: (t, nt, error)}}}.

    Accepted: {spec: ParamsReport}, {spec: ParamsReport.to_dict()}, {spec: {impl: {"trainable", "non_trainable"}}}
    (optionally with an "expected" entry), or a list of ParamsReport / to_dict() objects carrying their spec.
    """
    if not params_check:
        return {}
    items = params_check.items() if isinstance(params_check, dict) else \
        [(getattr(r, "spec", None) or r.get("spec"), r) for r in params_check]
    out: dict[str, dict[str, Any]] = {}
    for spec, rep in items:
        if hasattr(rep, "to_dict"):
            rep = rep.to_dict()
        expected, impls = None, {}
        if isinstance(rep, dict) and isinstance(rep.get("rows"), list):
            e = rep.get("expected") or {}
            expected = (e.get("trainable"), e.get("non_trainable")) if e else None
            for r in rep["rows"]:
                impls[str(r.get("impl"))] = (r.get("trainable"), r.get("non_trainable"), r.get("error"))
        elif isinstance(rep, dict):
            for k, v in rep.items():
                if k == "expected" and isinstance(v, dict):
                    expected = (v.get("trainable"), v.get("non_trainable"))
                elif isinstance(v, dict):
                    impls[str(k)] = (v.get("trainable"), v.get("non_trainable"), v.get("error"))
        out[str(spec)] = {"expected": expected, "impls": impls}
    return out


def _params_cell(pidx: dict[str, Any], spec: str, cell: ImplCell) -> str:
    entry = pidx.get(spec)
    if not entry:
        return "n/a"
    got = entry["impls"].get(cell.impl) or entry["impls"].get(cell.label)
    if not got:
        return "n/a"
    t, nt, err = got
    if err or t is None:
        return f"failed: {_short(err or 'no count', 60)}"
    ref = entry["expected"]
    if ref is None:
        counts = {(v[0], v[1]) for v in entry["impls"].values() if v[0] is not None}
        verdict = "equal" if len(counts) == 1 else "differs"
    else:
        verdict = "equal" if (t, nt) == tuple(ref) else "differs"
    return f"{t:,} / {nt:,} {verdict}"


# =============================================================================== plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(impls: list[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {impl: cmap(i % 10) for i, impl in enumerate(sorted(impls))}


def _save(fig, path: Path, left: float = 0.8, right: float = 0.15, bottom: float = 0.6, top: float = 0.35) -> None:
    """Fixed margins in inches instead of tight_layout, which draws every figure twice (half the build time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h)
    fig.savefig(path, dpi=90)
    _plt().close(fig)


def _mark_failures(ax, by_batch: dict[int, list[ImplCell]], batches: list[int], colors: dict) -> None:
    """Failed and skipped impls at each batch, written upright from the x axis in the impl's colour."""
    for i, b in enumerate(batches):
        bad = [c for c in by_batch[b] if c.status != "ok"]
        for j, c in enumerate(bad):
            x = i + (j - (len(bad) - 1) / 2) * 0.12
            ax.annotate(f"{c.label}: {c.failure_kind}", (x, 0.03), xycoords=("data", "axes fraction"), rotation=90,
                        ha="center", va="bottom", fontsize=7, color=colors.get(c.impl, "black"))


def plot_step_times(title: str, by_batch: dict[int, list[ImplCell]], colors: dict, path: Path) -> bool:
    """Median step time per impl and batch, error bars from Q1 to Q3."""
    batches = sorted(by_batch)
    impls = sorted({c.impl for cells in by_batch.values() for c in cells if c.median_s is not None})
    if not impls:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(batches) + 3), 3.6))
    width = 0.8 / len(impls)
    ys = []
    for j, impl in enumerate(impls):
        xs, med, lo, hi = [], [], [], []
        for i, b in enumerate(batches):
            c = next((c for c in by_batch[b] if c.impl == impl and c.median_s is not None), None)
            if c is None:
                continue
            m = c.median_s * 1e3
            xs.append(i - 0.4 + width * (j + 0.5))
            med.append(m)
            lo.append(m - (c.q1_s if c.q1_s is not None else c.median_s) * 1e3)
            hi.append((c.q3_s if c.q3_s is not None else c.median_s) * 1e3 - m)
            ys.append(m)
        label = next(c.label for cells in by_batch.values() for c in cells if c.impl == impl)
        ax.errorbar(xs, med, yerr=[lo, hi], fmt="o", capsize=4, color=colors.get(impl), label=label)
    _mark_failures(ax, by_batch, batches, colors)
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlim(-0.5, len(batches) - 0.5)
    ax.set_xlabel("batch size")
    ax.set_ylabel("median step time (ms), bars: IQR")
    if ys and max(ys) / max(min(ys), 1e-12) > 20:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_rss(title: str, cells: list[ImplCell], colors: dict, path: Path) -> bool:
    """Anonymous RSS (solid) and file-backed RSS (dashed) per step, first ok repeat of each impl."""
    series = []
    for c in cells:
        r = next((r for r in c.rows if row_status(r) == "ok" and _get(r, "host", "rss_anon")), None)
        if r is not None:
            series.append((c, r["host"]))
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for c, host in series:
        color = colors.get(c.impl)
        anon = [v / 2**20 for v in host["rss_anon"]]
        ax.plot(range(len(anon)), anon, color=color, lw=1.3, label=f"{c.label} anon ({c.leak_verdict or 'n/a'})")
        if host.get("rss_file"):
            ax.plot(range(len(host["rss_file"])), [v / 2**20 for v in host["rss_file"]], color=color, lw=1,
                    ls="--", label=f"{c.label} file")
        if host.get("steady_from"):
            ax.axvline(host["steady_from"], color=color, ls=":", lw=0.8)
    ax.set_xlabel("batch index (dotted: start of steady state)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
    return True


def plot_memory(title: str, by_batch: dict[int, list[ImplCell]], colors: dict, path: Path) -> bool:
    """Peak device memory (or peak RSS, hatched, as a CPU stand-in) per impl and batch."""
    batches = sorted(by_batch)
    impls = sorted({c.impl for cells in by_batch.values() for c in cells if c.peak_bytes is not None})
    if not impls:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(batches) + 3), 3.6))
    width = 0.8 / len(impls)
    standin = False
    for j, impl in enumerate(impls):
        label = next(c.label for cells in by_batch.values() for c in cells if c.impl == impl)
        for i, b in enumerate(batches):
            c = next((c for c in by_batch[b] if c.impl == impl and c.peak_bytes is not None), None)
            if c is None:
                continue
            standin |= c.cpu_standin
            ax.bar(i - 0.4 + width * (j + 0.5), c.peak_bytes / 2**20, width, color=colors.get(impl),
                   hatch="//" if c.cpu_standin else None, edgecolor="white", label=label)
            label = None
    _mark_failures(ax, by_batch, batches, colors)
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlim(-0.5, len(batches) - 0.5)
    ax.set_xlabel("batch size")
    ax.set_ylabel("peak RSS* (MiB, CPU stand-in)" if standin else "peak device memory (MiB)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_sweep(title: str, grid: dict[tuple[str, int], str], path: Path) -> bool:
    """Impl x batch grid coloured by outcome."""
    if not grid:
        return False
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    plt = _plt()
    impls = sorted({k[0] for k in grid})
    batches = sorted({k[1] for k in grid})
    fig, ax = plt.subplots(figsize=(0.9 * len(batches) + 3.2, 0.6 * len(impls) + 1.6))
    img = [[to_rgb(OUTCOME_COLORS.get(grid.get((i, b), ""), "#ffffff")) if (i, b) in grid else (0.97, 0.97, 0.97)
            for b in batches] for i in impls]
    ax.imshow(img, aspect="auto")
    for y, i in enumerate(impls):
        for x, b in enumerate(batches):
            if (i, b) in grid:
                out = grid[(i, b)]
                ax.text(x, y, "ok" if out == "ok" else out.replace("_", "\n"), ha="center", va="center",
                        fontsize=6, color="white" if out not in ("skipped", "ok") else "black")
    ax.set_xticks(range(len(batches)), [str(b) for b in batches], rotation=45)
    ax.set_yticks(range(len(impls)), impls)
    ax.set_xlabel("probe batch size")
    ax.set_title(title)
    seen = sorted({v for v in grid.values()})
    ax.legend(handles=[Patch(color=OUTCOME_COLORS.get(o, "#ffffff"), label=o) for o in seen], fontsize=7,
              bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, path, left=1.3, right=1.6, bottom=0.9)
    return True


# =============================================================================== sections


def _fingerprints(rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        fp = r.get("fingerprint") or {}
        key = json.dumps([fp.get("hostname"), fp.get("cpu_model"), fp.get("gpus"), fp.get("git_commit")],
                         sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(fp)
    return out or [{}]


def device_text(rows: list[dict]) -> str:
    fp = _fingerprints(rows)[0]
    gpus = fp.get("gpus") or []
    if gpus:
        names: dict[str, int] = {}
        for g in gpus:
            names[g.get("name", "GPU")] = names.get(g.get("name", "GPU"), 0) + 1
        return ", ".join(f"{n}× {name}" if n > 1 else str(name) for name, n in names.items())
    return f"CPU: {fp.get('cpu_model') or 'unknown'}"


def _section_environment(doc: Doc, rows: list[dict]) -> None:
    doc.h(2, "Environment")
    fps = _fingerprints(rows)
    fp = fps[0]
    gpus = fp.get("gpus") or []
    info = [["device", device_text(rows)]]
    for g in gpus:
        info.append([f"GPU {g.get('index', '?')}", f"{g.get('name')}, {format_bytes(_num(g.get('memory_bytes')))}, "
                     f"driver {g.get('driver', '?')}"])
    info += [
        ["CPU", str(fp.get("cpu_model") or "unknown")],
        ["cores", f"{fp.get('cpu_cores_logical', '?')} logical / {fp.get('cpu_cores_physical', '?')} physical"],
        ["RAM", format_bytes(_num(fp.get("ram_bytes")))],
        ["host / platform", f"{fp.get('hostname', '?')} / {fp.get('platform', '?')}"],
        ["Python", str(fp.get("python", "?"))],
        ["git commit", f"`{fp.get('git_commit') or 'unknown'}`" + (" (working tree dirty)" if fp.get("git_dirty")
                                                                    else "")],
    ]
    doc.table(["", "value"], info)
    if len(fps) > 1:
        doc.p("**Warning:** rows come from more than one machine or commit: "
              + "; ".join(f"{f.get('hostname')} {f.get('cpu_model')} `{f.get('git_commit')}`" for f in fps) + ".")
    versions: dict[str, dict] = {}
    for r in rows:
        v = _get(r, "fingerprint", "frameworks") or r.get("versions")
        if v and str(r.get("impl")) not in versions:
            versions[str(r.get("impl"))] = v
    impls = sorted({str(r.get("impl")) for r in rows})
    doc.h(3, "Framework versions per impl")
    doc.table(["impl", "versions"], [[i, ", ".join(f"{k} {v}" for k, v in sorted(versions[i].items()))
                                      if i in versions else "n/a (no successful cell reported versions)"]
                                     for i in impls])
    doc.h(3, "Pinned settings")
    doc.p("Every setting below is **pinned**: identical for every impl in this run (the spec's settings and the "
          "environment each worker is started with).")
    settings: dict[str, set] = {}
    for r in rows:
        for k, v in ((_get(r, "fingerprint", "pinned_settings") or {}) | (r.get("settings") or {})).items():
            settings.setdefault(k, set()).add(json.dumps(v, default=str))
    doc.table(["setting (pinned)", "value"], [[k, " / ".join(f"`{v}`" for v in sorted(vals))]
                                               for k, vals in sorted(settings.items())])
    env: dict[str, set] = {}
    for r in rows:
        for k, v in (_get(r, "fingerprint", "pinned_env") or {}).items():
            env.setdefault(k, set()).add(str(v))
    if env:
        doc.table(["environment variable (pinned)", "value"],
                  [[k, " / ".join(f"`{v}`" for v in sorted(vals))] for k, vals in sorted(env.items())])
    else:
        doc.p("No pinned environment variables were recorded.")


def _spec_title(key: tuple, multi_hash: bool) -> str:
    name, h, k = key
    return f"{name}" + (f", k={k}" if k is not None else "") + (f" (`{h}`)" if multi_hash and h else "")


def _section_table(doc: Doc, grouped: dict, pidx: dict, multi_hash: bool) -> None:
    doc.h(2, "Results")
    doc.p("One table per spec and batch size, one row per impl, fastest eligible first. Step times are per step; "
          "with several repeats, the median over repeats of each repeat's median (IQR likewise). "
          "\"× best\" is the median step time over the fastest ok impl's (leaking ones included). \"est/meas\" is "
          "the preflight memory estimate over the measured peak. The anon RSS slope is the Theil-Sen slope of "
          "anonymous RSS per batch in the steady state, with its 95% CI.")
    any_standin = False
    for key, by_batch in grouped.items():
        for batch, cells in by_batch.items():
            doc.h(3, f"{_spec_title(key, multi_hash)}, batch {batch}")
            ok_medians = [c.median_s for c in cells if c.status == "ok" and c.median_s]
            best = min(ok_medians) if ok_medians else None
            headers = ["impl"] + (["params (trainable / non-trainable)"] if pidx else []) + [
                "compile", "median step (IQR)", "samples/s", "× best", "peak memory", "est/meas",
                "anon RSS slope (95% CI)", "leak", "failure"]
            rows = []
            for c in cells:
                any_standin |= c.cpu_standin
                mem = "—"
                if c.peak_bytes is not None:
                    mem = format_bytes(c.peak_bytes) + (" (peak RSS*)" if c.cpu_standin else "")
                est = "—"
                if c.preflight_estimate is not None and c.peak_bytes:
                    est = f"{c.preflight_estimate / c.peak_bytes:.2f}"
                elif c.preflight_estimate is not None:
                    est = f"est {format_bytes(c.preflight_estimate)}"
                step = "—"
                if c.median_s is not None:
                    step = fmt_time(c.median_s)
                    if c.q1_s is not None and c.q3_s is not None:
                        step += f" ({fmt_time(c.q1_s)}–{fmt_time(c.q3_s)})"
                slope = "—" if c.slope is None else (
                    f"{_rate(c.slope)} ({format_bytes(c.slope_ci_low)} to {format_bytes(c.slope_ci_high)})")
                failure = "" if c.status == "ok" else f"**{c.failure_kind}** {_code(_short(c.failure_message))}"
                rows.append([f"**{c.label}**" if c.label != c.impl else c.impl]
                            + ([_params_cell(pidx, key[0], c)] if pidx else [])
                            + ["—" if c.compile_s is None else f"{c.compile_s:.2f} s", step,
                               "—" if c.samples_per_s is None else f"{c.samples_per_s:,.0f}",
                               "—" if (best is None or c.median_s is None) else f"{c.median_s / best:.2f}",
                               mem, est, slope, c.leak_verdict or "—", failure or "—"])
            n = len(headers)
            off = 1 if pidx else 0
            doc.table(headers, rows, right={1 + off, 2 + off, 3 + off, 4 + off, 5 + off, 6 + off} & set(range(n)))
            reps = max(c.n_repeats for c in cells)
            if reps > 1:
                doc.note(f"{reps} repeats per impl; memory is the largest peak, leak the worst verdict of any repeat.")
    if any_standin:
        doc.note("* peak RSS: on CPU there is no device allocator, so the worker's peak resident set (VmHWM) during "
                 "a few training steps on a trimmed heap, after the timing, stands in for device memory, less the "
                 "framework's import footprint and file-backed pages (shared libraries, memmap). It is not comparable "
                 "with GPU figures.")


def _section_plots(doc: Doc, grouped: dict, out_dir: Path, colors: dict, multi_hash: bool) -> None:
    doc.h(2, "Plots")
    made = False
    for key, by_batch in grouped.items():
        title = _spec_title(key, multi_hash).replace("`", "")
        slug = _slug(f"{key[0]}_k{key[2]}_{key[1][:6]}")
        rel = f"plots/step_time_{slug}.png"
        if plot_step_times(f"{title}: step time", by_batch, colors, out_dir / rel):
            doc.h(3, f"{_spec_title(key, multi_hash)}: step time")
            doc.img(rel, f"median step time per impl and batch for {title}, error bars IQR")
            made = True
        rel = f"plots/memory_{slug}.png"
        if plot_memory(f"{title}: peak memory", by_batch, colors, out_dir / rel):
            doc.h(3, f"{_spec_title(key, multi_hash)}: peak memory")
            standin = any(c.cpu_standin for cells in by_batch.values() for c in cells)
            doc.img(rel, f"peak memory per impl and batch for {title}"
                    + (" (hatched: peak RSS as CPU stand-in)" if standin else ""))
            made = True
        for batch, cells in by_batch.items():
            rel = f"plots/rss_{slug}_b{batch}.png"
            if plot_rss(f"{title}, batch {batch}: host RSS per batch", cells, colors, out_dir / rel):
                doc.h(3, f"{_spec_title(key, multi_hash)}, batch {batch}: host memory per batch")
                doc.img(rel, f"anonymous RSS (solid) and file RSS (dashed) per batch, {title}, batch {batch}")
                made = True
    if not made:
        doc.p("No successful cell: nothing to plot.")


def _sweep_grids(rows: list[dict]) -> dict[str, dict[tuple[str, int], str]]:
    grids: dict[str, dict[tuple[str, int], str]] = {}
    for r in rows:
        sw = r.get("sweep")
        if not isinstance(sw, dict):
            continue
        impl = str(sw.get("impl") or r.get("impl"))
        batch = sw.get("probe_batch", r.get("batch"))
        outcome = sw.get("outcome") or ("ok" if row_status(r) == "ok" else r.get("failure_kind") or "error")
        if batch is None:
            continue
        spec = str(r.get("spec_name", "?")) + (f", k={r['kmer']}" if r.get("kmer") is not None else "")
        grids.setdefault(spec, {})[(impl, int(batch))] = str(outcome)
    return grids


def _section_sweep(doc: Doc, rows: list[dict], out_dir: Path, plots: bool = True) -> None:
    grids = _sweep_grids(rows)
    if not grids:
        return
    doc.h(2, "Sweep map")
    doc.p("Batch-size probes: each cell is one probe of one impl at one batch size, coloured by its outcome.")
    for spec, grid in grids.items():
        doc.h(3, f"Sweep: {spec}")
        rel = f"plots/sweep_{_slug(spec)}.png"
        if plots and plot_sweep(f"{spec}: outcome per impl and batch", grid, out_dir / rel):
            doc.img(rel, f"sweep map for {spec}: outcome per impl and probe batch")
        impls = sorted({k[0] for k in grid})
        batches = sorted({k[1] for k in grid})
        doc.table(["impl"] + [str(b) for b in batches] + ["largest ok", "first failure"],
                  [[i] + [grid.get((i, b), "") for b in batches] + _sweep_summary(grid, i) for i in impls])


def _sweep_summary(grid: dict, impl: str) -> list[str]:
    probes = sorted((b, o) for (i, b), o in grid.items() if i == impl)
    ok = [b for b, o in probes if o == "ok"]
    fail = [(b, o) for b, o in probes if o != "ok"]
    return [str(max(ok)) if ok else "none", f"{fail[0][0]} ({fail[0][1]})" if fail else "none"]


def _section_recommendation(doc: Doc, rows: list[dict], grouped: dict, multi_hash: bool) -> list[dict]:
    doc.h(2, "Recommendation")
    doc.p("Rule: never a row that failed, was skipped or leaks; among the rest the fastest median step time wins, "
          "unless its 95% CI of the mean overlaps another's: then it is a tie, broken by the lowest peak memory.")
    plain: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        if not is_side_row(r):
            key = (str(r.get("spec_name", "?")), str(r.get("spec_hash", "")), r.get("kmer"))
            plain.setdefault(key, {}).setdefault(int(r.get("batch") or 0), []).append(r)
    out = []
    for key in grouped:
        for batch in grouped[key]:
            rec = recommend(plain[key][batch])
            out.append({"spec": key[0], "spec_hash": key[1], "kmer": key[2], "batch": batch,
                        "choice": rec.choice, "tie": rec.tie, "reason": rec.reason,
                        "label": f"{_spec_title(key, multi_hash)}, batch {batch}"})
    doc.table(["cell", "use"], [[o["label"], "**no recommendation**" if o["choice"] is None else
                                 f"**{o['choice']}**" + (f" (tie: {', '.join(o['tie'])})" if o["tie"] else "")]
                                for o in out])
    for o in out:
        doc.h(3, o["label"])
        head = ("**No recommendation.** " if o["choice"] is None
                else f"**Use {o['choice']}**" + (" (a tie). " if o["tie"] else ". "))
        doc.p(head + o["reason"])
    return out


def _section_diagnosis(doc: Doc, rows: list[dict], grouped: dict, multi_hash: bool) -> None:
    doc.h(2, "Diagnosis")
    leaks, failures = [], []
    for key, by_batch in grouped.items():
        for batch, cells in by_batch.items():
            where = f"{_spec_title(key, multi_hash)}, batch {batch}"
            for c in cells:
                if c.leak_verdict == "leak":
                    leaks.append((f"{c.label} at {where}", c))
                if c.status != "ok":
                    failures.append((f"{c.label} at {where}", c))
    doc.h(3, "Leaks")
    if leaks:
        for where, c in leaks:
            cause = c.leak_cause or {}
            doc.p(f"**{where}**: anonymous RSS grows {_rate(c.slope)} (95% CI {_rate(c.slope_ci_low)} to "
                  f"{_rate(c.slope_ci_high)}). {c.leak_reason}")
            doc.ul([f"cause: **{cause.get('cause', 'unknown')}**: {cause.get('evidence', 'no evidence recorded')}",
                    f"fix: {cause.get('fix', 'no fix recorded')}"])
    else:
        doc.p("No leak found in the benchmark cells.")
    inconclusive = [(f"{c.label} at {_spec_title(k, multi_hash)}, batch {b}", c) for k, bb in grouped.items()
                    for b, cs in bb.items() for c in cs if c.leak_verdict == "inconclusive"]
    if inconclusive:
        doc.p("Inconclusive leak verdicts (allowed in a recommendation, but check them):")
        doc.ul([f"{w}: {c.leak_reason or 'no reason given'}" for w, c in inconclusive])

    doc.h(3, "Failures")
    if failures:
        for where, c in failures:
            items = [f"message: {_code(_short(c.failure_message, 400))}",
                     f"advice: {ADVICE.get(c.failure_kind or '', ADVICE['error'])}"]
            tail = next((r.get("stderr_tail") for r in c.rows if r.get("stderr_tail")), None)
            if tail and " ".join(str(tail[-1]).split()) not in " ".join(c.failure_message.split()):
                items.append(f"stderr (last line): {_code(_short(tail[-1], 300))}")
            doc.p(f"**{where}**: **{c.failure_kind}**")
            doc.ul(items)
    else:
        doc.p("No benchmark cell failed.")

    scen = [r for r in rows if r.get("scenario") and not r.get("sweep")]
    if scen:
        doc.h(3, "Leak scenarios")
        doc.p("Named leak anti-patterns run on purpose; each row shows what the detector concluded.")
        table = []
        for r in scen:
            leak = r.get("leak") or {}
            cause = leak.get("cause") or {}
            if row_status(r) == "ok":
                verdict = leak.get("verdict", "n/a")
                detail = f"{cause.get('cause', '')}: {cause.get('fix', '')}".strip(": ")
            else:
                verdict = f"failed ({r.get('failure_kind')})"
                detail = _code(_short(r.get("failure_message", ""), 160))
            table.append([str(r.get("impl")), str(r.get("scenario")), str(r.get("batch")), verdict,
                          _rate(_num(leak.get("slope_bytes_per_batch"))), detail or "—"])
        doc.table(["impl", "scenario", "batch", "verdict", "slope", "cause and fix"], table, right={2, 4})

    doc.h(3, "Preflight warnings")
    seen, flags = set(), []
    for r in rows:
        pf = r.get("preflight")
        if not isinstance(pf, dict):
            continue
        for f in pf.get("flags") or []:
            if not isinstance(f, dict):
                continue
            k = json.dumps([r.get("impl"), r.get("spec_name"), r.get("batch"), f], sort_keys=True, default=str)
            if k in seen:
                continue
            seen.add(k)
            flags.append([str(r.get("impl")), str(r.get("spec_name")), str(r.get("batch")),
                          str(f.get("layer") or f.get("tensor") or "?"),
                          f"{f['elements']:,}" if isinstance(f.get("elements"), int) else str(f.get("elements", "?")),
                          str(f.get("safe_batch", "?")), "yes" if f.get("wrapped") else "no",
                          _short(str(f.get("message") or f.get("reason") or ""), 120) or "—"])
    skipped = [r for r in rows if row_status(r) == "skipped" and isinstance(r.get("preflight"), dict)]
    if flags:
        doc.table(["impl", "spec", "batch", "layer / tensor", "elements", "safe batch", "wrapped", "note"], flags,
                  right={2, 4, 5})
    if skipped:
        doc.ul([f"{r.get('impl')} {r.get('spec_name')} batch {r.get('batch')} skipped by preflight: "
                f"{_short(r['preflight'].get('reason') or r.get('failure_message') or '', 200)}" for r in skipped])
    if not flags and not skipped:
        doc.p("No preflight warnings.")


# =============================================================================== build


def _run_date(rows: list[dict], run_id: str) -> str:
    started = sorted(str(r["started_at"]) for r in rows if r.get("started_at"))
    if started:
        return started[0][:16].replace("T", " ")
    m = re.match(r"(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})", run_id)
    return f"{m[1]}-{m[2]}-{m[3]} {m[4]}:{m[5]}" if m else time.strftime("%Y-%m-%d %H:%M")


def _default_run_id(rows: list[dict]) -> str:
    ids = sorted({str(r["run_id"]) for r in rows if r.get("run_id")})
    if len(ids) == 1:
        return ids[0]
    if not ids:
        return time.strftime("%Y%m%d-%H%M%S") + "-report"
    import hashlib

    return f"{ids[-1]}-merged-{hashlib.sha1(' '.join(ids).encode()).hexdigest()[:6]}"


def build_report(results: Any, out_root: str | Path = DEFAULT_OUT_ROOT, run_id: str | None = None,
                 params_check: dict | None = None, *, plots: bool = True) -> Path:
    """Write ``<out_root>/<run-id>/report.md``, ``report.html`` and ``plots/*.png``; update the index.

    ``results``: JSONL paths, directories of them, run ids (looked up in ``results/``), or row dicts.
    ``params_check``: parameter counts per spec (see :func:`_params_index` for the accepted shapes); when
    given, the table gets a parameters column with "equal" / "differs". ``plots=False`` skips the PNGs
    (and their sections), for quick rebuilds. Returns the run's directory.
    """
    rows = load_rows(results)
    if not rows:
        raise ValueError(f"no rows found in {results!r}")
    run_id = run_id or _default_run_id(rows)
    out_dir = Path(out_root) / _slug(run_id)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "plots").glob("*.png"):
        old.unlink()

    grouped = group_cells(rows)
    multi_hash = len({(k[0], k[2]) for k in grouped}) < len(grouped)
    pidx = _params_index(params_check)
    colors = _colors(sorted({str(r.get("impl")) for r in rows}))
    date = _run_date(rows, run_id)
    doc = Doc(f"vaebench report {run_id}")
    specs = sorted({str(r.get("spec_name", "?")) + (f" k={r['kmer']}" if r.get("kmer") is not None else "")
                    for r in rows})
    impls = sorted({str(r.get("impl")) for r in rows})
    n_ok = sum(row_status(r) == "ok" for r in rows)
    doc.p(f"Run `{run_id}`, {date}, on {device_text(rows)}. {len(rows)} row{'s' if len(rows) != 1 else ''} "
          f"({n_ok} ok), impls: {', '.join(impls)}; specs: {'; '.join(specs) or 'none'}.")
    doc.p("Sections: [Recommendation](#recommendation), [Results](#results), [Diagnosis](#diagnosis), "
          + ("[Sweep map](#sweep-map), " if _sweep_grids(rows) else "")
          + ("[Plots](#plots), " if plots and grouped else "") + "[Environment](#environment).")
    recs: list[dict] = []
    if grouped:
        recs = _section_recommendation(doc, rows, grouped, multi_hash)
        _section_table(doc, grouped, pidx, multi_hash)
    else:
        doc.h(2, "Recommendation")
        doc.p("No benchmark cells in this run (only scenario or sweep rows): nothing to recommend.")
    _section_diagnosis(doc, rows, grouped, multi_hash)
    _section_sweep(doc, rows, out_dir, plots)
    if grouped and plots:
        _section_plots(doc, grouped, out_dir, colors, multi_hash)
    _section_environment(doc, rows)

    (out_dir / "report.md").write_text(doc.markdown())
    (out_dir / "report.html").write_text(doc.html(out_dir))
    meta = {"run_id": run_id, "date": date, "device": device_text(rows), "specs": specs, "impls": impls,
            "rows": len(rows), "ok_rows": n_ok, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "recommendations": recs}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    update_index(out_root)
    return out_dir


def update_index(out_root: str | Path = DEFAULT_OUT_ROOT) -> Path:
    """Rewrite ``index.md`` and ``index.html`` in ``out_root`` from every run's ``meta.json``, newest first."""
    root = Path(out_root)
    metas = []
    for f in root.glob("*/meta.json"):
        try:
            metas.append((f.parent.name, json.loads(f.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    metas.sort(key=lambda m: (str(m[1].get("date", "")), m[0]), reverse=True)
    doc = Doc("vaebench reports")
    doc.p(f"{len(metas)} run(s), newest first.")
    rows_md, rows_html = [], []
    for d, m in metas:
        cells = [str(m.get("date", "")), str(m.get("device", "")), ", ".join(m.get("specs") or []),
                 ", ".join(m.get("impls") or []), f"{m.get('ok_rows', '?')}/{m.get('rows', '?')}"]
        rows_md.append([f"[{m.get('run_id', d)}]({d}/report.md)", *cells])
        rows_html.append([f"[{m.get('run_id', d)}]({d}/report.html)", *cells])
    headers = ["run", "date", "device", "specs", "impls", "ok rows"]
    doc.table(headers, rows_md)
    (root / "index.md").write_text(doc.markdown())
    doc.blocks[-1] = ("table", headers, rows_html, set())
    (root / "index.html").write_text(doc.html(root))
    return root / "index.md"
