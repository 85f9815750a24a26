"""probe-int32's ops in TensorFlow: the ``tf.nn`` calls Keras 3's tensorflow backend makes for
the keras-tensorflow row (Conv1D, Conv1DTranspose, MaxPooling1D, UpSampling1D's repeat), on
one tensor past 2^31 elements.

Channels-last, as Keras lays out a 1-D signal; the backward pass is a ``tf.GradientTape``
with the output as the cotangent, as TensorFlow's custom-training guide writes it. This is
where the user's ``work_element_count >= 0`` abort came from; a probe runs in its own worker,
so the abort ends that probe only. The comparison is ``harness.measure.int32_check``'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf


def _bce_sum(x):
    t = tf.cast(x > 0, x.dtype)
    return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=t, logits=x))


class Ops:
    def __init__(self, device: str, impl: str) -> None:
        tf.config.experimental.enable_tensor_float_32_execution(False)
        if device == "gpu" and not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("tensorflow sees no GPU; probe with --device cpu")
        self.where = "/GPU:0" if device == "gpu" else "/CPU:0"

    def environment(self) -> dict[str, Any]:
        build = tf.sysconfig.get_build_info()
        gpu = self.where.startswith("/GPU")
        name = "cpu"
        if gpu:
            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            name = details.get("device_name", "gpu")
        return {"framework_version": tf.__version__,
                "versions": {"tensorflow": tf.__version__, "cudnn": build.get("cudnn_version") if gpu else None},
                "cuda": build.get("cuda_version") if gpu else None, "device_name": name}

    def input(self, g):
        shape = {"dense": (g.rows, g.features), "loss": (g.rows, g.per_row),
                 "upsample1d": (g.rows, g.length // 4, g.channels)}.get(g.op, (g.rows, g.length, g.channels))
        with tf.device(self.where):
            return tf.random.stateless_normal(shape, seed=(0, 0))

    def rows(self, a, start: int, stop: int):
        with tf.device(self.where):
            return a[start:stop]

    def host(self, a) -> np.ndarray:
        return np.asarray(a)

    def build(self, op: str, g):
        c = g.channels
        shapes = {"dense": {"kernel": (g.features, g.per_row), "bias": (g.per_row,)},
                  "conv1d": {"kernel": (7, c, c), "bias": (c,)},
                  "conv_transpose1d": {"kernel": (7, c, c), "bias": (c,)},
                  "batch_norm": {"scale": (c,), "bias": (c,)}}.get(op, {})
        with tf.device(self.where):
            params = {n: tf.Variable(tf.random.stateless_normal(s, seed=(1, i)) * 0.1)
                      for i, (n, s) in enumerate(shapes.items())}
        p = params

        def conv_t(x):
            out = tf.stack([tf.shape(x)[0], tf.shape(x)[1], c])
            return tf.nn.conv1d_transpose(x, p["kernel"], out, 1, padding="SAME") + p["bias"]

        fns = {"dense": lambda x: x @ p["kernel"] + p["bias"],
               "conv1d": lambda x: tf.nn.conv1d(x, p["kernel"], 1, "SAME") + p["bias"],
               "conv_transpose1d": conv_t,
               "batch_norm": lambda x: x * p["scale"] + p["bias"],
               "max_pool1d": lambda x: tf.nn.max_pool1d(x, 4, 4, "VALID"),
               "upsample1d": lambda x: tf.repeat(x, 4, axis=1),
               "relu": tf.nn.relu, "leaky_relu": lambda x: tf.nn.leaky_relu(x, 0.2), "gelu": tf.nn.gelu,
               "sigmoid": tf.sigmoid, "loss": _bce_sum}
        f = fns[op]
        key = "loss" if op == "loss" else "y"

        def run(x, backward: bool) -> dict[str, Any]:
            with tf.device(self.where):
                if not backward:
                    return {key: f(x)}
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = f(x)
                names = list(params)
                grads = tape.gradient(y, [x, *(params[n] for n in names)],
                                      output_gradients=None if op == "loss" else tf.stop_gradient(y))
                return {key: y, "dx": grads[0], **{f"dw:{n}": gr for n, gr in zip(names, grads[1:], strict=True)}}

        return run
