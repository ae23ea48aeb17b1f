"""Instruction encoding and register map of the accelerator (docs/isa.md is the specification).

An instruction is 32 bytes: sixteen little-endian 16-bit fields ``f0 .. f15``, with
``f0 = opcode | flags << 8``. This module is the only encoder/decoder and the only register map; it
sits at the bottom of the package (like the design schema) because the compiler, the
interpreter, the RTL decoder and the host driver all read it.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "Op",
    "MatmulFlags",
    "FUSED_FLAGS",
    "residual_fusable",
    "SoftmaxFlags",
    "LayerNormFlags",
    "NoFlags",
    "CHAIN_OPS",
    "chained",
    "chain_fits",
    "Field",
    "Format",
    "FORMATS",
    "field_bits",
    "flag_bits",
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


def residual_fusable(groups: int, cols: int, cols_w4: int = 0) -> bool:
    """Whether an array can fuse RESADD into a MATMUL's output: on an all-W8 array each
    output step must cover whole 16-byte scratchpad words (``groups * cols`` a multiple of
    16), so every output run reads exactly one word of A; on a mixed array (``cols_w4`` >
    0) the output writer's runs never cross a word and the residual path takes byte runs
    at any offset (``ResidualRuns(byte_runs=True)``), so any shape fuses."""
    return cols_w4 > 0 or (groups * cols) % WORD_BYTES == 0


class SoftmaxFlags(enum.IntFlag):
    LOG2 = 1  # output 4-bit log2 codes instead of uint8 probabilities (log2 builds only)
    CHAIN = 2  # the rows are the next MATMUL's X, handed over as written (chain_fits)


class LayerNormFlags(enum.IntFlag):
    CHAIN = 1  # the rows are the next MATMUL's X, handed over as written (chain_fits)


# Units whose output rows may be chained into the next MATMUL's X load (their CHAIN flag).
CHAIN_OPS = (Op.SOFTMAX, Op.LAYERNORM)


# ---- the field table: the single source of every instruction's layout ----------------------


class NoFlags(enum.IntFlag):
    """Opcodes without flags."""

    NONE = 0


@dataclass(frozen=True)
class Field:
    """One named operand: ``width`` bits starting at 16-bit word ``word`` (1..15).

    A 32-bit field spans words ``word`` (low half) and ``word + 1``. Fields of one opcode
    may share words when the flags choose between meanings: ``when`` names the flag that
    selects this meaning (``"~NAME"``: the flag clear); such aliases are never given together.
    """

    name: str
    word: int
    width: int = 16
    doc: str = ""
    when: str = ""

    @property
    def lsb(self) -> int:
        """Bit position of the field's lowest bit within the 256-bit instruction."""
        return 16 * self.word

    @property
    def words(self) -> range:
        return range(self.word, self.word + self.width // 16)

    def applies(self, flags: enum.IntFlag) -> bool:
        """Whether this meaning of the field's words is the one ``flags`` select."""
        if not self.when:
            return True
        name = self.when.removeprefix("~")
        return (type(flags)[name] in flags) != self.when.startswith("~")


@dataclass(frozen=True)
class Format:
    """The layout of one opcode: its flag bits and its fields, by name."""

    op: Op
    fields: tuple[Field, ...]
    flags: type[enum.IntFlag] = NoFlags
    doc: str = ""

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.op.name} has no field {name!r}; fields: {', '.join(self.names())}")

    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


def _rows(src: str, dst: str) -> tuple[Field, ...]:
    """The operand block every row-wise unit shares: f1..f6 (docs/isa.md)."""
    return (
        Field(src, 1, doc=f"{src} base (SPM word)"),
        Field(f"{src}_stride", 2, doc=f"{src} row stride (words)"),
        Field("rows", 3),
        Field("cols", 4),
        Field(dst, 5, doc=f"{dst} base (SPM word)"),
        Field(f"{dst}_stride", 6, doc=f"{dst} row stride (words)"),
    )


_DMA = (
    Field("spm", 1, doc="SPM base (word)"),
    Field("words", 2, doc="16-byte words to copy"),
    Field("ddr", 3, 32, doc="DDR byte offset from DATA_BASE"),
)

#: The field table: one :class:`Format` per opcode. The encoder, the decoder, the
#: constructors, the interpreter and the RTL decoder (:func:`field_bits`) all read it.
FORMATS: dict[Op, Format] = {
    f.op: f
    for f in (
        Format(Op.END, ()),
        Format(Op.LOAD, _DMA, doc="DDR -> SPM"),
        Format(Op.STORE, _DMA, doc="SPM -> DDR"),
        Format(
            Op.MATMUL,
            (
                Field("x", 1, doc="X base"),
                Field("x_stride", 2),
                Field("tokens", 3, doc="T"),
                Field("k", 4, doc="K"),
                Field("n", 5, doc="N"),
                Field("y", 6, doc="Y base"),
                Field("y_stride", 7),
                Field("w_ddr", 8, 32, doc="DDR byte offset of the packed W stream", when="~W_SPM"),
                Field("mult", 8, doc="requant multiplier (every column)", when="W_SPM"),
                Field("shift", 9, doc="requant shift (every column)", when="W_SPM"),
                Field("w_spm", 10, doc="W base (SPM rows)", when="W_SPM"),
                Field("gelu_table", 10, doc="GELU table base (16 words)", when="GELU"),
                Field("residual", 10, doc="A base (A has Y's stride)", when="RESADD"),
                Field("w_stride", 11, doc="W stride (words)", when="W_SPM"),
                Field("residual_params", 11, doc="RESADD parameter block", when="RESADD"),
                Field("heads", 12, doc="heads in this job (1 in shared mode)"),
                Field("head_x_step", 13, doc="X base step per head", when="HEADS"),
                Field("residual_shift", 13, doc="residual-add shift", when="RESADD"),
                Field("head_w_step", 14, doc="W base step per head", when="HEADS"),
                Field("head_y_step", 15, doc="Y base step per head", when="HEADS"),
                Field(
                    "w_steps",
                    15,
                    doc="output steps of the packed W stream (0: ceil(N/(G*C)))",
                    when="~HEADS",
                ),
            ),
            MatmulFlags,
            doc="Y = requant(X W^T + b) on the GVSA",
        ),
        Format(
            Op.SOFTMAX,
            (*_rows("src", "dst"), Field("in_shift", 7)),
            SoftmaxFlags,
            doc="row-wise E2Softmax",
        ),
        Format(
            Op.LAYERNORM,
            (
                *_rows("src", "dst"),
                Field("params", 7, doc="parameter block base (SPM)"),
                Field("recip_mult", 8),
                Field("recip_shift", 9),
                Field("out_shift", 10),
                Field("eps_q", 11),
            ),
            LayerNormFlags,
            doc="row-wise AILayerNorm",
        ),
        Format(
            Op.GELU,
            (*_rows("src", "dst"), Field("table", 7, doc="table base (SPM, 16 words)")),
            doc="256-entry table lookup",
        ),
        Format(
            Op.RESADD,
            (
                *_rows("a", "dst"),
                Field("b", 7, doc="B base"),
                Field("b_stride", 8),
                Field("params", 9, doc="parameter block base (SPM)"),
                Field("shift", 10),
            ),
            doc="residual_add(A, mult_a, B, mult_b, shift)",
        ),
    )
}


def _check_table() -> None:
    # Words 1..15 only; two fields of one opcode share words only as flag-selected aliases.
    for fmt in FORMATS.values():
        for i, a in enumerate(fmt.fields):
            if a.width not in (16, 32) or a.word < 1 or a.words[-1] > 15:
                raise AssertionError(f"{fmt.op.name}.{a.name}: bad position or width")
            if a.name in _RESERVED:
                raise AssertionError(f"{fmt.op.name}.{a.name}: name taken by Instr")
            for b in fmt.fields[i + 1 :]:
                if set(a.words) & set(b.words) and not (a.when and b.when):
                    raise AssertionError(f"{fmt.op.name}: {a.name} overlaps {b.name}")


_RESERVED = {"op", "flags", "operands", "label", "format", "from_operands", "get", "replace",
             "fields"}  # fmt: skip
_check_table()

OPCODE_BITS = (0, 8)  # (lsb, width) of the opcode in word f0
FLAGS_BITS = (8, 8)  # (lsb, width) of the flags byte in word f0


def field_bits(op: Op | str) -> dict[str, tuple[int, int]]:
    """``{field name: (lsb, width)}`` of ``op``'s fields within the 256-bit instruction
    (aliases included: they may overlap). What the RTL decoder slices, without raw indices."""
    return {f.name: (f.lsb, f.width) for f in FORMATS[_op(op)].fields}


def flag_bits(op: Op | str) -> dict[str, int]:
    """``{flag name: bit}`` of ``op``'s flags, bit positions within the 256-bit instruction
    (the flags byte is bits 8..15; bit ``b`` of the flags is instruction bit ``8 + b``)."""
    return {f.name: FLAGS_BITS[0] + f.value.bit_length() - 1 for f in FORMATS[_op(op)].flags}


def _op(op: Op | str) -> Op:
    return Op[op] if isinstance(op, str) else Op(op)


def _check(op: Op, f: Field, v) -> int:
    v = int(v)
    if not 0 <= v < 1 << f.width:
        what = "DDR offset" if f.width == 32 else "instruction field"
        raise ValueError(
            f"{what} {op.name}.{f.name} (f{f.word}) must fit {f.width} bits unsigned, got {v}"
        )
    return v


@dataclass(frozen=True, init=False, repr=False)
class Instr:
    """One instruction: opcode, flags (the opcode's flag enum) and the 15 operand words.

    Build it by field name, ``Instr(Op.LOAD, spm=3, words=10, ddr=0x1000)`` (or with the
    constructors below, which add the checks docs/isa.md states), read it by field name,
    ``instr["tokens"]`` or ``instr.tokens``. ``operands`` holds the raw words f1 .. f15
    (always 15). ``label`` names what the instruction computes (the model operation, e.g.
    ``"blocks.0.attn.qkv"``, as the scheduler emits it) for the cost model's per-layer
    figures and the compiler's constant packing; it is not encoded and not compared.
    """

    op: Op
    flags: enum.IntFlag
    operands: tuple[int, ...]
    label: str = field(default="", compare=False)

    def __init__(
        self, op: Op | str, flags: int = 0, /, *, label: str = "", **fields: int | None
    ) -> None:
        op = _op(op)
        fmt = FORMATS[op]
        words = [0] * 15
        owner: dict[int, str] = {}
        for name, value in fields.items():
            if value is None:
                continue
            f = fmt.field(name)
            v = _check(op, f, value)
            for i, w in enumerate(f.words):
                if w in owner:
                    raise ValueError(
                        f"{op.name}: fields {owner[w]} and {name} share word f{w}; give one"
                    )
                owner[w] = name
                words[w - 1] = v >> (16 * i) & 0xFFFF
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "flags", fmt.flags(int(flags)))
        object.__setattr__(self, "operands", tuple(words))
        object.__setattr__(self, "label", label)

    @classmethod
    def from_operands(
        cls, op: Op | str, flags: int, operands: tuple[int, ...], label: str = ""
    ) -> Instr:
        """An instruction from its raw operand words f1 .. (missing ones are 0)."""
        if len(operands) > 15:
            raise ValueError(f"{_op(op).name}: at most 15 operand words, got {len(operands)}")
        instr = cls(op, flags, label=label)
        words = tuple(int(w) for w in operands) + (0,) * (15 - len(operands))
        for i, w in enumerate(words):
            if not 0 <= w < 1 << 16:
                raise ValueError(f"instruction field f{i + 1} must fit 16 bits unsigned, got {w}")
        object.__setattr__(instr, "operands", words)
        return instr

    @property
    def format(self) -> Format:
        return FORMATS[self.op]

    def _decoded(self) -> dict[str, int]:
        # every field's value, decoded once (the cost model and the interpreter read fields
        # by name in their inner loops)
        values = self.__dict__.get("_values")
        if values is None:
            ops = self.operands
            values = {
                f.name: ops[f.word - 1] if f.width == 16 else ops[f.word - 1] | ops[f.word] << 16
                for f in FORMATS[self.op].fields
            }
            object.__setattr__(self, "_values", values)
        return values

    def __getitem__(self, name: str) -> int:
        values = self._decoded()
        if name not in values:
            self.format.field(name)  # raises KeyError naming the opcode's fields
        return values[name]

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):
            raise AttributeError(name)
        value = self._decoded().get(name)
        if value is None:
            try:
                self.format.field(name)
            except KeyError as e:
                raise AttributeError(e.args[0]) from None
        return value

    def get(self, name: str, default: int | None = None) -> int | None:
        """Field ``name``, or ``default`` when this opcode has no such field."""
        try:
            return self[name]
        except KeyError:
            return default

    def replace(self, flags: int | None = None, **fields: int) -> Instr:
        """A copy with ``flags`` (when given) and the named fields changed (same label)."""
        words = list(self.operands)
        for name, value in fields.items():
            f = self.format.field(name)
            v = _check(self.op, f, value)
            for i, w in enumerate(f.words):
                words[w - 1] = v >> (16 * i) & 0xFFFF
        flags = self.flags if flags is None else flags
        return Instr.from_operands(self.op, int(flags), tuple(words), self.label)

    def fields(self) -> dict[str, int]:
        """The fields this instruction's flags select (no aliases), by name, in word order."""
        return {f.name: self[f.name] for f in self.format.fields if f.applies(self.flags)}

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.fields().items() if v)
        flags = f", flags={self.flags!r}" if int(self.flags) else ""
        label = f", label={self.label!r}" if self.label else ""
        return f"Instr({self.op.name}{flags}{', ' if shown else ''}{shown}{label})"


def encode(instr: Instr) -> bytes:
    return struct.pack("<16H", int(instr.op) | int(instr.flags) << 8, *instr.operands)


def decode(raw: bytes) -> Instr:
    if len(raw) != INSTR_BYTES:
        raise ValueError(f"an instruction is {INSTR_BYTES} bytes, got {len(raw)}")
    f = struct.unpack("<16H", raw)
    op = f[0] & 0xFF
    try:
        op = Op(op)
    except ValueError:
        raise ValueError(f"unknown opcode {op}") from None
    return Instr.from_operands(op, f[0] >> 8, f[1:])


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


# ---- constructors with the checks docs/isa.md states ---------------------------------------


def _constructor(op: Op) -> Callable[..., Instr]:
    """``Instr(op, **fields)`` with every field of ``op``'s format required by name: the
    constructor of an opcode whose fields need no cross-checks (all but MATMUL, SOFTMAX)."""
    names = FORMATS[op].names()

    def make(*, label: str = "", **fields: int) -> Instr:
        missing = [n for n in names if n not in fields]
        if missing:
            raise TypeError(f"{op.name.lower()}() needs the fields {', '.join(missing)}")
        return Instr(op, label=label, **fields)

    make.__name__ = make.__qualname__ = op.name.lower()
    make.__doc__ = f"{op.name}: {FORMATS[op].doc or op.name}; fields {', '.join(names) or '-'}."
    return make


end = _constructor(Op.END)
load = _constructor(Op.LOAD)
store = _constructor(Op.STORE)
layernorm = _constructor(Op.LAYERNORM)
gelu = _constructor(Op.GELU)
resadd = _constructor(Op.RESADD)


# fmt: off
def matmul(
    *, x: int, x_stride: int, tokens: int, k: int, n: int, y: int, y_stride: int,
    w_ddr: int | None = None, w_spm: int | None = None, w_stride: int = 0, mult: int = 0,
    shift: int = 0, heads: int = 0, head_x_step: int = 0, head_w_step: int = 0,
    head_y_step: int = 0, x_unsigned: bool = False, x_log2: bool = False,
    out_transposed: bool = False, gelu_table: int | None = None, residual: int | None = None,
    residual_params: int = 0, residual_shift: int = 0, x_keep: bool = False, label: str = "",
) -> Instr:
    # fmt: on
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
    F = MatmulFlags
    flags = (
        (F.X_UNSIGNED if x_unsigned else 0)
        | (F.X_LOG2 if x_log2 else 0)
        | (F.OUT_T if out_transposed else 0)
        | (F.HEADS if heads else 0)
        | (F.X_KEEP if x_keep else 0)
        | (F.W_SPM if w_spm is not None else 0)
        | (F.GELU if gelu_table is not None else 0)
        | (F.RESADD if residual is not None else 0)
    )
    common = dict(x=x, x_stride=x_stride, tokens=tokens, k=k, n=n, y=y, y_stride=y_stride)
    heads_fields = dict(heads=max(heads, 1), head_w_step=head_w_step, head_y_step=head_y_step)
    if w_spm is not None:
        w = dict(mult=mult, shift=shift, w_spm=w_spm, w_stride=w_stride, head_x_step=head_x_step)
    elif residual is not None:
        w = dict(w_ddr=w_ddr, residual=residual, residual_params=residual_params,
                 residual_shift=residual_shift)  # fmt: skip
    else:
        w = dict(w_ddr=w_ddr, gelu_table=gelu_table, head_x_step=head_x_step)
    return Instr(Op.MATMUL, flags, label=label, **common, **w, **heads_fields)


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
    label: str = "",
) -> Instr:
    """Row-wise E2Softmax: uint8 probabilities, or with ``log2`` one 4-bit code per byte."""
    flags = SoftmaxFlags.LOG2 if log2 else SoftmaxFlags(0)
    return Instr(Op.SOFTMAX, flags, label=label, src=src, src_stride=src_stride, rows=rows, cols=cols,
                 dst=dst, dst_stride=dst_stride, in_shift=in_shift)  # fmt: skip


# ---- chains: a unit's rows handed to the next MATMUL's X load -------------------------------


def chained(instr: Instr) -> bool:
    """Whether ``instr`` is a SOFTMAX / LAYERNORM with its CHAIN flag set."""
    return instr.op in CHAIN_OPS and bool(instr.flags & type(instr.flags).CHAIN)


def _words_span(base: int, rows: int, stride: int, cols: int) -> tuple[int, int]:
    """[first, last) scratchpad words of ``rows`` rows of ``cols`` bytes, ``stride`` apart."""
    return base, base + (rows - 1) * stride + max(1, -(-cols // WORD_BYTES))


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def chain_fits(unit: Instr, mm: Instr) -> str | None:
    """Why ``unit`` (a SOFTMAX / LAYERNORM) cannot hand its output rows to ``mm`` as its X
    while both run, or None when it can (docs/isa.md, "Chains").

    A chain needs: ``mm`` a MATMUL that loads its X (not X_KEEP); the unit's output rows
    exactly the rows its X builder reads, in the builder's order (shared mode: ``tokens``
    rows of ``k`` bytes at ``x``, ``x_stride`` apart; heads mode: head after head, each
    ``tokens`` rows, so ``head_x_step == tokens * x_stride``); and nothing the two read or
    write while they overlap in conflict: the MATMUL's output rows (Y, heads and OUT_T
    included) clear of the unit's input and output rows, the MATMUL's scratchpad reads
    (W_SPM, the residual rows) clear of the unit's output rows. The regions are compared
    as word ranges (first to last word), which may refuse a chain of interleaved tensors
    but never admits a conflict. The design's own conditions (the unit's lanes are the X
    beat) are :func:`vitaccel.compile.schedule`'s.
    """
    if unit.op not in CHAIN_OPS:
        return f"{unit.op.name} does not chain (only SOFTMAX, LAYERNORM)"
    if mm.op is not Op.MATMUL:
        return f"the next instruction is {mm.op.name}, not a MATMUL"
    fl = mm.flags
    if MatmulFlags.X_KEEP in fl:
        return "the MATMUL keeps the previous X (X_KEEP): it loads none"
    heads = mm.heads if MatmulFlags.HEADS in fl else 1
    if (unit.dst, unit.dst_stride, unit.cols) != (mm.x, mm.x_stride, mm.k):
        return (
            f"the unit writes rows of {unit.cols} bytes at {unit.dst} (stride "
            f"{unit.dst_stride}); the MATMUL reads X rows of {mm.k} at {mm.x} (stride "
            f"{mm.x_stride})"
        )
    if unit.rows != heads * mm.tokens:
        return f"the unit writes {unit.rows} rows; the MATMUL reads {heads} x {mm.tokens}"
    if heads > 1 and mm.head_x_step != mm.tokens * mm.x_stride:
        return "the MATMUL's heads are not one after another (head_x_step != tokens * x_stride)"
    src = _words_span(unit.src, unit.rows, unit.src_stride, unit.cols)
    dst = _words_span(unit.dst, unit.rows, unit.dst_stride, unit.cols)
    out_t = MatmulFlags.OUT_T in fl
    y_rows, y_cols = (mm.n, mm.tokens) if out_t else (mm.tokens, mm.n)
    y_step = mm.head_y_step if heads > 1 else 0
    first, last = _words_span(mm.y, y_rows, mm.y_stride, y_cols)
    y = (first, last + (heads - 1) * y_step)
    if _overlap(y, src) or _overlap(y, dst):
        return "the MATMUL's output rows overlap the unit's input or output rows"
    reads = []
    if MatmulFlags.W_SPM in fl:
        w_step = mm.head_w_step if heads > 1 else 0
        first, last = _words_span(mm.w_spm, mm.n, mm.w_stride, mm.k)
        reads.append((first, last + (heads - 1) * w_step))
    if MatmulFlags.RESADD in fl:
        reads.append(_words_span(mm.residual, mm.tokens, mm.y_stride, mm.n))
    if any(_overlap(r, dst) for r in reads):
        return "the MATMUL reads scratchpad rows (W or residual) the unit is writing"
    return None


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
