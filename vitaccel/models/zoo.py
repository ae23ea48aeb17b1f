"""The model zoo: named ViT shapes, deterministic float models and weight loading.

A :class:`ModelSpec` is the one description of a model's shape; the DSE reads its
numbers (tokens, embed_dim, mlp_dim ...) without touching torch, and
:func:`build_float_model` turns it into a :class:`~vitaccel.models.vit.VisionTransformer`.
Only ``digits-vit`` ships trained weights (small enough for the wheel); the DeiT/ViT
entries get a deterministic random init unless the user passes a timm/DeiT
checkpoint, which loads as is because the parameter names match timm's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from vitaccel.models.specs import ZOO, ModelError, ModelSpec, WeightsError, get_spec
from vitaccel.models.vit import VisionTransformer

__all__ = [
    "ModelError",
    "ModelSpec",
    "WeightsError",
    "ZOO",
    "build_float_model",
    "get_model",
    "get_spec",
    "load_weights",
    "shipped_weights_path",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"

# Models with trained weights inside the package; the others are shape-only.
_SHIPPED_WEIGHTS = {"digits-vit": "digits_vit.safetensors"}

# How many key names an error message lists before "...": enough to recognise a
# naming scheme (e.g. a "module." prefix), short enough to stay on one line.
_KEYS_SHOWN = 3


def _resolve(name_or_spec: str | ModelSpec) -> ModelSpec:
    return name_or_spec if isinstance(name_or_spec, ModelSpec) else get_spec(name_or_spec)


def build_float_model(name_or_spec: str | ModelSpec, *, seed: int = 0) -> VisionTransformer:
    """Build a float model with a deterministic, timm-like random init.

    Parameters
    ----------
    name_or_spec : str or ModelSpec
        Zoo name or an explicit shape.
    seed : int
        Seed of the init; the same seed always gives the same weights. The global
        torch RNG is left untouched.

    Returns
    -------
    VisionTransformer
        In training mode, as ``nn.Module`` constructors leave it.

    Notes
    -----
    As timm's ``init_weights``: ``pos_embed`` and every Linear weight
    trunc-normal(std 0.02), Linear biases 0, ``cls_token`` normal(std 1e-6),
    LayerNorms 1/0; the patch Conv2d keeps PyTorch's default init.
    """
    spec = _resolve(name_or_spec)
    # fork_rng: building a model must not shift the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(spec)
        with torch.no_grad():
            nn.init.trunc_normal_(model.pos_embed, std=0.02)
            nn.init.normal_(model.cls_token, std=1e-6)
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)
    return model


def shipped_weights_path(name: str = "digits-vit") -> Path:
    """Path of the trained weights shipped inside the package for ``name``.

    Raises
    ------
    ModelError
        If ``name`` has no shipped weights.
    """
    spec = get_spec(name)
    if spec.name not in _SHIPPED_WEIGHTS:
        raise ModelError(
            f"model {name!r} ships no weights (only {', '.join(sorted(_SHIPPED_WEIGHTS))}); "
            "pass a weights file"
        )
    return WEIGHTS_DIR / _SHIPPED_WEIGHTS[spec.name]


def _one_line(error: BaseException) -> str:
    """First non-empty line of an exception message, so our errors stay one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _key_list(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_KEYS_SHOWN])
    return shown + (", ..." if len(keys) > _KEYS_SHOWN else "")


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist")
    if not path.is_file():
        raise WeightsError(f"weights file {path} is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            # weights_only: a checkpoint is data; never run pickled code from it.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure means the same thing to the user
        raise WeightsError(
            f"cannot read weights file {path}: {type(error).__name__}: {_one_line(error)}"
        ) from error
    # timm saves a bare state_dict; DeiT and most training scripts wrap it.
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"weights file {path} holds a {type(obj).__name__}, not a state_dict")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"weights file {path} is not a state_dict: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
    return obj


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a timm-style state_dict into ``model`` after checking it fits exactly.

    Parameters
    ----------
    model : nn.Module
        Usually a :class:`VisionTransformer`.
    path : str or Path
        ``.safetensors`` files are read with safetensors; anything else with
        ``torch.load(weights_only=True)``: a bare state_dict, or a dict holding it
        under ``"model"`` or ``"state_dict"`` (timm / DeiT checkpoints).

    Returns
    -------
    nn.Module
        ``model`` itself, with the weights copied in (cast to its dtype).

    Raises
    ------
    WeightsError
        One line naming the file and the first problem: missing file, unreadable
        file, the first missing or unexpected tensor (with the expected shape), the first
        misshapen tensor, or the first tensor holding NaN/Inf.
    """
    path = Path(path)
    state = _read_state_dict(path)
    expected = model.state_dict()
    spec = getattr(model, "spec", None)
    target = f" for {spec.name}" if spec is not None else ""

    # One line naming the FIRST offending tensor (in the model's own order) and what was
    # expected of it, plus a count of the others, so the user can fix the checkpoint.
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected tensor(s)"
        if missing:
            key = missing[0]
            what = f"missing tensor {key!r} (expected shape {tuple(expected[key].shape)})"
        else:
            key = unexpected[0]
            what = (
                f"unexpected tensor {key!r} of shape {tuple(state[key].shape)} "
                f"(expected only the model's {len(expected)} tensors)"
            )
        more = f": {_key_list(missing)}" if len(missing) > 1 else ""
        raise WeightsError(
            f"weights file {path} does not fit{target}: {what}; {counts}{more}"
            + (f"; unexpected: {_key_list(unexpected)}" if missing and unexpected else "")
        )

    mismatched = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if mismatched:
        key = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise WeightsError(
            f"weights file {path} does not fit{target}: {key!r} has shape {tuple(state[key].shape)}, "
            f"expected {tuple(expected[key].shape)}{more}"
        )
    for key in expected:
        value = state[key]
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise WeightsError(
                    f"weights file {path} does not fit{target}: {key!r} (shape "
                    f"{tuple(value.shape)}) holds {bad} NaN/Inf value(s); expected finite values"
                )
    model.load_state_dict(state, strict=True)
    return model


def get_model(
    name: str | ModelSpec, weights: str | Path | None = None, *, seed: int = 0
) -> tuple[ModelSpec, VisionTransformer]:
    """Return ``(spec, model)`` ready for inference (eval mode).

    Parameters
    ----------
    name : str or ModelSpec
        Zoo name or an explicit shape.
    weights : str or Path, optional
        Weights file to load. By default a model with shipped weights
        (``digits-vit``) loads them; the others keep the deterministic random
        init of :func:`build_float_model`.
    seed : int
        Seed of the random init (irrelevant once weights are loaded).
    """
    spec = _resolve(name)
    model = build_float_model(spec, seed=seed)
    if weights is None and spec.name in _SHIPPED_WEIGHTS:
        weights = shipped_weights_path(spec.name)
        if not Path(weights).is_file():
            raise WeightsError(
                f"shipped weights {weights} are missing; run `python -m vitaccel.models.train_digits`"
            )
    if weights is not None:
        load_weights(model, weights)
    return spec, model.eval()
