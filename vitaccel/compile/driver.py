"""Host driver: one API, two back ends (cocotb simulation and a PYNQ board).

The host protocol is written once, as a list of plain steps (:func:`inference_steps`): write
the image's input, point PROG_ADDR and DATA_BASE at the memory image, START with the
interrupt enabled, wait for DONE, read CYCLES and the logits. Once the program has run
since the last reset, later images start past its resident prologue (the constants LOAD,
:func:`vitaccel.compile.schedule.resident_prologue`): PROG_ADDR points at the next
instruction. The board back end plays the
steps through PYNQ's MMIO and a contiguous buffer; the simulation back end
(:mod:`vitaccel.sim.host`) plays the same steps from a cocotb testbench through
cocotbext-axi's AXI-Lite master and AXI RAM. ``pynq`` is imported only on a board, so the
package works in simulation.

    drv = Driver(SimBackend(design))          # or Driver(PynqBackend("vitaccel.bit"))
    drv.load(compiled)
    result = drv.infer(patches)               # logits (int8 codes) and cycles
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vitaccel.compile.compiler import Compiled
from vitaccel.isa import (
    CTRL_IRQ_ENABLE,
    CTRL_START,
    INSTR_BYTES,
    STATUS_DONE,
    STATUS_ERROR,
    Reg,
)

__all__ = [
    "Step",
    "protocol_steps",
    "inference_steps",
    "parse_reads",
    "InferResult",
    "Backend",
    "Driver",
    "PynqBackend",
]


@dataclass(frozen=True)
class Step:
    """One host action. kind: write_mem(offset, data) | write_reg(reg, value) |
    wait_done() | read_reg(reg) | read_mem(offset, size) | reset()."""

    kind: str
    a: int = 0
    b: int | bytes = 0


def protocol_steps(
    *,
    input_offset: int,
    input_bytes: bytes,
    output_offset: int,
    output_bytes: int,
    base: int,
    reset_first: bool = False,
    entry: int = 0,
) -> list[Step]:
    """The register/memory protocol of one inference, relative to DDR address ``base``;
    the program (at ``base``) starts at instruction ``entry``."""
    prog = base + entry * INSTR_BYTES
    steps = [Step("reset")] if reset_first else []
    steps += [
        Step("write_mem", input_offset, bytes(input_bytes)),
        Step("write_reg", Reg.PROG_ADDR_LO, prog & 0xFFFFFFFF),
        Step("write_reg", Reg.PROG_ADDR_HI, prog >> 32),
        Step("write_reg", Reg.DATA_BASE_LO, base & 0xFFFFFFFF),
        Step("write_reg", Reg.DATA_BASE_HI, base >> 32),
        Step("write_reg", Reg.CTRL, CTRL_START | CTRL_IRQ_ENABLE),
        Step("wait_done", STATUS_DONE),
        Step("read_reg", Reg.CYCLES_LO),
        Step("read_reg", Reg.CYCLES_HI),
        Step("read_reg", Reg.STATUS),
        Step("read_mem", output_offset, output_bytes),
    ]
    return steps


def inference_steps(
    compiled: Compiled,
    patches: np.ndarray,
    base: int,
    *,
    reset_first: bool = False,
    resident: bool = False,
) -> list[Step]:
    """:func:`protocol_steps` for one image's int8 patches. ``resident``: the program has run
    on this device since its last reset, so the constants it loads once are in the
    scratchpad and the image starts past them (:func:`vitaccel.compile.schedule.resident_prologue`);
    a reset first (``reset_first``) runs the whole program again."""
    from vitaccel.compile.compiler import spm_rows
    from vitaccel.compile.schedule import resident_prologue

    t = compiled.tensors["patches"]
    raw = spm_rows(np.asarray(patches).reshape(t.rows, t.cols), t.stride)
    return protocol_steps(
        input_offset=compiled.input_offset,
        input_bytes=raw,
        output_offset=compiled.output_offset,
        output_bytes=compiled.classes,
        base=base,
        reset_first=reset_first,
        entry=resident_prologue(compiled.program) if resident and not reset_first else 0,
    )


def parse_reads(reads: list) -> InferResult:
    """The four reads of one inference (CYCLES_LO, CYCLES_HI, STATUS, logits)."""
    lo, hi, status, out = reads[-4:]
    logits = np.frombuffer(bytes(out), dtype=np.int8).astype(np.int64)
    return InferResult(logits, int(lo) | int(hi) << 32, int(status))


@dataclass
class InferResult:
    logits: np.ndarray
    cycles: int
    status: int


class Backend(Protocol):
    def load_image(self, image: bytes) -> int:
        """Copy the memory image to device memory; return its base address."""

    def run(self, steps: list[Step]) -> list[int | bytes]:
        """Play the steps; return what each read step read, in order."""


class Driver:
    """Load a compiled model once, then run inferences."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.compiled: Compiled | None = None
        self.base = 0
        self.resident = False  # the loaded program has run since the last reset

    def load(self, compiled: Compiled) -> None:
        self.compiled = compiled
        self.base = self.backend.load_image(bytes(compiled.image))
        self.resident = False

    def infer(self, patches: np.ndarray) -> InferResult:
        return self.infer_batch([patches])[0]

    def infer_batch(self, batch, *, reset_between: bool = False) -> list[InferResult]:
        if self.compiled is None:
            raise RuntimeError("Driver.load(compiled) first")
        steps: list[Step] = []
        for i, patches in enumerate(batch):
            reset = reset_between and i > 0
            steps += inference_steps(
                self.compiled, patches, self.base, reset_first=reset,
                resident=self.resident or (i > 0 and not reset),
            )  # fmt: skip
        reads = self.backend.run(steps)
        per = 4  # read steps per inference
        results = [parse_reads(reads[i * per : (i + 1) * per]) for i in range(len(batch))]
        # the constants stay in the scratchpad once a run has finished without an error
        last = results[-1].status if results else 0
        self.resident = bool(last & STATUS_DONE) and not last & STATUS_ERROR
        return results


class PynqBackend:
    """A board running the generated bitstream under PYNQ (ZCU104/KV260 images, ZCU102
    community images). The overlay's register block is the accelerator's AXI-Lite slave."""

    def __init__(self, bitfile: str, *, ip_name: str = "vitaccel_0", timeout_s: float = 10.0):
        import pynq  # only on a board

        self._pynq = pynq
        self.overlay = pynq.Overlay(bitfile)
        self.mmio = getattr(self.overlay, ip_name).mmio
        self.buffer = None
        self.timeout_s = timeout_s

    def load_image(self, image: bytes) -> int:
        self.buffer = self._pynq.allocate(shape=(len(image),), dtype=np.uint8)
        self.buffer[:] = np.frombuffer(image, dtype=np.uint8)
        self.buffer.flush()
        return int(self.buffer.device_address)

    def run(self, steps: list[Step]) -> list[int | bytes]:
        import time

        reads: list[int | bytes] = []
        for s in steps:
            if s.kind == "write_mem":
                self.buffer[s.a : s.a + len(s.b)] = np.frombuffer(s.b, dtype=np.uint8)
                self.buffer.flush()
            elif s.kind == "write_reg":
                self.mmio.write(int(s.a), int(s.b))
            elif s.kind == "wait_done":
                deadline = time.monotonic() + self.timeout_s
                while not self.mmio.read(Reg.STATUS) & s.a:
                    if time.monotonic() > deadline:
                        raise TimeoutError("accelerator did not finish")
            elif s.kind == "read_reg":
                reads.append(self.mmio.read(int(s.a)))
            elif s.kind == "read_mem":
                self.buffer.invalidate()
                reads.append(bytes(self.buffer[s.a : s.a + int(s.b)]))
            elif s.kind == "reset":
                pass  # the PS resets the PL through proc_sys_reset; nothing to do between runs
        return reads


class InterpBackend:
    """The ISA interpreter as a device: functional, untimed (CYCLES reads 0). Useful to run
    host code and compiled programs without RTL; the interpreter is the executable spec."""

    def __init__(self, codec, *, spm_words: int, softmax_lanes: int = 1):
        self.codec = codec
        self.spm_words = spm_words
        self.softmax_lanes = softmax_lanes
        self.memory = bytearray()
        self.regs: dict[int, int] = {}
        self.spm = None  # the scratchpad, kept from run to run as the device keeps it

    def load_image(self, image: bytes) -> int:
        self.memory = bytearray(image)
        return 0

    def run(self, steps: list[Step]) -> list[int | bytes]:
        from vitaccel.compile import interp

        reads: list[int | bytes] = []
        for s in steps:
            if s.kind == "write_mem":
                self.memory[s.a : s.a + len(s.b)] = s.b
            elif s.kind == "write_reg":
                self.regs[int(s.a)] = int(s.b)
                if s.a == Reg.CTRL and s.b & CTRL_START:
                    prog = (
                        self.regs.get(Reg.PROG_ADDR_LO, 0)
                        | self.regs.get(Reg.PROG_ADDR_HI, 0) << 32
                    )
                    m = interp.run(
                        self.memory,
                        self.codec,
                        spm_words=self.spm_words,
                        softmax_lanes=self.softmax_lanes,
                        entry=prog // INSTR_BYTES,  # the image is at address 0
                        spm=self.spm,
                    )
                    self.memory, self.spm = m.ddr, m.spm
                    self.regs[Reg.STATUS] = STATUS_DONE
                    self.regs[Reg.CYCLES_LO] = self.regs[Reg.CYCLES_HI] = 0
            elif s.kind == "read_reg":
                reads.append(self.regs.get(int(s.a), 0))
            elif s.kind == "read_mem":
                reads.append(bytes(self.memory[s.a : s.a + int(s.b)]))
        return reads
