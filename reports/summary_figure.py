"""The report's first figure: one panel per spec that measured something, samples/s against batch size (log x),
one line per impl, failed and skipped cells marked on the x axis by kind, the recommended point ringed; and the
one line that names the specs left out of it.

A spec where no cell was measured gets no panel (on a CPU most specs skip every impl, and a grid of empty boxes buried
the few that ran); :func:`summary_panels` says which were left out and why, in one line written under the image.

The layout is matplotlib's constrained layout, which measures every title, tick label, axis label and the
figure legend (``loc="outside lower center"``) and spaces the panels so none overlaps another, whatever the
labels; fixed margins in inches (``reports.plots._save``) could not know how long a title or tick label is.
What it cannot see it is given room for here: long titles are wrapped, x tick labels too close together for
the panel's width turn upright (then every other one is left out), y tick labels are short ("12k", no offset
text that could collide with the title). ``reports.figure_check.text_overlaps`` checks the result in the tests.

Framework-free: this module must never import torch, jax, keras or tensorflow; matplotlib only when drawing.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from reports.formatting import join_and

__all__ = ["FAILURE_MARKERS", "plot_summary", "summary_figure", "summary_panels"]

#: how a failed or skipped cell is marked in the summary figure, by kind
FAILURE_MARKERS = {"device_oom": "v", "host_oom": "v", "int32_overflow": "s", "skipped": "o", "leak": "D"}
#: the legend's words for each kind of mark ("failed": any kind without a marker of its own)
MARK_NAMES = {"device_oom": "out of memory", "host_oom": "out of memory", "int32_overflow": "int32 overflow",
              "skipped": "skipped", "leak": "leak (confirmed)", "failed": "other failure"}

#: the saved PNG's resolution, the one of every plot of the report (``reports.plots._save``); the figure is
#: built at it, so the text extents measured by the overlap check are those of the PNG
DPI = 90
PANEL_W, PANEL_H = 3.3, 2.6  # inches per panel
MIN_W = 5.5  # inches: one or two panels still leave the legend a few columns
COLUMNS = 4
TITLE_PT, TICK_PT, LABEL_PT, LEGEND_PT = 9, 7, 8, 8
CHAR_EM = 0.62  # a DejaVu Sans character's mean width, in em, a little generous (digits are 0.64)
AXIS_SLACK_IN = 0.75  # of a panel's width, what the y tick labels, the y label and the pads take


def summary_panels(panels: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """(the panels to draw: those with at least one measured line, the one line naming the others and why, or
    None when none is left out). The others are grouped by their ``note`` ("all 5 impls skipped"), in order."""
    drawn = [p for p in panels if p.get("lines")]
    by_note: dict[str, list[str]] = {}
    for p in panels:
        if not p.get("lines"):
            by_note.setdefault(p.get("note") or "nothing measured", []).append(f"**{p['title']}**")
    if not by_note:
        return drawn, None
    what = "; ".join(f"{join_and(titles)}: {note}" for note, titles in by_note.items())
    return drawn, f"Not drawn (no cell measured): {what} (see what broke, above)."


def plot_summary(panels: list[dict[str, Any]], colors: dict, path: Path) -> bool:
    """Draw :func:`summary_figure` into ``path`` (a PNG); False, and no file, when no panel has a measured line."""
    fig = summary_figure(panels, colors)
    if fig is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return True


def summary_figure(panels: list[dict[str, Any]], colors: dict):
    """The figure (a ``matplotlib.figure.Figure``, not yet drawn, outside pyplot so nothing needs closing), or
    None when no panel has a measured line. Each panel: {"title", "lines": {label: [(batch, sps)]}, "failures":
    [(label, batch, kind)], "best": (label, batch, sps) or None, "note"}; a panel without lines is not drawn."""
    panels = [p for p in panels if p.get("lines")]
    if not panels:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncol = min(COLUMNS, len(panels))
    nrow = -(-len(panels) // ncol)
    width = max(MIN_W, PANEL_W * ncol + 0.4)
    handles = _legend_handles(panels, colors)
    legend_cols = _legend_columns(handles, width)
    legend_rows = -(-len(handles) // legend_cols)
    fig = Figure(figsize=(width, PANEL_H * nrow + 0.2 + 0.22 * legend_rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes_w_pt = (width / ncol - AXIS_SLACK_IN) * 72
    grid = fig.add_gridspec(nrow, ncol)
    for n, panel in enumerate(panels):
        ax = fig.add_subplot(grid[n // ncol, n % ncol])
        _draw_panel(ax, panel, colors, axes_w_pt)
        if n % ncol == 0:
            ax.set_ylabel("samples/s", fontsize=LABEL_PT)
    fig.legend(handles=handles, loc="outside lower center", ncol=legend_cols, fontsize=LEGEND_PT, frameon=False)
    return fig


def _draw_panel(ax, panel: dict[str, Any], colors: dict, axes_w_pt: float) -> None:
    from matplotlib.ticker import FuncFormatter

    batches = sorted({b for pts in panel["lines"].values() for b, _ in pts} | {f[1] for f in panel["failures"]})
    for label, pts in sorted(panel["lines"].items()):
        pts = sorted(pts)
        ax.plot([b for b, _ in pts], [v for _, v in pts], "-o", color=colors.get(label, "black"), lw=1.5, ms=4)
    fails = panel["failures"]
    for label, b, kind in sorted(fails, key=lambda f: (f[1], f[0])):
        same = [f for f in fails if f[1] == b]
        k = next(i for i, f in enumerate(same) if f[0] == label)
        ax.plot([b * 1.09 ** (k - (len(same) - 1) / 2)], [0.05], marker=FAILURE_MARKERS.get(kind, "x"), ls="none",
                ms=7, mfc="white" if kind == "skipped" else colors.get(label, "black"), mec=colors.get(label, "black"),
                mew=1.5, transform=ax.get_xaxis_transform(), clip_on=False)
    ys = [v for pts in panel["lines"].values() for _, v in pts]
    best = panel.get("best")
    if best:
        ys.append(best[2])
        ax.plot([best[1]], [best[2]], "o", ms=14, mfc="none", mec="black", mew=2, zorder=5)
        ax.annotate("use", (best[1], best[2]), xytext=(0, 8), textcoords="offset points", ha="center", va="bottom",
                    fontsize=LABEL_PT, weight="bold")
    # headroom above the highest point for the ring and the "use" over it (about 20 pt of a ~120 pt panel)
    ax.set_ylim(0, max(ys) * 1.32)
    ax.yaxis.set_major_formatter(FuncFormatter(_short_number))
    ax.set_xscale("log")
    lo, hi = min(batches) / 1.6, max(batches) * 1.6
    ax.set_xlim(lo, hi)
    labels, upright = _tick_labels(batches, lo, hi, axes_w_pt)
    ax.set_xticks(batches, labels, rotation=90 if upright else 0)
    ax.minorticks_off()
    ax.set_title(textwrap.fill(panel["title"], max(12, int(axes_w_pt / (CHAR_EM * TITLE_PT)))), fontsize=TITLE_PT)
    ax.set_xlabel("batch size (log)", fontsize=LABEL_PT)
    ax.tick_params(labelsize=TICK_PT)
    ax.grid(alpha=0.3)


def _short_number(v: float, _pos=None) -> str:
    """A y tick label that stays narrow and needs no offset text: 950, 12k, 1.5M."""
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def _tick_labels(batches: list[int], lo: float, hi: float, axes_w_pt: float) -> tuple[list[str], bool]:
    """(the x tick labels, whether upright): flat where neighbours' labels fit side by side at the panel's
    estimated width, else upright, and where even upright ones (one line of text wide) collide, every other
    one left empty (the smallest batch labelled, and the largest where two or more are)."""
    labels = [str(b) for b in batches]
    span = math.log(hi / lo)
    gaps = [math.log(b2 / b1) / span * axes_w_pt for b1, b2 in zip(batches, batches[1:], strict=False)]
    width = [len(t) * CHAR_EM * TICK_PT for t in labels]
    if all(g >= (w1 + w2) / 2 + 3 for g, w1, w2 in zip(gaps, width, width[1:], strict=False)):
        return labels, False
    line = 1.3 * TICK_PT
    if all(g >= line for g in gaps):
        return labels, True
    step = max(2, math.ceil(line / max(min(gaps), 1e-9)))
    keep = list(range(0, len(labels), step))
    if keep[-1] != len(labels) - 1 and len(keep) > 1:
        keep[-1] = len(labels) - 1  # the largest batch labelled, a step or more from the one before
    return [t if i in keep else "" for i, t in enumerate(labels)], True


def _legend_handles(panels: list[dict[str, Any]], colors: dict) -> list:
    """One entry per impl seen (a line or a mark), one per kind of mark, and the ring."""
    from matplotlib.lines import Line2D

    labels = sorted({label for p in panels for label in p["lines"]} | {f[0] for p in panels for f in p["failures"]})
    kinds = {f[2] if f[2] in FAILURE_MARKERS else "failed" for p in panels for f in p["failures"]}
    handles = [Line2D([], [], color=colors.get(label, "black"), marker="o", lw=1.5, ms=4, label=label)
               for label in labels]
    handles += [Line2D([], [], ls="none", marker=FAILURE_MARKERS.get(k, "x"), mfc="white", mec="black", ms=7,
                       label=MARK_NAMES[k]) for k in sorted(kinds, key=lambda k: MARK_NAMES[k])]
    if any(p.get("best") for p in panels):
        handles.append(Line2D([], [], ls="none", marker="o", ms=12, mfc="none", mec="black", mew=2,
                              label="recommended"))
    return handles


def _legend_columns(handles: list, width_in: float) -> int:
    """As many legend columns as fit the figure's width, each as wide as the longest entry (handle, pad, text,
    column spacing: matplotlib's defaults in em), so the legend is never wider than the figure."""
    longest = max(len(h.get_label()) for h in handles)
    entry_pt = (2.0 + 0.8 + 2.0 + longest * CHAR_EM) * LEGEND_PT
    return max(1, min(len(handles), int((width_in * 72 - 20) // entry_pt)))
