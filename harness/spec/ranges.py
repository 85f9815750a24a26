"""The spec's numbers and switches: their types and ranges, checked before any build sees them.

Why here and not in each build: the builds disagree on bad values. Flax trained ``lr: -0.001`` and reported
"ok" while PyTorch's Adam refused it in its worker; ``lr: "fast"``, ``beta1: 5``, ``seed: "abc"`` and
``loss.beta: .nan`` reached a worker and failed there (exit 1, a row per cell) instead of as one line and exit
2. A spec that one build would refuse is refused for all of them, by this table, in the parent.

Each field names its kind and its range; the error names the field, the value and what is allowed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from harness.spec.layers import Layer, SpecError

if TYPE_CHECKING:
    from harness.spec.schema import VAESpec

#: seeds go to numpy, torch.manual_seed, jax.random.key and keras.utils.set_random_seed: every one of them
#: takes a non-negative integer below 2^31 (jax's key, without x64, wraps a larger one)
SEED_LIMIT = 2**31

#: (section, field) -> (lowest, lowest allowed?, highest, highest allowed?); None: unbounded on that side
REAL_RANGES: dict[tuple[str, str], tuple[float | None, bool, float | None, bool]] = {
    ("optimizer", "lr"): (0.0, False, None, False),
    ("optimizer", "beta1"): (0.0, True, 1.0, False),
    ("optimizer", "beta2"): (0.0, True, 1.0, False),
    ("optimizer", "eps"): (0.0, False, None, False),
    ("loss", "beta"): (0.0, True, None, False),
    ("settings", "batch_norm_momentum"): (0.0, True, 1.0, False),
    ("settings", "batch_norm_epsilon"): (0.0, False, None, False),
    ("settings", "group_norm_epsilon"): (0.0, False, None, False),
    ("settings", "leaky_relu_slope"): (None, False, None, False),
}
BOOLEANS = ("gelu_approximate", "adam_epsilon_hat", "tf32", "jax_preallocate", "tf_memory_growth")
#: a layer's real-valued arguments and their ranges (the same tuple as above)
LAYER_REALS: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "negative_slope": (None, False, None, False),
    "epsilon": (0.0, False, None, False),
}


def check_ranges(spec: VAESpec) -> None:
    """Raise SpecError (one line) for the first field of the wrong type or out of its range."""
    where = f"spec {spec.name!r}"
    for (section, name), bounds in REAL_RANGES.items():
        value = getattr(getattr(spec, section), name)
        check_real(f"{where}: {section}.{name}", value, bounds)
    for name in BOOLEANS:
        value = getattr(spec.settings, name)
        if not isinstance(value, bool):
            raise SpecError(f"{where}: settings.{name} must be true or false, got {value!r}")
    seed = spec.settings.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise SpecError(f"{where}: settings.seed must be an integer from 0 to {SEED_LIMIT - 1}, got {seed!r}")
    for section, layers in (("encoder", spec.encoder), ("decoder", spec.decoder)):
        for i, layer in enumerate(layers):
            _check_layer(f"{where}: {section}[{i}]", layer)


def _check_layer(where: str, layer: Layer) -> None:
    for name, bounds in LAYER_REALS.items():
        value = layer.args.get(name)
        if value is not None:
            check_real(f"{where} ({layer.type}).{name}", value, bounds)
    if layer.type == "residual":
        for j, inner in enumerate(layer.args["layers"]):
            _check_layer(f"{where}.layers[{j}]", inner)


def check_real(where: str, value: Any, bounds: tuple[float | None, bool, float | None, bool]) -> None:
    """A finite real number (not a bool, not a string) within ``bounds``."""
    low, low_ok, high, high_ok = bounds
    allowed = _describe(bounds)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{where} must be a finite number{allowed}, got {value!r}")
    too_low = low is not None and (value < low or (value == low and not low_ok))
    too_high = high is not None and (value > high or (value == high and not high_ok))
    if too_low or too_high:
        raise SpecError(f"{where} must be{allowed}, got {value!r}")


def _describe(bounds: tuple[float | None, bool, float | None, bool]) -> str:
    """' >= 0 and < 1', ' > 0', or '' for an unbounded field (the leading space joins the sentence)."""
    low, low_ok, high, high_ok = bounds
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_ok else '>'} {low:g}")
    if high is not None:
        parts.append(f"{'<=' if high_ok else '<'} {high:g}")
    return (" " + " and ".join(parts)) if parts else ""
