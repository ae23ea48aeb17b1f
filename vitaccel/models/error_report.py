"""Per-layer quantisation error: where the integer golden model departs from the float model.

For every tensor the integer model produces (linear outputs, attention scores, softmax
probabilities, attention context, LayerNorm outputs, GELU outputs, the residual stream, the
logits) two figures against the float model, on the same images:

* **accumulated** (``sqnr_db``, ``rel_error``): the integer model run end to end, the tensor
  dequantised with its own scale and compared with the float model's tensor. This is what
  the user sees; it includes every error upstream.
* **local** (``local_sqnr_db``, ``local_rel_error``): the operator alone: its inputs are the
  *float* model's inputs rounded onto their int8 grids, then the operator's integer
  definition (the same :mod:`vitaccel.quant.ref` functions the golden model calls) runs.
  This isolates the error the operator and its scales add, so the ranking points at the
  operator to fix (as ONNX Runtime's quantization debugger and AIMET's per-layer analysis
  do), not at the last layer that inherits everyone's error.

``SQNR = 10 log10(sum f^2 / sum (q - f)^2)`` in dB over the whole tensor; ``rel_error =
||q - f|| / ||f||``. The report is ranked by local SQNR, worst first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from vitaccel.models.golden import IntViT, float_trace
from vitaccel.quant import ref, scales

__all__ = ["TensorError", "per_layer_error", "worst_layer", "sqnr"]

# SQNR reported when the error is exactly zero (keeps the JSON finite).
SQNR_EXACT_DB = 200.0


@dataclass(frozen=True)
class TensorError:
    """Error of one quantised tensor against the float model.

    Attributes
    ----------
    name : str
        Tensor name, e.g. ``"blocks.2.attn.probs"`` (the golden model's capture key).
    kind : str
        ``linear``, ``attention scores``, ``softmax``, ``attention context``, ``layernorm``,
        ``gelu``, ``residual`` or ``logits``.
    sqnr_db, rel_error : float
        Accumulated: the integer model end to end against the float model.
    local_sqnr_db, local_rel_error : float
        The operator alone, fed the float model's inputs on their int8 grids.
    """

    name: str
    kind: str
    sqnr_db: float
    rel_error: float
    local_sqnr_db: float
    local_rel_error: float

    def as_dict(self) -> dict:
        return asdict(self)


def _error(q: np.ndarray, f: np.ndarray) -> tuple[float, float]:
    f = np.asarray(f, dtype=np.float64)
    err = float(((np.asarray(q, dtype=np.float64) - f) ** 2).sum())
    sig = float((f**2).sum())
    if err == 0.0:
        return SQNR_EXACT_DB, 0.0
    sqnr = 10.0 * math.log10(sig / err) if sig > 0 else -SQNR_EXACT_DB
    return round(sqnr, 3), float(math.sqrt(err / max(sig, 1e-300)))


def sqnr(q: np.ndarray, f: np.ndarray) -> float:
    """SQNR (dB) of ``q`` against the reference ``f`` over the whole tensor."""
    return _error(q, f)[0]


def _grid(t: torch.Tensor | np.ndarray, scale, zero: int = 0, bits: int = 8) -> np.ndarray:
    """A float tensor on a signed ``bits``-bit grid (per-tensor or per-channel scale, last
    axis; real 0 at code ``zero``, which only the int8 GELU output uses)."""
    if zero == 0:
        return scales.quantize_activation(np.asarray(t, dtype=np.float64), scale, bits)
    wide = scales.quantize_activation(np.asarray(t, dtype=np.float64), scale, bits=32)
    return np.clip(wide + zero, ref.INT8_MIN, ref.INT8_MAX)


def _heads(t: np.ndarray, heads: int) -> np.ndarray:
    """(B, T, D) -> (B, heads, T, D/heads), the golden model's per-head layout."""
    b, tokens, d = t.shape
    return t.reshape(b, tokens, heads, d // heads).transpose(0, 2, 1, 3)


def _head_scale(scale, heads: int):
    """A per-tensor scale as is; a per-channel one (D,) in the per-head layout (heads, 1, D/heads)."""
    scale = np.asarray(scale, dtype=np.float64)
    return scale if scale.ndim == 0 else scale.reshape(heads, 1, -1)


def _merge_heads(t: np.ndarray) -> np.ndarray:
    b, h, tokens, hd = t.shape
    return t.transpose(0, 2, 1, 3).reshape(b, tokens, h * hd)


def _prob_weights(golden: IntViT, probs: np.ndarray, code_bits: int) -> tuple[np.ndarray, float]:
    """Integer softmax output -> (integer weights of P x V, their real scale)."""
    if golden.config.softmax_output == "uint8":
        return probs, 2.0**-8
    q_max = (1 << code_bits) - 1
    return ref.log2_code_weights(probs, code_bits), 2.0**-q_max


def _float_probs_on_grid(golden: IntViT, p: np.ndarray, code_bits: int) -> np.ndarray:
    """Float probabilities rounded onto the softmax unit's output format."""
    if golden.config.softmax_output == "uint8":
        return np.clip(np.floor(p * 256 + 0.5), 0, 255).astype(np.int64)
    q_max = (1 << code_bits) - 1
    codes = np.floor(-np.log2(np.maximum(p, 2.0**-q_max)) + 0.5)
    return np.clip(codes, 0, q_max).astype(np.int64)


@torch.no_grad()
def per_layer_error(model, golden: IntViT, images: torch.Tensor) -> list[TensorError]:
    """Accumulated and local error of every quantised tensor, ranked by local SQNR (worst first).

    Parameters
    ----------
    model : VisionTransformer
        The float model ``golden`` was quantised from.
    golden : IntViT
        Its integer golden model.
    images : torch.Tensor
        ``(B, C, H, W)`` normalised images (usually the calibration images).
    """
    spec = golden.spec
    sc = golden.scales
    rs = golden.channel_scales
    heads, d = spec.heads, spec.embed_dim
    tr = {k: v.numpy() for k, v in float_trace(model, images).items()}
    cap: dict = {}
    golden.forward(images, capture=cap)
    rows: list[TensorError] = []

    def scale(name: str):
        # LayerNorm outputs may be quantised per channel (QuantConfig.ln_channel_scales).
        return rs.get(name, sc[name])

    def add(name: str, kind: str, q_int, scale, local_int, f, zero: int = 0) -> None:
        scale = np.asarray(scale, dtype=np.float64)
        acc = _error((np.asarray(q_int) - zero) * scale, f)
        loc = _error((np.asarray(local_int) - zero) * scale, f)
        rows.append(TensorError(name, kind, *acc, *loc))

    add(
        "patch_embed",
        "linear",
        cap["patch_embed"],
        sc["patch_embed"],
        cap["patch_embed"],
        tr["patch_embed"],
    )
    batch = images.shape[0]
    cfg = golden.config
    res_bits, br_bits, logit_bits = cfg.residual_bits, cfg.branch_bits, cfg.logit_bits
    body = golden.pos_add(_grid(tr["patch_embed"], sc["patch_embed"], 0, br_bits), golden.pos_q)
    cls = np.broadcast_to(golden.cls_row, (batch, 1, d))
    add(
        "embed",
        "residual",
        cap["embed"],
        rs["embed"],
        np.concatenate([cls, body], axis=1),
        tr["embed"],
    )
    x_name = "embed"
    for i, blk in enumerate(golden.blocks):
        p = f"blocks.{i}"
        x_f, x_s = tr[x_name], rs[x_name]
        add(
            f"{p}.norm1",
            "layernorm",
            cap[f"{p}.norm1"],
            scale(f"{p}.norm1"),
            ref.ailayernorm(_grid(x_f, x_s, 0, res_bits), blk.norm1),
            tr[f"{p}.norm1"],
        )
        qkv_local = blk.qkv(_grid(tr[f"{p}.norm1"], scale(f"{p}.norm1")))
        f_qkv = tr[f"{p}.attn.qkv"]
        # q, k, v scales: per tensor, or per channel (QuantConfig.qk_balance, v_smooth_alpha).
        s_qkv = [_head_scale(rs.get(f"{p}.attn.{n}", sc[f"{p}.{n}"]), heads) for n in "qkv"]
        for j, part in enumerate("qkv"):
            f_part = _heads(f_qkv[..., j * d : (j + 1) * d], heads)
            add(
                f"{p}.attn.{part}",
                "linear",
                cap[f"{p}.attn.{part}"],
                s_qkv[j],
                _heads(qkv_local[..., j * d : (j + 1) * d], heads),
                f_part,
            )
        fq, fk, fv = (_heads(f_qkv[..., j * d : (j + 1) * d], heads) for j in range(3))
        gq, gk, gv = (_grid(t, s) for t, s in zip((fq, fk, fv), s_qkv, strict=True))
        scores = np.einsum("bhtd,bhsd->bhts", gq, gk)
        add(
            f"{p}.attn.logits",
            "attention scores",
            cap[f"{p}.attn.logits"],
            sc[f"{p}.logits"],
            ref.requantize(scores, blk.qk_mult, blk.qk_shift, *ref.signed_range(logit_bits)),
            tr[f"{p}.attn.logits"],
        )
        out = golden.config.softmax_output
        code_bits = blk.softmax.code_bits
        probs_local = ref.e2softmax(
            _grid(tr[f"{p}.attn.logits"], sc[f"{p}.logits"], 0, logit_bits),
            blk.softmax,
            output=out,
        )
        w_cap, p_scale = _prob_weights(golden, cap[f"{p}.attn.probs"], code_bits)
        w_loc, _ = _prob_weights(golden, probs_local, code_bits)
        add(f"{p}.attn.probs", "softmax", w_cap, p_scale, w_loc, tr[f"{p}.attn.probs"])
        w_f, _ = _prob_weights(
            golden, _float_probs_on_grid(golden, tr[f"{p}.attn.probs"], code_bits), code_bits
        )
        ctx = ref.requantize(np.einsum("bhts,bhsd->bhtd", w_f, gv), blk.av_mult, blk.av_shift)
        s_ctx = rs.get(f"{p}.attn.context", sc[f"{p}.context"])
        add(
            f"{p}.attn.context",
            "attention context",
            cap[f"{p}.attn.context"],
            s_ctx,
            _merge_heads(ctx),
            tr[f"{p}.attn.context"],
        )
        add(
            f"{p}.attn.proj",
            "linear",
            cap[f"{p}.attn.proj"],
            sc[f"{p}.proj"],
            blk.proj(_grid(tr[f"{p}.attn.context"], s_ctx)),
            tr[f"{p}.attn.proj"],
        )
        add(
            f"{p}.add1",
            "residual",
            cap[f"{p}.add1"],
            rs[f"{p}.add1"],
            blk.add1(
                _grid(x_f, x_s, 0, res_bits),
                _grid(tr[f"{p}.attn.proj"], sc[f"{p}.proj"], 0, br_bits),
            ),
            tr[f"{p}.add1"],
        )
        add(
            f"{p}.norm2",
            "layernorm",
            cap[f"{p}.norm2"],
            scale(f"{p}.norm2"),
            ref.ailayernorm(_grid(tr[f"{p}.add1"], rs[f"{p}.add1"], 0, res_bits), blk.norm2),
            tr[f"{p}.norm2"],
        )
        add(
            f"{p}.mlp.fc1",
            "linear",
            cap[f"{p}.mlp.fc1"],
            sc[f"{p}.fc1"],
            blk.fc1(_grid(tr[f"{p}.norm2"], scale(f"{p}.norm2"))),
            tr[f"{p}.mlp.fc1"],
        )
        add(
            f"{p}.mlp.gelu",
            "gelu",
            cap[f"{p}.mlp.gelu"],
            sc[f"{p}.gelu"],
            ref.lut_lookup(_grid(tr[f"{p}.mlp.fc1"], sc[f"{p}.fc1"]), blk.gelu_table),
            tr[f"{p}.mlp.gelu"],
            blk.gelu_zero,
        )
        add(
            f"{p}.mlp.fc2",
            "linear",
            cap[f"{p}.mlp.fc2"],
            sc[f"{p}.fc2"],
            blk.fc2(_grid(tr[f"{p}.mlp.gelu"], sc[f"{p}.gelu"], blk.gelu_zero)),
            tr[f"{p}.mlp.fc2"],
        )
        add(
            f"{p}.add2",
            "residual",
            cap[f"{p}.add2"],
            rs[f"{p}.add2"],
            blk.add2(
                _grid(tr[f"{p}.add1"], rs[f"{p}.add1"], 0, res_bits),
                _grid(tr[f"{p}.mlp.fc2"], sc[f"{p}.fc2"], 0, br_bits),
            ),
            tr[f"{p}.add2"],
        )
        x_name = f"{p}.add2"
    add(
        "norm",
        "layernorm",
        cap["norm"],
        scale("norm"),
        ref.ailayernorm(_grid(tr[x_name][:, 0], rs[x_name], 0, res_bits), golden.norm),
        tr["norm"],
    )
    add(
        "logits",
        "logits",
        cap["logits"],
        golden.logit_scale,
        golden.head(_grid(tr["norm"], scale("norm"))),
        tr["logits"],
    )
    return sorted(rows, key=lambda r: (r.local_sqnr_db, r.name))


def worst_layer(rows: list[TensorError]) -> TensorError:
    """The tensor whose operator adds the most error (lowest local SQNR)."""
    return min(rows, key=lambda r: (r.local_sqnr_db, r.name))
