"""One matmul of the golden model on the GVSA RTL: ``vitaccel sim --unit matmul``.

Linear layers (``patch_embed``, ``blocks.N.attn.qkv|proj``, ``blocks.N.mlp.fc1|fc2``,
``head``) and the attention products of every block, per head in heads mode:
``blocks.N.attn.qk`` (Q K^T: the keys act as weights) and ``blocks.N.attn.sv`` (P V: the
values transposed act as weights; with ``softmax="log2"`` the probabilities are 4-bit log2
codes and the engine runs its shift-add mode). The inputs are captured from the golden model
running a real image (digits) or a random image (weightless zoo models); the expected output
is the golden model's own (matmul_int + requantize), compared element by element with the
RTL, and for the attention products also checked against the golden model's captured
logits / context.
"""

from __future__ import annotations

import numpy as np

from vitaccel.models.golden import linear_layer_names

__all__ = ["list_layers", "layer_input", "attention_cases", "simulate_layer"]

ATTENTION = ("qk", "sv")


def list_layers(model: str) -> list[str]:
    """Every matmul the engine runs, in execution order (linear layers and attention)."""
    from vitaccel.models.specs import get_spec

    names = []
    for name in linear_layer_names(get_spec(model).depth):
        names.append(name)
        if name.endswith(".attn.qkv"):
            block = name.rsplit(".", 1)[0]
            names += [f"{block}.{kind}" for kind in ATTENTION]
    return names


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


def attention_cases(golden, images, layer: str, groups: int, tokens: int | None = None):
    """The jobs of an attention product, ``groups`` heads per job (heads mode).

    Returns ``(jobs, golden_out)``: ``(first head, MatmulCase)`` per job and the golden
    model's own output of the product, (heads, T, N).
    """
    from vitaccel.flow.unit_gvsa import MatmulCase

    block, kind = layer.rsplit(".", 1)
    blk = golden.blocks[int(block.split(".")[1])]
    patches = golden.quantize_images(images[:1])
    cap: dict = {}
    golden.forward_patches(patches, capture=cap)
    q, k, v = (cap[f"{block}.{n}"][0] for n in ("q", "k", "v"))  # (heads, T, hd)
    log2 = golden.config.softmax_output == "log2"
    if kind == "qk":
        x, w, mult, shift = q, k, blk.qk_mult, blk.qk_shift
        want = cap[f"{block}.logits"][0]
    else:
        x, w, mult, shift = (
            cap[f"{block}.probs"][0],
            v.transpose(0, 2, 1),
            blk.av_mult,
            blk.av_shift,
        )
        want = cap[f"{block}.context"][0]
        heads, hd = v.shape[0], v.shape[2]
        want = want.reshape(want.shape[0], heads, hd).transpose(1, 0, 2)
    if tokens is not None:  # repeat the token rows (and, for Q K^T, the key columns)
        reps = -(-tokens // x.shape[1])
        x = np.concatenate([x] * reps, axis=1)[:, :tokens]
        want = np.concatenate([want] * reps, axis=1)[:, :tokens]
    nh, n = x.shape[0], w.shape[1]
    cases = []
    for h0 in range(0, nh, groups):
        hs = slice(h0, min(nh, h0 + groups))
        cnt = hs.stop - hs.start
        cases.append((
            hs.start,
            MatmulCase(
                x[hs],
                w[hs],
                np.zeros((cnt, n), dtype=np.int64),
                np.zeros((cnt, n), dtype=np.int64),
                np.full((cnt, n), int(mult)),
                np.full((cnt, n), int(shift)),
                heads=True,
                x_unsigned=kind == "sv" and not log2,
                x_log2=kind == "sv" and log2,
                name=f"{layer} heads {hs.start}..{hs.stop - 1}",
            ),
        ))  # fmt: skip
    return cases, want


def simulate_layer(
    model: str,
    layer: str,
    *,
    tokens: int | None = None,
    stall: float = 0.0,
    seed: int = 0,
    design=None,
    softmax: str = "uint8",
    progress=None,
) -> dict:
    """Run one matmul of the golden model on the engine of ``design`` (default: the build's
    default design); one dict with ``mismatches``, ``first_mismatch``, ``cycles``,
    ``model_cycles``, ``utilization``, ``macs`` and the shape."""
    from vitaccel.engine_host import EngineParams
    from vitaccel.flow.build import default_design
    from vitaccel.flow.unit_gvsa import simulate_jobs, simulate_matmul
    from vitaccel.models.evaluate import prepare
    from vitaccel.models.golden import QuantConfig
    from vitaccel.models.specs import ModelError

    names = list_layers(model)
    if layer not in names:
        raise ModelError(f"unknown layer '{layer}' of {model}; choose one of: {', '.join(names)}")
    if softmax not in ("uint8", "log2"):
        raise ModelError(f"softmax must be 'uint8' or 'log2', not {softmax!r}")
    design = design or default_design(model, "zcu102")
    a = design.array
    if progress:
        progress(f"quantizing {model} (softmax output {softmax})")
    _, _, golden, x_img, _ = prepare(model, images=1, config=QuantConfig(softmax_output=softmax))
    if layer.rsplit(".", 1)[-1] in ATTENTION:
        jobs, want = attention_cases(golden, x_img, layer, a.groups, tokens)
        cases = [case for _, case in jobs]
        for h0, case in jobs:  # the engine's reference is the golden model's own output
            got = case.expected()
            if not np.array_equal(got, want[h0 : h0 + got.shape[0]]):
                raise AssertionError(f"{case.name}: MatmulCase reference != golden model")
        t, k, n = cases[0].x.shape[1], cases[0].x.shape[2], cases[0].q.shape[1]
        if progress:
            progress(
                f"simulating {layer}: {want.shape[0]} heads x {t} x {k} -> {n} "
                f"({len(cases)} jobs) on Verilator"
            )
        params = EngineParams.from_array(
            a,
            x_words=max(2048, a.groups * -(-t // a.rows) * -(-k // a.vector)),
            max_ksteps=128,
            log2=softmax == "log2",
        )
        results = simulate_jobs(cases, params, stall=stall, seed=seed)
        cycles = sum(r["cycles"] for r in results)
        macs = sum(r["macs"] for r in results)
        bad = [r for r in results if r["mismatches"]]
        out = {
            "mismatches": sum(r["mismatches"] for r in results),
            "first_mismatch": bad[0]["first_mismatch"] if bad else None,
            "cycles": cycles,
            "model_cycles": sum(r["model_cycles"] for r in results),
            "macs": macs,
            "utilization": macs / (cycles * params.macs_per_cycle),
            "jobs": len(cases),
            "heads": int(want.shape[0]),
        }
        out.update(model=model, layer=layer, softmax=softmax, tokens=t, k=k, n=n)
        return out
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
        groups=a.groups,
        rows=a.rows,
        cols=a.cols,
        vector=a.vector,
        w4_share=a.w4_share,
        w4_kind=a.w4_kind,
        acc_bits=a.acc_bits,
        stall=stall,
        seed=seed,
    )
    out = {k: v for k, v in result.items() if not isinstance(v, np.ndarray | list) or k == "errors"}
    out.update(
        model=model, layer=layer, tokens=int(x.shape[0]), k=lin.in_features, n=lin.out_features
    )
    return out
