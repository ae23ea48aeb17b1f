"""cocotb testbench for test_sim_runner.py: a registered +1 stage behind a stream."""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from vitaccel.sim.runner import load_args, save_result
from vitaccel.sim.streams import StreamSink, StreamSource, random_pauses


@cocotb.test()
async def passthrough(dut):
    args, arrays = load_args()
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    src = StreamSource(dut, "i", dut.clk, random_pauses(args["stall"], 1))
    sink = StreamSink(dut, "o", dut.clk, random_pauses(args["stall"], 2))
    words = [int(v) & 0xFF for v in arrays["x"]]
    cocotb.start_soon(src.send(words))
    got = await sink.recv(len(words))
    save_result({"got": got})
