"""AILayerNorm in Amaranth's simulator: bit-exact against ref.ailayernorm, framing, throughput."""

import dataclasses

import numpy as np
import pytest
from amaranth import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from vitaccel.flow.unit_nonlinear import layernorm_inputs, layernorm_params
from vitaccel.quant.ref import ailayernorm
from vitaccel.rtl.layernorm import AILayerNorm, _shift_right
from vitaccel.sim.tb_nonlinear import amaranth_run_rows


def _restrict(params, channels):
    """The same layer's constants for the first ``channels`` channels (1/C recomputed)."""
    small = layernorm_params(params.alpha[:channels])
    return dataclasses.replace(
        params,
        alpha=params.alpha[:channels],
        gain=params.gain[:channels],
        bias=params.bias[:channels],
        recip_mult=small.recip_mult,
        recip_shift=small.recip_shift,
    )


def _run(dut, params, rows, row_params=None, **kwargs):
    """Load params' per-channel constants, then stream rows with per-row scalars."""
    row_params = row_params or [params] * len(rows)

    async def setup(ctx):
        for c in range(params.channels):
            ctx.set(dut.const_addr, c)
            ctx.set(dut.const_alpha, int(params.alpha[c]))
            ctx.set(dut.const_gain, int(params.gain[c]))
            ctx.set(dut.const_bias, int(params.bias[c]))
            ctx.set(dut.const_we, 1)
            await ctx.tick()
        ctx.set(dut.const_we, 0)

    def row_setup(ctx, r):
        p = row_params[r]
        ctx.set(dut.recip_mult, p.recip_mult)
        ctx.set(dut.recip_shift, p.recip_shift)
        ctx.set(dut.out_shift, p.out_shift)
        ctx.set(dut.eps_q, p.eps_q)

    return amaranth_run_rows(dut, rows, setup=setup, row_setup=row_setup, **kwargs)


def _check(rows, row_params, res):
    assert not res["errors"], res["errors"]
    for r, (row, p, got) in enumerate(zip(rows, row_params, res["rows"], strict=True)):
        exp = ailayernorm(row, p)
        bad = np.flatnonzero(exp != got)
        assert bad.size == 0, f"row {r} index {bad[0]}: expected {exp[bad[0]]}, got {got[bad[0]]}"


def _case(rng, channels, n_model=4):
    x, base, alpha, _ = layernorm_inputs(rng, n_model, channels)
    params = layernorm_params(alpha, rng=rng, in_scale=base)
    rows = list(x) + [
        rng.integers(-128, 128, channels),
        np.full(channels, 127),  # all equal (variance 0: eps only)
        np.full(channels, -128),
        np.where(np.arange(channels) == channels // 2, 127, -128),  # one huge
        np.where(np.arange(channels) % 2 == 0, 127, -128),  # saturation both ways
    ]
    return params, rows


@pytest.mark.parametrize("lanes, channels", [(1, 24), (3, 20), (4, 22), (4, 1), (2, 5)])
def test_ailayernorm_matches_reference_with_stalls(lanes, channels):
    rng = np.random.default_rng(lanes * 100 + channels)
    params, rows = _case(rng, channels)
    dut = AILayerNorm(lanes=lanes, max_channels=32)
    res = _run(dut, params, rows, stall_in=0.3, stall_out=0.4, seed=lanes)
    _check(rows, [params] * len(rows), res)


def test_ailayernorm_per_row_scalars_and_row_lengths():
    """Rows of two layers (C = 20 and C = 12 sharing constants) interleaved: the scalars are
    sampled with each row's first beat and travel with the row."""
    rng = np.random.default_rng(5)
    params, rows20 = _case(rng, 20, n_model=3)
    p12 = dataclasses.replace(_restrict(params, 12), out_shift=params.out_shift - 1, eps_q=7)
    rows, row_params = [], []
    for row in rows20:
        rows += [row, row[:12]]
        row_params += [params, p12]
    dut = AILayerNorm(lanes=4, max_channels=20)
    res = _run(dut, params, rows, row_params, stall_out=0.2)
    _check(rows, row_params, res)


def test_ailayernorm_other_widths():
    rng = np.random.default_rng(9)
    params, rows = _case(rng, 10, n_model=2)
    params = layernorm_params(params.alpha, rng=rng, gain_bits=12, bias_bits=18, in_scale=0.02)
    dut = AILayerNorm(lanes=2, max_channels=10, gain_bits=12, bias_bits=18)
    _check(rows, [params] * len(rows), _run(dut, params, rows))


@pytest.mark.parametrize("lanes, channels", [(1, 16), (4, 16), (4, 3), (2, 33)])
def test_ailayernorm_rows_back_to_back(lanes, channels):
    """Once full, one beat per cycle out, no bubble between rows (three rows overlap)."""
    rng = np.random.default_rng(channels)
    x, base, alpha, _ = layernorm_inputs(rng, 20, channels)
    params = layernorm_params(alpha, rng=rng, in_scale=base)
    rows = list(x)
    dut = AILayerNorm(lanes=lanes, max_channels=40)
    res = _run(dut, params, rows)
    _check(rows, [params] * len(rows), res)
    beats = len(rows) * -(-channels // lanes)
    assert res["last_out"] - res["first_out"] + 1 == beats


def test_ailayernorm_busy_flag():
    rng = np.random.default_rng(1)
    params, rows = _case(rng, 6, n_model=1)
    dut = AILayerNorm(lanes=2, max_channels=8)
    seen = []

    async def finish(ctx):
        seen.append(ctx.get(dut.busy))

    res = _run(dut, params, rows[:2], finish=finish)
    _check(rows[:2], [params] * 2, res)
    assert seen == [0]


def test_ailayernorm_extremes_of_the_reciprocal_condition():
    """The datapath widths are the bounds under ``recip_mult * C <= 2 * 2**recip_shift``
    (``AILayerNorm.d_max`` ...): rows at those bounds, bit-exact. The reciprocal at the
    condition's limit (the mean doubled: |d| up to 3000 of the bound 3072, the variance up to
    twice the mean square), zero (mean 0, var = eps_q: the largest z shift-free), and 1/C;
    eps_q 1 and 65535; out_shift 0 to 63; gain and bias at their extremes; alpha 3."""
    channels, lanes = 64, 4
    rng = np.random.default_rng(64)
    dut = AILayerNorm(lanes=lanes, max_channels=channels)
    widths = (dut.d_max, dut.d_bits, dut.square_bits, dut.var_bits, dut.z_bits)
    assert widths == (3072, 13, 24, 25, 19)
    gain = rng.choice([-(2**15), 2**15 - 1, 1, -1], channels)
    bias = rng.choice([-(2**23), 2**23 - 1, 0], channels)
    base = layernorm_params(np.full(channels, 3))
    consts = dataclasses.replace(base, gain=gain, bias=bias)
    idx = np.arange(channels)
    rows = [
        np.full(channels, -128),
        np.where(idx == 5, 127, -128),  # |d| = 1016 + 1984 at the limit's reciprocal
        np.where(idx == 9, -128, 127),
        np.where(idx % 2 == 0, 127, -128),
        np.where(idx < 8, 127, -128),
        rng.integers(-128, 128, channels),
    ]
    scalars = [
        (1, 5),  # 1 * 64 == 2 * 2**5: the condition's limit
        (0, 0),
        (base.recip_mult, base.recip_shift),
    ]
    all_rows, row_params = [], []
    for mult, shift in scalars:
        for j, row in enumerate(rows):
            for eps, out_shift in ((1, (0, 13, 30, 63)[j % 4]), (65535, (36, 21, 6, 1)[j % 4])):
                all_rows.append(row)
                row_params.append(
                    dataclasses.replace(
                        consts, recip_mult=mult, recip_shift=shift, eps_q=eps, out_shift=out_shift
                    )
                )
    res = _run(dut, consts, all_rows, row_params, stall_in=0.2, stall_out=0.2, seed=3)
    _check(all_rows, row_params, res)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"lanes": 65}, ValueError),
        ({"lanes": None}, TypeError),
        ({"in_bits": 13}, ValueError),
        ({"max_channels": 0}, ValueError),
        ({"gain_bits": 1}, ValueError),
        ({"bias_bits": 41}, ValueError),
        ({"mult_bits": 0}, ValueError),
        ({"row_queue": 2}, ValueError),
    ],
)
def test_ailayernorm_rejects_bad_parameters(kwargs, exc):
    with pytest.raises(exc, match=next(iter(kwargs))):
        AILayerNorm(**kwargs)


@pytest.mark.parametrize("in_bits", [5, 12])
def test_ailayernorm_other_input_widths(in_bits):
    rng = np.random.default_rng(in_bits)
    lo, hi = -(1 << (in_bits - 1)), 1 << (in_bits - 1)
    channels = 12
    params = layernorm_params(rng.integers(0, 4, channels), rng=rng, in_scale=0.01)
    rows = [rng.integers(lo, hi, size=channels) for _ in range(4)]
    rows += [np.full(channels, hi - 1), np.where(np.arange(channels) == 3, hi - 1, lo)]
    dut = AILayerNorm(lanes=4, max_channels=16, in_bits=in_bits)
    _check(rows, [params] * len(rows), _run(dut, params, rows, stall_in=0.2))


def test_ailayernorm_twelve_lanes_wide_rows():
    """12 lanes (not a power of two: channel c is lane c % 12, word c // 12, decoded from
    the 10-bit constant address in slices) with rows of 300 channels, back to back."""
    rng = np.random.default_rng(12)
    params, rows = _case(rng, 300, n_model=3)
    dut = AILayerNorm(lanes=12, max_channels=768)
    res = _run(dut, params, rows)
    _check(rows, [params] * len(rows), res)
    assert res["last_out"] - res["first_out"] + 1 == len(rows) * 25


@pytest.mark.parametrize("lanes", [32, pytest.param(64, marks=pytest.mark.slow)])
def test_ailayernorm_lanes_as_wide_as_the_datapath(lanes):
    """32 and 64 lanes (a 32 / 64-byte datapath's units): bit-exact with stalls, and unstalled
    a row of C channels streams in ``ceil(C / lanes)`` beats; first input to last output is
    ``beats * rows + 2 * beats + 33`` plus a cycle per extra stage of each of the two lane
    sums (``cost.lane_tree_stages``: the cycle model's rule)."""
    from vitaccel.dse.cost import LATENCIES, lane_tree_stages

    rng = np.random.default_rng(lanes)
    channels = 192  # DeiT-Tiny
    params, rows = _case(rng, channels, n_model=1)
    dut = AILayerNorm(lanes=lanes, max_channels=channels)
    _check(rows, [params] * len(rows), _run(dut, params, rows, stall_in=0.3, stall_out=0.3))
    res = _run(dut, params, rows)
    _check(rows, [params] * len(rows), res)
    beats = -(-channels // lanes)
    extra = LATENCIES["layernorm_wide"] * (lane_tree_stages(lanes) - 1)
    assert res["last_out"] - res["first_in"] + 1 == len(rows) * beats + 2 * beats + 33 + extra


@pytest.mark.slow  # ~40 s of Amaranth simulation a lane count
@pytest.mark.parametrize("lanes", [32, 64])
def test_ailayernorm_wide_rows_ending_in_a_partial_beat(lanes):
    """C not a multiple of the lanes at 32 and 64 lanes (lanes beyond ``count`` masked out
    of both lane sums: at 64 lanes by the flags kept beside the ring, ``FLAG_LANES``):
    bit-exact with stalls, rows of 100 channels (the last beat 36 / 4 lanes) and of 1."""
    rng = np.random.default_rng(lanes + 1)
    for channels in (100, 1):
        params, rows = _case(rng, channels, n_model=1)
        dut = AILayerNorm(lanes=lanes, max_channels=100)
        res = _run(dut, params, rows, stall_in=0.3, stall_out=0.3, seed=lanes)
        _check(rows, [params] * len(rows), res)


@pytest.mark.parametrize(
    "value_shape, amount_bits, width, lsb",
    [(signed(26), 4, 20, 0), (signed(38), 4, 12, 2), (signed(12), 2, 9, 0), (unsigned(9), 3, 9, 0)],
)
def test_shift_right_is_an_exact_arithmetic_shift(value_shape, amount_bits, width, lsb):
    """The mux-level shifter behind z's rounding and y's window: the low ``width`` bits of
    ``value >> (amount << lsb)`` for every amount, on the extremes and random values."""
    value = Signal(value_shape)
    amount = Signal(amount_bits)
    out = Signal(width)
    m = Module()
    m.d.comb += out.eq(_shift_right(value, amount, width, lsb=lsb))
    span = 2**value_shape.width
    lo, hi = (-span // 2, span // 2 - 1) if value_shape.signed else (0, span - 1)
    rng = np.random.default_rng(7)
    samples = [lo, hi, -1 if value_shape.signed else 1, 0, *rng.integers(lo, hi + 1, 40).tolist()]
    sim = Simulator(m)
    mismatches = []

    async def bench(ctx):
        for v in samples:
            for a in range(2**amount_bits):
                ctx.set(value, v)
                ctx.set(amount, a)
                want = (v >> (a << lsb)) % 2**width
                if ctx.get(out) != want:
                    mismatches.append((v, a, ctx.get(out), want))

    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, f"first mismatch (value, amount, got, want): {mismatches[0]}"
