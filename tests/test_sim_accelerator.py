"""The whole accelerator on Verilator, driven through the host driver: real images in,
logits out, equal to the golden model for every image.

Two engines play the driver's steps: cocotb (cocotbext-axi DDR and host, ~6k cycles/s, a
Verilator build with every signal public) and the native harness (vitaccel.sim.native: a C++
DDR with seeded random pauses on every channel, ~100x faster, its own leaner build). The
default suite runs each design once: the default design's programs (20 digits images, the
log2 softmax aside, a DeiT-shaped network) on the native harness, whose build
tests/test_sim_native.py shares and where that file checks the native engine against cocotb
cycle for cycle; the compact layout on cocotb, on SMALL_TOP, whose cocotb build
tests/test_sim_top.py shares."""

import numpy as np
import pytest
import torch
from conftest import SMALL_TOP, mixed_deit_mini

from vitaccel.compile.compiler import compile_model, spm_layout
from vitaccel.compile.driver import Driver
from vitaccel.compile.schedule import chain_roles
from vitaccel.design import ArrayConfig, Design, NonlinearConfig
from vitaccel.dse.cost import estimate
from vitaccel.flow.build import default_design, design_for_scheme
from vitaccel.flow.codec import codec_for
from vitaccel.isa import MatmulFlags, Op
from vitaccel.models.evaluate import prepare
from vitaccel.models.golden import QuantConfig, quant_config_for, quantize_model
from vitaccel.models.specs import ModelSpec
from vitaccel.models.zoo import build_float_model
from vitaccel.sim.host import SimBackend


def _first_mismatch(got, want):
    diff = np.flatnonzero(np.asarray(got) != np.asarray(want))
    return None if diff.size == 0 else (int(diff[0]), int(got[diff[0]]), int(want[diff[0]]))


def _compile(design, golden, spm_words=None):
    """``golden`` compiled for ``design`` as the flows compile it, its units chained where
    the cycle model chains them (``spm_words``: for a scratchpad of that many words,
    default the design's)."""
    return compile_model(
        golden,
        groups=design.array.groups,
        codec=codec_for(design),
        spm_words=spm_words or design.spm_kib * 1024 // 16,
        chain=chain_roles(golden.spec, design),
    )


def _first_image_model(design, spec) -> int:
    """The cycle model's cycles of a first image (a run after a reset, as ``_run`` and
    ``_native`` run each image): an image of a stream plus the constants' LOAD."""
    est = estimate(design, spec=spec)
    return est.cycles + est.first_image_cycles


def _run(design, golden, patches, compact=None, spm_words=None, **backend):
    compiled = _compile(design, golden, spm_words)
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
    """20 images on the default design with random pauses on every DDR channel and a reset
    between images, on the native harness (the default design's native build, shared with
    tests/test_sim_native.py; cocotb took ~160 s for these 20 images)."""
    design = default_design("digits-vit", "zcu102")
    golden, patches, want, y = _digits(design, 20)
    results = _native(design, _compile(design, golden), patches, pause=0.2, seed=3)
    _assert_all_equal(results, want)  # DONE without ERROR, every logit
    # AXI pauses stretch the run a little, differently per image (~45.5k cycles unpaused).
    assert all(40_000 < r.cycles < 60_000 for r in results), [r.cycles for r in results]
    rtl_top1 = np.mean([r.logits.argmax() == t for r, t in zip(results, y.numpy(), strict=True)])
    assert rtl_top1 == np.mean(want.argmax(1) == y.numpy())


def _bit_exact_paused_then_unpaused(design, *, seeds):
    """Two digits-vit images with AXI pauses (0.2), then without: bit-exact on every logit.
    Returns the golden model and the unpaused run's results (their cycles are the RTL's)."""
    golden, patches, want, _ = _digits(design, 2)
    for pause, seed in zip((0.2, 0.0), seeds, strict=True):
        results = _run(design, golden, patches, pause=pause, seed=seed)
        for j, r in enumerate(results):
            assert _first_mismatch(r.logits, want[j]) is None, (
                f"pause {pause}, image {j}: (class, rtl, golden) = "
                f"{_first_mismatch(r.logits, want[j])}"
            )
    return golden, results


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
    golden, results = _bit_exact_paused_then_unpaused(design, seeds=(7, 8))
    model = _first_image_model(design, golden.spec)
    narrow = _first_image_model(design.model_copy(update={"datapath_bytes": 16}), golden.spec)
    print(f"datapath 32 B: RTL {results[-1].cycles} cycles/image, model {model} (16 B: {narrow})")
    assert abs(results[-1].cycles / model - 1) < 0.03, (results[-1].cycles, model)
    assert model < narrow


@pytest.mark.slow
def test_digits_word_path_writer_heads_bit_exact(monkeypatch):
    """The output writer's bank-parallel word path on the whole top: 3 groups of 16 columns
    on a 64-byte datapath (4 banks). QK^T's heads (head step 34 = 2 mod 4) land in 2 cycles
    a token, P x V's (head step 1) in one, the last head alone (1 of 3 groups); shared-mode
    jobs write a token's 48 channels at once, the fused residual adds and OUT_T still take
    runs. Bit-exact with AXI pauses; unpaused, the cycles are within 3% of the cycle model,
    which prices the word path (fewer cycles than the same design's run-only writer)."""
    from vitaccel.dse import cost

    design = Design(
        model="digits-vit",
        array=ArrayConfig(groups=3, rows=2, cols=16, vector=8),
        nonlinear=NonlinearConfig(
            gelu_lanes=4, softmax_lanes=4, layernorm_lanes=4, max_tokens=64, max_channels=128
        ),
        spm_kib=32,
        input_buffer_kib=16,
        weight_buffer_kib=12,
        datapath_bytes=64,
    )
    golden, results = _bit_exact_paused_then_unpaused(design, seeds=(21, 22))
    model = _first_image_model(design, golden.spec)
    # the same design priced as if every job took runs
    path = cost.writer_path
    monkeypatch.setattr(cost, "writer_path", lambda ins, d: {**path(ins, d), "runs": True})
    runs = _first_image_model(design, golden.spec)
    print(f"word path: RTL {results[-1].cycles} cycles/image, model {model} (runs: {runs})")
    assert abs(results[-1].cycles / model - 1) < 0.03, (results[-1].cycles, model)
    assert model < runs


@pytest.mark.slow
def test_digits_w_spm_port_builders_take_the_modelled_cycles():
    """A W builder per weight port on the DeiT-T-shaped top (3 groups of 16 columns, V = 16,
    64-byte datapath, 2 ports; tests/test_rtl_top.py's ``W_SPM_TOP``): attention's W_SPM
    jobs read W and X through the scratchpad's one read port. Bit-exact with AXI pauses;
    unpaused within 3 % of the cycle model, which prices X's share of the port beside the
    builders (``cost.spm_x_stretch``)."""
    from test_rtl_top import W_SPM_TOP

    design = W_SPM_TOP.model_copy(update={"model": "digits-vit"})
    golden, results = _bit_exact_paused_then_unpaused(design, seeds=(23, 24))
    model = _first_image_model(design, golden.spec)
    print(f"W_SPM port builders: RTL {results[-1].cycles} cycles/image, model {model}")
    assert abs(results[-1].cycles / model - 1) < 0.03, (results[-1].cycles, model)


# A 32-byte datapath with 32-lane E2Softmax, AILayerNorm and GELU: each reads and writes two
# scratchpad words a cycle (one per bank). One Verilator build, shared by the two tests below.
WIDE_NONLINEAR = Design(
    model="digits-vit",
    array=ArrayConfig(groups=1, rows=4, cols=4, vector=16),
    nonlinear=NonlinearConfig(
        gelu_lanes=32, softmax_lanes=32, layernorm_lanes=32, max_tokens=64, max_channels=128
    ),
    spm_kib=64,
    input_buffer_kib=8,
    weight_buffer_kib=4,
    datapath_bytes=32,
)


@pytest.mark.slow
def test_digits_wide_nonlinear_lanes_bit_exact():
    """digits-vit on 32-lane units over the 2-bank scratchpad: bit-exact with and without AXI
    pauses; unpaused, the cycles are within 3% of the cycle model, which prices the units at
    32 elements a cycle (fewer cycles than at 16 lanes)."""
    design = WIDE_NONLINEAR
    golden, results = _bit_exact_paused_then_unpaused(design, seeds=(11, 12))
    model = _first_image_model(design, golden.spec)
    lanes16 = NonlinearConfig(
        gelu_lanes=16, softmax_lanes=16, layernorm_lanes=16, max_tokens=64, max_channels=128
    )
    narrow = _first_image_model(design.model_copy(update={"nonlinear": lanes16}), golden.spec)
    print(f"32 lanes at 32 B: RTL {results[-1].cycles} cycles/image, model {model} "
          f"(16 lanes: {narrow})")  # fmt: skip
    assert abs(results[-1].cycles / model - 1) < 0.03, (results[-1].cycles, model)
    assert model < narrow


@pytest.mark.slow
def test_digits_chained_units_bit_exact(monkeypatch):
    """digits-vit on the 32-lane top (WIDE_NONLINEAR: the units' beat is the X beat, so they
    chain) compiled as the flows compile it (CHAIN on LN1 -> QKV, SOFTMAX -> P x V, LN2 ->
    FC1, the final LN -> head) and without chains: bit-exact with AXI pauses on the native
    Verilator harness, fewer cycles chained, each within 3 % of the cycle model's first
    image of the same program (printed)."""
    import vitaccel.compile.schedule as schedule
    import vitaccel.rtl.top as top
    from vitaccel import isa

    design = WIDE_NONLINEAR
    golden, patches, want, _ = _digits(design, 2)
    # the chain hardware and the compiler's chains on (off in the product: rtl.top)
    monkeypatch.setattr(top, "CHAIN_HARDWARE", True)
    monkeypatch.setattr(schedule, "CHAIN_DEFAULT", "paying")
    chained = _compile(design, golden)
    plain = compile_model(golden, groups=design.array.groups, codec=codec_for(design),
                          spm_words=design.spm_kib * 1024 // 16)  # fmt: skip
    pairs = sum(isa.chained(i) for i in chained.program)
    assert pairs > 0 and not any(isa.chained(i) for i in plain.program)
    models = {"chained": _first_image_model(design, golden.spec)}
    with pytest.MonkeyPatch.context() as mp2:
        mp2.setattr(schedule, "CHAIN_DEFAULT", "none")
        models["plain"] = _first_image_model(design, golden.spec)
    for pause, seed in ((0.2, 31), (0.0, 32)):
        res = {}
        for name, compiled in (("chained", chained), ("plain", plain)):
            res[name] = _native(design, compiled, patches, pause=pause, seed=seed)
            _assert_all_equal(res[name], want, f"{name}, pause {pause}: ")
        cycles = {name: [r.cycles for r in rs] for name, rs in res.items()}
        print(f"digits-vit, {pairs} chains, pause {pause}: RTL cycles/image chained "
              f"{cycles['chained']}, without chains {cycles['plain']}; model {models} "
              f"(Verilator)")  # fmt: skip
    assert cycles["chained"][-1] < cycles["plain"][-1], cycles
    for name, model in models.items():
        assert abs(cycles[name][-1] / model - 1) < 0.03, (name, cycles[name][-1], model)


@pytest.mark.slow
def test_wide_nonlinear_instructions_take_the_modelled_cycles():
    """One SOFTMAX / LAYERNORM / GELU instruction each on the 32-lane top (micro-programs,
    the END-only run subtracted): the RTL's cycles are exactly ``cost.instr_cycles`` plus the
    per-instruction overhead, as a MATMUL's and a LOAD's are."""
    from vitaccel.dse.cost import LATENCIES
    from vitaccel.verify.validate import micro_cycles

    rows = {r["case"]: r for r in micro_cycles(WIDE_NONLINEAR)}
    cases = ("softmax 68 x 17", "layernorm 17 x 64", "gelu 17 x 128", "load 2048 words",
             "matmul T17 K64 N128 (DDR W)")  # fmt: skip
    for case in cases:
        print(case, rows[case])
        assert rows[case]["rtl"] == rows[case]["model"] + LATENCIES["instr"], rows[case]


def test_digits_log2_softmax_bit_exact():
    """A log2 build: E2Softmax writes 4-bit codes and P x V runs in the engine's shift-add
    mode (SOFTMAX LOG2 / MATMUL X_LOG2); logits equal the log2 golden model's, with random
    pauses on every DDR channel (native harness: its build is leaner than cocotb's)."""
    base = default_design("digits-vit", "zcu102")
    design = base.model_copy(
        update={"nonlinear": base.nonlinear.model_copy(update={"softmax_output": "log2"})}
    )
    golden, patches, want, _ = _digits(design, 3)
    assert golden.config.softmax_output == "log2"
    _assert_all_equal(_native(design, _compile(design, golden), patches, pause=0.2, seed=4), want)


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


@pytest.mark.slow
def test_digits_spilling_program_bit_exact():
    """A program compiled for a 9 KiB scratchpad, too small for digits-vit's compact layout
    (599 words): the residual stream lives in the DDR scratch region and moves by LOAD and
    STORE, 9 tokens at a time (LN1, then the projection and the MLP per tile). It runs on
    SMALL_TOP's RTL (10 KiB; the program uses its first 567 words) so it shares that build:
    2 groups (heads mode) and the residual adds fused in place (Y == A) on every tile;
    cocotbext-axi with random pauses on every channel, two images (the second must not see
    the first's residual stream: every scratch row is stored before it is read). Slow
    (~150 s of Python AXI models); the default suite runs the same kind of program on the
    native harness (tests/test_sim_native.py)."""
    design = SMALL_TOP
    golden, patches, want, _ = _digits(design, 2)
    compiled = _compile(design, golden, spm_words=9 * 64)
    assert compiled.spill_tile == 9 and compiled.spm_words <= 9 * 64 < 599
    results = _run(design, golden, patches, spm_words=9 * 64, pause=0.2, seed=7)
    for j, r in enumerate(results):
        assert _first_mismatch(r.logits, want[j]) is None, (
            f"image {j}: (class, rtl, golden) = {_first_mismatch(r.logits, want[j])}"
        )
        assert r.status == 2  # DONE, no ERROR


def test_deit_tiny_shaped_network_reduced_depth_and_tokens():
    """DeiT-Tiny's width, heads, MLP and 16x16x3 patches; 2 blocks and 17 tokens (64x64
    input), on the default design (1 x 4 x 4 x 8, 4-lane units) with random AXI pauses: the
    native harness, its build shared with the digits tests."""
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
    design = default_design("digits-vit", "zcu102")
    assert design.array == ArrayConfig(groups=1, rows=4, cols=4, vector=8)
    gen = torch.Generator().manual_seed(5)
    calib = torch.randn(4, 3, 64, 64, generator=gen)
    golden = quantize_model(model, calib, QuantConfig(softmax_lanes=4))
    patches = golden.quantize_images(torch.randn(2, 3, 64, 64, generator=gen))
    want = golden.forward_patches(patches)
    results = _native(design, _compile(design, golden), patches, pause=0.2, seed=5)
    _assert_all_equal(results, want, "deit-tiny-mini ")


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


# ---- mixed W4/W8 arrays (docs/isa.md, "Mixed W4/W8 arrays") --------------------------------
# On the native Verilator harness (vitaccel.sim.native: random pauses on every DDR channel,
# ~100x cocotb's speed): an image of digits-vit on the mixed array takes ~41k cycles.


def _mixed_design(w4_kind: str, ports: int = 2):
    """``vitaccel build --scheme mixed --w4-ratio 0.5``'s design: the default digits design
    with as many W4 columns as W8 ones (1 x 4 x (4 W8 + 4 W4), vector 8), its weights over
    ``ports`` DDR read ports. With two, port 0 carries the W8 columns and port 1 the W4
    ones, each with its own columns' map entries, which the top merges in column order. The
    default-suite tests below share its (native) Verilator build."""
    base = default_design("digits-vit", "zcu102").model_copy(update={"weight_ports": ports})
    return design_for_scheme(base, "mixed", 0.5, w4_kind)


def _native(design, compiled, patches, **backend):
    from vitaccel.sim.native import NativeBackend

    drv = Driver(NativeBackend(design, **backend))
    drv.load(compiled)
    return drv.infer_batch(list(patches), reset_between=True)


def _assert_all_equal(results, want, what=""):
    for j, r in enumerate(results):
        assert r.status == 2, (what, j, r.status)  # DONE, no ERROR
        assert _first_mismatch(r.logits, want[j]) is None, (
            f"{what}image {j}: (class, rtl, golden) = {_first_mismatch(r.logits, want[j])}"
        )


def _mixed_digits(w4_kind: str, images: int, ports: int = 2):
    from vitaccel.flow.model_sim import design_program

    design = _mixed_design(w4_kind, ports)
    assert design.array.cols_w4 == 4 and design.default_w4_ratio == 0.5
    prog = design_program(design, images=images)
    layers = prog.golden.linear_layers().items()
    w4 = [name for name, layer in layers if layer.weight.kind.any()]
    assert len(w4) == 16, w4  # qkv, proj, fc1, fc2 of the 4 blocks
    # 1 x 8 output lanes (not whole SPM words): the residual adds still fuse (byte runs)
    fused = [
        i for i in prog.compiled.program if i.op is Op.MATMUL and MatmulFlags.RESADD in i.flags
    ]
    # patch_embed (the positional add), proj and fc2 of the 4 blocks
    assert len(fused) == 9 and fused[0].label == "patch_embed", [i.label for i in fused]
    return design, prog


def test_mixed_digits_20_images_bit_exact_with_axi_pauses():
    """digits-vit with 50% int4 rows in every encoder layer on W4 columns: the controller
    takes the steps from ``w_steps``, the output writer follows the column map, attention
    runs on the W8 columns. 20 images bit-exact with random AXI pauses; one more without
    pauses: its cycles against the cycle model's prediction of the same program."""
    design, prog = _mixed_digits("int4", 20)
    results = _native(design, prog.compiled, prog.patches, pause=0.2, seed=11)
    _assert_all_equal(results, prog.want)
    rtl_top1 = np.mean([r.logits.argmax() == t for r, t in zip(results, prog.labels, strict=True)])
    assert rtl_top1 == np.mean(prog.want.argmax(1) == prog.labels)
    (plain,) = _native(design, prog.compiled, prog.patches[:1])
    est = estimate(design, spec=prog.golden.spec)
    model = est.cycles + est.first_image_cycles  # a first image: the constants LOAD too
    print(f"\nmixed digits: RTL {plain.cycles} cycles/image, model {model} "
          f"({plain.cycles / model - 1:+.2%})")  # fmt: skip
    assert abs(plain.cycles / model - 1) < 0.05, (plain.cycles, model)


@pytest.mark.slow
def test_mixed_digits_200_images():
    design, prog = _mixed_digits("int4", 200)
    results = _native(design, prog.compiled, prog.patches, pause=0.1, seed=14)
    _assert_all_equal(results, prog.want)


def test_mixed_digits_w4_rows_beyond_the_w4_columns_bit_exact():
    """More int4 rows than W4 columns (the explorer's ratios above the column share): 75 %
    int4 rows on 4 W8 + 4 W4 columns, so every step's int4 rows past its W4 slots run on
    its free W8 columns (``plan_columns``). 3 images bit-exact with random AXI pauses, on
    the mixed tests' shared build (the ratio does not change the RTL)."""
    from vitaccel.dse.cost import job_nsteps
    from vitaccel.flow.model_sim import design_program

    shared = _mixed_design("int4")
    design = design_for_scheme(default_design("digits-vit", "zcu102").model_copy(
        update={"weight_ports": 2}), "mixed", 0.75, "int4")  # fmt: skip
    # the same hardware: only the ratio the compiler and golden model read differs
    assert design.default_w4_ratio == 0.75
    assert design.model_copy(update={"default_w4_ratio": 0.5}) == shared
    prog = design_program(design, images=3)
    a = design.array
    spilled = 0
    for layer in prog.golden.linear_layers().values():
        n4 = int(layer.weight.kind.astype(bool).sum())
        if not n4:
            continue
        n = layer.weight.kind.shape[0]
        steps = job_nsteps(n, n - n4, a.groups, a.cols, a.cols_w8, heads=False)
        spilled += max(0, n4 - steps * a.groups * a.cols_w4)
    assert spilled > 0  # int4 rows on W8 columns
    _assert_all_equal(_native(shared, prog.compiled, prog.patches, pause=0.2, seed=15), prog.want)


@pytest.mark.slow
def test_mixed_digits_pot4_bit_exact():
    """Power-of-two W4 lanes: digits-vit on ``build --scheme mixed --w4-kind pot4``'s design,
    with one weight port (the map merge's one-queue case)."""
    design, prog = _mixed_digits("pot4", 5, ports=1)
    _assert_all_equal(_native(design, prog.compiled, prog.patches, pause=0.2, seed=13), prog.want)


def _two_group_mixed(w4_kind: str):
    """2 groups of 4 W8 + 4 W4 columns (tests/test_compile.py's DeiT-shaped design): an
    output step of 16 channels, so the residual adds are fused into the projection and FC2
    (ResidualRuns with one-byte runs), and attention runs in heads mode."""
    base = _mixed_design(w4_kind)
    array = base.array.model_copy(update={"groups": 2})
    return base.model_copy(update={"array": array})


@pytest.mark.parametrize(
    "w4_kind, groups",
    [("int4", 1), pytest.param("pot4", 2, marks=pytest.mark.slow)],
)
def test_mixed_deit_shaped_program_bit_exact(w4_kind, groups):
    """A DeiT-shaped program with 50% W4 rows: int4 on the mixed design (its build shared
    with the digits tests), power-of-two lanes on two groups (its own build: slow), where
    the fused residual adds and heads-mode attention follow the column map too."""
    design = _mixed_design(w4_kind) if groups == 1 else _two_group_mixed(w4_kind)
    golden, patches = mixed_deit_mini(w4_kind)
    assert sum(layer.weight.kind.any() for layer in golden.linear_layers().values()) == 8
    compiled = compile_model(golden, groups=groups, codec=codec_for(design),
                             spm_words=design.spm_kib * 1024 // 16)  # fmt: skip
    mms = [i for i in compiled.program if i.op is Op.MATMUL]
    fused = [i.label for i in mms if MatmulFlags.RESADD in i.flags]
    heads = [i.label for i in mms if MatmulFlags.HEADS in i.flags]
    # a mixed array fuses the residual adds at any shape (byte runs, isa.residual_fusable)
    assert len(fused) == 5 and fused[0] == "patch_embed", fused
    assert (len(heads) > 0) == (groups == 2), heads
    results = _native(design, compiled, patches, pause=0.2, seed=12)
    _assert_all_equal(results, golden.forward_patches(patches), f"{w4_kind} ")


@pytest.mark.slow
def test_mixed_w_spm_word_path_deit_shaped_program_bit_exact():
    """A mixed array whose W8 columns are whole scratchpad words (2 groups of 16 W8 + 4 W4
    columns, 32-byte datapath: 2 banks): attention's QK^T and P x V (W_SPM, heads mode) go
    through the all-W8 writer's word path (rtl/spm MixedOutWriter), the layers with W from
    DDR through the column map. The DeiT-shaped program with 50% int4 rows bit-exact with
    random AXI pauses; one run without pauses: the whole program's cycles within 3% of
    the cycle model's (RTL 89,497 cycles, model 89,465: +0.04 %). Its own Verilator build
    (slow: ~10 min at a load of 5, ~4 CPU-minutes)."""
    base = _mixed_design("int4")
    array = base.array.model_copy(update={"groups": 2, "cols": 20, "w4_share": 0.2})
    design = base.model_copy(update={"array": array, "datapath_bytes": 32})
    assert (design.array.cols_w8, design.datapath_bytes // 16) == (16, 2)
    golden, patches = mixed_deit_mini("int4")
    compiled = compile_model(golden, groups=2, codec=codec_for(design),
                             spm_words=design.spm_kib * 1024 // 16,
                             chain=chain_roles(golden.spec, design))  # fmt: skip
    heads = [i for i in compiled.program if i.op is Op.MATMUL and MatmulFlags.HEADS in i.flags]
    assert heads and all(MatmulFlags.W_SPM in i.flags for i in heads)
    results = _native(design, compiled, patches, pause=0.2, seed=16)
    _assert_all_equal(results, golden.forward_patches(patches), "word path ")
    (plain,) = _native(design, compiled, patches[:1])
    model = _first_image_model(design, golden.spec)
    print(f"\nmixed W_SPM word path: RTL {plain.cycles} cycles/image, model {model} "
          f"({plain.cycles / model - 1:+.2%})")  # fmt: skip
    assert abs(plain.cycles / model - 1) < 0.03, (plain.cycles, model)
