"""Energy over a cell's steady phase: joules per step and samples per joule, or why there is no figure.

A tracker (``harness.measure.tracker``): the steady phase starts it before its
first timing window and stops it after its last, off the clock.

* **GPU** (a build whose ``device_kind()`` is not "cpu"): NVML's total energy
  counter, ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the
  driver loaded; Volta and newer), of the GPU the worker trains on: the first
  of ``CUDA_VISIBLE_DEVICES`` (an index or a ``GPU-`` UUID), else GPU 0. It is
  the whole board's energy, so another process on the same GPU would count.
* **CPU**: RAPL, through the kernel's powercap files,
  ``/sys/class/powercap/intel-rapl:N/energy_uj`` (microjoules; AMD's Zen CPUs
  use the same ``intel-rapl`` files). Only the package domains (``intel-rapl:N``)
  are summed: their sub-domains (``intel-rapl:N:M``, cores and uncore) are
  part of the package's figure. The counter wraps at ``max_energy_range_uj``;
  a wrap during the phase is added back once (at 200 W a 262 kJ range wraps
  every 22 minutes, far longer than a steady phase). It is the whole
  package's energy, every process's. Since Linux 5.10 ``energy_uj`` is
  readable by root only (CVE-2020-8694), so on most machines the row carries
  the reason instead of a figure.

Absent is never faked as zero: ``source`` is None and ``absent_reason`` says why
(no NVML, no counter on this GPU, no readable RAPL, a counter that did not
advance over a phase too short for its resolution).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.measure.tracker import Tracking

#: where the kernel's RAPL counters are
POWERCAP = Path("/sys/class/powercap")
#: a package domain (``intel-rapl:0``), not a sub-domain (``intel-rapl:0:1``) already counted in it
_PACKAGE = re.compile(r"^intel-rapl:\d+$")

__all__ = ["POWERCAP", "EnergyReading", "EnergyTracker", "NvmlEnergy", "RaplEnergy", "energy_meter"]


@dataclass
class EnergyReading:
    """The row's ``energy``: joules over ``steps`` steady steps, or ``absent_reason`` with ``source`` None."""

    source: str | None = None
    joules: float | None = None
    joules_per_step: float | None = None
    samples_per_joule: float | None = None
    steps: int | None = None
    absent_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MeterUnavailable(RuntimeError):
    """No energy counter here; the message is the row's ``absent_reason``."""


class NvmlEnergy:
    """NVML's total energy counter of one GPU, in joules."""

    source = "nvml"

    def __init__(self) -> None:
        # imported where a GPU's counter is read, not at the top: a CPU cell would otherwise carry its
        # 1.6 MB of module in the import footprint (``memory.import_anon_bytes``) that it never uses
        try:
            import pynvml
        except ImportError:
            raise MeterUnavailable("no NVML: the nvidia-ml-py package is not installed") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise MeterUnavailable(f"no NVML: {exc}") from None
        try:
            self._handle = _visible_gpu(pynvml)
            self.read()  # NVMLError_NotSupported before Volta
        except (pynvml.NVMLError, OSError) as exc:
            self.close()
            raise MeterUnavailable(f"NVML has no energy counter for this GPU: {exc}") from None

    def read(self) -> float:
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3
        except self._nvml.NVMLError as exc:
            raise OSError(f"NVML: {exc}") from None

    def delta(self, start: float, end: float) -> float:
        return end - start

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


def _visible_gpu(nvml: Any) -> Any:
    """NVML's handle of the GPU the worker trains on: the first of ``CUDA_VISIBLE_DEVICES``, else GPU 0."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if first.startswith("GPU-"):
        return nvml.nvmlDeviceGetHandleByUUID(first)
    return nvml.nvmlDeviceGetHandleByIndex(int(first) if first.isdigit() else 0)


class RaplEnergy:
    """The sum of RAPL's package counters under ``powercap``, in joules, wrap-around added back."""

    source = "rapl"

    def __init__(self, powercap: Path = POWERCAP) -> None:
        if not powercap.is_dir():
            raise MeterUnavailable(f"no RAPL: {powercap} does not exist here")
        try:
            domains = sorted(d for d in powercap.iterdir() if _PACKAGE.match(d.name))
        except OSError as exc:
            raise MeterUnavailable(f"no RAPL: {powercap} not readable here ({exc.strerror})") from None
        if not domains:
            raise MeterUnavailable(f"no RAPL: no intel-rapl package domain under {powercap}")
        self._files = [d / "energy_uj" for d in domains]
        try:
            self._ranges = [int((d / "max_energy_range_uj").read_text()) for d in domains]
            self.read()
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise MeterUnavailable(f"no RAPL: {domains[0] / 'energy_uj'} not readable here ({why}; "
                                   "root only since Linux 5.10)") from None

    def read(self) -> list[int]:
        """Each package's counter, in microjoules."""
        return [int(f.read_text()) for f in self._files]

    def delta(self, start: list[int], end: list[int]) -> float:
        """Joules between two readings; a counter lower at the end wrapped once at its range."""
        total = 0
        for a, b, span in zip(start, end, self._ranges, strict=True):
            total += b - a if b >= a else b + span - a
        return total / 1e6

    def close(self) -> None:
        pass


def energy_meter(device_kind: str, powercap: Path = POWERCAP) -> NvmlEnergy | RaplEnergy:
    """The counter for a build on ``device_kind``: NVML on a GPU, RAPL on a CPU. Raises ``MeterUnavailable``."""
    return RaplEnergy(powercap) if device_kind == "cpu" else NvmlEnergy()


class EnergyTracker(Tracking[EnergyReading]):
    """Energy of the stretch between ``start()`` and ``stop()``, spread over ``steps`` steps of ``batch`` samples.

    Reading a counter is a file read or one NVML call, made outside the timing windows' clock.
    """

    def __init__(self, device_kind: str, *, steps: int, batch: int, powercap: Path = POWERCAP) -> None:
        self.device_kind, self.steps, self.batch, self.powercap = device_kind, steps, batch, powercap
        self._meter: NvmlEnergy | RaplEnergy | None = None
        self._start: Any = None
        self._joules: float | None = None
        self._reason: str | None = None

    def start(self) -> None:
        try:
            self._meter = energy_meter(self.device_kind, self.powercap)
            self._start = self._meter.read()
        except MeterUnavailable as exc:
            self._meter, self._reason = None, str(exc)
        except (OSError, ValueError) as exc:
            self._meter, self._reason = None, f"the energy counter could not be read: {exc}"

    def stop(self) -> None:
        if self._meter is None:
            return
        try:
            self._joules = self._meter.delta(self._start, self._meter.read())
        except (OSError, ValueError) as exc:
            self._reason = f"the energy counter could not be read at the end: {exc}"
        finally:
            self._meter.close()

    def result(self) -> EnergyReading:
        source = self._meter.source if self._meter is not None else None
        if source is None or self._joules is None:
            return EnergyReading(absent_reason=self._reason or "energy was not tracked")
        if self._joules <= 0 or self.steps <= 0:
            return EnergyReading(source=source, joules=self._joules, steps=self.steps,
                                 absent_reason="the energy counter did not advance over the steady phase "
                                               "(shorter than its update interval)")
        return EnergyReading(source=source, joules=self._joules, joules_per_step=self._joules / self.steps,
                             samples_per_joule=self.steps * self.batch / self._joules, steps=self.steps)
