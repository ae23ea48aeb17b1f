"""Float model zoo, timm-compatible naming, weight loading and the digits data."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vitaccel.models import (
    ZOO,
    ModelError,
    ModelSpec,
    WeightsError,
    build_float_model,
    get_model,
    get_spec,
    load_weights,
)
from vitaccel.models.data import (
    DIGITS_MEAN,
    DIGITS_STD,
    calibration_images,
    digits_splits,
    random_images,
)
from vitaccel.models.train_digits import random_shift
from vitaccel.models.vit import Attention
from vitaccel.models.zoo import shipped_weights_path


def timm_keys(depth: int) -> set[str]:
    """The state_dict keys of timm's VisionTransformer (class token, no distillation)."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    per_block = [
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
        "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
        "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    ]  # fmt: skip
    keys |= {f"blocks.{i}.{k}" for i in range(depth) for k in per_block}
    return keys | {"norm.weight", "norm.bias", "head.weight", "head.bias"}


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.fixture(scope="module")
def deit_tiny():
    return build_float_model("deit-tiny", seed=0).eval()


# --- specs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, dim, heads, tokens, mlp_dim, patch_dim",
    [
        ("deit-tiny", 192, 3, 197, 768, 768),
        ("deit-small", 384, 6, 197, 1536, 768),
        ("deit-base", 768, 12, 197, 3072, 768),
        ("vit-base", 768, 12, 197, 3072, 768),
        ("digits-vit", 64, 4, 17, 128, 4),
    ],
)
def test_spec_numbers(name, dim, heads, tokens, mlp_dim, patch_dim):
    spec = get_spec(name)
    assert spec.name == name
    assert (spec.embed_dim, spec.heads, spec.tokens) == (dim, heads, tokens)
    assert (spec.mlp_dim, spec.patch_dim, spec.head_dim) == (mlp_dim, patch_dim, dim // heads)
    assert spec.depth == (4 if name == "digits-vit" else 12)
    assert spec.num_classes == (10 if name == "digits-vit" else 1000)


def test_zoo_names():
    assert set(ZOO) == {"deit-tiny", "deit-small", "deit-base", "vit-base", "digits-vit"}


def test_unknown_model_name():
    with pytest.raises(ModelError) as error:
        get_spec("resnet50")
    assert_one_line(
        error, "unknown model 'resnet50'", "deit-base, deit-small, deit-tiny, digits-vit, vit-base"
    )
    assert isinstance(error.value, ValueError)


def test_inconsistent_spec_names_field():
    with pytest.raises(ModelError, match="heads 5 does not divide embed_dim 64"):
        ModelSpec("bad", img_size=8, patch_size=2, in_chans=1, num_classes=10,
                  embed_dim=64, depth=1, heads=5, mlp_ratio=2.0)  # fmt: skip


# --- model structure -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits-vit", "deit-tiny"])
def test_forward_shape(name, deit_tiny):
    spec = get_spec(name)
    model = deit_tiny if name == "deit-tiny" else build_float_model(spec).eval()
    with torch.no_grad():
        logits = model(random_images(spec, 1, seed=3))
    assert logits.shape == (1, spec.num_classes)
    assert torch.isfinite(logits).all()


def test_wrong_image_shape_is_named():
    model = build_float_model("digits-vit")
    with pytest.raises(ValueError, match=r"digits-vit expects images of shape \(B, 1, 8, 8\)"):
        model(torch.zeros(1, 3, 8, 8))


def test_state_dict_matches_timm_naming(deit_tiny):
    state = deit_tiny.state_dict()
    assert set(state) == timm_keys(12)
    expected_shapes = {
        "cls_token": (1, 1, 192),
        "pos_embed": (1, 197, 192),
        "patch_embed.proj.weight": (192, 3, 16, 16),
        "patch_embed.proj.bias": (192,),
        "blocks.0.attn.qkv.weight": (576, 192),
        "blocks.0.attn.qkv.bias": (576,),
        "blocks.11.attn.proj.weight": (192, 192),
        "blocks.5.mlp.fc1.weight": (768, 192),
        "blocks.5.mlp.fc2.weight": (192, 768),
        "blocks.0.norm1.weight": (192,),
        "norm.bias": (192,),
        "head.weight": (1000, 192),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert sum(p.numel() for p in deit_tiny.parameters()) == 5_717_416  # timm's deit_tiny count


def test_digits_vit_parameter_count():
    model = build_float_model("digits-vit")
    assert set(model.state_dict()) == timm_keys(4)
    # 1,600 embedding + 4 blocks x 33,472 + 778 final norm and head.
    assert sum(p.numel() for p in model.parameters()) == 136_138


def test_attention_head_layout_matches_torch_mha():
    # nn.MultiheadAttention stores its fused in_proj as [q; k; v] rows split into heads,
    # the same layout timm's qkv Linear uses: an independent check of reshape/permute.
    torch.manual_seed(0)
    attention = Attention(dim=64, heads=4)
    reference = nn.MultiheadAttention(64, 4, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(attention.qkv.weight)
        reference.in_proj_bias.copy_(attention.qkv.bias)
        reference.out_proj.weight.copy_(attention.proj.weight)
        reference.out_proj.bias.copy_(attention.proj.bias)
        x = torch.randn(2, 17, 64)
        expected, _ = reference(x, x, x, need_weights=False)
        torch.testing.assert_close(attention(x), expected, rtol=1e-5, atol=1e-5)


def test_init_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_float_model("digits-vit", seed=7).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_float_model("digits-vit", seed=7).state_dict()
    c = build_float_model("digits-vit", seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["pos_embed"], c["pos_embed"])


# --- shipped weights -------------------------------------------------------------------


def test_shipped_digits_weights_accuracy():
    spec, model = get_model("digits-vit")
    assert not model.training
    splits = digits_splits()
    with torch.no_grad():
        predictions = model(splits.test_x).argmax(dim=1)
    accuracy = (predictions == splits.test_y).float().mean().item()
    assert accuracy >= 0.95
    metadata = json.loads(shipped_weights_path().with_suffix(".json").read_text())
    assert metadata["float_test_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_zoo_models_without_weights_get_deterministic_init():
    _, a = get_model("digits-vit", weights=None)  # shipped weights by default
    _, b = get_model(get_spec("digits-vit"))
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, build_float_model("digits-vit").head.weight)


# --- saving and loading ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "torch", "torch-model", "torch-state_dict"])
def test_save_and_reload_equal(tmp_path, fmt):
    source = build_float_model("digits-vit", seed=5).state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(source, str(path))
    else:
        path = tmp_path / "w.pth"
        wrapper = fmt.partition("-")[2]
        torch.save({wrapper: source, "epoch": 3} if wrapper else source, path)
    model = load_weights(build_float_model("digits-vit", seed=0), path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], source[k]) for k in source)
    _, via_get_model = get_model("digits-vit", weights=str(path))
    assert torch.equal(via_get_model.pos_embed, source["pos_embed"])


def test_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsError) as error:
        load_weights(build_float_model("digits-vit"), path)
    assert_one_line(error, str(path), "does not exist")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1))
                     .to(torch.uint8).numpy().tobytes())  # fmt: skip
    with pytest.raises(WeightsError) as error:
        load_weights(build_float_model("digits-vit"), path)
    assert_one_line(error, str(path), "cannot read")


def test_wrong_shapes_name_the_key(tmp_path):
    path = tmp_path / "tiny.safetensors"
    state = build_float_model("digits-vit").state_dict()
    state["pos_embed"] = torch.zeros(1, 65, 64)
    save_file(state, str(path))
    with pytest.raises(WeightsError) as error:
        load_weights(build_float_model("digits-vit"), path)
    assert_one_line(error, str(path), "'pos_embed'", "(1, 65, 64)", "expected (1, 17, 64)")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = build_float_model("digits-vit").state_dict()
    del state["head.weight"]
    state["dist_token"] = torch.zeros(1, 1, 64)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError) as error:
        load_weights(build_float_model("digits-vit"), path)
    assert_one_line(
        error,
        str(path),
        "missing tensor 'head.weight' (expected shape (10, 64))",
        "1 missing, 1 unexpected",
        "unexpected: 'dist_token'",
    )


def test_unexpected_tensor_is_named_first_when_nothing_is_missing(tmp_path):
    state = build_float_model("digits-vit").state_dict()
    state["blocks.4.norm1.weight"] = torch.ones(64)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError) as error:
        load_weights(build_float_model("digits-vit"), path)
    assert_one_line(
        error, str(path), "unexpected tensor 'blocks.4.norm1.weight' of shape (64,)", "0 missing"
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    state = build_float_model("digits-vit").state_dict()
    state["blocks.1.mlp.fc1.weight"][3, 5] = bad
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    model = build_float_model("digits-vit")
    before = model.state_dict()["blocks.1.mlp.fc1.weight"].clone()
    with pytest.raises(WeightsError) as error:
        load_weights(model, path)
    assert_one_line(
        error, str(path), "'blocks.1.mlp.fc1.weight' (shape (128, 64)) holds 1 NaN/Inf value(s)"
    )
    # Refused before anything was copied into the model.
    assert torch.equal(model.state_dict()["blocks.1.mlp.fc1.weight"], before)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(WeightsError) as error:
        load_weights(build_float_model("digits-vit"), path)
    assert_one_line(error, str(path), "'weights'", "not a tensor")


# --- data --------------------------------------------------------------------------------


def test_digits_splits():
    splits = digits_splits()
    assert splits.train_x.shape == (1437, 1, 8, 8) and splits.test_x.shape == (360, 1, 8, 8)
    assert splits.train_x.dtype == torch.float32 and splits.test_y.dtype == torch.int64
    assert splits.train_x.min() == (0 - DIGITS_MEAN) / DIGITS_STD == -1.0
    assert splits.train_x.max() == 1.0
    # Stratified: every class has 36 test images, give or take one.
    counts = torch.bincount(splits.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    again = digits_splits()
    assert torch.equal(splits.test_x, again.test_x) and torch.equal(splits.train_y, again.train_y)


def test_calibration_images_come_from_train_in_fixed_order():
    calibration = calibration_images(64)
    assert calibration.shape == (64, 1, 8, 8)
    assert torch.equal(calibration_images(16), calibration[:16])
    train = digits_splits().train_x.flatten(1)
    matches = (calibration.flatten(1)[:, None, :] == train[None]).all(dim=2).any(dim=1)
    assert matches.all()
    with pytest.raises(ValueError, match="1..1437"):
        calibration_images(0)


def test_random_images_deterministic():
    spec = get_spec("deit-tiny")
    a = random_images(spec, 2, seed=4)
    assert a.shape == (2, 3, 224, 224)
    assert torch.equal(a, random_images(spec, 2, seed=4))
    assert not torch.equal(a, random_images(spec, 2, seed=5))


def test_random_shift_moves_by_at_most_one_pixel():
    images = digits_splits().train_x[:32]
    shifted = random_shift(images, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    # Each shifted image equals the original moved by some (dy, dx) in {-1, 0, 1}^2.
    padded = nn.functional.pad(images, (1, 1, 1, 1), value=-1.0)
    for i in range(len(images)):
        candidates = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(shifted[i], c) for c in candidates)


def test_extra_checkpoints_ship_with_their_recipe():
    """The fidelity fixtures (checkpoints trained unlike the shipped one) are in the package,
    load as digits-vit, and their metadata names the recipe that made them and the exact
    bytes (``python -m vitaccel.models.train_digits --recipe all-extra`` rebuilds them)."""
    import hashlib
    import json

    from vitaccel.models.train_digits import EXTRA_RECIPES, SHIPPED
    from vitaccel.models.zoo import WEIGHTS_DIR

    assert len(EXTRA_RECIPES) >= 3
    fields = ("optimizer", "augmentation", "label_smoothing", "seed", "schedule")
    for recipe in EXTRA_RECIPES.values():
        # Each differs from the shipped recipe in several ways, not just the seed.
        assert sum(getattr(recipe, f) != getattr(SHIPPED, f) for f in fields) >= 3, recipe
        weights = WEIGHTS_DIR / f"{recipe.stem}.safetensors"
        meta = json.loads((WEIGHTS_DIR / f"{recipe.stem}.json").read_text())
        assert meta["recipe"]["name"] == recipe.name
        assert meta["recipe"]["optimizer"] == recipe.optimizer
        assert meta["epochs"] == recipe.epochs and meta["seed"] == recipe.seed
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == meta["weights_sha256"]
        assert weights.stat().st_size < 600_000
        _, model = get_model("digits-vit", weights=weights)
        assert not model.training


def test_recipe_fields_are_validated():
    from vitaccel.models.train_digits import Recipe

    with pytest.raises(ValueError, match="optimizer must be one of adamw, adam, sgd, rmsprop"):
        Recipe(name="x", stem="x", optimizer="lion")


def test_random_shift_by_two_pixels_stays_within_two():
    images = digits_splits().train_x[:16]
    shifted = random_shift(images, generator=torch.Generator().manual_seed(0), max_shift=2)
    assert shifted.shape == images.shape
    # Every shifted image is some -2..2 shift of the original (background filled in).
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), value=-1.0)
    for i in range(len(images)):
        assert any(
            torch.equal(shifted[i, 0], padded[i, 0, dy : dy + 8, dx : dx + 8])
            for dy in range(5)
            for dx in range(5)
        )
