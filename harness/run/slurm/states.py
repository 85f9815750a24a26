"""Slurm's word on a job, without accounting: ``squeue`` while it is queued or running, ``scontrol show job`` after.

Why not ``sacct`` or submitit's ``job.state``: a cluster without slurmdbd (the test cluster here, and small
clusters in the wild) has no ``sacct``, and submitit then guesses from its result pickles. ``scontrol`` keeps a
finished job for ``MinJobAge`` seconds (300 by default) with its final state and reason; after that a job is
:data:`UNKNOWN`, and the collector fails its cell after a stated wait (``harness.run.slurm.collect``).
"""

from __future__ import annotations

import getpass
import re
import subprocess
from dataclasses import dataclass

#: states in which a job may still write its row
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"})
#: a job that left both squeue and scontrol's memory
UNKNOWN = "UNKNOWN"
#: seconds any one Slurm command may take before it counts as no answer
COMMAND_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str
    reason: str | None = None
    node: str | None = None
    exit_code: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def describe(self) -> str:
        """``OUT_OF_MEMORY (Reason=OutOfMemory, ExitCode=0:125) on node7``: Slurm's own words, for a row."""
        extra = ", ".join(x for x in (f"Reason={self.reason}" if self.reason and self.reason != "None" else "",
                                      f"ExitCode={self.exit_code}" if self.exit_code else "") if x)
        return self.state + (f" ({extra})" if extra else "") + (f" on {self.node}" if self.node else "")


def _run(args: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None


def queued_states() -> dict[str, JobState] | None:
    """Every job of this user that squeue shows, array tasks one by one (``-r``), by job id as squeue prints it
    (``12_3``); None when squeue gives no answer (the controller is down: wait, do not fail cells)."""
    out = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%r|%N"])
    if out is None or out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            states[parts[0]] = JobState(parts[0], parts[1], parts[2] or None, parts[3] or None)
    return states


_FIELD = re.compile(r"(\w+)=(\S*)")


def ended_state(job_id: str) -> JobState:
    """A job squeue no longer shows: its final state from ``scontrol show job``, or :data:`UNKNOWN`."""
    out = _run(["scontrol", "show", "job", job_id])
    if out is None or out.returncode != 0:
        return JobState(job_id, UNKNOWN)
    fields = dict(_FIELD.findall(out.stdout))
    node = fields.get("NodeList")
    return JobState(job_id, fields.get("JobState", UNKNOWN), fields.get("Reason"),
                    node if node and node != "(null)" else None, fields.get("ExitCode"))
