"""FLOPs of one training step, counted from the spec's shapes: arithmetic only, no framework.

**Convention** (``CONVENTION`` is stored in every row beside the figures):

* A multiply-add is **2 FLOPs**. A dense layer does ``in × out`` multiply-adds per sample; a
  ``conv1d`` ("same" padding) does ``out_length × kernel × in_channels × out_channels`` per sample
  (``out_length`` = ``ceil(length / stride)``), a ``conv_transpose1d`` ``in_length × kernel ×
  in_channels × out_channels`` (each input position scatters ``kernel`` taps; the positions the
  "same" trim drops are counted), padded positions included (as cuDNN and XLA compute them).
* **Backward = 2 × forward** for every layer with weights (the input gradient and the weight
  gradient are each one product the size of the forward one), so such a layer costs
  **3 × forward** per step. The rule is applied to every weighted layer alike, the first one
  included, although no framework computes the gradient of the input batch: ``FlopCount.overcount``
  says how many FLOPs that is (for ``dense`` the first layer's input gradient, about 15% of the
  step's matmul FLOPs).
* **matmul** is the dense and conv products above (their multiply-adds only, not the bias); MFU is
  the achieved matmul FLOP rate over the device's measured float32 matmul rate.
* **Elementwise work** is counted too, per element of the layer's output unless stated; an
  ``exp``, ``log``, ``erf`` or square root counts as **one FLOP**, a copy (pooling's gradient
  routing, nearest upsampling, reshape, flatten) as none:

  ==================  =======  ========  ==============================================================
  work                forward  backward  notes
  ==================  =======  ========  ==============================================================
  bias                1        1         backward: the bias gradient's sum over the batch
  batch_norm          8        12        mean 1, variance 3, normalise 2, scale and shift 2; backward:
                                         beta and gamma gradients 3, input gradient 9; per-channel
                                         work (rsqrt, running statistics) not counted
  relu                1        1
  leaky_relu          2        2
  sigmoid (hidden)    4        3         1 / (1 + exp(-x)); backward s (1 - s) g
  gelu (erf form)     5        8         0.5 x (1 + erf(x / sqrt 2)); backward adds the Gaussian pdf
  group_norm          8        12        as batch_norm, per group instead of per channel
  silu                5        5         x sigmoid(x); backward s (1 + x (1 - s)) g
  selu                4        3         compare, exp, scale, select; backward the same branch
  masking             1        0         a select per input element; the input needs no gradient
  softmax             5        4         max, subtract, exp, sum, divide (attention, per score);
                                         backward y (g - sum(g y))
  max_pool1d          p - 1    0         comparisons per output element; backward routes (a copy)
  upsample1d          0        s - 1     backward sums the s copies' gradients, per input element
  sampling            4        5         per latent element: z = mu + exp(0.5 lv) eps
  BCE from logits     10       6         per output element, stable form, sum included; backward
                                         (sigmoid(x) - y) scaled
  masked BCE          12       6         per output element (all are computed, then masked): sigmoid,
                                         clip, two logs, the mask's product, the sum
  KL                  6        5         per latent element, sum included
  Adam                12 per trainable parameter: m 3, v 4, sqrt 1, + eps 1, divide 1, rate 1,
                      subtract 1 (the bias corrections are per-step scalars)
  ==================  =======  ========  ==============================================================

  An ``attention1d`` counts its parts (``harness.spec.residual.attention_parts``): its group_norm,
  the q, k, v and output 1x1 convs as convs, the scores ``q k^T`` and the context ``softmax · v``
  as matmul (``L × L × C`` multiply-adds each per sample, backward 2 × forward: the gradients
  of both operands), the softmax per score, and the residual add as a bias. Conv1d latent heads
  are convs; sampling and KL count every latent element (``L' × C`` of them).

  The decoder's sigmoid is not counted: the loss takes the logits, and the training step never
  applies it. BatchNorm's running-statistic updates and the loss's batch mean are per channel or
  per sample, below 0.1% of any preset's step, and left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.spec.params import count_params
from harness.spec.residual import flat_shapes
from harness.spec.schema import VAESpec
from harness.spec.shapes import latent_shape

#: bump when a constant below changes, so stored figures say which count they used
FLOP_CONVENTION_VERSION = 1  # v1's constants are unchanged; the new layers' ones were added beside them
CONVENTION = (f"v{FLOP_CONVENTION_VERSION}: 2 FLOPs per multiply-add; backward = 2 x forward for dense and conv "
              "layers (3 x per step, the first layer's unneeded input gradient included); elementwise, loss and "
              "Adam (12/parameter) per harness/spec/flops.py; MFU uses the matmul (dense + conv) part")

#: (forward, backward) FLOPs per element of the layer's output (see the module docstring)
ELEMENTWISE: dict[str, tuple[int, int]] = {
    "bias": (1, 1),
    "batch_norm": (8, 12),
    "relu": (1, 1),
    "leaky_relu": (2, 2),
    "sigmoid": (4, 3),
    "gelu": (5, 8),
    "group_norm": (8, 12),
    "silu": (5, 5),
    "selu": (4, 3),
    "masking": (1, 0),
    "softmax": (5, 4),
    "sampling": (4, 5),
    "bce_logits": (10, 6),
    "mse": (7, 6),
    "masked_bce": (12, 6),
    "kl": (6, 5),
}
ADAM_FLOPS_PER_PARAM = 12
WEIGHTED = ("dense", "conv1d", "conv_transpose1d")


@dataclass(frozen=True)
class LayerFlops:
    """One layer's FLOPs at the step's batch; ``matmul_*`` is the part that is a dense or conv product."""

    name: str  # canonical name ("encoder.0", "z_mean"), or "sampling", "loss", "adam"
    kind: str  # the layer type, or "sampling", "loss", "optimizer"
    forward: int
    backward: int
    matmul_forward: int = 0
    matmul_backward: int = 0
    #: the optimizer's update (Adam's only)
    update: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.backward + self.update

    @property
    def matmul(self) -> int:
        return self.matmul_forward + self.matmul_backward

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "forward": self.forward, "backward": self.backward,
                "update": self.update, "matmul": self.matmul, "total": self.total}


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one training step (forward, backward, Adam update) at ``batch``."""

    batch: int
    by_layer: tuple[LayerFlops, ...]
    #: FLOPs the 3x rule counts that no framework performs: the first weighted layer's input gradient
    overcount: int = 0

    @property
    def forward(self) -> int:
        return sum(x.forward for x in self.by_layer)

    @property
    def backward(self) -> int:
        return sum(x.backward for x in self.by_layer)

    @property
    def update(self) -> int:
        return sum(x.update for x in self.by_layer)

    @property
    def total(self) -> int:
        return self.forward + self.backward + self.update

    @property
    def matmul(self) -> int:
        """Dense and conv multiply-adds, forward and backward: the part MFU is about."""
        return sum(x.matmul for x in self.by_layer)

    @property
    def elementwise(self) -> int:
        return self.total - self.matmul

    def to_dict(self, layers: bool = False) -> dict[str, object]:
        d: dict[str, object] = {"per_step": self.total, "matmul_per_step": self.matmul,
                                "forward": self.forward, "backward": self.backward, "update": self.update,
                                "overcount": self.overcount, "batch": self.batch, "convention": CONVENTION}
        if layers:
            d["by_layer"] = [x.to_dict() for x in self.by_layer]
        return d


def _layer(name: str, kind: str, batch: int, macs: int, out_elems: int, per_elem: tuple[int, int],
           ) -> LayerFlops:
    """``macs`` and ``out_elems`` per sample; ``per_elem`` the elementwise (forward, backward) constants."""
    mm_fwd = 2 * macs * batch
    ew_fwd, ew_bwd = per_elem[0] * out_elems * batch, per_elem[1] * out_elems * batch
    return LayerFlops(name, kind, mm_fwd + ew_fwd, 2 * mm_fwd + ew_bwd, mm_fwd, 2 * mm_fwd)


def step_flops(spec: VAESpec, batch: int) -> FlopCount:
    """FLOPs of one Adam training step of ``spec`` at ``batch`` (see the module docstring)."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch <= 0:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    layers: list[LayerFlops] = []
    overcount = 0
    trainable_seen = False  # once a layer with weights has run, the gradient of its output is needed
    for ls in flat_shapes(spec):  # a residual's inner layers, skip and activation each count; its sum is an add
        t, a = ls.layer.type, ls.layer.args
        out_elems, in_elems = math.prod(ls.out_shape), math.prod(ls.in_shape)
        if t == "dense":
            macs = ls.in_shape[0] * a["units"]
        elif t == "conv1d":  # one product per output position: ceil(L / s) of them with a stride
            macs = ls.out_shape[0] * a["kernel_size"] * ls.in_shape[1] * a["filters"]
        elif t == "conv_transpose1d":  # each input position scatters k taps: L of them, L * s outputs
            macs = ls.in_shape[0] * a["kernel_size"] * ls.in_shape[1] * a["filters"]
        if t in WEIGHTED:
            layers.append(_layer(ls.name, t, batch, macs, out_elems, ELEMENTWISE["bias"]))
            if not trainable_seen and ls.name.startswith("encoder."):
                overcount = 2 * macs * batch  # the input batch's gradient, which nobody computes
            trainable_seen = True
        elif t in ELEMENTWISE:
            layers.append(_layer(ls.name, t, batch, 0, out_elems, ELEMENTWISE[t]))
            trainable_seen |= t in ("batch_norm", "group_norm")
        elif t == "max_pool1d":
            layers.append(LayerFlops(ls.name, t, (in_elems - out_elems) * batch, 0))
        elif t == "upsample1d":
            layers.append(LayerFlops(ls.name, t, 0, (out_elems - in_elems) * batch))
        elif t in ("attention_scores", "attention_context"):  # q k^T over C, then the scores times v over L
            macs = ls.out_shape[0] * ls.out_shape[1] * (ls.in_shape[1] if t == "attention_scores" else ls.in_shape[0])
            layers.append(_layer(ls.name, t, batch, macs, 0, (0, 0)))
        elif t in ("residual", "attention1d"):  # the residual add
            layers.append(_layer(ls.name, t, batch, 0, out_elems, ELEMENTWISE["bias"]))
        else:  # flatten, reshape: views
            layers.append(LayerFlops(ls.name, t, 0, 0))
    latent, length = math.prod(latent_shape(spec)), spec.input_length
    layers.append(_layer("sampling", "sampling", batch, 0, latent, ELEMENTWISE["sampling"]))
    bce, kl = ELEMENTWISE[spec.loss.reconstruction], ELEMENTWISE["kl"]
    layers.append(LayerFlops("loss", "loss", (bce[0] * length + kl[0] * latent) * batch,
                             (bce[1] * length + kl[1] * latent) * batch))
    trainable = count_params(spec).trainable
    layers.append(LayerFlops("adam", "optimizer", 0, 0, update=ADAM_FLOPS_PER_PARAM * trainable))
    return FlopCount(batch, tuple(layers), overcount)


def format_flops(n: float | None) -> str:
    """``1.23 GFLOP`` style; ``n/a`` for None."""
    if n is None:
        return "n/a"
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} FLOP"


__all__ = ["ADAM_FLOPS_PER_PARAM", "CONVENTION", "ELEMENTWISE", "FlopCount", "LayerFlops", "format_flops",
           "step_flops"]
