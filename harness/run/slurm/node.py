"""What a Slurm array task runs on its node: the cell in the same worker as the local launcher, its row a part file.

submitit pickles :func:`run_on_node` and one :class:`NodeCell`, and the node's Python (``--slurm-python``, or the
submitting interpreter on a shared filesystem) calls it. It takes the node's own fingerprint (its GPU model and
driver, its CPU; a cluster's nodes differ), measures the matmul peak there when the run wants MFU, then runs
``harness.run.runner.run_one``: the worker process, the classifier and the row are the local launcher's, so the
rows of the two launchers differ only in where they ran (``harness.placement``).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from harness.row import DEFAULT_PRECISION

SLURM_LAUNCHER = "slurm"


@dataclass
class NodeCell:
    """One array task's work: the cell, the preflight verdict the submitting process took for it, and where its
    row goes."""

    cell: Any  # harness.run.runner.Cell (not imported here: the package stays light to import)
    verdict: dict | None
    part: str
    peak: bool = False
    memory_limit_bytes: int | None = None


def slurm_placement(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Where this process runs, from the variables Slurm sets in a job: node, job id (``ARRAY_TASK`` form for an
    array task, as ``squeue`` prints it), array job id and task index."""
    env = os.environ if environ is None else environ
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array_job}_{task}" if array_job and task is not None else env.get("SLURM_JOB_ID")
    return {"launcher": SLURM_LAUNCHER, "node": env.get("SLURMD_NODENAME") or socket.gethostname(),
            "job_id": job_id, "array_job_id": array_job, "array_task_id": int(task) if task is not None else None}


def node_fingerprint(cell: Any, peak: bool) -> dict[str, Any]:
    """The node's fingerprint, with its matmul peak in the cell's precision when ``peak`` (cached per machine by
    ``harness.run.peak``, so each node times it once)."""
    from harness.measure.fingerprint import machine_fingerprint

    fingerprint = machine_fingerprint(cell.spec.settings)
    device = "gpu" if fingerprint.get("gpus") else "cpu"
    if peak and not (cell.precision == "tf32" and device == "cpu"):
        from harness.run.peak import measured_peak

        fingerprint["matmul_peaks"] = {cell.precision: measured_peak(cell.spec.settings, device)}
        fingerprint["matmul_peak"] = fingerprint["matmul_peaks"][cell.precision]
    return fingerprint


def row_base(cell, verdict: dict | None) -> dict[str, Any]:
    """The identity fields of a cell's row (as ``run_one`` writes them), for a row written without a job."""
    from harness.adapter import impl_label

    base = {"cell_key": cell.key, "impl": cell.impl, "row": impl_label(cell.impl), "spec_name": cell.spec.name,
            "spec_hash": cell.spec.hash, "kmer": cell.kmer, "input_length": cell.spec.input_length,
            "batch": cell.batch, "repeat": cell.repeat, "steps": cell.steps, "scenario": cell.scenario,
            "precision": cell.precision or DEFAULT_PRECISION, "launcher": SLURM_LAUNCHER,
            "inject_leak_bytes": cell.inject_leak_bytes, "data": cell.data, "columns": cell.columns,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": cell.spec.to_dict()["settings"]}
    if verdict is not None:
        base["preflight"] = verdict
    return base


class NearTimeLimit(Exception):
    """Slurm's SIGUSR2: the job's time limit is ``SIGNAL_DELAY_S`` away (``harness.run.slurm.params``)."""


def _near_time_limit(signum, frame):  # noqa: ARG001
    raise NearTimeLimit


def run_on_node(job: NodeCell) -> str:
    """Run one cell here and write its row to ``job.part``; returns the part's path (submitit pickles it too).

    Slurm warns with SIGUSR2 before the time limit (``--signal=USR2@15``). submitit's own handler would requeue,
    or fail the job without a row; this one stops the worker (``run_worker`` kills its group however it is left)
    and writes the cell's failed row, ``slurm_timeout``, while there is time."""
    import signal

    from harness.run.runner import run_one
    from harness.run.slurm.parts import write_part

    verdict, start = job.verdict, time.monotonic()
    previous = signal.signal(signal.SIGUSR2, _near_time_limit)
    try:
        row = run_one(job.cell, node_fingerprint(job.cell, job.peak),
                      preflight=(lambda _cell: verdict) if verdict is not None else None,
                      memory_limit_bytes=job.memory_limit_bytes)
    except NearTimeLimit:
        row = {**row_base(job.cell, verdict), "status": "failed", "failure_kind": "slurm_timeout",
               "failure_message": "Slurm's time limit came before the cell ended: the worker was stopped at Slurm's "
                                  "warning (SIGUSR2); raise --slurm-time, or lower --steps or --timeout",
               "failure_phase": None, "returncode": None, "stderr_tail": [],
               "wall_s": round(time.monotonic() - start, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    finally:
        signal.signal(signal.SIGUSR2, previous)
    row.update(slurm_placement())
    write_part(job.part, row)
    return job.part
