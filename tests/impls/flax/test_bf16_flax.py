"""The Flax NNX build in mixed precision (``settings.precision: bf16``): modules with ``dtype=bfloat16`` over
``param_dtype=float32`` master weights.

Small specs only (k=3 -> L=32, batch 8). What the spec keeps in float32 (``BF16_FLOAT32_OPS``) is checked on
the primitives the jitted functions trace, since a dtype there is what XLA computes in.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")

from harness.adapter import load_adapter_class  # noqa: E402
from harness.run.parity import off_bf16_grid  # noqa: E402
from harness.spec.presets import preset  # noqa: E402
from harness.spec.reference import init_weights, perturb_batch_norm  # noqa: E402
from harness.spec.schema import VAESpec, canonical_kmer_count  # noqa: E402
from harness.spec.shapes import latent_shape  # noqa: E402
from impls import flax_vae  # noqa: E402

BATCH = 8
L = canonical_kmer_count(3)


def build(spec: VAESpec, precision: str):
    return load_adapter_class("flax").with_weights(spec.with_settings(precision=precision),
                                                   perturb_batch_norm(spec, init_weights(spec)))


def batch(spec: VAESpec) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, spec.input_length), dtype=np.float32)
    eps = rng.standard_normal((BATCH, *latent_shape(spec))).astype(np.float32)
    return x, eps


def float_leaves(tree) -> list[jax.Array]:
    """The floating-point arrays of a state (not its step counts, random keys and their counters)."""
    return [leaf for leaf in jax.tree.leaves(tree) if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, np.floating)]


def test_bf16_outputs_lie_on_the_grid_and_master_weights_stay_float32():
    spec = preset("dense", L)
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

    step = float(bf16.train_step(x, eps))
    assert np.isfinite(step) and abs(step - loss32) <= 3e-2 * abs(loss32), (step, loss32)
    # param_dtype: the parameters, the BatchNorm statistics and Adam's moments (optax builds them like the
    # parameters) stay float32 through the step; the modules only cast copies
    model_state, optimizer_state = bf16._state[0], bf16._state[1]
    params, moments = float_leaves(model_state), float_leaves(optimizer_state["opt_state"])
    assert len(moments) == 2 * len(grads16) and all(leaf.dtype == np.float32 for leaf in params + moments)
    assert all(w.dtype == np.float32 for w in bf16.get_weights().values())


def equations(jaxpr: jax.extend.core.Jaxpr) -> Iterator[jax.extend.core.JaxprEqn]:
    """Every primitive application of ``jaxpr``, through the nested jaxprs (jit, custom_jvp, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from equations(sub)


def float_inputs(eqn: jax.extend.core.JaxprEqn) -> set[np.dtype]:
    return {v.aval.dtype for v in eqn.invars if hasattr(v.aval, "dtype") and jax.dtypes.issubdtype(v.aval.dtype, np.floating)}


@pytest.mark.parametrize("name", ["dense", "autoencoder-kl"])
def test_bf16_keeps_the_pinned_ops_float32(name):
    """The norms' rsqrt (train and eval mode: the BatchNorm running statistics too), every exp (the sampling,
    the KL, the softmax, the loss) and every log read float32 only, while every matmul and conv takes a
    bfloat16 operand (the backward of ``jax.nn.dot_product_attention``'s scores pairs it with their float32
    gradient, under its ``BF16_BF16_F32`` algorithm). No sum over the batch is taken in bfloat16: the bias
    gradients are float32 sums (``Float32Bias``)."""
    spec = preset(name, L)
    x, eps = batch(spec)
    a = build(spec, "bf16")
    traced = {
        "train": jax.make_jaxpr(flax_vae._train_step)(a._graphdef, a._state, x, eps),
        "eval": jax.make_jaxpr(flax_vae._eval_forward)(a._graphdef, a._state, x, eps, None),
    }
    bf16, f32 = np.dtype(jnp.bfloat16), np.dtype(np.float32)
    for mode, closed in traced.items():
        eqns = list(equations(closed.jaxpr))
        pinned = [(e.primitive.name, float_inputs(e)) for e in eqns if e.primitive.name in ("rsqrt", "exp", "log")]
        assert {"rsqrt", "exp"} <= {op for op, _ in pinned}, mode
        assert all(dtypes == {f32} for _, dtypes in pinned), (mode, pinned)
        lowered = [(e.primitive.name, float_inputs(e)) for e in eqns
                   if e.primitive.name in ("dot_general", "conv_general_dilated")]
        assert lowered and all(bf16 in dtypes for _, dtypes in lowered), (mode, lowered)
        # a bfloat16 reduce_sum only drops the attention's one-head axis
        sums = [e for e in eqns if e.primitive.name == "reduce_sum" and float_inputs(e) == {bf16}]
        assert all(e.invars[0].aval.shape[axis] == 1 for e in sums for axis in e.params["axes"]), (mode, sums)
