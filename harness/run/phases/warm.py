"""The ``compile`` and ``warmup`` phases, and the plan of the steady phase they size.

``compile``  the first step, synchronised, timed on its own: tracing, compilation
             and the first run (``compile_s``; ``compile_cached`` where JAX loaded
             it from the run's cache).
``warmup``   a few more steps, each synchronised and timed; the median of their
             second half sizes a time budget (:func:`plan_steady`).
"""

from __future__ import annotations

import time

from harness.measure.probes import peak_rss_bytes
from harness.run.compile_cache import compile_cached
from harness.run.events import emit
from harness.run.phases.context import LOOP_WARMUP_STEPS, MEMORY_STEPS, PREFETCH_BYTES, CellContext
from harness.run.phases.leak import LEAK_MIN_STEPS
from harness.run.phases.parts import CompilePart, StepPlan, WarmupPart
from harness.run.schedule import LEAK_BUDGET_SHARE, budgeted_steps, steps_per_window, warmup_steps


def compile_step(ctx: CellContext) -> CompilePart:
    """The first step on its own; the compile counters' tracker starts just before it."""
    model = ctx.model
    ctx.counters.start()
    emit(phase="compile")
    x = ctx.source.next()
    model.reset_peak_memory()
    t = time.perf_counter()
    loss = ctx.loss(ctx.step_fn(x), 0)
    model.synchronize()
    seconds = time.perf_counter() - t
    cached = compile_cached(ctx.counters.result()["start"], ctx.counters.peek())
    ctx.after_step()
    # the compile step's host peak (compiler scratch, first-touch allocations) is kept
    # apart, as its time is; the training peak is measured in the memory phase
    return CompilePart(seconds=seconds, cached=cached, peak_rss=peak_rss_bytes(), loss=loss)


def warmup(ctx: CellContext, compiled: CompilePart) -> WarmupPart:
    """Synchronised single steps, each timed, and each with its fetch and samples (``iteration_times``)."""
    emit(phase="warmup", compile_s=compiled.seconds)
    task, model = ctx.task, ctx.model
    n_warm = task.warmup_steps or warmup_steps(task.steps, budgeted=bool(task.time_budget_s))
    times: list[float] = []
    iteration_times: list[float] = []
    loss = None
    for i in range(n_warm):
        t_iter = time.perf_counter()
        x = ctx.source.next()
        t = time.perf_counter()
        handle = ctx.step_fn(x)
        model.synchronize()
        times.append(time.perf_counter() - t)
        loss = ctx.loss(handle, i + 1)
        ctx.after_step()
        iteration_times.append(time.perf_counter() - t_iter)
    return WarmupPart(steps=n_warm, times=times, iteration_times=iteration_times, loss=loss)


def times_device_step(ctx: CellContext) -> bool:
    """``device_step`` is timed apart only where it can differ from ``step``: a build that
    stages batches, on an accelerator, training with its plain step (not a scenario)."""
    cls = ctx.cls
    return bool(getattr(cls, "stages_input", False)) and cls.device_kind() != "cpu" and not ctx.task.scenario


def plan_steady(ctx: CellContext, warm: WarmupPart) -> StepPlan:
    """The steady phase's steps and windows (``harness.run.schedule``).

    A time budget shortens the steady phase, never the compile or warm-up; it is the cell's
    wall time, so the loop warm-up, the heap and memory phases after the timing are paid from it too.
    """
    task, model = ctx.task, ctx.model
    steps = task.steps
    budget = task.time_budget_s
    passes = 2 if times_device_step(ctx) else 1
    plain = warm.step_s
    if budget and plain > 0:
        # planned from the whole iteration: a sub-millisecond step costs less than its RSS sample
        per_step = max(plain, warm.iteration_s)
        leak = LEAK_MIN_STEPS if task.leak_steps is None else task.leak_steps
        untimed = LOOP_WARMUP_STEPS + (0 if model.device_memory() else MEMORY_STEPS) + leak
        heap_planned = 0 if task.heap == "off" else task.heap_steps
        elapsed = time.perf_counter() - ctx.t0
        # the leak phase's share, kept back for it to run longer where its series is noisy
        reserve = LEAK_BUDGET_SHARE * max(0.0, float(budget) - elapsed) if task.leak_steps is None else 0.0
        steps = budgeted_steps(float(budget) - reserve, elapsed, per_step, steps, timed_passes=passes,
                               untimed_steps=untimed, heap=heap_planned)
    spw = task.steps_per_window or steps_per_window(steps)
    spw = max(1, min(spw, PREFETCH_BYTES // max(1, ctx.batch_bytes)))
    return StepPlan(requested=task.steps, steps=steps, steps_per_window=spw, passes=passes, warmup_steps=warm.steps,
                    budget_s=budget, step_s=max(plain, warm.iteration_s) if warm.times else float("nan"))
