"""The integer reference functions: hand-computed cases, extremes and definitional properties.

Error statistics against float on tensors from a real model run are in test_golden.py
(they need the trained digits model).
"""

import math

import numpy as np
import pytest

from vitaccel.quant import ref, scales
from vitaccel.quant.ref import LayerNormParams, SoftmaxParams


def test_rshift_round_is_round_half_up():
    assert ref.rshift_round([5, -5, 7, -7, 6], 1).tolist() == [3, -2, 4, -3, 3]
    assert ref.rshift_round([7, 6, -6], 2).tolist() == [2, 2, -1]
    assert ref.rshift_round([123, -123], 0).tolist() == [123, -123]
    with pytest.raises(ValueError):
        ref.rshift_round(1, -1)


def test_requantize_hand_cases_and_saturation():
    # (1000*3 + 8) >> 4 = 188 -> clamps to 127; per-channel constants broadcast on the last axis.
    acc = np.array([[1000, 100], [-1000, -100]])
    out = ref.requantize(acc, mult=np.array([3, 3]), shift=np.array([4, 4]))
    assert out.tolist() == [[127, 19], [-128, -19]]  # 300/16 = 18.75 -> 19; -18.75 -> -19
    assert ref.requantize(np.array([40000]), 1, 0, -32768, 32767).tolist() == [32767]


def test_residual_add_hand_case():
    # (10*3 + 4*5 + 4) >> 3 = 54 >> 3 = 6
    assert ref.residual_add(np.array([10]), 3, np.array([4]), 5, 3).tolist() == [6]
    assert ref.residual_add(np.array([127]), 1 << 10, np.array([127]), 1 << 10, 3).tolist() == [127]


def test_residual_add_on_a_wider_stream():
    """The golden model's ``residual_bits`` only moves the clamp: 127 + 127 at unit scale
    saturates at int8 and fits int12; the bounds are ``signed_range``'s."""
    assert ref.signed_range(8) == (ref.INT8_MIN, ref.INT8_MAX)
    assert ref.signed_range(12) == (-2048, 2047)
    a, b = np.array([127, -2000]), np.array([127, -2000])
    assert ref.residual_add(a, 1, b, 1, 0).tolist() == [127, -128]
    assert ref.residual_add(a, 1, b, 1, 0, *ref.signed_range(12)).tolist() == [254, -2048]


def test_matmul_int_exact_in_both_paths():
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (5, 33))
    w = rng.integers(-127, 128, (7, 33))
    b = rng.integers(-1000, 1000, 7)
    expect = np.array(
        [
            [int(sum(int(x[t, k]) * int(w[n, k]) for k in range(33))) + int(b[n]) for n in range(7)]
            for t in range(5)
        ]
    )
    assert np.array_equal(ref.matmul_int(x, w, b), expect)
    big = np.full((2, 4), 2**40)
    assert ref.matmul_int(big, np.full((1, 4), 2**13)).tolist() == [[4 * 2**53]] * 2  # int64 path


def test_log2_code_weights():
    assert ref.log2_code_weights(np.array([0, 1, 15])).tolist() == [2**15, 2**14, 1]


# ---- E2Softmax -------------------------------------------------------------------------


def test_e2softmax_hand_case_two_elements():
    # T = 4: logits 0 and -16 are 0 and -1 in log2 units.
    # pass 1: m = 0; terms 32768 and 32768 >> 1 = 16384; S = 49152.
    # pass 2: leading one 15, mantissa (49152 >> 10) & 31 = 16, LOG2_MANT32[16] = 19 -> lS = 19.
    # e = (0*8 + 19, 4*8 + 19) = (19, 51): uint8 = EXP2_FRAC32[19] = 170, and 170 >> 1 rounded = 85.
    p = SoftmaxParams(in_shift=4)
    m_int, s_sum, dq = ref.e2softmax_k(np.array([0, -16]), p)
    assert (int(m_int), int(s_sum), dq.tolist()) == (0, 49152, [0, 4])
    assert ref.LOG2_MANT32[16] == 19 and ref.EXP2_FRAC32[19] == 170
    assert ref.e2softmax(np.array([0, -16]), p).tolist() == [170, 85]  # float: 170.7, 85.3
    assert ref.e2softmax(np.array([0, -16]), p, output="log2").tolist() == [1, 2]


def test_e2softmax_extremes():
    p = SoftmaxParams(in_shift=4)
    # N = 1: m = ceil(5/16) = 1, dq = 3 (a 2**-0.75 term); log2 S from the 5-bit table is off
    # by 1/32, so p = 2**-(1/32) -> 251, not 256 (the documented table error).
    assert ref.e2softmax(np.array([[5]]), p).tolist() == [[251]]
    assert ref.e2softmax(np.array([[5]]), p, output="log2").tolist() == [[0]]
    equal = ref.e2softmax(np.full((1, 16), -128), p)
    assert len(set(equal[0].tolist())) == 1 and abs(int(equal[0, 0]) - 16) <= 1  # 1/16 * 256
    one_huge = ref.e2softmax(np.array([[127] + [-128] * 20]), p)
    assert one_huge[0, 0] == 251 and (one_huge[0, 1:] == 0).all()  # same 1/32 table step
    codes = ref.e2softmax(np.array([[127] + [-128] * 20]), p, output="log2")
    assert codes[0, 0] == 0 and (codes[0, 1:] == 15).all()


def test_e2softmax_lanes_equal_row_is_two_pass_definition():
    """With one group per row, pass 1 is exactly: final max first, then the exact sum."""
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (50, 23))
    for t in (0, 2, 5):
        p = SoftmaxParams(in_shift=t, lanes=23)
        m_int, s_sum, dq = ref.e2softmax_k(x, p)
        assert np.array_equal(m_int, -((-x.max(axis=1)) >> t))
        terms = np.asarray(ref.EXP2_FRAC4)[dq & 3] >> (dq >> 2)
        assert np.array_equal(s_sum, terms.sum(axis=1))


def test_e2softmax_lanes_define_the_order():
    """Different lane counts are different (documented) definitions, but agree closely."""
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (400, 37))
    a = ref.e2softmax(x, SoftmaxParams(lanes=1))
    b = ref.e2softmax(x, SoftmaxParams(lanes=4))
    assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize("t", [0, 3, 6])
def test_e2softmax_error_against_float_on_random_logits(t):
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (500, 17))
    s = math.log(2) * 2.0**-t
    z = x * s
    f = np.exp(z - z.max(axis=1, keepdims=True))
    f /= f.sum(axis=1, keepdims=True)
    y = ref.e2softmax(x, SoftmaxParams(in_shift=t)) / 256
    err = np.abs(y - f)
    assert err.mean() < 0.003 and err.max() < 0.05


def test_softmax_params_validation():
    with pytest.raises(ValueError, match="in_shift"):
        SoftmaxParams(in_shift=13)
    with pytest.raises(ValueError, match="lanes"):
        SoftmaxParams(lanes=0)
    with pytest.raises(ValueError, match="output"):
        ref.e2softmax(np.zeros((1, 2), dtype=int), output="float")


# ---- AILayerNorm -----------------------------------------------------------------------


def test_compress_magnitude():
    m, e = ref.compress_magnitude(np.array([0, 15, 16, -1000, 1016]))
    assert m.tolist() == [0, 15, 8, 15, 15] and e.tolist() == [0, 0, 1, 6, 6]


def test_ailayernorm_hand_case():
    # x = [1, 2, 3, 4]; mean = (10 * 1 + 2) >> 2 = 3; d = [-2, -1, 0, 1], squares 4 1 0 1 -> 6
    # var = (6 + 2) >> 2 = 2, + eps 1 = 3: p = 1, mantissa (3 << 4) & 31 = 16,
    # isq = INV_SQRT_LUT[1][16] = round(4096 / sqrt(2 * (1 + 16.5/32))) = 2353
    # z = (d * 2353 + 32) >> 6 = [-74, -37, 0, 37]; y = (z * 2048 + 2048) >> 12 = [-37, -18, 0, 19]
    p = LayerNormParams(
        alpha=np.zeros(4, int),
        recip_mult=1,
        recip_shift=2,
        gain=np.full(4, 2048),
        bias=np.zeros(4, int),
        out_shift=12,
    )
    aligned, mean, var_sum = ref.ailayernorm_stats(np.array([1, 2, 3, 4]), p)
    assert (int(mean), int(var_sum)) == (3, 6)
    assert ref.INV_SQRT_LUT[1][16] == 2353
    assert ref.ailayernorm(np.array([1, 2, 3, 4]), p).tolist() == [-37, -18, 0, 19]


def test_ailayernorm_ptf_and_compressed_squares():
    # alpha shifts channels onto one scale; big deviations use the midpoint square.
    p = LayerNormParams(
        alpha=np.array([0, 3]),
        recip_mult=1,
        recip_shift=1,
        gain=np.full(2, 64),
        bias=np.zeros(2, int),
        out_shift=6,
    )
    aligned, mean, var_sum = ref.ailayernorm_stats(np.array([-100, 100]), p)
    assert aligned.tolist() == [-100, 800] and int(mean) == 350
    # d = [-450, 450]: 9 bits -> e = 5, m = 14; sq = (14*14 + 14) << 10 + (1 << 8) = 215296
    assert int(var_sum) == 2 * 215296


def test_ailayernorm_extremes_saturate_and_constant_rows():
    c = 32
    recip_mult, recip_shift = scales.dyadic(1 / c)
    p = LayerNormParams(
        alpha=np.zeros(c, int),
        recip_mult=int(recip_mult),
        recip_shift=int(recip_shift),
        gain=np.full(c, 1 << 12),
        bias=np.zeros(c, int),
        out_shift=12,
    )
    const = ref.ailayernorm(np.full((3, c), 77), p)
    assert (const == 0).all()  # zero deviation -> beta (0)
    spike = np.full(c, -128)
    spike[5] = 127
    y = ref.ailayernorm(spike, p)
    assert y[5] == 127 and (np.delete(y, 5) < 0).all()


# ---- GELU table --------------------------------------------------------------------------


def test_gelu_table_values():
    table = ref.gelu_lut(0.1, 0.1)
    assert table[128 + 10] == 8  # gelu(1.0) / 0.1 = 8.41
    assert table[0] == 0 and table[255] == 127  # gelu(-12.8) ~ 0; gelu(12.7)/0.1 = 127
    assert ref.lut_lookup(np.array([10, -128]), table).tolist() == [8, 0]
    with pytest.raises(ValueError):
        ref.gelu_lut(0.0, 1.0)


def test_gelu_table_is_exact_rounding_of_float():
    s_in, s_out = 0.05, 0.03
    table = ref.gelu_lut(s_in, s_out)
    v = np.arange(-128, 128) * s_in
    g = 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2))) / s_out
    assert np.abs(table - np.clip(g, -128, 127)).max() <= 0.5 + 1e-9


# ---- compile-time quantisers ----------------------------------------------------------------


def test_dyadic_precision():
    reals = np.array([1e-4, 0.37, 1.0, 3.3, 200.0])
    mult, shift = scales.dyadic(reals)
    assert (mult < 2**16).all() and (mult >= 2**15).all()
    assert np.abs(mult * 2.0**-shift / reals - 1).max() < 2**-15
    mult, shift = scales.dyadic_common([0.5, 0.01])
    assert np.abs(mult * 2.0**-shift - [0.5, 0.01]).max() < 2**-16


def test_weight_quantisers():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(16, 24))
    w8 = scales.quantize_weight(w)
    assert np.abs(w8.q).max() == 127 and w8.w4_ratio == 0
    i4 = scales.quantize_weight(w, 1.0, "int4")
    assert np.abs(i4.q).max() == 7 and i4.w4_ratio == 1
    p4 = scales.quantize_weight(w, 1.0, "pot4")
    mags = set(np.abs(p4.q).ravel().tolist())
    assert mags <= {0, 1, 2, 4, 8, 16, 32, 64} and 64 in mags
    mixed = scales.quantize_weight(w, 0.25, "int4")
    assert (mixed.kind != 0).sum() == 4
    assert np.abs(mixed.q[mixed.kind != 0]).max() <= 7
    assert np.array_equal(mixed.q, scales.quantize_weight(w, 0.25, "int4").q)  # deterministic
    for bad in (dict(w4_ratio=1.5), dict(w4_kind="int3")):
        with pytest.raises(ValueError):
            scales.quantize_weight(w, **bad)


def test_ptf_alpha_never_clips_calibration():
    r = np.array([0.1, 1.0, 7.9, 8.0, 0.5])
    base, alpha = scales.ptf_alpha(r)
    assert (r <= 127 * base * 2.0**alpha + 1e-12).all()
    assert alpha.tolist() == [0, 0, 3, 3, 0]
