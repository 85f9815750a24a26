"""The untimed phases after the timing: ``heap`` and ``memory``.

``heap``    a few more steps with tracemalloc on (``HeapTracker``), untimed, from the
            cell's ring of reused host buffers (a fresh 16 MiB batch alive at one
            sample read as +16 MiB of Python heap at flax dense k=7 b=512):
            tracemalloc slows Python-heavy steps far more than 5%, so it never
            runs while the clock does.
``memory``  on a CPU, a few steps on a trimmed heap whose peak RSS stands in for
            device memory (``harness.measure.host_peak``).
"""

from __future__ import annotations

import time

from harness.measure.probes import peak_rss_bytes, release_free_heap, reset_peak_rss
from harness.measure.tracker import HeapTracker
from harness.run.events import emit
from harness.run.phases.context import MEMORY_STEPS, CellContext
from harness.run.phases.parts import HeapPart, MemoryPart, StepPlan
from harness.run.schedule import HEAP_SLOWDOWN, heap_steps, leak_cap_s


def planned_heap_steps(ctx: CellContext, plan: StepPlan) -> int:
    """The heap phase's steps ("off": none)."""
    task = ctx.task
    if task.heap == "off":
        return 0
    return task.heap_steps or heap_steps(plan.steps, budgeted=bool(plan.budget_s))


def leak_cap(ctx: CellContext, plan: StepPlan) -> float | None:
    """The leak phase's time cap in a budgeted cell: what the budget leaves once the heap and memory
    phases after it are paid (``harness.run.schedule.leak_cap_s``); None outside a budget."""
    after = HEAP_SLOWDOWN * planned_heap_steps(ctx, plan) + (0 if ctx.model.device_memory() else MEMORY_STEPS)
    return leak_cap_s(plan.budget_s, time.perf_counter() - ctx.t0, plan.step_s, after)


def heap(ctx: CellContext, plan: StepPlan) -> HeapPart:
    """The Python heap after each of a few untimed steps, for the leak's attribution ("off": none)."""
    model = ctx.model
    part = HeapPart(bytes=[], anon=[], loss=None)
    n_heap = planned_heap_steps(ctx, plan)
    if not n_heap:
        return part
    emit(phase="heap")
    handle = None
    ctx.host_ring()  # the ring's buffers exist before tracemalloc starts: it never counts a batch array
    with HeapTracker() as traced:
        for _ in range(n_heap):
            if ctx.near_deadline():  # the memory phase and the row come first
                break
            handle = ctx.step_fn(ctx.ring_batch())
            # one step in flight at a time: unsynced, Flax queued 15 steps' inputs
            # here (+230 MiB at dense k=7 b=512) that no training loop would hold
            model.synchronize()
            ctx.after_step()
            traced.sample()
            part.anon.append(ctx.rss.anon[-1])
        model.synchronize()
    part.bytes = traced.result()
    part.loss = None if handle is None else ctx.loss(handle, plan.warmup_steps + plan.steps + len(part.anon))
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
