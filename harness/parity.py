"""Proof that the builds are one model: equal counts, outputs, gradients and steps.

Each build runs in its own worker, starts from the same canonical weights
(``harness.reference.init_weights`` with non-trivial BatchNorm statistics),
the same batch and the same fixed noise, and saves what it computed. The
comparison is plain numpy against the PyTorch row: relative L2,
``||a - ref|| / ||ref||``.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.adapter import impl_label
from harness.data import synthetic_profiles
from harness.launch import run_worker
from harness.reference import init_weights, perturb_batch_norm
from harness.spec import VAESpec, count_params

#: acceptance thresholds (relative L2 against the reference row)
TOL_FORWARD = 1e-4
TOL_STEP = 1e-5


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    if a.shape != ref.shape:
        return math.inf
    denom = np.linalg.norm(ref)
    diff = np.linalg.norm(a - ref)
    return float(diff / denom) if denom > 0 else float(diff)


# ------------------------------------------------------------------------- counts


@dataclass
class ParamsRow:
    impl: str
    trainable: int | None
    non_trainable: int | None
    error: str | None = None


@dataclass
class ParamsReport:
    spec: str
    expected_trainable: int
    expected_non_trainable: int
    rows: list[ParamsRow]

    @property
    def equal(self) -> bool:
        return all(r.error is None and r.trainable == self.expected_trainable
                   and r.non_trainable == self.expected_non_trainable for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "expected": {"trainable": self.expected_trainable,
                                                "non_trainable": self.expected_non_trainable},
                "equal": self.equal, "rows": [r.__dict__ for r in self.rows]}


def check_params(spec: VAESpec, impls: list[str], timeout_s: float = 600) -> ParamsReport:
    expected = count_params(spec)
    rows = []
    for impl in impls:
        out = run_worker({"kind": "params", "spec": spec.to_dict()}, impl, spec.settings, timeout_s)
        res = out.result or {}
        if res.get("status") == "ok":
            rows.append(ParamsRow(impl_label(impl), res["trainable"], res["non_trainable"]))
        else:
            rows.append(ParamsRow(impl_label(impl), None, None, _error_line(out)))
    return ParamsReport(spec.name, expected.trainable, expected.non_trainable, rows)


def _error_line(outcome) -> str:
    res = outcome.result or {}
    if res.get("message"):
        return f"{res.get('error_type', 'error')}: {res['message']}"
    if outcome.timed_out:
        return "timed out"
    if outcome.signal_name:
        return f"killed by {outcome.signal_name}"
    return (outcome.stderr_tail or ["worker failed without a message"])[-1]


# ------------------------------------------------------------------------- parity


@dataclass
class ParityRow:
    impl: str
    forward: float | None = None
    loss: float | None = None
    grads: float | None = None
    worst_grad: str | None = None
    after_step: float | None = None
    worst_after_step: str | None = None
    error: str | None = None

    def passed(self) -> bool:
        if self.error:
            return False
        return (self.forward <= TOL_FORWARD and self.loss <= TOL_FORWARD and self.grads <= TOL_FORWARD
                and self.after_step <= TOL_STEP)


@dataclass
class ParityReport:
    spec: str
    reference: str
    batch: int
    rows: list[ParityRow] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed() for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "reference": self.reference, "batch": self.batch, "passed": self.passed,
                "tolerances": {"forward_loss_grads": TOL_FORWARD, "after_step": TOL_STEP},
                "rows": [dict(r.__dict__, passed=r.passed()) for r in self.rows]}


def parity_inputs(spec: VAESpec, k: int, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights, batch and noise shared by every build."""
    weights = perturb_batch_norm(spec, init_weights(spec, seed))
    x = synthetic_profiles(k, batch, seq_len=4_000, seed=seed)
    # scale profiles into a range where BCE gradients are not all tiny
    x = np.clip(x * spec.input_length / 4, 0, 1).astype(np.float32)
    eps = np.random.default_rng(seed + 1).standard_normal((batch, spec.latent_dim)).astype(np.float32)
    return {"x": x, "eps": eps, **{f"w:{k_}": v for k_, v in weights.items()}}


def check_parity(spec: VAESpec, k: int, impls: list[str], batch: int = 16, reference: str = "torch",
                 timeout_s: float = 900) -> ParityReport:
    order = [reference] + [i for i in impls if i != reference]
    report = ParityReport(spec.name, reference, batch)
    with tempfile.TemporaryDirectory(prefix="vaebench-parity-") as tmp:
        inputs_path = Path(tmp) / "inputs.npz"
        np.savez(inputs_path, **parity_inputs(spec, k, batch))
        outputs: dict[str, Any] = {}
        for impl in order:
            out_path = Path(tmp) / f"{impl.replace('/', '_').replace(':', '_')}.npz"
            task = {"kind": "parity", "spec": spec.to_dict(), "inputs_path": str(inputs_path),
                    "outputs_path": str(out_path)}
            outcome = run_worker(task, impl, spec.settings, timeout_s)
            if (outcome.result or {}).get("status") == "ok" and out_path.exists():
                with np.load(out_path) as f:
                    outputs[impl] = {name: f[name] for name in f.files}
            else:
                outputs[impl] = _error_line(outcome)
        ref = outputs[reference]
        for impl in impls:
            got = outputs[impl]
            if isinstance(got, str):
                report.rows.append(ParityRow(impl_label(impl), error=got))
            elif isinstance(ref, str):
                report.rows.append(ParityRow(impl_label(impl), error=f"reference {reference} failed: {ref}"))
            else:
                report.rows.append(compare(impl_label(impl), got, ref))
    return report


def compare(impl: str, got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> ParityRow:
    """Worst relative L2 per category; gradients and post-step weights per tensor."""
    row = ParityRow(impl)
    row.forward = max(rel_l2(got[k], ref[k]) for k in ref if k.startswith("forward:"))
    row.loss = rel_l2(got["loss"], ref["loss"])
    row.grads, row.worst_grad = _worst(got, ref, "grad:")
    row.after_step, row.worst_after_step = _worst(got, ref, "after:")
    return row


def _worst(got: dict, ref: dict, prefix: str) -> tuple[float, str | None]:
    worst, name = 0.0, None
    for key in ref:
        if key.startswith(prefix):
            value = rel_l2(got[key], ref[key]) if key in got else math.inf
            if value >= worst:
                worst, name = value, key[len(prefix):]
    return worst, name
