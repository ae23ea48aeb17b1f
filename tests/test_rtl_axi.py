"""AXI register file and DMA engines in Amaranth's simulator: bus models with random stalls and
protocol checks. (The cocotbext-axi AxiRam/AxiLiteMaster runs are in test_sim_top.py, through
the whole accelerator.)"""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from vitaccel.boards.vivado import check_top_ports
from vitaccel.isa import ACCEL_ID, Reg
from vitaccel.rtl.axi import (
    DMA,
    AXI4Signature,
    DMAReader,
    DMAWriter,
    RegisterFile,
    connect_prefixed,
    prefixed_members,
)
from vitaccel.rtl.verilog import to_verilog

# ---- Amaranth-simulator bus models ------------------------------------------------------------


class AxiRamModel:
    """An AXI4 slave memory for Amaranth testbenches (one coroutine drives all five channels).

    Random stalls on every ready/valid it drives; records protocol violations in ``errors``
    (payload changing while valid and not ready, bursts longer than 16 beats or crossing 4 KiB,
    missing or misplaced WLAST) and every burst in ``bursts``. Read data comes back after a
    random latency of a few cycles, in order.
    """

    def __init__(self, bus, size: int, *, stall: float = 0.0, seed: int = 0, latency=(1, 6)):
        self.bus = bus
        self.mem = bytearray(size)
        self.stall = stall
        self.rng = random.Random(seed)
        self.latency = latency
        self.errors: list[str] = []
        self.bursts: list[tuple[str, int, int]] = []
        self.has_read = hasattr(bus, "araddr")
        self.has_write = hasattr(bus, "awaddr")

    def _go(self) -> bool:
        return self.rng.random() >= self.stall

    def _check_burst(self, kind, addr, beats, size, burst):
        self.bursts.append((kind, addr, beats))
        if beats > 16:
            self.errors.append(f"{kind} burst of {beats} beats at {addr:#x}")
        if (addr & 0xFFF) + beats * 16 > 0x1000:
            self.errors.append(f"{kind} burst at {addr:#x} of {beats} beats crosses 4 KiB")
        if size != 4 or burst != 1 or addr % 16:
            self.errors.append(f"{kind} burst at {addr:#x}: size {size}, burst {burst}")

    async def run(self, ctx):
        """Add with ``sim.add_testbench(ram.run, background=True)``. Outputs are set after each
        edge; the handshakes are sampled at the edge (``tick().sample``), so the order in which
        other testbenches set their inputs does not matter."""
        bus = self.bus
        rd, wr = self.has_read, self.has_write
        names = []
        if rd:
            names += ["arvalid", "arready", "araddr", "arlen", "arsize", "arburst",
                      "rvalid", "rready"]  # fmt: skip
        if wr:
            names += ["awvalid", "awready", "awaddr", "awlen", "awsize", "awburst",
                      "wvalid", "wready", "wdata", "wstrb", "wlast", "bvalid", "bready"]  # fmt: skip
        cycle = 0
        rq = []  # [ready_cycle, addr, beats]
        r_beat = 0
        r_out = False
        aw_q = []  # (addr, beats)
        w_beat = 0
        b_q = []  # cycle at which a B response may go out
        b_out = False
        held = {}
        while True:
            if rd:
                ctx.set(bus.arready, self._go())
                if not r_out and rq and rq[0][0] <= cycle and self._go():
                    _, addr, beats = rq[0]
                    a = addr + 16 * r_beat
                    ctx.set(bus.rdata, int.from_bytes(self.mem[a : a + 16], "little"))
                    ctx.set(bus.rlast, r_beat == beats - 1)
                    ctx.set(bus.rresp, 0)
                    r_out = True
                ctx.set(bus.rvalid, r_out)
            if wr:
                ctx.set(bus.awready, self._go())
                ctx.set(bus.wready, bool(aw_q) and self._go())
                if not b_out and b_q and b_q[0] <= cycle:
                    b_out = True
                ctx.set(bus.bvalid, b_out)
                ctx.set(bus.bresp, 0)
            sampled = await ctx.tick().sample(*(getattr(bus, n) for n in names))
            v = dict(zip(names, (int(x) for x in sampled[2:]), strict=True))  # after clk, rst
            for ch, pay in (("ar", ("araddr", "arlen")), ("aw", ("awaddr", "awlen")),
                            ("w", ("wdata", "wlast", "wstrb"))):  # fmt: skip
                if pay[0] not in v:
                    continue
                now = tuple(v[n] for n in pay)
                if ch in held and held[ch] != now and v[ch + "valid"]:
                    self.errors.append(f"{ch} payload changed while valid at cycle {cycle}")
                if ch in held and not v[ch + "valid"]:
                    self.errors.append(f"{ch}valid dropped before ready at cycle {cycle}")
                held.pop(ch, None)
                if v[ch + "valid"] and not v[ch + "ready"]:
                    held[ch] = now
            if rd and v["arvalid"] and v["arready"]:
                addr, beats = v["araddr"], v["arlen"] + 1
                self._check_burst("read", addr, beats, v["arsize"], v["arburst"])
                rq.append((cycle + self.rng.randint(*self.latency), addr, beats))
            if rd and v["rvalid"] and v["rready"]:
                r_out = False
                r_beat += 1
                if r_beat == rq[0][2]:
                    rq.pop(0)
                    r_beat = 0
            if wr:
                if v["awvalid"] and v["awready"]:
                    addr, beats = v["awaddr"], v["awlen"] + 1
                    self._check_burst("write", addr, beats, v["awsize"], v["awburst"])
                    aw_q.append((addr, beats))
                if v["wvalid"] and v["wready"]:
                    addr, beats = aw_q[0]
                    a = addr + 16 * w_beat
                    data = v["wdata"].to_bytes(16, "little")
                    for i in range(16):
                        if v["wstrb"] >> i & 1:
                            self.mem[a + i] = data[i]
                    w_beat += 1
                    if bool(v["wlast"]) != (w_beat == beats):
                        self.errors.append(f"WLAST {v['wlast']} on beat {w_beat} of {beats}")
                    if w_beat == beats:
                        aw_q.pop(0)
                        w_beat = 0
                        b_q.append(cycle + self.rng.randint(1, 4))
                if v["bvalid"] and v["bready"]:
                    b_q.pop(0)
                    b_out = False
            cycle += 1


class AxiLiteHost:
    """AXI4-Lite master for Amaranth testbenches (one access at a time)."""

    def __init__(self, bus):
        self.bus = bus

    async def write(self, ctx, addr: int, value: int, strb: int = 0xF, *, at_response=None):
        """Write and return BRESP; with ``at_response`` (a signal), (BRESP, that signal's
        value in the cycle the response is taken), what a host sees with the response."""
        b = self.bus
        ctx.set(b.awaddr, addr)
        ctx.set(b.wdata, value)
        ctx.set(b.wstrb, strb)
        ctx.set(b.awvalid, 1)
        ctx.set(b.wvalid, 1)
        await ctx.tick().until(b.awready & b.wready)
        ctx.set(b.awvalid, 0)
        ctx.set(b.wvalid, 0)
        ctx.set(b.bready, 1)
        if at_response is None:
            (resp,) = await ctx.tick().sample(b.bresp).until(b.bvalid)
        else:
            resp, seen = await ctx.tick().sample(b.bresp, at_response).until(b.bvalid)
        ctx.set(b.bready, 0)
        return resp if at_response is None else (resp, seen)

    async def read(self, ctx, addr: int) -> int:
        b = self.bus
        ctx.set(b.araddr, addr)
        ctx.set(b.arvalid, 1)
        await ctx.tick().until(b.arready)
        ctx.set(b.arvalid, 0)
        ctx.set(b.rready, 1)
        (data,) = await ctx.tick().sample(b.rdata).until(b.rvalid)
        ctx.set(b.rready, 0)
        return data


# ---- register file ----------------------------------------------------------------------------


def test_register_file_map_start_done_irq():
    dut = RegisterFile(addr_width=16, config=0x1234_0481)
    host = AxiLiteHost(dut.s_axil)
    seen = {"start": 0}

    async def count_starts(ctx):
        async for _, _, start in ctx.tick().sample(dut.start):
            seen["start"] += start

    async def tb(ctx):
        assert await host.read(ctx, Reg.ID) == ACCEL_ID
        assert await host.read(ctx, Reg.CONFIG) == 0x1234_0481
        await host.write(ctx, Reg.PROG_ADDR_LO, 0x8000_0040)
        await host.write(ctx, Reg.PROG_ADDR_HI, 0x12)
        await host.write(ctx, Reg.DATA_BASE_LO, 0xFFFF_FFFF)
        await host.write(ctx, Reg.DATA_BASE_LO, 0x0000_AB00, strb=0b0010)  # one byte lane
        assert ctx.get(dut.prog_addr) == 0x12_8000_0040
        assert ctx.get(dut.data_base) == 0xFFFF_ABFF
        assert await host.read(ctx, Reg.PROG_ADDR_HI) == 0x12
        assert await host.read(ctx, 0x3C) == 0  # unmapped
        # offsets past the map read 0, not the register their low bits name
        for alias in (0x40 + Reg.ID, 0x1000 + Reg.PROG_ADDR_HI, 0x8000 + Reg.CONFIG):
            assert await host.read(ctx, alias) == 0, hex(alias)
        # START with IRQ_ENABLE
        await host.write(ctx, Reg.CTRL, 0b011)
        assert seen["start"] == 1
        ctx.set(dut.busy, 1)
        await host.write(ctx, Reg.CTRL, 0b011)  # ignored while busy
        assert seen["start"] == 1
        ctx.set(dut.cycles, 0x5_0000_0007)
        ctx.set(dut.pc, 9)
        assert await host.read(ctx, Reg.STATUS) == 0b001
        assert await host.read(ctx, Reg.PC) == 9
        assert await host.read(ctx, Reg.CYCLES_LO) == 7
        ctx.set(dut.cycles, 0x6_0000_0000)  # HI was latched with LO
        assert await host.read(ctx, Reg.CYCLES_HI) == 5
        assert not ctx.get(dut.irq)
        ctx.set(dut.done_set, 1)
        ctx.set(dut.busy, 0)
        await ctx.tick()
        ctx.set(dut.done_set, 0)
        assert ctx.get(dut.irq)
        assert await host.read(ctx, Reg.STATUS) == 0b010
        await host.write(ctx, Reg.CTRL, 0b110)  # IRQ_CLEAR (keeps IRQ_ENABLE)
        assert not ctx.get(dut.irq)
        assert await host.read(ctx, Reg.STATUS) == 0b000
        ctx.set(dut.error_set, 1)
        await ctx.tick()
        ctx.set(dut.error_set, 0)
        assert await host.read(ctx, Reg.STATUS) == 0b110
        assert ctx.get(dut.irq)
        await host.write(ctx, Reg.CTRL, 0b001)  # START without IRQ_ENABLE clears DONE/ERROR
        assert seen["start"] == 2
        assert await host.read(ctx, Reg.STATUS) == 0b000
        ctx.set(dut.done_set, 1)
        await ctx.tick()
        ctx.set(dut.done_set, 0)
        assert not ctx.get(dut.irq)
        # a new START clears the last run's DONE with the write: once its response is back,
        # neither the IRQ nor STATUS shows DONE (the host's wait loop checks at once)
        await host.write(ctx, Reg.CTRL, 0b010)  # IRQ_ENABLE: the old DONE raises the IRQ
        assert ctx.get(dut.irq)
        _, irq_at_response = await host.write(ctx, Reg.CTRL, 0b011, at_response=dut.irq)
        assert not irq_at_response
        assert await host.read(ctx, Reg.STATUS) & 0b010 == 0
        assert seen["start"] == 3

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(count_starts)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize(
    "cls, kwargs, exc",
    [
        (RegisterFile, {"addr_width": 11}, ValueError),
        (RegisterFile, {"config": -1}, ValueError),
        (DMAReader, {"data_width": 64}, ValueError),
        (DMAReader, {"fifo_depth": 8}, ValueError),
        (DMAWriter, {"words_bits": 0}, ValueError),
        (DMAWriter, {"addr_width": 40.0}, TypeError),
    ],
)
def test_rejects_bad_parameters(cls, kwargs, exc):
    with pytest.raises(exc, match=next(iter(kwargs))):
        cls(**kwargs)


# ---- DMA engines ------------------------------------------------------------------------------


def _run_dma(cmds_rd, cmds_wr, wr_words, *, stall, seed, mem_init=b"", size=1 << 16):
    """Run a DMA: read commands (their words collected) and write commands (fed ``wr_words``)."""
    dut = DMA(addr_width=32, words_bits=16, fifo_depth=32)
    ram = AxiRamModel(dut.bus, size, stall=stall, seed=seed)
    ram.mem[: len(mem_init)] = mem_init
    rng = random.Random(seed + 1)
    got = []
    done = {"rd": False, "wr": False, "cycles": 0}

    async def reader(ctx):
        for addr, words in cmds_rd:
            ctx.set(dut.rd_cmd.payload, {"addr": addr, "words": words})
            ctx.set(dut.rd_cmd.valid, 1)
            await ctx.tick().until(dut.rd_cmd.ready)
            ctx.set(dut.rd_cmd.valid, 0)
            for k in range(words):
                while rng.random() < stall:
                    await ctx.tick()
                ctx.set(dut.rd.ready, 1)
                (p,) = await ctx.tick().sample(dut.rd.payload).until(dut.rd.valid)
                ctx.set(dut.rd.ready, 0)
                got.append(p.data)
                assert p.last == (k == words - 1)
        done["rd"] = True

    async def writer(ctx):
        words_iter = iter(wr_words)
        for addr, words in cmds_wr:
            ctx.set(dut.wr_cmd.payload, {"addr": addr, "words": words})
            ctx.set(dut.wr_cmd.valid, 1)
            await ctx.tick().until(dut.wr_cmd.ready)
            ctx.set(dut.wr_cmd.valid, 0)
            for _ in range(words):
                while rng.random() < stall:
                    await ctx.tick()
                ctx.set(dut.wr.payload, next(words_iter))
                ctx.set(dut.wr.valid, 1)
                await ctx.tick().until(dut.wr.ready)
                ctx.set(dut.wr.valid, 0)
        await ctx.tick().until(dut.wr_idle)
        done["wr"] = True

    async def watchdog(ctx):
        # also: the reader must not look idle while a word it received is still inside
        pending = 0
        bus = dut.bus
        for cycle in range(200_000):
            if done["rd"] and done["wr"]:
                done["cycles"] = cycle
                return
            _, _, rv, rr, ov, orr, idle = await ctx.tick().sample(
                bus.rvalid, bus.rready, dut.rd.valid, dut.rd.ready, dut.rd_idle
            )
            if idle and pending:
                raise AssertionError(f"rd_idle with {pending} words inside at cycle {cycle}")
            pending += (rv and rr) - (ov and orr)
        raise AssertionError("DMA did not finish")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(ram.run, background=True)
    sim.add_testbench(reader, background=True)
    sim.add_testbench(writer, background=True)
    sim.add_testbench(watchdog)
    sim.run()
    return ram, got, done["cycles"]


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_dma_reads_split_at_4k_and_16_beats(stall):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    cmds = [(0x0FC0, 40), (0x1000, 1), (0x2F10, 300), (0x0040, 16), (0x0000, 17)]
    ram, got, _ = _run_dma(cmds, [], [], stall=stall, seed=3, mem_init=image)
    assert not ram.errors, ram.errors[:5]
    want = []
    for addr, words in cmds:
        want += [
            int.from_bytes(image[addr + 16 * k : addr + 16 * k + 16], "little")
            for k in range(words)
        ]
    assert got == want
    # bursts: 4 up to the 4 KiB boundary at 0x1000, then 16 + 16 + 4
    assert ram.bursts[:4] == [("read", 0x0FC0, 4), ("read", 0x1000, 16), ("read", 0x1100, 16),
                              ("read", 0x1200, 4)]  # fmt: skip
    assert all(beats <= 16 for _, _, beats in ram.bursts)


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_dma_writes(stall):
    rng = random.Random(7)
    cmds = [(0x0FE0, 35), (0x3000, 1), (0x4010, 260)]
    words = [rng.getrandbits(128) for _ in range(sum(w for _, w in cmds))]
    ram, _, _ = _run_dma([], cmds, words, stall=stall, seed=5)
    assert not ram.errors, ram.errors[:5]
    it = iter(words)
    for addr, n in cmds:
        for k in range(n):
            assert int.from_bytes(ram.mem[addr + 16 * k : addr + 16 * k + 16], "little") == next(it)
    assert ram.mem[0x0FD0:0x0FE0] == bytes(16)  # nothing written outside the commands
    assert all(beats <= 16 for _, _, beats in ram.bursts)


def test_dma_read_throughput_without_stalls():
    ram, got, cycles = _run_dma([(0, 512)], [], [], stall=0.0, seed=1)
    assert not ram.errors
    assert len(got) == 512
    # The testbench takes one word per two cycles (set ready, tick until valid): the engine
    # must never be the bottleneck, i.e. < 2 cycles per word plus the first latency.
    assert cycles < 2 * 512 + 40, cycles


def test_prefixed_ports_give_vivado_names():
    class Top(wiring.Component):
        def __init__(self):
            self.dma = DMA()
            self.regs = RegisterFile()
            super().__init__(
                {
                    **prefixed_members(self.dma.bus.signature, "m_axi_"),
                    **prefixed_members(self.regs.s_axil.signature, "s_axil_"),
                }
            )

        def elaborate(self, platform):
            m = Module()
            m.submodules.dma = self.dma
            m.submodules.regs = self.regs
            connect_prefixed(m, self, "m_axi_", self.dma.bus)
            connect_prefixed(m, self, "s_axil_", self.regs.s_axil)
            return m

    top = Top()
    assert top.signature.members["m_axi_awaddr"].flow == Out
    assert top.signature.members["m_axi_rdata"].flow == In
    assert top.signature.members["s_axil_awaddr"].flow == In
    assert top.signature.members["s_axil_rdata"].flow == Out
    assert set(AXI4Signature().members) <= {n[len("m_axi_") :] for n in top.signature.members}
    problems = check_top_ports(to_verilog(top, "top"), "top")
    assert problems == ["missing port irq (out, 1 bit)"], problems
