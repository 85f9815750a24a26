"""The VAE as PyTorch modules: an ``nn.Module`` built from the spec, as a PyTorch user writes one.

Tensors with a length axis are channels-first, ``(N, C, L)``; ``impls.torch_layout`` records where
each canonical (channels-last) tensor and flat feature sits, so weights move without transposing
activations on every step. GroupNorm (``nn.GroupNorm``), the attention block and conv1d latent heads
work on ``(N, C, L)`` as diffusers' AutoencoderKL writes them. The masking layer's block is handed to
``VAE.forward`` by the training step (``impls.torch_vae``), which draws it on the device.

The modules know nothing of precision: under ``settings.precision: bf16`` the step runs them inside
``torch.autocast`` (``impls.torch_vae``). The ops the spec keeps in float32 there (``BF16_FLOAT32_OPS``) that
autocast does not keep in float32 on every device take a float32 input here, ``x.float()``: the BatchNorm and
GroupNorm statistics, the attention softmax and the sampling. In float32 ``.float()`` returns the tensor
itself, so fp32 and tf32 run exactly the ops they ran before.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.spec.layers import MASK_VALUE, ZERO_INIT
from harness.spec.params import ParamCounts
from harness.spec.residual import residual_parts
from harness.spec.schema import VAESpec
from harness.spec.shapes import LayerShape, infer_shapes, mask_bounds, same_padding, transpose_trim
from impls.torch_layout import Layout, channels_first_order, dense_output_order, reorder_index, same_order

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

    Under bf16 autocast it normalises in float32 (the spec pins its statistics there): batch_norm is on
    neither CPU's nor CUDA's float32 list, so it would run in its input's bfloat16. Its float32 output
    goes on as that of an op on autocast's float32 list does, until the next layer takes it into bfloat16.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # bf16 autocast: float32 statistics; float32: the tensor itself
        if not self.training:
            return super().forward(x)
        out, mean, invstd = torch.native_batch_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps)
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(invstd.pow(-2).sub_(self.eps), self.momentum)
        return out


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose statistics are float32 under bf16 autocast on every device, as the spec pins them:
    CUDA autocast runs group_norm in float32 on its own, CPU autocast in its input's bfloat16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float())


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
    queries by keys, the softmax over the keys. Under bf16 autocast the scores are cast up as the bmm makes
    them, so the scaling and the softmax are float32 on every device, as the spec pins the softmax (CUDA
    autocast runs softmax in float32 on its own, CPU autocast in bfloat16); the bmm after it takes the
    weights back into bfloat16."""

    def __init__(self, channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=eps)
        self.q = nn.Conv1d(channels, channels, 1)
        self.k = nn.Conv1d(channels, channels, 1)
        self.v = nn.Conv1d(channels, channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)  # (N, C, L)
        w = torch.bmm(q.transpose(1, 2), k).float() * x.shape[1] ** -0.5  # (N, L queries, L keys)
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
        ``block``: the masked block of a spec with a masking layer.

        The sampling is float32 under bf16 autocast, as the spec pins it: mu and logvar, bfloat16 out of
        their layers, are cast up (CUDA autocast would run only the exp in float32, CPU autocast none of it)
        and float32 noise drawn; the decoder's first layer takes z into bfloat16. mu and logvar are returned
        as their layers made them."""
        if self.masking is not None:
            x = self.masking(x, block)
        h = self.encoder(x)
        mu, logvar = self.z_mean(h), self.z_log_var(h)
        mu32, logvar32 = mu.float(), logvar.float()
        if eps is None:
            eps = torch.randn_like(mu32)
        z = mu32 + torch.exp(0.5 * logvar32) * eps
        return self.decoder(z), mu, logvar


# ---------------------------------------------------------------------------- building


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
            m = GroupNorm(a["groups"], s.in_shape[1], eps=spec.group_norm_epsilon(s.layer))
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

