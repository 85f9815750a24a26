"""The canonical weight layout: every tensor a spec's model holds, named and shaped once.

Every build moves its weights in and out through these names (``encoder.1.kernel``), parity
compares them, and ``count_params`` is the figure every build's own count must equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.spec.layers import ZERO_INIT
from harness.spec.schema import VAESpec
from harness.spec.shapes import LayerShape, _residual, infer_shapes


@dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: tuple[int, ...]
    trainable: bool
    #: drawn as zeros whatever the spec's kernel_init (a layer's ``init: zeros``)
    zero_init: bool = False


def param_table(spec: VAESpec) -> list[ParamInfo]:
    """Every tensor of the canonical weight layout, in a fixed order.

    Canonical layout (Keras' own): dense ``kernel`` (in, out); conv1d ``kernel``
    (k, in, out); conv_transpose1d ``kernel`` (k, out, in); batch_norm ``gamma``,
    ``beta`` (trainable), ``moving_mean``, ``moving_variance`` (not trainable); group_norm
    ``gamma``, ``beta``; attention1d its group_norm ``norm`` and the 1x1 convs ``q``, ``k``,
    ``v`` and ``proj`` (``encoder.5.q.kernel``, (1, C, C)). A flattened (length, channels)
    tensor is read row-major, channel fastest.
    """
    params: list[ParamInfo] = []
    for ls in _leaves(spec, infer_shapes(spec)):
        t, a = ls.layer.type, ls.layer.args
        zero = a.get("init") == ZERO_INIT
        if t == "dense":
            params += _weighted(ls.name, (ls.in_shape[0], a["units"]), a["units"], zero)
        elif t == "conv1d":
            params += _weighted(ls.name, (a["kernel_size"], ls.in_shape[1], a["filters"]), a["filters"], zero)
        elif t == "conv_transpose1d":
            params += _weighted(ls.name, (a["kernel_size"], a["filters"], ls.in_shape[1]), a["filters"], zero)
        elif t in ("batch_norm", "group_norm"):
            c = (ls.in_shape[-1],)
            params += [ParamInfo(f"{ls.name}.gamma", c, True), ParamInfo(f"{ls.name}.beta", c, True)]
            if t == "batch_norm":
                params += [ParamInfo(f"{ls.name}.moving_mean", c, False),
                           ParamInfo(f"{ls.name}.moving_variance", c, False)]
        elif t == "attention1d":
            c = ls.in_shape[-1]
            params += [ParamInfo(f"{ls.name}.norm.gamma", (c,), True), ParamInfo(f"{ls.name}.norm.beta", (c,), True)]
            for part in ("q", "k", "v", "proj"):
                params += _weighted(f"{ls.name}.{part}", (1, c, c), c, zero and part == "proj")
    return params


def _weighted(name: str, kernel: tuple[int, ...], units: int, zero: bool) -> list[ParamInfo]:
    return [ParamInfo(f"{name}.kernel", kernel, True, zero), ParamInfo(f"{name}.bias", (units,), True, zero)]


def _leaves(spec: VAESpec, shapes: list[LayerShape]):
    """Each residual as its inner layers and skip, so their tensors nest: ``encoder.3.inner.0.kernel``."""
    for ls in shapes:
        inner, skip, _ = _residual(spec, ls.layer, ls.in_shape, ls.name, ls.name) if ls.layer.type == "residual" else ([ls], 0, 0)
        yield from [*inner, skip] if skip else inner


@dataclass(frozen=True)
class ParamCounts:
    trainable: int
    non_trainable: int

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable


def count_params(spec: VAESpec) -> ParamCounts:
    """The counts every build must reproduce, from the spec alone."""
    table = param_table(spec)
    return ParamCounts(
        trainable=sum(math.prod(p.shape) for p in table if p.trainable),
        non_trainable=sum(math.prod(p.shape) for p in table if not p.trainable),
    )




__all__ = ["ParamCounts", "ParamInfo", "count_params", "param_table"]
