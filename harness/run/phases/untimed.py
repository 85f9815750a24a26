"""The untimed phases after the timing: ``heap`` and ``memory``.

``heap``    a few more steps with tracemalloc on (``HeapTracker``), untimed:
            tracemalloc slows Python-heavy steps far more than 5%, so it never
            runs while the clock does.
``memory``  on a CPU, a few steps on a trimmed heap whose peak RSS stands in for
            device memory (``harness.measure.host_peak``).
"""

from __future__ import annotations

from harness.measure.probes import peak_rss_bytes, release_free_heap, reset_peak_rss
from harness.measure.tracker import HeapTracker
from harness.run.events import emit
from harness.run.phases.context import MEMORY_STEPS, CellContext
from harness.run.phases.parts import HeapPart, MemoryPart, StepPlan
from harness.run.schedule import heap_steps


def heap(ctx: CellContext, plan: StepPlan) -> HeapPart:
    """The Python heap after each of a few untimed steps, for the leak's attribution ("off": none)."""
    task, model = ctx.task, ctx.model
    part = HeapPart(bytes=[], anon=[], loss=None)
    if task.heap == "off":
        return part
    emit(phase="heap")
    n_heap = task.heap_steps or heap_steps(plan.steps, budgeted=bool(plan.budget_s))
    handle = None
    with HeapTracker() as traced:
        for _ in range(n_heap):
            handle = ctx.step_fn(ctx.source.next())
            # one step in flight at a time: unsynced, Flax queued 15 steps' inputs
            # here (+230 MiB at dense k=7 b=512) that no training loop would hold
            model.synchronize()
            ctx.after_step()
            traced.sample()
            part.anon.append(ctx.rss.anon[-1])
        model.synchronize()
    part.bytes = traced.result()
    part.loss = ctx.loss(handle, plan.warmup_steps + plan.steps + n_heap)
    return part


def memory(ctx: CellContext, plan: StepPlan, heap_part: HeapPart) -> MemoryPart:
    """CPU only: the training peak, from a trimmed heap, untimed; on a device, the peak RSS as it stands.

    Without a device allocator the peak is VmHWM, which would otherwise keep whatever glibc still
    maps from the compile step; trimming any earlier would make the steady phase's RSS regrow and
    look like a leak.
    """
    model = ctx.model
    part = MemoryPart(steps=0, heap_trimmed=False, peak_restarted=False, peak_rss=0, loss=None)
    if not model.device_memory():
        emit(phase="memory")
        part.heap_trimmed = release_free_heap()
        part.peak_restarted = reset_peak_rss()
        for _ in range(MEMORY_STEPS):
            handle = ctx.step_fn(ctx.source.next())
            model.synchronize()
            ctx.leak.step()
            part.steps += 1
        part.loss = ctx.loss(handle, plan.warmup_steps + plan.steps + len(heap_part.bytes) + part.steps)
    part.peak_rss = peak_rss_bytes()
    return part
