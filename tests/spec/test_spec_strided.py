"""Strided conv and conv-transpose, ``output_length_policy: crop_or_pad`` and ``optimizer.clip_global_norm``
in the framework-free spec: shapes, one-line errors, the numpy reference that defines them, FLOPs."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.strided_specs import STRIDED

from harness.spec.flops import step_flops
from harness.spec.layers import SpecError
from harness.spec.params import count_params, param_table
from harness.spec.presets import ALL_PRESETS, PRESETS, preset, resolve_spec
from harness.spec.reference import (
    _conv1d_same,
    _conv_transpose1d_same,
    crop_or_pad,
    eval_forward,
    init_weights,
)
from harness.spec.schema import VAESpec, canonical_kmer_count
from harness.spec.shapes import infer_shapes, same_padding, transpose_trim

PADDED = STRIDED


def test_conv_strided_lengths_at_k4_and_k6():
    """k=4: 136 -> 68 -> 34 -> 17 -> 9, up to 144, cropped to 136; k=6 halves evenly to 130 and back."""
    shapes = infer_shapes(resolve_spec("conv-strided", kmer=4))
    convs = [s.out_shape[0] for s in shapes if s.layer.type in ("conv1d", "conv_transpose1d")]
    assert convs == [68, 34, 17, 9, 18, 36, 72, 144]
    assert shapes[-1].out_shape == (144,)  # the flatten; crop_or_pad makes it (136,)
    convs6 = [s.out_shape[0] for s in infer_shapes(resolve_spec("conv-strided", kmer=6))
              if s.layer.type in ("conv1d", "conv_transpose1d")]
    assert convs6 == [1040, 520, 260, 130, 260, 520, 1040, 2080]


def test_conv_strided_counts_at_k7_quoted_in_the_readme():
    c = count_params(resolve_spec("conv-strided", kmer=7))
    assert (c.trainable, c.non_trainable) == (25_557_377, 1_408)


def test_default_stride_and_policy_keep_old_specs_and_hashes():
    """Stride 1 and policy 'exact' are left out of to_dict, so every older spec keeps its hash."""
    known = {"dense": "77f3b969bd58e1a5", "conv-final": "d1fcec1367124cd0",
             "conv-revised": "2f57c2ee28d9d47d", "conv-original": "ce311e1c7a6954cb"}
    for name, digest in known.items():
        spec = preset(name, 8192)
        assert spec.hash == digest, name
        assert "output_length_policy" not in spec.to_dict() and "clip_global_norm" not in spec.to_dict()["optimizer"]
    strided = preset("conv-strided", 512)
    again = VAESpec.from_dict(strided.to_dict())
    assert again == strided and again.hash == strided.hash
    clipped = strided.with_clip_norm(1.0)
    assert clipped.to_dict()["optimizer"]["clip_global_norm"] == 1.0 and clipped.hash != strided.hash
    assert VAESpec.from_dict(clipped.to_dict()) == clipped
    assert strided.with_clip_norm(None) is strided


def _bad(**changes) -> str:
    raw = preset("conv-strided", 32).to_dict()
    for key, value in changes.items():
        section, _, index = key.partition("__")
        if index:
            raw[section][int(index)].update(value)
        else:
            raw[section] = value
    with pytest.raises(SpecError) as exc:
        VAESpec.from_dict(raw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_bad_specs_get_one_line_errors():
    assert "encoder[1] (conv1d): stride must be a positive integer, got 0" in _bad(encoder__1={"stride": 0})
    assert "stride must be a positive integer, got 1.5" in _bad(decoder__2={"stride": 1.5})
    assert "kernel_size 4 is even" in _bad(encoder__1={"stride": 1, "kernel_size": 4})
    msg = _bad(output_length_policy="crop")
    assert "output_length_policy 'crop' is not supported; use one of exact, crop_or_pad" in msg
    raw = preset("conv-strided", 30).to_dict()  # 30 -> 15 -> 8 -> 4 -> 2, up to 32
    raw["output_length_policy"] = "exact"
    with pytest.raises(SpecError, match=r"decoder ends with shape \(32,\) but the input length is 30; .* "
                                        r"or set output_length_policy: crop_or_pad$"):
        VAESpec.from_dict(raw)
    raw = PADDED.to_dict()
    raw["decoder"] = raw["decoder"][:-1]  # ends (30, 1): not flat
    with pytest.raises(SpecError, match=r"crop_or_pad crops or pads a flat output, so end the decoder with a flatten"):
        VAESpec.from_dict(raw)
    for clip in (0, -1.0, "1", float("inf"), True):
        assert "optimizer.clip_global_norm must be a positive number" in _bad(optimizer={"clip_global_norm": clip})


def test_same_padding_and_transpose_trim():
    assert same_padding(136, 3, 2) == (0, 1) and same_padding(17, 3, 2) == (1, 1)
    assert same_padding(32, 7, 1) == (3, 3) and same_padding(32, 4, 3) == (1, 1) and same_padding(31, 4, 3) == (1, 2)
    assert transpose_trim(3, 2) == (0, 1) and transpose_trim(7, 1) == (3, 3) and transpose_trim(2, 3) == (0, 0)


@pytest.mark.parametrize(("length", "kernel", "stride"), [(17, 3, 2), (16, 3, 2), (9, 5, 1), (10, 4, 3), (7, 2, 3)])
def test_reference_conv_transpose_is_the_adjoint_of_the_strided_conv(length, kernel, stride):
    """<conv(x), y> == <x, conv_transpose(y)> with the same (k, in, out) array read as (k, out, in):
    the transpose goes from L to L*s, the conv from L*s back to ceil(L*s / s) = L."""
    rng = np.random.default_rng(0)
    k = rng.normal(size=(kernel, 3, 2))
    x = rng.normal(size=(2, length * stride, 3))
    y = rng.normal(size=(2, length, 2))
    cx = _conv1d_same(x, k, stride)
    ty = _conv_transpose1d_same(y, k, stride)
    assert cx.shape == (2, length, 2) and ty.shape == x.shape
    assert np.sum(cx * y) == pytest.approx(np.sum(x * ty), rel=1e-12)


def test_reference_strided_conv_against_direct_sums():
    """Keras 'same': output l reads input positions l*s + j - left, zero outside."""
    rng = np.random.default_rng(1)
    x, k = rng.normal(size=(1, 17, 2)), rng.normal(size=(3, 2, 4))
    y = _conv1d_same(x, k, 2)
    left, _ = same_padding(17, 3, 2)
    for o in range(y.shape[1]):
        want = sum(x[0, o * 2 + j - left] @ k[j] for j in range(3) if 0 <= o * 2 + j - left < 17)
        np.testing.assert_allclose(y[0, o], want, rtol=1e-12)
    # stride 1 is the old symmetric 'same' conv
    y1 = _conv1d_same(x, k, 1)
    for o in range(17):
        want = sum(x[0, o + j - 1] @ k[j] for j in range(3) if 0 <= o + j - 1 < 17)
        np.testing.assert_allclose(y1[0, o], want, rtol=1e-12)


def test_crop_or_pad_in_the_reference_forward():
    h = np.arange(10.0).reshape(2, 5)
    np.testing.assert_array_equal(crop_or_pad(h, 3), h[:, :3])
    np.testing.assert_array_equal(crop_or_pad(h, 7), np.hstack([h, np.zeros((2, 2))]))
    rng = np.random.default_rng(0)
    x, eps = rng.random((2, 32)), rng.normal(size=(2, 4))
    out = eval_forward(PADDED, init_weights(PADDED), x, eps)
    assert out["logits"].shape == (2, 32) and np.abs(out["logits"][:, :30]).min(axis=0).max() > 0
    assert not out["logits"][:, 30:].any() and np.all(out["recon"][:, 30:] == 0.5)
    spec = resolve_spec("conv-strided", kmer=3)
    assert eval_forward(spec, init_weights(spec), rng.random((2, 32)), rng.normal(size=(2, 64)))["recon"].shape == (2, 32)


def test_strided_flops_count_output_positions_for_convs_and_input_positions_for_transposes():
    spec = resolve_spec("conv-strided", kmer=4)
    f = {x.name: x for x in step_flops(spec, 2).by_layer}
    # encoder.1: conv 1 -> 32, k3, 136 -> 68 outputs; decoder.11: conv-transpose 32 -> 1, 72 inputs -> 144
    assert f["encoder.1"].matmul_forward == 2 * 2 * 68 * 3 * 1 * 32
    assert f["decoder.11"].matmul_forward == 2 * 2 * 72 * 3 * 32 * 1
    assert f["decoder.11"].forward == f["decoder.11"].matmul_forward + 2 * 144  # bias on the 144 outputs


def test_every_preset_has_a_param_table_and_conv_strided_kernels_ignore_the_stride():
    for name in ALL_PRESETS:
        assert param_table(preset(name, canonical_kmer_count(5)))
    table = {p.name: p.shape for p in param_table(resolve_spec("conv-strided", kmer=5))}
    assert table["encoder.1.kernel"] == (3, 1, 32) and table["decoder.2.kernel"] == (3, 128, 256)
    assert table["decoder.11.kernel"] == (3, 1, 32) and table["decoder.0.kernel"] == (64, 32 * 256)


def test_conv_strided_runs_in_a_gpu_matrix_and_is_a_skipped_row_in_a_cpu_one():
    """A seed preset: a GPU default matrix runs it; a CPU one lists it as skipped with the reason (its
    strided conv-transposes take 18-19 s a step in XLA on 2 cores at k=7); --spec names it anywhere."""
    from harness.run.matrix import plan_default

    assert "conv-strided" in ALL_PRESETS and "conv-strided" not in PRESETS
    assert "conv-strided" in [spec.name for spec, _ in plan_default(7, "gpu").specs]
    cpu = plan_default(7, "cpu")
    assert "conv-strided" not in [spec.name for spec, _ in cpu.specs]
    assert "conv-strided" in [spec.name for spec, _ in cpu.too_slow]
    assert resolve_spec("conv-strided", kmer=3).name == "conv-strided"
    with pytest.raises(SpecError, match="presets are dense, conv-final, conv-revised, conv-original, conv-strided"):
        resolve_spec("conv-stride", kmer=3)


def test_clip_norm_flag_on_run_matrix_and_parity():
    from bench.parser import build_parser

    parser = build_parser()
    for verb in (["run"], ["matrix"], ["parity"]):
        args = parser.parse_args([*verb, "--kmer", "3", "--clip-norm", "1.0"])
        assert args.clip_norm == 1.0
        assert parser.parse_args([*verb, "--kmer", "3"]).clip_norm is None
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*verb, "--kmer", "3", "--clip-norm", "0"])
        assert exc.value.code == 2
