"""Input data: the scikit-learn handwritten digits and noise images for the zoo models.

The digits (1,797 8x8 greyscale images, 0..16 ink levels) ship inside scikit-learn,
so the default model trains, calibrates and is tested with no download. Every split
here is fixed by a seed, so accuracy numbers are comparable from run to run.

Normalisation (the golden model and the hardware driver must apply the same):
``x = (pixel / 16 - DIGITS_MEAN) / DIGITS_STD`` with mean = std = 0.5, i.e. ink
levels 0..16 map linearly onto [-1, 1].
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:
    from vitaccel.models.zoo import ModelSpec

__all__ = [
    "DIGITS_MEAN",
    "DIGITS_STD",
    "DIGITS_MAX_INK",
    "DigitsSplits",
    "calibration_images",
    "digits_splits",
    "normalise_digits",
    "random_images",
]

#: Largest ink level in sklearn's digits; dividing by it scales pixels to [0, 1].
DIGITS_MAX_INK = 16.0
DIGITS_MEAN = 0.5
DIGITS_STD = 0.5

TEST_SIZE = 360  # 20% of 1,797, stratified by class
SPLIT_SEED = 0
CALIBRATION_SEED = 1
CALIBRATION_SIZE = 64


class DigitsSplits(NamedTuple):
    """Normalised digits: images ``(N, 1, 8, 8)`` float32, labels ``(N,)`` int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def normalise_digits(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Map raw ink levels (0..16, any shape) to the model's input range [-1, 1]."""
    pixels = torch.as_tensor(pixels, dtype=torch.float32)
    return (pixels / DIGITS_MAX_INK - DIGITS_MEAN) / DIGITS_STD


@lru_cache(maxsize=1)
def _split_indices() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Imported here: scikit-learn is only needed by code that touches the digits.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)  # (1797, 8, 8), 0..16
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED
    )
    return images, labels, np.sort(train_idx), np.sort(test_idx)


def digits_splits() -> DigitsSplits:
    """Return the fixed stratified train (1,437) / test (360) split, normalised.

    Fresh tensors on every call, so callers may modify them in place.
    """
    images, labels, train_idx, test_idx = _split_indices()

    def part(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return normalise_digits(images[idx][:, None]), torch.tensor(labels[idx])

    train_x, train_y = part(train_idx)
    test_x, test_y = part(test_idx)
    return DigitsSplits(train_x, train_y, test_x, test_y)


def calibration_images(n: int = CALIBRATION_SIZE) -> torch.Tensor:
    """The first ``n`` training images after a fixed shuffle, for quantisation calibration.

    Drawn from the train split only, so calibration never sees a test image. The
    order is fixed: ``calibration_images(32)`` is a prefix of ``calibration_images(64)``.

    Parameters
    ----------
    n : int
        Number of images, 1 .. 1,437.

    Returns
    -------
    torch.Tensor
        ``(n, 1, 8, 8)`` normalised float32.
    """
    train_x = digits_splits().train_x
    if not isinstance(n, int) or not 1 <= n <= len(train_x):
        raise ValueError(
            f"calibration image count must be an integer in 1..{len(train_x)}, not {n!r}"
        )
    order = np.random.default_rng(CALIBRATION_SEED).permutation(len(train_x))
    return train_x[torch.from_numpy(order[:n])]


def random_images(spec: ModelSpec, n: int, *, seed: int = 0) -> torch.Tensor:
    """Deterministic standard-normal images shaped for ``spec`` (zoo models have no dataset here).

    Standard normal matches an ImageNet-normalised input's scale well enough for
    shape checks, cycle counts and bit-exactness, not for accuracy.

    Returns
    -------
    torch.Tensor
        ``(n, in_chans, img_size, img_size)`` float32.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"image count must be a positive integer, not {n!r}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, spec.in_chans, spec.img_size, spec.img_size, generator=generator)
