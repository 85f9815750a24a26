"""Two independent timers, one figure: pytest-benchmark's median of the staged train step
(``bench/microbench/test_steps.py``) against the harness's ``device_step`` median, each in fresh
processes, at dense k=3 batch 64 with one thread per framework.

Shared by the test of the timers themselves (``tests/measure/test_timer_crosscheck.py``: the planted
numpy adapter, whose step is a fixed sleep, so the check holds on a loaded 2-core CI machine)
and the benchmark of the real builds (``bench/microbench/test_crosscheck.py``, run by
``nox -s microbench``: a framework's CPU step moves by 10-35% with a neighbour's load, so its
agreement is a measurement to record, not a unit test to gate a merge on).

The pairs run in ABBA order (timer, cell, cell, timer) so that a neighbour's load falls on
both; the figure is the ratio of the two medians of per-process medians. Further pairs (up to
``MAX_PAIRS``) are added only while the two disagree, to tell a systematic gap from a burst of load.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from harness.run.runner import Cell, run_one
from harness.run.schedule import steps_per_window
from harness.spec.presets import resolve_spec

ROOT = Path(__file__).resolve().parents[2]
KMER, BATCH, STEPS, ROUNDS = 3, 64, 160, 160
#: steps per pytest-benchmark round, one sync each: the cell's window (``steps_per_window(STEPS)``). A sync
#: after every step would time another thing on JAX: its dispatch thread and its compute thread would
#: never run at once, and on two loaded cores that alone moved the figure by 10-20%
PER_ROUND = steps_per_window(STEPS)
TOLERANCE = 0.10
#: pairs are added (up to this many) only while the medians disagree: a systematic gap survives
#: every added pair, a burst of load on the other core does not
MAX_PAIRS = 5
#: one thread per framework, as ``nox -s tests`` sets (noxfile.TEST_ENV): the timers are compared, not the cores
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
           "TF_NUM_INTEROP_THREADS": "1",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
           "CUDA_VISIBLE_DEVICES": "",
           # glibc's heap trimming otherwise decides, by the accident of allocation order, whether a
           # process re-faults PyTorch's step temporaries every step (thousands of page faults, up to
           # +60% on the step): pinned, both processes time the same allocator behaviour
           "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(128 * 2**20)}
#: how test_steps.py selects a built-in (Keras fixes its backend per process, so one impl per process)
SELECT = {"torch": ["-k", "torch and not keras"], "flax": ["-k", "flax"]}


def benchmark_median(impl: str, out_dir: Path, n: int) -> float:
    """pytest-benchmark's median of the staged step, from its JSON, in a fresh pytest process."""
    out = out_dir / f"bench-{n}.json"
    # a suite run under xdist leaves PYTEST_XDIST_* in the environment, and pytest-benchmark then
    # disables itself in the child ("xdist plugin is active") and writes no JSON
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env.update(VAEBENCH_STEP_KMER=str(KMER), VAEBENCH_STEP_BATCH=str(BATCH),
               VAEBENCH_STEP_ROUNDS=str(ROUNDS // PER_ROUND), VAEBENCH_STEP_WARMUP=str(20 // PER_ROUND),
               VAEBENCH_STEP_ITERATIONS=str(PER_ROUND))
    if impl in SELECT:
        select = SELECT[impl]
    else:  # a plug-in (``path.py:Class``) is benchmarked alone
        select = []
        env["VAEBENCH_STEP_IMPL"] = impl
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "bench/microbench/test_steps.py", *select, f"--benchmark-json={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"pytest-benchmark of {impl} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    (bench,) = json.loads(out.read_text())["benchmarks"]
    return bench["stats"]["median"]


def harness_median(impl: str) -> float:
    """The harness cell's ``device_step`` median, from a worker process of its own."""
    row = run_one(Cell(impl, resolve_spec("dense", kmer=KMER), KMER, BATCH, steps=STEPS, heap="off"), {})
    if row["status"] != "ok":
        raise RuntimeError(f"{impl} cell failed: {row['failure_kind']}: {row['failure_message']}")
    return row["device_step_stats"]["median_s"]


def compare(impl: str, out_dir: Path) -> tuple[float, list[float], list[float]]:
    """(ratio of harness to pytest-benchmark medians, harness medians, benchmark medians), ABBA."""
    for key, value in THREADS.items():
        os.environ[key] = value  # the cell's worker and the pytest process both inherit them
    bench: list[float] = []
    cell: list[float] = []
    for pair in range(MAX_PAIRS):
        if pair >= 2 and abs(statistics.median(cell) / statistics.median(bench) - 1) <= TOLERANCE:
            break
        if pair % 2 == 0:
            bench.append(benchmark_median(impl, out_dir, pair))
            cell.append(harness_median(impl))
        else:
            cell.append(harness_median(impl))
            bench.append(benchmark_median(impl, out_dir, pair))
    return statistics.median(cell) / statistics.median(bench), cell, bench


def describe(impl: str, ratio: float, cell: list[float], bench: list[float]) -> str:
    return (f"{impl}: harness device_step {[f'{c * 1e3:.2f}' for c in cell]} ms against pytest-benchmark "
            f"{[f'{b * 1e3:.2f}' for b in bench]} ms: ratio {ratio:.3f}")
