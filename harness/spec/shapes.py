"""Shape inference: what every layer of a spec does to the per-sample shape, with one-line errors.

Shapes are channels-last, ``(length, channels)``, batch excluded. ``infer_shapes`` is the one walk
of a spec that validation, the parameter table, the numpy reference, FLOPs and preflight share;
the first layer that cannot take its input raises ``SpecError`` naming it and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.spec.layers import ACTIVATIONS, RESIDUAL_INNER, ZERO_INIT, L, Layer, SpecError

if TYPE_CHECKING:
    from harness.spec.schema import VAESpec


@dataclass(frozen=True)
class LayerShape:
    """What one layer does to the per-sample shape (channels-last, batch excluded)."""

    name: str  # canonical name prefix, e.g. "encoder.3"
    layer: Layer
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def infer_shapes(spec: VAESpec) -> list[LayerShape]:
    """Walk the whole VAE and return every layer with its in and out shape.

    Raises SpecError naming the first layer that cannot take its input.
    """
    out: list[LayerShape] = []
    shape: tuple[int, ...] = (spec.input_length,)
    for i, layer in enumerate(spec.encoder):
        if layer.type == "masking" and i:
            raise SpecError(f"encoder[{i}] (masking): masking acts on the input, so it must be the encoder's "
                            "first layer")
        new = _layer_out(spec, layer, shape, f"encoder[{i}]")
        out.append(LayerShape(f"encoder.{i}", layer, shape, new))
        shape = new
    head = _latent_head(spec, shape)
    for name in ("z_mean", "z_log_var"):
        out.append(LayerShape(name, head, shape, _layer_out(spec, head, shape, name)))
    shape = out[-1].out_shape
    for i, layer in enumerate(spec.decoder):
        if layer.type == "masking":
            raise SpecError(f"decoder[{i}] (masking): masking acts on the input, so it must be the encoder's "
                            "first layer")
        new = _layer_out(spec, layer, shape, f"decoder[{i}]")
        out.append(LayerShape(f"decoder.{i}", layer, shape, new))
        shape = new
    if spec.output_length_policy == "crop_or_pad":
        if len(shape) != 1:
            raise SpecError(
                f"decoder ends with shape {shape}; output_length_policy crop_or_pad crops or pads a flat "
                "output, so end the decoder with a flatten"
            )
        shape = (spec.input_length,)
    if shape != (spec.input_length,):
        raise SpecError(
            f"decoder ends with shape {shape} but the input length is {spec.input_length}; "
            f"the last decoder layer must produce ({spec.input_length},) (flatten a (L, 1) output), "
            "or set output_length_policy: crop_or_pad"
        )
    return out


def latent_shape(spec: VAESpec) -> tuple[int, ...]:
    """The per-sample shape of z (and of the noise ``eps``): ``(latent_dim,)``, or ``(L', latent_dim)``
    with conv1d latent heads."""
    return next(ls.out_shape for ls in infer_shapes(spec) if ls.name == "z_mean")


def _latent_head(spec: VAESpec, shape: tuple[int, ...]) -> Layer:
    """The layer each latent head is: a dense one on a vector, a "same" conv1d on a feature map."""
    if spec.latent_heads.type == "dense":
        if len(shape) != 1:
            raise SpecError(f"encoder ends with shape {shape}; add a flatten so the latent heads see a vector, "
                            "or use latent_heads: {type: conv1d} for a convolutional latent")
        return L("dense", units=spec.latent_dim)
    if len(shape) != 2:
        raise SpecError(f"encoder ends with shape {shape}; conv1d latent heads need (length, channels), so "
                        "drop the final flatten or use latent_heads: {type: dense}")
    return L("conv1d", filters=spec.latent_dim, kernel_size=spec.latent_heads.kernel_size)


def _layer_out(spec: VAESpec, layer: Layer, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    a = layer.args
    t = layer.type
    for key in ("units", "filters", "kernel_size", "pool_size", "size", "stride", "groups"):
        if a.get(key) is not None and (not isinstance(a[key], int) or isinstance(a[key], bool) or a[key] <= 0):
            raise SpecError(f"{where} ({t}): {key} must be a positive integer, got {a[key]!r}")
    if a.get("init") not in (None, ZERO_INIT):
        raise SpecError(f"{where} ({t}): init must be {ZERO_INIT!r} (or left out for the spec's kernel_init), "
                        f"got {a['init']!r}")
    if a.get("epsilon") is not None and (isinstance(a["epsilon"], bool) or not isinstance(a["epsilon"], (int, float))
                                         or not a["epsilon"] > 0):
        raise SpecError(f"{where} ({t}): epsilon must be a positive number, got {a['epsilon']!r}")
    if t == "masking":
        return _masking(spec, layer, shape, where)
    if t in ("group_norm", "attention1d"):
        if len(shape) != 2:
            raise SpecError(f"{where} ({t}): needs (length, channels) but gets the flat shape {shape}; "
                            "add a reshape before it, or drop the flatten")
        if shape[1] % a["groups"]:
            fits = [g for g in range(1, shape[1] + 1) if shape[1] % g == 0]
            near = min(fits, key=lambda g: abs(g - a["groups"]))
            raise SpecError(f"{where} ({t}): groups {a['groups']} do not divide its {shape[1]} channels; "
                            f"use a divisor of {shape[1]}, such as {near}")
        return shape
    if t == "dense":
        if len(shape) != 1:
            raise SpecError(f"{where} (dense): needs a vector but gets shape {shape}; add a flatten before it")
        return (a["units"],)
    if t in ("conv1d", "conv_transpose1d", "max_pool1d", "upsample1d"):
        if len(shape) != 2:
            raise SpecError(f"{where} ({t}): needs (length, channels) but gets shape {shape}; add a reshape before it")
        length, channels = shape
        if t in ("conv1d", "conv_transpose1d"):
            stride = layer.stride
            if a["kernel_size"] % 2 == 0 and stride == 1:
                raise SpecError(
                    f"{where} ({t}): kernel_size {a['kernel_size']} is even; 'same' padding is only "
                    "placed alike in every framework for odd kernels (or with a stride above 1)"
                )
            # Keras "same": a conv gives ceil(L / s) positions, a conv-transpose L * s
            return (-(-length // stride) if t == "conv1d" else length * stride, a["filters"])
        if t == "max_pool1d":
            p = a["pool_size"]
            if length % p:
                raise SpecError(_pool_message(spec, where, p, length))
            return (length // p, channels)
        return (length * a["size"], channels)
    if t == "batch_norm":
        return shape
    if t == "residual":
        return _residual(spec, layer, shape, where, "")[2]
    if t in ACTIVATIONS:
        if t == "leaky_relu":
            slope = spec.leaky_slope(layer)
            if not isinstance(slope, (int, float)) or slope < 0:
                raise SpecError(f"{where} (leaky_relu): negative_slope must be a non-negative number, got {slope!r}")
        return shape
    if t == "flatten":
        return (math.prod(shape),)
    if t == "reshape":
        target = a["shape"]
        if (not isinstance(target, (list, tuple)) or not target or len(target) > 2
                or any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in target)):
            raise SpecError(f"{where} (reshape): shape must be 1 or 2 positive integers, got {target!r}")
        if math.prod(target) != math.prod(shape):
            raise SpecError(
                f"{where} (reshape): cannot reshape {shape} ({math.prod(shape)} values) "
                f"to {tuple(target)} ({math.prod(target)} values)"
            )
        return tuple(target)
    raise SpecError(f"{where}: unknown layer type {t!r}")  # pragma: no cover - caught in from_dict


def _residual(spec: VAESpec, layer: Layer, shape: tuple[int, ...], where: str, name: str):
    """Inner LayerShapes (``{name}.inner.j``), the skip's (None: identity), out shape; SpecError if they disagree."""
    if len(shape) != 2:
        raise SpecError(f"{where} (residual): needs (length, channels) but gets shape {shape}; add a reshape before it")
    inner, h = [], shape
    for j, sub in enumerate(layer.args["layers"]):
        if sub.type not in RESIDUAL_INNER:
            raise SpecError(f"{where}.layers[{j}] ({sub.type}): a residual's inner path takes only "
                            f"{', '.join(RESIDUAL_INNER)}")
        new = _layer_out(spec, sub, h, f"{where}.layers[{j}]")
        inner.append(LayerShape(f"{name}.inner.{j}", sub, h, new))
        h = new
    skip, skip_ls, skip_shape = layer.args["skip"], None, shape
    if skip != "identity":
        if not isinstance(skip, Layer) or skip.type not in ("conv1d", "conv_transpose1d") or skip.args["kernel_size"] != 1:
            raise SpecError(f"{where} (residual): skip must be 'identity' or a conv1d or conv_transpose1d with "
                            f"kernel_size 1, got {skip.to_dict() if isinstance(skip, Layer) else skip!r}")
        skip_shape = _layer_out(spec, skip, shape, f"{where}.skip")
        skip_ls = LayerShape(f"{name}.skip", skip, shape, skip_shape)
    if skip_shape != h:
        (length, _), (out, channels) = shape, h
        stride = next((s for s in range(1, length + 1) if -(-length // s) == out), None)
        fix = (f"make the skip {{type: conv1d, filters: {channels}, kernel_size: 1, stride: {stride}}}" if stride
               else f"make the skip {{type: conv_transpose1d, filters: {channels}, kernel_size: 1, stride: {out // length}}}"
               if out % length == 0 else "change the inner strides so a 1x1 skip can match them")
        raise SpecError(f"{where} (residual): the inner path gives shape {h} but the skip gives {skip_shape}; {fix}")
    act = layer.args["activation"]
    if act is not None and act not in ACTIVATIONS:
        raise SpecError(f"{where} (residual): activation {act!r} is not one of {', '.join(ACTIVATIONS)} (or null)")
    return inner, skip_ls, h


def _masking(spec: VAESpec, layer: Layer, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    blocks = layer.args["blocks"]
    if (not isinstance(blocks, (list, tuple)) or not blocks
            or any(not isinstance(b, int) or isinstance(b, bool) or b <= 0 for b in blocks)):
        raise SpecError(f"{where} (masking): blocks must be a list of positive block sizes, got {blocks!r}")
    if len(shape) != 1:
        raise SpecError(f"{where} (masking): masks blocks of a flat input but gets shape {shape}")
    if sum(blocks) != shape[0]:
        raise SpecError(f"{where} (masking): blocks {list(blocks)} sum to {sum(blocks)}, not the input length "
                        f"{shape[0]}; give sizes that add up to {shape[0]}")
    return shape


def mask_bounds(layer: Layer) -> list[tuple[int, int]]:
    """Each masking block's [start, stop) positions in the input."""
    stops = [sum(layer.args["blocks"][: j + 1]) for j in range(len(layer.args["blocks"]))]
    return list(zip([0, *stops[:-1]], stops, strict=True))


def same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras' (and TensorFlow's, XLA's) "same" padding of a conv: ``ceil(L / s)`` outputs, the
    zeros needed for them split with the odd one on the right. PyTorch pads this explicitly."""
    out = -(-length // stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


def transpose_trim(kernel: int, stride: int) -> tuple[int, int]:
    """A "same" conv-transpose (the adjoint of a "same" conv from ``L * s`` to ``L`` positions) as
    the full one, ``(L - 1) * s + max(k, s)`` positions, with this many dropped at (left, right)."""
    total = max(kernel - stride, 0)
    return total // 2, total - total // 2


def _pool_message(spec: VAESpec, where: str, pool: int, length: int) -> str:
    total = 1
    for layer in spec.encoder:
        if layer.type == "max_pool1d":
            total *= layer.args["pool_size"]
    lo = (spec.input_length // total) * total
    hi = lo + total
    nearest = f"{hi}" if lo == 0 else f"{lo} or {hi}"
    return (
        f"spec {spec.name!r}: {where} (max_pool1d {pool}) cannot divide length {length}; "
        f"input length {spec.input_length} must be a multiple of {total} to pass every pool, "
        f"nearest valid lengths: {nearest}"
    )




__all__ = ["LayerShape", "infer_shapes", "latent_shape", "mask_bounds", "same_padding", "transpose_trim"]
