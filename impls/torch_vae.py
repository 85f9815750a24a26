"""The VAE in plain PyTorch: an ``nn.Module`` built from the spec and a textbook training loop.

The spec is written channels-last, ``(length, channels)``, the layout Keras and
Flax use. PyTorch users write 1-D convolutions channels-first, ``(N, C, L)``,
so this build does too and translates only at its boundary:

* kernels are transposed in ``get_weights`` / ``set_weights`` (``Conv1d`` weight
  ``(out, in, k)``, ``ConvTranspose1d`` weight ``(in, out, k)``, ``Linear`` weight
  ``(out, in)``);
* flattening a channels-first ``(C, L)`` tensor gives the features in the order
  ``c * L + l``, the spec's flatten gives ``l * C + c``. Rather than transposing
  activations on every step, the build tracks which canonical feature sits at each
  position of every flat vector and permutes the rows or columns of the dense layers
  (and the parameters of a BatchNorm) next to it, once, when weights are moved.
  The forward pass stays the one a PyTorch user would write.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.adapter import VAEAdapter
from harness.spec.layers import ACTIVATIONS
from harness.spec.params import ParamCounts, param_table
from harness.spec.residual import residual_parts
from harness.spec.schema import VAESpec
from harness.spec.shapes import LayerShape, infer_shapes, same_padding, transpose_trim

# ---------------------------------------------------------------------------- feature orders
#
# An "order" describes a flat (B, N) activation in torch: order[i] is the canonical
# (channels-last, row-major) index of the feature torch holds at position i. ``None``
# means the identity, the common case, so nothing is ever indexed needlessly.


def channels_first_order(length: int, channels: int) -> np.ndarray | None:
    """Order of ``x.flatten(1)`` for a torch ``(B, C, L)`` tensor that is canonically ``(L, C)``.

    Torch position ``c * L + l`` holds canonical feature ``l * C + c``. With one channel
    (or length one) the two orders coincide and the identity (``None``) is returned.
    """
    if channels == 1 or length == 1:
        return None
    return np.arange(length * channels).reshape(length, channels).T.ravel()


def inverse_order(order: np.ndarray | None) -> np.ndarray | None:
    """Position at which each canonical feature sits: ``inverse[order[i]] == i``."""
    return None if order is None else np.argsort(order)


def same_order(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))


def reorder_index(have: np.ndarray | None, want: np.ndarray | None, n: int) -> np.ndarray:
    """Index with which ``x[:, index]`` turns a flat vector in order ``have`` into order ``want``."""
    want = np.arange(n) if want is None else want
    have_inv = inverse_order(have)
    return want if have_inv is None else have_inv[want]


def dense_output_order(shapes: list[LayerShape], i: int) -> np.ndarray | None:
    """The order in which dense layer ``i`` should emit its features.

    A dense layer's output columns can be laid out in any order for free. When the
    next layer that cares about order (past activations and BatchNorm, which act per
    feature) is a reshape to ``(L, C)``, emitting the channels-first order makes that
    reshape a plain ``view`` to ``(B, C, L)``; otherwise the canonical order is kept.
    """
    for s in shapes[i + 1:]:
        if s.layer.type in ACTIVATIONS or s.layer.type == "batch_norm":
            continue
        if s.layer.type == "reshape" and len(s.out_shape) == 2:
            return channels_first_order(*s.out_shape)
        return None
    return None


# ---------------------------------------------------------------------------- modules


class BatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose running variance tracks the *biased* batch variance.

    PyTorch updates ``running_var`` with the unbiased (n - 1) batch variance; Keras
    and Flax, and so the spec (``settings.batch_norm_running_var == "biased"``), use the
    biased one. Normalisation itself uses the biased batch variance in every framework,
    so only the running-statistics update is replaced. ``torch.native_batch_norm`` (the
    op behind ``F.batch_norm``) normalises with the batch statistics and returns the batch
    mean and ``1 / sqrt(var + eps)`` it computed, so the biased variance comes from that
    one pass: a separate ``torch.var_mean`` cost 12% of a dense k=5 step on one CPU thread.
    Evaluation mode is ``nn.BatchNorm1d``'s own (``num_batches_tracked`` is unused:
    momentum is fixed).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        out, mean, invstd = torch.native_batch_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps)
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(invstd.pow(-2).sub_(self.eps), self.momentum)
        return out


class Reorder(nn.Module):
    """Permutes flat features, for the rare spec whose reshape cannot be folded into a dense layer."""

    def __init__(self, index: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


class Trim1d(nn.Module):
    """Drops positions at either end of the length axis: a strided "same" conv-transpose is the full
    ``nn.ConvTranspose1d`` with the positions Keras' "same" leaves out trimmed (``transpose_trim``)."""

    def __init__(self, left: int, right: int) -> None:
        super().__init__()
        self.left, self.right = left, right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.left : x.shape[-1] - self.right]


class CropOrPad(nn.Module):
    """``output_length_policy: crop_or_pad``: flat logits cropped to the input length, or padded with trailing zeros."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, self.length - x.shape[-1]))  # a negative pad crops


class ResidualBlock(nn.Module):
    """``activation(inner(x) + skip(x))``: the spec's ``residual``, as a ResNet block is written in PyTorch."""

    def __init__(self, inner: nn.Sequential, skip: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.inner, self.skip, self.activation = inner, skip, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.inner(x) + self.skip(x))


class VAE(nn.Module):
    def __init__(self, encoder: nn.Sequential, latent_in: int, latent_dim: int, decoder: nn.Sequential) -> None:
        super().__init__()
        self.encoder = encoder
        self.z_mean = nn.Linear(latent_in, latent_dim)
        self.z_log_var = nn.Linear(latent_in, latent_dim)
        self.decoder = decoder

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        """Returns decoder logits, mean and log-variance; draws ``eps`` when it is not given."""
        h = self.encoder(x)
        mu, logvar = self.z_mean(h), self.z_log_var(h)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decoder(z), mu, logvar


# ---------------------------------------------------------------------------- building


@dataclass
class Layout:
    """How one parametric layer's torch tensors map to the canonical ones.

    ``in_order`` / ``out_order`` are the feature orders of the flat vectors on either
    side (dense layers; a flat BatchNorm uses ``out_order`` for its per-feature params).
    """

    name: str  # canonical prefix, e.g. "decoder.2"
    kind: str  # "dense", "conv1d", "conv_transpose1d" or "batch_norm"
    module: nn.Module
    in_order: np.ndarray | None = None
    out_order: np.ndarray | None = None


def _reshape(in_shape: tuple[int, ...], out_shape: tuple[int, ...], order: np.ndarray | None):
    """A flatten or reshape as torch modules, and the order of its output if flat.

    Tensors with a length axis live as ``(B, C, L)``; a canonical reshape to ``(L, C)``
    becomes ``nn.Unflatten(1, (C, L))``, correct when the flat features arrive in the
    channels-first order (which ``dense_output_order`` arranges); otherwise a
    ``Reorder`` puts them in that order first.
    """
    modules: list[nn.Module] = []
    if len(in_shape) == 2:
        modules.append(nn.Flatten())
        order = channels_first_order(*in_shape)
    if len(out_shape) == 2:
        length, channels = out_shape
        want = channels_first_order(length, channels)
        if not same_order(order, want):
            modules.append(Reorder(reorder_index(order, want, length * channels)))
        modules.append(nn.Unflatten(1, (channels, length)))
        order = None
    if not modules:
        return nn.Identity(), order
    return (modules[0] if len(modules) == 1 else nn.Sequential(*modules)), order


def _build_stack(spec: VAESpec, shapes: list[LayerShape], order: np.ndarray | None):
    """One ``nn.Sequential`` whose index ``i`` is spec layer ``i`` (so torch names match the spec's)."""
    s_ = spec.settings
    modules: list[nn.Module] = []
    layouts: list[Layout] = []
    for i, s in enumerate(shapes):
        t, a = s.layer.type, s.layer.args
        if t == "dense":
            out_order = dense_output_order(shapes, i)
            m = nn.Linear(s.in_shape[0], a["units"])
            layouts.append(Layout(s.name, t, m, order, out_order))
            order = out_order
        elif t in ("conv1d", "conv_transpose1d") and s.layer.stride == 1:
            conv = nn.Conv1d if t == "conv1d" else nn.ConvTranspose1d
            k = a["kernel_size"]
            m = conv(s.in_shape[1], a["filters"], k, padding=(k - 1) // 2)  # 'same' for odd k
            layouts.append(Layout(s.name, t, m))
        elif t == "conv1d":  # strided: Keras' "same" pads asymmetrically, so pad explicitly
            k, stride = a["kernel_size"], s.layer.stride
            conv = nn.Conv1d(s.in_shape[1], a["filters"], k, stride=stride)
            m = nn.Sequential(nn.ConstantPad1d(same_padding(s.in_shape[0], k, stride), 0.0), conv)
            layouts.append(Layout(s.name, t, conv))
        elif t == "conv_transpose1d":  # strided: the full transpose, trimmed to L * stride as Keras' "same"
            k, stride = a["kernel_size"], s.layer.stride
            conv = nn.ConvTranspose1d(s.in_shape[1], a["filters"], k, stride=stride, output_padding=max(stride - k, 0))
            m = nn.Sequential(conv, Trim1d(*transpose_trim(k, stride)))
            layouts.append(Layout(s.name, t, conv))
        elif t == "max_pool1d":
            m = nn.MaxPool1d(a["pool_size"])
        elif t == "upsample1d":
            m = nn.Upsample(scale_factor=a["size"], mode="nearest")
        elif t == "batch_norm":
            # torch's momentum weighs the new batch; the spec's is the decay of the old value
            m = BatchNorm1d(s.in_shape[-1], eps=s_.batch_norm_epsilon, momentum=1.0 - s_.batch_norm_momentum)
            layouts.append(Layout(s.name, t, m, out_order=order if len(s.in_shape) == 1 else None))
        elif t == "relu":
            m = nn.ReLU()
        elif t == "leaky_relu":
            m = nn.LeakyReLU(negative_slope=spec.leaky_slope(s.layer))
        elif t == "gelu":
            m = nn.GELU(approximate="tanh" if s_.gelu_approximate else "none")
        elif t == "sigmoid":
            m = nn.Sigmoid()
        elif t in ("flatten", "reshape"):
            m, order = _reshape(s.in_shape, s.out_shape, order)
        elif t == "residual":  # (L, C) in and out, so no flat orders inside: torch names nest as the spec's
            inner, skip, act = residual_parts(spec, s)
            inner_m, _, inner_layouts = _build_stack(spec, inner, None)
            skip_m, _, skip_layouts = _build_stack(spec, [skip] if skip else [], None)
            act_m, _, _ = _build_stack(spec, [LayerShape(s.name, act, s.out_shape, s.out_shape)] if act else [], None)
            # an empty nn.Sequential is the identity: no skip conv, no activation
            m = ResidualBlock(inner_m, skip_m[0] if skip else skip_m, act_m[0] if act else act_m)
            layouts += inner_layouts + skip_layouts
        else:  # pragma: no cover - the spec validator rejects unknown types
            raise ValueError(f"{s.name}: unsupported layer type {t!r}")
        modules.append(m)
    return nn.Sequential(*modules), order, layouts


def build_vae(spec: VAESpec) -> tuple[VAE, list[Layout]]:
    """The model (initialised with the spec's pinned initialisers) and its weight layouts.

    Call under ``torch.device("meta")`` to inspect a model too large to allocate.
    """
    shapes = infer_shapes(spec)
    encoder, order, layouts = _build_stack(spec, [s for s in shapes if s.name.startswith("encoder.")], None)
    latent_in = next(s.in_shape[0] for s in shapes if s.name == "z_mean")
    decoder, out_order, dec_layouts = _build_stack(spec, [s for s in shapes if s.name.startswith("decoder.")], None)
    n_out = next(s.out_shape[0] for s in reversed(shapes) if s.name.startswith("decoder."))
    if out_order is not None:  # the logits must come out in the canonical order of x
        decoder.append(Reorder(reorder_index(out_order, None, n_out)))
    if spec.output_length_policy == "crop_or_pad":
        decoder.append(CropOrPad(spec.input_length))
    model = VAE(encoder, latent_in, spec.latent_dim, decoder)
    layouts = [*layouts, Layout("z_mean", "dense", model.z_mean, order, None),
               Layout("z_log_var", "dense", model.z_log_var, order, None), *dec_layouts]

    # The spec pins Glorot-uniform kernels and zero biases; torch's default is Kaiming-uniform.
    # xavier_uniform_'s fan computation gives Glorot's limit for Linear, Conv1d and ConvTranspose1d.
    torch.manual_seed(spec.settings.seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model, layouts


def parameter_counts(model: nn.Module) -> ParamCounts:
    """Trainable parameters, and the floating-point buffers (BatchNorm running statistics)."""
    return ParamCounts(
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        non_trainable=sum(b.numel() for b in model.buffers() if b.is_floating_point()),
    )


# ---------------------------------------------------------------------------- weight layout

#: canonical leaf name -> torch attribute
_LEAVES = {
    "dense": {"kernel": "weight", "bias": "bias"},
    "conv1d": {"kernel": "weight", "bias": "bias"},
    "conv_transpose1d": {"kernel": "weight", "bias": "bias"},
    "batch_norm": {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                   "moving_variance": "running_var"},
}


def to_canonical(layout: Layout, leaf: str, t: np.ndarray) -> np.ndarray:
    """A torch tensor (or its gradient) of ``layout`` in the canonical layout."""
    if leaf == "kernel" and layout.kind == "dense":  # (out, in) -> (in, out), rows/cols back to canonical order
        k = t.T
        if layout.in_order is not None:
            k = k[inverse_order(layout.in_order)]
        if layout.out_order is not None:
            k = k[:, inverse_order(layout.out_order)]
        return np.ascontiguousarray(k)
    if leaf == "kernel":  # Conv1d (out, in, k) -> (k, in, out); ConvTranspose1d (in, out, k) -> (k, out, in)
        return np.ascontiguousarray(t.transpose(2, 1, 0))
    if layout.out_order is not None:  # a per-feature vector of a permuted flat vector
        return np.ascontiguousarray(t[inverse_order(layout.out_order)])
    return t


def from_canonical(layout: Layout, leaf: str, a: np.ndarray) -> np.ndarray:
    """The inverse of ``to_canonical``."""
    if leaf == "kernel" and layout.kind == "dense":
        if layout.in_order is not None:
            a = a[layout.in_order]
        if layout.out_order is not None:
            a = a[:, layout.out_order]
        return np.ascontiguousarray(a.T)
    if leaf == "kernel":
        return np.ascontiguousarray(a.transpose(2, 1, 0))
    if layout.out_order is not None:
        return np.ascontiguousarray(a[layout.out_order])
    return a


# ---------------------------------------------------------------------------- adapter


class TorchVAE(VAEAdapter):
    name = "torch"
    framework = "torch"
    stages_input = True

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
            for leaf, attr in _LEAVES[layout.kind].items():
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

    def _loss(self, x: torch.Tensor, eps: torch.Tensor | None):
        logits, mu, logvar = self.model(x, eps)
        if self.spec.loss.reconstruction == "mse":  # of the sigmoid output, summed over features like BCE
            bce = (torch.sigmoid(logits) - x).square().sum(dim=1).mean()
        else:
            bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1).mean()
        kl = (-0.5 * (1 + logvar - mu.square() - logvar.exp())).sum(dim=1).mean()
        return bce + self.spec.loss.beta * kl

    def train_step(self, x: np.ndarray, eps: np.ndarray | None = None) -> torch.Tensor:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(self._tensor(x), None if eps is None else self._tensor(eps))
        loss.backward()
        if self.spec.optimizer.clip_global_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.optimizer.clip_global_norm)
        self.optimizer.step()
        return loss.detach()  # no .item(): that would wait for the device

    @torch.no_grad()
    def eval_forward(self, x: np.ndarray, eps: np.ndarray) -> dict[str, np.ndarray]:
        self.model.eval()
        logits, mu, logvar = self.model(self._tensor(x), self._tensor(eps))
        return {"recon": torch.sigmoid(logits).cpu().numpy(), "z_mean": mu.cpu().numpy(),
                "z_log_var": logvar.cpu().numpy()}

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

    def loss_and_grads(self, x: np.ndarray, eps: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        with self._buffers_kept():
            loss = self._loss(self._tensor(x), self._tensor(eps))
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


__all__ = ["TorchVAE", "VAE", "BatchNorm1d", "ResidualBlock", "build_vae", "parameter_counts", "channels_first_order"]
