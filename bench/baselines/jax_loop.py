"""The VAE as the Flax NNX docs write it: an ``nnx.Module``, ``nnx.Optimizer`` over optax's Adam,
and the functional training loop of the Flax performance guide.

Stock layers (``nnx.Linear``, ``nnx.BatchNorm`` with its defaults but the spec's momentum
and epsilon, ``nnx.leaky_relu``). The model and optimizer are ``nnx.split`` once into a
graphdef and a state, and a pure step over that state is ``jax.jit``-compiled with the
state donated, so parameters and Adam moments are updated in place; the noise key
rides in the model's own ``nnx.Rngs`` stream, as the NNX VAE example draws it.
Settings that decide speed or work: the spec's precision (float32 with
``jax_default_matmul_precision="highest"``, TF32 and bf16 passes off, or the backend's default
when ``settings.tf32`` asks for it; or bf16, below), Glorot-uniform kernels and zero biases, Adam's eps.

Mixed precision (``settings.precision: bf16``) is Flax NNX's own: every ``nnx.Linear`` and
``nnx.BatchNorm`` is built with ``dtype=jnp.bfloat16`` (what it computes in) and
``param_dtype=jnp.float32`` (what its weights are), so each layer casts its input and weights to
bfloat16 as it runs, while the weights, their gradients and Adam's moments stay float32 (no loss
scaling: bfloat16 has float32's exponent range). The batch goes in as float32 (the first layer
casts it); the loss reduces the logits, mu and logvar cast to float32. ``nnx.BatchNorm`` computes
its statistics in float32 whatever its ``dtype``; the rest follows JAX's type promotion (the
sampling's float32 noise makes z float32, which the decoder's first layer casts down).

Feeding, as the JAX docs show prefetching: ``jax.device_put`` of the next batch is issued
before the current step is dispatched, so its copy overlaps the running step.

Run directly: ``python -m bench.baselines.jax_loop --kmer 5 --batch 64 --steps 200``.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bench.baselines.common import blocks, check_output, encoder_width, host_batches, result, schedule
from harness.spec.schema import VAESpec


def dtypes(spec: VAESpec) -> dict:
    """A module's compute and weight dtypes: bfloat16 over float32 weights in bf16; Flax's defaults otherwise
    (``dtype=None``: the input's and weights' dtype, float32)."""
    return {"dtype": jnp.bfloat16 if spec.settings.bf16 else None, "param_dtype": jnp.float32}


def make_layers(spec: VAESpec, part: str, rngs: nnx.Rngs) -> list:
    s = spec.settings
    init = {"kernel_init": nnx.initializers.glorot_uniform(), "bias_init": nnx.initializers.zeros_init()}
    out: list = []
    for b in blocks(spec, part):
        if b.type == "dense":
            out.append(nnx.Linear(b.width, b.units, **init, **dtypes(spec), rngs=rngs))
        elif b.type == "batch_norm":
            out.append(nnx.BatchNorm(b.width, momentum=s.batch_norm_momentum, epsilon=s.batch_norm_epsilon,
                                     **dtypes(spec), rngs=rngs))
        elif b.type == "leaky_relu":
            out.append(functools.partial(nnx.leaky_relu, negative_slope=b.slope))
        elif b.type == "relu":
            out.append(nnx.relu)
        elif b.type == "gelu":
            out.append(functools.partial(nnx.gelu, approximate=s.gelu_approximate))
        else:
            out.append(nnx.sigmoid)
    return out


class VAE(nnx.Module):
    def __init__(self, spec: VAESpec, rngs: nnx.Rngs) -> None:
        init = {"kernel_init": nnx.initializers.glorot_uniform(), "bias_init": nnx.initializers.zeros_init()}
        self.encoder = nnx.Sequential(*make_layers(spec, "encoder", rngs))
        self.fc_mu = nnx.Linear(encoder_width(spec), spec.latent_dim, **init, **dtypes(spec), rngs=rngs)
        self.fc_logvar = nnx.Linear(encoder_width(spec), spec.latent_dim, **init, **dtypes(spec), rngs=rngs)
        self.decoder = nnx.Sequential(*make_layers(spec, "decoder", rngs))  # ends in logits
        self.rngs = rngs

    def __call__(self, x: jax.Array):
        h = self.encoder(x)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(self.rngs.noise(), mu.shape)
        return self.decoder(z), mu, logvar


def loss_fn(model: VAE, x: jax.Array, beta: float) -> jax.Array:
    logits, mu, logvar = model(x)  # bf16: bfloat16 out of the bfloat16 layers, cast up before any reduction
    logits, mu, logvar = (a.astype(jnp.float32) for a in (logits, mu, logvar))
    bce = optax.sigmoid_binary_cross_entropy(logits, x).sum(axis=-1).mean()
    kld = (-0.5 * (1 + logvar - mu**2 - jnp.exp(logvar))).sum(axis=-1).mean()
    return bce + beta * kld


@functools.partial(jax.jit, static_argnums=(3,), donate_argnums=(1,))
def train_step(graphdef, state, x, beta: float):
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, beta)
    optimizer.update(model, grads)
    return loss, nnx.state((model, optimizer))


def run(spec: VAESpec, kmer: int, batch: int, steps: int, warmup: int | None = None,
        steps_per_window: int | None = None) -> dict[str, Any]:
    check_output(spec)
    warmup, spw = schedule(steps, warmup, steps_per_window)
    jax.config.update("jax_default_matmul_precision", None if spec.settings.tf32 else "highest")

    model = VAE(spec, nnx.Rngs(params=spec.settings.seed, noise=spec.settings.seed + 1))
    o = spec.optimizer
    optimizer = nnx.Optimizer(model, optax.adam(o.lr, b1=o.beta1, b2=o.beta2, eps=o.eps), wrt=nnx.Param)
    params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    graphdef, state = nnx.split((model, optimizer))
    data = host_batches(spec, kmer, batch)
    beta = float(spec.loss.beta)

    i = 0
    for _ in range(warmup):  # compile, then a few more steps, before any clock
        loss, state = train_step(graphdef, state, jax.device_put(data[i % len(data)]), beta)
        i += 1
    loss.block_until_ready()

    times = []
    nxt = jax.device_put(data[i % len(data)])
    for _ in range(steps // spw):
        t = time.perf_counter()
        for _ in range(spw):
            x = nxt
            i += 1
            nxt = jax.device_put(data[i % len(data)])  # the next batch's copy starts before this step
            loss, state = train_step(graphdef, state, x, beta)
        loss.block_until_ready()  # one device sync per window (loss and state leave one executable)
        times.append((time.perf_counter() - t) / spw)
        if not math.isfinite(float(loss)):
            raise FloatingPointError(f"loss is {float(loss)} after {i} steps")
    amp = ", modules dtype=bfloat16 over param_dtype=float32" if spec.settings.bf16 else ""
    return result(times, params, final_loss=float(loss), framework=f"jax {jax.__version__}", device=jax.default_backend(),
                  loop=f"Flax NNX, nnx.split once + jax.jit(donate_argnums=state), jax.device_put one batch ahead{amp}")


if __name__ == "__main__":
    from bench.baselines.common import main

    main(run)
