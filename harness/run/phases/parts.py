"""What each phase of a cell returns: its typed part of the worker's result.

``harness.run.cell.run_cell`` runs the phases in order and hands each the parts
it needs; ``harness.run.phases.payload`` writes them out as the worker's result
(the keys the stored row has always had, ``harness.row``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.measure.energy import EnergyReading
from harness.measure.host_peak import StandinPeak
from harness.measure.tracker import DeviceMemoryResult
from harness.run.windows import WindowTimes
from harness.spec.params import ParamCounts

if TYPE_CHECKING:  # the leak phase's module reads StepPlan from here
    from harness.run.phases.leak import LeakSeries


@dataclass
class BuildPart:
    """``build``: the framework's import, the model and its shared initial weights."""

    import_s: float
    build_s: float
    #: RssAnon after the framework's import, before any model: its own footprint
    import_anon: int
    counts: ParamCounts
    expected: ParamCounts
    #: RssAnon with the harness's own modules loaded, before the framework (``harness.run.phases.footprint``)
    harness_anon: int = 0
    #: RssAnon after the runtime warm-up, and its seconds; None (and why) where it did not run
    runtime_anon: int | None = None
    runtime_s: float = 0.0
    runtime_error: str | None = None


@dataclass
class CompilePart:
    """``compile``: the first step, synchronised and timed on its own."""

    seconds: float
    #: True where JAX loaded the executable from the run's cache; None where the build cannot tell
    cached: bool | None
    #: VmHWM after the compile step (compiler scratch, first-touch allocations), kept apart from training's
    peak_rss: int
    loss: float


@dataclass
class WarmupPart:
    """``warmup``: synchronised single steps after the compile step."""

    steps: int
    times: list[float]
    #: each step with its batch fetch and the per-step samples around it
    iteration_times: list[float]
    loss: float | None

    @property
    def step_s(self) -> float:
        """The median of the second half of the warm-up steps: what a time budget plans from."""
        return float(np.median(self.times[len(self.times) // 2:])) if self.times else float("nan")

    @property
    def iteration_s(self) -> float:
        return float(np.median(self.iteration_times[len(self.iteration_times) // 2:]))


@dataclass
class StepPlan:
    """How many steady steps, in windows of how many steps, in how many timed passes."""

    requested: int
    steps: int
    steps_per_window: int
    #: 2 where ``device_step`` is timed apart from ``step``
    passes: int
    warmup_steps: int
    budget_s: float | None
    #: the warm-up's step time (with its fetch and samples) that planned the budget; NaN where unknown
    step_s: float = math.nan


@dataclass
class SteadyPart:
    """``steady``: the headline timing windows, and what the trackers read around them."""

    windows: WindowTimes
    device_memory: DeviceMemoryResult
    #: index of the first RSS sample of the steady phase (``host.steady_from``)
    rss_from: int
    #: RssAnon after each steady step, some taken with a step in flight: shown, never judged (the leak
    #: phase's series is, ``harness.run.phases.leak``)
    anon: list[int]
    energy: EnergyReading
    loss: float


@dataclass
class DeviceStepPart:
    """``device_step``: the windows on batches staged on the device (None where not timed apart)."""

    windows: WindowTimes | None
    loss: float | None


@dataclass
class HeapPart:
    """``heap``: tracemalloc's traced bytes and RssAnon after each untimed heap step."""

    bytes: list[int]
    anon: list[int]
    loss: float | None

    @property
    def note(self) -> str:
        return f"measured over {len(self.bytes)} untimed steps after the timing" if self.bytes else "off by request"


@dataclass
class MemoryPart:
    """``memory`` (CPU only): training steps on a trimmed heap whose peak RSS stands in for device memory."""

    steps: int
    heap_trimmed: bool
    peak_restarted: bool
    #: VmHWM read after the phase (on a device, after the heap phase)
    peak_rss: int
    loss: float | None


@dataclass
class TimingStats:
    """``stats``: the step statistics of each pass."""

    step: dict[str, Any]
    dropped: int
    device_step: dict[str, Any]
    device_step_source: str


@dataclass
class LeakPart:
    """``stats``: the leak phase's verdict on all the evidence, with its cause."""

    fields: dict[str, Any]
    heap_growth: int | None


@dataclass
class MemoryFigures:
    """``stats``: device memory as the allocator and the driver see it, or the CPU stand-in."""

    device: dict[str, Any]
    nvml: dict[str, int] | None
    standin: StandinPeak


@dataclass
class CellParts:
    """Every phase's part, for the worker's result (``harness.run.phases.payload``)."""

    build: BuildPart
    compiled: CompilePart
    warmup: WarmupPart
    plan: StepPlan
    steady: SteadyPart
    device_step: DeviceStepPart
    leak_series: LeakSeries
    heap: HeapPart
    memory: MemoryPart
    timing: TimingStats
    leak: LeakPart
    figures: MemoryFigures

    @property
    def final_loss(self) -> float:
        """The last loss checked: the memory phase's, else the heap phase's, else the last timed pass's."""
        for loss in (self.memory.loss, self.heap.loss, self.device_step.loss, self.steady.loss):
            if loss is not None:
                return loss
        return math.nan
