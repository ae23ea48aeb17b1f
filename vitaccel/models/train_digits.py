"""Train the shipped ``digits-vit`` weights, deterministically.

    python -m vitaccel.models.train_digits [--epochs 300] [--out vitaccel/models/weights]

Writes ``digits_vit.safetensors`` and ``digits_vit.json`` (metadata: epochs, seed,
float accuracy, torch version, training time), each through a temporary file and
a rename, so an interrupted run leaves the previous weights intact. Same seed,
torch version and thread count give the same bytes.

The recipe is the one measured in the prototype (NUMERICS.md): AdamW, cosine
learning rate, +-1 pixel random shifts and label smoothing 0.1; the test split is
only evaluated once, after the last epoch, so it never steers training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from vitaccel.models.data import (
    DIGITS_MAX_INK,
    DIGITS_MEAN,
    DIGITS_STD,
    SPLIT_SEED,
    TEST_SIZE,
    digits_splits,
)
from vitaccel.models.zoo import WEIGHTS_DIR, build_float_model, get_spec
from vitaccel.util import atomic_write_bytes, atomic_write_text

MODEL = "digits-vit"
SEED = 0
THREADS = 2
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 0.05
LABEL_SMOOTHING = 0.1
WARMUP_EPOCHS = 10
# Normalised value of a blank pixel: what a shift moves in from outside the image.
BACKGROUND = (0.0 - DIGITS_MEAN) / DIGITS_STD


def random_shift(images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixel in x and y independently, filling with background.

    Parameters
    ----------
    images : torch.Tensor
        ``(B, C, H, W)`` normalised images.
    generator : torch.Generator
        Source of the shifts, so augmentation is reproducible.
    """
    batch, _, height, width = images.shape
    padded = nn.functional.pad(images, (1, 1, 1, 1), value=BACKGROUND)
    dy = torch.randint(0, 3, (batch,), generator=generator)
    dx = torch.randint(0, 3, (batch,), generator=generator)
    rows = dy[:, None] + torch.arange(height)  # (B, H) rows of the padded image
    cols = dx[:, None] + torch.arange(width)  # (B, W)
    index = torch.arange(batch)[:, None, None]
    # Advanced indexing puts the (B, H, W) gather dims first and the channel last.
    shifted = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2).contiguous()


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # As in timm/DeiT: decaying norms, biases and embeddings only hurts a small model.
    return param.ndim <= 1 or name in ("pos_embed", "cls_token")


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on the given batch."""
    model.eval()
    return (model(images).argmax(dim=1) == labels).float().mean().item()


def train(*, epochs: int, seed: int = SEED) -> tuple[nn.Module, dict]:
    """Train ``digits-vit`` from the deterministic init; return the model and its metadata."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)

    splits = digits_splits()
    model = build_float_model(get_spec(MODEL), seed=seed)
    params = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in params if not _no_decay(n, p)], "weight_decay": WEIGHT_DECAY},
            {"params": [p for n, p in params if _no_decay(n, p)], "weight_decay": 0.0},
        ],
        lr=LEARNING_RATE,
    )
    steps_per_epoch = math.ceil(len(splits.train_x) / BATCH_SIZE)
    total_steps = epochs * steps_per_epoch
    warmup_steps = min(WARMUP_EPOCHS * steps_per_epoch, total_steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    generator = torch.Generator().manual_seed(seed)

    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(splits.train_x), generator=generator)
        epoch_loss = 0.0
        for first in range(0, len(order), BATCH_SIZE):
            batch = order[first : first + BATCH_SIZE]
            images = random_shift(splits.train_x[batch], generator=generator)
            loss = loss_fn(model(images), splits.train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += loss.item() * len(batch)
        if (epoch + 1) % 25 == 0 or epoch + 1 == epochs:
            print(
                f"epoch {epoch + 1:4d}/{epochs}  loss {epoch_loss / len(order):.4f}  "
                f"{time.perf_counter() - start:6.1f} s",
                flush=True,
            )
    seconds = time.perf_counter() - start

    metadata = {
        "model": MODEL,
        "epochs": epochs,
        "seed": seed,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "weight_decay": WEIGHT_DECAY,
        "label_smoothing": LABEL_SMOOTHING,
        "augmentation": "random shift of -1/0/+1 pixel in x and y",
        "float_test_accuracy": round(accuracy(model, splits.test_x, splits.test_y), 6),
        "float_train_accuracy": round(accuracy(model, splits.train_x, splits.train_y), 6),
        "test_images": TEST_SIZE,
        "split_seed": SPLIT_SEED,
        "normalisation": {"max_ink": DIGITS_MAX_INK, "mean": DIGITS_MEAN, "std": DIGITS_STD},
        "torch_version": torch.__version__,
        "threads": THREADS,
        "training_seconds": round(seconds, 1),
    }
    return model.eval(), metadata


def save(model: nn.Module, metadata: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write ``digits_vit.safetensors`` and ``digits_vit.json`` atomically into ``out_dir``."""
    from safetensors.torch import save as safetensors_bytes

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    blob = safetensors_bytes(state, metadata={"model": MODEL, "format": "pt"})
    weights_path = atomic_write_bytes(out_dir / "digits_vit.safetensors", blob)
    metadata = {**metadata, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    json_path = atomic_write_text(
        out_dir / "digits_vit.json", json.dumps(metadata, indent=2, sort_keys=True) + "\n"
    )
    return weights_path, json_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300, help="training epochs (default 300)")
    parser.add_argument(
        "--seed", type=int, default=SEED, help="init, shuffle and augmentation seed"
    )
    parser.add_argument(
        "--out", type=Path, default=WEIGHTS_DIR, help=f"output directory (default {WEIGHTS_DIR})"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, not {args.epochs}")
    model, metadata = train(epochs=args.epochs, seed=args.seed)
    weights_path, json_path = save(model, metadata, args.out)
    print(
        f"float test accuracy {metadata['float_test_accuracy']:.4f} after {args.epochs} epochs "
        f"in {metadata['training_seconds']} s; wrote {weights_path} ({weights_path.stat().st_size} bytes) "
        f"and {json_path}"
    )


if __name__ == "__main__":
    main()
