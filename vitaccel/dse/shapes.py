"""The operations of a ViT forward pass, as the cost models see them (no torch).

One list per model, in execution order, mirroring :meth:`vitaccel.models.golden.IntViT.forward`
step for step: the patch embedding, per encoder block ``norm1, qkv, qk, softmax, sv, proj,
add1, norm2, fc1, gelu, fc2, add2``, then the final LayerNorm and the head on the class
token only. A matmul is ``batch`` independent products of an ``m x k`` activation with a
``k x n`` operand: a weight from DDR (``weight_layer`` names it as the golden model does, so
a per-layer W4 ratio attaches to it) or, for ``qk`` and ``sv``, another activation.
A nonlinear op is ``rows`` rows of ``width`` elements.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from vitaccel.models.specs import ModelSpec, get_spec

__all__ = [
    "MATMUL_KINDS",
    "NONLINEAR_KINDS",
    "BLOCK_KINDS",
    "Op",
    "model_ops",
    "block_ops",
    "linear_layer_names",
    "spec_of",
]

MATMUL_KINDS = ("patch_embed", "qkv", "qk", "sv", "proj", "fc1", "fc2", "head")
NONLINEAR_KINDS = ("layernorm", "softmax", "gelu", "residual")
# The operations of one encoder block in the order the roofline report lists them.
BLOCK_KINDS = ("qkv", "qk", "sv", "proj", "fc1", "fc2", "softmax", "layernorm", "gelu")


@dataclass(frozen=True)
class Op:
    """One operation of the forward pass.

    Attributes
    ----------
    name : str
        Unique within the model, e.g. ``"blocks.3.attn.qkv"`` (weight layers use the golden
        model's names), ``"blocks.3.attn.qk"``, ``"blocks.3.norm1"``.
    kind : str
        One of :data:`MATMUL_KINDS` or :data:`NONLINEAR_KINDS`.
    block : int or None
        Encoder block index; ``None`` for the patch embedding, final norm and head.
    m, k, n, batch : int
        Matmul shape: ``batch`` products ``(m x k) @ (k x n)``; zero for nonlinear ops.
    weight_layer : str or None
        Golden-model name of the weight (``None`` for activation x activation products).
    rows, width : int
        Nonlinear shape: ``rows`` rows of ``width`` elements (softmax rows span all heads).
    """

    name: str
    kind: str
    block: int | None
    m: int = 0
    k: int = 0
    n: int = 0
    batch: int = 1
    weight_layer: str | None = None
    rows: int = 0
    width: int = 0

    @property
    def is_matmul(self) -> bool:
        return self.kind in MATMUL_KINDS

    @property
    def macs(self) -> int:
        return self.batch * self.m * self.k * self.n if self.is_matmul else 0

    @property
    def elements(self) -> int:
        """Elements a nonlinear op processes (zero for a matmul)."""
        return 0 if self.is_matmul else self.rows * self.width

    @property
    def weights(self) -> int:
        """Weight parameters read from DDR (zero for activation x activation products)."""
        return self.k * self.n * self.batch if self.weight_layer else 0


def spec_of(model: str | ModelSpec) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else get_spec(model)


def linear_layer_names(model: str | ModelSpec) -> list[str]:
    """The weight layers in golden-model order (same as ``golden.linear_layer_names``)."""
    return [op.weight_layer for op in model_ops(model) if op.weight_layer]


def _block(spec: ModelSpec, i: int) -> list[Op]:
    t, d, h, hd, f = spec.tokens, spec.embed_dim, spec.heads, spec.head_dim, spec.mlp_dim
    p = f"blocks.{i}"
    return [
        Op(f"{p}.norm1", "layernorm", i, rows=t, width=d),
        Op(f"{p}.attn.qkv", "qkv", i, m=t, k=d, n=3 * d, weight_layer=f"{p}.attn.qkv"),
        Op(f"{p}.attn.qk", "qk", i, m=t, k=hd, n=t, batch=h),
        Op(f"{p}.attn.softmax", "softmax", i, rows=h * t, width=t),
        Op(f"{p}.attn.sv", "sv", i, m=t, k=t, n=hd, batch=h),
        Op(f"{p}.attn.proj", "proj", i, m=t, k=d, n=d, weight_layer=f"{p}.attn.proj"),
        Op(f"{p}.add1", "residual", i, rows=t, width=d),
        Op(f"{p}.norm2", "layernorm", i, rows=t, width=d),
        Op(f"{p}.mlp.fc1", "fc1", i, m=t, k=d, n=f, weight_layer=f"{p}.mlp.fc1"),
        Op(f"{p}.mlp.gelu", "gelu", i, rows=t, width=f),
        Op(f"{p}.mlp.fc2", "fc2", i, m=t, k=f, n=d, weight_layer=f"{p}.mlp.fc2"),
        Op(f"{p}.add2", "residual", i, rows=t, width=d),
    ]


@cache
def _model_ops(spec: ModelSpec) -> tuple[Op, ...]:
    ops = [
        Op(
            "patch_embed",
            "patch_embed",
            None,
            m=spec.patches,
            k=spec.patch_dim,
            n=spec.embed_dim,
            weight_layer="patch_embed",
        ),
        # Positional embedding add on the patch rows (the class row is a constant).
        Op("pos_add", "residual", None, rows=spec.patches, width=spec.embed_dim),
    ]
    for i in range(spec.depth):
        ops += _block(spec, i)
    ops += [
        Op("norm", "layernorm", None, rows=1, width=spec.embed_dim),
        Op("head", "head", None, m=1, k=spec.embed_dim, n=spec.num_classes, weight_layer="head"),
    ]
    return tuple(ops)


def model_ops(model: str | ModelSpec) -> tuple[Op, ...]:
    """Every operation of one image's forward pass, in execution order."""
    return _model_ops(spec_of(model))


def block_ops(model: str | ModelSpec, block: int = 0) -> tuple[Op, ...]:
    """The operations of one encoder block."""
    return tuple(op for op in model_ops(model) if op.block == block)
