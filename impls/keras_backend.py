"""The backend corner of the Keras build: the only code that differs between ``keras-jax``,
``keras-torch`` and ``keras-tensorflow``.

Keras picks its backend once per process from ``KERAS_BACKEND`` (the harness sets it
before the worker imports anything), and ``BACKEND`` reads it back. Everything a training
step runs is ``keras.ops``; what Keras 3 leaves to each backend is here: gradients for
``loss_and_grads`` (Keras has no backend-agnostic ``grad``), placing a batch on the device,
device synchronisation, allocator figures, compile counters and precision flags. On JAX
the compile counter, cache hits and allocator figures are ``impls.jax_probes``, the same
module the Flax build reads, so the two JAX rows count alike.
"""

from __future__ import annotations

import random
from typing import Any

import keras
import numpy as np

BACKEND = keras.backend.backend()

if BACKEND == "jax":
    import jax

    from impls import jax_probes
elif BACKEND == "torch":
    import torch
elif BACKEND == "tensorflow":
    import tensorflow as tf
else:  # pragma: no cover - keras itself rejects other names for this build's purposes
    raise ImportError(f"impls.keras_vae supports the jax, torch and tensorflow backends, not {BACKEND!r}")


def seed_everything(seed: int) -> None:
    """What ``keras.utils.set_random_seed`` seeds, less TensorFlow on the jax and torch backends.

    ``set_random_seed`` also seeds ``tf.random`` wherever TensorFlow is installed (for ``tf.data`` pipelines), so
    it imports TensorFlow into a jax or torch process. This benchmark installs TensorFlow beside Keras for the
    keras-tensorflow row, and there it cost the keras-jax row 3.9 s of build and 150 MB of RSS (keras-torch:
    3.4 s, 140 MB) that Keras on JAX or torch alone does not carry; ``fit`` over a ``PyDataset`` never touches
    TensorFlow on those backends. What the model draws stays seeded as before: Python's ``random`` (Keras'
    initialisers take their default seeds from it), NumPy, and torch's generator on torch. Unlike
    ``set_random_seed`` it neither records a global Keras seed nor resets Keras' global ``SeedGenerator``: only a
    ``keras.random`` call without a seed would read those, and this build makes none (``Sampling`` and the masking
    layer draw from the model's own ``SeedGenerator(seed)``)."""
    if BACKEND == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    random.seed(seed)
    np.random.seed(seed)
    if BACKEND == "torch":
        torch.manual_seed(seed)


def on_gpu() -> bool:
    if BACKEND == "jax":
        return jax_probes.on_gpu()
    if BACKEND == "torch":
        return torch.cuda.is_available()
    return bool(tf.config.list_physical_devices("GPU"))


def pin_device_settings(tf32: bool, tf_memory_growth: bool) -> None:
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


def to_device(x: np.ndarray) -> Any:
    """A float32 host batch as the backend's array on its device, as ``fit``'s iterator would hand it
    over (JAX: ``jax.device_put``, which returns before the copy ends; torch: a tensor on Keras' torch
    device; TensorFlow: a tensor placed on the GPU where there is one)."""
    if BACKEND == "jax":
        return jax.device_put(x)
    if BACKEND == "torch":
        return keras.ops.convert_to_tensor(x)
    with tf.device("/GPU:0" if on_gpu() else "/CPU:0"):
        return tf.identity(x)


def synchronize(model: keras.Model) -> None:
    """Waits for the device to finish the model's queued work."""
    if BACKEND == "jax":
        # inside fit Keras detaches the state from the variables (jax/trainer.py:
        # _purge_model_variables) and keeps the newest in ``_jax_state`` until the epoch ends
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


def device_memory() -> dict[str, int | None]:
    """The allocator's figures in bytes on a GPU; empty on a CPU."""
    if not on_gpu():
        return {}
    if BACKEND == "jax":
        return jax_probes.device_memory()
    if BACKEND == "torch":
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "bytes_in_use": torch.cuda.memory_allocated(),
                "reserved_bytes": torch.cuda.memory_reserved()}
    info = tf.config.experimental.get_memory_info("GPU:0")
    return {"peak_bytes": info["peak"], "bytes_in_use": info["current"]}


def reset_peak_memory() -> None:
    """JAX has no peak reset; its ``peak_bytes`` is the process-wide peak."""
    if not on_gpu():
        return
    if BACKEND == "torch":
        torch.cuda.reset_peak_memory_stats()
    elif BACKEND == "tensorflow":
        tf.config.experimental.reset_memory_stats("GPU:0")


def xla_counters() -> dict[str, int]:
    """On JAX, ``impls.jax_probes.counters``: the process's XLA compilations (every jitted function
    and eager op) and those of them loaded from the persistent compilation cache. Empty elsewhere."""
    return jax_probes.counters() if BACKEND == "jax" else {}


def backend_version() -> str:
    return {"jax": lambda: jax.__version__, "torch": lambda: torch.__version__,
            "tensorflow": lambda: tf.__version__}[BACKEND]()
