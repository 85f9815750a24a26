"""The spec's numbers and switches: their types and ranges, checked before any build sees them.

Why here and not in each build: the builds disagree on bad values. Flax trained ``lr: -0.001`` and reported
"ok" while PyTorch's Adam refused it in its worker; ``lr: "fast"``, ``beta1: 5``, ``seed: "abc"`` and
``loss.beta: .nan`` reached a worker and failed there (exit 1, a row per cell) instead of as one line and exit
2. A spec that one build would refuse is refused for all of them, by this table, in the parent.

Each field names its kind and its range; the error names the field, the value and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.spec.layers import Layer, SpecError

if TYPE_CHECKING:
    from harness.spec.schema import VAESpec

#: seeds go to numpy, torch.manual_seed, jax.random.key and keras.utils.set_random_seed. Measured: numpy's
#: ``np.random.seed`` (which Keras' call makes) refuses 2^32 and above, and ``jax.random.key(2**32)`` silently
#: gives seed 0's key (it keeps the low 32 bits), so a seed must be below 2^32 to mean the same in every build
SEED_LIMIT = 2**32


@dataclass(frozen=True)
class Range:
    """Where a real-valued field may lie; None: unbounded on that side."""

    low: float | None = None
    low_ok: bool = False
    high: float | None = None
    high_ok: bool = False

    def holds(self, value: float) -> bool:
        too_low = self.low is not None and (value < self.low or (value == self.low and not self.low_ok))
        too_high = self.high is not None and (value > self.high or (value == self.high and not self.high_ok))
        return not (too_low or too_high)

    def describe(self) -> str:
        """' >= 0 and < 1', ' > 0', or '' for an unbounded field (the leading space joins the sentence)."""
        parts = []
        if self.low is not None:
            parts.append(f"{'>=' if self.low_ok else '>'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<=' if self.high_ok else '<'} {self.high:g}")
        return (" " + " and ".join(parts)) if parts else ""


POSITIVE = Range(low=0.0)
FRACTION = Range(low=0.0, low_ok=True, high=1.0)  # [0, 1): Adam's betas, a decay
ANY = Range()

#: (section, field) -> its range
REAL_RANGES: dict[tuple[str, str], Range] = {
    ("optimizer", "lr"): POSITIVE,
    ("optimizer", "beta1"): FRACTION,
    ("optimizer", "beta2"): FRACTION,
    ("optimizer", "eps"): POSITIVE,
    ("loss", "beta"): Range(low=0.0, low_ok=True),
    ("settings", "batch_norm_momentum"): FRACTION,
    ("settings", "batch_norm_epsilon"): POSITIVE,
    ("settings", "group_norm_epsilon"): POSITIVE,
    ("settings", "leaky_relu_slope"): ANY,
}
BOOLEANS = ("gelu_approximate", "adam_epsilon_hat", "tf32", "jax_preallocate", "tf_memory_growth")
#: a layer's real-valued arguments and their ranges
LAYER_REALS: dict[str, Range] = {"negative_slope": ANY, "epsilon": POSITIVE}


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


def check_real(where: str, value: Any, allowed: Range) -> None:
    """A finite real number (not a bool, not a string) within ``allowed``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{where} must be a finite number{allowed.describe()}, got {value!r}")
    if not allowed.holds(value):
        raise SpecError(f"{where} must be{allowed.describe()}, got {value!r}")
