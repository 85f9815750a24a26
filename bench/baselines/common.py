"""What the three baselines share: which specs they build, their batches and their clock.

Nothing here touches a framework. The window rule is the harness's
(``harness.run.schedule``), passed in by the caller so that a baseline never
imports the harness's run code; the defaults below repeat it for a direct call.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.data import make_source
from harness.spec.schema import VAESpec

#: spec layer types a baseline builds: the fully connected presets (``dense``)
SUPPORTED = ("dense", "batch_norm", "relu", "leaky_relu", "gelu", "sigmoid")


class UnsupportedSpec(ValueError):
    """A spec with layers the textbook baselines do not build (convolutions, reshapes)."""


@dataclass(frozen=True)
class Block:
    """One spec layer as a textbook model needs it: its type, input width and arguments."""

    type: str
    width: int  # features going in (for dense and batch_norm)
    units: int = 0  # dense only
    slope: float = 0.0  # leaky_relu only


def blocks(spec: VAESpec, part: str) -> list[Block]:
    """The encoder's or decoder's layers with their input widths; fails on any layer type a
    fully connected textbook VAE does not have."""
    layers = spec.encoder if part == "encoder" else spec.decoder
    width = spec.input_length if part == "encoder" else spec.latent_dim
    out = []
    for i, layer in enumerate(layers):
        if layer.type not in SUPPORTED:
            raise UnsupportedSpec(f"{part}[{i}] is {layer.type}: the textbook baselines build fully connected specs "
                                  f"only (preset dense; layers {', '.join(SUPPORTED)})")
        if layer.type == "dense":
            out.append(Block("dense", width, units=int(layer.args["units"])))
            width = int(layer.args["units"])
        elif layer.type == "leaky_relu":
            out.append(Block("leaky_relu", width, slope=spec.leaky_slope(layer)))
        else:
            out.append(Block(layer.type, width))
    return out


def encoder_width(spec: VAESpec) -> int:
    """Features going into the two latent heads."""
    units = [b.units for b in blocks(spec, "encoder") if b.type == "dense"]
    return units[-1] if units else spec.input_length


def check_output(spec: VAESpec) -> None:
    if spec.output_activation not in (None, "sigmoid") or spec.loss.reconstruction != "bce_logits":
        raise UnsupportedSpec("the textbook baselines train BCE from logits with a sigmoid output only")
    blocks(spec, "encoder")
    dec = blocks(spec, "decoder")
    last = [b for b in dec if b.type == "dense"]
    if not last or last[-1].units != spec.input_length:
        raise UnsupportedSpec("the decoder must end in a dense layer of the input length")


def schedule(steps: int, warmup: int | None, steps_per_window: int | None) -> tuple[int, int]:
    """Warm-up steps (compile step included) and steps per window: the harness's rule unless given."""
    if warmup is None:
        warmup = 1 + max(4, min(20, steps // 10))
    if steps_per_window is None:
        steps_per_window = max(1, steps // 20)
    return warmup, max(1, min(steps_per_window, steps))


def host_batches(spec: VAESpec, kmer: int, batch: int) -> list[np.ndarray]:
    """One pass over the same synthetic profiles a cell trains on (``harness.data``), as float32
    batches in host memory; a loop cycles through them, as an epoch loop over a dataset does."""
    source = make_source(kmer, batch, seed=spec.settings.seed, width=spec.input_length)
    if source.width != spec.input_length:
        raise UnsupportedSpec(f"k={kmer} gives {source.width} features, the spec wants {spec.input_length}")
    n = max(1, source.data.shape[0] // batch)
    return [source.next() for _ in range(n)]


def result(window_times_s: list[float], params: int, **extra: Any) -> dict[str, Any]:
    """What every baseline returns: per-step seconds of each window, their median, the parameter count."""
    return {"median_s": float(statistics.median(window_times_s)), "window_times_s": window_times_s,
            "params": int(params), **extra}


def main(run) -> None:
    """``python -m bench.baselines.MODULE --spec dense --kmer 5 --batch 64 --steps 200 --precision bf16``: one run,
    as JSON. ``--precision`` sets the spec's ``settings.precision`` (as ``bench baseline --precision`` does)."""
    import argparse
    import json

    from harness.spec.presets import resolve_spec
    from harness.spec.schema import PRECISIONS

    p = argparse.ArgumentParser(description="one textbook baseline run, printed as JSON")
    p.add_argument("--spec", default="dense")
    p.add_argument("--kmer", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="what the step computes in (default: the spec's own, fp32 for the presets)")
    args = p.parse_args()
    spec = resolve_spec(args.spec, kmer=args.kmer)
    if args.precision is not None:
        spec = spec.with_settings(precision=args.precision, tf32=args.precision == "tf32")
    print(json.dumps({"precision": spec.settings.precision, **run(spec, args.kmer, args.batch, args.steps)}, indent=2))
