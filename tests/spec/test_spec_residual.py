"""``residual`` layers and the ``mse`` loss in the framework-free spec: shapes, nested names, one-line errors,
the numpy reference that defines them, FLOPs, the preflight's tensors and the ``resvae`` preset."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.residual_specs import RESIDUAL, RESIDUAL_NO_BN

from harness.diagnose.preflight import tensor_table
from harness.spec.flops import ELEMENTWISE, step_flops
from harness.spec.layers import L, SpecError
from harness.spec.params import count_params, param_table
from harness.spec.presets import ALL_PRESETS, PRESETS, resolve_spec
from harness.spec.reference import _apply, eval_forward, init_weights, perturb_batch_norm, vae_loss
from harness.spec.residual import flat_shapes
from harness.spec.schema import VAESpec
from harness.spec.shapes import infer_shapes


def test_residual_shapes_and_nested_names():
    shapes = {s.name: s for s in infer_shapes(RESIDUAL)}
    assert shapes["encoder.2"].out_shape == (32, 4) and shapes["encoder.3"].out_shape == (16, 6)
    assert shapes["decoder.2"].out_shape == (24, 3) and shapes["decoder.4"].out_shape == (48, 1)
    table = {p.name: (p.shape, p.trainable) for p in param_table(RESIDUAL)}
    assert table["encoder.2.inner.2.kernel"] == ((3, 4, 4), True)
    assert table["encoder.2.inner.0.moving_mean"] == ((4,), False)
    assert table["encoder.3.skip.kernel"] == ((1, 4, 6), True)
    assert table["decoder.2.inner.0.kernel"] == ((2, 3, 6), True)  # conv-transpose (k, out, in)
    assert table["decoder.2.skip.kernel"] == ((1, 3, 6), True)
    assert not any(n.startswith(("encoder.2.skip", "decoder.3.skip")) for n in table)  # identity skips
    flat = [s.name for s in flat_shapes(RESIDUAL)]
    assert flat[flat.index("encoder.3.inner.0"):flat.index("encoder.3") + 1] == [
        "encoder.3.inner.0", "encoder.3.inner.1", "encoder.3.inner.2", "encoder.3.skip", "encoder.3"]
    assert "encoder.2.activation" in flat and "encoder.3.activation" not in flat


def test_residual_round_trips_and_keeps_old_hashes():
    again = VAESpec.from_dict(RESIDUAL.to_dict())
    assert again == RESIDUAL and again.hash == RESIDUAL.hash
    d = RESIDUAL.to_dict()["encoder"][3]
    assert d["skip"] == {"type": "conv1d", "filters": 6, "kernel_size": 1, "stride": 2} and d["activation"] is None
    assert RESIDUAL.to_dict()["encoder"][2]["skip"] == "identity"
    spec = resolve_spec("resvae", kmer=5)
    assert VAESpec.from_dict(spec.to_dict()).hash == spec.hash
    assert resolve_spec("dense", kmer=7).hash == "77f3b969bd58e1a5"  # no loss key changed


def _bad(layer: dict, where: str = "encoder") -> str:
    raw = RESIDUAL.to_dict()
    raw[where][3 if where == "encoder" else 2] = layer
    with pytest.raises(SpecError) as exc:
        VAESpec.from_dict(raw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_a_residual_whose_branches_disagree_gets_a_one_line_error_with_the_fix():
    inner = [{"type": "conv1d", "filters": 6, "kernel_size": 3, "stride": 2}]
    msg = _bad({"type": "residual", "layers": inner})  # identity skip around a stride-2 conv
    assert msg == ("encoder[3] (residual): the inner path gives shape (16, 6) but the skip gives (32, 4); "
                   "make the skip {type: conv1d, filters: 6, kernel_size: 1, stride: 2}")
    msg = _bad({"type": "residual", "layers": inner, "skip": {"type": "conv1d", "filters": 6, "kernel_size": 1}})
    assert "gives shape (16, 6) but the skip gives (32, 6); make the skip {type: conv1d" in msg
    up = [{"type": "conv_transpose1d", "filters": 3, "kernel_size": 3, "stride": 2}]
    msg = _bad({"type": "residual", "layers": up}, "decoder")
    assert msg.endswith("make the skip {type: conv_transpose1d, filters: 3, kernel_size: 1, stride: 2}")
    msg = _bad({"type": "residual", "layers": inner, "skip": {"type": "conv1d", "filters": 6, "kernel_size": 3}})
    assert "skip must be 'identity' or a conv1d or conv_transpose1d with kernel_size 1" in msg
    assert "encoder[3].layers[0] (flatten): a residual's inner path takes only conv1d" in _bad(
        {"type": "residual", "layers": [{"type": "flatten"}]})
    assert "encoder[3].layers[0] (residual): a residual's inner path" in _bad(
        {"type": "residual", "layers": [RESIDUAL.to_dict()["encoder"][2]]})
    assert "activation 'tanh' is not one of" in _bad({"type": "residual", "layers": [{"type": "relu"}],
                                                      "activation": "tanh"})
    assert "layers must be a non-empty list" in _bad({"type": "residual", "layers": []})
    assert "encoder[3].layers[0] (conv1d): stride must be a positive integer" in _bad(
        {"type": "residual", "layers": [{**inner[0], "stride": 0}]})
    raw = RESIDUAL.to_dict()
    raw["loss"] = {"reconstruction": "l1"}
    with pytest.raises(SpecError, match="loss.reconstruction 'l1' is not supported; use one of bce_logits, mse, masked_bce$"):
        VAESpec.from_dict(raw)


def test_reference_residual_is_inner_plus_skip_then_activation():
    spec, w = RESIDUAL, perturb_batch_norm(RESIDUAL, init_weights(RESIDUAL))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 32, 4))
    block = spec.encoder[3]
    h = x
    for j, sub in enumerate(block.args["layers"]):
        h = _apply(spec, f"encoder.3.inner.{j}", sub, h, w)
    skip = _apply(spec, "encoder.3.skip", block.args["skip"], x, w)
    np.testing.assert_allclose(_apply(spec, "encoder.3", block, x, w), h + skip, rtol=1e-12)
    ident = spec.encoder[2]  # identity skip, leaky ReLU after the sum
    h = x
    for j, sub in enumerate(ident.args["layers"]):
        h = _apply(spec, f"encoder.2.inner.{j}", sub, h, w)
    np.testing.assert_allclose(_apply(spec, "encoder.2", ident, x, w), _apply(spec, "a", L("leaky_relu"), h + x, w))
    out = eval_forward(spec, w, rng.random((2, 32)), rng.normal(size=(2, 4)))
    assert out["recon"].shape == (2, 32) and np.all(np.isfinite(out["recon"]))


def test_mse_is_the_squared_error_of_the_sigmoid_output_summed_over_features_batch_mean():
    spec = resolve_spec("resvae", kmer=3)
    assert spec.loss.reconstruction == "mse"
    rng = np.random.default_rng(0)
    x, logits = rng.random((3, 32)), rng.normal(size=(3, 32))
    mu, logvar = rng.normal(size=(3, 32)), rng.normal(size=(3, 32)) * 0.1
    kl = (-0.5 * (1 + logvar - mu**2 - np.exp(logvar))).sum(axis=1).mean()
    want = ((1 / (1 + np.exp(-logits)) - x) ** 2).sum(axis=1).mean() + kl
    assert vae_loss(spec, x, logits, mu, logvar) == pytest.approx(want, rel=1e-12)


def test_residual_flops_count_inner_layers_skip_and_sum_and_mse_loss():
    f = {x.name: x for x in step_flops(RESIDUAL_NO_BN, 2).by_layer}
    # encoder.3.skip: 1x1 conv 4 -> 6, stride 2, 16 outputs; the sum is one add per output element
    assert f["encoder.3.skip"].matmul_forward == 2 * 2 * 16 * 1 * 4 * 6
    assert f["encoder.3"].forward == 2 * 16 * 6 and f["encoder.3.inner.0"].matmul_forward == 2 * 2 * 16 * 3 * 4 * 6
    assert f["encoder.2.activation"].forward == ELEMENTWISE["leaky_relu"][0] * 2 * 32 * 4
    spec = resolve_spec("resvae", kmer=3)
    loss = next(x for x in step_flops(spec, 2).by_layer if x.name == "loss")
    assert loss.forward == (ELEMENTWISE["mse"][0] * 32 + ELEMENTWISE["kl"][0] * 32) * 2


def test_preflight_tensor_table_walks_into_residuals():
    names = {(t.layer, t.kind) for t in tensor_table(RESIDUAL, 4)}
    assert ("encoder.3.inner.0", "conv output") in names and ("encoder.3.skip", "conv output") in names
    assert ("encoder.3", "activation") in names and ("encoder.2.inner.0", "weight") in names


def test_resvae_preset_blocks_lengths_and_counts_at_k7():
    """k=4: 136 -> 68 -> 34 -> 17 -> 9, up to 144, cropped to 136. The k=7 counts are docs/presets.md's."""
    shapes = infer_shapes(resolve_spec("resvae", kmer=4))
    assert [s.out_shape for s in shapes if s.layer.type == "residual"] == [
        (68, 32), (34, 64), (17, 128), (9, 256), (18, 128), (36, 64), (72, 32), (144, 1)]
    c = count_params(resolve_spec("resvae", kmer=7))
    assert (c.trainable, c.non_trainable) == (13_386_118, 0)
    assert "resvae" in ALL_PRESETS and "resvae" not in PRESETS
