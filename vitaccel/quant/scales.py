"""Compile-time quantisers: float tensors and scales -> the integers the hardware uses.

These run once per model (calibration, weight packing, constant folding), never in the
datapath, so float64 arithmetic is fine here; what they produce is integers, and from then on
only :mod:`vitaccel.quant.ref` defines the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "WEIGHT_KINDS",
    "dyadic",
    "quantize_activation",
    "act_scale",
    "mse_clip",
    "QuantWeight",
    "quantize_weight",
    "WEIGHT_ROUNDINGS",
    "gptq_round",
    "ptf_alpha",
    "dyadic_common",
    "smooth_scales",
    "gelu_input_scale",
]

# Per-row weight formats: W8 on DSP48E2, W4 (uniform int4 or power-of-two) in LUT fabric.
WEIGHT_KINDS = ("w8", "int4", "pot4")
_W_MAX = {"w8": 127, "int4": 7}
# power-of-two 4-bit: sign + 3-bit exponent e in 0..6 (value +-2**-e of the row max), code 7 = 0.
# Stored as the int8 value +-2**(6-e), so W8 hardware could run it too; W4 lanes shift.
POT_EXPONENTS = 7
POT_UNIT = 2 ** (POT_EXPONENTS - 1)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def dyadic(real, mult_bits: int = 16, max_shift: int = 62) -> tuple[np.ndarray, np.ndarray]:
    """Write each positive real as ``mult * 2**-shift``, mult < 2**mult_bits (unsigned).

    The multiplier is normalised into [2**(mult_bits-1), 2**mult_bits) for the most
    precision; a real too small for max_shift gives a smaller mult (0 for 0).
    """
    real = np.asarray(real, dtype=np.float64)
    if np.any(real < 0) or not np.all(np.isfinite(real)):
        raise ValueError("dyadic(): scale ratios must be finite and >= 0")
    mult = np.zeros(real.shape, dtype=np.int64)
    shift = np.zeros(real.shape, dtype=np.int64)
    for idx, r in np.ndenumerate(real):
        if r == 0:
            continue
        _, exp = math.frexp(r)  # r = f * 2**exp, f in [0.5, 1)
        s = min(max_shift, max(0, mult_bits - exp))
        m = int(math.floor(r * 2.0**s + 0.5))
        while m >= 2**mult_bits and s > 0:
            s -= 1
            m = int(math.floor(r * 2.0**s + 0.5))
        if m >= 2**mult_bits:
            raise ValueError(f"dyadic(): {r!r} does not fit {mult_bits} multiplier bits")
        mult[idx], shift[idx] = m, s
    return mult, shift


def act_scale(absmax: float, bits: int = 8) -> float:
    """Symmetric per-tensor scale that maps absmax to the largest code (no zero point)."""
    qmax = 2 ** (bits - 1) - 1
    return max(float(absmax), 1e-8) / qmax


# Histogram resolution of the MSE range search: 4096 bins over [0, absmax] keep the bin
# width at most 1/16 of a quantisation step for any clip the search tries (>= 1/4 of absmax).
MSE_BINS = 4096
# Clip candidates as fractions of the calibration absmax: 1/4 .. 1 in steps of 1/128.
MSE_FRACTIONS = np.arange(32, 129) / 128


def mse_clip(magnitudes, levels: int = 127) -> float:
    """The clip ``c`` (<= max) minimising the squared error of a uniform grid over [0, c].

    ``magnitudes`` are non-negative values (``|x|`` for a symmetric grid, ``x - min`` for a
    shifted one); the grid has ``levels`` steps of ``c / levels`` and saturates above ``c``.
    The error of each candidate is summed over a histogram of the values (``MSE_BINS``
    bins), so the search costs one pass over the data however many candidates it tries.
    Candidates: ``MSE_FRACTIONS`` of the maximum; ties go to the larger clip.
    """
    a = np.asarray(magnitudes, dtype=np.float64).ravel()
    if a.size == 0 or np.any(a < 0) or not np.all(np.isfinite(a)):
        raise ValueError("mse_clip(): magnitudes must be a non-empty array of finite values >= 0")
    top = float(a.max())
    if top <= 0:
        return 0.0
    hist, edges = np.histogram(a, bins=MSE_BINS, range=(0.0, top))
    centres = 0.5 * (edges[:-1] + edges[1:])
    clips = top * MSE_FRACTIONS
    step = clips[:, None] / levels
    deq = np.minimum(np.floor(centres[None, :] / step + 0.5), levels) * step
    err = (hist[None, :] * (deq - centres[None, :]) ** 2).sum(axis=1)
    # Reverse so argmin's first-minimum rule prefers the larger clip on ties.
    best = len(clips) - 1 - int(np.argmin(err[::-1]))
    return float(clips[best])


def quantize_activation(x, scale: float, bits: int = 8) -> np.ndarray:
    """Float -> signed int with round-half-away-from-zero and saturation (host side)."""
    qmax = 2 ** (bits - 1) - 1
    q = _round_half_away(np.asarray(x, dtype=np.float64) / scale)
    return np.clip(q, -qmax - 1, qmax).astype(np.int64)


@dataclass(frozen=True)
class QuantWeight:
    """A weight matrix (N out x K in) quantised per output channel (row).

    Attributes
    ----------
    q : int64 (N, K)
        Integer weights; every row fits its kind (W8: [-127, 127], int4: [-7, 7],
        pot4: {0, +-1, +-2, ..., +-64}).
    scale : float64 (N,)
        Real value of one integer step per row.
    kind : int64 (N,)
        Index into WEIGHT_KINDS per row.
    """

    q: np.ndarray
    scale: np.ndarray
    kind: np.ndarray

    @property
    def w4_ratio(self) -> float:
        return float(np.mean(self.kind != 0)) if self.kind.size else 0.0

    def dequantize(self) -> np.ndarray:
        return self.q * self.scale[:, None]


# Row clip candidates of the int4 MSE search: 1/2 .. 1 of the row maximum in steps of 1/64.
W4_CLIP_FRACTIONS = np.arange(32, 65) / 64


def _int4_mse_rows(w: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int4 rows whose scale is the clip (a ``W4_CLIP_FRACTIONS`` share of the row maximum)
    with the least ``weight``-weighted squared rounding error; ties go to the larger clip."""
    qmax = _W_MAX["int4"]
    absmax = np.maximum(np.abs(w).max(axis=1), 1e-12)
    cand = absmax[:, None] * W4_CLIP_FRACTIONS[None, ::-1] / qmax  # (N, C), largest first
    q = np.clip(_round_half_away(w[:, None, :] / cand[..., None]), -qmax, qmax)
    err = (((q * cand[..., None] - w[:, None, :]) ** 2) * weight).sum(axis=-1)
    best = np.argmin(err, axis=1)
    rows = np.arange(w.shape[0])
    return q[rows, best].astype(np.int64), cand[rows, best]


def _pot4_codes(w: np.ndarray, absmax: np.ndarray) -> np.ndarray:
    """pot4 integers of ``w`` whose row maximum is ``absmax`` (broadcast against ``w``):
    the nearest, in linear value, of ``{0, +-2**-e * absmax : e = 0..6}`` as ``+-2**(6-e)``.
    A value beyond ``absmax`` (GPTQ's updated weights) takes the largest level."""
    r = np.abs(w) / absmax
    levels = np.array([2.0**-e for e in range(POT_EXPONENTS)] + [0.0])
    idx = np.abs(r[..., None] - levels).argmin(axis=-1)
    mag = np.where(
        idx < POT_EXPONENTS,
        np.left_shift(1, POT_EXPONENTS - 1 - np.minimum(idx, POT_EXPONENTS - 1)),
        0,
    )
    return (np.sign(w) * mag).astype(np.int64)


def _quantize_rows(w: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    absmax = np.maximum(np.abs(w).max(axis=1), 1e-12)
    if kind in _W_MAX:
        qmax = _W_MAX[kind]
        scale = absmax / qmax
        q = np.clip(_round_half_away(w / scale[:, None]), -qmax, qmax)
        return q.astype(np.int64), scale
    if kind == "pot4":
        return _pot4_codes(w, absmax[:, None]), absmax / POT_UNIT
    raise ValueError(f"weight kind must be one of {WEIGHT_KINDS}, not {kind!r}")


# How each row's integers are found once its scale is fixed: round to nearest, or GPTQ.
WEIGHT_ROUNDINGS = ("nearest", "gptq")
# GPTQ's damping: this share of the mean diagonal of H is added to the diagonal.
GPTQ_DAMP = 0.01
# Columns per lazy batch update (Frantar et al. 2023, sec. 3, "lazy batch-updates").
GPTQ_BLOCK = 32


def gptq_round(
    w, scale, kind, hessian, act_order: bool = False, damp: float = GPTQ_DAMP
) -> np.ndarray:
    """GPTQ / OPTQ rounding (Frantar et al. 2023) of ``w`` (N x K) onto fixed per-row grids.

    Row ``n`` has the step ``scale[n]`` and the format ``WEIGHT_KINDS[kind[n]]`` (W8: integers
    in [-127, 127], int4: [-7, 7], pot4: ``{0, +-1, +-2, ..., +-64}``, its level set relative
    to ``scale[n] * 64``); both are chosen before rounding and do not change. The columns are
    rounded one at a time and each column's rounding error, divided by the pivot of the
    inverse of ``H + damp * mean(diag H) * I``, is spread over the columns not yet rounded
    through that inverse's Cholesky factor, which minimises ``||(W_q - W) X^T||^2`` for
    ``H = X^T X`` (``hessian``, K x K, of the layer's calibration inputs) one column at a
    time. Input channels that never fire (``H[k, k] = 0``) get weight 0. ``act_order``
    rounds the columns in order of decreasing ``H[k, k]``. Returns the int64 weights.
    """
    w = np.array(w, dtype=np.float64)
    n, k = w.shape
    h = np.array(hessian, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    kind = np.asarray(kind, dtype=np.int64)
    if h.shape != (k, k) or scale.shape != (n,) or kind.shape != (n,):
        raise ValueError(
            f"gptq_round(): weight {w.shape} needs hessian ({k}, {k}), scale and kind ({n},); "
            f"got {h.shape}, {scale.shape}, {kind.shape}"
        )
    pot = np.flatnonzero(kind == WEIGHT_KINDS.index("pot4"))
    qmax = np.where(kind == WEIGHT_KINDS.index("int4"), _W_MAX["int4"], _W_MAX["w8"]) * 1.0
    pot_max = scale[pot] * POT_UNIT

    def round_col(col: np.ndarray) -> np.ndarray:
        # The integers as float64 (exact); the column loop is bound by numpy call overhead,
        # so the clamp is two ufuncs (np.clip costs several times more per call).
        q = _round_half_away(col / scale)
        np.minimum(np.maximum(q, -qmax, out=q), qmax, out=q)
        if pot.size:
            q[pot] = _pot4_codes(col[pot], pot_max)
        return q

    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w, h = w[:, perm], h[np.ix_(perm, perm)]
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    # Upper Cholesky factor U of H^-1 (H^-1 = U^T U): row j of U carries column j's error
    # onto the later columns.
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    # Work on W^T (K x N): column j of W is a contiguous row.
    wt = np.ascontiguousarray(w.T)
    qt = np.zeros((k, n))
    for b0 in range(0, k, GPTQ_BLOCK):
        b1 = min(b0 + GPTQ_BLOCK, k)
        wb = wt[b0:b1].copy()
        err = np.zeros_like(wb)
        ub = u[b0:b1, b0:b1]
        for j in range(b1 - b0):
            col = round_col(wb[j])
            qt[b0 + j] = col
            e = (wb[j] - col * scale) / ub[j, j]
            wb[j + 1 :] -= ub[j, j + 1 :, None] * e[None, :]
            err[j] = e
        wt[b1:] -= u[b0:b1, b1:].T @ err
    out = np.empty((n, k), dtype=np.int64)
    out[:, perm] = qt.T
    return out


def quantize_weight(
    w,
    w4_ratio: float = 0.0,
    w4_kind: str = "int4",
    input_sq_mean=None,
    w4_clip: str = "max",
    rounding: str = "nearest",
    hessian=None,
    act_order: bool = False,
) -> QuantWeight:
    """Quantise a float weight matrix per row; a fraction ``w4_ratio`` of rows becomes W4.

    The W4 rows are those whose W4 quantisation costs least: error
    ``sum_k input_sq_mean[k] * (w - w_hat)**2`` (input-weighted when calibration statistics
    are given, plain squared error otherwise). ``round(w4_ratio * N)`` rows are chosen; ties
    break toward the lower row index, so the choice is deterministic. With ``w4_clip="mse"``
    an int4 row's scale is the clip of its maximum (1/2 .. 1) with the least such error
    instead of the maximum itself (W8 and pot4 rows keep the maximum).

    ``rounding="gptq"`` keeps every row's kind and scale (chosen as above, from rounding to
    nearest) and then finds the integers with :func:`gptq_round` on ``hessian`` (``X^T X``
    of the layer's calibration inputs, required; ``act_order`` as there).
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {w.shape}")
    if not 0.0 <= w4_ratio <= 1.0:
        raise ValueError(f"w4_ratio must be in [0, 1], not {w4_ratio!r}")
    if w4_kind not in ("int4", "pot4"):
        raise ValueError(f"w4_kind must be 'int4' or 'pot4', not {w4_kind!r}")
    if w4_clip not in ("max", "mse"):
        raise ValueError(f"w4_clip must be 'max' or 'mse', not {w4_clip!r}")
    if rounding not in WEIGHT_ROUNDINGS:
        raise ValueError(
            f"weight_rounding must be one of {', '.join(WEIGHT_ROUNDINGS)}, not {rounding!r}"
        )
    if rounding == "gptq" and hessian is None:
        raise ValueError("quantize_weight(): rounding='gptq' needs the input hessian")
    q8, s8 = _quantize_rows(w, "w8")
    n_w4 = int(round(w4_ratio * w.shape[0]))
    kind = np.zeros(w.shape[0], dtype=np.int64)
    if n_w4 == 0:
        if rounding == "gptq":
            q8 = gptq_round(w, s8, kind, hessian, act_order)
        return QuantWeight(q8, s8, kind)
    weight = (
        np.ones(w.shape[1])
        if input_sq_mean is None
        else np.asarray(input_sq_mean, dtype=np.float64)
    )
    if w4_clip == "mse" and w4_kind == "int4":
        q4, s4 = _int4_mse_rows(w, weight)
    else:
        q4, s4 = _quantize_rows(w, w4_kind)
    err4 = ((w - q4 * s4[:, None]) ** 2 * weight).sum(axis=1)
    err8 = ((w - q8 * s8[:, None]) ** 2 * weight).sum(axis=1)
    order = np.argsort(err4 - err8, kind="stable")
    chosen = np.sort(order[:n_w4])
    kind[chosen] = WEIGHT_KINDS.index(w4_kind)
    q = q8.copy()
    scale = s8.copy()
    q[chosen] = q4[chosen]
    scale[chosen] = s4[chosen]
    if rounding == "gptq":
        q = gptq_round(w, scale, kind, hessian, act_order)
    return QuantWeight(q, scale, kind)


def ptf_alpha(channel_absmax, max_alpha: int = 3, bits: int = 8) -> tuple[float, np.ndarray]:
    """Power-of-two factors (FQ-ViT PTF) for a per-channel range.

    Base scale ``s = max_c(r_c) / (qmax * 2**max_alpha)``; ``alpha_c`` is the smallest
    value with ``r_c <= qmax * s * 2**alpha_c``, so calibration data never clips.
    """
    r = np.maximum(np.asarray(channel_absmax, dtype=np.float64), 1e-8)
    qmax = 2 ** (bits - 1) - 1
    base = r.max() / (qmax * 2**max_alpha)
    alpha = np.ceil(np.log2(np.maximum(r / (qmax * base), 1.0)) - 1e-9).astype(np.int64)
    return float(base), np.clip(alpha, 0, max_alpha)


def dyadic_common(reals, mult_bits: int = 16, max_shift: int = 62) -> tuple[np.ndarray, int]:
    """Several positive reals with ONE shared shift: ``mult_i * 2**-shift`` (mult < 2**mult_bits).

    The shift is set by the largest real, so it gets ``mult_bits`` of precision; smaller
    ones get fewer. Used where one adder sums several products before one shift (the
    residual add).
    """
    reals = np.asarray(reals, dtype=np.float64)
    top = float(reals.max(initial=0.0))
    if top <= 0:
        return np.zeros(reals.shape, dtype=np.int64), 0
    _, shift = dyadic(top, mult_bits=mult_bits, max_shift=max_shift)
    shift = int(shift)
    mult = np.floor(reals * 2.0**shift + 0.5).astype(np.int64)
    while mult.max() >= 2**mult_bits and shift > 0:
        shift -= 1
        mult = np.floor(reals * 2.0**shift + 0.5).astype(np.int64)
    return mult, shift


def smooth_scales(act_absmax, weight_absmax, alpha: float, levels: int = 127) -> np.ndarray:
    """Per-channel activation scales that migrate part of each channel's range into the
    weights (SmoothQuant, Xiao et al. 2023, eq. 4).

    Channel ``c`` is divided by ``m_c = act_absmax[c]**alpha / weight_absmax[c]**(1 - alpha)``
    (the next layer's weight column ``c`` is multiplied by it), and the smoothed activation
    is quantised on one per-tensor grid; the result is that grid's step per channel in the
    original units, ``m_c * max_c(act_absmax / m) / levels``. ``alpha = 1`` gives every
    channel its own range (``act_absmax / levels``); smaller ``alpha`` leaves more of the
    spread to the activation grid and less to the weights' per-row grids.
    """
    a = np.maximum(np.asarray(act_absmax, dtype=np.float64), 1e-6)
    w = np.maximum(np.asarray(weight_absmax, dtype=np.float64), 1e-12)
    if a.shape != w.shape or a.ndim != 1:
        raise ValueError(
            f"smooth_scales(): act_absmax {a.shape} and weight_absmax {w.shape} must be one "
            "value per channel"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smooth_scales(): alpha must be in [0, 1], not {alpha!r}")
    m = a**alpha / w ** (1.0 - alpha)
    return m * float(np.max(a / m)) / levels


# GELU's negative lobe peaks at x ~ -0.7518 (value ~ -0.170); below it |GELU| falls
# monotonically to 0, which is what makes the clip below exact.
_GELU_NEG_PEAK = -0.7517916


def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def gelu_input_scale(pos_max: float, out_scale: float, levels: int = 127) -> float:
    """Scale of a symmetric int8 grid feeding a GELU table whose output step is ``out_scale``.

    Inputs below ``-c`` with ``|GELU(x)| < out_scale / 2`` for every ``x <= -c`` all round to
    output code 0, so the grid need not reach below ``-c``: clamping them to the grid's
    lowest code changes no table output. The grid covers ``[-c, pos_max]``
    (``max(pos_max / levels, c / (levels + 1))``) instead of the larger of the two
    calibration extremes; a negative extreme far below ``-c`` (FC1 outputs reach -4.5 to -10.7
    where GELU is 0) no longer coarsens the step every positive input is rounded to.
    """
    if not (out_scale > 0 and math.isfinite(out_scale)) or not math.isfinite(pos_max):
        raise ValueError(
            f"gelu_input_scale(): out_scale must be finite and > 0, pos_max finite, "
            f"not {out_scale!r}, {pos_max!r}"
        )
    half = out_scale / 2
    lo, hi = _GELU_NEG_PEAK, _GELU_NEG_PEAK
    if abs(_gelu(lo)) >= half:
        hi = lo - 1.0
        while abs(_gelu(hi)) >= half:  # |GELU(x)| ~ |x| * exp(-x^2 / 2): ends within ~40
            lo, hi = hi, hi * 2
        for _ in range(60):  # bisection to float precision
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if abs(_gelu(mid)) >= half else (lo, mid)
    c = -hi  # |GELU(x)| < half for every x <= hi
    return max(max(pos_max, 1e-8) / levels, c / (levels + 1))
