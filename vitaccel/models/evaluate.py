"""Float vs integer evaluation: what the integer approximations cost on real data.

For digits-vit (trained weights shipped) the metrics are top-1 accuracy on the test split;
for the zoo models without weights (DeiT/ViT, random init, random images) only the fidelity
measures make sense: top-1 agreement with float and logit cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vitaccel.models.golden import IntViT, QuantConfig, quantize_model
from vitaccel.models.zoo import get_model

__all__ = ["EvalResult", "evaluate", "prepare"]


@dataclass
class EvalResult:
    model: str
    scheme: str
    w4_ratio: float
    images: int
    float_top1: float | None
    int_top1: float | None
    agreement: float
    cosine: float
    calibration_images: int | None = None
    # Ranked per-tensor errors (error_report.TensorError.as_dict()), when asked for.
    per_layer: list[dict] | None = None
    # The golden-model activation widths above int8 (QuantConfig.wide_fields), if any.
    activation_bits: dict[str, int] | None = None
    # SQNR (dB) of the dequantised integer logits against float over all evaluation images.
    logit_sqnr_db: float | None = None
    # The weight rounding when it is not round-to-nearest (QuantConfig.weight_rounding).
    weight_rounding: str | None = None

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        for key in ("per_layer", "activation_bits", "weight_rounding"):
            if out[key] is None:
                del out[key]
        return out


def _data(name: str, spec, images: int | None, seed: int = 0):
    """(calibration images, evaluation images, labels or None)."""
    if name == "digits-vit":
        from vitaccel.models.data import calibration_images, digits_splits

        splits = digits_splits()
        n = len(splits.test_x) if images is None else min(images, len(splits.test_x))
        return calibration_images(), splits.test_x[:n], splits.test_y[:n]
    from vitaccel.models.data import random_images

    n = 8 if images is None else images
    calib = random_images(spec, 8, seed=seed + 1)
    return calib, random_images(spec, n, seed=seed), None


def prepare(
    name: str,
    *,
    weights=None,
    config: QuantConfig | None = None,
    images: int | None = None,
    progress=None,
) -> tuple[object, torch.nn.Module, IntViT, torch.Tensor, torch.Tensor | None]:
    """Load the float model, quantise it, and return (spec, float, golden, images, labels)."""
    spec, model, golden, _calib, x, y = _quantized(name, weights, config, images, progress)
    return spec, model, golden, x, y


def _quantized(
    name: str,
    weights,
    config: QuantConfig | None,
    images: int | None,
    progress,
    calibration: torch.Tensor | None = None,
    data: tuple | None = None,
):
    """:func:`prepare`, also returning the calibration images: (spec, float, golden, calib, x, y).

    ``calibration`` and ``data`` (images, labels or None) replace the default calibration
    images and evaluation set (the calibration-window studies of docs/numerics.md).
    """
    config = config or QuantConfig()
    spec, model = get_model(name, weights=weights)
    calib, x, y = _data(name, spec, images)
    if calibration is not None:
        calib = calibration
    if data is not None:
        x, y = data
    if progress:
        progress(f"calibrating on {len(calib)} images")
    golden = quantize_model(model, calib, config)
    return spec, model, golden, calib, x, y


def evaluate(
    name: str,
    *,
    weights=None,
    config: QuantConfig | None = None,
    images: int | None = None,
    batch: int = 64,
    progress=None,
    per_layer: bool = False,
    calibration: torch.Tensor | None = None,
    data: tuple | None = None,
) -> EvalResult:
    """Quantise ``name`` and measure the integer model against float on evaluation images.

    With ``per_layer`` the result also carries the per-tensor error report
    (:func:`vitaccel.models.error_report.per_layer_error`) on the calibration images.
    ``calibration`` and ``data`` (images, labels or None) replace the default calibration
    images and evaluation images.
    """
    config = config or QuantConfig()
    spec, model, golden, calib, x, y = _quantized(
        name, weights, config, images, progress, calibration, data
    )
    f_logits, i_logits = [], []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if progress:
            progress(f"images {start + len(chunk)}/{len(x)}")
        with torch.no_grad():
            f_logits.append(model(chunk).double().numpy())
        i_logits.append(golden.forward(chunk))
    lf = np.concatenate(f_logits)
    li = np.concatenate(i_logits)
    deq = golden.dequantize_logits(li)
    cos = (deq * lf).sum(1) / np.maximum(
        np.linalg.norm(deq, axis=1) * np.linalg.norm(lf, axis=1), 1e-30
    )
    agree = float((li.argmax(1) == lf.argmax(1)).mean())
    f_top1 = i_top1 = None
    if y is not None:
        labels = y.numpy()
        f_top1 = float((lf.argmax(1) == labels).mean())
        i_top1 = float((li.argmax(1) == labels).mean())
    ratio = {"w8a8": 0.0, "w4a8": 1.0}.get(config.scheme, config.w4_ratio)
    from vitaccel.models.error_report import per_layer_error, sqnr

    report = None
    if per_layer:
        if progress:
            progress(f"per-layer error on the {len(calib)} calibration images")
        report = [r.as_dict() for r in per_layer_error(model, golden, calib)]
    return EvalResult(
        name,
        config.scheme,
        ratio,
        len(x),
        f_top1,
        i_top1,
        agree,
        float(cos.mean()),
        len(calib),
        report,
        {n: getattr(config, n) for n in config.wide_fields()} or None,
        sqnr(deq, lf),
        None
        if config.weight_rounding == "nearest"
        else config.weight_rounding + (" (act order)" if config.gptq_act_order else ""),
    )
