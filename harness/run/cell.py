"""One cell (impl x spec x batch x repeat), measured inside its worker.

Phases, each announced to the parent as an event so a hard crash can be
placed, each in its module of ``harness.run.phases``:

``build``       construct the model and load the shared canonical initial weights.
``compile``     the first step, synchronised, timed on its own: tracing,
                compilation and the first run. Reported as ``compile_s``
                (``compile_cached`` where JAX loaded it from the run's cache).
``warmup``      a few more steps, each synchronised and timed (the median of
                their second half sizes a time budget), then two steps through
                the timed loop itself, so its first-call setup is off the clock.
``steady``      ``steps`` steps through the framework's own loop
                (``adapter.train_steps``), timed in windows by
                ``harness.run.windows``: one device sync per window, the next
                window's batches made ready between windows, off the clock.
                This is ``step``, the headline. Leading windows still slow by
                ``harness.measure.stats.detect_warmup`` are dropped and counted.
                Its energy is tracked (``harness.measure.energy``).
``device_step`` on an accelerator, the same loop on batches staged on the
                device before each window's clock: the framework's compute alone.
``leak``        untimed, synchronised steps from a fixed ring of reused host
                buffers, RSS sampled after each finished step: the leak verdict's
                series, sized to detect the cell's threshold with 80% power
                within the cell's budget (``harness.run.phases.leak``). The timed
                windows' samples catch steps in flight, so no verdict reads them.
``heap``        a few more steps with tracemalloc on, after the timing and
                untimed: tracemalloc slows Python-heavy steps far more than 5%,
                so it never runs while the clock does.
``memory``      on a CPU, a few steps on a trimmed heap whose peak RSS stands
                in for device memory.
``stats``       the statistics, FLOP rates and leak verdict, from what the
                phases above took (no steps).
``confirm``     only where the leak phase's verdict is pending (it read
                "leak", or its evidence disagrees): untimed steps that settle it
                (``harness.run.confirm``), after every other figure is taken.

After every step the anonymous and file-backed RSS are sampled (``RssSampler``,
from the compile step to the end of the heap phase); only the leak phase's samples
are judged.
"""

from __future__ import annotations

from typing import Any

from harness.diagnose.evidence import CONFIRM_MAX_S, settle
from harness.measure.probes import release_free_heap
from harness.run.confirm import confirm_leak
from harness.run.events import emit
from harness.run.phases import stats, timed, untimed
from harness.run.phases.build import build
from harness.run.phases.context import CellContext, InjectedLeak, NonFiniteLoss
from harness.run.phases.leak import FLOOR_WINDOW, LeakSeries, leak_series
from harness.run.phases.parts import CellParts, StepPlan
from harness.run.phases.payload import cell_payload
from harness.run.phases.warm import compile_step, plan_steady, warmup
from harness.run.schedule import confirmation_cap
from harness.run.task import CellTask

__all__ = ["InjectedLeak", "NonFiniteLoss", "run_cell"]


def run_cell(task: CellTask) -> dict[str, Any]:
    """Measure one cell: the worker's result (``harness.run.phases.payload``)."""
    ctx, built = build(task)
    compiled = compile_step(ctx)
    warm = warmup(ctx, compiled)
    plan = plan_steady(ctx, warm)
    timed.loop_warmup(ctx)
    steady = timed.steady(ctx, plan)
    device = timed.device_step(ctx, plan)
    series = leak_series(ctx, plan, cap_s=untimed.leak_cap(ctx, plan))
    heap = untimed.heap(ctx, plan)
    ctx.rss.stop()  # the per-step RSS series ends here: the memory phase reads the peak instead
    memory = untimed.memory(ctx, plan, heap)
    emit(phase="stats")
    timing = stats.timing(ctx, plan, steady, device)
    leak = stats.leak(ctx, steady, series, heap)
    figures = stats.memory_figures(ctx, build=built, compiled=compiled, plan=plan, memory=memory)
    parts = CellParts(build=built, compiled=compiled, warmup=warm, plan=plan, steady=steady, device_step=device,
                      leak_series=series, heap=heap, memory=memory, timing=timing, leak=leak, figures=figures)
    payload = cell_payload(ctx, parts)
    payload["leak"] = confirm(ctx, plan, series, payload["leak"])
    return payload


def confirm(ctx: CellContext, plan: StepPlan, series: LeakSeries, leak: dict[str, Any]) -> dict[str, Any]:
    """Untimed, after everything else: settles a pending leak verdict (``harness.run.confirm``); in a
    budgeted cell it is capped by the cell's budget (``harness.run.schedule.confirmation_cap``). Its
    batches come from a ring of reused buffers and each sample follows a heap trim, as the leak phase's do."""
    task = ctx.task
    if ctx.near_deadline():  # no time left before the parent's kill: the row, without a confirmation
        settled = settle(leak, None)
        settled.update(confirm_mode=task.confirm, confirm_skipped="the cell neared its timeout")
        return settled
    settled = confirm_leak(leak, mode=task.confirm, step=lambda: ctx.step_fn(ctx.ring_batch()), model=ctx.model,
                           after_step=lambda: (ctx.leak.step(), release_free_heap()), check_loss=ctx.loss,
                           steady_steps=len(series.anon),
                           min_steps=task.confirm_steps, floor_window=FLOOR_WINDOW,
                           max_s=confirmation_cap(task.confirm_max_s, plan.budget_s, CONFIRM_MAX_S))
    settled["confirm_mode"] = task.confirm  # "off" is why a leak can stay unconfirmed
    return settled
