"""AXI side of the accelerator: host register file (AXI4-Lite slave) and the DDR DMA (AXI4 master).

* :class:`AXI4LiteSignature`, :class:`AXI4Signature` (and its read/write halves) describe the
  two buses from the master's side, with the standard AMBA signal names; the top flips the
  lite one (it is a slave there) and renames the ports ``s_axil_*`` / ``m_axi_*``.
* :class:`RegisterFile`: the registers of docs/isa.md (CTRL, STATUS, PROG_ADDR, DATA_BASE,
  CYCLES, PC, ID, CONFIG) and ``irq``.
* :class:`DMAReader`: (byte address, words) commands -> a stream of 128-bit words, INCR bursts
  of up to 16 beats that never cross a 4 KiB boundary; a credit counter lets a burst out only
  when its beats fit the output FIFO, so ``rready`` never stalls the interconnect.
* :class:`DMAWriter`: (byte address, words) commands + a stream of words -> write bursts;
  burst lengths travel from the AW side to the W side through a small FIFO.
* :class:`DMA`: both engines on one :class:`AXI4Signature` master.

Addresses given to the engines must be 16-byte aligned (the low 4 bits are ignored).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from vitaccel.isa import (
    ACCEL_ID,
    WORD_BYTES,  # AXI data beat = scratchpad word
    Reg,
)
from vitaccel.rtl.common import CheckedComponent, check_int, check_limits
from vitaccel.rtl.skid import SkidBuffer

__all__ = [
    "AXI4LiteSignature",
    "AXI4ReadSignature",
    "AXI4WriteSignature",
    "AXI4Signature",
    "RegisterFile",
    "host_members",
    "DMAReader",
    "DMAWriter",
    "DMA",
    "WORD_BYTES",
    "MAX_BURST",
    "dma_cmd_layout",
    "read_word_layout",
    "connect_subset",
    "prefixed_members",
    "connect_prefixed",
]

MAX_BURST = 16  # beats per burst (256 bytes); AXI4 allows 256, 16 keeps the interconnect fair
OKAY, SLVERR = 0b00, 0b10
BURST_INCR = 0b01
# Normal non-cacheable bufferable: what Xilinx masters use towards the HP ports.
AXCACHE = 0b0011


# ---- bus signatures --------------------------------------------------------------------------


class _BusSignature(wiring.Signature):
    """A bus signature told apart by its address and data widths."""

    def __eq__(self, other):
        return (
            type(other) is type(self)
            and other.addr_width == self.addr_width
            and other.data_width == self.data_width
        )

    def __repr__(self):
        return f"{type(self).__name__}(addr_width={self.addr_width}, data_width={self.data_width})"


class AXI4LiteSignature(_BusSignature):
    """AXI4-Lite from the master's side (32-bit data); flip it for a slave.

    Members are the AMBA names without prefix: ``awaddr awvalid awready wdata wstrb wvalid
    wready bresp bvalid bready araddr arvalid arready rdata rresp rvalid rready``.
    """

    def __init__(self, *, addr_width: int = 16, data_width: int = 32):
        self.addr_width = check_int("addr_width", addr_width, 1, 64)
        if data_width not in (32, 64):
            raise ValueError(f"AXI4-Lite data_width must be 32 or 64, not {data_width!r}")
        self.data_width = data_width
        super().__init__(
            {
                "awaddr": Out(addr_width), "awvalid": Out(1), "awready": In(1),
                "wdata": Out(data_width), "wstrb": Out(data_width // 8),
                "wvalid": Out(1), "wready": In(1),
                "bresp": In(2), "bvalid": In(1), "bready": Out(1),
                "araddr": Out(addr_width), "arvalid": Out(1), "arready": In(1),
                "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
            }
        )  # fmt: skip


def _read_members(addr_width: int, data_width: int) -> dict:
    return {
        "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3), "arburst": Out(2),
        "arcache": Out(4), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
        "rdata": In(data_width), "rresp": In(2), "rlast": In(1), "rvalid": In(1), "rready": Out(1),
    }  # fmt: skip


def _write_members(addr_width: int, data_width: int) -> dict:
    return {
        "awaddr": Out(addr_width), "awlen": Out(8), "awsize": Out(3), "awburst": Out(2),
        "awcache": Out(4), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
        "wvalid": Out(1), "wready": In(1),
        "bresp": In(2), "bvalid": In(1), "bready": Out(1),
    }  # fmt: skip


class _AXI4Base(_BusSignature):
    _members = None

    def __init__(self, *, addr_width: int = 40, data_width: int = 128):
        self.addr_width = check_int("addr_width", addr_width, 12, 64)
        if data_width not in (32, 64, 128, 256, 512, 1024):
            raise ValueError(f"AXI4 data_width must be a power of two 32..1024, not {data_width!r}")
        self.data_width = data_width
        super().__init__(self._members(addr_width, data_width))


class AXI4ReadSignature(_AXI4Base):
    """The AR and R channels of an AXI4 master (no IDs: one ID, in-order responses)."""

    _members = staticmethod(_read_members)


class AXI4WriteSignature(_AXI4Base):
    """The AW, W and B channels of an AXI4 master (no IDs)."""

    _members = staticmethod(_write_members)


class AXI4Signature(_AXI4Base):
    """A full AXI4 master without ID signals: ``aw* w* b* ar* r*`` with AMBA names.

    Besides the required signals it has ``awcache awprot arcache arprot`` (constant).
    """

    _members = staticmethod(lambda a, d: {**_write_members(a, d), **_read_members(a, d)})


def connect_subset(m: Module, full, part) -> None:
    """Join the members of ``part`` (a read or write half, master side) to ``full`` (master side
    of the whole bus): outputs of ``part`` drive ``full``, inputs of ``full`` drive ``part``."""
    for name, member in part.signature.members.items():
        if member.flow == Out:
            m.d.comb += getattr(full, name).eq(getattr(part, name))
        else:
            m.d.comb += getattr(part, name).eq(getattr(full, name))


# ---- register file ---------------------------------------------------------------------------


def host_members(addr_width: int) -> dict:
    """The register file's AXI4-Lite slave and what it shows of the controller: the members
    :class:`RegisterFile` and the controller's ``Status`` (vitaccel.rtl.control) share."""
    return {
        "s_axil": In(AXI4LiteSignature(addr_width=addr_width)),
        "start": Out(1),
        "prog_addr": Out(64),
        "data_base": Out(64),
        "busy": In(1),
        "pc": In(32),
        "irq": Out(1),
    }


class RegisterFile(CheckedComponent):
    """Host-visible registers (docs/isa.md) behind an AXI4-Lite slave.

    One write is taken when both AW and W are valid (the slave may wait for both); reads
    answer two cycles after AR. Unmapped offsets read 0 and ignore writes (OKAY response).

    Clarifications of docs/isa.md implemented here (docs/top.md lists them):

    * CTRL bit1 IRQ_ENABLE holds the value of the last CTRL write (write CTRL = 0b011 to start
      with interrupts); bit2 IRQ_CLEAR clears DONE (and so ``irq``).
    * Reading CYCLES_LO latches CYCLES_HI, so LO-then-HI gives a consistent 64-bit value.
    * STATUS.ERROR is set by ``error_set`` (bad opcode or an AXI error response); an error ends
      the run with DONE set too, so a host waiting for DONE/irq never hangs.

    Parameters
    ----------
    addr_width : int
        Byte address width of the AXI4-Lite port (12..16).
    config : int
        The value of the CONFIG register.

    Members
    -------
    s_axil : ``In(AXI4LiteSignature(addr_width=addr_width))``
    start : ``Out(1)``
        One-cycle pulse: CTRL written with START while not busy.
    prog_addr, data_base : ``Out(64)``
    busy : ``In(1)``
        The controller is running (STATUS.BUSY).
    done_set, error_set : ``In(1)``
        Pulses from the controller: END reached / run ended with an error.
    cycles : ``In(64)``
    pc : ``In(32)``
    irq : ``Out(1)``
    """

    @classmethod
    def check(cls, *, addr_width, config):
        check_int("addr_width", addr_width, 12, 16)
        check_int("config", config, 0, (1 << 32) - 1)

    def __init__(self, *, addr_width: int = 16, config: int = 0):
        self.addr_width = addr_width
        self.config = config
        super().__init__(
            {**host_members(addr_width), "done_set": In(1), "error_set": In(1), "cycles": In(64)}
        )

    def elaborate(self, platform):
        m = Module()
        bus = self.s_axil
        irq_enable = Signal()
        done = Signal()
        error = Signal()
        cycles_hi_latch = Signal(32)

        # -- write channel: take AW and W together, answer on B --
        take_w = bus.awvalid & bus.wvalid & ~bus.bvalid
        m.d.comb += [bus.awready.eq(take_w), bus.wready.eq(take_w), bus.bresp.eq(OKAY)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        with m.If(take_w):
            m.d.sync += bus.bvalid.eq(1)

        start_req = Signal()
        irq_clear = Signal()
        with m.If(take_w):
            with m.If((bus.awaddr[2 : self.addr_width]) == (Reg.CTRL >> 2)):
                with m.If(bus.wstrb[0]):
                    m.d.comb += [start_req.eq(bus.wdata[0]), irq_clear.eq(bus.wdata[2])]
                    m.d.sync += irq_enable.eq(bus.wdata[1])
            for name, reg, base in (
                ("PROG_ADDR_LO", self.prog_addr, 0),
                ("PROG_ADDR_HI", self.prog_addr, 32),
                ("DATA_BASE_LO", self.data_base, 0),
                ("DATA_BASE_HI", self.data_base, 32),
            ):
                with m.If(bus.awaddr[2 : self.addr_width] == (Reg[name] >> 2)):
                    for b in range(4):
                        with m.If(bus.wstrb[b]):
                            m.d.sync += reg[base + 8 * b : base + 8 * b + 8].eq(
                                bus.wdata[8 * b : 8 * b + 8]
                            )

        # START while busy is ignored: the run in progress would lose its state. DONE and
        # ERROR clear with the write itself, so a host that sees the write's response and
        # then polls DONE (or waits for the IRQ) never sees the last run's. The controller
        # takes START one cycle later, from a register: the write decode (valid, address
        # compare, strobe, data) and its next-state logic together made a 9-level path, over
        # 250 MHz's 8.5 (docs/dse.md "The clock").
        accept = Signal()
        start_q = Signal()
        m.d.comb += accept.eq(start_req & ~self.busy)
        m.d.sync += start_q.eq(accept)
        m.d.comb += self.start.eq(start_q)
        with m.If(accept):
            m.d.sync += [done.eq(0), error.eq(0)]
        with m.If(irq_clear):
            m.d.sync += done.eq(0)
        with m.If(self.done_set):
            m.d.sync += done.eq(1)
        with m.If(self.error_set):
            m.d.sync += [done.eq(1), error.eq(1)]
        m.d.comb += self.irq.eq(done & irq_enable)

        # -- read channel --
        # A read takes two cycles: the address is registered as the word index (offsets
        # 0x00..0x3C) and "the high bits are zero", then the word is selected; decoding the
        # port's address into RDATA in one cycle was a 7-8-level path.
        index = Signal(4)
        mapped = Signal()
        pending = Signal()
        m.d.comb += [bus.arready.eq(~bus.rvalid & ~pending), bus.rresp.eq(OKAY)]
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [
                index.eq(bus.araddr[2:6]),
                mapped.eq(bus.araddr[6 : self.addr_width] == 0),
                pending.eq(1),
            ]
        with m.If(pending):
            m.d.sync += [bus.rvalid.eq(1), pending.eq(0)]
            words = {
                Reg.STATUS: Cat(self.busy, done, error),
                Reg.PROG_ADDR_LO: self.prog_addr[:32],
                Reg.PROG_ADDR_HI: self.prog_addr[32:],
                Reg.DATA_BASE_LO: self.data_base[:32],
                Reg.DATA_BASE_HI: self.data_base[32:],
                Reg.CYCLES_LO: self.cycles[:32],
                Reg.CYCLES_HI: cycles_hi_latch,
                Reg.PC: self.pc,
                Reg.ID: Const(ACCEL_ID, 32),
                Reg.CONFIG: Const(self.config, 32),
            }
            assert max(words) < 0x40
            with m.Switch(index):
                for reg, value in words.items():
                    with m.Case(reg >> 2):
                        m.d.sync += bus.rdata.eq(Mux(mapped, value, 0))
                with m.Default():
                    m.d.sync += bus.rdata.eq(0)
            with m.If(mapped & (index == Reg.CYCLES_LO >> 2)):
                m.d.sync += cycles_hi_latch.eq(self.cycles[32:])
        return m


# ---- DMA engines -----------------------------------------------------------------------------


def dma_cmd_layout(addr_width: int, words_bits: int) -> data.StructLayout:
    """A DMA command: byte ``addr`` (16-byte aligned) and ``words`` (>= 1) 16-byte words."""
    return data.StructLayout({"addr": unsigned(addr_width), "words": unsigned(words_bits)})


def read_word_layout(data_width: int = 128) -> data.StructLayout:
    """A word from the read engine; ``last`` marks the final word of a command."""
    return data.StructLayout({"data": unsigned(data_width), "last": unsigned(1)})


def _burst_len(m: Module, addr: Signal, remaining: Signal, name: str):
    """Beats of the next burst, min(MAX_BURST, remaining, words to the next 4 KiB boundary),
    as a register (the compare/mux chain stays out of the VALID and address paths).

    Returns ``(beats, stale, beats_next)``: ``beats`` lags ``addr``/``remaining`` by one
    cycle, so the caller marks ``stale`` (a Signal to drive from sync logic) on every change
    of them and holds VALID low while it is set; ``beats_next`` is the value ``beats`` takes
    (for registers kept beside it).
    """
    to_4k = Signal(range(4096 // WORD_BYTES + 1), name=f"{name}_to_4k")
    m.d.comb += to_4k.eq(4096 // WORD_BYTES - addr[4:12])
    limit = Mux(to_4k < MAX_BURST, to_4k, MAX_BURST)
    beats = Signal(range(MAX_BURST + 1), name=f"{name}_beats")
    beats_next = Signal.like(beats, name=f"{name}_beats_next")
    m.d.comb += beats_next.eq(Mux(remaining < limit, remaining, limit))
    m.d.sync += beats.eq(beats_next)
    stale = Signal(name=f"{name}_stale")
    m.d.sync += stale.eq(0)
    return beats, stale, beats_next


class _DMAEngine(CheckedComponent):
    """What the two DMA engines share: the bus, the command stream, ``idle``/``error``
    around the engine's data stream, the widths and their checks. A subclass names its bus
    signature (``BUS``) and the limits of its own sizing parameter (``LIMITS``)."""

    BUS: type[_AXI4Base]
    LIMITS: dict[str, tuple[int, int]]

    @classmethod
    def check(cls, *, addr_width, data_width, words_bits, **sizes):
        check_int("addr_width", addr_width, 12, 64)
        if data_width != 8 * WORD_BYTES:
            raise ValueError(
                f"data_width must be {8 * WORD_BYTES} (the scratchpad word), not {data_width!r}"
            )
        check_int("words_bits", words_bits, 1, 32)
        check_limits(sizes, cls.LIMITS)

    def __init__(self, data: dict, *, addr_width: int, data_width: int, words_bits: int):
        self.addr_width, self.data_width, self.words_bits = addr_width, data_width, words_bits
        super().__init__({
            "bus": Out(self.BUS(addr_width=addr_width, data_width=data_width)),
            "cmd": In(stream.Signature(dma_cmd_layout(addr_width, words_bits))),
            **data,
            "idle": Out(1),
            "error": Out(1),
        })  # fmt: skip


class DMAReader(_DMAEngine):
    """AXI4 read engine: commands in, 128-bit words out, with back-pressure.

    A command ``{addr, words}`` (``words`` >= 1; the low 4 address bits are ignored) is cut
    into INCR bursts of ``min(16, remaining, words to the next 4 KiB boundary)`` beats. A
    burst is requested only when the output FIFO has room for all its beats (credits), so the
    R channel is never back-pressured and up to ``fifo_depth / 16`` bursts are in flight.
    The next command is taken once every beat of the previous one has arrived.

    Parameters
    ----------
    addr_width, data_width : int
        AXI address width (12..64) and data width (128 only).
    words_bits : int
        Width of the command's word count.
    fifo_depth : int
        Output FIFO depth in words (>= 16).

    Members
    -------
    bus : ``Out(AXI4ReadSignature(...))``
    cmd : ``In(stream.Signature(dma_cmd_layout(addr_width, words_bits)))``
    o : ``Out(stream.Signature(read_word_layout()))``
    idle : ``Out(1)``
        No command in progress and every word delivered.
    error : ``Out(1)``
        One-cycle pulse on a read response other than OKAY/EXOKAY.
    """

    BUS = AXI4ReadSignature
    LIMITS = {"fifo_depth": (MAX_BURST, 4096)}

    def __init__(self, *, addr_width: int = 40, data_width: int = 128, words_bits: int = 24,
                 fifo_depth: int = 64):  # fmt: skip
        self.fifo_depth = fifo_depth
        super().__init__({"o": Out(stream.Signature(read_word_layout(data_width)))},
                         addr_width=addr_width, data_width=data_width, words_bits=words_bits)  # fmt: skip

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        # commands come in through a skid buffer: the controller's address arithmetic and
        # this engine's command registers are in different cycles
        m.submodules.cmdq = cmdq = SkidBuffer(self.cmd.payload.shape())
        wiring.connect(m, wiring.flipped(self.cmd), cmdq.i)
        cmd = cmdq.o
        m.submodules.fifo = fifo = SyncFIFOBuffered(
            width=self.data_width + 1, depth=self.fifo_depth
        )

        addr = Signal(self.addr_width)
        remaining = Signal(self.words_bits)  # words not yet requested
        rx_left = Signal(self.words_bits)  # words not yet received
        reserved = Signal(range(self.fifo_depth + 1))  # requested and not yet taken from the FIFO
        beats, stale, beats_next = _burst_len(m, addr, remaining, "rd")
        # the FIFO room a burst of `beats` needs, fifo_depth - beats, kept beside `beats`:
        # the credit test is then one compare (reserved + beats, compared, was the head of a
        # 7-level path through ARVALID into `reserved`)
        room_need = Signal(range(self.fifo_depth + 1))
        m.d.sync += room_need.eq(self.fifo_depth - beats_next)

        # remaining == 0, rx_left == 0 and rx_left == 1 kept in registers: the zero tests of
        # the 24-bit counters were the head of a 10-LUT path through the controller's FSM
        # (set from the counters in the cycle after a command is taken, `fresh`, in which
        # `stale` holds ARVALID low anyway and nothing can arrive: the command's payload
        # comes from the controller's muxes and must not feed the compares directly).
        req_done = Signal(init=1)
        rx_done = Signal(init=1)
        rx_one = Signal()
        fresh = Signal()
        m.d.comb += cmd.ready.eq(req_done & rx_done & ~fresh)
        m.d.sync += fresh.eq(0)
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [
                addr.eq(Cat(Const(0, 4), cmd.payload.addr[4:])),
                remaining.eq(cmd.payload.words),
                rx_left.eq(cmd.payload.words),
                req_done.eq(0),
                rx_done.eq(0),
                fresh.eq(1),
                stale.eq(1),
            ]
        with m.If(fresh):
            m.d.sync += [
                req_done.eq(remaining == 0),
                rx_done.eq(rx_left == 0),
                rx_one.eq(rx_left == 1),
            ]

        # Stable while valid: remaining/addr change only on the handshake, reserved only falls.
        m.d.comb += [
            bus.arvalid.eq(~req_done & ~stale & (reserved <= room_need)),
            bus.araddr.eq(addr),
            bus.arlen.eq(beats - 1),
            bus.arsize.eq(4),  # 16 bytes per beat
            bus.arburst.eq(BURST_INCR),
            bus.arcache.eq(AXCACHE),
            bus.arprot.eq(0),
        ]
        ar_fire = bus.arvalid & bus.arready
        with m.If(ar_fire):
            m.d.sync += [
                addr.eq(addr + (beats << 4)),
                remaining.eq(remaining - beats),
                req_done.eq(remaining == beats),
                stale.eq(1),
            ]

        r_fire = bus.rvalid & bus.rready
        m.d.comb += [
            bus.rready.eq(fifo.w_rdy),
            fifo.w_en.eq(bus.rvalid),
            fifo.w_data.eq(Cat(bus.rdata, rx_one)),
            self.error.eq(r_fire & bus.rresp[1]),
        ]
        with m.If(r_fire):
            m.d.sync += [rx_left.eq(rx_left - 1), rx_done.eq(rx_one), rx_one.eq(rx_left == 2)]

        # words leave through a skid buffer: the consumers' ready (a mux over the
        # controller's states) never reaches the FIFO and credit logic in the same cycle
        m.submodules.outq = outq = SkidBuffer(read_word_layout(self.data_width))
        wiring.connect(m, outq.o, wiring.flipped(self.o))
        o_fire = outq.i.valid & outq.i.ready
        m.d.comb += [
            outq.i.valid.eq(fifo.r_rdy),
            outq.i.payload.data.eq(fifo.r_data[: self.data_width]),
            outq.i.payload.last.eq(fifo.r_data[self.data_width]),
            fifo.r_en.eq(outq.i.ready),
        ]
        m.d.sync += reserved.eq(reserved + Mux(ar_fire, beats, 0) - o_fire)
        # level, not r_rdy: a word just written is not readable for a cycle
        m.d.comb += self.idle.eq(
            req_done & rx_done & ~fresh & (fifo.level == 0) & ~cmdq.busy & ~outq.busy
        )
        return m


class DMAWriter(_DMAEngine):
    """AXI4 write engine: commands + a stream of 128-bit words -> INCR write bursts.

    Bursts are cut as in :class:`DMAReader`. Each burst's length goes from the AW side to the
    W side through a 4-entry FIFO, so addresses run at most 4 bursts ahead of the data; W beats
    are forwarded from ``i`` as they come (``wvalid`` follows ``i.valid``). All byte strobes
    are set. ``idle`` rises when every burst has its write response, i.e. the data is in DDR's
    ordering domain.

    Members
    -------
    bus : ``Out(AXI4WriteSignature(...))``
    cmd : ``In(stream.Signature(dma_cmd_layout(addr_width, words_bits)))``
    i : ``In(stream.Signature(unsigned(128)))``
    idle : ``Out(1)``
    error : ``Out(1)``
        One-cycle pulse on a write response other than OKAY/EXOKAY.
    """

    BUS = AXI4WriteSignature
    LIMITS = {"max_outstanding": (1, 256)}

    def __init__(self, *, addr_width: int = 40, data_width: int = 128, words_bits: int = 24,
                 max_outstanding: int = 16):  # fmt: skip
        self.max_outstanding = max_outstanding
        super().__init__({"i": In(stream.Signature(unsigned(data_width)))},
                         addr_width=addr_width, data_width=data_width, words_bits=words_bits)  # fmt: skip

    def elaborate(self, platform):
        m = Module()
        # commands and data through skid buffers, as in DMAReader
        m.submodules.cmdq = cmdq = SkidBuffer(self.cmd.payload.shape())
        wiring.connect(m, wiring.flipped(self.cmd), cmdq.i)
        cmd = cmdq.o
        m.submodules.inq = inq = SkidBuffer(self.i.payload.shape())
        wiring.connect(m, wiring.flipped(self.i), inq.i)
        src = inq.o
        bus = self.bus
        m.submodules.lens = lens = SyncFIFOBuffered(width=bits_for(MAX_BURST - 1), depth=4)

        addr = Signal(self.addr_width)
        remaining = Signal(self.words_bits)
        outstanding = Signal(range(self.max_outstanding + 1))  # bursts without a B response
        beats, stale, _ = _burst_len(m, addr, remaining, "wr")

        # remaining == 0 kept in a register, as in DMAReader (set in the cycle after a
        # command is taken, `fresh`, while `stale` holds AWVALID low): the 24-bit zero test
        # was the head of a 7.5-level path through AWVALID into `outstanding`
        req_done = Signal(init=1)
        fresh = Signal()
        m.d.comb += cmd.ready.eq(req_done & ~fresh)
        m.d.sync += fresh.eq(0)
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [
                addr.eq(Cat(Const(0, 4), cmd.payload.addr[4:])),
                remaining.eq(cmd.payload.words),
                req_done.eq(0),
                fresh.eq(1),
                stale.eq(1),
            ]
        with m.If(fresh):
            m.d.sync += req_done.eq(remaining == 0)

        m.d.comb += [
            bus.awvalid.eq(~req_done & ~stale & lens.w_rdy & (outstanding < self.max_outstanding)),
            bus.awaddr.eq(addr),
            bus.awlen.eq(beats - 1),
            bus.awsize.eq(4),
            bus.awburst.eq(BURST_INCR),
            bus.awcache.eq(AXCACHE),
            bus.awprot.eq(0),
            lens.w_data.eq(beats - 1),
        ]
        aw_fire = bus.awvalid & bus.awready
        m.d.comb += lens.w_en.eq(aw_fire)
        with m.If(aw_fire):
            m.d.sync += [
                addr.eq(addr + (beats << 4)),
                remaining.eq(remaining - beats),
                req_done.eq(remaining == beats),
                stale.eq(1),
            ]

        beat = Signal(range(MAX_BURST))
        wlast = beat == lens.r_data
        m.d.comb += [
            bus.wvalid.eq(src.valid & lens.r_rdy),
            bus.wdata.eq(src.payload),
            bus.wstrb.eq(Const(-1, self.data_width // 8)),
            bus.wlast.eq(wlast),
            src.ready.eq(bus.wready & lens.r_rdy),
        ]
        w_fire = bus.wvalid & bus.wready
        with m.If(w_fire):
            m.d.sync += beat.eq(Mux(wlast, 0, beat + 1))
        m.d.comb += lens.r_en.eq(w_fire & wlast)

        b_fire = bus.bvalid & bus.bready
        m.d.comb += [bus.bready.eq(1), self.error.eq(b_fire & bus.bresp[1])]
        m.d.sync += outstanding.eq(outstanding + aw_fire - b_fire)
        m.d.comb += self.idle.eq(
            req_done & ~fresh & (lens.level == 0) & (outstanding == 0) & ~cmdq.busy & ~inq.busy
        )
        return m


class DMA(wiring.Component):
    """Both engines on one AXI4 master: ``bus`` carries the reader's AR/R and the writer's AW/W/B.

    Members
    -------
    bus : ``Out(AXI4Signature(addr_width, data_width))``
    rd_cmd, rd : the :class:`DMAReader`'s ``cmd`` and ``o``
    wr_cmd, wr : the :class:`DMAWriter`'s ``cmd`` and ``i``
    rd_idle, wr_idle : ``Out(1)``
    error : ``Out(1)``
        Pulse on an error response on either side.
    """

    def __init__(self, *, addr_width: int = 40, data_width: int = 128, words_bits: int = 24,
                 fifo_depth: int = 64):  # fmt: skip
        self.reader = DMAReader(addr_width=addr_width, data_width=data_width,
                                words_bits=words_bits, fifo_depth=fifo_depth)  # fmt: skip
        self.writer = DMAWriter(addr_width=addr_width, data_width=data_width, words_bits=words_bits)
        super().__init__(
            {
                "bus": Out(AXI4Signature(addr_width=addr_width, data_width=data_width)),
                "rd_cmd": In(stream.Signature(dma_cmd_layout(addr_width, words_bits))),
                "rd": Out(stream.Signature(read_word_layout(data_width))),
                "wr_cmd": In(stream.Signature(dma_cmd_layout(addr_width, words_bits))),
                "wr": In(stream.Signature(unsigned(data_width))),
                "rd_idle": Out(1),
                "wr_idle": Out(1),
                "error": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = rd = self.reader
        m.submodules.writer = wr = self.writer
        connect_subset(m, self.bus, rd.bus)
        connect_subset(m, self.bus, wr.bus)
        wiring.connect(m, wiring.flipped(self.rd_cmd), rd.cmd)
        wiring.connect(m, rd.o, wiring.flipped(self.rd))
        wiring.connect(m, wiring.flipped(self.wr_cmd), wr.cmd)
        wiring.connect(m, wiring.flipped(self.wr), wr.i)
        m.d.comb += [
            self.rd_idle.eq(rd.idle),
            self.wr_idle.eq(wr.idle),
            self.error.eq(rd.error | wr.error),
        ]
        return m


# ---- top-level port naming ------------------------------------------------------------------


def prefixed_members(signature: wiring.Signature, prefix: str) -> dict:
    """The members of a flat bus signature as plain ports ``prefix + name``, same flows.

    Amaranth names a member interface's ports ``bus__awaddr``; the Vivado convention wants
    ``m_axi_awaddr``, so the top declares these plain members and joins them to the bus with
    :func:`connect_prefixed`. Pass the signature as the sub-component sees it (a slave's
    flipped signature gives ``In`` address ports).
    """
    return {prefix + name: member.flow(member.shape) for name, member in signature.members.items()}


def connect_prefixed(m: Module, top, prefix: str, iface) -> None:
    """Join ``top.<prefix><name>`` (declared by :func:`prefixed_members`) to ``iface.<name>``."""
    for name, member in iface.signature.members.items():
        port = getattr(top, prefix + name)
        if member.flow == Out:
            m.d.comb += port.eq(getattr(iface, name))
        else:
            m.d.comb += getattr(iface, name).eq(port)
