"""The accelerator top level: register file, instruction fetch, decoder, per-op sequencing.

:class:`Accelerator` runs a program of docs/isa.md from DDR: it fetches each 32-byte
instruction (two AXI beats), decodes it and drives the scratchpad's address generators, the
DMA and the compute units until the instruction is finished, then fetches the next one, until
END. :class:`AcceleratorTop` is the same design with the Vivado port names (``clk``, ``rst``,
``irq``, ``s_axil_*``, ``m_axi_*``; see :mod:`vitaccel.boards.vivado`). docs/top.md has the
block diagram, the state machine, what overlaps and the known performance limits.

Blocks (all in one clock domain)::

    s_axil ─► RegisterFile ─► start, PROG_ADDR, DATA_BASE          irq ◄─ DONE & IRQ_ENABLE
    m_axi ◄─► DMA: reader (fetch, LOAD, packed W) / writer (STORE)
    SPM (1 read port: round-robin over word reader, unit readers, X/W builders;
         1 write port: LOAD, byte-run writer)
    word reader (16 lanes) ─► STORE data, parameter loaders, RESADD (A/B rows)
    unit readers ─► GELU / E2Softmax / AILayerNorm ─► row writers ─┐
    RESADD ─► row writer (16 lanes) ───────────────────────────────┼─► byte-run writer ─► SPM
    X builder ─► MatmulEngine.x   W builder or DMA ─► .w   .o ─► matmul out writer ─┘

The controller is one state machine (FETCH -> DECODE -> PARAMS -> ISSUE -> WAIT -> NEXT);
within an instruction every block it started streams concurrently, and the next instruction
is prefetched meanwhile (so FETCH runs only for the first one).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from vitaccel.design import Design
from vitaccel.engine_host import EngineParams
from vitaccel.engine_timing import top_out_depth
from vitaccel.isa import Op, residual_fusable
from vitaccel.rtl.axi import (
    DMA,
    WORD_BYTES,
    AXI4LiteSignature,
    AXI4ReadSignature,
    AXI4Signature,
    DMAReader,
    RegisterFile,
    connect_prefixed,
    prefixed_members,
)
from vitaccel.rtl.common import silence_unused
from vitaccel.rtl.gelu import GELU
from vitaccel.rtl.layernorm import AILayerNorm
from vitaccel.rtl.matmul import MatmulEngine
from vitaccel.rtl.resadd import ResAdd
from vitaccel.rtl.skid import SkidBuffer
from vitaccel.rtl.softmax import E2Softmax
from vitaccel.rtl.spm import (
    ByteRunWriter,
    MatmulOutWriter,
    ResidualRuns,
    RowReader,
    RowWriter,
    Scratchpad,
    WStreamBuilder,
    XStreamBuilder,
)

__all__ = ["Accelerator", "AcceleratorTop", "TopParams", "top_verilog", "MAX_VECTOR"]

MAX_VECTOR = 16  # a packed-W stream word sits in one 16-byte DDR slot: V <= 16

# instruction flags of MATMUL (docs/isa.md)
FLAG_X_UNSIGNED = 1 << 0
FLAG_W_SPM = 1 << 1
FLAG_HEADS = 1 << 3
FLAG_OUT_T = 1 << 4
FLAG_GELU = 1 << 5
FLAG_RESADD = 1 << 6
FLAG_X_KEEP = 1 << 7


def _pow2(name, value):
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two for the scratchpad readers, not {value!r}")
    return value


class TopParams:
    """Every size of an :class:`Accelerator`, derived from a :class:`~vitaccel.design.Design`.

    * SPM: ``spm_kib * 64`` words of 16 bytes.
    * Matmul engine (:class:`vitaccel.engine_host.EngineParams`): X banks of ``x_words`` words
      (``input_buffer_kib`` over the ``groups*rows`` banks of ``vector`` bytes), W banks of
      ``max_ksteps`` words per half (``weight_buffer_kib`` over ``groups*cols*2`` banks),
      unless given explicitly.
    * Nonlinear units: lanes from ``design.nonlinear``; E2Softmax rows up to ``max_tokens``,
      AILayerNorm and RESADD rows up to ``max_channels`` (RESADD rounded up to 16).
    """

    def __init__(self, design: Design, *, x_words=None, max_ksteps=None, out_depth=None,
                 dma_fifo_depth: int = 64):  # fmt: skip
        if not isinstance(design, Design):
            raise TypeError(f"design must be a vitaccel.design.Design, not {design!r}")
        a, nl = design.array, design.nonlinear
        if a.w4_share != 0.0:
            raise ValueError(
                "array.w4_share must be 0 for the accelerator top: programs use the identity "
                f"column plan (docs/isa.md), not {a.w4_share!r}"
            )
        _pow2("array.vector", a.vector)
        if a.vector > MAX_VECTOR:
            raise ValueError(
                f"array.vector must be <= {MAX_VECTOR} (16-byte W slots), not {a.vector}"
            )
        for name in ("gelu_lanes", "softmax_lanes", "layernorm_lanes"):
            _pow2(f"nonlinear.{name}", getattr(nl, name))
        self.design = design
        self.spm_words = min(design.spm_kib * 1024 // WORD_BYTES, 1 << 16)
        g, r, c, v = a.groups, a.rows, a.cols, a.vector
        if x_words is None:
            x_words = max(16, design.input_buffer_kib * 1024 // (g * r * v))
        if max_ksteps is None:
            max_ksteps = max(2, design.weight_buffer_kib * 1024 // (g * c * 2 * v))
        if out_depth is None:
            # full rate, so the engine's cycle model holds inside the top
            out_depth = top_out_depth(r, c, v)
        # log2 softmax: the unit emits 4-bit codes and P x V runs in the engine's shift-add mode
        self.softmax_log2 = nl.softmax_output == "log2"
        self.weight_ports = design.weight_ports
        self.engine = EngineParams.from_array(
            a, x_words=x_words, max_ksteps=max_ksteps, out_depth=out_depth, log2=self.softmax_log2,
            w_ports=design.weight_ports,
        )  # fmt: skip
        self.max_tokens = nl.max_tokens
        self.max_channels = nl.max_channels
        self.resadd_channels = -(-nl.max_channels // 16) * 16
        self.gelu_lanes = nl.gelu_lanes
        self.softmax_lanes = nl.softmax_lanes
        self.layernorm_lanes = nl.layernorm_lanes
        self.dma_fifo_depth = dma_fifo_depth

    @property
    def config_word(self) -> int:
        """CONFIG register: SPM words (31:16, saturating), groups/rows/cols (15:10, 9:5, 4:0)."""
        a = self.design.array
        words = min(self.spm_words, 0xFFFF)
        return words << 16 | (a.groups & 0x3F) << 10 | (a.rows & 0x1F) << 5 | (a.cols & 0x1F)


# controller states
_S = {
    name: i
    for i, name in enumerate(
        [
            "IDLE",
            "FETCH",
            "FETCH_WAIT",
            "PREDECODE",
            "DECODE",
            "PARAMS",
            "PARAMS_WAIT",
            "MM_SETUP",
            "ISSUE",
            "WAIT",
            "NEXT",
        ]  # fmt: skip
    )
}

# command streams the ISSUE/PARAMS states present (bit positions in `todo`)
_CMD = {
    name: i
    for i, name in enumerate(
        ["dma_rd", "dma_wr", "words", "unit_rd", "unit_wr", "engine", "xb", "wb", "ow"]
        + ["dma_w1", "dma_w2", "dma_w3"]  # the extra weight ports' readers
    )
}


class Accelerator(wiring.Component):
    """The whole accelerator: runs a docs/isa.md program from DDR.

    Parameters
    ----------
    design : Design
        Array shape, nonlinear lanes and limits, scratchpad size (see :class:`TopParams`).
    **kwargs :
        Passed to :class:`TopParams` (buffer sizes of the matmul engine, DMA FIFO depth).

    Members
    -------
    s_axil : ``In(AXI4LiteSignature(addr_width=16))``
    m_axi : ``Out(AXI4Signature(addr_width=40, data_width=128))``
        Instruction fetch, LOAD/STORE, and the first weight stream.
    m_axi_w1, m_axi_w2, m_axi_w3 : ``Out(AXI4ReadSignature(addr_width=40, data_width=128))``
        With ``design.weight_ports`` > 1: the other weight streams (read only).
    irq : ``Out(1)``
    """

    def __init__(self, design: Design, **kwargs):
        try:
            self.params = TopParams(design, **kwargs)
        except (TypeError, ValueError):
            silence_unused(self)
            raise
        super().__init__(
            {
                "s_axil": In(AXI4LiteSignature(addr_width=16)),
                "m_axi": Out(AXI4Signature(addr_width=40, data_width=128)),
                **{
                    f"m_axi_w{q}": Out(AXI4ReadSignature(addr_width=40, data_width=128))
                    for q in range(1, self.params.weight_ports)
                },
                "irq": Out(1),
            }
        )

    def elaborate(self, platform):  # noqa: C901 - one controller, read top to bottom
        P = self.params
        E = P.engine
        G, R, C, V = E.groups, E.rows, E.cols, E.vector
        m = Module()

        # ---- blocks --------------------------------------------------------------------------
        m.submodules.regs = regs = RegisterFile(addr_width=16, config=P.config_word)
        m.submodules.dma = dma = DMA(addr_width=40, fifo_depth=P.dma_fifo_depth)
        wiring.connect(m, wiring.flipped(self.s_axil), regs.s_axil)
        wiring.connect(m, dma.bus, wiring.flipped(self.m_axi))
        # the other weight ports: a read-only DMA each, straight into the engine's w streams
        wdma = []
        for q in range(1, P.weight_ports):
            rd = DMAReader(addr_width=40, fifo_depth=P.dma_fifo_depth)
            m.submodules[f"wdma{q}"] = rd
            wiring.connect(m, rd.bus, wiring.flipped(getattr(self, f"m_axi_w{q}")))
            wdma.append(rd)
        m.d.comb += self.irq.eq(regs.irq)

        m.submodules.words = words = RowReader(lanes=16)
        unit_lanes = sorted({P.gelu_lanes, P.softmax_lanes, P.layernorm_lanes})
        unit_rd = {}
        unit_wr = {}
        for lanes in unit_lanes:
            unit_rd[lanes] = RowReader(lanes=lanes)
            unit_wr[lanes] = RowWriter(lanes=lanes)
            m.submodules[f"unit_rd{lanes}"] = unit_rd[lanes]
            m.submodules[f"unit_wr{lanes}"] = unit_wr[lanes]
        m.submodules.res_wr = res_wr = RowWriter(lanes=16)
        m.submodules.xb = xb = XStreamBuilder(groups=G, vector=V)
        m.submodules.wb = wb = WStreamBuilder(
            groups=G, cols=C, vector=V, acc_bits=E.acc_bits, w_bits=E.w_word_bits
        )
        m.submodules.ow = ow = MatmulOutWriter(groups=G, cols=C)
        m.submodules.brw = brw = ByteRunWriter()
        # the residual add fused into a MATMUL's output runs (reads A through its own port)
        m.submodules.rr = rr = ResidualRuns(max_channels=P.resadd_channels)
        readers = [words.mem] + [unit_rd[lanes].mem for lanes in unit_lanes] + [xb.mem, wb.mem]
        readers.append(rr.mem)
        m.submodules.spm = spm = Scratchpad(
            words=P.spm_words, read_clients=len(readers), write_clients=2
        )
        for i, client in enumerate(readers):
            wiring.connect(m, client, spm.rd[i])
        load_wr = spm.wr[0]  # LOAD: DMA words -> SPM
        wiring.connect(m, brw.mem, spm.wr[1])

        m.submodules.gelu = gelu = GELU(lanes=P.gelu_lanes)
        m.submodules.softmax = softmax = E2Softmax(
            lanes=P.softmax_lanes,
            max_row=P.max_tokens,
            output="log2" if P.softmax_log2 else "uint8",
        )
        m.submodules.layernorm = ln = AILayerNorm(
            lanes=P.layernorm_lanes, max_channels=P.max_channels, bias_bits=32
        )
        m.submodules.resadd = resadd = ResAdd(max_channels=P.resadd_channels)
        m.submodules.engine = engine = MatmulEngine(E)
        # The engine's output words pass one register with a GELU table per byte: MATMUL
        # GELU looks every byte up (FC1's GELU fused), other MATMULs pass through it.
        m.submodules.mm_gelu = mm_gelu = GELU(lanes=G * C, bypass=True)

        # ---- instruction register and fields -------------------------------------------------
        instr = Signal(256)
        f = [instr[16 * i : 16 * i + 16] for i in range(16)]
        op = Signal(8)
        flags = Signal(8)
        m.d.comb += [op.eq(f[0][:8]), flags.eq(f[0][8:])]

        def u32(i):
            return Cat(f[i], f[i + 1])

        # ---- controller state ----------------------------------------------------------------
        state = Signal(range(len(_S)))

        def at(name):
            return state == _S[name]

        def goto(name):
            return state.eq(_S[name])

        pc = Signal(32)
        busy = Signal()
        cycles = Signal(64)
        todo = Signal(len(_CMD))
        fetch_beat = Signal()
        done_set = Signal()
        error_set = Signal()
        # DONE/ERROR reach the register file a cycle late (registered: the opcode decode
        # and the checks behind them were a 10-LUT path into its status bits), and BUSY
        # with them, so a host never sees BUSY low before DONE or ERROR.
        busy_q = Signal()
        done_q = Signal()
        error_q = Signal()
        m.d.sync += [busy_q.eq(busy), done_q.eq(done_set), error_q.eq(error_set)]
        m.d.comb += [
            regs.busy.eq(busy_q),
            regs.done_set.eq(done_q),
            regs.error_set.eq(error_q),
            regs.cycles.eq(cycles),
            regs.pc.eq(pc),
        ]
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)

        def cmd_valid(name):
            return todo[_CMD[name]] & ((at("ISSUE")) | (at("PARAMS")))

        fired = Signal(len(_CMD))  # command handshakes this cycle

        # MATMUL derived values (MM_SETUP)
        is_heads = flags[3]
        w_spm = flags[1]
        ks = Signal(16)
        nsteps = Signal(16)
        # packed W words in DDR per weight port: nsteps * (G*C / ports) * (1 + ks); port q's
        # stream starts q * w_slots words after the layer's (codec: the streams in turn)
        w_slots = Signal(24)
        w_offs = [Signal(32, name=f"w_off{q}") for q in range(1, P.weight_ports)]
        settled = Signal()  # MM_SETUP: the loop is done, x_need/w_slots follow next cycle
        checked = Signal()  # MM_SETUP: x_need/w_slots are valid, mm_ok follows next cycle
        tiles = Signal(16)
        acc_n = Signal(17)
        acc_t = Signal(17)
        cm = Mux(is_heads, C, G * C)

        # parameter loaders
        param_words = Signal(16)  # words the current PARAMS phase reads
        param_taken = Signal(16)
        # all read and the word reader idle, a cycle late (PARAMS lasts >= 1 cycle, so the
        # flag is fresh in PARAMS_WAIT; the compare in the FSM's path was 10 LUT levels)
        params_done = Signal()

        # The opcode decoded in DECODE (combinational, from the fresh instruction) and, from
        # the next cycle on, from registers: every stream mux and command of the instruction
        # selects on `op_is`, and decoding the opcode in front of them was an 11-LUT path.
        op_dec = {o.name: op == int(o) for o in Op}
        op_is = {o.name: Signal(name=f"op_is_{o.name.lower()}") for o in Op}
        m.d.sync += [op_is[name].eq(op_dec[name]) for name in op_is]
        # fields the instruction's commands read, registered like the opcode (DECODE itself
        # applies what PREDECODE worked out: see "what DECODE does" below)
        f2_zero = Signal()
        ks_dec = Signal(16)
        m.d.sync += [
            f2_zero.eq(f[2] == 0),
            ks_dec.eq((f[4] + V - 1) >> exact_log2(V)),
        ]
        # MATMUL's fused outputs and X reuse, registered like the opcode
        mm_gelu_on = Signal()
        mm_res_on = Signal()
        m.d.sync += [
            mm_gelu_on.eq(op_dec["MATMUL"] & flags[5]),
            mm_res_on.eq(op_dec["MATMUL"] & flags[6]),
        ]
        x_keep = flags[7]
        data_base = regs.data_base[:40]

        # ---- DMA reader: fetch / LOAD / packed W ----------------------------------------------
        # Prefetch: while an instruction runs, the next one is read into `next_instr` (after
        # the instruction's own DMA read command, if it has one; the reader keeps commands in
        # order and `last` tells where the instruction's words end).
        def uses_rd(dec):
            return (dec["LOAD"] & (f[2] != 0)) | (dec["MATMUL"] & ~w_spm)

        # (registered pieces only: the prefetch request is a short path into the DMA command)
        op_uses_rd = (op_is["LOAD"] & ~f2_zero) | (op_is["MATMUL"] & ~w_spm)
        pf_want = Signal()  # prefetch PC + 1 for this instruction
        pf_issued = Signal()
        op_rd_cmd_done = Signal()  # the instruction's own DMA read command has been taken
        op_rd_done = Signal()  # ... and its last word consumed
        next_instr = Signal(256)
        next_beat = Signal()
        next_valid = Signal()
        # the states an instruction runs in, a cycle late (registered): the prefetch waits at
        # least that long after DECODE anyway, and leaves NEXT with it issued or not wanted
        running = Signal()
        m.d.sync += running.eq(
            Cat(
                *[at(n) for n in ("PARAMS", "PARAMS_WAIT", "MM_SETUP", "ISSUE", "WAIT", "NEXT")]
            ).any()
        )
        pf_valid = Signal()
        m.d.comb += pf_valid.eq(running & pf_want & ~pf_issued & (~op_uses_rd | op_rd_cmd_done))
        # DDR addresses computed a cycle ahead, in registers (pc, the instruction and the
        # base registers are stable by the time a command uses them; FETCH waits a cycle for
        # its address): the 40-bit adds stay out of the command paths
        a_fetch = Signal(40)
        a_next = Signal(40)
        a_f3 = Signal(40)
        a_f8 = Signal(40)
        a_w = [Signal(40, name=f"a_w{q + 1}") for q in range(len(w_offs))]
        m.d.sync += [
            a_fetch.eq(regs.prog_addr[:40] + (pc << 5)),
            a_next.eq(regs.prog_addr[:40] + ((pc + 1) << 5)),
            a_f3.eq(data_base + u32(3)),
            a_f8.eq(data_base + u32(8)),
            *[a.eq(data_base + u32(8) + off) for a, off in zip(a_w, w_offs, strict=True)],
        ]
        fetch_armed = Signal()  # FETCH's second cycle on: a_fetch holds this pc's address
        m.d.sync += fetch_armed.eq(at("FETCH"))
        fetch_go = (at("FETCH")) & fetch_armed & dma.rd_idle  # never behind stale words
        m.d.comb += dma.rd_cmd.valid.eq(cmd_valid("dma_rd") | fetch_go | pf_valid)
        with m.If(at("FETCH")):
            m.d.comb += [
                dma.rd_cmd.payload.addr.eq(a_fetch),
                dma.rd_cmd.payload.words.eq(2),
            ]
        with m.Elif(pf_valid):
            m.d.comb += [
                dma.rd_cmd.payload.addr.eq(a_next),
                dma.rd_cmd.payload.words.eq(2),
            ]
        with m.Elif(op_is["LOAD"]):
            m.d.comb += [
                dma.rd_cmd.payload.addr.eq(a_f3),
                dma.rd_cmd.payload.words.eq(f[2]),
            ]
        with m.Else():  # MATMUL, packed W from DDR: nsteps * G*C * (1 + ks) slots
            m.d.comb += [
                dma.rd_cmd.payload.addr.eq(a_f8),
                dma.rd_cmd.payload.words.eq(w_slots),
            ]
        with m.If(pf_valid & dma.rd_cmd.ready):
            m.d.sync += pf_issued.eq(1)
        with m.If(cmd_valid("dma_rd") & dma.rd_cmd.ready):
            m.d.sync += op_rd_cmd_done.eq(1)
        # stale words (a run stopped by an error) are drained while idle
        with m.If((at("IDLE")) | (at("FETCH"))):
            m.d.comb += dma.rd.ready.eq(1)
        # the prefetched instruction
        with m.If(running & op_rd_done & pf_issued & ~next_valid):
            m.d.comb += dma.rd.ready.eq(1)
            with m.If(dma.rd.valid):
                with m.If(~next_beat):
                    m.d.sync += [next_instr[:128].eq(dma.rd.payload.data), next_beat.eq(1)]
                with m.Else():
                    m.d.sync += [
                        next_instr[128:].eq(dma.rd.payload.data),
                        next_beat.eq(0),
                        next_valid.eq(1),
                    ]
        with m.If(at("FETCH_WAIT")):
            m.d.comb += dma.rd.ready.eq(1)
            with m.If(dma.rd.valid):
                with m.If(~fetch_beat):
                    m.d.sync += [instr[:128].eq(dma.rd.payload.data), fetch_beat.eq(1)]
                with m.Else():
                    m.d.sync += [
                        instr[128:].eq(dma.rd.payload.data),
                        fetch_beat.eq(0),
                        goto("PREDECODE"),
                    ]
        load_addr = Signal(16)
        rd_last_taken = dma.rd.valid & dma.rd.ready & dma.rd.payload.last
        with m.If((at("WAIT")) & op_is["LOAD"] & ~op_rd_done):
            with m.If(rd_last_taken):
                m.d.sync += op_rd_done.eq(1)
            m.d.comb += [
                dma.rd.ready.eq(1),
                load_wr.en.eq(dma.rd.valid),
                load_wr.addr.eq(load_addr),
                load_wr.data.eq(dma.rd.payload.data),
                load_wr.be.eq(0xFFFF),
            ]
            with m.If(dma.rd.valid):
                m.d.sync += load_addr.eq(load_addr + 1)
        # packed W from DDR (port 0) into the engine through a skid buffer: the gate below
        # (state, opcode, end of the instruction's words) and the engine's loader logic are
        # then in different cycles
        m.submodules.w_skid = w_skid = SkidBuffer(unsigned(E.w_word_bits))
        with m.If((at("WAIT")) & op_is["MATMUL"] & ~w_spm & ~op_rd_done):
            with m.If(rd_last_taken):
                m.d.sync += op_rd_done.eq(1)
            m.d.comb += [
                w_skid.i.valid.eq(dma.rd.valid),
                w_skid.i.payload.eq(dma.rd.payload.data[: E.w_word_bits]),
                dma.rd.ready.eq(w_skid.i.ready),
            ]
        for q, rd in enumerate(wdma, start=1):
            ew = getattr(engine, f"w{q}")
            m.d.comb += [
                rd.cmd.valid.eq(cmd_valid(f"dma_w{q}")),
                rd.cmd.payload.addr.eq(a_w[q - 1]),
                rd.cmd.payload.words.eq(w_slots),
                ew.valid.eq(rd.o.valid),
                ew.payload.eq(rd.o.payload.data[: E.w_word_bits]),
                rd.o.ready.eq(ew.ready),
            ]

        # ---- DMA writer: STORE ---------------------------------------------------------------
        m.d.comb += [
            dma.wr_cmd.valid.eq(cmd_valid("dma_wr")),
            dma.wr_cmd.payload.addr.eq(a_f3),
            dma.wr_cmd.payload.words.eq(f[2]),
        ]

        # ---- word reader: STORE / parameter blocks / RESADD rows ------------------------------
        wcmd = words.cmd.payload
        m.d.comb += words.cmd.valid.eq(cmd_valid("words"))
        with m.If(at("PARAMS")):
            # RESADD f9, MATMUL GELU f10 / RESADD f11, GELU and LAYERNORM f7
            base = Mux(
                op_is["RESADD"], f[9], Mux(op_is["MATMUL"], Mux(flags[5], f[10], f[11]), f[7])
            )
            m.d.comb += [
                wcmd.base.eq(base),
                wcmd.stride.eq(1),
                wcmd.rows.eq(param_words),
                wcmd.cols.eq(16),
            ]
        with m.Elif(op_is["STORE"]):
            m.d.comb += [
                wcmd.base.eq(f[1]),
                wcmd.stride.eq(1),
                wcmd.rows.eq(f[2]),
                wcmd.cols.eq(16),
            ]
        with m.Else():  # RESADD: A row r, then B row r
            m.d.comb += [
                wcmd.base.eq(f[1]),
                wcmd.stride.eq(f[2]),
                wcmd.rows.eq(f[3]),
                wcmd.cols.eq(f[4]),
                wcmd.base2.eq(f[7]),
                wcmd.stride2.eq(f[8]),
                wcmd.dual.eq(1),
            ]
        word_data = words.o.payload.data.as_value()
        with m.If(op_is["STORE"]):  # (the word reader carries only STORE data then)
            m.d.comb += [
                dma.wr.valid.eq(words.o.valid),
                dma.wr.payload.eq(word_data),
                words.o.ready.eq(dma.wr.ready),
            ]
        with m.If((at("WAIT")) & op_is["RESADD"]):
            m.d.comb += [
                resadd.i.valid.eq(words.o.valid),
                resadd.i.payload.as_value().eq(words.o.payload.as_value()),
                words.o.ready.eq(resadd.i.ready),
            ]

        # parameter loaders (PARAMS_WAIT): one SPM word at a time
        sub = Signal(4)  # entry within the word
        word_take = Signal()
        with m.If(at("PARAMS_WAIT")):
            with m.If(op_is["GELU"] | mm_gelu_on):  # 16 table entries a word
                idx = Cat(sub, param_taken[:4])
                m.d.comb += [
                    gelu.table_addr.eq(idx),
                    gelu.table_data.eq(word_data.word_select(sub, 8)),
                    gelu.table_we.eq(words.o.valid),
                    word_take.eq(words.o.valid & (sub == 15)),
                ]
                with m.If(words.o.valid):
                    m.d.sync += sub.eq(sub + 1)
            with m.Elif(op_is["LAYERNORM"]):  # 2 channels a word, 8 bytes each
                entry = word_data.word_select(sub[0], 64)
                chan = Cat(sub[0], param_taken)
                m.d.comb += [
                    ln.const_addr.eq(chan),
                    ln.const_alpha.eq(entry[0:2]),
                    ln.const_gain.eq(entry[16:32]),
                    ln.const_bias.eq(entry[32:64]),
                    ln.const_we.eq(words.o.valid & (chan < f[4])),
                    word_take.eq(words.o.valid & (sub[0] == 1)),
                ]
                with m.If(words.o.valid):
                    m.d.sync += sub.eq(Mux(sub[0], 0, 1))
            with m.Else():  # RESADD: 4 channels a word, straight into the parameter banks
                m.d.comb += [
                    resadd.param_addr.eq(param_taken),
                    resadd.param_data.eq(word_data),
                    resadd.param_we.eq(words.o.valid),
                    word_take.eq(words.o.valid),
                ]
            m.d.comb += words.o.ready.eq(word_take)
            with m.If(word_take):
                m.d.sync += param_taken.eq(param_taken + 1)

        # the fused GELU table is written with the GELU unit's (both hold the last table)
        m.d.comb += [
            mm_gelu.table_addr.eq(gelu.table_addr),
            mm_gelu.table_data.eq(gelu.table_data),
            mm_gelu.table_we.eq(gelu.table_we),
        ]

        # unit scalars come straight from the instruction fields (constant while it runs);
        # the residual add's shift (RESADD f10, MATMUL RESADD f13) through a register
        res_shift = Signal(6)
        shift_field = Mux(op_is["MATMUL"], f[13], f[10])
        m.d.sync += res_shift.eq(Mux(shift_field > 63, 63, shift_field))
        m.d.comb += [
            softmax.in_shift.eq(f[7]),
            ln.recip_mult.eq(f[8]),
            ln.recip_shift.eq(f[9]),
            ln.out_shift.eq(f[10]),
            ln.eps_q.eq(f[11]),
            resadd.shift.eq(res_shift),
        ]

        # ---- unit readers / writers: GELU, SOFTMAX, LAYERNORM ---------------------------------
        units = [("GELU", gelu, P.gelu_lanes), ("SOFTMAX", softmax, P.softmax_lanes),
                 ("LAYERNORM", ln, P.layernorm_lanes)]  # fmt: skip
        for lanes in unit_lanes:
            rd, wr = unit_rd[lanes], unit_wr[lanes]
            mine = Cat(*[op_is[name] for name, _, ln_ in units if ln_ == lanes]).any()
            m.d.comb += [
                rd.cmd.valid.eq(cmd_valid("unit_rd") & mine),
                rd.cmd.payload.base.eq(f[1]),
                rd.cmd.payload.stride.eq(f[2]),
                rd.cmd.payload.rows.eq(f[3]),
                rd.cmd.payload.cols.eq(f[4]),
                wr.cmd.valid.eq(cmd_valid("unit_wr") & mine),
                wr.cmd.payload.base.eq(f[5]),
                wr.cmd.payload.stride.eq(f[6]),
                wr.cmd.payload.rows.eq(f[3]),
                wr.cmd.payload.cols.eq(f[4]),
            ]
            for name, unit, ln_ in units:
                if ln_ != lanes:
                    continue
                # routed by the (registered) opcode alone: a unit's reader and writer carry
                # beats only while its instruction runs
                with m.If(op_is[name]):
                    m.d.comb += [
                        unit.i.valid.eq(rd.o.valid),
                        unit.i.payload.as_value().eq(rd.o.payload.as_value()),
                        rd.o.ready.eq(unit.i.ready),
                        wr.i.valid.eq(unit.o.valid),
                        wr.i.payload.count.eq(unit.o.payload.count),
                        wr.i.payload.last.eq(unit.o.payload.last),
                        unit.o.ready.eq(wr.i.ready),
                    ]
                    # one byte per element (log2 codes are zero-extended)
                    for lane in range(lanes):
                        m.d.comb += wr.i.payload.data[lane].eq(unit.o.payload.data[lane])
        # RESADD output
        m.d.comb += [
            res_wr.cmd.valid.eq(cmd_valid("unit_wr") & op_is["RESADD"]),
            res_wr.cmd.payload.base.eq(f[5]),
            res_wr.cmd.payload.stride.eq(f[6]),
            res_wr.cmd.payload.rows.eq(f[3]),
            res_wr.cmd.payload.cols.eq(f[4]),
        ]
        # the residual unit's results through a skid buffer: its whole-pipeline stall then
        # starts at a register, not at the writers behind it
        m.submodules.res_skid = res_skid = SkidBuffer(resadd.o.payload.shape())
        wiring.connect(m, resadd.o, res_skid.i)
        res_out = res_skid.o
        with m.If(op_is["RESADD"]):
            m.d.comb += [
                res_wr.i.valid.eq(res_out.valid),
                res_wr.i.payload.as_value().eq(res_out.payload.as_value()),
                res_out.ready.eq(res_wr.i.ready),
            ]
        # MATMUL RESADD: runs -> ResidualRuns (reads A) -> the unit's pair input -> runs
        rr_delta = Signal(16)
        m.d.sync += rr_delta.eq(f[10] - f[6])  # A base - Y base (A has Y's stride)
        wiring.connect(m, rr.pair, resadd.pair)
        m.d.comb += [
            resadd.use_pair.eq(op_is["MATMUL"]),
            rr.delta.eq(rr_delta),
            rr.chan.eq(ow.chan),
            rr.res.valid.eq(res_out.valid & op_is["MATMUL"]),
            rr.res.payload.eq(res_out.payload),
        ]
        with m.If(op_is["MATMUL"]):
            m.d.comb += res_out.ready.eq(rr.res.ready)
        with m.If(mm_res_on):
            m.d.comb += [
                rr.i.valid.eq(ow.o.valid),
                rr.i.payload.eq(ow.o.payload),
                ow.o.ready.eq(rr.i.ready),
            ]

        # ---- byte-run writer input: the active op's writer ------------------------------------
        sources = [
            (op_is["RESADD"], res_wr.o),
            (op_is["MATMUL"] & ~mm_res_on, ow.o),
            (op_is["MATMUL"] & mm_res_on, rr.o),
        ]
        for name, _, lanes in units:
            sources.append((op_is[name], unit_wr[lanes].o))
        # by the registered opcode alone: a writer has runs only while its instruction runs
        for sel, src in sources:
            with m.If(sel):
                m.d.comb += [
                    brw.i.valid.eq(src.valid),
                    brw.i.payload.eq(src.payload),
                    src.ready.eq(brw.i.ready),
                ]

        # ---- matmul ----------------------------------------------------------------------------
        m.d.comb += [
            engine.cmd.valid.eq(cmd_valid("engine")),
            engine.cmd.payload.tokens.eq(f[3]),
            engine.cmd.payload.ksteps.eq(ks),
            engine.cmd.payload.nsteps.eq(nsteps),
            engine.cmd.payload.heads.eq(is_heads),
            engine.cmd.payload.x_unsigned.eq(flags[0]),
            engine.cmd.payload.x_keep.eq(x_keep),
            *([engine.cmd.payload.x_log2.eq(flags[2])] if P.softmax_log2 else []),
            engine.cmd.payload.lo.eq(-128),
            engine.cmd.payload.hi.eq(127),
            xb.cmd.valid.eq(cmd_valid("xb")),
            xb.cmd.payload.base.eq(f[1]),
            xb.cmd.payload.stride.eq(f[2]),
            xb.cmd.payload.tokens.eq(f[3]),
            xb.cmd.payload.k.eq(f[4]),
            xb.cmd.payload.heads.eq(is_heads),
            xb.cmd.payload.nheads.eq(Mux(is_heads, f[12], 1)),
            xb.cmd.payload.head_step.eq(f[13]),
            wb.cmd.valid.eq(cmd_valid("wb")),
            wb.cmd.payload.base.eq(f[10]),
            wb.cmd.payload.stride.eq(f[11]),
            wb.cmd.payload.n.eq(f[5]),
            wb.cmd.payload.k.eq(f[4]),
            wb.cmd.payload.heads.eq(is_heads),
            wb.cmd.payload.nheads.eq(Mux(is_heads, f[12], 1)),
            wb.cmd.payload.head_step.eq(f[14]),
            wb.cmd.payload.mult.eq(f[8]),
            wb.cmd.payload.shift.eq(f[9]),
            ow.cmd.valid.eq(cmd_valid("ow")),
            ow.cmd.payload.base.eq(f[6]),
            ow.cmd.payload.stride.eq(f[7]),
            ow.cmd.payload.tokens.eq(f[3]),
            ow.cmd.payload.n.eq(f[5]),
            ow.cmd.payload.heads.eq(is_heads),
            ow.cmd.payload.nheads.eq(Mux(is_heads, f[12], 1)),
            ow.cmd.payload.head_step.eq(f[15]),
            ow.cmd.payload.transposed.eq(flags[4]),
        ]
        wiring.connect(m, xb.o, engine.x)
        m.d.comb += [
            mm_gelu.i.valid.eq(engine.o.valid),
            mm_gelu.i.payload.data.as_value().eq(engine.o.payload),
            engine.o.ready.eq(mm_gelu.i.ready),
            mm_gelu.bypass.eq(~mm_gelu_on),
            ow.i.valid.eq(mm_gelu.o.valid),
            ow.i.payload.eq(mm_gelu.o.payload.data.as_value()),
            mm_gelu.o.ready.eq(ow.i.ready),
        ]
        # W built from the SPM comes as one stream; with several weight ports the engine
        # takes each port's columns on its own input: a demux by column (the stream order is
        # per step, per column, 1 + ks words a column; port q has columns q*M .. q*M + M-1)
        e_ws = [engine.w] + [getattr(engine, f"w{q}") for q in range(1, P.weight_ports)]
        n_ports = len(e_ws)
        with m.If(~w_spm):
            m.d.comb += [
                engine.w.valid.eq(w_skid.o.valid),
                engine.w.payload.eq(w_skid.o.payload),
                w_skid.o.ready.eq(engine.w.ready),
            ]
        if n_ports == 1:
            with m.If(w_spm):
                m.d.comb += [
                    engine.w.valid.eq(wb.o.valid),
                    engine.w.payload.eq(wb.o.payload),
                    wb.o.ready.eq(engine.w.ready),
                ]
        else:
            per_port = G * C // n_ports
            wsel = Signal(range(n_ports))  # the port of the next word
            wsel_col = Signal(range(per_port))  # its column within the port's range
            wsel_left = Signal(16)  # words of the column after this one
            wsel_last = Signal()  # wsel_left == 0
            # reset before the W builder's command (ISSUE), count every word from then on
            with m.If(at("MM_SETUP")):
                m.d.sync += [wsel.eq(0), wsel_col.eq(0), wsel_left.eq(ks), wsel_last.eq(0)]
            wb_fire = wb.o.valid & wb.o.ready
            with m.If(wb_fire):
                with m.If(wsel_last):
                    m.d.sync += [wsel_left.eq(ks), wsel_last.eq(0)]
                    with m.If(wsel_col == per_port - 1):
                        m.d.sync += [
                            wsel_col.eq(0),
                            wsel.eq(Mux(wsel == n_ports - 1, 0, wsel + 1)),
                        ]
                    with m.Else():
                        m.d.sync += wsel_col.eq(wsel_col + 1)
                with m.Else():
                    m.d.sync += [wsel_left.eq(wsel_left - 1), wsel_last.eq(wsel_left == 1)]
            with m.If(w_spm):
                for q, ew in enumerate(e_ws):
                    with m.If(wsel == q):
                        m.d.comb += [
                            ew.valid.eq(wb.o.valid),
                            ew.payload.eq(wb.o.payload),
                            wb.o.ready.eq(ew.ready),
                        ]

        # ---- command bookkeeping ---------------------------------------------------------------
        streams = {
            "dma_rd": dma.rd_cmd,
            "dma_wr": dma.wr_cmd,
            "words": words.cmd,
            "engine": engine.cmd,
            "xb": xb.cmd,
            "wb": wb.cmd,
            "ow": ow.cmd,
        }
        for q, rd in enumerate(wdma, start=1):
            streams[f"dma_w{q}"] = rd.cmd
        for name, st in streams.items():
            m.d.comb += fired[_CMD[name]].eq(cmd_valid(name) & st.ready)
        unit_rd_fire = Cat(*[r.cmd.valid & r.cmd.ready for r in unit_rd.values()]).any()
        unit_wr_fire = Cat(
            *[w.cmd.valid & w.cmd.ready for w in unit_wr.values()],
            res_wr.cmd.valid & res_wr.cmd.ready,
        ).any()
        m.d.comb += [
            fired[_CMD["unit_rd"]].eq(unit_rd_fire),
            fired[_CMD["unit_wr"]].eq(unit_wr_fire),
        ]

        def bits(*names):
            return sum(1 << _CMD[n] for n in names)

        w_cmds = [f"dma_w{q}" for q in range(1, P.weight_ports)]

        # ---- completion conditions ------------------------------------------------------------
        units_idle = (
            Cat(*[r.idle for r in unit_rd.values()]).all()
            & Cat(*[w.idle for w in unit_wr.values()]).all()
            & res_wr.idle
            & brw.idle
            & ~gelu.busy
            & ~softmax.busy
            & ~ln.busy
            & ~resadd.busy
            & ~res_skid.busy
            & ~mm_gelu.busy
            & ~w_skid.busy
            & rr.idle
        )
        all_idle = Signal()
        all_idle_q = Signal()
        wait_armed = Signal()
        m.d.sync += all_idle_q.eq(all_idle)
        m.d.comb += all_idle.eq(
            units_idle
            & words.idle
            & dma.rd_idle
            & dma.wr_idle
            & xb.idle
            & wb.idle
            & ow.idle
            & ~engine.busy
            & Cat(*[rd.idle for rd in wdma], Const(1)).all()
        )

        # ---- MATMUL checks (an instruction the engine cannot hold ends the run with ERROR) ----
        # products registered (one cycle after the loop settles): no multiplier in a path to
        # the state register or the DMA command
        x_need = Signal(32)
        slots = nsteps * (ks + 1) * (G * C // P.weight_ports)
        m.d.sync += [
            x_need.eq(tiles * ks),
            w_slots.eq(slots),
            *[off.eq((slots * (q + 1)) << 4) for q, off in enumerate(w_offs)],
        ]
        x_fits = Signal()
        m.d.comb += x_fits.eq((x_need <= E.x_words) & (ks <= E.max_ksteps) & (ks != 0))
        heads_ok = ~is_heads | ((f[12] != 0) & (f[12] <= G))
        # X_LOG2 needs the engine's log2 mode (built with the log2 softmax)
        flags_ok = Const(1) if P.softmax_log2 else ~flags[2]
        # fused outputs need W from DDR; the residual add also shared, row-major output on
        # an array whose output steps cover whole SPM words; X_KEEP the previous job's X
        fused_ok = ~(flags[5] | flags[6]) | ~w_spm
        res_ok = ~flags[6] | (~is_heads & ~flags[4] & ~flags[5])
        if not residual_fusable(G, C):
            res_ok = ~flags[6]
        xk_valid = Signal()  # the engine holds the X of a shared-mode job of this shape:
        xk_tokens = Signal(16)
        xk_ks = Signal(16)
        keep_ok = ~x_keep | (~is_heads & xk_valid & (xk_tokens == f[3]) & (xk_ks == ks))
        # the verdict registered too (a cycle after `settled`, read when `checked`): the
        # compares were a 10-LUT path through the error flag into the register file
        mm_ok = Signal()
        m.d.sync += mm_ok.eq(
            x_fits & heads_ok & flags_ok & fused_ok & res_ok & keep_ok
            & (nsteps != 0) & (tiles != 0)
        )  # fmt: skip

        m.d.sync += params_done.eq((param_taken == param_words) & words.idle)

        # ---- what DECODE does, worked out from the instruction in PREDECODE ---------------------
        # (registered into dec_*: DECODE's todo/state/parameter-count updates were the end of a
        # 9-level path through the opcode priority and the field checks)
        o_todo = Signal(len(_CMD))
        o_state = Signal.like(state)
        o_words = Signal(16)
        o_err = Signal()
        dec_todo = Signal(len(_CMD))
        dec_state = Signal.like(state)
        dec_words = Signal(16)
        dec_err = Signal()
        dec_end = Signal()
        f4_words = lambda round_to: (f[4] + round_to - 1) >> exact_log2(round_to)  # noqa: E731

        def to(name):
            return o_state.eq(_S[name])

        with m.If(op_dec["END"]):
            m.d.comb += to("IDLE")
        with m.Elif(op_dec["LOAD"]):
            m.d.comb += [o_todo.eq(bits("dma_rd")), to("ISSUE")]
            with m.If(f[2] == 0):
                m.d.comb += to("NEXT")
        with m.Elif(op_dec["STORE"]):
            m.d.comb += [o_todo.eq(bits("dma_wr", "words")), to("ISSUE")]
            with m.If(f[2] == 0):
                m.d.comb += to("NEXT")
        with m.Elif(op_dec["GELU"]):
            m.d.comb += [o_words.eq(16), o_todo.eq(bits("words")), to("PARAMS")]
        with m.Elif(op_dec["LAYERNORM"]):
            m.d.comb += [o_words.eq(f4_words(2)), o_todo.eq(bits("words")), to("PARAMS")]
            with m.If(f[4] > P.max_channels):
                m.d.comb += [to("IDLE"), o_err.eq(1)]
        with m.Elif(op_dec["RESADD"]):
            m.d.comb += [o_words.eq(f4_words(4)), o_todo.eq(bits("words")), to("PARAMS")]
            with m.If(f[4] > P.resadd_channels):
                m.d.comb += [to("IDLE"), o_err.eq(1)]
        with m.Elif(op_dec["SOFTMAX"]):
            m.d.comb += [o_todo.eq(bits("unit_rd", "unit_wr")), to("ISSUE")]
            # the output format is the build's: a program for the other one is an error
            with m.If((f[4] > P.max_tokens) | (flags[0] != int(P.softmax_log2))):
                m.d.comb += [to("IDLE"), o_err.eq(1)]
        with m.Elif(op_dec["MATMUL"]):
            m.d.comb += to("MM_SETUP")
            # a fused GELU loads its table, a fused residual add its multipliers first
            with m.If(flags[5]):
                m.d.comb += [o_words.eq(16), o_todo.eq(bits("words")), to("PARAMS")]
            with m.Elif(flags[6]):
                m.d.comb += [
                    o_words.eq((f[5] + 3) >> 2),
                    o_todo.eq(bits("words")),
                    to("PARAMS"),
                ]
        with m.Else():  # bad opcode
            m.d.comb += [to("IDLE"), o_err.eq(1)]

        # ---- the state machine -----------------------------------------------------------------
        m.d.sync += todo.eq(todo & ~fired)
        with m.If(at("IDLE")):
            with m.If(regs.start):
                m.d.sync += [busy.eq(1), pc.eq(0), cycles.eq(0), goto("FETCH")]
                m.d.sync += xk_valid.eq(0)  # a run never reuses the X of the one before
        with m.If(at("FETCH")):
            with m.If(fetch_go & dma.rd_cmd.ready):
                m.d.sync += [fetch_beat.eq(0), goto("FETCH_WAIT")]
        with m.If(at("PREDECODE")):
            m.d.sync += [
                goto("DECODE"),
                dec_todo.eq(o_todo),
                dec_state.eq(o_state),
                dec_words.eq(o_words),
                dec_err.eq(o_err),
                dec_end.eq(op_dec["END"]),
            ]
        with m.If(at("DECODE")):
            # the outcome was decided in PREDECODE (registered): DECODE only applies it
            m.d.sync += [
                load_addr.eq(f[1]),
                param_taken.eq(0),
                sub.eq(0),
                pf_want.eq(~op_is["END"]),
                pf_issued.eq(0),
                op_rd_cmd_done.eq(0),
                op_rd_done.eq(~uses_rd(op_is)),
                next_valid.eq(0),
                next_beat.eq(0),
                # MM_SETUP's loop starts from these (unused by the other instructions)
                ks.eq(ks_dec),
                nsteps.eq(0),
                tiles.eq(0),
                acc_n.eq(0),
                acc_t.eq(0),
                settled.eq(0),
                checked.eq(0),
                todo.eq(dec_todo),
                param_words.eq(dec_words),
                state.eq(dec_state),
            ]
            with m.If(dec_end):
                m.d.comb += done_set.eq(1)
                m.d.sync += busy.eq(0)
            with m.If(dec_err):
                m.d.comb += error_set.eq(1)
                m.d.sync += busy.eq(0)
        with m.If(at("PARAMS")):
            # on the registered `todo` (cleared by the handshakes a cycle earlier): the
            # handshakes themselves are too deep a path into the state register
            with m.If(todo == 0):
                m.d.sync += goto("PARAMS_WAIT")
        with m.If(at("PARAMS_WAIT")):
            with m.If(params_done):
                m.d.sync += goto("ISSUE")
                with m.If(op_is["MATMUL"]):
                    m.d.sync += goto("MM_SETUP")
                with m.Elif(op_is["RESADD"]):
                    m.d.sync += todo.eq(bits("words", "unit_wr"))
                with m.Else():
                    m.d.sync += todo.eq(bits("unit_rd", "unit_wr"))
        with m.If(at("MM_SETUP")):
            # nsteps = ceil(N / cm) and tiles = ceil(T / R) by repeated addition
            n_more = acc_n < f[5]
            t_more = acc_t < f[3]
            with m.If(n_more):
                m.d.sync += [acc_n.eq(acc_n + cm), nsteps.eq(nsteps + 1)]
            with m.If(t_more):
                m.d.sync += [acc_t.eq(acc_t + R), tiles.eq(tiles + 1)]
            with m.If(~n_more & ~t_more & ~settled & ~checked):
                m.d.sync += settled.eq(1)
            with m.If(settled):
                m.d.sync += [settled.eq(0), checked.eq(1)]
            with m.If(checked):
                m.d.sync += checked.eq(0)
                with m.If(mm_ok):
                    x_bit = Mux(x_keep, 0, bits("xb"))  # X_KEEP: no X load
                    m.d.sync += [
                        goto("ISSUE"),
                        todo.eq(
                            Mux(
                                w_spm,
                                bits("engine", "wb", "ow"),
                                bits("engine", "dma_rd", "ow", *w_cmds),
                            )
                            | x_bit
                        ),
                    ]
                    with m.If(~x_keep):  # what the engine's X banks hold from now on
                        m.d.sync += [xk_valid.eq(~is_heads), xk_tokens.eq(f[3]), xk_ks.eq(ks)]
                with m.Else():
                    m.d.comb += error_set.eq(1)
                    m.d.sync += [busy.eq(0), goto("IDLE")]
        with m.If(at("ISSUE")):
            with m.If(todo == 0):
                m.d.sync += [goto("WAIT"), wait_armed.eq(0)]
        with m.If(at("WAIT")):
            # all_idle through a register (the AND of every block's idle was the tail of an
            # 11-level path into the state); it reflects this instruction's blocks from the
            # second WAIT cycle on, when every command has been taken for a cycle
            m.d.sync += wait_armed.eq(1)
            with m.If(wait_armed & all_idle_q):
                m.d.sync += goto("NEXT")
        with m.If(at("NEXT")):
            with m.If(~pf_want):
                m.d.sync += [pc.eq(pc + 1), goto("FETCH")]
            with m.Elif(next_valid):  # prefetched: decode it right away
                m.d.sync += [pc.eq(pc + 1), instr.eq(next_instr), goto("PREDECODE")]

        with m.If(Cat(dma.error, *[rd.error for rd in wdma]).any()):
            m.d.comb += error_set.eq(1)
            m.d.sync += [busy.eq(0), goto("IDLE")]
        return m


class AcceleratorTop(wiring.Component):
    """:class:`Accelerator` with the Vivado port names: ``irq``, ``s_axil_*``, ``m_axi_*``
    (``clk``/``rst`` are the sync domain's, which Amaranth names so in the Verilog)."""

    def __init__(self, design: Design, **kwargs):
        self.core = Accelerator(design, **kwargs)
        super().__init__(
            {
                "irq": Out(1),
                **prefixed_members(self.core.s_axil.signature, "s_axil_"),
                **prefixed_members(self.core.m_axi.signature, "m_axi_"),
                **{
                    k: v
                    for q in range(1, self.core.params.weight_ports)
                    for k, v in prefixed_members(
                        getattr(self.core, f"m_axi_w{q}").signature, f"m_axi_w{q}_"
                    ).items()
                },
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        connect_prefixed(m, self, "s_axil_", core.s_axil)
        connect_prefixed(m, self, "m_axi_", core.m_axi)
        for q in range(1, core.params.weight_ports):
            connect_prefixed(m, self, f"m_axi_w{q}_", getattr(core, f"m_axi_w{q}"))
        m.d.comb += self.irq.eq(core.irq)
        return m


def top_verilog(design: Design, name: str = "vitaccel_top", **kwargs) -> str:
    """Verilog of :class:`AcceleratorTop` (deterministic; all-zero memory initialisers dropped)."""
    from vitaccel.rtl.matmul import _ZERO_MEM_INIT
    from vitaccel.rtl.verilog import to_verilog

    return _ZERO_MEM_INIT.sub("", to_verilog(AcceleratorTop(design, **kwargs), name))
