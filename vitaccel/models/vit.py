"""A plain pre-LN Vision Transformer whose parameters are named exactly like timm's.

timm cannot be installed here (it imports torchvision, which does not load beside
the CPU torch wheel), so this module re-creates ``timm.models.VisionTransformer``
for the class-token, no-dropout, no-layer-scale configuration used by DeiT and ViT.
Every ``state_dict`` key and tensor shape matches timm's, so a timm or DeiT
checkpoint (``deit_tiny_patch16_224`` ...) loads without renaming.

The forward pass is written op by op on purpose: the integer golden model mirrors
it step for step, so each line here has one counterpart there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from vitaccel.models.specs import ModelSpec

__all__ = ["Attention", "Block", "Mlp", "PatchEmbed", "VisionTransformer", "LAYERNORM_EPS"]

#: timm's ViT/DeiT LayerNorm epsilon (``partial(nn.LayerNorm, eps=1e-6)``).
LAYERNORM_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: a Conv2d with kernel = stride = patch size.

    Parameters
    ----------
    img_size, patch_size, in_chans, embed_dim : int
        Image side, patch side, input channels and embedding width.

    Attributes
    ----------
    proj : nn.Conv2d
        ``(embed_dim, in_chans, patch_size, patch_size)`` weight plus bias; timm's
        ``patch_embed.proj``.
    """

    def __init__(self, *, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, dim, H/p, W/p) -> (B, patches, dim), patches in row-major order.
        return self.proj(images).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection, laid out like timm's.

    Parameters
    ----------
    dim : int
        Embedding width.
    heads : int
        Number of heads; ``dim`` must be divisible by it.

    Attributes
    ----------
    qkv : nn.Linear
        ``dim -> 3*dim`` with bias; output columns are ``[q | k | v]``, each split
        into ``heads`` consecutive chunks of ``head_dim``.
    proj : nn.Linear
        ``dim -> dim`` output projection.
    """

    def __init__(self, *, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        # timm's exact layout: (B, N, 3, heads, head_dim) -> (3, B, heads, N, head_dim).
        qkv = (
            self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, N, N)
        probs = scores.softmax(dim=-1)
        context = probs @ v  # (B, heads, N, head_dim)
        # Heads back side by side: column h*head_dim + j of the projection input.
        context = context.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(context)


class Mlp(nn.Module):
    """Feed-forward block ``fc2(GELU(fc1(x)))`` with exact (erf) GELU.

    Attributes
    ----------
    fc1 : nn.Linear
        ``dim -> mlp_dim``.
    fc2 : nn.Linear
        ``mlp_dim -> dim``.
    """

    def __init__(self, *, dim: int, mlp_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.act = nn.GELU(approximate="none")
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """One pre-LN encoder block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    Attributes
    ----------
    norm1, norm2 : nn.LayerNorm
        eps = 1e-6, with affine weight and bias.
    attn : Attention
    mlp : Mlp
    """

    def __init__(self, *, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.attn = Attention(dim=dim, heads=heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.mlp = Mlp(dim=dim, mlp_dim=mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class VisionTransformer(nn.Module):
    """Class-token ViT/DeiT classifier with timm's parameter names and shapes.

    Parameters
    ----------
    spec : ModelSpec
        The model shape (see :mod:`vitaccel.models.zoo`).

    Attributes
    ----------
    patch_embed : PatchEmbed
        ``patch_embed.proj`` is the patch Conv2d.
    cls_token : nn.Parameter
        ``(1, 1, embed_dim)``, prepended to the patch tokens (token 0).
    pos_embed : nn.Parameter
        ``(1, tokens, embed_dim)``, added after the class token is prepended.
    blocks : nn.Sequential
        ``depth`` :class:`Block` modules, keys ``blocks.{i}.*``.
    norm : nn.LayerNorm
        Final LayerNorm (eps 1e-6), applied to all tokens.
    head : nn.Linear
        ``embed_dim -> num_classes`` on the class token.

    Notes
    -----
    No dropout, drop-path, layer scale or distillation token: the inference graph
    of timm's ``VisionTransformer`` with ``global_pool='token'``. Weights are left
    at PyTorch's default init; :func:`vitaccel.models.zoo.build_float_model`
    applies a deterministic timm-like init.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        dim = spec.embed_dim
        self.patch_embed = PatchEmbed(
            img_size=spec.img_size,
            patch_size=spec.patch_size,
            in_chans=spec.in_chans,
            embed_dim=dim,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.tokens, dim))
        self.blocks = nn.Sequential(
            *(Block(dim=dim, heads=spec.heads, mlp_dim=spec.mlp_dim) for _ in range(spec.depth))
        )
        self.norm = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.head = nn.Linear(dim, spec.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Parameters
        ----------
        images : torch.Tensor
            ``(B, in_chans, img_size, img_size)``, already normalised.

        Returns
        -------
        torch.Tensor
            ``(B, num_classes)`` logits.
        """
        spec = self.spec
        expected = (spec.in_chans, spec.img_size, spec.img_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"{spec.name} expects images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"not {tuple(images.shape)}"
            )
        x = self.patch_embed(images)  # (B, patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, tokens, dim)
        x = x + self.pos_embed
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x[:, 0])
