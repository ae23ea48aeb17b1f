"""cocotb testbench of the whole accelerator (Verilator), and its Python-side runner.

The testbench plays a host and a DDR: cocotbext-axi's ``AxiRam`` answers the ``m_axi``
master (with random pauses on all five channels), ``AxiLiteMaster`` writes and reads the
registers on ``s_axil``. It is generic: a test hands it a memory image and register writes,
it starts the accelerator, waits for DONE and hands back memory regions, the cycle counter
and STATUS.

Arguments (``run_cocotb(args=..., arrays=...)``, see :func:`run_top`)::

    arrays["image"]   uint8 bytes copied to DDR at args["base"]
    args["regs"]      [[offset, value], ...] register writes before START (PROG_ADDR, ...)
    args["ctrl"]      value written to CTRL to start (default START | IRQ_ENABLE)
    args["outputs"]   [[address, size], ...] DDR regions to read back after DONE
    args["pause"]     probability of a pause per cycle on every AXI channel (0: none)
    args["seed"], args["timeout_cycles"], args["mem_size"]

Result (``save_result``)::

    outputs  [hex string per region]       cycles  CYCLES register (64 bit)
    status   STATUS register               pc      PC register after the run
    sim_cycles  clock cycles from START to DONE seen by the testbench
    timeout     True if DONE never came

The accelerator top has no AXI ID ports (one ID, in-order); cocotbext-axi wants them, so the
simulated toplevel is a thin Verilog wrapper (:func:`sim_verilog`) that ties ``awid``/``arid``
to 0 around the unchanged top. A design with several weight ports has read-only masters
``m_axi_w1``.. beside ``m_axi``; each gets an ``AxiRamRead`` on the same memory (the DDR the
PS's HP ports share on the board).
"""

from __future__ import annotations

import functools

from vitaccel.sim.runner import testbench

__all__ = ["sim_verilog", "run_top", "play", "attach_axi", "TB_TOPLEVEL", "default_regs"]

TB_TOPLEVEL = "vitaccel_tb"
CORE_NAME = "vitaccel_top"


def _wrapper(signature, core_name: str, name: str) -> str:
    from amaranth.hdl import Shape
    from amaranth.lib.wiring import Out

    ports = ["input wire clk", "input wire rst"]
    conns = [".clk(clk)", ".rst(rst)"]
    for pname, member in signature.members.items():
        width = Shape.cast(member.shape).width
        rng = f"[{width - 1}:0] " if width > 1 else ""
        direction = "output wire" if member.flow == Out else "input wire"
        ports.append(f"{direction} {rng}{pname}")
        conns.append(f".{pname}({pname})")
    ports += [
        "output wire m_axi_awid",
        "output wire m_axi_arid",
        "input wire m_axi_bid",
        "input wire m_axi_rid",
    ]
    ties = ["m_axi_awid", "m_axi_arid"]
    for bus in _weight_buses(signature):
        ports += [f"output wire {bus}_arid", f"input wire {bus}_rid"]
        ties.append(f"{bus}_arid")
    body = ",\n    ".join(ports)
    inst = ",\n    ".join(conns)
    assigns = "".join(f"  assign {t} = 1'b0;\n" for t in ties)
    return (
        f"\nmodule {name} (\n    {body}\n);\n{assigns}"
        f"  {core_name} core (\n    {inst}\n  );\nendmodule\n"
    )


def _weight_buses(signature) -> list[str]:
    """The extra weight ports' bus prefixes of a top's signature (``m_axi_w1``, ...)."""
    names = {n.rsplit("_", 1)[0] for n in signature.members if n.startswith("m_axi_w")}
    return sorted(n for n in names if n[len("m_axi_w") :].isdigit())


@functools.lru_cache(maxsize=4)
def _sim_verilog_cached(design_json: str, kwargs_items: tuple) -> str:
    from vitaccel.design import Design
    from vitaccel.rtl.top import top_signature, top_verilog

    design = Design.model_validate_json(design_json)
    kwargs = dict(kwargs_items)
    text = top_verilog(design, CORE_NAME, **kwargs)
    return text + _wrapper(top_signature(design, **kwargs), CORE_NAME, TB_TOPLEVEL)


def sim_verilog(design, **kwargs) -> str:
    """Verilog for simulation: :class:`~vitaccel.rtl.top.AcceleratorTop` (as generated for
    Vivado) plus the ID-port wrapper ``vitaccel_tb``. Cached per design."""
    return _sim_verilog_cached(design.model_dump_json(), tuple(sorted(kwargs.items())))


def default_regs(prog_addr: int, data_base: int) -> list[list[int]]:
    from vitaccel.isa import Reg

    return [
        [int(Reg.PROG_ADDR_LO), prog_addr & 0xFFFF_FFFF],
        [int(Reg.PROG_ADDR_HI), prog_addr >> 32],
        [int(Reg.DATA_BASE_LO), data_base & 0xFFFF_FFFF],
        [int(Reg.DATA_BASE_HI), data_base >> 32],
    ]


def run_top(
    design,
    image: bytes,
    *,
    base: int,
    regs: list,
    outputs: list,
    pause: float = 0.0,
    seed: int = 0,
    timeout_cycles: int = 2_000_000,
    mem_size: int | None = None,
    ctrl: int | None = None,
    top_kwargs: dict | None = None,
    simulator: str = "verilator",
) -> dict:
    """Run a memory image on the accelerator in Verilator (or ``simulator``, see
    :func:`vitaccel.sim.runner.run_cocotb`); returns the testbench's result with
    ``outputs`` decoded to ``bytes``."""
    import numpy as np

    from vitaccel.sim.runner import run_cocotb

    verilog = sim_verilog(design, **(top_kwargs or {}))
    need = base + len(image)
    for addr, size in outputs:
        need = max(need, addr + size)
    size = mem_size or 1 << max(16, (need - 1).bit_length())
    args = {
        "base": base,
        "regs": [[int(a), int(v)] for a, v in regs],
        "outputs": [[int(a), int(s)] for a, s in outputs],
        "pause": pause,
        "seed": seed,
        "timeout_cycles": timeout_cycles,
        "mem_size": size,
    }
    if ctrl is not None:
        args["ctrl"] = ctrl
    result = run_cocotb(
        verilog=verilog,
        toplevel=TB_TOPLEVEL,
        test_module="vitaccel.sim.tb_top",
        args=args,
        arrays={"image": np.frombuffer(bytes(image), dtype=np.uint8)},
        simulator=simulator,
    )
    result["outputs"] = [bytes.fromhex(h) for h in result.get("outputs", [])]
    return result


# ---- the cocotb side ----------------------------------------------------------------------


async def attach_axi(dut, *, mem_size: int, pause: float = 0.0, seed: int = 0):
    """Clock, DDR (cocotbext-axi AxiRam on ``m_axi``) and host (AxiLiteMaster on
    ``s_axil``) around the accelerator top, with random pauses on every DDR channel; leaves
    the design in reset. Returns ``(ram, host)``."""
    import cocotb
    from cocotb.clock import Clock
    from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam, AxiRamRead, AxiReadBus

    from vitaccel.sim.streams import random_pauses

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.m_axi_bid.value = 0
    dut.m_axi_rid.value = 0
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=mem_size)
    host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
    readers = []
    for q in range(1, 4):  # the extra weight ports, reading the same memory
        if not hasattr(dut, f"m_axi_w{q}_araddr"):
            break
        getattr(dut, f"m_axi_w{q}_rid").value = 0
        bus = AxiReadBus.from_prefix(dut, f"m_axi_w{q}")
        readers.append(AxiRamRead(bus, dut.clk, dut.rst, size=mem_size, mem=ram.mem))
    logs = [ram.write_if.log, ram.read_if.log, host.write_if.log, host.read_if.log]
    for log in logs + [r.log for r in readers]:
        log.setLevel("WARNING")
    if pause:
        chans = [ram.write_if.aw_channel, ram.write_if.w_channel, ram.write_if.b_channel,
                 ram.read_if.ar_channel, ram.read_if.r_channel]  # fmt: skip
        for r in readers:
            chans += [r.ar_channel, r.r_channel]
        for k, ch in enumerate(chans):
            ch.set_pause_generator(random_pauses(pause, seed * 10 + k))
    return ram, host


async def attach_for_run(dut):
    """The run's arguments (:func:`vitaccel.sim.runner.load_args`) and the DDR model and host
    attached as they say (``mem_size``, ``pause``, ``seed``): ``(args, arrays, ram, host)``."""
    from vitaccel.sim.runner import load_args

    args, arrays = load_args()
    ram, host = await attach_axi(
        dut, mem_size=args["mem_size"], pause=args.get("pause", 0), seed=args.get("seed", 0)
    )
    return args, arrays, ram, host


async def reset(dut) -> None:
    """Reset for 4 cycles, then 2 cycles out of reset: the start of every run (and the reset
    between two runs) in the whole-top testbenches."""
    from cocotb.triggers import ClockCycles

    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)


async def wait_irq(dut, limit: int, chunk: int = 64) -> tuple[int, bool]:
    """Wait for the accelerator's interrupt in steps of ``chunk`` cycles: (cycles waited,
    whether ``limit`` was passed first)."""
    from cocotb.triggers import ClockCycles

    waited = 0
    while not int(dut.irq.value):
        await ClockCycles(dut.clk, chunk)
        waited += chunk
        if waited > limit:
            return waited, True
    return waited, False


async def play(dut, args: dict, arrays: dict) -> dict:
    """The testbench body (reusable from other cocotb tests): DDR model, host, one run."""
    from cocotb.triggers import ClockCycles, RisingEdge

    from vitaccel.isa import CTRL_IRQ_ENABLE, CTRL_START, STATUS_DONE, Reg

    ram, host = await attach_axi(
        dut, mem_size=args["mem_size"], pause=args.get("pause", 0), seed=args.get("seed", 0)
    )
    await reset(dut)

    ram.write(args["base"], arrays["image"].tobytes())
    for offset, value in args["regs"]:
        await host.write_dword(offset, value)
    ctrl = args.get("ctrl", CTRL_START | CTRL_IRQ_ENABLE)
    await host.write_dword(Reg.CTRL, ctrl)

    sim_cycles = 0
    limit = args["timeout_cycles"]
    timeout = False
    if ctrl & CTRL_IRQ_ENABLE:
        sim_cycles, timeout = await wait_irq(dut, limit)
    else:
        while not (await host.read_dword(Reg.STATUS)) & STATUS_DONE:
            await ClockCycles(dut.clk, 256)
            sim_cycles += 256
            if sim_cycles > limit:
                timeout = True
                break
    await RisingEdge(dut.clk)
    status = await host.read_dword(Reg.STATUS)
    lo = await host.read_dword(Reg.CYCLES_LO)
    hi = await host.read_dword(Reg.CYCLES_HI)
    pc = await host.read_dword(Reg.PC)
    outputs = [ram.read(addr, size).hex() for addr, size in args["outputs"]]
    return {
        "outputs": outputs,
        "cycles": hi << 32 | lo,
        "status": status,
        "pc": pc,
        "sim_cycles": sim_cycles,
        "timeout": timeout,
    }


@testbench
async def run_program(dut):
    """The cocotb test :func:`run_top` runs: arguments in, :func:`play`, result out."""
    from vitaccel.sim.runner import load_args, save_result

    args, arrays = load_args()
    save_result(await play(dut, args, arrays))
