"""Model shapes without torch: :class:`ModelSpec`, the :data:`ZOO` of named shapes, :func:`get_spec`.

The design-space explorer reads only these numbers (tokens, embed_dim, mlp_dim ...) and must
answer in seconds, so this module imports nothing heavy; :mod:`vitaccel.models.zoo` re-exports
everything here and adds the torch side (float models, weight loading).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelError", "WeightsError", "ModelSpec", "ZOO", "get_spec", "patchify"]

_INT_FIELDS = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "heads")


class ModelError(ValueError):
    """An unknown model name or an inconsistent model shape."""


class WeightsError(ValueError):
    """A weights file that is missing, unreadable or does not fit the model."""


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a class-token Vision Transformer.

    Parameters
    ----------
    name : str
        Zoo name, e.g. ``"deit-tiny"``.
    img_size : int
        Side of the square input image in pixels.
    patch_size : int
        Side of a square patch; must divide ``img_size``.
    in_chans : int
        Input channels (3 for RGB, 1 for the digits).
    num_classes : int
        Classifier outputs.
    embed_dim : int
        Token width.
    depth : int
        Number of encoder blocks.
    heads : int
        Attention heads; must divide ``embed_dim``.
    mlp_ratio : float
        MLP hidden width over ``embed_dim``.
    """

    name: str
    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    embed_dim: int
    depth: int
    heads: int
    mlp_ratio: float

    def __post_init__(self):
        for field in _INT_FIELDS:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelError(f"{self.name}: {field} must be a positive integer, not {value!r}")
        if not self.mlp_ratio > 0:
            raise ModelError(f"{self.name}: mlp_ratio must be positive, not {self.mlp_ratio!r}")
        if self.img_size % self.patch_size:
            raise ModelError(
                f"{self.name}: patch_size {self.patch_size} does not divide img_size {self.img_size}"
            )
        if self.embed_dim % self.heads:
            raise ModelError(
                f"{self.name}: heads {self.heads} does not divide embed_dim {self.embed_dim}"
            )

    @property
    def patches(self) -> int:
        """Patches per image, ``(img_size / patch_size) ** 2``."""
        return (self.img_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        """Sequence length: the patches plus the class token."""
        return self.patches + 1

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.embed_dim // self.heads

    @property
    def mlp_dim(self) -> int:
        """MLP hidden width (``int(embed_dim * mlp_ratio)``, as timm computes it)."""
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def patch_dim(self) -> int:
        """Length of a flattened patch, the patch-embedding matmul's inner dimension."""
        return self.in_chans * self.patch_size**2


def _deit(name: str, *, embed_dim: int, heads: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        img_size=224,
        patch_size=16,
        in_chans=3,
        num_classes=1000,
        embed_dim=embed_dim,
        depth=12,
        heads=heads,
        mlp_ratio=4.0,
    )


ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _deit("deit-tiny", embed_dim=192, heads=3),
        _deit("deit-small", embed_dim=384, heads=6),
        _deit("deit-base", embed_dim=768, heads=12),
        # timm's vit_base_patch16_224: the same graph and shapes as DeiT-B.
        _deit("vit-base", embed_dim=768, heads=12),
        ModelSpec(
            name="digits-vit",
            img_size=8,
            patch_size=2,
            in_chans=1,
            num_classes=10,
            embed_dim=64,
            depth=4,
            heads=4,
            mlp_ratio=2.0,
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """Return the zoo entry called ``name``.

    Raises
    ------
    ModelError
        If ``name`` is not in :data:`ZOO`; the message lists the valid names.
    """
    try:
        return ZOO[name]
    except (KeyError, TypeError):
        raise ModelError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(ZOO))}"
        ) from None


def patchify(images, patch: int):
    """(B, C, H, W) -> (B, patches, C * patch * patch): row-major patches, each flattened in
    (channel, row, col) order, the order of the patch-embedding Conv2d weight (numpy only)."""
    import numpy as np

    images = np.asarray(images)
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, gh * gw, c * patch * patch)
