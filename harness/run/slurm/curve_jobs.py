"""The training curves on Slurm: each curve's worker as one array task, the same worker as the local launcher's.

``harness.run.curves.train_curves`` starts one worker per curve through ``harness.run.launch.run_worker``. Here a
batch of curves becomes one submitit job array whose tasks call that same ``run_worker`` on their node; each task
returns the worker's outcome through submitit's result pickle, and the curves are handed over in order as their
tasks end, so the caller stores each as before. What the workers read (the shared weights, held-out rows and
scaling, and the training rows, ``harness.run.curve_data``) must then be on a filesystem the nodes share: the
inputs go under ``<results>/slurm/<run-id>/curves/``, and the synthetic rows' cache (``$VAEBENCH_CACHE_DIR``,
default ``~/.cache/vaebench``) must be shared too.

A task that dies (cancelled, out of memory, past its time) gives its curve an error line with Slurm's word for
it (after ``--slurm-wait`` once it has left the queue without a result), and the next curve is still collected: a
curve is never lost silently, and never waited on forever.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from harness.run.slurm.params import SlurmOptions, cell_params, executor_params
from harness.run.slurm.submit import python_setup


def run_on_node(task: Any, impl: str, settings: Any, timeout_s: float) -> Any:
    """The array task's body: the same worker process as the local launcher (``run_worker``), on this node."""
    from harness.run.launch import run_worker

    return run_worker(task, impl, settings, timeout_s)


class SlurmCurves:
    """Runs a list of curve workers as one job array; ``run_all`` yields their outcomes in order."""

    def __init__(self, options: SlurmOptions, folder: Path, run_id: str, executor_cls: Any = None) -> None:
        self.options, self.folder, self.run_id = options, Path(folder), run_id
        self.executor_cls = executor_cls

    def run_all(self, calls: list[tuple[Any, str, Any, float]]) -> Iterator[Any]:
        """``calls``: (task, impl, settings, timeout_s) per curve; yields each ``WorkerOutcome`` (or an outcome
        carrying why its job died) in the order given."""

        if self.executor_cls is None:
            import submitit

            self.executor_cls = submitit.SlurmExecutor
        self.folder.mkdir(parents=True, exist_ok=True)
        device = "gpu" if self.options.gpus_per_task else "cpu"
        params = cell_params(None, max(c[3] for c in calls), device, self.options)
        kwargs = {"python": self.options.python} if self.options.python else {}
        executor = self.executor_cls(folder=self.folder, max_num_timeout=0, **kwargs)
        setup = replace(self.options, setup=python_setup(self.options))
        executor.update_parameters(**executor_params(params, setup, f"vaebench-curves-{self.run_id}", len(calls)))
        jobs = executor.map_array(run_on_node, *[list(col) for col in zip(*calls, strict=True)])
        print(f"slurm: submitted {len(jobs)} curve(s) as array {str(jobs[0].job_id).split('_')[0]} "
              f"(--mem={params['mem']}, --time={params['time']} min)", file=sys.stderr)
        for job in jobs:
            yield self._outcome(job)

    def _outcome(self, job: Any) -> Any:
        """The job's ``WorkerOutcome`` from its result pickle, read once the pickle is there; while squeue shows the
        job, wait; once it has left the queue without a pickle, wait ``died_wait_s`` more (a shared filesystem can
        show a file late), then an outcome naming Slurm's state (``scontrol``) and the job's log. Never submitit's
        own ``result()``: without accounting it polls ``sacct`` with a warning on stdout each time, and a job that
        died without a pickle would keep it waiting."""
        import time

        from harness.run.launch import WorkerOutcome
        from harness.run.slurm.collect import log_tail
        from harness.run.slurm.states import ended_state, queued_states

        left_at = None
        while True:
            if job.paths.result_pickle.exists():
                try:
                    outcome, result = _read_result(job.paths.result_pickle)
                except Exception:  # noqa: BLE001 - a pickle half written: read it on the next look
                    outcome = None
                if outcome == "success":
                    return result
                if outcome == "error":
                    return WorkerOutcome(None, None, [f"Slurm job {job.job_id}: {str(result).strip().splitlines()[-1]}"],
                                         0.0)
            queued = queued_states()
            if queued is not None and str(job.job_id) not in queued:
                left_at = left_at if left_at is not None else time.monotonic()
                if time.monotonic() - left_at > self.options.died_wait_s:
                    state = ended_state(str(job.job_id))
                    tail = log_tail(str(job.paths.stdout))
                    return WorkerOutcome(None, None, [f"Slurm job {job.job_id} ended {state.describe()} without a "
                                                      f"result after {self.options.died_wait_s:.0f} s",
                                                      *tail[-3:]], 0.0)
            time.sleep(self.options.poll_s)


def _read_result(path: Path) -> tuple[str, Any]:
    """submitit's result pickle: ("success", value) or ("error", traceback text)."""
    import pickle

    with open(path, "rb") as f:
        return pickle.load(f)


__all__ = ["SlurmCurves", "run_on_node"]
