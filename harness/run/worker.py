"""The worker process: imports exactly one framework and does one task.

Run as ``python -m harness.run.worker TASK.json`` by ``harness.run.launch``. It writes
its result to ``task.result_path`` only at the end, and progress events as
JSON lines on stdout. A Python exception becomes a result with the error's
type and message; anything harder (abort, segfault, kill) leaves no result and
is classified by the parent from the exit status and the stderr tail.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.run.events import emit
from harness.run.task import (
    BareTask,
    BaselineTask,
    CellTask,
    CurvesTask,
    Int32ProbeTask,
    ParamsTask,
    ParityTask,
    PeakTask,
    Task,
    ToTargetTask,
    task_from_json,
)
from harness.run.walltime import EXIT_PHASE
from harness.spec.schema import VAESpec


def task_params(task: ParamsTask) -> dict[str, Any]:
    """Counts for every spec in the task, read off the framework's own (abstract) model."""
    from harness.adapter import load_adapter_class, row_label

    cls = load_adapter_class(task.impl)
    counts = {}
    for raw in task.specs:
        spec = VAESpec.from_dict(raw)
        c = cls.count_params(spec)
        counts[spec.hash] = {"trainable": c.trainable, "non_trainable": c.non_trainable}
    return {"counts": counts, "row": row_label(cls, task.impl), "versions": cls.versions()}


def task_parity(task: ParityTask) -> dict[str, Any]:
    """For each item: load the given canonical weights, then record forward, loss, grads and one step."""
    from harness.adapter import load_adapter_class, row_label

    cls = load_adapter_class(task.impl)
    for item in task.items:
        try:
            _parity_item(cls, item)
        except Exception as exc:  # noqa: BLE001 - one spec a build cannot run must not hide the others
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
            Path(item["outputs_path"] + ".error").write_text(f"{type(exc).__name__}: {line}")
            traceback.print_exc()
    return {"row": row_label(cls, task.impl), "versions": cls.versions()}


def _parity_item(cls, item: dict[str, Any]) -> None:
    """One parity item: load the weights, record forward, loss, grads and one step to ``outputs_path``."""
    spec = VAESpec.from_dict(item["spec"])
    cls.check_precision(spec)
    inputs = np.load(item["inputs_path"])
    weights = {k[2:]: inputs[k] for k in inputs.files if k.startswith("w:")}
    x, eps = inputs["x"], inputs["eps"]
    # the masking layer's draw is fixed like eps; a spec without one passes nothing (plug-ins need not know)
    fixed = {"mask_block": int(inputs["mask_block"])} if "mask_block" in inputs.files else {}
    model = cls.with_weights(spec, weights)
    out: dict[str, np.ndarray] = {}
    fwd = model.eval_forward(x, eps, **fixed)
    for key in ("recon", "z_mean", "z_log_var"):
        out[f"forward:{key}"] = np.asarray(fwd[key], np.float32)
    loss, grads = model.loss_and_grads(x, eps, **fixed)
    out["loss"] = np.asarray(loss, np.float64)
    for name, g in grads.items():
        out[f"grad:{name}"] = np.asarray(g, np.float32)
    out["step_loss"] = np.asarray(model.loss_value(model.train_step(x, eps, **fixed)), np.float64)
    model.synchronize()
    for name, w in model.get_weights().items():
        out[f"after:{name}"] = np.asarray(w, np.float32)
    np.savez(item["outputs_path"], **out)
    emit(done=spec.name)


def task_baseline(task: BaselineTask) -> dict[str, Any]:
    """A textbook loop, imported by name (``bench.baselines.*``: the harness never imports ``bench``
    statically); it imports its framework itself, after the launcher's environment is in force."""
    import importlib

    module = importlib.import_module(task.module)
    return module.run(VAESpec.from_dict(task.spec), task.kmer, task.batch, task.steps, task.warmup,
                      task.steps_per_window)


def run_task(task: Task) -> dict[str, Any]:
    """Dispatch on the task's type; the framework is imported inside, never before."""
    if isinstance(task, CellTask):
        from harness.run.cell import run_cell

        return run_cell(task)
    if isinstance(task, BareTask):
        from harness.run.bare import bare_loop

        return bare_loop(task)
    if isinstance(task, BaselineTask):
        return task_baseline(task)
    if isinstance(task, ParamsTask):
        return task_params(task)
    if isinstance(task, ParityTask):
        return task_parity(task)
    if isinstance(task, CurvesTask):
        from harness.run.curves import task_curves

        return task_curves(task)
    if isinstance(task, ToTargetTask):
        from harness.run.to_target import task_to_target

        return task_to_target(task)
    if isinstance(task, PeakTask):
        import importlib

        from harness.measure.peak import PEAK_MODULE

        return importlib.import_module(PEAK_MODULE).measure_matmul_peak(task)
    if isinstance(task, Int32ProbeTask):
        from harness.measure.int32_check import run_probes

        return {"results": run_probes(task.module, task.impl, task.device, task.probes, emit)}
    raise TypeError(f"no runner for {type(task).__name__}")


#: how often the worker looks for its parent (seconds)
PARENT_POLL_S = 1.0


def watch_parent(scratch: str | None, poll_s: float = PARENT_POLL_S) -> Callable[[], None]:
    """End the worker, and what it started, once its parent is gone; returns that ending, for the worker's
    last write to a parent that is gone (a broken pipe).

    The parent kills a worker's process group on a timeout; after ``kill -9`` of the parent nobody would, and a
    silent worker ran on past its own timeout and left its ``/tmp/vaebench-*`` dir (issue 27). A daemon thread
    sees the parent's pid change (the worker is reparented), removes the scratch dir the parent made for it, and
    kills the worker's own process group (it leads a session of its own, ``harness.run.launch``)."""
    import shutil
    import signal
    import threading

    parent = os.getppid()

    def orphaned() -> None:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        if os.getpgrp() == os.getpid():  # its own group, as the launcher starts it; never a shell's
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        orphaned()

    threading.Thread(target=watch, name="vaebench-parent-watch", daemon=True).start()
    return orphaned


def main(argv: list[str]) -> int:
    import faulthandler

    faulthandler.enable()  # a segfault or abort leaves a Python stack in the stderr tail
    raw = json.loads(Path(argv[1]).read_text())
    orphaned = watch_parent(raw.get("scratch"))
    result_path = Path(raw["result_path"])
    try:
        result = run_task(task_from_json(raw))
        result = {"status": "ok", **result}
    except BaseException as exc:  # noqa: BLE001 - every failure must become a row
        result = {
            "status": "error",
            "error_type": type(exc).__name__,
            "message": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500],
            "traceback": traceback.format_exc()[-4000:],
        }
        sys.stderr.write(result["traceback"])
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=_json_default))
    tmp.replace(result_path)
    try:
        emit(phase=EXIT_PHASE)  # what follows is the interpreter's and the framework's teardown (walltime)
    except BrokenPipeError:  # the parent is gone (killed) before the watch saw it
        orphaned()
    return 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


if __name__ == "__main__":
    code = main(sys.argv)
    # the result is written: skip the interpreter's teardown of the framework's thread pools and
    # caches, which took 0.4-1.9 s a cell on CPU (flax, torch, keras-torch at dense k=7), measured
    # as the cell's ``exit`` stretch (harness.run.walltime); nothing after this point is measured
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
