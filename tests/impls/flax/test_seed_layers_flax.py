"""Issue 13's last layers in the Flax NNX build, against the float64 numpy reference.

``KL_SMALL`` (group_norm, silu, selu, attention1d, zero-initialised convs, conv1d latent heads) and
``MASKED_SMALL`` (masking, masked_bce, the KL divided by the features) from
``tests/fixtures/seed_layer_specs.py``. One adapter per spec is built and shared; every test that
depends on the weights sets them first, so the order tests run in does not matter. KL_SMALL's eval forward, loss
and gradients are parity's (``tests/impls/test_parity.py``: every gradient tensor against PyTorch's, whose every
tensor is checked by finite differences in ``tests/impls/torch/test_seed_layers_torch.py``).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("flax")

from fixtures.seed_layer_specs import AUTOENCODER_KL_CASES, CONV_LATENT_TINY, KL_SMALL, MASKED_SMALL  # noqa: E402

from harness.adapter import load_adapter_class  # noqa: E402
from harness.spec import reference  # noqa: E402
from harness.spec.params import count_params, param_table  # noqa: E402
from harness.spec.presets import FIXED_INPUT_LENGTH, preset  # noqa: E402
from harness.spec.shapes import latent_shape  # noqa: E402

BATCH = 4
SPECS = {"kl": KL_SMALL, "masked": MASKED_SMALL}


@functools.lru_cache(maxsize=None)
def build(name: str):
    """The adapter and the weights its own initialisation gave (read before any test sets others)."""
    model = load_adapter_class("flax")(SPECS[name])
    return model, model.get_weights()


def start_weights(spec) -> dict[str, np.ndarray]:
    """Non-trivial group_norm scales and shifts, and the zero-initialised tensors given values."""
    return reference.perturb_zero_init(spec, reference.perturb_batch_norm(spec, reference.init_weights(spec)))


def batch(spec, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, spec.input_length)).astype(np.float32)
    eps = rng.standard_normal((BATCH, *latent_shape(spec))).astype(np.float32)
    return x, eps


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def reference_loss(spec, w, x, eps, mask_block=None) -> tuple[dict[str, np.ndarray], float]:
    ref = reference.eval_forward(spec, w, x, eps, mask_block)
    return ref, reference.vae_loss(spec, x, ref["logits"], ref["z_mean"], ref["z_log_var"], mask_block)


# ------------------------------------------------------------------ against the reference


def test_masked_small_forward_and_loss_match_the_reference_for_every_block():
    """A given mask_block: that block set to -1 before the encoder (so the forward depends on it), the
    masked BCE on it alone, the KL divided by the 23 features."""
    spec = MASKED_SMALL
    model, _ = build("masked")
    w = start_weights(spec)
    model.set_weights(w)
    x, eps = batch(spec)
    losses = []
    for block in range(len(spec.masking.args["blocks"])):
        got = model.eval_forward(x, eps, mask_block=block)
        ref, want = reference_loss(spec, w, x, eps, block)
        for key in ("recon", "z_mean", "z_log_var"):
            assert rel_l2(got[key], ref[key]) <= 1e-5, (block, key)
        loss, grads = model.loss_and_grads(x, eps, mask_block=block)
        assert loss == pytest.approx(want, rel=1e-5), block
        assert all(np.all(np.isfinite(g)) for g in grads.values())
        losses.append(loss)
    assert len(set(losses)) == len(losses)  # the block matters


# ---------------------------------------------------------------------------- model facts


@pytest.mark.parametrize(("name", "length"), [*AUTOENCODER_KL_CASES,
                                              ("masked-multiomics", FIXED_INPUT_LENGTH["masked-multiomics"])])
def test_count_params_matches_the_spec(name, length):
    spec = preset(name, length)
    assert load_adapter_class("flax").count_params(spec) == count_params(spec)


@pytest.mark.parametrize("name", ["kl", "masked"])
def test_param_counts_and_own_init(name):
    """nnx.initializers.zeros for every ``zero_init`` tensor (the zero-init convs and the attention's
    output projection); Glorot kernels and unit GroupNorm scales elsewhere."""
    spec = SPECS[name]
    model, initial = build(name)
    assert model.param_counts() == count_params(spec)
    table = param_table(spec)
    assert any(p.zero_init for p in table) == (name == "kl")
    for p in table:
        value = initial[p.name]
        assert value.shape == p.shape, p.name
        if p.zero_init:
            assert not np.any(value), p.name
        elif p.name.endswith(".kernel"):
            assert np.any(value), p.name
        elif p.name.endswith(".gamma"):
            assert np.all(value == 1), p.name


# ------------------------------------------------------------------------------- training


def test_masking_block_is_drawn_per_step_from_the_seeded_stream():
    """train_step(x, eps) on a masking spec draws the block inside the jitted step: each step's loss is
    the loss of exactly one block at the weights before it (loss_and_grads with that block fixed),
    consecutive steps draw different blocks, and a build from the same seed draws the same ones: one built
    loaded (``with_weights``, whose init program writes the weights over the draws) against one built at the
    spec's initialisers, so the masking stream is the same either way. (The one-step training check of
    MASKED_SMALL: these steps' losses are finite.)"""
    spec = MASKED_SMALL
    x, eps = batch(spec)
    blocks = range(len(spec.masking.args["blocks"]))

    def draws(model) -> list[int]:
        model.set_weights(start_weights(spec))
        out = []
        for _ in range(4):
            per_block = [model.loss_and_grads(x, eps, mask_block=b)[0] for b in blocks]
            step = model.loss_value(model.train_step(x, eps))
            assert np.isfinite(step)
            match = [b for b in blocks if step == pytest.approx(per_block[b], rel=1e-6)]
            assert len(match) == 1, (step, per_block)
            out.append(match[0])
        return out

    first = draws(build("masked")[0])
    assert len(set(first)) > 1, first
    again = load_adapter_class("flax").with_weights(spec, start_weights(spec))
    assert draws(again) == first


def test_one_drawn_step_trains_a_conv_latent():
    """train_step(x), the noise drawn inside the jitted step, on conv1d latent heads (a (length, channels)
    latent, as KL_SMALL's): the loss is finite and the weights move. KL_SMALL's fixed-noise step is parity's;
    the drawn noise depends only on the latent's shape, so the drawn step runs on ``CONV_LATENT_TINY``, whose
    step compiles in a sixth of KL_SMALL's time (that check took 22 s of the suite's CPU)."""
    spec = CONV_LATENT_TINY
    w = start_weights(spec)
    model = load_adapter_class("flax").with_weights(spec, w)
    x, _ = batch(spec)
    loss = model.loss_value(model.train_step(x))
    assert np.isfinite(loss)
    after = model.get_weights()
    assert all(np.all(np.isfinite(v)) for v in after.values())
    assert not np.array_equal(after["z_mean.kernel"], w["z_mean.kernel"])
