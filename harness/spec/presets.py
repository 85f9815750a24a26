"""The user's own designs, from their log, as ready specs.

Each preset is a function of the input length L so that ``--kmer K`` can size it.
The layer lists are exactly those of the log (see docs/presets.md).
Conv presets start with ``reshape (L, 1)`` (one channel) and end with
``flatten`` so the decoder emits L logits; the sigmoid is ``output_activation``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from harness.spec.layers import L, Layer, SpecError
from harness.spec.schema import LatentHeads, Loss, Optimizer, VAESpec, canonical_kmer_count, load_spec, validate


def _dense(n: int) -> VAESpec:
    block = lambda units: (L("dense", units=units), L("batch_norm"), L("leaky_relu", negative_slope=0.2))  # noqa: E731
    return VAESpec(
        name="dense",
        input_length=n,
        latent_dim=256,
        encoder=(*block(1024), *block(512)),
        decoder=(*block(512), *block(1024), L("dense", units=n)),
    )


def _conv_final(n: int) -> VAESpec:
    return VAESpec(
        name="conv-final",
        input_length=n,
        latent_dim=256,
        encoder=(
            L("reshape", shape=[n, 1]),
            L("conv1d", filters=64, kernel_size=7), L("relu"),
            L("max_pool1d", pool_size=4),
            L("conv1d", filters=64, kernel_size=15), L("relu"),
            L("max_pool1d", pool_size=4),
            L("max_pool1d", pool_size=4),
            L("flatten"),
            L("dense", units=1024), L("relu"),
        ),
        decoder=(
            L("dense", units=1024), L("relu"),
            L("dense", units=(n // 64) * 64), L("relu"),
            L("reshape", shape=[n // 64, 64]),
            L("upsample1d", size=4),
            L("upsample1d", size=4),
            L("conv_transpose1d", filters=64, kernel_size=15), L("relu"),
            L("upsample1d", size=4),
            L("conv_transpose1d", filters=1, kernel_size=7),
            L("flatten"),
        ),
    )


def _conv_revised(n: int) -> VAESpec:
    return VAESpec(
        name="conv-revised",
        input_length=n,
        latent_dim=256,
        encoder=(
            L("reshape", shape=[n, 1]),
            L("conv1d", filters=128, kernel_size=7), L("relu"),
            L("max_pool1d", pool_size=4),
            L("conv1d", filters=256, kernel_size=15), L("relu"),
            L("max_pool1d", pool_size=4),
            L("flatten"),
            L("dense", units=1024), L("relu"),
        ),
        decoder=(
            L("dense", units=1024), L("relu"),
            L("dense", units=(n // 16) * 256), L("relu"),
            L("reshape", shape=[n // 16, 256]),
            L("upsample1d", size=4),
            L("conv_transpose1d", filters=128, kernel_size=15), L("relu"),
            L("upsample1d", size=4),
            L("conv_transpose1d", filters=1, kernel_size=7),
            L("flatten"),
        ),
    )


def _conv_original(n: int) -> VAESpec:
    return VAESpec(
        name="conv-original",
        input_length=n,
        latent_dim=256,
        encoder=(
            L("reshape", shape=[n, 1]),
            L("conv1d", filters=256, kernel_size=7), L("relu"),
            L("max_pool1d", pool_size=2),
            L("conv1d", filters=512, kernel_size=15), L("relu"),
            L("flatten"),
        ),
        decoder=(
            L("dense", units=(n // 2) * 512), L("relu"),
            L("reshape", shape=[n // 2, 512]),
            L("conv_transpose1d", filters=256, kernel_size=15), L("relu"),
            L("upsample1d", size=2),
            L("conv_transpose1d", filters=1, kernel_size=7),
            L("flatten"),
        ),
    )


def _conv_strided(n: int) -> VAESpec:
    """Seed 002's 1-D conv VAE: stride-2 convs halve the length (rounding up), stride-2
    conv-transposes double it, and the decoder's output is cropped or padded to L."""
    block = lambda kind, filters: (L(kind, filters=filters, kernel_size=3, stride=2),  # noqa: E731
                                   L("batch_norm"), L("gelu"))
    length = n
    for _ in range(4):
        length = -(-length // 2)
    return VAESpec(
        name="conv-strided",
        input_length=n,
        latent_dim=64,
        encoder=(
            L("reshape", shape=[n, 1]),
            *block("conv1d", 32), *block("conv1d", 64), *block("conv1d", 128), *block("conv1d", 256),
            L("flatten"),
        ),
        decoder=(
            L("dense", units=length * 256),
            L("reshape", shape=[length, 256]),
            *block("conv_transpose1d", 128), *block("conv_transpose1d", 64), *block("conv_transpose1d", 32),
            L("conv_transpose1d", filters=1, kernel_size=3, stride=2),
            L("flatten"),
        ),
        output_length_policy="crop_or_pad",
    )


def _resvae(n: int) -> VAESpec:
    """Seed 002's ResVAE: four residual down blocks (conv k3 stride 2, GELU, conv k3, plus a 1x1 stride-2
    conv skip, then GELU), latent 32, four mirrored up blocks of conv-transposes (the last to one channel,
    no activation: logits), cropped or padded to L, MSE loss."""
    def block(kind: str, filters: int, activation: str | None = "gelu") -> Layer:
        return L("residual", layers=(L(kind, filters=filters, kernel_size=3, stride=2), L("gelu"),
                                     L(kind, filters=filters, kernel_size=3)),
                 skip=L(kind, filters=filters, kernel_size=1, stride=2), activation=activation)
    length = n
    for _ in range(4):
        length = -(-length // 2)
    return VAESpec(
        name="resvae",
        input_length=n,
        latent_dim=32,
        encoder=(L("reshape", shape=[n, 1]), *(block("conv1d", c) for c in (32, 64, 128, 256)), L("flatten")),
        decoder=(
            L("dense", units=length * 256),
            L("reshape", shape=[length, 256]),
            *(block("conv_transpose1d", c) for c in (128, 64, 32)),
            block("conv_transpose1d", 1, activation=None),
            L("flatten"),
        ),
        output_length_policy="crop_or_pad",
        loss=Loss(reconstruction="mse"),
    )


def _autoencoder_kl(n: int) -> VAESpec:
    """Seed 001's AutoencoderKL in 1-D: ResNet blocks (GroupNorm 32, SiLU, conv k3, GroupNorm, SiLU, a
    zero-initialised conv k3, a 1x1 skip where the channels change), levels of 64, 128 and 256 channels
    with a conv k2 stride 2 down between them, a middle of ResNet, attention, ResNet, and a
    DiagonalGaussian over a (L/4, 4) feature map from conv1d heads; the decoder mirrors it with
    conv-transpose k2 stride 2 up. BCE from logits, beta 1e-3.

    Left out of the original: the 1x1 ``quant_conv`` / ``post_quant_conv`` around the latent (a spec's
    heads are two convs, one conv to 8 channels split in two)."""
    def resnet(c_in: int, c_out: int) -> Layer:
        return L("residual", layers=(L("group_norm", groups=32), L("silu"), L("conv1d", filters=c_out, kernel_size=3),
                                     L("group_norm", groups=32), L("silu"),
                                     L("conv1d", filters=c_out, kernel_size=3, init="zeros")),
                 skip="identity" if c_in == c_out else L("conv1d", filters=c_out, kernel_size=1), activation=None)
    attention = L("attention1d", groups=32, init="zeros")
    middle = (resnet(256, 256), attention, resnet(256, 256))
    return VAESpec(
        name="autoencoder-kl",
        input_length=n,
        latent_dim=4,
        latent_heads=LatentHeads(type="conv1d", kernel_size=3),
        encoder=(
            L("reshape", shape=[n, 1]),
            L("conv1d", filters=64, kernel_size=3),
            resnet(64, 64), L("conv1d", filters=64, kernel_size=2, stride=2),
            resnet(64, 128), L("conv1d", filters=128, kernel_size=2, stride=2),
            resnet(128, 256),
            *middle,
            L("group_norm", groups=32), L("silu"),
        ),
        decoder=(
            L("conv1d", filters=256, kernel_size=3),
            *middle,
            resnet(256, 256), L("conv_transpose1d", filters=256, kernel_size=2, stride=2),
            resnet(256, 128), L("conv_transpose1d", filters=128, kernel_size=2, stride=2),
            resnet(128, 64),
            L("group_norm", groups=32), L("silu"),
            L("conv1d", filters=1, kernel_size=3),
            L("flatten"),
        ),
        output_length_policy="crop_or_pad",
        loss=Loss(reconstruction="bce_logits", beta=1e-3),
    )


#: the masked multi-omics VAE's features: DNAm, H3K9me3, H3K27me3 and one expression value (seed 004)
MULTIOMICS_BLOCKS = (4000, 4000, 4000, 1)


def _masked_multiomics(n: int) -> VAESpec:
    """Seed 004's masked VAE on 12,001 multi-omics features: each minibatch one feature block is set to
    -1; Dense 150 SELU, Dense 100 SELU, latent 50, the mirror, sigmoid; BCE on the masked block only,
    the KL divided by the number of features. ``n`` must be 12,001 (``FIXED_INPUT_LENGTH``).

    Adam's rate is 1e-4, not the 1e-3 the other presets pin: with the KL divided by 12,001 nothing holds the
    log-variance back, and at 1e-3 every framework diverged on synthetic binary rows at batch 64 (losses of
    1e11 to 7e18 within 15 steps in torch, flax and keras-torch; keras-jax reached NaN at step 9, the one
    failed cell of the fresh main command at b5fd1a2); at 1e-4, 60 steps stayed under 0.91 in torch and
    0.72 in keras-jax. Gradient clipping at 1.0 did not stop it at 1e-3."""
    return VAESpec(
        name="masked-multiomics",
        input_length=n,
        latent_dim=50,
        encoder=(L("masking", blocks=list(MULTIOMICS_BLOCKS)),
                 L("dense", units=150), L("selu"), L("dense", units=100), L("selu")),
        decoder=(L("dense", units=100), L("selu"), L("dense", units=150), L("selu"), L("dense", units=n)),
        loss=Loss(reconstruction="masked_bce", kl_normalisation="features"),
        optimizer=Optimizer(lr=1e-4),
    )


#: presets whose input is not a k-mer profile: their own length, whatever ``--kmer`` says
FIXED_INPUT_LENGTH: dict[str, int] = {"masked-multiomics": sum(MULTIOMICS_BLOCKS)}

#: the user's designs, which the default matrix runs (``harness/run/matrix.py``) and ``params`` lists
PRESETS: dict[str, Callable[[int], VAESpec]] = {
    "dense": _dense,
    "conv-final": _conv_final,
    "conv-revised": _conv_revised,
    "conv-original": _conv_original,
}
#: the seeds' designs (issue 13): the default matrix runs them too, a CPU one only those its budget
#: allows (``harness.run.matrix.CPU_ONLY_WHEN_NAMED``)
SEED_PRESETS: dict[str, Callable[[int], VAESpec]] = {
    "conv-strided": _conv_strided,
    "resvae": _resvae,
    "autoencoder-kl": _autoencoder_kl,
    "masked-multiomics": _masked_multiomics,
}
#: every preset ``--spec`` accepts
ALL_PRESETS: dict[str, Callable[[int], VAESpec]] = {**PRESETS, **SEED_PRESETS}


def preset(name: str, input_length: int) -> VAESpec:
    if name not in ALL_PRESETS:
        raise SpecError(f"unknown spec {name!r}; presets are {', '.join(ALL_PRESETS)}, or pass a .json/.yaml spec file")
    return validate(ALL_PRESETS[name](FIXED_INPUT_LENGTH.get(name, input_length)))


def resolve_spec(name_or_path: str, kmer: int | None = None, input_length: int | None = None) -> VAESpec:
    """A preset name or a spec file, sized by ``--kmer`` when one is given.

    A file's own ``input_length`` is kept unless ``--kmer`` overrides it.
    """
    if kmer is not None:
        input_length = canonical_kmer_count(kmer)
    if name_or_path in FIXED_INPUT_LENGTH:  # not sized by k: --kmer only picks the data, if any
        return preset(name_or_path, FIXED_INPUT_LENGTH[name_or_path])
    if name_or_path in ALL_PRESETS:
        if input_length is None:
            raise SpecError(f"preset {name_or_path!r} needs --kmer K (or an input length) to size it")
        return preset(name_or_path, input_length)
    path = Path(name_or_path)
    if path.suffix in (".json", ".yaml", ".yml") or path.exists():
        spec = load_spec(path)
        if input_length is not None and input_length != spec.input_length:
            raise SpecError(
                f"spec file {path} is built for input length {spec.input_length}, "
                f"not {input_length}; drop --kmer or edit the file"
            )
        return spec
    raise SpecError(f"unknown spec {name_or_path!r}; presets are {', '.join(ALL_PRESETS)}, "
                    "or pass a .json/.yaml spec file")


__all__ = ["ALL_PRESETS", "PRESETS", "SEED_PRESETS", "preset", "resolve_spec", "Layer"]
