"""Instruction encoding and register map of the accelerator (docs/isa.md is the specification).

An instruction is 32 bytes: sixteen little-endian 16-bit fields ``f0 .. f15``, with
``f0 = opcode | flags << 8``. This module is the only encoder/decoder and the only register map; it
sits at the bottom of the package (like the design schema) because the compiler, the
interpreter, the RTL decoder and the host driver all read it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

__all__ = [
    "Op",
    "MatmulFlags",
    "FUSED_FLAGS",
    "residual_fusable",
    "SoftmaxFlags",
    "Instr",
    "INSTR_BYTES",
    "WORD_BYTES",
    "encode",
    "decode",
    "encode_program",
    "decode_program",
    "load",
    "store",
    "matmul",
    "softmax",
    "layernorm",
    "gelu",
    "resadd",
    "end",
    "Reg",
    "ACCEL_ID",
]

INSTR_BYTES = 32
WORD_BYTES = 16  # scratchpad word = AXI data beat


class Op(enum.IntEnum):
    END = 0
    LOAD = 1
    STORE = 2
    MATMUL = 3
    SOFTMAX = 4
    LAYERNORM = 5
    GELU = 6
    RESADD = 7


class MatmulFlags(enum.IntFlag):
    X_UNSIGNED = 1
    W_SPM = 2
    X_LOG2 = 4  # X holds 4-bit log2 codes q: products w << (15 - q) (log2 builds only)
    HEADS = 8
    OUT_T = 16
    GELU = 32  # Y = GELU table (f10) applied to every output byte (fused GELU)
    RESADD = 64  # Y = residual_add(A (f10, Y's stride), params f11, Y, shift f13) (fused)
    X_KEEP = 128  # X is the previous MATMUL's X, still in the engine (no X load)


# Flags that need W from DDR (they use f10..f13, which W_SPM jobs use for the W rows).
FUSED_FLAGS = MatmulFlags.GELU | MatmulFlags.RESADD


def residual_fusable(groups: int, cols: int) -> bool:
    """Whether an array can fuse RESADD into a MATMUL's output: each output step must cover
    whole 16-byte scratchpad words (``groups * cols`` a multiple of 16), so every output run
    reads exactly one word of A."""
    return (groups * cols) % WORD_BYTES == 0


class SoftmaxFlags(enum.IntFlag):
    LOG2 = 1  # output 4-bit log2 codes instead of uint8 probabilities (log2 builds only)


@dataclass(frozen=True)
class Instr:
    op: Op
    flags: int = 0
    fields: tuple[int, ...] = field(default_factory=tuple)  # f1 .. f15

    def __post_init__(self):
        # Canonical form: trailing zero fields dropped, so decode(encode(i)) == i.
        fields = tuple(int(v) for v in self.fields)
        while fields and fields[-1] == 0:
            fields = fields[:-1]
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "op", Op(self.op))
        object.__setattr__(self, "flags", int(self.flags))

    def f(self, i: int) -> int:
        """Field f_i (1..15); 0 when not given."""
        return self.fields[i - 1] if i - 1 < len(self.fields) else 0

    def u32(self, i: int) -> int:
        """The 32-bit value in fields f_i (low half) and f_{i+1}."""
        return self.f(i) | self.f(i + 1) << 16


def _u16(name: str, v: int) -> int:
    v = int(v)
    if not 0 <= v < 1 << 16:
        raise ValueError(f"instruction field {name} must fit 16 bits unsigned, got {v}")
    return v


def _split32(v: int) -> tuple[int, int]:
    v = int(v)
    if not 0 <= v < 1 << 32:
        raise ValueError(f"DDR offset must fit 32 bits, got {v}")
    return v & 0xFFFF, v >> 16


def encode(instr: Instr) -> bytes:
    fields = [int(instr.op) | int(instr.flags) << 8] + [
        _u16(f"f{i + 1}", v) for i, v in enumerate(instr.fields)
    ]
    if len(fields) > 16:
        raise ValueError(f"{instr.op.name}: at most 15 operand fields, got {len(fields) - 1}")
    fields += [0] * (16 - len(fields))
    return struct.pack("<16H", *fields)


def decode(raw: bytes) -> Instr:
    if len(raw) != INSTR_BYTES:
        raise ValueError(f"an instruction is {INSTR_BYTES} bytes, got {len(raw)}")
    f = struct.unpack("<16H", raw)
    op = f[0] & 0xFF
    try:
        op = Op(op)
    except ValueError:
        raise ValueError(f"unknown opcode {op}") from None
    return Instr(op, f[0] >> 8, tuple(f[1:]))


def encode_program(program: list[Instr]) -> bytes:
    return b"".join(encode(i) for i in program)


def decode_program(raw: bytes) -> list[Instr]:
    out = []
    for at in range(0, len(raw), INSTR_BYTES):
        instr = decode(raw[at : at + INSTR_BYTES])
        out.append(instr)
        if instr.op is Op.END:
            break
    return out


# ---- constructors with named operands -----------------------------------------------------


def end() -> Instr:
    return Instr(Op.END)


def load(*, spm: int, words: int, ddr: int) -> Instr:
    return Instr(Op.LOAD, 0, (spm, words, *_split32(ddr)))


def store(*, spm: int, words: int, ddr: int) -> Instr:
    return Instr(Op.STORE, 0, (spm, words, *_split32(ddr)))


def matmul(
    *,
    x: int,
    x_stride: int,
    tokens: int,
    k: int,
    n: int,
    y: int,
    y_stride: int,
    w_ddr: int | None = None,
    w_spm: int | None = None,
    w_stride: int = 0,
    mult: int = 0,
    shift: int = 0,
    heads: int = 0,
    head_x_step: int = 0,
    head_w_step: int = 0,
    head_y_step: int = 0,
    x_unsigned: bool = False,
    x_log2: bool = False,
    out_transposed: bool = False,
    gelu_table: int | None = None,
    residual: int | None = None,
    residual_params: int = 0,
    residual_shift: int = 0,
    x_keep: bool = False,
) -> Instr:
    """``Y = requant(X W^T + b)``; W from DDR (packed stream) or from the SPM (attention).

    Fused outputs (W from DDR only): ``gelu_table`` (SPM base of a 256-byte table) maps every
    output byte through it; ``residual`` (SPM base of A, rows with Y's stride) writes
    ``residual_add(A, ma, Y, mb, residual_shift)`` with the per-channel multipliers at
    ``residual_params`` (the RESADD parameter block). ``x_keep`` reuses the X the previous
    MATMUL loaded (same tokens and K, shared mode) instead of loading it again.
    """
    if (w_ddr is None) == (w_spm is None):
        raise ValueError(
            "matmul needs exactly one of w_ddr (packed weights) or w_spm (activation rows)"
        )
    if x_unsigned and x_log2:
        raise ValueError("matmul: x_unsigned and x_log2 are exclusive")
    fused = gelu_table is not None or residual is not None
    if gelu_table is not None and residual is not None:
        raise ValueError("matmul: gelu_table and residual are exclusive")
    if fused and w_spm is not None:
        raise ValueError("matmul: a fused GELU or residual add needs W from DDR (w_ddr)")
    if residual is not None and (heads or out_transposed):
        raise ValueError("matmul: a fused residual add needs shared mode, row-major output")
    if x_keep and heads:
        raise ValueError("matmul: x_keep needs shared mode")
    flags = MatmulFlags(0)
    if x_unsigned:
        flags |= MatmulFlags.X_UNSIGNED
    if x_log2:
        flags |= MatmulFlags.X_LOG2
    if out_transposed:
        flags |= MatmulFlags.OUT_T
    if heads:
        flags |= MatmulFlags.HEADS
    if x_keep:
        flags |= MatmulFlags.X_KEEP
    f13 = head_x_step
    if w_spm is not None:
        flags |= MatmulFlags.W_SPM
        f89 = (mult, shift)
        f1011 = (w_spm, w_stride)
    else:
        f89 = _split32(w_ddr)
        f1011 = (0, 0)
        if gelu_table is not None:
            flags |= MatmulFlags.GELU
            f1011 = (gelu_table, 0)
        elif residual is not None:
            flags |= MatmulFlags.RESADD
            f1011 = (residual, residual_params)
            f13 = residual_shift
    return Instr(
        Op.MATMUL,
        int(flags),
        (
            x,
            x_stride,
            tokens,
            k,
            n,
            y,
            y_stride,
            *f89,
            *f1011,
            max(heads, 1),
            f13,
            head_w_step,
            head_y_step,
        ),
    )


def softmax(
    *,
    src: int,
    src_stride: int,
    rows: int,
    cols: int,
    dst: int,
    dst_stride: int,
    in_shift: int,
    log2: bool = False,
) -> Instr:
    """Row-wise E2Softmax: uint8 probabilities, or with ``log2`` one 4-bit code per byte."""
    flags = SoftmaxFlags.LOG2 if log2 else SoftmaxFlags(0)
    return Instr(Op.SOFTMAX, int(flags), (src, src_stride, rows, cols, dst, dst_stride, in_shift))


def layernorm(
    *,
    src: int,
    src_stride: int,
    rows: int,
    cols: int,
    dst: int,
    dst_stride: int,
    params: int,
    recip_mult: int,
    recip_shift: int,
    out_shift: int,
    eps_q: int,
) -> Instr:
    return Instr(
        Op.LAYERNORM,
        0,
        (
            src,
            src_stride,
            rows,
            cols,
            dst,
            dst_stride,
            params,
            recip_mult,
            recip_shift,
            out_shift,
            eps_q,
        ),
    )


def gelu(
    *, src: int, src_stride: int, rows: int, cols: int, dst: int, dst_stride: int, table: int
) -> Instr:
    return Instr(Op.GELU, 0, (src, src_stride, rows, cols, dst, dst_stride, table))


def resadd(
    *,
    a: int,
    a_stride: int,
    rows: int,
    cols: int,
    dst: int,
    dst_stride: int,
    b: int,
    b_stride: int,
    params: int,
    shift: int,
) -> Instr:
    return Instr(
        Op.RESADD, 0, (a, a_stride, rows, cols, dst, dst_stride, b, b_stride, params, shift)
    )


# ---- host-visible registers (AXI4-Lite byte offsets, docs/isa.md) ------------------------


class Reg(enum.IntEnum):
    CTRL = 0x00
    STATUS = 0x04
    PROG_ADDR_LO = 0x08
    PROG_ADDR_HI = 0x0C
    DATA_BASE_LO = 0x10
    DATA_BASE_HI = 0x14
    CYCLES_LO = 0x18
    CYCLES_HI = 0x1C
    PC = 0x20
    ID = 0x24
    CONFIG = 0x28


CTRL_START = 1
CTRL_IRQ_ENABLE = 2
CTRL_IRQ_CLEAR = 4
STATUS_BUSY = 1
STATUS_DONE = 2
STATUS_ERROR = 4
ACCEL_ID = 0x56544143  # "VTAC"
