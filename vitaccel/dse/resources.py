"""Resource model: DSP48E2, LUT, FF, BRAM36 and URAM288 of a design, as functions of its parameters.

Pure Python over ``data/calibration.json`` (written by :mod:`vitaccel.verify.calibrate` from Yosys
``synth_xilinx -family xcup`` runs of generated engines and units). What each figure means:

* **Matmul engine** (array + X/W buffers + requantisers + output FIFO, ``MatmulEngine``):
  DSP48E2 counted from the structure (one slice per W8-pair lane, ``G*R*(C8/2)*V``, plus the
  fitted slices per requantised column); LUT and FF are a non-negative least-squares fit on
  structural features (lanes, PE outputs, columns, rows, W4 lanes); BRAM from the memory
  geometry (each X bank, W bank and the output FIFO mapped to RAMB18/RAMB36 shapes the way
  Yosys maps them, small memories to LUTRAM).
* **Nonlinear units** (E2Softmax, AILayerNorm, GELU): per unit and resource a line
  ``a + b * lanes`` fitted on the unit synthesised at several lane counts.
* **Scratchpad** (SPM, 16-byte words): BRAM36 or URAM288 (``Design.spm_memory``) from its
  geometry; its size is what the compiler allocates for the model (:func:`spm_words` calls
  the scheduler's own layout). Which memory a buffer takes is :func:`place_buffers`'
  choice, the explorer's hook (:func:`spm_memory`).
* **Shell** (controller, instruction fetch, AXI master, residual adder, AXI-Lite registers):
  the RTL top level is calibrated when ``calibration.json`` holds it; otherwise a documented
  fixed estimate (``SHELL_ESTIMATE``) is used and reported as such.

Yosys puts no accumulator or pipeline register into the DSP48E2 for xcup, so LUT/FF include
accumulators that Vivado would absorb: the LUT/FF figures are upper bounds of a Vivado run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from vitaccel.boards.base import BoardBudget
from vitaccel.design import Design
from vitaccel.dse.cost import column_split
from vitaccel.dse.shapes import model_ops, spec_of
from vitaccel.engine_timing import top_out_depth, word_writes, x_beat_words
from vitaccel.isa import WORD_BYTES

__all__ = [
    "CALIBRATION_PATH",
    "KINDS",
    "ALL_KINDS",
    "KIND_NAMES",
    "board_kinds",
    "SHELL_ESTIMATE",
    "WEIGHT_PORT_ESTIMATE",
    "weight_ports_resources",
    "mapped_writer_resources",
    "Usage",
    "engine_buffers",
    "engine_features",
    "engine_resources",
    "memory_bram36",
    "memory_uram288",
    "place_buffers",
    "spm_memory",
    "spm_usage",
    "word_writer_resources",
    "check_fits",
    "nonlinear_resources",
    "spm_words",
    "design_resources",
    "calibration",
]

CALIBRATION_PATH = Path(__file__).parent / "data" / "calibration.json"
KINDS = ("dsp48e2", "lut", "ff", "bram36")  # the calibrated kinds
ALL_KINDS = (*KINDS, "uram")  # URAM288 holds only buffers placed there (place_buffers)
# how summaries, tables and plots name each kind, in the order they show them
KIND_NAMES = {"dsp48e2": "DSP48E2", "lut": "LUT", "ff": "FF", "bram36": "BRAM36", "uram": "URAM288"}


def board_kinds(budget: BoardBudget) -> tuple[str, ...]:
    """The kinds a user reads against ``budget``'s board: URAM288 only where it has some."""
    return ALL_KINDS if budget.uram else KINDS


# Controller + instruction fetch + AXI4 master + AXI-Lite registers + residual adder, until
# the top level is synthesised: the AXI master/FIFOs of rtl/axi.py at 128 bits and a
# 16-byte-wide residual adder (16 x two 16x8 multiplies in fabric) are about this size.
SHELL_ESTIMATE = {"dsp48e2": 0, "lut": 6000, "ff": 7000, "bram36": 2.0}


@dataclass(frozen=True)
class Usage:
    dsp48e2: float = 0.0
    lut: float = 0.0
    ff: float = 0.0
    bram36: float = 0.0
    uram: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, k) + getattr(other, k) for k in ALL_KINDS))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, k) - getattr(other, k) for k in ALL_KINDS))

    def as_dict(self) -> dict:
        return {k: round(getattr(self, k), 1) for k in ALL_KINDS}


@cache
def calibration(path: Path = CALIBRATION_PATH) -> dict:
    path = Path(path)
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------
# Memories
# ---------------------------------------------------------------------------------------

# Simple-dual-port shapes (depth, width) of one RAMB18E2 and one RAMB36E2.
_RAMB18 = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
_RAMB36 = ((32768, 1), (16384, 2), (8192, 4), (4096, 9), (2048, 18), (1024, 36), (512, 72))
# Yosys maps memories this shallow (or this small) to LUT RAM instead of block RAM.
LUTRAM_MAX_DEPTH = 64


@cache
def memory_bram36(depth: int, width: int, *, lutram_max_depth: int | None = None) -> float:
    """BRAM36 equivalents of one ``depth x width`` memory (0 when it goes to LUT RAM)."""
    limit = LUTRAM_MAX_DEPTH if lutram_max_depth is None else lutram_max_depth
    if depth <= limit:
        return 0.0
    best = math.inf
    for shapes, size in ((_RAMB18, 0.5), (_RAMB36, 1.0)):
        for d, w in shapes:
            best = min(best, math.ceil(depth / d) * math.ceil(width / w) * size)
    return best


# One URAM288 as Yosys maps it for xcup (share/xilinx/urams.txt, ``$__XILINX_URAM_``):
# 4096 x 72 with 8-bit byte enables, two ports (one writes, one reads). Yosys takes it only
# for a memory marked ``ram_style = "ultra"`` (its cost is 1024 against a block RAM's 64), and
# reads it in one cycle like a block RAM (no OREG), so the scratchpad's timing is unchanged.
URAM_SHAPE = (4096, 72)


@cache
def memory_uram288(depth: int, width: int) -> int:
    """URAM288 of one ``depth x width`` memory marked ``ram_style = "ultra"``: Yosys tiles
    it 4096 deep x 72 wide (a 128-bit word takes two side by side, 8 of their 9 bytes each;
    a deeper memory stacks them and muxes the outputs in fabric)."""
    d, w = URAM_SHAPE
    return math.ceil(depth / d) * math.ceil(width / w)


def place_buffers(
    buffers: dict[str, tuple[int, int, int]], budget, *, max_util: float = 0.85
) -> dict[str, str]:
    """Which memory each buffer takes: ``{name: "bram" | "uram"}``.

    ``buffers`` maps a name to ``(count, depth, width)`` (``count`` identical memories).
    Greedy: the buffers that save the most BRAM36 per URAM288 go to URAM first, while the
    board's URAM within ``max_util`` lasts; a buffer that saves less than one BRAM36 per
    URAM288 (a small memory in an 8x larger block) stays in BRAM.
    Only buffers the RTL can build either way belong here (today the scratchpad:
    ``Design.spm_memory``).
    """
    left = budget.uram * max_util
    ranked = []
    for name, (count, depth, width) in buffers.items():
        bram = count * memory_bram36(depth, width, lutram_max_depth=0)
        uram = count * memory_uram288(depth, width)
        if bram >= uram:
            ranked.append((-bram / uram, name, uram))
    placed = {name: "bram" for name in buffers}
    for _, name, uram in sorted(ranked):
        if uram <= left:
            placed[name] = "uram"
            left -= uram
    return placed


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# ---------------------------------------------------------------------------------------
# Matmul engine
# ---------------------------------------------------------------------------------------


@cache
def buffer_needs(spec, rows: int, vector: int, jobs=None) -> tuple[int, int]:
    """(X words per bank, k-steps) the model's largest job needs on ``rows`` x ``vector``.

    One X bank holds every R-th token of a job's X: ``ceil(T/R) * ceil(K/V)`` words.
    ``jobs``: the program's MATMULs as (tokens, K) pairs when they are not the model's
    whole-token operations (a spilling program runs the MLP per token tile).
    """
    if jobs is None:
        jobs = [(op.m, op.k) for op in model_ops(spec) if op.is_matmul]
    ks_max, x_words = 1, 1
    for tokens, k in jobs:
        ks = -(-k // vector)
        ks_max = max(ks_max, ks)
        x_words = max(x_words, -(-tokens // rows) * ks)
    return x_words, ks_max


def buffer_kib(spec, groups: int, rows: int, cols: int, vector: int, jobs=None) -> dict[str, int]:
    """The design-file buffer sizes (KiB) that give the engine the buffers the model needs
    (``jobs``: :func:`buffer_needs`)."""
    x_need, ks_need = buffer_needs(spec, rows, vector, jobs)
    kib = lambda nbytes: max(1, -(-nbytes // 1024))  # noqa: E731
    return {
        "input_buffer_kib": kib(groups * rows * vector * x_need),
        "weight_buffer_kib": kib(groups * cols * 2 * vector * ks_need),
        "output_buffer_kib": kib(top_out_depth(rows, cols, vector) * groups * cols),
    }


def engine_buffers_from_kib(groups, rows, cols, vector, input_kib, weight_kib,
                            datapath_bytes: int = 16) -> dict:  # fmt: skip
    """EngineParams buffer sizes as the top's ``TopParams`` (rtl/top.py) derives them (and
    its X beat: the X banks' sub-banks)."""
    x_beat = x_beat_words(vector, datapath_bytes)
    x_words = max(16, input_kib * 1024 // (groups * rows * vector))
    return {
        "x_words": x_words - x_words % x_beat,
        "max_ksteps": max(2, weight_kib * 1024 // (groups * cols * 2 * vector)),
        "out_depth": top_out_depth(rows, cols, vector),
        "x_beat": x_beat,
    }


def engine_buffers(design: Design, spec=None) -> dict:
    """X/W/output buffer sizes of ``design``'s engine (``TopParams``' derivation)."""
    a = design.array
    return engine_buffers_from_kib(
        a.groups, a.rows, a.cols, a.vector, design.input_buffer_kib, design.weight_buffer_kib,
        design.datapath_bytes,
    )  # fmt: skip


def spm_kib_for(spec) -> int:
    """Scratchpad KiB the compiled program needs (uncapped; the ISA addresses 1024)."""
    return -(-spm_words(spec) * WORD_BYTES // 1024)


def engine_features(
    groups: int, rows: int, cols: int, vector: int, cols_w4: int, w4_kind: str
) -> dict[str, float]:
    """The structural quantities LUT and FF are fitted on."""
    g, r, c, v = groups, rows, cols, vector
    w4 = g * r * cols_w4 * v
    return {
        "const": 1.0,
        "lanes": float(g * r * c * v),  # product registers, adder-tree inputs
        "outputs": float(g * r * c),  # accumulators, captures, output chains
        "columns": float(g * c),  # requantisers, W bank ports, parameter registers
        "rows": float(g * r),  # X bank ports, skew delay lines
        "w4_int4": float(w4 if w4_kind == "int4" else 0),
        "w4_pot4": float(w4 if w4_kind == "pot4" else 0),
    }


_DEFAULT_ENGINE_FIT = {
    # Used only before calibration.json exists; roughly the 1x2x2x4 engine's counts.
    "lut": {"const": 600, "lanes": 40, "outputs": 80, "columns": 60, "rows": 20,
            "w4_int4": 30, "w4_pot4": 20},
    "ff": {"const": 700, "lanes": 45, "outputs": 110, "columns": 90, "rows": 20,
           "w4_int4": 10, "w4_pot4": 10},
    "dsp_per_column": 2.0,
}  # fmt: skip


def engine_bram36_parts(
    groups,
    rows,
    cols,
    vector,
    cols_w8,
    x_words,
    max_ksteps,
    out_depth,
    x_memory="bram",
    x_beat=1,
) -> dict[str, float]:
    """BRAM36 of the engine's buffers: ``x`` (one bank per PE row and group, in ``x_beat``
    sub-banks of ``x_words / x_beat`` words; 0 on URAM, see :func:`engine_x_uram`), ``w``
    (two halves of ``max_ksteps`` words per column: W8 columns 8V bits wide, W4 columns 4V)
    and ``out`` (the output FIFO, one 8-bit lane per output column)."""
    kmax = _pow2(max_ksteps)
    on_bram = x_memory == "bram"
    return {
        "x": groups * rows * x_beat * memory_bram36(x_words // x_beat, 8 * vector)
        if on_bram
        else 0.0,
        "w": groups * cols_w8 * memory_bram36(2 * kmax, 8 * vector)
        + groups * (cols - cols_w8) * memory_bram36(2 * kmax, 4 * vector),
        "out": memory_bram36(out_depth, 8 * groups * cols),
    }


def engine_bram36(*args, **kwargs) -> float:
    """The engine's BRAM36 in total: the sum of :func:`engine_bram36_parts` (same arguments)."""
    return sum(engine_bram36_parts(*args, **kwargs).values())


def engine_x_uram(groups: int, rows: int, vector: int, x_words: int) -> int:
    """URAM288 of the engine's X banks when they are on URAM (``Design.x_memory``)."""
    return groups * rows * memory_uram288(x_words, 8 * vector)


def design_memories(
    *, groups: int, rows: int, vector: int, x_words: int, spm_words: int, budget, max_util=0.85
) -> dict[str, str]:
    """The explorer's memory per buffer that the RTL can build either way (the scratchpad,
    ``spm``, and the engine's X banks, ``x``): :func:`place_buffers` on ``budget``."""
    buffers = {"spm": (1, spm_words, 8 * WORD_BYTES), "x": (groups * rows, x_words, 8 * vector)}
    return place_buffers(buffers, budget, max_util=max_util)


# Log2-code mode of the engine (EngineParams.log2): 9086 - 5458 LUT and 8530 - 8145 FF over
# the 64 DSP lanes of the 1x4x4x8 engine (docs/gvsa.md "Resources").
LOG2_LUT_PER_DSP_LANE = (9086 - 5458) / 64
LOG2_FF_PER_DSP_LANE = (8530 - 8145) / 64


def engine_resources(
    groups: int,
    rows: int,
    cols: int,
    vector: int,
    w4_share: float,
    w4_kind: str,
    x_words: int,
    max_ksteps: int,
    out_depth: int,
    x_memory: str = "bram",
    x_beat: int = 1,
) -> Usage:
    c8, c4 = column_split(cols, w4_share)
    fit = calibration().get("engine_fit", _DEFAULT_ENGINE_FIT)
    feats = engine_features(groups, rows, cols, vector, c4, w4_kind)
    lut = sum(fit["lut"].get(k, 0.0) * v for k, v in feats.items())
    ff = sum(fit["ff"].get(k, 0.0) * v for k, v in feats.items())
    dsp = groups * rows * (c8 // 2) * vector + fit["dsp_per_column"] * groups * cols
    bram = engine_bram36(
        groups, rows, cols, vector, c8, x_words, max_ksteps, out_depth, x_memory, x_beat
    )
    uram = engine_x_uram(groups, rows, vector, x_words) if x_memory == "uram" else 0
    return Usage(dsp, lut, ff, bram, uram)


# ---------------------------------------------------------------------------------------
# Nonlinear units, scratchpad, shell
# ---------------------------------------------------------------------------------------

_DEFAULT_UNIT_FIT = {
    "softmax": {"lut": (600, 250), "ff": (700, 200), "dsp48e2": (0, 0), "bram36": (1, 0)},
    "layernorm": {"lut": (900, 300), "ff": (900, 250), "dsp48e2": (2, 0), "bram36": (1, 0)},
    "gelu": {"lut": (60, 30), "ff": (40, 20), "dsp48e2": (0, 0), "bram36": (0, 0)},
}


def nonlinear_resources(unit: str, lanes: int) -> Usage:
    """Usage of one unit: the Yosys run at ``lanes`` when calibrated, linear interpolation
    between the calibrated lane counts around it, the fitted line ``a + b*lanes`` outside."""
    cal = calibration()
    points = {int(n): v for n, v in cal.get("unit_points", {}).get(unit, {}).items()}
    if lanes in points:
        return Usage(*(float(points[lanes][k]) for k in KINDS))
    below = [n for n in points if n < lanes]
    above = [n for n in points if n > lanes]
    if below and above:
        lo, hi = max(below), min(above)
        f = (lanes - lo) / (hi - lo)
        return Usage(*((1 - f) * points[lo][k] + f * points[hi][k] for k in KINDS))
    fit = cal.get("unit_fit", {}).get(unit) or _DEFAULT_UNIT_FIT[unit]
    return Usage(*(max(0.0, fit[k][0] + fit[k][1] * lanes) for k in KINDS))


def spm_words(model) -> int:
    """Scratchpad words the compiled program of ``model`` needs: the compiler's own layout
    (``vitaccel.compile.schedule.spm_layout``, from the model's shape), uncapped."""
    from vitaccel.compile.schedule import spm_words_needed

    return spm_words_needed(spec_of(model))


def spm_bram36(words: int, banks: int = 1) -> float:
    """BRAM36 of a scratchpad of ``words`` 16-byte words in ``banks`` memories of
    ``words / banks`` (each rounds up to whole BRAM on its own)."""
    return banks * memory_bram36(words // banks, 8 * WORD_BYTES, lutram_max_depth=0)


def spm_usage(words: int, memory: str = "bram", banks: int = 1) -> Usage:
    """The scratchpad of ``words`` 16-byte words on ``memory`` (``"bram"`` or ``"uram"``),
    in ``banks`` memories (``Design.datapath_bytes / 16``), each rounded on its own."""
    if memory == "uram":
        return Usage(uram=banks * memory_uram288(words // banks, 8 * WORD_BYTES))
    if memory != "bram":
        raise ValueError(f"spm memory must be 'bram' or 'uram', not {memory!r}")
    return Usage(bram36=spm_bram36(words, banks))


# The output writer's bank-parallel word path (rtl/spm MatmulOutWriter, banks > 1), Yosys xcup
# of the writer alone over the same writer with one bank (no word path):
#   3 groups x 16 columns, 4 banks: +1713 LUT, +655 FF; 2 banks: +780 LUT, +331 FF
#   2 groups x 16 columns, 4 banks: +609 LUT, +653 FF
# FF: a registered lane per bank (address, word, byte enables). LUT: the pieces' select per
# lane and the rotation onto the banks grow with the pieces (groups * cols / 16) a lane may
# take; priced per bank and piece beyond the first, exact at 3 x 16 x 4 banks (DeiT-Tiny's
# design) and above the others (2 banks: 856 for 780; 2 groups: 856 for 609).
WORD_WRITER_LUT_PER_BANK_PIECE = 1713 / (4 * 2)
WORD_WRITER_FF_PER_BANK = 655 / 4
# Its OUT_T part (odd Y strides, engine_timing.word_path_takes), the same writer before and
# after it at 3 x 16 x 4 banks: +4,356 LUT (per segment lane a (groups*cols/banks)-way
# select of the gathered lanes, priced per output lane), +142 FF (row counters, offsets).
WORD_WRITER_OUT_T_LUT_PER_LANE = 4356 / 48
WORD_WRITER_OUT_T_FF = 142


def word_writer_resources(groups: int, cols: int, banks: int, w4_share: float = 0.0) -> Usage:
    """What the output writer's word path adds (:func:`vitaccel.engine_timing.word_writes`:
    an all-W8 array, ``cols`` a multiple of 16, ``banks`` > 1); nothing otherwise."""
    if column_split(cols, w4_share)[1] or not word_writes(cols, banks):
        return Usage()  # (a mixed array: mapped_writer_resources)
    pieces = groups * cols // WORD_BYTES
    return Usage(
        lut=WORD_WRITER_LUT_PER_BANK_PIECE * banks * max(1, pieces - 1)
        + WORD_WRITER_OUT_T_LUT_PER_LANE * groups * cols,
        ff=WORD_WRITER_FF_PER_BANK * banks + WORD_WRITER_OUT_T_FF,
    )


# The mixed array's output writer (rtl/spm MappedOutWriter: the column map per position,
# the inverse map, the registered run table, the current run's registers and their L-way
# selects, the output register) over the all-W8 writer the shell's per-column share already
# holds (MatmulOutWriter, one bank), Yosys xcup of each alone, L = groups * cols output
# lanes (the writer after its one-hot run select, s25-map2):
#   1 x 8 (4 W8):    1668 / 1981 against 1660 / 1582 LUT / FF:     +8 LUT, +399 FF
#   1 x 16 (8 W8):   3566 / 3549 against 2806 / 2736:            +760 LUT, +813 FF
#   1 x 22 (16 W8):  6004 / 4900 against 3686 / 3614:           +2318 LUT, +1286 FF
#   2 x 12 (8 W8):   5868 / 5298 against 3834 / 3910:           +2034 LUT, +1388 FF
#   2 x 24 (16 W8): 11906 / 10182 against 6375 / 7366:          +5531 LUT, +2816 FF
# Least squares in L and L^2 (the current run's L-way selects of L entries): within 560
# LUT and 75 FF of every point (worst: +1759 LUT for +2318 at 1 x 22).
MAPPED_WRITER_LUT = (48.77, 1.4165)  # per L, per L^2
MAPPED_WRITER_FF = (53.77, 0.1067)
# The all-W8 writer alone (MatmulOutWriter, one bank; the "against" figures above), least
# squares in L: within 209 LUT and 11 FF of each point. A mixed top's W_SPM writer (rtl/spm
# MixedOutWriter: MappedOutWriter + MatmulOutWriter of the W8 columns, cols_w8 % 16 == 0,
# banks > 1) is priced as that writer of G*C8 lanes plus its word path: at 2 x (16 W8 + 4 W4),
# 4 banks, Yosys xcup of MixedOutWriter alone over MappedOutWriter alone (22,062 / 12,739
# against 13,318 / 6,879 LUT / FF, MappedOutWriter before its 300 MHz cut) +8,744 LUT,
# +5,860 FF; priced +8,403 / +5,853.
OUT_WRITER_LUT = (943.6, 115.62)  # constant, per L
OUT_WRITER_FF = (428.6, 144.62)


def mapped_writer_resources(groups: int, cols: int, w4_share: float, banks: int = 1) -> Usage:
    """What a mixed array's output writer adds over the all-W8 writer (in the shell's
    per-column share); nothing on an all-W8 array. On ``banks`` > 1 with W8 columns of
    whole words (:func:`vitaccel.engine_timing.word_writes` of the W8 columns: rtl/spm
    MixedOutWriter) also the W_SPM jobs' all-W8 writer of the W8 columns with its word path
    (:func:`word_writer_resources` of those columns)."""
    cols_w8, cols_w4 = column_split(cols, w4_share)
    if not cols_w4:
        return Usage()
    lanes = groups * cols
    mapped = Usage(
        lut=MAPPED_WRITER_LUT[0] * lanes + MAPPED_WRITER_LUT[1] * lanes**2,
        ff=MAPPED_WRITER_FF[0] * lanes + MAPPED_WRITER_FF[1] * lanes**2,
    )
    if not word_writes(cols_w8, banks):
        return mapped
    lanes8 = groups * cols_w8
    w8 = Usage(
        lut=OUT_WRITER_LUT[0] + OUT_WRITER_LUT[1] * lanes8,
        ff=OUT_WRITER_FF[0] + OUT_WRITER_FF[1] * lanes8,
    )
    return mapped + w8 + word_writer_resources(groups, cols_w8, banks)


def spm_memory(words: int, budget, *, max_util: float = 0.85) -> str:
    """The explorer's choice for the scratchpad (:func:`place_buffers`): URAM288 where the
    board has enough of it, else BRAM36."""
    return place_buffers({"spm": (1, words, 8 * WORD_BYTES)}, budget, max_util=max_util)["spm"]


# One more weight port: a DMAReader (AXI4 read master, 64-word output FIFO) and a W loader
# in the engine. A planning estimate until calibration.json has "weight_port".
WEIGHT_PORT_ESTIMATE = {"dsp48e2": 0, "lut": 450, "ff": 650, "bram36": 1.0}


def weight_ports_resources(ports: int) -> Usage:
    """What ``ports`` weight ports cost beyond the first (which is the shell's DMA)."""
    per = calibration().get("weight_port") or WEIGHT_PORT_ESTIMATE
    return Usage(*(per[k] * (ports - 1) for k in KINDS))


def shell_resources(columns: int = 0) -> tuple[Usage, str]:
    """The top beyond the modelled parts: a constant (controller, DMA, SPM address
    generators, RESADD, fused residual path) plus a share per output column (``groups *
    cols``: the fused GELU tables, the OUT_T gather buffer, the output writer's register)."""
    cal = calibration().get("shell")
    if cal and "const" in cal:
        return (
            Usage(*(cal["const"][k] + cal["per_column"][k] * columns for k in KINDS)),
            "calibrated",
        )
    return Usage(*(SHELL_ESTIMATE[k] for k in KINDS)), "estimate"


def design_resources(design: Design, *, spec=None) -> dict:
    """Per part and total usage of ``design``: {"parts": {...}, "total": Usage, "notes": ...}."""
    spec = spec_of(spec if spec is not None else design.model)
    a, nl = design.array, design.nonlinear
    buffers = engine_buffers(design, spec)
    parts = {
        "engine": engine_resources(
            a.groups,
            a.rows,
            a.cols,
            a.vector,
            a.w4_share,
            a.w4_kind,
            **buffers,
            x_memory=design.x_memory,
        ),  # fmt: skip
        "softmax": nonlinear_resources("softmax", nl.softmax_lanes),
        "layernorm": nonlinear_resources("layernorm", nl.layernorm_lanes),
        "gelu": nonlinear_resources("gelu", nl.gelu_lanes),
        "spm": spm_usage(
            design.spm_kib * 1024 // WORD_BYTES,
            design.spm_memory,
            design.datapath_bytes // WORD_BYTES,
        ),
    }
    if nl.softmax_output == "log2":
        # the engine's shift-add mode for log2-code P x V: measured on the 1x4x4x8 engine
        # (docs/gvsa.md, Yosys xcup), per W8 DSP lane
        lanes = a.groups * a.rows * (column_split(a.cols, a.w4_share)[0] // 2) * a.vector
        parts["log2_mode"] = Usage(
            lut=LOG2_LUT_PER_DSP_LANE * lanes, ff=LOG2_FF_PER_DSP_LANE * lanes
        )
    if design.weight_ports > 1:
        parts["weight_ports"] = weight_ports_resources(design.weight_ports)
    words = word_writer_resources(a.groups, a.cols, design.datapath_bytes // WORD_BYTES,
                                  a.w4_share)  # fmt: skip
    if words.lut:
        parts["word_writer"] = words
    mapped = mapped_writer_resources(a.groups, a.cols, a.w4_share,
                                     design.datapath_bytes // WORD_BYTES)  # fmt: skip
    if mapped.lut:
        parts["mapped_writer"] = mapped
    shell, shell_kind = shell_resources(a.groups * a.cols)
    parts["shell"] = shell
    total = Usage()
    for u in parts.values():
        total = total + u
    return {"parts": parts, "total": total, "buffers": buffers, "shell": shell_kind}


def check_fits(design: Design, *, spec=None) -> dict:
    """Raise :class:`~vitaccel.design.DesignError` (one line naming the field and the limit)
    when ``design``'s memories exceed its board's BRAM36 or URAM288, or the model's packed
    weights its DDR; return :func:`design_resources` otherwise.

    The whole device is the limit here (a design the explorer did not make may use more
    than its 85%); LUT, FF and DSP are left to the synthesis tools, whose figures are
    upper bounds of ours.
    """
    from vitaccel.boards import get_budget
    from vitaccel.design import DesignError

    budget = get_budget(design.board)
    used = design_resources(design, spec=spec)
    parts, total = used["parts"], used["total"]
    if total.uram > budget.uram:
        named = ", ".join(f"{k} {u.uram:.0f}" for k, u in parts.items() if u.uram)
        raise DesignError(
            f"design field 'spm_memory' / 'x_memory': the buffers on URAM need "
            f"{total.uram:.0f} URAM288 ({named}), board {budget.name} has {budget.uram}"
        )
    if total.bram36 > budget.bram36:
        named = ", ".join(f"{k} {u.bram36:.0f}" for k, u in parts.items() if u.bram36 >= 1)
        bram_only = [f for f in ("spm_memory", "x_memory") if getattr(design, f) == "bram"]
        fix = f" (or {' / '.join(bram_only)} 'uram')" if budget.uram and bram_only else ""
        raise DesignError(
            f"design field 'spm_kib' / 'input_buffer_kib' / 'weight_buffer_kib': the buffers "
            f"need {total.bram36:.0f} BRAM36 ({named}), board {budget.name} has "
            f"{budget.bram36}{fix}"
        )
    # every weight at one byte (W8; W4 layers take half): the packed stream's size; and a
    # spilling program's DDR scratch region (the residual stream), which the host allocates
    # with the image
    spec = spec_of(spec if spec is not None else design.model)
    weights = sum(op.weights for op in model_ops(spec))
    scratch = spill_scratch_bytes(spec, design.spm_kib * 1024 // WORD_BYTES)
    if weights + scratch > budget.ddr_bytes:
        region = f" and its DDR scratch region {scratch / 2**20:.2f} MiB" if scratch else ""
        raise DesignError(
            f"design field 'model': {design.model}'s weights take {weights / 2**30:.2f} GiB"
            f"{region}, board {budget.name}'s PS DDR holds {budget.ddr_bytes / 2**30:.0f} GiB"
        )
    return used


def spill_scratch_bytes(spec, spm_words: int) -> int:
    """Bytes of the DDR scratch region the program of ``spec`` in ``spm_words`` words of
    scratchpad needs (the spilled residual stream; 0 when it does not spill or does not
    compile, which the compiler reports itself)."""
    from vitaccel.compile.schedule import CompileError, scratch_bytes, spm_layout

    try:
        return scratch_bytes(spec) if spm_layout(spec, spm_words).spill_tile else 0
    except CompileError:
        return 0
