"""The simulation back end of the host driver: the driver's steps played on Verilator.

:class:`SimBackend` implements :class:`vitaccel.compile.driver.Backend`. ``run(steps)``
starts one cocotb session on the accelerator top (cached Verilator build), in which
cocotbext-axi's ``AxiRam`` is the DDR (the memory image loaded at ``base``) and its
``AxiLiteMaster`` is the host that plays the steps: the same list of register and memory
actions the PYNQ back end plays on a board. Random pauses on every AXI channel and a reset
between two inferences are options.
"""

from __future__ import annotations

import numpy as np

from vitaccel.compile.driver import Step
from vitaccel.sim.runner import RtlBackend, testbench

__all__ = ["SimBackend"]

TB_MODULE = "vitaccel.sim.host"


class SimBackend(RtlBackend):
    """Play driver steps on the RTL of ``design`` in Verilator.

    Parameters
    ----------
    design : Design
    pause : float
        Probability of a pause per cycle on every AXI channel of the DDR model.
    timeout_cycles : int
        Per ``wait_done`` step (default ``TIMEOUT_CYCLES``, 20 million).
    """

    def run(self, steps: list[Step]) -> list[int | bytes]:
        from vitaccel.sim.runner import SimError, run_cocotb
        from vitaccel.sim.tb_top import TB_TOPLEVEL, sim_verilog

        enc = []
        for s in steps:
            b = s.b.hex() if isinstance(s.b, bytes | bytearray) else int(s.b)
            enc.append([s.kind, int(s.a), b])
        size = 1 << max(20, (self.base + len(self.image) - 1).bit_length())
        result = run_cocotb(
            verilog=sim_verilog(self.design),
            toplevel=TB_TOPLEVEL,
            test_module=TB_MODULE,
            args={
                "steps": enc,
                "base": self.base,
                "mem_size": size,
                "pause": self.pause,
                "seed": self.seed,
                "timeout_cycles": self.timeout_cycles,
            },
            arrays={"image": np.frombuffer(self.image, dtype=np.uint8)},
        )
        self.last = result
        if result.get("errors"):
            raise SimError("; ".join(result["errors"]))
        if result.get("timeout"):
            raise SimError(
                f"the accelerator did not finish within {self.timeout_cycles} cycles (PC {result.get('pc')})"
            )
        return [bytes.fromhex(r) if isinstance(r, str) else r for r in result["reads"]]


# ---- the cocotb side ----------------------------------------------------------------------


@testbench
async def play_steps(dut):
    from cocotb.triggers import RisingEdge

    from vitaccel.isa import Reg
    from vitaccel.sim.runner import save_result
    from vitaccel.sim.tb_top import attach_for_run, reset, wait_irq

    args, arrays, ram, host = await attach_for_run(dut)
    base = args["base"]

    await reset(dut)
    ram.write(base, arrays["image"].tobytes())
    reads, waits, timeout = [], [], False
    for kind, a, b in args["steps"]:
        if kind == "write_mem":
            ram.write(base + a, bytes.fromhex(b))
        elif kind == "write_reg":
            await host.write_dword(a, b)
        elif kind == "wait_done":
            cycles, timeout = await wait_irq(dut, args["timeout_cycles"])
            waits.append(cycles)
            if timeout:
                break
            await RisingEdge(dut.clk)
        elif kind == "read_reg":
            reads.append(await host.read_dword(a))
        elif kind == "read_mem":
            reads.append(ram.read(base + a, b).hex())
        elif kind == "reset":
            await reset(dut)
    pc = await host.read_dword(Reg.PC) if not timeout else -1
    save_result({"reads": reads, "timeout": timeout, "pc": pc, "wait_cycles": waits})
