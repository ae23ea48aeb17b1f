"""Flow for the nonlinear units (E2Softmax, AILayerNorm, GELU): generate, simulate, report.

The CLI (``vitaccel generate/sim --unit softmax|layernorm|gelu``) calls exactly
:func:`generate_unit`, :func:`simulate_unit` and :func:`resource_report`. The test rows and
constants come from here too (:func:`softmax_logits`, :func:`layernorm_inputs`,
:func:`layernorm_params`, :func:`gelu_table`), so the CLI and the tests exercise the same
data; expected values always come from :mod:`vitaccel.quant.ref`.

``python -m vitaccel.flow.unit_nonlinear --report`` re-synthesises every unit with Yosys and
rewrites the resource table in docs/nonlinear.md.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitaccel.quant.ref import (
    INT8_MAX,
    INT8_MIN,
    NORM_FRAC,
    LayerNormParams,
    SoftmaxParams,
    ailayernorm,
    e2softmax,
    gelu_lut,
    lut_lookup,
)
from vitaccel.quant.scales import dyadic, ptf_alpha

__all__ = [
    "UNITS",
    "build_unit",
    "unit_verilog",
    "generate_unit",
    "UnitCase",
    "softmax_logits",
    "softmax_case",
    "layernorm_inputs",
    "layernorm_params",
    "layernorm_case",
    "gelu_table",
    "gelu_case",
    "default_case",
    "concat_cases",
    "golden_capture",
    "golden_case",
    "simulate_case",
    "simulate_unit",
    "compare_rows",
    "assert_bit_exact",
    "resource_report",
]

UNITS = ("softmax", "layernorm", "gelu")
# Options each unit's constructor takes besides lanes and in_bits, with the defaults used by
# generate, sim and the resource report (ViT/DeiT shapes: 197 tokens, up to 768 channels).
UNIT_OPTIONS = {
    "softmax": {"max_row": 256, "frac_bits": 15, "output": "uint8", "code_bits": 4},
    "layernorm": {"max_channels": 768, "gain_bits": 16, "bias_bits": 24},
    "gelu": {"out_bits": 8},
}
TOKENS = 197  # DeiT/ViT-B/16 at 224x224: 196 patches + CLS
CHANNELS = 192  # DeiT-tiny embedding width
GELU_ROW = 768  # DeiT-tiny MLP hidden width


def _check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")
    return unit


# ``max_len`` is the unit-neutral name of the row-length bound (the CLI's --max-len).
MAX_LEN_OPTION = {"softmax": "max_row", "layernorm": "max_channels", "gelu": None}


def _options(unit: str, options: dict) -> dict:
    known = UNIT_OPTIONS[_check_unit(unit)]
    options = dict(options)
    if "max_len" in options:
        max_len = options.pop("max_len")
        target = MAX_LEN_OPTION[unit]
        if target is not None and max_len is not None:  # GELU is pointwise: no row buffer
            options[target] = max_len
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for unit {unit!r}; known: {sorted(known)}")
    return {**known, **{k: v for k, v in options.items() if v is not None}}


def build_unit(unit: str, *, lanes: int = 1, in_bits: int = 8, **options):
    """The Amaranth component of ``unit`` (options as in ``UNIT_OPTIONS``)."""
    opts = _options(unit, options)
    if unit == "softmax":
        from vitaccel.rtl.softmax import E2Softmax

        return E2Softmax(lanes=lanes, in_bits=in_bits, **opts)
    if unit == "layernorm":
        from vitaccel.rtl.layernorm import AILayerNorm

        return AILayerNorm(lanes=lanes, in_bits=in_bits, **opts)
    from vitaccel.rtl.gelu import GELU

    return GELU(lanes=lanes, in_bits=in_bits, **opts)


def _out_bits(unit: str, opts: dict) -> int:
    if unit == "gelu":
        return opts["out_bits"]
    if unit == "softmax":
        return 8 if opts["output"] == "uint8" else opts["code_bits"]
    return 8  # AILayerNorm: int8 out, as the reference clamps


def module_name(unit: str) -> str:
    return f"vitaccel_{_check_unit(unit)}"


@functools.lru_cache(maxsize=32)
def _verilog_cached(unit: str, lanes: int, in_bits: int, items: tuple) -> str:
    from vitaccel.rtl.verilog import to_verilog

    return to_verilog(
        build_unit(unit, lanes=lanes, in_bits=in_bits, **dict(items)), module_name(unit)
    )


def unit_verilog(unit: str, *, lanes: int = 1, in_bits: int = 8, **options) -> tuple[str, str]:
    """``(verilog, top module name)``; deterministic, memoised per parameter set."""
    opts = _options(unit, options)
    return _verilog_cached(unit, lanes, in_bits, tuple(sorted(opts.items()))), module_name(unit)


def generate_unit(unit: str, out_dir, *, lanes: int = 1, in_bits: int = 8, **options) -> dict:
    """Write ``<out_dir>/<unit>.v`` (atomically; byte-identical on repeat)."""
    from vitaccel.util import atomic_write_text

    verilog, top = unit_verilog(unit, lanes=lanes, in_bits=in_bits, **options)
    path = atomic_write_text(Path(out_dir) / f"{unit}.v", verilog)
    return {
        "unit": unit,
        "top": top,
        "lanes": lanes,
        "in_bits": in_bits,
        "options": _options(unit, options),
        "verilog": str(path),
    }


# ---- test data: realistic rows and constants ------------------------------------------


@dataclass
class UnitCase:
    """Rows for one unit plus everything the testbench must drive and the expected rows.

    ``cfg`` holds one array per write-port input (one entry per write), strobed by
    ``cfg_strobe``; ``row_scalars`` one value per row for each per-row ``In`` signal.
    """

    rows: list[np.ndarray]
    expected: list[np.ndarray]
    cfg: dict[str, np.ndarray] = field(default_factory=dict)
    cfg_strobe: str | None = None
    row_scalars: dict[str, np.ndarray] = field(default_factory=dict)
    out_signed: bool = True
    write_row: np.ndarray | None = None  # row before which each write happens (default 0)

    @property
    def elements(self) -> int:
        return int(sum(len(r) for r in self.rows))


def concat_cases(cases: list[UnitCase]) -> UnitCase:
    """One stream of several cases (e.g. layers); each case's constants are written before
    its first row, once the unit has gone idle (the testbench waits for ``busy`` low)."""
    first = cases[0]
    rows, expected, write_row = [], [], []
    cfg = {k: [] for k in first.cfg}
    scalars = {k: [] for k in first.row_scalars}
    for case in cases:
        if set(case.cfg) != set(cfg) or set(case.row_scalars) != set(scalars):
            raise ValueError("cases to concatenate must drive the same ports")
        n_writes = len(next(iter(case.cfg.values()))) if case.cfg else 0
        own = np.zeros(n_writes, dtype=np.int64) if case.write_row is None else case.write_row
        write_row.append(own + len(rows))
        for k, v in case.cfg.items():
            cfg[k].append(np.asarray(v, dtype=np.int64))
        for k, v in case.row_scalars.items():
            scalars[k].append(np.asarray(v, dtype=np.int64))
        rows += case.rows
        expected += case.expected
    return UnitCase(
        rows=rows,
        expected=expected,
        cfg={k: np.concatenate(v) for k, v in cfg.items()},
        cfg_strobe=first.cfg_strobe,
        row_scalars={k: np.concatenate(v) for k, v in scalars.items()},
        out_signed=first.out_signed,
        write_row=np.concatenate(write_row) if cfg else None,
    )


def _group_apply(rows, keys, fn) -> list[np.ndarray]:
    """Apply the (vectorised) reference ``fn(batch, key)`` to rows grouped by (len, key)."""
    out: list[np.ndarray | None] = [None] * len(rows)
    groups: dict[tuple, list[int]] = {}
    for r, (row, key) in enumerate(zip(rows, keys, strict=True)):
        groups.setdefault((len(row), key), []).append(r)
    for (_, key), idx in groups.items():
        res = fn(np.stack([rows[r] for r in idx]), key)
        for k, r in enumerate(idx):
            out[r] = np.asarray(res[k], dtype=np.int64)
    return out  # type: ignore[return-value]


def softmax_logits(rng, rows: int, tokens: int = TOKENS, *, in_shift: int = 4, dim: int = 64):
    """int8 attention logits like a trained ViT's: scaled q.k of Gaussian q/k, a few outlier
    keys (large norm, e.g. the CLS token and 'register' tokens) and per-head temperature.

    Quantised with the unit's input scale ``s = ln2 * 2**-in_shift`` (round, saturate).
    """
    q = rng.standard_normal((rows, dim))
    k = rng.standard_normal((rows, tokens, dim))
    outliers = rng.random((rows, tokens)) < 0.02
    outliers[:, 0] = True  # CLS
    k = k * np.where(outliers, rng.uniform(2.5, 5.0, (rows, tokens)), 1.0)[..., None]
    temp = rng.uniform(0.6, 2.0, (rows, 1))
    logits = temp * np.einsum("rd,rtd->rt", q, k) / math.sqrt(dim)
    scale = math.log(2) * 2.0**-in_shift
    return np.clip(np.rint(logits / scale), INT8_MIN, INT8_MAX).astype(np.int64)


def softmax_case(rows, shifts, *, lanes: int, frac_bits: int = 15, output="uint8", code_bits=4):
    """Expected E2Softmax rows for the given rows and per-row in_shift values."""
    rows = [np.asarray(r, dtype=np.int64) for r in rows]
    shifts = [int(t) for t in shifts]

    def ref(batch, t):
        params = SoftmaxParams(in_shift=t, frac_bits=frac_bits, lanes=lanes, code_bits=code_bits)
        return e2softmax(batch, params, output=output)

    return UnitCase(
        rows=rows,
        expected=_group_apply(rows, shifts, ref),
        row_scalars={"in_shift": np.asarray(shifts, dtype=np.int64)},
        out_signed=False,
    )


def layernorm_inputs(rng, rows: int, channels: int = CHANNELS, *, calib_rows: int = 64):
    """Float residual-stream rows with a few large-range outlier channels, quantised with
    PTF: returns ``(x_int, base_scale, alpha, x_float)``.

    The PTF factors come from :func:`vitaccel.quant.scales.ptf_alpha` on a calibration
    sample drawn separately, so test rows may (rarely) saturate, as in deployment.
    """
    sigma = np.exp(rng.normal(0.0, 0.35, channels))
    outlier = rng.choice(channels, size=max(1, channels // 48), replace=False)
    sigma[outlier] *= rng.uniform(8.0, 30.0, outlier.size)
    mu = rng.normal(0.0, 0.3, channels) * sigma
    calib = mu + sigma * rng.standard_normal((calib_rows, channels))
    base, alpha = ptf_alpha(np.abs(calib).max(axis=0))
    x = mu + sigma * rng.standard_normal((rows, channels))
    x_int = np.clip(np.rint(x / (base * 2.0**alpha)), INT8_MIN, INT8_MAX).astype(np.int64)
    return x_int, base, alpha, x


def layernorm_params(
    alpha,
    *,
    rng=None,
    gamma=None,
    beta=None,
    out_scale: float = 0.05,
    in_scale: float = 0.01,
    eps: float = 1e-6,
    gain_bits: int = 16,
    bias_bits: int = 24,
    max_out_shift: int = 30,
) -> LayerNormParams:
    """Realistic AILayerNorm constants for channels with PTF factors ``alpha``.

    1/C as a dyadic constant (:func:`vitaccel.quant.scales.dyadic`, 16 bits); ``gamma``
    and ``beta`` (random around 1 and 0 when not given) folded into fixed-point gain/bias
    with the largest ``out_shift`` for which both fit ``gain_bits``/``bias_bits`` (signed).
    """
    alpha = np.asarray(alpha, dtype=np.int64)
    channels = alpha.shape[-1]
    rng = np.random.default_rng(0) if rng is None else rng
    gamma = rng.normal(1.0, 0.25, channels) if gamma is None else np.asarray(gamma, float)
    beta = rng.normal(0.0, 0.3, channels) if beta is None else np.asarray(beta, float)
    recip_mult, recip_shift = (int(v) for v in dyadic(1.0 / channels))
    g_real = gamma / out_scale  # per unit of z (z has NORM_FRAC fraction bits)
    b_real = beta / out_scale
    out_shift = NORM_FRAC
    for s in range(max_out_shift, NORM_FRAC - 1, -1):
        g = np.rint(g_real * 2.0 ** (s - NORM_FRAC))
        b = np.rint(b_real * 2.0**s)
        if np.abs(g).max() < 2 ** (gain_bits - 1) and np.abs(b).max() < 2 ** (bias_bits - 1):
            out_shift = s
            break
    gain = np.rint(g_real * 2.0 ** (out_shift - NORM_FRAC)).astype(np.int64)
    bias = np.rint(b_real * 2.0**out_shift).astype(np.int64)
    return LayerNormParams(
        alpha=alpha,
        recip_mult=recip_mult,
        recip_shift=recip_shift,
        gain=gain,
        bias=bias,
        out_shift=out_shift,
        eps_q=max(1, int(round(eps / in_scale**2))),
    )


def layernorm_case(rows, params: LayerNormParams) -> UnitCase:
    """Expected AILayerNorm rows; constants go through the write port, scalars per row."""
    rows = [np.asarray(r, dtype=np.int64) for r in rows]
    channels = params.channels
    for r, row in enumerate(rows):
        if len(row) != channels:
            raise ValueError(f"row {r} has {len(row)} channels, params have {channels}")
    expected = list(ailayernorm(np.stack(rows), params)) if rows else []
    n = len(rows)
    return UnitCase(
        rows=rows,
        expected=[np.asarray(e, dtype=np.int64) for e in expected],
        cfg={
            "const_addr": np.arange(channels),
            "const_alpha": np.asarray(params.alpha, dtype=np.int64),
            "const_gain": np.asarray(params.gain, dtype=np.int64),
            "const_bias": np.asarray(params.bias, dtype=np.int64),
        },
        cfg_strobe="const_we",
        row_scalars={
            "recip_mult": np.full(n, params.recip_mult),
            "recip_shift": np.full(n, params.recip_shift),
            "out_shift": np.full(n, params.out_shift),
            "eps_q": np.full(n, params.eps_q),
        },
    )


def gelu_table(in_scale: float = 0.05, out_scale: float = 0.04) -> np.ndarray:
    """The reference GELU table at given scales (FC1 output range ~ +-6.4)."""
    return gelu_lut(in_scale, out_scale)


def gelu_case(rows, table) -> UnitCase:
    rows = [np.asarray(r, dtype=np.int64) for r in rows]
    table = np.asarray(table, dtype=np.int64)
    return UnitCase(
        rows=rows,
        expected=[lut_lookup(r, table) for r in rows],
        cfg={"table_addr": np.arange(table.size), "table_data": table},
        cfg_strobe="table_we",
    )


def default_case(unit: str, *, vectors: int, seed: int = 0, lanes: int = 1, **options) -> UnitCase:
    """The rows ``simulate_unit`` compares: half model-like, half uniform random, at least
    ``vectors`` elements in whole rows."""
    opts = _options(unit, options)
    rng = np.random.default_rng(seed)
    if unit == "softmax":
        tokens = min(TOKENS, opts["max_row"])
        n_rows = max(1, -(-vectors // tokens))
        n_model = (n_rows + 1) // 2
        shifts = rng.choice([3, 4, 5], size=n_rows)
        rows = [softmax_logits(rng, 1, tokens, in_shift=int(shifts[r]))[0] for r in range(n_model)]
        rows += [rng.integers(INT8_MIN, INT8_MAX + 1, tokens) for _ in range(n_rows - n_model)]
        return softmax_case(
            rows,
            shifts,
            lanes=lanes,
            frac_bits=opts["frac_bits"],
            output=opts["output"],
            code_bits=opts["code_bits"],
        )
    if unit == "layernorm":
        channels = min(CHANNELS, opts["max_channels"])
        n_rows = max(1, -(-vectors // channels))
        n_model = (n_rows + 1) // 2
        x_int, base, alpha, _ = layernorm_inputs(rng, n_model, channels)
        rows = list(x_int) + [
            rng.integers(INT8_MIN, INT8_MAX + 1, channels) for _ in range(n_rows - n_model)
        ]
        params = layernorm_params(
            alpha,
            rng=rng,
            in_scale=base,
            gain_bits=opts["gain_bits"],
            bias_bits=opts["bias_bits"],
        )
        return layernorm_case(rows, params)
    n_rows = max(1, -(-vectors // GELU_ROW))
    table = gelu_table()
    in_scale = 0.05
    rows = []
    for r in range(n_rows):
        if r % 2 == 0:  # FC1 outputs: roughly Gaussian, mean slightly negative, some tails
            real = rng.normal(-0.4, 1.3, GELU_ROW) * np.where(rng.random(GELU_ROW) < 0.02, 4, 1)
            rows.append(np.clip(np.rint(real / in_scale), INT8_MIN, INT8_MAX).astype(np.int64))
        else:
            rows.append(rng.integers(INT8_MIN, INT8_MAX + 1, GELU_ROW))
    return gelu_case(rows, table)


# ---- rows captured from the golden model --------------------------------------------------


def golden_capture(images: int = 2, *, model: str = "digits-vit"):
    """Run the integer golden model on ``images`` test images: ``(golden, capture)``."""
    from vitaccel.models.evaluate import prepare

    _, _, golden, x, _ = prepare(model, images=images)
    capture: dict = {}
    golden.forward(x[:images], capture)
    return golden, capture


def golden_case(unit: str, golden, capture, *, lanes: int = 1, output: str = "uint8") -> UnitCase:
    """The unit's input rows as the golden model produced them (every layer), with the
    expected rows from the reference at the hardware's ``lanes``.

    Softmax: every head's attention logits (per-block in_shift). LayerNorm: every norm1,
    norm2 and the final norm, each layer's constants loaded before its rows. GELU: every
    FC1 output with its block's table.
    """
    _check_unit(unit)
    blocks = golden.blocks
    if unit == "softmax":
        rows, shifts = [], []
        for b, blk in enumerate(blocks):
            logits = capture[f"blocks.{b}.attn.logits"]
            flat = logits.reshape(-1, logits.shape[-1])
            rows += list(flat)
            shifts += [blk.softmax.in_shift] * len(flat)
        sm = blocks[0].softmax
        return softmax_case(
            rows, shifts, lanes=lanes, frac_bits=sm.frac_bits, output=output, code_bits=sm.code_bits
        )
    if unit == "layernorm":
        layers = []
        x_in = capture["embed"]
        for b, blk in enumerate(blocks):
            layers.append((x_in, blk.norm1))
            layers.append((capture[f"blocks.{b}.add1"], blk.norm2))
            x_in = capture[f"blocks.{b}.add2"]
        layers.append((x_in[:, 0], golden.norm))
        return concat_cases(
            [layernorm_case(list(x.reshape(-1, x.shape[-1])), p) for x, p in layers]
        )
    cases = []
    for b, blk in enumerate(blocks):
        f1 = blk.fc1(capture[f"blocks.{b}.norm2"])
        cases.append(gelu_case(list(f1.reshape(-1, f1.shape[-1])), blk.gelu_table))
    return concat_cases(cases)


# ---- simulation ---------------------------------------------------------------------------


def compare_rows(expected, got) -> tuple[int, dict | None]:
    """(number of differing elements, first mismatch as {row, index, expected, got})."""
    mismatches = 0
    first = None
    for r, (e, g) in enumerate(zip(expected, got, strict=True)):
        e = np.asarray(e)
        g = np.asarray(g)
        if g.shape != e.shape:
            mismatches += len(e)
            if first is None:
                first = {
                    "row": r,
                    "index": int(min(len(g), len(e))),
                    "expected": "row",
                    "got": None,
                }
            continue
        diff = np.flatnonzero(e != g)
        mismatches += int(diff.size)
        if diff.size and first is None:
            i = int(diff[0])
            first = {"row": r, "index": i, "expected": int(e[i]), "got": int(g[i])}
    return mismatches, first


def simulate_case(
    unit: str,
    case: UnitCase,
    *,
    lanes: int = 1,
    in_bits: int = 8,
    stall: float = 0.0,
    stall_out: float | None = None,
    seed: int = 0,
    reset: dict | None = None,
    simulator: str = "verilator",
    **options,
) -> dict:
    """Run ``case`` through the unit's Verilog on Verilator (cocotb) and compare every element.

    ``simulator`` picks another simulator for the same testbench (see
    :func:`vitaccel.sim.runner.run_cocotb`: ``"icarus-2005"``, ``"icarus-2012"``).

    ``stall`` is the probability of an idle input cycle and (unless ``stall_out`` is given)
    of a refused output cycle. ``reset={"row": r, "beats": b, "outputs": n}`` sends rows
    before r, takes n output beats, sends b beats of row r, asserts reset and then streams
    the rows after r: those must come out exactly (and the n beats must be correct).
    """
    from vitaccel.sim.runner import run_cocotb
    from vitaccel.sim.tb_nonlinear import frame_row, unframe, unpack_beat

    verilog, top = unit_verilog(unit, lanes=lanes, in_bits=in_bits, **options)
    out_bits = _out_bits(unit, _options(unit, options))
    args = {
        "lanes": lanes,
        "in_bits": in_bits,
        "stall_in": stall,
        "stall_out": stall if stall_out is None else stall_out,
        "seed": seed,
        "cfg_strobe": case.cfg_strobe,
        "mode": "rows",
    }
    arrays = {
        "x": np.concatenate(case.rows).astype(np.int64),
        "lengths": np.asarray([len(r) for r in case.rows], dtype=np.int64),
        **{f"cfg_{k}": np.asarray(v, dtype=np.int64) for k, v in case.cfg.items()},
        **{f"row_{k}": np.asarray(v, dtype=np.int64) for k, v in case.row_scalars.items()},
    }
    if case.write_row is not None:
        arrays["write_row"] = np.asarray(case.write_row, dtype=np.int64)
    checked_rows = list(range(len(case.rows)))
    if reset is not None:
        args.update(
            mode="reset",
            reset_row=int(reset["row"]),
            reset_beats=int(reset["beats"]),
            reset_outputs=int(reset["outputs"]),
        )
        checked_rows = list(range(int(reset["row"]) + 1, len(case.rows)))
    res = run_cocotb(
        verilog=verilog,
        toplevel=top,
        test_module="vitaccel.sim.tb_nonlinear",
        args=args,
        arrays=arrays,
        simulator=simulator,
    )
    errors = list(res.get("errors", []))

    def unpack(words):
        return [unpack_beat(w, lanes=lanes, bits=out_bits, signed=case.out_signed) for w in words]

    got_rows, framing = unframe(
        unpack(res.get("words", [])), [len(case.rows[r]) for r in checked_rows], lanes
    )
    errors += framing
    expected = [case.expected[r] for r in checked_rows]
    mismatches, first = compare_rows(expected, got_rows)
    if first is not None:
        first["row"] = checked_rows[first["row"]]
    if reset is not None:
        # The beats taken before the reset must be the start of row 0's (and later) output.
        before = unpack(res.get("before", []))
        flat_exp = []
        for r in range(int(reset["row"])):
            for values, count, last in frame_row(case.expected[r], lanes):
                flat_exp.append((values[:count], count, last))
        for b, (values, count, last) in enumerate(before):
            if b >= len(flat_exp) or (values[:count], count, last) != flat_exp[b]:
                errors.append(f"beat {b} before the reset differs from the reference")
                break
    elements = sum(len(case.rows[r]) for r in checked_rows)
    cycles = None
    epc = None
    latency = None
    if res.get("last_out") is not None and res.get("first_in") is not None:
        cycles = int(res["last_out"]) - int(res["first_in"]) + 1
        epc = elements / cycles
        latency = int(res["first_out"]) - int(res["first_in"])
    return {
        "unit": unit,
        "lanes": lanes,
        "in_bits": in_bits,
        "options": _options(unit, options),
        "vectors": elements,
        "rows": len(checked_rows),
        "mismatches": mismatches + (0 if not framing else max(1, len(framing))),
        "first_mismatch": first,
        "errors": errors,
        "cycles": cycles,
        "elements_per_cycle": epc,
        "cycles_per_row": None if cycles is None else cycles / max(1, len(checked_rows)),
        "latency": latency,
        "stall": stall,
        "seed": seed,
    }


def simulate_unit(
    unit: str,
    *,
    lanes: int = 1,
    vectors: int = 20000,
    seed: int = 0,
    stall: float = 0.0,
    in_bits: int = 8,
    **options,
) -> dict:
    """Simulate ``unit`` on Verilator with at least ``vectors`` elements (whole rows, half
    model-like, half random) and compare every element with the reference function.

    Returns a JSON-ready dict: ``unit``, ``vectors`` (elements compared), ``mismatches``,
    ``first_mismatch`` (row, index, expected, got), ``cycles`` (first input transfer to last
    output transfer), ``elements_per_cycle``, ``latency`` (cycles from the first input beat
    to the first output beat), ``cycles_per_row`` and the parameters. With ``stall == 0``
    the rows stream back to back, so ``elements_per_cycle`` is the sustained throughput.
    """
    if in_bits != 8:
        raise ValueError(f"simulate_unit drives int8 rows; in_bits must be 8, not {in_bits!r}")
    case = default_case(unit, vectors=vectors, seed=seed, lanes=lanes, **options)
    return simulate_case(
        unit, case, lanes=lanes, in_bits=in_bits, stall=stall, seed=seed, **options
    )


# ---- resources ----------------------------------------------------------------------------

REPORT_VARIANTS = (
    ("gelu", {}),
    ("softmax", {"output": "uint8"}),
    ("softmax", {"output": "log2"}),
    ("layernorm", {}),
)
REPORT_BEGIN = "<!-- resource-table:begin -->"
REPORT_END = "<!-- resource-table:end -->"


def resource_report(lanes_list=(1, 4), *, in_bits: int = 8) -> str:
    """Markdown table: Yosys ``synth_xilinx -family xcup`` counts for each unit at 8 bits."""
    from vitaccel.flow.yosys import synth_xcup

    lines = [
        "| unit | options | lanes | LUT | FF | CARRY8 | LUTRAM | DSP48E2 | RAMB36 | RAMB18 | LUT depth |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for unit, extra in REPORT_VARIANTS:
        opts = _options(unit, extra)
        shown = ", ".join(f"{k}={v}" for k, v in opts.items())
        for lanes in lanes_list:
            verilog, top = unit_verilog(unit, lanes=lanes, in_bits=in_bits, **extra)
            r = synth_xcup(verilog, top)
            lines.append(
                f"| {unit} | {shown} | {lanes} | {r.lut} | {r.ff} | {r.carry} | {r.lutram} | "
                f"{r.dsp48e2} | {r.ramb36} | {r.ramb18} | {r.lut_depth} |"
            )
    return "\n".join(lines) + "\n"


def write_report(doc: Path) -> str:
    """Replace the table between the markers in ``doc`` with a fresh resource report."""
    from vitaccel.util import atomic_write_text

    table = resource_report()
    text = doc.read_text() if doc.exists() else ""
    if REPORT_BEGIN in text and REPORT_END in text:
        head, rest = text.split(REPORT_BEGIN, 1)
        _, tail = rest.split(REPORT_END, 1)
        text = f"{head}{REPORT_BEGIN}\n{table}{REPORT_END}{tail}"
    else:
        text += f"\n{REPORT_BEGIN}\n{table}{REPORT_END}\n"
    atomic_write_text(doc, text)
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitaccel.flow.unit_nonlinear")
    parser.add_argument(
        "--report", action="store_true", help="rewrite the table in docs/nonlinear.md"
    )
    parser.add_argument(
        "--doc", default=str(Path(__file__).resolve().parents[2] / "docs" / "nonlinear.md")
    )
    parser.add_argument("--sim", choices=UNITS, help="simulate one unit and print JSON")
    parser.add_argument("--lanes", type=int, default=1)
    parser.add_argument("--vectors", type=int, default=20000)
    parser.add_argument("--stall", type=float, default=0.0)
    parser.add_argument("--output", choices=("uint8", "log2"), default=None)
    args = parser.parse_args(argv)
    if args.report:
        print(write_report(Path(args.doc)), end="")
    if args.sim:
        import json

        extra = {"output": args.output} if args.sim == "softmax" and args.output else {}
        res = simulate_unit(
            args.sim, lanes=args.lanes, vectors=args.vectors, stall=args.stall, **extra
        )
        print(json.dumps(res))
        return 1 if res["mismatches"] or res["errors"] else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())


def assert_bit_exact(res: dict) -> None:
    """Fail on a :func:`simulate_case` result with testbench errors or any mismatching
    element, naming the first mismatch (row, index, expected, got)."""
    assert not res["errors"], res["errors"][:5]
    first = res["first_mismatch"]
    assert res["mismatches"] == 0, (
        f"{res['mismatches']} mismatches; first at row {first['row']} index {first['index']}: "
        f"expected {first['expected']}, got {first['got']}"
    )
