"""The Flax NNX build against the spec and the float64 numpy reference.

Adapters are built once per (preset, k) and shared: every test that depends on the
weights sets them first (``set_weights`` also resets Adam), so the order tests run in
does not matter.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

pytest.importorskip("flax")

from fixtures.gradcheck import reference_slope  # noqa: E402
from fixtures.strided_specs import STRIDED  # noqa: E402

from harness.adapter import load_adapter_class  # noqa: E402
from harness.spec import reference  # noqa: E402
from harness.spec.params import count_params, param_table
from harness.spec.presets import preset  # noqa: E402
from harness.spec.schema import canonical_kmer_count

BATCH = 8


def flax_class():
    return load_adapter_class("flax")


@functools.lru_cache(maxsize=None)
def spec_for(name: str, k: int):
    return preset(name, canonical_kmer_count(k))


@functools.lru_cache(maxsize=None)
def build(name: str, k: int):
    """Built loaded with the start weights (``with_weights``: the init program has no draws to compile);
    ``test_with_weights_is_the_model_built_then_set`` holds that to a build at the spec's initialisers."""
    spec = spec_for(name, k)
    return flax_class().with_weights(spec, start_weights(spec))


def batch(spec, seed: int = 0, size: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((size, spec.input_length)).astype(np.float32)
    eps = rng.standard_normal((size, spec.latent_dim)).astype(np.float32)
    return x, eps


def start_weights(spec) -> dict[str, np.ndarray]:
    return reference.perturb_batch_norm(spec, reference.init_weights(spec))


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


# ------------------------------------------------------------------------ model facts

# Every preset where its length rule allows k=3 or k=5 (conv-final needs L % 64 == 0, so k=5 only;
# conv-original at k=5 has 1e8 parameters and is left to the k=3 case). Not k=7: a build costs
# one XLA compile of the initialisers (seconds on CPU) whatever its size, and conv-revised and
# conv-original have 2.7e8 and 1.6e9 parameters there.
PARAM_CASES = [("dense", 3), ("dense", 5), ("conv-final", 5), ("conv-revised", 5), ("conv-original", 3),
               ("conv-strided", 3), ("conv-strided", 4), ("resvae", 4)]


@pytest.mark.parametrize(("name", "k"), PARAM_CASES)
def test_param_counts(name, k):
    assert build(name, k).param_counts() == count_params(spec_for(name, k))


@pytest.mark.parametrize(("name", "k"), [("dense", 3), ("conv-final", 5)])
def test_weights_round_trip(name, k):
    spec, model = spec_for(name, k), build(name, k)
    w = start_weights(spec)
    model.set_weights(w)
    got = model.get_weights()
    assert list(got) == [p.name for p in param_table(spec)]
    for key, value in w.items():
        assert got[key].dtype == np.float32 and got[key].shape == value.shape, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_set_weights_rejects_wrong_shape():
    spec, model = spec_for("dense", 3), build("dense", 3)
    w = start_weights(spec)
    w["encoder.0.kernel"] = w["encoder.0.kernel"].T
    with pytest.raises(ValueError, match="encoder.0.kernel"):
        model.set_weights(w)


def test_with_weights_is_the_model_built_then_set():
    """``with_weights`` writes the weights inside the init program instead of after it: the same model, the
    same Adam state and the same noise stream, so a drawn step trains alike (the masking stream's twin check is
    ``test_seed_layers_flax.py::test_masking_block_is_drawn_per_step_from_the_seeded_stream``); a wrong shape
    is refused as ``set_weights`` refuses it."""
    spec, cls = spec_for("dense", 3), flax_class()
    w = start_weights(spec)
    x, _ = batch(spec, seed=1, size=4)  # not batch 8: test_drawn_noise_... must be the first to compile that step
    built_then_set = cls(spec)  # the spec's own initialisers: the one such build in this module
    built_then_set.set_weights(w)
    loaded = cls.with_weights(spec, w)
    assert all(np.array_equal(loaded.get_weights()[k], v) for k, v in w.items())
    assert loaded.loss_value(loaded.train_step(x)) == built_then_set.loss_value(built_then_set.train_step(x))
    for key, value in built_then_set.get_weights().items():
        np.testing.assert_array_equal(loaded.get_weights()[key], value, err_msg=key)
    w["z_mean.kernel"] = w["z_mean.kernel"].T
    with pytest.raises(ValueError, match="z_mean.kernel"):
        cls.with_weights(spec, w)


def test_with_weights_serves_a_subclass_with_its_own_init_and_set_weights():
    """A user's subclass of the Flax build (``__init__(spec)`` of its own, a ``set_weights`` that records its
    calls) is built loaded as ``cls(spec)`` and then its own ``set_weights``, the default's order."""
    spec, base = spec_for("dense", 3), flax_class()

    class Mine(base):
        def __init__(self, spec):
            super().__init__(spec)
            self.loads = 0

        def set_weights(self, weights):
            self.loads += 1
            super().set_weights(weights)

    w = start_weights(spec)
    model = Mine.with_weights(spec, w)
    assert model.loads == 1 and np.array_equal(model.get_weights()["z_mean.kernel"], w["z_mean.kernel"])


# ------------------------------------------------------------------ parity with reference


#: the presets parity does not run (tests/impls/test_parity.py checks dense at k=3 and conv-final at k=5 in every
#: build: eval forward and loss against the float64 reference, every gradient tensor against PyTorch's)
@pytest.mark.parametrize(("name", "k"), [("dense", 5), ("conv-revised", 5), ("conv-strided", 3), ("conv-strided", 4),
                                         ("resvae", 4)])
def test_eval_forward_matches_reference(name, k):
    """conv-strided at k=4 reaches odd lengths (17 -> 9) and crops 144 logits to 136."""
    spec, model = spec_for(name, k), build(name, k)
    w = start_weights(spec)  # non-trivial BatchNorm statistics for the dense preset
    model.set_weights(w)
    x, eps = batch(spec)
    got = model.eval_forward(x, eps)
    want = reference.eval_forward(spec, w, x, eps)
    for key in ("recon", "z_mean", "z_log_var"):
        assert got[key].shape == want[key].shape, key
        assert rel_l2(got[key], want[key]) <= 1e-5, key


@pytest.mark.parametrize(("name", "k"), [("conv-revised", 5)])  # conv-final at k=5: parity's
def test_loss_and_grads_match_reference(name, k):
    spec, model = spec_for(name, k), build(name, k)
    w = start_weights(spec)
    model.set_weights(w)
    x, eps = batch(spec)
    loss, grads = model.loss_and_grads(x, eps)
    # No BatchNorm in the conv presets, so the training forward is the eval forward.
    ref = reference.eval_forward(spec, w, x, eps)
    want = reference.vae_loss(spec, x, ref["logits"], ref["z_mean"], ref["z_log_var"])
    assert isinstance(loss, float)
    assert abs(loss - want) <= 1e-5 * abs(want)
    trainable = {p.name: p.shape for p in param_table(spec) if p.trainable}
    assert set(grads) == set(trainable)
    for key, shape in trainable.items():
        assert grads[key].shape == shape, key
        assert np.all(np.isfinite(grads[key])), key


@functools.lru_cache(maxsize=None)
def strided_model(clip: float | None = None):
    return flax_class()(STRIDED.with_clip_norm(clip))


def test_strided_loss_and_grads_match_the_reference():
    """Strided convs and conv-transposes (asymmetric pads, a trim, k < s) and a zero-padded output:
    the eval forward and loss are the reference's, and a step along a gradient changes the float64
    reference loss by the gradient's norm."""
    spec, model = STRIDED, strided_model()
    w = reference.init_weights(spec)
    model.set_weights(w)
    x, eps = batch(spec)
    got, ref = model.eval_forward(x, eps), reference.eval_forward(spec, w, x, eps)
    assert rel_l2(got["recon"], ref["recon"]) <= 1e-5
    loss, grads = model.loss_and_grads(x, eps)
    assert loss == pytest.approx(reference.vae_loss(spec, x, ref["logits"], ref["z_mean"], ref["z_log_var"]), rel=1e-5)
    h = 1e-5
    for key in ("encoder.1.kernel", "encoder.3.kernel", "decoder.2.kernel", "decoder.4.kernel"):
        assert reference_slope(spec, w, x, eps, key, grads[key], h) == pytest.approx(np.linalg.norm(grads[key]),
                                                                                     rel=1e-3), key


#: ``residual`` blocks and resvae's MSE loss are parity's (``residual-small`` with its nested BatchNorm in train
#: mode, ``resvae-small``: the eval forward against the float64 reference, every gradient and the weights after
#: one step, running statistics included, against PyTorch's), and PyTorch's gradients on the same blocks
#: without the BatchNorm and on resvae are checked by finite differences
#: (``tests/impls/torch/test_impl_torch.py``), so the Flax build is not differenced again here: that took
#: 16 s of the suite's CPU for the same claim.


def test_clip_by_global_norm_scales_the_gradient_before_adam():
    """optax.clip_by_global_norm chained before Adam: with a clip far below the gradient norm the
    first step is lr * c g / (|c g| + eps), c = clip / ||g||."""
    model = strided_model(1e-5)
    w = reference.init_weights(STRIDED)
    model.set_weights(w)
    x, eps = batch(STRIDED)
    _, grads = model.loss_and_grads(x, eps)
    norm = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values())))
    assert norm > 1.0, norm
    model.train_step(x, eps)
    after, o, c = model.get_weights(), STRIDED.optimizer, 1e-5 / norm
    for key, g in grads.items():
        np.testing.assert_allclose(after[key], w[key] - o.lr * c * g / (np.abs(c * g) + o.eps), rtol=0, atol=1e-7,
                                   err_msg=key)


def test_loss_and_grads_changes_nothing():
    spec, model = spec_for("dense", 3), build("dense", 3)
    model.set_weights(start_weights(spec))
    before = model.get_weights()
    x, eps = batch(spec)
    first, _ = model.loss_and_grads(x, eps)
    second, _ = model.loss_and_grads(x, eps)
    after = model.get_weights()
    assert first == pytest.approx(second, rel=1e-6)
    for key in before:  # BatchNorm statistics included
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def test_first_adam_step_follows_the_gradient():
    """Adam's first step is lr * g / (|g| + eps): the update the jitted step applies must
    be the one implied by loss_and_grads (the same loss, the same gradients)."""
    spec, model = spec_for("dense", 3), build("dense", 3)
    w = start_weights(spec)
    model.set_weights(w)
    x, eps = batch(spec)
    _, grads = model.loss_and_grads(x, eps)  # training mode, like the step
    model.train_step(x, eps)
    after = model.get_weights()
    o = spec.optimizer
    for key, g in grads.items():
        expected = w[key] - o.lr * g / (np.abs(g) + o.eps)
        np.testing.assert_allclose(after[key], expected, rtol=1e-4, atol=1e-6, err_msg=key)


# ---------------------------------------------------------------------------- training


def test_train_step_with_fixed_noise():
    import jax

    spec, model = spec_for("dense", 3), build("dense", 3)
    w = start_weights(spec)
    model.set_weights(w)
    x, eps = batch(spec)
    handle = model.train_step(x, eps)
    assert isinstance(handle, jax.Array)  # a device value, no host sync forced
    first = model.loss_value(handle)
    second = model.loss_value(model.train_step(x, eps))
    assert np.isfinite(first) and np.isfinite(second)
    assert second < first
    changed = model.get_weights()
    for key in ("encoder.0.kernel", "encoder.1.gamma", "z_log_var.bias", "decoder.6.kernel"):
        assert not np.array_equal(changed[key], w[key]), key


def test_drawn_noise_runs_the_same_update_and_compiles_once():
    """train_step(x) draws eps from the model's own noise stream and must then apply
    exactly the update train_step(x, eps) applies with that eps.

    This is the only test that runs the drawn-noise step of (dense, k=3, batch 8), so
    its first call compiles and the second, at the same shapes, must not.
    """
    import jax
    from flax import nnx

    spec, model = spec_for("dense", 3), build("dense", 3)
    w = start_weights(spec)
    x, _ = batch(spec)
    key = nnx.clone(model._model()).noise()  # the key the next drawn-noise step uses; the model is untouched
    eps = np.asarray(jax.random.normal(key, (BATCH, spec.latent_dim), np.float32))

    model.set_weights(w)
    fixed = model.loss_value(model.train_step(x, eps))
    after_fixed = model.get_weights()

    model.set_weights(w)  # resets weights and Adam, not the noise stream (eps given does not draw)
    start = model.counters()["compiles"]
    drawn = model.loss_value(model.train_step(x))
    after_first = model.counters()["compiles"]
    after_drawn = model.get_weights()
    second = model.loss_value(model.train_step(x))
    after_second = model.counters()["compiles"]

    assert drawn == pytest.approx(fixed, rel=1e-6)
    for key_name in w:
        np.testing.assert_allclose(after_drawn[key_name], after_fixed[key_name], rtol=1e-5, atol=1e-7,
                                   err_msg=key_name)
    assert np.isfinite(second) and second != drawn  # a fresh draw on the next step
    assert after_first > start
    assert after_second == after_first
    assert set(model.counters()) == {"compiles", "compile_cache_hits"}  # impls.jax_probes, shared with keras-jax


def test_batch_norm_running_stats_after_one_step():
    spec, model = spec_for("dense", 3), build("dense", 3)
    w = start_weights(spec)
    model.set_weights(w)
    x, eps = batch(spec)
    model.train_step(x, eps)
    got = model.get_weights()

    h = x.astype(np.float64) @ w["encoder.0.kernel"] + w["encoder.0.bias"]  # what encoder.1 sees
    decay = spec.settings.batch_norm_momentum
    mean = decay * w["encoder.1.moving_mean"] + (1 - decay) * h.mean(axis=0)
    var = decay * w["encoder.1.moving_variance"] + (1 - decay) * h.var(axis=0)  # biased (ddof=0)
    np.testing.assert_allclose(got["encoder.1.moving_mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["encoder.1.moving_variance"], var, rtol=1e-5, atol=1e-6)


def test_train_step_donates_the_old_state():
    import jax

    spec, model = spec_for("dense", 3), build("dense", 3)
    model.set_weights(start_weights(spec))
    x, eps = batch(spec)
    old = jax.tree.leaves(model._state)  # parameters, BatchNorm statistics, Adam moments, noise key
    model.train_step(x, eps)
    model.synchronize()
    assert old and all(leaf.is_deleted() for leaf in old)
    # The adapter only ever reads the new state, so everything keeps working.
    assert np.all(np.isfinite(model.get_weights()["encoder.0.kernel"]))


# ------------------------------------------------------------------------------ probes


def test_versions_and_device():
    cls = flax_class()
    v = cls.versions()
    assert {"framework", "jax", "jaxlib", "flax", "optax", "backend"} <= set(v)
    # read from where JAX puts an array, not from the adapter's own test of the backend
    import jax

    platforms = {d.platform for d in jax.device_put(np.zeros(1, np.float32)).devices()}
    assert cls.device_kind() == ("cpu" if platforms == {"cpu"} else "gpu"), (cls.device_kind(), platforms)
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        assert cls.device_kind() == "cpu"


def test_device_memory_empty_on_cpu():
    model = build("dense", 3)
    if flax_class().device_kind() != "cpu":
        pytest.skip("CPU-only expectation")
    assert model.device_memory() == {}
    model.reset_peak_memory()


def test_device_memory_on_gpu():
    if flax_class().device_kind() != "gpu":
        pytest.skip("needs a GPU")
    model = build("dense", 3)
    x, eps = batch(spec_for("dense", 3))
    model.synchronize()
    model.train_step(x, eps)
    model.synchronize()
    mem = model.device_memory()
    assert mem["peak_bytes"] >= mem["bytes_in_use"] > 0
