"""SkidBuffer in Amaranth's simulator: order, full rate, stalls, and registered ready/valid."""

import pytest
from amaranth import unsigned
from amaranth.sim import Simulator

from vitaccel.rtl.skid import SkidBuffer
from vitaccel.sim.streams import amaranth_get, amaranth_put, random_pauses


@pytest.mark.parametrize("stall_in, stall_out", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.5), (0.4, 0.4)])
def test_every_beat_arrives_in_order(stall_in, stall_out):
    dut = SkidBuffer(unsigned(16))
    sent = list(range(1, 200))
    got, ticks = [], {"n": 0, "first": None}

    async def feed(ctx):
        pauses = random_pauses(stall_in, 1)
        for v in sent:
            await amaranth_put(ctx, dut.i, v, pauses=pauses)

    async def drain(ctx):
        pauses = random_pauses(stall_out, 2)
        for _ in sent:
            got.append(int(await amaranth_get(ctx, dut.o, pauses=pauses)))
            if ticks["first"] is None:
                ticks["first"] = ticks["n"]
        ticks["last"] = ticks["n"]

    async def count(ctx):
        while True:
            await ctx.tick()
            ticks["n"] += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(count, background=True)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(drain)
    sim.run()
    assert got == sent
    if not stall_in and not stall_out:
        assert ticks["last"] - ticks["first"] == len(sent) - 1  # one beat per cycle


def test_ready_and_valid_do_not_follow_the_other_side_combinationally():
    dut = SkidBuffer(unsigned(8))

    async def bench(ctx):
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, 7)
        ctx.set(dut.o.ready, 0)
        await ctx.tick()  # 7 into the output register
        await ctx.tick()  # the next beat into the skid register: ready falls
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 7
        before = ctx.get(dut.i.ready)
        ctx.set(dut.o.ready, 1)  # the consumer takes: i.ready changes only after the edge
        assert ctx.get(dut.i.ready) == before == 0
        ctx.set(dut.i.valid, 0)
        assert ctx.get(dut.o.valid) == 1  # valid does not follow i.valid either
        await ctx.tick()
        assert ctx.get(dut.i.ready) == 1 and ctx.get(dut.o.payload) == 7  # the skid beat

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_valid_next_is_the_output_valid_one_cycle_ahead():
    import random

    dut = SkidBuffer(unsigned(8), valid_next=True)
    rng = random.Random(3)
    checked = {"n": 0, "held": 0}

    async def bench(ctx):
        for _ in range(400):
            ctx.set(dut.i.valid, rng.random() < 0.6)
            ctx.set(dut.o.ready, rng.random() < 0.5)
            predicted = ctx.get(dut.valid_next)
            checked["held"] += ctx.get(dut.o.valid) and not ctx.get(dut.o.ready)
            await ctx.tick()
            assert ctx.get(dut.o.valid) == predicted, f"cycle {checked['n']}"
            checked["n"] += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert checked["n"] == 400 and checked["held"] > 20  # the held case was exercised


def test_valid_next_must_be_a_bool():
    with pytest.raises(TypeError, match="valid_next must be a bool"):
        SkidBuffer(unsigned(8), valid_next=1)
