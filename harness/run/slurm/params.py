"""The sbatch parameters of a cell: what it asks Slurm for, and why that much.

Memory is the one request a wrong guess turns into a dead job (Slurm kills a step past its ``--mem``), so it comes
from the cell's own preflight estimate (``harness.diagnose.preflight``), times :data:`MEM_MARGIN`, on top of
:data:`RUNTIME_HOST_BYTES` for the interpreter, the framework's import and the job's own Python. On a GPU the
estimate is of device memory, which ``--mem`` does not cover, so there the request is the runtime alone.
Cells that request the same parameters share one job array (``harness.run.slurm.submit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: the preflight estimate is a model of the training step's tensors; allocator slack, the data pipeline's buffers
#: and the leak phase's ring come on top of it (measured peaks ran up to 1.3x the estimate on the reference runs)
MEM_MARGIN = 1.5
#: host RAM of everything the estimate does not model: the interpreter, the framework's import and runtime
#: (torch's import is ~0.4 GiB of RSS, JAX's and TensorFlow's more) and submitit's process around the worker
RUNTIME_HOST_BYTES = 2 * 2**30
#: the Slurm time limit beyond the cell's own timeout: the job's Python start, submitit's pickles, the fingerprint
TIME_SLACK_MIN = 2
#: requests are rounded up to this many MiB, so that cells whose estimates differ by a few MiB (two batches of a
#: small model) share one job array instead of one array each
MEM_ROUND_MIB = 256
#: seconds Slurm waits between SIGTERM/SIGUSR2 and SIGKILL at the time limit (submitit's default is 90)
SIGNAL_DELAY_S = 15


@dataclass(frozen=True)
class SlurmOptions:
    """The ``--slurm-*`` flags. ``time_min`` None takes each cell's ``--timeout`` plus :data:`TIME_SLACK_MIN`;
    ``mem_bytes`` None takes the estimate (a fixed request overrides it for every cell); ``python`` None is this
    interpreter, which must then be on a filesystem the nodes share."""

    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    time_min: int | None = None
    parallelism: int | None = None
    setup: tuple[str, ...] = field(default_factory=tuple)
    python: str | None = None
    mem_bytes: int | None = None
    #: seconds a job that left Slurm's queue is waited for before its cell gets a failed row without a part file
    #: (a shared filesystem can show a file late); see ``harness.run.slurm.collect``
    died_wait_s: float = 30.0
    #: seconds between two looks at the queue and the parts folder
    poll_s: float = 1.0


def mem_request_bytes(estimate_bytes: int | None, device: str, options: SlurmOptions) -> int:
    """``--mem`` for a cell: ``options.mem_bytes`` if given, else the runtime plus the host estimate times the
    margin (a CPU cell's estimate is host memory; a GPU cell's is device memory and adds nothing here)."""
    if options.mem_bytes:
        return int(options.mem_bytes)
    host_estimate = (estimate_bytes or 0) if device == "cpu" else 0
    return int(RUNTIME_HOST_BYTES + MEM_MARGIN * host_estimate)


def time_request_min(timeout_s: float, options: SlurmOptions) -> int:
    """Slurm's time limit in minutes: ``--slurm-time``, or the cell's timeout rounded up plus the slack."""
    if options.time_min:
        return int(options.time_min)
    return int(math.ceil(timeout_s / 60.0)) + TIME_SLACK_MIN


def cell_params(estimate_bytes: int | None, timeout_s: float, device: str, options: SlurmOptions) -> dict[str, Any]:
    """The submitit ``SlurmExecutor`` parameters of one cell (hashable values, so cells can be grouped on them);
    ``mem`` as sbatch writes it, in MiB (``2150M``)."""
    mem_mb = int(math.ceil(mem_request_bytes(estimate_bytes, device, options) / 2**20))
    if not options.mem_bytes:
        mem_mb = int(math.ceil(mem_mb / MEM_ROUND_MIB)) * MEM_ROUND_MIB
    params: dict[str, Any] = {
        "mem": f"{mem_mb}M", "time": time_request_min(timeout_s, options), "cpus_per_task": options.cpus_per_task,
        "ntasks_per_node": 1, "nodes": 1, "signal_delay_s": SIGNAL_DELAY_S, "stderr_to_stdout": True,
    }
    if options.partition:
        params["partition"] = options.partition
    if options.gpus_per_task:
        params["gpus_per_task"] = options.gpus_per_task
    return params


def executor_params(group: dict[str, Any], options: SlurmOptions, job_name: str, n_cells: int) -> dict[str, Any]:
    """A group's parameters as ``SlurmExecutor.update_parameters`` takes them: the cells' own, the setup lines
    (``module load ...``, run before the worker) and how many array tasks may run at once."""
    params = dict(group)
    params["job_name"] = job_name
    if options.setup:
        params["setup"] = list(options.setup)
    params["array_parallelism"] = max(1, min(options.parallelism or n_cells, n_cells))
    return params


def group_key(params: dict[str, Any]) -> tuple:
    """The cells whose parameters are equal share a job array."""
    return tuple(sorted(params.items()))
