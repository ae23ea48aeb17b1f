"""Helpers several test files share (one definition each)."""

import numpy as np
import pytest

from vitaccel.compile import interp
from vitaccel.design import ArrayConfig, Design, NonlinearConfig

# One small whole top for the RTL tests that need no particular size, so they share one
# Verilator build (~4 CPU-minutes cold each): tests/test_sim_top.py's per-operation programs
# and tests/test_sim_accelerator.py's compact-layout run. Small but complete: 2 groups (heads
# mode), 2x8 PEs of 8 lanes (an output step of 16 channels: whole SPM words, so the residual
# add can be fused), 4-lane nonlinear units, the weights over two AXI ports; a 10 KiB
# scratchpad (640 words, not a power of two), too small for digits-vit's standard layout, so
# the compiler takes the compact one; X banks of 256 words (digits-vit: 17 tokens, K <= 128).
SMALL_TOP = Design(
    weight_ports=2,
    array=ArrayConfig(groups=2, rows=2, cols=8, vector=8),
    nonlinear=NonlinearConfig(
        gelu_lanes=4, softmax_lanes=4, layernorm_lanes=4, max_tokens=64, max_channels=64
    ),
    spm_kib=10,
    input_buffer_kib=8,
    weight_buffer_kib=4,
)


def _program_equals_golden(compiled, codec, golden, patches):
    """The program on the ISA interpreter gives the golden model's logits for every image;
    fails on the first image that differs and names its first mismatching class."""
    expect = golden.forward_patches(patches)
    for j in range(len(patches)):
        m = interp.run(compiled.image_with_input(patches[j]), codec, spm_words=compiled.spm_words)
        got = compiled.read_logits(m.ddr)
        assert np.array_equal(got, expect[j]), (
            f"image {j}: first mismatch at class {np.flatnonzero(got != expect[j])[0]}"
        )


@pytest.fixture
def assert_program_equals_golden():
    return _program_equals_golden


def mixed_deit_mini(w4_kind: str):
    """DeiT-Tiny's width, heads and MLP with 2 blocks and 17 tokens (64x64 input), 50% W4
    rows of ``w4_kind`` in every encoder layer: ``(golden model, 2 quantised images)``
    (tests/test_compile.py on the interpreter, tests/test_sim_accelerator.py on the RTL)."""
    import torch

    from vitaccel.models.golden import QuantConfig, quantize_model
    from vitaccel.models.specs import ModelSpec
    from vitaccel.models.zoo import build_float_model

    spec = ModelSpec(name="deit-tiny-mini", img_size=64, patch_size=16, in_chans=3,
                     num_classes=10, embed_dim=192, depth=2, heads=3, mlp_ratio=4.0)  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    cfg = QuantConfig(scheme="mixed", w4_ratio=0.5, w4_kind=w4_kind)
    golden = quantize_model(build_float_model(spec, seed=1).eval(),
                            torch.randn(4, 3, 64, 64, generator=gen), cfg)  # fmt: skip
    return golden, golden.quantize_images(torch.randn(2, 3, 64, 64, generator=gen))
