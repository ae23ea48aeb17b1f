"""The pieces of the accelerator's controller (:class:`vitaccel.rtl.top.Accelerator`).

* :func:`instr_layout` - the 256-bit instruction as an Amaranth layout built from the ISA's
  field table (:data:`vitaccel.isa.FORMATS`): ``instr.matmul.tokens``,
  ``instr.matmul.flag.heads``; the RTL never slices an instruction by bit index.
* :class:`StreamMux` / :class:`StreamDemux` - the stream joins of an instruction, selected by
  the (registered, one-hot) opcode.
* :class:`Decoder` - the opcode and the fields every command reads, registered, and what
  DECODE does (next state, commands, parameter words, error) worked out a cycle ahead.
* :class:`InstrFetch` - the instruction register and the prefetch buffer behind the DMA,
  each with its opcode and checks decoded from the first beat (:meth:`Decoder.predecode`).
* :class:`MatmulSetup` - a MATMUL's derived sizes (k-steps, output steps, tiles, W stream
  length) and the checks that end a run an engine cannot hold with ERROR.
* :class:`Status` - the register file and the status it shows (BUSY, DONE, ERROR, CYCLES).
"""

from __future__ import annotations

import enum

from amaranth import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from vitaccel.isa import (
    FLAGS_BITS,
    FORMATS,
    OPCODE_BITS,
    Op,
    field_bits,
    flag_bits,
    residual_fusable,
)
from vitaccel.rtl.axi import RegisterFile, host_members

__all__ = [
    "State",
    "CMD",
    "cmd_bits",
    "instr_layout",
    "StreamMux",
    "StreamDemux",
    "assign",
    "join",
    "row_fields",
    "Decoder",
    "predecode_layout",
    "InstrFetch",
    "MatmulSetup",
    "Status",
]

INSTR_BITS = 256
ROW_OPS = ("SOFTMAX", "LAYERNORM", "GELU", "RESADD")  # share the row block f1..f6


class State(enum.IntEnum):
    """The controller's states (FETCH -> PREDECODE -> DECODE -> PARAMS -> ISSUE -> WAIT ->
    NEXT; docs/top.md)."""

    IDLE = 0
    FETCH = 1
    FETCH_WAIT = 2
    PREDECODE = 3
    DECODE = 4
    PARAMS = 5
    PARAMS_WAIT = 6
    MM_SETUP = 7
    ISSUE = 8
    WAIT = 9
    NEXT = 10


# command streams the ISSUE/PARAMS states present (bit positions in `todo`); dma_w1..3 are
# the extra weight ports' readers
CMD = {
    name: i
    for i, name in enumerate(
        ["dma_rd", "dma_wr", "words", "unit_rd", "unit_wr", "engine", "xb", "wb", "ow"]
        + ["dma_w1", "dma_w2", "dma_w3"]
    )
}


def cmd_bits(*names: str) -> int:
    """The ``todo`` mask of the named command streams."""
    return sum(1 << CMD[n] for n in names)


# ---- the instruction, from the ISA's field table ---------------------------------------------


def _op_layout(op: Op) -> data.FlexibleLayout:
    """One opcode's view of the instruction: its fields by name, its flags under ``flag``."""
    fields = {name: data.Field(unsigned(w), lsb) for name, (lsb, w) in field_bits(op).items()}
    lsb, width = FLAGS_BITS
    flags = {n.lower(): data.Field(1, bit - lsb) for n, bit in flag_bits(op).items()}
    if flags:
        fields["flag"] = data.Field(data.FlexibleLayout(width, flags), lsb)
    return data.FlexibleLayout(INSTR_BITS, fields)


def instr_layout() -> data.UnionLayout:
    """The 256-bit instruction: ``opcode`` and one view per opcode (``instr.matmul.n``, ...),
    all from :data:`vitaccel.isa.FORMATS`."""
    lsb, width = OPCODE_BITS
    assert lsb == 0
    views = {op.name.lower(): _op_layout(op) for op in FORMATS}
    return data.UnionLayout({"opcode": unsigned(width), "raw": unsigned(INSTR_BITS), **views})


def row_fields(instr) -> data.View:
    """The row block (src/a, strides, rows, cols, dst) every row-wise opcode shares at the
    same positions (``isa._rows``), read through GELU's view."""
    for op in ROW_OPS:
        bits = list(field_bits(op).values())[:6]
        assert bits == list(field_bits("GELU").values())[:6], op
    return instr.gelu


# ---- stream joins --------------------------------------------------------------------------


def assign(view, **fields) -> list:
    """Statements setting the named fields of a layout view (a command payload)."""
    return [getattr(view, name).eq(value) for name, value in fields.items()]


def join(m: Module, src, dst, *, payload=None) -> None:
    """``src`` drives ``dst`` (valid, payload, ready back); ``payload`` converts the beat when
    the two payload shapes differ only in type (default: the same bits)."""
    m.d.comb += [dst.valid.eq(src.valid), src.ready.eq(dst.ready)]
    m.d.comb += dst.payload.eq(src.payload) if payload is None else payload


class StreamMux(wiring.Component):
    """One of ``n`` streams to ``o``, chosen by a one-hot ``sel`` (nothing selected: ``o`` is
    idle and no input is ready). The controller selects by the registered opcode: a source
    has beats only while its instruction runs."""

    def __init__(self, shape, n: int):
        self._n = n
        super().__init__(
            {
                "sel": In(n),
                "i": In(stream.Signature(shape)).array(n),
                "o": Out(stream.Signature(shape)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        for k in range(self._n):
            with m.If(self.sel[k]):
                join(m, self.i[k], self.o)
        return m


class StreamDemux(wiring.Component):
    """``i`` to one of ``n`` outputs, chosen by a one-hot ``sel`` (nothing selected: ``i`` is
    not ready). Every output sees the payload; only the selected one is valid."""

    def __init__(self, shape, n: int):
        self._n = n
        super().__init__(
            {
                "sel": In(n),
                "i": In(stream.Signature(shape)),
                "o": Out(stream.Signature(shape)).array(n),
            }
        )

    def elaborate(self, platform):
        m = Module()
        for k in range(self._n):
            m.d.comb += self.o[k].payload.eq(self.i.payload)
            with m.If(self.sel[k]):
                m.d.comb += [self.o[k].valid.eq(self.i.valid), self.i.ready.eq(self.o[k].ready)]
        return m


# ---- decoder -------------------------------------------------------------------------------


def _op_flags():
    return data.StructLayout({op.name.lower(): 1 for op in Op})


def predecode_layout() -> data.StructLayout:
    """What the fetch unit decodes from an instruction's first beat (:meth:`Decoder.predecode`):
    the opcode one-hot, LOAD/STORE of no words, and the row checks that end a run."""
    return data.StructLayout(
        {"op": _op_flags(), "words_none": 1, "ln_bad": 1, "res_bad": 1, "sm_bad": 1}
    )


def _decoded_fields(op: Op) -> list:
    """(lsb, width) of what :meth:`Decoder.predecode` reads: the opcode, flags, and the
    words / cols fields."""
    fields = field_bits(op)
    return [OPCODE_BITS, FLAGS_BITS] + [fields[k] for k in ("words", "cols") if k in fields]


class Decoder(wiring.Component):
    """The instruction decoded: the opcode, as the fetch unit registered it with the first
    beat (``pre``, from :meth:`predecode`; ``op``, for PREDECODE) and a cycle later
    (``op_is``: every stream mux and command of the instruction selects on it; decoding the
    opcode in front of them was an 11-LUT path), the fields commands read, registered
    likewise, and what DECODE does (registered when ``latch``: DECODE's todo/state/
    parameter-count updates were the end of a 9-level path through the opcode priority and
    the field checks; now sums of terms of the opcode flags and the registered checks). The
    next state is one-hot (``to``, bit ``State.X``): the controller keeps its state as one
    flag per state.

    Parameters
    ----------
    vector : int
        The array's vector (k-steps of a MATMUL: ``ceil(k / vector)``).
    max_channels, resadd_channels, max_tokens : int
        LAYERNORM, RESADD and SOFTMAX rows the units hold; longer rows end with ERROR.
    softmax_log2 : bool
        The build's softmax output: a SOFTMAX for the other one ends with ERROR.
    chains : tuple of str
        The units (``"softmax"``, ``"layernorm"``) that chain their rows into the next
        MATMUL's X on this design (:func:`vitaccel.engine_timing.unit_chains`); their CHAIN
        flag is ignored otherwise (the instruction runs as an ordinary one). With any:
        ``chain_in`` (the previous instruction was a chain, still running) and ``chain``
        (this instruction is one, registered when ``latch``); after a chain, anything but a
        MATMUL that loads its X ends the run with ERROR.
    """

    def __init__(self, *, vector, max_channels, resadd_channels, max_tokens, softmax_log2,
                 chains=()):  # fmt: skip
        self._v = vector
        self._max_channels = max_channels
        self._resadd_channels = resadd_channels
        self._max_tokens = max_tokens
        self._softmax_log2 = softmax_log2
        if not set(chains) <= {"softmax", "layernorm"}:
            raise ValueError(f"chains must name softmax / layernorm, not {chains!r}")
        self._chains = tuple(chains)
        chain_ports = {"chain_in": In(1), "chain": Out(1)} if chains else {}
        super().__init__(
            {
                "instr": In(instr_layout()),
                "pre": In(predecode_layout()),
                "latch": In(1),
                "op": Out(_op_flags()),
                "op_is": Out(_op_flags()),
                "load_words_zero": Out(1),
                "ksteps": Out(16),
                "mm_gelu": Out(1),
                "mm_res": Out(1),
                "mm_plain": Out(1),
                "todo": Out(len(CMD)),
                "to": Out(len(State)),
                "words": Out(16),
                "error": Out(1),
                "end": Out(1),
                **chain_ports,
            }
        )

    def predecode(self, beat) -> list:
        """The opcode and the checks of an instruction from its first 128-bit beat, as
        values of :func:`predecode_layout` (the fetch unit registers them with the beat)."""
        i = data.View(instr_layout(), Cat(beat, Const(0, INSTR_BITS - len(beat))))
        assert all(lsb + w <= len(beat) for o in Op for lsb, w in _decoded_fields(o))
        # the output format is the build's: a program for the other one is an error
        sm_bad = (i.softmax.cols > self._max_tokens) | (
            i.softmax.flag.log2 != int(self._softmax_log2)
        )
        return {
            "op": Cat(*[i.opcode == int(o) for o in Op]),
            "words_none": i.load.words == 0,
            "ln_bad": i.layernorm.cols > self._max_channels,
            "res_bad": i.resadd.cols > self._resadd_channels,
            "sm_bad": sm_bad,
        }

    def elaborate(self, platform):
        m = Module()
        i = self.instr
        op = self.op
        pre = self.pre
        # the opcode and the checks registered with the instruction's first beat (from the
        # instruction register the opcode compare and the checks were 7 levels into DECODE's
        # outcome)
        m.d.comb += op.eq(pre.op)
        m.d.sync += [
            self.op_is.eq(op),
            self.load_words_zero.eq(i.load.words == 0),
            self.ksteps.eq((i.matmul.k + self._v - 1) >> exact_log2(self._v)),
            self.mm_gelu.eq(op.matmul & i.matmul.flag.gelu),
            self.mm_res.eq(op.matmul & i.matmul.flag.resadd),
            # (the output routes' selects: from the register alone, not ANDed behind it)
            self.mm_plain.eq(op.matmul & ~i.matmul.flag.resadd),
        ]

        # what DECODE does, from the instruction (registered when `latch`, in PREDECODE), as
        # sums of terms of the (exclusive) opcode flags: the same outcome as a priority chain
        # over the opcodes was an 8-level path into these registers
        def words_of(channels, per_word):  # parameter words of `channels` entries
            return (channels + per_word - 1) >> exact_log2(per_word)

        def any_of(*terms):
            return Cat(*terms).any()

        def pick(terms):  # the value of the one true term (0 when none is)
            out = Const(0, max(len(Value.cast(v)) for _, v in terms))
            for term, value in terms:
                out = out | Mux(term, value, 0)
            return out

        fused = i.matmul.flag.gelu | i.matmul.flag.resadd  # PARAMS first: table or multipliers
        assert field_bits("LOAD")["words"] == field_bits("STORE")["words"]
        load_none = store_none = pre.words_none
        ln_bad, res_bad, sm_bad = pre.ln_bad, pre.res_bad, pre.sm_bad
        bad_op = ~any_of(*op.as_value())
        err = any_of(op.layernorm & ln_bad, op.resadd & res_bad, op.softmax & sm_bad, bad_op)
        end = op.end
        if self._chains:
            # after a chain only a MATMUL that loads its X (the chain's rows are its X)
            chain_bad = self.chain_in & ~(op.matmul & ~i.matmul.flag.x_keep)
            err = err | chain_bad
            end = end & ~chain_bad
            flag = {"softmax": op.softmax & i.softmax.flag.chain & ~sm_bad,
                    "layernorm": op.layernorm & i.layernorm.flag.chain & ~ln_bad}  # fmt: skip
            chain = any_of(*[flag[u] for u in self._chains]) & ~chain_bad
        states = {
            "IDLE": [op.end, err],
            "NEXT": [op.load & load_none, op.store & store_none],
            "ISSUE": [op.load & ~load_none, op.store & ~store_none, op.softmax & ~sm_bad],
            "PARAMS": [op.gelu, op.layernorm & ~ln_bad, op.resadd & ~res_bad, op.matmul & fused],
            "MM_SETUP": [op.matmul & ~fused],
        }
        if self._chains:  # a broken chain goes to IDLE alone
            states = {k: v if k == "IDLE" else [any_of(*v) & ~chain_bad] for k, v in states.items()}
            states["IDLE"] = [*states["IDLE"], chain_bad]
        to = Signal(len(State))  # one-hot: the controller keeps its state as flags
        for name, terms in states.items():
            m.d.comb += to[State[name]].eq(any_of(*terms))
        params = any_of(op.gelu, op.layernorm, op.resadd, op.matmul & fused)
        todo = pick(
            [
                (op.load, cmd_bits("dma_rd")),
                (op.store, cmd_bits("dma_wr", "words")),
                (params, cmd_bits("words")),
                (op.softmax, cmd_bits("unit_rd", "unit_wr")),
            ]
        )
        words = pick(
            [
                (op.gelu | (op.matmul & i.matmul.flag.gelu), Const(16, 16)),
                (op.layernorm, words_of(i.layernorm.cols, 2)),
                (op.resadd, words_of(i.resadd.cols, 4)),
                (op.matmul & ~i.matmul.flag.gelu & i.matmul.flag.resadd, words_of(i.matmul.n, 4)),
            ]
        )
        with m.If(self.latch):
            m.d.sync += [
                self.todo.eq(todo),
                self.to.eq(to),
                self.words.eq(words),
                self.error.eq(err),
                self.end.eq(end),
            ]
            if self._chains:
                m.d.sync += self.chain.eq(chain)
        return m


# ---- instruction fetch -----------------------------------------------------------------------


class InstrFetch(wiring.Component):
    """The instruction register and the prefetched next instruction, two 128-bit beats each.

    Members
    -------
    rd : ``In(stream.Signature(128))``
        DMA words for the instruction (``fetch``) or the prefetch buffer (otherwise).
    fetch : ``In(1)``
        FETCH_WAIT: the beats are the current instruction.
    fetch_start : ``In(1)``
        FETCH: the next beat is an instruction's first.
    fetched : ``Out(1)``
        The current instruction's second beat is taken (FETCH_WAIT -> PREDECODE).
    second : ``Out(1)``
        The next beat of the current instruction is its second (``fetched`` is that beat's
        ``rd.valid`` in FETCH_WAIT; the controller ANDs it with the reader's valid itself).
    clear_next : ``In(1)``
        DECODE: the prefetch buffer is empty again.
    advance : ``In(1)``
        NEXT with a prefetched instruction: it becomes the current one.
    instr : ``Out(instr_layout())``
    next_valid : ``Out(1)``
    """

    def __init__(self, predecode=None):
        # predecode: a function of an instruction's first beat to predecode_layout() values,
        # registered with the beat (``pre``; all zero without one)
        self._predecode = predecode
        super().__init__(
            {
                "rd": In(stream.Signature(128)),
                "fetch": In(1),
                "fetch_start": In(1),
                "fetched": Out(1),
                "second": Out(1),
                "clear_next": In(1),
                "advance": In(1),
                "instr": Out(instr_layout()),
                "pre": Out(predecode_layout()),
                "next_valid": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        instr = self.instr.raw
        next_instr = Signal(INSTR_BITS)
        fetch_beat = Signal()
        next_beat = Signal()
        beat = self.rd.payload
        pre_beat = Signal(predecode_layout())
        next_pre = Signal(predecode_layout())
        if self._predecode is not None:
            m.d.comb += [getattr(pre_beat, k).eq(v) for k, v in self._predecode(beat).items()]
        m.d.comb += [self.rd.ready.eq(1), self.second.eq(fetch_beat)]
        with m.If(self.rd.valid & self.fetch):
            with m.If(~fetch_beat):
                m.d.sync += [instr[:128].eq(beat), self.pre.eq(pre_beat), fetch_beat.eq(1)]
            with m.Else():
                m.d.sync += [instr[128:].eq(beat), fetch_beat.eq(0)]
                m.d.comb += self.fetched.eq(1)
        with m.If(self.rd.valid & ~self.fetch):
            with m.If(~next_beat):
                m.d.sync += [next_instr[:128].eq(beat), next_pre.eq(pre_beat), next_beat.eq(1)]
            with m.Else():
                m.d.sync += [next_instr[128:].eq(beat), next_beat.eq(0), self.next_valid.eq(1)]
        with m.If(self.fetch_start):
            m.d.sync += fetch_beat.eq(0)
        with m.If(self.clear_next):
            m.d.sync += [self.next_valid.eq(0), next_beat.eq(0)]
        with m.If(self.advance):
            m.d.sync += [instr.eq(next_instr), self.pre.eq(next_pre)]
        return m


# ---- MATMUL setup ----------------------------------------------------------------------------


class MatmulSetup(wiring.Component):
    """A MATMUL's sizes and checks, worked out in MM_SETUP (docs/top.md).

    ``nsteps = ceil(N / cm)`` and ``tiles = ceil(T / R)`` by repeated addition (no divider),
    on a mixed W4/W8 array (``cols_w8 < cols``) ``w_steps`` for a shared job with W from DDR
    when it is not 0, and ``cm`` counting W8 columns only for W_SPM jobs (activation rows
    run on W8 lanes),
    then, registered (no multiplier in a path to the state register or a DMA command): the
    X words the job needs, the packed W words per weight port and each port's offset, and
    the verdict ``ok`` (an instruction the engine cannot hold ends the run with ERROR).

    Members
    -------
    instr : ``In(instr_layout())``
    start : ``In(1)``
        DECODE: start over (``ksteps`` from the decoder).
    run : ``In(1)``
        MM_SETUP.
    clear_x : ``In(1)``
        A run starts: the engine holds no X to keep.
    ksteps_in : ``In(16)``
    ksteps, nsteps : ``Out(16)``
    w_slots : ``Out(24)``
        Packed W words in DDR per weight port: ``nsteps * (G*C / ports) * (1 + ks)``.
    w_offs : ``Out(32).array(ports - 1)``
        Byte offset of port q's stream (the codec lays the streams out in turn).
    checked, ok : ``Out(1)``
        The verdict is valid (one cycle); the job fits.
    """

    def __init__(self, *, groups, rows, cols, x_words, max_ksteps, weight_ports, log2,
                 x_beat=1, cols_w8=None):  # fmt: skip
        self._g, self._r, self._c = groups, rows, cols
        # W8 columns: below ``cols`` the array is mixed (docs/isa.md, "Mixed W4/W8 arrays")
        self._c8 = cols if cols_w8 is None else cols_w8
        self._x_beat = x_beat
        self._x_words, self._max_ksteps = x_words, max_ksteps
        self._ports, self._log2 = weight_ports, log2
        super().__init__(
            {
                "instr": In(instr_layout()),
                "start": In(1),
                "run": In(1),
                "clear_x": In(1),
                "ksteps_in": In(16),
                "ksteps": Out(16),
                "nsteps": Out(16),
                "w_slots": Out(24),
                **({"w_offs": Out(32).array(weight_ports - 1)} if weight_ports > 1 else {}),
                "checked": Out(1),
                "ok": Out(1),
            }
        )

    @property
    def w_offs_list(self) -> list:
        return list(self.w_offs) if self._ports > 1 else []

    def elaborate(self, platform):
        m = Module()
        G, R, C = self._g, self._r, self._c
        mm = self.instr.matmul
        fl = mm.flag
        ks, nsteps = self.ksteps, self.nsteps
        settled = Signal()  # the loop is done, x_need/w_slots follow next cycle
        tiles = Signal(16)
        acc_n = Signal(17)
        acc_t = Signal(17)
        cm = Mux(fl.heads, C, G * C)
        if self._c8 < C:  # mixed: W_SPM rows on the W8 columns only
            cm = Mux(fl.w_spm, Mux(fl.heads, self._c8, G * self._c8), cm)
        with m.If(self.start):
            m.d.sync += [
                ks.eq(self.ksteps_in),
                nsteps.eq(0),
                tiles.eq(0),
                acc_n.eq(0),
                acc_t.eq(0),
                settled.eq(0),
                self.checked.eq(0),
            ]
            if self._c8 < C:
                # the packed stream states its steps (the column plan may need more than N
                # channels' worth): the loop then counts tiles only
                with m.If(~fl.w_spm & ~fl.heads & (mm.w_steps != 0)):
                    m.d.sync += [nsteps.eq(mm.w_steps), acc_n.eq(mm.n)]
        with m.If(self.run):
            n_more = acc_n < mm.n
            t_more = acc_t < mm.tokens
            with m.If(n_more):
                m.d.sync += [acc_n.eq(acc_n + cm), nsteps.eq(nsteps + 1)]
            with m.If(t_more):
                m.d.sync += [acc_t.eq(acc_t + R), tiles.eq(tiles + 1)]
            with m.If(~n_more & ~t_more & ~settled & ~self.checked):
                m.d.sync += settled.eq(1)
            with m.If(settled):
                m.d.sync += [settled.eq(0), self.checked.eq(1)]
            with m.If(self.checked):
                m.d.sync += self.checked.eq(0)

        # products registered (one cycle after the loop settles)
        x_need = Signal(32)
        slots = nsteps * (ks + 1) * (G * C // self._ports)
        # X bank words the job needs (EngineParams.x_fits): X beats of x_beat k-steps, in
        # x_beat sub-banks of x_words / x_beat words
        nb = exact_log2(self._x_beat)
        x_room = self._x_words >> nb
        m.d.sync += [
            x_need.eq(tiles * ks if nb == 0 else tiles * ((ks + self._x_beat - 1) >> nb)),
            self.w_slots.eq(slots),
            *[off.eq((slots * (q + 1)) << 4) for q, off in enumerate(self.w_offs_list)],
        ]
        heads_ok = ~fl.heads | ((mm.heads != 0) & (mm.heads <= G))
        # X_LOG2 needs the engine's log2 mode (built with the log2 softmax)
        flags_ok = Const(1) if self._log2 else ~fl.x_log2
        # fused outputs need W from DDR; the residual add also shared, row-major output on
        # an array whose output steps cover whole SPM words; X_KEEP the previous job's X
        fused_ok = ~(fl.gelu | fl.resadd) | ~fl.w_spm
        res_ok = ~fl.resadd | (~fl.heads & ~fl.out_t & ~fl.gelu)
        if not residual_fusable(G, C, C - self._c8):
            res_ok = ~fl.resadd
        xk_valid = Signal()  # the engine holds the X of a shared-mode job of this shape:
        xk_tokens = Signal(16)
        xk_ks = Signal(16)
        # the verdict registered too (read when `checked`): the compares were a 10-LUT path
        # through the error flag into the register file. Its terms registered two cycles
        # ahead of it, each compare on its own (one AND of all of them was a 7-9-level path
        # from the instruction's fields, ABC's mapping varying run to run): those of the
        # fields and ks hold from the cycle after `start` on, so `fields_ok` from the third
        # (the loop runs >= 3 cycles before `ok` is taken unless T = 0, which `sizes_ok`
        # refuses on its own), nsteps/tiles are final when the loop settles, a cycle before
        # x_need
        terms = {
            "ks_ok": (ks <= self._max_ksteps) & (ks != 0),
            "heads_ok": heads_ok,
            "flags_ok": flags_ok & fused_ok & res_ok,
            "keep_tokens": xk_tokens == mm.tokens,
            "keep_ks": xk_ks == ks,
        }
        t = {name: Signal(name=f"t_{name}") for name in terms}
        m.d.sync += [t[name].eq(value) for name, value in terms.items()]
        keep_ok = ~fl.x_keep | (~fl.heads & xk_valid & t["keep_tokens"] & t["keep_ks"])
        fields_ok = Signal()
        sizes_ok = Signal()
        m.d.sync += [
            fields_ok.eq(t["ks_ok"] & t["heads_ok"] & t["flags_ok"] & keep_ok),
            sizes_ok.eq((nsteps != 0) & (tiles != 0)),
            self.ok.eq((x_need <= x_room) & fields_ok & sizes_ok),
        ]
        with m.If(self.clear_x):  # a run never reuses the X of the one before
            m.d.sync += xk_valid.eq(0)
        with m.If(self.run & self.checked & self.ok & ~fl.x_keep):
            # what the engine's X banks hold from now on
            m.d.sync += [xk_valid.eq(~fl.heads), xk_tokens.eq(mm.tokens), xk_ks.eq(ks)]
        return m


# ---- status and registers ----------------------------------------------------------------------


class Status(wiring.Component):
    """The register file and what it shows of the controller.

    DONE/ERROR reach the register file a cycle late (registered: the opcode decode and the
    checks behind them were a 10-LUT path into its status bits), and BUSY with them, so a
    host never sees BUSY low before DONE or ERROR. CYCLES counts while busy.

    Members
    -------
    s_axil : ``In(AXI4LiteSignature(addr_width=16))``
    irq, start : ``Out(1)``
    prog_addr, data_base : ``Out(64)``
    busy, done, error : ``In(1)``
        The controller runs; pulses: END reached, the run ended with an error.
    clear_cycles : ``In(1)``
        A run starts.
    pc : ``In(32)``
    """

    def __init__(self, *, config: int):
        self._config = config
        super().__init__({**host_members(16), "done": In(1), "error": In(1), "clear_cycles": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.regs = regs = RegisterFile(addr_width=16, config=self._config)
        wiring.connect(m, wiring.flipped(self.s_axil), regs.s_axil)
        cycles = Signal(64)
        with m.If(self.busy):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(self.clear_cycles):
            m.d.sync += cycles.eq(0)
        m.d.sync += [
            regs.busy.eq(self.busy),
            regs.done_set.eq(self.done),
            regs.error_set.eq(self.error),
        ]
        m.d.comb += [
            regs.cycles.eq(cycles),
            regs.pc.eq(self.pc),
            self.irq.eq(regs.irq),
            self.start.eq(regs.start),
            self.prog_addr.eq(regs.prog_addr),
            self.data_base.eq(regs.data_base),
        ]
        return m
