"""The integer-only golden model: a float ViT turned into the exact program the accelerator runs.

``quantize_model`` calibrates a float :class:`~vitaccel.models.vit.VisionTransformer` on a few
images, folds every scale into integer constants and returns an :class:`IntViT`, whose
``forward`` computes logits with integer arithmetic only, every operator through
:mod:`vitaccel.quant.ref`. The RTL is judged against ``IntViT.forward`` bit for bit; the float
model only measures what the integer approximations cost.

Dataflow of one encoder block (pre-LN), each arrow an integer operator::

    x (int8, PTF scales) -> AILayerNorm -> QKV linear -> per head: QK^T -> requant
      -> E2Softmax -> P x V -> requant -> proj linear -> residual add -> x'
    x' -> AILayerNorm -> FC1 linear -> GELU table -> FC2 linear -> residual add -> x''

The residual stream is int8 with per-channel power-of-two factors (FQ-ViT PTF) so the
LayerNorm sees every channel on one scale; every other activation is int8 per-tensor.
(``QuantConfig``'s ``residual_bits``, ``branch_bits`` and ``logit_bits`` widen some of them in
the golden model only, to measure a wider datapath; the compiler refuses them.)
Logits come out of the classifier head as int8 on one common scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from vitaccel.models.specs import patchify
from vitaccel.quant import ref, scales
from vitaccel.quant.ref import LayerNormParams, SoftmaxParams
from vitaccel.quant.scales import QuantWeight

__all__ = [
    "SCHEMES",
    "QuantConfig",
    "IntLinear",
    "IntResidual",
    "IntBlock",
    "IntViT",
    "quantize_model",
    "float_trace",
    "linear_layer_names",
    "quant_config_for",
]

SCHEMES = ("w8a8", "w4a8", "mixed")
ACT_CALIBRATIONS = ("max", "mse")
# Signed activation widths the golden model accepts (held in at most 2 bytes per element).
ACT_BITS = (8, 16)
WIDTH_FIELDS = ("residual_bits", "branch_bits", "logit_bits")
# Logits are int8 like every other matmul output (the engine has one output path); the
# classifier scale keeps 25 % headroom over calibration. On digits this loses nothing against
# int16 logits (same top-1 and agreement on the 360 test images).
LOGIT_MIN, LOGIT_MAX = ref.INT8_MIN, ref.INT8_MAX
LOGIT_HEADROOM = 1.25


@dataclass(frozen=True)
class QuantConfig:
    """How to quantise a model.

    Parameters
    ----------
    scheme : {"w8a8", "w4a8", "mixed"}
        W8 everywhere; W4 (``w4_kind``) in every encoder linear layer; or a fraction
        ``w4_ratio`` of each encoder linear layer's output channels in W4. The patch
        embedding and the classifier head always stay W8 (they are tiny and sensitive).
    w4_ratio : float
        For ``mixed``: the default per-layer ratio; ``layer_w4_ratio`` overrides per layer.
    softmax_lanes : int
        The E2Softmax unit's lanes: its online normalisation runs over groups of this many
        elements, which is part of the numeric definition (see ``ref.e2softmax_k``).
    softmax_output : {"uint8", "log2"}
        Probability format feeding P x V.
    act_calibration : {"max", "mse"}
        How per-tensor activation ranges are chosen from the calibration images: the clip
        with the least squared quantisation error (``scales.mse_clip``), or the plain
        maximum. The residual stream (PTF), the softmax input and the logits always use the
        maximum (their outliers carry the signal: clipping them changes the arg-max).
    bias_correction : bool
        After folding, take off every linear layer's integer bias the mean error (per output
        channel) of its accumulator against the float layer on the calibration images, the
        layer fed the float input on its int8 grid (so only its own error is corrected).
    gelu_zero_point : bool
        The GELU table's output uses the whole int8 range for [min GELU, clip] with a zero
        point that FC2's bias absorbs (GELU is nearly non-negative, so a symmetric grid
        wastes half its codes).
    ln_channel_scales : bool
        Each LayerNorm output channel gets its own int8 scale (its calibration range): the
        LayerNorm's per-channel gain absorbs it, and the next linear layer's weight columns
        are multiplied by it before their per-row quantisation, so the integer arithmetic
        is unchanged. LayerNorm outputs have a few large channels (large gamma) that would
        otherwise set the step for all. Full migration: ``ln_smooth_alpha = 1``.
    ln_smooth_alpha : float or None
        SmoothQuant migration strength (``scales.smooth_scales``) for the LayerNorm outputs:
        channel ``c`` gets the scale ``m_c * max_c(r_c / m_c) / 127`` with ``m_c =
        r_c**alpha / w_c**(1 - alpha)`` (``r_c`` its calibration range, ``w_c`` the largest
        weight of input column ``c`` of the next linear layer), which the LayerNorm gain and
        the next weight columns absorb as with ``ln_channel_scales``. None: per tensor.
    v_smooth_alpha : float or None
        The same migration for V and the attention context: V's channels get their own
        scales (QKV requantises per output row anyway), the context (a probability-weighted
        sum of V rows, requantised by one multiplier) keeps them times one common factor,
        and the projection's weight columns absorb them. None: per tensor.
    gelu_input_clip : bool
        FC1's output grid (the GELU table's input) covers ``[-c, max]`` instead of the
        larger calibration extreme, ``c`` where ``|GELU|`` falls below half the table's
        output step for good (``scales.gelu_input_scale``): the clamped inputs all map to
        code 0 either way, so no GELU output changes, and the positive inputs get a finer
        step.
    w4_clip : {"max", "mse"}
        Each int4 row's scale: its maximum, or the clip (1/2 .. 1 of it) with the least
        input-weighted rounding error (``scales.quantize_weight``).
    weight_rounding : {"nearest", "gptq"}
        How each weight row's integers are found once its kind and scale are chosen: round to
        nearest, or GPTQ / OPTQ (``scales.gptq_round``: column by column, each column's
        rounding error pushed onto the columns not yet rounded through the inverse of ``H =
        X^T X``, X the layer's float calibration inputs, 1 % damping). The scales, the W4
        rows and the datapath are the same; only the integers change.
    gptq_act_order : bool
        With ``gptq``: round the input columns in order of decreasing ``H[k, k]``.
    qk_balance : bool
        Multiply q's channel ``c`` by ``m_c = sqrt(max|k_c| / max|q_c|)`` and k's by
        ``1 / m_c`` (QKV weight rows and biases, before quantisation): ``q . k`` is unchanged
        in float, and both per-tensor int8 grids cover channels of even range.
    residual_bits : int
        Signed width of the residual stream (8..16): the embedding, every residual add's
        output, and so every LayerNorm's input. Its PTF grid is ``2**(residual_bits - 8)``
        times finer than int8 over the same range.
    branch_bits : int
        Signed width (8..16) of the linear outputs that only feed a residual add: the patch
        embedding, each attention projection and each FC2.
    logit_bits : int
        Signed width (8..16) of the attention logits (the QK^T requantisation, E2Softmax's
        input); the softmax input scale ``ln2 * 2**-T`` gets finer to match.

    Widths above 8 are a golden-model study (docs/numerics.md, "A wider activation
    path"): ``vitaccel.compile.compile_model`` refuses them, the RTL is int8.
    """

    scheme: str = "w8a8"
    w4_ratio: float = 0.5
    w4_kind: str = "int4"
    layer_w4_ratio: tuple[tuple[str, float], ...] = ()
    softmax_lanes: int = 1
    softmax_output: str = "uint8"
    softmax_frac_bits: int = 15
    mult_bits: int = 16
    # Calibration options, each measured on the shipped and the extra checkpoints
    # (docs/numerics.md, "Calibration options"): none wins consistently, so the defaults
    # keep the plain-maximum calibration the RTL tests and the DSE sensitivity data use.
    act_calibration: str = "max"
    bias_correction: bool = False
    gelu_zero_point: bool = False
    ln_channel_scales: bool = False
    # Float-side migrations of activation range into the weights (issue 24; measured in
    # docs/numerics.md, "Per-channel migration"): they sharpen their own tensors but do not
    # move the end-to-end figures beyond the calibration noise, so they stay off.
    ln_smooth_alpha: float | None = None
    v_smooth_alpha: float | None = None
    qk_balance: bool = False
    w4_clip: str = "max"
    # GPTQ rounding of the weights (issue 24; measured in docs/numerics.md, "GPTQ").
    weight_rounding: str = "nearest"
    gptq_act_order: bool = False
    gelu_input_clip: bool = False
    # Datapath widths (issue 24): 8 is the int8 engine every RTL unit implements.
    residual_bits: int = 8
    branch_bits: int = 8
    logit_bits: int = 8

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, not {self.scheme!r}")
        if not 0.0 <= self.w4_ratio <= 1.0:
            raise ValueError(f"w4_ratio must be in [0, 1], not {self.w4_ratio!r}")
        if self.w4_kind not in ("int4", "pot4"):
            raise ValueError(f"w4_kind must be 'int4' or 'pot4', not {self.w4_kind!r}")
        if self.w4_clip not in ("max", "mse"):
            raise ValueError(f"w4_clip must be 'max' or 'mse', not {self.w4_clip!r}")
        if self.weight_rounding not in scales.WEIGHT_ROUNDINGS:
            raise ValueError(
                f"weight_rounding must be one of {', '.join(scales.WEIGHT_ROUNDINGS)}, "
                f"not {self.weight_rounding!r}"
            )
        if self.gptq_act_order not in (False, True):
            raise ValueError(f"gptq_act_order must be True or False, not {self.gptq_act_order!r}")
        if self.gptq_act_order and self.weight_rounding != "gptq":
            raise ValueError(
                f"gptq_act_order needs weight_rounding='gptq', not {self.weight_rounding!r}"
            )
        if self.act_calibration not in ACT_CALIBRATIONS:
            raise ValueError(
                f"act_calibration must be one of {', '.join(ACT_CALIBRATIONS)}, "
                f"not {self.act_calibration!r}"
            )
        if self.softmax_output not in ("uint8", "log2"):
            raise ValueError(
                f"softmax_output must be 'uint8' or 'log2', not {self.softmax_output!r}"
            )
        for name in ("ln_smooth_alpha", "v_smooth_alpha"):
            a = getattr(self, name)
            if a is not None and not (isinstance(a, (int, float)) and 0.0 <= a <= 1.0):
                raise ValueError(f"{name} must be None or a number in [0, 1], not {a!r}")
        if self.ln_channel_scales and self.ln_smooth_alpha is not None:
            raise ValueError(
                "ln_channel_scales and ln_smooth_alpha both set LayerNorm output scales: choose one"
            )
        for name in WIDTH_FIELDS:
            bits = getattr(self, name)
            if not (isinstance(bits, int) and ACT_BITS[0] <= bits <= ACT_BITS[1]):
                raise ValueError(
                    f"{name} must be an integer in {ACT_BITS[0]}..{ACT_BITS[1]}, not {bits!r}"
                )

    def wide_fields(self) -> list[str]:
        """The width fields set above 8 bits (the RTL implements int8 activations only)."""
        return [n for n in WIDTH_FIELDS if getattr(self, n) > 8]

    def ratio_for(self, layer: str) -> float:
        if layer == "patch_embed" or layer == "head":
            return 0.0
        if self.scheme == "w8a8":
            return 0.0
        if self.scheme == "w4a8":
            return 1.0
        return dict(self.layer_w4_ratio).get(layer, self.w4_ratio)


@dataclass
class IntLinear:
    """``y = requantize(x @ q.T + bias, mult, shift, lo, hi)`` with per-row constants."""

    name: str
    weight: QuantWeight
    bias: np.ndarray  # int64 (N,), in accumulator units
    mult: np.ndarray  # int64 (N,)
    shift: np.ndarray  # int64 (N,)
    lo: int = ref.INT8_MIN
    hi: int = ref.INT8_MAX

    def accumulate(self, x: np.ndarray) -> np.ndarray:
        return ref.matmul_int(x, self.weight.q, self.bias)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ref.requantize(self.accumulate(x), self.mult, self.shift, self.lo, self.hi)

    @property
    def out_features(self) -> int:
        return int(self.weight.q.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.weight.q.shape[1])


@dataclass
class IntResidual:
    """``x' = residual_add(x, mult_a, branch, mult_b, shift, lo, hi)`` with per-channel
    multipliers; ``lo, hi`` the residual stream's signed range."""

    mult_a: np.ndarray
    mult_b: np.ndarray
    shift: int
    lo: int = ref.INT8_MIN
    hi: int = ref.INT8_MAX

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ref.residual_add(a, self.mult_a, b, self.mult_b, self.shift, self.lo, self.hi)


@dataclass
class IntBlock:
    norm1: LayerNormParams
    qkv: IntLinear
    qk_mult: int
    qk_shift: int
    softmax: SoftmaxParams
    av_mult: int
    av_shift: int
    proj: IntLinear
    add1: IntResidual
    norm2: LayerNormParams
    fc1: IntLinear
    gelu_table: np.ndarray
    fc2: IntLinear
    add2: IntResidual
    # Integer code of real 0 in the GELU table's output (FC2's bias absorbs it).
    gelu_zero: int = 0


@dataclass
class IntViT:
    """The integer-only ViT. ``forward`` is the bit-exact definition the RTL must meet."""

    spec: object
    config: QuantConfig
    input_scale: float
    patch_embed: IntLinear
    cls_row: np.ndarray  # int8 (D,): class token + pos[0] on the first residual scale
    pos_add: IntResidual
    pos_q: np.ndarray  # int8 (patches, D): pos[1:] on its own scale
    blocks: list[IntBlock]
    norm: LayerNormParams
    head: IntLinear
    logit_scale: float
    scales: dict[str, float] = field(default_factory=dict)
    # Per-channel real scales of the tensors quantised per channel: the residual stream
    # (PTF: base * 2**alpha_c; "embed", "blocks.i.add1", "blocks.i.add2") and, with
    # ``ln_channel_scales``, the LayerNorm outputs ("blocks.i.norm1", ..., "norm"; ``scales``
    # then holds their largest channel scale). For error reports; the integers need none.
    channel_scales: dict[str, np.ndarray] = field(default_factory=dict)

    # ---- host-side input preparation -------------------------------------------------
    def quantize_images(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Normalised float images (B, C, H, W) -> int8 patches (B, patches, patch_dim).

        Patch p covers rows/cols ``(p // grid, p % grid)``; within a patch the order is
        (channel, row, col), matching the patch-embedding Conv2d weight flattening.
        """
        img = np.asarray(images, dtype=np.float64)
        q = scales.quantize_activation(img, self.input_scale)
        return patchify(q, self.spec.patch_size)

    # ---- the integer forward -----------------------------------------------------------
    def forward_patches(self, patches: np.ndarray, capture: dict | None = None) -> np.ndarray:
        """int8 patches (B, patches, patch_dim) -> int8 logits (B, classes)."""
        spec = self.spec
        cap = capture if capture is not None else {}
        heads, hd = spec.heads, spec.head_dim
        pe = self.patch_embed(patches)
        cap["patch_embed"] = pe
        body = self.pos_add(pe, self.pos_q)
        batch = patches.shape[0]
        x = np.concatenate(
            [np.broadcast_to(self.cls_row, (batch, 1, spec.embed_dim)), body], axis=1
        )
        cap["embed"] = x
        for i, blk in enumerate(self.blocks):
            p = f"blocks.{i}"
            h = ref.ailayernorm(x, blk.norm1)
            cap[f"{p}.norm1"] = h
            qkv = blk.qkv(h)
            cap[f"{p}.attn.qkv"] = qkv
            tokens = qkv.shape[1]
            qkv = qkv.reshape(batch, tokens, 3, heads, hd).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, T, hd)
            cap[f"{p}.attn.q"], cap[f"{p}.attn.k"], cap[f"{p}.attn.v"] = q, k, v
            scores = np.einsum("bhtd,bhsd->bhts", q.astype(np.int64), k.astype(np.int64))
            logits = ref.requantize(
                scores, blk.qk_mult, blk.qk_shift, *ref.signed_range(self.config.logit_bits)
            )
            cap[f"{p}.attn.logits"] = logits
            probs = ref.e2softmax(logits, blk.softmax, output=self.config.softmax_output)
            cap[f"{p}.attn.probs"] = probs
            pw = (
                probs
                if self.config.softmax_output == "uint8"
                else ref.log2_code_weights(probs, blk.softmax.code_bits)
            )
            ctx = np.einsum("bhts,bhsd->bhtd", pw.astype(np.int64), v.astype(np.int64))
            ctx = ref.requantize(ctx, blk.av_mult, blk.av_shift)
            ctx = ctx.transpose(0, 2, 1, 3).reshape(batch, tokens, spec.embed_dim)
            cap[f"{p}.attn.context"] = ctx
            a = blk.proj(ctx)
            cap[f"{p}.attn.proj"] = a
            x = blk.add1(x, a)
            cap[f"{p}.add1"] = x
            h = ref.ailayernorm(x, blk.norm2)
            cap[f"{p}.norm2"] = h
            f1 = blk.fc1(h)
            cap[f"{p}.mlp.fc1"] = f1
            g = ref.lut_lookup(f1, blk.gelu_table)
            cap[f"{p}.mlp.gelu"] = g
            f2 = blk.fc2(g)
            cap[f"{p}.mlp.fc2"] = f2
            x = blk.add2(x, f2)
            cap[f"{p}.add2"] = x
        cls = ref.ailayernorm(x[:, 0], self.norm)
        cap["norm"] = cls
        logits = self.head(cls)
        cap["logits"] = logits
        return logits

    def forward(self, images, capture: dict | None = None) -> np.ndarray:
        return self.forward_patches(self.quantize_images(images), capture)

    def dequantize_logits(self, logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits, dtype=np.float64) * self.logit_scale

    def linear_layers(self) -> dict[str, IntLinear]:
        out = {"patch_embed": self.patch_embed}
        for b in self.blocks:
            for name in ("qkv", "proj", "fc1", "fc2"):
                layer = getattr(b, name)
                out[layer.name] = layer
        out["head"] = self.head
        return out


def linear_layer_names(depth: int) -> list[str]:
    names = ["patch_embed"]
    for i in range(depth):
        names += [
            f"blocks.{i}.attn.qkv",
            f"blocks.{i}.attn.proj",
            f"blocks.{i}.mlp.fc1",
            f"blocks.{i}.mlp.fc2",
        ]
    return names + ["head"]


# ---------------------------------------------------------------------------------------
# Calibration: the float forward, op by op, recording what the quantisers need.
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def float_trace(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the float model op by op (same order as IntViT.forward) and keep every tensor."""
    spec = model.spec
    t: dict[str, torch.Tensor] = {}
    images = images.to(torch.float64)
    m = model.double()
    t["input"] = images
    patches = torch.from_numpy(patchify(images.numpy(), spec.patch_size))
    t["patches"] = patches
    pe = patches @ m.patch_embed.proj.weight.reshape(spec.embed_dim, -1).T + m.patch_embed.proj.bias
    t["patch_embed"] = pe
    batch = images.shape[0]
    x = torch.cat([m.cls_token.expand(batch, -1, -1), pe], dim=1) + m.pos_embed
    t["embed"] = x
    for i, blk in enumerate(m.blocks):
        p = f"blocks.{i}"
        h = blk.norm1(x)
        t[f"{p}.norm1.in"], t[f"{p}.norm1"] = x, h
        qkv = blk.attn.qkv(h)
        t[f"{p}.attn.qkv"] = qkv
        tokens = qkv.shape[1]
        q, k, v = qkv.reshape(batch, tokens, 3, spec.heads, spec.head_dim).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * spec.head_dim**-0.5
        t[f"{p}.attn.logits"] = scores
        probs = scores.softmax(-1)
        t[f"{p}.attn.probs"] = probs
        ctx = (probs @ v).transpose(1, 2).reshape(batch, tokens, spec.embed_dim)
        t[f"{p}.attn.context"] = ctx
        a = blk.attn.proj(ctx)
        t[f"{p}.attn.proj"] = a
        x = x + a
        t[f"{p}.add1"] = x
        h = blk.norm2(x)
        t[f"{p}.norm2"] = h
        f1 = blk.mlp.fc1(h)
        t[f"{p}.mlp.fc1"] = f1
        g = torch.nn.functional.gelu(f1)
        t[f"{p}.mlp.gelu"] = g
        f2 = blk.mlp.fc2(g)
        t[f"{p}.mlp.fc2"] = f2
        x = x + f2
        t[f"{p}.add2"] = x
    cls = m.norm(x[:, 0])
    t["norm"] = cls
    t["logits"] = m.head(cls)
    model.float()
    return t


def _absmax(t: torch.Tensor) -> float:
    return max(float(t.abs().max()), 1e-6)


def _channel_absmax(t: torch.Tensor) -> np.ndarray:
    return t.abs().reshape(-1, t.shape[-1]).max(dim=0).values.numpy()


def _sq_mean(t: torch.Tensor) -> np.ndarray:
    return (t.reshape(-1, t.shape[-1]) ** 2).mean(dim=0).numpy()


def _hessian(t: torch.Tensor) -> np.ndarray:
    """``X^T X / rows`` of a layer's calibration input (its diagonal is ``_sq_mean``)."""
    x = t.reshape(-1, t.shape[-1]).double()
    return (x.T @ x / x.shape[0]).numpy()


def _linear(
    name: str,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_scale: float,
    out_scale: np.ndarray | float,
    cfg: QuantConfig,
    x: torch.Tensor,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
) -> IntLinear:
    """One linear layer's constants; ``x`` is its float calibration input (in the units of
    ``weight``'s columns), whose statistics pick the W4 rows and, with GPTQ, the integers."""
    w = weight.detach().double().reshape(weight.shape[0], -1).numpy()
    gptq = cfg.weight_rounding == "gptq"
    qw = scales.quantize_weight(
        w,
        cfg.ratio_for(name),
        cfg.w4_kind,
        _sq_mean(x),
        w4_clip=cfg.w4_clip,
        rounding=cfg.weight_rounding,
        hessian=_hessian(x) if gptq else None,
        act_order=cfg.gptq_act_order,
    )
    acc_scale = in_scale * qw.scale
    b = np.zeros(w.shape[0]) if bias is None else bias.detach().double().numpy()
    bias_q = np.clip(np.floor(b / acc_scale + 0.5), -(2**31), 2**31 - 1).astype(np.int64)
    mult, shift = scales.dyadic(
        acc_scale / np.broadcast_to(out_scale, acc_scale.shape), cfg.mult_bits
    )
    return IntLinear(name, qw, bias_q, mult, shift, lo, hi)


def _layernorm(
    ln: torch.nn.LayerNorm, in_base: float, alpha: np.ndarray, out_scale: float
) -> LayerNormParams:
    channels = ln.weight.shape[0]
    recip_mult, recip_shift = scales.dyadic(1.0 / channels, 16)
    gamma = ln.weight.detach().double().numpy() / out_scale
    beta = ln.bias.detach().double().numpy() / out_scale
    # gain carries out_shift - NORM_FRAC fraction bits and must fit 16 bits signed.
    top = max(float(np.abs(gamma).max()), 1e-9)
    frac = int(math.floor(math.log2((2**15 - 1) / top)))
    out_shift = int(np.clip(frac + ref.NORM_FRAC, ref.NORM_FRAC, 40))
    gain = np.floor(gamma * 2.0 ** (out_shift - ref.NORM_FRAC) + 0.5).astype(np.int64)
    bias = np.floor(beta * 2.0**out_shift + 0.5).astype(np.int64)
    eps_q = max(1, int(round(ln.eps / in_base**2)))
    return LayerNormParams(
        alpha=alpha.astype(np.int64),
        recip_mult=int(recip_mult),
        recip_shift=int(recip_shift),
        gain=gain,
        bias=bias,
        out_shift=out_shift,
        eps_q=eps_q,
    )


def _residual(
    a_scale: np.ndarray, b_scale: np.ndarray | float, out_scale: np.ndarray, cfg: QuantConfig
) -> IntResidual:
    ra = np.broadcast_to(a_scale / out_scale, out_scale.shape)
    rb = np.broadcast_to(b_scale / out_scale, out_scale.shape)
    mult, shift = scales.dyadic_common(np.concatenate([ra, rb]), cfg.mult_bits)
    n = out_scale.shape[0]
    return IntResidual(mult[:n], mult[n:], shift, *ref.signed_range(cfg.residual_bits))


def _ptf(t: torch.Tensor, bits: int) -> tuple[float, np.ndarray, np.ndarray]:
    base, alpha = scales.ptf_alpha(_channel_absmax(t), bits=bits)
    return base, alpha, base * 2.0**alpha


def _softmax_shift(logit_absmax: float, bits: int = 8) -> int:
    # s = ln2 * 2**-T must cover the calibrated logits: qmax * s >= absmax.
    qmax = (1 << (bits - 1)) - 1
    t = int(math.floor(math.log2(qmax * math.log(2) / logit_absmax)))
    return int(np.clip(t, 0, 12))


def quant_config_for(design) -> QuantConfig:
    """The golden model's quantisation for a design file (the one rule for build, generate
    and simulation): W8A8, or mixed with the design's per-layer W4 ratios and W4 kind; the
    softmax lanes and output format of its E2Softmax unit."""
    return QuantConfig(
        scheme="mixed" if design.array.w4_share > 0 else "w8a8",
        w4_ratio=design.default_w4_ratio,
        w4_kind=design.array.w4_kind,
        layer_w4_ratio=tuple(sorted((k, v.w4_ratio) for k, v in design.layers.items())),
        softmax_lanes=design.nonlinear.softmax_lanes,
        softmax_output=design.nonlinear.softmax_output,
    )


def quantize_model(
    model, calib_images: torch.Tensor, config: QuantConfig = QuantConfig()
) -> IntViT:
    """Calibrate ``model`` on ``calib_images`` and fold it into an :class:`IntViT`.

    Per-tensor activation scales come from the calibration maximum (no clipping; or the
    least-squared-error clip with ``act_calibration="mse"``); the residual stream gets
    per-channel power-of-two factors chosen so calibration data never clips; weights are
    quantised per output channel (and per the config's W4 ratios, rows chosen by
    input-weighted error). The config's calibration options (bias correction, GELU zero
    point, per-channel LayerNorm output scales) only change constants.
    """
    spec = model.spec
    model.eval()
    tr = float_trace(model, calib_images)
    cfg = config or QuantConfig()
    sc: dict[str, float] = {}
    # name -> (layer, float input, its int8 grid scale(s), zero code, float output, the
    # accumulator's input scale): what bias correction needs.
    linears: dict[str, tuple] = {}

    def act(t: torch.Tensor, bits: int = 8) -> float:
        if cfg.act_calibration == "max":
            return scales.act_scale(_absmax(t), bits)
        levels = (1 << (bits - 1)) - 1
        return scales.act_scale(max(scales.mse_clip(t.abs().numpy(), levels), 1e-6), bits)

    def track(
        layer: IntLinear, x_key: str, s_x, y_key: str, zero: int = 0, acc_in: float | None = None
    ) -> IntLinear:
        acc_in = s_x if acc_in is None else acc_in
        linears[layer.name] = (layer, tr[x_key], s_x, zero, tr[y_key], acc_in)
        return layer

    s_in = scales.act_scale(_absmax(tr["input"]))
    sc["input"] = s_in
    s_pe = act(tr["patch_embed"], cfg.branch_bits)
    sc["patch_embed"] = s_pe
    branch_range = ref.signed_range(cfg.branch_bits)
    patch_embed = track(
        _linear(
            "patch_embed",
            model.patch_embed.proj.weight,
            model.patch_embed.proj.bias,
            s_in,
            s_pe,
            cfg,
            tr["patches"],
            *branch_range,
        ),
        "patches",
        s_in,
        "patch_embed",
    )
    # First residual scale (PTF) over the embedded tokens.
    base, alpha, x_scale = _ptf(tr["embed"], cfg.residual_bits)
    pos = model.pos_embed.detach().double()[0].numpy()
    cls = model.cls_token.detach().double()[0, 0].numpy()
    cls_row = scales.quantize_activation((cls + pos[0]) / x_scale, 1.0, cfg.residual_bits)
    s_pos = scales.act_scale(float(np.abs(pos[1:]).max()))
    pos_q = scales.quantize_activation(pos[1:], s_pos)
    pos_add = _residual(np.full(spec.embed_dim, s_pe), s_pos, x_scale, cfg)
    ch_scales = {"embed": x_scale}

    def lin(name: str, module, s_in, s_out, input_key: str, bits: int = 8) -> IntLinear:
        w, b = module if isinstance(module, tuple) else (module.weight, module.bias)
        weight, acc_in, x_in = _fold_input_scale(w, s_in, tr[input_key])
        rng = ref.signed_range(bits)
        layer = _linear(name, weight, b, acc_in, s_out, cfg, x_in, *rng)
        return track(layer, input_key, s_in, name, acc_in=acc_in)

    def ln_scale(key: str, next_weight: torch.Tensor):
        # ln_channel_scales is full migration: every channel its own range (alpha = 1).
        alpha = 1.0 if cfg.ln_channel_scales else cfg.ln_smooth_alpha
        if alpha is None:
            return act(tr[key])
        w_col = next_weight.detach().double().abs().amax(dim=0).numpy()
        s = scales.smooth_scales(_channel_absmax(tr[key]), w_col, alpha)
        ch_scales[key] = s
        return s

    blocks: list[IntBlock] = []
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}"
        s_n1 = ln_scale(f"{p}.norm1", blk.attn.qkv.weight)
        norm1 = _layernorm(blk.norm1, base, alpha, s_n1)
        # q, k and v get their own output scales (one requant per output channel anyway).
        d = spec.embed_dim
        qkv_w, qkv_b = blk.attn.qkv.weight.detach().double(), blk.attn.qkv.bias
        if cfg.qk_balance:
            # q . k = sum_c (q_c m_c)(k_c / m_c): scale q's rows by m_c and k's by 1/m_c so
            # both channels span sqrt(max|q_c| max|k_c|), a float-exact transformation that
            # evens out the channel ranges both per-tensor int8 grids must cover.
            qkv_t = tr[f"{p}.attn.qkv"]
            m = np.sqrt(
                np.maximum(_channel_absmax(qkv_t[..., d : 2 * d]), 1e-6)
                / np.maximum(_channel_absmax(qkv_t[..., :d]), 1e-6)
            )
            rows = torch.from_numpy(np.concatenate([m, 1.0 / m, np.ones(d)]))
            qkv_w = qkv_w * rows[:, None]
            qkv_b = None if qkv_b is None else qkv_b.detach().double() * rows
            tr[f"{p}.attn.qkv"] = qkv_t.double() * rows
        qkv_t = tr[f"{p}.attn.qkv"]
        s_q, s_k, s_v = (act(qkv_t[..., j * d : (j + 1) * d]) for j in range(3))
        t_sm = _softmax_shift(_absmax(tr[f"{p}.attn.logits"]), cfg.logit_bits)
        s_logit = math.log(2) * 2.0**-t_sm
        qk_mult, qk_shift = scales.dyadic(s_q * s_k * spec.head_dim**-0.5 / s_logit, cfg.mult_bits)
        sm = SoftmaxParams(in_shift=t_sm, frac_bits=cfg.softmax_frac_bits, lanes=cfg.softmax_lanes)
        p_scale = 2.0**-8 if cfg.softmax_output == "uint8" else 2.0 ** -((1 << sm.code_bits) - 1)
        if cfg.v_smooth_alpha is None:
            s_ctx = act(tr[f"{p}.attn.context"])
            av_ratio = p_scale * s_v / s_ctx
        else:
            # Per-channel V scales (QKV requantises per output row anyway); the context,
            # a probability-weighted sum of V rows, keeps each channel's scale times one
            # common factor (the single P x V requantisation), and the projection's weight
            # columns absorb it.
            w_col = blk.attn.proj.weight.detach().double().abs().amax(dim=0).numpy()
            s_v = scales.smooth_scales(
                _channel_absmax(qkv_t[..., 2 * d :]), w_col, cfg.v_smooth_alpha
            )
            ctx_max = np.maximum(_channel_absmax(tr[f"{p}.attn.context"]), 1e-6)
            widen = float(np.max(ctx_max / (s_v * ref.INT8_MAX)))
            s_ctx = s_v * widen
            av_ratio = p_scale / widen
            ch_scales[f"{p}.attn.v"], ch_scales[f"{p}.attn.context"] = s_v, s_ctx
        qkv_out = np.concatenate([np.full(d, s_q), np.full(d, s_k), np.broadcast_to(s_v, (d,))])
        if cfg.qk_balance:
            # Real scales of the float model's q and k channels (for error reports).
            ch_scales[f"{p}.attn.q"], ch_scales[f"{p}.attn.k"] = s_q / m, s_k * m
        qkv = lin(f"{p}.attn.qkv", (qkv_w, qkv_b), s_n1, qkv_out, f"{p}.norm1")
        av_mult, av_shift = scales.dyadic(av_ratio, cfg.mult_bits)
        s_proj = act(tr[f"{p}.attn.proj"], cfg.branch_bits)
        proj = lin(
            f"{p}.attn.proj", blk.attn.proj, s_ctx, s_proj, f"{p}.attn.context", cfg.branch_bits
        )
        base1, alpha1, x1_scale = _ptf(tr[f"{p}.add1"], cfg.residual_bits)
        add1 = _residual(x_scale, s_proj, x1_scale, cfg)
        s_n2 = ln_scale(f"{p}.norm2", blk.mlp.fc1.weight)
        norm2 = _layernorm(blk.norm2, base1, alpha1, s_n2)
        s_g, g_zero = _gelu_scale(tr[f"{p}.mlp.gelu"], cfg)
        if cfg.gelu_input_clip:
            # FC1 feeds only the GELU table: its grid need not reach where GELU rounds to 0.
            s_f1 = scales.gelu_input_scale(float(tr[f"{p}.mlp.fc1"].max()), s_g)
        else:
            s_f1 = act(tr[f"{p}.mlp.fc1"])
        fc1 = lin(f"{p}.mlp.fc1", blk.mlp.fc1, s_n2, s_f1, f"{p}.norm2")
        table = ref.gelu_lut(s_f1, s_g, ref.INT8_MIN - g_zero, ref.INT8_MAX - g_zero) + g_zero
        s_f2 = act(tr[f"{p}.mlp.fc2"], cfg.branch_bits)
        fc2 = lin(f"{p}.mlp.fc2", blk.mlp.fc2, s_g, s_f2, f"{p}.mlp.gelu", cfg.branch_bits)
        # Real GELU = s_g * (code - g_zero): FC2 subtracts g_zero * sum_k q[n, k] via its bias.
        fc2.bias = _clamp_bias(fc2.bias - g_zero * fc2.weight.q.sum(axis=1))
        linears[fc2.name] = (*linears[fc2.name][:3], g_zero, *linears[fc2.name][4:])
        base2, alpha2, x2_scale = _ptf(tr[f"{p}.add2"], cfg.residual_bits)
        add2 = _residual(x1_scale, s_f2, x2_scale, cfg)
        blocks.append(
            IntBlock(
                norm1,
                qkv,
                int(qk_mult),
                int(qk_shift),
                sm,
                int(av_mult),
                int(av_shift),
                proj,
                add1,
                norm2,
                fc1,
                table,
                fc2,
                add2,
                g_zero,
            )
        )
        sc.update(
            {
                f"{p}.norm1": float(np.max(s_n1)),
                f"{p}.q": s_q,
                f"{p}.k": s_k,
                f"{p}.v": float(np.max(s_v)),
                f"{p}.logits": s_logit,
                f"{p}.context": float(np.max(s_ctx)),
                f"{p}.proj": s_proj,
                f"{p}.norm2": float(np.max(s_n2)),
                f"{p}.fc1": s_f1,
                f"{p}.gelu": s_g,
                f"{p}.fc2": s_f2,
            }
        )
        ch_scales[f"{p}.add1"], ch_scales[f"{p}.add2"] = x1_scale, x2_scale
        base, alpha, x_scale = base2, alpha2, x2_scale
    s_norm = ln_scale("norm", model.head.weight)
    norm = _layernorm(model.norm, base, alpha, s_norm)
    s_logits = _absmax(tr["logits"]) * LOGIT_HEADROOM / LOGIT_MAX
    head_w, head_in, head_x = _fold_input_scale(model.head.weight, s_norm, tr["norm"])
    head = track(
        _linear(
            "head",
            head_w,
            model.head.bias,
            head_in,
            s_logits,
            cfg,
            head_x,
            LOGIT_MIN,
            LOGIT_MAX,
        ),
        "norm",
        s_norm,
        "logits",
        acc_in=head_in,
    )
    sc["norm"], sc["logits"] = float(np.max(s_norm)), s_logits
    golden = IntViT(
        spec=spec,
        config=cfg,
        input_scale=s_in,
        patch_embed=patch_embed,
        cls_row=cls_row,
        pos_add=pos_add,
        pos_q=pos_q,
        blocks=blocks,
        norm=norm,
        head=head,
        logit_scale=s_logits,
        scales=sc,
        channel_scales=ch_scales,
    )
    if cfg.bias_correction:
        for layer, x, s_x, zero, y, acc_in in linears.values():
            _correct_bias(layer, x, s_x, zero, y, acc_in)
    return golden


def _fold_input_scale(
    weight: torch.Tensor, s_in, x: torch.Tensor
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """A linear layer's weight, accumulator input scale and float calibration input, with a
    per-channel input scale folded into the weight columns (and divided out of the input).

    ``x_real[k] = s_in[k] * x_int[k]``, so ``sum_k x_real[k] W[n, k] = sum_k x_int[k] (W[n, k]
    s_in[k])``: the layer sees integer inputs of scale 1 and weights ``W * s_in``, quantised
    per row as usual. A per-tensor ``s_in`` is returned unchanged.
    """
    if np.ndim(s_in) == 0:
        return weight, float(s_in), x
    s = torch.from_numpy(np.asarray(s_in, dtype=np.float64))
    return weight.detach().double() * s[None, :], 1.0, x / s


def _clamp_bias(bias: np.ndarray) -> np.ndarray:
    return np.clip(bias, -(2**31), 2**31 - 1).astype(np.int64)


def _gelu_scale(g: torch.Tensor, cfg: QuantConfig) -> tuple[float, int]:
    """Scale and zero code of the GELU table's output.

    With ``gelu_zero_point`` the 256 codes cover [min, clip] of the calibration GELU output
    (min is about -0.17: GELU is nearly non-negative), real 0 at code ``zero``; otherwise
    the symmetric grid of every other activation (``zero`` = 0).
    """
    if not cfg.gelu_zero_point:
        if cfg.act_calibration == "max":
            return scales.act_scale(_absmax(g)), 0
        return scales.act_scale(max(scales.mse_clip(g.abs().numpy()), 1e-6)), 0
    low = min(float(g.min()), 0.0)
    shifted = (g - low).numpy()
    top = float(shifted.max()) if cfg.act_calibration == "max" else scales.mse_clip(shifted, 255)
    s_g = max(top, 1e-6) / 255
    return s_g, int(ref.INT8_MIN - math.floor(low / s_g + 0.5))


def _correct_bias(
    layer: IntLinear, x: torch.Tensor, s_x, zero: int, y: torch.Tensor, acc_in: float
) -> None:
    """Bias correction (Nagel et al. 2019, sec. 4.2, with calibration data instead of BN
    statistics): take the mean error of the layer's accumulator against the float layer's
    output off its integer bias, per output channel.

    The layer is fed the float model's own input on its int8 grid, so the correction
    measures this layer's error (the systematic part of the weight rounding, ``E[(W_q - W)
    x]``) and not errors inherited from upstream, which their own layers correct. Only the
    bias constant changes.
    """
    xq = scales.quantize_activation(x.numpy(), s_x, bits=32) + zero
    xq = np.clip(xq, ref.INT8_MIN, ref.INT8_MAX).reshape(-1, layer.in_features)
    acc_scale = acc_in * layer.weight.scale
    got = layer.accumulate(xq) * acc_scale
    err = (got - y.numpy().reshape(-1, layer.out_features)).mean(axis=0)
    layer.bias = _clamp_bias(layer.bias - np.floor(err / acc_scale + 0.5))
