"""The loop bodies of the leak scenarios (catalogue: ``harness/diagnose/scenarios.py``).

Each builder takes the cell's adapter and returns ``step(x) -> loss handle``.
The anti-pattern and its twin differ in exactly the line the fix names.
Frameworks are imported inside the builders, so a worker only ever loads the
one its cell uses.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

Step = Callable[[np.ndarray], Any]


def torch_loss_total(model: Any, fixed: bool) -> Step:
    """``val_total += val_loss``: a monitoring loss summed as a tensor keeps its whole graph alive.

    The step trains as usual, then computes a monitoring loss on the batch (as a
    validation or logging pass does) outside ``torch.no_grad()`` and adds it to a
    running total. No ``backward()`` ever runs on that loss, so its graph keeps
    every saved activation: the total holds one forward pass's activations per
    step. (Summing the *training* loss, which has run ``backward()``, keeps only
    the graph's nodes: a few hundred bytes a step, which the allocator hides.)
    """
    state = {"total": 0.0}

    def step(x: np.ndarray):
        model.model.train()
        model.optimizer.zero_grad(set_to_none=True)
        batch = model._tensor(x)
        loss = model._loss(batch, None)
        loss.backward()
        model.optimizer.step()
        model.model.eval()
        val_loss = model._loss(batch, None)
        state["total"] = state["total"] + (val_loss.detach() if fixed else val_loss)  # the fix: .detach()
        return loss.detach()

    return step


def jax_jit_per_step(model: Any, fixed: bool) -> Step:
    """A metric jitted inside the loop: a new function object, so a new trace and compile, every step."""
    import jax
    import jax.numpy as jnp

    def make_metric(scale: float):
        return jax.jit(lambda loss, batch: loss * scale + jnp.mean(batch))

    metric_once = make_metric(1.0)
    state = {"i": 0, "history": []}

    def step(x: np.ndarray):
        loss = model.train_step(x)
        state["i"] += 1
        metric = metric_once if fixed else make_metric(1.0 + 1e-9 * state["i"])  # the fix: jit once
        state["history"].append(metric)  # kept, as a logging callback or dict of metrics keeps it
        metric(jnp.asarray(model.loss_value(loss)), jnp.asarray(x))
        return loss

    return step


def varying_batch(model: Any, fixed: bool, period: int = 1) -> Step:
    """Batches whose length changes.

    Every ``period``-th step is trimmed to a length not seen before: with
    ``period`` > 1 that is an epoch ending in a partial batch over data sets of
    changing length; with 1, numpy batches of any length fed straight in. The
    twin drops the remainder and so always trains on full batches.
    """
    state = {"i": 0, "new": 0}

    def step(x: np.ndarray):
        state["i"] += 1
        if fixed or state["i"] % period:
            return model.train_step(x)  # the fix: only full batches
        state["new"] += 1
        n = max(1, len(x) - state["new"] % len(x))
        return model.train_step(np.ascontiguousarray(x[:n]))

    return step


def partial_last_batch(model: Any, fixed: bool) -> Step:
    return varying_batch(model, fixed, period=4)


def keras_tf_custom_loop(model: Any, fixed: bool) -> Step:
    """The user's own loop: Keras on TensorFlow, a hand-written ``@tf.function`` step
    (Keras' "training loop from scratch" guide), fed numpy batches of varying length.

    ``tf.function`` without an input signature traces anew for every batch length
    it has not seen, and keeps every trace. The twin feeds full batches only (the
    remainder dropped, as ``tf.data``'s ``drop_remainder=True`` does), so one trace
    serves all.
    """
    import tensorflow as tf

    vae, opt = model.model, model.optimizer
    traces = {"n": 0}

    def train_step(x):
        traces["n"] += 1  # Python runs only while tracing
        with tf.GradientTape() as tape:
            y_pred = vae(x, training=True)
            loss = vae.compute_loss(x=x, y_pred=y_pred)
        grads = tape.gradient(loss, vae.trainable_weights)
        opt.apply_gradients(zip(grads, vae.trainable_weights, strict=True))
        return loss

    step_fn = tf.function(train_step)
    base_counters = model.counters
    model.counters = lambda: {**base_counters(), "tf_function_traces": traces["n"]}
    state = {"i": 0}

    def step(x: np.ndarray):
        state["i"] += 1
        if fixed:
            return step_fn(x)  # the fix: full batches only
        n = max(1, len(x) - state["i"] % len(x))  # numpy batches of a new length every step
        return step_fn(np.ascontiguousarray(x[:n]))

    return step


BUILDERS: dict[str, Callable[[Any, bool], Step]] = {
    "torch-loss-total": torch_loss_total,
    "jax-jit-per-step": jax_jit_per_step,
    "partial-last-batch": partial_last_batch,
    "keras-tf-varying-batch": keras_tf_custom_loop,
}


def build(name: str, model: Any) -> Step:
    fixed = name.endswith("-fixed")
    base = name[: -len("-fixed")] if fixed else name
    return BUILDERS[base](model, fixed)
