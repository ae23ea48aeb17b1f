"""Residual-add unit in Amaranth's simulator against vitaccel.quant.ref.residual_add."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from vitaccel.quant.ref import residual_add
from vitaccel.rtl.resadd import LANES, ResAdd
from vitaccel.sim.streams import amaranth_get, amaranth_put, random_pauses


def _param_words(mult_a, mult_b):
    """The SPM parameter block (4 bytes a channel: mult_a, mult_b uint16 LE) as 128-bit words."""
    raw = np.zeros((len(mult_a), 2), dtype="<u2")
    raw[:, 0], raw[:, 1] = mult_a, mult_b
    block = raw.tobytes()
    block += bytes(-len(block) % 16)
    return [int.from_bytes(block[i : i + 16], "little") for i in range(0, len(block), 16)]


def _beats(row):
    out = []
    nb = -(-len(row) // LANES)
    for b in range(nb):
        chunk = [int(v) & 0xFF for v in row[b * LANES : (b + 1) * LANES]]
        count = len(chunk)
        chunk += [0xA5] * (LANES - count)
        out.append({"data": chunk, "count": count, "last": b == nb - 1})
    return out


def _run(cols, rows, shift, *, stall, seed, max_channels=128):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, size=(rows, cols))
    b = rng.integers(-128, 128, size=(rows, cols))
    mult_a = rng.integers(0, 1 << 16, size=cols)
    mult_b = rng.integers(0, 1 << 16, size=cols)
    dut = ResAdd(max_channels=max_channels)
    got = []

    async def feed(ctx):
        for addr, word in enumerate(_param_words(mult_a, mult_b)):
            ctx.set(dut.param_addr, addr)
            ctx.set(dut.param_data, word)
            ctx.set(dut.param_we, 1)
            await ctx.tick()
        ctx.set(dut.param_we, 0)
        ctx.set(dut.shift, shift)
        pauses = random_pauses(stall, seed)
        for r in range(rows):
            for beat in _beats(a[r]) + _beats(b[r]):
                await amaranth_put(ctx, dut.i, beat, pauses=pauses)

    async def drain(ctx):
        pauses = random_pauses(stall, seed + 1)
        for _ in range(rows):
            row = []
            while True:
                p = await amaranth_get(ctx, dut.o, pauses=pauses)
                row += [int(x) for x in p.data][: int(p.count)]
                if p.last:
                    break
            got.append(row)
        await ctx.tick().until(~dut.busy)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(drain)
    sim.run()
    want = residual_add(a, mult_a, b, mult_b, shift)
    return np.array(got), want


@pytest.mark.parametrize(
    "cols, rows, shift, stall",
    [
        (16, 3, 16, 0.0),
        (37, 4, 17, 0.3),
        (1, 3, 0, 0.3),
        (128, 2, 24, 0.2),
        (50, 3, 30, 0.0),
        (20, 2, 26, 0.0),
        (20, 2, 45, 0.1),
    ],  # fmt: skip
)
def test_resadd_matches_reference(cols, rows, shift, stall):
    got, want = _run(cols, rows, shift, stall=stall, seed=cols + rows)
    np.testing.assert_array_equal(got, want)


def test_resadd_saturates_and_rounds_half_up():
    # All-max multipliers and extreme inputs exercise both clamps; shift 1 the rounding.
    got, want = _run(32, 2, 1, stall=0.0, seed=5)
    np.testing.assert_array_equal(got, want)
    assert (want == 127).any() and (want == -128).any()


@pytest.mark.parametrize("kwargs", [{"max_channels": 8}, {"max_channels": 100}])
def test_resadd_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError, match="max_channels"):
        ResAdd(**kwargs)


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_resadd_pair_mode_takes_a_b_and_the_channel_index_per_beat(stall):
    """The fused front end: each beat brings A, B and which 16 channels they are, in any
    order (a MATMUL's output steps), one beat per cycle without stalls."""
    rng = np.random.default_rng(7)
    cols, beats, shift = 64, 24, 19
    mult_a = rng.integers(0, 1 << 16, size=cols)
    mult_b = rng.integers(0, 1 << 16, size=cols)
    index = rng.integers(0, cols // LANES, size=beats)
    a = rng.integers(-128, 128, size=(beats, LANES))
    b = rng.integers(-128, 128, size=(beats, LANES))
    dut = ResAdd(max_channels=cols)
    got, cycles = [], {}

    def word(v):
        return int.from_bytes(bytes(int(x) & 0xFF for x in v), "little")

    async def feed(ctx):
        for addr, w in enumerate(_param_words(mult_a, mult_b)):
            ctx.set(dut.param_addr, addr)
            ctx.set(dut.param_data, w)
            ctx.set(dut.param_we, 1)
            await ctx.tick()
        ctx.set(dut.param_we, 0)
        ctx.set(dut.shift, shift)
        ctx.set(dut.use_pair, 1)
        pauses = random_pauses(stall, 3)
        for j in range(beats):
            beat = {"a": word(a[j]), "b": word(b[j]), "index": int(index[j]),
                    "count": LANES, "last": 1}  # fmt: skip
            await amaranth_put(ctx, dut.pair, beat, pauses=pauses)

    async def drain(ctx):
        pauses = random_pauses(stall, 4)
        for _ in range(beats):
            p = await amaranth_get(ctx, dut.o, pauses=pauses)
            got.append([int(x) for x in p.data])
            cycles.setdefault("first", ctx.get(tick))
        cycles["last"] = ctx.get(tick)
        await ctx.tick().until(~dut.busy)

    from amaranth import Signal

    tick = Signal(32)
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def count(ctx):
        while True:
            await ctx.tick()
            ctx.set(tick, ctx.get(tick) + 1)

    sim.add_testbench(count, background=True)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(drain)
    sim.run()
    for j in range(beats):
        ch = slice(LANES * index[j], LANES * index[j] + LANES)
        want = residual_add(a[j], mult_a[ch], b[j], mult_b[ch], shift)
        np.testing.assert_array_equal(got[j], want, err_msg=f"beat {j} (channels {ch})")
    if not stall:
        assert cycles["last"] - cycles["first"] == beats - 1  # one beat per cycle
