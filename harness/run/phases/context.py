"""What every phase of a cell works on: the model, its batches, its step and the trackers that run throughout.

The ``build`` phase (``harness.run.phases.build``) makes one :class:`CellContext`;
each later phase reads it and returns its own part (``harness.run.phases.parts``).
"""

from __future__ import annotations

import math
import mmap
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from harness.data import BatchRing, BatchSource
from harness.measure.probes import RssSampler
from harness.measure.tracker import CompileCounters
from harness.run.events import emit
from harness.run.task import CellTask
from harness.spec.schema import VAESpec

#: untimed steps on a trimmed heap whose VmHWM is the CPU stand-in for device memory
MEMORY_STEPS = 3
#: steps run through the timed loop itself before its clock starts (its first-call setup)
LOOP_WARMUP_STEPS = 2
#: batches prefetched for one timing window are capped at this many bytes
PREFETCH_BYTES = 256 * 2**20
#: host buffers in the untimed phases' ring (``CellContext.ring_batch``)
RING_SLOTS = 2
#: the share of its timeout a cell may use before its untimed phases stop (``CellContext.near_deadline``)
DEADLINE_SHARE = 0.7


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or inf: a row of kind ``nan_loss``."""


class WrongParamCount(ValueError):
    """The build's own parameter count is not the spec's table's: it is not the spec's model, so the cell fails
    (kind ``error``) and no figure of it reaches a recommendation. A plug-in counting (1, -5) was recommended at an
    MFU of 3666% before (issue 27)."""


class InjectedLeak:
    """Positive control: keeps ``bytes_per_step`` of new, touched memory per step.

    Each step maps fresh anonymous pages and writes them, so the kernel commits
    exactly that much more RssAnon. A ``malloc``'d buffer would not do: below the
    mmap threshold it reuses heap pages an earlier free left resident (a JAX
    worker has megabytes of them after compiling), and RSS would not move.
    """

    def __init__(self, bytes_per_step: int) -> None:
        self.bytes_per_step = bytes_per_step
        self.kept: list[mmap.mmap] = []

    def step(self) -> None:
        if self.bytes_per_step:
            buf = mmap.mmap(-1, self.bytes_per_step, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            np.frombuffer(buf, np.uint8)[:] = 1  # touch every page
            self.kept.append(buf)

    @property
    def held_bytes(self) -> int:
        return self.bytes_per_step * len(self.kept)


def check_loss(loss: float, step: int) -> float:
    """``loss``, or ``NonFiniteLoss`` naming the step where it is NaN or inf."""
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss} at step {step}")
    return loss


class Progress:
    """Progress events for the parent during the timed passes, at most one a second."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """The first event a second from now (the steady phase's start)."""
        self._next = time.perf_counter() + 1.0

    def __call__(self, done: int, steps: int) -> None:
        if time.perf_counter() >= self._next:
            emit(phase="steady", done=done, steps=steps)
            self._next = time.perf_counter() + 1.0


@dataclass
class CellContext:
    """One cell's model, batches and step, and the trackers every phase shares."""

    task: CellTask
    spec: VAESpec
    #: the adapter class (``harness.adapter.VAEAdapter`` subclass) and its model
    cls: type
    model: Any
    source: BatchSource
    #: one training step on a host batch: the build's ``train_step``, or a scenario's replacement
    step_fn: Callable[[Any], Any]
    #: the loop the steady phase times, ``timed_loop(feed, n, on_step)``, and how it wants its batches
    timed_loop: Callable[..., None]
    host_batch: Callable[[Any], Any]
    leak: InjectedLeak
    rss: RssSampler
    counters: CompileCounters
    #: perf_counter at the build's start: a time budget is the cell's wall time from here
    t0: float
    progress: Progress = field(default_factory=Progress)
    #: the untimed phases' fixed ring of reused host buffers (``ring_batch``), made on first use
    ring: BatchRing | None = None

    @property
    def batch(self) -> int:
        return self.task.batch

    @property
    def batch_bytes(self) -> int:
        """float32 bytes of one input batch."""
        return self.task.batch * self.source.width * 4

    def ring_batch(self) -> np.ndarray:
        """The next batch from the cell's ring of ``RING_SLOTS`` reused host buffers: what the untimed phases
        (leak, heap, confirmation) train on, so the harness's staging holds a constant footprint there and
        tracemalloc never counts a batch array that happens to be alive at its sample."""
        return self.host_ring().next()

    def host_ring(self) -> BatchRing:
        """The cell's ring, made on first use."""
        if self.ring is None:
            self.ring = BatchRing(self.source, RING_SLOTS)
        return self.ring

    def near_deadline(self) -> bool:
        """Whether the cell has used ``DEADLINE_SHARE`` of the time before the parent kills it: the untimed
        phases (leak, heap, confirmation) stop there, however short of their plan, so that the memory phase and
        the row still fit. (A conv-original k=5 b=256 cell, 7 s a step on a 2-core CPU, was killed in its leak
        phase's 14 steps at a matrix's 225 s timeout, and every figure it had measured was lost.)"""
        deadline = self.task.deadline_s
        return bool(deadline) and time.perf_counter() - self.t0 > DEADLINE_SHARE * float(deadline)

    def after_step(self) -> None:
        """What the cell does after each of its steps: the injected leak, then the RSS sample."""
        self.leak.step()
        self.rss.sample()

    def loss(self, handle: Any, step: int) -> float:
        """The loss of a step's handle, checked finite."""
        return check_loss(self.model.loss_value(handle), step)
