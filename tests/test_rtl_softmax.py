"""E2Softmax in Amaranth's simulator: bit-exact against ref.e2softmax, framing, throughput."""

import numpy as np
import pytest

from vitaccel.quant.ref import SoftmaxParams, e2softmax
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
