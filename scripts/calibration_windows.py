"""Issue 24's calibration-window protocol (docs/numerics.md, "Per-channel migration, measured
over calibration windows"): one QuantConfig option on the four digits-ViT checkpoints x three
disjoint 64-image calibration windows of the train split, W8A8 and mixed 50 % W4.

Per checkpoint: test images (of 360) whose integer arg-max differs from float, per window,
W8A8 / mixed, and the lowest W8A8 logit cosine; then the flips summed over the 12 runs, the
flips on 300 held-out training images that are in no window (positions 320-619 of the
calibration shuffle) in brackets, and the mean logit SQNR on the test split per checkpoint.
Every figure comes from :func:`vitaccel.models.evaluate.evaluate`.

    PYTHONPATH=. python scripts/calibration_windows.py weight_rounding=gptq bias_correction=True
    PYTHONPATH=. python scripts/calibration_windows.py schemes=mixed w4_kind=pot4

(``key=value``: QuantConfig fields; ``schemes=`` the comma-separated schemes, default both.)
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from vitaccel.models.data import CALIBRATION_SEED, digits_splits
from vitaccel.models.evaluate import evaluate
from vitaccel.models.golden import QuantConfig
from vitaccel.models.train_digits import recipe_weights

CHECKPOINTS = ("shipped", "sgd", "adam", "strong-aug")
WINDOWS = 3
WINDOW = 64
HELD_OUT = slice(320, 620)


def _parse(arg: str):
    key, _, value = arg.partition("=")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, {"True": True, "False": False}.get(value, value)


def run(option: dict, schemes=("w8a8", "mixed"), windows: int = WINDOWS) -> dict:
    """Per checkpoint and scheme: flips per window on the test split, held-out flips per
    window, cosines and logit SQNRs per window; plus the quantize time."""
    splits = digits_splits()
    order = np.random.default_rng(CALIBRATION_SEED).permutation(len(splits.train_x))
    held = torch.from_numpy(order[HELD_OUT])
    held_data = (splits.train_x[held], splits.train_y[held])
    out: dict = {}
    for recipe in CHECKPOINTS:
        for scheme in schemes:
            cfg = QuantConfig(scheme=scheme, w4_ratio=0.5, **option)
            rows = []
            for w in range(windows):
                calib = splits.train_x[torch.from_numpy(order[WINDOW * w : WINDOW * (w + 1)])]
                r = evaluate(
                    "digits-vit", weights=recipe_weights(recipe), config=cfg, calibration=calib
                )
                h = evaluate(
                    "digits-vit",
                    weights=recipe_weights(recipe),
                    config=cfg,
                    calibration=calib,
                    data=held_data,
                )
                rows.append(
                    {
                        "flips": round((1 - r.agreement) * r.images),
                        "held_out_flips": round((1 - h.agreement) * h.images),
                        "cosine": r.cosine,
                        "logit_sqnr_db": r.logit_sqnr_db,
                        "top1_drop": r.float_top1 - r.int_top1,
                    }
                )
            out[f"{recipe}/{scheme}"] = rows
    return out


def summary(res: dict) -> str:
    cells, tot, held = [], {"w8a8": 0, "mixed": 0}, {"w8a8": 0, "mixed": 0}
    for recipe in CHECKPOINTS:
        w8 = res.get(f"{recipe}/w8a8", [])
        mx = res.get(f"{recipe}/mixed", [])
        cos = min((r["cosine"] for r in w8), default=float("nan"))
        cells.append(
            f"{' '.join(str(r['flips']) for r in w8) or '-'} / "
            f"{' '.join(str(r['flips']) for r in mx) or '-'}, {cos:.4f}"
        )
        for s, rows in (("w8a8", w8), ("mixed", mx)):
            tot[s] = tot.get(s, 0) + sum(r["flips"] for r in rows)
            held[s] = held.get(s, 0) + sum(r["held_out_flips"] for r in rows)
    sq = {k: np.mean([r["logit_sqnr_db"] for r in v]) for k, v in res.items() if k != "seconds"}
    flips = f"{tot['w8a8']} / {tot['mixed']} ({held['w8a8']} / {held['mixed']})"
    sqnr = ", ".join(f"{k} {v:.2f}" for k, v in sq.items())
    return " | ".join(cells) + f" | {flips} | {sqnr}"


if __name__ == "__main__":
    torch.set_num_threads(1)
    option = dict(_parse(a) for a in sys.argv[1:])
    schemes = tuple(str(option.pop("schemes", "w8a8,mixed")).split(","))
    t = time.time()
    res = run(option, schemes)
    res["seconds"] = time.time() - t
    print(json.dumps({"option": option, "result": res}))
    print(summary({k: v for k, v in res.items() if k != "seconds"}), file=sys.stderr)
