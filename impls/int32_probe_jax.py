"""probe-int32's ops in JAX: the lax and jnp calls the flax row (``impls/flax_model.py``) and
Keras 3's jax backend make, on one tensor past 2^31 elements.

Channels-last (NWC) as Flax and Keras lay out a 1-D signal. Each op is a pure function of
``(params, x)``, jitted once; the backward pass is ``jax.vjp`` with the output as the
cotangent. Matmul and conv precision is "highest", so a chunk and the whole tensor agree to
float32 rounding. The comparison is ``harness.measure.int32_check``'s.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

jax.config.update("jax_default_matmul_precision", "highest")


def _conv(x, w, b):
    return lax.conv_general_dilated(x, w, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")) + b


def _conv_transpose(x, w, b):
    return lax.conv_transpose(x, w, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")) + b


def _max_pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 4, 1), (1, 4, 1), "VALID")


def _bce_sum(x):
    t = (x > 0).astype(x.dtype)
    return jnp.sum(jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x))))


class Ops:
    def __init__(self, device: str, impl: str) -> None:
        platform = "gpu" if device == "gpu" else "cpu"
        devices = jax.devices(platform) if platform == "cpu" or jax.default_backend() == "gpu" else []
        if not devices:
            raise RuntimeError("jax sees no GPU; probe with --device cpu")
        self.dev = devices[0]
        self.impl = impl

    def environment(self) -> dict[str, Any]:
        import jaxlib

        cuda = None
        if self.dev.platform == "gpu":
            try:
                from jax._src.lib import cuda_versions  # noqa: PLC0415 - present only in CUDA builds

                cuda = str(cuda_versions.cuda_runtime_get_version()) if cuda_versions else None
            except Exception:  # noqa: BLE001 - the version is a label, not a requirement
                cuda = None
        return {"framework_version": jax.__version__, "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__},
                "cuda": cuda, "device_name": getattr(self.dev, "device_kind", str(self.dev))}

    def input(self, g):
        shape = {"dense": (g.rows, g.features), "loss": (g.rows, g.per_row),
                 "upsample1d": (g.rows, g.length // 4, g.channels)}.get(g.op, (g.rows, g.length, g.channels))
        with jax.default_device(self.dev):
            return jax.random.normal(jax.random.key(0), shape, jnp.float32)

    def rows(self, a, start: int, stop: int):
        return a[start:stop]

    def host(self, a) -> np.ndarray:
        return np.asarray(a)

    def _params(self, op: str, g) -> dict[str, Any]:
        k = jax.random.split(jax.random.key(1), 2)
        c = g.channels
        shapes = {"dense": {"kernel": (g.features, g.per_row), "bias": (g.per_row,)},
                  "conv1d": {"kernel": (7, c, c), "bias": (c,)},
                  "conv_transpose1d": {"kernel": (7, c, c), "bias": (c,)},
                  "batch_norm": {"scale": (c,), "bias": (c,)}}.get(op, {})
        with jax.default_device(self.dev):
            return {n: jax.random.normal(k[i], s, jnp.float32) * 0.1 for i, (n, s) in enumerate(shapes.items())}

    def build(self, op: str, g):
        params = self._params(op, g)
        fns = {"dense": lambda p, x: x @ p["kernel"] + p["bias"],
               "conv1d": lambda p, x: _conv(x, p["kernel"], p["bias"]),
               "conv_transpose1d": lambda p, x: _conv_transpose(x, p["kernel"], p["bias"]),
               "batch_norm": lambda p, x: x * p["scale"] + p["bias"],  # running mean 0, variance 1
               "max_pool1d": lambda p, x: _max_pool(x),
               "upsample1d": lambda p, x: jnp.repeat(x, 4, axis=1),
               "relu": lambda p, x: jax.nn.relu(x), "leaky_relu": lambda p, x: jax.nn.leaky_relu(x, 0.2),
               "gelu": lambda p, x: jax.nn.gelu(x), "sigmoid": lambda p, x: jax.nn.sigmoid(x),
               "loss": lambda p, x: _bce_sum(x)}
        f = fns[op]
        key = "loss" if op == "loss" else "y"
        forward = jax.jit(f)

        @jax.jit
        def fwd_bwd(p, x):
            y, vjp = jax.vjp(f, p, x)
            dp, dx = vjp(jnp.ones_like(y) if op == "loss" else y)
            return y, dx, dp

        def run(x, backward: bool) -> dict[str, Any]:
            if not backward:
                y = forward(params, x)
                jax.block_until_ready(y)
                return {key: y}
            y, dx, dp = fwd_bwd(params, x)
            jax.block_until_ready(dx)
            return {key: y, "dx": dx, **{f"dw:{n}": v for n, v in dp.items()}}

        return run
