"""The composite layers opened up: a ``residual``'s inner layers, skip and activation, and an
``attention1d``'s norm, projections, scores and softmax, with nested names.

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


def attention_parts(ls: LayerShape) -> list[LayerShape]:
    """An attention1d's steps before its residual add, in the order they run: ``.norm`` (group_norm),
    ``.q``, ``.k``, ``.v`` (1x1 convs), ``.scores`` (q k^T, (L, L) per sample), ``.softmax`` ((L, L)),
    ``.context`` (the scores times v, (L, C)) and ``.proj`` (a 1x1 conv). ``scores``, ``softmax`` and
    ``context`` are pseudo-layers: no spec writes them, FLOPs and preflight count them."""
    (length, c), a = ls.in_shape, ls.layer.args
    conv = lambda part: LayerShape(f"{ls.name}.{part}", L("conv1d", filters=c, kernel_size=1), (length, c), (length, c))  # noqa: E731
    return [LayerShape(f"{ls.name}.norm", L("group_norm", groups=a["groups"]), (length, c), (length, c)),
            conv("q"), conv("k"), conv("v"),
            LayerShape(f"{ls.name}.scores", L("attention_scores"), (length, c), (length, length)),
            LayerShape(f"{ls.name}.softmax", L("softmax"), (length, length), (length, length)),
            LayerShape(f"{ls.name}.context", L("attention_context"), (length, length), (length, c)),
            conv("proj")]


def flat_shapes(spec: VAESpec) -> list[LayerShape]:
    """``infer_shapes`` with each composite opened up, in the order they run: a residual's inner layers, its
    skip, the sum (the residual's own entry) and its activation (``encoder.3.activation``); an attention's
    ``attention_parts``, then its residual add (its own entry)."""
    out: list[LayerShape] = []
    for ls in infer_shapes(spec):
        if ls.layer.type == "attention1d":
            out += [*attention_parts(ls), ls]
            continue
        if ls.layer.type != "residual":
            out.append(ls)
            continue
        inner, skip, act = residual_parts(spec, ls)
        out += [*inner, *([skip] if skip else []), ls]
        if act is not None:
            out.append(LayerShape(f"{ls.name}.activation", act, ls.out_shape, ls.out_shape))
    return out


__all__ = ["attention_parts", "flat_shapes", "residual_parts"]
