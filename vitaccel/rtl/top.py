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

from types import SimpleNamespace

from amaranth import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from vitaccel.design import Design
from vitaccel.engine_host import EngineParams
from vitaccel.engine_timing import top_out_depth, unit_chains, word_writes, x_beat_words
from vitaccel.isa import field_bits
from vitaccel.rtl.axi import (
    DMA,
    WORD_BYTES,
    AXI4LiteSignature,
    AXI4ReadSignature,
    AXI4Signature,
    DMAReader,
    connect_prefixed,
    prefixed_members,
)
from vitaccel.rtl.chain_pack import ChainPacker
from vitaccel.rtl.common import CheckedComponent, elaborate_parts
from vitaccel.rtl.control import (
    CMD,
    Decoder,
    InstrFetch,
    MatmulSetup,
    State,
    Status,
    StreamDemux,
    StreamMux,
    assign,
    cmd_bits,
    join,
    row_fields,
)
from vitaccel.rtl.gelu import GELU
from vitaccel.rtl.layernorm import AILayerNorm
from vitaccel.rtl.matmul import MatmulEngine
from vitaccel.rtl.resadd import ResAdd
from vitaccel.rtl.skid import SkidBuffer
from vitaccel.rtl.softmax import E2Softmax
from vitaccel.rtl.spm import (
    ByteRunWriter,
    MappedOutWriter,
    MatmulOutWriter,
    MixedOutWriter,
    PortWStreamBuilder,
    ResidualRuns,
    RowReader,
    RowWriter,
    Scratchpad,
    WStreamBuilder,
    XStreamBuilder,
)
from vitaccel.rtl.spm.scratchpad import bank_lanes

__all__ = [
    "Accelerator",
    "AcceleratorTop",
    "TopParams",
    "top_signature",
    "top_verilog",
    "MAX_VECTOR",
]

MAX_VECTOR = 16  # a packed-W stream word sits in one 16-byte DDR slot: V <= 16

# The chain hardware (docs/isa.md "Chains"): built and bit-exact, but its X builder input
# path measured 8.0 effective LUT levels on a chaining 2x2x16x16 64-byte top (Yosys, the
# clock rule allows 6.83 at 300 MHz), so it is off until that path is cut: no design builds
# it (the Verilog of every design is what it was without it) and the compiler sets no CHAIN
# (schedule.CHAIN_DEFAULT). tests/test_rtl_chain.py builds it.
CHAIN_HARDWARE = False


def _pow2(name, value):
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two for the scratchpad readers, not {value!r}")
    return value


class TopParams:
    """Every size of an :class:`Accelerator`, derived from a :class:`~vitaccel.design.Design`.

    * SPM: ``spm_kib * 64`` words of 16 bytes.
    * Matmul engine (:class:`vitaccel.engine_host.EngineParams`): X banks of ``x_words`` words
      (``input_buffer_kib`` over the ``groups*rows`` banks of ``vector`` bytes, each in
      ``datapath_bytes / 16`` sub-banks: the X path reads as many scratchpad words of a
      token per grant from as many SPM banks and loads as many k-steps a cycle), W banks of
      ``max_ksteps`` words per half (``weight_buffer_kib`` over ``groups*cols*2`` banks),
      unless given explicitly.
    * Nonlinear units: lanes from ``design.nonlinear`` (up to ``datapath_bytes``: a unit of
      more than 16 lanes reads and writes ``lanes / 16`` SPM words a cycle, one per bank);
      E2Softmax rows up to ``max_tokens``, AILayerNorm and RESADD rows up to
      ``max_channels`` (RESADD rounded up to 16).
    """

    def __init__(self, design: Design, *, x_words=None, max_ksteps=None, out_depth=None,
                 dma_fifo_depth: int = 64):  # fmt: skip
        if not isinstance(design, Design):
            raise TypeError(f"design must be a vitaccel.design.Design, not {design!r}")
        a, nl = design.array, design.nonlinear
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
        # the X path: datapath_bytes of a token per cycle, from spm_banks words per read
        self.x_beat = x_beat_words(v, design.datapath_bytes)
        self.spm_banks = design.datapath_bytes // WORD_BYTES
        if x_words is None:
            x_words = max(16, design.input_buffer_kib * 1024 // (g * r * v))
            x_words -= x_words % self.x_beat  # whole sub-banks
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
            w_ports=design.weight_ports, x_beat=self.x_beat, x_memory=design.x_memory,
        )  # fmt: skip
        self.max_tokens = nl.max_tokens
        self.max_channels = nl.max_channels
        self.resadd_channels = -(-nl.max_channels // 16) * 16
        self.gelu_lanes = nl.gelu_lanes
        self.softmax_lanes = nl.softmax_lanes
        self.layernorm_lanes = nl.layernorm_lanes
        # the units that chain their rows into the next MATMUL's X (docs/isa.md, "Chains"):
        # lanes dividing datapath_bytes; the units of one lane count share a reader / writer
        # / fork, and a narrower one's beats are packed into X beats (ChainPacker)
        unit_lanes = {"softmax": nl.softmax_lanes, "layernorm": nl.layernorm_lanes}
        self.chains = tuple(
            unit for unit, lanes in unit_lanes.items()
            if CHAIN_HARDWARE and unit_chains(lanes, v, design.datapath_bytes)
        )  # fmt: skip
        # the lane counts of the chaining units (their writers yield, their forks feed X)
        self.chain_lanes = tuple(sorted({unit_lanes[u] for u in self.chains}))
        self.dma_fifo_depth = dma_fifo_depth

    @property
    def config_word(self) -> int:
        """CONFIG register: SPM words (31:16, saturating), groups/rows/cols (15:10, 9:5, 4:0)."""
        a = self.design.array
        words = min(self.spm_words, 0xFFFF)
        return words << 16 | (a.groups & 0x3F) << 10 | (a.rows & 0x1F) << 5 | (a.cols & 0x1F)


class Accelerator(CheckedComponent):
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

    @classmethod
    def check(cls, *, design, **kwargs):
        TopParams(design, **kwargs)

    def __init__(self, design: Design, **kwargs):
        self.params = TopParams(design, **kwargs)
        super().__init__(self.signature_for(self.params))

    @staticmethod
    def signature_for(params: TopParams) -> wiring.Signature:
        """The accelerator's ports for ``params`` (the extra weight ports are optional)."""
        return wiring.Signature(
            {
                "s_axil": In(AXI4LiteSignature(addr_width=16)),
                "m_axi": Out(AXI4Signature(addr_width=40, data_width=128)),
                **{
                    f"m_axi_w{q}": Out(AXI4ReadSignature(addr_width=40, data_width=128))
                    for q in range(1, params.weight_ports)
                },
                "irq": Out(1),
            }
        )

    def elaborate(self, platform):
        # the parts share the blocks and the controller's signals through a namespace
        return elaborate_parts(
            self._blocks, self._controller, self._dma_reads, self._word_reader, self._units,
            self._matmul, self._completion, self._state_machine,
        )  # fmt: skip

    def _blocks(self, m: Module, n: SimpleNamespace) -> None:
        """The datapath blocks and their fixed connections (docstring of the module)."""
        P = self.params
        E = P.engine
        G, C, V = E.groups, E.cols, E.vector
        m.submodules.status = n.status = Status(config=P.config_word)
        wiring.connect(m, wiring.flipped(self.s_axil), n.status.s_axil)
        m.d.comb += self.irq.eq(n.status.irq)
        m.submodules.dma = n.dma = DMA(addr_width=40, fifo_depth=P.dma_fifo_depth)
        wiring.connect(m, n.dma.bus, wiring.flipped(self.m_axi))
        # the other weight ports: a read-only DMA each, straight into the engine's w streams
        n.wdma = []
        for q in range(1, P.weight_ports):
            rd = DMAReader(addr_width=40, fifo_depth=P.dma_fifo_depth)
            m.submodules[f"wdma{q}"] = rd
            wiring.connect(m, rd.bus, wiring.flipped(getattr(self, f"m_axi_w{q}")))
            n.wdma.append(rd)

        m.submodules.words = n.words = RowReader(lanes=16)
        n.unit_lanes = sorted({P.gelu_lanes, P.softmax_lanes, P.layernorm_lanes})
        n.unit_rd, n.unit_wr = {}, {}
        for lanes in n.unit_lanes:
            # lanes beyond one word (<= datapath_bytes, Design checks): the unit reads and
            # writes lanes/16 consecutive words of the banked scratchpad a cycle
            words = max(1, lanes // WORD_BYTES)
            n.unit_rd[lanes] = m.submodules[f"unit_rd{lanes}"] = RowReader(
                lanes=lanes, **({"fetch_words": words} if words > 1 else {})
            )
            # (a chaining unit's writer runs beside the MATMUL's writers: it yields to them)
            yields = {"yields": True} if lanes in P.chain_lanes else {}
            n.unit_wr[lanes] = m.submodules[f"unit_wr{lanes}"] = RowWriter(
                lanes=lanes, **({"wide": True} if words > 1 else {}), **yields
            )
        m.submodules.res_wr = n.res_wr = RowWriter(lanes=16)
        # the X builder's beats are the engine's X beats: x_beat k-steps of V bytes
        m.submodules.xb = n.xb = XStreamBuilder(
            groups=G, vector=E.x_beat * V, fetch_words=P.spm_banks,
            **({"chain": True} if P.chains else {}),
        )  # fmt: skip
        fetch = {"fetch_words": P.spm_banks} if P.spm_banks > 1 else {}
        # W_SPM on an all-W8 array of several weight ports: a builder per port, each filling
        # its port's columns at a word a cycle (cost.spm_w_word_cycles); else one builder
        # whose stream a demux splits by column
        n.w_port_builders = P.weight_ports > 1 and E.cols_w4 == 0
        if n.w_port_builders:
            kw = dict(groups=G, cols=C, vector=V, ports=P.weight_ports, acc_bits=E.acc_bits,
                      w_bits=E.w_word_bits, **fetch)  # fmt: skip
            n.wbs = [PortWStreamBuilder(port=q, **kw) for q in range(P.weight_ports)]
            for q, wb in enumerate(n.wbs):
                m.submodules[f"wb{q}" if q else "wb"] = wb
            n.wb = n.wbs[0]
        else:
            m.submodules.wb = n.wb = WStreamBuilder(
                groups=G, cols=C, vector=V, acc_bits=E.acc_bits, w_bits=E.w_word_bits,
                cols_w8=E.cols_w8, **fetch,
            )  # fmt: skip
            n.wbs = [n.wb]
        # the builders take a command together (each is ready when idle)
        n.wb_ready = Cat(*[b.cmd.ready for b in n.wbs]).all() if n.w_port_builders else None
        # mixed W4/W8 columns: the output channels follow the column map, byte by byte
        n.mixed = E.cols_w4 > 0
        if n.mixed and word_writes(E.cols_w8, P.spm_banks):
            # W_SPM jobs (the W8-column rule) on the all-W8 writer's word path
            m.submodules.ow = n.ow = MixedOutWriter(
                groups=G, cols=C, cols_w8=E.cols_w8, banks=P.spm_banks
            )
        elif n.mixed:
            m.submodules.ow = n.ow = MappedOutWriter(groups=G, cols=C, cols_w8=E.cols_w8)
        else:
            # on a banked scratchpad, groups of whole words: the bank-parallel word path
            m.submodules.ow = n.ow = MatmulOutWriter(groups=G, cols=C, banks=P.spm_banks)
        m.submodules.brw = n.brw = ByteRunWriter()
        # the residual add fused into a MATMUL's output runs (reads A through its own port)
        m.submodules.rr = n.rr = ResidualRuns(
            max_channels=P.resadd_channels, **({"byte_runs": True} if n.mixed else {})
        )
        readers = [n.words.mem] + [n.unit_rd[lanes].mem for lanes in n.unit_lanes]
        readers += [n.xb.mem, *[wb.mem for wb in n.wbs], n.rr.mem]
        # with banks, the X and W builders (readers[-2 - len(wbs)] .. readers[-2]) read
        # spm_banks consecutive words a grant, and a unit reader / writer of more than 16
        # lanes lanes/16 words
        wide_units = [lanes for lanes in n.unit_lanes if lanes > WORD_BYTES]
        xw = range(2 + len(n.wbs), 1, -1)
        wide = {len(readers) - k: P.spm_banks for k in xw} if P.spm_banks > 1 else {}
        for lanes in wide_units:
            wide[1 + n.unit_lanes.index(lanes)] = lanes // WORD_BYTES
        writers = [n.brw.mem] + [n.unit_wr[lanes].mem for lanes in wide_units]
        # the output writer's word path: a lane per bank, the last write client
        words_path = getattr(n.ow, "word_path", False)
        bank_writes = {"bank_writes": (1 + len(writers),)} if words_path else {}
        if words_path:
            writers.append(n.ow.wo)
        m.submodules.spm = spm = Scratchpad(
            words=P.spm_words, read_clients=len(readers), write_clients=1 + len(writers),
            banks=P.spm_banks, wide=wide, memory=P.design.spm_memory,
            wide_writes={2 + j: lanes // WORD_BYTES for j, lanes in enumerate(wide_units)},
            **bank_writes,
        )  # fmt: skip
        for i, client in enumerate(readers):
            wiring.connect(m, client, spm.clients()[i])
        n.load_wr = spm.writers()[0]  # LOAD: DMA words -> SPM
        for i, client in enumerate(writers):
            wiring.connect(m, client, spm.writers()[1 + i])
        if P.chains:
            # the chaining unit's writer waits while the MATMUL's writers write (the
            # scratchpad's write clients have no arbiter: the lower one would win a bank)
            others = [n.brw.mem.en]
            if words_path:
                others += [lane.en for lane in bank_lanes(n.ow.wo)]
            for lanes in P.chain_lanes:
                m.d.comb += n.unit_wr[lanes].hold.eq(Cat(*others).any())

        m.submodules.gelu = n.gelu = GELU(lanes=P.gelu_lanes)
        m.submodules.softmax = n.softmax = E2Softmax(
            lanes=P.softmax_lanes,
            max_row=P.max_tokens,
            output="log2" if P.softmax_log2 else "uint8",
        )
        m.submodules.layernorm = n.ln = AILayerNorm(
            lanes=P.layernorm_lanes, max_channels=P.max_channels, bias_bits=32
        )
        m.submodules.resadd = n.resadd = ResAdd(max_channels=P.resadd_channels)
        m.submodules.engine = n.engine = MatmulEngine(E)
        # The engine's output words pass one register with a GELU table per byte: MATMUL
        # GELU looks every byte up (FC1's GELU fused), other MATMULs pass through it.
        m.submodules.mm_gelu = n.mm_gelu = GELU(lanes=G * C, bypass=True)
        # packed W from DDR (port 0) into the engine through a skid buffer: the gate (state,
        # opcode, end of the instruction's words) and the engine's loader logic are then in
        # different cycles
        m.submodules.w_skid = n.w_skid = SkidBuffer(unsigned(E.w_word_bits))
        # the residual unit's results through a skid buffer: its whole-pipeline stall then
        # starts at a register, not at the writers behind it
        m.submodules.res_skid = n.res_skid = SkidBuffer(n.resadd.o.payload.shape())
        wiring.connect(m, n.resadd.o, n.res_skid.i)

    def _controller(self, m: Module, n: SimpleNamespace) -> None:
        """Fetch, decoder, MATMUL setup, status: the controller's components and registers."""
        P = self.params
        E = P.engine
        m.submodules.decoder = n.dec = Decoder(
            vector=E.vector,
            max_channels=P.max_channels,
            resadd_channels=P.resadd_channels,
            max_tokens=P.max_tokens,
            softmax_log2=P.softmax_log2,
            **({"chains": P.chains} if P.chains else {}),
        )
        m.submodules.fetch = n.fetch = InstrFetch(predecode=n.dec.predecode)
        m.submodules.mm_setup = n.setup = MatmulSetup(
            groups=E.groups, rows=E.rows, cols=E.cols, x_words=E.x_words,
            max_ksteps=E.max_ksteps, weight_ports=P.weight_ports, log2=P.softmax_log2,
            x_beat=E.x_beat, cols_w8=E.cols_w8,
        )  # fmt: skip
        n.instr = n.fetch.instr
        m.d.comb += [n.dec.instr.eq(n.instr), n.dec.pre.eq(n.fetch.pre), n.setup.instr.eq(n.instr)]
        n.op_is = n.dec.op_is
        n.mm = n.instr.matmul
        n.w_spm = n.mm.flag.w_spm
        n.is_heads = n.mm.flag.heads

        # The state as one flag per state (`in_<state>`, one-hot): a binary state decoded in
        # front of the routes, the commands' valids and the next-state logic headed 7-8-level
        # paths (into the state itself through its own decode and the fetch handshake); each
        # flag's next value is a short sum of (flag, condition) terms (_state_machine)
        n.flags = {s.name: Signal(name=f"in_{s.name.lower()}", init=s == State.IDLE) for s in State}
        n.at = lambda name: n.flags[name]
        n.in_state = n.flags
        n.in_params = n.flags["PARAMS"]
        # "state is ISSUE or PARAMS" (when commands go out) as one more register beside them
        n.issuing = Signal()
        n.pc = Signal(32)
        n.busy = Signal()
        n.todo = Signal(len(CMD))
        n.fired = Signal(len(CMD))  # command handshakes this cycle
        n.done_set = Signal()
        n.error_set = Signal()
        st = n.status
        m.d.comb += [
            st.busy.eq(n.busy),
            st.done.eq(n.done_set),
            st.error.eq(n.error_set),
            st.pc.eq(n.pc),
            st.clear_cycles.eq(n.at("IDLE") & st.start),
            n.setup.clear_x.eq(n.at("IDLE") & st.start),
            n.setup.start.eq(n.at("DECODE")),
            n.setup.run.eq(n.at("MM_SETUP")),
            n.setup.ksteps_in.eq(n.dec.ksteps),
            n.dec.latch.eq(n.at("PREDECODE")),
        ]
        n.cmd_valid = lambda name: n.todo[CMD[name]] & n.issuing
        n.data_base = st.data_base[:40]
        if P.chains:
            # a chain (docs/isa.md, "Chains"; _state_machine sets and clears these):
            # chain_pending - the chained unit is issued, its MATMUL not yet decoded;
            # chain_fwd - the unit's beats go to the X builder as well (until the MATMUL's
            # WAIT ends, or the run does); chain_hold - the unit's routes held past its
            # instruction (until that WAIT ends)
            n.chain_pending = Signal()
            n.chain_fwd = Signal()
            n.chain_hold = {u: Signal(name=f"chain_hold_{u}") for u in P.chains}
            m.d.comb += n.dec.chain_in.eq(n.chain_pending)

    def _dma_reads(self, m: Module, n: SimpleNamespace) -> None:
        """The DMA reader's commands (fetch, prefetch, LOAD, packed W) and where its words go.

        Prefetch: while an instruction runs, the next one is read into the fetch unit's
        buffer (after the instruction's own DMA read command, if it has one; the reader keeps
        commands in order and ``last`` tells where the instruction's words end).
        """
        E = self.params.engine
        dma, op_is, at, fetch = n.dma, n.op_is, n.at, n.fetch
        # (registered pieces only: the prefetch request is a short path into the DMA command)
        op_uses_rd = (op_is.load & ~n.dec.load_words_zero) | (op_is.matmul & ~n.w_spm)
        n.pf_want = Signal()  # prefetch PC + 1 for this instruction
        n.pf_issued = Signal()
        n.op_rd_cmd_done = Signal()  # the instruction's own DMA read command has been taken
        n.op_rd_done = Signal()  # ... and its last word consumed
        # the states an instruction runs in, a cycle late (registered): the prefetch waits at
        # least that long after DECODE anyway, and leaves NEXT with it issued or not wanted
        running = Signal()
        states = ("PARAMS", "PARAMS_WAIT", "MM_SETUP", "ISSUE", "WAIT", "NEXT")
        m.d.sync += running.eq(Cat(*[at(s) for s in states]).any())
        pf_valid = Signal()
        m.d.comb += pf_valid.eq(
            running & n.pf_want & ~n.pf_issued & (~op_uses_rd | n.op_rd_cmd_done)
        )
        # DDR addresses computed a cycle ahead, in registers (pc, the instruction and the
        # base registers are stable by the time a command uses them; FETCH waits a cycle for
        # its address): the 40-bit adds stay out of the command paths
        prog_addr = n.status.prog_addr[:40]
        a_fetch = Signal(40)
        a_next = Signal(40)
        n.a_ddr = Signal(40)  # LOAD/STORE
        a_w = Signal(40)  # MATMUL's packed W (port 0)
        n.a_w = [Signal(40, name=f"a_w{q + 1}") for q in range(len(n.wdma))]
        m.d.sync += [
            a_fetch.eq(prog_addr + (n.pc << 5)),
            a_next.eq(prog_addr + ((n.pc + 1) << 5)),
            n.a_ddr.eq(n.data_base + n.instr.load.ddr),
            a_w.eq(n.data_base + n.mm.w_ddr),
            *[
                a.eq(n.data_base + n.mm.w_ddr + off)
                for a, off in zip(n.a_w, n.setup.w_offs_list, strict=True)
            ],
        ]
        fetch_armed = Signal()  # FETCH's second cycle on: a_fetch holds this pc's address
        m.d.sync += fetch_armed.eq(at("FETCH"))
        # never behind stale words. The reader's idle a cycle late (its FIFO level test was
        # the head of a 7.25-level path into the state and the command skid): it can only
        # fall when a command is taken, and none is in FETCH's first cycle (no prefetch
        # leads into FETCH), so from the second on the late value is the current one.
        rd_idle_q = Signal()
        m.d.sync += rd_idle_q.eq(dma.rd_idle)
        n.fetch_go = at("FETCH") & fetch_armed & rd_idle_q
        cmd = dma.rd_cmd.payload
        m.d.comb += dma.rd_cmd.valid.eq(n.cmd_valid("dma_rd") | n.fetch_go | pf_valid)
        with m.If(at("FETCH")):
            m.d.comb += [cmd.addr.eq(a_fetch), cmd.words.eq(2)]
        with m.Elif(pf_valid):
            m.d.comb += [cmd.addr.eq(a_next), cmd.words.eq(2)]
        with m.Elif(op_is.load):
            m.d.comb += [cmd.addr.eq(n.a_ddr), cmd.words.eq(n.instr.load.words)]
        with m.Else():  # MATMUL, packed W from DDR: nsteps * G*C * (1 + ks) slots
            m.d.comb += [cmd.addr.eq(a_w), cmd.words.eq(n.setup.w_slots)]
        with m.If(pf_valid & dma.rd_cmd.ready):
            m.d.sync += n.pf_issued.eq(1)
        with m.If(n.cmd_valid("dma_rd") & dma.rd_cmd.ready):
            m.d.sync += n.op_rd_cmd_done.eq(1)

        # the words: stale ones (a run stopped by an error) drained while idle, the fetched
        # or prefetched instruction, LOAD data, packed W
        m.submodules.rd_route = route = StreamDemux(dma.rd.payload.shape(), 4)
        wiring.connect(m, dma.rd, route.i)
        drain, to_fetch, to_load, to_w = route.o
        in_state = n.in_state
        load_on = in_state["WAIT"] & op_is.load & ~n.op_rd_done
        w_on = in_state["WAIT"] & op_is.matmul & ~n.w_spm & ~n.op_rd_done
        m.d.comb += route.sel.eq(
            Cat(
                in_state["IDLE"] | in_state["FETCH"],
                in_state["FETCH_WAIT"] | (running & n.op_rd_done & n.pf_issued & ~fetch.next_valid),
                load_on,
                w_on,
            )
        )
        m.d.comb += drain.ready.eq(1)
        join(m, to_fetch, fetch.rd, payload=fetch.rd.payload.eq(to_fetch.payload.data))
        m.d.comb += [
            fetch.fetch.eq(at("FETCH_WAIT")),
            fetch.fetch_start.eq(at("FETCH") & n.fetch_go & dma.rd_cmd.ready),
            fetch.clear_next.eq(at("DECODE")),
            fetch.advance.eq(at("NEXT") & n.pf_want & fetch.next_valid),
        ]
        n.load_addr = Signal(16)
        with m.If(load_on):
            m.d.comb += [
                to_load.ready.eq(1),
                n.load_wr.en.eq(to_load.valid),
                n.load_wr.addr.eq(n.load_addr),
                n.load_wr.data.eq(to_load.payload.data),
                n.load_wr.be.eq(0xFFFF),
            ]
            with m.If(to_load.valid):
                m.d.sync += n.load_addr.eq(n.load_addr + 1)
        w_bits = E.w_word_bits
        if n.mixed:
            n.map_qs = []
            self._map_tap(m, n, 0, to_w, n.w_skid.i)
        else:
            join(m, to_w, n.w_skid.i, payload=n.w_skid.i.payload.eq(to_w.payload.data[:w_bits]))
        for end in (to_load, to_w):
            with m.If(end.valid & end.ready & end.payload.last):
                m.d.sync += n.op_rd_done.eq(1)

    def _map_tap(self, m: Module, n: SimpleNamespace, port: int, src, dst) -> None:
        """Mixed W4/W8 arrays: weight port ``port``'s packed W words (``src``, DMA beats) into
        the engine (``dst``), and from each parameter word's slot its column's output channel
        (bytes 14-15, past the engine's word) into the port's map queue (``n.map_qs``), which
        :meth:`_map_merge` hands to the output writer. Every port carries the map entries of
        its own columns, so a queue holds two steps of them (the engine's two W halves);
        when it is full the port's W stream waits."""
        from vitaccel.flow.codec import CHANNEL_BYTE

        E = self.params.engine
        sfx = "" if port == 0 else str(port)
        depth = 2 * E.groups * E.cols // self.params.weight_ports
        m.submodules[f"map_q{sfx}"] = q = SyncFIFOBuffered(width=16, depth=depth)
        at = Signal(16, name=f"map_tap_at{sfx}")  # slot within the column: 0 = parameter word
        param = at == 0
        room = ~param | q.w_rdy
        take = src.valid & src.ready
        with m.If(n.at("MM_SETUP")):
            m.d.sync += at.eq(0)
        with m.If(take):
            m.d.sync += at.eq(Mux(at == n.setup.ksteps, 0, at + 1))
        m.d.comb += [
            dst.valid.eq(src.valid & room),
            src.ready.eq(dst.ready & room),
            dst.payload.eq(src.payload.data[: E.w_word_bits]),
            q.w_data.eq(src.payload.data[8 * CHANNEL_BYTE : 8 * CHANNEL_BYTE + 16]),
            q.w_en.eq(take & param),
        ]
        n.map_qs.append(q)

    def _map_merge(self, m: Module, n: SimpleNamespace) -> None:
        """The output writer takes a step's map entries in column order: the ``M = G*C / P``
        entries of port 0's queue, then port 1's, ... (port q carries columns q*M ..
        q*M + M-1, :func:`vitaccel.engine_host.split_w_stream`)."""
        qs, ow = n.map_qs, n.ow
        if len(qs) == 1:
            (q,) = qs
            m.d.comb += [
                ow.map.valid.eq(q.r_rdy),
                ow.map.payload.eq(q.r_data),
                q.r_en.eq(ow.map.ready),
            ]
            return
        E = self.params.engine
        per_port = E.groups * E.cols // len(qs)
        sel = Signal(range(len(qs)), name="map_sel")  # the queue of the next entry
        left = Signal(range(per_port), name="map_left")  # its entries after the next one
        with m.If(n.at("MM_SETUP")):
            m.d.sync += [sel.eq(0), left.eq(per_port - 1)]
        with m.If(ow.map.valid & ow.map.ready):
            with m.If(left == 0):
                m.d.sync += [left.eq(per_port - 1), sel.eq(Mux(sel == len(qs) - 1, 0, sel + 1))]
            with m.Else():
                m.d.sync += left.eq(left - 1)
        m.d.comb += [
            ow.map.valid.eq(Array(q.r_rdy for q in qs)[sel]),
            ow.map.payload.eq(Array(q.r_data for q in qs)[sel]),
            *[q.r_en.eq(ow.map.ready & (sel == k)) for k, q in enumerate(qs)],
        ]

    def _word_reader(self, m: Module, n: SimpleNamespace) -> None:
        """The 16-lane word reader: STORE data, parameter blocks, RESADD's A and B rows; and
        the parameter loaders (PARAMS_WAIT), one SPM word at a time."""
        op_is, i = n.op_is, n.instr
        words, dma = n.words, n.dma
        wcmd = words.cmd.payload
        m.d.comb += words.cmd.valid.eq(n.cmd_valid("words"))
        n.param_words = Signal(16)  # words the current PARAMS phase reads
        n.param_taken = Signal(16)
        # GELU's table and LAYERNORM's parameter block are given in the same word
        assert field_bits("GELU")["table"] == field_bits("LAYERNORM")["params"]
        with m.If(n.in_params):
            base = Mux(
                op_is.resadd,
                i.resadd.params,
                Mux(op_is.matmul, Mux(n.mm.flag.gelu, n.mm.gelu_table, n.mm.residual_params),
                    i.gelu.table),
            )  # fmt: skip
            m.d.comb += assign(wcmd, base=base, stride=1, rows=n.param_words, cols=16)
        with m.Elif(op_is.store):
            m.d.comb += assign(wcmd, base=i.store.spm, stride=1, rows=i.store.words, cols=16)
        with m.Else():  # RESADD: A row r, then B row r
            r = i.resadd
            m.d.comb += assign(wcmd, base=r.a, stride=r.a_stride, rows=r.rows, cols=r.cols,
                               base2=r.b, stride2=r.b_stride, dual=1)  # fmt: skip
        # STORE data to the DMA writer, RESADD rows to the unit, parameter words to the loaders
        m.submodules.words_route = route = StreamDemux(words.o.payload.shape(), 3)
        wiring.connect(m, words.o, route.i)
        to_dma, to_resadd, to_params = route.o
        in_state = n.in_state
        m.d.comb += route.sel.eq(
            Cat(op_is.store, in_state["WAIT"] & op_is.resadd, in_state["PARAMS_WAIT"])
        )
        join(m, to_dma, dma.wr, payload=dma.wr.payload.eq(to_dma.payload.data.as_value()))
        m.d.comb += [
            dma.wr_cmd.valid.eq(n.cmd_valid("dma_wr")),
            dma.wr_cmd.payload.addr.eq(n.a_ddr),
            dma.wr_cmd.payload.words.eq(i.store.words),
        ]
        rsd = n.resadd.i.payload.as_value()
        join(m, to_resadd, n.resadd.i, payload=rsd.eq(to_resadd.payload.as_value()))
        self._param_loaders(m, n, to_params)

    def _param_loaders(self, m: Module, n: SimpleNamespace, src) -> None:
        """PARAMS_WAIT: GELU tables (16 entries a word), LAYERNORM constants (2 channels a
        word), RESADD multipliers (4 channels a word, straight into the parameter banks)."""
        gelu, ln, resadd, op_is = n.gelu, n.ln, n.resadd, n.op_is
        n.sub = sub = Signal(4)  # entry within the word
        # "the entry on src is its word's last" (the loaders' ready), a register: decoded
        # from the opcode flags and `sub` behind the word reader's output it was a 7-level
        # path into the reader's skid buffer. PARAMS (sub is 0, no word comes) sets it for
        # the first word; each entry taken sets it for the next one.
        word_last = Signal()
        gelu_table = op_is.gelu | n.dec.mm_gelu
        with m.If(n.in_params):
            m.d.sync += word_last.eq(~gelu_table & ~op_is.layernorm)
        word_take = Signal()
        word_data = src.payload.data.as_value()
        taken = n.param_taken
        # (src.valid only in PARAMS_WAIT: the word route selects the loaders there alone)
        m.d.comb += [src.ready.eq(word_last), word_take.eq(src.valid & word_last)]
        with m.If(n.in_state["PARAMS_WAIT"]):
            with m.If(gelu_table):  # 16 table entries a word
                m.d.comb += [
                    gelu.table_addr.eq(Cat(sub, taken[:4])),
                    gelu.table_data.eq(word_data.word_select(sub, 8)),
                    gelu.table_we.eq(src.valid),
                ]
                with m.If(src.valid):
                    m.d.sync += [sub.eq(sub + 1), word_last.eq(sub == 14)]
            with m.Elif(op_is.layernorm):  # 2 channels a word, 8 bytes each
                entry = word_data.word_select(sub[0], 64)
                chan = Cat(sub[0], taken)
                m.d.comb += [
                    ln.const_addr.eq(chan),
                    ln.const_alpha.eq(entry[0:2]),
                    ln.const_gain.eq(entry[16:32]),
                    ln.const_bias.eq(entry[32:64]),
                    ln.const_we.eq(src.valid & (chan < n.instr.layernorm.cols)),
                ]
                with m.If(src.valid):
                    m.d.sync += [sub.eq(Mux(sub[0], 0, 1)), word_last.eq(~sub[0])]
            with m.Else():  # RESADD
                m.d.comb += [
                    resadd.param_addr.eq(taken),
                    resadd.param_data.eq(word_data),
                    resadd.param_we.eq(src.valid),
                ]
            with m.If(word_take):
                m.d.sync += taken.eq(taken + 1)
        # the fused GELU table is written with the GELU unit's (both hold the last table)
        m.d.comb += [
            n.mm_gelu.table_addr.eq(gelu.table_addr),
            n.mm_gelu.table_data.eq(gelu.table_data),
            n.mm_gelu.table_we.eq(gelu.table_we),
        ]
        # all read and the word reader idle, a cycle late (PARAMS lasts >= 1 cycle, so the
        # flag is fresh in PARAMS_WAIT; the compare in the FSM's path was 10 LUT levels)
        n.params_done = Signal()
        m.d.sync += n.params_done.eq((taken == n.param_words) & n.words.idle)

    def _units(self, m: Module, n: SimpleNamespace) -> None:
        """GELU, SOFTMAX, LAYERNORM, RESADD: their readers, writers, scalars, and the byte-run
        writer's input (the active instruction's writer)."""
        P = self.params
        op_is, i = n.op_is, n.instr
        gelu, softmax, ln, resadd = n.gelu, n.softmax, n.ln, n.resadd
        # unit scalars come straight from the instruction fields (constant while it runs);
        # the residual add's shift through a register
        res_shift = Signal(6)
        shift_field = Mux(op_is.matmul, n.mm.residual_shift, i.resadd.shift)
        m.d.sync += res_shift.eq(Mux(shift_field > 63, 63, shift_field))
        scalars = {
            "softmax": [(softmax.in_shift, i.softmax.in_shift)],
            "layernorm": [
                (ln.recip_mult, i.layernorm.recip_mult),
                (ln.recip_shift, i.layernorm.recip_shift),
                (ln.out_shift, i.layernorm.out_shift),
                (ln.eps_q, i.layernorm.eps_q),
            ],
        }
        for unit, pairs in scalars.items():
            if unit in P.chains:
                # a chained unit runs on under the next instruction: its scalars are
                # registered while its own instruction is the current one (the decoder's
                # `op`, in step with the instruction register; `op_is` is a cycle late)
                with m.If(getattr(n.dec.op, unit)):
                    m.d.sync += [port.eq(field) for port, field in pairs]
            else:
                m.d.comb += [port.eq(field) for port, field in pairs]
        m.d.comb += resadd.shift.eq(res_shift)
        rows = row_fields(i)
        reads = {"base": rows.src, "stride": rows.src_stride, "rows": rows.rows, "cols": rows.cols}
        writes = {**reads, "base": rows.dst, "stride": rows.dst_stride}
        units = [("gelu", gelu, P.gelu_lanes), ("softmax", softmax, P.softmax_lanes),
                 ("layernorm", ln, P.layernorm_lanes)]  # fmt: skip
        writers = {}  # lanes -> (writer output, its instructions)
        for lanes in n.unit_lanes:
            rd, wr = n.unit_rd[lanes], n.unit_wr[lanes]
            mine = [(name, unit) for name, unit, ln_ in units if ln_ == lanes]
            # (a chained unit's routes stay while the next instruction runs)
            hold = getattr(n, "chain_hold", {})
            sel = Cat(*[getattr(op_is, name) | hold[name] if name in hold
                        else getattr(op_is, name) for name, _ in mine])  # fmt: skip
            m.d.comb += [
                rd.cmd.valid.eq(n.cmd_valid("unit_rd") & sel.any()),
                *assign(rd.cmd.payload, **reads),
                wr.cmd.valid.eq(n.cmd_valid("unit_wr") & sel.any()),
                *assign(wr.cmd.payload, **writes),
            ]
            # routed by the (registered) opcode alone: a unit's reader and writer carry beats
            # only while its instruction runs
            m.submodules[f"unit_in{lanes}"] = fan = StreamDemux(rd.o.payload.shape(), len(mine))
            m.submodules[f"unit_out{lanes}"] = mux = StreamMux(wr.i.payload.shape(), len(mine))
            wiring.connect(m, rd.o, fan.i)
            if lanes in P.chain_lanes:
                port = self._chain_port(m, n, lanes, mine)
                self._chain_fork(m, n, mux.o, wr.i, port, n.chain_fwd_of[lanes])
            else:
                wiring.connect(m, mux.o, wr.i)
            m.d.comb += [fan.sel.eq(sel), mux.sel.eq(sel)]
            for k, (_, unit) in enumerate(mine):
                into, out, beat = unit.i.payload, unit.o.payload, mux.i[k].payload
                join(m, fan.o[k], unit.i, payload=into.as_value().eq(fan.o[k].payload.as_value()))
                # one byte per element (log2 codes are zero-extended)
                join(m, unit.o, mux.i[k], payload=[
                    beat.count.eq(out.count),
                    beat.last.eq(out.last),
                    *[beat.data[j].eq(out.data[j]) for j in range(lanes)],
                ])  # fmt: skip
            if not wr.wide:  # (a wide writer writes the scratchpad itself)
                writers[lanes] = (wr.o, sel.any())
        # RESADD: its output rows, or (MATMUL RESADD) the sums back to the output runs
        res_wr = n.res_wr
        m.d.comb += [
            res_wr.cmd.valid.eq(n.cmd_valid("unit_wr") & op_is.resadd),
            *assign(res_wr.cmd.payload, **writes),
        ]
        m.submodules.res_route = res_route = StreamDemux(n.res_skid.o.payload.shape(), 2)
        wiring.connect(m, n.res_skid.o, res_route.i)
        m.d.comb += res_route.sel.eq(Cat(op_is.resadd, op_is.matmul))
        to_wr = res_route.o[0]
        join(m, to_wr, res_wr.i, payload=res_wr.i.payload.as_value().eq(to_wr.payload.as_value()))
        # MATMUL RESADD: runs -> ResidualRuns (reads A) -> the unit's pair input -> runs
        rr, ow, mm_res, mm_plain = n.rr, n.ow, n.dec.mm_res, n.dec.mm_plain
        wiring.connect(m, res_route.o[1], rr.res)
        rr_delta = Signal(16)
        m.d.sync += rr_delta.eq(n.mm.residual - n.mm.y)  # A base - Y base (A has Y's stride)
        wiring.connect(m, rr.pair, resadd.pair)
        m.d.comb += [resadd.use_pair.eq(op_is.matmul), rr.delta.eq(rr_delta), rr.chan.eq(ow.chan)]
        m.submodules.ow_route = ow_route = StreamDemux(ow.o.payload.shape(), 2)
        wiring.connect(m, ow.o, ow_route.i)
        m.d.comb += ow_route.sel.eq(Cat(mm_plain, mm_res))
        if getattr(ow, "word_path", False):  # the residual add takes runs, not words
            m.d.comb += ow.force_runs.eq(mm_res)
        wiring.connect(m, ow_route.o[1], rr.i)
        # the byte-run writer takes the active instruction's runs
        sources = [
            (res_wr.o, op_is.resadd),
            (ow_route.o[0], mm_plain),
            (rr.o, mm_res),
            *writers.values(),
        ]
        m.submodules.runs = runs = StreamMux(n.brw.i.payload.shape(), len(sources))
        for k, (src, _) in enumerate(sources):
            wiring.connect(m, src, runs.i[k])
        m.d.comb += runs.sel.eq(Cat(*[sel for _, sel in sources]))
        wiring.connect(m, runs.o, n.brw.i)

    def _chain_port(self, m: Module, n: SimpleNamespace, lanes: int, mine) -> object:
        """Where the fork of the chaining units of ``lanes`` lanes (``mine``: their names and
        units) sends its beats: the X builder's chain input itself when the datapath's lanes
        are the only ones that chain (every chain is theirs), else a stream of its own: a
        :class:`ChainPacker`'s input (fewer lanes than the datapath) or, with two lane
        counts, one input of the mux that gives the X builder the chained unit's beats (at
        most one chain runs at a time: selected by its ``chain_hold``). Sets
        ``n.chain_fwd_of[lanes]``, the fork's forward flag (``chain_fwd`` while a unit of
        these lanes is the chained one)."""
        P = self.params
        width = P.design.datapath_bytes
        if not hasattr(n, "chain_fwd_of"):
            n.chain_fwd_of, n.chain_srcs = {}, []
        if P.chain_lanes == (width,):
            n.chain_fwd_of[lanes] = n.chain_fwd
            return n.xb.chain
        hold = Cat(*[n.chain_hold[name] for name, _ in mine if name in n.chain_hold]).any()
        fwd = Signal(name=f"chain_fwd{lanes}")
        m.d.comb += fwd.eq(n.chain_fwd & hold)
        n.chain_fwd_of[lanes] = fwd
        if lanes < width:
            m.submodules[f"chain_pack{lanes}"] = pack = ChainPacker(lanes=lanes, width=width)
            m.d.comb += pack.clear.eq(n.at("IDLE"))
            port, out = pack.i, pack.o
        else:
            port = out = stream.Signature(n.xb.chain.payload.shape()).create(
                path=(f"chain_x{lanes}",)
            )
        n.chain_srcs.append((hold, out))
        if len(n.chain_srcs) == len(P.chain_lanes):
            self._chain_select(m, n)
        return port

    @staticmethod
    def _chain_select(m: Module, n: SimpleNamespace) -> None:
        """The X builder's chain input from the chaining lane counts' streams (a packer's
        output, or the datapath-wide fork's): the one whose unit's ``chain_hold`` is set.
        Only the chained unit's stream carries beats (its fork forwards, its packer fills)."""
        xb = n.xb.chain
        if len(n.chain_srcs) == 1:
            wiring.connect(m, n.chain_srcs[0][1], xb)
            return
        m.d.comb += xb.valid.eq(Cat(*[src.valid for _, src in n.chain_srcs]).any())
        with m.Switch(Cat(*[hold for hold, _ in n.chain_srcs])):
            for k, (_, src) in enumerate(n.chain_srcs):
                with m.Case(1 << k):
                    m.d.comb += xb.payload.eq(src.payload)
        m.d.comb += [src.ready.eq(xb.ready) for _, src in n.chain_srcs]

    @staticmethod
    def _chain_fork(m: Module, n: SimpleNamespace, src, wr, xb, fwd=None) -> None:
        """The chaining unit's output beats to its writer ``wr`` and, while ``chain_fwd``,
        to the X builder's chain input ``xb`` as well: a beat leaves when both take it. Both
        readys are registers (skid buffers), so neither valid waits on a path through the
        other consumer."""
        fwd = n.chain_fwd if fwd is None else fwd
        m.d.comb += [
            wr.payload.eq(src.payload),
            xb.payload.eq(src.payload),
            wr.valid.eq(src.valid & (~fwd | xb.ready)),
            xb.valid.eq(src.valid & fwd & wr.ready),
            src.ready.eq(wr.ready & (~fwd | xb.ready)),
        ]

    def _matmul(self, m: Module, n: SimpleNamespace) -> None:
        """MATMUL: the engine's command, the X/W builders, the output writer, the W streams."""
        P = self.params
        E = P.engine
        G, C = E.groups, E.cols
        engine, xb, wb, ow, mm, fl = n.engine, n.xb, n.wb, n.ow, n.mm, n.mm.flag
        setup = n.setup
        nheads = Mux(n.is_heads, mm.heads, 1)
        heads = {"heads": n.is_heads, "nheads": nheads}
        log2 = {"x_log2": fl.x_log2} if P.softmax_log2 else {}
        m.d.comb += [
            engine.cmd.valid.eq(n.cmd_valid("engine")),
            xb.cmd.valid.eq(n.cmd_valid("xb")),
            *(
                [b.cmd.valid.eq(n.cmd_valid("wb") & n.wb_ready) for b in n.wbs]
                if n.w_port_builders
                else [wb.cmd.valid.eq(n.cmd_valid("wb"))]
            ),
            ow.cmd.valid.eq(n.cmd_valid("ow")),
            *assign(engine.cmd.payload, tokens=mm.tokens, ksteps=setup.ksteps,
                    nsteps=setup.nsteps, heads=n.is_heads, x_unsigned=fl.x_unsigned,
                    x_keep=fl.x_keep, lo=-128, hi=127, **log2),
            *assign(xb.cmd.payload, base=mm.x, stride=mm.x_stride, tokens=mm.tokens, k=mm.k,
                    head_step=mm.head_x_step, **heads),
            *[x for b in n.wbs for x in assign(
                b.cmd.payload, base=mm.w_spm, stride=mm.w_stride, n=mm.n, k=mm.k,
                head_step=mm.head_w_step, mult=mm.mult, shift=mm.shift, **heads)],
            *assign(ow.cmd.payload, base=mm.y, stride=mm.y_stride, tokens=mm.tokens, n=mm.n,
                    head_step=mm.head_y_step, transposed=fl.out_t, **heads),
        ]  # fmt: skip
        if n.mixed:
            m.d.comb += assign(ow.cmd.payload, nsteps=setup.nsteps, w8_rule=n.w_spm)
        if P.chains:  # a chained unit's rows are this MATMUL's X; stale ones dropped in IDLE
            m.d.comb += [xb.cmd.payload.chain.eq(n.chain_fwd), xb.drop.eq(n.at("IDLE"))]
        wiring.connect(m, xb.o, engine.x)
        mm_gelu = n.mm_gelu
        gelu_in = mm_gelu.i.payload.data.as_value()
        join(m, engine.o, mm_gelu.i, payload=gelu_in.eq(engine.o.payload))
        m.d.comb += mm_gelu.bypass.eq(~n.dec.mm_gelu)
        join(m, mm_gelu.o, ow.i, payload=ow.i.payload.eq(mm_gelu.o.payload.data.as_value()))
        # W from DDR (port 0 through the skid buffer, the other ports straight from their
        # readers) or built from the SPM as one stream; with several weight ports the engine
        # takes each port's columns on its own input: a demux by column (the stream order is
        # per step, per column, 1 + ks words a column; port q has columns q*M .. q*M + M-1)
        e_ws = [engine.w] + [getattr(engine, f"w{q}") for q in range(1, P.weight_ports)]
        ports = len(e_ws)
        shape = unsigned(E.w_word_bits)
        if n.w_port_builders:  # port q's own builder
            w_spm_in = [b.o for b in n.wbs]
            spm_sel = [n.w_spm] * ports
        else:
            m.submodules.w_split = split = StreamDemux(shape, ports)
            wiring.connect(m, wb.o, split.i)
            wsel = self._w_port_select(m, n, G * C // ports, ports)
            m.d.comb += split.sel.eq(Cat(*[n.w_spm & (wsel == q) for q in range(ports)]))
            w_spm_in, spm_sel = split.o, split.sel
        for q, ew in enumerate(e_ws):
            m.submodules[f"w_in{q}"] = w_in = StreamMux(shape, 2)
            wiring.connect(m, w_spm_in[q], w_in.i[1])
            wiring.connect(m, w_in.o, ew)
            if q == 0:
                wiring.connect(m, n.w_skid.o, w_in.i[0])
                m.d.comb += w_in.sel.eq(Cat(~n.w_spm, n.w_spm))
            else:
                rd = n.wdma[q - 1]
                if n.mixed:  # the port's column map entries to its own queue
                    self._map_tap(m, n, q, rd.o, w_in.i[0])
                else:
                    data = rd.o.payload.data[: E.w_word_bits]
                    join(m, rd.o, w_in.i[0], payload=w_in.i[0].payload.eq(data))
                m.d.comb += [
                    w_in.sel.eq(Cat(~spm_sel[q], spm_sel[q])),
                    rd.cmd.valid.eq(n.cmd_valid(f"dma_w{q}")),
                    rd.cmd.payload.addr.eq(n.a_w[q - 1]),
                    rd.cmd.payload.words.eq(setup.w_slots),
                ]
        if n.mixed:
            self._map_merge(m, n)

    def _w_port_select(self, m: Module, n: SimpleNamespace, per_port: int, ports: int):
        """The weight port of the W builder's next word (0 with one port)."""
        if ports == 1:
            return Const(0)
        wb, ks = n.wb, n.setup.ksteps
        wsel = Signal(range(ports))  # the port of the next word
        wsel_col = Signal(range(per_port))  # its column within the port's range
        wsel_left = Signal(16)  # words of the column after this one
        wsel_last = Signal()  # wsel_left == 0
        # reset before the W builder's command (ISSUE), count every word from then on
        with m.If(n.at("MM_SETUP")):
            m.d.sync += [wsel.eq(0), wsel_col.eq(0), wsel_left.eq(ks), wsel_last.eq(0)]
        with m.If(wb.o.valid & wb.o.ready):
            with m.If(wsel_last):
                m.d.sync += [wsel_left.eq(ks), wsel_last.eq(0)]
                with m.If(wsel_col == per_port - 1):
                    m.d.sync += [wsel_col.eq(0), wsel.eq(Mux(wsel == ports - 1, 0, wsel + 1))]
                with m.Else():
                    m.d.sync += wsel_col.eq(wsel_col + 1)
            with m.Else():
                m.d.sync += [wsel_left.eq(wsel_left - 1), wsel_last.eq(wsel_left == 1)]
        return wsel

    def _completion(self, m: Module, n: SimpleNamespace) -> None:
        """Command handshakes (``fired``) and the idle test that ends an instruction."""
        dma, words, xb, wb, ow, engine = n.dma, n.words, n.xb, n.wb, n.ow, n.engine
        streams = {"dma_rd": dma.rd_cmd, "dma_wr": dma.wr_cmd, "words": words.cmd,
                   "engine": engine.cmd, "xb": xb.cmd, "wb": wb.cmd, "ow": ow.cmd}  # fmt: skip
        for q, rd in enumerate(n.wdma, start=1):
            streams[f"dma_w{q}"] = rd.cmd
        for name, st in streams.items():
            ready = n.wb_ready if name == "wb" and n.w_port_builders else st.ready
            m.d.comb += n.fired[CMD[name]].eq(n.cmd_valid(name) & ready)
        unit_rd, unit_wr = n.unit_rd.values(), n.unit_wr.values()
        m.d.comb += [
            n.fired[CMD["unit_rd"]].eq(Cat(*[r.cmd.valid & r.cmd.ready for r in unit_rd]).any()),
            n.fired[CMD["unit_wr"]].eq(
                Cat(
                    *[w.cmd.valid & w.cmd.ready for w in unit_wr],
                    n.res_wr.cmd.valid & n.res_wr.cmd.ready,
                ).any()
            ),
        ]
        idles = [
            *[r.idle for r in unit_rd],
            *[w.idle for w in unit_wr],
            n.res_wr.idle,
            n.brw.idle,
            ~n.gelu.busy,
            ~n.softmax.busy,
            ~n.ln.busy,
            ~n.resadd.busy,
            ~n.res_skid.busy,
            ~n.mm_gelu.busy,
            ~n.w_skid.busy,
            n.rr.idle,
            words.idle,
            dma.rd_idle,
            dma.wr_idle,
            xb.idle,
            *[b.idle for b in n.wbs],
            ow.idle,
            ~engine.busy,
            *[rd.idle for rd in n.wdma],
        ]
        # Registered in groups of four, ANDed after the registers (same cycle as one register
        # of the whole AND): through one AND of every block's idle, Yosys' chain of LUTs
        # behind the deepest idle made an 8-level path into the register.
        idle_q = Signal((len(idles) + 3) // 4)
        m.d.sync += [idle_q[k].eq(Cat(*idles[4 * k : 4 * k + 4]).all()) for k in range(len(idle_q))]
        n.all_idle_q = idle_q.all()

    def _state_machine(self, m: Module, n: SimpleNamespace) -> None:
        """FETCH -> PREDECODE -> DECODE -> (PARAMS -> PARAMS_WAIT) -> (MM_SETUP) -> ISSUE ->
        WAIT -> NEXT (docs/top.md): the transitions, the state flags' next values, and what
        each state does."""
        dec, setup, fetch, f = n.dec, n.setup, n.fetch, n.flags
        todo, op_is = n.todo, n.op_is
        w_cmds = [f"dma_w{q}" for q in range(1, self.params.weight_ports)]
        wait_armed = Signal()
        todo_zero = todo == 0  # the registered `todo` (cleared by the handshakes a cycle
        # earlier): the handshakes themselves are too deep a path into the state
        dma_error = Cat(n.dma.error, *[rd.error for rd in n.wdma]).any()
        # a chained unit runs on: the next instruction (its MATMUL) is decoded at once
        issue_edges = [("ISSUE", todo_zero, "WAIT")]
        if self.params.chains:
            issue_edges = [("ISSUE", todo_zero & ~dec.chain, "WAIT"),
                           ("ISSUE", todo_zero & dec.chain, "NEXT")]  # fmt: skip
        # (from, condition, to); None: always. DECODE applies the outcome the decoder worked
        # out in PREDECODE (registered, one-hot); WAIT's exit reads all_idle through a register
        # (the AND of every block's idle was the tail of an 11-level path into the state): it
        # reflects this instruction's blocks from the second WAIT cycle on, when every command
        # has been taken for a cycle
        edges = [
            ("IDLE", n.status.start, "FETCH"),
            ("FETCH", n.fetch_go & n.dma.rd_cmd.ready, "FETCH_WAIT"),
            # fetch.fetched from the reader's valid itself (in FETCH_WAIT the word route
            # selects the fetch unit): through the route's select it was an 8-level path
            ("FETCH_WAIT", n.dma.rd.valid & fetch.second, "PREDECODE"),
            ("PREDECODE", None, "DECODE"),
            *[("DECODE", dec.to[s], s.name) for s in State if s != State.DECODE],
            ("PARAMS", todo_zero, "PARAMS_WAIT"),
            ("PARAMS_WAIT", n.params_done & op_is.matmul, "MM_SETUP"),
            ("PARAMS_WAIT", n.params_done & ~op_is.matmul, "ISSUE"),
            ("MM_SETUP", setup.checked & setup.ok, "ISSUE"),
            ("MM_SETUP", setup.checked & ~setup.ok, "IDLE"),
            *issue_edges,
            ("WAIT", wait_armed & n.all_idle_q, "NEXT"),
            ("NEXT", ~n.pf_want, "FETCH"),
            ("NEXT", n.pf_want & fetch.next_valid, "PREDECODE"),
        ]
        always_leaves = {"PREDECODE", "DECODE"}  # (DECODE's outcome is never DECODE)

        def next_in(states):
            """The state is one of ``states`` next cycle (a DMA error ends the run: IDLE)."""
            terms = [f[a] if c is None else f[a] & c for a, c, b in edges if b in states]
            for st in states:
                if st not in always_leaves:
                    leave = Cat(*[c for a, c, _ in edges if a == st]).any()
                    terms.append(f[st] & ~leave)
            now = Cat(*terms).any()
            return dma_error | now if "IDLE" in states else ~dma_error & now

        m.d.sync += [flag.eq(next_in((name,))) for name, flag in f.items()]
        m.d.sync += n.issuing.eq(next_in(_ISSUING))

        def leaving(name, cond=None):  # the transition's own actions
            return m.If(f[name] if cond is None else f[name] & cond)

        # `todo`: the handshakes clear their bits; DECODE, PARAMS_WAIT and MM_SETUP load it
        # (one mux behind the handshakes: the loads are exclusive flags)
        load, load_todo = Signal(), Signal(len(CMD))
        with leaving("DECODE"):
            m.d.comb += [load.eq(1), load_todo.eq(dec.todo)]
        with leaving("PARAMS_WAIT", n.params_done & ~op_is.matmul):
            units = Mux(op_is.resadd, cmd_bits("words", "unit_wr"), cmd_bits("unit_rd", "unit_wr"))
            m.d.comb += [load.eq(1), load_todo.eq(units)]
        with leaving("MM_SETUP", setup.checked & setup.ok):
            x_bit = Mux(n.mm.flag.x_keep, 0, cmd_bits("xb"))  # X_KEEP: no X load
            ddr = cmd_bits("engine", "dma_rd", "ow", *w_cmds)
            spm = cmd_bits("engine", "wb", "ow")
            m.d.comb += [load.eq(1), load_todo.eq(Mux(n.w_spm, spm, ddr) | x_bit)]
        m.d.sync += todo.eq(Mux(load, load_todo, todo & ~n.fired))

        with leaving("IDLE", n.status.start):
            m.d.sync += [n.busy.eq(1), n.pc.eq(0)]
        with leaving("DECODE"):
            uses_rd = (op_is.load & (n.instr.load.words != 0)) | (op_is.matmul & ~n.w_spm)
            m.d.sync += [
                n.load_addr.eq(n.instr.load.spm),
                n.param_taken.eq(0),
                n.sub.eq(0),
                n.pf_want.eq(~op_is.end),
                n.pf_issued.eq(0),
                n.op_rd_cmd_done.eq(0),
                n.op_rd_done.eq(~uses_rd),
                n.param_words.eq(dec.words),
            ]
            with m.If(dec.end):
                m.d.comb += n.done_set.eq(1)
                m.d.sync += n.busy.eq(0)
            with m.If(dec.error):
                m.d.comb += n.error_set.eq(1)
                m.d.sync += n.busy.eq(0)
        with leaving("MM_SETUP", setup.checked & ~setup.ok):
            m.d.comb += n.error_set.eq(1)
            m.d.sync += n.busy.eq(0)
        with leaving("ISSUE", todo_zero):
            m.d.sync += wait_armed.eq(0)
        with leaving("WAIT"):
            m.d.sync += wait_armed.eq(1)
        with leaving("NEXT", ~n.pf_want | fetch.next_valid):
            m.d.sync += n.pc.eq(n.pc + 1)
        with m.If(dma_error):
            m.d.comb += n.error_set.eq(1)
            m.d.sync += n.busy.eq(0)
        if self.params.chains:
            self._chain_flags(m, n, leaving)

    def _chain_flags(self, m: Module, n: SimpleNamespace, leaving) -> None:
        """A chain's registers: set as the chained unit's instruction is issued (its reader
        and writer commands taken: ISSUE -> NEXT), ``chain_pending`` cleared as the next
        instruction is decoded (the decoder checks it is a MATMUL loading its X), the fork
        and the routes held until that MATMUL's WAIT ends (every block idle, the unit's
        included; its NEXT). A run that ends (error) drops the fork: the unit's rows still reach the
        scratchpad, and its routes are freed by the next START."""
        dec, f = n.dec, n.flags
        with leaving("ISSUE", (n.todo == 0) & dec.chain):
            m.d.sync += [n.chain_pending.eq(1), n.chain_fwd.eq(1)]
            m.d.sync += [hold.eq(getattr(n.op_is, u)) for u, hold in n.chain_hold.items()]
        with leaving("DECODE"):
            m.d.sync += n.chain_pending.eq(0)
        # NEXT with no chain pending: after the MATMUL's WAIT (every block idle)
        with m.If(f["NEXT"] & ~n.chain_pending):
            m.d.sync += [n.chain_fwd.eq(0), *[h.eq(0) for h in n.chain_hold.values()]]
        with m.If(f["IDLE"]):
            m.d.sync += [n.chain_pending.eq(0), n.chain_fwd.eq(0)]
            with m.If(n.status.start):
                m.d.sync += [h.eq(0) for h in n.chain_hold.values()]


# The states in which the controller's commands go out (`cmd_valid`).
_ISSUING = ("ISSUE", "PARAMS")


class AcceleratorTop(wiring.Component):
    """:class:`Accelerator` with the Vivado port names: ``irq``, ``s_axil_*``, ``m_axi_*``
    (``clk``/``rst`` are the sync domain's, which Amaranth names so in the Verilog)."""

    def __init__(self, design: Design, **kwargs):
        self.core = Accelerator(design, **kwargs)
        super().__init__(_top_members(self.core.signature))

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        connect_prefixed(m, self, "s_axil_", core.s_axil)
        connect_prefixed(m, self, "m_axi_", core.m_axi)
        for q in range(1, core.params.weight_ports):
            connect_prefixed(m, self, f"m_axi_w{q}_", getattr(core, f"m_axi_w{q}"))
        m.d.comb += self.irq.eq(core.irq)
        return m


def _top_members(core: wiring.Signature) -> dict:
    """The flat ports of :class:`AcceleratorTop` around an :class:`Accelerator` signature."""
    members = {"irq": Out(1)}
    for name, member in core.members.items():
        if name != "irq":  # a bus as the core sees it (an In member's signature is flipped)
            members.update(prefixed_members(member.signature, f"{name}_"))
    return members


def top_signature(design: Design, **kwargs) -> wiring.Signature:
    """The ports of ``AcceleratorTop(design, **kwargs)``, without building the component."""
    return wiring.Signature(_top_members(Accelerator.signature_for(TopParams(design, **kwargs))))


def top_verilog(design: Design, name: str = "vitaccel_top", **kwargs) -> str:
    """Verilog of :class:`AcceleratorTop` (deterministic; all-zero memory initialisers dropped)."""
    from vitaccel.rtl.matmul import _ZERO_MEM_INIT
    from vitaccel.rtl.verilog import to_verilog

    return _ZERO_MEM_INIT.sub("", to_verilog(AcceleratorTop(design, **kwargs), name))
