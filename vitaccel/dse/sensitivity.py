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
    "DEFAULT_MAX_DROP",
    "cost_curves",
    "curve_at",
    "points_per_error",
    "predict_drop",
    "measure_agreement",
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


# The explorer's default accuracy budget: top-1 agreement with W8A8 it may lose, in points.
DEFAULT_MAX_DROP = 0.5
# The model measured with trained weights: its agreement curves scale the others' proxies.
MEASURED_MODEL = "digits-vit"


def _monotone(curve: list[float]) -> list[float]:
    """The running maximum: a measured drop that dips at a higher ratio (a few images of
    rounding noise) is not credited."""
    out, top = [], 0.0
    for v in curve:
        top = max(top, v)
        out.append(top)
    return out


@cache
def points_per_error(kind: str) -> float:
    """Top-1 agreement points lost per unit of added logit error: least squares through the
    origin over :data:`MEASURED_MODEL`'s layers and ratios (its measured agreement drops
    against its logit-error curves), of ``kind`` if measured, else int4's."""
    models = load()["models"].get(MEASURED_MODEL, {})
    for k in (kind, "int4"):
        entry = models.get(k, {})
        agree = entry.get("agreement")
        if agree and "layers" in entry:
            pairs = [(entry["layers"][layer][i], v)
                     for layer, curve in agree["layers"].items()
                     for i, v in enumerate(_monotone(curve)) if i > 0]  # fmt: skip
            den = sum(x * x for x, _ in pairs)
            return max(0.0, sum(x * y for x, y in pairs) / den) if den > 0 else 0.0
    raise SensitivityError(
        f"no measured top-1 agreement for {MEASURED_MODEL}; run "
        "`python -m vitaccel.dse.sensitivity agreement digits-vit int4`"
    )


def cost_curves(model: str, w4_kind: str = "int4") -> tuple[dict[str, list[float]], str]:
    """Per encoder layer, the predicted top-1 agreement points lost against W8A8 at each
    ratio of :data:`RATIOS` (monotone), and how they were obtained.

    Measured on the golden model where the data holds a measurement
    (:func:`measure_agreement`); otherwise the layer's logit-error curve (measured, or the
    weight-error proxy for the zoo models, whose weights are synthetic here) times
    :func:`points_per_error`.
    """
    entry = model_entry(model, w4_kind)
    agree = entry.get("agreement")
    if agree:
        how = (f"measured on the golden model: {agree['images']} images, "
               f"{agree['weights']} weights")  # fmt: skip
        return {k: _monotone(v) for k, v in agree["layers"].items()}, how
    gain = points_per_error(w4_kind)
    source = (
        "measured logit error" if entry.get("method") == "measured"
        else "weight-error proxy on synthetic (random-init) weights"
    )  # fmt: skip
    how = (f"predicted: {source} x {gain:.4g} points per unit error "
           f"(fitted on {MEASURED_MODEL}'s measured agreement)")  # fmt: skip
    return {k: [gain * e for e in c] for k, c in entry["layers"].items()}, how


def curve_at(curve: list[float] | None, r: float) -> float:
    """A per-layer curve over :data:`RATIOS` at ratio ``r`` (linear; 0 without data)."""
    return 0.0 if curve is None else max(0.0, _interp(curve, r))


def predict_drop(model: str, ratios: dict[str, float], w4_kind: str = "int4") -> dict:
    """The accuracy cost of a per-layer W4 assignment in top-1 agreement with W8A8:
    ``predicted_drop`` (points, the per-layer costs added), ``method``, and where the
    golden model was run with every layer mixed at once (``uniform_check``), the measured
    drop of the uniform ratio at or above the assignment's mean ratio
    (``measured_uniform``: ratio, measured and predicted points)."""
    curves, how = cost_curves(model, w4_kind)
    out = {
        "metric": "top-1 agreement with W8A8 lost (points)",
        "predicted_drop": round(sum(curve_at(curves.get(k), r) for k, r in ratios.items()), 4),
        "method": how,
    }
    agree = model_entry(model, w4_kind).get("agreement")
    if agree and ratios:
        mean = sum(ratios.values()) / max(len(curves), 1)
        for check in agree["uniform_check"]:
            if check["w4_ratio"] >= mean - 1e-9:
                out["measured_uniform"] = {
                    "w4_ratio": check["w4_ratio"],
                    "measured_drop": check["measured_drop"],
                    "predicted_drop": check["predicted_drop"],
                    "measured_cosine": check["measured_cosine"],
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


def measure_agreement(
    name: str = "digits-vit",
    kind: str = "int4",
    *,
    path: Path = DATA_PATH,
    images: int | None = None,
    progress=print,
) -> dict:
    """Measure each encoder layer's accuracy cost of W4 rows on the golden model, against
    W8A8: top-1 agreement with the W8A8 model and the logit cosine to it, one layer mixed
    at a time at every ratio of :data:`RATIOS`, and every layer at once at each ratio (the
    check of the additive prediction). Stored as ``agreement`` in the model's entry for
    ``kind`` in ``path`` (written atomically).

    digits-vit runs its trained weights on the digits images (all 1,797 by default; the
    golden model is calibrated on :func:`~vitaccel.models.data.calibration_images`); a zoo
    model without weights runs its deterministic random-init weights on
    :func:`~vitaccel.models.data.random_images` (``weights: "synthetic"``: a measurement of
    the arithmetic, not of a trained network's accuracy).
    """
    import numpy as np
    import torch

    from vitaccel.models.data import calibration_images, digits_splits, random_images
    from vitaccel.models.golden import QuantConfig, quantize_model
    from vitaccel.models.zoo import get_model
    from vitaccel.util import atomic_write_text

    spec, model = get_model(name)
    if name == "digits-vit":
        splits = digits_splits()
        x = torch.cat([splits.test_x, splits.train_x])
        calib, weights = calibration_images(64), "trained"
    else:
        x = random_images(spec, images or 8, seed=1)
        calib, weights = random_images(spec, 8, seed=0), "synthetic"
    if images:
        x = x[:images]
    layers = _encoder_layers(spec.depth)

    def logits(cfg):
        golden = quantize_model(model, calib, cfg)
        return golden.dequantize_logits(golden.forward(x)).astype(np.float64)

    ref = logits(QuantConfig(scheme="w8a8"))
    top_ref = ref.argmax(1)

    def against_w8(lg) -> tuple[float, float]:
        agree = float((lg.argmax(1) == top_ref).mean())
        num = (lg * ref).sum(1)
        den = np.maximum(np.linalg.norm(lg, axis=1) * np.linalg.norm(ref, axis=1), 1e-30)
        return 100.0 * (1.0 - agree), float((num / den).mean())

    drop: dict[str, list[float]] = {}
    cos: dict[str, list[float]] = {}
    for layer in layers:
        drop[layer], cos[layer] = [0.0], [1.0]
        for r in RATIOS[1:]:
            cfg = QuantConfig(scheme="mixed", w4_ratio=0.0, w4_kind=kind,
                              layer_w4_ratio=((layer, r),))  # fmt: skip
            d, c = against_w8(logits(cfg))
            drop[layer].append(d)
            cos[layer].append(c)
        progress(f"{name} {kind} {layer}: agreement drop {drop[layer]} points")
    uniform = []
    for r in RATIOS[1:]:
        d, c = against_w8(logits(QuantConfig(scheme="mixed", w4_ratio=r, w4_kind=kind)))
        predicted = sum(_interp(_monotone(drop[layer]), r) for layer in layers)
        uniform.append({"w4_ratio": r, "measured_drop": d, "predicted_drop": predicted,
                        "measured_cosine": c})  # fmt: skip
        progress(f"{name} {kind} uniform {r}: drop {d:.3f} points (predicted {predicted:.3f})")
    result = {
        "metric": "top-1 agreement with W8A8 lost, in points (100 x share of images whose "
        "top-1 class changes); logit cosine to W8A8",
        "images": int(len(x)),
        "weights": weights,
        "layers": drop,
        "cosine": cos,
        "uniform_check": uniform,
    }
    data = json.loads(Path(path).read_text())
    data["models"].setdefault(name, {}).setdefault(kind, {})["agreement"] = result
    atomic_write_text(Path(path), json.dumps(_rounded(data), indent=1, sort_keys=True) + "\n")
    load.cache_clear()
    return result


def _rounded(obj):
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["agreement"]:  # python -m vitaccel.dse.sensitivity agreement MODEL KIND
        measure_agreement(*sys.argv[2:4])
    else:
        regenerate()
