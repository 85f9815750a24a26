"""The summary figure (the report's first): a panel only for a spec that measured something, the others named in
one line under it, and no text over another: checked by ``reports.figure_check.text_overlaps`` on the figure
matplotlib draws, which is shown to catch a planted overlap. No framework, no worker."""

from __future__ import annotations

import pytest

from reports.figure_check import OUTSIDE, text_overlaps
from reports.plots import impl_colors
from reports.summary_figure import plot_summary, summary_figure, summary_panels

IMPLS = ("torch", "flax", "keras-jax", "keras-torch", "keras-tensorflow")
BATCHES = (64, 256, 1024, 4096)
COLORS = impl_colors(list(IMPLS))
MEASURED = ("dense, k=5", "conv, k=5", "autoencoder-kl, k=7 (bf16)", "resvae-small, k=5, bf16 (a1b2c3d4e5f6)",
            "dense-wide, k=7")
SKIPPED = ("conv-strided, k=7", "resvae, k=7", "autoencoder-kl, k=7")


def measured_panel(title: str, n: int = 0, batches: tuple[int, ...] = BATCHES) -> dict:
    """Five impls across the batches, sps growing with batch; keras-torch out of memory at the largest batch,
    flax skipped at the smallest, a confirmed leak; the fastest point recommended."""
    lines: dict[str, list[tuple[int, float]]] = {}
    failures: list[tuple[str, int, str]] = []
    for j, impl in enumerate(IMPLS):
        for i, b in enumerate(batches):
            if impl == "keras-torch" and i == len(batches) - 1:
                failures.append((impl, b, "device_oom"))
            elif impl == "flax" and i == 0 and len(batches) > 1:
                failures.append((impl, b, "skipped"))
            else:
                lines.setdefault(impl, []).append((b, (1000.0 + 300 * j + 50 * n) * (1 + i) ** 1.5))
    failures.append(("keras-jax", batches[0], "leak"))
    failures.append(("torch", batches[-1], "nan_loss"))
    best_label = max(lines, key=lambda k: max(v for _, v in lines[k]))
    best = max(lines[best_label], key=lambda p: p[1])
    return {"title": title, "lines": lines, "failures": failures, "best": (best_label, best[0], best[1]), "note": ""}


def skipped_panel(title: str) -> dict:
    return {"title": title, "lines": {}, "failures": [(i, 8, "skipped") for i in IMPLS], "best": None,
            "note": "all 5 impls skipped"}


def realistic_panels() -> list[dict]:
    """8 specs in the report's order: 5 measured, 3 where every impl skipped, interleaved."""
    measured = [measured_panel(t, n) for n, t in enumerate(MEASURED)]
    skipped = [skipped_panel(t) for t in SKIPPED]
    return [measured[0], skipped[0], measured[1], measured[2], skipped[1], measured[3], skipped[2], measured[4]]


def visible_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def test_the_real_figure_draws_only_the_measured_specs_and_nothing_overlaps():
    panels = realistic_panels()
    fig = summary_figure(panels, COLORS)
    assert len(visible_axes(fig)) == 5
    assert [ax.get_title().replace("\n", " ") for ax in visible_axes(fig)] == list(MEASURED)
    assert text_overlaps(fig) == []
    drawn, _ = summary_panels(panels)
    assert len(visible_axes(summary_figure(drawn, COLORS))) == 5


def test_plot_summary_writes_the_png_and_none_without_a_measured_panel(tmp_path):
    assert plot_summary(realistic_panels(), COLORS, tmp_path / "plots/summary.png")
    assert (tmp_path / "plots/summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_summary([skipped_panel(t) for t in SKIPPED], COLORS, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    assert summary_figure([], COLORS) is None


def _freeze(fig):
    """Draw once and keep the layout where it is, so a planted change moves nothing else."""
    assert text_overlaps(fig) == []
    fig.set_layout_engine("none")
    return fig


def test_a_title_moved_onto_the_row_above_is_caught():
    fig = _freeze(summary_figure(realistic_panels(), COLORS))
    upper, lower = visible_axes(fig)[0], visible_axes(fig)[4]  # 4 columns: the second row's first panel
    renderer = fig.canvas.get_renderer()
    target = upper.xaxis.label.get_window_extent(renderer)  # "batch size (log)" of the panel above
    _, y = lower.transAxes.inverted().transform((0, (target.y0 + target.y1) / 2))
    lower.set_title(lower.get_title(), fontsize=9, y=y, pad=0)
    found = text_overlaps(fig)
    assert any("'batch size (log)'" in a + b and lower.get_title() in a + b for a, b in found), found


def test_a_figure_text_on_a_tick_label_is_caught():
    fig = _freeze(summary_figure(realistic_panels(), COLORS))
    tick = next(t for t in visible_axes(fig)[2].get_xticklabels() if t.get_text() == "256")
    box = tick.get_window_extent(fig.canvas.get_renderer())
    x, y = fig.transFigure.inverted().transform(((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2))
    fig.text(x, y, "planted", ha="center", va="center", fontsize=8)
    found = text_overlaps(fig)
    assert any("'planted'" in a and "'256' (x tick label" in b or "'planted'" in b and "'256' (x tick label" in a
               for a, b in found), found


def test_a_legend_over_a_panel_and_a_text_past_the_edge_are_caught():
    fig = _freeze(summary_figure(realistic_panels(), COLORS))
    legend = fig.legends[0]
    legend.set_loc("center")
    legend.set_bbox_to_anchor((0.5, 0.5), transform=fig.transFigure)
    fig.text(0.995, 0.5, "cut off at the edge", fontsize=8)
    found = text_overlaps(fig)
    assert any("(legend entry, legend)" in a and "(axes)" in b for a, b in found), found
    assert ("'cut off at the edge' (figure text, figure)", OUTSIDE) in found


def test_the_skipped_specs_are_named_in_one_line():
    drawn, line = summary_panels(realistic_panels())
    assert [p["title"] for p in drawn] == list(MEASURED)
    assert line is not None and "\n" not in line
    assert line.startswith("Not drawn (no cell measured): ")
    for title in SKIPPED:
        assert f"**{title}**" in line
    assert line.count("all 5 impls skipped") == 1  # grouped by their note
    other = {**skipped_panel("dense-huge, k=9"), "note": "all 5 impls failed or skipped"}
    _, line = summary_panels([*realistic_panels(), other])
    assert "**dense-huge, k=9**: all 5 impls failed or skipped" in line
    assert summary_panels([measured_panel("dense, k=5")])[1] is None


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 9])
def test_no_overlap_for_any_number_of_panels(n):
    titles = [MEASURED[i % len(MEASURED)] + (f" #{i}" if i >= len(MEASURED) else "") for i in range(n)]
    fig = summary_figure([measured_panel(t, i) for i, t in enumerate(titles)], COLORS)
    assert len(visible_axes(fig)) == n
    assert text_overlaps(fig) == []


@pytest.mark.parametrize("batches", [(8,), (64, 96, 128, 192, 256), tuple(2 ** e for e in range(3, 16)),
                                     (1, 1000, 1000000)])
def test_no_overlap_with_few_many_or_crowded_batches(batches):
    title = "a very long spec title that would not fit one panel's width, k=7, bf16 (`0123456789ab`)"
    fig = summary_figure([measured_panel(title, 0, batches), measured_panel("dense, k=5", 1, batches)], COLORS)
    assert text_overlaps(fig) == []
