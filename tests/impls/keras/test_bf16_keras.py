"""The Keras build in mixed precision (``settings.precision: bf16``), on all three backends.

Under bf16 every layer of the Keras model takes the ``mixed_bfloat16`` dtype policy (``impls.keras_layers``):
bfloat16 compute over float32 variables. The checks below hold the build to what the spec asks of it: the latent
heads compute in bfloat16, so ``eval_forward``'s float32 ``z_mean`` and ``z_log_var`` lie on the bfloat16 grid
(their low 16 bits zero; parity tells a bf16 build from a float16 one by it) and a float32 build's do not; the
loss stays finite and within a few 1e-2 of the float32 build's; the weights, the gradients and Adam's moments
stay float32 through ``train_on_batch`` and ``fit``; the policy is the layers', not Keras' global one, so a
float32 model built after a bf16 one in the same process is float32; and the bias gradients are float32 sums
(``BF16_FLOAT32_OPS``: ``impls.keras_layers.Float32Bias``), layer by layer and in a whole ``conv-final`` build.

As in ``tests/impls/keras/test_impl_keras.py``, Keras fixes its backend once per process, so every ``check_*``
below runs in the run's one child per backend (``tests/fixtures/keras_children.py``, this module is one of its
``KERAS_MODULES``) and each entry of its report becomes its own test here. Dense at k=3 (L=32) and conv-final at
k=5 (L=512), batch 8.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fixtures.keras_children import check_registry, keras_check_tests

from harness.run.parity import off_bf16_grid, parity_inputs, rel_l2
from harness.spec.layers import Layer
from harness.spec.presets import preset
from harness.spec.reference import init_weights, perturb_batch_norm
from harness.spec.shapes import latent_shape

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

BATCH, LENGTH = 8, 32
#: the bf16 loss against the float32 build's, relative (measured: about 2e-4 at dense k=3)
LOSS_RTOL = 3e-2
#: the weights after one step against the float32 build's, relative (measured: about 2e-3)
STEP_RTOL = 3e-2
#: a bf16 layer's bias gradient against the float64 sum of the same bfloat16 incoming gradient, relative. 4096 terms on
#: the bfloat16 grid in [0.5, 1.5] sum exactly in float32, in any order (measured: 0 on all three backends); before
#: ``Float32Bias`` keras-tensorflow's ``BiasAddGrad`` summed them in bfloat16 to 512 (0.88 off), keras-jax's XLA sum
#: was 1.1e-2 off, and keras-torch's, a float32 sum rounded to bfloat16, 3.3e-3
BIAS_SUM_RTOL = 1e-5
#: conv-final k=5, batch 8: the bf16 build's bias gradients against its own float32 build's, relative L2 per tensor.
#: The decoder's (measured on all three backends: at most 2.3e-2, ``decoder.0.bias``; 3.1e-3 and 4.4e-4 for the
#: conv-transposes, whose sums are the longest) within 5e-2: summed in bfloat16 they were off by 0.39
#: (keras-tensorflow's ``decoder.7.bias``) and 8.6e-2 (keras-jax's ``decoder.10.bias``)
DECODER_BIAS_RTOL = 5e-2
#: every bias's, within 1e-1: the encoder's take their gradient through every bfloat16 layer of the decoder and the
#: encoder, and their sums cancel, so bf16's rounding upstream shows there magnified, the same in the torch and Flax
#: builds (``encoder.1.bias``: 7.4e-2 in all five; ``encoder.4.bias`` 5.8e-2), whatever the dtype of the sum
BIAS_RTOL = 1e-1
#: bias tensors whose float32 gradient is this small against the norm of all gradients are left out (~0 by design)
TINY_GRAD = 1e-6

CHECKS, check = check_registry()


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A batch of inputs in [0, 1] and standard-normal noise shaped like the latent."""
    spec = preset("dense", LENGTH)
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(BATCH, LENGTH)).astype(np.float32)
    return x, rng.normal(size=(BATCH, *latent_shape(spec))).astype(np.float32)


def rel(a: dict, b: dict) -> float:
    """The relative L2 distance of two dicts of arrays, taken over all of them at once."""
    num = sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in b)
    return float(np.sqrt(num / sum(np.sum(np.square(b[k], dtype=np.float64)) for k in b)))


def build(cls, precision: str):
    """Dense k=3 at ``precision``, loaded with the reference weights (BatchNorm statistics perturbed)."""
    spec = preset("dense", LENGTH).with_settings(precision=precision)
    return cls.with_weights(spec, perturb_batch_norm(spec, init_weights(spec)))


def policies(model) -> dict[str, str]:
    """The name of each layer's dtype policy, by layer name: the encoder's and decoder's (their ``keras.Input``
    layers included) and ``Sampling``."""
    vae = model.model
    return {layer.name: layer.dtype_policy.name for layer in (*vae.encoder.layers, *vae.decoder.layers, vae.sampling)}


def iterations(model) -> int:
    import keras

    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def float32_state(model) -> dict[str, list[str]]:
    """The dtypes of the weights and of Adam's moments (which Keras makes at the first step), by kind; all
    float32 in every precision."""
    opt = model.optimizer
    return {"weights": sorted({str(v.dtype) for v in model.model.weights}),
            "adam": sorted({str(v.dtype) for v in opt._momentums + opt._velocities})}


def assert_float32_state(model) -> None:
    state = float32_state(model)
    assert state == {"weights": ["float32"], "adam": ["float32"]}, state


@check
def check_bf16_against_fp32(cls, _) -> dict[str, Any]:
    x, eps = data()
    fp32, bf16 = build(cls, "fp32"), build(cls, "bf16")
    named = policies(bf16)
    assert named["sampling"] == "float32", named  # the spec keeps the sampling in float32
    assert named["z_mean"] == named["encoder_0"] == named["decoder_0"] == "mixed_bfloat16", named
    assert set(policies(fp32).values()) == {"float32"}, policies(fp32)

    f32, f16 = fp32.eval_forward(x, eps), bf16.eval_forward(x, eps)
    assert {k: str(v.dtype) for k, v in f16.items()} == {"recon": "float32", "z_mean": "float32",
                                                         "z_log_var": "float32"}
    grid = {k: off_bf16_grid(f16[k]) for k in ("z_mean", "z_log_var")}
    assert grid == {"z_mean": 0.0, "z_log_var": 0.0}, grid  # cast up from a bfloat16 layer, not recomputed
    assert off_bf16_grid(f32["z_mean"]) > 0.5, off_bf16_grid(f32["z_mean"])

    (l32, g32), (l16, g16) = fp32.loss_and_grads(x, eps), bf16.loss_and_grads(x, eps)
    assert np.isfinite(l16) and abs(l16 - l32) <= LOSS_RTOL * abs(l32), (l16, l32)
    assert {str(g.dtype) for g in g16.values()} == {"float32"}
    assert all(np.all(np.isfinite(g)) for g in g16.values())

    t32, t16 = fp32.train_step(x, eps), bf16.train_step(x, eps)  # train_on_batch
    assert isinstance(t16, float) and np.isfinite(t16), t16
    assert_float32_state(bf16)
    w32, w16 = fp32.get_weights(), bf16.get_weights()
    step = rel(w16, w32)
    assert step <= STEP_RTOL, step
    return {"loss": [l32, l16], "train_on_batch": [t32, t16], "grads_rel": rel(g16, g32), "step_rel": step}


@check
def check_bf16_fit(cls, _) -> dict[str, Any]:
    """``fit``, the default loop, over a bf16 build: finite losses, and float32 weights and moments."""
    model = build(cls, "bf16")
    x, _ = data(seed=1)
    start, seen = iterations(model), []
    model.train_steps(lambda: x, 3, lambda i, handle: seen.append(handle))
    losses = [model.loss_value(h) for h in seen]
    assert len(losses) == 3 and all(np.isfinite(losses)), losses
    assert iterations(model) - start == 3
    assert_float32_state(model)
    assert off_bf16_grid(model.eval_forward(x, data()[1])["z_mean"]) == 0.0
    return {"losses": losses}


@check
def check_fp32_after_bf16(cls, _) -> dict[str, Any]:
    """The policy is the layers', never Keras' global one: a float32 build after a bf16 one is float32."""
    import keras

    x, eps = data()
    build(cls, "bf16")
    model = build(cls, "fp32")
    assert keras.config.dtype_policy().name == "float32"
    assert set(policies(model).values()) == {"float32"}, policies(model)
    share = off_bf16_grid(model.eval_forward(x, eps)["z_mean"])
    assert share > 0.5, share
    model.train_step(x, eps)
    assert_float32_state(model)
    return {"off_grid": share}


@check
def check_bias_grads_are_float32_sums(cls, _) -> dict[str, Any]:
    """Each bf16 dense and conv layer (``keras_layer``, stride 1) sums its bias gradient in float32 and keeps it
    float32: over (8, 512) positions, a bfloat16 incoming gradient of values in [0.5, 1.5] sums to its float64 sum
    (``BIAS_SUM_RTOL``). A bfloat16 sum stalls once its running total's spacing outgrows the terms."""
    import keras
    from keras import ops

    from impls.keras_backend import value_and_grad
    from impls.keras_layers import keras_layer

    spec = preset("dense", LENGTH).with_settings(precision="bf16")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(BATCH, 512, 3)).astype(np.float32)
    out = {}
    for kind, args in (("dense", {"units": 4}), ("conv1d", {"filters": 4, "kernel_size": 3}),
                       ("conv_transpose1d", {"filters": 4, "kernel_size": 3})):
        layer = keras_layer(spec, Layer(kind, args), f"probe_{kind}")
        inp = keras.Input(shape=x.shape[1:])
        # a functional model calls the layer as a model does (``Layer.__call__``: the policy's casts and autocast);
        # the layer's own ``stateless_call`` would skip them and run in float32
        model = keras.Model(inp, layer(inp))
        assert str(model.outputs[0].dtype) == "bfloat16" and str(layer.bias.dtype) == "float32", kind
        # a weight on each output, cut to the bfloat16 grid: the loss's gradient with respect to the output, exactly
        weight = rng.uniform(0.5, 1.5, (BATCH, 512, 4)).astype(np.float32)
        weight = (weight.view(np.uint32) & 0xFFFF0000).view(np.float32)

        def loss(values, x, weight, model=model):
            y, _ = model.stateless_call(values, [], x)
            return ops.sum(ops.cast(y, "float32") * weight)

        names = [v.name for v in model.trainable_variables]
        _, grads = value_and_grad(loss)([v.value for v in model.trainable_variables], ops.convert_to_tensor(x),
                                        ops.convert_to_tensor(weight))
        got = np.asarray(ops.convert_to_numpy(grads[names.index("bias")]), np.float64)
        exact = weight.astype(np.float64).sum(axis=(0, 1))
        out[kind] = float(np.max(np.abs(got - exact) / exact))
        assert out[kind] <= BIAS_SUM_RTOL, (kind, got, exact)
    return out


@check
def check_bf16_conv_final_bias_grads(cls, _) -> dict[str, Any]:
    """conv-final k=5 (L=512), batch 8, on parity's inputs: the bf16 build's bias gradients against its own float32
    build's, each within ``DECODER_BIAS_RTOL`` (the decoder's) or ``BIAS_RTOL`` (the rest); tensors whose float32
    gradient is below ``TINY_GRAD`` of the total are left out."""
    spec = preset("conv-final", 512)
    inputs = parity_inputs(spec, 5, BATCH)
    weights = {name[2:]: v for name, v in inputs.items() if name.startswith("w:")}
    g32, g16 = (cls.with_weights(spec.with_settings(precision=p), weights).loss_and_grads(inputs["x"], inputs["eps"])[1]
                for p in ("fp32", "bf16"))
    total = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in g32.values()))
    errors = {name: rel_l2(g16[name], g) for name, g in g32.items()
              if name.endswith(".bias") and np.linalg.norm(g.astype(np.float64)) >= TINY_GRAD * total}
    assert {"decoder.7.bias", "decoder.10.bias"} <= set(errors), sorted(errors)
    over = {name: e for name, e in errors.items()
            if e > (DECODER_BIAS_RTOL if name.startswith("decoder.") else BIAS_RTOL)}
    assert not over, over
    return {name: float(f"{e:.2e}") for name, e in errors.items()}


#: no model shared between the checks: each builds its own
SHARED = lambda cls: None
reports, test_child_ran, test_check = keras_check_tests(__file__, CHECKS)
