"""Checks a matplotlib figure for text a reader cannot read: two texts drawn over each other, a text over a
panel or a legend it does not belong to, panels or legends over each other, a text cut off at the figure's edge.

Why a check and not only a layout: the summary figure's faults (a second row's titles over the first row's
axis labels) were invisible to every test, which only asked whether a PNG was written. The check measures what
matplotlib draws (each artist's window extent after a draw), so it holds whatever the layout engine, fonts or
labels; ``tests/reports/test_summary_figure.py`` shows it failing on a planted overlap.

Framework-free, and matplotlib is imported only inside the functions (the figure passed in already needs it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["OUTSIDE", "text_overlaps"]

#: the second name of a pair whose first is a text (partly) outside the figure, so cut off in the PNG
OUTSIDE = "outside the figure"


def text_overlaps(fig, tol: float = 1.0) -> list[tuple[str, str]]:
    """Draw ``fig`` (running its layout engine) and return the pairs of things that overlap by more than
    ``tol`` pixels both ways, each named ("'1024' (x tick label, panel 'dense, k=5')"). Things: every text
    drawn (visible, non-empty; tick labels only of the ticks in view), every visible axes' frame and every
    legend's box. A text may overlap its own axes (an annotation) and its own legend; a legend its own axes.
    A text reaching past the figure's edge pairs with :data:`OUTSIDE`. Empty: nothing overlaps."""
    renderer = _renderer(fig)
    texts, frames = _collect(fig, renderer)
    found: list[tuple[str, str]] = []
    for i, (name, box, owners) in enumerate(texts):
        for other, obox, _ in texts[i + 1:]:
            if _overlap(box, obox, tol):
                found.append((name, other))
        for fname, fbox, fowner in frames:
            if fowner not in owners and _overlap(box, fbox, tol):
                found.append((name, fname))
        f = fig.bbox
        if box.x0 < f.x0 - tol or box.y0 < f.y0 - tol or box.x1 > f.x1 + tol or box.y1 > f.y1 + tol:
            found.append((name, OUTSIDE))
    for i, (name, box, owner) in enumerate(frames):
        for other, obox, oowner in frames[i + 1:]:
            if not _related(owner, oowner) and _overlap(box, obox, tol):
                found.append((name, other))
    return found


def _renderer(fig):
    """The figure drawn once (layout engine included), and the renderer whose text extents it used."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _overlap(a, b, tol: float) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


def _collect(fig, renderer) -> tuple[list[tuple[str, Any, tuple]], list[tuple[str, Any, Any]]]:
    """(texts, frames): texts as (name, window extent, the figure, axes and legends they sit in), frames as
    (name, window extent, the axes or legend). Walks the artist tree from the figure, skipping an invisible
    artist and all it holds (``fig.findobj`` would also return the texts of a hidden axes and the labels of
    ticks out of view, which are never drawn)."""
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.legend import Legend
    from matplotlib.text import Text

    texts: list[tuple[str, Any, tuple]] = []
    frames: list[tuple[str, Any, Any]] = []

    def where(owners: tuple) -> str:
        for o in reversed(owners):
            if isinstance(o, Legend):
                return "legend" + (f" of panel {o.axes.get_title()!r}" if o.axes is not None else "")
            if isinstance(o, Axes):
                return f"panel {o.get_title()!r}"
        return "figure"

    def walk(artist, owners: tuple, kind: str) -> None:
        if not artist.get_visible():
            return
        if isinstance(artist, (Axes, Legend)):
            owners = (*owners, artist)
            box = artist.bbox if isinstance(artist, Axes) else artist.get_window_extent(renderer)
            frames.append((f"{where(owners)} ({'box' if isinstance(artist, Legend) else 'axes'})", box, artist))
            kind = "legend entry" if isinstance(artist, Legend) else "text"
        if isinstance(artist, Text) and artist.get_text().strip():
            texts.append((f"{artist.get_text()!r} ({kind}, {where(owners)})", artist.get_window_extent(renderer),
                          owners))
        if isinstance(artist, Axis):
            name = artist.axis_name
            walk(artist.label, owners, f"{name} axis label")
            walk(artist.offsetText, owners, f"{name} axis offset")
            for tick in _ticks_in_view(artist):
                walk(tick, owners, f"{name} tick label")
            return
        titles = (artist.title, artist._left_title, artist._right_title) if isinstance(artist, Axes) else ()
        for child in artist.get_children():
            walk(child, owners, "title" if any(child is t for t in titles) else kind)

    walk(fig, (fig,), "figure text")
    return texts, frames


def _ticks_in_view(axis) -> list:
    """The major and minor ticks matplotlib draws: those whose location lies in the view interval (an axis
    keeps tick objects, with stale labels, for locations outside it)."""
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * max(abs(lo), abs(hi), 1e-300)
    ticks = axis.get_major_ticks(len(axis.get_majorticklocs())) + axis.get_minor_ticks(len(axis.get_minorticklocs()))
    return [t for t in ticks if lo - eps <= t.get_loc() <= hi + eps]


def _related(a, b) -> bool:
    """Whether one of two frames holds the other (an axes and its own legend)."""
    return getattr(a, "axes", None) is b or getattr(b, "axes", None) is a
