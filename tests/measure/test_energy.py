"""The energy tracker (``harness.measure.energy``): NVML on a GPU, RAPL on a CPU, else absent with its reason.

NVML is faked by monkeypatching pynvml's functions; RAPL by a powercap directory under tmp_path laid out as
the kernel's (``intel-rapl:N/energy_uj`` and ``max_energy_range_uj``, a sub-domain ``intel-rapl:N:M``).
"""

from __future__ import annotations

from pathlib import Path

import pynvml
import pytest

from harness.measure.energy import EnergyTracker, MeterUnavailable, RaplEnergy
from harness.measure.tracker import Tracker

RANGE_UJ = 262_143_328_850  # a real package's max_energy_range_uj


def powercap(root: Path, packages: dict[int, int], sub: int | None = None) -> Path:
    """A fake /sys/class/powercap: package N's counter at ``packages[N]`` microjoules."""
    for n, uj in packages.items():
        d = root / f"intel-rapl:{n}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "energy_uj").write_text(f"{uj}\n")
        (d / "max_energy_range_uj").write_text(f"{RANGE_UJ}\n")
        if sub is not None:
            s = root / f"intel-rapl:{n}:0"  # the cores of package N: already in its figure
            s.mkdir(exist_ok=True)
            (s / "energy_uj").write_text(f"{sub}\n")
            (s / "max_energy_range_uj").write_text(f"{RANGE_UJ}\n")
    return root


def set_counter(root: Path, name: str, uj: int) -> None:
    (root / name / "energy_uj").write_text(f"{uj}\n")


def test_rapl_sums_the_package_domains_over_the_stretch(tmp_path):
    root = powercap(tmp_path, {0: 5_000_000, 1: 7_000_000}, sub=1_000_000)
    tracker = EnergyTracker("cpu", steps=50, batch=64, powercap=root)
    assert isinstance(tracker, Tracker)
    with tracker:
        set_counter(root, "intel-rapl:0", 5_000_000 + 30_000_000)   # 30 J
        set_counter(root, "intel-rapl:1", 7_000_000 + 20_000_000)   # 20 J
        set_counter(root, "intel-rapl:0:0", 900_000_000)            # a sub-domain: never added
    e = tracker.result()
    assert e.source == "rapl" and e.absent_reason is None
    assert e.joules == pytest.approx(50.0)
    assert e.joules_per_step == pytest.approx(1.0) and e.steps == 50
    assert e.samples_per_joule == pytest.approx(50 * 64 / 50.0)


def test_rapl_counter_that_wraps_during_the_stretch(tmp_path):
    start = RANGE_UJ - 2_000_000  # 2 J before the wrap
    root = powercap(tmp_path, {0: start})
    with EnergyTracker("cpu", steps=10, batch=8, powercap=root) as tracker:
        set_counter(root, "intel-rapl:0", 3_000_000)  # wrapped, then 3 J more
    e = tracker.result()
    assert e.joules == pytest.approx(5.0)
    assert e.joules_per_step == pytest.approx(0.5)


def test_no_powercap_directory_is_absent_with_its_reason(tmp_path):
    tracker = EnergyTracker("cpu", steps=10, batch=8, powercap=tmp_path / "missing")
    with tracker:
        pass
    e = tracker.result()
    assert e.source is None and e.joules is None and e.joules_per_step is None
    assert e.absent_reason == f"no RAPL: {tmp_path / 'missing'} does not exist here"
    assert set(e.to_dict()) == {"source", "joules", "joules_per_step", "samples_per_joule", "steps", "absent_reason"}


def test_unreadable_energy_uj_is_absent_with_its_reason(tmp_path):
    root = tmp_path / "powercap"
    (root / "intel-rapl:0" / "energy_uj").mkdir(parents=True)  # reading it fails as a root-only file would
    (root / "intel-rapl:0" / "max_energy_range_uj").write_text(f"{RANGE_UJ}\n")
    with EnergyTracker("cpu", steps=10, batch=8, powercap=root) as tracker:
        pass
    reason = tracker.result().absent_reason
    assert tracker.result().source is None
    assert reason.startswith(f"no RAPL: {root / 'intel-rapl:0' / 'energy_uj'} not readable here")


def test_powercap_without_a_package_domain_is_absent(tmp_path):
    (tmp_path / "dtpm").mkdir()
    with pytest.raises(MeterUnavailable, match="no intel-rapl package domain"):
        RaplEnergy(tmp_path)


def test_a_counter_that_did_not_advance_gives_no_rate(tmp_path):
    root = powercap(tmp_path, {0: 1_000})
    with EnergyTracker("cpu", steps=10, batch=8, powercap=root) as tracker:
        pass
    e = tracker.result()
    assert e.source == "rapl" and e.joules == 0
    assert e.joules_per_step is None and e.samples_per_joule is None
    assert "did not advance" in e.absent_reason


class FakeNvml:
    """pynvml's functions as a GPU with a total-energy counter would answer them (millijoules)."""

    def __init__(self, readings_mj: list[int], supported: bool = True) -> None:
        self.readings = list(readings_mj)
        self.supported = supported
        self.handles: list[object] = []
        self.inits = self.shutdowns = 0

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(pynvml, "nvmlInit", self.init)
        monkeypatch.setattr(pynvml, "nvmlShutdown", self.shutdown)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: self.handle(("index", i)))
        monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByUUID", lambda u: self.handle(("uuid", u)))
        monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", self.energy)

    def init(self) -> None:
        self.inits += 1

    def shutdown(self) -> None:
        self.shutdowns += 1

    def handle(self, key: tuple) -> tuple:
        self.handles.append(key)
        return key

    def energy(self, handle: object) -> int:
        if not self.supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


def test_nvml_total_energy_over_the_stretch(monkeypatch):
    # the first reading checks the counter exists, the second starts the stretch, the third ends it
    fake = FakeNvml([1_000_000, 1_000_000, 1_450_000])
    fake.install(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with EnergyTracker("gpu", steps=100, batch=32) as tracker:
        pass
    e = tracker.result()
    assert e.source == "nvml" and e.absent_reason is None
    assert e.joules == pytest.approx(450.0)
    assert e.joules_per_step == pytest.approx(4.5)
    assert e.samples_per_joule == pytest.approx(100 * 32 / 450.0)
    assert fake.handles == [("index", 2)]  # the GPU the worker trains on, not GPU 0
    assert fake.inits == fake.shutdowns == 1


def test_nvml_gpu_named_by_uuid(monkeypatch):
    fake = FakeNvml([10_000, 10_000, 12_000])
    fake.install(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-0b1c")
    with EnergyTracker("gpu", steps=4, batch=2) as tracker:
        pass
    assert fake.handles == [("uuid", "GPU-0b1c")]
    assert tracker.result().joules == pytest.approx(2.0)


def test_nvml_without_the_energy_counter_is_absent(monkeypatch):
    fake = FakeNvml([0], supported=False)
    fake.install(monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with EnergyTracker("gpu", steps=4, batch=2) as tracker:
        pass
    e = tracker.result()
    assert e.source is None and e.joules is None
    assert e.absent_reason.startswith("NVML has no energy counter for this GPU")
    assert fake.handles == [("index", 0)] and fake.shutdowns == 1


def test_no_nvml_driver_is_absent(monkeypatch):
    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    with EnergyTracker("gpu", steps=4, batch=2) as tracker:
        pass
    e = tracker.result()
    assert e.source is None and e.absent_reason.startswith("no NVML: ")
