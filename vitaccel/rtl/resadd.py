"""Residual-add unit: ``y = clamp((a*MA_c + b*MB_c + 2**(S-1)) >> S, -128, 127)``.

The definition is :func:`vitaccel.quant.ref.residual_add` (per-channel uint16 multipliers
``MA_c``/``MB_c``, one shift S). The unit works on whole SPM words (16 channels a beat) and
takes its two operands from **one** stream: row r of A, then row r of B (a
:class:`vitaccel.rtl.spm.RowReader` dual command), so it needs one SPM read port. A rows go
into a row buffer; each B beat reads the matching A beat and the 16 channels' multipliers
back and flows through the pipeline::

    i (A row) ──► row buffer[j]
    i (B row) ──► read row buffer[j], params[j] ─► a*MA, b*MB (Booth shift-add, LUTs,
                  2 stages) ─► sum ─► + 2**(S-1) ─► >> S ─► clamp ─► o   (8 cycles)

Multipliers are shift-add trees in fabric (:func:`vitaccel.rtl.common.shift_add_mul`): the
DSP48E2 slices stay with the matmul array. The whole pipeline stalls together when ``o`` is
not ready; B beats flow at one per cycle, A beats at one per cycle into the buffer, so a row
pair of W words takes 2W cycles (the SPM read port gives one word per cycle anyway).

Per-channel multipliers are loaded through ``param_*`` (one 16-byte SPM word of the
parameter block, 4 channels, per write) while the unit is idle.

A second front end, ``pair``, serves the residual add fused into a MATMUL's output
(:class:`vitaccel.rtl.spm.ResidualRuns`): each beat brings its A word, its B word and the
index of its 16 channels, so no row buffer is needed and one beat flows per cycle. ``use_pair``
selects the front end; the pipeline behind it is the same.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from vitaccel.rtl.common import (
    CheckedComponent,
    check_int,
    count_bits,
    row_signature,
    rshift_round_staged,
    shift_add_mul,
)

__all__ = ["ResAdd", "LANES", "pair_layout"]

LANES = 16  # one SPM word of int8 channels per beat
PARAM_BYTES = 4  # per channel: mult_a (uint16), mult_b (uint16), little-endian


def pair_layout(max_channels: int) -> data.StructLayout:
    """A ``pair`` beat: A and B words of 16 channels, the channels' index (channel // 16) and
    the framing that travels to ``o`` unchanged."""
    return data.StructLayout(
        {
            "a": unsigned(8 * LANES),
            "b": unsigned(8 * LANES),
            "index": unsigned(max(1, ceil_log2(max_channels // LANES))),
            "count": unsigned(count_bits(LANES)),
            "last": unsigned(1),
        }
    )


class ResAdd(CheckedComponent):
    """Residual add of two int8 row streams (A row, then B row, alternating).

    Parameters
    ----------
    max_channels : int
        Longest row (16..8192, a multiple of 16): sizes the row buffer and the parameter
        memory (``max_channels / 16`` words each).

    Members
    -------
    i : ``In(row_signature(unsigned(8), 16))``
        Row r of A, then row r of B, and so on; ``count``/``last`` frame each row (both rows
        of a pair have the same length).
    o : ``Out(row_signature(signed(8), 16))``
        One output row per pair, the framing of the B row.
    shift : ``In(unsigned(6))``
        S; hold it constant while rows flow (values above 31 act as 31, which gives the
        same result: the sum is below 2**25).
    param_addr : ``In(range(max_channels // 4))``
        Index of the parameter word (channels ``4*param_addr .. + 3``).
    param_data : ``In(128)``
        The 16 bytes of that word of the SPM parameter block.
    param_we : ``In(1)``
    pair : ``In(stream.Signature(pair_layout(max_channels)))``
        Fused mode: one (A, B) beat of 16 channels per transfer.
    use_pair : ``In(1)``
        Take beats from ``pair`` instead of ``i``; hold it while the unit runs.
    busy : ``Out(1)``
        A row is partly received or results are still in the pipeline.
    """

    @classmethod
    def check(cls, *, max_channels):
        check_int("max_channels", max_channels, 16, 8192)
        if max_channels % LANES:
            raise ValueError(f"max_channels must be a multiple of 16, not {max_channels!r}")

    def __init__(self, *, max_channels: int = 1024):
        self.max_channels = max_channels
        self.beats = max_channels // LANES
        super().__init__(
            {
                "i": In(row_signature(unsigned(8), LANES)),
                "o": Out(row_signature(signed(8), LANES)),
                "shift": In(unsigned(6)),
                "param_addr": In(range(max_channels // 4)),
                "param_data": In(128),
                "param_we": In(1),
                "pair": In(stream.Signature(pair_layout(max_channels))),
                "use_pair": In(1),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        depth = self.beats
        abits = max(1, ceil_log2(depth))

        # -- memories: the A row and four banks of parameter words (word p in bank p % 4) --
        m.submodules.rowbuf = rowbuf = Memory(shape=unsigned(128), depth=depth, init=[])
        row_w = rowbuf.write_port()
        row_r = rowbuf.read_port()
        banks = []
        for q in range(4):
            bank = Memory(shape=unsigned(128), depth=depth, init=[])
            m.submodules[f"params{q}"] = bank
            wp = bank.write_port()
            m.d.comb += [
                wp.addr.eq(self.param_addr[2:]),
                wp.data.eq(self.param_data),
                wp.en.eq(self.param_we & (self.param_addr[:2] == q)),
            ]
            banks.append(bank.read_port())

        # -- input: A rows to the buffer, B beats into the pipeline --
        advance = Signal()  # the whole pipeline moves
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        on_b = Signal()  # the current row is a B row
        beat = Signal(abits + 1)
        a_take = self.i.valid & ~on_b
        b_take = self.i.valid & on_b & advance
        pair = self.pair.payload
        use_pair = self.use_pair
        p_take = self.pair.valid & advance & use_pair
        m.d.comb += [
            self.i.ready.eq((~on_b | advance) & ~use_pair),
            self.pair.ready.eq(advance & use_pair),
        ]
        a_take = a_take & ~use_pair
        b_take = b_take & ~use_pair
        with m.If((a_take | b_take) & self.i.payload.last):
            m.d.sync += [beat.eq(0), on_b.eq(~on_b)]
        with m.Elif(a_take | b_take):
            m.d.sync += beat.eq(beat + 1)
        m.d.comb += [
            row_w.addr.eq(beat),
            row_w.data.eq(self.i.payload.data.as_value()),
            row_w.en.eq(a_take),
            row_r.addr.eq(beat),
            row_r.en.eq(advance),
        ]
        param_index = Mux(use_pair, pair.index, beat)
        for rp in banks:
            m.d.comb += [rp.addr.eq(param_index), rp.en.eq(advance)]

        # stage 1: memory outputs valid, B (and in pair mode A) registered
        v1 = Signal()
        b1 = Signal(128)
        a1 = Signal(128)  # pair mode's A (the row buffer's read data otherwise)
        pair1 = Signal()
        count1 = Signal(count_bits(LANES))
        last1 = Signal()
        with m.If(advance):
            m.d.sync += [
                v1.eq(b_take | p_take),
                b1.eq(Mux(use_pair, pair.b, self.i.payload.data.as_value())),
                a1.eq(pair.a),
                pair1.eq(use_pair),
                count1.eq(Mux(use_pair, pair.count, self.i.payload.count)),
                last1.eq(Mux(use_pair, pair.last, self.i.payload.last)),
            ]
        a_word = Mux(pair1, a1, row_r.data)
        params = Cat(*[rp.data for rp in banks])  # 16 channels x (mult_a, mult_b)

        # stage 2..: products (Booth shift-add trees), then the sum, the rounding shift over
        # two stages (add half, shift) and the clamp, each in its own cycle
        # |a*MA + b*MB| < 2**25, so every shift >= 27 gives 0, as 31 does: a 5-bit shifter
        # is exact for any shift.
        shift = Signal(5)
        m.d.comb += shift.eq(Mux(self.shift > 31, 31, self.shift))
        out = Signal(128)
        latency = 0
        for lane in range(LANES):
            a = a_word[8 * lane : 8 * lane + 8].as_signed()
            b = b1[8 * lane : 8 * lane + 8].as_signed()
            mult_a = params[32 * lane : 32 * lane + 16]
            mult_b = params[32 * lane + 16 : 32 * lane + 32]
            pa, lat = shift_add_mul(m, mult_a, a, en=advance, name=f"pa{lane}")
            pb, _ = shift_add_mul(m, mult_b, b, en=advance, name=f"pb{lane}")
            total = Signal(signed(len(pa) + 1), name=f"sum{lane}")
            with m.If(advance):
                m.d.sync += total.eq(pa + pb)
            rounded, rlat = rshift_round_staged(m, total, shift, en=advance, name=f"rnd{lane}")
            clamped = Mux(rounded < -128, -128, Mux(rounded > 127, 127, rounded))
            with m.If(advance):
                m.d.sync += out[8 * lane : 8 * lane + 8].eq(clamped[:8])
            latency = lat + 1 + rlat  # products, sum, rounding (+ the output register)
        # framing travels beside the data: one register per pipeline stage
        stages = [Cat(v1, count1, last1)]
        for k in range(latency + 1):
            reg = Signal(len(stages[0]), name=f"frame{k}")
            with m.If(advance):
                m.d.sync += reg.eq(stages[-1])
            stages.append(reg)
        framed = stages[-1]
        m.d.comb += [
            self.o.valid.eq(framed[0]),
            self.o.payload.data.as_value().eq(out),
            self.o.payload.count.eq(framed[1 : 1 + len(count1)]),
            self.o.payload.last.eq(framed[-1]),
        ]
        m.d.comb += self.busy.eq((beat != 0) | on_b | Cat(*[st[0] for st in stages]).any())
        return m
