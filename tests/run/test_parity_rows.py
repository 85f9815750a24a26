"""Parity's verdict per row, and its table, without workers: the float64 reference columns decide too."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from bench import render
from harness.run.parity import TOL_REFERENCE, ParityReport, ParityRow, against_float64, float64_outputs, parity_inputs
from harness.spec.presets import preset
from harness.spec.reference import eval_forward
from harness.spec.schema import canonical_kmer_count


def _row(**changes) -> ParityRow:
    base = dict(impl="x", forward=1e-7, loss=1e-7, grads=1e-7, after_step=1e-7, reference_forward=1e-7,
                reference_loss=1e-7)
    return ParityRow(**{**base, **changes})


def test_a_row_that_matches_pytorch_but_not_the_float64_reference_differs():
    assert _row().passed()
    assert _row(reference_loss=None).passed()  # a spec with BatchNorm: the forward alone
    assert not _row(reference_forward=10 * TOL_REFERENCE).passed()
    assert not _row(reference_loss=10 * TOL_REFERENCE).passed()
    assert not _row(reference_forward=None).passed()  # never compared is never passed


def test_float64_figures_of_a_float32_rounding_are_tiny_and_of_a_wrong_forward_are_not():
    spec = preset("conv-final", canonical_kmer_count(5))  # no BatchNorm: the loss is compared too
    inputs = parity_inputs(spec, 5, 4)
    exact = float64_outputs(spec, inputs)
    assert exact["loss"] is not None
    weights = {k[2:]: v for k, v in inputs.items() if k.startswith("w:")}
    fwd = eval_forward(spec, weights, inputs["x"], inputs["eps"])
    got = {f"forward:{k}": fwd[k].astype(np.float32) for k in ("recon", "z_mean", "z_log_var")}
    got["loss"] = np.float64(exact["loss"] * (1 + 1e-7))
    forward, loss = against_float64(got, exact)
    assert forward < 1e-6 and loss < 1e-6
    got["forward:z_mean"] = got["forward:z_mean"] * 1.01
    assert against_float64(got, exact)[0] > 1e-3
    dense = preset("dense", canonical_kmer_count(3))  # BatchNorm: training mode reads batch statistics
    assert float64_outputs(dense, parity_inputs(dense, 3, 4))["loss"] is None


def test_the_table_shows_the_float64_columns():
    rep = ParityReport("dense", "torch", 16, rows=[_row(impl="flax"), _row(impl="keras-jax", reference_loss=None),
                                                   _row(impl="bad", reference_forward=1e-3)])
    console = Console(record=True, width=250)
    render.console, saved = console, render.console
    try:
        render.print_parity([rep])
    finally:
        render.console = saved
    text = console.export_text()
    assert "float64 reference: forward / loss" in text
    assert "- (BatchNorm)" in text and "1.0e-03 ✗" in text
    assert text.count("same model") == 2 and text.count("differs") == 1
