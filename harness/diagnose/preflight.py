"""Say before a run what will break: int32 element counts and memory.

Everything here is arithmetic on the spec's shapes; no framework is imported,
so preflight is instant even for a 1.6-billion-parameter design.

**int32.** Many CUDA kernels index with a signed 32-bit count. A tensor of
2^31 elements or more wraps to a negative number, and the kernel aborts with
that number (TensorFlow: ``work_element_count >= 0 (-1673527296 vs. 0)``,
which is 5,000 x 8,192 x 64 wrapped). Each tensor is flagged with the largest
batch that keeps it below 2^31.

**Memory.** Training memory is estimated as

* model state: weights, gradients and Adam's two moments, 16 bytes a parameter;
* activations kept for the backward pass: every layer's output (and the
  input batch), plus max-pool argmax indices (int64, as PyTorch keeps them),
  plus the loss's per-element BCE terms and the gradient of the logits (without
  these two the per-sample memory of ``dense`` at k=7 came out at 103 KB against
  240 KB measured under Flax and Keras-JAX);
* workspace, the stated margin: the larger of twice the largest activation
  (its gradient and one temporary in flight during backward) and twice the
  weights (the optimizer update's temporaries: PyTorch's foreach Adam and
  XLA's update each hold parameter-sized intermediates).

On a CPU the same estimate is compared with host RAM; the report sets it
beside the measured peak (allocator peak on GPU, RSS growth past the
framework's own import on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from harness.diagnose.int32 import FAILING, IMPL_FRAMEWORK, Int32Entry, judge, verdict, wrap_int32
from harness.diagnose.memory import MemoryEstimate, estimate_memory
from harness.spec.params import param_table
from harness.spec.residual import flat_shapes
from harness.spec.schema import VAESpec

INT32_LIMIT = 2**31
FLOAT_BYTES = 4
INDEX_BYTES = 8
#: a bf16 step's activations; its weights, gradients and Adam moments stay float32 (``BF16_FLOAT32_OPS``)
BF16_BYTES = 2
#: layers whose tensor a bf16 step still holds in float32: the pinned norms (their float32 input kept for backward,
#: or torch's float32 output) and the attention's float32 scores and softmax. Without them autoencoder-kl's bf16
#: estimate read 0.65 (torch) and 0.73 (flax) of the measured peak at k=5 b=64; with them 0.78 and 0.86
BF16_FLOAT32_LAYERS = ("batch_norm", "group_norm", "attention_scores", "softmax")


@dataclass
class Tensor:
    pass_: str  # "train" or "eval"
    layer: str  # canonical layer name, e.g. "encoder.1"
    kind: str  # activation, pool indices, upsampled, conv-transpose output, weight, gradient, adam m, adam v
    shape: tuple[int, ...]
    per_sample: bool  # scales with the batch
    dtype_bytes: int = FLOAT_BYTES
    #: the spec op that writes it (layer type, "loss", "input") and the next op that reads it;
    #: a kernel can fail past 2^31 in either (``harness.diagnose.int32``)
    op: str = ""
    reader: str = ""

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def bytes(self) -> int:
        return self.elements * self.dtype_bytes

    @property
    def overflows(self) -> bool:
        return self.elements >= INT32_LIMIT

    def safe_batch(self, batch: int) -> int | None:
        """Largest batch keeping this tensor under 2^31 elements (None: not batch-dependent)."""
        if not self.per_sample:
            return None
        per = self.elements // batch
        return (INT32_LIMIT - 1) // per

    def to_dict(self, batch: int) -> dict[str, Any]:
        d = {"pass": self.pass_, "layer": self.layer, "kind": self.kind, "shape": list(self.shape),
             "elements": self.elements, "bytes": self.bytes, "overflows_int32": self.overflows}
        if self.overflows:
            d["wraps_to"] = wrap_int32(self.elements)
            d["safe_batch"] = self.safe_batch(batch)
        return d


def tensor_table(spec: VAESpec, batch: int, eval_batch: int | None = None) -> list[Tensor]:
    """Every tensor of the forward and backward pass for ``batch`` (and ``eval_batch``)."""
    tensors: list[Tensor] = []
    # bf16: every layer's output is bfloat16 but the pinned float32 layers' (BF16_FLOAT32_LAYERS); the input batch
    # (float32 data), the loss terms and the logits' gradient (float32, pinned) are not
    act = BF16_BYTES if spec.settings.bf16 else FLOAT_BYTES
    for pass_, b in (("train", batch), ("eval", eval_batch)):
        if not b:
            continue
        # flat_shapes opens each residual up: its inner layers, skip, sum and activation
        shapes = [ls for ls in flat_shapes(spec) if ls.layer.type not in ("flatten", "reshape")]  # views
        readers = [ls.layer.type for ls in shapes[1:]] + ["loss"]
        tensors.append(Tensor(pass_, "input", "activation", (b, spec.input_length), True,
                              op="input", reader=shapes[0].layer.type if shapes else ""))
        for ls, reader in zip(shapes, readers, strict=True):
            shape = (b, *ls.out_shape)
            t = ls.layer.type
            kind = {"upsample1d": "upsampled output", "conv_transpose1d": "conv-transpose output",
                    "conv1d": "conv output", "attention_scores": "attention scores",
                    "softmax": "attention weights"}.get(t, "activation")
            if ls.name in ("z_mean", "z_log_var"):
                reader = "sampling"
            size = FLOAT_BYTES if t in BF16_FLOAT32_LAYERS else act
            tensors.append(Tensor(pass_, ls.name, kind, shape, True, size, op=t, reader=reader))
            if t == "max_pool1d" and pass_ == "train":
                tensors.append(Tensor(pass_, ls.name, "pool indices", shape, True, INDEX_BYTES, op=t))
            if ls.name == "z_log_var":  # the sampling is float32 (pinned)
                tensors.append(Tensor(pass_, "sampling", "activation", shape, True, op="sampling"))
        if pass_ == "train":
            # the loss is summed from per-element BCE terms, and backward starts from the
            # gradient of the logits: two more tensors of the output's size
            out = (b, spec.input_length)
            tensors.append(Tensor(pass_, "loss", "loss terms", out, True, op="loss"))
            tensors.append(Tensor(pass_, "loss", "logits gradient", out, True, op="loss"))
    for p in param_table(spec):
        tensors.append(Tensor("train", p.name.rsplit(".", 1)[0], "weight", p.shape, False))
        if p.trainable:
            for kind in ("gradient", "adam m", "adam v"):
                tensors.append(Tensor("train", p.name.rsplit(".", 1)[0], kind, p.shape, False))
    return tensors


@dataclass
class PreflightReport:
    spec: str
    batch: int
    eval_batch: int | None
    tensors: list[Tensor]
    estimate: MemoryEstimate
    device: str
    available_bytes: int | None
    host_bytes: int | None
    reasons: list[str] = field(default_factory=list)
    #: the impl judged (None: every built-in impl, side by side)
    impl: str | None = None
    #: per impl, each overflowing tensor with what that impl's framework does with it
    int32: dict[str, list[Int32Entry]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: the precision estimated for (bf16: activations at 2 bytes)
    precision: str = "fp32"

    @property
    def int32_verdict(self) -> str:
        if self.impl is not None:
            return verdict(self.impl, self.int32.get(self.impl, []))
        if not self.flags:
            return verdict(None, [])
        return "; ".join(f"{i}: {verdict(i, e)}" for i, e in self.int32.items())

    @property
    def flags(self) -> list[Tensor]:
        return [t for t in self.tensors if t.overflows]

    @property
    def ok(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec, "batch": self.batch, "eval_batch": self.eval_batch, "device": self.device,
            "precision": self.precision,
            "available_bytes": self.available_bytes, "host_bytes": self.host_bytes,
            "estimate": self.estimate.to_dict(), "estimate_bytes": self.estimate.train_bytes,
            "flags": [t.to_dict(self.batch if t.pass_ == "train" else (self.eval_batch or self.batch))
                      for t in self.flags],
            "ok": self.ok, "skip": not self.ok, "reason": "; ".join(self.reasons) or None,
            "tensors": [t.to_dict(self.batch) for t in self.tensors],
            "impl": self.impl,
            "int32": [e.to_dict() for entries in self.int32.values() for e in entries],
            "verdict": self.int32_verdict,
            "verdicts": {i: verdict(i, e) for i, e in self.int32.items()},
            "warnings": self.warnings,
        }


def preflight(spec: VAESpec, batch: int, eval_batch: int | None = None, device_memory: int | None = None,
              device: str | None = None, int32_applies: bool | None = None,
              impl: str | None = None, results_dir: str | None = None,
              versions: dict[str, str] | None = None) -> PreflightReport:
    """Check one spec and batch against int32 limits and the memory at hand.

    ``int32_applies``: whether an overflowing tensor stops the cell. On a GPU it
    does (the kernels index with int32); on CPU the flags are reported as
    warnings, since CPU kernels use 64-bit indexing.

    ``impl``: judge int32 for that impl's framework (``harness.diagnose.int32``): only an op
    that raises, aborts or computes wrong past 2^31 stops the cell; one nobody has measured
    is a warning. Without it every built-in impl is judged side by side, and any overflow
    stops the check, as no framework is known. ``results_dir`` holds cached probe results;
    ``versions`` (framework -> version) overrides the installed versions.
    """
    dev, detected = detect_device_memory()
    if device == "cpu" and dev == "gpu":  # planning for the CPU on a GPU machine: host RAM is the limit
        import psutil

        detected = int(psutil.virtual_memory().available)
    device = device or dev
    available = device_memory if device_memory is not None else detected
    host = host_memory_bytes()
    tensors = tensor_table(spec, batch, eval_batch)
    est = estimate_memory(tensors, impl=impl, device=device)
    rep = PreflightReport(spec.name, batch, eval_batch, tensors, est, device, available, host, impl=impl,
                          precision=spec.settings.precision)
    if int32_applies is None:
        int32_applies = device == "gpu"
    _judge_int32(rep, int32_applies, results_dir, versions or {})
    if available and est.upper_bytes > available:  # the interval's high end, where the fit gives one
        need = _gb(est.upper_bytes) + (f" (the high end of {_gb(est.interval_bytes[0])}-{_gb(est.interval_bytes[1])})"
                                       if est.interval_bytes else "")
        rep.reasons.append(f"would need {need} of {_gb(available)} {device} memory")
    if available and eval_batch and est.eval_bytes > available:  # issue 27: --eval-batch 1e20 read "fits"
        rep.reasons.append(f"the eval batch of {eval_batch:,} would need {_gb(est.eval_bytes)} of {_gb(available)} "
                           f"{device} memory")
    if device == "gpu" and host and est.state_bytes // 4 > host:
        rep.reasons.append(f"weights alone need {_gb(est.state_bytes // 4)} of {_gb(host)} host RAM")
    return rep


def _judge_int32(rep: PreflightReport, applies: bool, results_dir: str | None, versions: dict[str, str]) -> None:
    """Fill ``rep.int32`` and turn a failing op (or, with no impl named, any overflow) into a reason."""
    if not rep.flags:
        return

    def batch_of(t: Tensor) -> int:
        return rep.batch if t.pass_ == "train" else (rep.eval_batch or rep.batch)

    for i in [rep.impl] if rep.impl is not None else list(IMPL_FRAMEWORK):
        rep.int32[i] = judge(i, rep.flags, batch_of, rep.device, results_dir,
                             version=versions.get(IMPL_FRAMEWORK.get(i, "")))
    if not applies:
        rep.warnings.append(f"{len(rep.flags)} tensor(s) reach 2^31 elements: a warning on {rep.device} "
                            "(CPU kernels index with 64 bits)")
        return
    if rep.impl is not None:
        entries = rep.int32[rep.impl]
        line = verdict(rep.impl, entries)
        if any(e.behaviour in FAILING for e in entries):
            rep.reasons.append(line)
        elif any(e.behaviour == "unknown" for e in entries):
            rep.warnings.append(line)
        return
    worst = max(rep.flags, key=lambda t: t.elements)
    per_impl = []
    for i, entries in rep.int32.items():
        bad = [e for e in entries if e.behaviour in FAILING]
        if bad:
            e = bad[0]
            per_impl.append(f"{i} {e.behaviour} at {e.layer} {e.op}")
        else:
            unknown = any(e.behaviour == "unknown" for e in entries)
            per_impl.append(f"{i} {'unknown' if unknown else 'ok'}")
    rep.reasons.append(
        f"int32 overflow: {worst.layer} {worst.kind} {worst.shape} has {worst.elements:,} elements "
        f"(wraps to {wrap_int32(worst.elements)}); largest safe batch {worst.safe_batch(batch_of(worst))} "
        f"(per impl: {', '.join(per_impl)}; name one with --impl)")


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def host_memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover
        return None


def detect_device_memory() -> tuple[str, int | None]:
    """("gpu", total bytes of GPU 0) from NVML, else ("cpu", available host RAM)."""
    from harness.measure.probes import gpu_inventory

    gpus = gpu_inventory()
    if gpus:
        return "gpu", int(gpus[0]["memory_bytes"])
    try:
        import psutil

        return "cpu", int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        return "cpu", None


def preflight_cell(cell, device_memory: int | None = None, device: str | None = None,
                   results_dir: str | None = None) -> dict[str, Any]:
    """The runner's hook: a compact verdict stored in the cell's row, judged for the cell's own impl."""
    rep = preflight(cell.spec, cell.batch, device_memory=device_memory, device=device, impl=cell.impl,
                    results_dir=results_dir)
    d = rep.to_dict()
    d.pop("tensors")
    return d
