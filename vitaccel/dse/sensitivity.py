"""Per-layer sensitivity of the golden model to the W4 ratio: measured once, read at query time.

The explorer bounds each layer's W4 ratio with these curves. For every encoder weight layer
``L`` and ratio ``r`` in :data:`RATIOS` (only ``L`` mixed, every other layer W8) the data
file holds the drop of the integer model's logit cosine similarity to the float model,
relative to W8A8: ``drop_L(r) = cos(W8A8) - cos(L at r)``. A design's fidelity is predicted
additively, ``cos = cos(W8A8) - sum_L drop_L(r_L)`` (linear interpolation in ``r``); the data
file also holds uniform-ratio runs that check how well the sum predicts the joint effect.

Where the numbers come from:

* ``digits-vit`` (trained weights ship with the package): **measured** with
  :func:`vitaccel.models.evaluate.evaluate` on the 360-image digits test split; top-1 is
  stored too.
* DeiT / ViT zoo models (no weights): a **proxy**. For each layer, the added relative squared
  weight error of the mixed quantisation, ``e_L(r) = (|W - Q_mix(W, r)|^2 - |W - Q_8(W)|^2) /
  |W|^2``, on the deterministic random-init weights (rows chosen as the golden quantiser
  chooses them, without input statistics), times a scale ``kappa`` fitted by least squares
  on digits-vit's measured drops against its own ``e_L(r)``. The proxy ranks layers and
  ratios; its absolute value inherits the digits model's error-to-cosine ratio.

Regenerate ``data/sensitivity.json`` with ``python -m vitaccel.dse.sensitivity`` (about two
minutes; imports torch). Query-time code below reads only the JSON.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

__all__ = [
    "RATIOS",
    "DATA_PATH",
    "SensitivityError",
    "load",
    "layer_drop",
    "predict",
    "regenerate",
]

DATA_PATH = Path(__file__).parent / "data" / "sensitivity.json"
RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)
KINDS = ("int4", "pot4")
PROXY_MODELS = ("deit-tiny", "deit-small", "deit-base", "vit-base")


class SensitivityError(ValueError):
    """No sensitivity data for a model or W4 kind."""


@cache
def load(path: Path = DATA_PATH) -> dict:
    return json.loads(Path(path).read_text())


def model_entry(model: str, w4_kind: str = "int4") -> dict:
    if not DATA_PATH.is_file():
        raise SensitivityError(
            f"no sensitivity data ({DATA_PATH.name} missing); run `python -m vitaccel.dse.sensitivity`"
        )
    data = load()
    try:
        return data["models"][model][w4_kind]
    except KeyError:
        raise SensitivityError(
            f"no W4 sensitivity data for model {model!r} ({w4_kind}); "
            f"known: {', '.join(sorted(data['models']))}; run `python -m vitaccel.dse.sensitivity`"
        ) from None


def _interp(curve: list[float], r: float) -> float:
    if r <= 0:
        return 0.0
    pos = min(r, 1.0) * (len(RATIOS) - 1)
    i = min(int(pos), len(RATIOS) - 2)
    f = pos - i
    return curve[i] * (1 - f) + curve[i + 1] * f


def layer_drop(entry: dict, layer: str, r: float) -> float:
    """Predicted cosine drop of one layer at W4 ratio ``r`` (0 for layers without data)."""
    curve = entry["layers"].get(layer)
    return 0.0 if curve is None else max(0.0, _interp(curve, r))


def predict(model: str, ratios: dict[str, float], w4_kind: str = "int4") -> dict:
    """Predicted fidelity of a per-layer W4 ratio assignment (additive over layers).

    ``added_error``: predicted added relative squared logit error over W8A8;
    ``cosine_to_w8a8``: ``1 - added_error / 2`` (small-error approximation). For a measured
    model also ``error`` (W8A8's own error plus the added one), ``cosine_to_float``,
    ``w8a8_top1`` and the measured top-1 of the uniform-ratio run nearest above the design's
    mean ratio (``top1_uniform``).
    """
    entry = model_entry(model, w4_kind)
    added = sum(layer_drop(entry, layer, r) for layer, r in ratios.items())
    out = {
        "method": entry["method"],
        "metric": "added relative squared logit error vs W8A8",
        "added_error": round(added, 8),
        "cosine_to_w8a8": round(1 - added / 2, 6),
    }
    base = entry.get("baseline") or {}
    if "error" in base:
        total = base["error"] + added
        out.update(
            error=round(total, 8),
            cosine_to_float=round(1 - total / 2, 6),
            w8a8_top1=base.get("top1"),
        )
        n_layers = len(entry["layers"])
        mean = sum(ratios.values()) / n_layers if n_layers else 0.0
        for check in entry.get("uniform_check", []):
            if check["w4_ratio"] >= mean - 1e-9 and mean > 0:
                out["top1_uniform"] = {
                    "w4_ratio": check["w4_ratio"],
                    "top1": check["measured_top1"],
                }
                break
    return out


# ---------------------------------------------------------------------------------------
# Regeneration (offline; imports torch)
# ---------------------------------------------------------------------------------------


def _encoder_layers(depth: int) -> list[str]:
    return [
        f"blocks.{i}.{name}"
        for i in range(depth)
        for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ]


def _proxy_errors(weights: dict, kind: str) -> dict[str, list[float]]:
    import numpy as np

    from vitaccel.quant.scales import quantize_weight

    out = {}
    for layer, w in weights.items():
        w = np.asarray(w, dtype=np.float64)
        norm = float((w**2).sum())
        base = quantize_weight(w, 0.0, kind)
        err8 = float(((w - base.q * base.scale[:, None]) ** 2).sum())
        curve = []
        for r in RATIOS:
            q = quantize_weight(w, r, kind)
            err = float(((w - q.q * q.scale[:, None]) ** 2).sum())
            curve.append((err - err8) / norm)
        out[layer] = curve
    return out


def _layer_weights(model, layers: list[str]) -> dict:
    mods = dict(model.named_modules())
    return {layer: mods[layer].weight.detach().double().numpy() for layer in layers}


def _logit_error(logits, ref_logits) -> float:
    """Mean over images of |l - l_ref|^2 / |l_ref|^2."""
    import numpy as np

    err = ((logits - ref_logits) ** 2).sum(1) / np.maximum((ref_logits**2).sum(1), 1e-30)
    return float(err.mean())


def _fit_gain(proxy: list[float], measured: list[float]) -> float:
    """Least-squares gain a >= 0 of measured ~ a * proxy over the ratios > 0."""
    num = sum(p * m for p, m in zip(proxy[1:], measured[1:], strict=True))
    den = sum(p * p for p in proxy[1:])
    return max(0.0, num / den) if den > 0 else 0.0


def _measure(name: str, kinds, layers: list[str], progress) -> dict:
    """Per-layer and uniform-ratio logit errors of digits-vit against the float model.

    Images: the whole digits set (train and test, 1,797 images: more images, less rounding
    noise in the mean); top-1 on the 360-image test split.
    """
    import numpy as np
    import torch

    from vitaccel.models.data import calibration_images, digits_splits
    from vitaccel.models.golden import QuantConfig, quantize_model
    from vitaccel.models.zoo import get_model

    _, model = get_model(name)
    splits = digits_splits()
    calib = calibration_images(64)
    x = torch.cat([splits.test_x, splits.train_x])
    n_test = len(splits.test_x)
    labels = splits.test_y.numpy()
    with torch.no_grad():
        float_logits = model(x).double().numpy()

    def run(cfg):
        golden = quantize_model(model, calib, cfg)
        logits = golden.dequantize_logits(golden.forward(x))
        top1 = float((logits[:n_test].argmax(1) == labels).mean())
        return _logit_error(logits, float_logits), top1, logits

    def cosine(a, b):
        num = (a * b).sum(1)
        den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        return float((num / den).mean())

    base_err, base_top1, w8_logits = run(QuantConfig(scheme="w8a8"))
    baseline = {
        "images": len(x),
        "test_images": n_test,
        "error": base_err,
        "cosine": cosine(w8_logits, float_logits),
        "top1": base_top1,
        "float_top1": float((float_logits[:n_test].argmax(1) == labels).mean()),
    }
    progress(f"{name} W8A8: error {base_err:.3e} top1 {base_top1:.4f}")
    out = {}
    for kind in kinds:
        entry = {"baseline": baseline, "measured": {}, "top1_layers": {}}
        for layer in layers:
            curve, top = [0.0], [0.0]
            for r in RATIOS[1:]:
                cfg = QuantConfig(
                    scheme="mixed", w4_ratio=0.0, w4_kind=kind, layer_w4_ratio=((layer, r),)
                )
                err, top1, _ = run(cfg)
                curve.append(err - base_err)
                top.append(base_top1 - top1)
            entry["measured"][layer] = curve
            entry["top1_layers"][layer] = top
            progress(f"{name} {kind} {layer}: {' '.join(f'{c:.2e}' for c in curve)}")
        uniform = []
        for r in RATIOS[1:]:
            err, top1, logits = run(QuantConfig(scheme="mixed", w4_ratio=r, w4_kind=kind))
            uniform.append(
                {
                    "w4_ratio": r,
                    "measured_error": err - base_err,
                    "measured_cosine": cosine(logits, float_logits),
                    "measured_top1": top1,
                }
            )
            progress(f"{name} {kind} uniform {r}: added error {err - base_err:.3e} top1 {top1:.4f}")
        entry["uniform_check"] = uniform
        out[kind] = entry
    return out


def regenerate(path: Path = DATA_PATH, progress=print) -> dict:
    """Measure digits-vit, fit the gains, compute the zoo proxies; write the JSON atomically."""
    import numpy as np

    from vitaccel.models.specs import get_spec
    from vitaccel.models.zoo import get_model
    from vitaccel.util import atomic_write_text

    models: dict[str, dict] = {}
    digits = get_spec("digits-vit")
    layers = _encoder_layers(digits.depth)
    measured = _measure("digits-vit", KINDS, layers, progress)
    _, dmodel = get_model("digits-vit")
    dweights = _layer_weights(dmodel, layers)
    kappas = {}
    for kind in KINDS:
        entry = measured[kind]
        proxy = _proxy_errors(dweights, kind)
        gains = {layer: _fit_gain(proxy[layer], entry["measured"][layer]) for layer in layers}
        # kappa: one gain for all layers (least squares through the origin), used by the zoo.
        x = np.array([proxy[layer][i] for layer in layers for i in range(1, len(RATIOS))])
        y = np.array(
            [entry["measured"][layer][i] for layer in layers for i in range(1, len(RATIOS))]
        )
        kappa = float((x * y).sum() / max((x * x).sum(), 1e-30))
        fitted = np.array(
            [gains[layer] * proxy[layer][i] for layer in layers for i in range(1, len(RATIOS))]
        )
        ss = max(float(((y - y.mean()) ** 2).sum()), 1e-30)
        entry.update(
            method="measured",
            proxy_error=proxy,
            gains=gains,
            # The curves the explorer uses: measured, smoothed through the proxy's shape
            # (monotone in r, zero at r = 0) with one fitted gain per layer.
            layers={layer: [gains[layer] * e for e in proxy[layer]] for layer in layers},
            fit={
                "kappa": kappa,
                "r2_kappa": 1 - float(((y - kappa * x) ** 2).sum()) / ss,
                "r2_per_layer_gain": 1 - float(((y - fitted) ** 2).sum()) / ss,
                "points": len(x),
            },
        )
        for check in entry["uniform_check"]:
            check["predicted_error"] = sum(
                _interp(entry["layers"][layer], check["w4_ratio"]) for layer in layers
            )
        kappas[kind] = kappa
        models.setdefault("digits-vit", {})[kind] = entry
        progress(f"digits-vit {kind}: kappa {kappa:.4g}, fit {entry['fit']}")

    for name in PROXY_MODELS:
        spec = get_spec(name)
        layers = _encoder_layers(spec.depth)
        _, fmodel = get_model(name)
        weights = _layer_weights(fmodel, layers)
        for kind in KINDS:
            proxy = _proxy_errors(weights, kind)
            models.setdefault(name, {})[kind] = {
                "method": "proxy",
                "kappa": kappas[kind],
                "layers": {
                    layer: [kappas[kind] * e for e in curve] for layer, curve in proxy.items()
                },
                "proxy_error": proxy,
            }
        progress(f"{name}: proxy done")

    data = {
        "version": 2,
        "ratios": list(RATIOS),
        "metric": (
            "added relative squared logit error against the float model, mean over images of "
            "|l - l_float|^2 / |l_float|^2 minus the same for W8A8, one layer mixed at a time"
        ),
        "generator": "python -m vitaccel.dse.sensitivity",
        "models": models,
    }
    atomic_write_text(Path(path), json.dumps(_rounded(data), indent=1, sort_keys=True) + "\n")
    load.cache_clear()
    return data


def _rounded(obj):
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


if __name__ == "__main__":
    regenerate()
