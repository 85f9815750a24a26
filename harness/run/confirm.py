"""The confirmation phase: untimed steps after the memory phase that settle a pending leak verdict.

A cell whose steady window reads "leak", or whose evidence disagrees, runs
``harness.diagnose.evidence.confirmation_plan`` more steps here (150, or twice the steady
window, stopped after 60 s but never before ``MIN_STEPS_BEFORE_CAP`` steps), one synchronised
step at a time, sampling anonymous RSS after each, and the Python heap (tracemalloc) where the heap was a signal or unclear. The
series is judged on its own (``judge_confirmation``, with its own warm-up) and the row's
verdict settled (``settle``). Nothing here is timed: the step-time figures are final
before it starts. The injected leak of a positive control keeps leaking here, as it
would in a longer run.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from harness.diagnose.evidence import confirmation_plan, judge_confirmation, settle
from harness.measure.probes import RssSampler
from harness.measure.tracker import HeapTracker
from harness.run.events import emit

__all__ = ["COUNTERS_FROM_STEP", "MIN_STEPS_BEFORE_CAP", "confirm_leak", "wants_confirmation"]

#: compile counters are read after this many confirmation steps
COUNTERS_FROM_STEP = 5
#: the time cap never stops a confirmation before this many steps: a step that recompiles every call can
#: take seconds on a loaded CPU, and a phase cut before its counters are read again could not confirm anything
#: (a keras-tf retrace-per-step cell got 5 steps in a 15 s cap on a loaded CI machine)
MIN_STEPS_BEFORE_CAP = COUNTERS_FROM_STEP + 5


def wants_confirmation(leak: dict[str, Any], mode: str) -> bool:
    """``mode`` "auto": when the steady verdict is pending; "on": always (a check of the rule); "off": never."""
    if mode == "off":
        return False
    return mode == "on" or bool(leak.get("pending_confirmation"))


def confirm_leak(leak: dict[str, Any], *, mode: str, step: Callable[[], Any], model: Any,
                 after_step: Callable[[], None], check_loss: Callable[[Any, int], Any], steady_steps: int,
                 min_steps: int | None = None, max_s: float | None = None, floor_window: int = 1) -> dict[str, Any]:
    """Run the confirmation if ``leak`` (the steady verdict) wants one, and return the settled ``leak`` fields.

    ``step()`` runs one training step on a fresh batch and returns its handle; ``after_step()`` is what
    the cell does after each of its steps (the injected leak); ``check_loss(handle, i)`` raises on a
    non-finite loss. ``steady_steps``: the steady window's length, which sizes the plan with ``min_steps``
    and ``max_s`` (``harness.diagnose.evidence.confirmation_plan``); ``floor_window``: the series judged is its
    floor over that many steps (``harness.diagnose.leak.floor``)."""
    if not wants_confirmation(leak, mode):
        return settle(leak, None)
    steps, cap = confirmation_plan(steady_steps, min_steps, max_s)
    # tracemalloc slows a Python-heavy step several times: on only where the heap was a signal or unclear
    trace_heap = (leak.get("heap") or {}).get("trend") in ("rising", "unclear")
    emit(phase="confirm", steps=steps, max_s=cap)
    rss = RssSampler()
    rss.start()
    heap = HeapTracker() if trace_heap else None
    counters_before = model.counters()
    stopped = None
    handle = None
    if heap is not None:
        heap.start()
    t0 = time.perf_counter()
    try:
        for i in range(steps):
            handle = step()
            model.synchronize()
            after_step()
            rss.sample()
            if i + 1 == COUNTERS_FROM_STEP:
                # a loop that first calls this step here (Keras timed through fit, heap and memory phases off)
                # compiles it once: counted from after that, a rise is a recompile per step, not the first
                counters_before = model.counters()
            if heap is not None:
                heap.sample()
            if MIN_STEPS_BEFORE_CAP <= i + 1 < steps and time.perf_counter() - t0 > cap:
                stopped = f"its {cap:g} s cap"
                break
    finally:
        if heap is not None:
            heap.stop()
        rss.stop()
    seconds = time.perf_counter() - t0
    if handle is not None:
        check_loss(handle, len(rss.anon))
    confirmation = judge_confirmation(rss.anon, heap.result() if heap is not None else None,
                                      counters_before=counters_before, counters_after=model.counters(),
                                      threshold=float(leak["threshold_bytes_per_batch"]), seconds=seconds,
                                      stopped_by=stopped, floor_window=floor_window)
    return settle(leak, {**confirmation, "max_s": cap})  # the cap it ran under (a budgeted cell's is its budget)
