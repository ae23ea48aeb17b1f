"""The whole accelerator on Verilator, driven through the host driver: real images in,
logits out, equal to the golden model for every image (cocotbext-axi DDR and host)."""

import numpy as np
import pytest
import torch
from conftest import SMALL_TOP

from vitaccel.compile.compiler import compile_model, spm_layout
from vitaccel.compile.driver import Driver
from vitaccel.design import ArrayConfig, Design, NonlinearConfig
from vitaccel.dse.cost import estimate
from vitaccel.flow.build import default_design
from vitaccel.flow.codec import codec_for
from vitaccel.models.evaluate import prepare
from vitaccel.models.golden import QuantConfig, quant_config_for, quantize_model
from vitaccel.models.specs import ModelSpec
from vitaccel.models.zoo import build_float_model
from vitaccel.sim.host import SimBackend


def _first_mismatch(got, want):
    diff = np.flatnonzero(np.asarray(got) != np.asarray(want))
    return None if diff.size == 0 else (int(diff[0]), int(got[diff[0]]), int(want[diff[0]]))


def _run(design, golden, patches, compact=None, **backend):
    compiled = compile_model(
        golden,
        groups=design.array.groups,
        codec=codec_for(design),
        spm_words=design.spm_kib * 1024 // 16,
    )
    if compact is not None:
        assert compiled.compact == compact
    drv = Driver(SimBackend(design, **backend))
    drv.load(compiled)
    return drv.infer_batch(list(patches), reset_between=True)


def _digits(design, images: int):
    """The golden model quantised as ``design`` says, ``images`` test images, their logits."""
    _, _, golden, x, y = prepare("digits-vit", config=quant_config_for(design), images=images)
    patches = golden.quantize_images(x)
    return golden, patches, golden.forward_patches(patches), y


def test_digits_20_images_bit_exact_with_axi_pauses():
    design = default_design("digits-vit", "zcu102")
    golden, patches, want, y = _digits(design, 20)
    results = _run(design, golden, patches, pause=0.2, seed=3)
    for j, r in enumerate(results):
        assert _first_mismatch(r.logits, want[j]) is None, (
            f"image {j}: (class, rtl, golden) = {_first_mismatch(r.logits, want[j])}"
        )
        assert r.status & 2  # DONE
    # AXI pauses stretch the run a little, differently per image (~45.5k cycles unpaused).
    assert all(40_000 < r.cycles < 60_000 for r in results), [r.cycles for r in results]
    rtl_top1 = np.mean([r.logits.argmax() == t for r, t in zip(results, y.numpy(), strict=True)])
    assert rtl_top1 == np.mean(want.argmax(1) == y.numpy())


@pytest.mark.slow
def test_digits_wide_datapath_banked_scratchpad():
    """``datapath_bytes = 32`` on a V = 16 array: the scratchpad in 2 banks, the X builder
    reads 2 consecutive words (any alignment) per grant and the engine takes 2 k-steps per
    X beat into its sub-banks. Bit-exact with AXI pauses; without pauses the cycles are
    within 3% of the cycle model, which prices the halved X load."""
    design = Design(
        array=ArrayConfig(groups=1, rows=4, cols=4, vector=16),
        nonlinear=NonlinearConfig(
            gelu_lanes=4, softmax_lanes=4, layernorm_lanes=4, max_tokens=64, max_channels=128
        ),
        spm_kib=32,
        input_buffer_kib=8,
        weight_buffer_kib=4,
        datapath_bytes=32,
    )
    golden, patches, want, _ = _digits(design, 2)
    for pause, seed in ((0.2, 7), (0.0, 8)):
        results = _run(design, golden, patches, pause=pause, seed=seed)
        for j, r in enumerate(results):
            assert _first_mismatch(r.logits, want[j]) is None, (
                f"pause {pause}, image {j}: (class, rtl, golden) = "
                f"{_first_mismatch(r.logits, want[j])}"
            )
    model = estimate(design, spec=golden.spec).cycles
    narrow = estimate(design.model_copy(update={"datapath_bytes": 16}), spec=golden.spec).cycles
    print(f"datapath 32 B: RTL {results[-1].cycles} cycles/image, model {model} (16 B: {narrow})")
    assert abs(results[-1].cycles / model - 1) < 0.03, (results[-1].cycles, model)
    assert model < narrow


def test_digits_log2_softmax_bit_exact():
    """A log2 build: E2Softmax writes 4-bit codes and P x V runs in the engine's shift-add
    mode (SOFTMAX LOG2 / MATMUL X_LOG2); logits equal the log2 golden model's."""
    base = default_design("digits-vit", "zcu102")
    design = base.model_copy(
        update={"nonlinear": base.nonlinear.model_copy(update={"softmax_output": "log2"})}
    )
    golden, patches, want, _ = _digits(design, 3)
    assert golden.config.softmax_output == "log2"
    for j, r in enumerate(_run(design, golden, patches, pause=0.2, seed=4)):
        assert _first_mismatch(r.logits, want[j]) is None, (
            f"image {j}: (class, rtl, golden) = {_first_mismatch(r.logits, want[j])}"
        )


def test_digits_compact_layout_bit_exact():
    """The compact scratchpad layout (the one DeiT-Base needs in 1 MiB) on the RTL: a 10 KiB
    SPM, too small for the standard layout, so the compiler loads each block's constants
    before the block, keeps one residual buffer (fused residual adds with Y == A, in place)
    and runs QK^T / SOFTMAX / P x V per chunk of 2 heads; 2 groups, so heads mode. Two
    images: the second must start from block 0's constants again, which the last block's
    LOAD replaced in the shared slot. The design is tests/conftest.SMALL_TOP, whose
    Verilator build tests/test_sim_top.py shares (weights over its two AXI ports)."""
    design = SMALL_TOP
    assert design.spm_kib == 10 and design.array.groups == 2
    golden, patches, want, _ = _digits(design, 2)
    assert spm_layout(golden.spec, design.spm_kib * 64).att_heads == 2 < golden.spec.heads
    for j, r in enumerate(_run(design, golden, patches, compact=True, pause=0.1, seed=6)):
        assert _first_mismatch(r.logits, want[j]) is None, (
            f"image {j}: (class, rtl, golden) = {_first_mismatch(r.logits, want[j])}"
        )


def test_deit_tiny_shaped_network_reduced_depth_and_tokens():
    # DeiT-Tiny's width, heads, MLP and 16x16x3 patches; 2 blocks and 17 tokens (64x64 input).
    spec = ModelSpec(
        name="deit-tiny-mini",
        img_size=64,
        patch_size=16,
        in_chans=3,
        num_classes=10,
        embed_dim=192,
        depth=2,
        heads=3,
        mlp_ratio=4.0,
    )
    model = build_float_model(spec, seed=1).eval()
    design = Design(
        model="digits-vit",
        array=ArrayConfig(groups=1, rows=4, cols=4, vector=8),
        nonlinear=NonlinearConfig(softmax_lanes=4, layernorm_lanes=4, gelu_lanes=4),
    )
    gen = torch.Generator().manual_seed(5)
    calib = torch.randn(4, 3, 64, 64, generator=gen)
    golden = quantize_model(model, calib, QuantConfig(softmax_lanes=4))
    patches = golden.quantize_images(torch.randn(2, 3, 64, 64, generator=gen))
    want = golden.forward_patches(patches)
    for j, r in enumerate(_run(design, golden, patches)):
        assert _first_mismatch(r.logits, want[j]) is None, (
            f"image {j}: {_first_mismatch(r.logits, want[j])}"
        )


@pytest.mark.slow
def test_benchmark_200_digits_images():
    """RTL accuracy on 200 test images (must equal the golden accuracy), cycles and FPS."""
    design = default_design("digits-vit", "zcu102")
    golden, patches, want, y = _digits(design, 200)
    results = _run(design, golden, patches)
    rtl = np.stack([r.logits for r in results])
    labels = y.numpy()
    cycles = np.mean([r.cycles for r in results])
    print(
        f"\n200 digits images on the RTL: bit-exact {sum(np.array_equal(a, b) for a, b in zip(rtl, want, strict=True))}/200, "
        f"RTL top-1 {np.mean(rtl.argmax(1) == labels):.4f}, golden top-1 {np.mean(want.argmax(1) == labels):.4f}, "
        f"{cycles:.0f} cycles/image, {design.clock_mhz * 1e6 / cycles:.0f} FPS at {design.clock_mhz:.0f} MHz"
    )
    assert np.array_equal(rtl, want)
