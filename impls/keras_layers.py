"""The Keras layers of the VAE: a stock ``keras.layers`` layer for each spec layer, and small ``Layer``
subclasses where Keras has none, as the keras.io VAE example writes its ``Sampling`` layer.

* ``keras_layer`` maps a spec layer to its stock Keras layer (``Dense``, ``Conv1D``,
  ``GroupNormalization``, ``Activation("silu")``, ...), with every framework default the spec pins
  (BatchNorm momentum and epsilon, GroupNorm epsilon, leaky-ReLU slope, GELU form, ``"zeros"``
  initializers for ``init: zeros``) passed explicitly; ``Dense``, ``Conv1D`` and ``Conv1DTranspose`` are
  the stock layers' subclasses below, which are the stock layers in float32 and add their bias in float32 under
  bf16 (``Float32Bias``);
* ``ResidualBlock`` and ``AttentionBlock`` are the spec's ``residual`` and ``attention1d``;
* ``Sampling`` draws the reparameterisation noise with ``keras.random.normal`` from a
  ``keras.random.SeedGenerator``, which ``RandomBlockMasking`` shares to draw the masked block with
  ``keras.random.randint`` inside the step; ``CropOrPad`` is ``output_length_policy: crop_or_pad``.

The canonical weight layout *is* Keras' layout (Dense ``(in, out)``, Conv1D ``(k, in, out)``,
Conv1DTranspose ``(k, out, in)``, channels-last flatten), so each layer's variables are the canonical
tensors under the same leaf names.

Mixed precision (``settings.precision: bf16``) is Keras' ``mixed_bfloat16`` dtype policy, given to each layer
(``dtype_policy``) rather than set globally, so that a float32 model built later in the same process stays
float32: a layer under it keeps its variables in float32 and computes in bfloat16, casting its floating inputs
and (inside ``call``) its variables to bfloat16. What the spec keeps in float32 (``BF16_FLOAT32_OPS``):

* the BatchNorm and GroupNorm statistics: Keras' own ``BatchNormalization`` and ``GroupNormalization``
  upcast their inputs to float32, normalise there (moving statistics, gamma and beta included: their
  variables are never autocast) and cast the result to the layer's compute dtype;
* the attention softmax: forced here, ``AttentionBlock`` casts the scores to float32 before ``ops.softmax``
  (``keras.layers.Softmax`` and ``ops.softmax`` compute in their input's dtype);
* the sampling: forced, ``Sampling`` is built with ``dtype="float32"`` (the model does so whatever the
  precision), so it casts the bfloat16 ``z_mean`` and ``z_log_var`` up and draws and adds in float32; the
  decoder's first layer casts ``z`` down to bfloat16, as its policy says;
* the bias gradients: ``Dense``, ``Conv1D`` and ``Conv1DTranspose`` below add their bias in float32
  (``Float32Bias``), so its gradient, the incoming gradient summed over the batch and the length, is a float32
  sum (torch's autocast reduces it so natively; Flax's build does as this one, ``impls.flax_model.Float32Bias``);
* the loss and the KL, the master weights and Adam's state: see ``impls.keras_model.vae_loss`` and
  ``impls.keras_adam``.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import keras
from keras import layers, ops

from harness.spec.layers import MASK_VALUE, ZERO_INIT, Layer
from harness.spec.schema import VAESpec
from harness.spec.shapes import mask_bounds, transpose_trim

#: True while a model is built to be loaded with given weights at once (``loading_weights``)
_LOADING = contextvars.ContextVar("keras_vae_loading_weights", default=False)


@contextmanager
def loading_weights() -> Iterator[None]:
    """Layers made inside start at ``zeros`` instead of the spec's initialisers: the model is loaded with
    given weights at once (``KerasVAE.with_weights``). On JAX each random initialiser of a new shape is
    one XLA compile, for values ``set_weights`` overwrites: a keras-jax ``residual-small`` build took
    3.7 s with them and 0.7 s without."""
    token = _LOADING.set(True)
    try:
        yield
    finally:
        _LOADING.reset(token)


def dtype_policy(spec: VAESpec) -> keras.DTypePolicy | None:
    """The dtype policy of the model's layers: ``mixed_bfloat16`` (bfloat16 compute over float32 variables)
    under ``settings.precision: bf16``, else ``None``, Keras' global policy, which this build never sets
    (``float32``), so a float32 build is exactly the one made before precisions existed."""
    return keras.DTypePolicy("mixed_bfloat16") if spec.settings.bf16 else None


def initialisers(spec: VAESpec, layer: Layer | None = None) -> tuple[str, str]:
    """Kernel and bias initialiser names: Keras' ``zeros`` for a layer's ``init: zeros`` (and while
    ``loading_weights``), otherwise the spec's pinned ones."""
    if _LOADING.get() or (layer is not None and layer.args.get("init") == ZERO_INIT):
        return "zeros", "zeros"
    return spec.settings.kernel_init, spec.settings.bias_init


class Float32Bias:
    """A stock ``Dense`` / ``Conv1D`` / ``Conv1DTranspose`` (``Dense`` and so on below) that, under a mixed dtype
    policy (``mixed_bfloat16``), adds its bias in the variable dtype, float32: the layer's product runs in bfloat16
    as the stock layer's does, goes up to float32 to take the float32 bias, and the sum is cast back to the compute
    dtype, which the layer returns as the stock one does. The bias is made with ``autocast=False``, so ``call``
    reads it float32 (Keras casts a layer's autocast variables to the compute dtype inside ``call``).

    The stock layer adds the bias cast down to bfloat16, and the gradient of that add, the incoming gradient
    summed over the batch and the length, is then reduced in bfloat16: on JAX, XLA on CPU rounds the sum after
    every add (keras-jax's ``resvae`` k=3 gradients were 27% off its float32 build's, the last bias 29%); on
    TensorFlow, Keras' ``ops.add`` turns a bias-shaped add into ``tf.nn.bias_add``, whose gradient op,
    ``BiasAddGrad``, accumulates a bfloat16 input in bfloat16 in TensorFlow's CPU kernel (2048 ones sum to 256;
    ``reduce_sum`` of the same accumulates in float32, as XLA's ``BiasAddGrad`` under ``jit_compile`` does):
    keras-tensorflow's ``conv-final`` k=5 ``decoder.7.bias`` gradient was 62% off; Keras' torch backend sums in
    float32 but hands the sum back rounded to bfloat16. Added in float32, the bias's gradient is a float32 sum on
    every backend (``BiasAddGrad`` in float32 on TensorFlow) and stays float32, as the spec pins
    (``BF16_FLOAT32_OPS``: bias gradients) and torch's autocast sums it.

    The bias keeps its name and place (``bias``, made after ``kernel``), so the canonical weights map onto it as
    onto the stock layer's. Under a policy whose compute dtype is its variable dtype (``float32``: fp32 and tf32)
    the layer is the stock one, ``build`` and ``call`` included."""

    def _float32_bias(self) -> bool:
        return self.use_bias and self.compute_dtype != self.variable_dtype

    def build(self, input_shape):
        if not self._float32_bias():
            return super().build(input_shape)
        self.use_bias = False  # the stock build makes the kernel alone
        super().build(input_shape)
        self.use_bias = True
        self.bias = self.add_weight(name="bias", shape=(self.units_out,), initializer=self.bias_initializer,
                                    regularizer=self.bias_regularizer, constraint=self.bias_constraint,
                                    autocast=False)

    def call(self, inputs):
        if not self._float32_bias():
            return super().call(inputs)
        outputs = ops.add(ops.cast(self.product(inputs), self.variable_dtype), self.bias)  # the last axis: channels
        outputs = ops.cast(outputs, self.compute_dtype)
        return outputs if self.activation is None else self.activation(outputs)


class Dense(Float32Bias, layers.Dense):
    """``keras.layers.Dense`` with its bias added in float32 under a mixed policy (``Float32Bias``)."""

    @property
    def units_out(self) -> int:
        return self.units

    def product(self, inputs):
        return ops.matmul(inputs, self.kernel)


class Conv1D(Float32Bias, layers.Conv1D):
    """``keras.layers.Conv1D`` with its bias added in float32 under a mixed policy (``Float32Bias``)."""

    @property
    def units_out(self) -> int:
        return self.filters

    def product(self, inputs):
        return self.convolution_op(inputs, self.kernel)


class Conv1DTranspose(Float32Bias, layers.Conv1DTranspose):
    """``keras.layers.Conv1DTranspose`` with its bias added in float32 under a mixed policy (``Float32Bias``)."""

    @property
    def units_out(self) -> int:
        return self.filters

    def product(self, inputs):
        return ops.conv_transpose(inputs, self.kernel, strides=list(self.strides), padding=self.padding,
                                  output_padding=self.output_padding, dilation_rate=self.dilation_rate,
                                  data_format=self.data_format)


class Sampling(layers.Layer):
    """z = z_mean + exp(z_log_var / 2) * eps, as in the keras.io VAE example.

    ``eps`` is drawn on the device from a ``SeedGenerator`` (its state is a non-trainable
    variable that Keras threads through the jitted step), unless the caller passes it,
    which parity checks do to fix the noise. ``seed``: an int, or the generator itself
    when the model shares one stream between its random layers.

    The model builds it with ``dtype="float32"`` (the spec keeps the sampling in float32): under
    ``mixed_bfloat16`` Keras casts the bfloat16 ``z_mean`` and ``z_log_var`` up to the layer's
    compute dtype as they come in, so ``z`` is float32.
    """

    def __init__(self, seed: int | keras.random.SeedGenerator | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed_generator = seed if isinstance(seed, keras.random.SeedGenerator) else keras.random.SeedGenerator(seed)

    def call(self, z_mean, z_log_var, eps=None):
        if eps is None:
            eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps


class RandomBlockMasking(layers.Layer):
    """The spec's ``masking`` layer (seed 004): one block of input features, drawn uniformly among
    ``blocks`` with ``keras.random.randint``, set to ``MASK_VALUE`` in every sample of the batch.

    Returns the masked batch and the block, which the masked loss reads. ``block`` fixes the
    draw (parity does). Like ``Dropout`` it is part of training: ``VAE.call`` skips it at
    inference unless a block is given.
    """

    def __init__(self, layer: Layer, seed: int | keras.random.SeedGenerator | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bounds = mask_bounds(layer)  # [start, stop) of each of the spec layer's blocks
        self.seed_generator = seed if isinstance(seed, keras.random.SeedGenerator) else keras.random.SeedGenerator(seed)
        self.built = True  # no weights (as Keras' own Dropout)

    def block_mask(self, block, length: int):
        """The (length,) boolean mask of block ``block`` (a scalar int tensor)."""
        starts, stops = (ops.convert_to_tensor([b[i] for b in self.bounds], dtype="int32") for i in (0, 1))
        positions = ops.arange(length, dtype="int32")
        return ops.logical_and(positions >= ops.take(starts, block), positions < ops.take(stops, block))

    def call(self, x, block=None):
        if block is None:
            block = keras.random.randint((), 0, len(self.bounds), dtype="int32", seed=self.seed_generator)
        block = ops.cast(block, "int32")
        return ops.where(self.block_mask(block, x.shape[-1]), MASK_VALUE, x), block


class CropOrPad(layers.Layer):
    """``output_length_policy: crop_or_pad``: flat logits cropped to ``length``, or padded with trailing zeros."""

    def __init__(self, length: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.length = length

    def call(self, x):
        n = x.shape[-1]
        return x[:, : self.length] if n >= self.length else ops.pad(x, [[0, 0], [0, self.length - n]])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.length)


def keras_layer(spec: VAESpec, layer: Layer, name: str) -> layers.Layer:
    """The stock Keras layer for one spec layer, with every framework default pinned, under the spec's
    dtype policy (``dtype_policy``); dense and conv layers are ``Dense``, ``Conv1D`` and ``Conv1DTranspose`` above,
    the stock layers adding their bias in float32 under bf16 (``Float32Bias``)."""
    t, a, s = layer.type, layer.args, spec.settings
    kernel_init, bias_init = initialisers(spec, layer)
    dtype = dtype_policy(spec)  # bf16: mixed_bfloat16, as every layer of the model
    if t == "dense":
        return Dense(a["units"], kernel_initializer=kernel_init, bias_initializer=bias_init, name=name,
                            dtype=dtype)
    if t in ("conv1d", "conv_transpose1d"):
        conv = Conv1D if t == "conv1d" else Conv1DTranspose
        # A strided conv-transpose is built "valid" and trimmed by a Cropping1D after it
        # (``build_encoder_decoder``): Keras' torch backend places a strided "same" transpose one
        # position off the jax and tensorflow backends (it warns so), the full one it places alike.
        padding = "valid" if t == "conv_transpose1d" and layer.stride > 1 else "same"
        return conv(a["filters"], a["kernel_size"], strides=layer.stride, padding=padding,
                    kernel_initializer=kernel_init, bias_initializer=bias_init, name=name, dtype=dtype)
    if t == "max_pool1d":
        return layers.MaxPooling1D(a["pool_size"], name=name, dtype=dtype)
    if t == "upsample1d":
        return layers.UpSampling1D(a["size"], name=name, dtype=dtype)
    if t == "batch_norm":
        # under mixed_bfloat16 Keras normalises in float32 (statistics included) and returns bfloat16
        return layers.BatchNormalization(momentum=s.batch_norm_momentum, epsilon=s.batch_norm_epsilon, name=name,
                                         dtype=dtype)
    if t == "group_norm":
        return layers.GroupNormalization(a["groups"], epsilon=spec.group_norm_epsilon(layer), name=name, dtype=dtype)
    if t == "attention1d":
        kernel_init, bias_init = initialisers(spec)  # its output projection alone follows ``init: zeros``
        return AttentionBlock(a["groups"], spec.group_norm_epsilon(layer), kernel_init=kernel_init,
                              bias_init=bias_init, zero_proj=a.get("init") == ZERO_INIT, name=name, dtype=dtype)
    if t == "relu":
        return layers.ReLU(name=name, dtype=dtype)
    if t == "leaky_relu":
        return layers.LeakyReLU(negative_slope=spec.leaky_slope(layer), name=name, dtype=dtype)
    if t == "gelu":
        # keras.layers.Activation("gelu") would take the activation's default form; pin it
        return layers.Activation(lambda x: keras.activations.gelu(x, approximate=s.gelu_approximate), name=name,
                                 dtype=dtype)
    if t in ("sigmoid", "silu", "selu"):
        return layers.Activation(t, name=name, dtype=dtype)
    if t == "flatten":
        return layers.Flatten(name=name, dtype=dtype)
    if t == "reshape":
        return layers.Reshape(tuple(a["shape"]), name=name, dtype=dtype)
    if t == "residual":
        return ResidualBlock(spec, layer, name=name, dtype=dtype)
    raise ValueError(f"unknown layer type {t!r}")


def keras_layers(spec: VAESpec, layer: Layer, name: str) -> list[layers.Layer]:
    """``keras_layer``, and after a strided conv-transpose the ``Cropping1D`` that makes it "same": Keras'
    torch backend places a strided "same" transpose one position off the jax and tensorflow backends (it
    warns so), the full ("valid") one it places alike."""
    out = [keras_layer(spec, layer, name)]
    if layer.type == "conv_transpose1d" and layer.stride > 1:
        out.append(layers.Cropping1D(transpose_trim(layer.args["kernel_size"], layer.stride), name=f"{name}_trim",
                                     dtype=dtype_policy(spec)))
    return out


class AttentionBlock(layers.Layer):
    """AutoencoderKL's ``AttnBlock`` over the length axis, the spec's ``attention1d``:
    ``x + proj(softmax(q k^T / sqrt(C)) v)`` with ``q``, ``k``, ``v`` and ``proj`` 1x1 ``Conv1D`` of a
    ``GroupNormalization`` of ``x``; one head over all C channels, the softmax over the keys.
    ``zero_proj`` starts the output projection at zero (``init: zeros``), so the block starts as the
    identity. ``parts`` maps each canonical sub-name (``norm``, ``q``, ...) to its Keras layer.

    Its sub-layers take the block's own dtype policy. Under ``mixed_bfloat16`` the softmax alone runs in
    float32, as the spec pins it: the bfloat16 scores are cast up before it and the weights back down to
    the compute dtype for the product with ``v``. (Under ``float32`` both casts are no-ops.)"""

    def __init__(self, groups: int, epsilon: float, kernel_init: str, bias_init: str, zero_proj: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups, self.epsilon, self.zero_proj = groups, epsilon, zero_proj
        self.kernel_init, self.bias_init = kernel_init, bias_init

    def build(self, input_shape):
        channels = input_shape[-1]
        self.norm = layers.GroupNormalization(self.groups, epsilon=self.epsilon, name=f"{self.name}_norm",
                                              dtype=self.dtype_policy)
        self.norm.build(input_shape)
        self.parts = {"norm": self.norm}
        for part in ("q", "k", "v", "proj"):
            zero = part == "proj" and self.zero_proj
            conv = Conv1D(channels, 1, kernel_initializer="zeros" if zero else self.kernel_init,
                                 bias_initializer="zeros" if zero else self.bias_init, name=f"{self.name}_{part}",
                                 dtype=self.dtype_policy)
            conv.build(input_shape)
            setattr(self, part, conv)
            self.parts[part] = conv

    def call(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        scores = ops.matmul(q, ops.transpose(k, (0, 2, 1))) / math.sqrt(x.shape[-1])  # (B, L queries, L keys)
        weights = ops.softmax(ops.cast(scores, "float32"), axis=-1)  # in float32 whatever the policy
        return x + self.proj(ops.matmul(ops.cast(weights, self.compute_dtype), v))


class ResidualBlock(layers.Layer):
    """``activation(inner(x) + skip(x))``, the spec's ``residual``, as a Keras layer subclass: ``inner``
    its layers, ``skip`` a 1x1 Conv1D / Conv1DTranspose (empty: identity). ``parts`` maps each nested
    canonical name (``inner.0``, ``skip``) to its Keras layer, for ``build_encoder_decoder``. Its layers
    are ``keras_layer``'s, under the spec's dtype policy as the block itself is."""

    def __init__(self, spec: VAESpec, layer: Layer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        a, self.parts = layer.args, {}
        self.inner, self.skip = [], []
        for j, sub in enumerate(a["layers"]):
            self.inner += keras_layers(spec, sub, f"{self.name}_inner_{j}")
            self.parts[f"inner.{j}"] = self.inner[-2 if sub.type == "conv_transpose1d" and sub.stride > 1 else -1]
        if a["skip"] != "identity":
            self.skip = keras_layers(spec, a["skip"], f"{self.name}_skip")
            self.parts["skip"] = self.skip[0]
        self.activation = None if a["activation"] is None else keras_layer(spec, Layer(a["activation"]), f"{self.name}_act")

    def call(self, x):
        h, s = x, x
        for sub in self.inner:
            h = sub(h)
        for sub in self.skip:
            s = sub(s)
        h = ops.add(h, s)
        return h if self.activation is None else self.activation(h)

