"""The per-layer error report: every quantised tensor, ranked, against the float model."""

import math

import numpy as np
import pytest

from vitaccel.models.data import calibration_images
from vitaccel.models.error_report import SQNR_EXACT_DB, per_layer_error, worst_layer
from vitaccel.models.golden import QuantConfig, quantize_model
from vitaccel.models.zoo import get_model

KINDS = {
    "linear",
    "attention scores",
    "softmax",
    "attention context",
    "layernorm",
    "gelu",
    "residual",
    "logits",
}


@pytest.fixture(scope="module")
def digits():
    spec, model = get_model("digits-vit")
    calib = calibration_images(16)
    return spec, model, calib


def _names(depth: int) -> set[str]:
    per_block = [
        "norm1",
        "attn.q",
        "attn.k",
        "attn.v",
        "attn.logits",
        "attn.probs",
        "attn.context",
        "attn.proj",
        "add1",
        "norm2",
        "mlp.fc1",
        "mlp.gelu",
        "mlp.fc2",
        "add2",
    ]
    names = {"patch_embed", "embed", "norm", "logits"}
    for i in range(depth):
        names |= {f"blocks.{i}.{n}" for n in per_block}
    return names


@pytest.mark.parametrize(
    "config",
    [
        QuantConfig(),
        QuantConfig(scheme="mixed", softmax_output="log2"),
        QuantConfig(act_calibration="mse", gelu_zero_point=True, ln_channel_scales=True),
        # Per-channel q, k, V, context and LayerNorm scales (issue 24's migrations).
        QuantConfig(qk_balance=True, v_smooth_alpha=1.0, ln_smooth_alpha=0.5),
    ],
    ids=["w8a8", "mixed-log2", "all-options", "migration"],
)
def test_every_quantised_tensor_is_reported_and_ranked(digits, config):
    spec, model, calib = digits
    golden = quantize_model(model, calib, config)
    rows = per_layer_error(model, golden, calib)
    assert {r.name for r in rows} == _names(spec.depth)
    assert len(rows) == len(_names(spec.depth))
    assert {r.kind for r in rows} == KINDS
    local = [r.local_sqnr_db for r in rows]
    assert local == sorted(local)  # ranked, worst operator first
    assert worst_layer(rows) == rows[0]
    for r in rows:
        assert math.isfinite(r.sqnr_db) and math.isfinite(r.local_sqnr_db)
        # rel_error and SQNR are two views of the same error.
        assert r.rel_error == pytest.approx(10 ** (-r.sqnr_db / 20), rel=1e-3)
        # An int8 model is neither exact nor garbage: a wrong scale anywhere (a tensor
        # dequantised with the wrong scale or zero point) shows up as SQNR near 0 dB.
        # 4-bit log2-code probabilities (p ~ 2**-q) are coarse by design (~11-14 dB), and
        # everything downstream of them inherits it (~12 dB total on the last blocks).
        log2 = config.softmax_output == "log2"
        assert (8 if log2 and r.kind == "softmax" else 12) < r.local_sqnr_db < 60, r
        assert (8 if log2 else 12) < r.sqnr_db < 60, r
    # The first operator sees exactly the golden model's input: local == accumulated.
    pe = next(r for r in rows if r.name == "patch_embed")
    assert pe.sqnr_db == pe.local_sqnr_db


def test_local_error_isolates_the_operator(digits):
    """Accumulated error grows with depth; the local error of the last blocks does not
    (each operator is fed float inputs), so the ranking is not just 'deepest last'."""
    spec, model, calib = digits
    golden = quantize_model(model, calib)
    rows = {r.name: r for r in per_layer_error(model, golden, calib)}
    last = spec.depth - 1
    assert rows[f"blocks.{last}.add2"].sqnr_db < rows["embed"].sqnr_db - 3
    assert rows[f"blocks.{last}.add2"].local_sqnr_db > rows[f"blocks.{last}.add2"].sqnr_db + 3


def test_a_broken_scale_is_ranked_first(digits):
    """The report must point at the operator that is wrong: halve one GELU table's output
    (a wrong constant) and that GELU becomes the worst tensor, far below the rest."""
    _, model, calib = digits
    golden = quantize_model(model, calib)
    golden.blocks[1].gelu_table = golden.blocks[1].gelu_table // 2
    rows = per_layer_error(model, golden, calib)
    assert rows[0].name == "blocks.1.mlp.gelu"
    assert rows[0].local_sqnr_db < rows[1].local_sqnr_db - 10


def test_exact_tensor_reports_finite_sqnr():
    from vitaccel.models.error_report import _error

    assert _error(np.ones(4), np.ones(4)) == (SQNR_EXACT_DB, 0.0)


def test_wide_residual_stream_is_measured_on_its_own_grid(digits):
    """With a 12-bit residual stream the report grids the float residual on 12 bits too:
    every residual add's own (local) error falls (measured 4.5-11.8 dB on digits; not the
    24 dB of four bits, since the int8 branch operand still carries its grid's error), and
    no tensor is clipped to int8 (which would show as SQNR near 0 dB)."""
    spec, model, calib = digits
    rows = {}
    for bits in (8, 12):
        golden = quantize_model(model, calib, QuantConfig(residual_bits=bits))
        rows[bits] = {r.name: r for r in per_layer_error(model, golden, calib)}
    for i in range(spec.depth):
        for name in (f"blocks.{i}.add1", f"blocks.{i}.add2"):
            assert rows[12][name].local_sqnr_db > rows[8][name].local_sqnr_db + 3, name
    assert min(r.sqnr_db for r in rows[12].values()) > 12
