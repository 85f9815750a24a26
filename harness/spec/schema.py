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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from harness.files import not_regular
from harness.spec.layers import (
    ACTIVATIONS,
    KL_NORMALISATIONS,
    LATENT_HEADS,
    LOSSES,
    OUTPUT_LENGTH_POLICIES,
    Layer,
    SpecError,
)
from harness.spec.ranges import check_ranges
from harness.spec.shapes import infer_shapes

SCHEMA_VERSION = 1

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
    * ``group_norm_epsilon``: Keras 1e-3, PyTorch 1e-5, Flax 1e-6 (AutoencoderKL's 1e-6 here); a
      ``group_norm`` or ``attention1d`` layer's own ``epsilon`` overrides it. A spec without either layer
      leaves it out of its dictionary, so the specs written before it keep their hash.
    * ``adam_epsilon_hat``: PyTorch and Optax add epsilon to sqrt(v_hat); Keras adds
      it to sqrt(v) after folding the bias correction into the learning rate.
    * ``kernel_init``/``bias_init``: PyTorch defaults to Kaiming-uniform, Keras and
      Flax to Glorot-uniform and LeCun-normal.
    * ``tf32``: PyTorch matmul and TensorFlow default to TF32 on Ampere and newer; JAX
      defaults to reduced-precision matmuls on GPU. Off unless asked for.
    * ``precision``: what the step computes in (``PRECISIONS``). ``fp32``; ``tf32`` (float32 with TF32 matmuls
      and convolutions: the same as ``tf32: true``, which it implies); ``bf16``, mixed precision each framework's
      own way (torch ``autocast``, Flax NNX module ``dtype``, the Keras ``mixed_bfloat16`` policy) over float32
      master weights and Adam state, with what stays in float32 pinned by ``BF16_FLOAT32_OPS``. A spec in fp32
      or tf32 leaves it out of its dictionary (``tf32`` already says it), so the specs written before it keep
      their hash.
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
    group_norm_epsilon: float = 1e-6
    adam_epsilon_hat: bool = True
    tf32: bool = False
    jax_preallocate: bool = False
    tf_memory_growth: bool = True
    seed: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        # ``tf32: true`` is the tf32 precision and the tf32 precision turns TF32 on: one fact, two spellings
        if self.tf32 is True and self.precision == "fp32":
            object.__setattr__(self, "precision", "tf32")
        elif self.precision == "tf32" and self.tf32 is False:
            object.__setattr__(self, "tf32", True)

    @property
    def bf16(self) -> bool:
        """Whether the step computes in bfloat16 (mixed precision over float32 master weights)."""
        return self.precision == "bf16"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["precision"] != "bf16":  # fp32 and tf32 say it with ``tf32``: older specs keep their hash
            del d["precision"]
        return d


#: the step's precisions (``Settings.precision``), in the order a matrix lists them
PRECISIONS = ("fp32", "tf32", "bf16")
#: what a bf16 step keeps in float32 in every build, so that no framework's own default decides it (the spec
#: pins it; ``docs/precision.md`` lists what each framework does without it): the master weights and Adam's state,
#: the loss and the KL (the logits, z_mean and z_log_var are cast up before they are reduced), the BatchNorm and
#: GroupNorm statistics, the attention softmax, the sampling (mu + sigma * eps), and the bias gradients (a sum over
#: the batch: torch reduces in float32 itself, XLA on a CPU rounds after every add, so the Flax and Keras builds add
#: their biases in float32)
BF16_FLOAT32_OPS = ("weights", "adam state", "loss", "kl", "batch norm statistics", "group norm statistics",
                    "softmax", "sampling", "bias gradients")


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
    """The reconstruction term summed over features, plus ``beta`` x KL summed over latent elements; both
    averaged over the batch. ``bce_logits``: BCE from the logits; ``mse``: squared error of the
    output activation's (sigmoid's) output, ``(sigmoid(logits) - x)^2``; ``masked_bce``: BCE of the
    clipped sigmoid output on the masked block only, averaged over its positions (needs a ``masking``
    layer). ``kl_normalisation: features`` divides the KL by the input length (seed 004)."""

    reconstruction: str = "bce_logits"
    beta: float = 1.0
    kl_normalisation: str = "batch"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["kl_normalisation"] == "batch":  # the default stays out, so older specs keep their hash
            del d["kl_normalisation"]
        return d


@dataclass(frozen=True)
class LatentHeads:
    """How the encoder's output becomes the Gaussian's mean and log-variance: two dense layers of
    ``latent_dim`` units on a flat output, or two "same" conv1d layers of ``latent_dim`` channels and
    ``kernel_size`` on a (length, channels) one (one conv to 2 x latent_dim channels, split in two)."""

    type: str = "dense"
    kernel_size: int = 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    latent_heads: LatentHeads = LatentHeads()
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
            "loss": self.loss.to_dict(),
            "optimizer": self.optimizer.to_dict(),
            "settings": self.settings.to_dict(),
        }
        # defaults added after the first presets stay out, so the specs written before them keep their hash
        if self.output_length_policy != "exact":
            d["output_length_policy"] = self.output_length_policy
        if self.latent_heads != LatentHeads():
            d["latent_heads"] = self.latent_heads.to_dict()
        if not self.uses_group_norm():
            del d["settings"]["group_norm_epsilon"]
        return d

    def uses_group_norm(self) -> bool:
        """Whether any layer (a residual's inner ones included) normalises by groups."""
        def walk(layers) -> bool:
            return any(x.type in ("group_norm", "attention1d") or (x.type == "residual" and walk(x.args["layers"]))
                       for x in layers)
        return walk(self.encoder) or walk(self.decoder)

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
                 "output_activation", "output_length_policy", "latent_heads", "loss", "optimizer", "settings"}
        unknown = set(raw) - known
        if unknown:
            raise SpecError(f"spec: unknown key(s) {sorted(unknown)}; known keys: {sorted(known)}")
        for key in ("name", "input_length", "latent_dim", "encoder", "decoder"):
            if key not in raw:
                raise SpecError(f"spec: missing key {key!r}")
        version = raw.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION or isinstance(version, bool):
            hint = f"write the number {SCHEMA_VERSION}, not a string" if str(version) == str(SCHEMA_VERSION) else \
                f"this vaebench reads {SCHEMA_VERSION}"
            raise SpecError(f"spec: schema_version {version!r} is not supported ({hint})")
        spec = cls(
            name=str(raw["name"]),
            input_length=raw["input_length"],
            latent_dim=raw["latent_dim"],
            encoder=tuple(Layer.from_dict(x, f"encoder[{i}]") for i, x in enumerate(_as_list(raw["encoder"], "encoder"))),
            decoder=tuple(Layer.from_dict(x, f"decoder[{i}]") for i, x in enumerate(_as_list(raw["decoder"], "decoder"))),
            output_activation=raw.get("output_activation", "sigmoid"),
            output_length_policy=raw.get("output_length_policy", "exact"),
            latent_heads=_sub(LatentHeads, raw.get("latent_heads", {}), "latent_heads"),
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

    def group_norm_epsilon(self, layer: Layer) -> float:
        """A ``group_norm`` or ``attention1d`` layer's epsilon: its own, else the pinned setting."""
        eps = layer.args.get("epsilon")
        return self.settings.group_norm_epsilon if eps is None else float(eps)

    @property
    def masking(self) -> Layer | None:
        """The input ``masking`` layer (always the encoder's first), or None."""
        return self.encoder[0] if self.encoder[0].type == "masking" else None


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
    kind = not_regular(path)
    if kind == "missing":
        raise SpecError(f"spec file {path} does not exist; pass a preset name or an existing .json/.yaml file")
    if kind:
        raise SpecError(f"spec file {path} is {kind}, not a regular file; pass a preset name or a .json/.yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON or "
                        "YAML") from None
    except OSError as exc:
        raise SpecError(f"spec file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line
        raise SpecError(f"spec file {path} could not be parsed: {str(exc).splitlines()[0]}") from None
    return VAESpec.from_dict(raw)


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
    if spec.loss.kl_normalisation not in KL_NORMALISATIONS:
        raise SpecError(f"spec {spec.name!r}: loss.kl_normalisation {spec.loss.kl_normalisation!r} is not "
                        f"supported; use one of {', '.join(KL_NORMALISATIONS)}")
    if spec.loss.reconstruction == "masked_bce" and spec.masking is None:
        raise SpecError(f"spec {spec.name!r}: loss masked_bce scores the masked block only, so the encoder "
                        "must start with a masking layer ({type: masking, blocks: [...]}); or use bce_logits")
    if spec.latent_heads.type not in LATENT_HEADS:
        raise SpecError(f"spec {spec.name!r}: latent_heads.type {spec.latent_heads.type!r} is not supported; "
                        f"use one of {', '.join(LATENT_HEADS)}")
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
    if spec.settings.precision not in PRECISIONS:
        raise SpecError(f"spec {spec.name!r}: settings.precision {spec.settings.precision!r} is not supported; "
                        f"use one of {', '.join(PRECISIONS)}")
    if spec.settings.dtype not in ("float32",):
        raise SpecError(f"spec {spec.name!r}: settings.dtype {spec.settings.dtype!r} is not supported; use float32 "
                        "(the master weights; settings.precision: bf16 computes in bfloat16 over them)")
    if spec.settings.kernel_init != "glorot_uniform" or spec.settings.bias_init != "zeros":
        raise SpecError(f"spec {spec.name!r}: only kernel_init glorot_uniform and bias_init zeros are implemented")
    if spec.settings.batch_norm_running_var != "biased":
        raise SpecError(f"spec {spec.name!r}: settings.batch_norm_running_var must be 'biased'")
    check_ranges(spec)
    if spec.decoder[-1].type in ACTIVATIONS:
        raise SpecError(
            f"spec {spec.name!r}: the decoder must end in logits; drop the final {spec.decoder[-1].type}, "
            "output_activation applies it"
        )
    infer_shapes(spec)
    return spec


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
