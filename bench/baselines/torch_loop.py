"""The VAE as the PyTorch tutorials write it: an ``nn.Module`` and a plain training loop.

Stock layers only (``nn.Linear``, ``nn.BatchNorm1d``, ``nn.LeakyReLU``), the loss of
the PyTorch VAE example (BCE from logits and the KL term, here averaged over the
batch as the spec's loss is), ``torch.optim.Adam``. The settings that decide speed
or the amount of work are the spec's: its precision (float32 with TF32 off, or on
when ``settings.tf32`` asks for it; or bf16, below), Glorot-uniform kernels
and zero biases (``nn.init.xavier_uniform_``), Adam's eps, BatchNorm momentum and
eps. (``nn.BatchNorm1d`` keeps its own unbiased running variance: that changes a
statistic, not the work.)

Mixed precision (``settings.precision: bf16``) is the PyTorch AMP recipe: the forward
and the loss run inside ``torch.autocast(device_type=device.type, dtype=torch.bfloat16)``,
which computes the linear layers in bfloat16 over the float32 weights; ``backward()``
and ``optimizer.step()`` run outside it, so gradients, weights and Adam's state stay
float32. No ``GradScaler``: bfloat16 has float32's exponent range. The loss (BCE and
KL) reduces ``logits.float()``, ``mu.float()`` and ``logvar.float()``. Everything
else is left to autocast's own op lists, as the recipe leaves it (so on a CPU the
BatchNorm and the sampling run in bfloat16, where the harness's build pins them to
float32).

Feeding, as the CUDA docs show it: batches sit in pinned host memory (what
``DataLoader(pin_memory=True)`` hands over) and each is moved with
``.to(device, non_blocking=True)`` one batch ahead, so the copy overlaps the step
before it. On a CPU the host tensors are used as they are.

Run directly: ``python -m bench.baselines.torch_loop --kmer 5 --batch 64 --steps 200``.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.baselines.common import blocks, check_output, encoder_width, host_batches, result, schedule
from harness.spec.schema import VAESpec


def make_layers(spec: VAESpec, part: str) -> list[nn.Module]:
    s = spec.settings
    out: list[nn.Module] = []
    for b in blocks(spec, part):
        if b.type == "dense":
            out.append(nn.Linear(b.width, b.units))
        elif b.type == "batch_norm":
            # PyTorch's momentum is the weight of the new batch: 1 - the spec's decay
            out.append(nn.BatchNorm1d(b.width, eps=s.batch_norm_epsilon, momentum=1.0 - s.batch_norm_momentum))
        elif b.type == "leaky_relu":
            out.append(nn.LeakyReLU(b.slope))
        elif b.type == "relu":
            out.append(nn.ReLU())
        elif b.type == "gelu":
            out.append(nn.GELU(approximate="tanh" if s.gelu_approximate else "none"))
        else:
            out.append(nn.Sigmoid())
    return out


class VAE(nn.Module):
    def __init__(self, spec: VAESpec) -> None:
        super().__init__()
        self.encoder = nn.Sequential(*make_layers(spec, "encoder"))
        self.fc_mu = nn.Linear(encoder_width(spec), spec.latent_dim)
        self.fc_logvar = nn.Linear(encoder_width(spec), spec.latent_dim)
        self.decoder = nn.Sequential(*make_layers(spec, "decoder"))  # ends in logits
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def forward(self, x: torch.Tensor):
        h = self.encoder(x)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        return self.decoder(self.reparameterize(mu, logvar)), mu, logvar


def loss_function(logits, x, mu, logvar, beta: float) -> torch.Tensor:
    n = x.shape[0]
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / n
    return bce + beta * kld


def run(spec: VAESpec, kmer: int, batch: int, steps: int, warmup: int | None = None,
        steps_per_window: int | None = None) -> dict[str, Any]:
    check_output(spec)
    warmup, spw = schedule(steps, warmup, steps_per_window)
    torch.backends.cuda.matmul.allow_tf32 = spec.settings.tf32
    torch.backends.cudnn.allow_tf32 = spec.settings.tf32
    torch.manual_seed(spec.settings.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    model = VAE(spec).to(device)
    o = spec.optimizer
    optimizer = torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    data = [torch.from_numpy(x) for x in host_batches(spec, kmer, batch)]
    if device.type == "cuda":
        data = [x.pin_memory() for x in data]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # bf16: autocast around the forward and the loss (the AMP recipe). fp32 and tf32: no context at all, rather
    # than the recipe's ``enabled=False`` (a few microseconds of entering and leaving a disabled autocast a step)
    bf16 = spec.settings.bf16

    def precision():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def train_step(x: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with precision():
            logits, mu, logvar = model(x)
            loss = loss_function(logits.float(), x, mu.float(), logvar.float(), spec.loss.beta)
        loss.backward()
        optimizer.step()
        return loss

    model.train()
    i = 0
    for _ in range(warmup):  # the first step, then a few more, before any clock
        train_step(data[i % len(data)].to(device, non_blocking=True))
        i += 1
    sync()

    times = []
    nxt = data[i % len(data)].to(device, non_blocking=True)
    for _ in range(steps // spw):
        t = time.perf_counter()
        for _ in range(spw):
            x = nxt
            i += 1
            nxt = data[i % len(data)].to(device, non_blocking=True)  # next batch's copy starts now
            loss = train_step(x)
        sync()  # one device sync per window
        times.append((time.perf_counter() - t) / spw)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} after {i} steps")
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    amp = ", torch.autocast(bfloat16) around forward and loss" if bf16 else ""
    return result(times, params, final_loss=loss.item(), framework=f"torch {torch.__version__}", device=device.type,
                  loop=f"nn.Module + torch.optim.Adam, pinned batches .to(device, non_blocking=True) one ahead{amp}")


if __name__ == "__main__":
    from bench.baselines.common import main

    main(run)
