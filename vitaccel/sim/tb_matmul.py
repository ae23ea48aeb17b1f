"""cocotb testbench of the GVSA matmul engine (vitaccel.rtl.matmul.MatmulEngine).

Runs a list of jobs one after another. Per job: the command, then the X and W streams and
the output sink all at once, each with its own random pauses (stalls), the array running
freely in between. Data comes in and goes out in bulk through the runner's files; the
caller (vitaccel.flow.unit_gvsa.simulate_matmul) packs the jobs and checks the outputs.

Arguments (``load_args``): ``stall`` (pause probability on every stream), ``seed``,
``jobs``: list of {``cmd``: payload int, ``out_words``: int, ``o_bytes``: int}; arrays
``x{j}`` (words, bytes) and ``w{j}`` (words, bytes), little-endian words.
``reset_after`` (optional job index): that job is started, half of its outputs are taken
with its inputs still in flight, then reset is asserted; its result is ``null`` and the
later jobs run from the clean state (nothing from before the reset may come out).
Result: per job ``cycles`` (command handshake to last output word) and ``o`` (hex bytes).
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cocotb.utils import get_sim_time

from vitaccel.sim.runner import load_args, save_result
from vitaccel.sim.streams import StreamSink, StreamSource, no_pauses, random_pauses

PERIOD_NS = 10


def _words(byte_rows) -> list[int]:
    return [int.from_bytes(row.tobytes(), "little") for row in byte_rows]


class MatmulTB:
    """Clock, reset and the four streams of one engine."""

    def __init__(self, dut, stall: float, seed: int):
        self.dut = dut
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())

        def pauses(k):
            return random_pauses(stall, seed * 16 + k) if stall > 0 else no_pauses()

        self.cmd = StreamSource(dut, "cmd", dut.clk)
        self.x = StreamSource(dut, "x", dut.clk, pauses(1))
        self.w = StreamSource(dut, "w", dut.clk, pauses(2))
        self.o = StreamSink(dut, "o", dut.clk, pauses(3))

    async def reset(self):
        for source in (self.cmd, self.x, self.w):
            source.valid.value = 0
        self.o.ready.value = 0
        self.dut.rst.value = 1
        for _ in range(3):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    async def run_job(self, cmd: int, x_words, w_words, out_words: int):
        await self.cmd.send([cmd])
        t0 = get_sim_time(unit="ns")
        cocotb.start_soon(self.x.send(x_words))
        cocotb.start_soon(self.w.send(w_words))
        got = await self.o.recv(out_words)
        t1 = get_sim_time(unit="ns")
        return got, int(round((t1 - t0) / PERIOD_NS))

    async def cut_job(self, cmd: int, x_words, w_words, out_words: int):
        """Start a job, take half its outputs, then reset with its inputs still flowing."""
        await self.cmd.send([cmd])
        senders = [
            cocotb.start_soon(self.x.send(x_words)),
            cocotb.start_soon(self.w.send(w_words)),
        ]
        await self.o.recv(max(1, out_words // 2))
        for task in senders:
            if not task.done():
                task.cancel()
        await self.reset()


@cocotb.test()
async def matmul_jobs(dut):
    args, arrays = load_args()
    tb = MatmulTB(dut, float(args.get("stall", 0.0)), int(args.get("seed", 0)))
    await tb.reset()
    results = []
    reset_after = args.get("reset_after")
    for j, job in enumerate(args["jobs"]):
        if j == reset_after:
            await tb.cut_job(
                job["cmd"], _words(arrays[f"x{j}"]), _words(arrays[f"w{j}"]), job["out_words"]
            )
            results.append(None)
            continue
        got, cycles = await tb.run_job(
            job["cmd"], _words(arrays[f"x{j}"]), _words(arrays[f"w{j}"]), job["out_words"]
        )
        nbytes = job["o_bytes"]
        data = b"".join(int(w).to_bytes(nbytes, "little") for w in got)
        results.append({"cycles": cycles, "o": data.hex()})
        # let the engine finish the job (busy drops) before the next command
        while int(dut.busy.value):
            await RisingEdge(dut.clk)
    save_result({"jobs": results})
