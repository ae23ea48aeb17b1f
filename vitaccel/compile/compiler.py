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
    scratch      only in a spilling program: the residual stream (``tokens`` rows in SPM row
                 layout), written and read by the program itself; zeros in the image, so
                 the host allocates it by allocating the image (docs/isa.md)

The program is the shape-only scheduler's (:mod:`vitaccel.compile.schedule`, which also
plans the scratchpad); this module packs the model's constants and weights into the image
and fills in the DDR offsets and quantisation scalars the scheduler leaves open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vitaccel import isa
from vitaccel.compile.schedule import (
    BLOCK_CONSTS,
    MAX_SPM_WORDS,
    CompileError,
    Tensor,
    const_ddr,
    program_for,
    scratch_bytes,
    spill_traffic,
    spm_layout,
    spm_words_needed,
    words_for,
)
from vitaccel.isa import WORD_BYTES, Instr, MatmulFlags, Op
from vitaccel.quant.ref import LayerNormParams

if TYPE_CHECKING:
    from vitaccel.models.golden import IntViT

__all__ = [
    "BLOCK_CONSTS",
    "MAX_SPM_WORDS",
    "const_ddr",
    "spm_layout",
    "spm_words_needed",
    "spill_traffic",
    "Tensor",
    "Compiled",
    "compile_model",
    "CompileError",
    "words_for",
    "spm_rows",
    "WCodec",
]

SECTION_ALIGN = 4096


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

    # True when columns are not in channel order (W4 columns): MATMULs then say w_steps
    mixed: bool = False

    def pack(
        self, q: np.ndarray, kind: np.ndarray, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray
    ) -> bytes:
        raise NotImplementedError

    def unpack(
        self, raw: bytes, n: int, k: int, nsteps: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def stream_bytes(self, n: int, k: int, nsteps: int | None = None) -> int:
        raise NotImplementedError

    def steps_of(self, raw: bytes, k: int) -> int:
        """Output steps of a packed stream; the MATMUL's ``w_steps`` when it is not the
        default ``ceil(N / (groups*cols))``."""
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
    spill_tile: int = 0  # tokens per residual tile of a spilling program (0: no spilling)
    scratch_offset: int = 0  # the DDR scratch region (spilling programs; 0 bytes otherwise)
    scratch_bytes: int = 0
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


def compile_model(
    model: IntViT,
    *,
    groups: int,
    codec: WCodec,
    spm_words: int = 1 << 16,
    fuse_residual: bool | None = None,
    compact: bool | None = None,
    spill: bool | None = None,
    chain: frozenset[str] = frozenset(),
) -> Compiled:
    """Compile ``model`` into a program + memory image for an array with ``groups`` groups.

    The program is the scheduler's (:func:`vitaccel.compile.schedule.program_for`): GELU
    always runs fused into FC1's output (MATMUL GELU); the residual adds after the
    projection and FC2 run fused into their MATMULs (RESADD) when ``fuse_residual``
    (default: when the codec's array allows it, :func:`vitaccel.isa.residual_fusable`), and
    as RESADD instructions otherwise. The V part of QKV reuses the X of the Q|K part
    (X_KEEP). ``compact``: the scratchpad layout (:func:`spm_layout`; None: the standard one
    when it fits ``spm_words``, else the compact one); ``spill``: the spilling layout (None:
    when neither fits; the residual stream then lives in a DDR scratch region after the
    output section). This function packs the constants and the W streams into the DDR image
    and fills in the offsets and quantisation scalars the scheduler leaves to it. A layer
    that several MATMULs compute on the same rows (a spilling program's token tiles) has
    its stream packed once, and they all read it. ``chain``: the unit roles chained into the
    next MATMUL's X (:func:`vitaccel.compile.schedule.chain_roles` of the design; the
    numbers are those of the program without chains, only the cycles change).
    """
    wide = model.config.wide_fields()
    if wide:
        # The RTL's SPM words, residual add and LayerNorm reader are int8 (docs/numerics.md).
        raise CompileError(
            f"{wide[0]} = {getattr(model.config, wide[0])}: the accelerator implements 8 only "
            "(wider activations are a golden-model study, docs/numerics.md)"
        )
    if fuse_residual is None:
        p = getattr(codec, "params", None)
        fuse_residual = p is not None and isa.residual_fusable(p.groups, p.cols, p.cols_w4)
    spec = model.spec
    log2 = model.config.softmax_output == "log2"
    D = spec.embed_dim
    al = spm_layout(spec, spm_words, compact, spill)
    # the program the cost model prices: shapes, addresses and flags; packed below
    scheduled = program_for(spec, groups=groups, spm_words=spm_words, compact=al.compact,
                            fuse_residual=fuse_residual, log2=log2,
                            spill=bool(al.spill_tile), chain=chain)  # fmt: skip
    prog = list(scheduled)

    # ---- constants: the DDR section (const_ddr), loaded into the SPM by LOADs -----------
    ddr_consts = const_ddr(spec)
    blocks = {f"blocks.{i}": b for i, b in enumerate(model.blocks)}
    # The positional add (patch_embed + pos_q): fused into patch_embed's MATMUL, its A operand
    # (the one mult_a scales) is pos_q and the MATMUL's output takes mult_b, the other way
    # round from the RESADD instruction's (a = patch_embed). ref.residual_add is symmetric in
    # the two (operand, multiplier) pairs, so swapping both is the same function.
    pos = model.pos_add
    pos_mults = (pos.mult_b, pos.mult_a) if fuse_residual else (pos.mult_a, pos.mult_b)
    const_data = {
        "pos_q": spm_rows(model.pos_q, words_for(D)),
        "pos_add.params": _resadd_block(*pos_mults, D),
        "cls_row": spm_rows(model.cls_row[None, :], words_for(D)),
        "norm.params": _ln_block(model.norm),
    }
    for name, b in blocks.items():
        const_data |= {
            f"{name}.norm1.params": _ln_block(b.norm1),
            f"{name}.add1.params": _resadd_block(b.add1.mult_a, b.add1.mult_b, D),
            f"{name}.norm2.params": _ln_block(b.norm2),
            f"{name}.gelu.table": np.asarray(b.gelu_table, dtype=np.int8).view(np.uint8),
            f"{name}.add2.params": _resadd_block(b.add2.mult_a, b.add2.mult_b, D),
        }
    const_raw = b"".join(_const_bytes(name, const_data[name], ddr_consts) for name in ddr_consts)

    # ---- the W streams, in program order: each MATMUL from DDR takes its layer's next rows,
    # from row 0 again once the layer is done (the next token tile of a spilling program)
    layers = model.linear_layers()
    weights: list[tuple[int, bytes]] = []  # (first instruction, packed stream)
    reads: dict[int, int] = {}  # instruction -> the first instruction of its stream
    taken: dict[str, int] = {}
    first: dict[tuple[str, int, int], int] = {}
    for idx, ins in enumerate(prog):
        if ins.op is Op.MATMUL and MatmulFlags.W_SPM not in ins.flags:
            layer, r0 = layers[ins.label], taken.get(ins.label, 0)
            r0 %= layer.out_features
            taken[ins.label] = r0 + ins.n
            key = (ins.label, r0, ins.n)
            if key in first:
                reads[idx] = first[key]
                continue
            first[key] = reads[idx] = idx
            sel = slice(r0, r0 + ins.n)
            raw = codec.pack(layer.weight.q[sel], layer.weight.kind[sel], layer.bias[sel],
                             layer.mult[sel], layer.shift[sel])  # fmt: skip
            weights.append((idx, raw))

    # ---- lay out DDR and fill in the offsets and scalars ------------------------------------
    def align(v: int) -> int:
        return (v + SECTION_ALIGN - 1) // SECTION_ALIGN * SECTION_ALIGN

    patches, out = al.tensors["patches"], al.tensors["logits"]
    prog_bytes = len(prog) * isa.INSTR_BYTES
    const_off = align(prog_bytes)
    at = align(const_off + len(const_raw))
    w_offsets = {}
    w_raw = dict(weights)
    for idx, raw in weights:
        w_offsets[idx] = at
        at += align(len(raw))
    in_off = align(at)
    out_off = align(in_off + patches.words * WORD_BYTES)
    scratch_off = align(out_off + out.words * WORD_BYTES)
    scratch = scratch_bytes(spec) if al.spill_tile else 0
    total = align(scratch_off + scratch)

    for idx, ins in enumerate(prog):
        fields = _filled(ins, model, blocks)
        if ins.label.endswith("spill"):  # residual rows in the scratch region
            fields["ddr"] = scratch_off + ins.ddr
        elif ins.op is Op.LOAD:
            fields["ddr"] = in_off if ins.label == "input" else const_off + ins.ddr
        elif ins.op is Op.STORE:
            fields["ddr"] = out_off
        elif idx in reads:
            fields["w_ddr"] = w_offsets[reads[idx]]
            if codec.mixed:
                # mixed W4/W8 columns: the plan's steps (may exceed ceil(N / (G*C)))
                fields["w_steps"] = codec.steps_of(w_raw[reads[idx]], ins.k)
        if fields:
            prog[idx] = ins.replace(**fields)

    image = bytearray(total)
    image[:prog_bytes] = isa.encode_program(prog)
    image[const_off : const_off + len(const_raw)] = const_raw
    for idx, raw in weights:
        image[w_offsets[idx] : w_offsets[idx] + len(raw)] = raw
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
        spill_tile=al.spill_tile,
        scratch_offset=scratch_off if scratch else 0,
        scratch_bytes=scratch,
        patches=spec.patches,
        patch_dim=spec.patch_dim,
        classes=spec.num_classes,
    )


def _const_bytes(name: str, data: bytes | np.ndarray, ddr_consts) -> bytes:
    """One constant block, zero-padded to its words in the constants section."""
    raw = data if isinstance(data, bytes) else bytes(np.asarray(data, dtype=np.uint8).reshape(-1))
    words = ddr_consts[name][1]
    if len(raw) > words * WORD_BYTES:  # pragma: no cover - _const_sizes is the layout
        raise CompileError(f"constant '{name}' is larger than its SPM block")
    return raw + bytes(words * WORD_BYTES - len(raw))


def _filled(ins: Instr, model: IntViT, blocks: dict) -> dict[str, int]:
    """The quantisation scalars of a scheduled instruction, from the model (by its label)."""
    parts = ins.label.split(".")
    b, part = blocks.get(".".join(parts[:2])), parts[-1]  # "blocks.3.attn.qk" -> block 3, qk
    if ins.op is Op.LAYERNORM:
        p = model.norm if ins.label == "norm" else getattr(b, part)
        return dict(
            recip_mult=_check_fits("recip_mult", p.recip_mult, 16),
            recip_shift=p.recip_shift,
            out_shift=p.out_shift,
            eps_q=_check_fits("eps_q", p.eps_q, 16),
        )
    if ins.op is Op.SOFTMAX:
        return dict(in_shift=b.softmax.in_shift)
    if ins.op is Op.RESADD:
        return dict(shift=(model.pos_add if ins.label == "pos_add" else getattr(b, part)).shift)
    if ins.op is Op.MATMUL and MatmulFlags.W_SPM in ins.flags:
        mult, shift = (b.qk_mult, b.qk_shift) if part == "qk" else (b.av_mult, b.av_shift)
        return dict(mult=_check_fits(f"{'qk' if part == 'qk' else 'av'}_mult", mult, 16),
                    shift=shift)  # fmt: skip
    if ins.op is Op.MATMUL and MatmulFlags.RESADD in ins.flags:
        if ins.label == "patch_embed":
            add = model.pos_add
        else:
            add = b.add1 if ins.label.endswith(".attn.proj") else b.add2
        return dict(residual_shift=add.shift)
    return {}
