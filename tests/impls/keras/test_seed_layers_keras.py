"""The Keras build's issue-13 layers (group_norm, silu, selu, attention1d, masking, ``init: zeros``, conv1d
latent heads, masked_bce, kl_normalisation) against the float64 numpy reference, on all three backends: counts,
initialisers, the masking draw and one step. Their eval forward, loss and gradients are parity's
(``tests/impls/test_parity.py``: ``autoencoder-kl-small`` and ``masked-small``, every build, forward and loss
against the reference at relative 1e-5, every gradient tensor against PyTorch's, whose every tensor is checked
by finite differences in ``tests/impls/torch/test_seed_layers_torch.py``), which runs the same specs in every
build's worker anyway.

As in ``tests/impls/keras/test_impl_keras.py``, Keras fixes its backend once per process, so every ``check_*`` below
runs in the run's one child per backend (``tests/fixtures/keras_children.py``) and each entry of its
report becomes its own test here. Small
specs only (``KL_SMALL`` L=31, ``MASKED_SMALL`` L=23, batch 4); the presets are only counted.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from fixtures.keras_children import check_registry, keras_check_tests
from fixtures.seed_layer_specs import AUTOENCODER_KL_CASES, KL_SMALL, MASKED_SMALL

from harness.spec.params import count_params, param_table
from harness.spec.presets import preset
from harness.spec.reference import init_weights, perturb_batch_norm, perturb_zero_init
from harness.spec.shapes import latent_shape

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

BATCH = 4
#: the masking check's fixed block (MASKED_SMALL's blocks are 10, 8, 4, 1 long)
MASK_BLOCK = 1

CHECKS, check = check_registry()


def batch(spec, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs in [0, 1] and standard-normal noise shaped like the latent."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(BATCH, spec.input_length)).astype(np.float32)
    return x, rng.normal(size=(BATCH, *latent_shape(spec))).astype(np.float32)


def reference_weights(spec) -> dict[str, np.ndarray]:
    """Seeded weights where every layer carries signal: zero-init tensors and norms perturbed."""
    return perturb_zero_init(spec, perturb_batch_norm(spec, init_weights(spec)))


class Models:
    """One model per small spec per child, and the build's own initial weights, read before any set."""

    def __init__(self, cls: type) -> None:
        self.cls, self.cache, self.initial = cls, {}, {}

    def __call__(self, spec):
        if spec.name not in self.cache:
            self.cache[spec.name] = model = self.cls(spec)
            self.initial[spec.name] = model.get_weights()
        return self.cache[spec.name]


#: the presets are counted in one child only: Keras' count comes from the layers' shapes, the same on every
#: backend, and tracing the 3.4M-parameter autoencoder-kl symbolically costs ~10 s of CPU a length on jax
#: (``python -m bench params`` counts every preset on every backend)
PRESET_COUNT_BACKEND = "torch"


@check
def check_param_counts(cls, models) -> dict[str, int]:
    seen = {}
    for spec in (KL_SMALL, MASKED_SMALL):  # a built model's own count
        got, want = models(spec).param_counts(), count_params(spec)
        assert got == want, f"{spec.name}: {got} != {want}"
        seen[spec.name] = got.total
    if os.environ["KERAS_BACKEND"] == PRESET_COUNT_BACKEND:
        for name, length in (*AUTOENCODER_KL_CASES, ("masked-multiomics", None)):
            spec = preset(name, length)
            got, want = cls.count_params(spec), count_params(spec)
            assert got == want, f"{name} L={spec.input_length}: {got} != {want}"
            seen[f"{name}@{spec.input_length}"] = got.total
    return seen


@check
def check_zero_init(cls, models) -> dict[str, int]:
    """The build's own init: exact zeros for every ``zero_init`` tensor (Keras' "zeros" initializer), a
    non-zero kernel everywhere else (biases and betas are zeros by the spec's bias_init anyway)."""
    models(KL_SMALL)
    initial = models.initial[KL_SMALL.name]
    zero = [p.name for p in param_table(KL_SMALL) if p.zero_init]
    assert zero, "KL_SMALL has zero-init tensors"
    for name in zero:
        assert not np.any(initial[name]), name
    kernels = [p.name for p in param_table(KL_SMALL) if not p.zero_init and p.name.endswith((".kernel", ".gamma"))]
    for name in kernels:
        assert np.all(initial[name] != 0) if name.endswith(".gamma") else np.count_nonzero(initial[name]), name
    return {"zero_init": len(zero), "non_zero": len(kernels)}


def drawn_blocks(model, w, x, eps, fixed_losses: np.ndarray, steps: int) -> list[int]:
    """The block each of ``steps`` training steps drew, each from the same weights: the fixed-block loss its
    loss equals (train_step's loss is the loss before the update)."""
    blocks = []
    for _ in range(steps):
        model.set_weights(w)  # resets weights and Adam, not the seed generator
        loss = model.loss_value(model.train_step(x, eps))
        err = np.abs(fixed_losses - loss) / np.abs(fixed_losses)
        assert err.min() <= 1e-5, (loss, fixed_losses)
        blocks.append(int(err.argmin()))
    return blocks


@check
def check_masking_draws_per_step_from_the_seed(cls, models) -> dict[str, Any]:
    """With no mask_block each training step draws its block inside the step: over four steps on the same
    batch (and noise) the draws differ, and a second model built from the spec (and the weights) draws the same
    sequence."""
    spec, w = MASKED_SMALL, reference_weights(MASKED_SMALL)
    model = models(spec)
    model.set_weights(w)
    x, eps = batch(spec)
    fixed = np.array([model.loss_and_grads(x, eps, mask_block=j)[0] for j in range(len(spec.masking.args["blocks"]))])
    assert len(set(np.round(fixed, 5))) == len(fixed), fixed  # each block's loss tells it apart
    blocks = drawn_blocks(model, w, x, eps, fixed, 4)
    assert len(set(blocks)) > 1, blocks
    again = drawn_blocks(cls.with_weights(spec, w), w, x, eps, fixed, 4)  # built loaded: the same stream
    assert again == blocks, (blocks, again)
    return {"blocks": blocks, "fixed_losses": fixed.tolist()}


#: the backend that steps KL_SMALL: a step is Keras' own trainer (forward, gradient, TextbookAdam) over the
#: layers the checks above compare on every backend, and compiling it costs ~10 s of CPU on jax and ~7 s on
#: tensorflow; MASKED_SMALL's step (the seed state threaded through the compiled step) runs on every backend
KL_STEP_BACKEND = "torch"


@check
def check_one_training_step(cls, models) -> dict[str, float]:
    """One step (noise fixed, so that no new input structure is compiled; MASKED_SMALL's block drawn): a finite
    loss, for KL_SMALL loss_and_grads' loss at the same weights, and weights that moved, the zero-initialised
    ones included."""
    out = {}
    for spec in (KL_SMALL, MASKED_SMALL) if os.environ["KERAS_BACKEND"] == KL_STEP_BACKEND else (MASKED_SMALL,):
        model, w = models(spec), reference_weights(spec)
        model.set_weights(w)
        x, eps = batch(spec, seed=1)
        want = model.loss_and_grads(x, eps)[0] if spec is KL_SMALL else None
        out[spec.name] = loss = model.loss_value(model.train_step(x, eps))
        assert np.isfinite(loss), (spec.name, loss)
        assert want is None or abs(loss - want) <= 1e-5 * abs(want), (loss, want)
        after = model.get_weights()
        assert all(not np.array_equal(after[p.name], w[p.name]) for p in param_table(spec) if p.trainable), spec.name
    return out


# ----------------------------------------------------------------------------- the tests


#: what the checks share in a child, built once per backend from the adapter class
SHARED = Models
reports, test_child_ran, test_check = keras_check_tests(__file__, CHECKS)
