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

GroupNorm (``nn.GroupNorm``), the attention block and conv1d latent heads work on ``(N, C, L)``
as diffusers' AutoencoderKL writes them; a conv latent's noise and outputs are transposed at the
boundary like the kernels. The masking layer's block is drawn each training step on the device,
from a ``torch.Generator`` seeded by ``settings.seed``, so the step never waits for the host.
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
from harness.spec.layers import ACTIVATIONS, MASK_VALUE, MASKED_BCE_CLIP, ZERO_INIT
from harness.spec.params import ParamCounts, param_table
from harness.spec.residual import residual_parts
from harness.spec.schema import VAESpec
from harness.spec.shapes import LayerShape, infer_shapes, mask_bounds, same_padding, transpose_trim

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


class AttnBlock1d(nn.Module):
    """AutoencoderKL's ``AttnBlock`` over the length axis: ``x + proj(softmax(q^T k / sqrt(C)) v)``,
    with q, k, v and proj 1x1 convs of a GroupNorm of ``x``; attention weights are (N, L, L),
    queries by keys, the softmax over the keys."""

    def __init__(self, channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.q = nn.Conv1d(channels, channels, 1)
        self.k = nn.Conv1d(channels, channels, 1)
        self.v = nn.Conv1d(channels, channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)  # (N, C, L)
        w = torch.bmm(q.transpose(1, 2), k) * x.shape[1] ** -0.5  # (N, L queries, L keys)
        w = w.softmax(dim=-1)
        h = torch.bmm(v, w.transpose(1, 2))  # h[:, c, i] = sum_j v[:, c, j] w[:, i, j]
        return x + self.proj(h)


class BlockMasking(nn.Module):
    """The masking layer: one block of input features set to ``MASK_VALUE`` (-1) in every sample.

    ``block`` is a Python int or a 0-d device tensor (a step's own draw), so the mask is built
    on the device without reading the block back."""

    def __init__(self, bounds: list[tuple[int, int]]) -> None:
        super().__init__()
        block_of = torch.cat([torch.full((stop - start,), j) for j, (start, stop) in enumerate(bounds)])
        self.register_buffer("block_of", block_of, persistent=False)  # feature -> its block

    def mask(self, block: int | torch.Tensor) -> torch.Tensor:
        return self.block_of == block

    def forward(self, x: torch.Tensor, block: int | torch.Tensor) -> torch.Tensor:
        return x.masked_fill(self.mask(block), MASK_VALUE)


class VAE(nn.Module):
    def __init__(self, encoder: nn.Sequential, z_mean: nn.Module, z_log_var: nn.Module, decoder: nn.Sequential,
                 masking: BlockMasking | None = None) -> None:
        super().__init__()
        self.masking = masking
        self.encoder = encoder
        self.z_mean = z_mean
        self.z_log_var = z_log_var
        self.decoder = decoder

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None, block: int | torch.Tensor | None = None):
        """Returns decoder logits, mean and log-variance; draws ``eps`` when it is not given.
        ``block``: the masked block of a spec with a masking layer."""
        if self.masking is not None:
            x = self.masking(x, block)
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
    kind: str  # "dense", "conv1d", "conv_transpose1d", "batch_norm" or "group_norm"
    module: nn.Module
    in_order: np.ndarray | None = None
    out_order: np.ndarray | None = None
    zero_init: bool = False  # ``init: zeros``: kernel and bias start at zero


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
        zero = a.get("init") == ZERO_INIT
        if t == "dense":
            out_order = dense_output_order(shapes, i)
            m = nn.Linear(s.in_shape[0], a["units"])
            layouts.append(Layout(s.name, t, m, order, out_order, zero_init=zero))
            order = out_order
        elif t in ("conv1d", "conv_transpose1d") and s.layer.stride == 1:
            conv = nn.Conv1d if t == "conv1d" else nn.ConvTranspose1d
            k = a["kernel_size"]
            m = conv(s.in_shape[1], a["filters"], k, padding=(k - 1) // 2)  # 'same' for odd k
            layouts.append(Layout(s.name, t, m, zero_init=zero))
        elif t == "conv1d":  # strided: Keras' "same" pads asymmetrically, so pad explicitly
            k, stride = a["kernel_size"], s.layer.stride
            conv = nn.Conv1d(s.in_shape[1], a["filters"], k, stride=stride)
            m = nn.Sequential(nn.ConstantPad1d(same_padding(s.in_shape[0], k, stride), 0.0), conv)
            layouts.append(Layout(s.name, t, conv, zero_init=zero))
        elif t == "conv_transpose1d":  # strided: the full transpose, trimmed to L * stride as Keras' "same"
            k, stride = a["kernel_size"], s.layer.stride
            conv = nn.ConvTranspose1d(s.in_shape[1], a["filters"], k, stride=stride, output_padding=max(stride - k, 0))
            m = nn.Sequential(conv, Trim1d(*transpose_trim(k, stride)))
            layouts.append(Layout(s.name, t, conv, zero_init=zero))
        elif t == "max_pool1d":
            m = nn.MaxPool1d(a["pool_size"])
        elif t == "upsample1d":
            m = nn.Upsample(scale_factor=a["size"], mode="nearest")
        elif t == "batch_norm":
            # torch's momentum weighs the new batch; the spec's is the decay of the old value
            m = BatchNorm1d(s.in_shape[-1], eps=s_.batch_norm_epsilon, momentum=1.0 - s_.batch_norm_momentum)
            layouts.append(Layout(s.name, t, m, out_order=order if len(s.in_shape) == 1 else None))
        elif t == "group_norm":  # (N, C, L): groups of consecutive channels, as the spec's
            m = nn.GroupNorm(a["groups"], s.in_shape[1], eps=spec.group_norm_epsilon(s.layer))
            layouts.append(Layout(s.name, t, m))
        elif t == "attention1d":
            m = AttnBlock1d(s.in_shape[1], a["groups"], spec.group_norm_epsilon(s.layer))
            layouts.append(Layout(f"{s.name}.norm", "group_norm", m.norm))
            layouts += [Layout(f"{s.name}.{part}", "conv1d", getattr(m, part), zero_init=zero and part == "proj")
                        for part in ("q", "k", "v", "proj")]
        elif t == "masking":  # applied by VAE.forward, which is handed the step's block
            m = nn.Identity()
        elif t == "relu":
            m = nn.ReLU()
        elif t == "leaky_relu":
            m = nn.LeakyReLU(negative_slope=spec.leaky_slope(s.layer))
        elif t == "gelu":
            m = nn.GELU(approximate="tanh" if s_.gelu_approximate else "none")
        elif t == "silu":
            m = nn.SiLU()
        elif t == "selu":
            m = nn.SELU()
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
    # the latent heads: nn.Linear on a flat encoder output, "same" nn.Conv1d on an (N, C, L) one
    heads = [_build_stack(spec, [s for s in shapes if s.name == name], order) for name in ("z_mean", "z_log_var")]
    decoder, out_order, dec_layouts = _build_stack(spec, [s for s in shapes if s.name.startswith("decoder.")], None)
    n_out = next(s.out_shape[0] for s in reversed(shapes) if s.name.startswith("decoder."))
    if out_order is not None:  # the logits must come out in the canonical order of x
        decoder.append(Reorder(reorder_index(out_order, None, n_out)))
    if spec.output_length_policy == "crop_or_pad":
        decoder.append(CropOrPad(spec.input_length))
    masking = None if spec.masking is None else BlockMasking(mask_bounds(spec.masking))
    (z_mean, _, mean_layouts), (z_log_var, _, log_var_layouts) = heads
    model = VAE(encoder, z_mean[0], z_log_var[0], decoder, masking)
    layouts = [*layouts, *mean_layouts, *log_var_layouts, *dec_layouts]

    # The spec pins Glorot-uniform kernels and zero biases; torch's default is Kaiming-uniform.
    # xavier_uniform_'s fan computation gives Glorot's limit for Linear, Conv1d and ConvTranspose1d.
    torch.manual_seed(spec.settings.seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    for layout in layouts:  # init: zeros (AutoencoderKL's zero_module): kernel and bias
        if layout.zero_init:
            nn.init.zeros_(layout.module.weight)
            nn.init.zeros_(layout.module.bias)
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
    "group_norm": {"gamma": "weight", "beta": "bias"},
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

    def _noise(self, eps: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``eps`` in torch's layout: a conv latent's canonical (B, L', C) noise as (B, C, L')."""
        e = self._tensor(eps)
        return e.transpose(1, 2) if e.dim() == 3 else e

    @staticmethod
    def _canonical(t: torch.Tensor) -> np.ndarray:
        """A latent output back to the canonical layout: (B, C, L') -> (B, L', C)."""
        return (t.transpose(1, 2) if t.dim() == 3 else t).cpu().numpy()

    def _block(self, mask_block: int | None) -> int | torch.Tensor | None:
        """The masked block: the one given, else a draw on the device from the seeded generator
        (a 0-d tensor the step uses without reading it back); None for a spec without masking."""
        if self.spec.masking is None:
            return None
        if mask_block is not None:
            return int(mask_block)
        blocks = len(self.spec.masking.args["blocks"])
        return torch.randint(blocks, (), generator=self.mask_generator, device=self.device)

    def _loss(self, x: torch.Tensor, eps: torch.Tensor | None, block: int | torch.Tensor | None = None):
        logits, mu, logvar = self.model(x, eps, block)
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
        loss = self._loss(self._tensor(x), None if eps is None else self._noise(eps), self._block(mask_block))
        loss.backward()
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
        logits, mu, logvar = self.model(self._tensor(x), self._noise(eps), self._block(mask_block))
        return {"recon": torch.sigmoid(logits).cpu().numpy(), "z_mean": self._canonical(mu),
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


__all__ = ["TorchVAE", "VAE", "AttnBlock1d", "BatchNorm1d", "BlockMasking", "ResidualBlock", "build_vae",
           "parameter_counts", "channels_first_order"]
