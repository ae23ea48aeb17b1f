"""The writers: byte runs -> SPM word writes; row streams -> byte runs.

Part of :mod:`vitaccel.rtl.spm` (the package docstring describes the whole).
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.isa import WORD_BYTES
from vitaccel.rtl.common import (
    CheckedComponent,
    row_layout,
    row_signature,
)
from vitaccel.rtl.skid import SkidBuffer
from vitaccel.rtl.spm.scratchpad import (
    ADDR_BITS,
    _check_lanes,
    write_client_signature,
)

__all__ = ["run_layout", "ByteRunWriter", "writer_cmd_layout", "RowWriter"]


# ---- writers ---------------------------------------------------------------------------------


def run_layout() -> data.StructLayout:
    """A write run: ``count`` (1..16) bytes of ``data`` (byte 0 first) go to SPM bytes
    ``off .. off + count - 1`` counted from word ``addr`` (spilling into ``addr + 1``)."""
    return data.StructLayout(
        {
            "addr": unsigned(ADDR_BITS),
            "off": unsigned(4),
            "count": unsigned(5),
            "data": data.ArrayLayout(unsigned(8), WORD_BYTES),
        }
    )


class ByteRunWriter(wiring.Component):
    """Runs -> SPM word writes with byte enables: one write per cycle, two for a run that
    crosses a word boundary. A run is registered as it comes in (so the address generators'
    logic and the byte shifter are in different cycles), shifted into a two-word window in
    the next stage and written from there: latency two cycles; runs that fit one word go
    through at one per cycle.

    Members
    -------
    i : ``In(stream.Signature(run_layout()))``
    mem : ``Out(write_client_signature())``
    idle : ``Out(1)``
    """

    def __init__(self):
        super().__init__(
            {
                "i": In(stream.Signature(run_layout())),
                "mem": Out(write_client_signature()),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        # runs come in through a skid buffer: the writers that feed it see a registered
        # ready (this writer's two-word logic was at the head of 10-level paths)
        m.submodules.inb = inb = SkidBuffer(run_layout())
        wiring.connect(m, wiring.flipped(self.i), inb.i)
        sink = inb.o
        # stage 1: the run as it came
        s1_valid = Signal()
        run = Signal(run_layout())
        # stage 2: shifted window, written one or two words
        busy = Signal()
        phase = Signal()
        two = Signal()
        addr = Signal(ADDR_BITS)
        window = Signal(16 * 16)
        be = Signal(32)
        finishing = busy & (phase | ~two)
        s2_take = s1_valid & (~busy | finishing)
        m.d.comb += sink.ready.eq(~s1_valid | s2_take)
        with m.If(sink.valid & sink.ready):
            m.d.sync += [s1_valid.eq(1), run.eq(sink.payload)]
        with m.Elif(s2_take):
            m.d.sync += s1_valid.eq(0)

        mask = Signal(16)
        m.d.comb += mask.eq(((Const(1, 17) << run.count) - 1)[:16])
        with m.If(s2_take):
            m.d.sync += [
                busy.eq(run.count != 0),
                phase.eq(0),
                two.eq(run.off + run.count > WORD_BYTES),
                addr.eq(run.addr),
                window.eq(run.data.as_value() << (run.off * 8)),
                be.eq(mask << run.off),
            ]
        with m.Elif(finishing):
            m.d.sync += busy.eq(0)
        with m.If(busy & ~phase & two):
            m.d.sync += phase.eq(1)
        m.d.comb += [
            self.mem.en.eq(busy),
            self.mem.addr.eq(addr + phase),
            self.mem.data.eq(Mux(phase, window[128:], window[:128])),
            self.mem.be.eq(Mux(phase, be[16:], be[:16])),
            self.idle.eq(~busy & ~s1_valid & ~inb.busy),
        ]
        return m


def _take_command(m: Module, cmd, active, rows_left, cols, stride, row, more, first=()) -> None:
    """A row writer takes a command while idle: (base, stride, rows, cols) into its registers,
    with ``first`` and ``more`` (its own; the order keeps the Verilog as it was). An empty
    command (no rows or no columns) leaves it idle."""
    m.d.comb += cmd.ready.eq(~active)
    cp = cmd.payload
    with m.If(cmd.valid & ~active):
        m.d.sync += [
            active.eq((cp.rows != 0) & (cp.cols != 0)),
            rows_left.eq(cp.rows),
            *first,
            cols.eq(cp.cols),
            stride.eq(cp.stride),
            row.eq(cp.base),
            *more,
        ]


def _next_row(m: Module, row, stride, rows_left, last_row, active, before, after, mid=()) -> None:
    """A row writer's step to its next row (``before``, ``mid`` and ``after``: the writer's
    own registers, assigned around it): the row's word address, the rows left with the "last
    row" flag as a register beside the counter, and the end of the command."""
    m.d.sync += [
        *before,
        row.eq(row + stride),
        *mid,
        rows_left.eq(rows_left - 1),
        last_row.eq(rows_left == 2),
        *after,
    ]
    with m.If(last_row):
        m.d.sync += active.eq(0)


def writer_cmd_layout() -> data.StructLayout:
    return data.StructLayout(
        {
            "base": unsigned(ADDR_BITS),
            "stride": unsigned(16),
            "rows": unsigned(16),
            "cols": unsigned(16),
        }
    )


class RowWriter(CheckedComponent):
    """A row stream of ``lanes`` bytes -> runs into rows (base, stride, rows, cols).

    The writer counts columns itself (``ceil(cols/lanes)`` beats a row); the stream's
    framing is not used. A beat of more than 16 lanes becomes one run per 16 bytes, unless
    ``wide``: then (``lanes`` = 16 W, W = 2 or 4) each beat is one write of W consecutive words
    (bytes past ``cols`` not enabled) straight to a wide write client of a banked
    :class:`Scratchpad`, a beat per cycle, registered once; rows start at word boundaries,
    so a beat never straddles words.

    Members
    -------
    cmd : ``In(stream.Signature(writer_cmd_layout()))``
    i : ``In(row_signature(unsigned(8), lanes))``
    o : ``Out(stream.Signature(run_layout()))``
        (not ``wide``)
    mem : ``Out(write_client_signature(words=lanes // 16))``
        (``wide``)
    hold : ``In(1)``
        (``yields`` only) Another write client writes the scratchpad this cycle: this
        writer's write waits (``mem.en`` low, the write presented again next cycle, no beat
        taken meanwhile). A chained unit's writer (docs/isa.md, "Chains") runs beside the
        MATMUL's output writers, and the scratchpad's write port has no arbiter.
    idle : ``Out(1)``
        No command in progress (every beat of the last command has left as a run / write).
    """

    @classmethod
    def check(cls, *, lanes, wide=False, yields=False):
        _check_lanes(lanes)
        if wide and lanes not in (32, 64):
            raise ValueError(f"a wide RowWriter needs lanes 32 or 64, not {lanes!r}")
        if yields and not wide:
            raise ValueError("only a wide RowWriter yields its writes (yields=True needs wide)")

    def __init__(self, *, lanes: int, wide: bool = False, yields: bool = False):
        self.lanes = lanes
        self.wide = wide
        self.yields = yields
        out = (
            {"mem": Out(write_client_signature(words=lanes // WORD_BYTES)),
             **({"hold": In(1)} if yields else {})}
            if wide
            else {"o": Out(stream.Signature(run_layout()))}
        )  # fmt: skip
        super().__init__(
            {
                "cmd": In(stream.Signature(writer_cmd_layout())),
                "i": In(row_signature(unsigned(8), lanes)),
                **out,
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        if self.wide:
            return self._elaborate_wide()
        m = Module()
        L = self.lanes
        k = max(1, L // WORD_BYTES)
        # beats come in through a skid buffer: the producer never sees the column compares
        # below in its ready (a unit's output queue behind them was a 10-level path)
        m.submodules.inb = inb = SkidBuffer(row_layout(unsigned(8), L))
        wiring.connect(m, wiring.flipped(self.i), inb.i)
        sink = inb.o
        active = Signal()
        rows_left = Signal(16)
        cols = Signal(16)
        stride = Signal(16)
        row = Signal(ADDR_BITS)
        col = Signal(16)
        piece = Signal(range(max(k, 2)))  # (never zero-width: Verilog has no [-1:0])
        plen = min(L, WORD_BYTES)
        # Bounds as registers, each with the flag the handshake needs, set for the next
        # piece as this one leaves (the subtract-and-compare of the column counters was
        # most of a 9.5-level path into the byte-run writer):
        left = Signal(17)  # cols - (col + 16 * piece): bytes of the row from this piece on
        left_fits = Signal()  # left <= plen: this piece ends the row
        beat_left = Signal(17)  # cols - col
        row_end = Signal()  # beat_left <= L: this beat ends the row
        last_row = Signal()  # rows_left == 1
        cols_fits = Signal()  # cols <= plen
        cols_row = Signal()  # cols <= L
        cp = self.cmd.payload
        _take_command(m, self.cmd, active, rows_left, cols, stride, row, [
            col.eq(0),
            piece.eq(0),
            left.eq(cp.cols),
            left_fits.eq(cp.cols <= plen),
            beat_left.eq(cp.cols),
            row_end.eq(cp.cols <= L),
            last_row.eq(cp.rows == 1),
            cols_fits.eq(cp.cols <= plen),
            cols_row.eq(cp.cols <= L),
        ])  # fmt: skip
        pos = Signal(16)  # column of this piece
        m.d.comb += pos.eq(col + (piece << 4) if k > 1 else col)
        run = self.o.payload
        m.d.comb += [
            run.addr.eq(row + (pos >> 4)),
            run.off.eq(pos[:4]),
            run.count.eq(Mux(left_fits, left, plen)),
        ]
        if k > 1:
            src = Array([sink.payload.data[16 * j : 16 * j + 16] for j in range(k)])[piece]
            for b in range(WORD_BYTES):
                m.d.comb += run.data[b].eq(src[b])
        else:
            for b in range(L):
                m.d.comb += run.data[b].eq(sink.payload.data[b])
        beat_done = Signal()
        m.d.comb += beat_done.eq(left_fits | (piece == k - 1))
        m.d.comb += [
            self.o.valid.eq(active & sink.valid),
            sink.ready.eq(active & self.o.ready & beat_done),
        ]
        with m.If(self.o.valid & self.o.ready):
            with m.If(~beat_done):
                m.d.sync += [
                    piece.eq(piece + 1),
                    left.eq(left - WORD_BYTES),
                    left_fits.eq(left <= WORD_BYTES + plen),
                ]
            with m.Else():
                m.d.sync += piece.eq(0)
                with m.If(row_end):
                    after = [left.eq(cols), left_fits.eq(cols_fits), beat_left.eq(cols),
                             row_end.eq(cols_row)]  # fmt: skip
                    _next_row(m, row, stride, rows_left, last_row, active, [col.eq(0)], after)
                with m.Else():
                    m.d.sync += [
                        col.eq(col + L),
                        left.eq(beat_left - L),
                        left_fits.eq(beat_left <= L + plen),
                        beat_left.eq(beat_left - L),
                        row_end.eq(beat_left <= 2 * L),
                    ]
        m.d.comb += self.idle.eq(~active & ~inb.busy)
        return m

    def _elaborate_wide(self):
        """One write of ``lanes / 16`` words per beat: address ``row + col / 16``, byte
        enables from the columns left (a register set for the next beat as this one
        leaves, like the reader's lane mask)."""
        m = Module()
        L = self.lanes
        m.submodules.inb = inb = SkidBuffer(row_layout(unsigned(8), L))
        wiring.connect(m, wiring.flipped(self.i), inb.i)
        sink = inb.o
        active = Signal()
        rows_left = Signal(16)
        last_row = Signal()  # rows_left == 1
        cols = Signal(16)
        stride = Signal(16)
        row = Signal(ADDR_BITS)
        addr = Signal(ADDR_BITS)  # this beat's first word
        beat_left = Signal(17)  # cols - col
        row_end = Signal()  # beat_left <= L
        mask = Signal(L)  # bytes of this beat inside the row
        cols_row = Signal()  # cols <= L
        cols_mask = Signal(L)  # the mask of a row's first beat

        def lanes_below(n):
            return Cat(*[n > i for i in range(L)])

        cp = self.cmd.payload
        _take_command(m, self.cmd, active, rows_left, cols, stride, row, [
            addr.eq(cp.base),
            beat_left.eq(cp.cols),
            row_end.eq(cp.cols <= L),
            mask.eq(lanes_below(cp.cols)),
            cols_row.eq(cp.cols <= L),
            cols_mask.eq(lanes_below(cp.cols)),
        ], first=[last_row.eq(cp.rows == 1)])  # fmt: skip
        # the scratchpad takes a write every cycle: no back-pressure past the skid buffer
        # (unless it yields: a held write waits, and so does the next beat)
        fire = Signal()
        en = Signal()
        if self.yields:
            wait = en & self.hold
            m.d.comb += [fire.eq(active & sink.valid & ~wait), sink.ready.eq(active & ~wait)]
            m.d.sync += en.eq(fire | wait)
        else:
            m.d.comb += [fire.eq(active & sink.valid), sink.ready.eq(active)]
            m.d.sync += en.eq(fire)
        with m.If(fire):
            m.d.sync += [
                self.mem.addr.eq(addr),
                self.mem.data.eq(sink.payload.data.as_value()),
                self.mem.be.eq(mask),
            ]
            with m.If(row_end):
                after = [beat_left.eq(cols), row_end.eq(cols_row), mask.eq(cols_mask)]
                _next_row(m, row, stride, rows_left, last_row, active, [], after,
                          mid=[addr.eq(row + stride)])  # fmt: skip
            with m.Else():
                m.d.sync += [
                    addr.eq(addr + L // WORD_BYTES),
                    beat_left.eq(beat_left - L),
                    row_end.eq(beat_left <= 2 * L),
                    mask.eq(Cat(*[beat_left > L + i for i in range(L)])),
                ]
        m.d.comb += [
            self.mem.en.eq(en & ~self.hold if self.yields else en),
            self.idle.eq(~active & ~inb.busy & ~en),
        ]
        return m
