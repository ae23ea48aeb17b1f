"""Shared fabric helpers of vitaccel.rtl.common, on the Amaranth simulator."""

import random

import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator

from vitaccel.rtl.common import leading_one_registered


def _expected(value: int) -> int:
    """Index of the highest set bit, 0 for 0 (leading_one's definition)."""
    return max(value.bit_length() - 1, 0)


@pytest.mark.parametrize("width, chunk", [(5, 8), (8, 4), (20, 8), (41, 8), (41, 4), (64, 16)])
def test_leading_one_registered_one_cycle_late(width, chunk):
    rng = random.Random(width * 100 + chunk)
    values = [0, 1, (1 << width) - 1, 1 << (width - 1)]
    values += [1 << rng.randrange(width) for _ in range(40)]
    values += [rng.getrandbits(rng.randrange(1, width + 1)) for _ in range(200)]

    m = Module()
    value = Signal(width)
    pos = leading_one_registered(m, value, chunk=chunk, name="t")
    out = Signal(len(pos))
    m.d.comb += out.eq(pos)

    async def bench(ctx):
        for i, v in enumerate(values + [0]):
            ctx.set(value, v)
            await ctx.tick()
            # after the edge: the index of the value set before it
            got = ctx.get(out)
            want = _expected(values[i]) if i < len(values) else None
            if want is not None:
                assert got == want, f"value {values[i]:#x} (#{i}): index {got}, expected {want}"

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_leading_one_registered_rejects_bad_chunk():
    with pytest.raises(ValueError, match="chunk"):  # checked before the module is touched
        leading_one_registered(None, Signal(16), chunk=6)
