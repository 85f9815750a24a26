"""Where the PyTorch build's tensors sit relative to the canonical (channels-last) ones.

The spec is written channels-last, ``(length, channels)``, the layout Keras and
Flax use. PyTorch users write 1-D convolutions channels-first, ``(N, C, L)``,
so the build does too and translates only at its boundary, here:

* kernels are transposed in ``to_canonical`` / ``from_canonical`` (``Conv1d`` weight
  ``(out, in, k)``, ``ConvTranspose1d`` weight ``(in, out, k)``, ``Linear`` weight
  ``(out, in)``);
* flattening a channels-first ``(C, L)`` tensor gives the features in the order
  ``c * L + l``, the spec's flatten gives ``l * C + c``. Rather than transposing
  activations on every step, the build tracks which canonical feature sits at each
  position of every flat vector (the "orders" below) and permutes the rows or columns
  of the dense layers (and the parameters of a BatchNorm) next to it, once, when
  weights are moved. The forward pass stays the one a PyTorch user would write.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from harness.spec.layers import ACTIVATIONS
from harness.spec.shapes import LayerShape

# ---------------------------------------------------------------------------- feature orders
#
# An "order" describes a flat (B, N) activation in torch: order[i] is the canonical
# (channels-last, row-major) index of the feature torch holds at position i. ``None``
# means the identity, the common case, so nothing is ever indexed needlessly.


def channels_first_order(length: int, channels: int) -> np.ndarray | None:
    """Order of ``x.flatten(1)`` for a torch ``(B, C, L)`` tensor that is canonically ``(L, C)``.

    Torch position ``c * L + l`` holds canonical feature ``l * C + c``. With one channel
    (or length one) the two orders coincide and the identity (``None``) is returned.
    """
    if channels == 1 or length == 1:
        return None
    return np.arange(length * channels).reshape(length, channels).T.ravel()


def inverse_order(order: np.ndarray | None) -> np.ndarray | None:
    """Position at which each canonical feature sits: ``inverse[order[i]] == i``."""
    return None if order is None else np.argsort(order)


def same_order(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))


def reorder_index(have: np.ndarray | None, want: np.ndarray | None, n: int) -> np.ndarray:
    """Index with which ``x[:, index]`` turns a flat vector in order ``have`` into order ``want``."""
    want = np.arange(n) if want is None else want
    have_inv = inverse_order(have)
    return want if have_inv is None else have_inv[want]


def dense_output_order(shapes: list[LayerShape], i: int) -> np.ndarray | None:
    """The order in which dense layer ``i`` should emit its features.

    A dense layer's output columns can be laid out in any order for free. When the
    next layer that cares about order (past activations and BatchNorm, which act per
    feature) is a reshape to ``(L, C)``, emitting the channels-first order makes that
    reshape a plain ``view`` to ``(B, C, L)``; otherwise the canonical order is kept.
    """
    for s in shapes[i + 1:]:
        if s.layer.type in ACTIVATIONS or s.layer.type == "batch_norm":
            continue
        if s.layer.type == "reshape" and len(s.out_shape) == 2:
            return channels_first_order(*s.out_shape)
        return None
    return None


# ---------------------------------------------------------------------------- layouts


@dataclass
class Layout:
    """How one parametric layer's torch tensors map to the canonical ones.

    ``in_order`` / ``out_order`` are the feature orders of the flat vectors on either
    side (dense layers; a flat BatchNorm uses ``out_order`` for its per-feature params).
    """

    name: str  # canonical prefix, e.g. "decoder.2"
    kind: str  # "dense", "conv1d", "conv_transpose1d", "batch_norm" or "group_norm"
    module: nn.Module
    in_order: np.ndarray | None = None
    out_order: np.ndarray | None = None
    zero_init: bool = False  # ``init: zeros``: kernel and bias start at zero


# ---------------------------------------------------------------------------- weight layout

#: canonical leaf name -> torch attribute
LEAVES = {
    "dense": {"kernel": "weight", "bias": "bias"},
    "conv1d": {"kernel": "weight", "bias": "bias"},
    "conv_transpose1d": {"kernel": "weight", "bias": "bias"},
    "batch_norm": {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                   "moving_variance": "running_var"},
    "group_norm": {"gamma": "weight", "beta": "bias"},
}


def to_canonical(layout: Layout, leaf: str, t: np.ndarray) -> np.ndarray:
    """A torch tensor (or its gradient) of ``layout`` in the canonical layout."""
    if leaf == "kernel" and layout.kind == "dense":  # (out, in) -> (in, out), rows/cols back to canonical order
        k = t.T
        if layout.in_order is not None:
            k = k[inverse_order(layout.in_order)]
        if layout.out_order is not None:
            k = k[:, inverse_order(layout.out_order)]
        return np.ascontiguousarray(k)
    if leaf == "kernel":  # Conv1d (out, in, k) -> (k, in, out); ConvTranspose1d (in, out, k) -> (k, out, in)
        return np.ascontiguousarray(t.transpose(2, 1, 0))
    if layout.out_order is not None:  # a per-feature vector of a permuted flat vector
        return np.ascontiguousarray(t[inverse_order(layout.out_order)])
    return t


def from_canonical(layout: Layout, leaf: str, a: np.ndarray) -> np.ndarray:
    """The inverse of ``to_canonical``."""
    if leaf == "kernel" and layout.kind == "dense":
        if layout.in_order is not None:
            a = a[layout.in_order]
        if layout.out_order is not None:
            a = a[:, layout.out_order]
        return np.ascontiguousarray(a.T)
    if leaf == "kernel":
        return np.ascontiguousarray(a.transpose(2, 1, 0))
    if layout.out_order is not None:
        return np.ascontiguousarray(a[layout.out_order])
    return a

