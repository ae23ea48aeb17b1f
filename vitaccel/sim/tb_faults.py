"""Fault injection on the whole accelerator (cocotb), and the host-side reading of the outcome.

The DDR is the same cocotbext-axi ``AxiRam`` as in :mod:`vitaccel.sim.tb_top`, with a fault
armed on an address range of one side:

* ``slverr`` / ``decerr``: every beat of a read (R) or every burst of a write (B) that touches
  the range is answered with that response (cocotbext-axi answers SLVERR when its memory
  callback fails; DECERR is that answer rewritten on the channel);
* ``hang``: the DDR stops answering there (the read or write callback never returns), as a
  dead interconnect or a wrong address map would.

One simulation plays two runs: the faulty program (until DONE, or until the host gives up
after ``timeout_cycles``), then a reset if the first run timed out (a run still BUSY cannot
be restarted; on a board the PS resets the PL), the fault disarmed, and a good program whose
outputs must be exact: a run after the error works without rebuilding anything.

:func:`run_fault` is the host side; :func:`describe_outcome` turns STATUS, PC and the program
into the one-line message a driver prints.
"""

from __future__ import annotations

import numpy as np

from vitaccel.sim.runner import testbench

__all__ = ["FAULT_KINDS", "FAULT_SIDES", "run_fault", "describe_outcome"]

FAULT_KINDS = ("slverr", "decerr", "hang")
FAULT_SIDES = ("read", "write")
TB_MODULE = "vitaccel.sim.tb_faults"

# What a STATUS.ERROR at an instruction can come from (the accelerator has one ERROR bit;
# the instruction at PC tells which DDR side or check failed).
_ERROR_CAUSE = {
    "LOAD": "a DDR read answered with an error response (SLVERR/DECERR)",
    "STORE": "a DDR write answered with an error response (SLVERR/DECERR)",
    "MATMUL": "an invalid MATMUL (shape or format) or a DDR weight read error response",
}


def _instruction_name(program: bytes, pc: int) -> tuple[str | None, int | None]:
    """(opcode name or None if unknown, raw opcode) of instruction ``pc`` in ``program``."""
    from vitaccel.isa import INSTR_BYTES, Op

    off = pc * INSTR_BYTES
    if pc < 0 or off >= len(program):
        return None, None
    opcode = program[off]
    try:
        return Op(opcode).name, opcode
    except ValueError:
        return None, opcode


def describe_outcome(result: dict, program: bytes, *, timeout_cycles: int) -> str | None:
    """The one-line message for a run that did not end cleanly, or None if it did.

    ``result`` holds ``status``, ``pc`` and ``timeout`` (as :func:`run_fault` and
    :func:`vitaccel.sim.tb_top.run_top` return them); ``program`` is the program's bytes
    (instruction ``k`` at offset 32 k).
    """
    from vitaccel.isa import STATUS_BUSY, STATUS_DONE, STATUS_ERROR

    pc = int(result["pc"])
    name, opcode = _instruction_name(program, pc)
    where = f"instruction {pc} ({name or f'opcode {opcode}'})"
    if result.get("timeout"):
        busy = "still BUSY" if int(result["status"]) & STATUS_BUSY else "not DONE"
        return (
            f"accelerator timeout: {busy} after {timeout_cycles} cycles at {where}: "
            "the DDR stopped answering, or the program never reaches END"
        )
    status = int(result["status"])
    if status & STATUS_ERROR:
        if name is None:
            cause = f"unknown opcode {opcode}"
        else:
            cause = _ERROR_CAUSE.get(name, f"{name} cannot run on this build")
        return f"accelerator error (STATUS.ERROR) at {where}: {cause}"
    if not status & STATUS_DONE:
        return f"accelerator not DONE (STATUS {status:#x}) at {where}"
    return None


def run_fault(
    design,
    image: bytes,
    *,
    base: int,
    program_len: int,
    fault: dict | None,
    good_image: bytes,
    good_outputs: list[tuple[int, int]],
    pause: float = 0.0,
    seed: int = 0,
    timeout_cycles: int = 20_000,
    mem_size: int = 1 << 16,
    good_base: int | None = None,
) -> dict:
    """Run ``image`` with ``fault`` armed, then ``good_image`` with no fault, in one simulation.

    ``fault``: ``{"kind": "slverr"|"decerr"|"hang", "side": "read"|"write", "lo": a,
    "hi": b}`` (DDR byte addresses [a, b)) or None. Both images are copied to ``base``
    (program at ``base``, PROG_ADDR = DATA_BASE = base; ``good_base`` for the good run if
    it differs). Returns ``status``, ``pc``,
    ``timeout``, ``cycles``, ``message`` (:func:`describe_outcome`) and ``fault_hits`` (DDR
    accesses the fault answered) of the faulty run and
    ``good`` (``status``, ``pc``, ``timeout``, ``outputs`` as bytes) of the second run.
    """
    from vitaccel.sim.runner import run_cocotb
    from vitaccel.sim.tb_top import TB_TOPLEVEL, default_regs, sim_verilog

    if fault is not None:
        if fault.get("kind") not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, not {fault.get('kind')!r}")
        if fault.get("side") not in FAULT_SIDES:
            raise ValueError(f"fault side must be one of {FAULT_SIDES}, not {fault.get('side')!r}")
    args = {
        "base": base,
        "regs": default_regs(base, base),
        "good_regs": default_regs(
            base if good_base is None else good_base, base if good_base is None else good_base
        ),
        "fault": fault,
        "pause": pause,
        "seed": seed,
        "timeout_cycles": timeout_cycles,
        "mem_size": mem_size,
        "outputs": [[int(a), int(s)] for a, s in good_outputs],
    }
    result = run_cocotb(
        verilog=sim_verilog(design),
        toplevel=TB_TOPLEVEL,
        test_module=TB_MODULE,
        args=args,
        arrays={
            "image": np.frombuffer(bytes(image), dtype=np.uint8),
            "good_image": np.frombuffer(bytes(good_image), dtype=np.uint8),
        },
    )
    if "good" in result:
        result["good"]["outputs"] = [bytes.fromhex(h) for h in result["good"]["outputs"]]
    if "status" in result:
        result["message"] = describe_outcome(
            result, bytes(image[: 32 * program_len]), timeout_cycles=timeout_cycles
        )
    return result


# ---- the cocotb side ----------------------------------------------------------------------


def arm_fault(ram, fault: dict) -> object:
    """Arm ``fault`` on the AxiRam ``ram``; returns an object whose ``disarm()`` removes it
    (and releases a hung answer, which the reset that follows throws away)."""
    from cocotb.triggers import Event
    from cocotbext.axi.constants import AxiResp

    side = ram.read_if if fault["side"] == "read" else ram.write_if
    lo, hi = int(fault["lo"]), int(fault["hi"])
    kind = fault["kind"]
    original = side._read if fault["side"] == "read" else side._write
    release = Event()
    state = {"armed": True, "hits": 0}

    def hit(address, length) -> bool:
        inside = state["armed"] and address < hi and address + length > lo
        state["hits"] += inside
        return inside

    async def faulty(address, arg):
        length = arg if fault["side"] == "read" else len(arg)
        if hit(address, length):
            if kind == "hang":
                await release.wait()
            else:
                raise OSError(f"injected {kind} at {address:#x}")  # -> SLVERR
        return await original(address, arg)

    if fault["side"] == "read":
        side._read = faulty
        channel, field = side.r_channel, "rresp"
    else:
        side._write = faulty
        channel, field = side.b_channel, "bresp"
    send = channel.send

    async def send_rewritten(txn):
        if kind == "decerr" and getattr(txn, field) == AxiResp.SLVERR:
            setattr(txn, field, AxiResp.DECERR)
        await send(txn)

    channel.send = send_rewritten

    class Armed:
        @staticmethod
        def hits() -> int:
            """Accesses the fault answered (a test checks the fault really happened)."""
            return state["hits"]

        @staticmethod
        def disarm():
            state["armed"] = False
            release.set()

    return Armed


@testbench
async def fault_then_good_run(dut):
    """The faulty run, then (after a reset if it hung) a good run on the same DDR."""
    from cocotb.triggers import RisingEdge

    from vitaccel.isa import CTRL_IRQ_ENABLE, CTRL_START, Reg
    from vitaccel.sim.runner import save_result
    from vitaccel.sim.tb_top import attach_for_run, reset, wait_irq

    args, arrays, ram, host = await attach_for_run(dut)
    ram.read_if.log.setLevel("ERROR")  # the injected failures are expected
    ram.write_if.log.setLevel("ERROR")

    async def run(image, regs) -> dict:
        ram.write(args["base"], image.tobytes())
        for offset, value in regs:
            await host.write_dword(offset, value)
        await host.write_dword(Reg.CTRL, CTRL_START | CTRL_IRQ_ENABLE)
        waited, timeout = await wait_irq(dut, args["timeout_cycles"])
        await RisingEdge(dut.clk)
        # The register file answers even while the core waits on a dead DDR.
        return {
            "status": await host.read_dword(Reg.STATUS),
            "pc": await host.read_dword(Reg.PC),
            "cycles": waited,
            "timeout": timeout,
        }

    await reset(dut)
    armed = arm_fault(ram, args["fault"]) if args.get("fault") else None
    first = await run(arrays["image"], args["regs"])
    if first["timeout"]:
        await reset(dut)  # the AxiRam model drops its pending answers on reset too
    if armed is not None:
        first["fault_hits"] = armed.hits()
        armed.disarm()
    ram.write(args["base"], bytes(args["mem_size"] - args["base"]))
    good = await run(arrays["good_image"], args["good_regs"])
    good["outputs"] = [ram.read(a, s).hex() for a, s in args["outputs"]]
    save_result({**first, "good": good})
