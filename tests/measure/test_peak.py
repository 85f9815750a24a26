"""The matmul peak (harness.measure.peak, harness.run.peak, impls.peak): the best rate among the installed
frameworks, cached per machine, naming the framework that set it; MFU over it; and the report's peak line
and its finding when one framework is far below another."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from fixtures.paths import REPO

from harness.measure import peak as measure_peak
from harness.measure.peak import (
    CACHE_FILE,
    combine_peaks,
    default_cache_dir,
    mfu_fields,
    peak_key,
    peak_text,
    read_cached,
    slow_frameworks,
    write_cached,
)
from harness.run import peak as run_peak
from harness.run.launch import WorkerOutcome
from harness.run.task import PeakTask, task_from_json
from harness.spec.schema import Settings
from reports.build import build_report

REFERENCE = REPO / "reports" / "reference" / "cpu" / "k7-2core-cpu" / "results.jsonl"
MEASURED = {"status": "ok", "tflops": 1.5, "seconds": [0.1, 0.11, 0.1], "median_s": 0.1, "device": "CPU: test",
            "device_kind": "cpu", "dtype": "float32", "tf32": False, "size": 512, "framework": "torch 2.x",
            "threads": 1, "method": "torch 512x512 float32 A@B, median of 3"}
#: the figures of issue 21's AMD EPYC 2-core machine: torch (MKL) 0.203, a jitted JAX product 0.427 TFLOP/s
EPYC = {"torch": 0.203, "jax": 0.427}


def _entry(framework: str, tflops: float | None, kind: str = "cpu", **extra) -> dict:
    """One framework's figure as a worker returns it, its timings consistent with its rate."""
    if tflops is None:
        return {"tflops": None, "error": f"{framework} failed", "cached": False}
    median = 2 * 2048**3 / (tflops * 1e12)
    return {**MEASURED, "tflops": tflops, "framework": f"{framework} 1.0", "device_kind": kind,
            "method": f"{framework} 2048x2048 float32 A@B", "size": 2048, "median_s": median,
            "seconds": [median * 1.05, median, median * 0.98], "cached": False, **extra}


def test_peak_task_round_trips_through_json():
    task = PeakTask(size=64, repeats=2, tf32=True, device="gpu", framework="jax")
    back = task_from_json(json.loads(json.dumps(task.to_json())))
    assert isinstance(back, PeakTask) and back == task
    assert PeakTask().device == "auto" and PeakTask().size is None and PeakTask().framework is None


# --------------------------------------------------------------------------- cache


def test_cache_is_keyed_by_device_threads_tf32_and_framework_versions(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(measure_peak, "framework_versions", lambda name: {name: "1.0"})
    key = peak_key(Settings(), "cpu", framework="torch")
    assert key["env"]["OMP_NUM_THREADS"] == "1" and key["tf32"] is False and key["cpu_model"]
    assert key["framework"] == "torch" and key["versions"] == {"torch": "1.0"} and key["dtype"] == "float32"
    assert read_cached(tmp_path, key) is None  # no file yet
    entry = write_cached(tmp_path, key, MEASURED)
    assert "status" not in entry and entry["key"] == key and entry["measured_at"]
    assert read_cached(tmp_path, key)["tflops"] == 1.5
    assert read_cached(tmp_path, peak_key(Settings(tf32=True), "cpu", framework="torch")) is None
    assert read_cached(tmp_path, peak_key(Settings(), "cpu", size=128, framework="torch")) is None
    assert read_cached(tmp_path, peak_key(Settings(), "cpu", framework="jax")) is None
    monkeypatch.setattr(measure_peak, "framework_versions", lambda name: {name: "2.0"})  # an upgrade
    assert read_cached(tmp_path, peak_key(Settings(), "cpu", framework="torch")) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    other = peak_key(Settings(), "cpu", framework="torch")
    write_cached(tmp_path, other, {**MEASURED, "tflops": 3.0, "threads": 2})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(measure_peak, "framework_versions", lambda name: {name: "1.0"})
    assert read_cached(tmp_path, key)["tflops"] == 1.5  # both entries kept
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())) == 2


def test_the_cache_is_per_machine_with_an_override(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEBENCH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "vaebench"
    monkeypatch.setenv("VAEBENCH_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_unreadable_or_unwritable_cache_is_a_miss(tmp_path):
    key = peak_key(Settings(), "cpu")
    (tmp_path / CACHE_FILE).write_text("{not json")
    assert read_cached(tmp_path, key) is None
    write_cached(tmp_path, key, {**MEASURED, "tflops": None})
    assert read_cached(tmp_path, key) is None
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert write_cached(blocked / "sub", key, MEASURED)["tflops"] == 1.5  # returned, just not kept


# --------------------------------------------------------------------------- one worker per framework


def _fake_worker(calls: list, rates: dict[str, float | list | None], timed_out: bool = False):
    """A stand-in for run_worker: each framework's task answers with its rate (a list: one per round in
    turn; None: a failed worker)."""
    def run_worker(task, impl, settings, timeout_s, **kw):
        calls.append(task)
        rate = rates.get(task.framework)
        if isinstance(rate, list):
            rate = rate[sum(t.framework == task.framework for t in calls) - 1]
        if rate is None:
            return WorkerOutcome(-9, None, ["boom"], 0.1, timed_out=timed_out)
        return WorkerOutcome(0, {**_entry(task.framework, rate), "status": "ok", "size": task.size or 2048}, [], 0.1)
    return run_worker


def test_the_peak_is_the_best_framework_and_names_it(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(run_peak, "run_worker", _fake_worker(calls, EPYC))
    peak = run_peak.measured_peak(Settings(), "cpu", cache_dir=tmp_path, frameworks=["torch", "jax"])
    # torch read far below jax, so both were timed a second time before the gap was believed
    assert [t.framework for t in calls] == ["torch", "jax", "torch", "jax"]
    assert calls[0].size is None and {t.size for t in calls[1:]} == {2048}  # all time the first one's product
    assert peak["frameworks"]["torch"]["rounds_tflops"] == [0.203, 0.203]
    assert peak["tflops"] == max(EPYC.values()) == 0.427
    assert peak["set_by"] == "jax" and peak["framework"] == "jax 1.0" and peak["cached"] is False
    assert {n: f["tflops"] for n, f in peak["frameworks"].items()} == EPYC
    assert all(f["counted"] and "key" not in f for f in peak["frameworks"].values())
    text = peak_text(peak)
    assert text.startswith("0.427 TFLOP/s") and "set by jax, the fastest of: torch 0.203, jax 0.427 TFLOP/s" in text
    # the same order the other way round: the max, not the last or the first
    peak = run_peak.measured_peak(Settings(), "cpu", cache_dir=tmp_path / "2", frameworks=["jax", "torch"])
    assert peak["set_by"] == "jax" and peak["tflops"] == 0.427


def test_each_framework_is_measured_once_per_machine_then_read_from_the_cache(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(run_peak, "run_worker", _fake_worker(calls, {"torch": 0.4, "jax": 0.427}))
    run_peak.measured_peak(Settings(tf32=True), "gpu", cache_dir=tmp_path, frameworks=["torch"])
    assert calls == [PeakTask(tf32=True, device="gpu", framework="torch")]
    second = run_peak.measured_peak(Settings(tf32=True), "gpu", cache_dir=tmp_path, frameworks=["torch", "jax"])
    assert [t.framework for t in calls] == ["torch", "jax"]  # torch's figure came from the cache
    assert second["frameworks"]["torch"]["cached"] is True and second["frameworks"]["jax"]["cached"] is False
    third = run_peak.measured_peak(Settings(tf32=True), "gpu", cache_dir=tmp_path, frameworks=["torch", "jax"])
    assert len(calls) == 2 and third["cached"] is True and "(cached)" in peak_text(third)
    run_peak.measured_peak(Settings(tf32=True), "gpu", cache_dir=tmp_path, frameworks=["torch", "jax"], refresh=True)
    assert len(calls) == 4


def test_remeasure_peak_on_run_and_matrix_times_the_cached_peak_again(tmp_path, monkeypatch):
    """A peak timed while the machine was busy is too low and would stay cached: ``--remeasure-peak`` (on
    ``run`` and ``matrix``) reaches ``measured_peak(refresh=True)``. The fake peak stops the run before any
    worker starts."""
    from bench.parser import build_parser
    from harness.run import runner
    from harness.spec.presets import preset
    from harness.store import ResultStore

    class Stop(Exception):
        pass

    asked: list[bool] = []

    def fake_peak(settings, device, refresh=False):
        asked.append(refresh)
        raise Stop

    monkeypatch.setattr(runner, "measured_peak", fake_peak)
    for verb in ("run", "matrix"):
        args = [verb, "--kmer", "3"]
        assert build_parser().parse_args([*args, "--remeasure-peak"]).remeasure_peak is True
        assert build_parser().parse_args(args).remeasure_peak is False
    cells = runner.plan_cells(["torch"], [preset("dense", 32)], 3, [8], steps=3, timeout_s=60.0)
    for refresh in (False, True):
        with pytest.raises(Stop):
            runner.run_matrix(cells, ResultStore(tmp_path, f"r{refresh}"), progress=False, peak=True,
                              refresh_peak=refresh)
    assert asked == [False, True]


def test_a_gap_is_timed_again_and_a_load_spike_does_not_survive_it(tmp_path, monkeypatch):
    calls: list = []
    # torch's first round met a neighbour's load (0.1); its second ran at full speed (0.41)
    monkeypatch.setattr(run_peak, "run_worker", _fake_worker(calls, {"torch": [0.1, 0.41], "jax": [0.427, 0.42]}))
    peak = run_peak.measured_peak(Settings(), "cpu", cache_dir=tmp_path, frameworks=["torch", "jax"])
    assert [t.framework for t in calls] == ["torch", "jax", "torch", "jax"]
    assert peak["frameworks"]["torch"]["tflops"] == 0.41 and peak["frameworks"]["torch"]["rounds_tflops"] == [0.1, 0.41]
    assert peak["frameworks"]["jax"]["tflops"] == 0.427 and peak["set_by"] == "jax"  # each keeps its faster round
    assert slow_frameworks(peak) == []
    again = run_peak.measured_peak(Settings(), "cpu", cache_dir=tmp_path, frameworks=["torch", "jax"])
    assert len(calls) == 4 and again["cached"] is True  # the confirmed figures were cached
    assert again["frameworks"]["torch"]["tflops"] == 0.41


def test_a_suspect_made_by_the_best_ones_second_round_is_timed_again_too(tmp_path, monkeypatch):
    """This machine, run 1: torch's first round met load, so only JAX looked far below it; torch's second round
    then put TensorFlow far below as well, and TensorFlow gets its second round too."""
    calls: list = []
    rates = {"torch": [0.12, 0.22], "jax": [0.08, 0.10], "tensorflow": [0.1085, 0.20]}
    monkeypatch.setattr(run_peak, "run_worker", _fake_worker(calls, rates))
    peak = run_peak.measured_peak(Settings(), "cpu", cache_dir=tmp_path, frameworks=list(rates))
    assert [t.framework for t in calls] == ["torch", "jax", "tensorflow", "jax", "torch", "tensorflow"]
    assert [s["framework"] for s in slow_frameworks(peak)] == ["jax"]  # slow in both of its rounds
    # a second round that fails keeps the first, and the loop ends
    calls.clear()
    monkeypatch.setattr(run_peak, "run_worker", _fake_worker(calls, {"torch": [0.4, None], "jax": [0.1, None]}))
    peak = run_peak.measured_peak(Settings(), "cpu", cache_dir=tmp_path / "x", frameworks=["torch", "jax"])
    assert [t.framework for t in calls] == ["torch", "jax", "jax", "torch"] and peak["tflops"] == 0.4


def test_a_failed_framework_is_reported_and_not_cached(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(run_peak, "run_worker", _fake_worker(calls, {"torch": 0.2, "jax": None}))
    out = run_peak.measured_peak(Settings(), "cpu", cache_dir=tmp_path, frameworks=["torch", "jax"])
    assert out["tflops"] == 0.2 and out["set_by"] == "torch"
    assert out["frameworks"]["jax"]["tflops"] is None and "boom" in out["frameworks"]["jax"]["error"]
    assert "jax not measured" in peak_text(out)
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())) == 1  # torch's only
    monkeypatch.setattr(run_peak, "run_worker", _fake_worker(calls, {}, timed_out=True))
    none = run_peak.measured_peak(Settings(), "cpu", cache_dir=tmp_path / "x", frameworks=["jax"], timeout_s=3)
    assert none["tflops"] is None and "timed out" in none["error"] and none["cached"] is False
    assert peak_text(none).startswith("not measured")
    assert mfu_fields({"matmul_step": 0.1}, none)["mfu"]["step"] is None


def test_a_figure_from_the_other_device_is_kept_but_never_the_peak():
    entries = {"torch": _entry("torch", 50.0, "gpu"), "jax": _entry("jax", 0.4, "cpu", note="jax sees no GPU")}
    peak = combine_peaks(entries, "gpu")
    assert peak["set_by"] == "torch" and peak["device_kind"] == "gpu"
    assert peak["frameworks"]["jax"]["counted"] is False and "measured on the cpu" in peak["frameworks"]["jax"][
        "why_not_counted"]
    assert slow_frameworks(peak) == []  # 0.4 on a CPU is no finding about a GPU
    # no framework saw the GPU: the CPU figures are the peak, as the cells ran there too
    cpu_only = combine_peaks({"torch": _entry("torch", 0.2), "jax": _entry("jax", 0.4)}, "gpu")
    assert cpu_only["set_by"] == "jax" and cpu_only["device_kind"] == "cpu"


# --------------------------------------------------------------------------- MFU


def test_mfu_cannot_pass_100_percent_for_a_row_below_the_peak():
    """Issue 21: a flax row at 0.35 TFLOP/s read 172% MFU over torch's 0.203; over the best framework's it is below 1."""
    peak = combine_peaks({n: _entry(n, r) for n, r in EPYC.items()}, "cpu")
    for rate in (0.05, 0.203, 0.35, 0.427):  # every rate up to the peak
        mfu = mfu_fields({"matmul_step": rate, "matmul_device_step": rate}, peak, "cpu")
        assert mfu["mfu"]["step"] <= 1.0 and math.isclose(mfu["mfu"]["step"], rate / 0.427)
        assert mfu["matmul_peak_tflops"] == 0.427
    torch_only = combine_peaks({"torch": _entry("torch", EPYC["torch"])}, "cpu")
    assert mfu_fields({"matmul_step": 0.35}, torch_only)["mfu"]["step"] > 1  # what one framework's peak gave


def test_far_below_is_below_three_quarters_of_the_best_on_the_same_device():
    peak = combine_peaks({n: _entry(n, r) for n, r in EPYC.items()}, "cpu")
    (slow,) = slow_frameworks(peak)
    assert slow["framework"] == "torch" and slow["best"] == "jax" and math.isclose(slow["ratio"], 0.203 / 0.427)
    close = combine_peaks({"torch": _entry("torch", 0.33), "jax": _entry("jax", 0.427)}, "cpu")  # 0.77x
    assert slow_frameworks(close) == []
    assert slow_frameworks({"tflops": 0.2, "framework": "torch 2"}) == []  # a stored v1 peak: one framework
    # a median that a neighbour's load pulled down, with one product at full speed: no finding
    loaded = _entry("torch", 0.2)
    loaded["seconds"][0] = 2 * 2048**3 / 0.35e12
    assert slow_frameworks(combine_peaks({"torch": loaded, "jax": _entry("jax", 0.427)}, "cpu")) == []


# --------------------------------------------------------------------------- the real measurement


@pytest.mark.worker
def test_cpu_peak_of_each_installed_framework_measured_in_its_own_worker(tmp_path):
    frameworks = [f for f in ("torch", "jax") if measure_peak.importlib.util.find_spec(f)]
    if not frameworks:
        pytest.skip("neither torch nor jax is installed")
    out = run_peak.measured_peak(Settings(), "cpu", cache_dir=tmp_path, frameworks=frameworks, size=128, repeats=2,
                                 timeout_s=120)
    assert out.get("error") is None, out
    assert set(out["frameworks"]) == set(frameworks) and out["cached"] is False
    for name, f in out["frameworks"].items():
        assert f["tflops"] > 0 and f["size"] == 128 and len(f["seconds"]) == 2 and f["counted"], (name, f)
        assert f["framework"].startswith(f"{name} ") and f["device"].startswith("CPU: ") and f["dtype"] == "float32"
    assert out["tflops"] == max(f["tflops"] for f in out["frameworks"].values())
    assert out["framework"] == out["frameworks"][out["set_by"]]["framework"]
    if os.environ.get("OMP_NUM_THREADS") and "torch" in frameworks:  # the worker inherits the cells' threads
        assert out["frameworks"]["torch"]["threads"] == int(os.environ["OMP_NUM_THREADS"])
    again = run_peak.measured_peak(Settings(), "cpu", cache_dir=tmp_path, frameworks=frameworks, size=128, repeats=2)
    assert again["cached"] is True and again["tflops"] == out["tflops"]


def test_gpu_request_without_a_visible_gpu_falls_back_cleanly():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the fallback is for machines without one")
    from impls.peak import measure_matmul_peak

    out = measure_matmul_peak(PeakTask(size=32, repeats=1, tf32=True, device="gpu", framework="torch"))
    assert out["device_kind"] == "cpu" and out["tf32"] is False and "tf32_off" not in out
    assert "sees none" in out["note"] and "TF32 applies only on a GPU" in out["note"]
    with pytest.raises(ValueError, match="device"):
        measure_matmul_peak(PeakTask(size=32, repeats=1, device="tpu"))
    with pytest.raises(ValueError, match="framework"):
        measure_matmul_peak(PeakTask(size=32, repeats=1, device="cpu", framework="mxnet"))


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


def _report(rows: list[dict], tmp_path: Path, run_id: str) -> str:
    return (build_report(rows, out_root=tmp_path / "out", run_id=run_id, plots=False) / "report.md").read_text()


def _environment(md: str) -> str:
    return md[md.index("## Environment"):]


def test_report_shows_tflops_mfu_and_the_peak_line(tmp_path):
    peak = {**MEASURED, "tflops": 0.2}
    fp = {"hostname": "vm", "cpu_model": "Test CPU", "gpus": [], "git_commit": "abc", "matmul_peak": peak}
    new = _row("torch", 0.07, fingerprint=fp, flops={"per_step": 7.2e9, "matmul_per_step": 7.0e9},
               tflops={"step": 0.1029, "device_step": 0.1029, "matmul_step": 0.1, "matmul_device_step": 0.1},
               mfu={"step": 0.5, "device_step": 0.5}, matmul_peak_tflops=0.2)
    # MFU from the fingerprint's peak when the runner stored none in the row
    derived = _row("flax", 0.14, fingerprint=fp, tflops={"step": 0.0514, "matmul_step": 0.05})
    old = _row("keras-jax", 0.2)  # a stored row from before FLOP counts
    md = _report([new, derived, old], tmp_path, "flops")
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


def test_report_names_the_framework_that_set_the_peak_and_the_one_far_below(tmp_path):
    peak = combine_peaks({"torch": _entry("torch", 0.203, rounds_tflops=[0.198, 0.203]),
                          "jax": _entry("jax", 0.427, rounds_tflops=[0.427, 0.41])}, "cpu")
    fp = {"hostname": "vm", "cpu_model": "AMD EPYC", "gpus": [], "git_commit": "abc", "matmul_peak": peak}
    rows = [_row("torch", 0.07, fingerprint=fp, tflops={"matmul_step": 0.1}),
            _row("flax", 0.02, fingerprint=fp, tflops={"matmul_step": 0.35})]
    env = _environment(_report(rows, tmp_path, "far"))
    peak_line = next(x for x in env.splitlines() if x.startswith("| matmul peak"))
    assert "0.427 TFLOP/s" in peak_line and "set by jax, the fastest of: torch 0.203, jax 0.427 TFLOP/s" in peak_line
    (finding,) = [x for x in env.splitlines() if x.startswith("**Finding:**")]
    assert "torch 1.0's own float32 matmul (2048x2048 A@B) runs at 0.203 TFLOP/s (its rounds: 0.198, 0.203)" in finding
    assert "0.48x jax 1.0's 0.427 TFLOP/s" in finding
    md = _report(rows, tmp_path, "far2")
    mfu_col = [c.strip() for c in next(x for x in md.splitlines() if x.startswith("| impl")).strip("|").split("|")
               ].index("MFU")
    flax = [c.strip() for c in next(x for x in md.splitlines() if x.startswith("| flax ")).strip("|").split("|")]
    assert flax[mfu_col] == "82.0%"  # 0.35 / 0.427, not 172% over torch's figure
    close = combine_peaks({"torch": _entry("torch", 0.4), "jax": _entry("jax", 0.427)}, "cpu")
    rows = [_row("torch", 0.07, fingerprint={**fp, "matmul_peak": close})]
    assert "**Finding:**" not in _report(rows, tmp_path, "close")


def test_report_of_old_rows_says_the_peak_was_not_measured(tmp_path):
    out = build_report([_row("torch", 0.05)], out_root=tmp_path / "out", run_id="old", plots=False)
    md = (out / "report.md").read_text()
    assert "| matmul peak | not measured in this run (no MFU) |" in md
    assert Path(out / "report.html").exists()


def test_a_stored_single_framework_peak_reads_as_before():
    """The committed CPU reference's rows carry the v1 peak (torch's figure alone): its line is unchanged."""
    row = json.loads(REFERENCE.read_text().splitlines()[0])
    assert peak_text({**row["fingerprint"]["matmul_peak"], "cached": False}) == (
        "0.204 TFLOP/s on CPU: Intel(R) Xeon(R) Processor, 2 thread(s) (torch 2.13.0+cpu): torch 2048x2048 float32 "
        "A@B, 2n^3 FLOPs over the median of 5 synchronised wall-clock timings after 3 warm-up products, TF32 off")
    assert slow_frameworks(row["fingerprint"]["matmul_peak"]) == []
