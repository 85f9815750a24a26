"""Do the frameworks train the same? Each impl trains the same steps and records its curves.

Parity proves one step; this proves hundreds. Every impl starts from the same canonical weights
(``reference.init_weights``: the spec's own initialisers, drawn once in numpy), trains on the same
batches in the same order with the same noise (``eps`` and, for a masking spec, the masked block of
step i are drawn from ``numpy.random.default_rng([seed, i])``, identical in every worker), each in
its own worker. Each step trains on rows of a training set seen once (``harness.run.curve_data``: structured
synthetic profiles cached on disk, or the user's file less its held-out rows). What it records:

* **the training loss of every step**: each step's returned handle is kept and read once, after the
  last step, so no step waits for the device (``adapter.loss_value``);
* **before each of the first ``every`` steps, then every ``every`` steps** (``probe_due``): the
  reconstruction and KL parts of the loss on the held-out rows (the same at every batch) in inference mode, computed in
  numpy from the build's outputs (``reference.loss_parts``), and the global L2 norm of the training
  gradient of that step's batch (``adapter.loss_and_grads``); a last probe follows the last step.

A curve asked to stop at a held-out reconstruction (``stop_at_recon``) ends at the first probe that meets it:
how the steps to a target are read at every batch but the first (``harness.diagnose.target``).

``harness.diagnose.curves`` turns the curves into verdicts against the reference impl's curve.
The parent side (``train_curves``) is framework-free; ``task_curves`` runs in the worker and imports
only its own impl's framework, through the adapter registry.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.adapter import impl_label
from harness.diagnose.curves import KL_COLLAPSE_NATS
from harness.run.curve_data import CurveBatches, CurveData, curve_data, synthetic_train_rows
from harness.run.events import emit
from harness.run.launch import run_worker
from harness.run.parity import worker_error_line
from harness.run.task import CurvesTask
from harness.spec.reference import init_weights, kl_per_element, loss_parts
from harness.spec.schema import VAESpec
from harness.spec.shapes import latent_shape


@dataclass
class Curve:
    """One impl's curves: ``loss`` per step; ``probe_steps`` with ``recon``, ``kl`` and ``grad_norm``;
    ``kl_max_dim`` is the KL of the most informative latent element (batch mean, nats), ``kl_active`` how many
    elements hold more than ``KL_COLLAPSE_NATS``."""

    impl: str
    loss: list[float] = field(default_factory=list)
    probe_steps: list[int] = field(default_factory=list)
    recon: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    kl_max_dim: list[float] = field(default_factory=list)
    #: latent elements holding more than ``KL_COLLAPSE_NATS`` (nats, batch mean) at each probe
    kl_active: list[int] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    error: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    #: the precision the curve trained in (``Settings.precision``)
    precision: str = "fp32"
    batch: int = 0
    #: what it trained on (``CurveData.to_record``: source, rows, held-out rows, epochs, scaling)
    data: dict[str, Any] = field(default_factory=dict)
    #: the held-out reconstruction at which it stopped early, if it was asked to
    stop_at_recon: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_noise(spec: VAESpec, seed: int, step: int, batch: int) -> tuple[np.ndarray, dict[str, int]]:
    """The reparameterisation noise and, with a masking layer, the masked block of ``step``: the same in
    every worker (numpy's generator, keyed by seed and step)."""
    rng = np.random.default_rng([seed, step])
    eps = rng.standard_normal((batch, *latent_shape(spec))).astype(np.float32)
    fixed = {"mask_block": int(rng.integers(len(spec.masking.args["blocks"])))} if spec.masking is not None else {}
    return eps, fixed


def curve_inputs(spec: VAESpec, k: int | None, train_rows: int, tmp: Path, seed: int = 0, data: str | None = None,
                 columns: str | None = None) -> tuple[CurveData, dict[str, np.ndarray]]:
    """The training rows every impl of a run shares (``harness.run.curve_data``), and the arrays saved beside
    them for the workers: the canonical weights, the held-out rows, their noise and the scaling."""
    rows, held, scale = curve_data(spec, k, train_rows, seed, tmp, data, columns)
    eps_eval, fixed_eval = step_noise(spec, seed + 1, 0, len(held))  # another key than any training step
    out = {"x_eval": held, "eps_eval": eps_eval, **scale,
           **{f"w:{name}": w for name, w in init_weights(spec, seed).items()}}
    if fixed_eval:
        out["mask_eval"] = np.asarray(fixed_eval["mask_block"])
    return rows, out


def probe_due(step: int, every: int) -> bool:
    """Whether the held-out reconstruction is read before ``step``: at each of the first ``every`` steps, where
    the curve falls fastest (dense, k=7, batch 64: from 5,706 at step 0 to 2,814 by step 10, then within 3% of
    that for 90 steps), then every ``every`` steps. The steps to a target are read at these probes."""
    return step < every or step % every == 0


def task_batches(task, inputs) -> CurveBatches:
    """Worker side: the task's training batches, scaled as the parent said."""
    scale = {"lo": inputs["lo"], "span": inputs["span"]} if "lo" in inputs.files else {}
    return CurveBatches(task.data_path, task.columns, task.train_rows, task.batch, **scale)


def held_out_parts(spec: VAESpec, model, x_eval: np.ndarray, eps_eval: np.ndarray,
                   fixed_eval: dict[str, int]) -> tuple[float, float, float, int]:
    """(reconstruction, KL, the most informative latent element's KL, how many elements hold more than
    ``KL_COLLAPSE_NATS``) on the held-out rows, inference mode, computed in numpy from the build's outputs
    (``reference.loss_parts``)."""
    out = model.eval_forward(x_eval, eps_eval, **fixed_eval)
    mu, logvar = np.asarray(out["z_mean"], np.float64), np.asarray(out["z_log_var"], np.float64)
    recon, kl = loss_parts(spec, x_eval, np.asarray(out["recon"], np.float64), mu, logvar,
                           fixed_eval.get("mask_block"))
    per = kl_per_element(mu, logvar)
    return recon, kl, float(per.max()), int((per > KL_COLLAPSE_NATS).sum())


@dataclass
class CurveWorker:
    """Worker side: what a worker on a curve's path holds (``CurvesTask``, ``ToTargetTask``): the impl's class, the
    spec, the model from the shared weights, the training batches and the held-out rows with their noise."""

    cls: Any
    spec: VAESpec
    model: Any
    batches: CurveBatches
    x_eval: np.ndarray
    eps_eval: np.ndarray
    fixed_eval: dict[str, int]

    @classmethod
    def load(cls, task) -> CurveWorker:
        from harness.adapter import load_adapter_class

        impl = load_adapter_class(task.impl)
        spec = VAESpec.from_dict(task.spec)
        impl.check_precision(spec)
        inputs = np.load(task.inputs_path)
        fixed_eval = {"mask_block": int(inputs["mask_eval"])} if "mask_eval" in inputs.files else {}
        model = impl.with_weights(spec, {k[2:]: inputs[k] for k in inputs.files if k.startswith("w:")})
        return cls(impl, spec, model, task_batches(task, inputs), inputs["x_eval"], inputs["eps_eval"], fixed_eval)

    def held_out(self) -> tuple[float, float, float, int]:
        return held_out_parts(self.spec, self.model, self.x_eval, self.eps_eval, self.fixed_eval)


def task_curves(task: CurvesTask) -> dict[str, Any]:
    """Worker side: train, probing every ``task.every`` steps, then read every step's loss. With
    ``task.stop_at_recon``, training stops at the first probe that meets it (``harness.diagnose.target``)."""
    from harness.adapter import row_label

    w = CurveWorker.load(task)
    cls, spec, model, batches = w.cls, w.spec, w.model, w.batches
    seed = spec.settings.seed
    probes: dict[str, list] = {"probe_steps": [], "recon": [], "kl": [], "kl_max_dim": [], "kl_active": [],
                               "grad_norm": []}

    def probe(step: int) -> bool:
        """Record the probe before step ``step``; True when it meets the target."""
        x = batches[step]
        eps, fixed = step_noise(spec, seed, step, len(x))
        _, grads = model.loss_and_grads(x, eps, **fixed)
        recon, kl, top, active = w.held_out()
        probes["probe_steps"].append(step)
        probes["recon"].append(recon)
        probes["kl"].append(kl)
        probes["kl_max_dim"].append(top)
        probes["kl_active"].append(active)
        probes["grad_norm"].append(math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values())))
        return task.stop_at_recon is not None and math.isfinite(recon) and recon <= task.stop_at_recon

    handles = []
    reached = False
    for i in range(task.steps):
        if probe_due(i, task.every):
            reached = probe(i)
            emit(curves_step=i)
            if reached:
                break
        x = batches[i]
        eps, fixed = step_noise(spec, seed, i, len(x))
        handles.append(model.train_step(x, eps, **fixed))
    model.synchronize()
    losses = [float(model.loss_value(h)) for h in handles]
    if not reached:
        probe(task.steps)
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
                 on_curve: Callable[[Curve], None] | None = None, train_rows: int | None = None,
                 stop_at_recon: float | None = None, launcher: Any = None) -> list[Curve]:
    """One worker per run on the same inputs; a worker that fails gives a curve with its error line.
    ``on_curve`` gets each curve as its worker ends, so that the caller can store it before the next starts.
    ``train_rows``: the synthetic training set's rows (default: ``steps x batch``, each row seen once); a run
    over several batches passes the same to each, so that all its curves read the same rows on one scale.
    ``stop_at_recon``: each worker stops at the first probe whose held-out reconstruction meets it.
    ``launcher``: None runs the workers here, one after the other; a ``harness.run.slurm.curve_jobs.SlurmCurves``
    runs them as one Slurm job array, the inputs in its folder on the shared filesystem."""
    rows = train_rows or synthetic_train_rows(steps, batch)
    if launcher is None:
        with tempfile.TemporaryDirectory(prefix="vaebench-curves-") as tmp:
            return _train(spec, k, runs, steps, batch, every, data, columns, timeout_s, on_curve, rows, stop_at_recon,
                          Path(tmp), None)
    folder = Path(tempfile.mkdtemp(prefix=f"curves-b{batch}-", dir=_made(launcher.folder)))
    return _train(spec, k, runs, steps, batch, every, data, columns, timeout_s, on_curve, rows, stop_at_recon,
                  folder, launcher)


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _train(spec, k, runs, steps, batch, every, data, columns, timeout_s, on_curve, rows, stop_at_recon, tmp: Path,
           launcher) -> list[Curve]:
    data_rows, inputs = curve_inputs(spec, k, rows, tmp, spec.settings.seed, data, columns)
    paths = {False: tmp / "inputs.npz", True: tmp / "nudged.npz"}
    np.savez(paths[False], **inputs)
    if any(run.nudge for run in runs):
        np.savez(paths[True], **{key: np.nextafter(v, np.float32(np.inf)) if key.startswith("w:") else v
                                 for key, v in inputs.items()})
    owns = [spec if run.precision is None else spec.with_settings(precision=run.precision, tf32=run.precision == "tf32")
            for run in runs]
    calls = [(CurvesTask(spec=own.to_dict(), inputs_path=str(paths[run.nudge]), steps=steps, every=every,
                         data_path=data_rows.path, columns=data_rows.columns, train_rows=data_rows.train_rows,
                         batch=batch, stop_at_recon=stop_at_recon), run.impl, own.settings, timeout_s)
             for run, own in zip(runs, owns, strict=True)]
    outcomes = launcher.run_all(calls) if launcher is not None else (run_worker(*call) for call in calls)
    out: list[Curve] = []
    for run, own, outcome in zip(runs, owns, outcomes, strict=True):
        res = outcome.result or {}
        curve = Curve(run.label, wall_s=outcome.wall_s, precision=own.settings.precision, batch=batch,
                      data=data_rows.to_record(steps, batch), stop_at_recon=stop_at_recon)
        if res.get("status") == "ok":
            for key in ("loss", "probe_steps", "recon", "kl", "kl_max_dim", "kl_active", "grad_norm"):
                setattr(curve, key, list(res.get(key, [])))
            curve.versions = res.get("versions", {})
            curve.data = data_rows.to_record(len(curve.loss), batch)  # a curve stopped at the target: its own epochs
        else:
            curve.error = worker_error_line(outcome)
        out.append(curve)
        if on_curve is not None:
            on_curve(curve)
    return out


def impl_runs(impls: list[str]) -> list[CurveRun]:
    return [CurveRun(impl, impl_label(impl)) for impl in impls]


__all__ = ["Curve", "CurveRun", "curve_inputs", "impl_runs", "step_noise", "task_curves", "train_curves"]
