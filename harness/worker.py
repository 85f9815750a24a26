"""The worker process: imports exactly one framework and does one task.

Run as ``python -m harness.worker TASK.json`` by ``harness.launch``. It writes
its result to ``task["result_path"]`` only at the end, and progress events as
JSON lines on stdout. A Python exception becomes a result with the error's
type and message; anything harder (abort, segfault, kill) leaves no result and
is classified by the parent from the exit status and the stderr tail.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from harness.spec import VAESpec


def emit(**event: Any) -> None:
    """One progress event for the parent (JSON on one stdout line)."""
    sys.stdout.write(json.dumps(event, default=float) + "\n")
    sys.stdout.flush()


def build(task: dict[str, Any]):
    from harness.adapter import load_adapter_class

    spec = VAESpec.from_dict(task["spec"])
    cls = load_adapter_class(task["impl"])
    return cls, spec


def task_params(task: dict[str, Any]) -> dict[str, Any]:
    cls, spec = build(task)
    model = cls(spec)
    counts = model.param_counts()
    return {"trainable": counts.trainable, "non_trainable": counts.non_trainable,
            "row": getattr(model, "name", task["impl"]), "versions": cls.versions()}


def task_parity(task: dict[str, Any]) -> dict[str, Any]:
    """Load the given canonical weights, then record forward, loss, grads and one step."""
    cls, spec = build(task)
    inputs = np.load(task["inputs_path"])
    weights = {k[2:]: inputs[k] for k in inputs.files if k.startswith("w:")}
    x, eps = inputs["x"], inputs["eps"]
    model = cls(spec)
    model.set_weights(weights)
    out: dict[str, np.ndarray] = {}
    fwd = model.eval_forward(x, eps)
    for key in ("recon", "z_mean", "z_log_var"):
        out[f"forward:{key}"] = np.asarray(fwd[key], np.float32)
    loss, grads = model.loss_and_grads(x, eps)
    out["loss"] = np.asarray(loss, np.float64)
    for name, g in grads.items():
        out[f"grad:{name}"] = np.asarray(g, np.float32)
    step_loss = model.loss_value(model.train_step(x, eps))
    model.synchronize()
    out["step_loss"] = np.asarray(step_loss, np.float64)
    for name, w in model.get_weights().items():
        out[f"after:{name}"] = np.asarray(w, np.float32)
    out_path = Path(task["scratch"]) / "parity_out.npz"
    np.savez(task["outputs_path"] if "outputs_path" in task else out_path, **out)
    return {"row": getattr(model, "name", task["impl"]), "versions": cls.versions()}


TASKS = {"params": task_params, "parity": task_parity}


def main(argv: list[str]) -> int:
    import faulthandler

    faulthandler.enable()  # a segfault or abort leaves a Python stack in the stderr tail
    task = json.loads(Path(argv[1]).read_text())
    result_path = Path(task["result_path"])
    try:
        kind = task["kind"]
        if kind == "cell":
            from harness.cell import run_cell

            result = run_cell(task)
        elif kind == "bare":
            from bench.overhead import bare_loop

            result = bare_loop(task)
        else:
            result = TASKS[kind](task)
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
    sys.exit(main(sys.argv))
