"""The declarative VAE spec: one description, built by every framework.

A spec is plain data (JSON or YAML) so that the same file can be handed to a
PyTorch, Flax or Keras build and hashed into every result. Shapes are always
written channels-last, ``(length, channels)``, the layout Keras and Flax use;
the PyTorch build translates at its boundary (see ``impls/torch_vae.py``).

Validation happens here, once, with one-line errors, so that no framework ever
sees a spec it would reject with a traceback of its own.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


class SpecError(ValueError):
    """A spec that no build should be asked to construct; the message is one line."""


# --------------------------------------------------------------------------- layers

#: layer type -> (required arguments, optional arguments with defaults)
LAYER_TYPES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "dense": (("units",), {}),
    "conv1d": (("filters", "kernel_size"), {"stride": None}),
    "conv_transpose1d": (("filters", "kernel_size"), {"stride": None}),
    "max_pool1d": (("pool_size",), {}),
    "upsample1d": (("size",), {}),
    "batch_norm": ((), {}),
    "relu": ((), {}),
    "leaky_relu": ((), {"negative_slope": None}),
    "gelu": ((), {}),
    "sigmoid": ((), {}),
    "flatten": ((), {}),
    "reshape": (("shape",), {}),
    # inner layers, then the skip ("identity" or a 1x1 conv / conv-transpose) added, then an activation
    "residual": (("layers",), {"skip": "identity", "activation": None}),
}
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "sigmoid")
#: what a residual's inner path may hold: layers that keep a (length, channels) tensor
RESIDUAL_INNER = ("conv1d", "conv_transpose1d", "max_pool1d", "upsample1d", "batch_norm", *ACTIVATIONS)
LOSSES = ("bce_logits", "mse")
#: what the decoder's output length may be: exactly the input length, or cropped (trailing
#: positions dropped) or zero-padded (trailing zeros) to it
OUTPUT_LENGTH_POLICIES = ("exact", "crop_or_pad")
PARAMETRIC = ("dense", "conv1d", "conv_transpose1d", "batch_norm")


@dataclass(frozen=True)
class Layer:
    """One layer: its type and its arguments, nothing framework-specific."""

    type: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        plain = lambda v: (v.to_dict() if isinstance(v, Layer)  # noqa: E731 - a residual's nested layers
                           else [x.to_dict() for x in v] if isinstance(v, (tuple, list)) and v and isinstance(v[0], Layer) else v)
        return {"type": self.type, **{k: plain(v) for k, v in self.args.items()}}

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


# ------------------------------------------------------------------ pinned settings


@dataclass(frozen=True)
class Settings:
    """Every setting whose default differs between frameworks, pinned.

    Defaults each framework would otherwise pick for itself:

    * ``batch_norm_momentum`` is the *decay* of the running statistics (Keras and
      Flax convention, default 0.99; PyTorch's ``momentum`` is ``1 - decay``, default 0.1).
    * ``batch_norm_epsilon``: Keras 1e-3, PyTorch and Flax 1e-5.
    * ``batch_norm_running_var``: PyTorch updates the running variance with the
      unbiased batch variance, Keras and Flax with the biased one.
    * ``leaky_relu_slope``: Keras 0.3, PyTorch and Flax 0.01.
    * ``gelu_approximate``: Keras and Flax default to the tanh form, PyTorch to erf.
    * ``adam_epsilon_hat``: PyTorch and Optax add epsilon to sqrt(v_hat); Keras adds
      it to sqrt(v) after folding the bias correction into the learning rate.
    * ``kernel_init``/``bias_init``: PyTorch defaults to Kaiming-uniform, Keras and
      Flax to Glorot-uniform and LeCun-normal.
    * ``tf32``: PyTorch matmul and TensorFlow default to TF32 on Ampere and newer; JAX
      defaults to reduced-precision matmuls on GPU. Off unless asked for.
    * ``jax_preallocate`` / ``tf_memory_growth``: JAX grabs 75% of the GPU at start,
      TensorFlow all of it; both are turned off so memory figures mean something.
    """

    dtype: str = "float32"
    kernel_init: str = "glorot_uniform"
    bias_init: str = "zeros"
    batch_norm_momentum: float = 0.99
    batch_norm_epsilon: float = 1e-3
    batch_norm_running_var: str = "biased"
    leaky_relu_slope: float = 0.2
    gelu_approximate: bool = False
    adam_epsilon_hat: bool = True
    tf32: bool = False
    jax_preallocate: bool = False
    tf_memory_growth: bool = True
    seed: int = 0


def fairness_env(settings: Settings) -> dict[str, str]:
    """Environment variables that pin framework defaults; a worker sets them before any import."""
    env = {
        "XLA_PYTHON_CLIENT_PREALLOCATE": "true" if settings.jax_preallocate else "false",
        "TF_FORCE_GPU_ALLOW_GROWTH": "true" if settings.tf_memory_growth else "false",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONHASHSEED": str(settings.seed),
        "PYTHONUNBUFFERED": "1",
    }
    if not settings.tf32:
        # honoured by cuBLAS and cuDNN for every framework in the process
        env["NVIDIA_TF32_OVERRIDE"] = "0"
    return env

@dataclass(frozen=True)
class Optimizer:
    name: str = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7
    #: clip the gradient of all trainable tensors together to this L2 norm before the Adam
    #: update, ``g * min(1, c / ||g||)`` (PyTorch ``clip_grad_norm_``, ``optax.clip_by_global_norm``,
    #: Keras ``global_clipnorm``); None: no clipping (and the key stays out of the spec's hash)
    clip_global_norm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["clip_global_norm"] is None:
            del d["clip_global_norm"]
        return d


@dataclass(frozen=True)
class Loss:
    """The reconstruction term summed over features, plus ``beta`` x KL summed over latent dims; both
    averaged over the batch. ``bce_logits``: BCE from the logits; ``mse``: squared error of the
    output activation's (sigmoid's) output, ``(sigmoid(logits) - x)^2``."""

    reconstruction: str = "bce_logits"
    beta: float = 1.0


# ----------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class VAESpec:
    name: str
    input_length: int
    latent_dim: int
    encoder: tuple[Layer, ...]
    decoder: tuple[Layer, ...]
    output_activation: str = "sigmoid"
    #: "exact": the decoder must end at the input length; "crop_or_pad": its flat output is
    #: cropped (trailing positions) or zero-padded (trailing) to the input length
    output_length_policy: str = "exact"
    loss: Loss = Loss()
    optimizer: Optimizer = Optimizer()
    settings: Settings = Settings()
    schema_version: int = SCHEMA_VERSION

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema_version": self.schema_version,
            "name": self.name,
            "input_length": self.input_length,
            "latent_dim": self.latent_dim,
            "encoder": [layer.to_dict() for layer in self.encoder],
            "decoder": [layer.to_dict() for layer in self.decoder],
            "output_activation": self.output_activation,
            "loss": asdict(self.loss),
            "optimizer": self.optimizer.to_dict(),
            "settings": asdict(self.settings),
        }
        if self.output_length_policy != "exact":  # a default stays out, so older specs keep their hash
            d["output_length_policy"] = self.output_length_policy
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def hash(self) -> str:
        """Stable across key order, file format and Python version."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, raw: Any) -> VAESpec:
        if not isinstance(raw, dict):
            raise SpecError(f"a spec must be a mapping, got {type(raw).__name__}")
        known = {"schema_version", "name", "input_length", "latent_dim", "encoder", "decoder",
                 "output_activation", "output_length_policy", "loss", "optimizer", "settings"}
        unknown = set(raw) - known
        if unknown:
            raise SpecError(f"spec: unknown key(s) {sorted(unknown)}; known keys: {sorted(known)}")
        for key in ("name", "input_length", "latent_dim", "encoder", "decoder"):
            if key not in raw:
                raise SpecError(f"spec: missing key {key!r}")
        version = raw.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SpecError(f"spec: schema_version {version} is not supported (this vaebench reads {SCHEMA_VERSION})")
        spec = cls(
            name=str(raw["name"]),
            input_length=raw["input_length"],
            latent_dim=raw["latent_dim"],
            encoder=tuple(Layer.from_dict(x, f"encoder[{i}]") for i, x in enumerate(_as_list(raw["encoder"], "encoder"))),
            decoder=tuple(Layer.from_dict(x, f"decoder[{i}]") for i, x in enumerate(_as_list(raw["decoder"], "decoder"))),
            output_activation=raw.get("output_activation", "sigmoid"),
            output_length_policy=raw.get("output_length_policy", "exact"),
            loss=_sub(Loss, raw.get("loss", {}), "loss"),
            optimizer=_sub(Optimizer, raw.get("optimizer", {}), "optimizer"),
            settings=_sub(Settings, raw.get("settings", {}), "settings"),
        )
        validate(spec)
        return spec

    def with_settings(self, **changes: Any) -> VAESpec:
        return replace(self, settings=replace(self.settings, **changes))

    def with_clip_norm(self, clip: float | None) -> VAESpec:
        """The spec with ``optimizer.clip_global_norm`` set (``--clip-norm``); None leaves it as it is."""
        return self if clip is None else validate(replace(self, optimizer=replace(self.optimizer, clip_global_norm=clip)))

    def leaky_slope(self, layer: Layer) -> float:
        slope = layer.args.get("negative_slope")
        return self.settings.leaky_relu_slope if slope is None else float(slope)


def _as_list(raw: Any, where: str) -> list:
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"spec: {where} must be a non-empty list of layers")
    return raw


def _sub(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise SpecError(f"spec: {where} must be a mapping")
    names = set(cls.__dataclass_fields__)
    unknown = set(raw) - names
    if unknown:
        raise SpecError(f"spec: {where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    return cls(**raw)


def load_spec(path: str | Path) -> VAESpec:
    """Read a spec from a ``.json``, ``.yaml`` or ``.yml`` file."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"spec file {path} does not exist; pass a preset name or an existing .json/.yaml file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line
        raise SpecError(f"spec file {path} could not be parsed: {str(exc).splitlines()[0]}") from None
    return VAESpec.from_dict(raw)


# ------------------------------------------------------------------ shape inference


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
        new = _layer_out(spec, layer, shape, f"encoder[{i}]")
        out.append(LayerShape(f"encoder.{i}", layer, shape, new))
        shape = new
    if len(shape) != 1:
        raise SpecError(f"encoder ends with shape {shape}; add a flatten so the latent heads see a vector")
    for head in ("z_mean", "z_log_var"):
        out.append(LayerShape(head, L("dense", units=spec.latent_dim), shape, (spec.latent_dim,)))
    shape = (spec.latent_dim,)
    for i, layer in enumerate(spec.decoder):
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


def _layer_out(spec: VAESpec, layer: Layer, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    a = layer.args
    t = layer.type
    for key in ("units", "filters", "kernel_size", "pool_size", "size", "stride"):
        if a.get(key) is not None and (not isinstance(a[key], int) or isinstance(a[key], bool) or a[key] <= 0):
            raise SpecError(f"{where} ({t}): {key} must be a positive integer, got {a[key]!r}")
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


def validate(spec: VAESpec) -> VAESpec:
    """Raise SpecError (one line) for anything a build would choke on."""
    if not isinstance(spec.input_length, int) or isinstance(spec.input_length, bool) or spec.input_length <= 0:
        raise SpecError(f"spec {spec.name!r}: input_length must be a positive integer, got {spec.input_length!r}")
    if not isinstance(spec.latent_dim, int) or isinstance(spec.latent_dim, bool) or spec.latent_dim <= 0:
        raise SpecError(f"spec {spec.name!r}: latent_dim must be a positive integer, got {spec.latent_dim!r}")
    if spec.output_activation != "sigmoid":
        raise SpecError(
            f"spec {spec.name!r}: output_activation {spec.output_activation!r} is not supported; "
            "BCE-from-logits needs 'sigmoid'"
        )
    if spec.loss.reconstruction not in LOSSES:
        raise SpecError(f"spec {spec.name!r}: loss.reconstruction {spec.loss.reconstruction!r} is not supported; "
                        f"use one of {', '.join(LOSSES)}")
    if spec.optimizer.name != "adam":
        raise SpecError(f"spec {spec.name!r}: optimizer.name must be 'adam'")
    clip = spec.optimizer.clip_global_norm
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                             or not math.isfinite(clip) or clip <= 0):
        raise SpecError(f"spec {spec.name!r}: optimizer.clip_global_norm must be a positive number "
                        f"(or left out for no clipping), got {clip!r}")
    if spec.output_length_policy not in OUTPUT_LENGTH_POLICIES:
        raise SpecError(f"spec {spec.name!r}: output_length_policy {spec.output_length_policy!r} is not "
                        f"supported; use one of {', '.join(OUTPUT_LENGTH_POLICIES)}")
    if spec.settings.dtype not in ("float32",):
        raise SpecError(f"spec {spec.name!r}: settings.dtype {spec.settings.dtype!r} is not supported; use float32")
    if spec.settings.kernel_init != "glorot_uniform" or spec.settings.bias_init != "zeros":
        raise SpecError(f"spec {spec.name!r}: only kernel_init glorot_uniform and bias_init zeros are implemented")
    if spec.settings.batch_norm_running_var != "biased":
        raise SpecError(f"spec {spec.name!r}: settings.batch_norm_running_var must be 'biased'")
    if spec.decoder[-1].type in ACTIVATIONS:
        raise SpecError(
            f"spec {spec.name!r}: the decoder must end in logits; drop the final {spec.decoder[-1].type}, "
            "output_activation applies it"
        )
    infer_shapes(spec)
    return spec


# ------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: tuple[int, ...]
    trainable: bool


def param_table(spec: VAESpec) -> list[ParamInfo]:
    """Every tensor of the canonical weight layout, in a fixed order.

    Canonical layout (Keras' own): dense ``kernel`` (in, out); conv1d ``kernel``
    (k, in, out); conv_transpose1d ``kernel`` (k, out, in); batch_norm ``gamma``,
    ``beta`` (trainable), ``moving_mean``, ``moving_variance`` (not trainable). A
    flattened (length, channels) tensor is read row-major, channel fastest.
    """
    params: list[ParamInfo] = []
    for ls in _leaves(spec, infer_shapes(spec)):
        t, a = ls.layer.type, ls.layer.args
        if t == "dense":
            params += [ParamInfo(f"{ls.name}.kernel", (ls.in_shape[0], a["units"]), True),
                       ParamInfo(f"{ls.name}.bias", (a["units"],), True)]
        elif t == "conv1d":
            params += [ParamInfo(f"{ls.name}.kernel", (a["kernel_size"], ls.in_shape[1], a["filters"]), True),
                       ParamInfo(f"{ls.name}.bias", (a["filters"],), True)]
        elif t == "conv_transpose1d":
            params += [ParamInfo(f"{ls.name}.kernel", (a["kernel_size"], a["filters"], ls.in_shape[1]), True),
                       ParamInfo(f"{ls.name}.bias", (a["filters"],), True)]
        elif t == "batch_norm":
            c = (ls.in_shape[-1],)
            params += [ParamInfo(f"{ls.name}.gamma", c, True), ParamInfo(f"{ls.name}.beta", c, True),
                       ParamInfo(f"{ls.name}.moving_mean", c, False),
                       ParamInfo(f"{ls.name}.moving_variance", c, False)]
    return params


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


# --------------------------------------------------------------------------- k-mers


def canonical_kmer_count(k: int) -> int:
    """Number of canonical k-mers (a k-mer and its reverse complement counted once).

    4^k/2 for odd k; for even k the 4^(k/2) palindromes are their own reverse
    complement: (4^k + 4^(k/2))/2.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise SpecError(f"--kmer must be a positive integer (for example 7), got {k!r}")
    if k > 15:
        raise SpecError(f"--kmer {k} gives {4**k // 2:,} features; vaebench supports k up to 15")
    return 4**k // 2 if k % 2 else (4**k + 4 ** (k // 2)) // 2
