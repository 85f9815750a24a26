"""Where a cell's worker ran, a part of the typed row (``harness.row``): the node, and the Slurm job around it.

Why a part of its own: once cells run on a cluster (``--launcher slurm``, ``harness.run.slurm``), two rows of one
run can come from different nodes, and a died job's row has nothing but Slurm's word on what happened. The
launcher itself is part of the cell's identity (``Identity.launcher``); this part says where that launcher put it.
Every field is flat in the stored line (``job_id``, ``node``...), absent in rows written before it existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.row_part import _Part


@dataclass
class Placement(_Part):
    """The node a cell ran on and, under Slurm, its job: ``job_id`` as Slurm prints it (``481647_3`` for an
    array task), the array's own id and the task's index, and for a job that died without a row, Slurm's state
    (TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, CANCELLED...) and the job's log."""

    node: str | None = None
    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: int | None = None
    slurm_state: str | None = None
    slurm_log: str | None = None
    _present: frozenset = field(default=frozenset(), repr=False, compare=False)


def device_model(fingerprint: Mapping[str, Any] | None) -> str:
    """The device a row was measured on, from its fingerprint (the node's own under Slurm): the GPU model and
    driver, or the CPU model and core count. Rows whose device models differ must not share a table, and two runs
    that differ in it are not comparable as a regression: the report and ``compare`` can group and warn on this."""
    fp = fingerprint or {}
    gpus = [g for g in fp.get("gpus") or [] if isinstance(g, Mapping)]
    if gpus:
        names = sorted({str(g.get("name") or "GPU") for g in gpus})
        drivers = sorted({str(g.get("driver")) for g in gpus if g.get("driver")})
        return " + ".join(names) + (f" (driver {', '.join(drivers)})" if drivers else "")
    cores = fp.get("cpu_cores_logical")
    return f"CPU {fp.get('cpu_model') or 'unknown'}" + (f" ({cores} cores)" if cores else "")


def run_devices(rows) -> list[str]:
    """The device models a run's rows were measured on (failed rows too: they ran there), each once, in order."""
    return list(dict.fromkeys(device_model(getattr(r, "fingerprint", None) if not isinstance(r, Mapping)
                                           else r.get("fingerprint")) for r in rows))


def devices_differ(name_a: str, rows_a, name_b: str, rows_b) -> str | None:
    """One line saying that two runs were measured on different devices (``compare``), or None when they were not:
    a ratio between them then measures the device as well as the code."""
    a, b = run_devices(rows_a), run_devices(rows_b)
    if set(a) == set(b):
        return None
    return (f"the runs differ in device: {name_a} on {'; '.join(a)}, {name_b} on {'; '.join(b)}; their ratios "
            f"measure the device as well as the code")
