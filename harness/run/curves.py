"""Do the frameworks train the same? Each impl trains the same steps and records its curves.

Parity proves one step; this proves hundreds. Every impl starts from the same canonical weights
(``reference.init_weights``: the spec's own initialisers, drawn once in numpy), trains on the same
batches in the same order with the same noise (``eps`` and, for a masking spec, the masked block of
step i are drawn from ``numpy.random.default_rng([seed, i])``, identical in every worker), each in
its own worker. What it records:

* **the training loss of every step**: each step's returned handle is kept and read once, after the
  last step, so no step waits for the device (``adapter.loss_value``);
* **every ``every`` steps, before the step** (so the probe never sits inside a timed loop): the
  reconstruction and KL parts of the loss on a fixed held-out batch in inference mode, computed in
  numpy from the build's outputs (``reference.loss_parts``), and the global L2 norm of the training
  gradient of that step's batch (``adapter.loss_and_grads``); a last probe follows the last step.

``harness.diagnose.curves`` turns the curves into verdicts against the reference impl's curve.
The parent side (``train_curves``) is framework-free; ``task_curves`` runs in the worker and imports
only its own impl's framework, through the adapter registry.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.adapter import impl_label
from harness.data import make_source
from harness.run.events import emit
from harness.run.launch import run_worker
from harness.run.parity import worker_error_line
from harness.run.task import CurvesTask
from harness.spec.reference import init_weights, kl_per_element, loss_parts
from harness.spec.schema import VAESpec
from harness.spec.shapes import latent_shape

#: the held-out batch the reconstruction and KL curves are read on (at most this many rows)
EVAL_ROWS = 64
#: batches cycled through (the same order in every impl); a data file gives at most this many
MAX_BATCHES = 16


@dataclass
class Curve:
    """One impl's curves: ``loss`` per step; ``probe_steps`` with ``recon``, ``kl`` and ``grad_norm``;
    ``kl_max_dim`` is the KL of the most informative latent element (batch mean, nats)."""

    impl: str
    loss: list[float] = field(default_factory=list)
    probe_steps: list[int] = field(default_factory=list)
    recon: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    kl_max_dim: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    error: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    #: the precision the curve trained in (``Settings.precision``)
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_noise(spec: VAESpec, seed: int, step: int, batch: int) -> tuple[np.ndarray, dict[str, int]]:
    """The reparameterisation noise and, with a masking layer, the masked block of ``step``: the same in
    every worker (numpy's generator, keyed by seed and step)."""
    rng = np.random.default_rng([seed, step])
    eps = rng.standard_normal((batch, *latent_shape(spec))).astype(np.float32)
    fixed = {"mask_block": int(rng.integers(len(spec.masking.args["blocks"])))} if spec.masking is not None else {}
    return eps, fixed


def min_max(rows: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``rows`` scaled per feature to [0, 1] by the minimum and maximum of ``like`` (a constant feature
    goes to 0), then clipped: how a user readies frequencies for a BCE loss."""
    lo, hi = like.min(axis=0), like.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.clip((rows - lo) / span, 0.0, 1.0).astype(np.float32)


def curve_inputs(spec: VAESpec, k: int | None, batch: int, steps: int, seed: int = 0,
                 data: str | None = None, columns: str | None = None) -> dict[str, np.ndarray]:
    """Weights, the batches (cycled) and the held-out batch every impl shares.

    A ``--data`` file is used as it is. Synthetic rows are min-max scaled per feature (``min_max``):
    raw frequencies, each below 1e-2 and summing to 1, leave BCE so little to reconstruct that the KL
    collapses at any beta in every framework (torch, dense, k=5: the most informative latent element held
    9e-6 nats after 300 steps), which would hide the very comparison the curves make."""
    source = make_source(k, batch, data, columns, seed=seed, width=spec.input_length)
    n = max(1, min(MAX_BATCHES, steps, source.data.shape[0] // batch))
    xs = np.stack([source.next() for _ in range(n)])
    held = make_source(k, min(batch, EVAL_ROWS), data, columns, seed=seed + 1, width=spec.input_length,
                       synthetic_rows_n=min(batch, EVAL_ROWS)).next()
    if data is None:
        train_rows = xs.reshape(-1, xs.shape[-1])
        xs, held = min_max(xs, train_rows), min_max(held, train_rows)
    eps_eval, fixed_eval = step_noise(spec, seed + 1, 0, len(held))  # another key than any training step
    out = {"x": xs, "x_eval": held, "eps_eval": eps_eval,
           **{f"w:{name}": w for name, w in init_weights(spec, seed).items()}}
    if fixed_eval:
        out["mask_eval"] = np.asarray(fixed_eval["mask_block"])
    return out


def task_curves(task: CurvesTask) -> dict[str, Any]:
    """Worker side: train, probing every ``task.every`` steps, then read every step's loss."""
    from harness.adapter import load_adapter_class, row_label

    cls = load_adapter_class(task.impl)
    spec = VAESpec.from_dict(task.spec)
    cls.check_precision(spec)
    inputs = np.load(task.inputs_path)
    xs, x_eval, eps_eval = inputs["x"], inputs["x_eval"], inputs["eps_eval"]
    fixed_eval = {"mask_block": int(inputs["mask_eval"])} if "mask_eval" in inputs.files else {}
    model = cls.with_weights(spec, {k[2:]: inputs[k] for k in inputs.files if k.startswith("w:")})
    seed = spec.settings.seed
    probes: dict[str, list] = {"probe_steps": [], "recon": [], "kl": [], "kl_max_dim": [], "grad_norm": []}

    def probe(step: int, x: np.ndarray, eps: np.ndarray, fixed: dict[str, int]) -> None:
        _, grads = model.loss_and_grads(x, eps, **fixed)
        out = model.eval_forward(x_eval, eps_eval, **fixed_eval)
        mu, logvar = np.asarray(out["z_mean"], np.float64), np.asarray(out["z_log_var"], np.float64)
        recon, kl = loss_parts(spec, x_eval, np.asarray(out["recon"], np.float64), mu, logvar,
                               fixed_eval.get("mask_block"))
        probes["probe_steps"].append(step)
        probes["recon"].append(recon)
        probes["kl"].append(kl)
        probes["kl_max_dim"].append(float(kl_per_element(mu, logvar).max()))
        probes["grad_norm"].append(math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values())))

    handles = []
    for i in range(task.steps):
        x = xs[i % len(xs)]
        eps, fixed = step_noise(spec, seed, i, len(x))
        if i % task.every == 0:
            probe(i, x, eps, fixed)
            emit(curves_step=i)
        handles.append(model.train_step(x, eps, **fixed))
    model.synchronize()
    losses = [float(model.loss_value(h)) for h in handles]
    x = xs[task.steps % len(xs)]
    probe(task.steps, x, *step_noise(spec, seed, task.steps, len(x)))
    return {"loss": losses, **probes, "row": row_label(cls, task.impl), "versions": cls.versions()}


@dataclass(frozen=True)
class CurveRun:
    """One worker of a curves run: its impl and the label its curve gets. ``nudge``: start from the
    shared weights moved one float32 ulp (``np.nextafter``), the noise floor: what another reduction order
    amounts to, in the same build."""

    impl: str
    label: str
    nudge: bool = False
    #: the precision this run trains in; None: the spec's own
    precision: str | None = None


def train_curves(spec: VAESpec, k: int | None, runs: list[CurveRun], steps: int, batch: int, every: int,
                 data: str | None = None, columns: str | None = None, timeout_s: float = 1800,
                 on_curve: Callable[[Curve], None] | None = None) -> list[Curve]:
    """One worker per run on the same inputs; a worker that fails gives a curve with its error line.
    ``on_curve`` gets each curve as its worker ends, so that the caller can store it before the next starts."""
    out: list[Curve] = []
    with tempfile.TemporaryDirectory(prefix="vaebench-curves-") as tmp:
        inputs = curve_inputs(spec, k, batch, steps, spec.settings.seed, data, columns)
        paths = {False: Path(tmp) / "inputs.npz", True: Path(tmp) / "nudged.npz"}
        np.savez(paths[False], **inputs)
        if any(run.nudge for run in runs):
            np.savez(paths[True], **{key: np.nextafter(v, np.float32(np.inf)) if key.startswith("w:") else v
                                     for key, v in inputs.items()})
        for run in runs:
            own = spec if run.precision is None else spec.with_settings(precision=run.precision,
                                                                         tf32=run.precision == "tf32")
            task = CurvesTask(spec=own.to_dict(), inputs_path=str(paths[run.nudge]), steps=steps, every=every)
            start = time.perf_counter()
            outcome = run_worker(task, run.impl, own.settings, timeout_s)
            res = outcome.result or {}
            curve = Curve(run.label, wall_s=time.perf_counter() - start, precision=own.settings.precision)
            if res.get("status") == "ok":
                for key in ("loss", "probe_steps", "recon", "kl", "kl_max_dim", "grad_norm"):
                    setattr(curve, key, list(res[key]))
                curve.versions = res.get("versions", {})
            else:
                curve.error = worker_error_line(outcome)
            out.append(curve)
            if on_curve is not None:
                on_curve(curve)
    return out


def impl_runs(impls: list[str]) -> list[CurveRun]:
    return [CurveRun(impl, impl_label(impl)) for impl in impls]


__all__ = ["Curve", "CurveRun", "curve_inputs", "impl_runs", "step_noise", "task_curves", "train_curves"]
