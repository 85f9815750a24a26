"""The Keras VAE model, written the way the keras.io VAE example writes it: a functional encoder and
decoder of the layers in ``impls.keras_layers``, and a ``keras.Model`` subclass that overrides
``compute_loss`` only, so the step itself is Keras' own per-backend trainer (``jax.jit`` /
``tf.function`` / eager torch).

Under ``settings.precision: bf16`` every layer of the encoder and decoder computes under the
``mixed_bfloat16`` policy (``impls.keras_layers.dtype_policy``), the latent heads and ``CropOrPad``
included, so ``z_mean``, ``z_log_var`` and the logits come out in bfloat16; ``Sampling`` (float32 in every
precision) and the loss (``vae_loss`` casts its inputs up) stay in float32, as the spec pins them. The
``VAE`` model and its masking layer keep Keras' default ``float32`` policy: they hold no weights, and the
masking works on the float32 batch before the encoder's first layer casts it.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from harness.spec.layers import MASKED_BCE_CLIP, Layer
from harness.spec.schema import Loss, VAESpec
from harness.spec.shapes import latent_shape
from impls.keras_layers import Conv1D, CropOrPad, Dense, RandomBlockMasking, Sampling, dtype_policy, initialisers, keras_layers


def vae_loss(x, y_pred: dict, beta: float, reconstruction: str = "bce_logits", kl_normalisation: str = "batch",
             mask=None):
    """The spec's loss (``harness.spec.reference.vae_loss``): the reconstruction term plus beta x KL summed
    over all latent elements, both averaged over the batch.

    ``bce_logits``: BCE from logits summed over features; ``mse``: the squared error of the sigmoid output
    summed over features; ``masked_bce``: Keras' BCE of the sigmoid output clipped to [1e-7, 1 - 1e-7]
    on the masked block only (``mask``, the block's (L,) boolean mask), averaged over its positions.
    ``kl_normalisation: features`` divides the KL by the number of input features. ``x`` is the
    unmasked batch.

    The loss and the KL are float32 in every precision: under ``mixed_bfloat16`` the logits, ``z_mean``
    and ``z_log_var`` come out of bfloat16 layers and are cast up before anything is reduced (as the
    Keras mixed-precision guide keeps a model's outputs in float32); in float32 the casts are no-ops."""
    logits, mu, logvar = (ops.cast(y_pred[key], "float32") for key in ("logits", "z_mean", "z_log_var"))
    if reconstruction == "mse":
        recon = ops.sum(ops.square(ops.subtract(ops.sigmoid(logits), x)), axis=-1)  # x may be numpy
    elif reconstruction == "masked_bce":
        p = ops.clip(ops.sigmoid(logits), MASKED_BCE_CLIP, 1.0 - MASKED_BCE_CLIP)
        mask = ops.cast(mask, p.dtype)
        recon = ops.sum(ops.binary_crossentropy(x, p) * mask, axis=-1) / ops.sum(mask)
    else:
        recon = ops.sum(ops.binary_crossentropy(x, logits, from_logits=True), axis=-1)
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
        # float32 whatever the layers' policy: the spec keeps the sampling in float32
        self.sampling = Sampling(seed=seed_generator, name="sampling", dtype="float32")
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
    heads, (kernel_init, bias_init), dtype = [], initialisers(spec), dtype_policy(spec)
    for head in ("z_mean", "z_log_var"):
        if spec.latent_heads.type == "conv1d":  # a Gaussian over a feature map: "same" convs to latent_dim channels
            by_name[head] = Conv1D(spec.latent_dim, spec.latent_heads.kernel_size, padding="same",
                                   kernel_initializer=kernel_init, bias_initializer=bias_init, name=head, dtype=dtype)
        else:
            by_name[head] = Dense(spec.latent_dim, kernel_initializer=kernel_init, bias_initializer=bias_init, name=head,
                                  dtype=dtype)
        heads.append(by_name[head](h))
    encoder = keras.Model(x, heads, name="encoder")

    z = keras.Input(shape=latent_shape(spec), name="z")
    logits = stack("decoder", spec.decoder, z)
    if spec.output_length_policy == "crop_or_pad":
        logits = CropOrPad(spec.input_length, name="crop_or_pad", dtype=dtype)(logits)
    decoder = keras.Model(z, logits, name="decoder")

    return encoder, decoder, by_name


def build_vae(spec: VAESpec) -> tuple[VAE, dict[str, layers.Layer]]:
    """The VAE model and the Keras layer behind each canonical name prefix (``encoder.3``)."""
    encoder, decoder, by_name = build_encoder_decoder(spec)
    vae = VAE(encoder, decoder, spec.loss, seed=spec.settings.seed, masking=spec.masking, name="vae")
    vae(keras.Input(shape=(spec.input_length,)))  # a symbolic call builds the subclassed model (slow on torch)
    return vae, by_name

