"""The Keras build against the spec and the float64 numpy reference, on all three backends.

Keras fixes its backend once per process (``KERAS_BACKEND`` is read at import), so the
checks cannot run side by side in the pytest process. Instead every ``check_*`` function
below runs in the run's one child per backend (``tests/fixtures/keras_children.py``), which
prints one JSON report; each entry becomes its own test here, so a failure names the
backend and the check and carries the child's traceback.

Small specs only (k=3 -> L=32, k=5 -> L=512, batch 8; see ``PARAM_COUNT_CASES`` for
the parameter counts).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from fixtures.gradcheck import reference_slope
from fixtures.keras_children import check_registry, keras_check_tests
from fixtures.residual_specs import RESIDUAL, RESVAE_CASES
from fixtures.strided_specs import CONV_STRIDED_CASES, STRIDED

from harness.run.parity import rel_l2
from harness.spec.params import count_params, param_table
from harness.spec.presets import preset
from harness.spec.reference import eval_forward, init_weights, perturb_batch_norm, vae_loss

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

BATCH = 8

# ----------------------------------------------------------------------------- the checks
#
# Each check takes the adapter class and a model cache, asserts, and may return a dict
# of figures that the report keeps (shown with ``pytest -s``). They run in the child.

CHECKS, check = check_registry()


def batch(length: int, latent: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-mer-profile-like inputs in [0, 1] and standard-normal noise."""
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.ones(length), size=BATCH).astype(np.float32) * length / 4
    return np.clip(x, 0, 1).astype(np.float32), rng.normal(size=(BATCH, latent)).astype(np.float32)


class Models:
    """Builds each (preset, L) model once per child; every check starts with set_weights, so each is built
    loaded (``with_weights``: no random initialiser to compile); ``check_with_weights_is_the_model_built_then_set``
    holds that to a build at the spec's initialisers."""

    def __init__(self, cls: type) -> None:
        self.cls, self.cache = cls, {}

    def __call__(self, name: str, length: int):
        if (name, length) not in self.cache:
            spec = ({"strided": STRIDED, "strided-clipped": STRIDED.with_clip_norm(1e-5), "residual": RESIDUAL}.get(name)
                    or preset(name, length))
            self.cache[(name, length)] = self.cls.with_weights(spec, init_weights(spec))
        return self.cache[(name, length)]


def fresh(model) -> dict[str, np.ndarray]:
    """Seeded reference weights with non-trivial BatchNorm statistics, set (optimizer reset)."""
    w = perturb_batch_norm(model.spec, init_weights(model.spec))
    model.set_weights(w)
    return w


@check
def check_identity(cls, models) -> dict[str, Any]:
    backend = os.environ["KERAS_BACKEND"]
    assert cls.name == f"keras-{backend}", cls.name
    assert cls.framework == "keras"
    versions = cls.versions()
    assert versions["backend"] == backend and versions[backend] and versions["framework"] == versions["keras"]
    # where Keras puts a fresh tensor, asked of the backend itself; the children hide every GPU
    on_gpu = placed_on_gpu(backend, keras_tensor(np.zeros(1, np.float32)))
    assert cls.device_kind() == ("gpu" if on_gpu else "cpu"), (cls.device_kind(), on_gpu)
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        assert cls.device_kind() == "cpu"
    return versions


def keras_tensor(a: np.ndarray) -> Any:
    import keras

    return keras.ops.convert_to_tensor(a)


def placed_on_gpu(backend: str, t: Any) -> bool:
    """Whether a backend tensor lives on a GPU, read from the tensor (not from the adapter's own test)."""
    if backend == "jax":
        return any(d.platform != "cpu" for d in t.devices())
    if backend == "torch":
        return t.device.type == "cuda"
    return "GPU" in t.device.upper()  # TensorFlow: "/job:localhost/replica:0/task:0/device:CPU:0"


@check
def check_counting_builds_no_storage(cls, models) -> dict[str, int]:
    """``count_params`` (``bench params``' path) builds abstractly: conv-revised at k=7, 270M parameters
    (1.08 GB of float32), is counted and the child's peak RSS stays where it was. Left to a default
    ``StatelessScope`` exit, Keras initialised every variable: +1.1 GB and 19 XLA compiles on jax. It runs
    second in the child, before anything else has raised the peak above the RSS of the moment."""
    import resource

    spec = preset("conv-revised", 8192)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got = cls.count_params(spec)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024  # ru_maxrss is in KiB
    assert got == count_params(spec), got
    assert grown_mb < 300, f"counting raised the peak RSS by {grown_mb} MB"
    return {"peak_rss_growth_mb": grown_mb}


@check
def check_a_build_leaves_tensorflow_unimported(cls, models) -> dict[str, bool]:
    """On jax and torch a build seeds what ``keras.utils.set_random_seed`` seeds but TensorFlow
    (``impls.keras_backend.seed_everything``), so the row does not carry TensorFlow's import (3.9 s and 150 MB
    of RSS on keras-jax) because the keras-tensorflow row needs it installed. Runs third in the child."""
    import sys

    model = models("dense", 32)
    model.loss_value(model.train_step(*batch(32)))
    imported = "tensorflow" in sys.modules
    assert imported == (os.environ["KERAS_BACKEND"] == "tensorflow"), imported
    return {"tensorflow_imported": imported}


#: presets whose param counts are read off the adapter, in the child: k=3 wherever the preset is valid, the
#: strided and resvae cases, and one k=7 build (dense, 18M parameters). Every preset at k=5 is counted by
#: ``tests/impls/test_parity.py`` (``bench params`` on torch, flax and keras-torch: Keras' count is this one
#: abstract build on every backend, held here on all three), so the child does not build those again (it took
#: 58 s of the three children's CPU time).
PARAM_COUNT_CASES = (
    ("dense", 32), ("conv-revised", 32), ("conv-original", 32),
    ("dense", 8192), *CONV_STRIDED_CASES, *RESVAE_CASES,
)
#: the cases no other check builds: counted with ``count_params`` (built abstractly, no storage),
#: ``bench params``' own path; a real build of these took 8 s of the jax child's 115 s (conv-revised at L=32,
#: 6 s of it), for a figure the abstract build gives in 0.2 s. The rest are built for the checks below anyway,
#: so ``param_counts()`` is read off those models.
COUNTED_ABSTRACTLY = {("conv-revised", 32), ("conv-original", 32), ("dense", 8192)}


@check
def check_param_counts(cls, models) -> dict[str, Any]:
    seen = {}
    for name, length in PARAM_COUNT_CASES:
        spec = preset(name, length)
        abstract = (name, length) in COUNTED_ABSTRACTLY
        got, want = cls.count_params(spec) if abstract else models(name, length).param_counts(), count_params(spec)
        assert got == want, f"{name} L={length}{' (abstract)' if abstract else ''}: {got} != {want}"
        seen[f"{name}@{length}"] = got.total
    return seen


@check
def check_weights_round_trip(cls, models) -> None:
    for name, length in (("dense", 32), ("conv-final", 512), ("residual", 32)):  # nested names in residual
        model = models(name, length)
        w = fresh(model)
        got = model.get_weights()
        assert set(got) == {p.name for p in param_table(model.spec)}
        for key, value in w.items():
            assert got[key].dtype == np.float32 and got[key].shape == value.shape, key
            assert np.array_equal(got[key], value), key


@check
def check_with_weights_is_the_model_built_then_set(cls, models) -> None:
    """``with_weights`` builds at ``zeros`` and loads the weights: the same model, Adam state and noise
    stream as a build at the spec's initialisers followed by ``set_weights``, so drawn steps train alike."""
    spec = preset("dense", 32)
    built_then_set = cls(spec)  # the spec's own initialisers: the one such build in this module
    w = fresh(built_then_set)
    loaded = cls.with_weights(spec, w)
    x, _ = batch(32)
    assert all(np.array_equal(loaded.get_weights()[k], v) for k, v in w.items())
    for _ in range(2):
        assert loaded.loss_value(loaded.train_step(x)) == built_then_set.loss_value(built_then_set.train_step(x))
    for key, value in built_then_set.get_weights().items():
        assert np.array_equal(loaded.get_weights()[key], value), key


@check
def check_eval_forward(cls, models) -> dict[str, float]:
    """The presets and fixtures parity does not run (tests/impls/test_parity.py holds dense at k=3, conv-final at
    k=5 and residual-small to the float64 reference in every build)."""
    worst = {}
    for name, length in (("dense", 512), ("conv-revised", 512), ("strided", 32), *CONV_STRIDED_CASES,
                         *RESVAE_CASES):
        model = models(name, length)
        w = fresh(model)  # perturbed BN statistics: eval mode must use them
        x, eps = batch(length, model.spec.latent_dim)
        got, ref = model.eval_forward(x, eps), eval_forward(model.spec, w, x, eps)
        for key in ("recon", "z_mean", "z_log_var"):
            assert got[key].shape == ref[key].shape, (name, key, got[key].shape)
            err = rel_l2(got[key], ref[key])
            assert err <= 1e-5, f"{name} L={length} {key}: rel L2 {err:.2e}"
            worst[f"{name}@{length}.{key}"] = err
    return worst


@check
def check_loss_and_grads(cls, models) -> dict[str, float]:
    out = {}
    for name in ("conv-revised",):  # conv-final at k=5: parity's, in every build
        model = models(name, 512)
        w = fresh(model)
        x, eps = batch(512)
        ref = eval_forward(model.spec, w, x, eps)  # no BatchNorm: training forward == eval forward
        loss, grads = model.loss_and_grads(x, eps)
        want = vae_loss(model.spec, x, ref["logits"], ref["z_mean"], ref["z_log_var"])
        err = abs(loss - want) / abs(want)
        assert err <= 1e-5, f"{name}: loss {loss} vs reference {want} (rel {err:.2e})"
        table = {p.name: p.shape for p in param_table(model.spec) if p.trainable}
        assert set(grads) == set(table)
        for key, shape in table.items():
            assert grads[key].shape == shape and np.all(np.isfinite(grads[key])), key
        out[name] = err
    # with BatchNorm: nothing may change, running statistics included
    model = models("dense", 32)
    w = fresh(model)
    x, eps = batch(32)
    loss, grads = model.loss_and_grads(x, eps)
    assert np.isfinite(loss) and set(grads) == {p.name for p in param_table(model.spec) if p.trainable}
    after = model.get_weights()
    changed = [k for k in w if not np.array_equal(after[k], w[k])]
    assert not changed, f"loss_and_grads changed {changed}"
    return out


@check
def check_strided_grads_by_finite_differences(cls, models) -> dict[str, float]:
    """Strided convs, strided conv-transposes ("valid" + Cropping1D; one with k < s) and a zero-padded
    output: the loss is the reference's, and a step along each gradient changes the float64
    reference loss by the gradient's norm."""
    model = models("strided", 32)
    w = fresh(model)
    spec, (x, eps) = model.spec, batch(32, STRIDED.latent_dim)
    loss, grads = model.loss_and_grads(x, eps)
    ref = eval_forward(spec, w, x, eps)
    want = vae_loss(spec, x, ref["logits"], ref["z_mean"], ref["z_log_var"])
    assert abs(loss - want) <= 1e-5 * abs(want), (loss, want)
    out, h = {}, 1e-5
    for key in ("encoder.1.kernel", "encoder.3.kernel", "decoder.2.kernel", "decoder.4.kernel"):
        slope, norm = reference_slope(spec, w, x, eps, key, grads[key], h), float(np.linalg.norm(grads[key]))
        assert abs(slope - norm) <= 1e-3 * norm, (key, slope, norm)
        out[key] = abs(slope - norm) / norm
    return out


#: ``residual`` blocks (their nested BatchNorm in train mode, its running statistics after a step) and resvae's MSE
#: loss are parity's, in every build (``residual-small`` and ``resvae-small``: every gradient and the weights after
#: one step against PyTorch's), and PyTorch's gradients on the same blocks without the BatchNorm and on resvae are
#: checked by finite differences (``tests/impls/torch/test_impl_torch.py``), so no Keras backend differences them
#: again here: that check took 11 s of the jax child alone.


@check
def check_global_clipnorm_scales_the_gradient_before_adam(cls, models) -> dict[str, float]:
    """``global_clipnorm`` on TextbookAdam: with a clip far below the gradient norm the first step is
    lr * c g / (|c g| + eps), c = clip / ||g|| (on torch too, where the fused update replaces update_step)."""
    model = models("strided-clipped", 32)
    w = fresh(model)
    x, eps = batch(32, STRIDED.latent_dim)
    _, grads = model.loss_and_grads(x, eps)
    norm = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values())))
    assert norm > 1.0, norm
    model.train_step(x, eps)
    after, o, c = model.get_weights(), model.spec.optimizer, 1e-5 / norm
    worst = 0.0
    for key, g in grads.items():
        g = g.astype(np.float64)
        worst = max(worst, float(np.abs(after[key] - (w[key] - o.lr * c * g / (np.abs(c * g) + o.eps))).max()))
    assert worst <= 1e-7, worst
    return {"grad_norm": norm, "worst_abs": worst}


@check
def check_train_step(cls, models) -> dict[str, Any]:
    """Dense only: each new input structure is a new trace of the train step, and
    check_textbook_adam already steps conv-final with fixed noise."""
    model = models("dense", 32)
    w = fresh(model)
    x, eps = batch(32)
    first_loss, _ = model.loss_and_grads(x, eps)
    losses = [model.loss_value(model.train_step(x, eps)) for _ in range(2)]
    model.synchronize()
    assert all(np.isfinite(losses)), losses
    # the fixed-eps step sees exactly the given noise: its loss is loss_and_grads' loss
    assert abs(losses[0] - first_loss) <= 1e-5 * abs(first_loss), (losses[0], first_loss)
    assert losses[1] < losses[0], losses
    after = model.get_weights()
    assert all(not np.array_equal(after[k], w[k]) for k in ("encoder.0.kernel", "z_mean.kernel", "decoder.6.kernel"))
    before = model.counters()
    drawn = []
    for _ in range(2):  # same weights, noise from Keras' own RNG: a fresh draw each step
        fresh(model)
        drawn.append(model.loss_value(model.train_step(x)))
    assert all(np.isfinite(drawn)) and drawn[0] != drawn[1] and first_loss not in drawn, drawn
    counters = model.counters()
    # JAX counts its XLA compiles and persistent-cache hits (impls.jax_probes, as Flax does), TensorFlow its
    # traces of the step; eager torch compiles nothing and says so with no counter at all
    want = {"jax": {"compiles", "compile_cache_hits"}, "tensorflow": {"compiles"}, "torch": set()}
    assert set(counters) == want[os.environ["KERAS_BACKEND"]], counters
    if counters:  # the drawn-noise step is this model's first of its input structure: a new trace / compile
        assert counters["compiles"] > before["compiles"], (before, counters)
        assert counters.get("compile_cache_hits", 0) == before.get("compile_cache_hits", 0)  # no cache here
    return {"fixed": losses, "drawn": drawn, "counters": counters}


@check
def check_batch_norm_running_stats(cls, models) -> dict[str, float]:
    model = models("dense", 32)
    w = fresh(model)
    x, eps = batch(32)
    model.train_step(x, eps)
    after = model.get_weights()
    decay = model.spec.settings.batch_norm_momentum
    h = x.astype(np.float64) @ w["encoder.0.kernel"] + w["encoder.0.bias"]  # first dense, pre-step weights
    mean, var = h.mean(axis=0), h.var(axis=0)  # biased batch variance
    out = {}
    for stat, batch_stat in (("moving_mean", mean), ("moving_variance", var)):
        want = decay * w[f"encoder.1.{stat}"] + (1 - decay) * batch_stat
        err = rel_l2(after[f"encoder.1.{stat}"], want)
        assert err <= 1e-5, f"{stat}: rel L2 {err:.2e}"
        out[stat] = err
    return out


def biases_before_batch_norm(spec) -> set[str]:
    """Biases whose true training-mode gradient is exactly zero: BatchNorm subtracts the
    batch mean right after them. What a framework computes for them is rounding noise
    (~1e-7), which Adam's g / (|g| + eps) blows up to a step of +-lr in a random direction."""
    layers = [(f"{part}.{i}", layer) for part in ("encoder", "decoder")
              for i, layer in enumerate(getattr(spec, part))]
    return {f"{name}.bias" for (name, layer), (_, after) in zip(layers, layers[1:], strict=False)
            if layer.type in ("dense", "conv1d", "conv_transpose1d") and after.type == "batch_norm"}


@check
def check_textbook_adam(cls, models) -> dict[str, float]:
    """One train_step == one textbook Adam step from loss_and_grads' gradients.

    At step 1, m_hat = g and v_hat = g^2, so w' = w - lr * g / (|g| + eps); Keras' own
    Adam would use eps / sqrt(1 - beta2) in place of eps. Biases in front of a
    BatchNorm are left out (see ``biases_before_batch_norm``); their gradients are
    checked to be noise.
    """
    out = {}
    for name, length in (("dense", 32), ("conv-final", 512)):
        model = models(name, length)
        w = fresh(model)
        x, eps = batch(length)
        _, grads = model.loss_and_grads(x, eps)
        model.train_step(x, eps)
        after = model.get_weights()
        opt = model.spec.optimizer
        noise = biases_before_batch_norm(model.spec)
        scale = max(float(np.abs(g).max()) for g in grads.values())
        worst_w = worst_u = 0.0
        for key, g in grads.items():
            g = g.astype(np.float64)
            if key in noise:
                assert np.abs(g).max() <= 1e-4 * scale, f"{key}: gradient {np.abs(g).max():.2e} is not noise"
                continue
            want = w[key] - opt.lr * g / (np.sqrt(g * g) + opt.eps)
            worst_w = max(worst_w, rel_l2(after[key], want))
            worst_u = max(worst_u, rel_l2(after[key].astype(np.float64) - w[key], want - w[key]))
        assert worst_w <= 1e-5, f"{name}: weights after one step, worst rel L2 {worst_w:.2e}"
        assert worst_u <= 1e-3, f"{name}: step, worst rel L2 {worst_u:.2e}"
        out[f"{name}.weights"], out[f"{name}.update"] = worst_w, worst_u
    return out


@check
def check_set_weights_resets_optimizer(cls, models) -> None:
    model = models("dense", 32)
    x, eps = batch(32)
    fresh(model)
    first = [model.train_step(x, eps) for _ in range(2)]
    w_first = model.get_weights()
    fresh(model)  # back to step 0 with zero moments: the same two steps again
    again = [model.train_step(x, eps) for _ in range(2)]
    w_again = model.get_weights()
    assert np.allclose(first, again, rtol=1e-6), (first, again)
    assert all(rel_l2(w_again[k], w_first[k]) <= 1e-6 for k in w_first)


@check
def check_memory_probes(cls, models) -> dict[str, Any]:
    model = models("dense", 32)
    memory = model.device_memory()
    model.reset_peak_memory()
    if cls.device_kind() == "cpu":
        assert memory == {}, memory
        return {"device": "cpu"}
    assert memory["peak_bytes"] > 0 and memory["bytes_in_use"] > 0, memory  # GPU only
    return {"device": "gpu", **memory}


# ----------------------------------------------------------------------------- the tests


#: what the checks share in a child, built once per backend from the adapter class
SHARED = Models
reports, test_child_ran, test_check = keras_check_tests(__file__, CHECKS)
