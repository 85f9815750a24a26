"""Waiting for a run's Slurm jobs: merge each row as its part appears, and fail each cell whose job died.

The loop is bounded: every ``poll_s`` it merges the parts present (``harness.run.slurm.parts``) and asks Slurm
for the jobs still pending (``harness.run.slurm.states``). A job that has left the queue without a part is given
``died_wait_s`` more (a shared filesystem can show a file late); then its cell gets a failed row with Slurm's
state (TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, CANCELLED...), the job id and the array task id, and the tail of the
job's log. A job whose state Slurm has forgotten (no accounting, past ``MinJobAge``) counts as ended too, so the
loop never waits on it for ever. When ``squeue`` gives no answer (a controller restart), the wait goes on, for at
most ``died_wait_s`` past the last answer, then the remaining jobs are asked of ``scontrol`` one by one.
"""

from __future__ import annotations

import re
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.run.slurm.parts import merge_part, stored_identities
from harness.run.slurm.states import JobState, ended_state, queued_states

#: what slurmstepd (jobacct_gather's OverMemoryKill) or the kernel's cgroup OOM killer writes in a job's log
MEMORY_KILL = re.compile(r"exceeded (job )?memory limit|oom[-_ ]kill|Out Of Memory|OUT_OF_MEMORY", re.IGNORECASE)
#: the failure kind of a cell whose job Slurm ended, by Slurm's state (``harness.diagnose.failures.KINDS``)
KIND_BY_STATE = {"OUT_OF_MEMORY": "slurm_out_of_memory", "TIMEOUT": "slurm_timeout", "DEADLINE": "slurm_timeout",
                 "NODE_FAIL": "slurm_node_fail", "BOOT_FAIL": "slurm_node_fail", "CANCELLED": "slurm_cancelled",
                 "PREEMPTED": "slurm_cancelled"}
#: what Slurm (``CANCELLED ... DUE TO TIME LIMIT``) or submitit (at Slurm's warning signal) writes at the time limit
TIME_LIMIT = re.compile(r"DUE TO TIME LIMIT|timed-out too many times", re.IGNORECASE)
LOG_TAIL_LINES = 30


@dataclass
class Submitted:
    """A cell in a Slurm job: what the collector needs, also written to the run's job list so that ``--resume``
    can wait on a job a died submitting process left running (``harness.run.slurm.submit``)."""

    cell_key: str
    label: str
    job_id: str
    part: str
    log: str | None
    #: the identity fields of the cell's row, for the failed row of a job that died
    base: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def log_tail(path: str | None, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path or "", errors="replace") as f:
            return list(deque((line.rstrip("\n") for line in f), maxlen=lines))
    except OSError:
        return []


def memory_line(tail: list[str]) -> str | None:
    """The log line in which Slurm (or the kernel) says the job passed its memory, if any."""
    return next((line.strip() for line in tail if MEMORY_KILL.search(line)), None)


def died_kind(state: JobState, tail: list[str]) -> str:
    """The failure kind of a job that ended without a row: memory first (OverMemoryKill leaves the job FAILED or
    CANCELLED, with the reason only in its log), then Slurm's state."""
    if state.state == "OUT_OF_MEMORY" or memory_line(tail):
        return "slurm_out_of_memory"
    if any(TIME_LIMIT.search(line) for line in tail):
        return "slurm_timeout"
    return KIND_BY_STATE.get(state.state.split()[0], "slurm_died")


def died_row(job: Submitted, state: JobState, waited_s: float) -> dict[str, Any]:
    """The failed row of a cell whose job ended without writing one."""
    from harness.run.slurm.node import SLURM_LAUNCHER

    tail = log_tail(job.log)
    kind = died_kind(state, tail)
    said = memory_line(tail)
    message = (f"Slurm ended job {job.job_id} {state.describe()} without the cell's row (waited {waited_s:.0f} s "
               f"for it after the job left the queue)" + (f"; the job's log: {said}" if said else "")
               + (f"; log {job.log}" if job.log else ""))
    array_job, _, task = job.job_id.partition("_")
    return {**job.base, "status": "failed", "failure_kind": kind, "failure_message": message,
            "failure_phase": None, "returncode": None, "stderr_tail": tail, "wall_s": 0.0,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "launcher": SLURM_LAUNCHER, "job_id": job.job_id,
            "array_job_id": array_job if task else None, "array_task_id": int(task) if task.isdigit() else None,
            "node": state.node, "slurm_state": state.state, "slurm_log": job.log}


def with_memory_kill(row: dict[str, Any], job: Submitted) -> dict[str, Any]:
    """A part whose worker was killed mid-cell, where the job's log says Slurm killed the step for its memory:
    the worker's parent saw only a SIGKILL, Slurm says why."""
    if row.get("status") != "failed" or row.get("failure_kind") not in ("crash_signal", "host_oom", "error"):
        return row
    said = memory_line(log_tail(job.log))
    if not said:
        return row
    return {**row, "failure_kind": "slurm_out_of_memory",
            "failure_message": f"Slurm killed job {job.job_id}'s step for its memory: {said}; the worker saw "
                               f"{row.get('failure_kind')}: {row.get('failure_message')}"}


def collect(store, jobs: list[Submitted], append: Callable[[dict[str, Any]], None], died_wait_s: float = 30.0,
            poll_s: float = 1.0, on_row: Callable[[Submitted, dict[str, Any]], None] | None = None,
            clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> list[dict]:
    """Wait for every job in ``jobs``; each cell ends with exactly one new row, merged with ``append`` (the caller
    holds the store's lock). Returns the new rows in the order they were stored."""
    pending = {j.cell_key: j for j in jobs}
    stored = stored_identities(store)
    left_queue: dict[str, float] = {}
    last_answer = clock()
    rows: list[dict[str, Any]] = []

    def done(job: Submitted, row: dict[str, Any]) -> None:
        rows.append(row)
        pending.pop(job.cell_key, None)
        if on_row:
            on_row(job, row)

    def _merged(job: Submitted) -> bool:
        """Merge the job's part if it is there; True when the cell needs nothing more."""
        part = Path(job.part)
        if not part.exists():
            return False
        row = merge_part(store, part, stored, lambda r: append(with_memory_kill(r, job)))
        if row is not None:
            done(job, with_memory_kill(row, job))
            return True
        if not part.exists():  # already stored (a merge cut short before its unlink)
            pending.pop(job.cell_key, None)
            return True
        return False

    while pending:
        for job in list(pending.values()):
            _merged(job)
        if not pending:
            break
        queued = queued_states()
        now = clock()
        if queued is not None:
            last_answer = now
        elif now - last_answer < died_wait_s:
            sleep(poll_s)
            continue
        for job in list(pending.values()):
            if queued is not None and job.job_id in queued:
                left_queue.pop(job.cell_key, None)
                continue
            since = left_queue.setdefault(job.cell_key, now)
            if now - since < died_wait_s and not (queued is None and now - last_answer >= died_wait_s):
                continue
            state = ended_state(job.job_id)
            if state.active:
                left_queue.pop(job.cell_key, None)
                continue
            if not _merged(job):  # a part that arrived since the pass above is the row; otherwise the job died
                row = died_row(job, state, now - since)
                append(row)
                done(job, row)
        if pending:
            sleep(poll_s)
    return rows


def say(job: Submitted, row: dict[str, Any]) -> None:
    """One stderr line per finished cell (the Slurm launcher's progress)."""
    where = " ".join(x for x in (f"job {row.get('job_id')}" if row.get("job_id") else "",
                                 f"on {row.get('node')}" if row.get("node") else "") if x)
    status = row.get("status") if row.get("status") == "ok" else row.get("failure_kind")
    message = "" if row.get("status") == "ok" else f": {str(row.get('failure_message'))[:160]}"
    print(f"{status} {job.label} ({where}){message}", file=sys.stderr)

