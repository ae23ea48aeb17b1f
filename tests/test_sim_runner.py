"""The cocotb/Verilator plumbing: build cache, argument and result files, stream helpers."""

import numpy as np
from amaranth import Module, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.rtl.verilog import to_verilog
from vitaccel.sim.runner import run_cocotb


class PlusOne(wiring.Component):
    i: In(stream.Signature(unsigned(8)))
    o: Out(stream.Signature(unsigned(8)))

    def elaborate(self, platform):
        m = Module()
        with m.If(self.o.ready | ~self.o.valid):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload + 1)]
        m.d.comb += self.i.ready.eq(self.o.ready | ~self.o.valid)
        return m


def test_cocotb_stream_roundtrip_with_stalls():
    x = np.arange(300) % 256
    result = run_cocotb(
        verilog=to_verilog(PlusOne(), "plus_one"),
        toplevel="plus_one",
        test_module="tb_selftest",
        args={"stall": 0.3},
        arrays={"x": x},
    )
    assert not result.get("errors"), result.get("errors")
    np.testing.assert_array_equal(result["got"], (x + 1) % 256)


def test_verilog_is_deterministic():
    assert to_verilog(PlusOne(), "plus_one") == to_verilog(PlusOne(), "plus_one")
    assert "/work" not in to_verilog(PlusOne(), "plus_one")
