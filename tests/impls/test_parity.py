"""The builds are one model: equal counts, outputs, gradients and one Adam step.

Each impl runs in its own worker (``harness.run.parity``), so this is the same code
path as ``python -m bench params`` and ``python -m bench parity``.
"""

from __future__ import annotations

import math

import pytest
from fixtures.once import once_per_run
from fixtures.residual_specs import RESIDUAL, RESVAE_SMALL
from fixtures.seed_layer_specs import KL_SMALL, MASKED_SMALL
from fixtures.strided_specs import STRIDED_BN

from harness.adapter import is_installed
from harness.run.parity import TOL_FORWARD, TOL_REFERENCE, TOL_STEP, check_params, check_parity
from harness.spec.presets import ALL_PRESETS, preset
from harness.spec.schema import canonical_kmer_count

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

IMPLS = [i for i in ("torch", "flax", "keras-jax", "keras-torch", "keras-tensorflow") if is_installed(i)]
PLANTED = "tests/fixtures/planted.py:NumpyVAE"
#: the planted adapter's row label: the name its class sets (``harness.adapter.impl_label``)
PLANTED_LABEL = "numpy"


#: every spec parity checks in the suite, in one check_parity call (one worker per impl, not one per spec
#: group: a worker's framework import is most of its cost). conv-revised at k=5 passes too (python -m bench
#: parity --kmer 5), and the full conv-strided, resvae and autoencoder-kl presets (--kmer 4 or 5).
#: ``strided-bn-small``: strided convs, BatchNorm and GELU, odd lengths (32 -> 11 -> 6, 9 -> 18 -> 36),
#: asymmetric pads, strided conv-transposes and the crop to 32; ``dense k=3 clip 1.0``: the dense preset, whose
#: gradient norm is above the clip (see the test below; the unclipped Adam step is every other spec's, so plain
#: dense is not run again: each spec costs the JAX builds about 7 s of compiling); ``resvae-small``: resvae's
#: residual blocks with conv and conv-transpose skips and its MSE loss; ``residual-small``: a BatchNorm inside a
#: residual, in train mode;
#: ``autoencoder-kl-small`` and ``masked-small``: group_norm, silu, selu, attention, zero init (perturbed),
#: a conv latent, masking with its block fixed, masked BCE and the KL over the features.
SPECS = {
    "conv-final k=5": (preset("conv-final", canonical_kmer_count(5)), 5),
    "strided-bn-small k=3": (STRIDED_BN, 3),
    "dense k=3 clip 1.0": (preset("dense", canonical_kmer_count(3)).with_clip_norm(1.0), 3),
    "resvae-small k=3": (RESVAE_SMALL, 3),
    "residual-small k=3": (RESIDUAL, 3),
    "autoencoder-kl-small": (KL_SMALL, None),
    "masked-small": (MASKED_SMALL, None),
}
#: the specs with BatchNorm, whose loss is not held against the float64 reference (its forward is eval mode's)
WITH_BATCH_NORM = {"strided-bn-small k=3", "dense k=3 clip 1.0", "residual-small k=3"}
#: the specs the planted adapter is run on (it must fail them all)
PLANTED_ON = ("dense k=3 clip 1.0", "conv-final k=5")


@pytest.fixture(scope="module")
def parity_reports(tmp_path_factory) -> dict:
    """One check_parity call for every spec and impl, the planted adapter included, once per run (not
    once per xdist worker), two impl workers at a time; by spec name."""
    reports = once_per_run(tmp_path_factory, "parity",
                           lambda: check_parity(list(SPECS.values()), IMPLS + [PLANTED], batch=16, jobs=2))
    return dict(zip(SPECS, reports, strict=True))


def test_every_impl_is_installed_for_the_suite():
    assert IMPLS == ["torch", "flax", "keras-jax", "keras-torch", "keras-tensorflow"]


@pytest.mark.parametrize("name", list(SPECS))
def test_parity_holds_for_every_impl(parity_reports, name):
    rep = parity_reports[name]
    assert [r.impl for r in rep.rows if r.impl != PLANTED_LABEL] == IMPLS
    for row in rep.rows:
        if row.impl == PLANTED_LABEL:
            continue
        assert row.error is None, f"{name} {row.impl}: {row.error}"
        assert row.forward <= TOL_FORWARD, (name, row.impl, row.forward)
        assert row.loss <= TOL_FORWARD, (name, row.impl, row.loss)
        assert row.grads <= TOL_FORWARD, (name, row.impl, row.grads, row.worst_grad)
        assert row.after_step <= TOL_STEP, (name, row.impl, row.after_step, row.worst_after_step)
        # every build, PyTorch's included, against the float64 numpy reference: the loss wherever the spec has
        # no BatchNorm (its training forward is then the eval forward)
        assert row.reference_forward <= TOL_REFERENCE, (name, row.impl, row.reference_forward)
        assert (row.reference_loss is None) == (name in WITH_BATCH_NORM), (name, row.impl, row.reference_loss)
        assert row.reference_loss is None or row.reference_loss <= TOL_REFERENCE, (name, row.impl, row.reference_loss)
        assert row.passed()
    print(name, {r.impl: (f"{r.forward:.1e}", f"{r.grads:.1e}", f"{r.after_step:.1e}",
                          f"float64 {r.reference_forward:.1e} / {r.reference_loss}")
                 for r in rep.rows if r.impl != PLANTED_LABEL})


def test_dense_biases_before_batch_norm_are_checked_as_zero_gradients(parity_reports):
    rows = [r for r in parity_reports["dense k=3 clip 1.0"].rows if r.impl != PLANTED_LABEL]
    for row in rows:
        assert set(row.zero_grad) == {"encoder.0.bias", "encoder.3.bias", "decoder.0.bias", "decoder.3.bias"}
        assert max(row.zero_grad.values()) < 1e-5


def test_parity_catches_a_build_that_is_not_the_same_model(parity_reports):
    """The planted numpy adapter has the right forward but zero gradients and no Adam:
    parity must fail it, or the check above proves nothing."""
    for name in PLANTED_ON:
        planted = next(r for r in parity_reports[name].rows if r.impl == PLANTED_LABEL)
        assert planted.error is None
        assert planted.forward <= TOL_FORWARD  # it does share the forward (the numpy reference)
        assert not planted.passed()
        assert planted.grads > 0.5


def test_a_spec_a_build_cannot_run_fails_only_its_own_row(parity_reports):
    """The planted adapter predates masking (no ``mask_block`` argument): its masked-small row says why,
    in one line, and its rows for the other specs, from the same worker, still stand."""
    planted = next(r for r in parity_reports["masked-small"].rows if r.impl == PLANTED_LABEL)
    assert planted.error == "TypeError: NumpyVAE.eval_forward() got an unexpected keyword argument 'mask_block'"
    assert next(r for r in parity_reports["dense k=3 clip 1.0"].rows if r.impl == PLANTED_LABEL).error is None


def test_an_attention_key_bias_is_checked_as_a_zero_gradient(parity_reports):
    for row in parity_reports["autoencoder-kl-small"].rows:
        if row.impl != PLANTED_LABEL:
            assert set(row.zero_grad) == {"encoder.5.k.bias", "decoder.1.k.bias"}, row.impl
            assert max(row.zero_grad.values()) < 1e-5


def test_the_clipped_parity_batch_has_a_gradient_norm_above_the_clip():
    """So that clipping really acts in ``dense k=3 clip 1.0`` above: the parity batch's gradient
    norm (PyTorch, the reference row) is above 1.0, and Adam's moments after the clipped step are
    those of the clipped gradient, ``(1 - beta1) * g / ||g||``."""
    torch = pytest.importorskip("torch")
    from harness.adapter import load_adapter_class
    from harness.run.parity import parity_inputs

    spec = preset("dense", canonical_kmer_count(3)).with_clip_norm(1.0)
    inputs = parity_inputs(spec, 3, 16)
    model = load_adapter_class("torch")(spec)
    model.set_weights({k[2:]: v for k, v in inputs.items() if k.startswith("w:")})
    _, grads = model.loss_and_grads(inputs["x"], inputs["eps"])
    norm = math.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads.values()))
    print(f"dense k=3 parity batch: gradient norm {norm:.3f}, clipped to 1.0")
    assert norm > 1.5, norm
    model.train_step(inputs["x"], inputs["eps"])
    kernel = model.layouts[0].module.weight  # encoder.0's (out, in) weight
    m = model.optimizer.state[kernel]["exp_avg"]
    want = torch.from_numpy((1 - spec.optimizer.beta1) * grads["encoder.0.kernel"].T / norm)
    assert torch.allclose(m, want, rtol=1e-4, atol=1e-9)


#: the builds ``bench params`` is run on here: each way of counting once. Keras counts its layers' shapes in an
#: abstract build, the same code on every backend (the Keras children count presets on all three, and hold the
#: abstract build to no storage on each), so one Keras backend stands for the three: the other two workers were
#: 13 s of CPU for the same figures
COUNTED_BY = [i for i in ("torch", "flax", "keras-torch") if i in IMPLS]


def test_param_counts_agree_for_all_presets_at_k5():
    """``bench params`` over every preset at k=5, conv-original excepted: 104.7M parameters there; it is counted
    at k=3 (L=32) here and at k=7 by ``bench params --kmer 7``."""
    specs = [preset(name, canonical_kmer_count(3 if name == "conv-original" else 5)) for name in ALL_PRESETS]
    reports = check_params(specs, COUNTED_BY)
    for rep in reports:
        assert rep.equal, rep.to_dict()
    assert all(len(rep.rows) == len(COUNTED_BY) for rep in reports)
