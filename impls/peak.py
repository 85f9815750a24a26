"""The matmul rate of one framework on the cells' device, in their precision, measured in a worker (``PeakTask``).

float32 operands for fp32 and tf32 cells; bfloat16 operands for bf16 cells, as their matmuls take them under autocast,
a bf16 module dtype or the ``mixed_bfloat16`` policy (each framework accumulates in float32).

``harness.run.worker`` imports this module by name for a ``PeakTask``; the parent starts one worker
per installed framework (``task.framework``: torch, jax or tensorflow) and keeps the best rate as the
MFU peak; the method, the cache and MFU are described in ``harness.measure.peak``. Each framework is
imported inside its own class, so a worker loads only the one it times.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from typing import Any, Callable

from harness.measure.peak import (
    BF16_DTYPE,
    CPU_REPEATS,
    CPU_SIZE,
    CPU_TARGET_S,
    DTYPE,
    GPU_REPEATS,
    GPU_SIZE,
    cpu_model,
)
from harness.run.task import PeakTask

WARMUP = 3
#: the smallest product a CPU size search goes down to
MIN_CPU_SIZE = 256


def measure_matmul_peak(task: PeakTask) -> dict[str, Any]:
    """The rate of one square product in ``task.dtype`` (median of ``repeats``), as ``harness.measure.peak`` stores
    it."""
    if task.device not in ("gpu", "cpu", "auto"):
        raise ValueError(f"device must be gpu, cpu or auto, got {task.device!r}")
    if (task.size is not None and task.size <= 0) or (task.repeats is not None and task.repeats <= 0):
        raise ValueError(f"size and repeats must be positive, got {task.size!r} and {task.repeats!r}")
    name = task.framework or next((n for n in BENCHES if importlib.util.find_spec(n) is not None), None)
    if name is None:
        raise ModuleNotFoundError(f"measuring the matmul peak needs one of {', '.join(BENCHES)}; none is installed")
    if name not in BENCHES:
        raise ValueError(f"framework must be one of {', '.join(BENCHES)}, got {name!r}")
    if task.dtype not in (DTYPE, BF16_DTYPE):
        raise ValueError(f"dtype must be {DTYPE} or {BF16_DTYPE}, got {task.dtype!r}")
    bench = BENCHES[name](task.device)
    bench.dtype = task.dtype
    note = None
    if task.device == "gpu" and not bench.on_gpu:
        note = f"a GPU was asked for but {bench.framework.split()[0]} sees none; measured on the CPU"
    on_gpu = bench.on_gpu
    size = task.size or (GPU_SIZE if on_gpu else _cpu_size(bench))
    repeats = task.repeats or (GPU_REPEATS if on_gpu else CPU_REPEATS)
    tf32 = bool(task.tf32 and on_gpu)  # a CPU has no TF32
    seconds = bench.time(size, repeats, tf32)
    out: dict[str, Any] = {
        **_rate(size, seconds),
        "device": bench.device_name,
        "device_kind": "gpu" if on_gpu else "cpu",
        "dtype": task.dtype,
        "tf32": tf32,
        "size": size,
        "framework": bench.framework,
        "threads": bench.threads,
        "method": (f"{bench.framework.split()[0]} {size}x{size} {task.dtype} A@B, 2n^3 FLOPs over the median of "
                   f"{repeats} synchronised wall-clock timings after {WARMUP} warm-up products, TF32 "
                   f"{'on' if tf32 else 'off'}"),
    }
    if tf32:
        out["tf32_off"] = {**_rate(size, bench.time(size, repeats, False)), "tf32": False}
    if task.tf32 and not on_gpu:
        note = "; ".join(filter(None, [note, "TF32 applies only on a GPU: measured without it"]))
    if note:
        out["note"] = note
    return out


def _rate(size: int, seconds: list[float]) -> dict[str, Any]:
    med = statistics.median(seconds)
    return {"tflops": 2 * size**3 / med / 1e12, "seconds": seconds, "median_s": med}


def _cpu_size(bench: _Matmul) -> int:
    """``CPU_SIZE``, halved while one product would take longer than ``CPU_TARGET_S`` (from a 512 product)."""
    probe = 512
    s = min(bench.time(probe, 2, False))
    size = CPU_SIZE
    while size > MIN_CPU_SIZE and s * (size / probe) ** 3 > CPU_TARGET_S:
        size //= 2
    return size


class _Matmul:
    framework: str
    device_name: str
    on_gpu: bool
    threads: int | None = None
    #: the operands' dtype name (``DTYPE`` or ``BF16_DTYPE``), set by ``measure_matmul_peak``
    dtype: str = DTYPE

    def product(self, size: int, tf32: bool) -> tuple[Callable[[], Any], Callable[[Any], None]]:
        raise NotImplementedError

    def time(self, size: int, repeats: int, tf32: bool) -> list[float]:
        run, wait = self.product(size, tf32)
        for _ in range(WARMUP):
            wait(run())
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            wait(run())
            out.append(time.perf_counter() - t)
        return out


class _TorchMatmul(_Matmul):
    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.on_gpu = device != "cpu" and torch.cuda.is_available()
        self.dev = torch.device("cuda" if self.on_gpu else "cpu")
        self.framework = f"torch {torch.__version__}"
        self.device_name = torch.cuda.get_device_name(self.dev) if self.on_gpu else f"CPU: {cpu_model()}"
        self.threads = None if self.on_gpu else torch.get_num_threads()

    def product(self, size: int, tf32: bool):
        torch = self.torch
        # the switches the torch cell sets (impls/torch_vae.py); NVIDIA_TF32_OVERRIDE=0 is in the
        # environment as well when the run has TF32 off
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        g = torch.Generator(device=self.dev).manual_seed(0)
        dtype = getattr(torch, self.dtype)
        a = torch.randn(size, size, device=self.dev, dtype=torch.float32, generator=g).to(dtype)
        b = torch.randn(size, size, device=self.dev, dtype=torch.float32, generator=g).to(dtype)
        c = torch.empty(size, size, device=self.dev, dtype=dtype)
        sync = torch.cuda.synchronize if self.on_gpu else (lambda: None)

        def run():
            return torch.matmul(a, b, out=c)

        return run, lambda _: sync()


class _JaxMatmul(_Matmul):
    def __init__(self, device: str) -> None:
        import jax

        self.jax = jax
        gpus = [] if device == "cpu" else [d for d in jax.devices() if d.platform == "gpu"]
        self.on_gpu = bool(gpus)
        self.dev = gpus[0] if gpus else jax.devices("cpu")[0]
        self.framework = f"jax {jax.__version__}"
        self.device_name = getattr(self.dev, "device_kind", "GPU") if self.on_gpu else f"CPU: {cpu_model()}"
        self.threads = None if self.on_gpu else len(os.sched_getaffinity(0))

    def product(self, size: int, tf32: bool):
        jax = self.jax
        import jax.numpy as jnp

        precision = jax.lax.Precision.DEFAULT if tf32 else jax.lax.Precision.HIGHEST
        k1, k2 = jax.random.split(jax.random.PRNGKey(0))
        dtype = jnp.dtype(self.dtype)
        a = jax.device_put(jax.random.normal(k1, (size, size), jnp.float32).astype(dtype), self.dev)
        b = jax.device_put(jax.random.normal(k2, (size, size), jnp.float32).astype(dtype), self.dev)
        f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))
        return (lambda: f(a, b)), (lambda out: out.block_until_ready())


class _TensorFlowMatmul(_Matmul):
    def __init__(self, device: str) -> None:
        import tensorflow as tf

        self.tf = tf
        gpus = [] if device == "cpu" else tf.config.list_logical_devices("GPU")
        self.on_gpu = bool(gpus)
        self.dev = gpus[0].name if gpus else "/CPU:0"
        self.framework = f"tensorflow {tf.__version__}"
        self.device_name = (tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
                            .get("device_name", "GPU") if self.on_gpu else f"CPU: {cpu_model()}")
        intra = tf.config.threading.get_intra_op_parallelism_threads()
        self.threads = None if self.on_gpu else (intra or len(os.sched_getaffinity(0)))

    def product(self, size: int, tf32: bool):
        tf = self.tf
        # the switch the keras-tensorflow cell sets (impls/keras_backend.py); NVIDIA_TF32_OVERRIDE=0 as well
        tf.config.experimental.enable_tensor_float_32_execution(tf32)
        with tf.device(self.dev):
            g = tf.random.Generator.from_seed(0)
            a = tf.cast(g.normal((size, size), dtype=tf.float32), self.dtype)
            b = tf.cast(g.normal((size, size), dtype=tf.float32), self.dtype)
        f = tf.function(lambda x, y: tf.linalg.matmul(x, y))  # a traced graph, not an op dispatched eagerly

        def run():
            with tf.device(self.dev):
                return f(a, b)

        # reading one element back waits for the product without copying it to the host
        return run, lambda out: out[0, 0].numpy()


#: the framework each ``PeakTask.framework`` names, in the order a task without one tries them
BENCHES: dict[str, type[_Matmul]] = {"torch": _TorchMatmul, "jax": _JaxMatmul, "tensorflow": _TensorFlowMatmul}
