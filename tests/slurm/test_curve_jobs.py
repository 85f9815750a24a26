"""The curves' Slurm jobs without a cluster: a result pickle is read as the worker's outcome, and a job that left the
queue without one ends, after the stated wait, as an outcome naming Slurm's state, never as a hang."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import harness.run.slurm.states as states
from harness.run.launch import WorkerOutcome
from harness.run.slurm.curve_jobs import SlurmCurves
from harness.run.slurm.params import SlurmOptions


def _job(tmp_path: Path, job_id: str, result=None) -> SimpleNamespace:
    paths = SimpleNamespace(result_pickle=tmp_path / f"{job_id}_result.pkl", stdout=tmp_path / f"{job_id}.out")
    if result is not None:
        paths.result_pickle.write_bytes(pickle.dumps(result))
    paths.stdout.write_text("slurmstepd: error: *** JOB 7 CANCELLED ***\n")
    return SimpleNamespace(job_id=job_id, paths=paths)


def test_a_pickled_outcome_is_the_curve_and_a_died_job_is_named_after_the_wait(tmp_path, monkeypatch):
    runner = SlurmCurves(SlurmOptions(died_wait_s=0.0, poll_s=0.01), tmp_path, "run")
    done = WorkerOutcome(0, {"status": "ok", "loss": [1.0]}, [], 2.5)
    assert runner._outcome(_job(tmp_path, "7_0", ("success", done))) == done
    failed = runner._outcome(_job(tmp_path, "7_1", ("error", "Traceback ...\nMemoryError: boom\n")))
    assert failed.result is None and "MemoryError: boom" in failed.stderr_tail[0]
    monkeypatch.setattr(states, "queued_states", lambda: {})  # it has left the queue
    monkeypatch.setattr(states, "ended_state", lambda job_id: states.JobState(job_id, "CANCELLED", None, "vm"))
    died = runner._outcome(_job(tmp_path, "7_2"))
    assert "Slurm job 7_2 ended CANCELLED on vm without a result" in died.stderr_tail[0]
    assert "CANCELLED" in died.stderr_tail[-1]
