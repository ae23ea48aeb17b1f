"""The tiled matmul engine in Amaranth's simulator: host packing, controller, requant, FIFO."""

import numpy as np
import pytest
from amaranth import ClockDomain, Module
from amaranth.sim import Simulator

from vitaccel.engine_host import (
    EngineParams,
    cycle_model,
    pack_job,
    plan_columns,
    split_w_stream,
    unpack_outputs,
)
from vitaccel.flow.unit_gvsa import MatmulCase
from vitaccel.rtl.matmul import MatmulEngine
from vitaccel.sim.streams import amaranth_put, random_pauses


async def collect(ctx, dut, count, stall, seed):
    """Take ``count`` output words, ready every cycle unless the pause pattern stalls."""
    pauses = random_pauses(stall, seed) if stall else None
    got = []
    while len(got) < count:
        ready = not (pauses is not None and next(pauses))
        ctx.set(dut.o.ready, ready)
        _, _, payload, valid = await ctx.tick().sample(dut.o.payload, dut.o.valid)
        if ready and valid:
            got.append(payload)
    ctx.set(dut.o.ready, 0)
    return got


def simulate(params: EngineParams, cases, stall=0.0, seed=0, keep=()):
    """Run cases back to back on the engine; return [(outputs, cycles)] per case. Jobs whose
    index is in ``keep`` run with ``x_keep`` (no X words: the previous job's X)."""
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
            x_log2=c.x_log2,
        )
        for c in cases
    ]
    for j in keep:
        jobs[j].cmd["x_keep"] = 1
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
            state["x"] = [] if j in keep else words(job.x_bytes)
            parts = split_w_stream(job.w_words, params, job.plan.nsteps)
            for q, part in enumerate(parts):
                state["w" if q == 0 else f"w{q}"] = words(part)
            state["go"] = j + 1
            got = await collect(ctx, dut, job.out_words, stall, seed * 8 + 3)
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
    for q in range(params.w_ports):
        sim.add_testbench(feeder("w" if q == 0 else f"w{q}", 2 + 2 * q), background=True)
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


def two_heads_case(rng, T, K, N):
    """A heads-mode job of 2 heads: per-head int8 X and int8 "weights" (activations)."""
    return MatmulCase(
        rng.integers(-128, 128, (2, T, K)),
        rng.integers(-128, 128, (2, N, K)),
        np.zeros((2, N), dtype=np.int64),
        rng.integers(-999, 999, (2, N)),
        rng.integers(1, 2**16, (2, N)),
        rng.integers(10, 22, (2, N)),
        heads=True,
        name=f"2 heads {T}x{K}x{N}",
    )


SMALL = EngineParams(groups=1, rows=4, cols=4, vector=8, w4_share=0.5, x_words=64, max_ksteps=8)


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


def _check_all(params, cases, stall=0.0, seed=0, model=True):
    for case, (got, cycles, job) in zip(cases, simulate(params, cases, stall, seed), strict=True):
        assert_exact(case, got)
        if model and not stall:
            want = cycle_model(
                case.x.shape[-2], case.x.shape[-1], job.plan.nsteps, params, heads=case.heads
            )
            assert cycles == want, (case.name, cycles, want)


def test_x_keep_reuses_the_previous_jobs_x():
    """QKV's V part reuses the X of the Q|K part: no X words, the cycle model without XL."""
    rng = np.random.default_rng(11)
    first = random_case(rng, 9, 20, 10, name="loads X")
    second = random_case(rng, 9, 20, 6, name="keeps X")
    second.x = first.x
    third = random_case(rng, 5, 20, 3, name="loads again")
    cases = [first, second, third]
    for j, (case, (got, cycles, job)) in enumerate(
        zip(cases, simulate(SMALL, cases, keep={1}), strict=True)
    ):
        assert_exact(case, got)
        T, K = case.x.shape
        assert cycles == cycle_model(T, K, job.plan.nsteps, SMALL, x_keep=j == 1), case.name


def test_step_zero_streams_behind_the_x_load():
    """Step 0 issues each token tile once its own X is in: an X-bound job (a tile's X
    takes 2 k-loops) ends KS after its X load, all tiles of step 0 but the last hidden
    behind it, exact against the cycle model; heads mode streams the last group's tiles."""
    params = EngineParams(groups=2, rows=2, cols=2, vector=4, x_words=128, max_ksteps=16)
    rng = np.random.default_rng(17)
    k = 6 * 4 - 1
    cases = [random_case(rng, 12, 40, 3, name="12x40x3"), two_heads_case(rng, 6, k, 2)]
    _check_all(params, cases)
    for case, (xl, ks, tiles) in zip(cases, [(12 * 10, 10, 6), (2 * 6 * 6, 6, 3)], strict=True):
        t, k = case.x.shape[-2:]
        keep = cycle_model(t, k, 1, params, heads=case.heads, x_keep=True)
        wl = 2 * 2 * (ks + 1)
        # X then compute would add XL - WL to the X_KEEP job; streamed, tiles - 1 k-loops less
        assert cycle_model(t, k, 1, params, heads=case.heads) - keep == xl - wl - (tiles - 1) * ks


@pytest.mark.parametrize("groups, cols, ports", [(1, 4, 2), (2, 4, 4), (3, 2, 2)])
def test_parallel_w_ports_load_a_step_in_a_fraction_of_the_time(groups, cols, ports):
    """Each W stream loads its own columns; the cycle model's W load is divided by ports."""
    params = EngineParams(groups=groups, rows=4, cols=cols, vector=4, x_words=64, max_ksteps=16,
                          w_ports=ports)  # fmt: skip
    rng = np.random.default_rng(groups * 10 + ports)
    cases = [random_case(rng, 6, 30, 21, name="W-bound"), random_case(rng, 13, 8, 9, name="x")]
    _check_all(params, cases)
    _check_all(params, cases, stall=0.3, seed=4, model=False)
    one = EngineParams(groups=groups, rows=4, cols=cols, vector=4, x_words=64, max_ksteps=16)
    T, K = cases[0].x.shape
    ns = plan_columns(cases[0].kind, one).nsteps
    assert cycle_model(T, K, ns, params) < cycle_model(T, K, ns, one)


def test_cycle_model_exact_across_shapes():
    rng = np.random.default_rng(2)
    shapes = [(9, 20, 10), (17, 64, 24), (3, 4, 30), (8, 40, 5), (1, 8, 3), (13, 100, 7)]
    for params in (
        EngineParams(rows=4, cols=4, vector=8, w4_share=0.5, x_words=256, max_ksteps=16),
        EngineParams(groups=2, rows=3, cols=2, vector=4, x_words=256, max_ksteps=32),
        EngineParams(
            rows=2, cols=6, vector=16, w4_share=1 / 3, w4_kind="pot4", x_words=256, max_ksteps=8
        ),
    ):
        cases = [random_case(rng, t, k, n, name=f"{t}x{k}x{n}") for t, k, n in shapes]
        _check_all(params, cases)


@pytest.mark.parametrize("x_beat, vector", [(2, 8), (4, 4)])
def test_wide_x_beats_load_several_k_steps_a_cycle(x_beat, vector):
    """An X beat of ``x_beat`` k-steps (the accelerator's X path at the scratchpad's width)
    fills the X sub-banks in ``ceil(KS / x_beat)`` cycles per token: bit-exact in shared and
    heads mode, with stalls and X_KEEP, and exact against the cycle model. K values leave
    the last beat of a token partial (KS not a multiple of x_beat) or whole."""
    params = EngineParams(groups=2, rows=3, cols=2, vector=vector, x_words=128, max_ksteps=16,
                          x_beat=x_beat)  # fmt: skip
    narrow = EngineParams(groups=2, rows=3, cols=2, vector=vector, x_words=128, max_ksteps=16)
    rng = np.random.default_rng(x_beat)
    cases = [random_case(rng, t, k, n, name=f"{t}x{k}x{n}")
             for t, k, n in [(7, 5 * vector, 6), (4, 8 * vector, 5), (1, 3, 2), (10, 60, 3),
                             (5, 2 * vector, 4)]]  # fmt: skip
    k = 3 * vector - 1
    cases.append(two_heads_case(rng, 5, k, 3))
    _check_all(params, cases)
    _check_all(params, cases, stall=0.3, seed=5, model=False)
    T, K = cases[3].x.shape  # X-bound: 10 tokens x 60
    ns = plan_columns(cases[3].kind, params).nsteps
    assert cycle_model(T, K, ns, params) < cycle_model(T, K, ns, narrow)
    # X_KEEP keeps the sub-banks' X
    second = random_case(rng, 7, 5 * vector, 4, name="keeps X")
    second.x = cases[0].x
    pair = [cases[0], second]
    for j, (case, (got, cycles, job)) in enumerate(
        zip(pair, simulate(params, pair, keep={1}), strict=True)
    ):
        assert_exact(case, got)
        t, k = case.x.shape
        assert cycles == cycle_model(t, k, job.plan.nsteps, params, x_keep=j == 1), case.name


def test_heads_mode_two_groups_with_stalls():
    """Groups on different heads: per-group X (Q_h or uint8 P_h) and per-group "weights"."""
    rng = np.random.default_rng(3)
    params = EngineParams(groups=2, rows=2, cols=2, vector=4, x_words=128, max_ksteps=8)
    cases = []
    for heads, t, k, n, uns in ((2, 7, 9, 7, False), (1, 5, 5, 3, True), (2, 3, 12, 5, True)):
        x = rng.integers(0 if uns else -128, 256 if uns else 128, (heads, t, k))
        q = rng.integers(-128, 128, (heads, n, k))  # activations: -128 allowed on W8 lanes
        cases.append(
            MatmulCase(
                x,
                q,
                np.zeros((heads, n), dtype=np.int64),
                rng.integers(-999, 999, (heads, n)),
                rng.integers(1, 2**16, (heads, n)),
                rng.integers(10, 22, (heads, n)),
                heads=True,
                x_unsigned=uns,
                name=f"{heads} heads {t}x{k}x{n}",
            )
        )
    _check_all(params, cases)
    _check_all(params, cases, stall=0.4, seed=9)


def test_log2_jobs_shift_add_exact_beside_ordinary_jobs():
    """Attention x V on log2 codes (PackQViT eq. 3) in shared and heads mode, back to back with
    int8 and uint8 jobs on one log2-capable engine, with stalls; the cycle count is the
    ordinary job's (the mode changes the products, not the timing)."""
    from vitaccel.flow.unit_gvsa import random_case as layer_case

    rng = np.random.default_rng(12)
    params = EngineParams(groups=2, rows=3, cols=4, vector=4, x_words=128, max_ksteps=8, log2=True)
    cases = [
        layer_case(rng, 7, 13, 9, x_log2=True, name="log2 shared 7x13x9"),
        random_case(rng, 5, 9, 6, name="int8 after log2"),
        layer_case(rng, 8, 17, 4, heads=2, x_log2=True, name="log2 2 heads 8x17x4"),
        random_case(rng, 4, 6, 5, x_unsigned=True, name="uint8 after log2"),
        layer_case(rng, 3, 16, 5, heads=1, x_log2=True, name="log2 1 head 3x16x5"),
    ]
    codes = np.arange(16)
    cases[0].x[0, :13] = codes[:13]  # every code appears
    cases[0].x[1, :3] = codes[13:]
    _check_all(params, cases)
    _check_all(params, cases[:3], stall=0.4, seed=2)


def test_log2_jobs_are_validated():
    rng = np.random.default_rng(0)
    case = random_case(rng, 3, 4, 2)
    plain = EngineParams(rows=2, cols=2, vector=4, x_words=16, max_ksteps=4)
    with pytest.raises(ValueError, match="log2=True"):
        pack_job(case.x & 15, case.q, case.kind, case.bias, case.mult, case.shift, plain,
                 x_log2=True)  # fmt: skip
    p2 = EngineParams(rows=2, cols=2, vector=4, x_words=16, max_ksteps=4, log2=True)
    with pytest.raises(ValueError, match=r"log2 codes must be in \[0, 15\]"):
        pack_job(case.x, case.q, case.kind, case.bias, case.mult, case.shift, p2, x_log2=True)
    with pytest.raises(ValueError, match="log2=True needs W8 columns"):
        EngineParams(rows=2, cols=2, vector=4, w4_share=1.0, log2=True)


def test_stalls_on_every_stream():
    rng = np.random.default_rng(4)
    cases = [
        random_case(rng, 9, 20, 10, name="9x20x10"),
        random_case(rng, 6, 33, 13, kind=[1, 2, 0] * 4 + [1], name="mixed"),
        random_case(rng, 2, 1, 9, name="K=1"),
    ]
    _check_all(SMALL, cases, stall=0.5, seed=5)


def test_requant_extremes():
    """Shifts 0 and 62, mult 0 and 2**16-1, saturation both ways, clamp to a narrow range."""
    rng = np.random.default_rng(6)
    t, k, n = 5, 12, 8
    x = rng.integers(-128, 128, (t, k))
    x[0] = 127
    x[1] = -128
    q = rng.integers(-127, 128, (n, k))
    bias = np.array([0, 1, -1, 2**20, -(2**20), 12345, -7, 3])
    mult = np.array([0, 1, 2**16 - 1, 2**16 - 1, 40000, 1, 2**15, 7])
    shift = np.array([0, 62, 1, 30, 0, 2, 61, 5])
    cases = [
        MatmulCase(x, q, np.zeros(n, dtype=np.int64), bias, mult, shift, name="extremes"),
        MatmulCase(
            x, q, np.zeros(n, dtype=np.int64), bias, mult, shift, lo=-3, hi=4, name="narrow clamp"
        ),
    ]
    _check_all(SMALL, cases)


def test_reset_in_the_middle_of_a_job():
    """A reset mid-job (streams half sent, outputs pending) leaves the engine idle and ready;
    the same job then runs exactly."""
    rng = np.random.default_rng(7)
    case = random_case(rng, 9, 20, 10, name="after reset")
    dut = MatmulEngine(SMALL)
    job = pack_job(case.x, case.q, case.kind, case.bias, case.mult, case.shift, SMALL)
    words_x = [int.from_bytes(r.tobytes(), "little") for r in job.x_bytes]
    words_w = [int.from_bytes(r.tobytes(), "little") for r in job.w_words]
    # An explicit sync domain, so that the testbench can drive its reset.
    top = Module()
    top.submodules.dut = dut
    top.domains.sync = cd = ClockDomain("sync")
    got = []

    async def pump(ctx, n_out):
        """Drive x and w and drain o every cycle until ``n_out`` words came out."""
        xi = wi = 0
        out = []
        while len(out) < n_out:
            for stream, words, i in ((dut.x, words_x, xi), (dut.w, words_w, wi)):
                ctx.set(stream.valid, i < len(words))
                if i < len(words):
                    ctx.set(stream.payload, words[i])
            ctx.set(dut.o.ready, 1)
            _, _, x_rdy, w_rdy, o_vld, o_data = await ctx.tick().sample(
                dut.x.ready, dut.w.ready, dut.o.valid, dut.o.payload
            )
            xi += int(xi < len(words_x) and x_rdy)
            wi += int(wi < len(words_w) and w_rdy)
            if o_vld:
                out.append(o_data)
        for stream in (dut.x, dut.w):
            ctx.set(stream.valid, 0)
        ctx.set(dut.o.ready, 0)
        return out

    async def bench(ctx):
        await amaranth_put(ctx, dut.cmd, job.cmd)
        await pump(ctx, 5)  # part of the job
        ctx.set(cd.rst, 1)
        await ctx.tick()
        ctx.set(cd.rst, 0)
        await ctx.tick()
        assert not ctx.get(dut.busy) and ctx.get(dut.cmd.ready) and not ctx.get(dut.o.valid)
        await amaranth_put(ctx, dut.cmd, job.cmd)
        got.extend(await pump(ctx, job.out_words))

    sim = Simulator(top)
    sim.add_clock(1e-8, domain="sync")
    sim.add_testbench(bench)
    sim.run()
    nbytes = SMALL.groups * SMALL.cols
    o = np.frombuffer(b"".join(int(w).to_bytes(nbytes, "little") for w in got), dtype=np.uint8)
    assert_exact(case, unpack_outputs(o.reshape(-1, nbytes), job, SMALL))


def test_plan_columns_rules():
    p = EngineParams(cols=4, w4_share=0.5)  # 2 W8 + 2 W4 columns
    kind = np.array([1, 0, 1, 0, 1, 1, 1, 1])  # 6 int4, 2 w8
    plan = plan_columns(kind, p)
    assert plan.nsteps == 2
    ch = plan.channel
    assert sorted(ch[ch >= 0].tolist()) == list(range(8))
    assert set(ch[:, 0, 2:].ravel()) <= set(np.flatnonzero(kind == 1))  # W4 columns: int4 only
    # each step a window of channels after the previous step's
    assert ch[0].tolist() == [[1, 3, 0, 2]] and ch[1].tolist() == [[6, 7, 4, 5]]
    # pot4 rows cannot use int4 lanes: they go to W8 columns
    plan = plan_columns(np.array([2, 2, 2, 2]), p)
    assert plan.nsteps == 2 and (plan.channel[:, 0, 2:] == -1).all()
    # a window ends where its W8 rows fill the W8 columns; eligible rows beyond the W4
    # columns take the free W8 ones
    plan = plan_columns(np.array([0, 0, 0, 1, 1, 1]), p)
    assert plan.channel[:, 0].tolist() == [[0, 1, -1, -1], [2, 5, 3, 4]]
    with pytest.raises(ValueError, match="no W8 columns"):
        plan_columns(np.array([0, 1]), EngineParams(cols=2, w4_share=1.0))


def test_pack_job_rejects_what_does_not_fit():
    rng = np.random.default_rng(8)
    c = random_case(rng, 4, 70, 4)
    with pytest.raises(ValueError, match="k-steps"):
        pack_job(c.x, c.q, c.kind, c.bias, c.mult, c.shift, SMALL)  # 9 k-steps > 8
    c = random_case(rng, 100, 20, 4)  # 25 tiles x 3 k-steps > 64 words
    with pytest.raises(ValueError, match="X banks"):
        pack_job(c.x, c.q, c.kind, c.bias, c.mult, c.shift, SMALL)
    c = random_case(rng, 4, 8, 4)
    with pytest.raises(ValueError, match="shift"):
        pack_job(c.x, c.q, c.kind, c.bias, c.mult, c.shift + 63, SMALL)


def test_small_output_fifo_throttles_but_stays_exact():
    """With a FIFO of one tile, credits throttle issue: slower than the model, still exact."""
    rng = np.random.default_rng(9)
    params = EngineParams(
        rows=4, cols=4, vector=8, w4_share=0.5, x_words=64, max_ksteps=8, out_depth=4
    )
    cases = [random_case(rng, 40, 8, 4, name="short tiles"), random_case(rng, 9, 20, 10)]
    results = simulate(params, cases)
    for case, result in zip(cases, results, strict=True):
        assert_exact(case, result[0])
    _, cycles, job = results[0]
    assert cycles > cycle_model(40, 8, job.plan.nsteps, params)
    # full rate: R * ((first_out + 2R) // R + 2), first_out = 20 with 3 units at R = 4
    assert EngineParams(rows=4, cols=4, vector=8, w4_share=0.5).out_depth == 36


@pytest.mark.slow
def test_start_decision_paths_fit_300_mhz_with_room_for_the_top(tmp_path):
    """Yosys (``synth_xilinx -family xcup -flatten``, ~1-2 min) on the default design's
    engine: every path through the issue's start decision (``can_start``) is <= 5 levels,
    so the streams feeding it in the whole top leave it within 300 MHz's 6.83. (It read the
    W halves, the gap counter and the X flags itself: 6.25 here, 8.0 in the flat top.)"""
    from vitaccel.dse import clock
    from vitaccel.flow.build import default_design
    from vitaccel.flow.paths import worst_paths, yosys_json_commands
    from vitaccel.flow.yosys import _synth_flat
    from vitaccel.rtl.matmul import engine_verilog
    from vitaccel.rtl.top import TopParams

    params = TopParams(default_design("digits-vit", "zcu102")).engine
    (tmp_path / "design.v").write_text(engine_verilog(params, "vitaccel_matmul"))
    _synth_flat(tmp_path, "vitaccel_matmul", yosys_json_commands("netlist.json"))
    paths = worst_paths(tmp_path / "netlist.json", top="vitaccel_matmul", count=10**6)
    through = [p for p in paths if "can_start" in p.via]
    assert through, "no path through can_start: the net was renamed or optimised away"
    for p in through:
        assert p.levels <= 5.0, (p.levels, p.start, p.end, p.via)
    assert paths[0].levels <= clock.max_levels(300), paths[0]
    print(
        f"\nworst {paths[0].levels} ({paths[0].start} -> {paths[0].end}); through can_start "
        f"{through[0].levels} ({through[0].start} -> {through[0].end})"
    )
