"""Scratchpad and its address generators in Amaranth's simulator.

Expected SPM contents come from the ISA interpreter's byte-exact scratchpad model
(:class:`vitaccel.compile.interp.Machine`), the matmul streams from the engine's own packer
(:func:`vitaccel.engine_host.pack_job`), so the RTL is checked against the same definitions
the compiler and the engine use.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth import Elaboratable, Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from vitaccel.compile.interp import Machine
from vitaccel.engine_host import EngineParams, pack_job, plan_columns
from vitaccel.engine_timing import mapped_writer_cycles, word_path_takes, word_writer_cycles
from vitaccel.rtl.spm import (
    ByteRunWriter,
    MappedOutWriter,
    MatmulOutWriter,
    MixedOutWriter,
    PortWStreamBuilder,
    RowReader,
    RowWriter,
    Scratchpad,
    WStreamBuilder,
    XStreamBuilder,
    bank_lanes,
)
from vitaccel.sim.streams import random_pauses

WORDS = 512


def _image(rng, words=WORDS):
    return rng.integers(0, 256, size=(words, 16), dtype=np.uint8)


def _ints(image):
    return [int.from_bytes(row.tobytes(), "little") for row in image]


class Rig(Elaboratable):
    """A scratchpad with read clients, write clients and extra stream connections (a link
    ``(src, dst, hold)`` passes nothing while the signal ``hold`` is set: back-pressure)."""

    def __init__(self, spm, subs, readers=(), writers=(), links=()):
        self.spm, self.subs = spm, subs
        self.readers, self.writers, self.links = readers, writers, links

    def elaborate(self, platform):
        m = Module()
        m.submodules.spm = self.spm
        for i, sub in enumerate(self.subs):
            m.submodules[f"sub{i}"] = sub
        for i, client in enumerate(self.readers):
            wiring.connect(m, client, self.spm.clients()[i])
        # writers: in client order, or {client index: writer}
        pairs = self.writers.items() if isinstance(self.writers, dict) else enumerate(self.writers)
        for i, client in pairs:
            wiring.connect(m, client, self.spm.writers()[i])
        for src, dst, *hold in self.links:
            if not hold:
                wiring.connect(m, src, dst)
                continue
            m.d.comb += [
                dst.payload.eq(src.payload),
                dst.valid.eq(src.valid & ~hold[0]),
                src.ready.eq(dst.ready & ~hold[0]),
            ]
        return m


async def _put(ctx, stream, payload, pauses=None):
    if pauses is not None:
        while next(pauses):
            await ctx.tick()
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def _get(ctx, stream, pauses=None):
    if pauses is not None:
        while next(pauses):
            await ctx.tick()
    ctx.set(stream.ready, 1)
    (payload,) = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


def _run(rig, *benches, background=(), limit=100_000):
    sim = Simulator(rig)
    sim.add_clock(1e-8)
    for bench in background:
        sim.add_testbench(bench, background=True)
    for bench in benches:
        sim.add_testbench(bench)

    async def watchdog(ctx):
        for _ in range(limit):
            await ctx.tick()
        raise AssertionError(f"testbench did not finish in {limit} cycles")

    sim.add_testbench(watchdog, background=True)
    sim.run()


def _spm_dump(ctx, spm):
    raw = [spm.word(ctx, i) for i in range(spm.words)]
    return np.array([list(int(v).to_bytes(16, "little")) for v in raw], dtype=np.uint8)


def _machine(image):
    return Machine(ddr=bytearray(), spm=image.copy())


def _reader_cmd(base, stride, rows, cols, base2=0, stride2=0, dual=0):
    return dict(base=base, stride=stride, rows=rows, cols=cols, base2=base2, stride2=stride2,
                dual=dual)  # fmt: skip


def _expected_beats(image, cmd, lanes):
    mach = _machine(image)
    srcs = [(cmd["base"], cmd["stride"])]
    if cmd["dual"]:
        srcs.append((cmd["base2"], cmd["stride2"]))
    beats = []
    for r in range(cmd["rows"]):
        for base, stride in srcs:
            row = mach.read(base + r * stride, 1, cmd["cols"], stride, signed=False)[0]
            nb = -(-cmd["cols"] // lanes)
            padded = np.zeros(nb * lanes, dtype=np.int64)
            padded[: cmd["cols"]] = row
            for b in range(nb):
                count = min(lanes, cmd["cols"] - b * lanes)
                beats.append((list(padded[b * lanes : (b + 1) * lanes]), count, b == nb - 1))
    return beats


# ---- row reader -----------------------------------------------------------------------------


@pytest.mark.parametrize("lanes", [1, 4, 16, 32])
def test_row_reader_framing_masking_and_dual(lanes):
    rng = np.random.default_rng(lanes)
    image = _image(rng)
    cmds = [
        _reader_cmd(3, 2, 5, 20),
        _reader_cmd(100, 1, 3, 16),
        _reader_cmd(7, 0, 0, 5),  # empty: nothing
        _reader_cmd(40, 4, 4, 53, base2=200, stride2=5, dual=1),
        _reader_cmd(300, 3, 2, 1),
    ]
    spm = Scratchpad(words=WORDS, init=_ints(image))
    rd = RowReader(lanes=lanes)
    rig = Rig(spm, [rd], readers=[rd.mem])
    got = []
    want = [b for c in cmds for b in _expected_beats(image, c, lanes)]

    async def feed(ctx):
        for c in cmds:
            await _put(ctx, rd.cmd, c)

    async def drain(ctx):
        pauses = random_pauses(0.3, lanes)
        for _ in want:
            p = await _get(ctx, rd.o, pauses)
            got.append(([int(x) for x in p.data], int(p.count), bool(p.last)))
        await ctx.tick().until(rd.idle)

    _run(rig, drain, background=[feed])
    assert got == want


@pytest.mark.parametrize("lanes, banks", [(32, 2), (32, 4), (64, 4)])
@pytest.mark.parametrize("pause", [0.3, 0.0])
def test_wide_row_reader_reads_lanes_over_16_words_a_grant(lanes, banks, pause):
    """A nonlinear unit's reader of more than 16 lanes on a banked scratchpad: lanes/16
    consecutive words per grant at any alignment, the same beats as a narrow reader would
    give; without pauses a beat per cycle (plus a few cycles per command)."""
    rng = np.random.default_rng(lanes + banks)
    image = _image(rng)
    cmds = [
        _reader_cmd(3, 2, 5, 20),
        _reader_cmd(101, 5, 3, 64),
        _reader_cmd(7, 0, 0, 5),  # empty: nothing
        _reader_cmd(41, 13, 4, 197),
        _reader_cmd(300, 3, 2, 1),
    ]
    spm = Scratchpad(words=WORDS, init=_ints(image), banks=banks, wide={0: lanes // 16})
    rd = RowReader(lanes=lanes, fetch_words=lanes // 16)
    rig = Rig(spm, [rd], readers=[rd.mem])
    want = [b for c in cmds for b in _expected_beats(image, c, lanes)]
    got, cycles = [], []

    async def feed(ctx):
        for c in cmds:
            await _put(ctx, rd.cmd, c)

    async def drain(ctx):
        pauses = random_pauses(pause, lanes)
        n = 0
        while len(got) < len(want):
            ready = not next(pauses)
            ctx.set(rd.o.ready, ready)
            _, _, valid, p = await ctx.tick().sample(rd.o.valid, rd.o.payload)
            n += 1
            if valid and ready:
                got.append(([int(x) for x in p.data], int(p.count), bool(p.last)))
        cycles.append(n)

    _run(rig, drain, background=[feed])
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"beat {i}: got {g}, want {w}"
    if not pause:
        assert cycles[0] <= len(want) + 6 * len(cmds), (cycles, len(want))


def test_two_readers_share_the_port_and_a_stalled_one_does_not_block():
    rng = np.random.default_rng(9)
    image = _image(rng)
    spm = Scratchpad(words=WORDS, read_clients=2, init=_ints(image))
    fast, slow = RowReader(lanes=16), RowReader(lanes=16)
    rig = Rig(spm, [fast, slow], readers=[fast.mem, slow.mem])
    cf, cs = _reader_cmd(0, 1, 64, 16), _reader_cmd(100, 1, 8, 16)
    times = {}

    async def run_fast(ctx):
        await _put(ctx, fast.cmd, cf)
        got = []
        ctx.set(fast.o.ready, 1)
        async for _, _, valid, payload in ctx.tick().sample(fast.o.valid, fast.o.payload):
            if valid:
                got.append([int(x) for x in payload.data])
            if len(got) == 64:
                break
        times["fast"] = got

    async def run_slow(ctx):
        await _put(ctx, slow.cmd, cs)
        await ctx.tick().repeat(300)  # nobody takes its words meanwhile
        got = []
        for _ in range(8):
            p = await _get(ctx, slow.o)
            got.append([int(x) for x in p.data])
        times["slow"] = got

    _run(rig, run_fast, run_slow)
    assert times["fast"] == [list(image[r]) for r in range(64)]
    assert times["slow"] == [list(image[100 + r]) for r in range(8)]


# ---- writers ----------------------------------------------------------------------------------


def _rows_to_write(rng, image, jobs):
    """Random int8 rows for each (base, stride, rows, cols) job, and the interpreter's
    scratchpad once they are written."""
    mach = _machine(image)
    tensors = []
    for base, stride, rows, cols in jobs:
        values = rng.integers(-128, 128, size=(rows, cols))
        tensors.append(values)
        mach.write(base, values, stride)
    return mach, tensors


async def _write_rows(ctx, wr, jobs, tensors, lanes, pauses, *, idle):
    """Each job's command, then its rows as ``lanes``-byte beats to a row writer (garbage
    past ``cols``, which must never be written); waits for ``idle`` after each job."""
    for (base, stride, rows, cols), values in zip(jobs, tensors, strict=True):
        await _put(ctx, wr.cmd, dict(base=base, stride=stride, rows=rows, cols=cols))
        for r in range(rows):
            nb = -(-cols // lanes)
            for b in range(nb):
                chunk = [int(v) & 0xFF for v in values[r, b * lanes : (b + 1) * lanes]]
                chunk += [0x5A] * (lanes - len(chunk))
                beat = dict(data=chunk, count=min(lanes, cols - b * lanes), last=b == nb - 1)
                await _put(ctx, wr.i, beat, pauses)
        await ctx.tick().until(idle)


@pytest.mark.parametrize("lanes, banks", [(1, 1), (4, 1), (16, 1), (32, 1), (4, 2), (16, 4)])
def test_row_writer_writes_only_cols(lanes, banks):
    """Runs at any byte offset land where the interpreter puts them (a banked scratchpad:
    every word in bank ``a mod banks``)."""
    rng = np.random.default_rng(20 + lanes)
    image = _image(rng)
    jobs = [
        (5, 3, 4, 37),
        (60, 1, 2, 16),
        (80, 2, 3, 1),
        (120, 5, 2, 70),
    ]  # base, stride, rows, cols
    spm = Scratchpad(words=WORDS, init=_ints(image), banks=banks)
    wr, brw = RowWriter(lanes=lanes), ByteRunWriter()
    rig = Rig(spm, [wr, brw], writers=[brw.mem], links=[(wr.o, brw.i)])
    mach, tensors = _rows_to_write(rng, image, jobs)

    async def bench(ctx):
        pauses = random_pauses(0.3, lanes)
        await _write_rows(ctx, wr, jobs, tensors, lanes, pauses, idle=wr.idle & brw.idle)
        np.testing.assert_array_equal(_spm_dump(ctx, spm), mach.spm)

    _run(rig, bench)


@pytest.mark.parametrize("lanes, banks", [(32, 2), (32, 4), (64, 4)])
@pytest.mark.parametrize("pause", [0.3, 0.0])
def test_wide_row_writer_writes_lanes_over_16_words_a_cycle(lanes, banks, pause):
    """A nonlinear unit's writer of more than 16 lanes: each beat one write of lanes/16
    consecutive words across the banks (rows at any word alignment), bytes past ``cols``
    untouched, the scratchpad equal to the interpreter's; without pauses a beat per cycle.
    The wide client is client 1, beside a narrow client 0 (as LOAD's in the top)."""
    rng = np.random.default_rng(40 + lanes + banks)
    image = _image(rng)
    # base, stride, rows, cols
    jobs = [(5, 3, 4, 37), (60, 4, 2, 64), (81, 2, 3, 1), (121, 13, 3, 197)]
    spm = Scratchpad(words=WORDS, init=_ints(image), banks=banks, write_clients=2,
                     wide_writes={1: lanes // 16})  # fmt: skip
    wr = RowWriter(lanes=lanes, wide=True)
    rig = Rig(spm, [wr], writers={1: wr.mem})
    mach, tensors = _rows_to_write(rng, image, jobs)
    cycles = []

    async def bench(ctx):
        pauses = random_pauses(pause, lanes)
        await _write_rows(ctx, wr, jobs, tensors, lanes, pauses if pause else None, idle=wr.idle)
        np.testing.assert_array_equal(_spm_dump(ctx, spm), mach.spm)

    async def timed(ctx):
        n = 0
        while True:
            await ctx.tick()
            n += 1
            if ctx.get(wr.mem.en):
                cycles.append(n)

    _run(rig, bench, background=[timed])
    writes = sum(rows * -(-cols // lanes) for _, _, rows, cols in jobs)
    assert len(cycles) == writes
    if not pause:  # back to back within each command
        assert cycles[-1] - cycles[0] + 1 <= writes + 4 * len(jobs), cycles


def _writer_bench(ow, brw, spm, cmd, words, want):
    """A testbench: an output writer's command and engine words (random pauses), then the
    SPM must equal ``want`` once the writer and the byte-run writer are idle."""

    async def bench(ctx):
        await _put(ctx, ow.cmd, cmd)
        pauses = random_pauses(0.3, 5)
        for word in words:
            await _put(ctx, ow.i, word, pauses)
        await ctx.tick().until(ow.idle & brw.idle)
        np.testing.assert_array_equal(_spm_dump(ctx, spm), want)

    return bench


@pytest.mark.parametrize(
    "groups, cols, heads, nheads, transposed, n",
    [
        (1, 4, 0, 1, 0, 10),
        (2, 4, 0, 1, 0, 21),
        (2, 8, 0, 1, 0, 40),  # runs of 16 across two groups
        (2, 4, 1, 2, 0, 6),
        (4, 4, 1, 3, 0, 9),  # group 3 is not a head
        (2, 4, 0, 1, 1, 11),
        (2, 4, 1, 2, 1, 7),
        (1, 24, 0, 1, 0, 30),  # more than 16 lanes in a group
    ],
)
def test_matmul_out_writer(groups, cols, heads, nheads, transposed, n):
    rng = np.random.default_rng(groups * 100 + cols + n)
    image = _image(rng)
    T = 19
    base, stride, head_step = 10, 3 if not transposed else 2, 90
    words, want = _out_words(rng, image, groups, cols, heads, nheads, transposed, n, T,
                             base, stride, head_step)  # fmt: skip
    spm = Scratchpad(words=WORDS, init=_ints(image))
    ow, brw = MatmulOutWriter(groups=groups, cols=cols), ByteRunWriter()
    rig = Rig(spm, [ow, brw], writers=[brw.mem], links=[(ow.o, brw.i)])
    cmd = dict(base=base, stride=stride, tokens=T, n=n, heads=heads, nheads=nheads,
               head_step=head_step, transposed=transposed)  # fmt: skip
    _run(rig, _writer_bench(ow, brw, spm, cmd, words, want))


def _out_words(rng, image, groups, cols, heads, nheads, transposed, n, T, base, stride,
               head_step):  # fmt: skip
    """The engine's output words of a random job (per step, token: byte g*C + c; garbage on
    idle lanes) and the SPM the interpreter leaves after writing its outputs."""
    cm = cols if heads else groups * cols
    nsteps = -(-n // cm)
    heads_n = nheads if heads else 1
    y = rng.integers(-128, 128, size=(heads_n, T, n))
    # o words: per step, token; byte g*C + c
    words = []
    for s in range(nsteps):
        for t in range(T):
            lanes = [int(rng.integers(0, 256)) for _ in range(groups * cols)]  # idle garbage
            for g in range(groups):
                for c in range(cols):
                    h, ch = (g, s * cols + c) if heads else (0, s * groups * cols + g * cols + c)
                    if h < heads_n and ch < n:
                        lanes[g * cols + c] = int(y[h, t, ch]) & 0xFF
            words.append(int.from_bytes(bytes(lanes), "little"))
    mach = _machine(image)
    for h in range(heads_n):
        out = y[h].T if transposed else y[h]
        mach.write(base + h * head_step, out, stride)
    return words, mach.spm


@pytest.mark.parametrize(
    "groups, cols, banks, heads, nheads, head_step, n, transposed, stride",
    [
        (3, 16, 4, 1, 3, 89, 37, 0, 3),  # heads in 3 banks at once (head_step = 1 mod 4)
        (3, 16, 4, 1, 2, 90, 20, 0, 3),  # head_step = 2 mod 4: groups 0 and 2 collide
        (3, 16, 4, 0, 1, 90, 100, 0, 7),  # shared: 48 channels in 3 banks, 100 = 2 steps + 4
        (2, 32, 4, 1, 2, 91, 40, 0, 3),  # 2 words a group; head_step = 3 mod 4
        (3, 32, 2, 0, 1, 90, 70, 0, 5),  # shared, 6 words a token in 3 cycles of 2 banks
        # OUT_T, odd Y stride: 4 channel rows a cycle; 20 tokens = a chunk of 16 and one of 4
        (3, 16, 4, 0, 1, 0, 55, 1, 3),  # shared, stride 3 (lanes 0 3 2 1 of a segment)
        (3, 16, 4, 1, 2, 150, 21, 1, 5),  # heads: head 1 at +150, N = 21 (last step 5)
        (3, 32, 2, 0, 1, 0, 70, 1, 3),  # 2 banks
        (3, 16, 4, 0, 1, 0, 50, 1, 2),  # even stride: the runs (SPM checked only)
    ],
)
def test_matmul_out_writer_word_path(groups, cols, banks, heads, nheads, head_step, n,
                                     transposed, stride, w4_cols=0):  # fmt: skip
    """The word path (a banked SPM, cols a multiple of 16): the SPM equals the interpreter's
    after a job with random input pauses, and, unpaused, the writer takes exactly the
    cycles of :func:`word_writer_cycles` (first word in to last write out, plus the skid
    buffer's and the write register's cycle). OUT_T jobs take it when the Y stride is odd
    (:func:`word_path_takes`)."""
    rng = np.random.default_rng(groups * 100 + cols + n + w4_cols)
    job = dict(groups=groups, cols=cols, heads=heads, nheads=nheads, transposed=transposed,
               n=n, T=20 if transposed else 7, base=10, stride=stride,
               head_step=head_step)  # fmt: skip
    _word_path_job(rng, banks, job, 0.3, w4_cols)
    cycles = _word_path_job(rng, banks, job, 0.0, w4_cols)
    if not word_path_takes(cols, banks, transposed=bool(transposed), y_stride=stride,
                           runs=False):  # fmt: skip
        assert not any(wrote for *_, wrote in cycles)  # no word-path write
        return
    first = next(k for k, taken, _ in cycles if taken)
    model = word_writer_cycles(job["T"], n, groups, cols, banks, heads=bool(heads),
                               nheads=nheads, head_step=head_step,
                               transposed=bool(transposed))  # fmt: skip
    assert cycles[-1][0] - first + 1 == model + 2, (cycles[-1][0] - first + 1, model)


@pytest.mark.parametrize(
    "groups, cols_w8, w4_cols, banks, heads, nheads, head_step, n, transposed, stride",
    [
        (2, 16, 4, 2, 1, 2, 89, 20, 0, 2),  # QK^T: heads at once (odd head step), 2 steps
        (2, 16, 4, 2, 1, 2, 90, 16, 0, 1),  # P x V: both heads in one bank
        (2, 16, 6, 4, 0, 1, 90, 70, 0, 5),  # shared: 32 channels a step, 3 steps
        (2, 16, 4, 2, 1, 2, 150, 21, 1, 5),  # OUT_T, odd stride (even: the top test)
    ],
)
def test_mixed_out_writer_w_spm_jobs_take_the_word_path(groups, cols_w8, w4_cols, banks, heads,
                                                         nheads, head_step, n, transposed,
                                                         stride):  # fmt: skip
    """A mixed array's W_SPM jobs (the W8-column rule) through :class:`MixedOutWriter`: the
    engine's words with garbage on the W4 lanes, the SPM equal to the interpreter's with
    random pauses, and unpaused exactly the all-W8 word path's cycles of ``cols_w8``
    columns (:func:`word_writer_cycles`, what ``dse.cost.writer_bound`` prices them at)."""
    test_matmul_out_writer_word_path(groups, cols_w8, banks, heads, nheads, head_step, n,
                                     transposed, stride, w4_cols=w4_cols)  # fmt: skip


@pytest.mark.parametrize(
    "groups, cols, heads, nheads, head_step, n",
    [
        (3, 16, 0, 1, 90, 60),  # shared: 2 steps (48 + 12 channels), N <= cm + sw
        (3, 16, 0, 1, 90, 10),  # shared: 1 step, N <= sw: every token one run
        (2, 32, 1, 2, 91, 70),  # heads: 2 runs a group, 3 steps, the last of 6 channels
    ],
)
def test_matmul_out_writer_word_path_forced_runs(groups, cols, heads, nheads, head_step, n):
    """A word-path writer whose job is forced onto the runs (``force_runs``: a fused
    residual add) writes the interpreter's SPM through the byte-run writer (its run ends
    from the step registers ``gl_step`` / ``gl_group``), none of it on the word path."""
    rng = np.random.default_rng(groups * 100 + cols + n)
    job = dict(groups=groups, cols=cols, heads=heads, nheads=nheads, transposed=0, n=n, T=5,
               base=10, stride=7, head_step=head_step)  # fmt: skip
    cycles = _word_path_job(rng, 4, job, 0.3, force_runs=True)
    assert not any(wrote for *_, wrote in cycles)


def _word_path_job(rng, banks, job, pause, w4_cols=0, force_runs=False, out_pause=0.0):
    """One job through a word-path writer on a ``banks``-bank SPM (input pauses ``pause``;
    ``force_runs``: the job is forced onto the runs; ``out_pause``: the byte-run writer's
    input held with that probability a cycle); the SPM must equal the interpreter's.
    ``w4_cols``: a W_SPM job on a mixed array's writer (:class:`MixedOutWriter`) whose groups
    have ``job["cols"]`` W8 columns and ``w4_cols`` W4 ones (garbage on their lanes). Returns
    the (cycle, word taken, word-path write) of every cycle that takes a word or writes."""
    image = _image(rng)
    G, C8 = job["groups"], job["cols"]
    words, want = _out_words(rng, image, *(job[k] for k in (
        "groups", "cols", "heads", "nheads", "transposed", "n", "T", "base", "stride",
        "head_step")))  # fmt: skip
    spm = Scratchpad(words=WORDS, init=_ints(image), banks=banks, write_clients=2,
                     bank_writes=(1,))  # fmt: skip
    cmd = {k: job[k] for k in ("base", "stride", "n", "heads", "nheads", "head_step",
                               "transposed")}  # fmt: skip
    cmd["tokens"] = job["T"]
    if w4_cols:
        ow = MixedOutWriter(groups=G, cols=C8 + w4_cols, cols_w8=C8, banks=banks)
        cmd.update(nsteps=len(words) // job["T"], w8_rule=1)
        wide = []
        for word in words:  # each group's W4 lanes after its W8 ones
            lanes = word.to_bytes(G * C8, "little")
            wide.append(int.from_bytes(b"".join(
                lanes[g * C8 : (g + 1) * C8] + bytes(rng.integers(0, 256, w4_cols).tolist())
                for g in range(G)), "little"))  # fmt: skip
        words = wide
    else:
        ow = MatmulOutWriter(groups=G, cols=C8, banks=banks)
    brw = ByteRunWriter()
    assert ow.word_path
    hold = Signal()
    rig = Rig(spm, [ow, brw], writers=[brw.mem, ow.wo], links=[(ow.o, brw.i, hold)])
    cycles = []

    async def back_pressure(ctx):
        for held in random_pauses(out_pause, 7):
            ctx.set(hold, held)
            await ctx.tick()

    async def watch(ctx):
        k = 0
        async for _, _, taken, *lanes in ctx.tick().sample(
            ow.i.valid & ow.i.ready, *[lane.en for lane in bank_lanes(ow.wo)]
        ):
            k += 1
            if taken or any(lanes):
                cycles.append((k, taken, any(lanes)))

    async def feed(ctx):
        ctx.set(ow.force_runs, force_runs)
        await _put(ctx, ow.cmd, cmd)
        pauses = random_pauses(pause, 5) if pause else None
        for word in words:
            await _put(ctx, ow.i, word, pauses)
        await ctx.tick().until(ow.idle & brw.idle)
        np.testing.assert_array_equal(_spm_dump(ctx, spm), want)

    _run(rig, feed, background=[watch] + ([back_pressure] if out_pause else []))
    return cycles


@pytest.mark.parametrize(
    "groups, cols, heads, nheads, head_step, n, transposed, stride",
    [
        (3, 16, 0, 1, 90, 60, 0, 7),  # forced onto the runs: 2 steps, runs across groups
        (2, 32, 1, 2, 91, 70, 0, 5),  # forced, heads: 2 runs a group
        (3, 16, 0, 1, 0, 50, 1, 2),  # OUT_T, even stride: the runs from tdata
    ],
)
def test_matmul_out_writer_word_path_runs_back_pressure(groups, cols, heads, nheads, head_step,
                                                        n, transposed, stride):  # fmt: skip
    """A word-path writer's runs under back-pressure: the byte-run writer's input held half
    of the cycles (and the input paused), the SPM still equals the interpreter's (a run
    counted as written while the byte-run writer did not take it is lost; none of the other
    word-path tests hold the runs' output)."""
    rng = np.random.default_rng(groups * 100 + cols + n + 1)
    job = dict(groups=groups, cols=cols, heads=heads, nheads=nheads, transposed=transposed,
               n=n, T=20 if transposed else 5, base=10, stride=stride,
               head_step=head_step)  # fmt: skip
    cycles = _word_path_job(rng, 4, job, 0.3, force_runs=not transposed, out_pause=0.5)
    assert not any(wrote for *_, wrote in cycles)


@pytest.mark.parametrize(
    "groups, cols, cols_w8, heads, nheads, transposed, w8_rule, n, planned",
    [
        (1, 6, 4, 0, 1, 0, 0, 22, 0),  # column map, row-major
        (2, 4, 2, 0, 1, 1, 0, 13, 0),  # column map, OUT_T
        (2, 8, 4, 0, 1, 0, 1, 19, 0),  # W_SPM, shared: channel s*G*C8 + g*C8 + c
        (3, 4, 2, 1, 2, 0, 1, 5, 0),  # W_SPM, heads: s*C8 + c; group 2 is not a head
        (2, 4, 2, 1, 2, 1, 1, 7, 0),
        # the compiler's column maps (windows of channels; > 16 W8 columns)
        (1, 8, 4, 0, 1, 0, 0, 45, 1),
        (2, 24, 20, 0, 1, 0, 0, 46, 1),
        (2, 8, 4, 0, 1, 1, 0, 30, 1),
    ],
)
def test_mapped_out_writer(groups, cols, cols_w8, heads, nheads, transposed, w8_rule, n, planned):
    """A mixed array's output writer stores each column's byte at the channel of the column
    map (each step a window of channels after the previous step's, at random columns, idle
    columns 0xFFFF with garbage on their lanes; or ``planned``: :func:`plan_columns` of
    random int4/int8 rows) or of the W8-column rule (W_SPM), as the interpreter writes the
    layer's outputs, in the cycles of its model (:func:`mapped_writer_cycles`: the cycles
    it takes a column, a run or an OUT_T token, pauses aside)."""
    rng = np.random.default_rng(groups * 100 + cols + n)
    image = _image(rng)
    T = 18
    base, stride, head_step = 10, 3 if not transposed else 2, 90
    L = groups * cols
    heads_n = nheads if heads else 1
    if w8_rule:
        nsteps = -(-n // (cols_w8 if heads else groups * cols_w8))
        chan = np.full((nsteps, groups, cols), -1)
        for s in range(nsteps):
            for g in range(groups):
                for c in range(cols_w8):
                    ch = s * cols_w8 + c if heads else (s * groups + g) * cols_w8 + c
                    if ch < n and (not heads or g < nheads):
                        chan[s, g, c] = ch
        maps = []
    else:
        if planned:
            params = EngineParams(groups=groups, cols=cols, w4_share=1 - cols_w8 / cols)
            chan = plan_columns(rng.integers(0, 2, size=n), params).channel
        else:
            steps, lo = [], 0
            while lo < n:  # windows of random length at random columns
                width = min(n - lo, int(rng.integers(1, L + 1)))
                slots = np.full(L, -1)
                slots[rng.permutation(L)[:width]] = np.arange(lo, lo + width)
                steps.append(slots)
                lo += width
            chan = np.array(steps).reshape(-1, groups, cols)
        nsteps = chan.shape[0]
        slots = chan.reshape(-1)
        maps = [0xFFFF if ch < 0 else int(ch) for ch in slots]
    y = rng.integers(-128, 128, size=(heads_n, T, n))
    words = []
    for s in range(nsteps):
        for t in range(T):
            lanes = [int(rng.integers(0, 256)) for _ in range(L)]  # idle garbage
            for g in range(groups):
                for c in range(cols):
                    ch, h = chan[s, g, c], g if heads else 0
                    if ch >= 0 and h < heads_n:
                        lanes[g * cols + c] = int(y[h, t, ch]) & 0xFF
            words.append(int.from_bytes(bytes(lanes), "little"))
    mach = _machine(image)
    for h in range(heads_n):
        mach.write(base + h * head_step, y[h].T if transposed else y[h], stride)
    spm = Scratchpad(words=WORDS, init=_ints(image))
    ow = MappedOutWriter(groups=groups, cols=cols, cols_w8=cols_w8)
    brw = ByteRunWriter()
    rig = Rig(spm, [ow, brw], writers=[brw.mem], links=[(ow.o, brw.i)])
    cmd = dict(base=base, stride=stride, tokens=T, n=n, heads=heads, nheads=nheads,
               head_step=head_step, transposed=transposed, nsteps=nsteps,
               w8_rule=w8_rule)  # fmt: skip

    async def feed_map(ctx):
        pauses = random_pauses(0.3, 6)
        for entry in maps:
            await _put(ctx, ow.map, entry, pauses)

    cycles = []

    async def count(ctx):
        async for _, _, work in ctx.tick().sample(ow.work):
            cycles.append(work)

    _run(rig, _writer_bench(ow, brw, spm, cmd, words, mach.spm),
         background=[feed_map, count])  # fmt: skip
    want = mapped_writer_cycles(chan, T, nheads=nheads if heads else 0, transposed=bool(transposed))
    assert sum(cycles) == want, (sum(cycles), want)


# ---- matmul input streams ---------------------------------------------------------------------


def _spm_with(rng, tensors):
    """An SPM image holding each (base, stride, int array) tensor."""
    image = _image(rng)
    mach = _machine(image)
    for base, stride, values in tensors:
        mach.write(base, values, stride)
    return mach.spm


@pytest.mark.parametrize(
    "groups, cols, vector, heads, nheads, T, K, N, x_beat, banks, w4_share",
    [
        # mixed W4/W8 arrays: activation rows on the W8 columns only, zero words on W4 ones
        (2, 4, 8, 0, 1, 6, 16, 19, 1, 1, 0.5),
        (2, 6, 4, 1, 2, 7, 9, 5, 1, 1, 1 / 3),
        (1, 4, 8, 0, 1, 5, 20, 10, 1, 1, 0),
        # one weight word a column (K <= V): the W builder's column flags, registered while
        # the previous column streams, have two words to settle
        (2, 4, 16, 1, 2, 5, 16, 7, 1, 1, 0.5),
        (2, 2, 8, 0, 1, 3, 8, 9, 1, 1, 0),
        (1, 2, 8, 1, 1, 3, 5, 3, 1, 1, 0),
        (2, 4, 8, 0, 1, 6, 16, 19, 1, 1, 0),
        (2, 2, 4, 1, 2, 7, 9, 5, 1, 1, 0),
        (4, 4, 16, 1, 3, 3, 40, 9, 1, 1, 0),
        # X beats of a whole SPM word (V < 16), and wide reads of a banked SPM (V = 16)
        (1, 4, 8, 0, 1, 5, 20, 10, 2, 1, 0),
        (2, 2, 4, 1, 2, 7, 9, 5, 4, 1, 0),
        (1, 4, 16, 0, 1, 6, 70, 9, 2, 2, 0),
        (4, 4, 16, 1, 3, 3, 40, 9, 4, 4, 0),
        (2, 4, 8, 0, 1, 5, 100, 7, 8, 4, 0),
        # a heads job's zero groups of one word (T = 1, K <= V) and of more (X's zero_one)
        (2, 2, 8, 1, 1, 1, 5, 3, 1, 1, 0),
        (3, 2, 8, 1, 1, 1, 20, 3, 1, 1, 0),
        (2, 2, 8, 1, 1, 2, 8, 3, 1, 1, 0),
    ],
)
def test_x_and_w_streams_match_the_engine_packer(
    groups, cols, vector, heads, nheads, T, K, N, x_beat, banks, w4_share
):
    """The X builder's beats (``x_beat`` k-steps, ``banks`` words per wide SPM read at any
    word alignment: the X rows start at odd addresses) and the W builder's words (as wide
    reads of the same banked SPM: a W row of up to ``16 * banks`` bytes a grant) equal the
    engine packer's streams."""
    rng = np.random.default_rng(T * K + N)
    params = EngineParams(groups=groups, rows=4, cols=cols, vector=vector, x_beat=x_beat,
                          w4_share=w4_share)  # fmt: skip
    hn = nheads if heads else 1
    x = rng.integers(-128, 128, size=(hn, T, K))
    w = rng.integers(-128, 128, size=(hn, N, K))
    xs, xstep, ws, wstep = 2, 40, 200, 100  # disjoint tensors
    stride_x, stride_w = -(-K // 16), -(-K // 16) + 1
    tensors = [(xs + h * xstep, stride_x, x[h]) for h in range(hn)]
    tensors += [(ws + h * wstep, stride_w, w[h]) for h in range(hn)]
    image = _spm_with(rng, tensors)
    mult, shift = 300, 9
    kind = np.zeros(N, dtype=np.int64)  # w8 rows
    if heads:
        job = pack_job(x, w, kind, 0, mult, shift, params, heads=True)
    else:
        job = pack_job(x[0], w[0], kind, 0, mult, shift, params)
    want_x = [int.from_bytes(r.tobytes(), "little") for r in job.x_bytes]
    want_w = [int.from_bytes(r.tobytes(), "little") for r in job.w_words]

    spm = Scratchpad(words=WORDS, read_clients=2, init=_ints(image), banks=banks,
                     wide={0, 1} if banks > 1 else ())  # fmt: skip
    xb = XStreamBuilder(groups=groups, vector=x_beat * vector, fetch_words=banks)
    wb = WStreamBuilder(groups=groups, cols=cols, vector=vector, w_bits=params.w_word_bits,
                        cols_w8=params.cols_w8, fetch_words=banks)  # fmt: skip
    rig = Rig(spm, [xb, wb], readers=[xb.mem, wb.mem])
    got = {"x": [], "w": [], "w_grants": 0}

    async def count_w_grants(ctx):
        async for _, _, req, grant in ctx.tick().sample(wb.mem.req, wb.mem.grant):
            got["w_grants"] += req & grant

    async def feed(ctx):
        await _put(ctx, xb.cmd, dict(base=xs, stride=stride_x, tokens=T, k=K, heads=heads,
                                     nheads=nheads, head_step=xstep))  # fmt: skip
        await _put(ctx, wb.cmd, dict(base=ws, stride=stride_w, n=N, k=K, heads=heads,
                                     nheads=nheads, head_step=wstep, mult=mult, shift=shift))  # fmt: skip

    async def take_x(ctx):
        pauses = random_pauses(0.2, 1)
        for _ in want_x:
            got["x"].append(int(await _get(ctx, xb.o, pauses)))
        await ctx.tick().until(xb.idle)

    async def take_w(ctx):
        pauses = random_pauses(0.2, 2)
        for _ in want_w:
            got["w"].append(int(await _get(ctx, wb.o, pauses)))
        await ctx.tick().until(wb.idle)

    _run(rig, take_x, take_w, background=[feed, count_w_grants])
    assert [hex(v) for v in got["x"]] == [hex(v) for v in want_x]
    assert got["w"] == want_w
    # every W row (word aligned) in ceil(words / banks) grants: the B-th of the read port's
    # grants that cost.top_matmul_extra prices the W rows at
    row_words = -(-K // 16)
    assert got["w_grants"] == hn * N * -(-row_words // banks), got["w_grants"]


@pytest.mark.parametrize(
    "groups, cols, vector, heads, nheads, K, N, ports, banks",
    [
        # DeiT-T's geometry (3 groups of 16, 2 ports): a port's columns span 1.5 groups
        (3, 16, 16, 1, 3, 64, 17, 2, 4),
        (3, 16, 16, 1, 2, 17, 40, 2, 4),
        (3, 16, 16, 0, 1, 64, 70, 2, 4),
        # a group split over ports (C > M), whole groups a port, rows past N mid-port
        (1, 8, 8, 1, 1, 20, 11, 2, 1),
        (2, 4, 8, 1, 2, 9, 5, 2, 1),
        (4, 2, 4, 1, 3, 16, 3, 4, 2),
        (2, 6, 4, 0, 1, 5, 13, 3, 1),
        (3, 4, 4, 1, 1, 4, 9, 2, 1),
    ],
)
def test_port_w_builders_make_each_ports_share_of_the_w_stream(
    groups, cols, vector, heads, nheads, K, N, ports, banks
):
    """Each weight port's builder streams exactly the engine packer's W words of its columns
    (``q*M .. q*M + M-1`` of every step), its consumer pausing at random, all ports' row
    readers on one (banked) scratchpad."""
    rng = np.random.default_rng(K * N + ports)
    params = EngineParams(groups=groups, rows=4, cols=cols, vector=vector, x_beat=1)
    hn = nheads if heads else 1
    x = rng.integers(-128, 128, size=(hn, 2, K))
    w = rng.integers(-128, 128, size=(hn, N, K))
    ws, wstep, stride_w = 8, 150, -(-K // 16) + 1
    image = _spm_with(rng, [(ws + h * wstep, stride_w, w[h]) for h in range(hn)])
    mult, shift = 77, 5
    kind = np.zeros(N, dtype=np.int64)
    if heads:
        job = pack_job(x, w, kind, 0, mult, shift, params, heads=True)
    else:
        job = pack_job(x[0], w[0], kind, 0, mult, shift, params)
    words = [int.from_bytes(r.tobytes(), "little") for r in job.w_words]
    per_col = 1 + -(-K // vector)
    M = groups * cols // ports
    steps = np.array(words, dtype=object).reshape(-1, groups * cols, per_col)
    want = [list(steps[:, q * M : (q + 1) * M].reshape(-1)) for q in range(ports)]
    spm = Scratchpad(words=WORDS, read_clients=ports, init=_ints(image), banks=banks,
                     wide=set(range(ports)) if banks > 1 else ())  # fmt: skip
    kw = dict(groups=groups, cols=cols, vector=vector, ports=ports, w_bits=params.w_word_bits,
              fetch_words=banks)  # fmt: skip
    wbs = [PortWStreamBuilder(port=q, **kw) for q in range(ports)]
    rig = Rig(spm, wbs, readers=[wb.mem for wb in wbs])
    got = [[] for _ in range(ports)]

    async def feed(ctx):
        cmd = dict(base=ws, stride=stride_w, n=N, k=K, heads=heads, nheads=nheads,
                   head_step=wstep, mult=mult, shift=shift)  # fmt: skip
        for wb in wbs:
            ctx.set(wb.cmd.payload, cmd)
            ctx.set(wb.cmd.valid, 1)
        await ctx.tick()
        for wb in wbs:
            ctx.set(wb.cmd.valid, 0)

    def take(q):
        async def bench(ctx):
            pauses = random_pauses(0.2, 3 + q)
            for _ in want[q]:
                got[q].append(int(await _get(ctx, wbs[q].o, pauses)))
            await ctx.tick().until(wbs[q].idle)

        return bench

    _run(rig, *[take(q) for q in range(ports)], background=[feed])
    for q in range(ports):
        bad = [i for i, (a, b) in enumerate(zip(got[q], want[q], strict=True)) if a != b]
        assert not bad, f"port {q}: first mismatch at word {bad[0]} of {len(want[q])}"


@pytest.mark.parametrize(
    "cls, kwargs, exc",
    [
        (RowReader, {"lanes": 3}, ValueError),
        (RowWriter, {"lanes": 128}, ValueError),
        (RowWriter, {"lanes": 16, "wide": True}, ValueError),
        (
            Scratchpad,
            {"words": 64, "banks": 2, "write_clients": 2, "wide_writes": {1: 4}},
            ValueError,
        ),
        (Scratchpad, {"words": 8}, ValueError),
        (MatmulOutWriter, {"groups": 0, "cols": 4}, ValueError),
        (XStreamBuilder, {"vector": 12, "groups": 1}, ValueError),
    ],
)
def test_rejects_bad_parameters(cls, kwargs, exc):
    with pytest.raises(exc, match=next(iter(kwargs))):
        cls(**kwargs)


@pytest.mark.parametrize(
    "groups, cols, vector, heads, T, K, N, banks",
    [
        # DeiT-T's geometry, 2 ports, a 64-byte datapath: P x V-shaped (X gets a third of
        # the grants), one of DeiT's K (4 grants a row, 14 W words a column), QK^T-shaped
        (3, 16, 16, 1, 17, 17, 64, 4),
        (3, 16, 16, 1, 5, 197, 32, 4),
        (3, 16, 16, 1, 17, 64, 17, 4),
        # shared mode, one step of W (the builders through before X is)
        (3, 16, 16, 0, 40, 64, 40, 4),
    ],
)
def test_x_load_shares_the_read_port_with_the_port_w_builders(
    groups, cols, vector, heads, T, K, N, banks
):
    """The X builder beside a W builder per weight port (2 ports) on one banked scratchpad,
    every stream taken a word a cycle as the engine takes it (the W streams for the two
    steps whose W halves are free at the start): the X load's beats come at the edges
    ``cost.spm_x_stretch`` gives the cycle model (the share of the round-robin read port
    the builders leave X): the builders' delay of the first tile's last beat and of the
    load's last beat (the same load without them subtracted) within 12 % of the model's
    (heads mode: the model is 3-9 cycles over; between groups the X builder pauses a few
    cycles, and the builders take those grants instead of X's)."""
    from vitaccel.dse.cost import job_nsteps, spm_x_stretch
    from vitaccel.engine_timing import x_beat_words, x_edge, x_load_cycles

    ports, rows = 2, 2
    nheads = groups if heads else 1
    ks, x_beat = -(-K // vector), x_beat_words(vector, 16 * banks)
    beats = -(-ks // x_beat)
    xl = x_load_cycles(T, ks, groups, heads=bool(heads), x_beat=x_beat)
    nsteps = job_nsteps(N, N, groups, cols, cols, heads=bool(heads))
    stretch = spm_x_stretch(T, K, N, nsteps, groups, cols, vector, banks, ports,
                            heads=bool(heads), nheads=nheads)  # fmt: skip
    assert stretch is not None  # every case here is one where X waits for the port
    w_words = min(nsteps, 2) * groups * cols // ports * (ks + 1)  # a port's, two steps
    row = -(-K // 16)
    x_step, w_base = T * row, groups * T * row
    words = -(-(w_base + nheads * N * row + 8) // 16) * 16
    rng = np.random.default_rng(K)
    init = _ints(rng.integers(0, 256, size=(words, 16), dtype=np.uint8))

    def x_edges(with_w: bool) -> list[int]:
        spm = Scratchpad(words=words, read_clients=1 + ports, init=init, banks=banks,
                         wide=set(range(1 + ports)))  # fmt: skip
        xb = XStreamBuilder(groups=groups, vector=x_beat * vector, fetch_words=banks)
        wbs = [PortWStreamBuilder(port=q, groups=groups, cols=cols, vector=vector, ports=ports,
                                  fetch_words=banks) for q in range(ports)]  # fmt: skip
        rig = Rig(spm, [xb, *wbs], readers=[xb.mem, *[wb.mem for wb in wbs]])
        edges, now = [], [0]

        async def clock(ctx):
            while True:
                await ctx.tick()
                now[0] += 1

        async def feed(ctx):  # every command on the same edge, as the top's controller
            ctx.set(xb.cmd.payload, dict(base=0, stride=row, tokens=T, k=K, heads=heads,
                                         nheads=nheads, head_step=x_step))  # fmt: skip
            ctx.set(xb.cmd.valid, 1)
            for wb in wbs:
                ctx.set(wb.cmd.payload, dict(base=w_base, stride=row, n=N, k=K, heads=heads,
                                             nheads=nheads, head_step=N * row, mult=1,
                                             shift=8))  # fmt: skip
                ctx.set(wb.cmd.valid, int(with_w))
            await ctx.tick()
            ctx.set(xb.cmd.valid, 0)
            for wb in wbs:
                ctx.set(wb.cmd.valid, 0)

        async def take_x(ctx):
            for _ in range(xl):
                await _get(ctx, xb.o)
                edges.append(now[0])

        def take_w(wb):
            async def bench(ctx):
                for _ in range(w_words if with_w else 0):
                    await _get(ctx, wb.o)

            return bench

        _run(rig, take_x, *[take_w(wb) for wb in wbs], background=[clock, feed])
        return edges

    alone, shared = x_edges(False), x_edges(True)
    first_tile = ((groups - 1) * T if heads else 0) * beats + min(T, rows) * beats
    for beat in (first_tile, xl):
        # the builders' delay of the beat: RTL (with - without them) against the model's
        got, want = shared[beat - 1] - alone[beat - 1], x_edge(beat, stretch) - beat
        assert abs(want - got) <= 0.12 * got, (beat, shared[beat - 1], got, want)
