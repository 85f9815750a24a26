"""Preflight arithmetic against hand calculations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.diagnose.preflight import INT32_LIMIT, estimate_memory, preflight, tensor_table, wrap_int32
from harness.spec.layers import L
from harness.spec.params import count_params
from harness.spec.presets import preset
from harness.spec.schema import VAESpec, canonical_kmer_count


def wide_conv(length: int = 8192, filters: int = 512) -> VAESpec:
    """A spec with one (8192, 512) activation per sample: 512 x 8,192 x 512 = 2^31 at batch 512."""
    return VAESpec("wide", length, 16,
                   encoder=(L("reshape", shape=[length, 1]), L("conv1d", filters=filters, kernel_size=3),
                            L("relu"), L("max_pool1d", pool_size=length), L("flatten")),
                   decoder=(L("dense", units=length),))


def test_wrap_matches_the_tensorflow_message():
    # the user's log: work_element_count >= 0 (-1673527296 vs. 0) for 5000 x 8192 x 64
    assert wrap_int32(5000 * 8192 * 64) == -1673527296
    assert wrap_int32(2**31) == -(2**31)
    assert wrap_int32(2**31 - 1) == 2**31 - 1


def test_hand_arithmetic_limit_is_exact():
    spec = wide_conv()
    at_512 = [t for t in tensor_table(spec, 512) if t.layer == "encoder.1" and t.kind == "conv output"][0]
    assert at_512.shape == (512, 8192, 512) and at_512.elements == 512 * 8192 * 512 == INT32_LIMIT
    assert at_512.overflows and at_512.safe_batch(512) == 511
    at_511 = [t for t in tensor_table(spec, 511) if t.layer == "encoder.1" and t.kind == "conv output"][0]
    assert at_511.elements == 511 * 8192 * 512 and not at_511.overflows


def test_user_conv_final_at_5000_is_flagged_with_the_wrapped_count():
    rep = preflight(preset("conv-final", 8192), 5000, device="gpu", device_memory=80 * 10**9, int32_applies=True)
    flagged = {(t.layer, t.kind) for t in rep.flags}
    assert ("encoder.1", "conv output") in flagged and ("decoder.9", "upsampled output") in flagged
    assert not rep.ok and "-1673527296" in rep.reasons[0] and "4095" in rep.reasons[0]
    assert preflight(preset("conv-final", 8192), 4095, device="gpu", device_memory=80 * 10**9,
                     int32_applies=True).ok


def test_conv_original_at_k7_lists_every_tensor_kind():
    spec = preset("conv-original", 8192)
    tensors = tensor_table(spec, 512, eval_batch=4096)
    kinds = {t.kind for t in tensors}
    assert {"activation", "pool indices", "upsampled output", "conv-transpose output", "conv output", "weight",
            "gradient", "adam m", "adam v"} <= kinds
    assert {t.pass_ for t in tensors} == {"train", "eval"}
    # by the preset's own shapes the largest activation is 8192 x 256 = 4096 x 512 = 2^21 per sample:
    # the training batch of 512 stays at 2^30, the eval batch of 4096 passes 2^31
    assert max(t.elements for t in tensors if t.pass_ == "train" and t.per_sample) == 512 * 2**21
    assert any(t.overflows for t in tensors if t.pass_ == "eval")
    weights = sum(t.elements for t in tensors if t.kind == "weight")
    assert weights == count_params(spec).total


def test_memory_estimate_is_weights_grads_adam_plus_activations_and_workspace():
    spec = preset("dense", canonical_kmer_count(5))
    est = estimate_memory(tensor_table(spec, 64))
    c = count_params(spec)
    assert est.state_bytes == 4 * (c.total + 3 * c.trainable)
    weights = 4 * c.total
    assert est.workspace_bytes == max(2 * 4 * 64 * 1024, 2 * weights)  # backward or optimizer transients
    assert est.train_bytes == est.state_bytes + est.activation_bytes + est.workspace_bytes


def test_loss_terms_and_logits_gradient_are_counted_at_the_output_size():
    spec = preset("dense", canonical_kmer_count(5))
    loss = [t for t in tensor_table(spec, 64, eval_batch=256) if t.layer == "loss"]
    assert sorted(t.kind for t in loss) == ["logits gradient", "loss terms"]
    assert all(t.pass_ == "train" and t.shape == (64, 512) and t.per_sample for t in loss)


def test_preflight_skips_what_cannot_fit():
    rep = preflight(preset("conv-original", 8192), 8, device_memory=24 * 10**9, device="cpu")
    assert not rep.ok and "would need" in rep.reasons[0] and "24.0 GB" in rep.reasons[0]


@pytest.mark.worker
@pytest.mark.parametrize("batch,code", [(511, 0), (5000, 3)])
def test_cli_exit_codes_and_json(batch, code):
    out = subprocess.run([sys.executable, "-m", "bench", "preflight", "--spec", "conv-final", "--kmer", "7",
                          "--batch", str(batch), "--gpu", "--device-memory", "80GB", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == code, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] == (code == 0)
    if code:
        assert len(out.stderr.strip().splitlines()) == 1 and "int32 overflow" in out.stderr


def test_an_eval_batch_that_cannot_fit_is_not_called_fitting():
    """Issue 27: ``preflight --eval-batch 1e20`` answered "fits": the eval batch's memory was estimated and
    never compared with the memory at hand."""
    spec = preset("dense", canonical_kmer_count(3))
    ok = preflight(spec, 4, eval_batch=64, device_memory=2**30, device="cpu")
    assert ok.ok, ok.reasons
    big = preflight(spec, 4, eval_batch=2**40, device_memory=2**30, device="cpu")
    assert not big.ok
    assert any(r.startswith(f"the eval batch of {2**40:,} would need") for r in big.reasons), big.reasons


@pytest.mark.worker
def test_a_batch_beyond_int64_is_one_line_at_parse_time():
    out = subprocess.run([sys.executable, "-m", "bench", "preflight", "--spec", "dense", "--kmer", "3", "--batch", "4",
                          "--eval-batch", str(10**20)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "does not fit in a 64-bit integer" in out.stderr, out.stderr
