"""Scratchpad (SPM) and the address generators every instruction uses.

The SPM is one memory of 16-byte words (docs/isa.md, "Scratchpad") with one read port and
one byte-enabled write port, so it maps to simple-dual-port block RAM. Around it:

* :class:`Scratchpad`: the memory, a round-robin arbiter for several read clients (each a
  :func:`read_client_signature`: request/grant, data one cycle after the grant) and a
  priority mux for the write clients (at most one writes at a time by construction).
* :class:`RowReader`: (base, stride, rows, cols) -> a stream of beats of ``lanes`` bytes
  with row framing (``count``/``last``, :func:`vitaccel.rtl.common.row_layout`); bytes past
  ``cols`` read as 0. A *dual* command interleaves the rows of two tensors (A row 0, B row 0,
  A row 1, ...) for the residual add. A credit counter keeps the reader from requesting
  more words than its FIFO holds, so a stalled consumer never blocks the read port.
* :class:`ByteRunWriter`: runs of up to 16 bytes at any byte offset -> one or two word writes
  with byte enables. Every writer below produces runs.
* :class:`RowWriter`: a row stream of ``lanes`` bytes -> runs at (base, stride, rows, cols);
  bytes past ``cols`` are never written.
* :class:`MatmulOutWriter`: the matmul engine's output words (one token x G*C channels per
  step) -> runs, in shared or heads mode, row-major or transposed (OUT_T).
* :class:`WStreamBuilder`: the engine's ``w`` stream from SPM rows (MATMUL with W_SPM):
  per step, group and column a parameter word, then the row's ``ceil(K/V)`` words.

``lanes`` must be a power of two (1..64): beats then never straddle a word boundary except
as whole words, which keeps the byte selection a plain mux.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from vitaccel.rtl.common import check_int, count_bits, row_layout, row_signature, silence_unused
from vitaccel.rtl.skid import SkidBuffer

__all__ = [
    "WORD_BYTES",
    "ADDR_BITS",
    "read_client_signature",
    "write_client_signature",
    "Scratchpad",
    "reader_cmd_layout",
    "RowReader",
    "run_layout",
    "ByteRunWriter",
    "writer_cmd_layout",
    "RowWriter",
    "matmul_out_cmd_layout",
    "MatmulOutWriter",
    "ResidualRuns",
    "xbuild_cmd_layout",
    "XStreamBuilder",
    "wbuild_cmd_layout",
    "WStreamBuilder",
]

WORD_BYTES = 16
# Instruction fields are 16 bits: every SPM word address is computed in 16 bits and the
# memory uses the low ceil(log2(words)) of them.
ADDR_BITS = 16


def read_client_signature(addr_bits: int = ADDR_BITS) -> wiring.Signature:
    """A read client of the SPM (client side): ``req``/``addr`` out, ``grant`` in (the request
    is taken on this cycle), ``rvalid``/``rdata`` in one cycle after the grant."""
    return wiring.Signature(
        {
            "req": Out(1),
            "addr": Out(addr_bits),
            "grant": In(1),
            "rvalid": In(1),
            "rdata": In(8 * WORD_BYTES),
        }
    )


def write_client_signature(addr_bits: int = ADDR_BITS) -> wiring.Signature:
    """A write client of the SPM (client side): ``en``, ``addr``, ``data``, byte enables ``be``."""
    return wiring.Signature(
        {
            "en": Out(1),
            "addr": Out(addr_bits),
            "data": Out(8 * WORD_BYTES),
            "be": Out(WORD_BYTES),
        }
    )


def _check_lanes(lanes, name: str = "lanes") -> int:
    check_int(name, lanes, 1, 64)
    if lanes & (lanes - 1):
        raise ValueError(f"{name} must be a power of two, not {lanes!r}")
    return lanes


class Scratchpad(wiring.Component):
    """The SPM: ``words`` x 16 bytes, one read port shared round-robin, one write port.

    Parameters
    ----------
    words : int
        Depth in 16-byte words (16..65536).
    read_clients, write_clients : int
        Number of read clients (round-robin, one grant per cycle) and write clients (lower
        index wins; the controller lets one write at a time).
    init : sequence of int, optional
        Power-up contents (128-bit words), for tests; zeros otherwise.

    Members
    -------
    rd : ``In(read_client_signature()).array(read_clients)``
    wr : ``In(write_client_signature()).array(write_clients)``
    """

    def __init__(self, *, words: int, read_clients: int = 1, write_clients: int = 1, init=None):
        try:
            check_int("words", words, 16, 1 << ADDR_BITS)
            check_int("read_clients", read_clients, 1, 16)
            check_int("write_clients", write_clients, 1, 16)
        except (TypeError, ValueError):
            silence_unused(self)
            raise
        self.words = words
        # Built here (not in elaborate) so testbenches can read ``mem.data``.
        self.mem = Memory(shape=unsigned(8 * WORD_BYTES), depth=words, init=init or [])
        self.read_clients = read_clients
        self.write_clients = write_clients
        super().__init__(
            {
                "rd": In(read_client_signature()).array(read_clients),
                "wr": In(write_client_signature()).array(write_clients),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = self.mem
        abits = ceil_log2(self.words)
        wp = mem.write_port(granularity=8)
        rp = mem.read_port()

        # Writes: priority mux (the last assignment wins, so client 0 has priority).
        for w in reversed(list(self.wr)):
            with m.If(w.en):
                m.d.comb += [wp.addr.eq(w.addr[:abits]), wp.data.eq(w.data)]
                m.d.comb += wp.en.eq(w.be)

        # Reads: round-robin after the last granted client (priority last+1, last+2, ...,
        # wrapping), as two lowest-set-bit picks: among the clients above the last granted
        # one (``above``, a register), else among all. ``x & -x`` is a carry chain, so the
        # grant is a few levels from the requests; the address is an AND-OR of the one-hot
        # grant (a chain of muxes was most of a 9-level path into the block RAM).
        n = self.read_clients
        reqs = Cat(*[r.req for r in self.rd])
        above = Signal(n, init=((1 << n) - 1) & ~1)  # clients after the last granted one

        def lowest(x):
            return x & (~x + 1)[:n]

        masked = Signal(n)
        grant = Signal(n)
        m.d.comb += [
            masked.eq(reqs & above),
            grant.eq(Mux(masked.any(), lowest(masked), lowest(reqs))),
        ]
        with m.If(grant.any()):
            m.d.sync += above.eq(~(grant | (grant - 1)[:n]))
        addr = 0
        for i, r in enumerate(self.rd):
            m.d.comb += r.grant.eq(grant[i])
            addr = addr | Mux(grant[i], r.addr[:abits], 0)
        m.d.comb += [rp.addr.eq(addr), rp.en.eq(grant.any())]
        granted = Signal(n)
        m.d.sync += granted.eq(grant)
        for i, r in enumerate(self.rd):
            m.d.comb += [r.rvalid.eq(granted[i]), r.rdata.eq(rp.data)]
        return m


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


class RowReader(wiring.Component):
    """Row-major int8 tensor in the SPM -> beats of ``lanes`` bytes with row framing.

    Row r of a command is read from words ``base + r*stride .. + ceil(cols/16) - 1``; it
    becomes ``ceil(cols/lanes)`` beats, the last with ``count = cols - lanes*(beats-1)`` and
    ``last``; lanes past ``cols`` are 0 (the padding the matmul's X stream needs). A command
    with rows or cols equal to 0 is accepted and produces nothing. The next command is taken
    as soon as the previous one's addresses are issued (its beats may still be draining).

    Members
    -------
    cmd : ``In(stream.Signature(reader_cmd_layout()))``
    o : ``Out(row_signature(unsigned(8), lanes))``
    mem : ``Out(read_client_signature())``
    idle : ``Out(1)``
        Every beat of every accepted command has been delivered.
    """

    def __init__(self, *, lanes: int, fifo_depth: int = 4):
        try:
            _check_lanes(lanes)
            check_int("fifo_depth", fifo_depth, 2, 64)
        except (TypeError, ValueError):
            silence_unused(self)
            raise
        self.lanes = lanes
        self.fifo_depth = fifo_depth
        super().__init__(
            {
                "cmd": In(stream.Signature(reader_cmd_layout())),
                "o": Out(row_signature(unsigned(8), lanes)),
                "mem": Out(read_client_signature()),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        # beats leave through a skid buffer: the consumer's ready and the beat former's
        # FIFO pops are in different cycles (the chain was 12-13 levels through RESADD)
        m.submodules.out = out = SkidBuffer(row_layout(unsigned(8), L))
        wiring.connect(m, out.o, wiring.flipped(self.o))
        src = out.i
        # commands through a skid buffer too: the controller's payload muxes and this
        # reader's address registers are in different cycles
        m.submodules.cmdq = cmdq = SkidBuffer(reader_cmd_layout())
        wiring.connect(m, wiring.flipped(self.cmd), cmdq.i)
        cmd = cmdq.o
        cmdp = cmd.payload

        # -- framing queue: what the beat former needs of each command --
        # rows_m1 = rows - 1: the beat former's end-of-command test is then an equality
        # against a register (``brow + 1 == rows`` was a 10-LUT path into the FIFO level)
        info_layout = data.StructLayout({"rows_m1": unsigned(17), "cols": unsigned(16)})
        # (buffered: the head command comes from a register, not through LUT RAM)
        m.submodules.info = info = SyncFIFOBuffered(width=info_layout.size, depth=3)
        m.submodules.words = words = SyncFIFO(width=8 * WORD_BYTES, depth=self.fifo_depth)

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

        empty_cmd = (cmdp.rows == 0) | (cmdp.cols == 0)
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
        last_row = Signal()  # rows_left == 1
        with m.If(take & ~empty_cmd):
            words_m1 = ((cmdp.cols + 15) >> 4) - 1
            m.d.sync += [
                w_zero.eq(words_m1 == 0),
                one_word.eq(words_m1 == 0),
                last_row.eq(cmdp.rows == 1),
                active.eq(1),
                rows_left.eq(cmdp.rows),
                wpr_m1.eq(((cmdp.cols + 15) >> 4) - 1),
                w_left.eq(((cmdp.cols + 15) >> 4) - 1),
                second.eq(0),
                dual.eq(cmdp.dual),
                addr.eq(cmdp.base),
                row_a.eq(cmdp.base),
                row_b.eq(cmdp.base2),
                stride_a.eq(cmdp.stride),
                stride_b.eq(cmdp.stride2),
            ]

        outstanding = Signal(range(self.fifo_depth + 1))  # granted, not yet popped
        # outstanding < fifo_depth, kept in a register from the next value: the request
        # (and the SPM arbiter and address mux behind it) starts at a flip-flop
        room = Signal(init=1)
        pop = Signal()
        m.d.comb += [
            self.mem.req.eq(active & room),
            self.mem.addr.eq(addr),
        ]
        grant = self.mem.grant
        m.d.sync += [
            outstanding.eq(outstanding + grant - pop),
            room.eq(_room_next(outstanding, grant, pop, self.fifo_depth)),
        ]
        with m.If(grant):
            with m.If(~w_zero):
                m.d.sync += [w_left.eq(w_left - 1), w_zero.eq(w_left == 1), addr.eq(addr + 1)]
            with m.Elif(dual & ~second):
                m.d.sync += [w_left.eq(wpr_m1), w_zero.eq(one_word), second.eq(1), addr.eq(row_b)]
            with m.Else():
                m.d.sync += [
                    w_left.eq(wpr_m1),
                    w_zero.eq(one_word),
                    second.eq(0),
                    rows_left.eq(rows_left - 1),
                    last_row.eq(rows_left == 2),
                    row_a.eq(row_a + stride_a),
                    row_b.eq(row_b + stride_b),
                    addr.eq(row_a + stride_a),
                ]
                with m.If(last_row):
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
        fire = src.valid & src.ready
        word_done = Signal()  # this beat uses the last bytes taken from the head word

        if L <= WORD_BYTES:
            per_word = WORD_BYTES // L
            sub = col[exact_log2(L) : 4] if per_word > 1 else Const(0, 1)
            slices = Array([words.r_data[8 * L * j : 8 * L * (j + 1)] for j in range(per_word)])
            raw = Signal(8 * L)
            m.d.comb += raw.eq(slices[sub])
            m.d.comb += [
                src.valid.eq(loaded & words.r_rdy),
                word_done.eq(is_last | (sub == per_word - 1)),
                pop.eq(fire & word_done),
            ]
        else:
            k = L // WORD_BYTES
            gather = [Signal(8 * WORD_BYTES, name=f"gather{j}") for j in range(k)]
            gj = Signal(range(k))
            full = Signal()
            wi = Signal(13)  # word index within the row
            last_word = (wi + 1) << 4 >= head.cols
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
            m.d.comb += src.valid.eq(full)

        for i in range(L):
            m.d.comb += beat.data[i].eq(Mux(lane_mask[i], raw[8 * i : 8 * i + 8], 0))
        m.d.comb += [beat.count.eq(count), beat.last.eq(is_last), src.payload.eq(beat)]

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


def writer_cmd_layout() -> data.StructLayout:
    return data.StructLayout(
        {
            "base": unsigned(ADDR_BITS),
            "stride": unsigned(16),
            "rows": unsigned(16),
            "cols": unsigned(16),
        }
    )


class RowWriter(wiring.Component):
    """A row stream of ``lanes`` bytes -> runs into rows (base, stride, rows, cols).

    The writer counts columns itself (``ceil(cols/lanes)`` beats a row); the stream's
    framing is not used. A beat of more than 16 lanes becomes one run per 16 bytes.

    Members
    -------
    cmd : ``In(stream.Signature(writer_cmd_layout()))``
    i : ``In(row_signature(unsigned(8), lanes))``
    o : ``Out(stream.Signature(run_layout()))``
    idle : ``Out(1)``
        No command in progress (every beat of the last command has left as a run).
    """

    def __init__(self, *, lanes: int):
        try:
            _check_lanes(lanes)
        except (TypeError, ValueError):
            silence_unused(self)
            raise
        self.lanes = lanes
        super().__init__(
            {
                "cmd": In(stream.Signature(writer_cmd_layout())),
                "i": In(row_signature(unsigned(8), lanes)),
                "o": Out(stream.Signature(run_layout())),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
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
        m.d.comb += self.cmd.ready.eq(~active)
        cp = self.cmd.payload
        with m.If(self.cmd.valid & ~active):
            m.d.sync += [
                active.eq((cp.rows != 0) & (cp.cols != 0)),
                rows_left.eq(cp.rows),
                cols.eq(cp.cols),
                stride.eq(cp.stride),
                row.eq(cp.base),
                col.eq(0),
                piece.eq(0),
                left.eq(cp.cols),
                left_fits.eq(cp.cols <= plen),
                beat_left.eq(cp.cols),
                row_end.eq(cp.cols <= L),
                last_row.eq(cp.rows == 1),
                cols_fits.eq(cp.cols <= plen),
                cols_row.eq(cp.cols <= L),
            ]
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
                    m.d.sync += [
                        col.eq(0),
                        row.eq(row + stride),
                        rows_left.eq(rows_left - 1),
                        last_row.eq(rows_left == 2),
                        left.eq(cols),
                        left_fits.eq(cols_fits),
                        beat_left.eq(cols),
                        row_end.eq(cols_row),
                    ]
                    with m.If(last_row):
                        m.d.sync += active.eq(0)
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


# ---- matmul streams --------------------------------------------------------------------------


def matmul_out_cmd_layout() -> data.StructLayout:
    """A :class:`MatmulOutWriter` job: Y base/stride, T, N, mode and heads."""
    return data.StructLayout(
        {
            "base": unsigned(ADDR_BITS),
            "stride": unsigned(16),
            "tokens": unsigned(16),
            "n": unsigned(16),
            "heads": unsigned(1),  # heads mode: group g writes head g (base + g*head_step)
            "nheads": unsigned(8),  # heads in this job (1..groups); 1 in shared mode
            "head_step": unsigned(16),
            "transposed": unsigned(1),  # OUT_T: element (t, n) to row n, column t
        }
    )


def _mode_consts(groups: int, cols: int):
    """Per mode (shared, heads): channels per step Cm and the row-major segment width."""
    shared = (groups * cols, min(WORD_BYTES, groups * cols))
    heads = (cols, min(WORD_BYTES, cols))
    return shared, heads


class MatmulOutWriter(wiring.Component):
    """The matmul engine's ``o`` words -> SPM runs.

    Word order (docs/gvsa.md): per output step s, per token t < T, one word of ``groups*cols``
    bytes, byte ``g*cols + c``. In shared mode the step covers channels ``s*G*C ..`` (byte j is
    channel ``s*G*C + j``); in heads mode group g (< nheads) writes channel ``s*C + c`` of head
    g's Y at ``base + g*head_step``. Channels >= N are dropped. Row-major output writes each
    word as runs of up to 16 consecutive channels. OUT_T (element (t, n) to row n, column t)
    gathers 16 tokens of every lane in a ``16 x groups*cols``-byte register buffer (input
    stalls while it is flushed), then writes one 16-byte run per channel.

    Members
    -------
    cmd : ``In(stream.Signature(matmul_out_cmd_layout()))``
    i : ``In(stream.Signature(unsigned(8 * groups * cols)))``
    o : ``Out(stream.Signature(run_layout()))``
    chan : ``Out(16)``
        The channel (within the head, in heads mode) of the run on ``o``: a fused residual
        add (:class:`ResidualRuns`) reads its per-channel multipliers with it.
    idle : ``Out(1)``
    """

    def __init__(self, *, groups: int, cols: int):
        try:
            check_int("groups", groups, 1, 64)
            check_int("cols", cols, 1, 64)
        except (TypeError, ValueError):
            silence_unused(self)
            raise
        self.groups = groups
        self.cols = cols
        super().__init__(
            {
                "cmd": In(stream.Signature(matmul_out_cmd_layout())),
                "i": In(stream.Signature(unsigned(8 * groups * cols))),
                "o": Out(stream.Signature(run_layout())),
                "chan": Out(16),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        G, C = self.groups, self.cols
        # output words come in through a skid buffer: the engine's FIFO pop and credits
        # never wait for this writer's run logic in the same cycle
        m.submodules.inb = inb = SkidBuffer(unsigned(8 * G * C))
        wiring.connect(m, wiring.flipped(self.i), inb.i)
        sink = inb.o
        (cm_sh, sw_sh), (cm_hd, sw_hd) = _mode_consts(G, C)
        # Every address and bound is a register updated incrementally with two-operand adds,
        # so the run (address, count) comes from short logic (the byte-run writer registers
        # it next).
        job = Signal(matmul_out_cmd_layout())
        active = Signal()
        cm = Signal(16)  # channels per step in this mode
        sw = Signal(5)  # lanes per run in this mode
        cm_stride = Signal(ADDR_BITS)  # cm * stride (rows of one step, OUT_T)

        g_last = Signal()  # on the last group of the word
        g_left = Signal(9)  # groups left in the word, this one included
        t_last = Signal()
        t_left = Signal(17)
        t = Signal(16)
        left_c = Signal(17)  # lanes of this group from c on
        lane0 = Signal(range(G * C + 1))  # first byte of the run in the word
        grp_lane = Signal(range(G * C + 1))  # first byte of this group
        n = Signal(17)  # channel of the run
        left_n = Signal(17)  # N - n
        step_n = Signal(17)  # s * cm
        step_left = Signal(17)  # N - s * cm
        tok_base = Signal(ADDR_BITS)  # base + t * stride
        rowaddr = Signal(ADDR_BITS)  # tok_base + g * head_step (row-major)
        step_row_base = Signal(ADDR_BITS)  # base + s * cm * stride (OUT_T)
        grp_nrow = Signal(ADDR_BITS)  # step_row_base + g * head_step
        lane_row = Signal(ADDR_BITS)  # grp_nrow + (n - s*cm) * stride

        # "this run ends its group" is a register, set with the bounds it is computed from:
        # every way the bounds can change has its own compare on registers (the compare of
        # the fresh bounds sat between the writer's ready and every address register)
        grp_last = Signal()
        cm_le_sw = Signal()  # a whole step's group fits one run
        m.d.comb += self.cmd.ready.eq(~active)
        cmdp = self.cmd.payload
        with m.If(self.cmd.valid & ~active):
            gact = Mux(cmdp.heads, cmdp.nheads, 1)
            cm0 = Mux(cmdp.heads, cm_hd, cm_sh)
            sw0 = Mux(cmdp.transposed, 1, Mux(cmdp.heads, sw_hd, sw_sh))
            m.d.sync += [
                grp_last.eq((cm0 <= sw0) | (cmdp.n <= sw0)),
                cm_le_sw.eq(cm0 <= sw0),
                job.eq(cmdp),
                active.eq((cmdp.tokens != 0) & (cmdp.n != 0)),
                cm.eq(Mux(cmdp.heads, cm_hd, cm_sh)),
                sw.eq(Mux(cmdp.transposed, 1, Mux(cmdp.heads, sw_hd, sw_sh))),
                cm_stride.eq(cmdp.stride * Mux(cmdp.heads, cm_hd, cm_sh)),
                g_left.eq(gact),
                g_last.eq(gact <= 1),
                t.eq(0),
                t_left.eq(cmdp.tokens),
                t_last.eq(cmdp.tokens == 1),
                left_c.eq(Mux(cmdp.heads, cm_hd, cm_sh)),
                lane0.eq(0),
                grp_lane.eq(0),
                n.eq(0),
                left_n.eq(cmdp.n),
                step_n.eq(0),
                step_left.eq(cmdp.n),
                tok_base.eq(cmdp.base),
                rowaddr.eq(cmdp.base),
                step_row_base.eq(cmdp.base),
                grp_nrow.eq(cmdp.base),
                lane_row.eq(cmdp.base),
            ]

        group_last = grp_last
        # bytes of this run, min(left_c, left_n, sw): sw unless the run ends its group (then
        # both bounds are known to be <= sw only one of which needs the compare)
        count = Signal(5)
        m.d.comb += count.eq(Mux(grp_last, Mux(left_c < left_n, left_c, left_n), sw))
        word_last = Signal()
        m.d.comb += word_last.eq(group_last & g_last)
        # grp_last after each kind of update (left_c, left_n as they will be)
        gl_step = cm_le_sw | (step_left - cm <= sw)  # next step: cm, step_left - cm
        gl_group = cm_le_sw | (step_left <= sw)  # next token or group: cm, step_left
        gl_run = (left_c <= (sw << 1)) | (left_n <= (sw << 1))  # next run: both - sw

        word = sink.payload
        run = self.o.payload
        # OUT_T: up to 16 tokens of every lane are gathered (buf[lane] byte t % 16), then
        # flushed as one run per channel: row n, columns t0 .. t0 + 15.
        buf = [Signal(8 * WORD_BYTES, name=f"tbuf{lane}") for lane in range(G * C)]
        flushing = Signal()
        # The flushed lane's bytes come from a register, selected a run ahead (the G*C-way
        # select was most of a 9-level path into the byte-run writer); a flush starts with
        # one cycle that selects lane 0 once its last byte is in.
        tdata = Signal(8 * WORD_BYTES)
        tprimed = Signal()
        with m.If(job.transposed):
            m.d.comb += [
                run.addr.eq(lane_row + (t >> 4)),
                run.off.eq(0),
                run.count.eq(t[:4] + 1),
                run.data.as_value().eq(tdata),
            ]
        with m.Else():
            m.d.comb += [
                run.addr.eq(rowaddr + (n >> 4)),
                run.off.eq(n[:4]),
                run.count.eq(count),
            ]
            positions = sorted(
                set(range(0, G * C, sw_sh))
                | {g_ * C + j for g_ in range(G) for j in range(0, C, sw_hd)}
            )
            for p in positions:
                with m.If(lane0 == p):
                    for b in range(WORD_BYTES):
                        # bytes past the word are never written (count); any byte will do
                        q = (p + b) % (G * C)
                        m.d.comb += run.data[b].eq(word[8 * q : 8 * q + 8])

        m.d.comb += self.chan.eq(n)
        fire = self.o.valid & self.o.ready
        with m.If(job.transposed):
            m.d.comb += [
                self.o.valid.eq(active & flushing & tprimed),
                sink.ready.eq(active & ~flushing),
            ]
            with m.If(flushing & ~tprimed):
                m.d.sync += [
                    tdata.eq(Cat(*buf).word_select(lane0, 8 * WORD_BYTES)),
                    tprimed.eq(1),
                ]
            with m.If(fire):
                lane_next = Mux(group_last, grp_lane + C, lane0 + sw)
                m.d.sync += tdata.eq(Cat(*buf).word_select(lane_next, 8 * WORD_BYTES))
                with m.If(word_last):
                    m.d.sync += tprimed.eq(0)
            with m.If(sink.valid & sink.ready):
                for lane in range(G * C):
                    for j in range(WORD_BYTES):
                        with m.If(t[:4] == j):
                            m.d.sync += buf[lane][8 * j : 8 * j + 8].eq(
                                word[8 * lane : 8 * lane + 8]
                            )
                with m.If((t[:4] == WORD_BYTES - 1) | t_last):
                    m.d.sync += flushing.eq(1)
                with m.Else():  # next token of the chunk
                    m.d.sync += [t.eq(t + 1), t_left.eq(t_left - 1), t_last.eq(t_left == 2)]
        with m.Else():
            m.d.comb += [
                self.o.valid.eq(active & sink.valid),
                sink.ready.eq(active & self.o.ready & word_last),
            ]
        gact = Mux(job.heads, job.nheads, 1)
        with m.If(fire):
            with m.If(word_last):
                m.d.sync += flushing.eq(0)
                m.d.sync += [
                    g_left.eq(gact),
                    g_last.eq(gact <= 1),
                    left_c.eq(cm),
                    lane0.eq(0),
                    grp_lane.eq(0),
                ]
                with m.If(t_last):  # the step ends
                    m.d.sync += [
                        grp_last.eq(gl_step),
                        t.eq(0),
                        t_left.eq(job.tokens),
                        t_last.eq(job.tokens == 1),
                        step_n.eq(step_n + cm),
                        step_left.eq(step_left - cm),
                        n.eq(step_n + cm),
                        left_n.eq(step_left - cm),
                        tok_base.eq(job.base),
                        rowaddr.eq(job.base),
                        step_row_base.eq(step_row_base + cm_stride),
                        grp_nrow.eq(step_row_base + cm_stride),
                        lane_row.eq(step_row_base + cm_stride),
                    ]
                    with m.If(step_left <= cm):
                        m.d.sync += active.eq(0)
                with m.Else():
                    m.d.sync += [
                        grp_last.eq(gl_group),
                        t.eq(t + 1),
                        t_left.eq(t_left - 1),
                        t_last.eq(t_left == 2),
                        n.eq(step_n),
                        left_n.eq(step_left),
                        tok_base.eq(tok_base + job.stride),
                        rowaddr.eq(tok_base + job.stride),
                        grp_nrow.eq(step_row_base),
                        lane_row.eq(step_row_base),
                    ]
            with m.Elif(group_last):
                m.d.sync += [
                    grp_last.eq(gl_group),
                    g_left.eq(g_left - 1),
                    g_last.eq(g_left == 2),
                    left_c.eq(cm),
                    grp_lane.eq(grp_lane + C),
                    lane0.eq(grp_lane + C),
                    n.eq(step_n),
                    left_n.eq(step_left),
                    rowaddr.eq(rowaddr + job.head_step),
                    grp_nrow.eq(grp_nrow + job.head_step),
                    lane_row.eq(grp_nrow + job.head_step),
                ]
            with m.Else():
                m.d.sync += [
                    grp_last.eq(gl_run),
                    left_c.eq(left_c - sw),
                    lane0.eq(lane0 + sw),
                    n.eq(n + sw),
                    left_n.eq(left_n - sw),
                    lane_row.eq(lane_row + job.stride),
                ]
        m.d.comb += self.idle.eq(~active & ~inb.busy)
        return m


class ResidualRuns(wiring.Component):
    """A residual add fused into a MATMUL's output: each output run (one token, 16 channels
    of a step: the engine's B) reads the matching word of A from the SPM, goes through the
    residual-add unit's pipeline (:class:`vitaccel.rtl.resadd.ResAdd`, ``pair`` mode) and
    leaves as the same run with ``residual_add(A, ma, B, mb, shift)`` in place of B.

    A has Y's stride, so A's word is the run's own address plus ``delta`` (A base - Y base,
    modulo 2**16). Runs must be word-aligned and within one word (``off == 0``), which holds
    in shared mode when an output step covers whole words (:func:`vitaccel.isa.residual_fusable`).
    A run's word of A is read before the run (or any later one) is written, so Y may equal A.
    Reads are requested only while the queues have room for their answers (credits), so a
    stalled writer never blocks the SPM read port; one run per cycle when the port is free.

    Members
    -------
    i : ``In(stream.Signature(run_layout()))``
    chan : ``In(16)``
        The channel of the run on ``i`` (:attr:`MatmulOutWriter.chan`).
    delta : ``In(ADDR_BITS)``
        A base - Y base; hold it while runs flow.
    mem : ``Out(read_client_signature())``
    pair : ``Out(stream.Signature(pair_layout(max_channels)))``
        To the residual-add unit.
    res : ``In(row_signature(signed(8), 16))``
        From the residual-add unit (its ``o``), in order.
    o : ``Out(stream.Signature(run_layout()))``
    idle : ``Out(1)``
        No run is queued or in the residual-add unit.
    """

    def __init__(self, *, max_channels: int, depth: int = 6, out_depth: int = 16):
        from vitaccel.rtl.resadd import pair_layout

        try:
            check_int("max_channels", max_channels, 16, 8192)
            check_int("depth", depth, 2, 64)
            check_int("out_depth", out_depth, 2, 64)
        except (TypeError, ValueError):
            silence_unused(self)
            raise
        self.max_channels = max_channels
        self.depth = depth
        self.out_depth = out_depth
        self._pair_layout = pair_layout(max_channels)
        super().__init__(
            {
                "i": In(stream.Signature(run_layout())),
                "chan": In(16),
                "delta": In(ADDR_BITS),
                "mem": Out(read_client_signature()),
                "pair": Out(stream.Signature(self._pair_layout)),
                "res": In(row_signature(signed(8), WORD_BYTES)),
                "o": Out(stream.Signature(run_layout())),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        D = self.depth
        index_bits = self._pair_layout["index"].shape.width
        head_layout = data.StructLayout(
            {
                "addr": unsigned(ADDR_BITS),
                "off": unsigned(4),
                "count": unsigned(5),
                "index": unsigned(index_bits),
                "b": unsigned(8 * WORD_BYTES),
            }
        )
        out_layout = data.StructLayout(
            {"addr": unsigned(ADDR_BITS), "off": unsigned(4), "count": unsigned(5)}
        )
        # runs waiting for their A word, the A words (one cycle after the grant), and the
        # addresses of runs inside the residual-add pipeline (it keeps order)
        m.submodules.heads = heads = SyncFIFOBuffered(width=head_layout.size, depth=D)
        m.submodules.awords = awords = SyncFIFOBuffered(width=8 * WORD_BYTES, depth=D)
        m.submodules.outq = outq = SyncFIFO(width=out_layout.size, depth=self.out_depth)

        # runs come in through a skid buffer (with their channel): the SPM arbiter's grant,
        # which takes them, must not reach back into the output writer's logic
        tagged = data.StructLayout({"run": run_layout(), "chan": unsigned(16)})
        m.submodules.inb = inb = SkidBuffer(tagged)
        m.d.comb += [
            inb.i.valid.eq(self.i.valid),
            inb.i.payload.run.eq(self.i.payload),
            inb.i.payload.chan.eq(self.chan),
            self.i.ready.eq(inb.i.ready),
        ]
        inflight = Signal(range(D + 1))  # granted reads whose pair has not been formed
        room = Signal(init=1)  # inflight < D, from the next value (as RowReader's credits)
        formed = Signal()
        m.d.comb += [
            self.mem.req.eq(inb.o.valid & room),
            self.mem.addr.eq(inb.o.payload.run.addr + self.delta),
            inb.o.ready.eq(self.mem.grant),
        ]
        m.d.sync += [
            inflight.eq(inflight + self.mem.grant - formed),
            room.eq(_room_next(inflight, self.mem.grant, formed, D)),
        ]
        head_in = Signal(head_layout)
        run = inb.o.payload.run
        m.d.comb += [
            head_in.addr.eq(run.addr),
            head_in.off.eq(run.off),
            head_in.count.eq(run.count),
            head_in.index.eq(inb.o.payload.chan >> 4),
            head_in.b.eq(run.data.as_value()),
            heads.w_data.eq(head_in),
            heads.w_en.eq(self.mem.grant),
            awords.w_data.eq(self.mem.rdata),
            awords.w_en.eq(self.mem.rvalid),
        ]

        head = Signal(head_layout)
        m.d.comb += head.eq(heads.r_data)
        m.d.comb += [
            self.pair.valid.eq(heads.r_rdy & awords.r_rdy & outq.w_rdy),
            self.pair.payload.a.eq(awords.r_data),
            self.pair.payload.b.eq(head.b),
            self.pair.payload.index.eq(head.index),
            self.pair.payload.count.eq(WORD_BYTES),
            self.pair.payload.last.eq(1),
            formed.eq(self.pair.valid & self.pair.ready),
            heads.r_en.eq(formed),
            awords.r_en.eq(formed),
        ]
        out_in = Signal(out_layout)
        m.d.comb += [
            out_in.addr.eq(head.addr),
            out_in.off.eq(head.off),
            out_in.count.eq(head.count),
            outq.w_data.eq(out_in),
            outq.w_en.eq(formed),
        ]

        top = Signal(out_layout)
        m.d.comb += top.eq(outq.r_data)
        o = self.o.payload
        m.d.comb += [
            self.o.valid.eq(self.res.valid & outq.r_rdy),
            o.addr.eq(top.addr),
            o.off.eq(top.off),
            o.count.eq(top.count),
            self.res.ready.eq(self.o.ready & outq.r_rdy),
            outq.r_en.eq(self.o.valid & self.o.ready),
        ]
        for b in range(WORD_BYTES):
            m.d.comb += o.data[b].eq(self.res.payload.data[b])
        m.d.comb += self.idle.eq((inflight == 0) & (outq.level == 0) & ~inb.busy)
        return m


def xbuild_cmd_layout() -> data.StructLayout:
    return data.StructLayout(
        {
            "base": unsigned(ADDR_BITS),
            "stride": unsigned(16),
            "tokens": unsigned(16),
            "k": unsigned(16),
            "heads": unsigned(1),
            "nheads": unsigned(8),
            "head_step": unsigned(16),
        }
    )


class XStreamBuilder(wiring.Component):
    """The matmul engine's ``x`` stream from SPM rows: T tokens x ceil(K/V) words of V bytes,
    zero padded past K. Heads mode: groups 0..G-1 in turn, head g from ``base + g*head_step``;
    groups >= nheads get zero words (the engine loads X for every group).

    Members
    -------
    cmd : ``In(stream.Signature(xbuild_cmd_layout()))``
    o : ``Out(stream.Signature(unsigned(8 * vector)))``
    mem : ``Out(read_client_signature())``
    idle : ``Out(1)``
    """

    def __init__(self, *, groups: int, vector: int):
        try:
            check_int("groups", groups, 1, 64)
            _check_lanes(vector, "vector")
        except (TypeError, ValueError):
            silence_unused(self)
            raise
        self.groups = groups
        self.vector = vector
        self.reader = RowReader(lanes=vector)
        super().__init__(
            {
                "cmd": In(stream.Signature(xbuild_cmd_layout())),
                "o": Out(stream.Signature(unsigned(8 * vector))),
                "mem": Out(read_client_signature()),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = rd = self.reader
        # words leave through a skid buffer: the engine's loader logic behind its ready is
        # not in the same cycle as this builder's counters
        m.submodules.out = out = SkidBuffer(self.o.payload.shape())
        wiring.connect(m, out.o, wiring.flipped(self.o))
        src = out.i
        wiring.connect(m, rd.mem, wiring.flipped(self.mem))
        V = self.vector
        job = Signal(xbuild_cmd_layout())
        active = Signal()
        g = Signal(8)
        base = Signal(ADDR_BITS)
        issued = Signal()  # the reader command of group g is out
        zeros_left = Signal(32)  # zero words still to send for group g
        zeros_on = Signal()  # zeros_left != 0
        rows_to_go = Signal(16)  # rows of the group after the current one
        row_is_last = Signal()  # rows_to_go == 0
        row_next_last = Signal()  # rows_to_go == 1
        m.d.comb += self.cmd.ready.eq(~active)
        with m.If(self.cmd.valid & ~active):
            m.d.sync += [
                job.eq(self.cmd.payload),
                active.eq((self.cmd.payload.tokens != 0) & (self.cmd.payload.k != 0)),
                g.eq(0),
                base.eq(self.cmd.payload.base),
                issued.eq(0),
                rows_to_go.eq(self.cmd.payload.tokens - 1),
                row_is_last.eq(self.cmd.payload.tokens == 1),
                row_next_last.eq(self.cmd.payload.tokens == 2),
            ]
        ks = (job.k + V - 1) >> exact_log2(V)
        real = ~job.heads | (g < job.nheads)
        gcount = Mux(job.heads, self.groups, 1)
        m.d.comb += [
            rd.cmd.payload.base.eq(base),
            rd.cmd.payload.stride.eq(job.stride),
            rd.cmd.payload.rows.eq(job.tokens),
            rd.cmd.payload.cols.eq(job.k),
            rd.cmd.valid.eq(active & ~issued & real),
        ]
        with m.If(rd.cmd.valid & rd.cmd.ready):
            m.d.sync += issued.eq(1)
        # a group of zero words counts down; "one left" is a register (a 32-bit compare
        # of the counter sat in the handshake)
        zero_one = Signal()
        with m.If(active & ~issued & ~real):
            m.d.sync += [
                issued.eq(1),
                zeros_left.eq(job.tokens * ks),
                zeros_on.eq(1),  # tokens, ks >= 1 in an active job
                zero_one.eq(job.tokens * ks == 1),
            ]

        # Output: the reader's beats for a real group, zeros otherwise.
        last_of_group = Signal()
        with m.If(real):
            m.d.comb += [
                src.valid.eq(active & issued & rd.o.valid),
                src.payload.eq(rd.o.payload.data.as_value()),
                rd.o.ready.eq(active & issued & src.ready),
            ]
            # the group ends with the last beat of its last row; count rows
        with m.Else():
            m.d.comb += [src.valid.eq(active & issued & zeros_on), src.payload.eq(0)]
        fire = src.valid & src.ready
        with m.If(fire):
            with m.If(real):
                with m.If(rd.o.payload.last):
                    m.d.sync += [
                        rows_to_go.eq(rows_to_go - 1),
                        row_is_last.eq(row_next_last),
                        row_next_last.eq(rows_to_go == 2),
                    ]
                    with m.If(row_is_last):
                        m.d.comb += last_of_group.eq(1)
            with m.Else():
                m.d.sync += [zeros_left.eq(zeros_left - 1), zero_one.eq(zeros_left == 2)]
                with m.If(zero_one):
                    m.d.comb += last_of_group.eq(1)
                    m.d.sync += zeros_on.eq(0)
        with m.If(last_of_group):
            m.d.sync += [
                rows_to_go.eq(job.tokens - 1),
                row_is_last.eq(job.tokens == 1),
                row_next_last.eq(job.tokens == 2),
                issued.eq(0),
                g.eq(g + 1),
                base.eq(base + job.head_step),
            ]
            with m.If(g + 1 == gcount):
                m.d.sync += active.eq(0)
        m.d.comb += self.idle.eq(~active & ~out.busy)
        return m


def wbuild_cmd_layout() -> data.StructLayout:
    return data.StructLayout(
        {
            "base": unsigned(ADDR_BITS),
            "stride": unsigned(16),
            "n": unsigned(16),
            "k": unsigned(16),
            "heads": unsigned(1),
            "nheads": unsigned(8),
            "head_step": unsigned(16),
            "mult": unsigned(16),
            "shift": unsigned(6),
        }
    )


class WStreamBuilder(wiring.Component):
    """The matmul engine's ``w`` stream from SPM rows (MATMUL with W_SPM, identity plan).

    Per output step s and block (shared: one block of G*C columns; heads: one block of C
    columns per group g, from ``base + g*head_step``), per column: a parameter word (bias 0,
    ``mult``, ``shift``), then ``ceil(K/V)`` words of row n (shared ``n = s*G*C + g*C + c``,
    heads ``n = s*C + c``); rows n >= N and groups >= nheads send zero words (parameter word
    included). Steps continue
    until they cover N. A block's rows are one :class:`RowReader` command (issued ahead while
    the previous block is still streaming).

    Members
    -------
    cmd : ``In(stream.Signature(wbuild_cmd_layout()))``
    o : ``Out(stream.Signature(unsigned(w_bits)))``
    mem : ``Out(read_client_signature())``
    idle : ``Out(1)``
    """

    def __init__(self, *, groups: int, cols: int, vector: int, acc_bits: int = 32,
                 w_bits: int | None = None):  # fmt: skip
        try:
            check_int("groups", groups, 1, 64)
            check_int("cols", cols, 1, 64)
            _check_lanes(vector, "vector")
            check_int("acc_bits", acc_bits, 16, 48)
        except (TypeError, ValueError):
            silence_unused(self)
            raise
        self.groups, self.cols, self.vector, self.acc_bits = groups, cols, vector, acc_bits
        self.w_bits = w_bits or max(8 * vector, acc_bits + 16 + 6)
        self.reader = RowReader(lanes=vector)
        super().__init__(
            {
                "cmd": In(stream.Signature(wbuild_cmd_layout())),
                "o": Out(stream.Signature(unsigned(self.w_bits))),
                "mem": Out(read_client_signature()),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = rd = self.reader
        # words leave through a skid buffer: the engine's loader logic behind its ready is
        # not in the same cycle as this builder's counters
        m.submodules.out = out = SkidBuffer(self.o.payload.shape())
        wiring.connect(m, out.o, wiring.flipped(self.o))
        src = out.i
        wiring.connect(m, rd.mem, wiring.flipped(self.mem))
        G, C, V = self.groups, self.cols, self.vector
        (cm_sh, _), (cm_hd, _) = _mode_consts(G, C)
        job = Signal(wbuild_cmd_layout())
        cm = Signal(16)
        cm_stride = Signal(32)
        m_active = Signal()  # emitter busy
        m.d.comb += self.cmd.ready.eq(~m_active)
        cmdp = self.cmd.payload
        start = self.cmd.valid & ~m_active & (cmdp.n != 0) & (cmdp.k != 0)

        # Block b = (s, g): first row n0 = s*cm; rows min(cm, N - n0) if group is real.
        def block_rows(step_n, g):
            left = Signal(17)
            m.d.comb += left.eq(job.n - step_n)
            real = ~job.heads | (g < job.nheads)
            return Mux(real, Mux(left < cm, left, cm), 0)

        blocks_per_step = Mux(job.heads, G, 1)

        # -- reader command issue --
        r_active = Signal()
        r_g = Signal(8)
        r_step_n = Signal(17)
        r_step_row = Signal(ADDR_BITS)  # base + s*cm*stride
        r_base = Signal(ADDR_BITS)  # + g*head_step
        m.d.comb += [
            rd.cmd.payload.base.eq(r_base),
            rd.cmd.payload.stride.eq(job.stride),
            rd.cmd.payload.rows.eq(block_rows(r_step_n, r_g)),
            rd.cmd.payload.cols.eq(job.k),
            rd.cmd.valid.eq(r_active),
        ]
        with m.If(rd.cmd.valid & rd.cmd.ready):
            with m.If(r_g + 1 == blocks_per_step):
                m.d.sync += [
                    r_g.eq(0),
                    r_step_n.eq(r_step_n + cm),
                    r_step_row.eq(r_step_row + cm_stride),
                    r_base.eq(r_step_row + cm_stride),
                ]
                with m.If(r_step_n + cm >= job.n):
                    m.d.sync += r_active.eq(0)
            with m.Else():
                m.d.sync += [r_g.eq(r_g + 1), r_base.eq(r_base + job.head_step)]

        # -- emitter --
        e_g = Signal(8)
        e_step_n = Signal(17)
        c = Signal(16)
        k = Signal(16)  # 0: parameter word, 1..ks: weight words
        k_zero = Signal()  # k == 0, in a register
        rows = Signal(17)
        m.d.comb += rows.eq(block_rows(e_step_n, e_g))
        from_reader = ~k_zero & (c < rows)
        param = Signal(self.w_bits)
        m.d.comb += param.eq(Cat(Const(0, self.acc_bits), job.mult, job.shift))
        with m.If(k_zero):
            # idle columns get an all-zero parameter word, as the engine's packer gives them
            m.d.comb += [src.valid.eq(m_active), src.payload.eq(Mux(c < rows, param, 0))]
        with m.Elif(from_reader):
            m.d.comb += [
                src.valid.eq(m_active & rd.o.valid),
                src.payload.eq(rd.o.payload.data.as_value()),
                rd.o.ready.eq(m_active & src.ready),
            ]
        with m.Else():
            m.d.comb += [src.valid.eq(m_active), src.payload.eq(0)]
        fire = src.valid & src.ready
        # End-of-loop flags in registers, so the handshake only selects (the nested compares
        # were a 12-LUT path into m_active). k_last is exact (k moves every word); the others
        # follow c, e_g, e_step_n a cycle late, which is safe because each of those holds for
        # ks + 1 >= 2 words before it is tested again.
        k_last = Signal()  # k == ks
        ks_m1 = Signal(16)  # ks - 1, set with the job
        c_last = Signal()  # c + 1 == cm
        g_last = Signal()  # e_g + 1 == blocks_per_step
        n_last = Signal()  # e_step_n + cm >= N
        m.d.sync += [
            c_last.eq(c + 1 == cm),
            g_last.eq(e_g + 1 == blocks_per_step),
            n_last.eq(e_step_n + cm >= job.n),
        ]
        col_end = k_last
        blk_end = k_last & c_last
        step_end = blk_end & g_last
        with m.If(fire):
            m.d.sync += [
                k_last.eq(~k_last & (k == ks_m1)),
                k_zero.eq(k_last),
                k.eq(Mux(k_last, 0, k + 1)),
            ]
            with m.If(col_end):
                m.d.sync += c.eq(Mux(c_last, 0, c + 1))
            with m.If(blk_end):
                m.d.sync += e_g.eq(Mux(g_last, 0, e_g + 1))
            with m.If(step_end):
                m.d.sync += e_step_n.eq(e_step_n + cm)
            with m.If(step_end & n_last):
                m.d.sync += m_active.eq(0)

        with m.If(start):
            m.d.sync += [
                job.eq(cmdp),
                cm.eq(Mux(cmdp.heads, cm_hd, cm_sh)),
                cm_stride.eq(cmdp.stride * Mux(cmdp.heads, cm_hd, cm_sh)),
                m_active.eq(1),
                r_active.eq(1),
                r_g.eq(0),
                r_step_n.eq(0),
                r_step_row.eq(cmdp.base),
                r_base.eq(cmdp.base),
                e_g.eq(0),
                e_step_n.eq(0),
                c.eq(0),
                k.eq(0),
                k_last.eq(0),
                k_zero.eq(1),
                ks_m1.eq(((cmdp.k + V - 1) >> exact_log2(V)) - 1),
            ]
        m.d.comb += self.idle.eq(~m_active & ~r_active & rd.idle & ~out.busy)
        return m
