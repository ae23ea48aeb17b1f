"""One linear layer of the golden model on the GVSA RTL: ``vitaccel sim --unit matmul``.

The layer's real input is captured from the golden model running a real image (digits) or a
random image (weightless zoo models); the expected output is the golden model's own
``IntLinear`` (matmul_int + requantize), compared element by element with the RTL.
"""

from __future__ import annotations

import numpy as np

from vitaccel.models.golden import linear_layer_names

__all__ = ["list_layers", "layer_input", "simulate_layer"]


def list_layers(model: str) -> list[str]:
    from vitaccel.models.specs import get_spec

    return linear_layer_names(get_spec(model).depth)


def _input_key(layer: str) -> str:
    if layer == "patch_embed":
        return "patches"
    if layer == "head":
        return "norm"
    block, kind = layer.rsplit(".", 2)[0], layer.rsplit(".", 1)[1]
    return {
        "qkv": f"{block}.norm1",
        "proj": f"{block}.attn.context",
        "fc1": f"{block}.norm2",
        "fc2": f"{block}.mlp.gelu",
    }[kind]


def layer_input(golden, images, layer: str) -> np.ndarray:
    """The int8 input of ``layer`` for the first image: (tokens, K)."""
    patches = golden.quantize_images(images[:1])
    cap: dict = {"patches": patches}
    golden.forward_patches(patches, capture=cap)
    x = cap[_input_key(layer)][0]
    return x[None, :] if x.ndim == 1 else x


def simulate_layer(
    model: str,
    layer: str,
    *,
    tokens: int | None = None,
    stall: float = 0.0,
    seed: int = 0,
    design=None,
    progress=None,
) -> dict:
    from vitaccel.flow.build import default_design
    from vitaccel.flow.unit_gvsa import simulate_matmul
    from vitaccel.models.evaluate import prepare
    from vitaccel.models.specs import ModelError

    names = list_layers(model)
    if layer not in names:
        raise ModelError(f"unknown layer '{layer}' of {model}; choose one of: {', '.join(names)}")
    design = design or default_design(model, "zcu102")
    if progress:
        progress(f"quantizing {model}")
    _, _, golden, x_img, _ = prepare(model, images=1)
    lin = golden.linear_layers()[layer]
    x = layer_input(golden, x_img, layer)
    if tokens is not None:
        reps = -(-tokens // x.shape[0])
        x = np.concatenate([x] * reps)[:tokens]
    if progress:
        progress(
            f"simulating {layer}: {x.shape[0]} x {lin.in_features} -> {lin.out_features} on Verilator"
        )
    result = simulate_matmul(
        x=x,
        wq=lin.weight,
        bias=lin.bias,
        mult=lin.mult,
        shift=lin.shift,
        lo=lin.lo,
        hi=lin.hi,
        groups=design.array.groups,
        rows=design.array.rows,
        cols=design.array.cols,
        vector=design.array.vector,
        w4_share=design.array.w4_share,
        w4_kind=design.array.w4_kind,
        acc_bits=design.array.acc_bits,
        stall=stall,
        seed=seed,
    )
    out = {k: v for k, v in result.items() if not isinstance(v, np.ndarray | list) or k == "errors"}
    out.update(
        model=model, layer=layer, tokens=int(x.shape[0]), k=lin.in_features, n=lin.out_features
    )
    return out
