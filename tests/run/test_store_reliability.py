"""Nothing lost, nothing escapes: the results store's rules, through the store and through the real CLI.

* ``--results`` is created and probed before any worker starts; a path that cannot take results
  is one line, exit 2.
* A run id is a plain file name; anything else is one line, exit 2, and nothing is written.
* One writer per run: a second process on the same run stops with one line naming the holder's
  pid; a lock left by a SIGKILLed run does not block; an existing run needs ``--resume``.
* ``--resume`` skips ok and skipped cells and retries failed ones (``--keep-failed``: not); the
  latest row per cell wins for every reader.
* Exit codes: 0 all ok or skipped, 1 a cell failed (table and report still written), 2 usage,
  130 interrupt; a sweep fails only on a probe failure that is not a limit, or when nothing trained.

The CLI cases run ``python -m bench`` as subprocesses with the numpy-only adapters of
``tests/fixtures/planted.py``, so each cell is a worker of about a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fixtures.paths import REPO

from harness.run.sweep import SweepResult
from harness.store import (
    ResultsDirError,
    ResultStore,
    RunLocked,
    StoreError,
    check_results_dir,
    latest_rows,
    load_rows,
    read_rows,
    validate_run_id,
)

PLANTED = "tests/fixtures/planted.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def bench(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def run_args(results: Path, impls: str = "NumpyVAE", *extra: str, batch: str = "4", steps: str = "2") -> list[str]:
    impl = ",".join(f"{PLANTED}:{name}" for name in impls.split(","))
    return ["run", "--impl", impl, "--kmer", "3", "--steps", steps, "--batch", batch, "--no-progress",
            "--no-preflight", "--no-peak", "--results", str(results), *extra]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("vaebench: error: ")
    return lines[0]


def file_rows(path: Path) -> list[dict]:
    return list(read_rows(path)) if path.exists() else []


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ------------------------------------------------------------------------- 1. --results checked first


def _bad_results(tmp_path: Path, case: str) -> Path:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    return {"file": a_file, "under-file": a_file / "sub", "proc": Path("/proc/vaebench-x"),
            "sys": Path("/sys/vaebench-x")}[case]


@pytest.mark.parametrize("case", ["file", "under-file", "proc", "sys"])
def test_check_results_dir_names_path_and_reason(tmp_path, case):
    bad = _bad_results(tmp_path, case)
    with pytest.raises(ResultsDirError, match="cannot write results to") as info:
        check_results_dir(bad)
    assert str(bad) in str(info.value)


def test_check_results_dir_creates_and_leaves_no_probe(tmp_path):
    root = check_results_dir(tmp_path / "new" / "results")
    assert root.is_dir() and list(root.iterdir()) == []


@pytest.mark.worker
@pytest.mark.parametrize("verb", ["run", "sweep", "matrix"])
@pytest.mark.parametrize("case", ["file", "under-file", "proc"])
def test_unwritable_results_is_one_line_before_any_worker(tmp_path, verb, case):
    bad = _bad_results(tmp_path, case)
    impl = f"{PLANTED}:NumpyVAE"
    args = {"run": run_args(bad),
            "sweep": ["sweep", "--impl", impl, "--kmer", "3", "--start", "4", "--max-batch", "4", "--no-preflight",
                      "--results", str(bad)],
            "matrix": ["matrix", "--impl", impl, "--kmer", "3", "--cpu", "--no-progress", "--results", str(bad),
                       "--out", str(tmp_path / "out")]}[verb]
    line = one_error_line(bench(*args))
    assert f"cannot write results to {bad}" in line and "--results DIR" in line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- 2. run ids


@pytest.mark.parametrize("good", ["t1", "20261126-101010-abcdef", "my_run.v2", "A-b_C.d"])
def test_plain_run_ids_pass(good):
    assert validate_run_id(good) == good


@pytest.mark.parametrize("bad", ["../../escape", "a/b", "", ".", "..", ".hidden", "a b", "x\n", "/abs", "a" * 201])
def test_other_run_ids_are_refused_by_the_store(tmp_path, bad):
    with pytest.raises(StoreError, match="not a plain name"):
        ResultStore(tmp_path / "results", bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.worker
@pytest.mark.parametrize("bad", ["../../escape", "a/b", "", ".hidden"])
def test_bad_run_id_is_one_line_and_writes_nothing(tmp_path, bad):
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    before = sorted(p for p in tmp_path.parent.rglob("*") if tmp_path.name in str(p) or "escape" in p.name)
    line = one_error_line(bench(*run_args(work / "results", "NumpyVAE", "--run-id", bad)))
    assert "not a plain name" in line and repr(bad) in line
    assert not (work / "results").exists()
    after = sorted(p for p in tmp_path.parent.rglob("*") if tmp_path.name in str(p) or "escape" in p.name)
    assert after == before


# ---------------------------------------------------------------------------------- 3. the lock


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    first, second = ResultStore(tmp_path, "t1"), ResultStore(tmp_path, "t1")
    first.lock()
    assert first.lock_path.read_text().strip() == str(os.getpid())
    with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
        second.lock()
    with pytest.raises(RunLocked):
        second.append({"cell_key": "k", "status": "ok"})
    assert not second.path.exists()  # no row written
    first.append({"cell_key": "k", "status": "ok"})  # the holder writes on
    first.unlock()
    assert not first.lock_path.exists()
    second.append({"cell_key": "k2", "status": "ok"})
    assert [r["cell_key"] for r in second.rows()] == ["k", "k2"]


@pytest.mark.worker
def test_lock_of_a_sigkilled_process_does_not_block(tmp_path):
    code = ("import sys, time; from harness.store import ResultStore; ResultStore(sys.argv[1], 't1').lock(); "
            "print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            ResultStore(tmp_path, "t1").lock()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "t1.lock").read_text().strip() == str(holder.pid)  # stale file left behind
    store = ResultStore(tmp_path, "t1").lock()
    assert (tmp_path / "t1.lock").read_text().strip() == str(os.getpid())
    store.unlock()


@pytest.mark.worker
def test_existing_run_id_needs_resume_or_a_new_id(tmp_path):
    results = tmp_path / "results"
    first = bench(*run_args(results, "NumpyVAE", "--run-id", "t1"))
    assert first.returncode == 0, first.stderr
    rows = file_rows(results / "t1.jsonl")
    line = one_error_line(bench(*run_args(results, "NumpyVAE", "--run-id", "t1")))
    assert "t1" in line and "--run-id" in line and "--resume" in line
    assert file_rows(results / "t1.jsonl") == rows
    assert not (results / "t1.lock").exists()  # released on the error path too
    again = bench(*run_args(results, "NumpyVAE", "--run-id", "t1", "--resume"))
    assert again.returncode == 0, again.stderr
    assert "1 cell(s) skipped as done" in again.stderr
    assert file_rows(results / "t1.jsonl") == rows


@pytest.mark.worker
def test_keep_failed_without_resume_is_a_usage_error(tmp_path):
    line = one_error_line(bench(*run_args(tmp_path / "results", "NumpyVAE", "--keep-failed")))
    assert "--keep-failed" in line and "--resume" in line


@pytest.mark.worker
def test_two_concurrent_runs_on_one_run_id(tmp_path):
    results = tmp_path / "results"
    jsonl, lock = results / "t1.jsonl", results / "t1.lock"
    args = run_args(results, "SlowVAE", "--run-id", "t1", batch="8,16,32", steps="20")
    first = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.05)
        for extra in ([], ["--resume"]):
            line = one_error_line(bench(*args, *extra))
            assert f"pid {first.pid}" in line and "t1" in line
        assert first.poll() is None, "the first run ended before the second was refused: nothing was tested"
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    rows = file_rows(jsonl)
    assert sorted(r["batch"] for r in rows) == [8, 16, 32]
    assert max(Counter(r["cell_key"] for r in rows).values()) == 1
    assert not lock.exists()


# ------------------------------------------------------------------- 4. latest row wins, retries


def _row(key: str, status: str, run: str = "r1", **extra) -> dict:
    return {"run_id": run, "cell_key": key, "status": status, **extra}


def test_latest_row_per_cell_wins_in_first_seen_order():
    rows = [_row("a", "failed", n=1), _row("b", "ok", n=2), _row("a", "ok", n=3), _row("b", "ok", run="r2", n=4),
            {"no_key": True}]
    got = latest_rows(rows)
    assert [(r.get("cell_key"), r.get("n")) for r in got] == [("a", 3), ("b", 2), ("b", 4), (None, None)]


def test_store_and_loader_read_the_latest_row(tmp_path):
    store = ResultStore(tmp_path, "r1")
    for row in (_row("a", "failed"), _row("b", "skipped"), _row("c", "failed"), _row("a", "ok")):
        store.append(row)
    assert len(store.rows()) == 4  # the file keeps every row
    assert [(r["cell_key"], r["status"]) for r in store.latest_rows()] == [("a", "ok"), ("b", "skipped"),
                                                                            ("c", "failed")]
    assert [r["status"] for r in load_rows(store.path)] == ["ok", "skipped", "failed"]
    assert len(load_rows(store.path, latest=False)) == 4
    assert store.done_keys() == {"a", "b"}
    assert store.done_keys(keep_failed=True) == {"a", "b", "c"}


def test_a_torn_last_line_does_not_swallow_the_next_row(tmp_path):
    store = ResultStore(tmp_path, "r1")
    store.append(_row("a", "ok"))
    with open(store.path, "a") as f:
        f.write('{"schema_version": 1, "run_id": "r1", "cell_key": "b", "sta')  # power cut mid-write
    store.append(_row("b", "ok"))
    assert [r["cell_key"] for r in store.rows()] == ["a", "b"]


@pytest.mark.worker
def test_resume_retries_failed_cells_and_keep_failed_does_not(tmp_path):
    results = tmp_path / "results"
    jsonl = results / "t1.jsonl"
    args = run_args(results, "NumpyVAE,DeviceOOMVAE", "--run-id", "t1")
    first = bench(*args)
    assert first.returncode == 1, first.stderr
    assert "1 of 2 cells failed (device_oom)" in first.stderr
    assert "numpy" in first.stdout and "device_oom" in first.stdout  # the table prints in full

    kept = bench(*args, "--resume", "--keep-failed")
    assert kept.returncode == 1, kept.stderr
    assert "1 cell(s) skipped as done" in kept.stderr and "1 failed kept as done" in kept.stderr
    assert len(file_rows(jsonl)) == 2  # nothing ran

    retried = bench(*args, "--resume")
    assert retried.returncode == 1, retried.stderr
    assert "1 cell(s) skipped as done" in retried.stderr and "1 failed cell(s) retried" in retried.stderr
    rows = file_rows(jsonl)
    by_impl = Counter(r["impl"].rsplit(":", 1)[1] for r in rows)
    assert by_impl == {"NumpyVAE": 1, "DeviceOOMVAE": 2}  # the ok cell was not run again
    assert len(load_rows(jsonl)) == 2


@pytest.mark.worker
def test_timed_out_cell_is_retried_with_a_larger_timeout(tmp_path):
    results = tmp_path / "results"
    jsonl = results / "t1.jsonl"
    args = run_args(results, "SlowVAE", "--run-id", "t1", batch="8,16", steps="20")
    first = bench(*args, "--timeout", "0.5")
    assert first.returncode == 1, first.stderr
    assert [r["failure_kind"] for r in file_rows(jsonl)] == ["timeout", "timeout"]

    done = bench(*args, "--resume", "--timeout", "120")
    assert done.returncode == 0, done.stderr
    assert "2 failed cell(s) retried" in done.stderr
    rows = file_rows(jsonl)
    assert [r["status"] for r in rows] == ["failed", "failed", "ok", "ok"]  # old rows stay, in place
    latest = load_rows(jsonl)
    assert sorted(r["batch"] for r in latest) == [8, 16] and all(r["status"] == "ok" for r in latest)
    assert "timeout" not in done.stdout  # the final table shows the latest row per cell


# ------------------------------------------------------------------ 6. kill -9 mid-matrix, resume


def _workers(parent: int) -> list[tuple[int, Path]]:
    """The ``harness.run.worker`` processes under ``parent``, each with its scratch dir (its task file's folder)."""
    import psutil

    out = []
    for child in psutil.Process(parent).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "harness.run.worker" in cmd:
            out.append((child.pid, Path(cmd[-1]).parent))
    return out


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.worker
def test_kill9_mid_matrix_then_resume_runs_every_cell_once(tmp_path):
    results = tmp_path / "results"
    jsonl, lock = results / "t1.jsonl", results / "t1.lock"
    batches = [8, 16, 32, 64]
    args = run_args(results, "SlowVAE", "--run-id", "t1", batch=",".join(map(str, batches)), steps="20")
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 120
        while not file_rows(jsonl) or not _workers(proc.pid):
            assert proc.poll() is None, f"run ended before the first row: {proc.communicate()}"
            assert time.monotonic() < deadline, "no row within 120 s"
            time.sleep(0.05)
        orphans = _workers(proc.pid)  # the next cell's worker, which the kill leaves without a parent
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    kept = file_rows(jsonl)
    assert 1 <= len(kept) < len(batches), "killed too late to test anything"
    assert lock.exists()  # SIGKILL left the lock file; the kernel dropped the lock itself
    # issue 27: the orphaned worker ran on past its own timeout and left its /tmp/vaebench-* dir; it now sees its
    # parent gone within a second, removes its scratch dir and kills its own group
    deadline = time.monotonic() + 15
    while any(_alive(w) for w, _ in orphans) or any(d.exists() for _, d in orphans):
        assert time.monotonic() < deadline, ("orphaned workers still there 15 s after the parent died: "
                                             f"{[(w, _alive(w), d, d.exists()) for w, d in orphans]}")
        time.sleep(0.1)

    done = bench(*args, "--resume")
    assert done.returncode == 0, done.stderr
    assert f"{len(kept)} cell(s) skipped as done" in done.stderr
    final = file_rows(jsonl)
    assert Counter(r["cell_key"] for r in final).most_common(1)[0][1] == 1  # every cell exactly once
    assert sorted(r["batch"] for r in final) == batches and all(r["status"] == "ok" for r in final)
    assert final[: len(kept)] == kept
    assert not lock.exists()


# ---------------------------------------------------------------------------------- 5. exit codes


@pytest.mark.worker
def test_matrix_exits_1_on_a_failed_cell_and_still_writes_the_report(tmp_path):
    impl = f"{PLANTED}:NumpyVAE,{PLANTED}:DeviceOOMVAE"
    out = bench("matrix", "--kmer", "3", "--impl", impl, "--spec", "dense", "--batch", "8", "--cpu",
                "--budget-minutes", "0.5", "--results", str(tmp_path / "res"), "--run-id", "m1",
                "--out", str(tmp_path / "out"), "--no-progress")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "1 of 2 cells failed (device_oom)" in out.stderr
    report = Path(out.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert (report / "report.md").exists() and "DeviceOOMVAE" in out.stdout


def _sweep(name: str, kind: str | None, max_ok: int | None, outcomes: list[str]) -> SweepResult:
    return SweepResult(name, "dense", max_ok, None, kind, [{"batch": 2**i, "outcome": o} for i, o in enumerate(outcomes)])


@pytest.mark.parametrize(("outcomes", "max_ok", "fails"), [
    (["ok", "ok"], 2, False),                          # never hit a limit below --max-batch
    (["ok", "device_oom", "ok"], 4, False),            # a memory limit ends the search
    (["ok", "int32_overflow"], 1, False),
    (["ok", "timeout"], 1, False),
    (["ok", "host_oom", "skipped"], 1, False),
    (["ok", "crash_signal"], 1, True),                 # not a limit it searches for
    (["ok", "nan_loss"], 1, True),
    (["framework_missing"], None, True),
    (["device_oom"], None, True),                      # no batch trained at all
])
def test_sweep_failure_rule(outcomes, max_ok, fails):
    problem = _sweep("x", None, max_ok, outcomes).problem()
    assert (problem is not None) == fails, problem


@pytest.mark.worker
def test_sweep_exit_codes(tmp_path):
    common = ["--kmer", "3", "--no-preflight", "--timeout", "60"]
    found = bench("sweep", "--impl", f"{PLANTED}:FailsAboveVAE", "--start", "300", "--max-batch", "301", *common,
                  "--results", str(tmp_path / "a"))
    assert found.returncode == 0, found.stderr  # 300 ok, 301 device_oom: the limit it searched for
    nothing = bench("sweep", "--impl", f"{PLANTED}:DeviceOOMVAE", "--start", "1", "--max-batch", "1", *common,
                    "--results", str(tmp_path / "b"))
    assert nothing.returncode == 1, nothing.stderr
    assert "no batch trained" in nothing.stderr


@pytest.mark.parametrize("which", ["lock", "jsonl", "curves"])
def test_a_symlink_where_the_store_writes_is_refused_and_its_target_untouched(tmp_path, which):
    """Issue 27: a ``RUN.lock`` that was a link had the file it pointed to truncated and overwritten with the
    pid. The lock, the rows file and the curves file are opened with O_NOFOLLOW: one line, nothing written."""
    from harness.store import append_curves, curves_path

    results, target = tmp_path / "results", tmp_path / "precious.txt"
    results.mkdir()
    target.write_text("my data\n")
    store = ResultStore(results, "r1")
    link = {"lock": store.lock_path, "jsonl": store.path, "curves": curves_path(results, "r1")}[which]
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    with pytest.raises(StoreError, match="is a symbolic link; vaebench writes only regular files"):
        if which == "curves":
            append_curves(results, "r1", [{"impl": "torch"}])
        else:
            store.append({"row": "torch", "status": "ok"})
    assert target.read_text() == "my data\n"


def test_a_directory_where_the_lock_or_the_rows_go_is_one_line(tmp_path):
    store = ResultStore(tmp_path, "r1")
    store.lock_path.mkdir()
    with pytest.raises(StoreError, match="is a directory, where vaebench keeps a file"):
        store.lock()
    store.lock_path.rmdir()
    store.path.mkdir()
    with pytest.raises(StoreError, match="r1.jsonl is a directory, where vaebench keeps a file"):
        store.append({"row": "torch", "impl": "torch", "status": "ok", "run_id": "r1"})


def test_the_int32_probe_cache_is_not_read_as_rows_nor_picked_for_resume(tmp_path, capsys):
    """Issue 27: ``report DIR`` read ``int32-probes.jsonl`` as rows (the headline said every cell failed), and
    ``run --resume`` picked it as the latest run and appended a cell row to it."""
    from harness.store import NOT_ROWS, PROBE_CACHE_FILE

    store = ResultStore(tmp_path, "20261207-000000-aaaaaa")
    store.append({"row": "torch", "impl": "torch", "status": "ok", "run_id": store.run_id})
    probe = tmp_path / PROBE_CACHE_FILE
    probe.write_text('{"op": "dense", "framework": "torch", "fact": "ok"}\n')
    os.utime(probe)  # the newest file in the dir
    assert ResultStore.latest(tmp_path).run_id == store.run_id
    rows = load_rows(tmp_path)
    assert [r.identity.impl for r in rows] == ["torch"]
    said = capsys.readouterr().err
    assert f"skipped {probe}: {NOT_ROWS[PROBE_CACHE_FILE]}, not result rows" in said
