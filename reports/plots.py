"""The report's PNG plots: step time, peak memory, host RSS per batch and the sweep map.

With ``reports.summary_figure`` (the report's first figure, its own layout) and ``reports.figure_check``, the
only modules of ``reports`` that import matplotlib, and only when a plot is drawn, so that building a report
with ``plots=False`` (and everything else here) works without it.

Framework-free: this module must never import torch, jax, keras or tensorflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.impls_registry import RecordField
from reports.cells import ImplCell, nested, row_status

__all__ = ["IMPL_PALETTE", "OUTCOME_COLORS", "impl_colors", "plot_curves", "plot_memory", "plot_rss", "plot_step_times",
           "plot_sweep"]

#: The one palette of the reports: each built-in impl has its colour (its record's ``colour``,
#: ``harness.impls_registry``) forever, in every plot of every run; any other label (a plug-in, "torch (1 ulp)")
#: takes the next free colour of ``EXTRA_COLORS``, in sorted order of the labels that need one.
IMPL_PALETTE = RecordField("colour")
EXTRA_COLORS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31",
                "#843c39", "#7b4173", "#3182bd", "#e6550d")

OUTCOME_COLORS = {
    "ok": "#2ca02c", "device_oom": "#d62728", "host_oom": "#ff7f0e", "int32_overflow": "#9467bd",
    "nan_loss": "#8c564b", "timeout": "#7f7f7f", "crash_signal": "#1f1f1f", "compile_error": "#e377c2",
    "skipped": "#c7c7c7", "framework_missing": "#bcbd22", "error": "#f7b6d2",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def impl_colors(impls: list[str]) -> dict[str, str]:
    """{label: hex colour}: a built-in impl's from :data:`IMPL_PALETTE` whatever else is present, every other
    label the next free one of :data:`EXTRA_COLORS` (sorted, so the same labels always get the same ones)."""
    out = {i: IMPL_PALETTE[i] for i in impls if i in IMPL_PALETTE}
    extras = sorted({i for i in impls if i not in IMPL_PALETTE})
    for n, label in enumerate(extras):
        out[label] = EXTRA_COLORS[n % len(EXTRA_COLORS)]
    return out


def _color(colors: dict, c: ImplCell) -> str:
    """A cell's colour: its row label's (a label such as "torch (1 ulp)" has its own), else its impl's."""
    return colors.get(c.label) or colors.get(c.impl) or "black"


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
                        ha="center", va="bottom", fontsize=7, color=_color(colors, c))


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
        ax.errorbar(xs, med, yerr=[lo, hi], fmt="o", capsize=4, color=colors.get(label, colors.get(impl)), label=label)
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
    r_of = {}
    for c in cells:
        r = next((r for r in c.rows if row_status(r) == "ok" and nested(r, "host", "rss_anon")), None)
        if r is not None:
            series.append((c, r["host"]))
            r_of[c.impl] = r
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for c, host in series:
        color = _color(colors, c)
        anon = [v / 2**20 for v in host["rss_anon"]]
        ax.plot(range(len(anon)), anon, color=color, lw=1.3, label=f"{c.label} anon ({c.leak_label or 'n/a'})")
        if host.get("rss_file"):
            ax.plot(range(len(host["rss_file"])), [v / 2**20 for v in host["rss_file"]], color=color, lw=1,
                    ls="--", label=f"{c.label} file")
        if host.get("steady_from"):
            ax.axvline(host["steady_from"], color=color, ls=":", lw=0.8)
        leak_from = nested(r_of[c.impl], "leak", "phase", "rss_from") if c.impl in r_of else None
        if isinstance(leak_from, int):
            ax.axvline(leak_from, color=color, ls="-.", lw=0.8)
    ax.set_xlabel("batch index (dotted: start of steady state; dash-dot: the leak phase, the series judged)")
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
            ax.bar(i - 0.4 + width * (j + 0.5), c.peak_bytes / 2**20, width, color=_color(colors, c),
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


def plot_curves(title: str, curves: list[dict[str, Any]], colors: dict, path: Path) -> bool:
    """Three panels against step, one line per impl: the training loss (every step), and the held-out
    reconstruction and KL (every probe); log-log once the run passes 100 steps (as seed 001 plots them)."""
    drawn = [c for c in curves if c.get("loss")]
    if not drawn:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    steps = max(len(c["loss"]) for c in drawn)
    panels = (("training loss", None, "loss"), ("held-out reconstruction", "probe_steps", "recon"),
              ("held-out KL (nats)", "probe_steps", "kl"))
    for ax, (label, xkey, ykey) in zip(axes, panels, strict=True):
        for c in drawn:
            ys = c[ykey]
            xs = list(range(1, len(ys) + 1)) if xkey is None else [max(s, 1) for s in c[xkey]]
            ax.plot(xs, ys, color=colors.get(c["impl"]), label=c["impl"], linewidth=1.2, alpha=0.85)
        if steps > 100:
            ax.set_xscale("log")
            if all(v > 0 for c in drawn for v in c[ykey]):
                ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path, left=0.6, right=0.2, top=0.55)
    return True
