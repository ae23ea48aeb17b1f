"""Compile an IntViT (the golden model) for a Design into a program and one DDR memory image.

The layout of the image (all offsets relative to the DATA_BASE register, 4 KiB aligned
sections)::

    program      32-byte instructions, END last
    constants    everything the SPM needs before the first layer: LayerNorm parameter
                 blocks, residual-add multipliers, GELU tables, the positional table, the
                 class-token row (one LOAD brings it all in)
    weights      one packed W stream per linear layer (docs/gvsa.md), read by MATMUL
    input        the image's int8 patches in SPM row layout (written by the host per image)
    output       the int8 logits (read by the host)

Scratchpad plan: a bump allocator over 16-byte words; every 2-D tensor is row-major with
rows padded to whole words (docs/isa.md). In the standard layout the residual stream
ping-pongs between two buffers so no MATMUL reads and writes the same rows; the compact
layout (models that need more than the ISA's 1 MiB otherwise, e.g. DeiT-Base) trades that
and the resident per-block constants for one LOAD per block, in-place residual adds and
attention in chunks of heads (``spm_layout``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vitaccel import isa
from vitaccel.isa import WORD_BYTES, Instr
from vitaccel.quant.ref import LayerNormParams

if TYPE_CHECKING:
    from vitaccel.models.golden import IntLinear, IntViT

__all__ = [
    "BLOCK_CONSTS",
    "MAX_SPM_WORDS",
    "const_ddr",
    "spm_layout",
    "spm_words_needed",
    "Tensor",
    "Compiled",
    "compile_model",
    "CompileError",
    "words_for",
    "spm_rows",
    "WCodec",
]

SECTION_ALIGN = 4096


class CompileError(ValueError):
    pass


def words_for(cols: int, elem_bytes: int = 1) -> int:
    return max(1, math.ceil(cols * elem_bytes / WORD_BYTES))


@dataclass(frozen=True)
class Tensor:
    """A 2-D tensor in the scratchpad: ``rows x cols`` elements, ``stride`` words per row."""

    name: str
    base: int
    rows: int
    cols: int
    stride: int
    elem_bytes: int = 1

    @property
    def words(self) -> int:
        return self.rows * self.stride

    def row(self, r: int) -> int:
        return self.base + r * self.stride


def spm_rows(values: np.ndarray, stride: int, elem_bytes: int = 1) -> bytes:
    """Lay a 2-D integer array out as SPM rows (little-endian elements, zero padding)."""
    values = np.asarray(values)
    rows, cols = values.shape
    dtype = {1: "<i1", 2: "<i2", 4: "<i4"}[elem_bytes]
    buf = np.zeros((rows, stride * WORD_BYTES), dtype=np.uint8)
    buf[:, : cols * elem_bytes] = (
        np.ascontiguousarray(values.astype(dtype)).view(np.uint8).reshape(rows, -1)
    )
    return buf.tobytes()


class WCodec:
    """Packs a linear layer into the array's W stream (and back, for the interpreter).

    The concrete format belongs to the matmul engine (docs/gvsa.md); this base class is the
    interface the compiler and interpreter use.
    """

    def pack(
        self, q: np.ndarray, kind: np.ndarray, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray
    ) -> bytes:
        raise NotImplementedError

    def unpack(
        self, raw: bytes, n: int, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def stream_bytes(self, n: int, k: int) -> int:
        raise NotImplementedError


@dataclass
class Compiled:
    """The program, the memory image and where the host puts and finds data."""

    program: list[Instr]
    image: bytearray
    input_offset: int
    input_bytes: int
    output_offset: int
    output_bytes: int
    spm_words: int
    tensors: dict[str, Tensor] = field(default_factory=dict)
    compact: bool = False  # the compact scratchpad layout (spm_layout)
    att_heads: int = 0  # heads per QK^T / SOFTMAX / P x V chunk
    patches: int = 0
    patch_dim: int = 0
    classes: int = 0

    def image_with_input(self, patches: np.ndarray) -> bytearray:
        """The memory image with one image's int8 patches (patches x patch_dim) filled in."""
        t = self.tensors["patches"]
        raw = spm_rows(np.asarray(patches).reshape(t.rows, t.cols), t.stride)
        img = bytearray(self.image)
        img[self.input_offset : self.input_offset + len(raw)] = raw
        return img

    def read_logits(self, image: bytes | bytearray) -> np.ndarray:
        raw = bytes(image[self.output_offset : self.output_offset + self.classes])
        return np.frombuffer(raw, dtype=np.int8).astype(np.int64)


class _Alloc:
    def __init__(self, limit: int):
        self.next = 0
        self.limit = limit
        self.tensors: dict[str, Tensor] = {}
        self.compact = False  # the compact layout (spm_layout)
        self.att_heads = 0  # heads whose attention logits are in the SPM at once

    def tensor(self, name: str, rows: int, cols: int, elem_bytes: int = 1) -> Tensor:
        t = Tensor(name, self.next, rows, cols, words_for(cols, elem_bytes), elem_bytes)
        self.next += t.words
        if self.next > self.limit:
            if self.limit < MAX_SPM_WORDS:
                hint = "raise spm_kib or use a smaller model"
            elif self.compact:
                hint = "the ISA addresses at most 1024 KiB, even with the compact layout"
            else:
                hint = "the ISA addresses at most 1024 KiB"
            raise CompileError(
                f"scratchpad too small: '{name}' needs words up to {self.next}, the design has "
                f"{self.limit} ({hint})"
            )
        self.tensors[name] = t
        return t

    def block(self, name: str, nbytes: int) -> Tensor:
        return self.tensor(name, 1, nbytes)

    def alias(self, name: str, of: str, rows: int | None = None, cols: int | None = None) -> Tensor:
        """A tensor at the base of ``of`` (whose lifetime has ended, or an in-place result),
        of the same shape unless given; it must fit in ``of``'s words."""
        o = self.tensors[of]
        rows, cols = (o.rows, o.cols) if rows is None else (rows, cols)
        t = Tensor(name, o.base, rows, cols, words_for(cols, o.elem_bytes), o.elem_bytes)
        if t.words > o.words:  # pragma: no cover - the layout below guarantees it
            raise CompileError(f"SPM alias '{name}' does not fit in '{of}'")
        self.tensors[name] = t
        return t


def _ln_block(p: LayerNormParams) -> np.ndarray:
    c = p.channels
    if np.abs(p.bias).max(initial=0) >= 2**31 or np.abs(p.gain).max(initial=0) >= 2**15:
        raise CompileError("LayerNorm gain/bias do not fit int16/int32; lower out_shift")
    raw = np.zeros((c, 8), dtype=np.uint8)
    raw[:, 0] = np.asarray(p.alpha, dtype=np.uint8)
    raw[:, 2:4] = np.asarray(p.gain, dtype="<i2").view(np.uint8).reshape(c, 2)
    raw[:, 4:8] = np.asarray(p.bias, dtype="<i4").view(np.uint8).reshape(c, 4)
    return raw.reshape(-1)


def _resadd_block(mult_a: np.ndarray, mult_b: np.ndarray, channels: int) -> np.ndarray:
    ma = np.broadcast_to(np.asarray(mult_a), (channels,)).astype("<u2")
    mb = np.broadcast_to(np.asarray(mult_b), (channels,)).astype("<u2")
    return np.stack(
        [ma.view(np.uint8).reshape(-1, 2), mb.view(np.uint8).reshape(-1, 2)], axis=1
    ).reshape(-1)


def _check_fits(name: str, value: int, bits: int) -> int:
    value = int(value)
    if not 0 <= value < 1 << bits:
        raise CompileError(f"{name} = {value} does not fit {bits} bits unsigned")
    return value


# Constant blocks in the SPM, in load order: name -> bytes (or (rows, cols) for tensors).
def _const_sizes(spec) -> list[tuple[str, int | tuple[int, int]]]:
    D = spec.embed_dim
    sizes: list[tuple[str, int | tuple[int, int]]] = [
        ("pos_q", (spec.patches, D)),
        ("pos_add.params", 4 * D),
        ("cls_row", (1, D)),
    ]
    for i in range(spec.depth):
        sizes += [
            (f"blocks.{i}.norm1.params", 8 * D),
            (f"blocks.{i}.add1.params", 4 * D),
            (f"blocks.{i}.norm2.params", 8 * D),
            (f"blocks.{i}.gelu.table", 256),
            (f"blocks.{i}.add2.params", 4 * D),
        ]
    return sizes + [("norm.params", 8 * D)]


# The ISA's 16-bit scratchpad word addresses: at most 1 MiB.
MAX_SPM_WORDS = 1 << 16


def const_ddr(spec) -> dict[str, tuple[int, int]]:
    """The constants section in DDR: name -> (word offset in the section, words), in
    ``_const_sizes`` order (the standard layout's SPM constant region, byte for byte)."""
    out, at = {}, 0
    for name, size in _const_sizes(spec):
        words = size[0] * words_for(size[1]) if isinstance(size, tuple) else words_for(size)
        out[name] = (at, words)
        at += words
    return out


# A block's constants, consecutive in DDR (the compact layout LOADs them before the block).
BLOCK_CONSTS = ("norm1.params", "add1.params", "norm2.params", "gelu.table", "add2.params")


def spm_layout(spec, spm_words: int = MAX_SPM_WORDS, compact: bool | None = None) -> _Alloc:
    """Where everything lives in the scratchpad. Needs only the model's shape, so a build can
    refuse a model that does not fit before it spends minutes quantising it
    (:class:`CompileError` when it does not fit).

    The **standard** layout: constants (loaded once, first), the two residual buffers and the
    final LayerNorm/logits rows are fixed; the rest shares one region whose contents change
    by phase, as lifetimes allow (the program's instruction order, docs/isa.md "The compiled
    program"):

    * embedding: ``patches``, ``patch_embed``;
    * attention: ``ln`` (LN1 out; ``attn.context`` takes its place once Q/K/V exist),
      ``qk`` (Q | K), ``vT`` (V transposed; ``branch`` takes its place after the last
      P x V), ``attn.logits`` (``attn.probs`` in place: SOFTMAX runs in place);
    * MLP: ``ln`` (LN2 out; ``mlp.branch`` takes its place after FC1), ``mlp.fc1``
      (``mlp.gelu`` in place).

    No MATMUL's output overlaps its own input, so the layout does not lean on in-place
    MATMULs; SOFTMAX and GELU do run in place (src == dst, docs/isa.md).

    The **compact** layout (``compact=None``: used when the standard one does not fit, as
    for DeiT-Base in the ISA's 1 MiB) keeps only one block's constants (a LOAD from DDR
    before each block), the positional table in the embedding phase, one residual buffer
    (the residual adds run in place, Y == A) and the attention logits of ``att_heads``
    heads at a time (QK^T, SOFTMAX and P x V per chunk of heads; the largest divisor of the
    head count that fits).
    """
    limit = min(spm_words, MAX_SPM_WORDS)
    if compact is None:
        try:
            return _layout(spec, limit)
        except CompileError:
            pass
        compact = True
    if not compact:
        return _layout(spec, limit)
    err = None
    for ch in sorted((d for d in range(1, spec.heads + 1) if spec.heads % d == 0), reverse=True):
        try:
            return _layout(spec, limit, att_heads=ch)
        except CompileError as e:
            err = err or e
    raise err


def spm_words_needed(spec) -> int:
    """Scratchpad words the program of ``spec`` needs: the standard layout's (even beyond
    what the ISA addresses) unless only the compact one fits the ISA's 1 MiB."""
    standard = _layout(spec, math.inf)
    if standard.next <= MAX_SPM_WORDS:
        return standard.next
    try:
        return spm_layout(spec, compact=True).next
    except CompileError:
        return standard.next


def _layout(spec, limit, att_heads: int = 0) -> _Alloc:
    """The standard layout, or with ``att_heads`` > 0 the compact one (see spm_layout)."""
    if spec.head_dim % WORD_BYTES:
        raise CompileError(f"head_dim must be a multiple of {WORD_BYTES} (got {spec.head_dim})")
    al = _Alloc(limit)
    T, D, H, M = spec.tokens, spec.embed_dim, spec.heads, spec.mlp_dim
    compact = att_heads > 0
    al.compact, al.att_heads = compact, (att_heads if compact else H)
    if not compact:
        for name, size in _const_sizes(spec):
            if isinstance(size, tuple):
                al.tensor(name, *size)
            else:
                al.block(name, size)
        residual = (("x0", T, D), ("x1", T, D))
    else:
        sizes = dict(_const_sizes(spec))
        for name in ("pos_add.params", "norm.params"):
            al.block(name, sizes[name])
        for part in BLOCK_CONSTS:  # one slot, every block's constants in turn
            slot = al.block(f"block.{part}", sizes[f"blocks.0.{part}"])
            for i in range(spec.depth):
                al.tensors[f"blocks.{i}.{part}"] = slot
        residual = (("x0", T, D),)
    for name, rows, cols in (
        *residual,
        ("norm", 1, D),
        ("logits", 1, spec.num_classes),
    ):
        al.tensor(name, rows, cols)
    if compact:
        al.tensors["x1"] = al.tensors["x0"]
    region, high = al.next, al.next
    embedding = (("patches", spec.patches, spec.patch_dim), ("patch_embed", spec.patches, D))
    if compact:
        embedding += (("pos_q", spec.patches, D),)
    phases = (
        embedding,
        (("ln", T, D), ("qk", T, 2 * D), ("vT", D, T), ("attn.logits", al.att_heads * T, T)),
        (("ln", T, D), ("mlp.fc1", T, M)),
    )
    for phase in phases:
        al.next = region
        for name, rows, cols in phase:
            if name in al.tensors:  # the same tensor in two phases (at the same place)
                al.next = al.tensors[name].base + al.tensors[name].words
            else:
                al.tensor(name, rows, cols)
        high = max(high, al.next)
    al.next = high
    al.alias("attn.context", "ln")
    al.alias("attn.probs", "attn.logits")
    al.alias("branch", "vT", T, D)  # D rows of ceil(T/16) words >= T rows of D/16
    al.alias("mlp.gelu", "mlp.fc1")
    al.alias("mlp.branch", "ln")
    return al


def compile_model(
    model: IntViT,
    *,
    groups: int,
    codec: WCodec,
    spm_words: int = 1 << 16,
    fuse_residual: bool | None = None,
    compact: bool | None = None,
) -> Compiled:
    """Compile ``model`` into a program + memory image for an array with ``groups`` groups.

    GELU always runs fused into FC1's output (MATMUL GELU); the residual adds after the
    projection and FC2 run fused into their MATMULs (RESADD) when ``fuse_residual``
    (default: when the codec's array allows it, :func:`vitaccel.isa.residual_fusable`), and
    as RESADD instructions otherwise. The V part of QKV reuses the X of the Q|K part
    (X_KEEP). ``compact``: the scratchpad layout (:func:`spm_layout`; None: the standard one
    when it fits ``spm_words``, else the compact one).
    """
    if fuse_residual is None:
        p = getattr(codec, "params", None)
        fuse_residual = p is not None and isa.residual_fusable(p.groups, p.cols)
    spec = model.spec
    log2 = model.config.softmax_output == "log2"
    T, D, H, dh, M = spec.tokens, spec.embed_dim, spec.heads, spec.head_dim, spec.mlp_dim
    P, classes = spec.patches, spec.num_classes
    al = spm_layout(spec, spm_words, compact)
    spm = al.tensors

    # ---- constants: the DDR section (const_ddr), loaded into the SPM by LOADs -----------
    ddr_consts = const_ddr(spec)
    const_data: dict[str, bytes] = {}

    def const(name: str, data: bytes | np.ndarray) -> Tensor:
        raw = (
            bytes(np.asarray(data, dtype=np.uint8).reshape(-1))
            if not isinstance(data, bytes)
            else data
        )
        words = ddr_consts[name][1]
        if len(raw) > words * WORD_BYTES:  # pragma: no cover - _const_sizes is the layout
            raise CompileError(f"constant '{name}' is larger than its SPM block")
        const_data[name] = raw + bytes(words * WORD_BYTES - len(raw))
        return spm.get(name)

    pos_q = const("pos_q", spm_rows(model.pos_q, words_for(D)))
    pos_params = const(
        "pos_add.params", _resadd_block(model.pos_add.mult_a, model.pos_add.mult_b, D)
    )
    const("cls_row", spm_rows(model.cls_row[None, :], words_for(D)))
    blk_consts = []
    for i, b in enumerate(model.blocks):
        blk_consts.append(
            dict(
                ln1=const(f"blocks.{i}.norm1.params", _ln_block(b.norm1)),
                add1=const(
                    f"blocks.{i}.add1.params", _resadd_block(b.add1.mult_a, b.add1.mult_b, D)
                ),
                ln2=const(f"blocks.{i}.norm2.params", _ln_block(b.norm2)),
                gelu=const(
                    f"blocks.{i}.gelu.table", np.asarray(b.gelu_table, dtype=np.int8).view(np.uint8)
                ),
                add2=const(
                    f"blocks.{i}.add2.params", _resadd_block(b.add2.mult_a, b.add2.mult_b, D)
                ),
            )
        )
    lnf = const("norm.params", _ln_block(model.norm))

    # ---- activations ------------------------------------------------------------------------
    patches, pe = spm["patches"], spm["patch_embed"]
    xs = [spm["x0"], spm["x1"]]
    h, qk, vt = spm["ln"], spm["qk"], spm["vT"]
    att_stride = words_for(T)
    logits, probs, ctx = spm["attn.logits"], spm["attn.probs"], spm["attn.context"]
    br, g, br_mlp = spm["branch"], spm["mlp.gelu"], spm["mlp.branch"]
    hn, out = spm["norm"], spm["logits"]

    # ---- DDR image sections -------------------------------------------------------------
    weights: list[tuple[str, bytes]] = []
    w_offsets: dict[str, int] = {}

    def w_stream(layer: IntLinear, rows: slice | None = None, name: str | None = None) -> str:
        key = name or layer.name
        sel = rows or slice(None)
        raw = codec.pack(
            layer.weight.q[sel],
            layer.weight.kind[sel],
            layer.bias[sel],
            layer.mult[sel],
            layer.shift[sel],
        )
        weights.append((key, raw))
        return key

    prog: list[Instr] = []
    pending_c: list[tuple[int, int]] = []  # (instruction, word offset in the constants)

    def const_load(spm_base: int, first: str, last: str | None = None) -> None:
        """LOAD the constants ``first`` .. ``last`` (consecutive in DDR) to ``spm_base``."""
        at, _ = ddr_consts[first]
        end = sum(ddr_consts[last or first])
        pending_c.append((len(prog), at))
        prog.append(isa.load(spm=spm_base, words=end - at, ddr=0))  # offset patched below

    names = list(ddr_consts)
    if al.compact:  # the globals the SPM keeps, then one block's constants at a time
        const_load(pos_params.base, "pos_add.params")
    else:  # the whole section, once
        const_load(spm[names[0]].base, names[0], names[-1])
    prog.append(isa.load(spm=patches.base, words=patches.words, ddr=0))  # input, patched below
    # The class-token row is a constant; copy it over row 0 of the first residual buffer.
    const_load(xs[0].base, "cls_row")
    if al.compact:
        const_load(lnf.base, "norm.params")

    def mm(
        x: Tensor,
        layer: IntLinear,
        y: Tensor,
        *,
        key: str,
        n: int,
        out_t: bool = False,
        tokens: int | None = None,
        x_keep: bool = False,
        gelu: Tensor | None = None,
        residual: tuple[Tensor, Tensor, int] | None = None,
    ):
        fused = {}
        if gelu is not None:
            fused = dict(gelu_table=gelu.base)
        elif residual is not None:
            a, params, shift = residual
            if a.stride != y.stride:  # pragma: no cover - the residual buffers share a shape
                raise CompileError("a fused residual add needs A with Y's stride")
            fused = dict(residual=a.base, residual_params=params.base, residual_shift=shift)
        prog.append(
            isa.matmul(
                x=x.base,
                x_stride=x.stride,
                tokens=tokens if tokens is not None else x.rows,
                k=layer.in_features,
                n=n,
                y=y.base,
                y_stride=y.stride,
                w_ddr=0,
                out_transposed=out_t,
                x_keep=x_keep,
                **fused,
            )
        )
        pending_w.append((len(prog) - 1, key))

    def resadd(x: Tensor, b: Tensor, dst: Tensor, params: Tensor, shift: int) -> None:
        prog.append(
            isa.resadd(
                a=x.base,
                a_stride=x.stride,
                rows=x.rows,
                cols=x.cols,
                dst=dst.base,
                dst_stride=dst.stride,
                b=b.base,
                b_stride=b.stride,
                params=params.base,
                shift=shift,
            )
        )

    pending_w: list[tuple[int, str]] = []
    mm(patches, model.patch_embed, pe, key=w_stream(model.patch_embed), n=D)
    if al.compact:  # the positional table lives in the embedding phase only
        const_load(pos_q.base, "pos_q")
    # x0 rows 1.. = patch_embed + pos (per-channel multipliers)
    prog.append(
        isa.resadd(
            a=pe.base,
            a_stride=pe.stride,
            rows=P,
            cols=D,
            dst=xs[0].row(1),
            dst_stride=xs[0].stride,
            b=pos_q.base,
            b_stride=pos_q.stride,
            params=pos_params.base,
            shift=model.pos_add.shift,
        )
    )
    cur = 0
    heads_per_job = max(1, min(groups, H))
    for i, b in enumerate(model.blocks):
        c = blk_consts[i]
        x, x_next = xs[cur], xs[1 - cur]
        if al.compact:  # this block's constants into the one slot
            const_load(c["ln1"].base, f"blocks.{i}.norm1.params", f"blocks.{i}.add2.params")
        prog.append(_ln(x, h, c["ln1"], b.norm1))
        mm(h, b.qkv, qk, key=w_stream(b.qkv, slice(0, 2 * D), f"{b.qkv.name}.qk"), n=2 * D)
        mm(
            h,
            b.qkv,
            vt,
            key=w_stream(b.qkv, slice(2 * D, 3 * D), f"{b.qkv.name}.v"),
            n=D,
            out_t=True,
            x_keep=True,
        )
        for c0 in range(0, H, al.att_heads):  # chunks of heads whose logits fit the SPM
            c1 = min(H, c0 + al.att_heads)
            for h0 in range(c0, c1, heads_per_job):
                nh = min(heads_per_job, c1 - h0)
                prog.append(
                    isa.matmul(
                        x=qk.base + h0 * dh // WORD_BYTES,
                        x_stride=qk.stride,
                        tokens=T,
                        k=dh,
                        n=T,
                        y=logits.base + (h0 - c0) * T * att_stride,
                        y_stride=att_stride,
                        w_spm=qk.base + (D + h0 * dh) // WORD_BYTES,
                        w_stride=qk.stride,
                        mult=_check_fits("qk_mult", b.qk_mult, 16),
                        shift=b.qk_shift,
                        heads=nh if groups > 1 else 0,
                        head_x_step=dh // WORD_BYTES,
                        head_w_step=dh // WORD_BYTES,
                        head_y_step=T * att_stride,
                    )
                )
            prog.append(
                isa.softmax(
                    src=logits.base,
                    src_stride=att_stride,
                    rows=(c1 - c0) * T,
                    cols=T,
                    dst=probs.base,
                    dst_stride=att_stride,
                    in_shift=b.softmax.in_shift,
                    log2=log2,
                )
            )
            for h0 in range(c0, c1, heads_per_job):
                nh = min(heads_per_job, c1 - h0)
                prog.append(
                    isa.matmul(
                        x=probs.base + (h0 - c0) * T * att_stride,
                        x_stride=att_stride,
                        tokens=T,
                        k=T,
                        n=dh,
                        y=ctx.base + h0 * dh // WORD_BYTES,
                        y_stride=ctx.stride,
                        w_spm=vt.base + h0 * dh * vt.stride,
                        w_stride=vt.stride,
                        mult=_check_fits("av_mult", b.av_mult, 16),
                        shift=b.av_shift,
                        x_unsigned=not log2,
                        x_log2=log2,
                        heads=nh if groups > 1 else 0,
                        head_x_step=T * att_stride,
                        head_w_step=dh * vt.stride,
                        head_y_step=dh // WORD_BYTES,
                    )
                )
        if fuse_residual:
            add1 = (x, c["add1"], b.add1.shift)
            mm(ctx, b.proj, x_next, key=w_stream(b.proj), n=D, residual=add1)
        else:
            mm(ctx, b.proj, br, key=w_stream(b.proj), n=D)
            resadd(x, br, x_next, c["add1"], b.add1.shift)
        x, x_next = x_next, x
        prog.append(_ln(x, h, c["ln2"], b.norm2))
        mm(h, b.fc1, g, key=w_stream(b.fc1), n=M, gelu=c["gelu"])
        if fuse_residual:
            add2 = (x, c["add2"], b.add2.shift)
            mm(g, b.fc2, x_next, key=w_stream(b.fc2), n=D, residual=add2)
        else:
            mm(g, b.fc2, br_mlp, key=w_stream(b.fc2), n=D)
            resadd(x, br_mlp, x_next, c["add2"], b.add2.shift)
        cur = xs.index(x_next)
    x = xs[cur]
    prog.append(_ln(x, hn, lnf, model.norm, rows=1))
    mm(hn, model.head, out, key=w_stream(model.head), n=classes)
    prog.append(isa.store(spm=out.base, words=out.words, ddr=0))  # patched below
    prog.append(isa.end())

    # ---- lay out DDR and patch offsets ---------------------------------------------------
    def align(v: int) -> int:
        return (v + SECTION_ALIGN - 1) // SECTION_ALIGN * SECTION_ALIGN

    prog_bytes = len(prog) * isa.INSTR_BYTES
    const_off = align(prog_bytes)
    const_raw = b"".join(const_data[name] for name in ddr_consts)
    w_off = align(const_off + len(const_raw))
    at = w_off
    for key, raw in weights:
        w_offsets[key] = at
        at += align(len(raw))
    in_off = align(at)
    out_off = align(in_off + patches.words * WORD_BYTES)
    total = align(out_off + out.words * WORD_BYTES)

    for idx, word in pending_c:
        prog[idx] = prog[idx].replace(ddr=const_off + word * WORD_BYTES)
    prog[1] = isa.load(spm=patches.base, words=patches.words, ddr=in_off)
    prog[-2] = isa.store(spm=out.base, words=out.words, ddr=out_off)
    for idx, key in pending_w:
        prog[idx] = prog[idx].replace(w_ddr=w_offsets[key])

    image = bytearray(total)
    image[:prog_bytes] = isa.encode_program(prog)
    image[const_off : const_off + len(const_raw)] = const_raw
    for key, raw in weights:
        image[w_offsets[key] : w_offsets[key] + len(raw)] = raw
    return Compiled(
        program=prog,
        image=image,
        input_offset=in_off,
        input_bytes=patches.words * WORD_BYTES,
        output_offset=out_off,
        output_bytes=out.words * WORD_BYTES,
        spm_words=al.next,
        tensors=dict(al.tensors),
        compact=al.compact,
        att_heads=al.att_heads,
        patches=P,
        patch_dim=spec.patch_dim,
        classes=classes,
    )


def _ln(x: Tensor, y: Tensor, params: Tensor, p: LayerNormParams, rows: int | None = None) -> Instr:
    return isa.layernorm(
        src=x.base,
        src_stride=x.stride,
        rows=rows if rows is not None else x.rows,
        cols=x.cols,
        dst=y.base,
        dst_stride=y.stride,
        params=params.base,
        recip_mult=_check_fits("recip_mult", p.recip_mult, 16),
        recip_shift=p.recip_shift,
        out_shift=p.out_shift,
        eps_q=_check_fits("eps_q", p.eps_q, 16),
    )
