"""probe-int32's ops in PyTorch: each spec op as ``impls/torch_model.py`` builds it (or, for the
keras-torch row, as Keras 3's torch backend runs it), on one tensor past 2^31 elements.

The comparison itself is framework-free (``harness.measure.int32_check``); this module only
makes the input, the layer and the gradient, the way the PyTorch tutorials do: an
``nn.Module`` in train mode (BatchNorm in eval mode, so rows stay independent),
``torch.autograd.grad`` with the output as the cotangent. TF32 is off, so a chunk and the
whole tensor round alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHANNELS_FIRST = ("conv1d", "conv_transpose1d", "max_pool1d", "batch_norm")


class Ops:
    def __init__(self, device: str, impl: str) -> None:
        if device == "gpu" and not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device; probe with --device cpu")
        self.device = torch.device("cuda" if device == "gpu" else "cpu")
        self.impl = impl
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def environment(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return {"framework_version": torch.__version__,
                "versions": {"torch": torch.__version__,
                             "cudnn": str(torch.backends.cudnn.version()) if cuda else None},
                "cuda": torch.version.cuda if cuda else None,
                "device_name": torch.cuda.get_device_name(0) if cuda else "cpu"}

    def input(self, g) -> torch.Tensor:
        gen = torch.Generator(device=self.device).manual_seed(0)
        if g.op == "dense":
            shape = (g.rows, g.features)
        elif g.op == "loss":
            shape = (g.rows, g.per_row)
        elif g.op == "upsample1d":
            shape = (g.rows, g.length // 4, g.channels) if self.impl == "keras-torch" else \
                (g.rows, g.channels, g.length // 4)
        elif g.op in CHANNELS_FIRST:
            shape = (g.rows, g.channels, g.length)
        else:
            shape = (g.rows, g.channels, g.length)
        return torch.randn(shape, generator=gen, device=self.device)

    def rows(self, a: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return a[start:stop]

    def host(self, a: torch.Tensor) -> np.ndarray:
        return a.detach().cpu().numpy()

    def release(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _module(self, op: str, g) -> nn.Module | None:
        torch.manual_seed(1)
        c = g.channels
        m = {"dense": lambda: nn.Linear(g.features, g.per_row),
             "conv1d": lambda: nn.Conv1d(c, c, 7, padding=3),
             "conv_transpose1d": lambda: nn.ConvTranspose1d(c, c, 7, padding=3),
             "batch_norm": lambda: nn.BatchNorm1d(c).eval()}.get(op)
        return m().to(self.device) if m else None

    def build(self, op: str, g):
        module = self._module(op, g)
        fns = {"max_pool1d": lambda x: F.max_pool1d(x, 4),
               "upsample1d": (lambda x: torch.repeat_interleave(x, 4, dim=1)) if self.impl == "keras-torch"
               else (lambda x: F.interpolate(x, scale_factor=4, mode="nearest")),
               "relu": F.relu, "leaky_relu": lambda x: F.leaky_relu(x, 0.2), "gelu": F.gelu, "sigmoid": torch.sigmoid,
               "loss": lambda x: F.binary_cross_entropy_with_logits(x, (x > 0).float(), reduction="sum")}
        f = module if module is not None else fns[op]
        params = [(n, p) for n, p in (module.named_parameters() if module is not None else []) if p.requires_grad]

        def run(x: torch.Tensor, backward: bool) -> dict[str, torch.Tensor]:
            if not backward:
                with torch.no_grad():
                    y = f(x)
                out = {"loss" if op == "loss" else "y": y}
            else:
                x = x.detach().requires_grad_(True)
                y = f(x)
                cot = None if op == "loss" else y.detach()  # the loss is a scalar; else d(|y|^2 / 2)
                grads = torch.autograd.grad(y, [x, *(p for _, p in params)], grad_outputs=cot)
                out = {"loss" if op == "loss" else "y": y.detach(), "dx": grads[0]}
                out.update({f"dw:{n}": gr for (n, _), gr in zip(params, grads[1:], strict=True)})
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            return out

        return run
