"""GELU unit in Amaranth's simulator: table writes, lanes, framing, stalls."""

import numpy as np
import pytest

from vitaccel.quant.ref import gelu_lut, lut_lookup
from vitaccel.rtl.gelu import GELU
from vitaccel.sim.tb_nonlinear import amaranth_run_rows


def _table_writer(dut, table):
    async def setup(ctx):
        for addr, value in enumerate(table):
            ctx.set(dut.table_addr, addr)
            ctx.set(dut.table_data, int(value))
            ctx.set(dut.table_we, 1)
            await ctx.tick()
        ctx.set(dut.table_we, 0)

    return setup


@pytest.mark.parametrize("lanes", [1, 3, 4])
def test_gelu_matches_reference_with_stalls(lanes):
    rng = np.random.default_rng(lanes)
    table = gelu_lut(0.05, 0.04)
    rows = [rng.integers(-128, 128, size=n) for n in (1, 5, 17, 64)] + [np.arange(-128, 128)]
    dut = GELU(lanes=lanes)
    res = amaranth_run_rows(
        dut, rows, setup=_table_writer(dut, table), stall_in=0.3, stall_out=0.3, seed=lanes
    )
    assert not res["errors"], res["errors"]
    for r, (row, got) in enumerate(zip(rows, res["rows"], strict=True)):
        np.testing.assert_array_equal(got, lut_lookup(row, table), err_msg=f"row {r}")


def test_gelu_full_throughput_and_latency():
    table = gelu_lut(0.1, 0.05)
    dut = GELU(lanes=4, init=table)  # power-up contents: no writes needed
    rows = [np.arange(-128, 128)] * 4
    res = amaranth_run_rows(dut, rows)
    assert not res["errors"], res["errors"]
    np.testing.assert_array_equal(res["rows"][0], lut_lookup(rows[0], table))
    assert res["first_out"] - res["first_in"] == 1  # one pipeline register
    assert res["last_out"] - res["first_in"] == 256  # 1024 elements, 4 per cycle, no bubble


@pytest.mark.parametrize("bypass", [0, 1])
def test_gelu_bypass_passes_beats_through_at_the_same_latency(bypass):
    """The matmul output stage: a table lookup for MATMUL GELU, the same register otherwise."""
    table = gelu_lut(0.05, 0.04)
    dut = GELU(lanes=8, init=table, bypass=True)
    rng = np.random.default_rng(bypass)
    rows = [rng.integers(-128, 128, size=n) for n in (8, 40, 3)]

    async def setup(ctx):
        ctx.set(dut.bypass, bypass)

    res = amaranth_run_rows(dut, rows, setup=setup, stall_in=0.2, stall_out=0.2, seed=5)
    assert not res["errors"], res["errors"]
    for r, (row, got) in enumerate(zip(rows, res["rows"], strict=True)):
        want = row if bypass else lut_lookup(row, table)
        np.testing.assert_array_equal(got, want, err_msg=f"row {r}")
    with pytest.raises(ValueError, match="out_bits"):
        GELU(lanes=2, out_bits=10, bypass=True)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"lanes": 0}, ValueError),
        ({"lanes": 2.0}, TypeError),
        ({"in_bits": 13}, ValueError),
        ({"out_bits": True}, TypeError),
        ({"init": [0] * 255}, ValueError),
        ({"init": [200] * 256}, ValueError),
    ],
)
def test_gelu_rejects_bad_parameters(kwargs, exc):
    with pytest.raises(exc, match=next(iter(kwargs))):
        GELU(**kwargs)
