"""The Keras build in mixed precision (``settings.precision: bf16``), on all three backends.

Under bf16 every layer of the Keras model takes the ``mixed_bfloat16`` dtype policy (``impls.keras_layers``):
bfloat16 compute over float32 variables. The checks below hold the build to what the spec asks of it: the latent
heads compute in bfloat16, so ``eval_forward``'s float32 ``z_mean`` and ``z_log_var`` lie on the bfloat16 grid
(their low 16 bits zero; parity tells a bf16 build from a float16 one by it) and a float32 build's do not; the
loss stays finite and within a few 1e-2 of the float32 build's; the weights, the gradients and Adam's moments
stay float32 through ``train_on_batch`` and ``fit``; and the policy is the layers', not Keras' global one, so a
float32 model built after a bf16 one in the same process is float32.

As in ``tests/impls/keras/test_impl_keras.py``, Keras fixes its backend once per process, so every ``check_*``
below runs in a child per backend (``tests/fixtures/keras_children.py``) and each entry of its report becomes
its own test here. This module is not one of ``keras_children.KERAS_MODULES`` (the run's shared children), so it
starts its own three, once per run. Dense at k=3 (L=32), batch 8.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fixtures.keras_children import BACKENDS, assert_check, assert_child_ran, check_registry, run_children

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

CHECKS, check = check_registry()


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A batch of inputs in [0, 1] and standard-normal noise shaped like the latent."""
    spec = preset("dense", LENGTH)
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(BATCH, LENGTH)).astype(np.float32)
    return x, rng.normal(size=(BATCH, *latent_shape(spec))).astype(np.float32)


def off_grid(a: np.ndarray) -> float:
    """The share of float32 values off the bfloat16 grid (any of their low 16 bits set)."""
    a = np.ascontiguousarray(np.asarray(a, np.float32))
    return float(np.mean((a.view(np.uint32) & 0xFFFF) != 0))


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
    grid = {k: off_grid(f16[k]) for k in ("z_mean", "z_log_var")}
    assert grid == {"z_mean": 0.0, "z_log_var": 0.0}, grid  # cast up from a bfloat16 layer, not recomputed
    assert off_grid(f32["z_mean"]) > 0.5, off_grid(f32["z_mean"])

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
    assert off_grid(model.eval_forward(x, data()[1])["z_mean"]) == 0.0
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
    share = off_grid(model.eval_forward(x, eps)["z_mean"])
    assert share > 0.5, share
    model.train_step(x, eps)
    assert_float32_state(model)
    return {"off_grid": share}


#: no model shared between the checks: each builds its own
SHARED = lambda cls: None


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """``{backend: report}``: this module's checks in a child per backend, once per run."""
    from fixtures.once import once_per_run

    everything = once_per_run(tmp_path_factory, "keras-bf16-children", lambda: run_children(("test_bf16_keras",)))
    return {backend: report if "_crashed" in report else report["test_bf16_keras"]
            for backend, report in everything.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_child_ran(reports, backend):
    assert_child_ran(reports, backend)


@pytest.mark.parametrize("name", list(CHECKS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_check(reports, backend, name):
    assert_check(reports, backend, name)
