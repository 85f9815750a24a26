"""``--launcher slurm`` against the real one-node Slurm that ``tests/slurm/start.sh`` starts (skipped without it).

Cells are the numpy-only plug-ins of ``tests/fixtures/planted.py`` (a worker starts in under a second), so the
time is Slurm's own: submission, scheduling at one-second polls, and the stated wait (``--slurm-wait 2``) after a
job left the queue without a row. The cluster enforces ``--mem`` (jobacct_gather OverMemoryKill), so a planted
cell that allocates past its request (``--slurm-mem 800MiB``: a numpy worker and submitit's process take ~0.2 GB;
the planted cell touches up to 3 GiB) is killed by Slurm, as on a real cluster, while the others finish.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fixtures.paths import REPO
from fixtures.slurm_cli import bench, bench_env

from harness.store import load_rows

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("slurm")]

PLANTED = "tests/fixtures/planted.py"
FAST = ("--spec", "dense", "--kmer", "3", "--no-peak", "--no-progress", "--launcher", "slurm", "--slurm-wait", "2")


def rows_of(results: Path, run_id: str, latest: bool = True):
    return load_rows(results / f"{run_id}.jsonl", latest=latest)


def test_ok_rows_carry_their_job_and_a_memory_hog_is_killed_by_slurm(tmp_path):
    results = tmp_path / "results"
    out = bench("run", "--impl", f"{PLANTED}:NumpyVAE,{PLANTED}:MemoryHogVAE", "--batch", "16,32", "--steps", "5",
                "--timeout", "60", "--slurm-mem", "800MiB", "--results", str(results), "--run-id", "mem", *FAST)
    assert out.returncode == 1, out.stderr
    rows = rows_of(results, "mem")
    assert len(rows) == 4
    ok = [r for r in rows if r.ok]
    hogs = [r for r in rows if not r.ok]
    assert [r.impl.endswith("NumpyVAE") for r in ok] == [True, True], [r.outcome.failure_message for r in rows]
    for r in ok:  # one array: each row names its job, its array task and its node, and the node's fingerprint
        assert r.identity.launcher == "slurm" and r.placement.job_id == f"{r.placement.array_job_id}_" \
            f"{r.placement.array_task_id}"
        assert r.placement.node and r.fingerprint["hostname"]
    for r in hogs:
        assert r.impl.endswith("MemoryHogVAE") and r.outcome.failure_kind == "slurm_out_of_memory"
        assert "exceeded memory limit" in r.outcome.failure_message, r.outcome.failure_message
        assert r.placement.slurm_state or r.outcome.failure_kind
    assert len({r.placement.array_job_id for r in rows}) == 1, "one request, one array"


def _wait_for_running(job_name: str, deadline_s: float = 60) -> str:
    """The array id of ``job_name`` once one of its tasks runs."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-r", "-n", job_name, "-o", "%i %T"], capture_output=True, text=True)
        running = [line.split()[0] for line in out.stdout.splitlines() if line.endswith("RUNNING")]
        if running:
            return running[0].split("_")[0]
        time.sleep(0.3)
    raise AssertionError(f"no task of {job_name} ran within {deadline_s} s")


def _slow_run(results: Path, run_id: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--impl", f"{PLANTED}:SlowVAE", "--batch", "8,16,32,64",
            "--steps", "10", "--no-preflight", "--results", str(results), "--run-id", run_id, *FAST, *extra]


def _each_cell_once_and_ok(results: Path, run_id: str) -> list:
    latest = rows_of(results, run_id)
    assert len(latest) == 4 and all(r.ok for r in latest), [r.outcome.failure_message for r in latest]
    assert len({r.identity.cell_key for r in latest}) == 4
    return rows_of(results, run_id, latest=False)


def test_scancel_mid_run_then_resume_runs_the_cancelled_cells_again(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.Popen(_slow_run(results, "cx"), cwd=REPO, env=bench_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    array = _wait_for_running("vaebench-cx")
    subprocess.run(["scancel", array], check=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    cancelled = [r for r in rows_of(results, "cx") if not r.ok]
    assert cancelled and {r.outcome.failure_kind for r in cancelled} == {"slurm_cancelled"}, err
    assert all("CANCELLED" in r.outcome.failure_message and r.placement.job_id for r in cancelled)
    again = bench(*_slow_run(results, "cx", "--resume")[3:], timeout=90)
    assert again.returncode == 0, again.stderr
    every = _each_cell_once_and_ok(results, "cx")
    counts = Counter(r.identity.cell_key for r in every)
    assert sum(n - 1 for n in counts.values()) == len(cancelled), "exactly the cancelled cells ran again"


def test_resume_merges_what_a_killed_submitting_process_left(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.Popen(_slow_run(results, "kd"), cwd=REPO, env=bench_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_running("vaebench-kd")
    listed = results / "slurm" / "kd" / "jobs.jsonl"
    deadline = time.monotonic() + 30
    while not (listed.is_file() and len(listed.read_text().splitlines()) == 4):  # the job list is written after sbatch
        assert time.monotonic() < deadline, "the job list was not written"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # the jobs run on; their rows wait in part files
    proc.communicate(timeout=10)
    again = bench(*_slow_run(results, "kd", "--resume")[3:], timeout=90)
    assert again.returncode == 0, again.stderr
    every = _each_cell_once_and_ok(results, "kd")
    assert len(every) == 4, "no cell ran twice: the queued jobs were waited on, not submitted again"
    assert "slurm: submitted" not in again.stderr, again.stderr
    jobs = [json.loads(line) for line in (results / "slurm" / "kd" / "jobs.jsonl").read_text().splitlines()]
    assert len(jobs) == 4


def test_a_node_python_without_the_framework_is_one_line_and_exit_2(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    results = tmp_path / "results"
    out = bench("run", "--impl", "torch", "--batch", "16", "--steps", "3", "--results", str(results), "--run-id", "py",
                "--slurm-python", str(bare / "bin" / "python"), *FAST)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("vaebench:")]
    assert len(lines) == 1 and "torch (needed by impl torch)" in lines[0], out.stderr
    assert not list((results / "slurm" / "py").glob("*_submission.sh")), "no array was submitted"


def test_a_sweep_on_slurm_runs_each_probe_as_a_job_and_finds_the_limit(tmp_path):
    results = tmp_path / "results"
    out = bench("sweep", "--impl", f"{PLANTED}:FailsAboveVAE", "--start", "300", "--max-batch", "301", "--spec",
                "dense", "--kmer", "3", "--results", str(results), "--run-id", "sw", "--launcher", "slurm",
                "--slurm-wait", "2", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["max_ok"] == 300
    probes = rows_of(results, "sw")
    assert [r.identity.batch for r in probes] == [300, 301]
    assert all(r.identity.launcher == "slurm" and r.placement.job_id for r in probes)


@pytest.mark.parametrize("flags, said", [(("--slurm-partition", "nosuch"), "Invalid partition name"),
                                         (("--slurm-mem", "9000GB"), "Requested node configuration")],
                         ids=["partition", "memory"])
def test_a_request_the_cluster_refuses_is_one_line_and_exit_2(tmp_path, flags, said):
    out = bench("run", "--impl", f"{PLANTED}:NumpyVAE", "--batch", "16", "--steps", "3", "--results",
                str(tmp_path / "r"), "--run-id", "no", *FAST, *flags)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("vaebench: error:") and said in last, out.stderr


def test_curves_run_as_a_job_array_and_come_back_judged_and_stored(tmp_path):
    """``curves --launcher slurm``: the curves' workers run as one array on the node (the same worker as local), each
    curve comes back through submitit's result, is judged and stored as locally; the inputs sit under the run's
    Slurm folder on the shared filesystem."""
    results = tmp_path / "results"
    impl = f"{PLANTED}:NumpyVAE"
    out = bench("curves", "--impl", impl, "--reference", impl, "--spec", "dense", "--kmer", "3", "--steps", "6",
                "--every", "2", "--batch", "8", "--results", str(results), "--run-id", "cur", "--launcher", "slurm",
                "--slurm-wait", "2", "--json")
    assert out.returncode in (0, 1), out.stderr
    records = json.loads(out.stdout)
    assert [r["curve"]["impl"] for r in records] == ["numpy", "numpy (1 ulp)"], out.stderr
    assert all(r["curve"]["loss"] and r["curve"]["error"] is None for r in records), records
    assert "slurm: submitted 2 curve(s) as array" in out.stderr
    assert list((results / "slurm" / "cur" / "curves").glob("curves-b8-*/inputs.npz"))
    assert (results / "curves" / "cur.jsonl").is_file()
