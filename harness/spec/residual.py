"""The ``residual`` layer opened up: its inner layers, its skip and its activation, with nested names.

A residual is one entry of ``infer_shapes`` (its in and out shape); what it holds is named below it:
``encoder.3.inner.0`` for the first inner layer, ``encoder.3.skip`` for a 1x1 conv skip,
``encoder.3.activation`` for the activation after the sum. ``schema._residual`` validates it.
"""

from __future__ import annotations

from harness.spec.layers import L, Layer
from harness.spec.schema import VAESpec
from harness.spec.shapes import LayerShape, _residual, infer_shapes


def residual_parts(spec: VAESpec, ls: LayerShape) -> tuple[list[LayerShape], LayerShape | None, Layer | None]:
    """A validated residual's inner layers and skip, named ``encoder.3.inner.0`` / ``encoder.3.skip``,
    and its activation as a layer (None: no activation)."""
    inner, skip, _ = _residual(spec, ls.layer, ls.in_shape, ls.name, ls.name)
    act = ls.layer.args["activation"]
    return inner, skip, None if act is None else L(act)


def flat_shapes(spec: VAESpec) -> list[LayerShape]:
    """``infer_shapes`` with each residual opened up: its inner layers, its skip, the sum (the residual's own
    entry) and its activation (``encoder.3.activation``), in the order they run."""
    out: list[LayerShape] = []
    for ls in infer_shapes(spec):
        if ls.layer.type != "residual":
            out.append(ls)
            continue
        inner, skip, act = residual_parts(spec, ls)
        out += [*inner, *([skip] if skip else []), ls]
        if act is not None:
            out.append(LayerShape(f"{ls.name}.activation", act, ls.out_shape, ls.out_shape))
    return out


__all__ = ["flat_shapes", "residual_parts"]
