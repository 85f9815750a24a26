"""The VAE in plain PyTorch: the model of ``impls.torch_model`` and a textbook training loop.

The spec is written channels-last; this build is channels-first, as PyTorch users write 1-D
convolutions, and translates at its boundary only (``impls.torch_layout``): kernels and flat
features in ``get_weights`` / ``set_weights`` and the gradients, a conv latent's noise and outputs
here. The masking layer's block is drawn each training step on the device, from a
``torch.Generator`` seeded by ``settings.seed``, so the step never waits for the host.

Mixed precision (``settings.precision: bf16``) is PyTorch's automatic mixed precision as its AMP recipe
writes it: ``torch.autocast(device_type, dtype=torch.bfloat16)`` around the forward pass and the loss,
backward and the optimizer step outside it, and no ``GradScaler`` (bfloat16 has float32's exponent range,
so gradients do not underflow). The parameters are never cast: autocast casts them to bfloat16 where a
linear, conv or bmm reads them, so the master weights, their gradients and Adam's state stay float32.

What the spec keeps in float32 (``BF16_FLOAT32_OPS``) autocast's own op lists decide only in part, and
not alike on the two devices: CUDA autocast runs group_norm, softmax, exp and
binary_cross_entropy_with_logits in float32 (and refuses binary_cross_entropy), CPU autocast only the
losses (binary_cross_entropy, with logits or not); batch_norm is on neither list. So nothing is left to
them, and each pinned op is float32 by hand, alike on both devices: the loss and the KL here
(``_objective``, on logits, z_mean and z_log_var cast up, with autocast off); the BatchNorm and GroupNorm
statistics, the attention softmax and the sampling in ``impls.torch_model`` (a float32 input). In fp32 and
tf32 there is no autocast region at all, and the casts return their tensor: those steps are unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.adapter import VAEAdapter
from harness.spec.layers import MASKED_BCE_CLIP
from harness.spec.params import ParamCounts, param_table
from harness.spec.schema import PRECISIONS, VAESpec
from impls.torch_layout import LEAVES, Layout, from_canonical, to_canonical
from impls.torch_model import build_vae, parameter_counts


class TorchVAE(VAEAdapter):
    name = "torch"
    framework = "torch"
    stages_input = True
    precisions = PRECISIONS

    def __init__(self, spec: VAESpec) -> None:
        super().__init__(spec)
        tf32 = spec.settings.tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, self.layouts = build_vae(spec)
        self.model = model.to(self.device)
        self.optimizer = self._make_optimizer()
        # the masking layer's per-step draw: its own seeded generator, on the device the step runs on
        self.mask_generator = torch.Generator(device=self.device).manual_seed(spec.settings.seed)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.spec.optimizer
        # torch's Adam adds eps to sqrt(v_hat), the spec's adam_epsilon_hat=True form
        return torch.optim.Adam(self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)

    # -- model facts -------------------------------------------------------------------
    def param_counts(self) -> ParamCounts:
        return parameter_counts(self.model)

    @classmethod
    def count_params(cls, spec: VAESpec) -> ParamCounts:
        """On the meta device: shapes without storage, so conv-original counts in no memory."""
        with torch.device("meta"):
            model, _ = build_vae(spec)
        return parameter_counts(model)

    def _tensors(self) -> Iterator[tuple[str, Layout, str, torch.Tensor]]:
        for layout in self.layouts:
            for leaf, attr in LEAVES[layout.kind].items():
                yield f"{layout.name}.{leaf}", layout, leaf, getattr(layout.module, attr)

    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: to_canonical(layout, leaf, t.detach().cpu().numpy())
                for name, layout, leaf, t in self._tensors()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        shapes = {p.name: p.shape for p in param_table(self.spec)}
        with torch.no_grad():
            for name, layout, leaf, t in self._tensors():
                if name not in weights:
                    raise KeyError(f"set_weights: {name!r} is missing; pass every name of harness.spec.schema.param_table")
                value = np.asarray(weights[name], dtype=np.float32)
                if value.shape != shapes[name]:
                    raise ValueError(f"set_weights: {name} has shape {value.shape}, expected {shapes[name]}")
                t.copy_(torch.from_numpy(from_canonical(layout, leaf, value)))
        self.optimizer = self._make_optimizer()  # fresh moments and step count

    # -- feeding ------------------------------------------------------------------------
    def host_batch(self, x: np.ndarray) -> np.ndarray | torch.Tensor:
        """What ``DataLoader(pin_memory=True)`` hands over on CUDA: a page-locked tensor, from which
        a copy to the device runs asynchronously. On a CPU the numpy array already is on the device."""
        if self.device.type == "cuda":
            return torch.from_numpy(np.asarray(x, dtype=np.float32)).pin_memory()
        return x

    def to_device(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self._tensor(batch)

    # -- compute -----------------------------------------------------------------------
    def _tensor(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        # non_blocking: from pinned memory the copy is queued behind the running step and the
        # host goes on (the next step is dispatched meanwhile); from pageable memory the data is
        # staged before the call returns, so this is safe either way. Pinned buffers are held by
        # PyTorch's caching host allocator until the copy that reads them has finished.
        if isinstance(a, torch.Tensor):
            return a.to(self.device, non_blocking=True)  # no-op for a tensor already there
        return torch.from_numpy(np.asarray(a, dtype=np.float32)).to(self.device, non_blocking=True)

    def _noise(self, eps: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``eps`` in torch's layout: a conv latent's canonical (B, L', C) noise as (B, C, L')."""
        e = self._tensor(eps)
        return e.transpose(1, 2) if e.dim() == 3 else e

    @staticmethod
    def _canonical(t: torch.Tensor) -> np.ndarray:
        """A latent output back to the canonical layout: (B, C, L') -> (B, L', C), as float32 (numpy has no bfloat16)."""
        return (t.transpose(1, 2) if t.dim() == 3 else t).float().cpu().numpy()

    def _block(self, mask_block: int | None) -> int | torch.Tensor | None:
        """The masked block: the one given, else a draw on the device from the seeded generator
        (a 0-d tensor the step uses without reading it back); None for a spec without masking."""
        if self.spec.masking is None:
            return None
        if mask_block is not None:
            return int(mask_block)
        blocks = len(self.spec.masking.args["blocks"])
        return torch.randint(blocks, (), generator=self.mask_generator, device=self.device)

    # -- mixed precision ---------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        """The region a bf16 step computes in: ``torch.autocast`` to bfloat16 on the model's device, for the
        forward pass and the loss only. fp32 and tf32 get no region (not a disabled one, which costs ~4 us
        to enter and leave for nothing)."""
        if not self.spec.settings.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _float32(self) -> contextlib.AbstractContextManager:
        """A float32 region inside ``_autocast``: autocast off, as the AMP docs do locally for an op that must
        run in float32 on float32 inputs. CUDA autocast refuses ``F.binary_cross_entropy`` even then."""
        if not self.spec.settings.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, enabled=False)

    # -- the loss ------------------------------------------------------------------------
    def _loss(self, x: torch.Tensor, eps: torch.Tensor | None, block: int | torch.Tensor | None = None):
        """The forward pass and the loss; under ``_autocast`` the forward computes in bfloat16 and the loss
        is reduced in float32, from logits, mean and log-variance cast up (in float32 a no-op)."""
        logits, mu, logvar = self.model(x, eps, block)
        with self._float32():
            return self._objective(x, logits.float(), mu.float(), logvar.float(), block)

    def _objective(self, x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                   block: int | torch.Tensor | None) -> torch.Tensor:
        """The spec's loss, reconstruction plus beta times KL, batch-averaged."""
        loss = self.spec.loss
        if loss.reconstruction == "mse":  # of the sigmoid output, summed over features like BCE
            recon = (torch.sigmoid(logits) - x).square().sum(dim=1)
        elif loss.reconstruction == "masked_bce":  # clipped probabilities, the masked block only, per position
            mask = self.model.masking.mask(block)
            p = torch.sigmoid(logits).clamp(MASKED_BCE_CLIP, 1 - MASKED_BCE_CLIP)
            bce = F.binary_cross_entropy(p, x, reduction="none")
            recon = torch.where(mask, bce, 0.0).sum(dim=1) / mask.sum()
        else:
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)
        kl = (-0.5 * (1 + logvar - mu.square() - logvar.exp())).flatten(1).sum(dim=1)
        if loss.kl_normalisation == "features":
            kl = kl / self.spec.input_length
        return recon.mean() + loss.beta * kl.mean()

    def train_step(self, x: np.ndarray, eps: np.ndarray | None = None, mask_block: int | None = None) -> torch.Tensor:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self._loss(self._tensor(x), None if eps is None else self._noise(eps), self._block(mask_block))
        loss.backward()  # outside autocast: each op's backward runs in the dtype its forward ran in
        if self.spec.optimizer.clip_global_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.optimizer.clip_global_norm)
        self.optimizer.step()
        return loss.detach()  # no .item(): that would wait for the device

    @torch.no_grad()
    def eval_forward(self, x: np.ndarray, eps: np.ndarray, mask_block: int | None = None) -> dict[str, np.ndarray]:
        if self.spec.masking is not None and mask_block is None:
            raise ValueError(f"eval_forward: spec {self.spec.name!r} masks a block of its input; pass mask_block "
                             f"(0 to {len(self.spec.masking.args['blocks']) - 1})")
        self.model.eval()
        with self._autocast():
            logits, mu, logvar = self.model(self._tensor(x), self._noise(eps), self._block(mask_block))
        # float32 numpy: the reconstruction from logits cast up, as the loss reads them; z_mean and z_log_var as
        # their bf16 layers made them, cast up exactly (they lie on the bfloat16 grid; parity reads it)
        return {"recon": torch.sigmoid(logits.float()).cpu().numpy(), "z_mean": self._canonical(mu),
                "z_log_var": self._canonical(logvar)}

    @contextlib.contextmanager
    def _buffers_kept(self) -> Iterator[None]:
        """Restores the BatchNorm running statistics a training-mode forward updates."""
        saved = [(b, b.clone()) for b in self.model.buffers()]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, value in saved:
                    b.copy_(value)

    def loss_and_grads(self, x: np.ndarray, eps: np.ndarray,
                       mask_block: int | None = None) -> tuple[float, dict[str, np.ndarray]]:
        if self.spec.masking is not None and mask_block is None:
            raise ValueError(f"loss_and_grads: spec {self.spec.name!r} masks a block of its input; pass mask_block")
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        with self._buffers_kept():
            with self._autocast():
                loss = self._loss(self._tensor(x), self._noise(eps), self._block(mask_block))
            loss.backward()
        grads = {name: to_canonical(layout, leaf, t.grad.cpu().numpy())
                 for name, layout, leaf, t in self._tensors() if t.grad is not None}
        self.model.zero_grad(set_to_none=True)
        return float(loss.detach()), grads

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def loss_value(self, handle: torch.Tensor) -> float:
        return float(handle)

    # -- probes ------------------------------------------------------------------------
    def device_memory(self) -> dict[str, int | None]:
        if self.device.type != "cuda":
            return {}
        return {
            "peak_bytes": torch.cuda.max_memory_allocated(self.device),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
            "reserved_bytes": torch.cuda.memory_reserved(self.device),
            "bytes_in_use": torch.cuda.memory_allocated(self.device),
        }

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @classmethod
    def versions(cls) -> dict[str, str]:
        out = {"framework": torch.__version__, "torch": torch.__version__, "cuda": torch.version.cuda or "none"}
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        if cudnn is not None:
            out["cudnn"] = str(cudnn)
        return out

    @classmethod
    def device_kind(cls) -> str:
        return "gpu" if torch.cuda.is_available() else "cpu"


__all__ = ["TorchVAE"]
