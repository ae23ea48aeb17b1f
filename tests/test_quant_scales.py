"""Compile-time quantisers (vitaccel.quant.scales): the MSE range search."""

import numpy as np
import pytest

from vitaccel.quant import scales


def _mse(values: np.ndarray, clip: float, levels: int = 127) -> float:
    step = clip / levels
    deq = np.minimum(np.floor(values / step + 0.5), levels) * step
    return float(((deq - values) ** 2).mean())


def test_mse_clip_keeps_the_max_for_uniform_data():
    a = np.random.default_rng(0).uniform(0, 1, 100_000)
    # Clipping uniform data only adds error: the search keeps (nearly) the whole range.
    assert scales.mse_clip(a) >= 0.99 * a.max()


def test_mse_clip_cuts_a_heavy_tail_and_lowers_the_error():
    # Laplace magnitudes on a 4-bit grid: the MSE-optimal clip is about 5 scale units
    # (Banner et al., ACIQ), well below the sample maximum (about 11.5).
    a = np.abs(np.random.default_rng(1).laplace(size=100_000))
    clip = scales.mse_clip(a, levels=15)
    assert 0.3 * a.max() < clip < 0.6 * a.max()
    # Exact error (no histogram) of the chosen clip beats the plain maximum.
    assert _mse(a, clip, 15) < 0.5 * _mse(a, a.max(), 15)


def test_mse_clip_is_one_of_the_candidates_and_deterministic():
    a = np.abs(np.random.default_rng(2).normal(size=10_000))
    clip = scales.mse_clip(a, levels=255)
    assert clip == scales.mse_clip(a, levels=255)
    assert np.isclose(clip / a.max(), scales.MSE_FRACTIONS).any()


@pytest.mark.parametrize("bad", [np.array([]), np.array([-1.0, 2.0]), np.array([np.nan, 1.0])])
def test_mse_clip_refuses_bad_input(bad):
    with pytest.raises(ValueError, match="mse_clip"):
        scales.mse_clip(bad)


def test_mse_clip_of_zeros_is_zero():
    assert scales.mse_clip(np.zeros(5)) == 0.0


# ---- SmoothQuant migration (issue 24) ----------------------------------------------------


def test_smooth_scales_full_migration_is_one_scale_per_channel():
    act = np.array([0.5, 8.0, 2.0, 1e-9])
    w = np.array([1.0, 0.1, 3.0, 2.0])
    # alpha = 1: every channel its own range, whatever the weights (ln_channel_scales).
    np.testing.assert_array_equal(scales.smooth_scales(act, w, 1.0), np.maximum(act, 1e-6) / 127)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.75])
def test_smooth_scales_fill_one_grid_without_clipping(alpha):
    rng = np.random.default_rng(3)
    act, w = rng.uniform(0.1, 10.0, 16), rng.uniform(0.01, 1.0, 16)
    s = scales.smooth_scales(act, w, alpha)
    # The smoothed channels share one grid: the widest fills the 127 codes, none clips.
    codes = act / s
    assert np.isclose(codes.max(), 127.0) and np.all(codes <= 127.0 + 1e-9)
    # The migration factor is act**alpha / w**(1 - alpha), up to one common factor.
    ratio = s * w ** (1 - alpha) / act**alpha
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)


@pytest.mark.parametrize(
    "act, w, alpha, match",
    [
        ([1.0, 2.0], [1.0], 0.5, "one value per channel"),
        ([[1.0, 2.0]], [[1.0, 2.0]], 0.5, "one value per channel"),
        ([1.0, 2.0], [1.0, 2.0], 1.5, r"alpha must be in \[0, 1\]"),
    ],
)
def test_smooth_scales_refuses_bad_input(act, w, alpha, match):
    with pytest.raises(ValueError, match=match):
        scales.smooth_scales(act, w, alpha)


def test_int4_mse_clip_lowers_the_weighted_error_and_keeps_w8_rows():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((32, 48)) * rng.uniform(0.5, 2.0, 48)
    sq = rng.uniform(0.1, 3.0, 48)

    def err(qw):
        return (((qw.dequantize() - w) ** 2) * sq).sum(axis=1)

    plain = scales.quantize_weight(w, 1.0, "int4", sq)
    clipped = scales.quantize_weight(w, 1.0, "int4", sq, w4_clip="mse")
    # Each row's clip is one of the candidates (never above the maximum), on the int4 grid.
    frac = clipped.scale * 7 / np.abs(w).max(axis=1)
    assert np.all(np.isclose(frac[:, None], scales.W4_CLIP_FRACTIONS).any(axis=1))
    assert np.abs(clipped.q).max() <= 7
    # The maximum is a candidate, so no row gets worse, and on Gaussian rows most improve.
    assert np.all(err(clipped) <= err(plain) + 1e-12)
    assert err(clipped).sum() < 0.9 * err(plain).sum()
    # W8 rows (and a mixed layer's W8 rows) keep the plain maximum.
    half = scales.quantize_weight(w, 0.5, "int4", sq, w4_clip="mse")
    w8 = half.kind == 0
    np.testing.assert_array_equal(half.scale[w8], np.abs(w[w8]).max(axis=1) / 127)
    with pytest.raises(ValueError, match="w4_clip must be 'max' or 'mse'"):
        scales.quantize_weight(w, 0.5, w4_clip="percentile")


@pytest.mark.parametrize("out_scale", [0.004, 0.02, 0.1, 0.4])
def test_gelu_input_scale_clamps_only_where_gelu_rounds_to_zero(out_scale):
    from math import erf, sqrt

    from vitaccel.quant import ref

    pos_max = 2.5
    s = scales.gelu_input_scale(pos_max, out_scale)
    assert 127 * s >= pos_max * (1 - 1e-12)  # the positive side never clips
    # Every input the grid's lowest code (-128) stands for rounds to output code 0 ...
    below = np.linspace(-60.0, -128 * s, 4001)
    gelu = np.array([0.5 * v * (1 + erf(v / sqrt(2))) for v in below])
    assert np.all(np.abs(gelu / out_scale) < 0.5)
    assert ref.gelu_lut(s, out_scale)[0] == 0
    # ... and the grid is finer than one reaching an FC1 minimum of -10 (digits: -4.5 .. -10.7).
    assert s < 10 / 127


def test_gelu_input_scale_refuses_bad_input():
    with pytest.raises(ValueError, match="out_scale must be finite and > 0"):
        scales.gelu_input_scale(2.0, 0.0)


# ---- GPTQ / OPTQ weight rounding (issue 24) ----------------------------------------------


def _correlated_layer(seed: int, n: int = 24, k: int = 40, rows: int = 400):
    """A random layer and correlated calibration inputs (X: rows x k), one dead input."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k)) @ rng.standard_normal((k, k)) * 0.3
    x += rng.standard_normal((rows, k))
    x[:, 5] = 0.0  # an input channel that never fires
    w = rng.standard_normal((n, k)) * rng.uniform(0.3, 2.0, k)
    return w, x, x.T @ x / rows


@pytest.mark.parametrize(
    "ratio, kind", [(0.0, "int4"), (0.5, "int4"), (1.0, "int4"), (1.0, "pot4"), (0.5, "pot4")]
)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_keeps_rows_and_scales_and_lowers_the_output_error(ratio, kind, act_order):
    w, x, h = _correlated_layer(7)
    sq = np.diag(h)
    near = scales.quantize_weight(w, ratio, kind, sq)
    gptq = scales.quantize_weight(
        w, ratio, kind, sq, rounding="gptq", hessian=h, act_order=act_order
    )
    # Same W4 rows and per-row scales: only the integers change.
    np.testing.assert_array_equal(gptq.kind, near.kind)
    np.testing.assert_array_equal(gptq.scale, near.scale)
    # Every row stays on its own grid.
    q, rows = gptq.q, gptq.kind
    w8, i4, p4 = rows == 0, rows == 1, rows == 2
    assert q.dtype == np.int64
    assert np.abs(q[w8]).max(initial=0) <= 127
    assert np.abs(q[i4]).max(initial=0) <= 7
    assert np.isin(np.abs(q[p4]), [0, 1, 2, 4, 8, 16, 32, 64]).all()
    assert not (q[:, 5]).any()  # the dead input's weights are 0
    # The layer's output error on its calibration inputs, ||(W_q - W) X^T||, strictly falls.
    e_near = np.linalg.norm((near.dequantize() - w) @ x.T)
    e_gptq = np.linalg.norm((gptq.dequantize() - w) @ x.T)
    assert e_gptq < 0.95 * e_near, (e_gptq, e_near)
    # Deterministic.
    again = scales.quantize_weight(
        w, ratio, kind, sq, rounding="gptq", hessian=h, act_order=act_order
    )
    np.testing.assert_array_equal(again.q, q)


def test_gptq_on_uncorrelated_unit_inputs_is_round_to_nearest():
    # H = I: no column's error can be compensated by another (the damping only scales H).
    w, _, _ = _correlated_layer(8)
    k = w.shape[1]
    for ratio in (0.0, 1.0):
        near = scales.quantize_weight(w, ratio, "int4")
        got = scales.gptq_round(w, near.scale, near.kind, np.eye(k))
        np.testing.assert_array_equal(got, near.q)


def test_gptq_refuses_bad_input():
    w, _, h = _correlated_layer(9)
    with pytest.raises(ValueError, match="weight_rounding must be one of nearest, gptq"):
        scales.quantize_weight(w, rounding="stochastic")
    with pytest.raises(ValueError, match="needs the input hessian"):
        scales.quantize_weight(w, rounding="gptq")
    with pytest.raises(ValueError, match=r"needs hessian \(40, 40\)"):
        scales.gptq_round(w, np.ones(24), np.zeros(24, dtype=int), h[:10, :10])
