"""The recommendation rule: which impl to train with at one (spec, batch), and why. This is the product's
verdict, kept small and free of rendering so that tests can import it directly.

:func:`recommend_cells` works from cells already aggregated by :func:`reports.cells.summarize_impl`
(the report passes the cells it built for its tables); :func:`recommend` is the same rule on raw rows.

Framework-free: this module must never import torch, jax, keras or tensorflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from reports.cells import ImplCell, is_side_row, summarize_impl
from reports.formatting import fmt_mem, fmt_rate, fmt_sps, fmt_time, join_and, short

__all__ = ["BatchRecommendation", "Recommendation", "recommend", "recommend_batch", "recommend_cells"]


@dataclass(frozen=True)
class Recommendation:
    """``choice``: the impl to use (None if none is eligible); ``tie``: every impl tied with the fastest
    (empty when the fastest won outright); ``reason``: one paragraph with the numbers; ``core``: the same
    paragraph without its notes on the impls not eligible and on leak verdicts (which the report says once,
    under what broke and in the diagnosis)."""

    choice: str | None
    tie: list[str]
    reason: str
    core: str = ""


def _overlap(a: ImplCell, b: ImplCell) -> bool:
    """Do the 95% CIs overlap? An unmeasured CI (one window) can never separate two rows."""
    if not (a.has_ci and b.has_ci):
        return True
    return a.ci_low_s <= b.ci_high_s and b.ci_low_s <= a.ci_high_s


def recommend(rows_for_cell: list[dict[str, Any]]) -> Recommendation:
    """Which impl to train with at one (spec, batch), from that cell's stored rows: the repeats of each
    impl are summarised (:func:`reports.cells.summarize_impl`), then :func:`recommend_cells` decides.
    Scenario and sweep rows are ignored."""
    by_impl: dict[str, list[dict]] = {}
    for r in rows_for_cell:
        if not is_side_row(r):
            by_impl.setdefault(str(r.get("impl")), []).append(r)
    return recommend_cells([summarize_impl(v) for v in by_impl.values()])


def recommend_cells(cells: list[ImplCell]) -> Recommendation:
    """Which impl to train with at one (spec, batch), and why, from its impls' summarised cells.

    Rules, in order:

    1. A cell that failed, was skipped, or whose leak verdict is ``leak (confirmed)`` is never recommended.
       A leak its confirmation phase did not confirm (or a row from before confirmations) and an
       ``inconclusive`` verdict are allowed, and said as warnings.
    2. Among the eligible cells the fastest by median step time wins, unless its 95% CI of the mean
       overlaps the CI of another eligible cell: then it is a tie between the fastest and every cell whose
       CI overlaps the fastest's, broken by the lowest peak memory (and named a tie).
    3. With no eligible cell, ``choice`` is None and the reason names what failed.

    Repeats of one impl are aggregated as :mod:`reports.cells` says. The verdict does not depend on the
    order of ``cells``.
    """
    if not cells:
        return Recommendation(None, [], "No rows were measured for this cell.")
    eligible = sorted([c for c in cells if c.eligible], key=lambda c: (c.median_s, c.impl))
    excluded = [_exclusion(c) for c in sorted(cells, key=lambda c: c.impl) if not c.eligible]
    not_eligible = (" Not eligible: " + "; ".join(excluded) + ".") if excluded else ""
    if not eligible:
        return Recommendation(None, [], "No impl can be recommended: " + "; ".join(excluded) + ".",
                              "No impl can be recommended.")
    fastest = eligible[0]
    others = eligible[1:]
    tied = [c for c in others if _overlap(fastest, c)]
    inconclusive = [c for c in eligible if c.leak_verdict == "inconclusive"]
    unconfirmed = [c for c in eligible if c.unconfirmed_leak]
    tail = not_eligible
    leaking_faster = sorted((c for c in cells if c.status == "ok" and c.confirmed_leak
                             and c.median_s is not None and c.median_s < fastest.median_s),
                            key=lambda c: (c.median_s, c.impl))
    if leaking_faster:
        tail += " " + ", ".join(f"**{c.label}**" for c in leaking_faster) + \
            f" had a faster median ({', '.join(fmt_time(c.median_s) for c in leaking_faster)}) but leaks (confirmed)."
    if unconfirmed:
        tail += " Warning: leak not confirmed for " + "; ".join(
            f"{c.label} ({fmt_rate(c.slope)} in the leak phase; {short(c.leak_reason, 200) or 'no reason given'})"
            for c in unconfirmed) + ", so it stays eligible."
    if inconclusive:
        tail += " Leak verdict inconclusive for " + "; ".join(
            f"{c.label} ({c.leak_reason or 'no reason given'})" for c in inconclusive) + "."

    if not tied:
        reason = (f"**{fastest.label}** is fastest at {fmt_time(fastest.median_s)} per step"
                  f"{fmt_sps(fastest)}, 95% CI of the mean {fastest.ci_text()}")
        if others:
            nxt = others[0]
            reason += (f"; {nxt.median_s / fastest.median_s:.2f}× faster than the next, {nxt.label} "
                       f"({fmt_time(nxt.median_s)}, CI {nxt.ci_text()}), and no other CI overlaps.")
        else:
            reason += "; it is the only eligible impl."
        return Recommendation(fastest.impl, [], reason + tail, reason)

    group = [fastest, *tied]
    by_mem = sorted(group, key=lambda c: (c.peak_bytes if c.peak_bytes is not None else math.inf, c.median_s))
    choice = by_mem[0]
    spread = max(c.median_s for c in group) / fastest.median_s - 1
    no_ci = [c.label for c in group if not c.has_ci]
    reason = (f"Tie between {join_and([c.label for c in group])}: their 95% CIs of the mean overlap ("
              + ", ".join(f"{c.label} {c.ci_text()}" for c in group)
              + f"), so the {spread:.1%} spread in median step time ("
              + ", ".join(fmt_time(c.median_s) for c in group) + ") is not resolved.")
    if no_ci:
        reason += f" ({join_and(no_ci)}: one timing window only, no CI.)"
    reason += (" Tie broken by peak memory: **" + choice.label + "** peaks at " + fmt_mem(choice)
               + (" vs " + ", ".join(f"{c.label} {fmt_mem(c)}" for c in by_mem[1:]) if len(by_mem) > 1 else "")
               + ".")
    if choice is not fastest:
        reason += f" ({fastest.label} had the lowest median, {fmt_time(fastest.median_s)}.)"
    return Recommendation(choice.impl, [c.impl for c in group], reason + tail, reason)


def _exclusion(c: ImplCell) -> str:
    if c.status == "failed":
        return f"{c.label} failed ({c.failure_kind}: {short(c.failure_message, 100)})"
    if c.status == "skipped":
        return f"{c.label} was skipped ({short(c.failure_message, 100) or 'no reason given'})"
    if c.confirmed_leak:
        return (f"{c.label} leaks, confirmed ({fmt_rate(c.slope)}, CI {fmt_rate(c.slope_ci_low)} to "
                f"{fmt_rate(c.slope_ci_high)}; evidence: {', '.join(c.leak_evidence) or 'rss'})")
    return f"{c.label} has no step timing"


@dataclass(frozen=True)
class BatchRecommendation:
    """The (impl, batch) to train one spec with, for throughput: ``choice`` and ``batch`` (None if nothing is
    eligible), ``tie`` the (impl, batch) pairs tied with it, and ``largest`` the largest batch each impl trained."""

    choice: str | None
    batch: int | None
    samples_per_s: float | None
    tie: list[tuple[str, int]]
    largest: dict[str, int]
    reason: str


def _sps_range(batch: int, c: ImplCell) -> tuple[float, float] | None:
    """The 95% CI of samples per second (``batch / step``), or None where the step has no CI."""
    if not c.has_ci or not c.ci_low_s or not c.ci_high_s:
        return None
    return batch / c.ci_high_s, batch / c.ci_low_s


def recommend_batch(by_batch: dict[int, list[ImplCell]], sweep_largest: dict[str, int] | None = None,
                    ) -> BatchRecommendation:
    """Which (impl, batch) trains a spec fastest in samples per second, over every batch measured.

    Rules: the cells :func:`recommend_cells` would exclude are excluded here too (failed, skipped, confirmed
    leak). Among the rest the highest samples per second wins, unless its 95% CI (of ``batch / step``)
    overlaps another pair's: then it is a tie between those, broken by the lowest peak memory, as for one
    batch. ``largest`` is the largest batch each impl trained without failing, the measured cells and the
    sweep's probes (``sweep_largest``) together: the headroom a user has.
    """
    pairs = [(batch, c) for batch, cells in by_batch.items() for c in cells]
    largest: dict[str, int] = {}
    for batch, c in pairs:
        if c.status == "ok":
            largest[c.label] = max(largest.get(c.label, 0), batch)
    for impl, batch in (sweep_largest or {}).items():
        largest[impl] = max(largest.get(impl, 0), batch)
    eligible = sorted(((b, c) for b, c in pairs if c.eligible and c.median_s),
                      key=lambda bc: (-bc[0] / bc[1].median_s, bc[0], bc[1].impl))
    if not eligible:
        return BatchRecommendation(None, None, None, [], largest, "No (impl, batch) pair is eligible: every cell "
                                   "failed, was skipped or leaks (confirmed).")
    best_b, best = eligible[0]
    best_range = _sps_range(best_b, best)

    def overlaps(b: int, c: ImplCell) -> bool:
        other = _sps_range(b, c)
        if best_range is None or other is None:
            return True
        return best_range[0] <= other[1] and other[0] <= best_range[1]

    tied = [(b, c) for b, c in eligible[1:] if overlaps(b, c)]
    sps = best_b / best.median_s
    if not tied:
        reason = f"**{best.label} at batch {best_b}** trains fastest: {sps:,.0f} samples/s"
        if len(eligible) > 1:
            nb, nc = eligible[1]
            reason += (f", {sps / (nb / nc.median_s):.2f}× the next, {nc.label} at batch {nb} "
                       f"({nb / nc.median_s:,.0f} samples/s), and no other CI overlaps.")
        else:
            reason += "; it is the only eligible pair."
        return BatchRecommendation(best.impl, best_b, sps, [], largest, reason)
    group = [(best_b, best), *tied]
    by_mem = sorted(group, key=lambda bc: (bc[1].peak_bytes if bc[1].peak_bytes is not None else math.inf,
                                           -bc[0] / bc[1].median_s))
    cb, cc = by_mem[0]
    reason = ("Tie between " + join_and([f"{c.label} at batch {b} ({b / c.median_s:,.0f} samples/s)" for b, c in group])
              + ": their 95% CIs of samples per second overlap. Tie broken by peak memory: **"
              + f"{cc.label} at batch {cb}** peaks at {fmt_mem(cc)}.")
    return BatchRecommendation(cc.impl, cb, cb / cc.median_s, [(c.impl, b) for b, c in group], largest, reason)
