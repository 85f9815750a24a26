"""A plain-numpy forward pass: the written-down meaning of the canonical layout.

Not used for benchmarking. It exists so that each build can be checked on its
own against one unambiguous definition of every layer (especially the conv
transpose, flatten order and BatchNorm), and so that parity can start every
build from the same seeded weights (``init_weights``).
"""

from __future__ import annotations

import math

import numpy as np

from harness.spec.layers import MASK_VALUE, MASKED_BCE_CLIP, Layer
from harness.spec.params import param_table
from harness.spec.schema import VAESpec
from harness.spec.shapes import infer_shapes, mask_bounds, same_padding, transpose_trim


def init_weights(spec: VAESpec, seed: int | None = None) -> dict[str, np.ndarray]:
    """Canonical weights drawn with the spec's pinned initialisers (Glorot-uniform, zeros), and zeros
    for a layer with ``init: zeros``."""
    rng = np.random.default_rng(spec.settings.seed if seed is None else seed)
    out: dict[str, np.ndarray] = {}
    for p in param_table(spec):
        leaf = p.name.rsplit(".", 1)[1]
        if leaf == "kernel" and not p.zero_init:
            out[p.name] = _glorot(rng, p.shape)
        elif leaf in ("gamma", "moving_variance"):
            out[p.name] = np.ones(p.shape, np.float32)
        else:
            out[p.name] = np.zeros(p.shape, np.float32)
    return out


def _glorot(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def perturb_zero_init(spec: VAESpec, weights: dict[str, np.ndarray], seed: int = 3) -> dict[str, np.ndarray]:
    """Give the ``init: zeros`` tensors Glorot values (kernels) and small biases, so that parity's
    forward pass really goes through the layers they gate (a zero output projection hides the
    attention it follows)."""
    rng = np.random.default_rng(seed)
    w = dict(weights)
    for p in param_table(spec):
        if p.zero_init:
            w[p.name] = (_glorot(rng, p.shape) if p.name.endswith(".kernel")
                         else rng.normal(0, 0.1, p.shape).astype(np.float32))
    return w


def perturb_batch_norm(spec: VAESpec, weights: dict[str, np.ndarray], seed: int = 1) -> dict[str, np.ndarray]:
    """Give BatchNorm non-trivial statistics so eval parity really tests them."""
    rng = np.random.default_rng(seed)
    w = dict(weights)
    for p in param_table(spec):
        leaf = p.name.rsplit(".", 1)[1]
        if leaf == "moving_mean":
            w[p.name] = rng.normal(0, 0.1, p.shape).astype(np.float32)
        elif leaf == "moving_variance":
            w[p.name] = rng.uniform(0.5, 1.5, p.shape).astype(np.float32)
        elif leaf == "gamma":  # group_norm's too
            w[p.name] = rng.uniform(0.8, 1.2, p.shape).astype(np.float32)
        elif leaf == "beta":
            w[p.name] = rng.normal(0, 0.1, p.shape).astype(np.float32)
    return w


def _conv1d_same(x: np.ndarray, k: np.ndarray, stride: int = 1) -> np.ndarray:
    """x (B, L, Cin), k (K, Cin, Cout), Keras "same" padding (``same_padding``):
    y[l] = sum_j xp[l * s + j] k[j] (cross-correlation) for l < ceil(L / s)."""
    K = k.shape[0]
    left, right = same_padding(x.shape[1], K, stride)
    xp = np.pad(x, ((0, 0), (left, right), (0, 0)))
    out = -(-x.shape[1] // stride)
    y = np.zeros((x.shape[0], out, k.shape[2]), np.float64)
    for j in range(K):
        y += xp[:, j : j + (out - 1) * stride + 1 : stride, :] @ k[j]
    return y


def _conv_transpose1d_same(x: np.ndarray, k: np.ndarray, stride: int = 1) -> np.ndarray:
    """x (B, L, Cin), k (K, Cout, Cin): the adjoint of a "same" conv1d from L * s positions to L.

    The full transpose puts x[l] k[j]^T at position l * s + j ((L - 1) * s + K positions);
    the adjoint of the conv's left padding p drops p positions on the left and keeps L * s
    (``transpose_trim``). With s = 1 this is y[m] = sum_j x[m - j + p] k[j]^T, p = (K - 1) / 2."""
    K = k.shape[0]
    B, L, _ = x.shape
    left, _ = transpose_trim(K, stride)
    full = np.zeros((B, max((L - 1) * stride + K, L * stride + left), k.shape[1]), np.float64)
    for j in range(K):
        full[:, j : j + (L - 1) * stride + 1 : stride, :] += x @ k[j].T
    return full[:, left : left + L * stride, :]


def crop_or_pad(h: np.ndarray, length: int) -> np.ndarray:
    """``output_length_policy: crop_or_pad``: a flat (B, N) output cropped to its first ``length``
    positions, or padded with trailing zeros (logits 0) up to ``length``."""
    n = h.shape[1]
    return h[:, :length] if n >= length else np.pad(h, ((0, 0), (0, length - n)))


def _gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    if approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


#: SELU's fixed constants (Klambauer et al. 2017), as every framework writes them
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def group_norm(x: np.ndarray, groups: int, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """x (B, L, C): each sample's channels split into ``groups`` consecutive groups, each normalised
    over its (length, channels / groups) values with the biased variance, then scaled and shifted."""
    b, length, c = x.shape
    g = x.reshape(b, length, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, length, c) * gamma + beta


def attention1d(spec: VAESpec, name: str, layer, x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """AutoencoderKL's AttnBlock over the length axis: ``x + proj(softmax(q k^T / sqrt(C)) v)``, with
    q, k, v and proj 1x1 convs of ``group_norm(x)``. Scores are (B, L, L), softmax over the keys."""
    eps = spec.group_norm_epsilon(layer)
    h = group_norm(x, layer.args["groups"], w[f"{name}.norm.gamma"], w[f"{name}.norm.beta"], eps)
    q, k, v = (h @ w[f"{name}.{part}.kernel"][0] + w[f"{name}.{part}.bias"] for part in ("q", "k", "v"))
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(x.shape[-1])
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    attn = scores / scores.sum(axis=-1, keepdims=True)
    return x + (attn @ v) @ w[f"{name}.proj.kernel"][0] + w[f"{name}.proj.bias"]


def block_mask(spec: VAESpec, block: int) -> np.ndarray:
    """The (L,) boolean mask of masking block ``block`` (``harness.spec.shapes.mask_bounds``)."""
    start, stop = mask_bounds(spec.masking)[block]
    mask = np.zeros(spec.input_length, bool)
    mask[start:stop] = True
    return mask


def apply_masking(spec: VAESpec, x: np.ndarray, block: int) -> np.ndarray:
    """The masking layer: the drawn block's features set to ``MASK_VALUE`` (-1) in every sample."""
    return np.where(block_mask(spec, block), MASK_VALUE, x)


def _apply(spec: VAESpec, name: str, layer, x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    t, a = layer.type, layer.args
    if t == "dense":
        return x @ w[f"{name}.kernel"] + w[f"{name}.bias"]
    if t == "conv1d":
        return _conv1d_same(x, w[f"{name}.kernel"], layer.stride) + w[f"{name}.bias"]
    if t == "conv_transpose1d":
        return _conv_transpose1d_same(x, w[f"{name}.kernel"], layer.stride) + w[f"{name}.bias"]
    if t == "max_pool1d":
        p = a["pool_size"]
        b, length, c = x.shape
        return x.reshape(b, length // p, p, c).max(axis=2)
    if t == "upsample1d":
        return np.repeat(x, a["size"], axis=1)
    if t == "batch_norm":
        eps = spec.settings.batch_norm_epsilon
        mean, var = w[f"{name}.moving_mean"], w[f"{name}.moving_variance"]
        return (x - mean) / np.sqrt(var + eps) * w[f"{name}.gamma"] + w[f"{name}.beta"]
    if t == "group_norm":
        return group_norm(x, a["groups"], w[f"{name}.gamma"], w[f"{name}.beta"], spec.group_norm_epsilon(layer))
    if t == "attention1d":
        return attention1d(spec, name, layer, x, w)
    if t == "silu":
        return x / (1 + np.exp(-x))
    if t == "selu":
        return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))
    if t == "relu":
        return np.maximum(x, 0)
    if t == "leaky_relu":
        return np.where(x >= 0, x, spec.leaky_slope(layer) * x)
    if t == "gelu":
        return _gelu(x, spec.settings.gelu_approximate)
    if t == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if t == "flatten":
        return x.reshape(x.shape[0], -1)
    if t == "reshape":
        return x.reshape(x.shape[0], *a["shape"])
    if t == "residual":  # inner(x) + skip(x), then the activation
        h = x
        for j, sub in enumerate(a["layers"]):
            h = _apply(spec, f"{name}.inner.{j}", sub, h, w)
        h = h + (x if a["skip"] == "identity" else _apply(spec, f"{name}.skip", a["skip"], x, w))
        return h if a["activation"] is None else _apply(spec, name, Layer(a["activation"]), h, w)
    raise ValueError(t)


def eval_forward(spec: VAESpec, w: dict[str, np.ndarray], x: np.ndarray, eps: np.ndarray,
                 mask_block: int | None = None) -> dict[str, np.ndarray]:
    """Inference-mode forward in float64: probabilities, mean and log-variance. ``mask_block``: the
    masking layer's block (a spec with one needs it)."""
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    h = x.astype(np.float64)
    shapes = infer_shapes(spec)
    by_name = {s.name: s for s in shapes}
    for s in shapes:
        if s.name.startswith("encoder."):
            h = apply_masking(spec, h, mask_block) if s.layer.type == "masking" else _apply(spec, s.name, s.layer, h, w64)
    mu = _apply(spec, "z_mean", by_name["z_mean"].layer, h, w64)
    logvar = _apply(spec, "z_log_var", by_name["z_log_var"].layer, h, w64)
    h = mu + np.exp(0.5 * logvar) * eps
    for s in shapes:
        if s.name.startswith("decoder."):
            h = _apply(spec, s.name, s.layer, h, w64)
    if spec.output_length_policy == "crop_or_pad":
        h = crop_or_pad(h, spec.input_length)
    return {"recon": 1 / (1 + np.exp(-h)), "logits": h, "z_mean": mu, "z_log_var": logvar}


def vae_loss(spec: VAESpec, x: np.ndarray, logits: np.ndarray, mu: np.ndarray, logvar: np.ndarray,
             mask_block: int | None = None) -> float:
    """The spec's loss: the reconstruction term, + beta x KL summed over latent elements (divided by
    the input length for ``kl_normalisation: features``), both averaged over the batch.

    ``bce_logits``: BCE from the logits summed over features; ``mse``: the squared error of
    ``sigmoid(logits)`` summed over features; ``masked_bce``: BCE of ``sigmoid(logits)`` clipped to
    [1e-7, 1 - 1e-7], on the masked block (``mask_block``) only, averaged over its positions.
    ``x`` is the unmasked batch."""
    if spec.loss.reconstruction == "mse":
        recon = ((1 / (1 + np.exp(-logits)) - x) ** 2).sum(axis=1)
    elif spec.loss.reconstruction == "masked_bce":
        p = np.clip(1 / (1 + np.exp(-logits)), MASKED_BCE_CLIP, 1 - MASKED_BCE_CLIP)
        mask = block_mask(spec, mask_block)
        recon = -(x * np.log(p) + (1 - x) * np.log(1 - p))[:, mask].sum(axis=1) / mask.sum()
    else:
        recon = (np.maximum(logits, 0) - logits * x + np.log1p(np.exp(-np.abs(logits)))).sum(axis=1)
    kl = (-0.5 * (1 + logvar - mu**2 - np.exp(logvar))).reshape(len(x), -1).sum(axis=1)
    if spec.loss.kl_normalisation == "features":
        kl = kl / spec.input_length
    return float(recon.mean() + spec.loss.beta * kl.mean())


def loss_parts(spec: VAESpec, x: np.ndarray, probs: np.ndarray, mu: np.ndarray, logvar: np.ndarray,
               mask_block: int | None = None) -> tuple[float, float]:
    """The loss's reconstruction term and its KL term (before ``beta``), batch means, from a build's
    probabilities: what the training curves plot. BCE reads the probabilities clipped to [1e-7, 1 - 1e-7]
    (the logits are not part of the adapter's outputs), so it matches ``vae_loss`` up to that clip."""
    p = np.clip(np.asarray(probs, np.float64), MASKED_BCE_CLIP, 1 - MASKED_BCE_CLIP)
    x = np.asarray(x, np.float64)
    if spec.loss.reconstruction == "mse":
        recon = ((p - x) ** 2).sum(axis=1)
    else:
        bce = -(x * np.log(p) + (1 - x) * np.log(1 - p))
        if spec.loss.reconstruction == "masked_bce":
            mask = block_mask(spec, mask_block)
            recon = bce[:, mask].sum(axis=1) / mask.sum()
        else:
            recon = bce.sum(axis=1)
    mu, logvar = np.asarray(mu, np.float64), np.asarray(logvar, np.float64)
    kl = (-0.5 * (1 + logvar - mu**2 - np.exp(logvar))).reshape(len(x), -1).sum(axis=1)
    if spec.loss.kl_normalisation == "features":
        kl = kl / spec.input_length
    return float(recon.mean()), float(kl.mean())


def kl_per_element(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(q(z|x) || N(0, 1)) of each latent element, averaged over the batch (nats): the "active units"
    view, where a collapsed latent has every element near zero."""
    return (-0.5 * (1 + logvar - mu**2 - np.exp(logvar))).mean(axis=0)
