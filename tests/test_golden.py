"""The integer golden model: accuracy against float, locked in, and per-operator error on
tensors captured from the trained digits ViT running real images."""

import functools
import math

import numpy as np
import pytest
import torch

from vitaccel.models.evaluate import evaluate, prepare
from vitaccel.models.golden import QuantConfig, float_trace, quantize_model
from vitaccel.quant import ref
from vitaccel.quant.scales import QuantWeight


@pytest.fixture(scope="module")
def digits():
    spec, model, golden, x, y = prepare("digits-vit")
    return spec, model, golden, x, y


def test_float_trace_matches_the_float_model(digits):
    _, model, _, x, _ = digits
    with torch.no_grad():
        expect = model(x[:16]).double()
    got = float_trace(model, x[:16])["logits"]
    assert torch.allclose(got, expect, atol=1e-4)


def test_integer_forward_is_deterministic_and_integer(digits):
    _, _, golden, x, _ = digits
    a = golden.forward(x[:8])
    b = golden.forward(x[:8])
    assert a.dtype == np.int64 and np.array_equal(a, b)
    assert a.min() >= -128 and a.max() <= 127  # int8 logits


# Locked-in end-to-end figures on the 360-image digits test split (one image = 0.0028).
@pytest.mark.parametrize(
    "config, max_drop, min_agree, min_cos",
    [
        (QuantConfig(scheme="w8a8"), 0.010, 0.985, 0.990),
        # the mixed issue's (#18) target: 50 % W4 rows agree with float on >= 99.5 %
        # (measured: 100 %, int4 and pot4)
        (QuantConfig(scheme="mixed", w4_ratio=0.5), 0.020, 0.995, 0.985),
        (QuantConfig(scheme="w8a8", softmax_output="log2"), 0.020, 0.975, 0.980),
        (QuantConfig(scheme="w4a8"), 0.030, 0.960, 0.970),
    ],
    ids=["w8a8", "mixed50", "log2-softmax", "w4a8"],
)
def test_digits_accuracy_against_float(config, max_drop, min_agree, min_cos):
    r = evaluate("digits-vit", config=config)
    assert r.float_top1 >= 0.95
    assert r.float_top1 - r.int_top1 <= max_drop, r
    assert r.agreement >= min_agree, r
    assert r.cosine >= min_cos, r


def test_softmax_lanes_change_little(digits):
    spec, model, _, x, _ = digits
    from vitaccel.models.data import calibration_images

    g1 = quantize_model(model, calibration_images(64), QuantConfig(softmax_lanes=1))
    g4 = quantize_model(model, calibration_images(64), QuantConfig(softmax_lanes=4))
    a, b = g1.forward(x[:64]), g4.forward(x[:64])
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.98


# ---- per-operator error on the model's own tensors -------------------------------------


@pytest.fixture(scope="module")
def captured(digits):
    _, model, golden, x, _ = digits
    cap: dict = {}
    golden.forward(x[:64], capture=cap)
    return golden, cap


def test_e2softmax_error_on_model_logits(captured):
    golden, cap = captured
    errs, maxes, kls = [], [], []
    for i, blk in enumerate(golden.blocks):
        logits = cap[f"blocks.{i}.attn.logits"]
        s = math.log(2) * 2.0**-blk.softmax.in_shift
        z = logits * s
        f = np.exp(z - z.max(-1, keepdims=True))
        f /= f.sum(-1, keepdims=True)
        p = ref.e2softmax(logits, blk.softmax) / 256
        errs.append(np.abs(p - f).mean())
        maxes.append(np.abs(p - f).max())
        q = np.maximum(p, 1e-9)
        q = q / q.sum(-1, keepdims=True)
        kls.append((f * (np.log(np.maximum(f, 1e-12)) - np.log(q))).sum(-1).mean())
    # Locked in (measured: mean ~0.002, max ~0.03, KL ~0.005); a regression fails here.
    assert np.mean(errs) < 0.004, errs
    assert np.max(maxes) < 0.08, maxes
    assert np.mean(kls) < 0.02, kls


def test_log2_softmax_error_on_model_logits(captured):
    golden, cap = captured
    logits = cap["blocks.0.attn.logits"]
    blk = golden.blocks[0]
    s = math.log(2) * 2.0**-blk.softmax.in_shift
    z = logits * s
    f = np.exp(z - z.max(-1, keepdims=True))
    f /= f.sum(-1, keepdims=True)
    codes = ref.e2softmax(logits, blk.softmax, output="log2")
    p = np.where(codes == 15, 0.0, 2.0**-codes)
    assert np.abs(p - f).mean() < 0.02


def test_ailayernorm_error_on_model_residual_stream(captured):
    golden, cap = captured
    for i, blk in enumerate(golden.blocks):
        x = cap["embed"] if i == 0 else cap[f"blocks.{i - 1}.add2"]
        lp = blk.norm1
        a = np.left_shift(x, lp.alpha).astype(np.float64)
        mean = a.mean(-1, keepdims=True)
        std = np.sqrt(((a - mean) ** 2).mean(-1, keepdims=True) + lp.eps_q)
        gain = lp.gain / 2.0 ** (lp.out_shift - ref.NORM_FRAC)
        bias = lp.bias / 2.0**lp.out_shift
        expect = np.clip((a - mean) / std * gain + bias, -128, 127)
        got = ref.ailayernorm(x, lp)
        err = np.abs(got - expect)
        # In output LSBs; locked in (measured mean ~0.4, max ~3).
        assert err.mean() < 0.8 and err.max() <= 6, (i, err.mean(), err.max())


def test_weightless_zoo_model_quantizes(tmp_path):
    from vitaccel.models.zoo import ModelSpec, build_float_model

    spec = ModelSpec(
        name="mini",
        img_size=32,
        patch_size=16,
        in_chans=3,
        num_classes=10,
        embed_dim=48,
        depth=2,
        heads=3,
        mlp_ratio=2.0,
    )
    model = build_float_model(spec).eval()
    calib = torch.randn(4, 3, 32, 32)
    golden = quantize_model(model, calib)
    logits = golden.forward(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)


# ---- calibration options: constants only -----------------------------------------------

# ln_smooth_alpha covers ln_channel_scales' code path too (it is alpha = 1 of the same
# migration, scales.smooth_scales); the two are exclusive.
ALL_OPTIONS = QuantConfig(
    act_calibration="mse",
    bias_correction=True,
    gelu_zero_point=True,
    gelu_input_clip=True,
    ln_smooth_alpha=0.5,
    v_smooth_alpha=1.0,
    qk_balance=True,
    weight_rounding="gptq",
)


def test_calibration_options_change_constants_only(assert_program_equals_golden):
    """Every calibration option only chooses other constants: the compiler accepts them
    (mult/shift/bias fields) and the program on the ISA interpreter still equals the golden
    model bit for bit, so the RTL (bit-exact with the interpreter) runs them unchanged."""
    from vitaccel.compile.compiler import compile_model
    from vitaccel.design import ArrayConfig, Design
    from vitaccel.flow.codec import codec_for

    _, _, golden, x, _ = prepare("digits-vit", config=ALL_OPTIONS, images=3)
    assert any(b.gelu_zero != 0 for b in golden.blocks)
    assert "blocks.0.norm1" in golden.channel_scales
    design = Design(array=ArrayConfig(groups=1, rows=4, cols=4, vector=8))
    codec = codec_for(design)
    compiled = compile_model(golden, groups=1, codec=codec)
    assert_program_equals_golden(compiled, codec, golden, golden.quantize_images(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"act_calibration": "percentile"}, "act_calibration must be one of max, mse"),
        ({"ln_smooth_alpha": 1.5}, r"ln_smooth_alpha must be None or a number in \[0, 1\]"),
        ({"v_smooth_alpha": "0.5"}, r"v_smooth_alpha must be None or a number in \[0, 1\]"),
        ({"w4_clip": "percentile"}, "w4_clip must be 'max' or 'mse'"),
        ({"weight_rounding": "stochastic"}, "^weight_rounding must be one of nearest, gptq, not"),
        ({"gptq_act_order": True}, "^gptq_act_order needs weight_rounding='gptq', not 'nearest'"),
        ({"gptq_act_order": "yes"}, "^gptq_act_order must be True or False"),
        (
            {"ln_channel_scales": True, "ln_smooth_alpha": 0.5},
            "ln_channel_scales and ln_smooth_alpha both set",
        ),
    ],
)
def test_calibration_options_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_per_channel_migration_sharpens_its_own_tensors(digits):
    """qk_balance and v_smooth_alpha are float-exact transformations that only choose
    per-channel scales: on the shipped checkpoint they lower the local error of q, k, V and
    the attention context in every block (measured on 8 calibration images: V +2.0-4.9 dB,
    context +2.1-3.0 dB), and ln_channel_scales is the same migration as ln_smooth_alpha =
    1, constant for constant."""
    from vitaccel.models.data import calibration_images
    from vitaccel.models.error_report import per_layer_error

    _, model, plain, _, _ = digits  # the default calibration on calibration_images(64)
    calib = calibration_images(64)
    moved = quantize_model(model, calib, QuantConfig(qk_balance=True, v_smooth_alpha=1.0))
    before = {r.name: r.local_sqnr_db for r in per_layer_error(model, plain, calib[:8])}
    after = {r.name: r.local_sqnr_db for r in per_layer_error(model, moved, calib[:8])}
    for i in range(len(plain.blocks)):
        p = f"blocks.{i}.attn"
        assert after[f"{p}.v"] >= before[f"{p}.v"] + 1.5, (i, before, after)
        assert after[f"{p}.context"] >= before[f"{p}.context"] + 1.0, (i, before, after)
        assert min(after[f"{p}.q"], after[f"{p}.k"]) >= min(before[f"{p}.q"], before[f"{p}.k"])
    a = quantize_model(model, calib[:16], QuantConfig(ln_channel_scales=True))
    b = quantize_model(model, calib[:16], QuantConfig(ln_smooth_alpha=1.0))
    for g in (a, b):
        assert "blocks.0.norm1" in g.channel_scales

    def norms(g):
        return [g.norm] + [getattr(blk, n) for blk in g.blocks for n in ("norm1", "norm2")]

    for x, y in zip(norms(a), norms(b), strict=True):
        assert np.array_equal(x.gain, y.gain) and np.array_equal(x.bias, y.bias)
    for name, layer in a.linear_layers().items():
        assert np.array_equal(layer.weight.q, b.linear_layers()[name].weight.q), name


def test_gelu_zero_point_is_folded_exactly(digits):
    """With a GELU zero point, FC2 on the shifted codes equals FC2 on the symmetric codes of
    the same real values: the bias absorbs zero * sum_k q[n, k] exactly (integers)."""
    _, model, _, x, _ = digits
    from vitaccel.models.data import calibration_images

    g = quantize_model(model, calibration_images(64), QuantConfig(gelu_zero_point=True))
    blk = g.blocks[0]
    assert blk.gelu_zero > ref.INT8_MIN  # GELU's negative lobe needs only a few codes
    codes = np.random.default_rng(0).integers(-128, 128, size=(5, blk.fc2.in_features))
    bias_before_folding = blk.fc2.bias + blk.gelu_zero * blk.fc2.weight.q.sum(axis=1)
    expect = ref.matmul_int(codes - blk.gelu_zero, blk.fc2.weight.q, bias_before_folding)
    assert np.array_equal(blk.fc2.accumulate(codes), expect)


# ---- GPTQ weight rounding (issue 24) ------------------------------------------------------


def _constants(obj, path="golden"):
    """Every constant of a golden model but the weights' integers, as (path, value) pairs."""
    import dataclasses

    if isinstance(obj, QuantWeight):
        yield from ((f"{path}.{f}", getattr(obj, f)) for f in ("scale", "kind"))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, (type, QuantConfig)):
        for f in dataclasses.fields(obj):
            yield from _constants(getattr(obj, f.name), f"{path}.{f.name}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _constants(v, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k in sorted(obj):
            yield from _constants(obj[k], f"{path}[{k}]")
    elif not isinstance(obj, QuantConfig):
        yield path, obj


def test_gptq_changes_only_the_weight_integers_and_sharpens_the_w4_layers(digits):
    """GPTQ keeps every scale, W4 row choice, bias and requantisation constant (the RTL sees
    other integers in the same ranges, nothing else) and, on the shipped checkpoint in the
    mixed 50 % int4 scheme, raises the local SQNR of every linear output with W4 rows on
    32 test images it was not fitted on (measured: +0.7 to +6.7 dB, mean +4.3; the worst linear
    layer 24.0 -> 28.2 dB; docs/numerics.md, "GPTQ")."""
    from vitaccel.models.data import calibration_images
    from vitaccel.models.error_report import per_layer_error

    _, model, _, x, _ = digits
    calib = calibration_images(64)
    near = quantize_model(model, calib, QuantConfig(scheme="mixed"))
    gptq = quantize_model(model, calib, QuantConfig(scheme="mixed", weight_rounding="gptq"))
    again = quantize_model(model, calib, QuantConfig(scheme="mixed", weight_rounding="gptq"))
    a, b = dict(_constants(near)), dict(_constants(gptq))
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    changed = 0
    for name, layer in gptq.linear_layers().items():
        q, kind = layer.weight.q, layer.weight.kind
        assert np.array_equal(q, again.linear_layers()[name].weight.q), name  # deterministic
        assert np.abs(q[kind == 0]).max(initial=0) <= 127, name
        assert np.abs(q[kind == 1]).max(initial=0) <= 7, name
        changed += int((q != near.linear_layers()[name].weight.q).sum())
    assert changed > 0
    test = x[:32]
    before = {r.name: r for r in per_layer_error(model, near, test) if r.kind == "linear"}
    after = {r.name: r for r in per_layer_error(model, gptq, test) if r.kind == "linear"}
    w4 = {n for n, layer in near.linear_layers().items() if layer.weight.kind.any()}
    w4_outputs = [n for n in before if n in w4 or f"{n.rsplit('.', 1)[0]}.qkv" in w4]
    assert len(w4_outputs) == 6 * len(near.blocks)  # q, k, v, proj, fc1, fc2 per block
    for n in w4_outputs:
        assert after[n].local_sqnr_db >= before[n].local_sqnr_db + 0.5, (n, before[n], after[n])
    worst = min(r.local_sqnr_db for r in before.values())
    assert min(r.local_sqnr_db for r in after.values()) >= worst + 3.0


def test_quantize_cli_weight_rounding():
    """``vitaccel quantize --weight-rounding gptq [--gptq-act-order]`` reaches QuantConfig and
    says so in the JSON; the option offers exactly QuantConfig's values (click refuses any
    other in one line, like every choice option: tests/test_cli.py); act order without GPTQ
    is refused naming both options."""
    import json

    from click.testing import CliRunner

    from vitaccel.cli import quantize
    from vitaccel.quant.scales import WEIGHT_ROUNDINGS

    (opt,) = [p for p in quantize.params if p.name == "weight_rounding"]
    assert tuple(opt.type.choices) == WEIGHT_ROUNDINGS and opt.default == "nearest"
    args = ["--scheme", "mixed", "--weight-rounding", "gptq", "--images", "20", "--json"]
    r = CliRunner().invoke(quantize, [*args, "--gptq-act-order"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["weight_rounding"] == "gptq (act order)" and obj["scheme"] == "mixed"
    assert obj["agreement"] >= 0.9 and obj["logit_sqnr_db"] > 20
    r = CliRunner().invoke(quantize, ["--gptq-act-order", "--json"])
    assert r.exit_code != 0
    assert "--gptq-act-order needs --weight-rounding gptq, got nearest" in str(r.exception)


# ---- a wider activation path (issue 24; golden model only, the RTL is int8) -------------


@pytest.mark.parametrize(
    "field, value", [("residual_bits", 7), ("branch_bits", 17), ("logit_bits", "10")]
)
def test_activation_widths_are_validated(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be an integer in 8\.\.16, not"):
        QuantConfig(**{field: value})


@functools.cache
def _wide_golden():
    """The shipped digits ViT with a 12-bit residual stream, 10-bit branch outputs and
    10-bit attention logits (16 calibration images), and its integer tensors on 8 of them."""
    from vitaccel.models.data import calibration_images
    from vitaccel.models.zoo import get_model

    _, model = get_model("digits-vit")
    cfg = QuantConfig(residual_bits=12, branch_bits=10, logit_bits=10)
    calib = calibration_images(16)
    golden = quantize_model(model, calib, cfg)
    cap: dict = {}
    golden.forward(calib[:8], capture=cap)
    return model, calib, golden, cap


def test_wide_residual_stream_uses_its_range():
    """Each width lands where it is named and nowhere else: the residual stream (embedding,
    residual adds) fills int12, the branch outputs int10, the attention logits int10; every
    other activation and the class logits stay int8 (they feed the int8 matmul inputs)."""
    model, calib, golden, cap = _wide_golden()
    widths = {"embed": 12, "patch_embed": 10, "logits": 8}
    for i in range(golden.spec.depth):
        p = f"blocks.{i}"
        widths.update({f"{p}.add1": 12, f"{p}.add2": 12, f"{p}.attn.proj": 10})
        widths.update({f"{p}.mlp.fc2": 10, f"{p}.attn.logits": 10})
        for name in ("norm1", "attn.qkv", "attn.context", "norm2", "mlp.fc1", "mlp.gelu"):
            widths[f"{p}.{name}"] = 8
    for name, bits in widths.items():
        lo, hi = ref.signed_range(bits)
        t = cap[name]
        assert t.dtype == np.int64 and lo <= t.min() and t.max() <= hi, (name, bits)
        if bits > 8:  # the calibration maximum reaches into the wide range
            assert np.abs(t).max() > 2 ** (bits - 2), (name, bits, np.abs(t).max())
    assert 0 <= golden.blocks[0].norm1.alpha.min() and golden.blocks[0].norm1.alpha.max() <= 3
    # The residual scale is the int8 one spread over 2047 codes instead of 127.
    narrow = quantize_model(model, calib, QuantConfig())
    ratio = narrow.channel_scales["embed"] / golden.channel_scales["embed"]
    assert np.allclose(ratio, 2047 / 127)


# ---- checkpoints we did not train (issue 24 fixtures) ----------------------------------

# Locked-in floors measured on the 360-image test split (one image = 0.0028): a regression
# in quantisation fails here on checkpoints trained unlike the shipped one. Per recipe and
# scheme: (min agreement, min logit cosine, max top-1 drop). Measured (docs/numerics.md):
# sgd 98.61 % / 0.9991 / 0.0 and mixed 98.89 % / 0.9990; adam 99.72 % / 0.9991 / -0.28 pt
# and mixed 99.72 % / 0.9987 / -0.28 pt; strong-aug 99.44 % / 0.9991 / 0.0 and mixed
# 99.44 % / 0.9986 / 0.0. The floors sit about one image below.
EXTRA_FLOORS = {
    ("sgd", "w8a8"): (0.980, 0.998, 0.010),
    ("sgd", "mixed"): (0.980, 0.998, 0.010),
    ("adam", "w8a8"): (0.990, 0.998, 0.010),
    ("adam", "mixed"): (0.990, 0.998, 0.010),
    ("strong-aug", "w8a8"): (0.990, 0.998, 0.010),
    ("strong-aug", "mixed"): (0.990, 0.998, 0.010),
}


@functools.cache
def _extra(recipe: str, scheme: str, residual_bits: int = 8):
    """Float vs integer on the test split for an extra checkpoint (or ``shipped``)."""
    from vitaccel.models.train_digits import recipe_weights

    weights = recipe_weights(recipe)
    cfg = QuantConfig(scheme=scheme, w4_ratio=0.5, residual_bits=residual_bits)
    return evaluate("digits-vit", weights=weights, config=cfg)


def test_every_extra_recipe_has_floors():
    from vitaccel.models.train_digits import EXTRA_RECIPES

    assert {r for r, _ in EXTRA_FLOORS} == set(EXTRA_RECIPES)


@pytest.mark.parametrize(
    "recipe, scheme", sorted(EXTRA_FLOORS), ids=[f"{r}-{s}" for r, s in sorted(EXTRA_FLOORS)]
)
def test_fidelity_on_checkpoints_we_did_not_train(recipe, scheme):
    min_agree, min_cos, max_drop = EXTRA_FLOORS[recipe, scheme]
    r = _extra(recipe, scheme)
    assert r.agreement >= min_agree, r
    assert r.cosine >= min_cos, r
    assert r.float_top1 - r.int_top1 <= max_drop, r


# Issue 24's targets, one test per checkpoint and target: W8A8 agreement with float >= 99.5 %
# (>= 99.8 % on the shipped checkpoint), logit cosine >= 0.999, top-1 drop <= 0.5 pt, mixed
# 50 % W4 agreement >= 99.0 %. A target a checkpoint meets is asserted; one it misses is a
# strict xfail (measured figures in docs/numerics.md, "Checkpoints we did not train"), which
# fails the day a change meets it, so the marker must then go.
ISSUE_24_TARGETS = {
    "agreement": (
        "w8a8",
        lambda r, recipe: r.agreement >= (0.998 if recipe == "shipped" else 0.995),
    ),
    "cosine": ("w8a8", lambda r, recipe: r.cosine >= 0.999),
    "top-1 drop": ("w8a8", lambda r, recipe: r.float_top1 - r.int_top1 <= 0.005),
    "mixed agreement": ("mixed", lambda r, recipe: r.agreement >= 0.990),
}
_NEAR_TIES = "near-tie test images flip under the int8 activation grid (docs/numerics.md)"
ISSUE_24_UNMET = {
    ("shipped", "agreement"): f"99.72 %, 1 image of 360: {_NEAR_TIES}",
    ("sgd", "agreement"): f"98.61 %, 5 images: {_NEAR_TIES}",
    ("sgd", "mixed agreement"): f"98.89 %, 4 images: {_NEAR_TIES}",
    ("strong-aug", "agreement"): f"99.44 %, 2 images: {_NEAR_TIES}",
}
_TARGET_CASES = [("shipped", "agreement")] + [
    (recipe, target)
    for recipe in sorted({r for r, _ in EXTRA_FLOORS})
    for target in ISSUE_24_TARGETS
]


@pytest.mark.parametrize(
    "recipe, target",
    [
        pytest.param(
            recipe,
            target,
            id=f"{recipe}-{target.replace(' ', '-')}",
            marks=[pytest.mark.xfail(strict=True, reason=ISSUE_24_UNMET[recipe, target])]
            if (recipe, target) in ISSUE_24_UNMET
            else [],
        )
        for recipe, target in _TARGET_CASES
    ],
)
def test_issue_24_targets(recipe, target):
    scheme, met = ISSUE_24_TARGETS[target]
    r = _extra(recipe, scheme)
    assert met(r, recipe), r


def test_wide_residual_stream_on_every_checkpoint():
    """The golden-model study of a 12-bit residual stream (docs/numerics.md, "A wider
    activation path"), locked in: W8A8 flips over the four checkpoints fall from 9 to 3 and
    every logit cosine on the extra checkpoints rises (0.9991 at int8, 0.9993-0.9994). It
    still misses a target (sgd mixed, not checked here), so it stays a study."""
    recipes = ["shipped", *sorted({r for r, _ in EXTRA_FLOORS})]
    wide = {r: _extra(r, "w8a8", 12) for r in recipes}
    narrow = {r: _extra(r, "w8a8") for r in recipes}

    def flips(r):
        return round((1 - r.agreement) * r.images)

    # The JSON of `vitaccel quantize --residual-bits 12` says which widths it measured.
    assert wide["sgd"].as_dict()["activation_bits"] == {"residual_bits": 12}
    assert "activation_bits" not in narrow["sgd"].as_dict()
    assert sum(flips(wide[r]) for r in recipes) <= 3, wide
    assert sum(flips(narrow[r]) for r in recipes) >= 2 * sum(flips(wide[r]) for r in recipes)
    for r in recipes:
        assert wide[r].cosine >= (0.9994 if r == "shipped" else 0.9992), wide[r]
        assert wide[r].float_top1 - wide[r].int_top1 <= 0.005, wide[r]


def _windows_study():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "calibration_windows.py"
    spec = importlib.util.spec_from_file_location("calibration_windows", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_calibration_windows_default_row_and_gptq():
    """scripts/calibration_windows.py reproduces docs/numerics.md's default row of the window
    table exactly, and GPTQ with act order raises the mixed logit SQNR on every checkpoint
    (measured 26.31 / 27.36 / 25.94 / 25.05 -> 29.32 / 27.65 / 27.18 / 27.18 dB) while its
    flips stay within the window noise (about 4 minutes on one thread)."""
    study = _windows_study()
    near = study.run({})
    flips = {k: [r["flips"] for r in v] for k, v in near.items()}
    assert flips == {
        "shipped/w8a8": [1, 1, 1],
        "shipped/mixed": [0, 3, 0],
        "sgd/w8a8": [5, 6, 4],
        "sgd/mixed": [4, 5, 4],
        "adam/w8a8": [1, 1, 1],
        "adam/mixed": [1, 1, 1],
        "strong-aug/w8a8": [2, 3, 3],
        "strong-aug/mixed": [2, 4, 2],
    }, flips
    held = {s: sum(r["held_out_flips"] for k, v in near.items() if s in k for r in v)
            for s in ("w8a8", "mixed")}  # fmt: skip
    assert held == {"w8a8": 3, "mixed": 1}, held
    gptq = study.run({"weight_rounding": "gptq", "gptq_act_order": True}, schemes=("mixed",))

    def sqnr(res, key):
        return np.mean([r["logit_sqnr_db"] for r in res[key]])

    for key in gptq:
        assert sqnr(gptq, key) >= sqnr(near, key) + 0.2, (key, sqnr(near, key), sqnr(gptq, key))
        # measured 0.99898 .. 0.9992 (nearest 0.9983 .. 0.9990)
        assert min(r["cosine"] for r in gptq[key]) >= 0.9989, (key, gptq[key])
    assert sum(r["flips"] for v in gptq.values() for r in v) <= 27  # nearest: 27


@pytest.mark.parametrize("w4_kind", ["int4", "pot4"])
def test_gptq_mixed_program_equals_golden(w4_kind, assert_program_equals_golden):
    """GPTQ's integers go through the compiler's W4 packing (int4 nibbles, pot4 shift codes)
    and the program on the ISA interpreter equals the golden model bit for bit: the RTL
    (bit-exact with the interpreter) runs them unchanged (tests/test_compile.py's mixed
    program test, with GPTQ)."""
    from vitaccel.compile.compiler import compile_model
    from vitaccel.design import ArrayConfig, Design
    from vitaccel.flow.codec import codec_for

    design = Design(
        array=ArrayConfig(groups=1, rows=4, cols=6, vector=8, w4_share=1 / 3, w4_kind=w4_kind),
        default_w4_ratio=0.5,
    )
    cfg = QuantConfig(scheme="mixed", w4_kind=w4_kind, weight_rounding="gptq", gptq_act_order=True)
    _, _, golden, x, _ = prepare("digits-vit", config=cfg, images=4)
    assert any(layer.weight.kind.any() for layer in golden.linear_layers().values())
    codec = codec_for(design)
    compiled = compile_model(golden, groups=1, codec=codec)
    assert_program_equals_golden(compiled, codec, golden, golden.quantize_images(x))
