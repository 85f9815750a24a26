"""One interface for every measurement a cell takes: start, stop, result (as optimum-benchmark's trackers).

A cell's phases (``harness.run.phases``) used to read each figure its own way:
a sampler opened in a constructor and closed by hand, ``tracemalloc.start()``
and ``stop()`` around a loop, compile counters read into loose variables. Each
measurement is now a :class:`Tracker`:

* ``start()`` begins it (opens a file, reads a counter, starts tracemalloc);
* ``stop()`` ends it (closes the file, reads the counter again);
* ``result()`` is what it measured, read after ``stop()``.

Every tracker is also a context manager (:class:`Tracking`), so a phase can
write ``with HeapTracker() as heap: ...``. Trackers that sample per step (RSS,
the heap) add a ``sample()`` the phase calls after each step; the timing
windows (``harness.run.windows``) close their windows from the loop's own
callback. A new measurement is one new tracker, started and stopped by the
phase it covers: energy (``harness.measure.energy``) is the first added so.

The trackers here need no framework: the adapter's own probes (``counters()``,
``device_memory()``) are passed in as callables. The probes of /proc and NVML
(``RssSampler``, ``NvmlMemory``) are in ``harness.measure.probes``.
"""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass
from typing import Any, Callable, Generic, Protocol, TypeVar, runtime_checkable

T = TypeVar("T", covariant=True)

__all__ = ["CompileCounters", "DeviceMemory", "DeviceMemoryResult", "HeapTracker", "Tracker", "Tracking"]


@runtime_checkable
class Tracker(Protocol[T]):
    """A measurement over a stretch of a cell: ``start()``, ``stop()``, then ``result()``."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def result(self) -> T: ...


class Tracking(Generic[T]):
    """Base of the trackers: ``with tracker:`` starts it and stops it, even when the stretch raises."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def result(self) -> T:
        raise NotImplementedError

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HeapTracker(Tracking[list[int]]):
    """The Python heap (tracemalloc's traced bytes) after each step.

    tracemalloc slows a Python-heavy step several times over, so it runs only in
    untimed phases (the heap phase, a leak's confirmation), never on the clock.
    """

    def __init__(self) -> None:
        self.bytes: list[int] = []

    def start(self) -> None:
        tracemalloc.start()

    def sample(self) -> None:
        self.bytes.append(tracemalloc.get_traced_memory()[0])

    def stop(self) -> None:
        tracemalloc.stop()

    def result(self) -> list[int]:
        return self.bytes


class CompileCounters(Tracking[dict[str, dict[str, int]]]):
    """The build's compile counters (``VAEAdapter.counters()``: traces, compiles, cache hits) at named marks.

    ``start()`` reads them as "start", ``stop()`` as "end", ``mark(name)`` between; ``peek()`` reads
    without keeping. ``result()`` is every mark in order: the row's ``counters``.
    """

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self._read = read
        self.marks: dict[str, dict[str, int]] = {}

    def peek(self) -> dict[str, int]:
        return self._read()

    def mark(self, name: str) -> dict[str, int]:
        self.marks[name] = self._read()
        return self.marks[name]

    def start(self) -> None:
        self.mark("start")

    def stop(self) -> None:
        self.mark("end")

    def result(self) -> dict[str, dict[str, int]]:
        return dict(self.marks)


@dataclass
class DeviceMemoryResult:
    """The device allocator's figures at the start and end of a stretch (empty dicts on a CPU)."""

    start: dict[str, Any]
    end: dict[str, Any]

    @property
    def growth_bytes(self) -> int | None:
        """``bytes_in_use`` at the end less at the start; None where the build does not report it."""
        a, b = self.start, self.end
        if a and b and a.get("bytes_in_use") is not None and b.get("bytes_in_use") is not None:
            return int(b["bytes_in_use"]) - int(a["bytes_in_use"])
        return None


class DeviceMemory(Tracking[DeviceMemoryResult]):
    """The framework's device allocator (``VAEAdapter.device_memory()``) read at the start and end of a stretch."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read
        self._start: dict[str, Any] = {}
        self._end: dict[str, Any] = {}

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> None:
        self._end = self._read()

    def result(self) -> DeviceMemoryResult:
        return DeviceMemoryResult(self._start, self._end)
