"""Collecting rows from Slurm jobs without a cluster: part files, died jobs, and the bounded wait.

Slurm's answers are stood in for (``queued_states`` and ``ended_state``) and time is a fake clock, so every path of
``harness.run.slurm.collect`` runs in milliseconds: a part merged once however often it is seen, a job that left
the queue without a part failed after the stated wait with Slurm's state, a memory kill named from the job's log,
and a controller that stops answering never hangs the loop.
"""

from __future__ import annotations

import json

import pytest

from harness.run.slurm import collect as collect_mod
from harness.run.slurm.collect import Submitted, collect, died_kind
from harness.run.slurm.parts import merge_part, part_path, stored_identities, write_part
from harness.run.slurm.states import JobState
from harness.store import ResultStore

OOM_LINE = "slurmstepd-vm: error: StepId=9.0 exceeded memory limit (2589351936 > 2415919104), being killed"


def row(key: str, status: str = "ok", **extra) -> dict:
    return {"cell_key": key, "impl": "numpy", "spec_name": "dense", "spec_hash": "h", "batch": 16, "repeat": 0,
            "steps": 5, "status": status, "failure_kind": "ok" if status == "ok" else "error", "launcher": "slurm",
            "job_id": f"7_{key[-1]}", "started_at": "2026-12-07T20:00:00+0000", **extra}


class FakeSlurm:
    """squeue shows ``queued`` until the clock passes ``leaves_at``; scontrol then says ``final``."""

    def __init__(self, jobs: dict[str, str], leaves_at: float = 0.0, answers: bool = True) -> None:
        self.now, self.jobs, self.leaves_at, self.answers = 0.0, jobs, leaves_at, answers

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        assert self.now < 1000, "the collector waited for ever"

    def queued(self):
        if not self.answers:
            return None
        return {j: JobState(j, "RUNNING") for j in self.jobs} if self.now < self.leaves_at else {}

    def ended(self, job_id: str) -> JobState:
        return JobState(job_id, self.jobs[job_id], "NonZeroExitCode", "vm", "137:0")


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path, "r1")
    with s.writing():
        yield s


def submitted(store, key: str, log=None) -> Submitted:
    return Submitted(key, f"cell {key}", f"7_{key[-1]}", str(part_path(store.root, store.run_id, key)),
                     str(log) if log else None, {"cell_key": key, "impl": "numpy", "batch": 16, "repeat": 0})


def run_collect(store, jobs, slurm: FakeSlurm, monkeypatch, wait: float = 5.0):
    monkeypatch.setattr(collect_mod, "queued_states", slurm.queued)
    monkeypatch.setattr(collect_mod, "ended_state", slurm.ended)
    return collect(store, jobs, store.append, died_wait_s=wait, poll_s=1.0, clock=slurm.clock, sleep=slurm.sleep)


def test_a_part_is_merged_once_however_often_it_is_seen(store):
    path = part_path(store.root, store.run_id, "k1")
    write_part(path, row("k1"))
    stored = stored_identities(store)
    assert merge_part(store, path, stored, store.append)["cell_key"] == "k1"
    assert not path.exists()
    write_part(path, row("k1"))  # the merger died between its append and its unlink: the part is still there
    assert merge_part(store, path, stored_identities(store), store.append) is None
    assert not path.exists() and len(store.rows()) == 1


def test_parts_become_rows_and_died_jobs_failed_rows_after_the_wait(store, tmp_path, monkeypatch):
    log = tmp_path / "7_2_0_log.out"
    log.write_text("submitit INFO starting\n" + OOM_LINE + "\n")
    jobs = [submitted(store, "k1"), submitted(store, "k2", log), submitted(store, "k3")]
    write_part(jobs[0].part, row("k1"))
    slurm = FakeSlurm({"7_1": "COMPLETED", "7_2": "FAILED", "7_3": "CANCELLED"}, leaves_at=3.0)
    rows = run_collect(store, jobs, slurm, monkeypatch, wait=5.0)
    by_key = {r["cell_key"]: r for r in rows}
    assert by_key["k1"]["status"] == "ok"
    oom, cancelled = by_key["k2"], by_key["k3"]
    assert oom["failure_kind"] == "slurm_out_of_memory" and "FAILED" in oom["failure_message"]
    assert "exceeded memory limit" in oom["failure_message"] and oom["slurm_state"] == "FAILED"
    assert oom["job_id"] == "7_2" and oom["array_task_id"] == 2 and oom["array_job_id"] == "7"
    assert cancelled["failure_kind"] == "slurm_cancelled" and cancelled["launcher"] == "slurm"
    assert slurm.now >= 3.0 + 5.0, "a job that left the queue is waited for the stated time"
    assert sorted(r.identity.cell_key for r in store.latest_rows()) == ["k1", "k2", "k3"]


def test_a_controller_that_stops_answering_never_hangs_the_loop(store, monkeypatch):
    jobs = [submitted(store, "k1")]
    rows = run_collect(store, jobs, FakeSlurm({"7_1": "UNKNOWN"}, answers=False), monkeypatch, wait=4.0)
    assert rows[0]["failure_kind"] == "slurm_died" and "UNKNOWN" in rows[0]["failure_message"]


def test_died_kind_reads_the_state_then_the_log():
    assert died_kind(JobState("1", "OUT_OF_MEMORY"), []) == "slurm_out_of_memory"
    assert died_kind(JobState("1", "FAILED"), [OOM_LINE]) == "slurm_out_of_memory"
    assert died_kind(JobState("1", "TIMEOUT"), []) == "slurm_timeout"
    assert died_kind(JobState("1", "NODE_FAIL"), []) == "slurm_node_fail"
    assert died_kind(JobState("1", "CANCELLED by 0"), []) == "slurm_cancelled"
    assert died_kind(JobState("1", "FAILED"), ["Traceback"]) == "slurm_died"
    # submitit fails the job at Slurm's warning signal, before Slurm can say TIMEOUT
    said = "submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many times."
    assert died_kind(JobState("1", "FAILED"), [said]) == "slurm_timeout"


def test_a_worker_killed_by_slurm_for_memory_is_named_so(store, tmp_path, monkeypatch):
    log = tmp_path / "log.out"
    log.write_text(OOM_LINE + "\n")
    job = submitted(store, "k1", log)
    write_part(job.part, row("k1", "failed", failure_kind="crash_signal", failure_message="SIGKILL"))
    rows = run_collect(store, [job], FakeSlurm({"7_1": "FAILED"}), monkeypatch)
    assert rows[0]["failure_kind"] == "slurm_out_of_memory"
    assert json.loads(store.path.read_text().splitlines()[0])["failure_kind"] == "slurm_out_of_memory"
