"""The shape-only scheduler: the program of a model on a design, without weights.

``schedule(spec, design)`` is the instruction list (:class:`vitaccel.isa.Instr`) the
accelerator runs for one image: the scratchpad layout (``spm_layout``), every LOAD, MATMUL,
unit instruction and STORE with its SPM addresses, shapes and flags. It needs only the
model's shape (no torch, no weights), so the cycle model (:mod:`vitaccel.dse.cost`) prices
this very list, and :func:`vitaccel.compile.compiler.compile_model` packs the constants and
weights into a DDR image and fills in what depends on them:

* the DDR offsets: a constant LOAD's ``ddr`` is its byte offset within the constants
  section (the packer adds the section's place), the input LOAD, the logits STORE and every
  MATMUL's ``w_ddr`` are 0;
* the quantisation scalars: LAYERNORM ``recip_mult``, ``recip_shift``, ``out_shift``,
  ``eps_q``; SOFTMAX ``in_shift``; the attention MATMULs' ``mult`` and ``shift``; RESADD
  ``shift`` and a fused MATMUL's ``residual_shift`` are 0.

Every instruction carries a ``label``: the model operation it belongs to, named as
:mod:`vitaccel.dse.shapes` names it (``"blocks.0.attn.qkv"``, ``"blocks.0.norm1"``, ...;
weight layers as the golden model names them); the packer finds each layer's weights and
scalars by it, the cost model reports cycles per operation by it.

Scratchpad plan: a bump allocator over 16-byte words; every 2-D tensor is row-major with
rows padded to whole words (docs/isa.md). In the standard layout the residual stream
ping-pongs between two buffers so no MATMUL reads and writes the same rows; the compact
layout (models that need more than the ISA's 1 MiB otherwise, e.g. DeiT-Base) trades that
and the resident per-block constants for one LOAD per block, in-place residual adds and
attention in chunks of heads (``spm_layout``).

Chains (docs/isa.md "Chains"): a LAYERNORM or SOFTMAX whose CHAIN flag is set hands its rows
to the next MATMUL as that MATMUL's X while both run. ``chain`` (:data:`CHAIN_MODES`) says
which: ``"none"``, ``"all"`` (every pair that fits, :func:`vitaccel.isa.chain_fits`, on a
unit the design can chain, :func:`vitaccel.engine_timing.unit_chains`) or ``"paying"``
(those of them whose pairs the cycle model says gain). :data:`CHAIN_DEFAULT` is the one
default every reader takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from vitaccel import isa
from vitaccel.isa import WORD_BYTES, Instr, Op

if TYPE_CHECKING:
    from vitaccel.design import Design

__all__ = [
    "BLOCK_CONSTS",
    "CHAIN_DEFAULT",
    "CHAIN_MODES",
    "CHAIN_ROLES",
    "chain_role",
    "chain_roles",
    "chain_candidates",
    "chain_candidates_of",
    "MAX_SPM_WORDS",
    "CompileError",
    "Tensor",
    "words_for",
    "const_ddr",
    "spm_layout",
    "spm_words_needed",
    "spill_words_needed",
    "scratch_bytes",
    "spill_traffic",
    "program_for",
    "schedule",
    "kind_of",
    "resident_prologue",
    "per_image",
]


class CompileError(ValueError):
    pass


# Which unit instructions chain into the next MATMUL's X (docs/isa.md "Chains"): "none",
# "all" (every pair that fits on a unit the design can chain) or "paying" (only the pairs
# the cycle model says gain). The one default the compiler, the cycle model and the
# explorer read. "none" while the RTL's chain hardware is off (rtl.top.CHAIN_HARDWARE: its
# X input path is over the 300 MHz clock rule); "paying" once it is on.
CHAIN_MODES = ("none", "all", "paying")
CHAIN_DEFAULT = "none"

# The unit instructions that may chain, by role (the label without the block prefix), and
# the unit kind whose lanes decide whether the design can chain them.
CHAIN_ROLES = {"norm1": "layernorm", "attn.softmax": "softmax", "norm2": "layernorm",
               "norm": "layernorm"}  # fmt: skip


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


class _Alloc:
    def __init__(self, limit: int):
        self.next = 0
        self.limit = limit
        self.tensors: dict[str, Tensor] = {}
        self.compact = False  # the compact layout (spm_layout)
        self.att_heads = 0  # heads whose attention logits are in the SPM at once
        self.spill_tile = 0  # spilling layout: tokens per residual tile (0: no spilling)

    def tensor(self, name: str, rows: int, cols: int, elem_bytes: int = 1) -> Tensor:
        t = Tensor(name, self.next, rows, cols, words_for(cols, elem_bytes), elem_bytes)
        self.next += t.words
        if self.next > self.limit:
            if self.limit < MAX_SPM_WORDS:
                hint = "raise spm_kib or use a smaller model"
            elif self.spill_tile:
                hint = (
                    "the ISA addresses at most 1024 KiB, even with the compact layout and "
                    "the residual stream spilled to DDR"
                )
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


def spm_layout(
    spec, spm_words: int = MAX_SPM_WORDS, compact: bool | None = None, spill: bool | None = None
) -> _Alloc:
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

    The **spilling** layout (``spill=None``: used when the compact one does not fit either;
    ``spill=True`` forces it) is the compact one with the residual stream in the DDR scratch
    region instead of the scratchpad: it moves through one tile buffer ``xt`` of
    ``spill_tile`` tokens (LOAD, compute, STORE), and the projection and the MLP run per
    token tile, so the MLP's hidden layer (``mlp.fc1``) is ``spill_tile`` rows, not
    ``tokens`` (it is consumed by FC2 in the same tile, so it never goes to DDR). The
    fewest tiles that fit are taken (each tile streams the projection's and the MLP's
    weights again), then the most attention heads per chunk.
    """
    limit = min(spm_words, MAX_SPM_WORDS)
    if not spill:
        if compact is None:
            try:
                return _layout(spec, limit)
            except CompileError:
                pass
            compact = True
        if not compact:
            return _layout(spec, limit)
        err = None
        for ch in _chunks(spec):
            try:
                return _layout(spec, limit, att_heads=ch)
            except CompileError as e:
                err = err or e
        if spill is False:
            raise err
    # spilling: the smallest layout first, so a scratchpad that holds none fails at once
    _layout(spec, limit, att_heads=1, tile=1)
    tiles = sorted({-(-spec.tokens // n) for n in range(1, spec.tokens + 1)}, reverse=True)
    for tile in tiles:
        for ch in _chunks(spec):
            try:
                return _layout(spec, limit, att_heads=ch, tile=tile)
            except CompileError:
                pass
    raise AssertionError("unreachable: the one-token layout fits")  # pragma: no cover


def _chunks(spec) -> list[int]:
    """Heads per attention chunk, most first: the divisors of the head count."""
    return sorted((d for d in range(1, spec.heads + 1) if spec.heads % d == 0), reverse=True)


def spm_words_needed(spec) -> int:
    """Scratchpad words the program of ``spec`` needs: the standard layout's (even beyond
    what the ISA addresses) unless only the compact one fits the ISA's 1 MiB."""
    standard = _layout(spec, math.inf)
    if standard.next <= MAX_SPM_WORDS:
        return standard.next
    try:
        return spm_layout(spec, compact=True, spill=False).next
    except CompileError:
        return standard.next


def spill_words_needed(spec, tile: int = 1) -> int:
    """Scratchpad words of the spilling layout with ``tile`` tokens per residual tile and
    one attention head per chunk (``tile=1``: the least any program of ``spec`` needs)."""
    return _layout(spec, math.inf, att_heads=1, tile=tile).next


def scratch_bytes(spec) -> int:
    """Bytes of the DDR scratch region of a spilling program: the residual stream, ``tokens``
    rows of ``ceil(embed_dim / 16)`` words (0 for a program that does not spill)."""
    return spec.tokens * words_for(spec.embed_dim) * WORD_BYTES


def spill_traffic(program) -> int:
    """Bytes a program moves between the scratchpad and the DDR scratch region per image
    (its spill LOADs and STOREs, label ``*.spill``; 0 when it does not spill)."""
    return sum(i.words * WORD_BYTES for i in program
               if i.op in (Op.LOAD, Op.STORE) and i.label.endswith("spill"))  # fmt: skip


def _layout(spec, limit, att_heads: int = 0, tile: int = 0) -> _Alloc:
    """The standard layout, with ``att_heads`` > 0 the compact one, with ``tile`` > 0 too the
    spilling one (see spm_layout)."""
    if spec.head_dim % WORD_BYTES:
        raise CompileError(f"head_dim must be a multiple of {WORD_BYTES} (got {spec.head_dim})")
    al = _Alloc(limit)
    T, D, H, M = spec.tokens, spec.embed_dim, spec.heads, spec.mlp_dim
    compact = att_heads > 0
    spill = compact and tile > 0
    al.compact, al.att_heads = compact, (att_heads if compact else H)
    al.spill_tile = min(tile, T) if spill else 0
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
        # spilling: the residual stream is in DDR; one tile of it at a time in the SPM
        residual = (("xt", al.spill_tile, D),) if spill else (("x0", T, D),)
    for name, rows, cols in (
        *residual,
        ("norm", 1, D),
        ("logits", 1, spec.num_classes),
    ):
        al.tensor(name, rows, cols)
    if compact and not spill:
        al.tensors["x1"] = al.tensors["x0"]
    region, high = al.next, al.next
    embedding = (("patches", spec.patches, spec.patch_dim), ("patch_embed", spec.patches, D))
    if compact:
        embedding += (("pos_q", spec.patches, D),)
    # spilling: the projection and the MLP run per token tile beside the attention context
    # (``ln``'s place), their tiles where Q|K, V and the logits were
    mlp = (("ln", T, D), ("mlp.h", al.spill_tile, D), ("mlp.fc1", al.spill_tile, M)) if spill \
        else (("ln", T, D), ("mlp.fc1", T, M))  # fmt: skip
    phases = (
        embedding,
        (("ln", T, D), ("qk", T, 2 * D), ("vT", D, T), ("attn.logits", al.att_heads * T, T)),
        mlp,
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
    al.alias("mlp.gelu", "mlp.fc1")
    if spill:  # a tile's projection / FC2 output before its residual add (no fused add)
        al.alias("branch", "mlp.h")
        al.alias("mlp.branch", "mlp.h")
    else:
        al.alias("branch", "vT", T, D)  # D rows of ceil(T/16) words >= T rows of D/16
        al.alias("mlp.branch", "ln")
    return al


# ---- the program ------------------------------------------------------------------------

_UNIT_KINDS = {Op.SOFTMAX: "softmax", Op.LAYERNORM: "layernorm", Op.GELU: "gelu",
               Op.RESADD: "residual", Op.LOAD: "load", Op.STORE: "store", Op.END: "end"}  # fmt: skip


def kind_of(instr: Instr) -> str:
    """The :mod:`vitaccel.dse.shapes` kind of a scheduled instruction: ``load``, ``store``,
    a unit (``softmax``, ``layernorm``, ``gelu``, ``residual``) or, for a MATMUL, the kind of
    its operation (``patch_embed``, ``qkv``, ``qk``, ``sv``, ``proj``, ``fc1``, ``fc2``,
    ``head``: the last part of its label)."""
    if instr.op is Op.MATMUL:
        return instr.label.rsplit(".", 1)[-1]
    return _UNIT_KINDS[instr.op]


def resident_prologue(program) -> int:
    """Instructions at the start of ``program`` that a stream of images runs once: the LOAD
    of the constants section (label ``constants``) into scratchpad blocks that no later
    instruction writes (the standard layout's every constant; the compact and spilling
    layouts' resident parameter blocks, docs/isa.md). A host that has run the program since
    the last reset starts the next image past them (PROG_ADDR + n * INSTR_BYTES,
    :func:`vitaccel.compile.driver.inference_steps`), so an image of a stream costs
    :func:`per_image`'s instructions and the first one these as well."""
    first = program[0] if len(program) else None
    return int(first is not None and first.op is Op.LOAD and first.label == "constants")


def per_image(program) -> list:
    """The instructions every image of a stream runs: ``program`` past its
    :func:`resident_prologue`."""
    return list(program[resident_prologue(program) :])


def schedule(
    spec,
    design: Design,
    *,
    strict: bool = True,
    spill: bool | None = None,
    chain: str | None = None,
) -> list[Instr]:
    """The program of ``spec`` on ``design`` (its groups, scratchpad, residual fusion and
    softmax output), END last; see the module docstring for what is left to the packer.

    ``spill``: the spilling layout (:func:`spm_layout`; None: only when nothing else fits).
    ``strict=False`` (the cost model): a design whose scratchpad holds no layout is
    priced on the standard layout (its SPM addresses wrapped to 16 bits, so the list is
    for pricing only); ``strict`` raises :class:`CompileError` as the compiler does.
    ``chain``: which units chain into the next MATMUL (:data:`CHAIN_MODES`; None:
    :data:`CHAIN_DEFAULT`), resolved by :func:`chain_roles`.
    """
    return list(program_for(spec, **_design_args(design), strict=strict, spill=spill,
                            chain=chain_roles(spec, design, chain, strict=strict,
                                              spill=spill)))  # fmt: skip


def _design_args(design: Design) -> dict:
    """:func:`program_for`'s arguments that come from the design (all but the chains)."""
    a = design.array
    return dict(
        groups=a.groups,
        spm_words=design.spm_kib * 1024 // WORD_BYTES,
        fuse_residual=isa.residual_fusable(a.groups, a.cols, a.cols_w4),
        log2=design.nonlinear.softmax_output == "log2",
    )


def chain_role(label: str) -> str | None:
    """The :data:`CHAIN_ROLES` role of a unit instruction's label (``blocks.3.norm1`` ->
    ``norm1``), None for a unit that never chains."""
    role = label.split(".", 2)[2] if label.startswith("blocks.") else label
    return role if role in CHAIN_ROLES else None


def chain_candidates(design: Design) -> frozenset[str]:
    """The roles whose unit the design can chain (:func:`chain_candidates_of` its lanes)."""
    nl = design.nonlinear
    return chain_candidates_of(nl.softmax_lanes, nl.layernorm_lanes, design.array.vector,
                               design.datapath_bytes)  # fmt: skip


def chain_candidates_of(softmax_lanes: int, layernorm_lanes: int, vector: int,
                        datapath_bytes: int) -> frozenset[str]:  # fmt: skip
    """The roles (:data:`CHAIN_ROLES`) whose unit can chain on an accelerator of these
    lanes, array vector and datapath (:func:`vitaccel.engine_timing.unit_chains`)."""
    from vitaccel.engine_timing import unit_chains

    lanes = {"softmax": softmax_lanes, "layernorm": layernorm_lanes}
    return frozenset(r for r, kind in CHAIN_ROLES.items()
                     if unit_chains(lanes[kind], vector, datapath_bytes))  # fmt: skip


def chain_roles(spec, design: Design, chain: str | None = None, *, strict: bool = True,
                spill: bool | None = None) -> frozenset[str]:  # fmt: skip
    """The roles (:data:`CHAIN_ROLES`) whose unit instructions get CHAIN on ``design``
    (:func:`program_for`'s ``chain``) in mode ``chain`` (None: :data:`CHAIN_DEFAULT`):

    * ``"none"``: none;
    * ``"all"``: every role whose unit the design can chain (:func:`chain_candidates`);
    * ``"paying"``: those of them whose chaining the cycle model
      (:func:`vitaccel.dse.cost.program_cycles`) says makes the program faster: a role is
      dropped when the program with every other candidate chained is not slower without it
      (the roles' pairs are priced apart, so one pass decides).
    """
    chain = CHAIN_DEFAULT if chain is None else chain
    if chain not in CHAIN_MODES:
        raise ValueError(f"chain must be one of {', '.join(CHAIN_MODES)}, not {chain!r}")
    if chain == "none":
        return frozenset()
    roles = chain_candidates(design)
    if chain == "all" or not roles:
        return roles
    from vitaccel.dse.cost import program_cycles

    args = dict(_design_args(design), strict=strict, spill=spill)

    def cycles(rs: frozenset[str]) -> int:
        return program_cycles(per_image(program_for(spec, **args, chain=rs)), design)

    every = cycles(roles)
    return frozenset(r for r in roles if cycles(roles - {r}) > every)


@lru_cache(maxsize=256)
def program_for(
    spec,
    *,
    groups: int,
    spm_words: int = MAX_SPM_WORDS,
    fuse_residual: bool = False,
    compact: bool | None = None,
    log2: bool = False,
    strict: bool = True,
    spill: bool | None = None,
    chain: frozenset[str] = frozenset(),
) -> tuple[Instr, ...]:
    """The program of ``spec`` for an array of ``groups`` groups in ``spm_words`` words of
    scratchpad (``compact``: the layout, :func:`spm_layout`; ``fuse_residual``: the residual
    adds run in the projection's and FC2's MATMULs, :func:`vitaccel.isa.residual_fusable`;
    ``log2``: the build's SOFTMAX writes log2 codes; ``spill``: the spilling layout, whose
    LOADs and STOREs of the residual stream (label ``*.spill``) have ``ddr`` relative to the
    DDR scratch region; ``chain``: the roles, :data:`CHAIN_ROLES`, whose unit instructions
    get CHAIN where the next instruction fits, :func:`vitaccel.isa.chain_fits`; a chained
    softmax runs per P x V job, each its heads' rows, so that each job has its own).
    Cached: the explorer asks often."""
    chain = frozenset(chain)
    if not chain <= CHAIN_ROLES.keys():
        raise ValueError(f"unknown chain roles {sorted(chain - CHAIN_ROLES.keys())}")
    wrap = False
    try:
        al = spm_layout(spec, spm_words, compact, spill)
    except CompileError:
        if strict:
            raise
        al, wrap = _layout(spec, math.inf), True
    T, D, H, dh, M = spec.tokens, spec.embed_dim, spec.heads, spec.head_dim, spec.mlp_dim
    P, classes = spec.patches, spec.num_classes
    spm = al.tensors
    ddr_consts = const_ddr(spec)
    prog: list[Instr] = []

    def emit(ctor, label: str, **fields) -> None:
        if wrap:  # pricing only: SPM addresses past the ISA's 16 bits wrap
            fields = {k: v % MAX_SPM_WORDS if type(v) is int and k not in ("ddr", "words")
                      else v for k, v in fields.items()}  # fmt: skip
        prog.append(ctor(**fields, label=label))

    def const_load(label: str, spm_base: int, first: str, last: str | None = None) -> None:
        """LOAD the constants ``first`` .. ``last`` (consecutive in DDR) to ``spm_base``;
        ``ddr`` relative to the constants section."""
        at, _ = ddr_consts[first]
        end = sum(ddr_consts[last or first])
        emit(isa.load, label, spm=spm_base, words=end - at, ddr=at * WORD_BYTES)

    def mm(label: str, x: Tensor, y: Tensor, *, k: int, n: int, tokens: int | None = None,
           out_t: bool = False, x_keep: bool = False, gelu: Tensor | None = None,
           residual: tuple[Tensor, Tensor] | None = None) -> None:  # fmt: skip
        """A MATMUL with W from DDR (``w_ddr`` left to the packer)."""
        fused = {}
        if gelu is not None:
            fused = dict(gelu_table=gelu.base)
        elif residual is not None:
            a, params = residual
            if a.stride != y.stride:  # pragma: no cover - the residual buffers share a shape
                raise CompileError("a fused residual add needs A with Y's stride")
            fused = dict(residual=a.base, residual_params=params.base, residual_shift=0)
        emit(isa.matmul, label, x=x.base, x_stride=x.stride,
             tokens=tokens if tokens is not None else x.rows, k=k, n=n, y=y.base,
             y_stride=y.stride, w_ddr=0, out_transposed=out_t, x_keep=x_keep,
             **fused)  # fmt: skip

    def resadd(label: str, a: Tensor, b: Tensor, dst: Tensor, params: Tensor, *,
               rows: int | None = None, dst_base: int | None = None) -> None:  # fmt: skip
        emit(isa.resadd, label, a=a.base, a_stride=a.stride,
             rows=rows if rows is not None else a.rows, cols=a.cols,
             dst=dst.base if dst_base is None else dst_base, dst_stride=dst.stride, b=b.base,
             b_stride=b.stride, params=params.base, shift=0)  # fmt: skip

    def ln(label: str, x: Tensor, y: Tensor, params: Tensor, rows: int | None = None) -> None:
        emit(isa.layernorm, label, src=x.base, src_stride=x.stride,
             rows=rows if rows is not None else x.rows, cols=x.cols, dst=y.base,
             dst_stride=y.stride, params=params.base, recip_mult=0, recip_shift=0,
             out_shift=0, eps_q=0)  # fmt: skip

    def rows_of(t: Tensor, r0: int, r1: int) -> Tensor:
        """Rows ``r0 .. r1 - 1`` of ``t`` (a token tile)."""
        return Tensor(t.name, t.row(r0), r1 - r0, t.cols, t.stride, t.elem_bytes)

    # spilling: the residual stream lives in the DDR scratch region, row-major with the SPM's
    # row stride, and moves through the tile buffer ``xt`` one token tile at a time
    tile = al.spill_tile
    tiles = [(r0, min(T, r0 + tile)) for r0 in range(0, T, tile)] if tile else []
    row_bytes = words_for(D) * WORD_BYTES

    def spill(ctor, label: str, t: Tensor, r0: int) -> None:
        """LOAD (``isa.load``) or STORE rows of the residual stream from ``r0`` on."""
        emit(ctor, label, spm=t.base, words=t.words, ddr=r0 * row_bytes)

    patches, pe, pos_q = spm["patches"], spm["patch_embed"], spm["pos_q"]
    pos_params, lnf = spm["pos_add.params"], spm["norm.params"]
    xs = [spm["x0"], spm["x1"]] if not tile else [spm["xt"]] * 2
    h, qk, vt = spm["ln"], spm["qk"], spm["vT"]
    h_mlp = spm["mlp.h"] if tile else h
    att_stride = words_for(T)
    logits, probs, ctx = spm["attn.logits"], spm["attn.probs"], spm["attn.context"]
    br, g, br_mlp = spm["branch"], spm["mlp.gelu"], spm["mlp.branch"]
    hn, out = spm["norm"], spm["logits"]

    names = list(ddr_consts)
    if al.compact:  # the globals the SPM keeps, then one block's constants at a time
        const_load("constants", pos_params.base, "pos_add.params")
    else:  # the whole section, once
        const_load("constants", spm[names[0]].base, names[0], names[-1])
    emit(isa.load, "input", spm=patches.base, words=patches.words, ddr=0)
    # The class-token row is a constant; copy it over row 0 of the first residual buffer.
    const_load("cls_row", xs[0].base, "cls_row")
    if tile:  # ... which is in DDR when spilling
        spill(isa.store, "embed.spill", rows_of(xs[0], 0, 1), 0)
    if al.compact:
        const_load("norm.params", lnf.base, "norm.params")
    if al.compact:  # the positional table lives in the embedding phase only
        const_load("pos_q", pos_q.base, "pos_q")
    # x0 rows 1.. = patch_embed + pos (per-channel multipliers); spilling: in ``pe``, then
    # to DDR rows 1..
    embed = pe if tile else rows_of(xs[0], 1, 1 + P)
    if fuse_residual:  # the add in the MATMUL's output: A = pos_q (const_params swaps them)
        mm("patch_embed", patches, embed, k=spec.patch_dim, n=D, residual=(pos_q, pos_params))
    else:
        mm("patch_embed", patches, pe, k=spec.patch_dim, n=D)
        resadd("pos_add", pe, pos_q, embed, pos_params)
    if tile:
        spill(isa.store, "embed.spill", pe, 1)
    cur = 0
    heads_per_job = max(1, min(groups, H))
    for i in range(spec.depth):
        b = f"blocks.{i}"
        c = {part: spm[f"{b}.{part}"] for part in BLOCK_CONSTS}
        x, x_next = xs[cur], xs[1 - cur]
        if al.compact:  # this block's constants into the one slot
            const_load(f"{b}.constants", c["norm1.params"].base, f"{b}.norm1.params",
                       f"{b}.add2.params")  # fmt: skip
        if tile:  # LN1 tile by tile from DDR
            for r0, r1 in tiles:
                xa = rows_of(x, 0, r1 - r0)
                spill(isa.load, f"{b}.spill", xa, r0)
                ln(f"{b}.norm1", xa, rows_of(h, r0, r1), c["norm1.params"])
        else:
            ln(f"{b}.norm1", x, h, c["norm1.params"])
        qkv = f"{b}.attn.qkv"
        mm(qkv, h, qk, k=D, n=2 * D)
        mm(qkv, h, vt, k=D, n=D, out_t=True, x_keep=True)
        for c0 in range(0, H, al.att_heads):  # chunks of heads whose logits fit the SPM
            c1 = min(H, c0 + al.att_heads)
            for h0 in range(c0, c1, heads_per_job):
                nh = min(heads_per_job, c1 - h0)
                emit(isa.matmul, f"{b}.attn.qk", x=qk.base + h0 * dh // WORD_BYTES,
                     x_stride=qk.stride, tokens=T, k=dh, n=T,
                     y=logits.base + (h0 - c0) * T * att_stride, y_stride=att_stride,
                     w_spm=qk.base + (D + h0 * dh) // WORD_BYTES, w_stride=qk.stride,
                     mult=0, shift=0, heads=nh if groups > 1 else 0,
                     head_x_step=dh // WORD_BYTES, head_w_step=dh // WORD_BYTES,
                     head_y_step=T * att_stride)  # fmt: skip
            jobs = range(c0, c1, heads_per_job)
            # chained: one softmax per P x V job (its heads' rows) right before it, so each
            # job takes its X from its own softmax (docs/isa.md "Chains")
            split = "attn.softmax" in chain and len(jobs) > 1
            if not split:
                emit(isa.softmax, f"{b}.attn.softmax", src=logits.base, src_stride=att_stride,
                     rows=(c1 - c0) * T, cols=T, dst=probs.base, dst_stride=att_stride,
                     in_shift=0, log2=log2)  # fmt: skip
            for h0 in jobs:
                nh = min(heads_per_job, c1 - h0)
                if split:
                    at = (h0 - c0) * T * att_stride
                    emit(isa.softmax, f"{b}.attn.softmax", src=logits.base + at,
                         src_stride=att_stride, rows=nh * T, cols=T, dst=probs.base + at,
                         dst_stride=att_stride, in_shift=0, log2=log2)  # fmt: skip
                emit(isa.matmul, f"{b}.attn.sv", x=probs.base + (h0 - c0) * T * att_stride,
                     x_stride=att_stride, tokens=T, k=T, n=dh,
                     y=ctx.base + h0 * dh // WORD_BYTES, y_stride=ctx.stride,
                     w_spm=vt.base + h0 * dh * vt.stride, w_stride=vt.stride, mult=0, shift=0,
                     x_unsigned=not log2, x_log2=log2, heads=nh if groups > 1 else 0,
                     head_x_step=T * att_stride, head_w_step=dh * vt.stride,
                     head_y_step=dh // WORD_BYTES)  # fmt: skip
        # the projection and the MLP: per token tile when spilling (one tile of all tokens
        # otherwise), the residual tile loaded before and stored after
        for r0, r1 in tiles or [(0, T)]:
            n_t = r1 - r0
            xa, xn = (rows_of(x, 0, n_t),) * 2 if tile else (x, x_next)
            if tile:
                spill(isa.load, f"{b}.spill", xa, r0)
            ct = rows_of(ctx, r0, r1) if tile else ctx
            if fuse_residual:
                mm(f"{b}.attn.proj", ct, xn, k=D, n=D, residual=(xa, c["add1.params"]))
            else:
                bt = rows_of(br, 0, n_t)
                mm(f"{b}.attn.proj", ct, bt, k=D, n=D)
                resadd(f"{b}.add1", xa, bt, xn, c["add1.params"])
            xa, xn = xn, xa
            ht, gt = (rows_of(h_mlp, 0, n_t), rows_of(g, 0, n_t)) if tile else (h, g)
            ln(f"{b}.norm2", xa, ht, c["norm2.params"])
            mm(f"{b}.mlp.fc1", ht, gt, k=D, n=M, gelu=c["gelu.table"])
            if fuse_residual:
                mm(f"{b}.mlp.fc2", gt, xn, k=M, n=D, residual=(xa, c["add2.params"]))
            else:
                bt = rows_of(br_mlp, 0, n_t) if tile else br_mlp
                mm(f"{b}.mlp.fc2", gt, bt, k=M, n=D)
                resadd(f"{b}.add2", xa, bt, xn, c["add2.params"])
            if tile:
                spill(isa.store, f"{b}.spill", xn, r0)
        cur = 0 if tile else xs.index(xn)
    if tile:  # the class token's row from DDR
        spill(isa.load, "norm.spill", rows_of(xs[cur], 0, 1), 0)
    ln("norm", xs[cur], hn, lnf, rows=1)
    mm("head", hn, out, k=D, n=classes)
    emit(isa.store, "logits", spm=out.base, words=out.words, ddr=0)
    prog.append(isa.end(label="end"))
    if chain:  # CHAIN on each unit of a chained role whose next instruction fits
        for j, ins in enumerate(prog[:-1]):
            if ins.op in isa.CHAIN_OPS and chain_role(ins.label) in chain \
                    and isa.chain_fits(ins, prog[j + 1]) is None:  # fmt: skip
                prog[j] = ins.replace(flags=ins.flags | type(ins.flags).CHAIN)
    return tuple(prog)
