"""The ``leak`` phase: the leak verdict's RSS series, from clean samples (issue 25).

The timed windows sync the device once a window, so an RSS sample taken after a step
inside a window can catch that step (or the next one, JAX dispatching ahead) still in
flight, its activations resident; and the harness allocates and frees each window's
batches at the boundaries. At dense k=7 b=512 that swung flax's anonymous RSS between
554 and 802 MiB with the period of the windows, and a 256 KiB-a-batch injected leak read
"no leak" (issue 25, measured at bd859c4). So the verdict no longer reads the timed windows' samples. This phase, untimed,
after the timing:

* trains from the cell's :class:`harness.data.BatchRing` (``CellContext.ring_batch``), a fixed
  ring of reused host buffers, as a real input pipeline does: the harness's own staging holds a
  constant, recorded footprint;
* synchronises every step, then runs the injected leak (a positive control), hands the C
  heap's free pages back (``malloc_trim``) and samples RSS, so every sample is the memory in
  use at the same point of a finished step;
* sizes itself to its threshold: after ``LEAK_MIN_STEPS`` it judges the series so far, and
  while the smallest leak it could detect with 80% power is above ``TARGET_OVER_THRESHOLD``
  times the threshold it runs the steps that noise says are needed
  (``harness.diagnose.leak.steps_for``), within its time cap: what is left of a budgeted
  cell's budget, else ``LEAK_MAX_S``, never past ``LEAK_MAX_STEPS``.

The first ``LEAK_WARMUP_STEPS`` samples are not judged: the ring's first fill and the
allocator settling after the timed passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from harness.diagnose.leak import leak_verdict, scaled_threshold, steps_for
from harness.measure.probes import release_free_heap
from harness.run.events import emit
from harness.run.phases.context import CellContext
from harness.run.phases.parts import StepPlan

__all__ = ["FLOOR_WINDOW", "LEAK_JUDGED_MIN", "LEAK_MAX_S", "LEAK_MAX_STEPS", "LEAK_MIN_STEPS",
           "LEAK_WARMUP_STEPS", "LeakSeries", "TARGET_OVER_THRESHOLD", "leak_series", "trimmed_sample"]

#: samples at the phase's start that are not judged
LEAK_WARMUP_STEPS = 2
#: the fewest samples judged: a trimmed, synchronised series is flat to the page where nothing leaks (torch
#: dense k=7 b=512: 24 samples, all equal, and 256 KiB injected a step read 255 KiB/batch, 95% CI 224-268,
#: from 6), so a few samples tell a leak of T from none, where the timed windows' noisy samples needed 20;
#: a "leak" read from so few is still only a signal, settled by the confirmation phase
LEAK_JUDGED_MIN = 6
#: steps the phase always runs, a budget or not: its warm-up and 12 samples. A budget cannot cut them (the
#: steady plan pays for them first): cut to 8 where the budget afforded no more, keras-torch's floor over two
#: steps (its samples alternate) left 3 independent points, and 256 KiB injected a step read "inconclusive"
#: (95% CI 0 to 345 KiB/batch) at the CPU main command's 21 s a cell
LEAK_MIN_STEPS = LEAK_WARMUP_STEPS + 12
#: never more steps than this ...
LEAK_MAX_STEPS = 400
#: ... nor, outside a budget, more seconds (a budgeted cell's cap is what is left of its budget)
LEAK_MAX_S = 20.0
#: the phase runs on while the leak it could detect with 80% power is above this many thresholds
TARGET_OVER_THRESHOLD = 1.5
#: the series judged is its floor over this many steps (``harness.diagnose.leak.floor``): keras-torch holds a
#: 16 MiB output every other step, so its trimmed samples alternate by 17.6 MiB at dense k=7 b=512
FLOOR_WINDOW = 2


@dataclass
class LeakSeries:
    """What the phase took: RssAnon after each of its steps, and how it was sized."""

    anon: list[int]
    #: index of the phase's first sample in the cell's whole RSS series (``host.rss_anon``)
    rss_from: int
    warmup: int
    #: the ring's bytes, held through the phase
    ring_bytes: int
    seconds: float
    #: why the phase stopped: "target" (the target reached), "cap" (its time cap, after running past its
    #: minimum), "steps" (the task's own count or the step cap), "min" (its minimum, where the noise asked for
    #: more than its cap allows), "deadline" (the cell neared its timeout, even short of its minimum)
    stopped_by: str
    cap_s: float | None

    def fields(self) -> dict:
        return {"steps": len(self.anon), "rss_from": self.rss_from, "warmup": self.warmup, "ring_bytes": self.ring_bytes,
                "seconds": round(self.seconds, 3), "stopped_by": self.stopped_by, "cap_s": self.cap_s,
                "rss_anon": list(self.anon)}


def trimmed_sample(ctx: CellContext) -> None:
    """After a finished step: the injected leak, the C heap's free pages handed back, then the RSS sample.

    glibc keeps freed buffers mapped or not by where they sit in its heap, so two samples of the same
    live memory, one step apart, differed by 16-100 MiB at dense k=7 b=512 (torch and flax, synchronised
    steps from the ring); trimmed first, RssAnon is the memory in use, and a leak is what grows in it."""
    ctx.leak.step()
    release_free_heap()
    ctx.rss.sample()


def leak_series(ctx: CellContext, plan: StepPlan, cap_s: float | None) -> LeakSeries:
    """Synchronised, untimed steps from a batch ring, RSS sampled after each: the leak verdict's series.

    ``cap_s``: the phase's time cap (None: ``LEAK_MAX_S``). ``task.leak_steps`` fixes the count."""
    task, model = ctx.task, ctx.model
    fixed = task.leak_steps
    cap = LEAK_MAX_S if cap_s is None else max(0.0, float(cap_s))
    target = fixed if fixed is not None else LEAK_MIN_STEPS
    emit(phase="leak", steps=target, max_s=round(cap, 1))
    threshold = scaled_threshold(ctx.batch_bytes)
    first = len(ctx.rss.anon)
    handle = None
    done = 0
    stopped = "steps"
    t0 = time.perf_counter()
    while True:
        while done < target and not ctx.near_deadline():
            handle = ctx.step_fn(ctx.ring_batch())
            model.synchronize()
            trimmed_sample(ctx)
            done += 1
        if done < target:
            stopped = "deadline"
            break
        if fixed is not None or done >= LEAK_MAX_STEPS:
            break
        anon = ctx.rss.anon[first:]
        judged = leak_verdict(anon, warmup_steps=LEAK_WARMUP_STEPS, threshold_bytes_per_batch=threshold,
                              min_window=LEAK_JUDGED_MIN, floor_window=FLOOR_WINDOW)
        need = steps_for(TARGET_OVER_THRESHOLD * threshold, threshold, judged.detectable_bytes_per_batch,
                         judged.judged_steps)
        if need is None or need <= judged.judged_steps:
            stopped = "target"
            break
        elapsed = time.perf_counter() - t0
        affordable = done + int(max(0.0, cap - elapsed) / (elapsed / done))
        new_target = min(LEAK_WARMUP_STEPS + need, affordable, LEAK_MAX_STEPS)
        if new_target <= done:
            stopped = "cap" if done > LEAK_MIN_STEPS else "min"
            break
        target = new_target
    if handle is not None:
        ctx.loss(handle, plan.warmup_steps + plan.steps + done)
    return LeakSeries(anon=ctx.rss.anon[first:], rss_from=first, warmup=min(LEAK_WARMUP_STEPS, done),
                      ring_bytes=ctx.ring.nbytes if ctx.ring else 0, seconds=time.perf_counter() - t0,
                      stopped_by=stopped, cap_s=None if fixed else round(cap, 1))
