"""The spec's vocabulary: its layer types, their arguments, and the error every bad spec raises.

Kept below ``schema`` (the spec itself) and ``shapes`` (what each layer does to a shape) so that
both can use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class SpecError(ValueError):
    """A spec that no build should be asked to construct; the message is one line."""


# --------------------------------------------------------------------------- layers

#: layer type -> (required arguments, optional arguments with defaults)
LAYER_TYPES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    # ``init: zeros`` zero-initialises a layer's kernel and bias (AutoencoderKL's zero_init);
    # left out, the spec's kernel_init / bias_init apply
    "dense": (("units",), {"init": None}),
    "conv1d": (("filters", "kernel_size"), {"stride": None, "init": None}),
    "conv_transpose1d": (("filters", "kernel_size"), {"stride": None, "init": None}),
    "max_pool1d": (("pool_size",), {}),
    "upsample1d": (("size",), {}),
    "batch_norm": ((), {}),
    # normalises each sample over (length, channels / groups) per group; epsilon: settings.group_norm_epsilon
    "group_norm": (("groups",), {"epsilon": None}),
    "relu": ((), {}),
    "leaky_relu": ((), {"negative_slope": None}),
    "gelu": ((), {}),
    "silu": ((), {}),
    "selu": ((), {}),
    "sigmoid": ((), {}),
    "flatten": ((), {}),
    "reshape": (("shape",), {}),
    # inner layers, then the skip ("identity" or a 1x1 conv / conv-transpose) added, then an activation
    "residual": (("layers",), {"skip": "identity", "activation": None}),
    # AutoencoderKL's AttnBlock over the length axis: x + proj(softmax(q k^T / sqrt(C)) v), q, k, v and
    # proj 1x1 convs of a group_norm of x; ``init: zeros`` zero-initialises the output projection
    "attention1d": (("groups",), {"epsilon": None, "init": None}),
    # the input's feature blocks (sizes summing to the input length); each minibatch one block, drawn
    # from the step's seeded generator, is set to MASK_VALUE (seed 004's random masking layer)
    "masking": (("blocks",), {}),
}
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "selu", "sigmoid")
#: what a residual's inner path may hold: layers that keep a (length, channels) tensor
RESIDUAL_INNER = ("conv1d", "conv_transpose1d", "max_pool1d", "upsample1d", "batch_norm", "group_norm",
                  *ACTIVATIONS)
#: ``masked_bce``: BCE of the sigmoid output, clipped to [MASKED_BCE_CLIP, 1 - MASKED_BCE_CLIP], on the
#: masked positions only, averaged over them per sample (seed 004)
LOSSES = ("bce_logits", "mse", "masked_bce")
KL_NORMALISATIONS = ("batch", "features")
MASK_VALUE = -1.0
MASKED_BCE_CLIP = 1e-7
#: what the decoder's output length may be: exactly the input length, or cropped (trailing
#: positions dropped) or zero-padded (trailing zeros) to it
OUTPUT_LENGTH_POLICIES = ("exact", "crop_or_pad")
#: the latent heads: dense layers on a flat encoder output (a vector latent), or "same" conv1d layers
#: on a (length, channels) one (a DiagonalGaussian over a feature map, AutoencoderKL's latent)
LATENT_HEADS = ("dense", "conv1d")
PARAMETRIC = ("dense", "conv1d", "conv_transpose1d", "batch_norm", "group_norm", "attention1d")
ZERO_INIT = "zeros"


@dataclass(frozen=True)
class Layer:
    """One layer: its type and its arguments, nothing framework-specific."""

    type: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        plain = lambda v: (v.to_dict() if isinstance(v, Layer)  # noqa: E731 - a residual's nested layers
                           else [x.to_dict() for x in v] if isinstance(v, (tuple, list)) and v and isinstance(v[0], Layer) else v)
        return {"type": self.type, **{k: list(v) if k == "blocks" else plain(v) for k, v in self.args.items()}}

    @property
    def stride(self) -> int:
        """A conv's stride; 1 when the spec leaves it out (the key then stays out of the hash)."""
        stride = self.args.get("stride")
        return 1 if stride is None else stride

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> Layer:
        if not isinstance(raw, dict) or "type" not in raw:
            raise SpecError(f"{where}: a layer must be a mapping with a 'type' key, got {raw!r}")
        kind = raw["type"]
        if kind not in LAYER_TYPES:
            known = ", ".join(LAYER_TYPES)
            raise SpecError(f"{where}: unknown layer type {kind!r}; known types: {known}")
        required, optional = LAYER_TYPES[kind]
        args = {k: v for k, v in raw.items() if k != "type"}
        unknown = set(args) - set(required) - set(optional)
        if unknown:
            raise SpecError(f"{where} ({kind}): unknown argument(s) {sorted(unknown)}")
        missing = [k for k in required if k not in args]
        if missing:
            raise SpecError(f"{where} ({kind}): missing argument(s) {missing}")
        for k, default in optional.items():
            if args.get(k) is None and default is not None:
                args[k] = default
        if kind == "residual":
            if not isinstance(args["layers"], list) or not args["layers"]:
                raise SpecError(f"{where} (residual): layers must be a non-empty list of layers")
            args["layers"] = tuple(cls.from_dict(x, f"{where}.layers[{j}]") for j, x in enumerate(args["layers"]))
            if args["skip"] != "identity":
                args["skip"] = cls.from_dict(args["skip"], f"{where}.skip")
        return cls(kind, args)


def L(kind: str, **args: Any) -> Layer:  # noqa: N802 - reads like the presets in the issue
    return Layer(kind, args)
