"""Packing a chained unit's output beats into X beats (docs/isa.md, "Chains").

A SOFTMAX / LAYERNORM of ``lanes`` lanes narrower than the datapath emits ``lanes`` bytes of
a row a beat; the X builder's chain input takes a datapath's bytes of the row a beat.
:class:`ChainPacker` gathers ``width // lanes`` unit beats (fewer at a row's end: its last
beat flushes) into one X beat: the row's next ``width`` bytes in order, its ``count`` the
row's bytes in it, ``last`` at the row's end. Everything it drives is a register, so it adds
no path between the unit's output and the X builder's skid buffer.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from vitaccel.rtl.common import count_bits, row_signature

__all__ = ["ChainPacker"]


class ChainPacker(wiring.Component):
    """``width // lanes`` row beats of ``lanes`` bytes into one beat of ``width`` bytes.

    Parameters
    ----------
    lanes : int
        Bytes of an input beat (the unit's lanes), more than 0.
    width : int
        Bytes of an output beat (the X beat), a multiple of ``lanes`` of at least two of them.

    Members
    -------
    i : ``In(row_signature(unsigned(8), lanes))``
        The unit's beats (``count`` valid bytes, ``last`` at the row's end). ``i.ready`` is
        ``~o.valid | o.ready``: one beat a cycle, while the consumer's ``ready`` is a register.
    o : ``Out(row_signature(unsigned(8), width))``
        Packed beats, registered: the row's bytes in order, ``count`` of them (the filled
        slots' bytes, the last one's ``count``); the slots a row's last beat leaves unfilled
        are zero (bytes past ``count`` within the last filled slot are the unit's).
    clear : ``In(1)``
        Drop a part-filled or held beat (no chain runs: a run ended early).
    """

    def __init__(self, *, lanes: int, width: int):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        if not isinstance(width, int) or isinstance(width, bool) or width % lanes \
                or width < 2 * lanes:  # fmt: skip
            raise ValueError(f"width must be a multiple of lanes ({lanes}) of at least two of "
                             f"them, not {width!r}")  # fmt: skip
        self.lanes = lanes
        self.width = width
        super().__init__(
            {
                "i": In(row_signature(unsigned(8), lanes)),
                "o": Out(row_signature(unsigned(8), width)),
                "clear": In(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        L, k = self.lanes, self.width // self.lanes
        i, o = self.i, self.o
        slot = Signal(range(k))  # the slot the next input beat fills
        full = Signal()  # o.valid: a packed beat is held
        count = Signal(count_bits(self.width))
        last = Signal()
        m.d.comb += [o.valid.eq(full), o.payload.count.eq(count), o.payload.last.eq(last)]
        take = i.valid & i.ready
        fire = full & o.ready
        m.d.comb += i.ready.eq(~full | o.ready)
        ends = i.payload.last | (slot == k - 1)  # this beat completes a packed beat
        for s in range(k):
            data = [o.payload.data[s * L + j] for j in range(L)]
            with m.If(take & (slot == s)):
                m.d.sync += [d.eq(i.payload.data[j]) for j, d in enumerate(data)]
            with m.Elif(fire):  # a packed beat left: its slots zero for the next one
                m.d.sync += [d.eq(0) for d in data]
        with m.If(take):
            # count: the filled slots before this one (whole) and this one's count
            m.d.sync += [count.eq(i.payload.count + slot * L), last.eq(i.payload.last)]
            m.d.sync += [slot.eq(Mux(ends, 0, slot + 1)), full.eq(ends)]
        with m.Elif(fire):
            m.d.sync += full.eq(0)
        with m.If(self.clear):
            m.d.sync += [slot.eq(0), full.eq(0)]
        return m
