"""The precision axis without a framework: the spec's setting, the flag, the cell, the memory arithmetic, the peak's
key and parity's bf16 grid (issue 22). The builds' own bf16 is tested beside each build (``tests/impls``)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.parser import build_parser, with_precisions
from harness.diagnose.memory import estimate_memory
from harness.diagnose.preflight import BF16_FLOAT32_LAYERS, tensor_table
from harness.measure.peak import peak_dtype, peak_key
from harness.run.matrix import matrix_precisions
from harness.run.parity import ParityRow, off_bf16_grid, tolerances
from harness.run.runner import TF32_ON_CPU, Cell, run_one
from harness.spec.layers import SpecError
from harness.spec.presets import resolve_spec
from harness.spec.schema import VAESpec, validate

DENSE = resolve_spec("dense", kmer=3)


def test_fp32_and_tf32_specs_keep_their_hash_and_bf16_gets_its_own():
    assert DENSE.with_settings(precision="fp32").hash == DENSE.hash
    tf32 = DENSE.with_settings(tf32=True)
    assert tf32.settings.precision == "tf32" and tf32.hash == DENSE.with_settings(precision="tf32").hash
    assert "precision" not in tf32.to_dict()["settings"]  # ``tf32: true`` says it, as before the axis
    bf16 = DENSE.with_settings(precision="bf16")
    assert bf16.settings.bf16 and not bf16.settings.tf32 and bf16.hash not in (DENSE.hash, tf32.hash)
    back = VAESpec.from_dict(bf16.to_dict())
    assert back.settings.precision == "bf16" and back.hash == bf16.hash


def test_an_unknown_precision_in_a_spec_is_one_line_naming_the_known_ones():
    raw = DENSE.to_dict()
    raw["settings"]["precision"] = "fp16"
    with pytest.raises(SpecError, match=r"settings.precision 'fp16' is not supported; use one of fp32, tf32, bf16"):
        validate(VAESpec.from_dict(raw))


@pytest.mark.parametrize("verb", ["run", "matrix", "sweep", "parity", "curves", "preflight"])
def test_every_verb_takes_a_precision_list_and_refuses_an_unknown_one(verb, capsys):
    required = {"matrix": ["--kmer", "3"], "preflight": ["--spec", "dense", "--batch", "8"]}.get(verb, [])
    args = build_parser().parse_args([verb, *required, "--precision", "fp32,bf16"])
    assert args.precision == ["fp32", "bf16"]
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([verb, *required, "--precision", "fp16"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown precision 'fp16'" in err[0] and "bf16" in err[0], err


def test_with_precisions_gives_each_spec_once_per_precision_and_an_explicit_one_overrides_the_file():
    specs = [DENSE.with_settings(tf32=True), resolve_spec("conv-final", kmer=5)]
    out = with_precisions(specs, ["fp32", "bf16"])
    assert [(s.name, s.settings.precision) for s in out] == [("dense", "fp32"), ("dense", "bf16"),
                                                            ("conv-final", "fp32"), ("conv-final", "bf16")]
    assert not out[0].settings.tf32  # --precision fp32 turns a spec file's tf32 off
    assert [s.settings.precision for s in with_precisions(specs, None)] == ["tf32", "fp32"]
    assert [s.settings.precision for s in with_precisions(specs[1:], None, tf32=True)] == ["tf32"]


def test_a_cells_precision_and_its_specs_are_one_fact():
    asked = Cell("torch", DENSE, 3, 16, precision="bf16")
    assert asked.spec.settings.bf16 and asked.task().spec["settings"]["precision"] == "bf16"
    given = Cell("torch", DENSE.with_settings(precision="bf16"), 3, 16)
    assert given.precision == "bf16" and given.key == asked.key
    assert Cell("torch", DENSE, 3, 16).key not in (asked.key,)


def test_a_tf32_cell_on_a_cpu_is_a_skipped_row_that_says_why_without_a_worker():
    row = run_one(Cell("torch", DENSE, 3, 16, precision="tf32"), {"gpus": []})
    assert row["status"] == "skipped" and row["failure_message"] == TF32_ON_CPU and row["precision"] == "tf32"
    assert "fp32 row is its measurement" in TF32_ON_CPU


def test_the_matrix_keeps_fp32_and_adds_bf16_by_default_on_a_gpu_only():
    assert matrix_precisions("gpu", None) == ["fp32", "bf16"]
    assert matrix_precisions("cpu", None) == ["fp32"]
    assert matrix_precisions("cpu", ["bf16"]) == ["fp32", "bf16"]
    assert matrix_precisions("gpu", ["fp32", "tf32"]) == ["fp32", "tf32"]


def test_bf16_activations_take_two_bytes_and_the_state_stays_float32():
    spec = resolve_spec("conv-final", kmer=5)
    fp32 = estimate_memory(tensor_table(spec, 64))
    bf16 = estimate_memory(tensor_table(spec.with_settings(precision="bf16"), 64))
    assert bf16.state_bytes == fp32.state_bytes
    # every layer's output halves; the float32 input, loss terms, logits gradient, sampling and pinned layers (its
    # BatchNorms), and the int64 pool indices, do not
    kept = sum(t.bytes for t in tensor_table(spec, 64) if t.pass_ == "train" and t.per_sample
               and (t.op in ("input", "loss", "sampling", *BF16_FLOAT32_LAYERS) or t.kind == "pool indices"))
    assert bf16.activation_bytes == (fp32.activation_bytes - kept) // 2 + kept


def test_a_bf16_cells_peak_is_a_bfloat16_product_with_a_key_of_its_own():
    bf16 = DENSE.with_settings(precision="bf16").settings
    assert peak_dtype(bf16) == "bfloat16" and peak_dtype(DENSE.settings) == "float32"
    assert peak_dtype(DENSE.with_settings(precision="tf32").settings) == "float32"
    assert peak_key(bf16, "cpu")["dtype"] == "bfloat16" and peak_key(DENSE.settings, "cpu")["dtype"] == "float32"


def _round_to(x: np.ndarray, dtype) -> np.ndarray:
    if dtype == "bfloat16":  # round to nearest even on the upper 16 bits
        u = x.astype(np.float32).view(np.uint32)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.astype(np.uint32).view(np.float32)
    return x.astype(dtype).astype(np.float32)


def test_the_bf16_grid_tells_bf16_from_float16_and_float32():
    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    assert off_bf16_grid(_round_to(x, "bfloat16")) == 0.0
    assert off_bf16_grid(_round_to(x, np.float16)) > 0.5  # float16's 10-bit mantissa: off bf16's 7-bit grid
    assert off_bf16_grid(x) > 0.99


def test_a_row_off_the_grid_fails_whatever_its_errors():
    row = ParityRow("planted", forward=0.0, loss=0.0, grads=0.0, grads_global=0.0, after_step=0.0, reference_forward=0.0,
                    tol=tolerances("bf16"))
    assert row.passed()
    row.off_bf16_grid = 0.75
    assert not row.passed() and "off the bfloat16 grid" in row.why_not()
    assert tolerances("tf32") == tolerances("fp32") and tolerances("tf32", gpu=True) == tolerances("bf16")


def test_a_build_refuses_a_precision_it_does_not_list():
    from harness.adapter import PrecisionUnsupported, VAEAdapter

    class Fp32Only(VAEAdapter):  # the default: fp32 only
        pass

    Fp32Only.check_precision(DENSE)
    with pytest.raises(PrecisionUnsupported, match=r"Fp32Only does not compute in bf16 \(it lists fp32"):
        Fp32Only.check_precision(DENSE.with_settings(precision="bf16"))


@pytest.mark.worker
def test_a_plugin_that_cannot_run_bf16_gets_a_skipped_row_with_the_reason_not_a_wrong_row():
    from fixtures.paths import REPO

    row = run_one(Cell(str(REPO / "tests/fixtures/planted.py") + ":NumpyVAE", DENSE, 3, 8, steps=5, timeout_s=120,
                       precision="bf16"), {"gpus": []})
    assert row["status"] == "skipped" and row["failure_kind"] == "skipped", row.get("failure_message")
    assert "NumpyVAE does not compute in bf16" in row["failure_message"] and "step_stats" not in row
