"""The cell in phases (``harness.run.cell``, ``harness.run.phases``) and the trackers it runs.

* The worker's payload keeps exactly its keys (the stored rows' and the reports'), plus ``energy``.
* A real CPU cell's payload carries ``energy``: RAPL's figure where this machine lets it be read,
  else the reason, the same one the tracker gives on its own.
* A cell on a (fake) accelerator that stages its batches takes the ``device_step`` phase and
  NVML's energy (fake) over its steady phase.
* Each measurement is a tracker: start, stop, result.

In-process cells on the numpy-only planted adapter: a second or less each.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pynvml
import pytest

from harness.adapter import load_adapter_class
from harness.measure.energy import MeterUnavailable, RaplEnergy
from harness.measure.probes import NvmlMemory, RssSampler
from harness.measure.tracker import CompileCounters, DeviceMemory, HeapTracker, Tracker
from harness.run.cell import run_cell
from harness.run.phases import warm
from harness.run.phases.leak import LEAK_MIN_STEPS
from harness.run.runner import plan_cells, run_matrix
from harness.run.schedule import LEAK_BUDGET_SHARE
from harness.run.task import CellTask
from harness.run.windows import WindowHooks, Windows
from harness.spec.presets import resolve_spec
from harness.store import ResultStore

PLANTED = "tests/fixtures/planted.py:"

#: the worker's result keys, in order, as before the cell was split into phases; ``energy`` and ``runtime_s``
#: (issue 25's runtime warm-up) are the ones added
PAYLOAD_KEYS = [
    "row", "versions", "device_kind", "syncs_every_step", "frameworks_loaded", "pid", "import_s", "build_s",
    "runtime_s", "compile_s", "compile_cached", "warmup_step_times_s", "steady_windows_dropped", "train_loop", "loop_details",
    "stages_input", "final_loss", "steps_measured", "steps_requested", "time_budget_s", "param_counts",
    "param_counts_expected", "step_stats", "device_step_stats", "device_step_source", "input_bound_ratio", "flops",
    "tflops", "memory", "host", "leak", "counters", "energy"]
MEMORY_KEYS = [
    "device", "device_source", "nvml_bytes", "peak_rss_bytes", "import_anon_bytes", "harness_anon_bytes",
    "runtime_anon_bytes", "runtime_footprint_bytes", "runtime_warm_up", "training_peak_rss_bytes",
    "compile_peak_rss_bytes", "memory_phase_steps", "heap_trimmed", "peak_rss_restarted", "cpu_standin",
    "peak_bytes", "standin_method", "file_rss_at_peak_bytes", "file_rss_at_compile_bytes",
    "weights_and_state_bytes", "peak_floor_applied", "training_peak_unfloored_bytes",
    "compile_peak_unfloored_bytes"]
HOST_KEYS = ["rss_anon", "rss_file", "steady_from", "file_growth_bytes", "anon_growth_bytes", "heap_tracking",
             "heap_bytes", "heap_phase_anon_bytes", "heap_growth_bytes"]
ENERGY_KEYS = ["source", "joules", "joules_per_step", "samples_per_joule", "steps", "absent_reason"]


def cell(impl: str = "NumpyVAE", **kw: Any) -> dict[str, Any]:
    kw = {"kmer": 3, "batch": 32, "steps": 40, **kw}
    spec = resolve_spec("dense", kmer=kw["kmer"])
    return run_cell(CellTask(impl=PLANTED + impl, spec=spec.to_dict(), **kw))


def rapl_here() -> tuple[bool, str | None]:
    try:
        RaplEnergy().close()
        return True, None
    except MeterUnavailable as exc:
        return False, str(exc)


def test_a_cpu_cell_keeps_its_payload_keys_and_adds_energy():
    row = cell(steps=40, confirm="on")
    assert list(row) == PAYLOAD_KEYS
    assert list(row["memory"]) == MEMORY_KEYS
    assert list(row["host"]) == HOST_KEYS
    assert list(row["counters"]) == ["start", "steady", "end"]
    assert list(row["energy"]) == ENERGY_KEYS
    # the phases ran in order: 40 timed steps in 20 windows of 2, a leak phase of at least 14 synchronised
    # steps from a 2-slot ring, a heap phase of 10, 3 memory steps
    assert row["steps_measured"] == 40 and len(row["step_stats"]["window_times_s"]) == 20 - row[
        "steady_windows_dropped"]
    assert len(row["host"]["heap_bytes"]) == 10 and row["memory"]["memory_phase_steps"] == 3
    assert row["host"]["steady_from"] == 1 + len(row["warmup_step_times_s"]) + 2  # compile, warm-up, loop warm-up
    phase = row["leak"]["phase"]
    assert phase["rss_from"] == row["host"]["steady_from"] + 40 and phase["steps"] >= 14
    assert phase["ring_bytes"] == 2 * 32 * 32 * 4 and phase["rss_anon"] == row["host"]["rss_anon"][
        phase["rss_from"]:phase["rss_from"] + phase["steps"]]
    assert len(row["host"]["rss_anon"]) == phase["rss_from"] + phase["steps"] + 10
    assert row["leak"]["judged_steps"] > 0 and row["leak"]["detectable_bytes_per_batch"] > 0
    assert row["leak"]["confirm_mode"] == "on" and row["leak"]["confirmation"] is not None


def test_a_cpu_cell_gives_rapl_energy_or_says_why_not():
    e = cell(steps=40)["energy"]
    readable, reason = rapl_here()
    if readable:
        assert e["source"] == "rapl" and e["steps"] == 40
        assert e["joules"] > 0 or "did not advance" in e["absent_reason"]
    else:
        assert e["source"] is None and e["joules"] is None and e["joules_per_step"] is None
        assert e["absent_reason"] == reason and reason.startswith("no RAPL: ")


@pytest.mark.worker
def test_energy_reaches_the_stored_row(tmp_path):
    spec = resolve_spec("dense", kmer=3)
    cells = plan_cells([PLANTED + "NumpyVAE"], [spec], 3, [32], timeout_s=120.0, steps=20)
    (row,) = run_matrix(cells, ResultStore(tmp_path, "energy"), progress=False, peak=False)
    assert row["status"] == "ok", row.get("failure_message")
    assert list(row["energy"]) == ENERGY_KEYS
    assert row["energy"]["source"] in ("rapl", None)
    assert (row["energy"]["joules"] is not None) == (row["energy"]["source"] is not None)
    if row["energy"]["source"] is None:
        assert row["energy"]["absent_reason"]


class RecordsInputsVAE(load_adapter_class(PLANTED + "NumpyVAE")):
    """The planted numpy model, noting the address of every batch it trains on."""

    addresses: list[int] = []

    def train_step(self, x: np.ndarray, eps: np.ndarray | None = None) -> Any:
        RecordsInputsVAE.addresses.append(x.__array_interface__["data"][0])
        return super().train_step(x, eps)


def test_the_leak_and_heap_phases_train_from_a_fixed_ring_of_two_buffers():
    """What the untimed phases train on holds a constant footprint (issue 25): two host buffers, reused, where
    the timed loop's batches are fresh arrays (each window's, made ready off the clock)."""
    RecordsInputsVAE.addresses.clear()
    spec = resolve_spec("dense", kmer=3)
    # no runtime warm-up: its tiny model would record its own two batches first
    row = run_cell(CellTask(impl=f"{__name__}:RecordsInputsVAE", spec=spec.to_dict(), kmer=3, batch=32, steps=40,
                            confirm="off", warm_runtime=False))
    seen = RecordsInputsVAE.addresses
    start, leak_steps, heap_steps = row["leak"]["phase"]["rss_from"], row["leak"]["phase"]["steps"], 10
    assert len(row["host"]["heap_bytes"]) == heap_steps
    ring = seen[start:start + leak_steps + heap_steps]
    assert len(ring) == leak_steps + heap_steps and len(set(ring)) == 2, ring
    assert ring[0::2] == [ring[0]] * len(ring[0::2])  # the slots take turns
    assert row["leak"]["phase"]["ring_bytes"] == 2 * 32 * 32 * 4


class FakeGpuVAE(load_adapter_class(PLANTED + "NumpyVAE")):
    """The planted numpy model as a build on an accelerator that stages its batches."""

    stages_input = True
    staged = 0

    @classmethod
    def device_kind(cls) -> str:
        return "gpu"

    def to_device(self, batch: Any) -> Any:
        FakeGpuVAE.staged += 1
        return batch

    def device_memory(self) -> dict[str, int | None]:
        return {"bytes_in_use": 1000 + 10 * self.steps, "peak_bytes": 5000}


def test_a_staging_accelerator_cell_takes_device_step_and_nvml_energy(monkeypatch):
    readings = iter([2_000_000, 2_000_000, 2_600_000])  # mJ: the check, the start and the end of steady
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", lambda h: next(readings))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 0)  # the driver's process memory: no GPU listed
    FakeGpuVAE.staged = 0
    spec = resolve_spec("dense", kmer=3)
    row = run_cell(CellTask(impl=f"{__name__}:FakeGpuVAE", spec=spec.to_dict(), kmer=3, batch=32, steps=40))
    assert row["device_step_source"] == "batches staged on the device before each window's clock started"
    assert FakeGpuVAE.staged >= 40  # the device_step pass staged its batches
    assert row["memory"]["device_source"] == "allocator" and row["memory"]["peak_bytes"] == 5000
    assert row["memory"]["memory_phase_steps"] == 0  # a device allocator: no CPU stand-in phase
    assert row["energy"] == {"source": "nvml", "joules": pytest.approx(600.0), "joules_per_step": pytest.approx(15.0),
                             "samples_per_joule": pytest.approx(40 * 32 / 600.0), "steps": 40, "absent_reason": None}


def test_a_budget_plans_the_steady_steps_from_the_cells_own_facts(monkeypatch):
    """The plan hands ``budgeted_steps`` what the cell measured: its time so far, the slower of the warm-up
    step and the whole warm-up iteration, the untimed steps after the timing, and one timed pass on a CPU;
    the budget it plans from is less the leak phase's share of what is left (issue 25)."""
    calls = []

    def budgeted(budget_s, elapsed_s, step_s, requested, **kw):
        calls.append((budget_s, elapsed_s, step_s, requested, kw))
        return 7

    monkeypatch.setattr(warm, "budgeted_steps", budgeted)
    row = cell(steps=40, time_budget_s=30.0)
    ((budget_s, elapsed_s, step_s, requested, kw),) = calls
    warm_times = row["warmup_step_times_s"]
    assert requested == 40 and 0 < elapsed_s < 30.0
    assert budget_s == pytest.approx(30.0 - LEAK_BUDGET_SHARE * (30.0 - elapsed_s), rel=1e-3)
    assert step_s >= sorted(warm_times[len(warm_times) // 2:])[0] > 0
    # loop warm-up + leak phase + memory phase
    assert kw == {"timed_passes": 1, "untimed_steps": 2 + LEAK_MIN_STEPS + 3, "heap": None}
    assert row["steps_measured"] == 7 and row["steps_requested"] == 40 and row["time_budget_s"] == 30.0


def test_windows_time_full_windows_and_keep_the_last_apart():
    batches, synced, checked = iter(range(1000)), [], []
    hooks = WindowHooks(next_batch=lambda: next(batches), prepare=lambda x: x, synchronize=lambda: synced.append(1),
                        each_step=lambda: None, check_loss=lambda handle, done: checked.append(done))
    windows = Windows(10, 3, hooks)
    assert isinstance(windows, Tracker)
    with windows:
        for i in range(10):
            windows.on_step(i, windows.feed())
    result = windows.result()
    assert len(result.times) == 3 and result.last_window[1] == 1  # 3 + 3 + 3, then a last window of 1
    assert checked == [3, 6, 9, 10] and len(synced) == 4
    assert result.fallbacks == 0


def test_windows_count_batches_fetched_on_the_clock():
    hooks = WindowHooks(next_batch=lambda: 0, prepare=lambda x: x, synchronize=lambda: None,
                        each_step=lambda: None, check_loss=lambda handle, done: None)
    with Windows(4, 4, hooks) as windows:
        for _ in range(4):
            windows.feed()
        windows.feed()  # one more than the window readied: fetched on the clock
        for i in range(4):
            windows.on_step(i, None)
    assert windows.result().fallbacks == 1


def test_each_measurement_is_a_tracker():
    counters = iter([{"compiles": 1}, {"compiles": 1}, {"compiles": 3}])
    compiled = CompileCounters(lambda: next(counters))
    with compiled:
        compiled.mark("steady")
    assert compiled.result() == {"start": {"compiles": 1}, "steady": {"compiles": 1}, "end": {"compiles": 3}}

    in_use = iter([{"bytes_in_use": 100}, {"bytes_in_use": 164}])
    with DeviceMemory(lambda: next(in_use)) as device:
        pass
    assert device.result().growth_bytes == 64
    with DeviceMemory(dict) as cpu:
        pass
    assert cpu.result().growth_bytes is None

    with HeapTracker() as heap:
        kept = [bytearray(1 << 20)]
        heap.sample()
        kept.append(bytearray(1 << 20))
        heap.sample()
    assert heap.result()[1] - heap.result()[0] >= 1 << 20

    with RssSampler() as rss:
        rss.sample()
        time.sleep(0)
        rss.sample()
    series = rss.result()
    assert len(series.anon) == len(series.file) == 2 and series.anon[0] > 0

    for tracker in (compiled, device, heap, rss, NvmlMemory()):
        assert isinstance(tracker, Tracker)


def test_a_cell_near_its_timeout_skips_its_untimed_phases_and_keeps_its_row():
    """A cell past ``DEADLINE_SHARE`` of its timeout runs no leak, heap or confirmation step, so its memory
    phase and row still come back (a conv-original k=5 b=256 cell was killed in its leak phase and lost every
    figure it had measured)."""
    spec = resolve_spec("dense", kmer=3)
    row = run_cell(CellTask(impl=PLANTED + "NumpyVAE", spec=spec.to_dict(), kmer=3, batch=32, steps=20,
                            inject_leak_bytes=256 * 1024, confirm="on", deadline_s=1e-6))
    leak = row["leak"]
    assert leak["phase"]["stopped_by"] == "deadline" and leak["phase"]["steps"] == 0
    assert leak["verdict"] == "inconclusive" and leak["confirm_skipped"] == "the cell neared its timeout"
    assert row["host"]["heap_bytes"] == [] and row["steps_measured"] > 0
    assert row["memory"]["peak_bytes"] > 0
