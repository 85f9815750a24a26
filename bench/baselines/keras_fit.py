"""The VAE as the Keras VAE example writes it, trained by ``model.fit`` over a ``keras.utils.PyDataset``.

Functional encoder (ending in ``z_mean``, ``z_log_var`` and a ``Sampling`` layer that draws
the noise from its own ``SeedGenerator``) and decoder, and a ``keras.Model`` subclass that
overrides ``compute_loss``, which works on every backend (the example's ``train_step``
with ``tf.GradientTape`` runs on TensorFlow only). Stock ``keras.optimizers.Adam`` with the
spec's rate, betas and eps; stock ``Dense`` (Glorot-uniform, zeros: Keras' defaults and the
spec's) and ``BatchNormalization`` with the spec's momentum and epsilon; the spec's precision:
float32 with TF32 off on the backend's own switch (on when ``settings.tf32`` asks for it), or
bf16, below. Keras' Adam adds eps to sqrt(v) rather than sqrt(v_hat): a different update for
tiny gradients, the same work.

Mixed precision (``settings.precision: bf16``) is the Keras mixed-precision guide's:
``keras.mixed_precision.set_dtype_policy("mixed_bfloat16")`` before the model is built (a
global policy, as the guide sets it; the baseline runs in a process of its own, and ``run``
sets the policy for fp32 and tf32 back to ``"float32"``, Keras' default). Every layer keeps
its variables in float32 and computes in bfloat16, so the weights, their gradients and Adam's
state stay float32 (no ``LossScaleOptimizer``: that is for float16). As the guide recommends,
the model's output is float32: the decoder ends in ``Activation("linear", dtype="float32")``
after its logits layer, and ``compute_loss`` casts ``z_mean`` and ``z_log_var`` up before the
KL. ``Sampling`` is built with ``dtype="float32"``, the guide's way to keep a layer out of
bfloat16: Keras casts ``z_mean`` and ``z_log_var`` up as they go in, the noise is drawn and added
in float32 (the spec pins sampling there; and TensorFlow will not multiply bfloat16 by the
float32 noise), and the decoder's first layer casts ``z`` down. The rest is the policy's
(``BatchNormalization`` normalises in float32 under it).

The backend is whatever ``KERAS_BACKEND`` names (the harness's worker sets it, as for a cell).
Timing windows are closed by a callback at the start of the step after each window, with
one device sync there: Keras' trainer keeps the training state off the model during ``fit``
(JAX: ``model._jax_state``), so that is what the sync waits on.

Run directly: ``KERAS_BACKEND=jax python -m bench.baselines.keras_fit --kmer 5 --batch 64 --steps 200``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import keras
from keras import layers, ops

from bench.baselines.common import blocks, check_output, host_batches, result, schedule
from harness.spec.schema import VAESpec

BACKEND = keras.backend.backend()


class Sampling(layers.Layer):
    """Uses (z_mean, z_log_var) to sample z, the vector encoding a profile."""

    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(shape=ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon


def stack(spec: VAESpec, part: str, h):
    s = spec.settings
    for b in blocks(spec, part):
        if b.type == "dense":
            h = layers.Dense(b.units)(h)
        elif b.type == "batch_norm":
            h = layers.BatchNormalization(momentum=s.batch_norm_momentum, epsilon=s.batch_norm_epsilon)(h)
        elif b.type == "leaky_relu":
            h = layers.LeakyReLU(negative_slope=b.slope)(h)
        elif b.type == "relu":
            h = layers.ReLU()(h)
        elif b.type == "gelu":
            h = layers.Activation(lambda t: keras.activations.gelu(t, approximate=s.gelu_approximate))(h)
        else:
            h = layers.Activation("sigmoid")(h)
    return h


def build(spec: VAESpec) -> tuple[keras.Model, keras.Model]:
    encoder_inputs = keras.Input(shape=(spec.input_length,))
    x = stack(spec, "encoder", encoder_inputs)
    z_mean = layers.Dense(spec.latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(spec.latent_dim, name="z_log_var")(x)
    # float32 in every precision (the spec pins the sampling there): under mixed_bfloat16 the guide's way for a
    # layer that must not compute in bfloat16, and what lets bfloat16 z_mean meet float32 noise on TensorFlow
    z = Sampling(spec.settings.seed, dtype="float32")([z_mean, z_log_var])
    encoder = keras.Model(encoder_inputs, [z_mean, z_log_var, z], name="encoder")
    latent_inputs = keras.Input(shape=(spec.latent_dim,))
    logits = stack(spec, "decoder", latent_inputs)
    if spec.settings.bf16:  # the guide: the model's last layer outputs float32 under a mixed policy
        logits = layers.Activation("linear", dtype="float32", name="logits_float32")(logits)
    decoder = keras.Model(latent_inputs, logits, name="decoder")  # logits
    return encoder, decoder


class VAE(keras.Model):
    def __init__(self, encoder: keras.Model, decoder: keras.Model, beta: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoder, self.decoder, self.beta = encoder, decoder, beta

    def call(self, x):
        z_mean, z_log_var, z = self.encoder(x)
        return self.decoder(z), z_mean, z_log_var

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        logits, z_mean, z_log_var = y_pred  # bf16: the logits float32 already, z_mean and z_log_var bfloat16
        z_mean, z_log_var = ops.cast(z_mean, "float32"), ops.cast(z_log_var, "float32")
        reconstruction_loss = ops.mean(ops.sum(ops.binary_crossentropy(x, logits, from_logits=True), axis=-1))
        kl_loss = -0.5 * (1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))
        kl_loss = ops.mean(ops.sum(kl_loss, axis=1))
        return reconstruction_loss + self.beta * kl_loss


class Profiles(keras.utils.PyDataset):
    """``length`` batches, cycling through the profiles in host memory."""

    def __init__(self, batches: list, length: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int):
        return self.batches[idx % len(self.batches)]


class WindowClock(keras.callbacks.Callback):
    """Times windows of ``spw`` steps: at the start of every ``spw``-th step, one device sync
    closes the window before it. It overrides no batch-end hook, so Keras keeps dispatching
    those asynchronously, as in a ``fit`` without callbacks."""

    def __init__(self, spw: int, windows: int, sync: Callable[[keras.Model], None]) -> None:
        super().__init__()
        self.spw, self.windows, self.sync = spw, windows, sync
        self.times: list[float] = []
        self._t = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        if batch % self.spw or len(self.times) >= self.windows:
            return
        self.sync(self.model)
        now = time.perf_counter()
        if batch:
            self.times.append((now - self._t) / self.spw)
        self._t = now


def _pin_precision(tf32: bool) -> Callable[[keras.Model], None]:
    """TF32 off on the backend's own switch; returns the backend's device sync."""
    if BACKEND == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", None if tf32 else "highest")

        def jax_sync(model: keras.Model) -> None:
            # inside fit the newest state is a dict of lists in Keras' tracking types (not pytrees:
            # block_until_ready would pass over them); the variables hold it only between epochs
            state = getattr(model, "_jax_state", None)
            if state and not getattr(model, "_jax_state_synced", True):
                arrays = [a for group in state.values() for a in group]
            else:
                arrays = [v.value for v in model.variables]
            jax.block_until_ready([a for a in arrays if isinstance(a, jax.Array) and not a.is_deleted()])

        return jax_sync
    if BACKEND == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        return lambda model: torch.cuda.synchronize() if torch.cuda.is_available() else None
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(tf32)
    return lambda model: tf.test.experimental.sync_devices()


def run(spec: VAESpec, kmer: int, batch: int, steps: int, warmup: int | None = None,
        steps_per_window: int | None = None) -> dict[str, Any]:
    check_output(spec)
    warmup, spw = schedule(steps, warmup, steps_per_window)
    sync = _pin_precision(spec.settings.tf32)
    # the guide's global policy, set before the model is built; fp32 and tf32 set Keras' default back
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if spec.settings.bf16 else "float32")
    keras.utils.set_random_seed(spec.settings.seed)
    encoder, decoder = build(spec)
    vae = VAE(encoder, decoder, beta=spec.loss.beta)
    o = spec.optimizer
    vae.compile(optimizer=keras.optimizers.Adam(learning_rate=o.lr, beta_1=o.beta1, beta_2=o.beta2, epsilon=o.eps))
    data = host_batches(spec, kmer, batch)

    vae.fit(Profiles(data, warmup), epochs=1, verbose=0)  # compile, then a few more steps
    sync(vae)
    windows = steps // spw
    clock = WindowClock(spw, windows, sync)
    # one step more than the windows hold: the last window closes at its start, before fit's epoch end
    history = vae.fit(Profiles(data, windows * spw + 1), epochs=1, verbose=0, callbacks=[clock])
    loss = history.history["loss"][-1]
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} after {warmup + windows * spw + 1} steps")
    params = sum(math.prod(v.shape) for v in vae.trainable_weights)
    amp = ", global mixed_bfloat16 policy" if spec.settings.bf16 else ""
    return result(clock.times, params, final_loss=float(loss), framework=f"keras {keras.__version__} on {BACKEND}",
                  backend=BACKEND, loop=f"keras.Model.fit over a keras.utils.PyDataset (compute_loss override){amp}")


if __name__ == "__main__":
    from bench.baselines.common import main

    main(run)
