"""The PyTorch build's issue-13 layers against the float64 numpy reference.

group_norm, silu, selu, attention1d, masking, ``init: zeros``, conv1d latent heads, masked BCE and
the per-feature KL, on the small specs of ``tests/fixtures/seed_layer_specs.py`` (``KL_SMALL``,
L=31, and ``MASKED_SMALL``, L=23) from ``perturb_zero_init`` weights, so that every zero-initialised
layer carries signal; parameter counts of the ``autoencoder-kl`` and ``masked-multiomics`` presets.
"""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.gradcheck import reference_slope
from fixtures.seed_layer_specs import AUTOENCODER_KL_CASES, KL_SMALL, MASKED_SMALL

from harness.adapter import load_adapter_class
from harness.run.parity import structurally_zero_grads
from harness.spec.params import count_params, param_table
from harness.spec.presets import preset
from harness.spec.reference import eval_forward, init_weights, perturb_batch_norm, perturb_zero_init, vae_loss
from harness.spec.schema import VAESpec
from harness.spec.shapes import latent_shape

torch = pytest.importorskip("torch")

BATCH = 4
SPECS = {"kl": KL_SMALL, "masked": MASKED_SMALL}


_CACHE: dict[str, object] = {}


def adapter_for(spec: VAESpec):
    """One adapter per spec for the module; every test starts with set_weights, which resets Adam."""
    if spec.hash not in _CACHE:
        _CACHE[spec.hash] = load_adapter_class("torch")(spec)
    return _CACHE[spec.hash]


def weights(spec: VAESpec) -> dict[str, np.ndarray]:
    return perturb_zero_init(spec, perturb_batch_norm(spec, init_weights(spec)))


def batch(spec: VAESpec, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, spec.input_length), dtype=np.float32)
    eps = rng.standard_normal((BATCH, *latent_shape(spec))).astype(np.float32)
    return x, eps


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


# ------------------------------------------------------------------ forward and loss


@pytest.mark.parametrize("name,block", [("kl", None), *(("masked", j) for j in range(4))])
def test_eval_forward_and_loss_match_the_reference(name, block):
    """GroupNorm, SiLU, SELU, attention (both epsilons, a perturbed zero projection), the conv latent
    heads' (16, 2) latent, crop_or_pad; and each masking block with masked BCE and the per-feature KL."""
    spec = SPECS[name]
    a, w = adapter_for(spec), weights(spec)
    a.set_weights(w)
    x, eps = batch(spec)
    fixed = {} if block is None else {"mask_block": block}
    got = a.eval_forward(x, eps, **fixed)
    ref = eval_forward(spec, w, x, eps, block)
    for key in ("recon", "z_mean", "z_log_var"):
        assert got[key].shape == ref[key].shape, key
        assert rel(got[key], ref[key]) <= 1e-5, (key, rel(got[key], ref[key]))
    loss, grads = a.loss_and_grads(x, eps, **fixed)
    assert loss == pytest.approx(vae_loss(spec, x, ref["logits"], ref["z_mean"], ref["z_log_var"], block), rel=1e-5)
    assert set(grads) == {p.name for p in param_table(spec) if p.trainable}
    assert all(np.array_equal(v, w[k]) for k, v in a.get_weights().items())  # nothing was updated


def test_masking_needs_a_block_outside_training():
    a = adapter_for(MASKED_SMALL)
    x, eps = batch(MASKED_SMALL)
    with pytest.raises(ValueError, match="mask_block"):
        a.eval_forward(x, eps)
    with pytest.raises(ValueError, match="mask_block"):
        a.loss_and_grads(x, eps)


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize(("spec", "block"), [(KL_SMALL, None), (MASKED_SMALL, 1)], ids=["kl-small", "masked-small"])
def test_every_gradient_matches_the_reference_by_finite_differences(spec, block):
    """A step along each trainable tensor's gradient changes the float64 reference loss by its norm, every
    tensor but the structurally zero ones (an attention's key bias; parity holds those to zero in every build).
    Every one, not a sample: parity holds every build's gradients to this build's, tensor by tensor, so this is
    what ties each build's gradients to the reference (the Flax and Keras checks of a sample of KL_SMALL's
    were dropped for it). KL_SMALL: GroupNorm (alone and in a residual), attention (encoder and decoder) with
    its perturbed zero-init projection, perturbed zero-init convs, the conv latent heads, the stride-2
    conv-transpose; MASKED_SMALL: masked BCE's gradient (clipped probabilities, the block's positions only)
    through the masked input, block 1 fixed. Measured: every one within 1e-4 relative (64 and 14 tensors, 3.7 s)."""
    a, w = adapter_for(spec), weights(spec)
    a.set_weights(w)
    x, eps = batch(spec)
    fixed = {} if block is None else {"mask_block": block}
    _, grads = a.loss_and_grads(x, eps, **fixed)
    zero = structurally_zero_grads(spec)
    checked = [p.name for p in param_table(spec) if p.trainable and p.name not in zero]
    for k in checked:
        slope = reference_slope(spec, w, x, eps, k, grads[k], mask_block=block)
        assert slope == pytest.approx(np.linalg.norm(grads[k]), rel=1e-3), k
    assert len(checked) == {"autoencoder-kl-small": 64, "masked-small": 14}[spec.name]
    if block is None:
        return
    # the loss sees only the masked block: logits outside it get no gradient
    outside = ~np.isin(np.arange(spec.input_length), np.arange(10, 18))
    assert not grads["decoder.4.bias"][outside].any() and grads["decoder.4.bias"][~outside].all()


# ------------------------------------------------------------------ parameters and init


@pytest.mark.parametrize("name,length", [*AUTOENCODER_KL_CASES, ("masked-multiomics", 12_001)])
def test_param_counts(name, length):
    spec = preset(name, length)
    assert load_adapter_class("torch").count_params(spec) == count_params(spec)


def test_param_counts_of_a_built_model():
    spec = preset(*AUTOENCODER_KL_CASES[0])
    assert adapter_for(spec).param_counts() == count_params(spec)
    assert adapter_for(KL_SMALL).param_counts() == count_params(KL_SMALL)


@pytest.mark.parametrize("name", ["kl", "autoencoder-kl"])
def test_init_zeros_gives_exact_zeros(name):
    """``init: zeros`` kernels and biases (residual convs, attention projections) start at exactly zero via
    ``nn.init.zeros_``; every other kernel is Glorot (non-zero), GroupNorm gamma one."""
    spec = KL_SMALL if name == "kl" else preset(*AUTOENCODER_KL_CASES[0])
    w = adapter_for(spec).get_weights() if name == "autoencoder-kl" else load_adapter_class("torch")(spec).get_weights()
    table = param_table(spec)
    zero = [p.name for p in table if p.zero_init]
    assert any(".proj." in k for k in zero) and any(".inner.5." in k for k in zero)
    for p in table:
        if p.zero_init:
            assert not w[p.name].any(), p.name
        elif p.name.endswith(".kernel"):
            assert np.count_nonzero(w[p.name]) == w[p.name].size, p.name
        elif p.name.endswith(".gamma"):
            assert np.array_equal(w[p.name], np.ones(p.shape, np.float32)), p.name


# ------------------------------------------------------------------ training


def test_training_draws_the_masking_block_from_the_seed():
    """Without ``mask_block`` each step draws its block on the device: restarting from the same weights, each
    step's loss is the fixed-block loss of one block, the blocks vary from step to step, and a fresh build
    (same seed) draws the same sequence."""
    spec = MASKED_SMALL
    w = weights(spec)
    x, eps = batch(spec)
    a = adapter_for(spec)
    a.set_weights(w)
    by_block = [a.loss_and_grads(x, eps, mask_block=j)[0] for j in range(4)]
    assert len({round(v, 5) for v in by_block}) == 4  # the blocks are told apart by their loss

    def drawn(adapter) -> list[int]:
        out = []
        for _ in range(8):
            adapter.set_weights(w)  # the same start, so the loss names the block
            loss = adapter.loss_value(adapter.train_step(x, eps))
            out.append(int(np.argmin([abs(loss - v) for v in by_block])))
            assert loss == pytest.approx(by_block[out[-1]], rel=1e-6)
        return out

    first = drawn(load_adapter_class("torch")(spec))
    assert len(set(first)) > 1, first
    assert drawn(load_adapter_class("torch")(spec)) == first


@pytest.mark.parametrize("name", ["kl", "masked"])
def test_one_train_step(name):
    """One step with fixed noise (and block) is Adam's first step on loss_and_grads' gradient; a step drawing
    its own noise (and block) gives a finite loss."""
    spec = SPECS[name]
    a, w = adapter_for(spec), weights(spec)
    a.set_weights(w)
    x, eps = batch(spec)
    fixed = {} if spec.masking is None else {"mask_block": 2}
    loss, grads = a.loss_and_grads(x, eps, **fixed)
    h = a.train_step(x, eps, **fixed)
    assert isinstance(h, torch.Tensor) and a.loss_value(h) == pytest.approx(loss, rel=1e-6)
    o, after = spec.optimizer, a.get_weights()
    for k, g in grads.items():
        np.testing.assert_allclose(after[k], w[k] - o.lr * g / (np.abs(g) + o.eps), rtol=0, atol=1e-6, err_msg=k)
    assert np.isfinite(a.loss_value(a.train_step(x)))
