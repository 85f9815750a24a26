"""The PyTorch build in mixed precision (``settings.precision: bf16``): autocast over float32 master weights.

Small specs only (k=3 -> L=32, batch 8). What the spec keeps in float32 (``BF16_FLOAT32_OPS``) is checked
on the ops the step dispatches, since CPU autocast would otherwise run the norms and the softmax in bfloat16.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.adapter import load_adapter_class
from harness.run.parity import off_bf16_grid
from harness.spec.presets import preset
from harness.spec.reference import init_weights, perturb_batch_norm
from harness.spec.schema import VAESpec
from harness.spec.shapes import latent_shape

torch = pytest.importorskip("torch")
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402 - after the skip

BATCH = 8


def build(spec: VAESpec, precision: str):
    a = load_adapter_class("torch")(spec.with_settings(precision=precision))
    a.set_weights(perturb_batch_norm(spec, init_weights(spec)))
    return a


def batch(spec: VAESpec) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, spec.input_length), dtype=np.float32)
    eps = rng.standard_normal((BATCH, *latent_shape(spec))).astype(np.float32)
    return x, eps


def test_bf16_outputs_lie_on_the_grid_and_master_weights_stay_float32():
    spec = preset("dense", 32)
    x, eps = batch(spec)
    fp32, bf16 = build(spec, "fp32"), build(spec, "bf16")

    out32, out16 = fp32.eval_forward(x, eps), bf16.eval_forward(x, eps)
    for key in ("recon", "z_mean", "z_log_var"):
        assert out16[key].dtype == np.float32, key
    # z_mean and z_log_var come out of a bfloat16 layer, cast up exactly; the fp32 build's do not
    assert off_bf16_grid(out16["z_mean"]) == 0.0 and off_bf16_grid(out16["z_log_var"]) == 0.0
    assert off_bf16_grid(out32["z_mean"]) > 0.5
    np.testing.assert_allclose(out16["z_mean"], out32["z_mean"], rtol=0, atol=0.05)

    loss32, grads32 = fp32.loss_and_grads(x, eps)
    loss16, grads16 = bf16.loss_and_grads(x, eps)
    assert np.isfinite(loss16) and abs(loss16 - loss32) <= 3e-2 * abs(loss32), (loss16, loss32)
    assert set(grads16) == set(grads32) and all(g.dtype == np.float32 for g in grads16.values())

    step = bf16.loss_value(bf16.train_step(x, eps))
    assert np.isfinite(step) and abs(step - loss32) <= 3e-2 * abs(loss32), (step, loss32)
    # the parameters are never cast: autocast casts copies, so weights, gradients and Adam's moments stay float32
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert all(b.dtype == torch.float32 for b in bf16.model.buffers() if b.is_floating_point())
    moments = [v for s in bf16.optimizer.state.values() for k, v in s.items() if k != "step"]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    assert all(w.dtype == np.float32 for w in bf16.get_weights().values())


class OpDtypes(TorchDispatchMode):
    """Records each op's name and the dtypes of its floating-point tensor inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, set[torch.dtype]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}
        self.seen.setdefault(func.overloadpacket.__name__, set()).update(dtypes)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["dense", "autoencoder-kl"])
def test_bf16_keeps_the_pinned_ops_float32(name):
    """BatchNorm, GroupNorm, the softmax, the sampling's exp and the loss read float32 on a CPU as on CUDA,
    while the linear and conv layers compute in bfloat16."""
    spec = preset(name, 32)
    x, eps = batch(spec)
    a = build(spec, "bf16")
    with OpDtypes() as ops:
        a.train_step(x, eps)
    pinned = {"native_batch_norm", "native_group_norm", "_softmax", "exp", "binary_cross_entropy_with_logits"}
    assert pinned & set(ops.seen)
    for op in pinned & set(ops.seen):
        assert ops.seen[op] == {torch.float32}, (op, ops.seen[op])
    lowered = {"addmm", "mm", "convolution", "bmm"} & set(ops.seen)
    assert lowered and all(torch.bfloat16 in ops.seen[op] for op in lowered)
