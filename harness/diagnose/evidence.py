"""All the evidence for a leak verdict, and the confirmation that settles one before it counts.

The leak phase's anonymous RSS (:func:`harness.diagnose.leak.leak_verdict`), sampled after
each synchronised step from a fixed ring of host buffers (``harness.run.phases.leak``), is one
witness. The row holds two more:

* **Python heap**: tracemalloc's traced bytes after each step of the heap phase (numpy
  registers its buffers, so they count). A plug-in that keeps a 256 KiB numpy copy a step
  grows it by exactly that while glibc serves the copies from heap pages that earlier
  frees left resident, and anonymous RSS stays flat for dozens of steps.
* **Compile counters**: a counter whose name holds "compile" or "trace" that rose during
  the steady window (each new input signature keeps one more compiled program).

**Leak-phase verdict** (:func:`judge_steady`), T the cell's threshold
(:func:`harness.diagnose.leak.scaled_threshold`):

1. A *signal* is any of: RSS reads "leak"; the heap rises (:func:`heap_trend`: its
   Theil-Sen CI low above T, growth above 4 T and the second half still above T/2); a
   compile counter rose. Any signal: "leak", pending confirmation.
2. No signal, RSS "no leak": "no leak" when the heap is flat or was not measured. A heap
   whose trend is unclear disagrees with RSS: "inconclusive", pending confirmation.
3. Otherwise "inconclusive" (too few steps, or a slow or irregular RSS trend).

**Confirmation** (:func:`judge_confirmation`): an untimed phase after the memory phase
(``harness.run.confirm``), ``CONFIRM_MIN_STEPS`` (150) steps or twice the leak phase,
whichever is more, stopped after ``CONFIRM_MAX_S`` (60 s). The heap is traced there when
it was a signal or unclear. The memory phase has just trimmed the C heap, so RSS first
regrows: the first fifth of the series (at least 5 steps) is its warm-up and is not judged.
Signals on the rest:

* RSS: the leak verdict reads "leak" *and* the growth recurs: the median of each quarter
  of the window is above the previous quarter's by more than T/2 a batch. An arena jump,
  or glibc's sawtooth (the heap grows for a few steps, is trimmed, grows again), lifts one
  or two quarters; a leak lifts every one.
* the heap rises (as above), or a compile counter rose during the confirmation (read from its
  fifth step on, so a loop that first calls the plain step there may compile it once).

Any signal: the leak is **confirmed** ("leak (confirmed)": the only leak that excludes a
row from a recommendation). None: the leak phase's leak is **refuted**, and the row reads what
the longer series found: "no leak" when its RSS reads "no leak" and the heap is flat (or
untraced), "inconclusive" otherwise, with ``confirmed`` False and ``phase_verdict`` "leak" (a clean
keras-tensorflow conv-final k=7 b=32 cell's 12-step leak phase read 65 KiB/batch of allocator creep
after a 31.6 MiB arena jump, on a 8 KiB threshold; its confirmation saw none of it). A "leak" with no
confirmation behind it (``--confirm off``, or no budget left) reads "leak (not confirmed)", a warning.
A cell pending only because its evidence disagreed reads "no leak" when the confirmation finds RSS
"no leak" and the heap flat (or untraced), "leak (confirmed)" on a signal, and stays "inconclusive" otherwise.

Rows keep ``verdict`` ("leak", "no leak", "inconclusive"), and add ``confirmed`` (True,
False, or None where no confirmation ran), ``phase_verdict`` (the leak phase's, before a confirmation
settled it), ``label``, ``evidence`` (the witnesses that
decided: "rss", "heap", "compile"), ``decided_by`` ("leak phase" or "confirmation"; rows from before
the leak phase read "steady window"), ``rss_verdict`` (the leak phase's RSS alone), the power of the
deciding series (``bound_bytes_per_batch``, ``detectable_bytes_per_batch``, ``judged_steps``:
:mod:`harness.diagnose.leak`), ``heap``, ``compile``, ``confirmation``
and the threshold. :func:`leak_label` and :func:`is_confirmed_leak` read old rows too: a
"leak" stored before confirmations existed is an unconfirmed one.

Framework-free: numpy and scipy only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from harness.diagnose.leak import _theil, floor, format_bytes, leak_verdict, threshold_rule

__all__ = ["CONFIRM_MAX_S", "CONFIRM_MIN_STEPS", "compile_rise", "confirmation_plan", "confirmation_warmup",
           "heap_trend", "is_confirmed_leak", "judge_confirmation", "judge_steady", "leak_label", "settle"]

#: a confirmation runs at least this many steps (or twice the leak phase) ...
CONFIRM_MIN_STEPS = 150
#: ... and stops after this many seconds, whichever comes first
CONFIRM_MAX_S = 60.0
#: a heap series needs this many samples (after the first) for a trend
HEAP_MIN_SAMPLES = 6

_PER = "/batch"


def heap_trend(heap_bytes: list[int] | None, threshold: float, skip: int = 1) -> dict[str, Any]:
    """Is the Python heap rising? ``trend`` is "rising", "flat", "unclear" or "unknown" (not measured or too short).

    Rising: Theil-Sen CI low > T, growth > 4 T and second-half slope > T/2. Flat: CI high < T and
    second half <= T, or a plateau (second half <= T/4). Heap bytes are exact, so no jump is removed."""
    y = np.asarray(heap_bytes or [], dtype=float)[max(0, skip):]
    n = int(y.size)
    if n < HEAP_MIN_SAMPLES:
        why = "not measured" if heap_bytes is None or len(heap_bytes) == 0 else f"only {n} samples"
        return {"trend": "unknown", "n": n, "slope_bytes_per_batch": None, "reason": f"Python heap {why}"}
    x = np.arange(n, dtype=float)
    slope, low, high = _theil(y, x)
    half = n // 2
    second = _theil(y[half:], x[half:])[0]
    growth = float(y[-1] - y[0])
    t = float(threshold)
    desc = (f"Python heap {format_bytes(slope)}{_PER} (95% CI {format_bytes(low)} to {format_bytes(high)}), "
            f"second half {format_bytes(second)}{_PER}, {_signed(growth)} over {n} steps")
    if low > t and growth > 4 * t and second > t / 2:
        trend = "rising"
    elif (high < t and second <= t) or second <= t / 4:
        trend = "flat"
    else:
        trend = "unclear"
    return {"trend": trend, "n": n, "slope_bytes_per_batch": slope, "slope_ci_low": low, "slope_ci_high": high,
            "second_half_slope": second, "growth_bytes": int(round(growth)), "reason": desc}


def compile_rise(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """Counters named like "compile" or "trace" that rose from ``before`` to ``after`` ("name a -> b")."""
    rose = []
    for name, last in (after or {}).items():
        if ("compile" in name.lower() or "trace" in name.lower()) and isinstance(last, (int, float)):
            first = (before or {}).get(name, 0) or 0
            if last > first:
                rose.append(f"{name} {first:g} -> {last:g}")
    return rose


def judge_steady(anon: list[int], heap: list[int] | None, counters_steady: dict[str, Any] | None,
                 counters_end: dict[str, Any] | None, threshold: float, batch_bytes: float | None = None,
                 min_window: int = 20, floor_window: int = 1, warmup: int = 0) -> dict[str, Any]:
    """The leak phase's verdict on all the evidence (rules in the module docstring): the row's ``leak`` fields.
    ``anon`` is the series, its first ``warmup`` samples not judged (the floor still reads them); ``min_window``:
    the fewest samples judged
    (the leak phase's trimmed, synchronised samples need fewer than a noisier series would)."""
    rss = leak_verdict(anon, warmup_steps=warmup, threshold_bytes_per_batch=threshold, min_window=min_window,
                       floor_window=floor_window)
    heap_t = heap_trend(heap, threshold)
    rose = compile_rise(counters_steady, counters_end)
    signals = [name for name, on in (("rss", rss.verdict == "leak"), ("heap", heap_t["trend"] == "rising"),
                                     ("compile", bool(rose))) if on]
    rss_txt = f"RSS: {rss.reason}"
    if signals:
        verdict, pending = "leak", True
        parts = ([rss_txt] if "rss" in signals else []) + ([heap_t["reason"] + ", rising"] if "heap" in signals
                                                            else []) + ([f"compile counters rose ({'; '.join(rose)})"]
                                                                        if rose else [])
        reason = "; ".join(parts) + "."
        if "rss" not in signals:
            reason += f" (RSS alone read {rss.verdict}: {rss.reason}.)"
        evidence = signals
    elif rss.verdict == "no leak" and heap_t["trend"] == "unclear":
        verdict, pending, evidence = "inconclusive", True, ["rss", "heap"]
        reason = f"the evidence disagrees: {rss_txt}, but {heap_t['reason']} is unclear."
    else:
        verdict, pending = rss.verdict, False
        evidence = ["rss"] + (["heap"] if heap_t["trend"] == "flat" else [])
        reason = rss_txt + (f"; {heap_t['reason']}, flat" if heap_t["trend"] == "flat" else "") + "."
    out = {**rss.to_dict(), "verdict": verdict, "rss_verdict": rss.verdict, "confirmed": None,
           "evidence": evidence, "decided_by": "leak phase", "reason": reason, "heap": heap_t,
           "compile": {"rose": rose}, "threshold_bytes_per_batch": float(threshold),
           "threshold_rule": threshold_rule(batch_bytes) if batch_bytes else f"{format_bytes(threshold)}{_PER}",
           "pending_confirmation": pending, "confirmation": None}
    out["label"] = leak_label(out)
    return out


def confirmation_plan(steady_steps: int, min_steps: int | None = None, max_s: float | None = None) -> tuple[int, float]:
    """(steps, seconds) of a confirmation after a leak phase of ``steady_steps``."""
    steps = max(min_steps if min_steps is not None else CONFIRM_MIN_STEPS, 2 * int(steady_steps))
    return steps, float(CONFIRM_MAX_S if max_s is None else max_s)


def confirmation_warmup(n: int) -> int:
    """Samples of a confirmation series not judged: RSS regrowing after the memory phase's trim."""
    return max(5, n // 5) if n >= 25 else n // 5


def _quarter_rises(y: np.ndarray) -> list[float]:
    """Per-batch rise of each quarter's median over the previous quarter's (3 values; empty if too short)."""
    q = y.size // 4
    if q < 2:
        return []
    med = [float(np.median(y[i * q:(i + 1) * q])) for i in range(4)]
    return [(b - a) / q for a, b in zip(med[:-1], med[1:], strict=True)]


def judge_confirmation(anon: list[int], heap: list[int] | None, counters_before: dict[str, Any] | None,
                       counters_after: dict[str, Any] | None, threshold: float, seconds: float | None = None,
                       stopped_by: str | None = None, floor_window: int = 1) -> dict[str, Any]:
    """The confirmation series' own verdict (rules in the module docstring): ``signals`` empty means not confirmed."""
    n = len(anon)
    w = confirmation_warmup(n)
    t = float(threshold)
    rss = leak_verdict(anon, warmup_steps=w, threshold_bytes_per_batch=t, floor_window=floor_window)
    rises = _quarter_rises(floor(np.asarray(anon, dtype=float), floor_window)[w:])
    recurring = len(rises) == 3 and all(r > t / 2 for r in rises)
    heap_t = heap_trend(heap, t, skip=w) if heap else None
    rose = compile_rise(counters_before, counters_after)
    signals = [name for name, on in (("rss", rss.verdict == "leak" and recurring),
                                     ("heap", heap_t is not None and heap_t["trend"] == "rising"),
                                     ("compile", bool(rose))) if on]
    rises_txt = ", ".join(format_bytes(r) for r in rises) or "n/a"
    rss_txt = f"RSS over steps {w}-{n}: {rss.reason}; quarter medians rise {rises_txt}{_PER}"
    if rss.verdict == "leak" and not recurring:
        rss_txt += f" (not in every quarter by more than {format_bytes(t / 2)}{_PER}: growth in bursts, not a leak)"
    parts = [rss_txt] + ([heap_t["reason"]] if heap_t else []) + (
        [f"compile counters rose ({'; '.join(rose)})"] if rose else [])
    if signals:
        verdict = "leak"
    elif rss.verdict == "no leak" and (heap_t is None or heap_t["trend"] in ("flat", "unknown")):
        verdict = "no leak"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "signals": signals, "steps": n, "warmup": w, "seconds": seconds,
            "stopped_by": stopped_by, "rss": rss.to_dict(), "quarter_rises_bytes_per_batch": rises,
            "recurring": recurring, "heap": heap_t, "compile": {"rose": rose}, "rss_anon": [int(v) for v in anon],
            "heap_bytes": None if heap is None else [int(v) for v in heap], "reason": "; ".join(parts) + "."}


def settle(steady: dict[str, Any], confirmation: dict[str, Any] | None) -> dict[str, Any]:
    """The row's final ``leak`` fields: the steady verdict, settled by the confirmation where one ran."""
    out = dict(steady)
    out["pending_confirmation"] = False
    if confirmation is None:
        out["label"] = leak_label(out)
        return out
    out["confirmation"] = confirmation
    out["decided_by"] = "confirmation"
    rss = confirmation.get("rss") or {}
    for name in ("bound_bytes_per_batch", "detectable_bytes_per_batch", "judged_steps"):
        if name in rss:  # the longer series that decided states the power
            out[name] = rss[name]
    signals = confirmation["signals"]
    head = f"confirmation ({confirmation['steps']} untimed steps"
    head += f", stopped by {confirmation['stopped_by']})" if confirmation.get("stopped_by") else ")"
    out["phase_verdict"] = steady["verdict"]
    if steady["verdict"] == "leak" and signals:
        out["confirmed"] = True
        out["evidence"] = signals
        out["reason"] = f"{head} confirms it: {confirmation['reason']} Leak phase: {steady['reason']}"
    elif steady["verdict"] == "leak":
        # the longer series outweighs the short one: the row reads what the confirmation found
        out.update(verdict=confirmation["verdict"], confirmed=False, evidence=_refuting(confirmation),
                   reason=f"{head} does not confirm the leak phase's leak and reads {confirmation['verdict']}: "
                          f"{confirmation['reason']} Leak phase: {steady['reason']}")
    elif signals:
        out.update(verdict="leak", confirmed=True, evidence=signals,
                   reason=f"{head} finds a leak: {confirmation['reason']} Leak phase: {steady['reason']}")
    else:
        out["verdict"] = confirmation["verdict"]
        out["evidence"] = _refuting(confirmation)
        out["reason"] = f"{head} reads {confirmation['verdict']}: {confirmation['reason']} Leak phase: {steady['reason']}"
    out["label"] = leak_label(out)
    return out


def _refuting(confirmation: dict[str, Any]) -> list[str]:
    heap = confirmation.get("heap") or {}
    return ["rss"] + (["heap"] if heap.get("trend") in ("flat", "unclear") else [])


def leak_label(leak: dict[str, Any] | None) -> str:
    """What a row says: "leak (confirmed)", "leak (not confirmed)", "no leak", "inconclusive" (or "n/a").

    A "leak" without a ``confirmed`` field (a row from before confirmations, or one whose cell ran none)
    is "leak (not confirmed)"."""
    if not leak or not leak.get("verdict"):
        return "n/a"
    verdict = str(leak["verdict"])
    if verdict != "leak":
        return verdict
    return "leak (confirmed)" if leak.get("confirmed") is True else "leak (not confirmed)"


def is_confirmed_leak(leak: dict[str, Any] | None) -> bool:
    """The only leak that excludes a row from a recommendation."""
    return bool(leak) and leak.get("verdict") == "leak" and leak.get("confirmed") is True


def _signed(n: float) -> str:
    return ("+" if n >= 0 else "") + format_bytes(n) if math.isfinite(n) else "n/a"
