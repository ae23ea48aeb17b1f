"""GELU unit: a pointwise table lookup, ``lanes`` elements per cycle.

The table is :func:`vitaccel.quant.ref.gelu_lut` (the definition the golden model uses,
``y = table[x + 2**(in_bits-1)]``, see :func:`vitaccel.quant.ref.lut_lookup`); it is run-time
data written through a port, because one unit serves every layer (each with its own scales).
Every lane has its own copy of the table (one write port shared by all copies, one read
port each: 256 entries map to LUT RAM; one memory with a read port per lane made Yosys 0.70's
memory mapping crash at 16 lanes). One pipeline register: latency 1 cycle, one beat per
cycle.

The accelerator also puts one on the matmul engine's output words (``lanes = groups*cols``,
``bypass=True``): MATMUL with the GELU flag maps every output byte through the table (FC1's
GELU fused into the layer), every other MATMUL passes through the same register.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.rtl.common import CheckedComponent, check_int, count_bits, row_signature

__all__ = ["GELU"]


class GELU(CheckedComponent):
    """Pointwise int -> int table unit (GELU or any other activation).

    Parameters
    ----------
    lanes : int
        Elements per beat (and per cycle), 1..64.
    in_bits : int
        Signed input width, 2..12; the table has ``2**in_bits`` entries.
    out_bits : int
        Signed output width, 2..16.
    init : sequence of int, optional
        Power-up contents of the table (index ``x + 2**(in_bits-1)``); zeros if omitted.
    bypass : bool
        Add the ``bypass`` input: when high, beats pass through unchanged (same latency).
        Needs ``out_bits == in_bits``.

    Members
    -------
    i : ``In(stream.Signature(row_layout(signed(in_bits), lanes)))``
        Input beats; ``count`` and ``last`` pass through unchanged (rows are not needed by a
        pointwise unit, the framing is kept so it composes with the row units).
    o : ``Out(stream.Signature(row_layout(signed(out_bits), lanes)))``
    table_addr : ``In(unsigned(in_bits))``
        Table index to write, ``x + 2**(in_bits-1)`` (i.e. the two's complement of x with its
        sign bit inverted).
    table_data : ``In(signed(out_bits))``
    table_we : ``In(1)``
        Write ``table_data`` at ``table_addr`` (all lane copies) on this cycle. Load the table
        while the unit is not busy.
    busy : ``Out(1)``
        A beat is in the pipeline register (same meaning as on the row units).
    bypass : ``In(1)``, with ``bypass=True`` only
        Pass beats through instead of looking them up; hold it while beats flow.
    """

    def __init__(
        self, *, lanes: int = 1, in_bits: int = 8, out_bits: int = 8, init=None, bypass=False
    ):
        self.lanes, self.in_bits, self.out_bits = lanes, in_bits, out_bits
        self.init = None if init is None else [int(v) for v in init]
        self.has_bypass = bool(bypass)
        super().__init__(
            {
                "i": In(row_signature(signed(in_bits), lanes)),
                "o": Out(row_signature(signed(out_bits), lanes)),
                "table_addr": In(unsigned(in_bits)),
                "table_data": In(signed(out_bits)),
                "table_we": In(1),
                "busy": Out(1),
                **({"bypass": In(1)} if bypass else {}),
            }
        )

    @classmethod
    def check(cls, *, lanes, in_bits, out_bits, init, bypass):
        check_int("lanes", lanes, 1, 512)
        check_int("in_bits", in_bits, 2, 12)
        check_int("out_bits", out_bits, 2, 16)
        size = 1 << in_bits
        if init is not None:
            init = [int(v) for v in init]
            if len(init) != size:
                raise ValueError(f"init must have {size} entries, not {len(init)}")
            lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
            bad = [v for v in init if not lo <= v <= hi]
            if bad:
                raise ValueError(f"init value {bad[0]!r} does not fit signed({out_bits})")
        if bypass and out_bits != in_bits:
            raise ValueError(f"bypass needs out_bits == in_bits ({in_bits}), not {out_bits}")

    def elaborate(self, platform):
        m = Module()
        # Whole-pipeline stall: the one stage advances when its output slot is free.
        advance = ~self.o.valid | self.o.ready
        valid = Signal()
        count = Signal(count_bits(self.lanes))
        last = Signal()
        m.d.comb += self.i.ready.eq(advance)
        with m.If(advance):
            m.d.sync += [
                valid.eq(self.i.valid),
                count.eq(self.i.payload.count),
                last.eq(self.i.payload.last),
            ]
        if self.has_bypass:
            passed = Signal(len(self.i.payload.data.as_value()))
            bypassed = Signal()
            with m.If(advance):
                m.d.sync += [passed.eq(self.i.payload.data.as_value()), bypassed.eq(self.bypass)]
        sign = 1 << (self.in_bits - 1)
        for lane in range(self.lanes):
            table = Memory(
                shape=signed(self.out_bits), depth=1 << self.in_bits, init=self.init or []
            )
            m.submodules[f"table{lane}"] = table
            wp = table.write_port()
            rp = table.read_port()
            m.d.comb += [
                wp.addr.eq(self.table_addr),
                wp.data.eq(self.table_data),
                wp.en.eq(self.table_we),
                rp.addr.eq(self.i.payload.data[lane].as_unsigned() ^ sign),
                rp.en.eq(advance),
            ]
            if self.has_bypass:
                w = self.in_bits
                m.d.comb += self.o.payload.data[lane].eq(
                    Mux(bypassed, passed[w * lane : w * lane + w], rp.data)
                )
            else:
                m.d.comb += self.o.payload.data[lane].eq(rp.data)
        m.d.comb += [
            self.o.valid.eq(valid),
            self.o.payload.count.eq(count),
            self.o.payload.last.eq(last),
            self.busy.eq(valid),
        ]
        return m
