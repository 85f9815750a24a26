"""Issue 13's last layers on the framework-free side: the spec, its one-line errors, the numpy reference
(the definition every build is tested against), FLOPs, preflight, the fixed-length preset's data and CLI,
and where the default matrix puts the new presets."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from fixtures.paths import REPO
from fixtures.seed_layer_specs import KL_SMALL, MASKED_SMALL

from harness.data import make_source
from harness.diagnose.preflight import tensor_table
from harness.run.matrix import CPU_ONLY_WHEN_NAMED, matrix_cells, plan_default
from harness.spec.flops import step_flops
from harness.spec.layers import SpecError
from harness.spec.params import count_params, param_table
from harness.spec.presets import ALL_PRESETS, preset, resolve_spec
from harness.spec.reference import (
    SELU_ALPHA,
    SELU_SCALE,
    _apply,
    apply_masking,
    attention1d,
    eval_forward,
    group_norm,
    init_weights,
    perturb_zero_init,
    vae_loss,
)
from harness.spec.schema import VAESpec
from harness.spec.shapes import latent_shape


def _raw(spec: VAESpec) -> dict:
    return json.loads(spec.to_json())


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["encoder"].insert(len(r["encoder"]), {"type": "flatten"}) or
     r["encoder"].append({"type": "attention1d", "groups": 4}),
     r"encoder\[\d+\] \(attention1d\): needs \(length, channels\) but gets the flat shape \(256,\); add a reshape"),
    (lambda r: r["encoder"][5].update(groups=5),
     r"encoder\[5\] \(attention1d\): groups 5 do not divide its 16 channels; use a divisor of 16, such as 4$"),
    (lambda r: r["encoder"][6].update(groups=3),
     r"encoder\[6\] \(group_norm\): groups 3 do not divide its 16 channels; use a divisor of 16, such as 2$"),
    (lambda r: r["encoder"][1].update(init="ones"),
     r"encoder\[1\] \(conv1d\): init must be 'zeros' \(or left out for the spec's kernel_init\), got 'ones'$"),
    (lambda r: r["encoder"].append({"type": "flatten"}),
     r"encoder ends with shape \(256,\); conv1d latent heads need \(length, channels\), so drop the final flatten"),
])
def test_bad_autoencoder_kl_specs_get_one_line_errors(edit, message):
    raw = _raw(KL_SMALL)
    edit(raw)
    with pytest.raises(SpecError, match=message) as info:
        VAESpec.from_dict(raw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["encoder"][0].update(blocks=[10, 8, 4]),
     r"encoder\[0\] \(masking\): blocks \[10, 8, 4\] sum to 22, not the input length 23; give sizes that add up to 23$"),
    (lambda r: r["encoder"][0].update(blocks=[10, 0, 12, 1]),
     r"encoder\[0\] \(masking\): blocks must be a list of positive block sizes"),
    (lambda r: r.update(encoder=r["encoder"][1:]),
     r"loss masked_bce scores the masked block only, so the encoder must start with a masking layer"),
    (lambda r: r["encoder"].insert(1, r["encoder"][0]),
     r"encoder\[1\] \(masking\): masking acts on the input, so it must be the encoder's first layer$"),
    (lambda r: r["loss"].update(kl_normalisation="latent"),
     r"loss.kl_normalisation 'latent' is not supported; use one of batch, features$"),
])
def test_bad_masked_specs_get_one_line_errors(edit, message):
    raw = _raw(MASKED_SMALL)
    edit(raw)
    with pytest.raises(SpecError, match=message) as info:
        VAESpec.from_dict(raw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec", [KL_SMALL, MASKED_SMALL, preset("autoencoder-kl", 512),
                                  preset("masked-multiomics", 1)], ids=lambda s: s.name)
def test_new_specs_round_trip_with_their_hash(spec):
    again = VAESpec.from_dict(json.loads(spec.to_json()))
    assert again == spec and again.hash == spec.hash


def test_specs_written_before_the_new_keys_keep_their_hash():
    """group_norm_epsilon, kl_normalisation and latent_heads stay out of a spec that does not use them, so
    the hashes stored in the committed reference run still name today's presets."""
    rows = [json.loads(line) for line in (REPO / "reports/reference/cpu/k7-2core-cpu/results.jsonl").open()]
    stored = {r["spec_name"]: r["spec_hash"] for r in rows}
    assert set(stored) >= {"dense", "conv-final", "conv-revised"}
    for name, digest in stored.items():
        assert preset(name, 8192).hash == digest, name
    d = preset("dense", 8192).to_dict()
    assert "group_norm_epsilon" not in d["settings"] and "kl_normalisation" not in d["loss"]
    assert "latent_heads" not in d
    assert preset("autoencoder-kl", 8192).to_dict()["settings"]["group_norm_epsilon"] == 1e-6


def test_preset_counts_at_k7():
    """The counts of docs/presets.md; the builds' own counts are checked against these by ``bench params``."""
    assert count_params(preset("autoencoder-kl", 8192)).trainable == 3_380_937
    assert count_params(preset("masked-multiomics", 8192)).trainable == 3_657_901
    assert latent_shape(preset("autoencoder-kl", 8192)) == (2048, 4)
    names = {p.name for p in param_table(preset("autoencoder-kl", 8192)) if p.zero_init}
    assert "encoder.2.inner.5.kernel" in names and "encoder.8.proj.kernel" in names
    assert "encoder.8.q.kernel" not in names


def test_the_fixed_length_preset_ignores_kmer_and_the_others_need_it():
    assert resolve_spec("masked-multiomics").input_length == 12_001
    assert resolve_spec("masked-multiomics", kmer=7).input_length == 12_001
    with pytest.raises(SpecError, match="preset 'autoencoder-kl' needs --kmer K"):
        resolve_spec("autoencoder-kl")


# ------------------------------------------------------------------------ the reference


def test_group_norm_normalises_each_group_of_each_sample():
    x = np.random.default_rng(0).normal(3, 2, (2, 5, 6))
    y = group_norm(x, 3, np.ones(6), np.zeros(6), 1e-9)
    for g in range(3):
        block = y[:, :, 2 * g : 2 * g + 2].reshape(2, -1)
        np.testing.assert_allclose(block.mean(axis=1), 0, atol=1e-9)
        np.testing.assert_allclose(block.var(axis=1), 1, atol=1e-6)
    assert not np.allclose(group_norm(x, 1, np.ones(6), np.zeros(6), 1e-9), y)  # the groups matter


def test_attention_is_permutation_equivariant_and_a_zero_projection_is_the_identity():
    spec = KL_SMALL
    layer = spec.encoder[5]
    w = perturb_zero_init(spec, init_weights(spec))
    x = np.random.default_rng(1).normal(size=(2, 16, 16))
    y = attention1d(spec, "encoder.5", layer, x, w)
    perm = np.random.default_rng(2).permutation(16)
    np.testing.assert_allclose(attention1d(spec, "encoder.5", layer, x[:, perm], w), y[:, perm], atol=1e-12)
    assert not np.allclose(y, x)
    np.testing.assert_array_equal(attention1d(spec, "encoder.5", layer, x, init_weights(spec)), x)


def test_selu_and_silu_values():
    x = np.array([[-1.0, 0.0, 2.0]])
    selu = _apply(KL_SMALL, "", type(KL_SMALL.encoder[0])("selu"), x, {})
    np.testing.assert_allclose(selu, [[SELU_SCALE * SELU_ALPHA * (math.exp(-1) - 1), 0, 2 * SELU_SCALE]])
    silu = _apply(KL_SMALL, "", type(KL_SMALL.encoder[0])("silu"), x, {})
    np.testing.assert_allclose(silu, [[-1 / (1 + math.e), 0, 2 / (1 + math.exp(-2))]])


def test_masking_sets_only_the_drawn_block_and_masked_bce_reads_only_it():
    spec = MASKED_SMALL
    x = np.random.default_rng(3).uniform(0, 1, (4, 23))
    masked = apply_masking(spec, x, 1)
    assert (masked[:, 10:18] == -1).all() and np.array_equal(masked[:, :10], x[:, :10])
    assert np.array_equal(masked[:, 18:], x[:, 18:])
    w = init_weights(spec)
    eps = np.zeros((4, 3))
    out = eval_forward(spec, w, x, eps, mask_block=1)
    base = vae_loss(spec, x, out["logits"], out["z_mean"], out["z_log_var"], mask_block=1)
    outside = out["logits"].copy()
    outside[:, :10] += 5
    assert vae_loss(spec, x, outside, out["z_mean"], out["z_log_var"], mask_block=1) == pytest.approx(base, 1e-12)
    inside = out["logits"].copy()
    inside[:, 10:18] += 5
    assert vae_loss(spec, x, inside, out["z_mean"], out["z_log_var"], mask_block=1) != pytest.approx(base)
    # the per-sample mean over the 8 masked positions, by hand
    p = np.clip(1 / (1 + np.exp(-out["logits"])), 1e-7, 1 - 1e-7)[:, 10:18]
    recon = -(x[:, 10:18] * np.log(p) + (1 - x[:, 10:18]) * np.log(1 - p)).mean(axis=1).mean()
    kl = (-0.5 * (1 + out["z_log_var"] - out["z_mean"] ** 2 - np.exp(out["z_log_var"]))).sum(axis=1).mean() / 23
    assert base == pytest.approx(recon + kl, rel=1e-12)


def test_a_conv_latent_samples_and_scores_every_element():
    spec = KL_SMALL
    w = perturb_zero_init(spec, init_weights(spec))
    x = np.random.default_rng(4).uniform(0, 1, (2, 31))
    eps = np.random.default_rng(5).standard_normal((2, 16, 2))
    out = eval_forward(spec, w, x, eps)
    assert out["z_mean"].shape == (2, 16, 2) and out["recon"].shape == (2, 31)
    kl = (-0.5 * (1 + out["z_log_var"] - out["z_mean"] ** 2 - np.exp(out["z_log_var"]))).sum(axis=(1, 2)).mean()
    bce = (np.maximum(out["logits"], 0) - out["logits"] * x + np.log1p(np.exp(-np.abs(out["logits"])))).sum(1).mean()
    assert vae_loss(spec, x, out["logits"], out["z_mean"], out["z_log_var"]) == pytest.approx(bce + 1e-3 * kl)


# ------------------------------------------------------------------- FLOPs, preflight, data


def test_attention_flops_and_the_int32_flag_on_its_scores():
    spec = preset("autoencoder-kl", 8192)
    by = {x.name: x for x in step_flops(spec, 2).by_layer}
    assert by["encoder.8.scores"].matmul_forward == 2 * 2 * 2048 * 2048 * 256
    assert by["encoder.8.context"].matmul_forward == 2 * 2 * 2048 * 2048 * 256
    assert by["encoder.8.softmax"].forward == 5 * 2 * 2048 * 2048
    scores = [t for t in tensor_table(spec, 512) if t.layer == "encoder.8.scores"]
    assert scores and scores[0].overflows and scores[0].safe_batch(512) == 511
    assert not [t for t in tensor_table(spec, 511) if t.overflows]


def test_a_fixed_length_spec_trains_on_binary_rows_and_a_wrong_file_is_named(tmp_path):
    source = make_source(None, 8, width=12_001)
    batch = source.next()
    assert batch.shape == (8, 12_001) and set(np.unique(batch)) <= {0.0, 1.0}
    np.save(tmp_path / "x.npy", np.zeros((16, 100), np.float32))
    from harness.data import DataError

    with pytest.raises(DataError, match=r"has 100 columns but the spec takes 12001 features"):
        make_source(None, 8, data=str(tmp_path / "x.npy"), width=12_001)


def test_the_cpu_matrix_lists_the_conv_seed_presets_as_skipped_and_runs_masked_multiomics_without_k():
    plan = plan_default(7, "cpu", impls=["torch"])
    skipped = {spec.name: reason for spec, reason in plan.too_slow}
    assert set(CPU_ONLY_WHEN_NAMED) <= set(skipped)
    assert "python -m bench run --spec autoencoder-kl --kmer 7" in skipped["autoencoder-kl"]
    planned = {spec.name for spec, _ in plan.specs}
    assert "masked-multiomics" in planned and set(ALL_PRESETS) == planned | set(skipped)
    cells = matrix_cells(plan, 7, steps=5, repeats=1, timeout_s=60)
    kmers = {c.spec.name: c.kmer for c in cells.cells}
    assert kmers["masked-multiomics"] is None and kmers["dense"] == 7
    assert all(cells.preflight(c)["skip"] for c in cells.cells if c.spec.name in CPU_ONLY_WHEN_NAMED)
    gpu = plan_default(7, "gpu", impls=["torch"])
    assert {spec.name for spec, _ in gpu.specs} == set(ALL_PRESETS) - {n for n, _ in gpu.invalid}


@pytest.mark.worker
def test_preflight_of_the_fixed_length_preset_needs_no_kmer():
    done = subprocess.run([sys.executable, "-m", "bench", "preflight", "--spec", "masked-multiomics", "--batch", "8",
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["spec"] == "masked-multiomics"
    assert [t["shape"] for t in report["tensors"] if t["layer"] == "input"][0] == [8, 12_001]
    done = subprocess.run([sys.executable, "-m", "bench", "preflight", "--spec", "dense", "--batch", "8"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stderr.strip().count("\n") == 0
    assert "preset 'dense' needs --kmer K" in done.stderr
