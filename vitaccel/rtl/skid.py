"""A skid buffer: the register slice that cuts a stream's valid/payload and ready paths.

A stream handshake chained through several blocks is one combinational path: the last
consumer's ``ready`` decides the producer's pointer update, through every block between.
:class:`SkidBuffer` ends both directions at registers: ``o.valid``/``o.payload`` come from
a register, and ``i.ready`` is a register too (the "skid" register takes the one beat that
arrives in the cycle the consumer stops). One beat per cycle, one cycle of latency.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer", "skid"]


class SkidBuffer(wiring.Component):
    """Two-entry stream buffer with registered outputs in both directions.

    Parameters
    ----------
    shape : shape-castable
        The payload (a layout or a width).

    Members
    -------
    i : ``In(stream.Signature(shape))``
        ``i.ready`` is a register: low only while the skid register holds a beat.
    o : ``Out(stream.Signature(shape))``
        ``o.valid`` and ``o.payload`` are registers.
    busy : ``Out(1)``
        A beat is held.
    valid_next : ``Out(1)``
        (``valid_next=True`` only) ``o.valid``'s next value: a consumer registers flags of
        it, e.g. its request as one register instead of ``o.valid`` ANDed behind the skid.
    """

    def __init__(self, shape, *, valid_next: bool = False):
        if not isinstance(valid_next, bool):
            raise TypeError(f"valid_next must be a bool, not {valid_next!r}")
        self._shape = shape
        self._valid_next = valid_next
        super().__init__(
            {
                "i": In(stream.Signature(shape)),
                "o": Out(stream.Signature(shape)),
                "busy": Out(1),
                **({"valid_next": Out(1)} if valid_next else {}),
            }
        )

    def elaborate(self, platform):
        m = Module()
        out_valid = Signal()
        out_data = Signal(self._shape)
        skid_valid = Signal()
        skid_data = Signal(self._shape)
        take = self.i.valid & ~skid_valid  # i.ready == ~skid_valid
        give = out_valid & self.o.ready
        with m.If(give | ~out_valid):
            # the output register is free (or being freed): the skid beat first, then input
            with m.If(skid_valid):
                m.d.sync += [out_data.eq(skid_data), out_valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [out_data.eq(self.i.payload), out_valid.eq(self.i.valid)]
        with m.Elif(take):
            # the consumer holds the output: park the beat that is already on its way
            m.d.sync += [skid_data.eq(self.i.payload), skid_valid.eq(1)]
        m.d.comb += [
            self.i.ready.eq(~skid_valid),
            self.o.valid.eq(out_valid),
            self.o.payload.eq(out_data),
            self.busy.eq(out_valid | skid_valid),
        ]
        if self._valid_next:
            # held (not taken), or a beat in the skid register or on the input
            m.d.comb += self.valid_next.eq((out_valid & ~self.o.ready) | skid_valid | self.i.valid)
        return m


def skid(m: Module, name: str, src, dst) -> SkidBuffer:
    """Join stream ``src`` (an Out stream interface) to ``dst`` (an In one) through a
    :class:`SkidBuffer` added to ``m`` as submodule ``name``; returns it (for ``busy``)."""
    buf = SkidBuffer(src.signature.members["payload"].shape)
    m.submodules[name] = buf
    wiring.connect(m, src, buf.i)
    wiring.connect(m, buf.o, dst)
    return buf
