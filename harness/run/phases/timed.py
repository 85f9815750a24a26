"""The timed phases: ``steady`` (the headline) and ``device_step``, through the framework's own loop.

``steady``       ``steps`` steps through the framework's own loop
                 (``adapter.train_steps``), timed in windows by
                 ``harness.run.windows``: one device sync per window, the next
                 window's batches made ready between windows, off the clock.
                 The trackers around it read the compile counters, the device
                 allocator and the energy counter (``harness.measure.energy``)
                 at its start and end.
``device_step``  on an accelerator, the same loop on batches staged on the
                 device before each window's clock: the framework's compute alone.

Before either, :func:`loop_warmup` runs the timed loop itself for a few steps, off
the clock, so its first-call setup is paid once, as in a user's first epoch.
"""

from __future__ import annotations

from typing import Any

from harness.measure.energy import EnergyTracker
from harness.measure.tracker import DeviceMemory
from harness.run.events import emit
from harness.run.phases.context import LOOP_WARMUP_STEPS, CellContext
from harness.run.phases.parts import DeviceStepPart, SteadyPart, StepPlan
from harness.run.windows import WindowHooks, Windows


def loop_warmup(ctx: CellContext) -> None:
    """The timed loop's own first-call work (Keras: fit's iterator, callbacks and, on TensorFlow,
    tracing fit's function), off the clock."""
    ctx.timed_loop(lambda: ctx.host_batch(ctx.source.next()), LOOP_WARMUP_STEPS, lambda i, handle: ctx.after_step())
    ctx.model.synchronize()


def steady(ctx: CellContext, plan: StepPlan) -> SteadyPart:
    """The headline: the framework's own training loop, timed in windows with one sync each."""
    emit(phase="steady")
    ctx.progress.restart()
    ctx.counters.mark("steady")
    device_memory = DeviceMemory(ctx.model.device_memory)
    device_memory.start()
    rss_from = len(ctx.rss.anon)
    with EnergyTracker(ctx.cls.device_kind(), steps=plan.steps, batch=ctx.batch) as energy:
        windows, losses = _timed_pass(ctx, plan, staged=False)
    ctx.counters.stop()
    device_memory.stop()
    return SteadyPart(windows=windows.result(), device_memory=device_memory.result(), rss_from=rss_from,
                      anon=ctx.rss.anon[rss_from:], energy=energy.result(), loss=losses[-1])


def device_step(ctx: CellContext, plan: StepPlan) -> DeviceStepPart:
    """The same loop on batches staged on the device before each window's clock (where timed apart)."""
    if plan.passes != 2:
        return DeviceStepPart(windows=None, loss=None)
    emit(phase="device_step")
    windows, losses = _timed_pass(ctx, plan, staged=True)
    return DeviceStepPart(windows=windows.result(), loss=losses[-1])


def _timed_pass(ctx: CellContext, plan: StepPlan, *, staged: bool) -> tuple[Windows, list[float]]:
    """One pass of ``plan.steps`` steps through the timed loop; the loss is checked at each window's end."""
    model = ctx.model
    losses: list[float] = []
    first = plan.warmup_steps + LOOP_WARMUP_STEPS  # steps before the pass, for the loss check's message

    def check_loss(handle: Any, done: int) -> None:
        losses.append(ctx.loss(handle, first + done))

    prepare = (lambda x: model.to_device(ctx.host_batch(x))) if staged else ctx.host_batch
    hooks = WindowHooks(next_batch=ctx.source.next, prepare=prepare, synchronize=model.synchronize,
                        each_step=ctx.after_step, check_loss=check_loss)
    with Windows(plan.steps, plan.steps_per_window, hooks, staged=staged, progress=ctx.progress) as windows:
        ctx.timed_loop(windows.feed, plan.steps, windows.on_step)
    return windows, losses

