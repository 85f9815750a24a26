"""Proof that the builds are one model: equal counts, outputs, gradients and steps.

Each build runs in its own worker, starts from the same canonical weights
(``harness.spec.reference.init_weights`` with non-trivial BatchNorm statistics),
the same batch and the same fixed noise, and saves what it computed. The
comparison is plain numpy against the PyTorch row: relative L2,
``||a - ref|| / ||ref||``.

Every row, PyTorch's included, is also held against the float64 numpy reference
(``harness.spec.reference``), the definition of each layer: the eval forward,
and the loss where the training forward is the eval forward (no BatchNorm). Rows
that agree with PyTorch could otherwise share a mistake of PyTorch's.

**Per precision.** ``bench parity --precision bf16`` runs every build in bf16 and holds it against the reference
impl in float32 (the anchor the fp32 rows are held to the float64 reference with) and against the float64
reference, at bounds measured across the builds (``TOLERANCES``; ``docs/precision.md`` gives the errors and how the
bounds were set). bf16's errors are those of an 8-bit mantissa, so a build in float16 (10 bits) or float32 would
pass any bound on error alone: the latent heads' outputs must also lie on the bfloat16 grid (``off_bf16_grid``).
"""

from __future__ import annotations

import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.adapter import impl_label
from harness.data import synthetic_rows
from harness.run.launch import run_worker
from harness.run.task import ParamsTask, ParityTask
from harness.spec import reference as float64
from harness.spec.params import count_params, param_table
from harness.spec.reference import init_weights, perturb_batch_norm, perturb_zero_init
from harness.spec.schema import VAESpec
from harness.spec.shapes import latent_shape

#: acceptance thresholds in float32 (relative L2 against the reference row)
TOL_FORWARD = 1e-4
TOL_STEP = 1e-5
#: against the float64 numpy reference (the eval forward; the loss of a spec without BatchNorm). Measured on the
#: suite's seven parity specs at batch 16 (2-core CPU, 2026-12-07), every build landed within 5.6e-7 on the forward
#: (keras-tensorflow, conv-final k=5) and 4.4e-7 on the loss (flax and keras-jax, resvae-small): 1e-5, the bound
#: the per-framework tests held before, leaves 18x room for other CPUs' reduction orders
TOL_REFERENCE = 1e-5
#: a structurally zero gradient must be this small against the norm of all gradients
TOL_ZERO_GRAD = 1e-5
#: bf16 (mixed precision over float32 weights) against the reference impl in float32. Measured on this CPU
#: (2026-12-07; ``docs/precision.md`` has the table): over the five builds and the suite's eight parity specs the worst
#: errors were 1.33e-2 on the forward (3.4 units of bf16's rounding, 2^-8; autoencoder-kl-small, keras-torch), 2.36e-3
#: on the loss, 5.56e-2 on all gradients as one vector (dense k=4: a kernel feeding a BatchNorm sums terms that
#: cancel), 4.74e-3 on the weights after one Adam step, 5.92e-3 on a structurally zero gradient. Each bound is about
#: twice the worst: room for another CPU's reduction order, well under what a build that reduces a pinned op in bf16
#: gives (Keras' stock bias add on JAX: 0.27 on resvae's gradients)
BF16_TOL_FORWARD = 3e-2
BF16_TOL_LOSS = 5e-3
BF16_TOL_GRADS = 0.12
BF16_TOL_STEP = 1e-2
BF16_TOL_REFERENCE = 3e-2
BF16_TOL_ZERO_GRAD = 1.2e-2
#: elements whose reference gradient is within this many Adam epsilons of zero are
#: compared after the step only loosely (|difference| <= 2 lr), see ``_global``
NEAR_EPS_FACTOR = 100


@dataclass(frozen=True)
class Tolerances:
    """One precision's parity bounds: against the reference row (forward, loss and gradients; the weights after one
    Adam step), against the float64 numpy reference, and for a structurally zero gradient."""

    forward: float
    step: float
    reference: float
    zero_grad: float
    #: judge the gradients as one vector (bf16: a tensor whose gradient sums terms that cancel over the batch, a
    #: kernel feeding a BatchNorm, carries bf16's rounding magnified, so its own relative error says little)
    grads_global: bool = False
    #: the loss's and the gradients' own bounds (None: ``forward``'s, as in float32)
    loss: float | None = None
    grads: float | None = None

    @property
    def loss_bound(self) -> float:
        return self.forward if self.loss is None else self.loss

    @property
    def grads_bound(self) -> float:
        return self.forward if self.grads is None else self.grads


#: float32 and tf32 (tf32 is float32 on a CPU; on a GPU its parity is float32's to TF32's 10-bit mantissa, not
#: measured yet, so it is held to bf16's bounds there) and bf16, each measured (``docs/precision.md``)
TOLERANCES = {
    "fp32": Tolerances(TOL_FORWARD, TOL_STEP, TOL_REFERENCE, TOL_ZERO_GRAD),
    "bf16": Tolerances(forward=BF16_TOL_FORWARD, step=BF16_TOL_STEP, reference=BF16_TOL_REFERENCE,
                       zero_grad=BF16_TOL_ZERO_GRAD, grads_global=True, loss=BF16_TOL_LOSS, grads=BF16_TOL_GRADS),
}


def tolerances(precision: str, gpu: bool = False) -> Tolerances:
    if precision == "tf32":
        return TOLERANCES["bf16" if gpu else "fp32"]
    return TOLERANCES[precision]


def off_bf16_grid(a: np.ndarray) -> float:
    """The share of ``a``'s values that a bfloat16 cannot hold (the low 16 bits of their float32 are not zero).

    A bf16 layer writes bfloat16 numbers, so z_mean and z_log_var, which come straight out of the latent heads, lie
    on the grid in every bf16 build (0.0); float32 ones almost never do (about 1.0), and float16's 10-bit mantissa
    puts them on a finer grid (most values off bf16's). It is how parity tells a build that computes in bf16 from one
    that computes in another half precision with errors of the same size or smaller."""
    a = np.ascontiguousarray(np.asarray(a, np.float32))
    return float(np.mean((a.view(np.uint32) & 0xFFFF) != 0)) if a.size else 0.0


def structurally_zero_grads(spec: VAESpec) -> set[str]:
    """Biases whose gradient is zero in exact arithmetic: a dense or conv bias feeding
    straight into a BatchNorm, which subtracts the batch mean and so removes it, and an
    attention's key bias, which shifts every score of a row alike before the softmax.

    In float32 such a gradient is pure rounding noise (around 1e-7 of the others),
    and Adam turns noise into steps of up to ``lr``, differently in every build.
    Parity therefore checks that these gradients are zero up to rounding in every
    build and leaves them out of the relative comparisons.
    """
    out = set()
    for section, layers in (("encoder", spec.encoder), ("decoder", spec.decoder)):
        for i, layer in enumerate(layers[:-1]):
            if layer.type in ("dense", "conv1d", "conv_transpose1d") and layers[i + 1].type == "batch_norm":
                out.add(f"{section}.{i}.bias")
        for i, layer in enumerate(layers):
            # a key bias adds q . b_k to every score of a query's row, and the softmax ignores a constant
            if layer.type == "attention1d":
                out.add(f"{section}.{i}.k.bias")
    return out


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
    input_length: int | None = None

    @property
    def equal(self) -> bool:
        return all(r.error is None and r.trainable == self.expected_trainable
                   and r.non_trainable == self.expected_non_trainable for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "expected": {"trainable": self.expected_trainable,
                                                "non_trainable": self.expected_non_trainable},
                "equal": self.equal, "rows": [r.__dict__ for r in self.rows]}


def check_params(specs: list[VAESpec], impls: list[str], timeout_s: float = 1800) -> list[ParamsReport]:
    """One worker per impl counts every spec (without allocating where the build can)."""
    reports = [ParamsReport(s.name, *_expected(s), rows=[], input_length=s.input_length) for s in specs]
    for impl in impls:
        task = ParamsTask(specs=[s.to_dict() for s in specs])
        out = run_worker(task, impl, specs[0].settings, timeout_s)
        res = out.result or {}
        for spec, rep in zip(specs, reports, strict=True):
            got = res.get("counts", {}).get(spec.hash) if res.get("status") == "ok" else None
            if got:
                rep.rows.append(ParamsRow(impl_label(impl), got["trainable"], got["non_trainable"]))
            else:
                rep.rows.append(ParamsRow(impl_label(impl), None, None, worker_error_line(out)))
    return reports


def _expected(spec: VAESpec) -> tuple[int, int]:
    c = count_params(spec)
    return c.trainable, c.non_trainable


def worker_error_line(outcome) -> str:
    """A failed worker in one line: its own error message, a timeout, the signal that killed it, or its last
    line of stderr."""
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
    #: all gradients as one vector (structurally zero ones left out)
    grads_global: float | None = None
    after_step: float | None = None
    worst_after_step: str | None = None
    #: tensors whose gradient is zero in exact arithmetic: name -> ||grad|| / ||all grads||
    zero_grad: dict[str, float] = field(default_factory=dict)
    #: weight elements left out of the after-step figure (gradient near Adam's eps), and
    #: their largest post-step difference in units of the learning rate
    near_eps_elements: int = 0
    near_eps_max_lr: float = 0.0
    #: against the float64 numpy reference: the eval forward (worst of recon, z_mean, z_log_var), and the loss
    #: (None where the spec has BatchNorm: the training forward then reads batch statistics, the reference's
    #: forward running ones)
    reference_forward: float | None = None
    reference_loss: float | None = None
    #: bf16 only: the share of z_mean and z_log_var values off the bfloat16 grid (``off_bf16_grid``), which must be 0
    off_bf16_grid: float | None = None
    error: str | None = None
    tol: Tolerances = TOLERANCES["fp32"]

    def passed(self) -> bool:
        t = self.tol
        if self.error:
            return False
        if self.reference_forward is None or self.reference_forward > t.reference:
            return False
        if self.reference_loss is not None and self.reference_loss > t.reference:
            return False
        if self.off_bf16_grid is not None and self.off_bf16_grid > 0.0:
            return False
        grads = self.grads_global if t.grads_global else self.grads
        return (self.forward <= t.forward and self.loss <= t.loss_bound and grads is not None and grads <= t.grads_bound
                and self.after_step <= t.step and all(v <= t.zero_grad for v in self.zero_grad.values())
                and self.near_eps_max_lr <= 2.0)

    def why_not(self) -> str | None:
        """The first bound a failed row broke, in words (None where it passed)."""
        if self.passed():
            return None
        if self.error:
            return self.error
        if self.off_bf16_grid:
            return (f"{self.off_bf16_grid:.0%} of z_mean and z_log_var lie off the bfloat16 grid: the build does not "
                    "compute its latent heads in bf16 (float16, or float32)")
        return "outside the tolerances"


@dataclass
class ParityReport:
    spec: str
    reference: str
    batch: int
    rows: list[ParityRow] = field(default_factory=list)
    precision: str = "fp32"
    tol: Tolerances = TOLERANCES["fp32"]

    @property
    def passed(self) -> bool:
        return all(r.passed() for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        t = self.tol
        rows = [dict({k: v for k, v in r.__dict__.items() if k != "tol"}, passed=r.passed(), why_not=r.why_not())
                for r in self.rows]
        return {"spec": self.spec, "reference": self.reference, "batch": self.batch, "precision": self.precision,
                "passed": self.passed,
                "tolerances": {"forward_loss_grads": t.forward, "loss": t.loss_bound, "grads": t.grads_bound,
                               "grads_as_one_vector": t.grads_global, "after_step": t.step,
                               "structurally_zero_grad": t.zero_grad, "float64_reference": t.reference},
                "rows": rows}


def parity_inputs(spec: VAESpec, k: int, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights, batch and noise shared by every build."""
    weights = perturb_zero_init(spec, perturb_batch_norm(spec, init_weights(spec, seed)))
    x = synthetic_rows(spec.input_length, k, batch, seed=seed, seq_len=4_000)
    # Scale profiles into a range where BCE gradients are not all tiny, and break the
    # ties of integer k-mer counts: equal neighbours make equal conv outputs, and a
    # max-pool window with two equal maxima may route its gradient to either one.
    rng = np.random.default_rng(seed + 2)
    x = x * spec.input_length / 8 + rng.uniform(0, 0.05, x.shape)
    x = np.clip(x, 0, 1).astype(np.float32)
    eps = np.random.default_rng(seed + 1).standard_normal((batch, *latent_shape(spec))).astype(np.float32)
    fixed = {"x": x, "eps": eps}
    if spec.masking is not None:  # the block the masking layer sets to -1, drawn once and fixed like eps
        blocks = len(spec.masking.args["blocks"])
        fixed["mask_block"] = np.asarray(np.random.default_rng(seed + 4).integers(blocks))
    return {**fixed, **{f"w:{k_}": v for k_, v in weights.items()}}


def check_parity(specs: list[tuple[VAESpec, int]], impls: list[str], batch: int = 16, reference: str = "torch",
                 timeout_s: float = 1800, jobs: int = 1, gpu: bool = False) -> list[ParityReport]:
    """Every (spec, k) in one worker per impl; compared against ``reference`` in the same precision.

    Every spec must be in one precision (the workers' environment pins TF32 per process): ``bench parity
    --precision fp32,bf16`` calls this once per precision. ``jobs`` workers run at once (default one: on a GPU two
    frameworks in two processes would contend for its memory, and JAX preallocates most of it); the test suite,
    on CPU, runs two."""
    precisions = {spec.settings.precision for spec, _ in specs}
    if len(precisions) > 1:
        raise ValueError(f"check_parity: one precision per call, got {sorted(precisions)}")
    precision = precisions.pop() if precisions else "fp32"
    tol = tolerances(precision, gpu)
    # float32's reference row is the reference impl's; another precision's is the reference impl in float32 (itself
    # held to the float64 reference), so every build's bf16 error is measured from the same float32 anchor, the
    # reference impl's bf16 build's included
    anchor = (reference, "fp32") if precision != "fp32" else (reference, precision)
    order = [anchor] + [(i, precision) for i in impls if (i, precision) != anchor]
    ref_label = reference if precision == "fp32" else f"{reference} fp32"
    reports = [ParityReport(spec.name, ref_label, batch, precision=precision, tol=tol) for spec, _ in specs]
    with tempfile.TemporaryDirectory(prefix="vaebench-parity-") as tmp:
        items = []
        for n, (spec, k) in enumerate(specs):
            inputs_path = Path(tmp) / f"inputs{n}.npz"
            np.savez(inputs_path, **parity_inputs(spec, k, batch))
            items.append({"spec": spec, "inputs_path": str(inputs_path)})

        def outputs_of(m: int, who: tuple[str, str]) -> list[Any]:
            """One impl's worker over every item in one precision: each item's outputs, or the line saying why it
            has none."""
            impl, prec = who
            paths = [Path(tmp) / f"out{m}_{n}.npz" for n in range(len(specs))]
            task = ParityTask(items=[{"spec": it["spec"].with_settings(precision=prec, tf32=prec == "tf32").to_dict(),
                                      "inputs_path": it["inputs_path"], "outputs_path": str(p)}
                                     for it, p in zip(items, paths, strict=True)])
            settings = specs[0][0].with_settings(precision=prec, tf32=prec == "tf32").settings
            outcome = run_worker(task, impl, settings, timeout_s)
            ok = (outcome.result or {}).get("status") == "ok"
            got: list[Any] = []
            for p in paths:
                failed = Path(f"{p}.error")  # the worker ran the other items; this one raised
                if ok and p.exists():
                    with np.load(p) as f:
                        got.append({name: f[name] for name in f.files})
                elif failed.exists():
                    got.append(failed.read_text())
                else:
                    got.append(worker_error_line(outcome))
            return got

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            outputs = dict(zip(order, pool.map(outputs_of, range(len(order)), order), strict=True))
        for n, (spec, _) in enumerate(specs):
            ref = outputs[anchor][n]
            with np.load(items[n]["inputs_path"]) as f:
                exact = float64_outputs(spec, {name: f[name] for name in f.files})
            for impl in impls:
                got = outputs[(impl, precision)][n]
                if isinstance(got, str):
                    reports[n].rows.append(ParityRow(impl_label(impl), error=got, tol=tol))
                elif isinstance(ref, str):
                    reports[n].rows.append(ParityRow(impl_label(impl), tol=tol,
                                                     error=f"reference {reference} failed: {ref}"))
                else:
                    row = compare(impl_label(impl), got, ref, structurally_zero_grads(spec),
                                  adam_eps=spec.optimizer.eps, lr=spec.optimizer.lr)
                    row.tol = tol
                    row.reference_forward, row.reference_loss = against_float64(got, exact)
                    if precision == "bf16":
                        row.off_bf16_grid = max(off_bf16_grid(got["forward:z_mean"]),
                                                off_bf16_grid(got["forward:z_log_var"]))
                    reports[n].rows.append(row)
    return reports


def float64_outputs(spec: VAESpec, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The float64 numpy reference's eval forward on the parity inputs, and its loss where the spec has no
    BatchNorm (running statistics, the non-trainable tensors, are what makes training mode differ)."""
    weights = {k[2:]: v for k, v in inputs.items() if k.startswith("w:")}
    fixed = {"mask_block": int(inputs["mask_block"])} if "mask_block" in inputs else {}
    x, eps = inputs["x"], inputs["eps"]
    fwd = float64.eval_forward(spec, weights, x, eps, **fixed)
    has_batch_norm = any(not p.trainable for p in param_table(spec))
    loss = None if has_batch_norm else float64.vae_loss(spec, x, fwd["logits"], fwd["z_mean"], fwd["z_log_var"],
                                                         **fixed)
    return {"forward": {key: fwd[key] for key in ("recon", "z_mean", "z_log_var")}, "loss": loss}


def against_float64(got: dict[str, np.ndarray], exact: dict[str, Any]) -> tuple[float, float | None]:
    """A row's worst eval-forward difference from the float64 reference, and its loss's (None without one)."""
    forward = max(rel_l2(got[f"forward:{key}"], want) for key, want in exact["forward"].items())
    loss = None if exact["loss"] is None else abs(float(got["loss"]) - exact["loss"]) / abs(exact["loss"])
    return forward, loss


def compare(impl: str, got: dict[str, np.ndarray], ref: dict[str, np.ndarray],
            zero_grad: set[str] = frozenset(), adam_eps: float = 0.0, lr: float = 1.0) -> ParityRow:
    """Worst relative L2 per category; gradients and post-step weights per tensor."""
    row = ParityRow(impl)
    row.forward = max(rel_l2(got[k], ref[k]) for k in ref if k.startswith("forward:"))
    row.loss = rel_l2(got["loss"], ref["loss"])
    total = math.sqrt(sum(float(np.sum(np.square(ref[k], dtype=np.float64))) for k in ref if k.startswith("grad:")))
    for name in sorted(zero_grad):
        g = got.get(f"grad:{name}")
        row.zero_grad[name] = math.inf if g is None else float(np.linalg.norm(g)) / max(total, 1e-30)
    row.grads, row.worst_grad = _worst(got, ref, "grad:", zero_grad)
    row.grads_global = _global(got, ref, "grad:", zero_grad, {})
    masks = {f"after:{k[5:]}": np.abs(v) >= NEAR_EPS_FACTOR * adam_eps
             for k, v in ref.items() if k.startswith("grad:")} if adam_eps else {}
    row.after_step = _global(got, ref, "after:", zero_grad, masks)
    for key, keep in masks.items():
        if key in got and got[key].shape == ref[key].shape and (~keep).any():
            row.near_eps_elements += int((~keep).sum())
            worst_lr = float(np.max(np.abs(got[key][~keep] - ref[key][~keep]))) / lr
            row.near_eps_max_lr = max(row.near_eps_max_lr, worst_lr)
    worst, name = _worst(got, ref, "after:", zero_grad)
    row.worst_after_step = f"{name} {worst:.1e}"
    return row


def _global(got: dict, ref: dict, prefix: str, skip: set[str], masks: dict[str, np.ndarray]) -> float:
    """Relative L2 over all tensors of a kind at once, as one weight vector.

    Used for the weights after one Adam step. Adam's first step is
    ``lr * g / (|g| + eps)``: for |g| well above eps it is +-lr whatever the
    rounding of g, but for |g| within a few eps it divides rounding noise by a
    number of the same size, so every build lands somewhere within +-lr. Those
    elements (``masks`` false: |g_ref| < 100 eps, a handful in 10^5) are checked
    separately against that bound and left out of this figure; per tensor they
    can exceed 1e-5 even between PyTorch in float32 and in float64.
    """
    keys = [k for k in ref if k.startswith(prefix) and k[len(prefix):] not in skip]
    if any(k not in got or got[k].shape != ref[k].shape for k in keys):
        return math.inf
    diff = norm = 0.0
    for k in keys:
        keep = masks.get(k, slice(None))
        a, b = got[k].astype(np.float64)[keep], ref[k].astype(np.float64)[keep]
        diff += float(np.sum((a - b) ** 2))
        norm += float(np.sum(b**2))
    return math.sqrt(diff / norm) if norm > 0 else math.sqrt(diff)


def _worst(got: dict, ref: dict, prefix: str, skip: set[str] = frozenset()) -> tuple[float, str | None]:
    worst, name = 0.0, None
    for key in ref:
        if key.startswith(prefix) and key[len(prefix):] not in skip:
            value = rel_l2(got[key], ref[key]) if key in got else math.inf
            if value >= worst:
                worst, name = value, key[len(prefix):]
    return worst, name
