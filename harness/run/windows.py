"""Timing windows inside one training loop: how a cell's step time is taken.

The adapter's ``train_steps`` runs the loop its framework's users write (a
staged-ahead step loop, or Keras' ``fit``), pulling host batches from
:meth:`Windows.feed` and calling :meth:`Windows.on_step` after each step. Every
``steps_per_window`` steps the window closes: the device is synchronised once,
the clock is read, and the next window's batches are made ready *off the
clock*, as a data loader's workers would have made them ready while the
device was busy. So a window's time is the framework's feeding and compute,
never the disk or the synthetic-data generator.

Two kinds of windows, one class:

* ``step`` (the headline): batches wait in host memory (``adapter.host_batch``:
  pinned on CUDA); the loop moves each to the device one step ahead.
* ``device_step``: batches are already on the device (``adapter.to_device``,
  then a sync) before the window's clock starts: the framework's compute alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from harness.measure.tracker import Tracking


@dataclass(frozen=True)
class WindowHooks:
    """What the windows call: the cell's batches, its device sync and its per-step work."""

    #: the next host batch (``BatchSource.next``)
    next_batch: Callable[[], Any]
    #: makes a batch ready for the loop (``host_batch``; ``to_device`` for ``device_step``)
    prepare: Callable[[Any], Any]
    synchronize: Callable[[], None]
    #: after every step, on the window's clock (the injected leak, the RSS sample)
    each_step: Callable[[], None]
    #: ``check_loss(handle, done)`` at each window's end, after the sync
    check_loss: Callable[[Any, int], None]


@dataclass
class WindowTimes:
    """What a pass measured: each full window's seconds, the last window, and the batches fetched on the clock."""

    times: list[float]
    last_window: tuple[float, int]
    fallbacks: int


class Windows(Tracking[WindowTimes]):
    """The timing windows of one pass of ``steps`` steps (a tracker: ``start()`` readies the first window and
    starts its clock; the loop's ``on_step`` closes each window; ``stop()`` after the loop; ``result()``)."""

    def __init__(self, steps: int, steps_per_window: int, hooks: WindowHooks, *, staged: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.steps, self.spw = steps, steps_per_window
        self._next_batch, self._prepare, self._sync = hooks.next_batch, hooks.prepare, hooks.synchronize
        self._each_step, self._check_loss, self._progress = hooks.each_step, hooks.check_loss, progress
        self._staged = staged
        self._buffer: deque[Any] = deque()
        self._lock = threading.Lock()
        #: seconds of each full window (a last, shorter window is left out)
        self.times: list[float] = []
        #: batches the loop asked for before the window refill had them ready (fetched on the clock)
        self.fallbacks = 0
        self.done = 0
        self._fed = 0
        self.last_window: tuple[float, int] = (float("nan"), 0)
        self._t = float("nan")

    def start(self) -> None:
        self._fill(self.spw + 1)  # the loop stages one batch ahead, so the first window needs one more
        self._t = time.perf_counter()

    def stop(self) -> None:
        """Nothing to close: the last window closed in ``on_step`` at the last step."""

    def result(self) -> WindowTimes:
        return WindowTimes(self.times, self.last_window, self.fallbacks)

    def _fill(self, n: int) -> None:
        with self._lock:
            n = max(0, min(n, self.steps - self._fed - len(self._buffer)))
        batches = [self._prepare(self._next_batch()) for _ in range(n)]
        with self._lock:
            self._buffer.extend(batches)
        if self._staged:
            self._sync()  # staged batches are on the device before the clock starts

    def feed(self) -> Any:
        """The next batch for the loop (thread-safe: Keras' data pipeline may call it from its own thread)."""
        with self._lock:
            self._fed += 1
            if self._buffer:
                return self._buffer.popleft()
            self.fallbacks += 1
        return self._prepare(self._next_batch())

    def on_step(self, i: int, handle: Any) -> None:
        self._each_step()
        self.done = i + 1
        if self.done % self.spw and self.done != self.steps:
            return
        self._sync()
        elapsed = time.perf_counter() - self._t
        n = self.done % self.spw or self.spw
        if n == self.spw:
            self.times.append(elapsed)
        self.last_window = (elapsed, n)
        self._check_loss(handle, self.done)
        if self._progress:
            self._progress(self.done, self.steps)
        if self.done < self.steps:
            self._fill(self.spw)
        self._t = time.perf_counter()
