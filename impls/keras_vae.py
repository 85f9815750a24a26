"""The VAE in Keras 3, written the way the keras.io VAE example writes it, on any backend.

One file serves three rows: ``keras-jax``, ``keras-torch`` and ``keras-tensorflow``.
Keras picks its backend once per process from ``KERAS_BACKEND`` (the harness sets it
before the worker imports anything), so the row name is read back from
``keras.backend.backend()``.

What a Keras user would write, and this build does:

* encoder and decoder are functional ``keras.Model`` stacks of stock ``keras.layers``
  (``GroupNormalization``, ``Activation("silu")``, ``Conv1D`` latent heads, ``"zeros"``
  initializers for ``init: zeros``), with small ``Layer`` subclasses where Keras has no
  stock layer (``ResidualBlock``, ``AttentionBlock``);
  a ``Sampling`` layer draws the reparameterisation noise with ``keras.random.normal``
  from a ``keras.random.SeedGenerator``, which a ``RandomBlockMasking`` layer shares to
  draw the masked block with ``keras.random.randint`` inside the step;
* the ``VAE`` model overrides ``compute_loss`` only, so the step itself is Keras' own
  per-backend trainer (``jax.jit`` / ``tf.function`` / eager torch);
* the timed steps run as the user trains, one ``model.fit`` over a ``keras.utils.PyDataset``
  (``impls/keras_fit.py``); ``use_loop("train_on_batch")`` times ``train_on_batch`` instead,
  which is also what ``train_step`` runs.

Two places depart from Keras' defaults because the spec pins them (see
``harness.spec.schema.Settings``): the Adam update (``TextbookAdam``, ``impls/keras_adam.py``) and the BatchNorm
momentum, epsilon, GroupNorm epsilon, leaky-ReLU slope and GELU form, passed explicitly to each layer.

The canonical weight layout *is* Keras' layout (Dense ``(in, out)``, Conv1D
``(k, in, out)``, Conv1DTranspose ``(k, out, in)``, channels-last flatten), so moving
weights is a name lookup with no transposes.

Backend-specific code is confined to the "backend corner" below: gradients for
``loss_and_grads`` (Keras has no backend-agnostic ``grad``), device synchronisation,
allocator figures and precision flags; besides it, only ``to_device`` and the torch
form of ``TextbookAdam``'s update (Keras' own fused Adam, which a subclass loses).
Everything else a training step runs is ``keras.ops``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import keras
import numpy as np
from keras import layers, ops

from harness.adapter import VAEAdapter
from harness.spec.layers import MASK_VALUE, MASKED_BCE_CLIP, ZERO_INIT, Layer
from harness.spec.params import ParamCounts, param_table
from harness.spec.schema import Loss, VAESpec
from harness.spec.shapes import latent_shape, mask_bounds, transpose_trim
from impls.keras_adam import TextbookAdam
from impls.keras_fit import async_callbacks, fit_details, fit_steps

BACKEND = keras.backend.backend()

# ---------------------------------------------------------------------------- backend corner

if BACKEND == "jax":
    import jax

    _xla_compiles = 0

    def _count_compile(event: str, duration: float, **kwargs: Any) -> None:
        # jax/_src/dispatch.py: BACKEND_COMPILE_EVENT, recorded once per XLA compilation
        global _xla_compiles
        if event == "/jax/core/compile/backend_compile_duration":
            _xla_compiles += 1

    jax.monitoring.register_event_duration_secs_listener(_count_compile)
elif BACKEND == "torch":
    import torch
elif BACKEND == "tensorflow":
    import tensorflow as tf
else:  # pragma: no cover - keras itself rejects other names for this build's purposes
    raise ImportError(f"impls.keras_vae supports the jax, torch and tensorflow backends, not {BACKEND!r}")


def _on_gpu() -> bool:
    if BACKEND == "jax":
        return jax.default_backend() in ("gpu", "cuda", "rocm")
    if BACKEND == "torch":
        return torch.cuda.is_available()
    return bool(tf.config.list_physical_devices("GPU"))


def _pin_device_settings(tf32: bool, tf_memory_growth: bool) -> None:
    """TF32 off unless asked for, and TensorFlow's memory growth, before any op runs.

    Each backend has its own switch; all three otherwise run float32 matmuls and
    convolutions in TF32 (or lower, for JAX) on Ampere and newer GPUs.
    """
    if BACKEND == "jax":
        jax.config.update("jax_default_matmul_precision", None if tf32 else "highest")
    elif BACKEND == "torch":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    else:
        for gpu in tf.config.list_physical_devices("GPU"):
            # only settable before the GPU is initialised; a second model in the same
            # process finds it already set and leaves it alone
            if tf.config.experimental.get_memory_growth(gpu) != tf_memory_growth:
                tf.config.experimental.set_memory_growth(gpu, tf_memory_growth)
        tf.config.experimental.enable_tensor_float_32_execution(tf32)


def value_and_grad(fn):
    """``fn(values, *args) -> loss``  becomes  ``(values, *args) -> (loss, d loss / d values)``.

    Keras 3 offers no backend-agnostic gradient, so this is each backend's own:
    ``jax.value_and_grad`` (jitted: eager JAX would compile every primitive of the
    forward and backward pass on its own), ``torch.autograd.grad`` (which, unlike
    ``backward``, leaves ``.grad`` alone) and ``tf.GradientTape``.
    """
    if BACKEND == "jax":
        return jax.jit(jax.value_and_grad(fn))
    if BACKEND == "torch":
        def torch_value_and_grad(values, *args):
            values = [v.detach().requires_grad_(True) for v in values]
            loss = fn(values, *args)
            return loss, list(torch.autograd.grad(loss, values))

        return torch_value_and_grad

    def tf_value_and_grad(values, *args):
        values = [tf.convert_to_tensor(v) for v in values]
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = fn(values, *args)
        return loss, tape.gradient(loss, values)

    return tf_value_and_grad


# ---------------------------------------------------------------------------- model


class Sampling(layers.Layer):
    """z = z_mean + exp(z_log_var / 2) * eps, as in the keras.io VAE example.

    ``eps`` is drawn on the device from a ``SeedGenerator`` (its state is a non-trainable
    variable that Keras threads through the jitted step), unless the caller passes it,
    which parity checks do to fix the noise. ``seed``: an int, or the generator itself
    when the model shares one stream between its random layers.
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


def vae_loss(x, y_pred: dict, beta: float, reconstruction: str = "bce_logits", kl_normalisation: str = "batch",
             mask=None):
    """The spec's loss (``harness.spec.reference.vae_loss``): the reconstruction term plus beta x KL summed
    over all latent elements, both averaged over the batch.

    ``bce_logits``: BCE from logits summed over features; ``mse``: the squared error of the sigmoid output
    summed over features; ``masked_bce``: Keras' BCE of the sigmoid output clipped to [1e-7, 1 - 1e-7]
    on the masked block only (``mask``, the block's (L,) boolean mask), averaged over its positions.
    ``kl_normalisation: features`` divides the KL by the number of input features. ``x`` is the
    unmasked batch."""
    logits = y_pred["logits"]
    if reconstruction == "mse":
        recon = ops.sum(ops.square(ops.subtract(ops.sigmoid(logits), x)), axis=-1)  # x may be numpy
    elif reconstruction == "masked_bce":
        p = ops.clip(ops.sigmoid(logits), MASKED_BCE_CLIP, 1.0 - MASKED_BCE_CLIP)
        mask = ops.cast(mask, p.dtype)
        recon = ops.sum(ops.binary_crossentropy(x, p) * mask, axis=-1) / ops.sum(mask)
    else:
        recon = ops.sum(ops.binary_crossentropy(x, logits, from_logits=True), axis=-1)
    mu, logvar = y_pred["z_mean"], y_pred["z_log_var"]
    kl = -0.5 * ops.sum(1.0 + logvar - ops.square(mu) - ops.exp(logvar), axis=tuple(range(1, len(mu.shape))))
    if kl_normalisation == "features":
        kl = kl / logits.shape[-1]
    return ops.mean(recon) + beta * ops.mean(kl)


class VAE(keras.Model):
    """Encoder, sampling, decoder; the loss lives in ``compute_loss``.

    Overriding ``compute_loss`` rather than ``train_step`` keeps the training step
    Keras' own on every backend: the trainer calls the model, then ``compute_loss``
    with the model's outputs, then differentiates and applies the optimizer.

    Inputs are either a batch ``x`` (noise drawn by ``Sampling``) or a dict
    ``{"x": x, "eps": eps}`` (noise given), with ``"mask_block"`` to fix the masking layer's
    block. Each is a different input structure, so ``jax.jit`` / ``tf.function`` trace each
    once and keep them all.

    A spec with a ``masking`` layer gets a ``RandomBlockMasking`` in front of the encoder; it and
    ``Sampling`` draw from one ``SeedGenerator(seed)``, so a step's block and noise are successive
    draws of one stream, threaded through the compiled step like any other state.
    """

    def __init__(self, encoder: keras.Model, decoder: keras.Model, loss: Loss, seed: int,
                 masking: Layer | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        seed_generator = keras.random.SeedGenerator(seed)
        self.sampling = Sampling(seed=seed_generator, name="sampling")
        self.masking = None if masking is None else RandomBlockMasking(masking, seed=seed_generator, name="masking")
        self.loss_spec = loss
        #: Python executions of ``train_step``; under ``jax.jit`` / ``tf.function``
        #: the body runs only when the step is (re)traced
        self.train_step_traces = 0

    def call(self, inputs, training=False):
        inputs = inputs if isinstance(inputs, dict) else {"x": inputs}
        x, eps, block = inputs["x"], inputs.get("eps"), inputs.get("mask_block")
        masked = {}
        if self.masking is not None and (training or block is not None):
            x, masked["mask_block"] = self.masking(x, block)
        z_mean, z_log_var = self.encoder(x, training=training)
        z = self.sampling(z_mean, z_log_var, eps)
        logits = self.decoder(z, training=training)
        return {"logits": logits, "z_mean": z_mean, "z_log_var": z_log_var, **masked}

    def loss_of(self, x, y_pred):
        """``vae_loss`` with the spec's terms; ``x`` the unmasked batch."""
        x = x["x"] if isinstance(x, dict) else x
        mask = None
        if "mask_block" in y_pred:
            mask = self.masking.block_mask(y_pred["mask_block"], x.shape[-1])
        loss = self.loss_spec
        return vae_loss(x, y_pred, loss.beta, loss.reconstruction, loss.kl_normalisation, mask)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self.loss_of(x, y_pred)

    def train_step(self, *args):
        # JAX's trainer passes (state, data), TensorFlow's and torch's (data)
        self.train_step_traces += 1
        return super().train_step(*args)


def keras_layer(spec: VAESpec, layer: Layer, name: str) -> layers.Layer:
    """The stock Keras layer for one spec layer, with every framework default pinned."""
    t, a, s = layer.type, layer.args, spec.settings
    # ``init: zeros``: Keras' own zeros initializer for kernel and bias
    kernel_init, bias_init = ("zeros", "zeros") if a.get("init") == ZERO_INIT else (s.kernel_init, s.bias_init)
    if t == "dense":
        return layers.Dense(a["units"], kernel_initializer=kernel_init, bias_initializer=bias_init, name=name)
    if t in ("conv1d", "conv_transpose1d"):
        conv = layers.Conv1D if t == "conv1d" else layers.Conv1DTranspose
        # A strided conv-transpose is built "valid" and trimmed by a Cropping1D after it
        # (``build_encoder_decoder``): Keras' torch backend places a strided "same" transpose one
        # position off the jax and tensorflow backends (it warns so), the full one it places alike.
        padding = "valid" if t == "conv_transpose1d" and layer.stride > 1 else "same"
        return conv(a["filters"], a["kernel_size"], strides=layer.stride, padding=padding,
                    kernel_initializer=kernel_init, bias_initializer=bias_init, name=name)
    if t == "max_pool1d":
        return layers.MaxPooling1D(a["pool_size"], name=name)
    if t == "upsample1d":
        return layers.UpSampling1D(a["size"], name=name)
    if t == "batch_norm":
        return layers.BatchNormalization(momentum=s.batch_norm_momentum, epsilon=s.batch_norm_epsilon, name=name)
    if t == "group_norm":
        return layers.GroupNormalization(a["groups"], epsilon=spec.group_norm_epsilon(layer), name=name)
    if t == "attention1d":
        return AttentionBlock(a["groups"], spec.group_norm_epsilon(layer), kernel_init=s.kernel_init,
                              bias_init=s.bias_init, zero_proj=a.get("init") == ZERO_INIT, name=name)
    if t == "relu":
        return layers.ReLU(name=name)
    if t == "leaky_relu":
        return layers.LeakyReLU(negative_slope=spec.leaky_slope(layer), name=name)
    if t == "gelu":
        # keras.layers.Activation("gelu") would take the activation's default form; pin it
        return layers.Activation(lambda x: keras.activations.gelu(x, approximate=s.gelu_approximate), name=name)
    if t in ("sigmoid", "silu", "selu"):
        return layers.Activation(t, name=name)
    if t == "flatten":
        return layers.Flatten(name=name)
    if t == "reshape":
        return layers.Reshape(tuple(a["shape"]), name=name)
    if t == "residual":
        return ResidualBlock(spec, layer, name=name)
    raise ValueError(f"unknown layer type {t!r}")


def keras_layers(spec: VAESpec, layer: Layer, name: str) -> list[layers.Layer]:
    """``keras_layer``, and after a strided conv-transpose the ``Cropping1D`` that makes it "same": Keras'
    torch backend places a strided "same" transpose one position off the jax and tensorflow backends (it
    warns so), the full ("valid") one it places alike."""
    out = [keras_layer(spec, layer, name)]
    if layer.type == "conv_transpose1d" and layer.stride > 1:
        out.append(layers.Cropping1D(transpose_trim(layer.args["kernel_size"], layer.stride), name=f"{name}_trim"))
    return out


class AttentionBlock(layers.Layer):
    """AutoencoderKL's ``AttnBlock`` over the length axis, the spec's ``attention1d``:
    ``x + proj(softmax(q k^T / sqrt(C)) v)`` with ``q``, ``k``, ``v`` and ``proj`` 1x1 ``Conv1D`` of a
    ``GroupNormalization`` of ``x``; one head over all C channels, the softmax over the keys.
    ``zero_proj`` starts the output projection at zero (``init: zeros``), so the block starts as the
    identity. ``parts`` maps each canonical sub-name (``norm``, ``q``, ...) to its Keras layer."""

    def __init__(self, groups: int, epsilon: float, kernel_init: str, bias_init: str, zero_proj: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups, self.epsilon, self.zero_proj = groups, epsilon, zero_proj
        self.kernel_init, self.bias_init = kernel_init, bias_init

    def build(self, input_shape):
        channels = input_shape[-1]
        self.norm = layers.GroupNormalization(self.groups, epsilon=self.epsilon, name=f"{self.name}_norm")
        self.norm.build(input_shape)
        self.parts = {"norm": self.norm}
        for part in ("q", "k", "v", "proj"):
            zero = part == "proj" and self.zero_proj
            conv = layers.Conv1D(channels, 1, kernel_initializer="zeros" if zero else self.kernel_init,
                                 bias_initializer="zeros" if zero else self.bias_init, name=f"{self.name}_{part}")
            conv.build(input_shape)
            setattr(self, part, conv)
            self.parts[part] = conv

    def call(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        scores = ops.matmul(q, ops.transpose(k, (0, 2, 1))) / math.sqrt(x.shape[-1])  # (B, L queries, L keys)
        return x + self.proj(ops.matmul(ops.softmax(scores, axis=-1), v))


class ResidualBlock(layers.Layer):
    """``activation(inner(x) + skip(x))``, the spec's ``residual``, as a Keras layer subclass: ``inner``
    its layers, ``skip`` a 1x1 Conv1D / Conv1DTranspose (empty: identity). ``parts`` maps each nested
    canonical name (``inner.0``, ``skip``) to its Keras layer, for ``build_encoder_decoder``."""

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


def build_encoder_decoder(spec: VAESpec) -> tuple[keras.Model, keras.Model, dict[str, layers.Layer]]:
    """Functional encoder and decoder, and the Keras layer behind each canonical name prefix (``encoder.3``).

    The ``masking`` layer is no part of the encoder: it draws per step and feeds the loss, so
    ``VAE`` applies it in front of the encoder, as it applies ``Sampling`` between the two."""
    by_name: dict[str, layers.Layer] = {}

    def stack(part: str, spec_layers: tuple[Layer, ...], h):
        for i, layer in enumerate(spec_layers):
            if layer.type == "masking":
                continue
            keras_objs = keras_layers(spec, layer, f"{part}_{i}")  # Keras layer names may not contain '.'
            for keras_obj in keras_objs:
                h = keras_obj(h)
            by_name[f"{part}.{i}"] = keras_objs[0]
            # nested layers (residual, attention1d); an attention block makes its own when built
            by_name.update({f"{part}.{i}.{k}": v for k, v in getattr(keras_objs[0], "parts", {}).items()})
        return h

    x = keras.Input(shape=(spec.input_length,), name="x")
    h = stack("encoder", spec.encoder, x)
    heads, s = [], spec.settings
    for head in ("z_mean", "z_log_var"):
        if spec.latent_heads.type == "conv1d":  # a Gaussian over a feature map: "same" convs to latent_dim channels
            by_name[head] = layers.Conv1D(spec.latent_dim, spec.latent_heads.kernel_size, padding="same",
                                          kernel_initializer=s.kernel_init, bias_initializer=s.bias_init, name=head)
        else:
            by_name[head] = layers.Dense(spec.latent_dim, kernel_initializer=s.kernel_init,
                                         bias_initializer=s.bias_init, name=head)
        heads.append(by_name[head](h))
    encoder = keras.Model(x, heads, name="encoder")

    z = keras.Input(shape=latent_shape(spec), name="z")
    logits = stack("decoder", spec.decoder, z)
    if spec.output_length_policy == "crop_or_pad":
        logits = CropOrPad(spec.input_length, name="crop_or_pad")(logits)
    decoder = keras.Model(z, logits, name="decoder")

    return encoder, decoder, by_name


def build_vae(spec: VAESpec) -> tuple[VAE, dict[str, layers.Layer]]:
    """The VAE model and the Keras layer behind each canonical name prefix (``encoder.3``)."""
    encoder, decoder, by_name = build_encoder_decoder(spec)
    vae = VAE(encoder, decoder, spec.loss, seed=spec.settings.seed, masking=spec.masking, name="vae")
    vae(keras.Input(shape=(spec.input_length,)))  # a symbolic call builds the subclassed model (slow on torch)
    return vae, by_name


# ---------------------------------------------------------------------------- adapter


def _counts(model: keras.Model) -> ParamCounts:
    # ``*_weights`` leave out the Sampling layer's seed state, which is a variable but no parameter
    return ParamCounts(
        trainable=sum(math.prod(v.shape) for v in model.trainable_weights),
        non_trainable=sum(math.prod(v.shape) for v in model.non_trainable_weights),
    )


class KerasVAE(VAEAdapter):
    """Keras 3 on the backend named by ``KERAS_BACKEND``.

    The timed loop (``train_steps``) is ``model.fit`` over a ``PyDataset``, as the user
    trains (``impls/keras_fit.py``). ``train_step`` is ``model.train_on_batch``, Keras'
    public single-step API; it returns the loss as a host float, so every step ends with
    a device sync, the price a Keras user pays for ``train_on_batch``. ``fit`` waits for
    the device only where Keras' TensorFlow backend converts each batch's logs on the
    loop's thread (see ``impls.keras_fit``).
    """

    name: ClassVar[str] = f"keras-{BACKEND}"
    framework: ClassVar[str] = "keras"
    loops: ClassVar[tuple[str, ...]] = ("fit", "train_on_batch")
    #: for the default loop, fit; ``use_loop`` sets it on the instance
    syncs_every_step: ClassVar[bool] = not async_callbacks()
    #: JAX and torch train on what ``to_device`` returns; TensorFlow's ``fit`` feeds a
    #: ``PyDataset`` through ``tf.data.Dataset.from_generator``, which hands the step host
    #: copies of whatever the dataset returns, so staging would time nothing different
    stages_input: ClassVar[bool] = BACKEND != "tensorflow"

    def __init__(self, spec: VAESpec) -> None:
        super().__init__(spec)
        s = spec.settings
        _pin_device_settings(s.tf32, s.tf_memory_growth)
        keras.utils.set_random_seed(s.seed)
        self.model, layer_of = build_vae(spec)
        o = spec.optimizer
        self.optimizer = TextbookAdam(learning_rate=o.lr, beta_1=o.beta1, beta_2=o.beta2, epsilon=o.eps,
                                      global_clipnorm=o.clip_global_norm)
        self.model.compile(optimizer=self.optimizer)
        # canonical name -> Keras variable; Keras' attribute names are the canonical leaves
        self.variables = {p.name: getattr(layer_of[p.name.rsplit(".", 1)[0]], p.name.rsplit(".", 1)[1])
                          for p in param_table(spec)}
        self.trainable_names = [p.name for p in param_table(spec) if p.trainable]
        self._value_and_grad = value_and_grad(self._training_loss)
        # fit reads the loss tracker eagerly after its last step; on JAX those few eager ops
        # compile on first use, which would count as compiles during the timed loop
        self.model.get_metrics_result()
        self.use_loop(self.loop)

    # -- training loops ----------------------------------------------------------------
    def use_loop(self, loop: str) -> None:
        super().use_loop(loop)
        self.syncs_every_step = loop == "train_on_batch" or not async_callbacks()

    def train_steps(self, feed, steps: int, on_step) -> None:
        """``fit`` over a ``PyDataset`` of ``steps`` batches from ``feed`` (``impls.keras_fit``),
        or, under ``train_on_batch``, the staged step loop over ``train_step``."""
        if self.loop == "fit":
            fit_steps(self.model, feed, steps, on_step)
        else:
            super().train_steps(feed, steps, on_step)

    def loop_details(self) -> dict[str, Any]:
        """How the timed loop runs, for the result row: ``steps_per_execution`` and, under
        ``fit``, the ``PyDataset`` pipeline settings (``workers``, ``use_multiprocessing``,
        ``max_queue_size``) and whether Keras converts each batch's logs off the loop's thread."""
        if self.loop == "fit":
            return {"loop": self.loop, **fit_details(self.model)}
        return {"loop": self.loop, "steps_per_execution": 1, "py_dataset": None}

    def to_device(self, batch: Any) -> Any:
        """The batch as the backend's array on its device, as ``fit``'s iterator would hand it
        over (JAX: ``jax.device_put``, which returns before the copy ends; torch: a tensor on
        Keras' torch device; TensorFlow: a tensor placed on the GPU where there is one)."""
        if not isinstance(batch, np.ndarray):
            return batch
        x = np.asarray(batch, np.float32)
        if BACKEND == "jax":
            return jax.device_put(x)
        if BACKEND == "torch":
            return ops.convert_to_tensor(x)
        with tf.device("/GPU:0" if _on_gpu() else "/CPU:0"):
            return tf.identity(x)

    # -- model facts -------------------------------------------------------------------
    def param_counts(self) -> ParamCounts:
        return _counts(self.model)

    @classmethod
    def count_params(cls, spec: VAESpec) -> ParamCounts:
        """Built in a ``StatelessScope``: Keras defers every variable's initialiser, so
        the model has all its shapes and no storage."""
        with keras.StatelessScope():
            encoder, decoder, _ = build_encoder_decoder(spec)
        parts = [_counts(encoder), _counts(decoder)]
        return ParamCounts(sum(p.trainable for p in parts), sum(p.non_trainable for p in parts))

    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: ops.convert_to_numpy(v).astype(np.float32) for name, v in self.variables.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        missing, extra = set(self.variables) - set(weights), set(weights) - set(self.variables)
        if missing or extra:
            raise KeyError(f"set_weights: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, v in self.variables.items():
            value = np.asarray(weights[name], np.float32)
            if tuple(value.shape) != tuple(v.shape):
                raise ValueError(f"set_weights: {name} has shape {value.shape}, the model wants {tuple(v.shape)}")
            v.assign(value)
        self.optimizer.reset()

    # -- compute -----------------------------------------------------------------------
    @staticmethod
    def _inputs(x: Any, eps: np.ndarray | None, mask_block: int | None = None):
        """The model's input: the batch alone (Keras draws noise and block), or a dict fixing either."""
        if not ops.is_tensor(x):  # a staged batch stays where to_device put it
            x = np.asarray(x, np.float32)
        fixed = {} if eps is None else {"eps": np.asarray(eps, np.float32)}
        if mask_block is not None:
            fixed["mask_block"] = np.asarray(mask_block, np.int32)
        return {"x": x, **fixed} if fixed else x

    def train_step(self, x: np.ndarray, eps: np.ndarray | None = None, mask_block: int | None = None) -> float:
        """One ``train_on_batch``; returns this step's loss (Keras resets its loss
        tracker at the start of every ``train_on_batch``). With a masking layer and no
        ``mask_block``, the step draws its block as ``fit``'s steps do."""
        return self.model.train_on_batch(self._inputs(x, eps, mask_block))

    def eval_forward(self, x: np.ndarray, eps: np.ndarray, mask_block: int | None = None) -> dict[str, np.ndarray]:
        out = self.model.predict_on_batch(self._inputs(x, eps, mask_block))
        logits = np.asarray(out["logits"], np.float64)
        return {  # the model ends in logits (the loss wants them); sigmoid(l) = (1 + tanh(l / 2)) / 2 never overflows
            "recon": (0.5 + 0.5 * np.tanh(0.5 * logits)).astype(np.float32),
            "z_mean": np.asarray(out["z_mean"]),
            "z_log_var": np.asarray(out["z_log_var"]),
        }

    def loss_and_grads(self, x: np.ndarray, eps: np.ndarray,
                       mask_block: int | None = None) -> tuple[float, dict[str, np.ndarray]]:
        model = self.model
        inputs = {"x": ops.convert_to_tensor(np.asarray(x, np.float32)),
                  "eps": ops.convert_to_tensor(np.asarray(eps, np.float32))}
        if mask_block is not None:
            inputs["mask_block"] = ops.convert_to_tensor(np.asarray(mask_block, np.int32))
        loss, grads = self._value_and_grad(
            [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], inputs)
        by_variable = {id(v): g for v, g in zip(model.trainable_variables, grads, strict=True)}
        return float(ops.convert_to_numpy(loss)), {
            name: ops.convert_to_numpy(by_variable[id(self.variables[name])]) for name in self.trainable_names
        }

    def _training_loss(self, trainable: list, non_trainable: list, inputs: dict):
        """The training-mode loss as a pure function of the variables' values.

        ``stateless_call`` (every backend has it) runs the model on the values it is
        given and returns the new BatchNorm statistics (and seed state) instead of
        assigning them, so ``loss_and_grads`` changes nothing in the model.
        """
        y_pred, _ = self.model.stateless_call(trainable, non_trainable, inputs, training=True)
        return self.model.loss_of(inputs["x"], y_pred)

    def synchronize(self) -> None:
        if BACKEND == "jax":
            # inside fit Keras detaches the state from the variables (jax/trainer.py:
            # _purge_model_variables) and keeps the newest in ``_jax_state`` until the epoch ends
            model = self.model
            if getattr(model, "_jax_state_synced", True):
                arrays = [v.value for v in model.variables]
            else:  # a dict of lists of arrays, wrapped in Keras' tracking types
                arrays = [a for group in model._jax_state.values() for a in group]
            jax.block_until_ready([a for a in arrays if isinstance(a, jax.Array) and not a.is_deleted()])
        elif BACKEND == "torch":
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        else:
            tf.test.experimental.sync_devices()

    def loss_value(self, handle: Any) -> float:
        """A host float (``train_on_batch``) or the backend array in ``fit``'s logs (this waits)."""
        return float(ops.convert_to_numpy(handle)) if ops.is_tensor(handle) else float(handle)

    # -- probes ------------------------------------------------------------------------
    def device_memory(self) -> dict[str, int | None]:
        if not _on_gpu():
            return {}
        if BACKEND == "jax":
            stats = jax.devices()[0].memory_stats() or {}
            return {"peak_bytes": stats.get("peak_bytes_in_use"), "bytes_in_use": stats.get("bytes_in_use"),
                    "reserved_bytes": stats.get("bytes_reserved")}
        if BACKEND == "torch":
            return {"peak_bytes": torch.cuda.max_memory_allocated(), "bytes_in_use": torch.cuda.memory_allocated(),
                    "reserved_bytes": torch.cuda.memory_reserved()}
        info = tf.config.experimental.get_memory_info("GPU:0")
        return {"peak_bytes": info["peak"], "bytes_in_use": info["current"]}

    def reset_peak_memory(self) -> None:
        """JAX has no peak reset; its ``peak_bytes`` is the process-wide peak."""
        if not _on_gpu():
            return
        if BACKEND == "torch":
            torch.cuda.reset_peak_memory_stats()
        elif BACKEND == "tensorflow":
            tf.config.experimental.reset_memory_stats("GPU:0")

    def counters(self) -> dict[str, int]:
        """``compiles``: JAX's XLA compilations in this process (every jitted function and
        eager op), TensorFlow's traces of the train step (the first call of a ``tf.function``
        traces twice, its variable-creation pass and then the real one; every new input
        structure or shape adds one). Eager torch compiles nothing."""
        if BACKEND == "jax":
            return {"compiles": _xla_compiles}
        if BACKEND == "tensorflow":
            return {"compiles": self.model.train_step_traces}
        return {}

    @classmethod
    def versions(cls) -> dict[str, str]:
        backend_version = {"jax": lambda: jax.__version__, "torch": lambda: torch.__version__,
                           "tensorflow": lambda: tf.__version__}[BACKEND]()
        return {"framework": keras.__version__, "keras": keras.__version__, "backend": BACKEND,
                BACKEND: backend_version}

    @classmethod
    def device_kind(cls) -> str:
        return "gpu" if _on_gpu() else "cpu"


__all__ = ["AttentionBlock", "KerasVAE", "RandomBlockMasking", "VAE", "Sampling", "TextbookAdam", "build_vae",
           "vae_loss"]
