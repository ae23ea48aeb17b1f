"""The row reader: (base, stride, rows, cols) -> a stream of beats with row framing.

Part of :mod:`vitaccel.rtl.spm` (the package docstring describes the whole).
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from vitaccel.isa import WORD_BYTES
from vitaccel.rtl.common import (
    CheckedComponent,
    check_int,
    count_bits,
    row_layout,
    row_signature,
)
from vitaccel.rtl.skid import SkidBuffer
from vitaccel.rtl.spm.scratchpad import ADDR_BITS, _check_lanes, read_client_signature

__all__ = ["reader_cmd_layout", "RowReader"]


# ---- row reader ------------------------------------------------------------------------------


def _room_next(count, grant, pop, depth: int):
    """``count + grant - pop < depth`` with the compares on ``count`` alone (in parallel with
    the SPM arbiter that decides ``grant``): only the final select waits for the grant."""
    return Mux(grant & ~pop, count + 1 < depth, Mux(~grant & pop, 1, count < depth))


def reader_cmd_layout() -> data.StructLayout:
    """A :class:`RowReader` command. ``dual``: rows alternate between (base, stride) and
    (base2, stride2), ``rows`` counts row pairs."""
    return data.StructLayout(
        {
            "base": unsigned(ADDR_BITS),
            "stride": unsigned(16),
            "rows": unsigned(16),
            "cols": unsigned(16),
            "base2": unsigned(ADDR_BITS),
            "stride2": unsigned(16),
            "dual": unsigned(1),
        }
    )


class RowReader(CheckedComponent):
    """Row-major int8 tensor in the SPM -> beats of ``lanes`` bytes with row framing.

    Row r of a command is read from words ``base + r*stride .. + ceil(cols/16) - 1``; it
    becomes ``ceil(cols/lanes)`` beats, the last with ``count = cols - lanes*(beats-1)`` and
    ``last``; lanes past ``cols`` are 0 (the padding the matmul's X stream needs). A command
    with rows or cols equal to 0 is accepted and produces nothing. The next command is taken
    as soon as the previous one's addresses are issued (its beats may still be draining).
    With ``fetch_words`` = F > 1 (a wide client of a banked :class:`Scratchpad`) each
    request reads F consecutive words (``16 F`` bytes; the row's last request may read past
    it, masked), and ``lanes`` may be up to ``16 F`` without gathering.

    Members
    -------
    cmd : ``In(stream.Signature(reader_cmd_layout()))``
    o : ``Out(row_signature(unsigned(8), lanes))``
    mem : ``Out(read_client_signature())``
    idle : ``Out(1)``
        Every beat of every accepted command has been delivered.
    inject : ``In(row_signature(unsigned(8), lanes))``
        (``inject`` only) While ``inject_on``, ``o`` carries these beats instead of the
        reader's own (lanes past a beat's ``count`` as 0, as the reader's past ``cols``),
        through the same output skid buffer: the X builder's chain input (docs/isa.md,
        "Chains"), so the builder's handshake logic sees one source as before. The reader
        must have no command in progress meanwhile.
    inject_on : ``In(1)``
        (``inject`` only) A register of the consumer's.
    """

    @classmethod
    def check(cls, *, lanes, fifo_depth, fetch_words=1, inject=False):
        _check_lanes(lanes)
        check_int("fifo_depth", fifo_depth, 2, 64)
        if fetch_words not in (1, 2, 4):
            raise ValueError(f"fetch_words must be 1, 2 or 4, not {fetch_words!r}")

    def __init__(self, *, lanes: int, fifo_depth: int = 4, fetch_words: int = 1,
                 inject: bool = False):  # fmt: skip
        self.lanes = lanes
        self.fifo_depth = fifo_depth
        self.fetch_words = fetch_words
        self.injects = inject
        extra = {"inject": In(row_signature(unsigned(8), lanes)), "inject_on": In(1)}
        super().__init__(
            {
                "cmd": In(stream.Signature(reader_cmd_layout())),
                "o": Out(row_signature(unsigned(8), lanes)),
                "mem": Out(read_client_signature(words=fetch_words)),
                "idle": Out(1),
                **(extra if inject else {}),
            }
        )

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        F = self.fetch_words
        FB = WORD_BYTES * F  # bytes per request
        fb_log = exact_log2(FB)
        # beats leave through a skid buffer: the consumer's ready and the beat former's
        # FIFO pops are in different cycles (the chain was 12-13 levels through RESADD)
        m.submodules.out = out = SkidBuffer(row_layout(unsigned(8), L))
        wiring.connect(m, out.o, wiring.flipped(self.o))
        src = out.i
        # commands through a skid buffer too: the controller's payload muxes and this
        # reader's address registers are in different cycles
        # (with "rows or cols is 0" computed before it: the zero tests behind the take were
        # an 8-level path into the request register)
        cq_layout = data.StructLayout({"cmd": reader_cmd_layout(), "empty": unsigned(1)})
        m.submodules.cmdq = cmdq = SkidBuffer(cq_layout)
        cin = self.cmd.payload
        m.d.comb += [
            cmdq.i.valid.eq(self.cmd.valid),
            cmdq.i.payload.cmd.eq(cin),
            cmdq.i.payload.empty.eq((cin.rows == 0) | (cin.cols == 0)),
            self.cmd.ready.eq(cmdq.i.ready),
        ]
        cmd = cmdq.o
        cmdp = cmd.payload.cmd

        # -- framing queue: what the beat former needs of each command --
        # rows_m1 = rows - 1: the beat former's end-of-command test is then an equality
        # against a register (``brow + 1 == rows`` was a 10-LUT path into the FIFO level)
        info_layout = data.StructLayout({"rows_m1": unsigned(17), "cols": unsigned(16)})
        # (buffered: the head command comes from a register, not through LUT RAM)
        m.submodules.info = info = SyncFIFOBuffered(width=info_layout.size, depth=3)
        m.submodules.words = words = SyncFIFO(width=8 * FB, depth=self.fifo_depth)

        # -- address generator --
        active = Signal()
        rows_left = Signal(16)
        # words of the row still to request after this one, counting down from
        # ceil(cols / 16) - 1 (a zero test, not ``w + 1 != wpr``: that was a 11-LUT path)
        wpr_m1 = Signal(13)
        w_left = Signal(13)
        second = Signal()  # dual: on the B row of the pair
        dual = Signal()
        addr = Signal(ADDR_BITS)
        row_a = Signal(ADDR_BITS)
        row_b = Signal(ADDR_BITS)
        stride_a = Signal(16)
        stride_b = Signal(16)

        empty_cmd = cmd.payload.empty
        m.d.comb += cmd.ready.eq(~active & info.w_rdy)
        take = cmd.valid & cmd.ready
        info_in = Signal(info_layout)
        m.d.comb += [
            info_in.rows_m1.eq(Mux(cmdp.dual, (cmdp.rows << 1) - 1, cmdp.rows - 1)),
            info_in.cols.eq(cmdp.cols),
            info.w_data.eq(info_in),
            info.w_en.eq(take & ~empty_cmd),
        ]
        # "no word left in the row" and "on the last row" as registers beside the counters:
        # the grant (through the SPM arbiter) only selects between register values
        w_zero = Signal()  # w_left == 0
        one_word = Signal()  # wpr_m1 == 0
        w_one = Signal()  # w_left == 1 (its compare stays off the grant's path)
        two_words = Signal()  # wpr_m1 == 1
        last_row = Signal()  # rows_left == 1
        # which of the grant's three cases comes next, as registers set with the flags above
        # (w_zero & dual & ~second: to the B row; w_zero & ~(dual & ~second): the row (pair)
        # ends; & last_row: the command ends): the grant is the last select of the row
        # registers (their compare on w_zero, dual and second put the grant 2 LUTs from them)
        to_b = Signal()
        row_end = Signal()
        cmd_end = Signal()
        with m.If(take & ~empty_cmd):
            one0 = cmdp.cols <= FB  # words_m1 == 0
            two0 = (cmdp.cols > FB) & (cmdp.cols <= 2 * FB)  # words_m1 == 1
            m.d.sync += [
                # (compares on cols itself, 1 <= cols: words_m1 behind its add and subtract
                # was a 7-level path into w_zero)
                w_zero.eq(one0),
                one_word.eq(one0),
                w_one.eq(two0),
                two_words.eq(two0),
                last_row.eq(cmdp.rows == 1),
                to_b.eq(one0 & cmdp.dual),
                row_end.eq(one0 & ~cmdp.dual),
                cmd_end.eq(one0 & ~cmdp.dual & (cmdp.rows == 1)),
                active.eq(1),
                rows_left.eq(cmdp.rows),
                wpr_m1.eq(((cmdp.cols + (FB - 1)) >> fb_log) - 1),
                w_left.eq(((cmdp.cols + (FB - 1)) >> fb_log) - 1),
                second.eq(0),
                dual.eq(cmdp.dual),
                addr.eq(cmdp.base),
                row_a.eq(cmdp.base),
                row_b.eq(cmdp.base2),
                stride_a.eq(cmdp.stride),
                stride_b.eq(cmdp.stride2),
            ]

        outstanding = Signal(range(self.fifo_depth + 1))  # granted, not yet popped
        # The request, active & (outstanding < fifo_depth), is one register set from the next
        # values: the SPM arbiter and the address mux behind it start at a flip-flop (the
        # AND of active and a registered room was the first of 7 levels into the block RAM
        # and the other readers' address registers)
        req = Signal()
        pop = Signal()
        m.d.comb += [
            self.mem.req.eq(req),
            self.mem.addr.eq(addr),
        ]
        grant = self.mem.grant
        active_nx = Mux(take & ~empty_cmd, 1, Mux(grant & cmd_end, 0, active))
        m.d.sync += [
            outstanding.eq(outstanding + grant - pop),
            req.eq(active_nx & _room_next(outstanding, grant, pop, self.fifo_depth)),
        ]
        # A grant's updates as next values (``g``: the case flags select among register
        # values), the grant the last select into each register (as the outer condition of
        # the three cases it was 4 LUTs from the registers: 8.0 levels from another
        # client's request into the X reader's address in the 64 B top)
        gregs = [w_left, w_zero, w_one, addr, to_b, row_end, cmd_end, second, rows_left,
                 last_row, row_a, row_b]  # fmt: skip
        gnext = {id(r): Signal.like(r, name=f"{r.name}_g") for r in gregs}

        def g(r):
            return gnext[id(r)]

        m.d.comb += [g(r).eq(r) for r in gregs]
        with m.If(~w_zero):
            m.d.comb += [
                g(w_left).eq(w_left - 1),
                g(w_zero).eq(w_one),
                g(w_one).eq(w_left == 2),
                g(addr).eq(addr + F),
                g(to_b).eq(w_one & dual & ~second),
                g(row_end).eq(w_one & ~(dual & ~second)),
                g(cmd_end).eq(w_one & ~(dual & ~second) & last_row),
            ]
        with m.If(to_b):
            m.d.comb += [
                g(w_left).eq(wpr_m1),
                g(w_zero).eq(one_word),
                g(w_one).eq(two_words),
                g(second).eq(1),
                g(addr).eq(row_b),
                g(to_b).eq(0),
                g(row_end).eq(one_word),
                g(cmd_end).eq(one_word & last_row),
            ]
        with m.If(row_end):
            m.d.comb += [
                g(w_left).eq(wpr_m1),
                g(w_zero).eq(one_word),
                g(w_one).eq(two_words),
                g(second).eq(0),
                g(rows_left).eq(rows_left - 1),
                g(last_row).eq(rows_left == 2),
                g(row_a).eq(row_a + stride_a),
                g(row_b).eq(row_b + stride_b),
                g(addr).eq(row_a + stride_a),
                g(to_b).eq(one_word & dual),
                g(row_end).eq(one_word & ~dual),
                g(cmd_end).eq(one_word & ~dual & (rows_left == 2)),
            ]
        with m.If(grant):
            m.d.sync += [r.eq(g(r)) for r in gregs]
            with m.If(cmd_end):
                m.d.sync += active.eq(0)
        m.d.comb += [words.w_en.eq(self.mem.rvalid), words.w_data.eq(self.mem.rdata)]

        # -- beat former --
        head = Signal(info_layout)
        m.d.comb += head.eq(info.r_data)
        col = Signal(16)
        # The beat's bounds are registers, set for the next beat as this one leaves (the
        # subtract and compares of the fresh head command were most of a 10-level path):
        # columns left in the row, "this beat ends the row", and the lanes inside the row.
        remaining = Signal(17)
        is_last = Signal()
        lane_mask = Signal(L)
        loaded = Signal()  # the bounds hold the head command's (one cycle after it arrives)

        def row_start(cols):
            return [
                remaining.eq(cols),
                is_last.eq(cols <= L),
                lane_mask.eq(Cat(*[cols > i for i in range(L)])),
            ]

        # rows of the head command still to come after this one, counting down, with the
        # "this is the last row" / "the next is" flags as registers
        rows_to_go = Signal(17)
        brow_last = Signal()
        brow_next_last = Signal()
        with m.If(info.r_rdy & ~loaded):
            m.d.sync += [
                *row_start(head.cols),
                loaded.eq(1),
                rows_to_go.eq(head.rows_m1),
                brow_last.eq(head.rows_m1 == 0),
                brow_next_last.eq(head.rows_m1 == 1),
            ]
        count = Signal(count_bits(L))
        m.d.comb += count.eq(Mux(is_last, remaining, L))
        beat = Signal(row_layout(unsigned(8), L))
        # (with inject, the reader's own beat is valid on `own`; src.valid is chosen below)
        own = Signal(name="own_valid") if self.injects else src.valid
        fire = own & src.ready
        word_done = Signal()  # this beat uses the last bytes taken from the head word

        if L <= FB:
            per_word = FB // L
            sub = col[exact_log2(L) : fb_log] if per_word > 1 else Const(0, 1)
            slices = Array([words.r_data[8 * L * j : 8 * L * (j + 1)] for j in range(per_word)])
            raw = Signal(8 * L)
            m.d.comb += raw.eq(slices[sub])
            m.d.comb += [
                own.eq(loaded & words.r_rdy),
                word_done.eq(is_last | (sub == per_word - 1)),
                pop.eq(fire & word_done),
            ]
        else:
            k = L // FB
            gather = [Signal(8 * FB, name=f"gather{j}") for j in range(k)]
            gj = Signal(range(k))
            full = Signal()
            wi = Signal(13)  # word index within the row
            last_word = (wi + 1) << fb_log >= head.cols
            take_word = loaded & words.r_rdy & ~full
            m.d.comb += pop.eq(take_word)
            with m.If(take_word):
                for j in range(k):
                    with m.If(gj == j):
                        m.d.sync += gather[j].eq(words.r_data)
                with m.If((gj == k - 1) | last_word):
                    m.d.sync += [full.eq(1), gj.eq(0)]
                with m.Else():
                    m.d.sync += gj.eq(gj + 1)
                m.d.sync += wi.eq(Mux(last_word, 0, wi + 1))
            with m.If(fire):
                m.d.sync += full.eq(0)
            raw = Cat(*gather)
            m.d.comb += own.eq(full)

        for i in range(L):
            m.d.comb += beat.data[i].eq(Mux(lane_mask[i], raw[8 * i : 8 * i + 8], 0))
        m.d.comb += [beat.count.eq(count), beat.last.eq(is_last)]
        if self.injects:
            inj, on = self.inject, self.inject_on
            kept = Cat(*[Mux(inj.payload.count > i, inj.payload.data[i], 0) for i in range(L)])
            m.d.comb += [
                src.valid.eq(Mux(on, inj.valid, own)),
                inj.ready.eq(on & src.ready),
            ]
            with m.If(on):
                m.d.comb += [
                    src.payload.data.as_value().eq(kept),
                    src.payload.count.eq(inj.payload.count),
                    src.payload.last.eq(inj.payload.last),
                ]
            with m.Else():
                m.d.comb += src.payload.eq(beat)
        else:
            m.d.comb += src.payload.eq(beat)

        m.d.comb += info.r_en.eq(0)
        with m.If(fire):
            with m.If(is_last):
                m.d.sync += col.eq(0)
                with m.If(brow_last):
                    m.d.sync += loaded.eq(0)
                    m.d.comb += info.r_en.eq(1)
                with m.Else():
                    m.d.sync += [
                        rows_to_go.eq(rows_to_go - 1),
                        brow_last.eq(brow_next_last),
                        brow_next_last.eq(rows_to_go == 2),
                        *row_start(head.cols),
                    ]
            with m.Else():
                m.d.sync += [
                    col.eq(col + L),
                    remaining.eq(remaining - L),
                    is_last.eq(remaining <= 2 * L),
                    lane_mask.eq(Cat(*[remaining > L + i for i in range(L)])),
                ]

        m.d.comb += words.r_en.eq(pop)
        m.d.comb += self.idle.eq(~active & (info.level == 0) & ~out.busy & ~cmdq.busy)
        return m
