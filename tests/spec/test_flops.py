"""FLOPs of one training step from the spec (harness.spec.flops), against hand arithmetic written out here."""

from __future__ import annotations

import math

import pytest

from harness.measure.peak import flop_fields, mfu_fields
from harness.spec.flops import ADAM_FLOPS_PER_PARAM, ELEMENTWISE, step_flops
from harness.spec.params import count_params
from harness.spec.presets import resolve_spec


@pytest.mark.parametrize("batch", [1, 64, 512])
def test_dense_k7_matmul_flops_match_hand_arithmetic(batch):
    spec = resolve_spec("dense", kmer=7)
    assert spec.input_length == 8192
    B = batch  # noqa: N806
    # encoder 8192->1024->512, heads 512->256 twice, decoder 256->512->1024->8192
    forward = 2 * B * (8192 * 1024 + 1024 * 512 + 512 * 256 * 2 + 256 * 512 + 512 * 1024 + 1024 * 8192)
    f = step_flops(spec, B)
    assert f.matmul == 3 * forward
    assert sum(x.matmul_forward for x in f.by_layer) == forward
    assert sum(x.matmul_backward for x in f.by_layer) == 2 * forward
    # the first layer's input gradient, counted by the 3x convention though nobody computes it
    assert f.overcount == 2 * B * 8192 * 1024


def test_dense_k7_figures_quoted_in_the_readme():
    spec = resolve_spec("dense", kmer=7)
    assert step_flops(spec, 64).matmul == 6_996_099_072
    assert step_flops(spec, 512).matmul == 55_968_792_576
    assert step_flops(spec, 1).matmul == 109_314_048


def test_dense_k7_total_is_matmul_plus_the_stated_elementwise_constants():
    spec = resolve_spec("dense", kmer=7)
    B = 64  # noqa: N806
    f = step_flops(spec, B)
    bias_outputs = 1024 + 512 + 256 + 256 + 512 + 1024 + 8192  # every dense layer's output
    bn = leaky = 1024 + 512 + 512 + 1024  # four BatchNorm + LeakyReLU blocks
    per_sample = (bias_outputs * sum(ELEMENTWISE["bias"]) + bn * sum(ELEMENTWISE["batch_norm"])
                  + leaky * sum(ELEMENTWISE["leaky_relu"]) + 256 * sum(ELEMENTWISE["sampling"])
                  + 8192 * sum(ELEMENTWISE["bce_logits"]) + 256 * sum(ELEMENTWISE["kl"]))
    adam = ADAM_FLOPS_PER_PARAM * 18_236_928
    assert count_params(spec).trainable == 18_236_928
    assert f.elementwise == B * per_sample + adam
    assert f.total == f.matmul + f.elementwise == f.forward + f.backward + f.update
    assert f.update == adam
    # the constants chosen in the docstring
    assert ELEMENTWISE["bce_logits"] == (10, 6) and ELEMENTWISE["batch_norm"] == (8, 12) and ADAM_FLOPS_PER_PARAM == 12


def test_by_layer_names_kinds_and_the_3x_rule_per_weighted_layer():
    spec = resolve_spec("dense", kmer=7)
    f = step_flops(spec, 8)
    names = [x.name for x in f.by_layer]
    assert names[:3] == ["encoder.0", "encoder.1", "encoder.2"] and names[-3:] == ["sampling", "loss", "adam"]
    assert "z_mean" in names and "z_log_var" in names and "decoder.6" in names
    for x in f.by_layer:
        if x.kind in ("dense", "conv1d", "conv_transpose1d"):
            assert x.matmul_backward == 2 * x.matmul_forward > 0
        else:
            assert x.matmul == 0
    head = next(x for x in f.by_layer if x.name == "z_mean")
    assert head.kind == "dense" and head.matmul_forward == 2 * 8 * 512 * 256
    assert head.forward == head.matmul_forward + 8 * 256  # plus the bias add
    d = f.to_dict(layers=True)
    assert d["per_step"] == f.total and d["matmul_per_step"] == f.matmul and "multiply-add" in d["convention"]
    assert len(d["by_layer"]) == len(f.by_layer)


def test_conv_final_small_k_against_a_hand_count_of_one_conv_and_one_conv_transpose():
    spec = resolve_spec("conv-final", kmer=5)
    L = spec.input_length  # noqa: N806
    assert L == 512
    B = 4  # noqa: N806
    f = step_flops(spec, B)
    layer = {x.name: x for x in f.by_layer}
    # encoder.4: conv1d 64 filters, kernel 15, on (512/4 = 128 positions, 64 channels), "same" padding
    conv = layer["encoder.4"]
    assert conv.kind == "conv1d"
    assert conv.matmul_forward == 2 * B * 128 * 15 * 64 * 64
    assert conv.forward == conv.matmul_forward + B * 128 * 64  # bias
    assert conv.backward == 2 * conv.matmul_forward + B * 128 * 64
    # decoder.10: conv_transpose1d 1 filter, kernel 7, on (512 positions, 64 channels)
    convt = layer["decoder.10"]
    assert convt.kind == "conv_transpose1d"
    assert convt.matmul_forward == 2 * B * 512 * 7 * 64 * 1
    # every product of the spec: two convs, two conv-transposes, four dense layers
    macs = (512 * 7 * 1 * 64 + 128 * 15 * 64 * 64  # encoder convs
            + (8 * 64) * 1024 + 1024 * 256 * 2  # encoder dense (flatten of 8 x 64), heads
            + 256 * 1024 + 1024 * (8 * 64)  # decoder dense
            + 128 * 15 * 64 * 64 + 512 * 7 * 64 * 1)  # conv-transposes
    assert f.matmul == 3 * 2 * B * macs
    # the first conv has one input channel: its (uncomputed) input gradient is small
    assert f.overcount == 2 * B * 512 * 7 * 64
    # pooling compares, upsampling's backward adds, reshape and flatten cost nothing
    assert layer["encoder.3"].forward == B * (512 * 64 - 128 * 64) and layer["encoder.3"].backward == 0
    assert layer["decoder.5"].forward == 0 and layer["decoder.5"].backward == B * (32 * 64 - 8 * 64)
    assert layer["encoder.0"].total == layer["encoder.8"].total == 0


def test_flops_scale_linearly_with_the_batch_except_adam():
    spec = resolve_spec("conv-revised", kmer=5)
    f1, f8 = step_flops(spec, 1), step_flops(spec, 8)
    assert f8.matmul == 8 * f1.matmul
    assert f8.update == f1.update == ADAM_FLOPS_PER_PARAM * count_params(spec).trainable
    assert f8.total - f8.update == 8 * (f1.total - f1.update)


def test_bad_batch_is_rejected():
    spec = resolve_spec("dense", kmer=3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch"):
            step_flops(spec, bad)


def test_row_fields_rates_and_mfu():
    spec = resolve_spec("dense", kmer=7)
    f = step_flops(spec, 64)
    fields = flop_fields(f, 0.010, 0.008)
    assert fields["flops"]["per_step"] == f.total and fields["flops"]["matmul_per_step"] == f.matmul
    assert math.isclose(fields["tflops"]["step"], f.total / 0.010 / 1e12)
    assert math.isclose(fields["tflops"]["matmul_device_step"], f.matmul / 0.008 / 1e12)
    peak = {"tflops": 2.0, "device_kind": "gpu"}
    out = mfu_fields(fields["tflops"], peak)
    assert out["matmul_peak_tflops"] == 2.0
    assert math.isclose(out["mfu"]["step"], f.matmul / 0.010 / 1e12 / 2.0)
    assert math.isclose(out["mfu"]["device_step"], f.matmul / 0.008 / 1e12 / 2.0)
    # no peak, a failed peak, a peak of the other device kind, a row without timings: None, never an error
    none = {"step": None, "device_step": None}
    assert mfu_fields(fields["tflops"], None) == {"mfu": none, "matmul_peak_tflops": None}
    assert mfu_fields(fields["tflops"], {"tflops": None, "error": "x"})["mfu"] == none
    assert mfu_fields(fields["tflops"], peak, row_device="cpu")["mfu"] == none
    assert mfu_fields(None, peak)["mfu"] == none
    assert flop_fields(f, float("nan"), None)["tflops"]["step"] is None
