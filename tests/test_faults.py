"""Fault injection on the whole accelerator (Verilator): DDR error responses, a DDR that stops
answering, an unknown opcode and a program without END.

Each must end in STATUS.ERROR (with DONE, so a host waiting for DONE/irq returns) or in the
host's timeout, with a one-line message naming the fault and the instruction index (the PC
register); then a good run in the same simulation, on the same build, must be exact. All
tests share one Verilator build of the default design (the cocotb one that
tests/test_sim_native.py checks the native harness against, cycle for cycle).
"""

from __future__ import annotations

import numpy as np
import pytest

from vitaccel import isa
from vitaccel.flow.build import default_design
from vitaccel.isa import STATUS_BUSY, STATUS_DONE, STATUS_ERROR
from vitaccel.sim.tb_faults import describe_outcome, run_fault

BASE = 0x1000  # PROG_ADDR = DATA_BASE; instructions' DDR addresses are relative to it
MEM = 1 << 16
A, B, C = 0x400, 0x800, 0xC00  # data blobs (relative)
WORDS = 16  # 16-byte SPM words per blob
TIMEOUT = 20_000


@pytest.fixture(scope="module")
def design():
    from vitaccel.sim.tb_top import sim_verilog

    d = default_design("digits-vit", "zcu102")
    sim_verilog(d)  # one Verilog (and so one cached Verilator build) for every test here
    return d


def _image(prog, data: dict[int, bytes]) -> bytes:
    img = bytearray(0x1000)
    code = isa.encode_program(prog)
    img[: len(code)] = code
    for off, raw in data.items():
        img[off : off + len(raw)] = raw
    return bytes(img)


RNG = np.random.default_rng(0)
DATA_A = RNG.integers(0, 256, 16 * WORDS, dtype=np.uint8).tobytes()
DATA_B = RNG.integers(0, 256, 16 * WORDS, dtype=np.uint8).tobytes()
# LOAD A, LOAD B, STORE both to C: instruction 1 reads B, instruction 2 writes C.
PROGRAM = [
    isa.load(spm=0, words=WORDS, ddr=A),
    isa.load(spm=WORDS, words=WORDS, ddr=B),
    isa.store(spm=0, words=2 * WORDS, ddr=C),
    isa.end(),
]
GOOD = _image(PROGRAM, {A: DATA_A, B: DATA_B})
GOOD_OUT = [(BASE + C, 32 * WORDS)]


def _run(design, image, fault, *, program_len=4, base=BASE):
    res = run_fault(
        design,
        image,
        base=base,
        program_len=program_len,
        fault=fault,
        good_image=GOOD if base == BASE else bytes(BASE - base) + GOOD,
        good_outputs=GOOD_OUT,
        good_base=BASE,
        pause=0.2,
        seed=1,
        timeout_cycles=TIMEOUT,
        mem_size=MEM,
    )
    assert not res.get("errors"), res.get("errors")
    return res


def _check_recovered(res):
    good = res["good"]
    assert not good["timeout"] and good["status"] == STATUS_DONE, good
    assert good["pc"] == len(PROGRAM) - 1
    assert good["outputs"][0] == DATA_A + DATA_B, "the run after the fault is not exact"


@pytest.mark.parametrize("kind", ["slverr", "decerr"])
@pytest.mark.parametrize("side, pc", [("read", 1), ("write", 2)])
def test_ddr_error_response_ends_the_run_with_error(design, kind, side, pc):
    lo = BASE + (B if side == "read" else C)
    res = _run(design, GOOD, {"kind": kind, "side": side, "lo": lo, "hi": lo + 16})
    assert res["fault_hits"] > 0, "the fault was never hit"
    assert not res["timeout"], res
    assert res["status"] == STATUS_DONE | STATUS_ERROR, res
    assert res["pc"] == pc
    msg = res["message"]
    op = "LOAD" if side == "read" else "STORE"
    assert msg == (
        f"accelerator error (STATUS.ERROR) at instruction {pc} ({op}): a DDR {side} answered "
        "with an error response (SLVERR/DECERR)"
    )
    _check_recovered(res)


@pytest.mark.parametrize("side, pc", [("read", 1), ("write", 2)])
def test_ddr_that_stops_answering_ends_in_a_host_timeout(design, side, pc):
    lo = BASE + (B if side == "read" else C)
    res = _run(design, GOOD, {"kind": "hang", "side": side, "lo": lo, "hi": lo + 16})
    assert res["fault_hits"] > 0
    assert res["timeout"], res
    assert res["status"] & STATUS_BUSY and not res["status"] & STATUS_DONE, res
    assert res["pc"] == pc
    assert res["message"].startswith(
        f"accelerator timeout: still BUSY after {TIMEOUT} cycles at instruction {pc} ("
    ), res["message"]
    assert "\n" not in res["message"]
    _check_recovered(res)  # after a reset (a BUSY run cannot be restarted otherwise)


def test_unknown_opcode(design):
    image = bytearray(GOOD)
    image[32] = 0x0B  # opcode 11 in instruction 1
    res = _run(design, bytes(image), None)
    assert res["status"] == STATUS_DONE | STATUS_ERROR and res["pc"] == 1, res
    assert res["message"] == (
        "accelerator error (STATUS.ERROR) at instruction 1 (opcode 11): unknown opcode 11"
    )
    _check_recovered(res)  # no reset in between: START after an ERROR just works


def test_program_without_end_ends_in_a_host_timeout(design):
    """Memory full of no-op LOADs from address 0 (PROG_ADDR = 0): the PC runs on and wraps
    round the DDR and never meets END; the host gives up, names the PC and resets."""
    noop = isa.encode_program([isa.load(spm=0, words=0, ddr=0)])
    image = noop * (MEM // len(noop))
    res = _run(design, image, None, program_len=MEM // 32, base=0)
    assert res["timeout"] and res["status"] & STATUS_BUSY, res
    assert res["pc"] > 0
    assert res["message"] == (
        f"accelerator timeout: still BUSY after {TIMEOUT} cycles at instruction {res['pc']} "
        "(LOAD): the DDR stopped answering, or the program never reaches END"
    )
    good = res["good"]
    assert good["status"] == STATUS_DONE and good["outputs"][0] == DATA_A + DATA_B, good


def test_describe_outcome_of_a_clean_run_is_none():
    assert describe_outcome({"status": STATUS_DONE, "pc": 3}, GOOD, timeout_cycles=1) is None
