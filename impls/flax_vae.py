"""The VAE in Flax NNX, trained: a jitted, donating train step over the model of ``impls.flax_model``.

The model (an ``nnx.Module`` built from the spec, whose weights are the canonical ones with no
transposes) lives in ``impls.flax_model``; the compile counter, cache hits and allocator figures,
shared with Keras on JAX, in ``impls.jax_probes``. This module is the training and the adapter.

Training follows the Flax performance guide for NNX: the model and its
``nnx.Optimizer`` are ``nnx.split`` once into a static graphdef and a state, and a
pure function over that state is ``jax.jit``-compiled with the state donated, so
XLA updates parameters and Adam moments in place instead of holding two copies.
The state is kept ``nnx.as_pure`` (plain arrays, no ``Variable`` wrappers): the
graphdef already records each leaf's Variable type, and jit flattens and rebuilds
the state on every call, which for plain arrays costs about a tenth of what it costs
for Variables (0.06 ms against 0.56 ms for the dense preset's 78 leaves), a
difference that shows on a GPU step of a millisecond. The adapter keeps only the
(graphdef, state) pair; every other method merges a model from it with
``nnx.merge``, inside a jitted function of its own where it can.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from harness.adapter import VAEAdapter
from harness.spec.params import ParamCounts, param_table
from harness.spec.schema import PRECISIONS, VAESpec
from impls import jax_probes
from impls.flax_model import VAE

# JAX reads this when its GPU backend starts (the first device use), not at import. The
# harness worker sets it from ``settings.jax_preallocate`` before anything runs; this
# default only matters when the build is used directly (tests, a notebook) and is the spec's.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


# ------------------------------------------------------------------- pure, jitted functions
#
# Each takes the graphdef (static: a pytree without leaves, so jit keys its cache on
# it) and the state of ``(model, optimizer)``, and merges them into fresh objects while
# tracing; nothing outside the returned values is changed.


def _train_step(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, eps: jax.Array | None,
                mask_block: jax.Array | None = None):
    """One Adam step. ``eps=None`` draws the noise from the model's own key, ``mask_block=None``
    (a spec with masking) the block from the masking layer's; given ones are used as is. All
    go through this one function (jit traces it once per case), so the update is the same code."""
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(VAE.loss)(model, x, eps, mask_block)  # BatchNorm in train mode updates its stats
    optimizer.update(model, grads)
    return loss, nnx.as_pure(nnx.state((model, optimizer)))


# donate_argnums=1: the old parameters, BatchNorm statistics, Adam moments and key are
# dead once the step returns, so XLA may write the new ones into their buffers.
_train_step_jit = jax.jit(_train_step, donate_argnums=1)


@jax.jit
def _eval_forward(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, eps: jax.Array,
                  mask_block: jax.Array | None):
    model, _ = nnx.merge(graphdef, state)
    model.eval()  # BatchNorm normalises with its running statistics
    logits, mu, logvar = model(x, eps, mask_block)
    return nnx.sigmoid(logits), mu, logvar


@jax.jit
def _loss_and_grads(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, eps: jax.Array,
                    mask_block: jax.Array | None):
    # Train mode (batch statistics). The BatchNorm update (and a masking draw) lands on the
    # merged copy, which is dropped: only the loss and the gradients leave the function.
    model, _ = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(VAE.loss)(model, x, eps, mask_block)
    return loss, nnx.as_pure(grads)


# ------------------------------------------------------------------------------- adapter

#: canonical BatchNorm names -> nnx.BatchNorm attribute names
_BN_NAMES = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}


#: the weights ``FlaxVAE.with_weights`` has the build under way write over its drawn initial values
_LOADING: ContextVar[dict[str, np.ndarray] | None] = ContextVar("flax_vae_loading_weights", default=None)


def _flax_path(name: str) -> tuple[str | int, ...]:
    """Canonical name -> attribute path in the model, e.g. ``encoder.3.gamma`` ->
    ``('encoder', 'layers', 3, 'scale')`` and ``z_mean.kernel`` -> ``('z_mean', 'kernel')``."""
    parts = name.split(".")
    leaf = _BN_NAMES.get(parts[-1], parts[-1])
    if parts[0] in ("encoder", "decoder"):
        # a residual's tensors: encoder.3.skip.kernel, encoder.3.inner.0.kernel
        nested = (parts[2], "layers", int(parts[3])) if len(parts) == 5 else tuple(parts[2:-1])
        return (parts[0], "layers", int(parts[1]), *nested, leaf)
    return (parts[0], leaf)


def _lookup(node: Any, path: tuple[str | int, ...]) -> Any:
    """Follow a path through a Module (attributes, list indices) or a State (keys)."""
    for key in path:
        node = node[key] if isinstance(key, int) or isinstance(node, nnx.State) else getattr(node, key)
    return node


def _block(mask_block: int | None) -> jax.Array | None:
    return None if mask_block is None else jnp.asarray(mask_block, jnp.int32)


def _counts(model: VAE) -> ParamCounts:
    size = lambda state: sum(int(leaf.size) for leaf in jax.tree.leaves(state))  # noqa: E731
    return ParamCounts(trainable=size(nnx.state(model, nnx.Param)), non_trainable=size(nnx.state(model, nnx.BatchStat)))


class FlaxVAE(VAEAdapter):
    name = "flax"
    framework = "jax"
    stages_input = True
    precisions = PRECISIONS

    def __init__(self, spec: VAESpec) -> None:
        super().__init__(spec)
        self._table = param_table(spec)
        given = _LOADING.get()
        loaded = None if given is None else self._checked(given)
        # On GPU, JAX otherwise runs float32 matmuls and convolutions with reduced
        # precision (TF32 / bf16 passes); "highest" is true float32, like the other builds.
        # It stays in bf16: a bfloat16 matmul or convolution multiplies bfloat16 and accumulates
        # in float32 whatever the setting, which chooses among algorithms for float32 operands
        # (on CPU a bf16 step is bit-identical under either), and a matmul the spec keeps in
        # float32 is then true float32, as with TF32 off (NVIDIA_TF32_OVERRIDE=0) in the others.
        jax.config.update("jax_default_matmul_precision", None if spec.settings.tf32 else "highest")
        o = spec.optimizer
        # optax.adam adds eps to sqrt(v_hat), the adam_epsilon_hat=True form.
        self._tx = optax.adam(o.lr, b1=o.beta1, b2=o.beta2, eps=o.eps)
        if o.clip_global_norm is not None:  # g * min(1, c / ||g||) over all parameters, then Adam
            self._tx = optax.chain(optax.clip_by_global_norm(o.clip_global_norm), self._tx)

        # Built under nnx.jit: initialisation is one compiled program instead of one
        # eager dispatch (and, on a new shape, one compile) per random tensor. Given weights
        # (``with_weights``) are written over the drawn ones inside that program, so XLA drops
        # the draws they replace, and the noise and masking streams are the same as without.
        @nnx.jit
        def create(loaded: dict[str, jax.Array] | None) -> tuple[VAE, nnx.Optimizer]:
            seed = jax.random.key(spec.settings.seed)
            params_key, noise_key = jax.random.split(seed)
            # the masking layer's stream; folded in, so the other two keys stay what they were
            model = VAE(spec, rngs=nnx.Rngs(params=params_key, noise=noise_key, masking=jax.random.fold_in(seed, 1)))
            for name, value in (loaded or {}).items():
                _lookup(model, _flax_path(name))[...] = value
            return model, nnx.Optimizer(model, self._tx, wrt=nnx.Param)

        graphdef, state = nnx.split(create(loaded))
        self._graphdef, self._state = graphdef, nnx.as_pure(state)

    @classmethod
    def with_weights(cls, spec: VAESpec, weights: dict[str, np.ndarray]) -> FlaxVAE:
        """Built with ``weights`` in place of the drawn initial values, in the one init program (``_LOADING``
        hands them to ``__init__``, so a subclass's own ``__init__(spec)`` still works). A subclass with its
        own ``set_weights`` is built, then loaded through it, as the default does."""
        if cls.set_weights is not FlaxVAE.set_weights:
            return super().with_weights(spec, weights)
        token = _LOADING.set(weights)
        try:
            return cls(spec)
        finally:
            _LOADING.reset(token)

    def _model(self) -> VAE:
        """A model object over the current arrays (no copy); valid until the next train_step."""
        model, _ = nnx.merge(self._graphdef, self._state)
        return model

    # -- model facts ---------------------------------------------------------------------
    def param_counts(self) -> ParamCounts:
        return _counts(self._model())

    @classmethod
    def count_params(cls, spec: VAESpec) -> ParamCounts:
        """``nnx.eval_shape`` builds the model abstractly: shapes, no arrays."""
        return _counts(nnx.eval_shape(lambda: VAE(spec, rngs=nnx.Rngs(spec.settings.seed))))

    def get_weights(self) -> dict[str, np.ndarray]:
        model_state = self._state[0]
        return {p.name: np.array(_lookup(model_state, _flax_path(p.name))) for p in self._table}

    def _checked(self, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every canonical tensor as float32, each name and shape checked before any is used."""
        missing = [p.name for p in self._table if p.name not in weights]
        if missing:
            raise KeyError(f"set_weights: missing canonical tensor(s) {missing}")
        for p in self._table:
            if np.shape(weights[p.name]) != p.shape:
                raise ValueError(f"set_weights: {p.name} has shape {np.shape(weights[p.name])}, expected {p.shape}")
        return {p.name: np.asarray(weights[p.name], np.float32) for p in self._table}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        loaded = self._checked(weights)
        model = self._model()
        for name, value in loaded.items():
            _lookup(model, _flax_path(name))[...] = jnp.asarray(value)
        # A fresh optimizer: Adam moments zero, step count zero.
        optimizer = nnx.Optimizer(model, self._tx, wrt=nnx.Param)
        self._state = nnx.as_pure(nnx.state((model, optimizer)))

    # -- feeding --------------------------------------------------------------------------
    def to_device(self, batch: np.ndarray) -> jax.Array:
        """``jax.device_put`` returns at once and copies in the background, so the next batch
        moves while the current step runs (the prefetch the JAX docs show)."""
        return jax.device_put(batch)

    # -- compute -------------------------------------------------------------------------
    # A given mask_block goes in as an int32 array, so every block runs the one executable.
    def train_step(self, x: np.ndarray | jax.Array, eps: np.ndarray | None = None,
                   mask_block: int | None = None) -> jax.Array:
        loss, self._state = _train_step_jit(self._graphdef, self._state, x, eps, _block(mask_block))
        return loss

    def eval_forward(self, x: np.ndarray, eps: np.ndarray, mask_block: int | None = None) -> dict[str, np.ndarray]:
        """A spec with masking needs ``mask_block``; without one the layer draws the block the next
        train step would draw (the stream is not advanced)."""
        recon, mu, logvar = _eval_forward(self._graphdef, self._state, x, eps, _block(mask_block))
        return {"recon": np.asarray(recon), "z_mean": np.asarray(mu), "z_log_var": np.asarray(logvar)}

    def loss_and_grads(self, x: np.ndarray, eps: np.ndarray,
                       mask_block: int | None = None) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = _loss_and_grads(self._graphdef, self._state, x, eps, _block(mask_block))
        return float(loss), {
            p.name: np.asarray(_lookup(grads, _flax_path(p.name))) for p in self._table if p.trainable
        }

    def synchronize(self) -> None:
        # The loss of the last step comes out of the same executable as the state.
        jax.block_until_ready(self._state)

    # -- probes --------------------------------------------------------------------------
    def device_memory(self) -> dict[str, int | None]:
        return jax_probes.device_memory()

    def reset_peak_memory(self) -> None:
        """XLA's allocator keeps one process-wide high-water mark and offers no reset;
        peaks are therefore per worker process, which the harness starts per run."""

    def counters(self) -> dict[str, int]:
        return jax_probes.counters()

    @classmethod
    def versions(cls) -> dict[str, str]:
        def dist(name: str) -> str:
            try:
                return _dist_version(name)
            except PackageNotFoundError:
                return "unknown"

        return {
            "framework": flax.__version__,
            "flax": flax.__version__,
            "jax": jax.__version__,
            "jaxlib": dist("jaxlib"),
            "optax": optax.__version__,
            "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind,
        }

    @classmethod
    def device_kind(cls) -> str:
        return "gpu" if jax_probes.on_gpu() else "cpu"
