"""Integer reference functions: the one definition of every operator the accelerator computes.

The golden model calls these; the RTL tests compare against these. Nothing else in the
project may re-implement an operator's arithmetic. Every function takes and returns numpy
integer arrays (int64 inside, so no intermediate can overflow) and is vectorised over the
leading axes. docs/numerics.md describes each one in words a hardware engineer can build from.

Conventions
-----------
* ``>>`` is an arithmetic (floor) shift, as in hardware.
* "round-shift" ``rshift_round(v, s)`` is ``(v + 2**(s-1)) >> s`` for s > 0: round half up.
* Rows are processed along the last axis, element 0 first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "INT8_MIN",
    "INT8_MAX",
    "signed_range",
    "rshift_round",
    "requantize",
    "residual_add",
    "matmul_int",
    "log2_code_weights",
    "SoftmaxParams",
    "e2softmax",
    "e2softmax_k",
    "LayerNormParams",
    "ailayernorm",
    "ailayernorm_stats",
    "gelu_lut",
    "lut_lookup",
    "compress_magnitude",
    "SQUARE_LUT16",
    "EXP2_FRAC4",
    "E2_FRAC",
    "LOG2_MANT32",
    "EXP2_FRAC32",
]

INT8_MIN, INT8_MAX = -128, 127


def signed_range(bits: int) -> tuple[int, int]:
    """``(-2**(bits-1), 2**(bits-1) - 1)``: the clamp bounds of a signed ``bits``-bit value."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def rshift_round(value, shift) -> np.ndarray:
    """``(value + 2**(shift-1)) >> shift`` (round half up); ``value`` when shift == 0.

    ``shift`` may be an array (broadcast against ``value``); it must be >= 0.
    """
    value = _i64(value)
    shift = _i64(shift)
    if np.any(shift < 0):
        raise ValueError(f"shift must be >= 0, got min {int(shift.min())}")
    half = np.where(shift > 0, np.left_shift(1, np.maximum(shift - 1, 0)), 0)
    return np.right_shift(value + half, shift)


# --------------------------------------------------------------------------------------
# Linear layers: integer matmul and dyadic requantisation
# --------------------------------------------------------------------------------------


def matmul_int(x, w, bias=None) -> np.ndarray:
    """``acc[..., t, n] = sum_k x[..., t, k] * w[n, k] + bias[n]``, exact in int64.

    The products are done in float64 BLAS when every partial sum provably stays below
    2**53 (it is exact there and much faster); otherwise in int64.
    """
    x = _i64(x)
    w = _i64(w)
    k = x.shape[-1]
    bound = int(np.abs(x).max(initial=0)) * int(np.abs(w).max(initial=0)) * k
    if bound < 2**53:
        acc = np.rint(x.astype(np.float64) @ w.T.astype(np.float64)).astype(np.int64)
    else:
        acc = x @ w.T
    if bias is not None:
        acc = acc + _i64(bias)
    return acc


def requantize(acc, mult, shift, lo: int = INT8_MIN, hi: int = INT8_MAX) -> np.ndarray:
    """Dyadic requantisation: ``clamp((acc * mult + 2**(shift-1)) >> shift, lo, hi)``.

    ``mult`` and ``shift`` broadcast against ``acc`` along the last axis (per output
    channel) or are scalars. ``mult`` is a non-negative integer (see
    :func:`vitaccel.quant.scales.dyadic`), ``shift`` in [0, 62].
    """
    prod = _i64(acc) * _i64(mult)
    return np.clip(rshift_round(prod, shift), lo, hi)


def residual_add(a, mult_a, b, mult_b, shift, lo: int = INT8_MIN, hi: int = INT8_MAX):
    """Residual add of two signed tensors to a common output scale.

    ``clamp((a * mult_a + b * mult_b + 2**(shift-1)) >> shift, lo, hi)`` with per-channel
    (last axis) or scalar multipliers and one shift per channel or scalar. ``lo, hi``: the
    residual stream's range (int8 by default; see ``QuantConfig.residual_bits``).
    """
    total = _i64(a) * _i64(mult_a) + _i64(b) * _i64(mult_b)
    return np.clip(rshift_round(total, shift), lo, hi)


def log2_code_weights(codes, code_bits: int = 4) -> np.ndarray:
    """Attention probabilities given as log2 codes q (p ~ 2**-q) as integer weights.

    PackQViT eq. 3: ``sum_j V_j << (Q - q_j)`` with Q = 2**code_bits - 1; the result has
    scale ``s_V * 2**-Q``. Expressed as the integer weight ``2**(Q - q)`` it is an ordinary
    matmul, so the same :func:`matmul_int` and :func:`requantize` define it.
    """
    q_max = (1 << code_bits) - 1
    return np.left_shift(1, q_max - _i64(codes))


# --------------------------------------------------------------------------------------
# E2Softmax
# --------------------------------------------------------------------------------------

# 2**(-f/4) for f = 0..3 as a fraction of 2**15 (the pass-1 term table).
EXP2_FRAC4_BITS = 15
EXP2_FRAC4 = tuple(int(round(2**EXP2_FRAC4_BITS * 2 ** (-f / 4))) for f in range(4))
# Pass 2 works in the log domain with E2_FRAC fraction bits (units of 1/32 log2).
E2_FRAC = 5
# log2(1 + (m + 0.5)/32) in units of 1/32, m = the 5 mantissa bits below S's leading one.
LOG2_MANT32 = tuple(
    int(round(2**E2_FRAC * np.log2(1 + (m + 0.5) / 2**E2_FRAC))) for m in range(2**E2_FRAC)
)
# 2**(8 - f/32) for f = 0..31: the uint8 probability before the integer shift (9 bits).
EXP2_FRAC32 = tuple(int(round(2 ** (8 - f / 2**E2_FRAC))) for f in range(2**E2_FRAC))


@dataclass(frozen=True)
class SoftmaxParams:
    """Constants of one E2Softmax instance.

    Parameters
    ----------
    in_shift : int
        T in the input scale ``s = ln(2) * 2**-T``: a logit difference d (in LSBs) is
        ``d * 2**-T`` in log2 units. The preceding requantisation folds log2(e) in, so the
        unit needs no multiplier (SOLE's shift-add ``x + x>>1 - x>>4`` approximates the same
        factor with 0.36 % error; folding it is exact and free). 0..12.
    frac_bits : int
        F, fraction bits of the running sum S (2**F is one max-valued term). 8..20.
    lanes : int
        Elements consumed per step. Part of the definition: the running max is updated once
        per group of ``lanes`` elements (see :func:`e2softmax`).
    code_bits : int
        Width of the log2-code output (4 in SOLE).
    """

    in_shift: int = 4
    frac_bits: int = 15
    lanes: int = 1
    code_bits: int = 4

    def __post_init__(self):
        if not 0 <= self.in_shift <= 12:
            raise ValueError(f"in_shift must be in 0..12, not {self.in_shift!r}")
        if not 8 <= self.frac_bits <= 20:
            raise ValueError(f"frac_bits must be in 8..20, not {self.frac_bits!r}")
        if self.lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {self.lanes!r}")
        if not 2 <= self.code_bits <= 6:
            raise ValueError(f"code_bits must be in 2..6, not {self.code_bits!r}")


def _ceil_shift(x: np.ndarray, t: int) -> np.ndarray:
    """ceil(x / 2**t) for integers."""
    return -np.right_shift(-x, t)


def e2softmax_k(x, params: SoftmaxParams):
    """Pass 1 of E2Softmax (online normalisation) over the last axis.

    Returns ``(m_int, s_sum, dq)``: the row maximum in whole log2 units (``ceil(max x /
    2**T)``), the running sum S (F fraction bits), and each element's distance below
    ``m_int * 2**T`` in quarter-log2 units.

    Processing order (part of the definition): groups of ``lanes`` consecutive elements,
    group 0 first. Per group: ``m_new = max(m, max_g ceil(x_g / 2**T))``;
    ``S = (S >> (m_new - m)) + sum_g term(x_g, m_new)``, with
    ``term(x, m) = EXP2_FRAC4[dq & 3] >> (dq >> 2)`` and
    ``dq = rshift_round(m * 2**T - x, T - 2)`` (or ``(m * 2**T - x) << (2 - T)`` when T < 2).
    The first group starts from ``m = -inf``, S = 0.
    """
    x = _i64(x)
    t = params.in_shift
    n = x.shape[-1]
    if n == 0:
        raise ValueError("softmax row length must be >= 1")
    x_int = _ceil_shift(x, t)  # whole-log2 ceiling of each element

    def dq_of(m_int, xs):
        d = np.left_shift(m_int, t) - xs
        return rshift_round(d, t - 2) if t >= 2 else np.left_shift(d, 2 - t)

    def term(dq):
        table = np.asarray(EXP2_FRAC4, dtype=np.int64)[dq & 3]
        shift = np.right_shift(dq, 2)
        scale = params.frac_bits - EXP2_FRAC4_BITS
        base = np.left_shift(table, scale) if scale >= 0 else np.right_shift(table, -scale)
        return np.where(shift > 62, 0, np.right_shift(base, np.minimum(shift, 62)))

    lead = x.shape[:-1]
    m = np.full(lead, np.iinfo(np.int64).min // 4, dtype=np.int64)
    s_sum = np.zeros(lead, dtype=np.int64)
    first = True
    for start in range(0, n, params.lanes):
        group = x[..., start : start + params.lanes]
        g_int = x_int[..., start : start + params.lanes].max(axis=-1)
        m_new = g_int if first else np.maximum(m, g_int)
        if not first:
            s_sum = np.right_shift(s_sum, np.minimum(m_new - m, 62))
        s_sum = s_sum + term(dq_of(m_new[..., None], group)).sum(axis=-1)
        m = m_new
        first = False
    dq = dq_of(m[..., None], x)
    return m, s_sum, dq


def _leading_one(v: np.ndarray) -> np.ndarray:
    """Index of the most significant set bit of v > 0 (floor(log2 v))."""
    out = np.zeros(v.shape, dtype=np.int64)
    w = v.copy()
    for b in (32, 16, 8, 4, 2, 1):
        big = w >= (1 << b)
        out = np.where(big, out + b, out)
        w = np.where(big, np.right_shift(w, b), w)
    return out


def e2softmax(x, params: SoftmaxParams = SoftmaxParams(), output: str = "uint8"):
    """E2Softmax over the last axis of signed logits (int8 in the hardware).

    Pass 2 (per element, after pass 1 of :func:`e2softmax_k`): with L the leading-one
    position of S and m5 the 5 bits below it, ``log2(S / 2**F) ~ lS / 32`` where
    ``lS = (L - F) * 32 + LOG2_MANT32[m5]``. The element's exponent in 1/32 log2 units is
    ``e = max(0, dq * 8 + lS)`` (dq is in quarter units).

    Outputs
    -------
    ``output="uint8"``: probability with scale 2**-8,
    ``min(255, rshift_round(EXP2_FRAC32[e & 31], e >> 5))`` (0 once e >> 5 exceeds 9).
    ``output="log2"``: the code ``q = min(2**code_bits - 1, (e + 16) >> 5)``, p ~ 2**-q.
    """
    if output not in ("uint8", "log2"):
        raise ValueError(f"output must be 'uint8' or 'log2', not {output!r}")
    _, s_sum, dq = e2softmax_k(x, params)
    f = params.frac_bits
    lead = _leading_one(np.maximum(s_sum, 1))
    # S >= 2**(F-1) always (the max element's term), so the mantissa is a plain right shift.
    mant = np.right_shift(s_sum, np.maximum(lead - E2_FRAC, 0)) & (2**E2_FRAC - 1)
    l_s = (lead - f) * 2**E2_FRAC + np.asarray(LOG2_MANT32, dtype=np.int64)[mant]
    e = np.maximum(0, dq * 2 ** (E2_FRAC - 2) + l_s[..., None])
    if output == "log2":
        return np.minimum(
            (1 << params.code_bits) - 1, np.right_shift(e + 2 ** (E2_FRAC - 1), E2_FRAC)
        )
    whole = np.right_shift(e, E2_FRAC)
    table = np.asarray(EXP2_FRAC32, dtype=np.int64)[e & (2**E2_FRAC - 1)]
    prob = np.where(whole > 9, 0, rshift_round(table, np.minimum(whole, 9)))
    return np.minimum(255, prob)


# --------------------------------------------------------------------------------------
# AILayerNorm
# --------------------------------------------------------------------------------------

# Squares of 4-bit mantissas. With a compressed magnitude (m, e), e > 0, the magnitude lies
# in [m * 2**e, (m + 1) * 2**e), so the square uses the midpoint (m + 1/2)**2, and
# (m + 1/2)**2 * 4**e = (m*m + m) * 4**e + 4**(e-1). e == 0 is exact: m*m.
SQUARE_LUT16 = tuple(m * m for m in range(16))


def compress_magnitude(v):
    """Dynamic compression of |v| to a 4-bit mantissa and a shift: |v| ~ m << e, m < 16.

    ``e = max(0, bitlength(|v|) - 4)``, ``m = |v| >> e`` (truncated).
    """
    mag = np.abs(_i64(v))
    bitlen = np.where(mag > 0, _leading_one(np.maximum(mag, 1)) + 1, 0)
    e = np.maximum(0, bitlen - 4)
    return np.right_shift(mag, e), e


@dataclass(frozen=True)
class LayerNormParams:
    """Constants of one AILayerNorm (per layer; arrays are per channel).

    Parameters
    ----------
    alpha : int array (C,)
        Power-of-two factors (PTF) in 0..3: channel c of the input has scale s * 2**alpha_c.
    recip_mult, recip_shift : int
        1/C as a dyadic constant: ``mean = rshift_round(sum * recip_mult, recip_shift)``.
    gain : int array (C,)
        gamma_c / s_out as fixed point with ``out_shift - NORM_FRAC`` fraction bits.
    bias : int array (C,)
        beta_c / s_out with ``out_shift`` fraction bits.
    out_shift : int
        Final shift of ``z * gain + bias``.
    eps_q : int
        epsilon in squared input LSBs (of the PTF-aligned scale s), >= 1.
    """

    alpha: np.ndarray
    recip_mult: int
    recip_shift: int
    gain: np.ndarray
    bias: np.ndarray
    out_shift: int
    eps_q: int = 1

    @property
    def channels(self) -> int:
        return int(np.asarray(self.alpha).shape[-1])


# Normalised value z = d / std carries NORM_FRAC fraction bits.
NORM_FRAC = 6
# 1/sqrt(v) for v = 2**p * (1 + (m + 0.5)/32), m = 5 mantissa bits below the leading one;
# table index (p & 1, m); value with INV_SQRT_BITS fraction bits, times 2**-(p >> 1).
INV_SQRT_MANT = 5
INV_SQRT_BITS = 12
INV_SQRT_LUT = tuple(
    tuple(
        int(round(2**INV_SQRT_BITS / np.sqrt((1 + (m + 0.5) / 2**INV_SQRT_MANT) * 2**odd)))
        for m in range(2**INV_SQRT_MANT)
    )
    for odd in (0, 1)
)


def ailayernorm_stats(x, params: LayerNormParams):
    """Statistics stage of AILayerNorm over the last axis (C channels).

    Returns ``(aligned, mean, var_sum)``:
    * ``aligned = x << alpha`` (PTF alignment to the common scale s),
    * ``mean = rshift_round(sum(aligned) * recip_mult, recip_shift)``,
    * ``var_sum = sum_c sq(aligned_c - mean)`` (the centred sum of squares), where
      ``(m, e) = compress_magnitude(d)`` and ``sq = m*m`` if e == 0 else
      ``((m*m + m) << 2e) + (1 << (2e - 2))`` (the square of the interval midpoint).
    All sums are exact integers, so the order of accumulation does not matter.
    """
    x = _i64(x)
    aligned = np.left_shift(x, _i64(params.alpha))
    total = aligned.sum(axis=-1)
    mean = rshift_round(total * params.recip_mult, params.recip_shift)
    d = aligned - mean[..., None]
    m, e = compress_magnitude(d)
    sq_lut = np.asarray(SQUARE_LUT16, dtype=np.int64)[m]
    sq = np.where(
        e == 0,
        sq_lut,
        np.left_shift(sq_lut + m, 2 * e) + np.left_shift(1, np.maximum(2 * e - 2, 0)),
    )
    return aligned, mean, sq.sum(axis=-1)


def ailayernorm(x, params: LayerNormParams) -> np.ndarray:
    """AILayerNorm: int8 (with PTF scales) in, int8 out, over the last axis. The arithmetic
    takes any signed input width (the golden model's ``residual_bits``); the RTL's is int8.

    After :func:`ailayernorm_stats`:
    * ``var = rshift_round(var_sum * recip_mult, recip_shift) + eps_q`` (>= 1),
    * inverse square root: p = leading-one position of var, m5 = the 5 bits below it
      (zero-padded when p < 5), ``isq = INV_SQRT_LUT[p & 1][m5]`` so that
      ``1/sqrt(var) ~ isq * 2**-(INV_SQRT_BITS + (p >> 1))``,
    * ``z = rshift_round(d * isq, INV_SQRT_BITS + (p >> 1) - NORM_FRAC)`` with d =
      aligned - mean (z has NORM_FRAC fraction bits),
    * ``y = clamp(rshift_round(z * gain + bias, out_shift), -128, 127)``.
    """
    aligned, mean, var_sum = ailayernorm_stats(x, params)
    var = rshift_round(var_sum * params.recip_mult, params.recip_shift) + params.eps_q
    p = _leading_one(var)
    mant = np.where(
        p >= INV_SQRT_MANT,
        np.right_shift(var, np.maximum(p - INV_SQRT_MANT, 0)),
        np.left_shift(var, np.maximum(INV_SQRT_MANT - p, 0)),
    ) & (2**INV_SQRT_MANT - 1)
    lut = np.asarray(INV_SQRT_LUT, dtype=np.int64)
    isq = lut[p & 1, mant]
    d = aligned - mean[..., None]
    z = rshift_round(
        d * isq[..., None], (INV_SQRT_BITS + np.right_shift(p, 1) - NORM_FRAC)[..., None]
    )
    y = rshift_round(z * _i64(params.gain) + _i64(params.bias), params.out_shift)
    return np.clip(y, INT8_MIN, INT8_MAX)


# --------------------------------------------------------------------------------------
# GELU (and any other int8 -> int8 pointwise function)
# --------------------------------------------------------------------------------------


def gelu_lut(
    in_scale: float, out_scale: float, lo: int = INT8_MIN, hi: int = INT8_MAX
) -> np.ndarray:
    """The 256-entry GELU table: ``table[x + 128] = clamp(round(gelu(x * s_in) / s_out))``.

    Computed once, in float64 with the exact erf GELU and round-half-away-from-zero, at
    compile time; the table *is* the definition the hardware ROM holds.
    """
    from math import erf, sqrt

    if not (in_scale > 0 and out_scale > 0):
        raise ValueError(
            f"scales must be positive, got in_scale={in_scale!r}, out_scale={out_scale!r}"
        )
    table = []
    for q in range(INT8_MIN, INT8_MAX + 1):
        v = q * in_scale
        g = 0.5 * v * (1.0 + erf(v / sqrt(2.0))) / out_scale
        r = int(np.floor(abs(g) + 0.5)) * (1 if g >= 0 else -1)
        table.append(min(hi, max(lo, r)))
    return np.asarray(table, dtype=np.int64)


def lut_lookup(x, table) -> np.ndarray:
    """``table[x + 128]`` for int8 x: the pointwise-table unit."""
    return np.asarray(table, dtype=np.int64)[_i64(x) - INT8_MIN]
