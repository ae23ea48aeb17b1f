"""Chains on the accelerator top (docs/isa.md, "Chains"; docs/top.md, state machine): a
SOFTMAX / LAYERNORM with its CHAIN flag hands its output rows to the next MATMUL's X builder
as its writer writes them, and the controller decodes the MATMUL without waiting for the
unit. Amaranth simulation of the whole top (tests/test_rtl_top.py's bus models): the
scratchpad after each program equals the ISA interpreter's byte for byte, the same program
without CHAIN gives the same bytes, and the chained pair takes fewer cycles; a broken chain
ends with ERROR; a design whose units do not chain runs CHAIN in order.

Each pair prints its RTL cycles (the unit alone, the MATMUL alone, the pair unchained and
chained; no AXI stalls, the LOAD-only program subtracted) and, from the MATMUL's engine
command handshake, the cycle of the X stream's first and last beat into the engine."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator
from test_rtl_axi import AxiLiteHost, AxiRamModel

from vitaccel import isa
from vitaccel.design import ArrayConfig, Design, NonlinearConfig
from vitaccel.engine_timing import unit_chains
from vitaccel.flow.codec import codec_for
from vitaccel.isa import CTRL_IRQ_ENABLE, CTRL_START, STATUS_DONE, STATUS_ERROR, Reg
from vitaccel.quant.ref import gelu_lut
from vitaccel.quant.scales import dyadic
from vitaccel.rtl.top import Accelerator, TopParams


@pytest.fixture(autouse=True)
def _chain_hardware(monkeypatch):
    """The chain hardware is off in the product until its X input path meets the clock
    rule (rtl.top.CHAIN_HARDWARE); these tests build it."""
    import vitaccel.rtl.top as top

    monkeypatch.setattr(top, "CHAIN_HARDWARE", True)


# A chaining top: V = 16 on a 32-byte datapath (2 banks), softmax and LayerNorm of 32 lanes
# (= the X beat), 2 groups of 8 columns (G*C = 16: RESADD fuses)
CHAIN_TOP = Design(
    array=ArrayConfig(groups=2, rows=2, cols=8, vector=16),
    nonlinear=NonlinearConfig(
        gelu_lanes=2, softmax_lanes=32, layernorm_lanes=32, max_tokens=16, max_channels=64
    ),
    spm_kib=8,
    input_buffer_kib=2,
    weight_buffer_kib=4,
    datapath_bytes=32,
)
SPM_WORDS = 512
BASE = 0x4000  # DDR byte address of the image (PROG_ADDR = DATA_BASE)
DUMP = 0x6000  # where the program stores the whole scratchpad (image offset)


class _Probed(Accelerator):
    """The accelerator with its parts' namespace kept (``probe``), for the X stream's edges."""

    def _matmul(self, m, n):
        super()._matmul(m, n)
        self.probe = n


def _run(design: Design, image: bytes, *, stall: float = 0.0, cycles: int = 30_000):
    """Run ``image`` (program at 0) on the top; returns (DDR model, status/pc/cycles, per
    MATMUL: (its engine command's cycle after the last unit reader command, the X stream's
    first and last beat into the engine after the engine command))."""
    dut = _Probed(design)
    ram = AxiRamModel(dut.m_axi, 1 << 16, stall=stall, seed=3)
    ram.mem[BASE : BASE + len(image)] = image
    host = AxiLiteHost(dut.s_axil)
    out, edges, unit_cmd = {}, [], [0]
    out["yields"] = 0

    async def bench(ctx):
        for reg, value in ((Reg.PROG_ADDR_LO, BASE), (Reg.DATA_BASE_LO, BASE)):
            await host.write(ctx, reg, value)
        await host.write(ctx, Reg.CTRL, CTRL_START | CTRL_IRQ_ENABLE)
        for _ in range(cycles):
            if ctx.get(dut.irq):
                break
            await ctx.tick()
        out["status"] = await host.read(ctx, Reg.STATUS)
        out["pc"] = await host.read(ctx, Reg.PC)
        out["cycles"] = await host.read(ctx, Reg.CYCLES_LO)

    async def monitor(ctx):
        n = dut.probe
        cmd, x = n.engine.cmd, n.engine.x
        unit_rd = [rd.cmd for rd in n.unit_rd.values()]
        # the chaining unit's writer held off the port while it has a command (an upper
        # bound of the writes that waited: the MATMUL's writers wrote while the unit's ran)
        wr = n.unit_wr.get(max(TopParams(design).chain_lanes, default=None))
        t = 0
        while True:
            await ctx.tick()
            t += 1
            if wr is not None and ctx.get(wr.hold) and not ctx.get(wr.idle):
                out["yields"] += 1
            if any(ctx.get(c.valid) and ctx.get(c.ready) for c in unit_rd):
                unit_cmd[0] = t
            if ctx.get(cmd.valid) and ctx.get(cmd.ready):
                edges.append([t, None, None, t - unit_cmd[0]])
            if ctx.get(x.valid) and ctx.get(x.ready) and edges:
                e = edges[-1]
                e[1] = t if e[1] is None else e[1]
                e[2] = t

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(ram.run, background=True)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(bench)
    sim.run()
    assert not ram.errors, ram.errors[:3]
    return ram, out, [(u, f - c, last - c) for c, f, last, u in edges if f is not None]


def _unchained(prog):
    return [p.replace(flags=p.flags & ~type(p.flags).CHAIN) if isa.chained(p) else p for p in prog]


class _Image:
    """A DDR image: program at 0, data blobs from 0x1000, the scratchpad dump at DUMP."""

    def __init__(self):
        self.buf = bytearray(DUMP + SPM_WORDS * 16)
        self.at = 0x1000

    def add(self, raw: bytes) -> int:
        off = self.at
        self.buf[off : off + len(raw)] = raw
        self.at += -(-len(raw) // 16) * 16
        assert self.at <= DUMP
        return off

    def with_program(self, prog) -> bytes:
        code = isa.encode_program([*prog, isa.end()])
        img = bytearray(self.buf)
        img[: len(code)] = code
        return bytes(img)


def _dump():
    return isa.store(spm=0, words=SPM_WORDS, ddr=DUMP)


def _spm_equals_the_interpreter(design, image: bytes, stall: float = 0.2) -> bytes:
    """The scratchpad the program stores at DUMP equals the interpreter's (first mismatch
    named); returns it."""
    from vitaccel.compile import interp

    want = bytes(interp.run(bytearray(image), codec_for(design), spm_words=SPM_WORDS).ddr)
    want = want[DUMP : DUMP + SPM_WORDS * 16]
    ram, out, _ = _run(design, image, stall=stall)
    assert out["status"] == STATUS_DONE, out
    got = bytes(ram.mem[BASE + DUMP : BASE + DUMP + SPM_WORDS * 16])
    diff = np.flatnonzero(np.frombuffer(got, np.uint8) != np.frombuffer(want, np.uint8))
    assert diff.size == 0, (
        f"first mismatch at SPM byte {diff[0]} (word {diff[0] // 16}): {got[diff[0]]} != "
        f"{want[diff[0]]}"
    )
    return got


def _check_pair(name, design, img: _Image, setup: list, unit: isa.Instr, mm: isa.Instr):
    """``setup`` (LOADs), then ``unit`` (CHAIN set) and ``mm``: bit-exact with and without
    the chain (AXI stalls), and the chained pair faster (no stalls). Returns the cycles."""
    assert isa.chained(unit) and isa.chain_fits(unit, mm) is None
    prog = [*setup, unit, mm]
    chained = _spm_equals_the_interpreter(design, img.with_program([*prog, _dump()]))
    plain = _spm_equals_the_interpreter(design, img.with_program([*_unchained(prog), _dump()]))
    assert chained == plain

    def cycles(p):
        ram, out, edges = _run(design, img.with_program(p))
        assert out["status"] == STATUS_DONE, out
        cycles.yields = out["yields"]
        return out["cycles"], edges

    base, _ = cycles(setup)
    unit_only, _ = cycles(_unchained([*setup, unit]))
    pair, plain_edges = cycles(_unchained(prog))
    pair_chained, edges = cycles(prog)
    res = {
        "yields": cycles.yields,
        "unit": unit_only - base,
        "matmul": pair - unit_only,
        "unchained": pair - base,
        "chained": pair_chained - base,
        "x_edges_unchained": plain_edges[-1][1:],
        "x_edges_chained": edges[-1][1:],
    }
    print(
        f"{name}: unit {res['unit']} cycles, MATMUL {res['matmul']}, pair unchained "
        f"{res['unchained']}, chained {res['chained']} (RTL, Amaranth sim, no stalls); MATMUL "
        f"command +{edges[-1][0]} after the unit's reader command (unchained "
        f"+{plain_edges[-1][0]}); X beats into the engine from the MATMUL's command: first "
        f"+{res['x_edges_chained'][0]}, last +{res['x_edges_chained'][1]} chained (unchained "
        f"+{res['x_edges_unchained'][0]}, +{res['x_edges_unchained'][1]}); cycles the unit's "
        f"writer was held while busy: {res['yields']}"
    )
    assert res["chained"] < res["unchained"], res
    return res


def _ln_block(rng, ch: int) -> bytes:
    block = np.zeros((ch, 8), dtype=np.uint8)
    block[:, 0] = rng.integers(0, 4, ch)
    block[:, 2:4] = rng.integers(-3000, 3000, ch).astype("<i2").view(np.uint8).reshape(ch, 2)
    block[:, 4:8] = rng.integers(-20000, 20000, ch).astype("<i4").view(np.uint8).reshape(ch, 4)
    return block.tobytes()


def _layernorm(rows, ch, src, dst, stride, params):
    mult, shift = (int(v) for v in dyadic(1.0 / ch))
    ln = isa.layernorm(src=src, src_stride=stride, rows=rows, cols=ch, dst=dst,
                       dst_stride=stride, params=params, recip_mult=mult, recip_shift=shift,
                       out_shift=10, eps_q=1)  # fmt: skip
    return ln.replace(flags=ln.flags | isa.LayerNormFlags.CHAIN)


def _weights(rng, design, n, k) -> bytes:
    q = rng.integers(-128, 128, size=(n, k))
    bias, mult, shift = (
        rng.integers(-5000, 5000, n),
        rng.integers(1, 1 << 15, n),
        rng.integers(12, 20, n),
    )
    return codec_for(design).pack(q, np.zeros(n, dtype=np.int64), bias, mult, shift)


def _random_words(rng, words: int) -> bytes:
    return rng.integers(0, 256, words * 16, dtype=np.uint8).tobytes()


def _ln_pair(rng, fused: str | None = None):
    """LAYERNORM(CHAIN) of 7 tokens x 64 channels -> a shared MATMUL (W from DDR), N = 40."""
    design = CHAIN_TOP
    img = _Image()
    tokens, ch, n, stride = 7, 64, 40, 4
    x = img.add(_random_words(rng, tokens * stride))
    par = img.add(_ln_block(rng, ch))
    w = img.add(_weights(rng, design, n, ch))
    setup = [isa.load(spm=0, words=tokens * stride, ddr=x), isa.load(spm=300, words=32, ddr=par)]
    extra = {}
    if fused == "gelu":
        tab = img.add(gelu_lut(0.05, 0.04).astype(np.int8).tobytes())
        setup.append(isa.load(spm=340, words=16, ddr=tab))
        extra = {"gelu_table": 340}
    elif fused == "resadd":
        a = img.add(_random_words(rng, tokens * 3))
        mults = np.stack([rng.integers(0, 1 << 16, n), rng.integers(0, 1 << 16, n)], axis=1)
        rp = img.add(mults.astype("<u2").tobytes())
        setup += [isa.load(spm=400, words=tokens * 3, ddr=a), isa.load(spm=380, words=10, ddr=rp)]
        extra = {"residual": 400, "residual_params": 380, "residual_shift": 17}
    unit = _layernorm(tokens, ch, src=0, dst=40, stride=stride, params=300)
    mm = isa.matmul(x=40, x_stride=stride, tokens=tokens, k=ch, n=n, y=100, y_stride=3,
                    w_ddr=w, **extra)  # fmt: skip
    return design, img, setup, unit, mm


def test_layernorm_chained_into_a_shared_matmul():
    """(a) LAYERNORM(CHAIN) -> MATMUL, shared mode, W from DDR."""
    _check_pair("LN 7x64 -> MATMUL T7 K64 N40", *_ln_pair(np.random.default_rng(1)))


@pytest.mark.slow  # the chain hardware is off in the product: its pairs on request
def test_layernorm_chain_writes_beside_the_matmuls_writes():
    """LAYERNORM(CHAIN, in place) of 128 tokens x 32 channels -> a shared MATMUL with W from
    the scratchpad (one step of 16 channels), on CHAIN_TOP with an X buffer for 128 tokens:
    the engine's first tiles are written while the unit still writes its rows, so the unit's
    writer must yield the scratchpad's write port to the MATMUL's (the write clients have no
    arbiter)."""
    design = CHAIN_TOP.model_copy(update={"input_buffer_kib": 8})
    rng = np.random.default_rng(6)
    img = _Image()
    tokens, ch, n = 128, 32, 16
    x = img.add(_random_words(rng, tokens * 2))
    par = img.add(_ln_block(rng, ch))
    w = img.add(_random_words(rng, n * 2))
    setup = [isa.load(spm=0, words=tokens * 2, ddr=x), isa.load(spm=260, words=16, ddr=par),
             isa.load(spm=280, words=n * 2, ddr=w)]  # fmt: skip
    unit = _layernorm(tokens, ch, src=0, dst=0, stride=2, params=260)
    mm = isa.matmul(x=0, x_stride=2, tokens=tokens, k=ch, n=n, y=320, y_stride=1, w_spm=280,
                    w_stride=2, mult=5, shift=9)  # fmt: skip
    res = _check_pair("LN 128x32 -> MATMUL T128 K32 N16 (W_SPM)", design, img, setup, unit, mm)
    assert res["yields"] > 0, res


@pytest.mark.slow  # the chain hardware is off in the product: its pairs on request
@pytest.mark.parametrize("fused", ["gelu", "resadd"])
def test_layernorm_chained_into_a_fused_matmul(fused):
    """(c) LAYERNORM(CHAIN) -> MATMUL with its GELU or residual add fused (PARAMS of the
    MATMUL run while the unit works: the table / multipliers through the word reader)."""
    _check_pair(f"LN 7x64 -> MATMUL {fused}", *_ln_pair(np.random.default_rng(2), fused))


@pytest.mark.slow  # the chain hardware is off in the product: its pairs on request
@pytest.mark.parametrize("heads", [2, 1])
def test_softmax_chained_into_p_times_v(heads):
    """(b) SOFTMAX(CHAIN) -> P x V in heads mode with W from the scratchpad (schedule.py's
    ``attn.sv``): the unit's rows are head after head; with 1 head on 2 groups the X
    builder's zero group follows the chained rows."""
    design = CHAIN_TOP
    rng = np.random.default_rng(3 + heads)
    img = _Image()
    tokens, dh, xs = 11, 16, 1  # P: tokens x tokens per head; V^T: dh rows of tokens
    logits = img.add(_random_words(rng, heads * tokens * xs))
    vt = img.add(_random_words(rng, heads * dh))
    setup = [isa.load(spm=0, words=heads * tokens * xs, ddr=logits),
             isa.load(spm=200, words=heads * dh, ddr=vt)]  # fmt: skip
    sm = isa.softmax(src=0, src_stride=xs, rows=heads * tokens, cols=tokens, dst=60,
                     dst_stride=xs, in_shift=4)  # fmt: skip
    unit = sm.replace(flags=sm.flags | isa.SoftmaxFlags.CHAIN)
    mm = isa.matmul(x=60, x_stride=xs, tokens=tokens, k=tokens, n=dh, y=300, y_stride=1,
                    w_spm=200, w_stride=1, mult=3, shift=9, heads=heads,
                    head_x_step=tokens * xs, head_w_step=dh, head_y_step=tokens,
                    x_unsigned=True)  # fmt: skip
    _check_pair(f"SOFTMAX {heads}x{tokens}x{tokens} -> P x V ({heads} heads)", design, img,
                setup, unit, mm)  # fmt: skip


@pytest.mark.parametrize(
    "follower", ["end", pytest.param("x_keep matmul", marks=pytest.mark.slow), "load"]
)
def test_a_chain_not_followed_by_a_matmul_loading_x_ends_with_error(follower):
    """(d) After a CHAIN only a MATMUL that loads its X: END, an X_KEEP MATMUL or any other
    instruction ends the run with ERROR (PC at the follower)."""
    design, img, setup, unit, mm = _ln_pair(np.random.default_rng(4))
    after = {
        "end": isa.end(),
        "x_keep matmul": mm.replace(flags=mm.flags | isa.MatmulFlags.X_KEEP),
        "load": isa.load(spm=0, words=1, ddr=0x1000),
    }[follower]
    prog = [*setup, mm, unit, after]  # (an X the engine holds: X_KEEP alone would pass)
    ram, out, _ = _run(design, img.with_program(prog), stall=0.2)
    assert out["status"] == STATUS_DONE | STATUS_ERROR, out
    assert out["pc"] == len(setup) + 2, out
    # without the chain the same program runs on (X_KEEP is fine after a MATMUL)
    if follower != "end":
        ram, out, _ = _run(design, img.with_program(_unchained(prog)), stall=0.2)
        assert out["status"] == STATUS_DONE, out


@pytest.mark.slow  # the chain hardware is off in the product: its pairs on request
def test_chain_runs_in_order_where_the_units_do_not_chain():
    """(e) On a design whose units are narrower than the datapath (unit_chains false) the RTL
    ignores CHAIN: same bytes, same cycles as the program without it."""
    design = CHAIN_TOP.model_copy(
        update={"nonlinear": CHAIN_TOP.nonlinear.model_copy(
            update={"softmax_lanes": 16, "layernorm_lanes": 16})}
    )  # fmt: skip
    assert not TopParams(design).chains
    assert not unit_chains(16, 16, 32)
    _, img, setup, unit, mm = _ln_pair(np.random.default_rng(5))
    prog = [*setup, unit, mm]
    chained = _spm_equals_the_interpreter(design, img.with_program([*prog, _dump()]))
    plain = _spm_equals_the_interpreter(design, img.with_program([*_unchained(prog), _dump()]))
    assert chained == plain
    cyc = [_run(design, img.with_program(p))[1]["cycles"] for p in (prog, _unchained(prog))]
    print(f"16-lane units (no chain): CHAIN {cyc[0]} cycles, without {cyc[1]}")
    assert cyc[0] == cyc[1]


def test_chaining_design():
    params = TopParams(CHAIN_TOP)
    assert params.chains == ("softmax", "layernorm") and params.chain_lanes == (32,)


def test_x_builder_takes_a_chain_zeroing_bytes_past_count():
    """XStreamBuilder(chain=True) alone: a heads job (2 of 3 groups real, rows of 40 bytes:
    two 32-byte beats, the second with 8) in chain mode passes the chain's beats with the
    bytes past each beat's ``count`` as 0 (here they carry garbage), then the zero group's
    beats; it never reads the scratchpad. Random pauses on both sides."""
    import random

    from vitaccel.rtl.spm import XStreamBuilder

    lanes, groups, nheads, tokens, k = 32, 3, 2, 3, 40
    xb = XStreamBuilder(groups=groups, vector=lanes, fetch_words=2, chain=True)
    rng = np.random.default_rng(9)
    pick = random.Random(1)
    beats, want = [], []
    for _ in range(nheads * tokens):
        for count in (32, 8):
            data = rng.integers(0, 256, lanes, dtype=np.uint8)
            beats.append((data, count, count == 8))
            want.append(
                int.from_bytes(bytes(np.where(np.arange(lanes) < count, data, 0)), "little")
            )
    want += [0] * tokens * 2  # the zero group: T tokens x ceil(K / 32) beats
    got, reads = [], []

    async def feed(ctx):
        ctx.set(xb.cmd.payload, {"base": 0, "stride": 3, "tokens": tokens, "k": k, "heads": 1,
                                 "nheads": nheads, "head_step": 9, "chain": 1})  # fmt: skip
        ctx.set(xb.cmd.valid, 1)
        await ctx.tick().until(xb.cmd.ready)
        ctx.set(xb.cmd.valid, 0)
        for data, count, last in beats:
            while pick.random() < 0.3:
                await ctx.tick()
            ctx.set(xb.chain.payload, {"data": [int(b) for b in data], "count": count,
                                       "last": last})  # fmt: skip
            ctx.set(xb.chain.valid, 1)
            await ctx.tick().until(xb.chain.ready)
            ctx.set(xb.chain.valid, 0)

    async def drain(ctx):
        for _ in range(2000):  # (valid and req are registers: the handshake at the tick)
            if len(got) == len(want):
                break
            ready = pick.random() >= 0.3
            ctx.set(xb.o.ready, ready)
            reads.append(ctx.get(xb.mem.req))
            if ready and ctx.get(xb.o.valid):
                got.append(ctx.get(xb.o.payload))
            await ctx.tick()
        ctx.set(xb.o.ready, 0)
        for _ in range(4):
            await ctx.tick()
        assert ctx.get(xb.idle)

    sim = Simulator(xb)
    sim.add_clock(1e-8)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(drain)
    sim.run()
    assert not any(reads), "the chain job read the scratchpad"
    assert len(got) == len(want), f"{len(got)} beats of {len(want)}"
    for j, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"beat {j}: {g:#x} != {w:#x}"


# A 64-byte datapath (4 banks) whose LayerNorm (32 lanes) is narrower than the X beat: its
# beats are packed two to an X beat (ChainPacker); its softmax (64 lanes) is the X beat
PACK_TOP = CHAIN_TOP.model_copy(
    update={
        "nonlinear": CHAIN_TOP.nonlinear.model_copy(
            update={"softmax_lanes": 64, "layernorm_lanes": 32, "max_channels": 128}
        ),
        "datapath_bytes": 64,
    }
)


def _model_pair(design, unit, mm) -> tuple[int, int]:
    """The cycle model's price of ``unit`` then ``mm``, chained and not
    (cost.program_cycles: each instruction with its overhead)."""
    from vitaccel.dse.cost import program_cycles

    return program_cycles([unit, mm], design), program_cycles(_unchained([unit, mm]), design)


def _packed_ln_pair(rng, ch: int):
    """LAYERNORM(CHAIN) of 7 tokens x ``ch`` channels -> a shared MATMUL (W from DDR), N = 40,
    on PACK_TOP (rows of ``ch`` bytes: 5 words of stride, 1 or 2 X beats a row)."""
    design = PACK_TOP
    img = _Image()
    tokens, n, stride = 7, 40, 8
    x = img.add(_random_words(rng, tokens * stride))
    par = img.add(_ln_block(rng, ch))
    w = img.add(_weights(rng, design, n, ch))
    setup = [isa.load(spm=0, words=tokens * stride, ddr=x),
             isa.load(spm=300, words=ch // 2, ddr=par)]  # fmt: skip
    unit = _layernorm(tokens, ch, src=0, dst=64, stride=stride, params=300)
    mm = isa.matmul(x=64, x_stride=stride, tokens=tokens, k=ch, n=n, y=130, y_stride=3,
                    w_ddr=w)  # fmt: skip
    return design, img, setup, unit, mm


@pytest.mark.slow  # the chain hardware is off in the product: its pairs on request
@pytest.mark.parametrize("ch", [96, 40])
def test_narrow_layernorm_chained_into_a_wide_x_beat(ch):
    """A 32-lane LAYERNORM(CHAIN) -> MATMUL on a 64-byte datapath (engine_timing.unit_chains:
    32 divides 64): the unit's beats packed into X beats, rows of 96 (three unit beats, two
    X beats, the second of 32 bytes) or 40 (two unit beats into one X beat of 40): bit-exact
    with and without the chain, faster chained, and the cycle model's pair price within 5 %
    of the RTL's."""
    assert TopParams(PACK_TOP).chain_lanes == (32, 64)
    design, img, setup, unit, mm = _packed_ln_pair(np.random.default_rng(10 + ch), ch)
    res = _check_pair(f"LN(32 lanes) 7x{ch} -> MATMUL T7 K{ch} N40, 64-byte X", design, img,
                      setup, unit, mm)  # fmt: skip
    model, model_plain = _model_pair(design, unit, mm)
    print(f"  pair: RTL chained {res['chained']}, unchained {res['unchained']} (Amaranth sim); "
          f"cycle model chained {model}, unchained {model_plain}")  # fmt: skip
    assert abs(model - res["chained"]) <= 0.05 * res["chained"], (model, res)


@pytest.mark.slow  # the chain hardware is off in the product: its pairs on request
def test_narrow_layernorm_and_wide_softmax_chained_in_one_program():
    """On PACK_TOP both units chain, each through its own reader / writer / fork (the
    LayerNorm's through its packer), the X builder taking the chained one's beats: a
    LAYERNORM(CHAIN) 7x96 -> MATMUL, then a SOFTMAX(CHAIN) 2x11x11 -> P x V (2 heads, W from
    the scratchpad), then the LayerNorm pair again: the scratchpad equals the interpreter's
    byte for byte (AXI stalls) and the program without CHAIN's."""
    rng = np.random.default_rng(21)
    design, img, setup, ln, mm = _packed_ln_pair(rng, 96)
    heads, tokens, dh = 2, 11, 16
    logits = img.add(_random_words(rng, heads * tokens))
    vt = img.add(_random_words(rng, heads * dh))
    setup += [isa.load(spm=200, words=heads * tokens, ddr=logits),
              isa.load(spm=230, words=heads * dh, ddr=vt)]  # fmt: skip
    sm = isa.softmax(src=200, src_stride=1, rows=heads * tokens, cols=tokens, dst=270,
                     dst_stride=1, in_shift=4)  # fmt: skip
    pv = isa.matmul(x=270, x_stride=1, tokens=tokens, k=tokens, n=dh, y=400, y_stride=1,
                    w_spm=230, w_stride=1, mult=3, shift=9, heads=heads,
                    head_x_step=tokens, head_w_step=dh, head_y_step=tokens,
                    x_unsigned=True)  # fmt: skip
    sm = sm.replace(flags=sm.flags | isa.SoftmaxFlags.CHAIN)
    assert isa.chain_fits(sm, pv) is None
    prog = [*setup, ln, mm, sm, pv, ln, mm]
    chained = _spm_equals_the_interpreter(design, img.with_program([*prog, _dump()]))
    plain = _spm_equals_the_interpreter(design, img.with_program([*_unchained(prog), _dump()]))
    assert chained == plain
    cyc = [_run(design, img.with_program(p))[1]["cycles"] for p in (prog, _unchained(prog))]
    print(f"LN(32) + SOFTMAX(64) chains on a 64-byte X: {cyc[0]} cycles chained, {cyc[1]} not "
          "(RTL, Amaranth sim)")  # fmt: skip
    assert cyc[0] < cyc[1]


def test_chain_packer_packs_rows_in_order():
    """ChainPacker(lanes=32, width=64) alone: rows of 96, 40, 64 and 20 bytes as 32-byte
    beats (random pauses both sides) come out as 64-byte beats of the row's bytes in order,
    ``count`` the row's bytes in the beat, ``last`` at its end, the unfilled slot zero."""
    import random

    from vitaccel.rtl.chain_pack import ChainPacker

    lanes, width = 32, 64
    dut = ChainPacker(lanes=lanes, width=width)
    rng = np.random.default_rng(11)
    pick = random.Random(2)
    beats, want = [], []
    for cols in (96, 40, 64, 20, 96):
        row = rng.integers(0, 256, cols, dtype=np.uint8)
        for at in range(0, cols, lanes):
            part = row[at : at + lanes]
            beats.append((np.pad(part, (0, lanes - len(part))), len(part), at + lanes >= cols))
        for at in range(0, cols, width):
            part = row[at : at + width]
            filled = -(-len(part) // lanes) * lanes  # (bytes past count in its slot: as sent)
            want.append((bytes(np.pad(part, (0, width - len(part)))), len(part),
                         at + width >= cols, filled))  # fmt: skip
    got = []

    async def feed(ctx):
        for data, count, last in beats:
            while pick.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.i.payload, {"data": [int(b) for b in data], "count": count, "last": last})
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def drain(ctx):
        for _ in range(500):
            if len(got) == len(want):
                break
            ready = pick.random() >= 0.3
            ctx.set(dut.o.ready, ready)
            if ready and ctx.get(dut.o.valid):
                p = ctx.get(dut.o.payload)
                got.append((bytes(int(b) for b in p.data), int(p.count), int(p.last)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(drain)
    sim.run()
    assert len(got) == len(want), f"{len(got)} beats of {len(want)}"
    for j, (g, (data, count, last, _)) in enumerate(zip(got, want, strict=True)):
        assert (g[1], g[2]) == (count, last), f"beat {j}: count/last {g[1:]} != {count, last}"
        assert g[0] == data, f"beat {j}: {g[0].hex()} != {data.hex()}"
