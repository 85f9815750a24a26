"""The VAE in Flax NNX: an ``nnx.Module`` built from the spec and a jitted, donating train step.

The spec is written channels-last, ``(length, channels)``, which is Flax's own
layout, so the canonical weights are Flax's weights with no transposes at all:

* ``nnx.Linear`` kernel ``(in, out)`` and ``nnx.Conv`` kernel ``(k, in, out)`` are
  the canonical dense and conv1d kernels;
* ``nnx.ConvTranspose(..., transpose_kernel=True)`` stores its kernel as
  ``(k, out, in)`` and computes the gradient (adjoint) of a conv whose kernel is
  that array, which is exactly the canonical ``conv_transpose1d`` of
  ``harness.spec.reference``. With stride 1 and an odd kernel its ``'SAME'`` padding is
  the symmetric ``((k - 1) / 2, (k - 1) / 2)`` of the reference (checked against
  ``harness.spec.reference`` in ``tests/test_impl_flax.py``), so no explicit padding
  is needed;
* ``nnx.BatchNorm`` ``scale``, ``bias``, ``mean``, ``var`` are the canonical
  ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``; its ``momentum`` is
  already the decay of the running statistics, and it updates the running variance
  with the biased batch variance, as the spec asks;
* ``nnx.GroupNorm`` ``scale``, ``bias`` are the canonical ``gamma``, ``beta``: on a
  ``(batch, length, channels)`` input it normalises each sample's ``(length, channels /
  groups)`` values per group, the reference's ``group_norm``;
* an ``attention1d`` is an ``Attention1D`` module of a GroupNorm ``norm`` and four 1x1
  ``nnx.Conv`` (``q``, ``k``, ``v``, ``proj``, kernels ``(1, C, C)``), so
  ``encoder.5.q.kernel`` is ``encoder.layers[5].q.kernel``;
* ``init: zeros`` (and the zero-initialised output projection of an attention) is
  ``kernel_init=nnx.initializers.zeros``; the bias is zeros anyway;
* a ``masking`` layer is a ``Masking`` module at the encoder's index 0. Like
  ``nnx.Dropout`` it owns a random stream (``rngs.masking``, seeded from
  ``settings.seed``), so the jitted train step draws the masked block from it and hands
  the advanced stream back with the new weights; a given block is used as is.

Each layer of ``spec.encoder`` / ``spec.decoder`` is one entry of an
``nnx.Sequential`` (activations, pooling and reshapes are plain functions), so the
canonical name ``encoder.3.kernel`` is the Flax path ``encoder.layers[3].kernel``.

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

import functools
import os
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from harness.adapter import VAEAdapter
from harness.spec.layers import MASK_VALUE, MASKED_BCE_CLIP, ZERO_INIT
from harness.spec.params import ParamCounts, param_table
from harness.spec.residual import residual_parts
from harness.spec.schema import VAESpec
from harness.spec.shapes import LayerShape, infer_shapes, mask_bounds

# JAX reads this when its GPU backend starts (the first device use), not at import. The
# harness worker sets it from ``settings.jax_preallocate`` before anything runs; this
# default only matters when the build is used directly (tests, a notebook) and is the spec's.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# ------------------------------------------------------------------------- compile counter

#: the event JAX records around every XLA backend compilation (jax/_src/dispatch.py)
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = 0


def _count_compile(event: str, duration_secs: float, **_: Any) -> None:
    global _compiles
    if event == _COMPILE_EVENT:
        _compiles += 1


#: recorded when an executable comes from JAX's persistent compilation cache (jax/_src/compiler.py),
#: which the harness points at a directory shared by a run's cells; such a compile_s is not cold
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_cache_hits = 0


def _count_cache_hit(event: str, **_: Any) -> None:
    global _cache_hits
    if event == _CACHE_HIT_EVENT:
        _cache_hits += 1


# Registered once per process, at import: every jit cache miss anywhere in the
# process (the train step, eval, eager ops on new shapes) is one XLA compile, and each
# compiled executable holds device memory, which is what the leak attribution needs.
jax.monitoring.register_event_duration_secs_listener(_count_compile)
jax.monitoring.register_event_listener(_count_cache_hit)


# ---------------------------------------------------------------------------- the model

#: canonical BatchNorm names -> nnx.BatchNorm attribute names
_BN_NAMES = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}


def _flatten(h: jax.Array) -> jax.Array:
    """Row-major with channels fastest: Flax's channels-last layout already is the canonical order."""
    return h.reshape(h.shape[0], -1)


def _reshape(h: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return h.reshape(h.shape[0], *shape)


def _crop_or_pad(h: jax.Array, length: int) -> jax.Array:
    """``output_length_policy: crop_or_pad``: the first ``length`` logits, or trailing zeros up to it."""
    return h[:, :length] if h.shape[1] >= length else jnp.pad(h, ((0, 0), (0, length - h.shape[1])))


def _build_layer(spec: VAESpec, ls: LayerShape, rngs: nnx.Rngs) -> Callable[[jax.Array], jax.Array]:
    """One spec layer as a Flax module (parametric layers) or a plain function (the rest)."""
    t, a = ls.layer.type, ls.layer.args
    init = {
        "kernel_init": nnx.initializers.zeros if a.get("init") == ZERO_INIT else nnx.initializers.glorot_uniform(),
        "bias_init": nnx.initializers.zeros_init(),
        "rngs": rngs,
    }
    if t == "dense":
        return nnx.Linear(ls.in_shape[0], a["units"], **init)
    if t == "conv1d":
        # 'SAME' with a stride is XLA's (and so Keras'): ceil(L / s) outputs, the odd pad on the right
        return nnx.Conv(ls.in_shape[1], a["filters"], a["kernel_size"], strides=ls.layer.stride, padding="SAME",
                        **init)
    if t == "conv_transpose1d":
        # L * s outputs: lax.conv_transpose's 'SAME' is the adjoint of the strided 'SAME' conv
        return nnx.ConvTranspose(
            ls.in_shape[1], a["filters"], a["kernel_size"], strides=ls.layer.stride, padding="SAME",
            transpose_kernel=True, **init
        )
    if t == "batch_norm":
        # use_fast_variance=False computes var as E[(x - E[x])^2] rather than
        # E[x^2] - E[x]^2: slower by one pass but without the cancellation error, so the
        # statistics agree with PyTorch, Keras and the float64 reference to float32 precision.
        return nnx.BatchNorm(
            ls.in_shape[-1],
            momentum=spec.settings.batch_norm_momentum,
            epsilon=spec.settings.batch_norm_epsilon,
            use_fast_variance=False,
            rngs=rngs,
        )
    if t == "group_norm":
        return _group_norm(spec, ls, rngs)
    if t == "attention1d":
        return Attention1D(spec, ls, rngs=rngs)
    if t == "masking":
        return Masking(spec, rngs=rngs)
    if t == "max_pool1d":
        p = a["pool_size"]
        return functools.partial(nnx.max_pool, window_shape=(p,), strides=(p,))
    if t == "upsample1d":
        return functools.partial(jnp.repeat, repeats=a["size"], axis=1)
    if t == "relu":
        return nnx.relu
    if t == "leaky_relu":
        return functools.partial(nnx.leaky_relu, negative_slope=spec.leaky_slope(ls.layer))
    if t == "gelu":
        return functools.partial(nnx.gelu, approximate=spec.settings.gelu_approximate)
    if t == "silu":
        return nnx.silu
    if t == "selu":  # jax.nn.selu: the fixed alpha and scale of Klambauer et al.
        return nnx.selu
    if t == "sigmoid":
        return nnx.sigmoid
    if t == "flatten":
        return _flatten
    if t == "reshape":
        return functools.partial(_reshape, shape=tuple(a["shape"]))
    if t == "residual":
        return Residual(spec, ls, rngs=rngs)
    raise ValueError(f"layer type {t!r} has no Flax build")


def _group_norm(spec: VAESpec, ls: LayerShape, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """``nnx.GroupNorm`` with the spec's groups and epsilon. Its default reduction axes on a
    ``(batch, length, channels)`` input are every axis but the batch, with the channels split
    into ``(groups, channels / groups)``: each sample's (length, channels / groups) values per
    group. ``use_fast_variance=False`` as for BatchNorm: E[(x - E[x])^2], no cancellation."""
    return nnx.GroupNorm(ls.in_shape[-1], num_groups=ls.layer.args["groups"], epsilon=spec.group_norm_epsilon(ls.layer),
                         use_fast_variance=False, rngs=rngs)


class Attention1D(nnx.Module):
    """AutoencoderKL's AttnBlock over the length axis, ``x + proj(softmax(q k^T / sqrt(C)) v)``: q, k, v
    and proj are 1x1 ``nnx.Conv`` of a GroupNorm of x, the attention one head of
    ``nnx.dot_product_attention`` (scores scaled by 1 / sqrt(C), softmax over the keys)."""

    def __init__(self, spec: VAESpec, ls: LayerShape, *, rngs: nnx.Rngs):
        c, zero = ls.in_shape[-1], ls.layer.args.get("init") == ZERO_INIT
        self.norm = _group_norm(spec, ls, rngs)
        conv = functools.partial(nnx.Conv, c, c, 1, bias_init=nnx.initializers.zeros_init(), rngs=rngs)
        self.q, self.k, self.v = (conv(kernel_init=nnx.initializers.glorot_uniform()) for _ in range(3))
        self.proj = conv(kernel_init=nnx.initializers.zeros if zero else nnx.initializers.glorot_uniform())

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.norm(x)
        # (batch, length, heads=1, channels), as nnx.dot_product_attention takes them
        q, k, v = (f(h)[:, :, None, :] for f in (self.q, self.k, self.v))
        return x + self.proj(nnx.dot_product_attention(q, k, v)[:, :, 0, :])


class Masking(nnx.Module):
    """The spec's ``masking`` layer: one block of the input's features set to ``MASK_VALUE`` (-1) in every
    sample. ``block=None`` draws it uniformly among the blocks from the layer's own stream, as
    ``nnx.Dropout`` draws its mask."""

    def __init__(self, spec: VAESpec, *, rngs: nnx.Rngs):
        bounds = mask_bounds(spec.masking)
        self.starts, self.stops = tuple(b[0] for b in bounds), tuple(b[1] for b in bounds)
        self.length = spec.input_length
        self.rngs = rngs.masking.fork()

    def draw(self) -> jax.Array:
        return jax.random.randint(self.rngs(), (), 0, len(self.starts))

    def mask(self, block: jax.Array | int) -> jax.Array:
        """The (length,) boolean mask of ``block``."""
        position = jnp.arange(self.length)
        return (position >= jnp.asarray(self.starts)[block]) & (position < jnp.asarray(self.stops)[block])

    def __call__(self, x: jax.Array, block: jax.Array | int | None = None) -> jax.Array:
        return jnp.where(self.mask(self.draw() if block is None else block), MASK_VALUE, x)


class Residual(nnx.Module):
    """``activation(inner(x) + skip(x))``, the spec's ``residual``: ``inner`` an ``nnx.Sequential`` of its layers,
    ``skip`` a 1x1 ``nnx.Conv`` / ``nnx.ConvTranspose`` or None (identity), so ``encoder.3.inner.0.kernel`` is
    ``encoder.layers[3].inner.layers[0].kernel`` and ``encoder.3.skip.kernel`` ``encoder.layers[3].skip.kernel``."""

    def __init__(self, spec: VAESpec, ls: LayerShape, *, rngs: nnx.Rngs):
        inner, skip, act = residual_parts(spec, ls)
        self.inner = nnx.Sequential(*(_build_layer(spec, s, rngs) for s in inner))
        self.skip = None if skip is None else _build_layer(spec, skip, rngs)
        self.activation = None if act is None else _build_layer(spec, LayerShape(ls.name, act, ls.out_shape, ls.out_shape), rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.inner(x) + (x if self.skip is None else self.skip(x))
        return h if self.activation is None else self.activation(h)


class VAE(nnx.Module):
    """Encoder, the two latent heads, reparameterisation, decoder; returns logits."""

    def __init__(self, spec: VAESpec, *, rngs: nnx.Rngs):
        shapes = {s.name: s for s in infer_shapes(spec)}
        enc = [s for s in shapes.values() if s.name.startswith("encoder.")]
        dec = [s for s in shapes.values() if s.name.startswith("decoder.")]
        self.encoder = nnx.Sequential(*(_build_layer(spec, s, rngs) for s in enc))
        # dense heads on a vector, or "same" conv1d heads on a (length, channels) map (the spec says which)
        self.z_mean = _build_layer(spec, shapes["z_mean"], rngs)
        self.z_log_var = _build_layer(spec, shapes["z_log_var"], rngs)
        tail = ([functools.partial(_crop_or_pad, length=spec.input_length)]
                if spec.output_length_policy == "crop_or_pad" else [])
        self.decoder = nnx.Sequential(*(_build_layer(spec, s, rngs) for s in dec), *tail)
        self.beta = spec.loss.beta
        self.reconstruction = spec.loss.reconstruction
        self.kl_divisor = spec.input_length if spec.loss.kl_normalisation == "features" else 1
        self.masked = spec.masking is not None
        # The model owns its noise stream (as nnx.Dropout owns its dropout stream): the
        # key and its counter are model state, so a jitted step that draws from it hands
        # back the advanced stream together with the new weights.
        self.noise = rngs.noise.fork()

    @property
    def masking(self) -> Masking | None:
        return self.encoder.layers[0] if self.masked else None

    def __call__(self, x: jax.Array, eps: jax.Array | None = None,
                 mask_block: jax.Array | int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        # nnx.Sequential hands keyword arguments to its first layer: the masking layer's block
        h = self.encoder(x, block=mask_block) if self.masked else self.encoder(x)
        mu, logvar = self.z_mean(h), self.z_log_var(h)
        if eps is None:
            eps = jax.random.normal(self.noise(), mu.shape, mu.dtype)
        z = mu + jnp.exp(0.5 * logvar) * eps
        return self.decoder(z), mu, logvar

    def loss(self, x: jax.Array, eps: jax.Array | None = None, mask_block: jax.Array | int | None = None) -> jax.Array:
        """BCE from logits (or MSE of the sigmoid output) summed over features, or masked BCE averaged over
        the masked block, + beta x KL summed over the latent elements (divided by the input length for
        ``kl_normalisation: features``); batch means. ``x`` is the unmasked batch."""
        if self.masked and mask_block is None:  # this step's block, drawn once for the input and the loss
            mask_block = self.masking.draw()
        logits, mu, logvar = self(x, eps, mask_block)
        if self.reconstruction == "mse":
            recon = ((nnx.sigmoid(logits) - x) ** 2).sum(axis=-1)
        elif self.reconstruction == "masked_bce":
            p = jnp.clip(nnx.sigmoid(logits), MASKED_BCE_CLIP, 1 - MASKED_BCE_CLIP)
            mask = self.masking.mask(mask_block)
            bce = -(x * jnp.log(p) + (1 - x) * jnp.log(1 - p))
            recon = jnp.where(mask, bce, 0).sum(axis=-1) / mask.sum()
        else:
            recon = optax.sigmoid_binary_cross_entropy(logits, x).sum(axis=-1)
        kl = (-0.5 * (1 + logvar - mu**2 - jnp.exp(logvar))).reshape(x.shape[0], -1).sum(axis=-1) / self.kl_divisor
        return recon.mean() + self.beta * kl.mean()


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

    def __init__(self, spec: VAESpec) -> None:
        super().__init__(spec)
        # On GPU, JAX otherwise runs float32 matmuls and convolutions with reduced
        # precision (TF32 / bf16 passes); "highest" is true float32, like the other builds.
        jax.config.update("jax_default_matmul_precision", None if spec.settings.tf32 else "highest")
        o = spec.optimizer
        # optax.adam adds eps to sqrt(v_hat), the adam_epsilon_hat=True form.
        self._tx = optax.adam(o.lr, b1=o.beta1, b2=o.beta2, eps=o.eps)
        if o.clip_global_norm is not None:  # g * min(1, c / ||g||) over all parameters, then Adam
            self._tx = optax.chain(optax.clip_by_global_norm(o.clip_global_norm), self._tx)

        # Built under nnx.jit: initialisation is one compiled program instead of one
        # eager dispatch (and, on a new shape, one compile) per random tensor.
        @nnx.jit
        def create() -> tuple[VAE, nnx.Optimizer]:
            seed = jax.random.key(spec.settings.seed)
            params_key, noise_key = jax.random.split(seed)
            # the masking layer's stream; folded in, so the other two keys stay what they were
            model = VAE(spec, rngs=nnx.Rngs(params=params_key, noise=noise_key, masking=jax.random.fold_in(seed, 1)))
            return model, nnx.Optimizer(model, self._tx, wrt=nnx.Param)

        graphdef, state = nnx.split(create())
        self._graphdef, self._state = graphdef, nnx.as_pure(state)
        self._table = param_table(spec)

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

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        missing = [p.name for p in self._table if p.name not in weights]
        if missing:
            raise KeyError(f"set_weights: missing canonical tensor(s) {missing}")
        for p in self._table:  # check everything before touching anything
            if np.shape(weights[p.name]) != p.shape:
                raise ValueError(f"set_weights: {p.name} has shape {np.shape(weights[p.name])}, expected {p.shape}")
        model = self._model()
        for p in self._table:
            _lookup(model, _flax_path(p.name))[...] = jnp.asarray(weights[p.name], jnp.float32)
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
        stats = jax.devices()[0].memory_stats()  # None on CPU
        if not stats:
            return {}
        return {
            "peak_bytes": stats.get("peak_bytes_in_use"),
            "bytes_in_use": stats.get("bytes_in_use"),
            "reserved_bytes": stats.get("bytes_reserved"),
            "bytes_limit": stats.get("bytes_limit"),
        }

    def reset_peak_memory(self) -> None:
        """XLA's allocator keeps one process-wide high-water mark and offers no reset;
        peaks are therefore per worker process, which the harness starts per run."""

    def counters(self) -> dict[str, int]:
        return {"compiles": _compiles, "compile_cache_hits": _cache_hits}

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
        return "gpu" if jax.default_backend() == "gpu" else "cpu"
