"""The matmul peak (harness.measure.peak, harness.run.peak, impls.peak) and the report's TFLOP/s and MFU columns."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.measure.peak import CACHE_FILE, peak_key, peak_text, read_cached, write_cached
from harness.run import peak as run_peak
from harness.run.launch import WorkerOutcome
from harness.run.task import PeakTask, task_from_json
from harness.spec.schema import Settings
from reports.build import build_report

MEASURED = {"status": "ok", "tflops": 1.5, "seconds": [0.1, 0.11, 0.1], "median_s": 0.1, "device": "CPU: test",
            "device_kind": "cpu", "dtype": "float32", "tf32": False, "size": 512, "framework": "torch 2.x",
            "threads": 1, "method": "torch 512x512 float32 A@B, median of 3"}


def test_peak_task_round_trips_through_json():
    task = PeakTask(size=64, repeats=2, tf32=True, device="gpu")
    back = task_from_json(json.loads(json.dumps(task.to_json())))
    assert isinstance(back, PeakTask) and back == task
    assert PeakTask().device == "auto" and PeakTask().size is None


# --------------------------------------------------------------------------- cache


def test_cache_is_keyed_by_device_threads_and_tf32(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    key = peak_key(Settings(), "cpu")
    assert key["env"]["OMP_NUM_THREADS"] == "1" and key["tf32"] is False and key["cpu_model"]
    assert read_cached(tmp_path, key) is None  # no file yet
    entry = write_cached(tmp_path, key, MEASURED)
    assert "status" not in entry and entry["key"] == key and entry["measured_at"]
    assert read_cached(tmp_path, key)["tflops"] == 1.5
    assert read_cached(tmp_path, peak_key(Settings(tf32=True), "cpu")) is None
    assert read_cached(tmp_path, peak_key(Settings(), "cpu", size=128)) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    other = peak_key(Settings(), "cpu")
    assert read_cached(tmp_path, other) is None
    write_cached(tmp_path, other, {**MEASURED, "tflops": 3.0, "threads": 2})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert read_cached(tmp_path, key)["tflops"] == 1.5  # both entries kept
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())) == 2


def test_unreadable_cache_or_failed_entry_is_a_miss(tmp_path):
    key = peak_key(Settings(), "cpu")
    (tmp_path / CACHE_FILE).write_text("{not json")
    assert read_cached(tmp_path, key) is None
    write_cached(tmp_path, key, {**MEASURED, "tflops": None})
    assert read_cached(tmp_path, key) is None


def _fake_worker(calls: list, result: dict | None, timed_out: bool = False):
    def run_worker(task, impl, settings, timeout_s, **kw):
        calls.append(task)
        return WorkerOutcome(0 if result else -9, result, ["boom"], 0.1, timed_out=timed_out)
    return run_worker


def test_measured_peak_runs_the_worker_once_then_reads_the_cache(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(run_peak, "run_worker", _fake_worker(calls, MEASURED))
    first = run_peak.measured_peak(tmp_path, Settings(tf32=True), "gpu")
    assert first["cached"] is False and first["tflops"] == 1.5
    assert calls == [PeakTask(tf32=True, device="gpu")]
    second = run_peak.measured_peak(tmp_path, Settings(tf32=True), "gpu")
    assert second["cached"] is True and second["tflops"] == 1.5 and len(calls) == 1
    assert "(cached)" in peak_text(second)
    run_peak.measured_peak(tmp_path, Settings(tf32=True), "gpu", refresh=True)
    assert len(calls) == 2


def test_a_failed_measurement_is_reported_and_not_cached(tmp_path, monkeypatch):
    calls: list = []
    err = {"status": "error", "error_type": "ModuleNotFoundError", "message": "needs torch or jax"}
    monkeypatch.setattr(run_peak, "run_worker", _fake_worker(calls, err))
    out = run_peak.measured_peak(tmp_path, Settings(), "cpu")
    assert out["tflops"] is None and "needs torch or jax" in out["error"] and out["cached"] is False
    assert not (tmp_path / CACHE_FILE).exists()
    monkeypatch.setattr(run_peak, "run_worker", _fake_worker(calls, None, timed_out=True))
    assert "timed out" in run_peak.measured_peak(tmp_path, Settings(), "cpu", timeout_s=3)["error"]
    assert peak_text(out).startswith("not measured")


# --------------------------------------------------------------------------- the real measurement


def test_cpu_peak_measured_in_a_worker_with_the_cells_environment(tmp_path):
    pytest.importorskip("torch")
    out = run_peak.measured_peak(tmp_path, Settings(), "cpu", size=128, repeats=2, timeout_s=120)
    assert out.get("error") is None, out
    assert out["tflops"] > 0 and out["size"] == 128 and len(out["seconds"]) == 2 and out["cached"] is False
    assert out["dtype"] == "float32" and out["tf32"] is False and out["device_kind"] == "cpu"
    assert out["framework"].startswith("torch ") and out["device"].startswith("CPU: ")
    if os.environ.get("OMP_NUM_THREADS"):  # the worker inherits the thread setting the cells get
        assert out["threads"] == int(os.environ["OMP_NUM_THREADS"])
    assert run_peak.measured_peak(tmp_path, Settings(), "cpu", size=128, repeats=2)["cached"] is True


def test_gpu_request_without_a_visible_gpu_falls_back_cleanly(monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the fallback is for machines without one")
    from impls.peak import measure_matmul_peak

    out = measure_matmul_peak(PeakTask(size=32, repeats=1, tf32=True, device="gpu"))
    assert out["device_kind"] == "cpu" and out["tf32"] is False and "tf32_off" not in out
    assert "sees none" in out["note"] and "TF32 applies only on a GPU" in out["note"]
    with pytest.raises(ValueError, match="device"):
        measure_matmul_peak(PeakTask(size=32, repeats=1, device="tpu"))


# --------------------------------------------------------------------------- report


def _row(impl: str, median_s: float, **extra) -> dict:
    fp = {"hostname": "vm", "cpu_model": "Test CPU", "gpus": [], "git_commit": "abc", "pinned_settings": {}}
    row = {"schema_version": 1, "run_id": "20261124-100000-abcdef", "cell_key": f"{impl}-{median_s}",
           "impl": impl, "row": impl, "spec_name": "dense", "spec_hash": "h", "kmer": 7, "batch": 64, "repeat": 0,
           "steps": 50, "scenario": None, "status": "ok", "failure_kind": "ok", "failure_message": "",
           "stderr_tail": [], "fingerprint": fp, "settings": {}, "compile_s": 1.0, "device_kind": "cpu",
           "step_stats": {"median_s": median_s, "q1_s": median_s, "q3_s": median_s, "mean_s": median_s,
                          "ci95_low_s": median_s * 0.99, "ci95_high_s": median_s * 1.01},
           "memory": {"peak_bytes": 2**28}, "leak": {"verdict": "no leak"}}
    row.update(extra)
    return row


def test_report_shows_tflops_mfu_and_the_peak_line(tmp_path):
    peak = {**MEASURED, "tflops": 0.2}
    fp = {"hostname": "vm", "cpu_model": "Test CPU", "gpus": [], "git_commit": "abc", "matmul_peak": peak}
    new = _row("torch", 0.07, fingerprint=fp, flops={"per_step": 7.2e9, "matmul_per_step": 7.0e9},
               tflops={"step": 0.1029, "device_step": 0.1029, "matmul_step": 0.1, "matmul_device_step": 0.1},
               mfu={"step": 0.5, "device_step": 0.5}, matmul_peak_tflops=0.2)
    # MFU from the fingerprint's peak when the runner stored none in the row
    derived = _row("flax", 0.14, fingerprint=fp, tflops={"step": 0.0514, "matmul_step": 0.05})
    old = _row("keras-jax", 0.2)  # a stored row from before FLOP counts
    out = build_report([new, derived, old], out_root=tmp_path / "out", run_id="flops", plots=False)
    md = (out / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| impl"))
    assert "| TFLOP/s |" in header and "| MFU |" in header
    cols = [c.strip() for c in header.strip("|").split("|")]
    t, m = cols.index("TFLOP/s"), cols.index("MFU")

    def cells(impl: str) -> list[str]:
        line = next(x for x in md.splitlines() if x.startswith(f"| {impl} "))
        return [c.strip() for c in line.strip("|").split("|")]

    assert cells("torch")[t] == "0.1" and cells("torch")[m] == "50.0%"
    assert cells("flax")[t] == "0.05" and cells("flax")[m] == "25.0%"
    assert cells("keras-jax")[t] == "—" and cells("keras-jax")[m] == "—"
    peak_line = next(x for x in md.splitlines() if x.startswith("| matmul peak"))
    assert "0.2 TFLOP/s" in peak_line and "512x512 float32" in peak_line and "CPU: test" in peak_line


def test_report_of_old_rows_says_the_peak_was_not_measured(tmp_path):
    out = build_report([_row("torch", 0.05)], out_root=tmp_path / "out", run_id="old", plots=False)
    md = (out / "report.md").read_text()
    assert "| matmul peak | not measured in this run (no MFU) |" in md
    assert Path(out / "report.html").exists()
