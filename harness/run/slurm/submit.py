"""Cells into Slurm job arrays through submitit: one array per set of requested parameters.

Why arrays grouped by request: Slurm schedules an array's tasks with one set of sbatch parameters, and a matrix's
cells differ in what they ask for (a batch of 4,096 needs more memory than one of 64). Cells asking the same share
an array, so a GPU matrix is a handful of ``sbatch`` calls, not one per cell, and ``--slurm-parallelism`` caps
each array's running tasks (``%N``). Every submitted cell is written to the run's job list,
``<results>/slurm/<run-id>/jobs.jsonl``, before anything is waited for: a submitting process that dies leaves a
list that ``--resume`` reads to wait on the jobs still queued instead of submitting their cells twice.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.run.slurm.collect import Submitted
from harness.run.slurm.node import NodeCell, run_on_node
from harness.run.slurm.params import SlurmOptions, cell_params, executor_params, group_key
from harness.store import StoreError

REPO_ROOT = Path(__file__).resolve().parents[3]


class SubmitFailed(StoreError):
    """sbatch refused an array (a partition, memory or time the cluster cannot give): one line, exit 2."""
JOBS_FILE = "jobs.jsonl"


def slurm_dir(root: str | Path, run_id: str) -> Path:
    """submitit's folder for a run (pickles, sbatch scripts, logs), beside its rows on the shared filesystem."""
    return Path(root) / "slurm" / run_id


def python_setup(options: SlurmOptions) -> tuple[str, ...]:
    """The user's setup lines, then the repository on ``PYTHONPATH``: the job's Python unpickles
    ``harness.run.slurm.node.run_on_node`` from the checkout the submitting process runs (on a shared filesystem),
    whether or not its venv has vaebench installed."""
    return (*options.setup, f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}")


def submit_cells(work: list[tuple[NodeCell, dict[str, Any]]], folder: Path, options: SlurmOptions, run_id: str,
                 executor_cls: Any = None) -> list[Submitted]:
    """Submit every ``(NodeCell, row base)``; returns one :class:`Submitted` per cell, each also appended to the
    run's job list. ``executor_cls`` is submitit's ``SlurmExecutor`` unless a test passes another."""
    if executor_cls is None:
        import submitit

        executor_cls = submitit.SlurmExecutor
    device = "gpu" if options.gpus_per_task else "cpu"
    groups: dict[tuple, list[tuple[NodeCell, dict[str, Any], dict[str, Any]]]] = {}
    for node_cell, base in work:
        estimate = (node_cell.verdict or {}).get("estimate_bytes")
        params = cell_params(estimate, node_cell.cell.timeout_s, device, options)
        groups.setdefault(group_key(params), []).append((node_cell, base, params))
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Submitted] = []
    setup_options = replace(options, setup=python_setup(options))
    for items in groups.values():
        kwargs = {"python": options.python} if options.python else {}
        executor = executor_cls(folder=folder, max_num_timeout=0, **kwargs)
        executor.update_parameters(**executor_params(items[0][2], setup_options, f"vaebench-{run_id}", len(items)))
        try:
            jobs = executor.map_array(run_on_node, [node_cell for node_cell, _, _ in items])
        except Exception as exc:  # noqa: BLE001 - submitit's FailedJobError carries sbatch's own words
            said = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            running = f"; the {len(out)} cell(s) submitted before it run on, and --resume collects them" if out else ""
            raise SubmitFailed(f"sbatch refused an array of {len(items)} cell(s) (--mem={items[0][2]['mem']}, "
                               f"--time={items[0][2]['time']} min): {said}{running}") from None
        batch = [Submitted(node_cell.cell.key, node_cell.cell.label, str(job.job_id), node_cell.part,
                           _log_path(job), base) for (node_cell, base, _), job in zip(items, jobs, strict=True)]
        record(folder, batch)
        out.extend(batch)
        print(f"slurm: submitted {len(batch)} cell(s) as array {batch[0].job_id.split('_')[0]} "
              f"(--mem={items[0][2]['mem']}, --time={items[0][2]['time']} min)", file=sys.stderr)
    return out


def _log_path(job: Any) -> str | None:
    try:
        return str(job.paths.stdout)
    except Exception:  # noqa: BLE001 - a test's stand-in job has no paths; the log is only for the failed row
        return None


def record(folder: Path, jobs: list[Submitted]) -> None:
    """Append the submitted cells to the run's job list (one JSON line each, fsynced)."""
    import os

    with open(folder / JOBS_FILE, "a") as f:
        for job in jobs:
            f.write(json.dumps(job.to_json(), default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def recorded(folder: Path) -> dict[str, Submitted]:
    """The run's job list: the latest job of each cell, by cell key."""
    path = folder / JOBS_FILE
    out: dict[str, Submitted] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
            out[data["cell_key"]] = Submitted(**data)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash: that cell is submitted again
    return out
