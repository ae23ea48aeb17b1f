"""E2Softmax in Amaranth's simulator: bit-exact against ref.e2softmax, framing, throughput."""

import numpy as np
import pytest

from vitaccel.quant.ref import SoftmaxParams, e2softmax, e2softmax_k
from vitaccel.rtl.softmax import E2Softmax
from vitaccel.sim.tb_nonlinear import amaranth_run_rows


def _run(dut, rows, shifts, **kwargs):
    def row_setup(ctx, r):
        ctx.set(dut.in_shift, shifts[r])

    return amaranth_run_rows(dut, rows, row_setup=row_setup, **kwargs)


def _check(dut, rows, shifts, res):
    assert not res["errors"], res["errors"]
    for r, (row, got) in enumerate(zip(rows, res["rows"], strict=True)):
        params = SoftmaxParams(
            in_shift=shifts[r], frac_bits=dut.frac_bits, lanes=dut.lanes, code_bits=dut.code_bits
        )
        exp = e2softmax(row, params, output=dut.output)
        bad = np.flatnonzero(exp != got)
        assert bad.size == 0, (
            f"row {r} index {bad[0]}: expected {exp[bad[0]]}, got {got[bad[0]]} (T={shifts[r]})"
        )


def _rows(rng, max_row):
    rows = [rng.integers(-128, 128, size=n) for n in (1, 2, 3, 5, 7, 13, max_row)]
    rows += [
        np.full(6, 127),  # all equal, saturated
        np.full(5, -128),
        np.array([-128] * 9 + [127] + [-128] * 3),  # one huge
        np.array([127, -128, 127, -128, 0]),
        np.arange(-128, 128, 256 // max_row)[:max_row],
    ]
    return rows


@pytest.mark.parametrize(
    "lanes, output", [(1, "uint8"), (1, "log2"), (3, "uint8"), (4, "log2"), (4, "uint8")]
)
def test_e2softmax_matches_reference_with_stalls(lanes, output):
    rng = np.random.default_rng(lanes)
    dut = E2Softmax(lanes=lanes, max_row=24, output=output)
    rows = _rows(rng, 24)
    shifts = [int(t) for t in rng.choice([0, 1, 2, 3, 4, 5, 8, 12], size=len(rows))]
    res = _run(dut, rows, shifts, stall_in=0.3, stall_out=0.4, seed=lanes)
    _check(dut, rows, shifts, res)


def test_e2softmax_other_widths():
    rng = np.random.default_rng(7)
    dut = E2Softmax(lanes=2, max_row=16, frac_bits=10, code_bits=3, output="log2")
    rows = [rng.integers(-128, 128, size=n) for n in (1, 4, 9, 16)]
    shifts = [2, 3, 4, 6]
    _check(dut, rows, shifts, _run(dut, rows, shifts, stall_out=0.2))


@pytest.mark.parametrize("lanes, length", [(1, 3), (4, 8), (4, 1), (2, 31)])
def test_e2softmax_rows_back_to_back(lanes, length):
    """Once full, one beat per cycle out, with no bubble between rows of any length."""
    rng = np.random.default_rng(length)
    dut = E2Softmax(lanes=lanes, max_row=32)
    rows = [rng.integers(-128, 128, size=length) for _ in range(24)]
    shifts = [4] * len(rows)
    res = _run(dut, rows, shifts)
    _check(dut, rows, shifts, res)
    beats = len(rows) * -(-length // lanes)
    assert res["last_out"] - res["first_out"] + 1 == beats


def test_e2softmax_busy_flag():
    dut = E2Softmax(lanes=2, max_row=8)
    rows = [np.array([3, 1, -4, 1, 5]), np.array([9, 2])]
    seen = []

    async def setup(ctx):
        seen.append(ctx.get(dut.busy))

    def row_setup(ctx, r):
        ctx.set(dut.in_shift, 4)
        seen.append(ctx.get(dut.busy))  # row 1: row 0 is still in the unit

    async def finish(ctx):
        seen.append(ctx.get(dut.busy))  # after the last output transfer

    res = amaranth_run_rows(dut, rows, setup=setup, row_setup=row_setup, finish=finish)
    assert not res["errors"]
    assert seen == [0, 0, 1, 0]


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"lanes": 0}, ValueError),
        ({"lanes": "4"}, TypeError),
        ({"in_bits": 1}, ValueError),
        ({"max_row": 0}, ValueError),
        ({"frac_bits": 21}, ValueError),
        ({"output": "float"}, ValueError),
        ({"code_bits": 7}, ValueError),
        ({"row_queue": 1}, ValueError),
    ],
)
def test_e2softmax_rejects_bad_parameters(kwargs, exc):
    with pytest.raises(exc, match=next(iter(kwargs))):
        E2Softmax(**kwargs)


@pytest.mark.parametrize("in_bits", [5, 12])
def test_e2softmax_other_input_widths(in_bits):
    rng = np.random.default_rng(in_bits)
    lo, hi = -(1 << (in_bits - 1)), 1 << (in_bits - 1)
    rows = [rng.integers(lo, hi, size=n) for n in (1, 3, 9, 16)]
    rows += [np.full(5, hi - 1), np.array([lo] * 4 + [hi - 1])]
    shifts = [0, 2, 4, 7, 12, 3]
    dut = E2Softmax(lanes=2, max_row=16, in_bits=in_bits)
    _check(dut, rows, shifts, _run(dut, rows, shifts, stall_out=0.3))


@pytest.mark.parametrize("lanes", [32, pytest.param(64, marks=pytest.mark.slow)])
def test_e2softmax_lanes_as_wide_as_the_datapath(lanes):
    """32 and 64 lanes (a 32 / 64-byte datapath's units): bit-exact with stalls on rows
    shorter and longer than a beat, and unstalled DeiT rows (197 tokens) stream back to back,
    one beat per cycle."""
    rng = np.random.default_rng(lanes)
    dut = E2Softmax(lanes=lanes, max_row=197)
    rows = _rows(rng, 197) + [rng.integers(-128, 128, size=n) for n in (lanes, lanes + 1, 100)]
    shifts = [int(t) for t in rng.choice([0, 2, 4, 5, 8], size=len(rows))]
    _check(dut, rows, shifts, _run(dut, rows, shifts, stall_in=0.3, stall_out=0.3, seed=lanes))
    long = [rng.integers(-128, 128, size=197) for _ in range(6)]
    res = _run(dut, long, shifts[:6])
    _check(dut, long, shifts[:6], res)
    assert res["last_out"] - res["first_out"] + 1 == 6 * -(-197 // lanes)


def _row_sums(dut, rows, shift):
    """Each row's final S from the unit's pass-1 register (``row_sum``), rows unstalled."""
    from amaranth.sim import Simulator

    from vitaccel.sim.streams import amaranth_put
    from vitaccel.sim.tb_nonlinear import frame_rows

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sums = []

    async def producer(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.in_shift, shift)
        for beats in frame_rows(rows, dut.lanes):
            for values, count, last in beats:
                await amaranth_put(ctx, dut.i, {"data": values, "count": count, "last": last})
        for _ in range(40):
            await ctx.tick()

    async def sampler(ctx):
        probe = dut.row_sum
        async for _, _, valid, r, p in ctx.tick().sample(probe.valid, probe.r, probe.p):
            if valid:
                sums.append(r >> p)

    sim.add_testbench(producer)
    sim.add_testbench(sampler, background=True)
    sim.run()
    return sums


@pytest.mark.parametrize("lanes, frac_bits", [(1, 15), (3, 15), (2, 8)])
def test_e2softmax_running_sum_is_exact(lanes, frac_bits):
    """S itself (not only the 5 mantissa bits the outputs use) equals e2softmax_k's on rows
    whose maximum keeps rising: steps of 1..7 log2 units that add up past the pending shift's
    8 (R = S << p), single jumps of 8..S's width, and jumps that clear S in mid-row."""
    rng = np.random.default_rng(lanes + frac_bits)
    max_row = 64
    dut = E2Softmax(lanes=lanes, max_row=max_row, frac_bits=frac_bits)
    sb = dut.sum_bits
    rows = [
        np.arange(-128, -128 + max_row),  # +1 per element (T = 0)
        np.repeat(np.arange(-120, 120, 7), 2)[:max_row],  # +7 every second element
        np.array([-128, -127, -128, -120, -121, -100, -110, -100 + sb, -90 + sb, 60, 127]),
        np.array([0] * 20 + [sb - 1] + [0] * 10 + [2 * sb] + [5, 6, 7] + [3 * sb]),
        np.sort(rng.integers(-128, 128, size=max_row)),
        *[rng.integers(-128, 128, size=n) for n in (1, 9, max_row)],
        np.cumsum(rng.integers(0, 12, size=max_row)) - 128,
    ]
    rows = [np.clip(r, -128, 127) for r in rows]
    got = _row_sums(dut, rows, shift=0)
    assert len(got) == len(rows)
    for i, row in enumerate(rows):
        params = SoftmaxParams(in_shift=0, frac_bits=frac_bits, lanes=lanes)
        _, want, _ = e2softmax_k(row, params)
        assert got[i] == int(want), f"row {i}: S {got[i]} != e2softmax_k's {int(want)}"


def test_e2softmax_wide_max_tree_takes_the_modelled_stage():
    """Above 16 lanes pass 1's max tree takes a third stage (P0: 64 -> 16 -> 4 -> 1, at most
    4x a stage for 300 MHz): the first output comes that many cycles later than at 1 lane,
    as ``engine_timing.softmax_max_stages`` (the cycle model's term) says; the same
    one-element rows at every width (below the zero padding: the lanes beyond count lose)."""
    from vitaccel.engine_timing import softmax_max_stages

    rows = [np.array([-100]), np.array([-128])]

    def latency(lanes):
        dut = E2Softmax(lanes=lanes, max_row=64)
        res = _run(dut, rows, [3, 0])
        _check(dut, rows, [3, 0], res)
        return res["first_out"] - res["first_in"]

    base = latency(1)
    for lanes in (16, 32, 64):
        extra = softmax_max_stages(lanes) - softmax_max_stages(1)
        assert latency(lanes) - base == extra, (lanes, extra)
    assert softmax_max_stages(64) == 3


@pytest.mark.parametrize("output", ["uint8", "log2"])
def test_e2softmax_narrow_bounds_at_their_extremes(output):
    """The ring's rest (``rest_bits``) and pass 2's capped exponent (``e_cap``) at the values
    that need their last bit: x = -128 at T = 0 makes rest = -4x = 512 (11 bits signed), and
    a row of 127 with elements far below puts e on both sides of the cap (uint8: e = 288 is
    still 1, e >= 289 is 0; log2: e from 463 to 464 reaches q_max) and far above it."""
    rows = [
        np.array([-128] * 6),  # rest = 512 in every lane
        np.array([-128, 127, -128, 127, -127]),
        np.array([127, -128, 0, 126, -1, 90, -100, 64]),
        np.concatenate([[127], np.arange(127, -129, -1)]),  # every distance below the max
    ]
    dut = E2Softmax(lanes=2, max_row=260, output=output)
    for shift in (0, 1, 2, 3, 4, 6):
        shifts = [shift] * len(rows)
        _check(dut, rows, shifts, _run(dut, rows, shifts))
