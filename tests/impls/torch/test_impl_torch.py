"""The PyTorch build against the spec and the float64 numpy reference.

Small specs only (k=3 -> L=32, k=5 -> L=512, batch 8); k=7 param counts are read
from a model built on the meta device, which allocates nothing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from fixtures.gradcheck import reference_slope
from fixtures.residual_specs import RESIDUAL, RESIDUAL_NO_BN, RESVAE_CASES
from fixtures.strided_specs import CONV_STRIDED_CASES, STRIDED

from harness.adapter import load_adapter_class
from harness.run.compile_cache import compile_cached
from harness.spec.layers import L
from harness.spec.params import count_params, param_table
from harness.spec.presets import ALL_PRESETS, preset
from harness.spec.reference import eval_forward, init_weights, perturb_batch_norm, vae_loss
from harness.spec.schema import VAESpec

torch = pytest.importorskip("torch")

BATCH = 8
VALID = [  # (preset, L) combinations that pass every pool
    ("dense", 32), ("dense", 512), ("conv-final", 512), ("conv-revised", 512),
    ("conv-original", 32), ("conv-original", 512), *CONV_STRIDED_CASES, *RESVAE_CASES,
]

# A spec built to reach the rarer paths of the flat-feature bookkeeping: a 2-D -> 2-D
# reshape (needs a Reorder), a BatchNorm on a channels-first flatten (permuted params),
# a dense -> batch_norm -> activation -> reshape chain (permuted dense columns and BN
# params) and a decoder ending in a multi-channel flatten (Reorder back to canonical).
ODD = VAESpec(
    name="odd-layouts",
    input_length=32,
    latent_dim=6,
    encoder=(
        L("reshape", shape=[32, 1]),
        L("conv1d", filters=4, kernel_size=3), L("gelu"),
        L("reshape", shape=[16, 8]),
        L("max_pool1d", pool_size=2),
        L("flatten"),
        L("batch_norm"),
        L("dense", units=16), L("leaky_relu"),
    ),
    decoder=(
        L("dense", units=64), L("batch_norm"), L("relu"),
        L("reshape", shape=[8, 8]),
        L("conv_transpose1d", filters=2, kernel_size=5), L("sigmoid"),
        L("upsample1d", size=2),
        L("flatten"),
    ),
)


def load_torch_adapter():
    return load_adapter_class("torch")


_CACHE: dict[str, object] = {}


def adapter_for(spec: VAESpec):
    """One adapter per spec for the whole module; tests start with set_weights, which resets it."""
    if spec.hash not in _CACHE:
        _CACHE[spec.hash] = load_torch_adapter()(spec)
    return _CACHE[spec.hash]


def batch(spec: VAESpec, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, spec.input_length), dtype=np.float32)
    eps = rng.standard_normal((BATCH, spec.latent_dim)).astype(np.float32)
    return x, eps


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def test_class_facts():
    cls = load_torch_adapter()
    assert cls.name == "torch" and cls.framework == "torch"
    v = cls.versions()
    assert v["framework"] == torch.__version__ and all(isinstance(s, str) for s in v.values())
    assert cls.device_kind() == ("gpu" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------ 1. param counts


@pytest.mark.parametrize("name,length", VALID)
def test_param_counts(name, length):
    spec = preset(name, length)
    assert adapter_for(spec).param_counts() == count_params(spec)


@pytest.mark.parametrize("name", list(ALL_PRESETS))
def test_param_counts_k7_on_meta(name):
    """k=7 (L=8192): conv-original alone has 1.6e9 parameters, so count a meta-device model."""
    from impls.torch_model import build_vae, parameter_counts

    spec = preset(name, 8192)
    with torch.device("meta"):
        model, _ = build_vae(spec)
    assert parameter_counts(model) == count_params(spec)


def test_param_counts_odd_layouts():
    assert adapter_for(ODD).param_counts() == count_params(ODD)


# ------------------------------------------------------------------ 2. weight round trip


@pytest.mark.parametrize("name,length", [*VALID[:5], ("odd", 32)])
def test_weights_round_trip(name, length):
    spec = ODD if name == "odd" else preset(name, length)
    a = adapter_for(spec)
    w = perturb_batch_norm(spec, init_weights(spec))
    a.set_weights(w)
    got = a.get_weights()
    table = {p.name: p.shape for p in param_table(spec)}
    assert set(got) == set(table)
    for k, v in got.items():
        assert v.dtype == np.float32 and v.shape == table[k], k
        np.testing.assert_array_equal(v, w[k], err_msg=k)


def test_init_is_glorot_and_zero():
    spec = preset("conv-final", 512)
    w = load_torch_adapter()(spec).get_weights()
    for p in param_table(spec):
        leaf = p.name.rsplit(".", 1)[1]
        if leaf == "bias":
            assert not w[p.name].any(), p.name
        else:
            receptive = math.prod(p.shape[:-2]) if len(p.shape) > 2 else 1
            limit = math.sqrt(6.0 / ((p.shape[-2] + p.shape[-1]) * receptive))
            assert np.abs(w[p.name]).max() <= limit and np.abs(w[p.name]).max() > 0.9 * limit, p.name
    # seeded: a second build gives the same weights
    w2 = load_torch_adapter()(spec).get_weights()
    assert all(np.array_equal(w[k], w2[k]) for k in w)


# ------------------------------------------------------------------ 3. eval forward


@pytest.mark.parametrize("name,length", [("dense", 32), ("dense", 512), ("conv-final", 512),
                                         ("conv-revised", 512), ("odd", 32), ("strided", 32),
                                         *CONV_STRIDED_CASES, ("residual", 32), *RESVAE_CASES])
def test_eval_forward_matches_reference(name, length):
    """conv-final at k=5 has (8, 64) flattens on both sides: this checks the flat-feature permutation.
    conv-strided at L=136 reaches odd lengths (17 -> 9) and crops 144 logits to 136; strided pads 30 to 32."""
    spec = {"odd": ODD, "strided": STRIDED, "residual": RESIDUAL}.get(name) or preset(name, length)
    a = adapter_for(spec)
    w = perturb_batch_norm(spec, init_weights(spec))
    a.set_weights(w)
    x, eps = batch(spec)
    got = a.eval_forward(x, eps)
    ref = eval_forward(spec, w, x, eps)
    for key in ("recon", "z_mean", "z_log_var"):
        assert got[key].shape == ref[key].shape, key
        assert rel(got[key], ref[key]) <= 1e-5, (key, rel(got[key], ref[key]))


# ------------------------------------------------------------------ 4. loss and grads


@pytest.mark.parametrize("name", ["conv-final", "conv-revised"])
def test_loss_and_grads(name):
    spec = preset(name, 512)
    a = adapter_for(spec)
    w = init_weights(spec)
    a.set_weights(w)
    x, eps = batch(spec)
    loss, grads = a.loss_and_grads(x, eps)
    ref = eval_forward(spec, w, x, eps)  # no BatchNorm: training and inference forward agree
    ref_loss = vae_loss(spec, x, ref["logits"], ref["z_mean"], ref["z_log_var"])
    assert isinstance(loss, float)
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    trainable = {p.name: p.shape for p in param_table(spec) if p.trainable}
    assert set(grads) == set(trainable)
    for k, g in grads.items():
        assert g.shape == trainable[k] and np.isfinite(g).all(), k
    # nothing was updated
    assert all(np.array_equal(v, w[k]) for k, v in a.get_weights().items())

    if name == "conv-final":
        # The gradients are in the canonical layout: a step along each one changes the float64
        # reference loss by |g| per unit length (a misplaced permutation or transpose would not).
        h = 1e-5
        for k in ("encoder.1.kernel", "encoder.9.kernel", "decoder.2.kernel", "decoder.7.kernel"):
            slope = reference_slope(spec, w, x, eps, k, grads[k], h)
            assert slope == pytest.approx(np.linalg.norm(grads[k]), rel=1e-3), k


def test_loss_and_grads_keeps_batch_norm_stats():
    spec = preset("dense", 32)
    a = adapter_for(spec)
    w = perturb_batch_norm(spec, init_weights(spec))
    a.set_weights(w)
    x, eps = batch(spec)
    _, grads = a.loss_and_grads(x, eps)
    assert set(grads) == {p.name for p in param_table(spec) if p.trainable}
    after = a.get_weights()
    assert all(np.array_equal(after[k], w[k]) for k in w)


def test_strided_loss_and_grads_match_the_reference_by_finite_differences():
    """Strided convs and conv-transposes (asymmetric padding, trim, k < s) and a zero-padded output:
    the loss is the reference's, and a step along each gradient changes the float64 reference loss
    by its norm, so the explicit pads and trims sit where Keras' "same" puts them."""
    spec = STRIDED
    a = adapter_for(spec)
    w = init_weights(spec)
    a.set_weights(w)
    x, eps = batch(spec)
    loss, grads = a.loss_and_grads(x, eps)
    ref = eval_forward(spec, w, x, eps)
    assert loss == pytest.approx(vae_loss(spec, x, ref["logits"], ref["z_mean"], ref["z_log_var"]), rel=1e-5)
    h = 1e-5
    for k in ("encoder.1.kernel", "encoder.3.kernel", "decoder.2.kernel", "decoder.4.kernel", "decoder.4.bias"):
        d = grads[k] / np.linalg.norm(grads[k])
        f = []
        for sign in (1, -1):
            r = eval_forward(spec, {**w, k: w[k].astype(np.float64) + sign * h * d}, x, eps)
            f.append(vae_loss(spec, x, r["logits"], r["z_mean"], r["z_log_var"]))
        assert (f[0] - f[1]) / (2 * h) == pytest.approx(np.linalg.norm(grads[k]), rel=1e-3), k


@pytest.mark.parametrize("name", ["residual", "resvae"])
def test_residual_and_mse_loss_and_grads_match_the_reference_by_finite_differences(name):
    """``ResidualBlock`` (identity, 1x1 conv and 1x1 strided conv-transpose skips) and resvae's MSE loss at
    k=3: the loss is the reference's, and a step along each gradient of an inner layer and of a skip
    changes the float64 reference loss by its norm."""
    spec = RESIDUAL_NO_BN if name == "residual" else preset("resvae", 32)
    a = adapter_for(spec)
    w = init_weights(spec)
    a.set_weights(w)
    x, eps = batch(spec)
    loss, grads = a.loss_and_grads(x, eps)
    assert set(grads) == {p.name for p in param_table(spec)}
    ref = eval_forward(spec, w, x, eps)
    assert loss == pytest.approx(vae_loss(spec, x, ref["logits"], ref["z_mean"], ref["z_log_var"]), rel=1e-5)
    h = 1e-5
    keys = (["encoder.2.inner.2.kernel", "encoder.3.skip.kernel", "decoder.2.inner.0.kernel", "decoder.2.skip.bias",
             "decoder.3.inner.1.kernel"] if name == "residual"
            else ["encoder.1.inner.0.kernel", "encoder.4.skip.kernel", "decoder.5.inner.2.kernel", "decoder.5.skip.kernel"])
    for k in keys:
        d = grads[k] / np.linalg.norm(grads[k])
        f = []
        for sign in (1, -1):
            r = eval_forward(spec, {**w, k: w[k].astype(np.float64) + sign * h * d}, x, eps)
            f.append(vae_loss(spec, x, r["logits"], r["z_mean"], r["z_log_var"]))
        assert (f[0] - f[1]) / (2 * h) == pytest.approx(np.linalg.norm(grads[k]), rel=1e-3), k


def test_clip_global_norm_scales_the_gradient_before_adam():
    """``clip_grad_norm_`` before the step: with a clip far below the gradient norm, Adam's first
    step is lr * c g / (|c g| + eps), c = clip / ||g||, visibly not the unclipped lr * g / (|g| + eps)."""
    spec = STRIDED.with_clip_norm(1e-5)
    a = adapter_for(spec)
    w = init_weights(spec)
    a.set_weights(w)
    x, eps = batch(spec)
    _, grads = a.loss_and_grads(x, eps)
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    assert norm > 1.0, norm  # clipping acts
    a.train_step(x, eps)
    after, o, c = a.get_weights(), spec.optimizer, 1e-5 / norm
    for k, g in grads.items():
        want = w[k] - o.lr * c * g / (np.abs(c * g) + o.eps)
        np.testing.assert_allclose(after[k], want, rtol=0, atol=1e-7, err_msg=k)
    unclipped = w["decoder.0.kernel"] - o.lr * grads["decoder.0.kernel"] / (np.abs(grads["decoder.0.kernel"]) + o.eps)
    assert np.abs(after["decoder.0.kernel"] - unclipped).max() > 0.1 * o.lr


# ------------------------------------------------------------------ 5. training


@pytest.mark.parametrize("name,length", [("dense", 32), ("conv-final", 512)])
def test_train_step(name, length):
    spec = preset(name, length)
    a = adapter_for(spec)
    w = init_weights(spec)
    a.set_weights(w)
    x, eps = batch(spec)
    _, grads = a.loss_and_grads(x, eps)
    h = a.train_step(x, eps)
    assert isinstance(h, torch.Tensor) and not h.requires_grad
    # Adam's first step is lr * g / (|g| + eps): bias correction makes m_hat = g and v_hat = g^2
    o = spec.optimizer
    after = a.get_weights()
    for k, g in grads.items():
        np.testing.assert_allclose(after[k], w[k] - o.lr * g / (np.abs(g) + o.eps), rtol=0, atol=1e-6, err_msg=k)
        assert not np.array_equal(after[k], w[k]), k
    handles = [h] + [a.train_step(x, eps) for _ in range(3)]
    a.synchronize()
    losses = [a.loss_value(handle) for handle in handles]
    # Adam's first sign-like step of size lr overshoots on conv-final (361 -> 403), then it recovers
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    l1 = losses[0]
    assert np.isfinite(a.loss_value(a.train_step(x)))  # the build draws its own noise

    # set_weights resets Adam: the same start replays the same first step exactly
    a.set_weights(w)
    assert a.loss_value(a.train_step(x, eps)) == l1
    after_replay = a.get_weights()
    a.set_weights(w)
    a.train_step(x, eps)
    assert all(np.array_equal(v, after_replay[k]) for k, v in a.get_weights().items())


# ------------------------------------------------------------------ 6. BatchNorm statistics


def test_batch_norm_running_stats_are_biased_and_decayed():
    spec = preset("dense", 32)
    a = adapter_for(spec)
    w = perturb_batch_norm(spec, init_weights(spec))
    a.set_weights(w)
    x, eps = batch(spec)
    a.train_step(x, eps)
    h = x.astype(np.float64) @ w["encoder.0.kernel"] + w["encoder.0.bias"]  # input of encoder.1 (batch_norm)
    decay = spec.settings.batch_norm_momentum
    want_mean = decay * w["encoder.1.moving_mean"] + (1 - decay) * h.mean(axis=0)
    want_var = decay * w["encoder.1.moving_variance"] + (1 - decay) * h.var(axis=0)  # ddof=0: biased
    got = a.get_weights()
    np.testing.assert_allclose(got["encoder.1.moving_mean"], want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["encoder.1.moving_variance"], want_var, rtol=1e-5, atol=1e-6)
    unbiased = decay * w["encoder.1.moving_variance"] + (1 - decay) * h.var(axis=0, ddof=1)
    assert not np.allclose(got["encoder.1.moving_variance"], unbiased, rtol=1e-6, atol=0)


# ------------------------------------------------------------------ probes


def test_memory_probes():
    a = adapter_for(preset("dense", 32))
    a.reset_peak_memory()
    mem = a.device_memory()
    if a.device_kind() == "cpu":
        assert mem == {}
    else:  # pragma: no cover - GPU machines only
        assert {"peak_bytes", "bytes_in_use"} <= set(mem) and mem["peak_bytes"] > 0
    # eager PyTorch compiles nothing and reports no counter, so a row's compile_cached is None (cannot tell),
    # not False (a cold compile); a training step adds none
    assert a.counters() == {}
    assert compile_cached(a.counters(), a.counters()) is None
    spec = a.spec
    a.train_step(*batch(spec))
    assert a.counters() == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_memory_grows_with_a_step():  # pragma: no cover - GPU machines only
    spec = preset("conv-final", 512)
    a = adapter_for(spec)
    a.set_weights(init_weights(spec))
    x, eps = batch(spec)
    a.reset_peak_memory()
    a.train_step(x, eps)
    a.synchronize()
    mem = a.device_memory()
    assert mem["peak_bytes"] >= mem["bytes_in_use"] > 0
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
