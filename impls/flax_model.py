"""The VAE as a Flax NNX model: an ``nnx.Module`` per spec layer, and the loss as a method of the model.

The spec is written channels-last, ``(length, channels)``, which is Flax's own
layout, so the canonical weights are Flax's weights with no transposes at all:

* ``nnx.Linear`` kernel ``(in, out)`` and ``nnx.Conv`` kernel ``(k, in, out)`` are
  the canonical dense and conv1d kernels;
* ``nnx.ConvTranspose(..., transpose_kernel=True)`` stores its kernel as
  ``(k, out, in)`` and computes the gradient (adjoint) of a conv whose kernel is
  that array, which is exactly the canonical ``conv_transpose1d`` of
  ``harness.spec.reference``. With stride 1 and an odd kernel its ``'SAME'`` padding is
  the symmetric ``((k - 1) / 2, (k - 1) / 2)`` of the reference (checked against
  ``harness.spec.reference`` in ``tests/impls/flax/test_impl_flax.py``), so no explicit padding
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

Mixed precision (``settings.precision: bf16``) is Flax's own: every module is built with
``dtype=jnp.bfloat16``, the dtype it computes in, and ``param_dtype=jnp.float32``, the dtype
of its weights, so the parameters (and the Adam state ``optax`` builds like them) stay float32
and each module casts its input and weights to bfloat16 as it runs; the gradients come back
float32, with respect to the float32 parameters. In fp32 and tf32 ``dtype`` is None, Flax's
default (the dtype of the input and the weights), and nothing is cast. Two ``promote_dtype``
hooks (the argument Flax's layers take to choose what is cast) change where a sum of
gradients is taken: dense and conv layers add their bias in float32 (``Float32Bias``) and the
norms normalise in float32 (``_float32_norm``); without them, Flax's layers sum some
gradients over the batch in bfloat16 (several percent of error against the fp32 build).

What the spec keeps in float32 all the same (``BF16_FLOAT32_OPS``):

* Flax does on its own: the BatchNorm and GroupNorm batch statistics (``_compute_stats``
  promotes its input to at least float32, and the BatchNorm running averages are float32
  ``BatchStat`` updated from them), and the attention softmax (``nnx.dot_product_attention``
  hands off to ``jax.nn.dot_product_attention``, which takes the scores in float32 and
  always computes the softmax in float32);
* forced here: the BatchNorm running statistics in eval mode, which ``nnx.BatchNorm``'s
  default ``promote_dtype`` would round to bfloat16 (``_float32_norm`` keeps them float32);
  and the sampling, the loss and the KL: ``VAE.__call__`` casts z_mean, z_log_var and the
  logits up to float32, so ``mu + exp(0.5 * logvar) * eps`` is float32 (the decoder's first
  layer casts z to bfloat16, as its dtype says) and so is everything the loss reduces.
  z_mean and z_log_var are the bfloat16 heads' values cast up: on the bfloat16 grid.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.nnx.nn import dtypes
from flax.typing import Dtype

from harness.spec.layers import MASK_VALUE, MASKED_BCE_CLIP, ZERO_INIT
from harness.spec.residual import residual_parts
from harness.spec.schema import VAESpec
from harness.spec.shapes import LayerShape, infer_shapes, mask_bounds


def _flatten(h: jax.Array) -> jax.Array:
    """Row-major with channels fastest: Flax's channels-last layout already is the canonical order."""
    return h.reshape(h.shape[0], -1)


def _reshape(h: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return h.reshape(h.shape[0], *shape)


def _crop_or_pad(h: jax.Array, length: int) -> jax.Array:
    """``output_length_policy: crop_or_pad``: the first ``length`` logits, or trailing zeros up to it."""
    return h[:, :length] if h.shape[1] >= length else jnp.pad(h, ((0, 0), (0, length - h.shape[1])))


def _precision(spec: VAESpec) -> dict[str, Dtype | None]:
    """The ``dtype`` (computation) and ``param_dtype`` (weights) of every module: bfloat16 over float32
    weights in bf16, Flax's defaults (None: the input's and weights' dtype, so float32) otherwise."""
    return {"dtype": jnp.bfloat16 if spec.settings.bf16 else None, "param_dtype": jnp.float32}


def _float32_bias(args: tuple[jax.Array | None, ...], /, *, dtype: Dtype | None = None,
                  inexact: bool = True) -> tuple[jax.Array | None, ...]:
    """The ``promote_dtype`` of ``Float32Bias``: the input and kernel go to the computation dtype, the bias stays
    float32."""
    inputs, kernel, bias = args
    inputs, kernel = dtypes.promote_dtype((inputs, kernel), dtype=dtype, inexact=inexact)
    return inputs, kernel, bias


class Float32Bias:
    """A dense or conv layer (``Linear``, ``Conv``, ``ConvTranspose`` below) that adds its bias in float32: with a
    ``dtype``, the input and kernel are cast to it and multiplied there (bfloat16 products, float32 accumulation),
    the product goes up to float32 to take the float32 bias, and the sum is cast back to the ``dtype``, which the
    layer returns as Flax's own does. Flax's layer casts the bias down and adds it in bfloat16, and the gradient
    of that add, the incoming gradient summed over the batch (and the length), is then a bfloat16 sum, which XLA
    accumulates in bfloat16 (on CPU, measured; on Hopper too by XLA's float-support rules, which let it add
    bfloat16 natively). On CPU that put 29% of error into the last bias gradients of resvae against the fp32
    build; with the float32 bias it is a float32 sum, as torch's is under autocast, and resvae's gradients are
    about 1e-3 from the fp32 build's. Without a ``dtype`` (fp32, tf32) nothing is cast: Flax's layer as it is."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, promote_dtype=_float32_bias, **kwargs)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        y = super().__call__(inputs)
        return y if self.dtype is None else y.astype(self.dtype)


class Linear(Float32Bias, nnx.Linear):
    """``nnx.Linear`` with its bias added in float32."""


class Conv(Float32Bias, nnx.Conv):
    """``nnx.Conv`` with its bias added in float32."""


class ConvTranspose(Float32Bias, nnx.ConvTranspose):
    """``nnx.ConvTranspose`` with its bias added in float32."""


def _float32_norm(args: tuple[jax.Array | None, ...], /, *, dtype: Dtype | None = None,
                  inexact: bool = True) -> tuple[jax.Array | None, ...]:
    """The ``promote_dtype`` of the norms: the input, the running statistics, scale and bias all float32, whatever
    the computation dtype; the norm still returns its ``dtype``. Flax's default casts them all to the dtype: the
    BatchNorm running statistics would be rounded to bfloat16 in eval mode, and the input, cast up to float32
    twice (for the statistics and for the normalisation), would take its gradient as two bfloat16 halves summed
    in bfloat16, which cancel; here it is one float32 sum, rounded once. In fp32 nothing is cast either way."""
    return dtypes.promote_dtype(args, dtype=jnp.float32, inexact=inexact)


def _build_layer(spec: VAESpec, ls: LayerShape, rngs: nnx.Rngs) -> Callable[[jax.Array], jax.Array]:
    """One spec layer as a Flax module (parametric layers) or a plain function (the rest)."""
    t, a = ls.layer.type, ls.layer.args
    init = {
        "kernel_init": nnx.initializers.zeros if a.get("init") == ZERO_INIT else nnx.initializers.glorot_uniform(),
        "bias_init": nnx.initializers.zeros_init(),
        **_precision(spec),
        "rngs": rngs,
    }
    if t == "dense":
        return Linear(ls.in_shape[0], a["units"], **init)
    if t == "conv1d":
        # 'SAME' with a stride is XLA's (and so Keras'): ceil(L / s) outputs, the odd pad on the right
        return Conv(ls.in_shape[1], a["filters"], a["kernel_size"], strides=ls.layer.stride, padding="SAME", **init)
    if t == "conv_transpose1d":
        # L * s outputs: lax.conv_transpose's 'SAME' is the adjoint of the strided 'SAME' conv
        return ConvTranspose(
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
            promote_dtype=_float32_norm,
            **_precision(spec),
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
    group. ``use_fast_variance=False`` as for BatchNorm: E[(x - E[x])^2], no cancellation. It has
    no running statistics, and computes the batch ones in float32 whatever its dtype."""
    return nnx.GroupNorm(ls.in_shape[-1], num_groups=ls.layer.args["groups"], epsilon=spec.group_norm_epsilon(ls.layer),
                         use_fast_variance=False, promote_dtype=_float32_norm, **_precision(spec), rngs=rngs)


class Attention1D(nnx.Module):
    """AutoencoderKL's AttnBlock over the length axis, ``x + proj(softmax(q k^T / sqrt(C)) v)``: q, k, v
    and proj are 1x1 ``nnx.Conv`` of a GroupNorm of x, the attention one head of
    ``nnx.dot_product_attention`` (scores scaled by 1 / sqrt(C), softmax over the keys, in float32
    whatever the dtype of q, k and v)."""

    def __init__(self, spec: VAESpec, ls: LayerShape, *, rngs: nnx.Rngs):
        c, zero = ls.in_shape[-1], ls.layer.args.get("init") == ZERO_INIT
        self.norm = _group_norm(spec, ls, rngs)
        conv = functools.partial(Conv, c, c, 1, bias_init=nnx.initializers.zeros_init(), **_precision(spec),
                                 rngs=rngs)
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
        # float32 from here to the decoder and after it (a no-op in fp32): the sampling, the KL and the loss
        mu, logvar = self.z_mean(h).astype(jnp.float32), self.z_log_var(h).astype(jnp.float32)
        if eps is None:
            eps = jax.random.normal(self.noise(), mu.shape, mu.dtype)
        z = mu + jnp.exp(0.5 * logvar) * eps
        return self.decoder(z).astype(jnp.float32), mu, logvar

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
