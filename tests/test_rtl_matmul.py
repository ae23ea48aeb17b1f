"""The tiled matmul engine in Amaranth's simulator: host packing, controller, requant, FIFO."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from vitaccel.flow.unit_gvsa import MatmulCase
from vitaccel.rtl.matmul import (
    EngineParams,
    MatmulEngine,
    pack_job,
    unpack_outputs,
)
from vitaccel.sim.streams import amaranth_get, amaranth_put, random_pauses


def simulate(params: EngineParams, cases, stall=0.0, seed=0):
    """Run cases back to back on the engine; return [(outputs, cycles)] per case."""
    dut = MatmulEngine(params)
    jobs = [
        pack_job(
            c.x,
            c.q,
            c.kind,
            c.bias,
            c.mult,
            c.shift,
            params,
            lo=c.lo,
            hi=c.hi,
            heads=c.heads,
            x_unsigned=c.x_unsigned,
        )
        for c in cases
    ]
    results = []
    state = {"cycle": 0}

    def words(rows):
        return [int.from_bytes(r.tobytes(), "little") for r in rows]

    async def clock_counter(ctx):
        async for _ in ctx.tick():
            state["cycle"] += 1

    async def bench(ctx):
        for j, job in enumerate(jobs):
            while ctx.get(dut.busy):
                await ctx.tick()
            await amaranth_put(ctx, dut.cmd, job.cmd)
            t0 = state["cycle"]
            state["x"] = words(job.x_bytes)
            state["w"] = words(job.w_words)
            state["go"] = j + 1
            got = []
            pauses = random_pauses(stall, seed * 8 + 3) if stall else None
            for _ in range(job.out_words):
                got.append(await amaranth_get(ctx, dut.o, pauses=pauses))
            results.append((got, state["cycle"] - t0))
        state["done"] = True

    def feeder(name, k):
        async def feed(ctx):
            served = 0
            pauses = random_pauses(stall, seed * 8 + k) if stall else None
            while not state.get("done"):
                if state.get("go", 0) > served:
                    served = state["go"]
                    for word in state[name]:
                        await amaranth_put(ctx, getattr(dut, name), word, pauses=pauses)
                await ctx.tick()

        return feed

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(clock_counter)
    sim.add_testbench(bench)
    sim.add_testbench(feeder("x", 1), background=True)
    sim.add_testbench(feeder("w", 2), background=True)
    sim.run()
    out = []
    nbytes = params.groups * params.cols
    for job, (got, cycles) in zip(jobs, results, strict=True):
        o = np.frombuffer(
            b"".join(int(w).to_bytes(nbytes, "little") for w in got), dtype=np.uint8
        ).reshape(-1, nbytes)
        out.append((unpack_outputs(o, job, params), cycles, job))
    return out


def assert_exact(case, got):
    want = case.expected()
    bad = np.argwhere(want != got)
    if bad.size:
        idx = tuple(int(i) for i in bad[0])
        pytest.fail(
            f"{case.name}: {len(bad)} mismatches; first at {idx}: expected {int(want[idx])}, "
            f"got {int(got[idx])}"
        )


def random_case(rng, T, K, N, *, kind=None, x_unsigned=False, name="", q=None):
    lo_x, hi_x = (0, 255) if x_unsigned else (-128, 127)
    x = rng.integers(lo_x, hi_x + 1, (T, K))
    kind = np.zeros(N, dtype=np.int64) if kind is None else np.asarray(kind)
    if q is None:
        q = rng.integers(-127, 128, (N, K))
        q[kind == 1] = rng.integers(-7, 8, (int((kind == 1).sum()), K))
        n_pot = int((kind == 2).sum())
        q[kind == 2] = rng.choice([0, 1, 2, 4, 8, 16, 32, 64, -1, -2, -4, -64], (n_pot, K))
    bias = rng.integers(-(2**20), 2**20, N)
    mult = rng.integers(1, 2**16, N)
    shift = rng.integers(8, 26, N)
    return MatmulCase(x, q, kind, bias, mult, shift, x_unsigned=x_unsigned, name=name)


SMALL = EngineParams(
    groups=1, rows=4, cols=4, vector=8, w4_share=0.5, x_words=64, max_ksteps=8, out_depth=8
)


def test_engine_random_shapes_back_to_back():
    rng = np.random.default_rng(1)
    cases = [
        random_case(rng, 9, 20, 10, name="9x20x10"),
        random_case(rng, 5, 8, 6, kind=[1, 0, 1, 0, 1, 1], name="mixed int4"),
        random_case(rng, 1, 3, 1, name="1x3x1"),
        random_case(rng, 6, 17, 5, x_unsigned=True, name="uint8 x"),
    ]
    for case, (got, _, _) in zip(cases, simulate(SMALL, cases), strict=True):
        assert_exact(case, got)
