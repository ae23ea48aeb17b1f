"""Compiler + ISA interpreter: the compiled program reproduces the golden model bit for bit."""

import numpy as np
import pytest

from vitaccel.compile.compiler import CompileError, compile_model
from vitaccel.compile.driver import Driver, InterpBackend
from vitaccel.design import ArrayConfig, Design
from vitaccel.engine_host import EngineParams
from vitaccel.flow.build import default_design
from vitaccel.flow.codec import GVSACodec, codec_for
from vitaccel.models.evaluate import prepare
from vitaccel.models.golden import QuantConfig, quantize_model


@pytest.fixture(scope="module")
def digits():
    spec, model, golden, x, y = prepare("digits-vit", images=12)
    return golden, golden.quantize_images(x)


@pytest.mark.parametrize("groups, cols", [(1, 4), (2, 4), (2, 8), (1, 16)])
def test_program_equals_golden_on_real_images(digits, groups, cols, assert_program_equals_golden):
    """GELU is always fused into FC1; the residual adds are fused into the projection and
    FC2, and the positional add into patch_embed, where an output step covers whole SPM
    words (2x8, 1x16), RESADD otherwise."""
    from vitaccel import isa

    golden, patches = digits
    design = Design(array=ArrayConfig(groups=groups, rows=4, cols=cols, vector=8))
    codec = codec_for(design)
    compiled = compile_model(golden, groups=groups, codec=codec)
    ops = [(i.op, i.flags) for i in compiled.program]
    depth = golden.spec.depth
    fused = groups * cols % 16 == 0
    mm_flags = [fl for op, fl in ops if op is isa.Op.MATMUL]
    assert sum(bool(fl & isa.MatmulFlags.GELU) for fl in mm_flags) == depth
    assert sum(bool(fl & isa.MatmulFlags.RESADD) for fl in mm_flags) == (
        1 + 2 * depth if fused else 0
    )
    assert bool(mm_flags[0] & isa.MatmulFlags.RESADD) == fused  # patch_embed, the first
    assert sum(bool(fl & isa.MatmulFlags.X_KEEP) for fl in mm_flags) == depth
    assert sum(op is isa.Op.GELU for op, _ in ops) == 0
    # RESADD instructions only without fusion: the positional add and two per block
    assert sum(op is isa.Op.RESADD for op, _ in ops) == (0 if fused else 1 + 2 * depth)
    assert_program_equals_golden(compiled, codec, golden, patches)


def test_interpreter_refuses_x_keep_without_a_matching_x(digits):
    from vitaccel import isa
    from vitaccel.compile.interp import InterpError, Machine, step

    m = Machine(ddr=bytearray(1 << 12), spm=np.zeros((256, 16), dtype=np.uint8))
    codec = GVSACodec(EngineParams(groups=1, rows=4, cols=4, vector=8))
    keep = isa.matmul(x=0, x_stride=1, tokens=4, k=16, n=4, y=64, y_stride=1, w_ddr=0,
                      x_keep=True)  # fmt: skip
    with pytest.raises(InterpError, match="X_KEEP"):
        step(m, keep, codec)
    step(m, isa.matmul(x=0, x_stride=1, tokens=4, k=16, n=4, y=64, y_stride=1, w_ddr=0), codec)
    step(m, keep, codec)  # same shape: fine
    other = isa.matmul(x=0, x_stride=1, tokens=5, k=16, n=4, y=64, y_stride=1, w_ddr=0,
                       x_keep=True)  # fmt: skip
    with pytest.raises(InterpError, match="X_KEEP"):
        step(m, other, codec)


def test_packed_w_stream_decodes_to_the_layer(digits):
    golden, _ = digits
    codec = GVSACodec(EngineParams(groups=2, rows=4, cols=4, vector=8))
    for name, layer in golden.linear_layers().items():
        raw = codec.pack(layer.weight.q, layer.weight.kind, layer.bias, layer.mult, layer.shift)
        q, bias, mult, shift = codec.unpack(raw, layer.out_features, layer.in_features)
        assert np.array_equal(q, layer.weight.q), name
        assert (
            np.array_equal(bias, layer.bias)
            and np.array_equal(mult, layer.mult)
            and np.array_equal(shift, layer.shift)
        ), name


@pytest.mark.parametrize("w4_kind, w_ports", [("int4", 1), ("pot4", 2)])
def test_mixed_w_stream_decodes_to_the_layer(w4_kind, w_ports):
    """Arrays with W4 columns: the layer's W4 rows go to W4 columns as 4-bit codes, the
    column map in the parameter slots names each column's channel, and the stream decodes
    back to the layer (more steps than ceil(N / (G*C)) when the W8 rows need them)."""
    from vitaccel.engine_host import plan_columns
    from vitaccel.flow.codec import CHANNEL_BYTE, IDLE_COLUMN
    from vitaccel.quant.scales import quantize_weight

    rng = np.random.default_rng(5)
    params = EngineParams(groups=2, rows=4, cols=6, vector=8, w4_share=1 / 3, w4_kind=w4_kind,
                          w_ports=w_ports)  # fmt: skip
    codec = GVSACodec(params)
    for ratio, n in ((0.5, 30), (0.1, 24)):
        qw = quantize_weight(rng.normal(size=(n, 20)), ratio, w4_kind)
        bias = rng.integers(-(2**31), 2**31, n)
        mult, shift = rng.integers(0, 2**16, n), rng.integers(0, 63, n)
        raw = codec.pack(qw.q, qw.kind, bias, mult, shift)
        plan = plan_columns(qw.kind, params)
        assert codec.steps_of(raw, 20) == plan.nsteps
        assert plan.nsteps > -(-n // 12) or ratio == 0.5
        q, b, m, s = codec.unpack(raw, n, 20, plan.nsteps)
        assert np.array_equal(q, qw.q) and np.array_equal(b, bias)
        assert np.array_equal(m, mult) and np.array_equal(s, shift)
        # every W4 row that fits is on a W4 column, and the map says so
        on_w4 = plan.channel[:, :, params.cols_w8 :]
        assert np.all(qw.kind[on_w4[on_w4 >= 0]] != 0) and (on_w4 >= 0).sum() > 0
        # each column's slots (parameter word, 3 k-steps) stay together in every port stream
        slots = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 4, codec.slot)[:, 0]
        maps = slots[:, CHANNEL_BYTE].astype(int) | slots[:, CHANNEL_BYTE + 1].astype(int) << 8
        assert sorted(maps[maps != IDLE_COLUMN].tolist()) == list(range(n))


@pytest.mark.parametrize("w4_kind", ["int4", "pot4"])
def test_mixed_program_equals_golden(w4_kind, assert_program_equals_golden):
    """Whole digits-vit with 50% W4 rows per encoder layer on an array with W4 columns, on
    the interpreter: W8-only layers (patch embedding, head) take more steps than their N
    needs on all columns; attention stays on the W8 columns (W_SPM)."""
    design = Design(
        array=ArrayConfig(groups=1, rows=4, cols=6, vector=8, w4_share=1 / 3, w4_kind=w4_kind),
        default_w4_ratio=0.5,
    )
    cfg = QuantConfig(scheme="mixed", w4_ratio=0.5, w4_kind=w4_kind)
    _, _, golden, x, _ = prepare("digits-vit", config=cfg, images=4)
    codec = codec_for(design)
    compiled = compile_model(golden, groups=1, codec=codec)
    steps = {i.label: i.w_steps for i in compiled.program if i.get("w_steps") and not i.flags & 2}
    assert steps["patch_embed"] == 16  # 64 W8 rows on 4 W8 columns
    assert steps["blocks.0.mlp.fc2"] == 11  # ceil(64 / 6): the W4 rows fill the W4 columns
    assert_program_equals_golden(compiled, codec, golden, golden.quantize_images(x))


@pytest.mark.parametrize("w4_kind", ["int4", "pot4"])
def test_mixed_deit_shaped_program_equals_golden(w4_kind, assert_program_equals_golden):
    """DeiT-Tiny's width, heads and MLP (2 blocks, 17 tokens) with 50% W4 rows on 2 groups
    of 4 W8 + 4 W4 columns, on the interpreter."""
    from conftest import mixed_deit_mini

    golden, patches = mixed_deit_mini(w4_kind)
    design = Design(array=ArrayConfig(groups=2, rows=4, cols=8, vector=8, w4_share=0.5,
                                      w4_kind=w4_kind))  # fmt: skip
    w4 = [n for n, layer in golden.linear_layers().items() if layer.weight.kind.any()]
    assert len(w4) == 8  # qkv, proj, fc1, fc2 of both blocks
    codec = codec_for(design)
    compiled = compile_model(golden, groups=2, codec=codec, spm_words=1 << 16)
    assert_program_equals_golden(compiled, codec, golden, patches)


def test_image_is_deterministic(digits):
    golden, _ = digits
    codec = codec_for(default_design("digits-vit", "zcu102"))
    a = compile_model(golden, groups=1, codec=codec).image
    b = compile_model(golden, groups=1, codec=codec).image
    assert a == b


def test_driver_on_the_interpreter(digits):
    golden, patches = digits
    codec = codec_for(default_design("digits-vit", "zcu102"))
    compiled = compile_model(golden, groups=1, codec=codec)
    drv = Driver(InterpBackend(codec, spm_words=compiled.spm_words))
    drv.load(compiled)
    results = drv.infer_batch(list(patches[:3]))
    assert [r.logits.tolist() for r in results] == golden.forward_patches(patches[:3]).tolist()


@pytest.mark.parametrize("layout", ["standard", "compact", "spill"])
def test_stream_of_images_starts_past_the_resident_constants(digits, layout):
    """After one run the driver starts each image past the constants LOAD (PROG_ADDR at the
    second instruction) and the device's scratchpad still holds the constants: every image
    equals the golden model, in each layout. The skipped LOAD is needed: the same entry on a
    cleared scratchpad gives other logits."""
    from vitaccel.compile import interp
    from vitaccel.compile.schedule import resident_prologue
    from vitaccel.isa import INSTR_BYTES, Op, Reg

    golden, patches = digits
    codec = codec_for(Design(array=ArrayConfig(groups=2, rows=4, cols=8, vector=8)))
    words = {"standard": None, "compact": 640, "spill": 1 << 16}[layout]
    kw = {} if words is None else {"spm_words": words}
    compiled = compile_model(golden, groups=2, codec=codec, spill=layout == "spill", **kw)
    assert bool(compiled.compact) == (layout != "standard")
    assert resident_prologue(compiled.program) == 1
    assert compiled.program[0].op is Op.LOAD and compiled.program[0].label == "constants"
    backend = InterpBackend(codec, spm_words=compiled.spm_words)
    drv = Driver(backend)
    drv.load(compiled)
    first = drv.infer_batch(list(patches[:2]))  # image 0 whole, image 1 past the prologue
    assert backend.regs[Reg.PROG_ADDR_LO] == INSTR_BYTES  # the last START's entry
    rest = drv.infer_batch(list(patches[2:4]))  # a later call: resident from the start
    got = [r.logits.tolist() for r in first + rest]
    assert got == golden.forward_patches(patches[:4]).tolist()
    # without the constants (a cleared scratchpad), the same entry does not give them
    m = interp.run(compiled.image_with_input(patches[1]), codec, spm_words=compiled.spm_words,
                   entry=1)  # fmt: skip
    assert compiled.read_logits(m.ddr).tolist() != got[1]


@pytest.mark.parametrize("groups", [1, 2])
def test_log2_softmax_program_equals_golden(groups, assert_program_equals_golden):
    """Log2-code softmax: SOFTMAX with LOG2 writes 4-bit codes, P x V runs with X_LOG2."""
    from vitaccel import isa

    _, _, golden, x, _ = prepare("digits-vit", config=QuantConfig(softmax_output="log2"), images=6)
    patches = golden.quantize_images(x)
    design = Design(array=ArrayConfig(groups=groups, rows=4, cols=4, vector=8))
    codec = codec_for(design)
    compiled = compile_model(golden, groups=groups, codec=codec)
    prog = isa.decode_program(bytes(compiled.image))  # the image starts with the program
    assert prog == compiled.program
    assert any(i.op is isa.Op.SOFTMAX and i.flags & isa.SoftmaxFlags.LOG2 for i in prog)
    assert any(i.op is isa.Op.MATMUL and i.flags & isa.MatmulFlags.X_LOG2 for i in prog)
    assert_program_equals_golden(compiled, codec, golden, patches)


def test_spm_layout_fits_deit_tiny_and_small_in_1_mib():
    """Phase overlays (embedding / attention / MLP) and in-place SOFTMAX and GELU."""
    from vitaccel.compile.compiler import spm_layout
    from vitaccel.models.specs import get_spec

    need = {m: spm_layout(get_spec(m)).next for m in ("digits-vit", "deit-tiny", "deit-small")}
    assert need["deit-tiny"] * 16 <= 512 * 1024 and need["deit-small"] * 16 <= 1024 * 1024
    with pytest.raises(CompileError, match="scratchpad too small"):
        spm_layout(get_spec("deit-base"), compact=False)
    al = spm_layout(get_spec("deit-tiny"))
    assert not al.compact and al.att_heads == 3
    t = al.tensors
    assert t["attn.probs"].base == t["attn.logits"].base
    assert t["mlp.gelu"].base == t["mlp.fc1"].base
    # the attention and MLP phases share one region; the residual buffers are outside it
    assert t["mlp.fc1"].base < t["attn.logits"].base + t["attn.logits"].words
    for x in ("x0", "x1"):
        assert t[x].base + t[x].words <= t["patches"].base


def test_compact_layout_fits_deit_base_in_1_mib():
    """DeiT-Base: the standard layout needs 1,752 KiB; the compact one (one block's
    constants, one residual buffer, the positional table in the embedding phase, attention
    logits of 6 of the 12 heads at a time) fits the ISA's 1 MiB."""
    from vitaccel.compile.compiler import spm_layout, spm_words_needed
    from vitaccel.models.specs import get_spec

    spec = get_spec("deit-base")
    al = spm_layout(spec)
    assert al.compact and al.att_heads == 6 and al.next <= 1 << 16
    assert spm_words_needed(spec) == al.next
    t = al.tensors
    assert t["x1"] == t["x0"]
    assert len({t[f"blocks.{i}.norm1.params"].base for i in range(spec.depth)}) == 1
    assert t["attn.logits"].rows == 6 * spec.tokens
    # everything the compact layout keeps for the whole run sits below the phase region
    region = t["patches"].base
    for name in ("pos_add.params", "norm.params", "block.add2.params", "x0", "norm", "logits"):
        assert t[name].base + t[name].words <= region, name
    assert t["pos_q"].base >= t["patch_embed"].base + t["patch_embed"].words
    # a too-small scratchpad still names what does not fit
    from vitaccel.models.specs import ModelSpec

    # ViT-Huge's width: even its attention phase alone (LN1 out, Q|K, V^T, one head's
    # logits) is beyond 1 MiB, so no layout fits, spilling or not
    large = ModelSpec(name="vit-huge-like", img_size=224, patch_size=16, in_chans=3,
                      num_classes=1000, embed_dim=1280, depth=32, heads=16, mlp_ratio=4.0)  # fmt: skip
    with pytest.raises(CompileError, match="even with the compact layout and the residual"):
        spm_layout(large, 1 << 17)  # capped at the ISA's 1 MiB; every layout tried
    with pytest.raises(CompileError, match="raise spm_kib"):
        spm_layout(spec, 40_000)


@pytest.mark.parametrize(
    "groups, cols, spm_words, att_heads",
    [(1, 4, 599, 1), (2, 8, 640, 2), (2, 4, 1 << 16, 4), (3, 4, 633, 2)],
)
def test_compact_program_equals_golden(
    digits, groups, cols, spm_words, att_heads, assert_program_equals_golden
):
    """The compact layout on the interpreter: per-block constant LOADs, the residual adds in
    place (fused with 2x8, RESADD instructions otherwise), attention in chunks of heads."""
    from vitaccel import isa

    golden, patches = digits
    design = Design(array=ArrayConfig(groups=groups, rows=4, cols=cols, vector=8))
    codec = codec_for(design)
    compiled = compile_model(golden, groups=groups, codec=codec, spm_words=spm_words, compact=True)
    assert compiled.compact and compiled.att_heads == att_heads
    depth, heads = golden.spec.depth, golden.spec.heads
    ops = [i.op for i in compiled.program]
    assert ops.count(isa.Op.SOFTMAX) == depth * heads // att_heads
    assert ops.count(isa.Op.LOAD) == 5 + depth  # globals, input, class row, norm, pos_q
    assert_program_equals_golden(compiled, codec, golden, patches)


def test_deit_tiny_program_equals_golden_on_the_interpreter(assert_program_equals_golden):
    """The whole 197-token, 12-block DeiT-Tiny program (random init, one image)."""
    _, _, golden, x, _ = prepare("deit-tiny", images=1)
    design = Design(model="deit-tiny", array=ArrayConfig(groups=3, rows=4, cols=4, vector=8))
    codec = codec_for(design)
    compiled = compile_model(golden, groups=3, codec=codec, spm_words=1 << 16)
    assert_program_equals_golden(compiled, codec, golden, golden.quantize_images(x))


def test_unsupported_configurations_are_clear_errors():
    _, model, golden, x, _ = prepare("digits-vit", images=1)
    with pytest.raises(CompileError, match="scratchpad too small"):
        compile_model(
            golden, groups=1, codec=codec_for(default_design("digits-vit", "zcu102")), spm_words=100
        )
    # Activations wider than int8 are a golden-model study (issue 24): the RTL is int8.
    wide = quantize_model(model, x, QuantConfig(residual_bits=12))
    with pytest.raises(CompileError, match=r"^residual_bits = 12: the accelerator implements 8"):
        compile_model(wide, groups=1, codec=codec_for(default_design("digits-vit", "zcu102")))


# ---- spilling the residual stream to DDR ---------------------------------------------------


@pytest.mark.parametrize(
    "groups, cols, spm_words, tile",
    [(1, 4, 576, 9), (2, 8, 540, 2), (3, 4, 560, 6), (1, 16, 536, 1)],
)
def test_spill_program_equals_golden(
    digits, groups, cols, spm_words, tile, assert_program_equals_golden
):
    """A scratchpad too small for the compact layout (digits-vit needs 599 words): the
    residual stream lives in the DDR scratch region and moves through one tile buffer of
    ``tile`` tokens; the projection and the MLP run per tile (fused residual adds in place
    with 2x8 and 1x16, RESADD instructions otherwise); 17 tokens in uneven tiles."""
    from vitaccel import isa
    from vitaccel.compile.compiler import spill_traffic, spm_layout
    from vitaccel.compile.schedule import scratch_bytes

    golden, patches = digits
    spec = golden.spec
    with pytest.raises(CompileError, match="scratchpad too small"):
        spm_layout(spec, spm_words, spill=False)
    design = Design(array=ArrayConfig(groups=groups, rows=4, cols=cols, vector=8))
    codec = codec_for(design)
    compiled = compile_model(golden, groups=groups, codec=codec, spm_words=spm_words)
    assert compiled.spill_tile == tile and compiled.spm_words <= spm_words
    assert "x0" not in compiled.tensors and compiled.tensors["xt"].rows == tile
    assert compiled.tensors["mlp.fc1"].rows == tile
    # the scratch region is the image's last section, after the logits
    assert compiled.scratch_bytes == scratch_bytes(spec) == spec.tokens * 4 * 16
    assert compiled.scratch_offset >= compiled.output_offset + compiled.output_bytes
    assert len(compiled.image) >= compiled.scratch_offset + compiled.scratch_bytes
    spills = [i for i in compiled.program if i.label.endswith("spill")]
    for i in spills:
        assert i.op in (isa.Op.LOAD, isa.Op.STORE)
        assert compiled.scratch_offset <= i.ddr
        assert i.ddr + i.words * 16 <= compiled.scratch_offset + compiled.scratch_bytes
    ntiles = -(-spec.tokens // tile)
    # per block: LN1's tiles in, the projection + MLP tiles in and out; the embedding's two
    # STOREs (class row, patches) and the final LayerNorm's class row
    assert len(spills) == spec.depth * 3 * ntiles + 3
    row = 4 * 16
    assert spill_traffic(compiled.program) == spec.depth * 3 * spec.tokens * row + 18 * row
    # every token tile of a layer reads the one packed stream of its rows
    fc1 = {i.w_ddr for i in compiled.program if i.label == "blocks.0.mlp.fc1"}
    assert len(fc1) == 1
    assert_program_equals_golden(compiled, codec, golden, patches[:4])


def test_programs_that_fit_do_not_spill(digits):
    """The standard and compact layouts are taken first: no scratch region, no spill LOAD
    or STORE; the spilling layout only when forced or when nothing else fits."""
    from vitaccel.compile.compiler import spill_traffic, spm_layout
    from vitaccel.compile.schedule import spill_words_needed, spm_words_needed
    from vitaccel.models.specs import get_spec

    golden, _ = digits
    codec = codec_for(Design(array=ArrayConfig(groups=2, rows=4, cols=8, vector=8)))
    for words in (1 << 16, 640, 599):
        compiled = compile_model(golden, groups=2, codec=codec, spm_words=words)
        assert compiled.spill_tile == 0 and compiled.scratch_bytes == 0
        assert spill_traffic(compiled.program) == 0
    forced = compile_model(golden, groups=2, codec=codec, spm_words=1 << 16, spill=True)
    assert forced.spill_tile == golden.spec.tokens and forced.scratch_bytes > 0
    # DeiT-Base: 1,016 KiB compact, 669 KiB spilling one token at a time
    base = get_spec("deit-base")
    assert spm_words_needed(base) == 65029 and spill_words_needed(base) == 42816
    al = spm_layout(base, 50_000)
    assert al.spill_tile > 1 and al.next <= 50_000


def test_interpreter_refuses_a_store_past_the_image():
    from vitaccel import isa
    from vitaccel.compile.interp import InterpError, Machine, step

    m = Machine(ddr=bytearray(256), spm=np.zeros((16, 16), dtype=np.uint8))
    step(m, isa.store(spm=0, words=16, ddr=0), None)
    with pytest.raises(InterpError, match="STORE out of range"):
        step(m, isa.store(spm=0, words=2, ddr=240), None)
    assert len(m.ddr) == 256


@pytest.mark.parametrize(
    "groups, cols, spm_words, tile",
    [pytest.param(3, 4, 2500, 13, marks=pytest.mark.slow), (2, 8, 2300, 3)],
)
def test_spill_deit_shaped_program_equals_golden(
    groups, cols, spm_words, tile, assert_program_equals_golden
):
    """DeiT-Tiny's width, heads and MLP with 26 tokens (80x80 input, 2 blocks): its compact
    layout needs 2,573 words; in 2,500 (tiles of 13 tokens, 3 heads a chunk, RESADD
    instructions) and 2,300 (tiles of 3, the last of 2; fused residual adds in place) the
    residual stream spills to DDR. Interpreter against the golden model (~10 s each; the
    first is slow-marked)."""
    import torch

    from vitaccel.models.golden import quantize_model
    from vitaccel.models.specs import ModelSpec
    from vitaccel.models.zoo import build_float_model

    spec = ModelSpec(name="deit-tiny-mini", img_size=80, patch_size=16, in_chans=3,
                     num_classes=10, embed_dim=192, depth=2, heads=3, mlp_ratio=4.0)  # fmt: skip
    gen = torch.Generator().manual_seed(7)
    golden = quantize_model(build_float_model(spec, seed=2).eval(),
                            torch.randn(4, 3, 80, 80, generator=gen), QuantConfig())  # fmt: skip
    codec = codec_for(Design(array=ArrayConfig(groups=groups, rows=4, cols=cols, vector=8)))
    compiled = compile_model(golden, groups=groups, codec=codec, spm_words=spm_words)
    assert compiled.spill_tile == tile and compiled.att_heads == 3
    patches = golden.quantize_images(torch.randn(2, 3, 80, 80, generator=gen))
    assert_program_equals_golden(compiled, codec, golden, patches)


@pytest.mark.parametrize("groups, layout", [(1, "standard"), (2, "standard"), (2, "compact"),
                                            (4, "standard"), (2, "spill")])  # fmt: skip
def test_chained_program_equals_golden(digits, groups, layout, assert_program_equals_golden):
    """Every unit that can chain chained (chain: every role): the interpreter checks each
    CHAIN against the next instruction (isa.chain_fits) and the logits are the golden
    model's, bit for bit; a softmax that serves several P x V jobs (digits-vit: 4 heads, on
    fewer groups) is split, one per job, and nothing else changes."""
    from vitaccel import isa
    from vitaccel.compile.schedule import CHAIN_ROLES, chain_role

    golden, patches = digits
    spec = golden.spec
    design = Design(array=ArrayConfig(groups=groups, rows=4, cols=8, vector=8))
    codec = codec_for(design)
    kw = {"compact": dict(spm_words=640), "spill": dict(spill=True)}.get(layout, {})
    compiled = compile_model(golden, groups=groups, codec=codec, chain=frozenset(CHAIN_ROLES),
                             **kw)  # fmt: skip
    plain = compile_model(golden, groups=groups, codec=codec, **kw)
    assert bool(compiled.compact) == (layout != "standard")
    jobs = spec.heads // min(groups, spec.heads)  # P x V jobs a block (a chunk's, compact)
    prog = compiled.program
    for ins, nxt in zip(prog, prog[1:], strict=False):  # CHAIN wherever the next one fits
        if ins.op in isa.CHAIN_OPS:
            assert isa.chained(ins) == (isa.chain_fits(ins, nxt) is None), ins
    roles = [chain_role(i.label) for i in prog if isa.chained(i)]
    assert roles.count("attn.softmax") == spec.depth * jobs
    norm2 = sum(i.label.endswith("norm2") for i in plain.program)  # a token tile's each
    assert roles.count("norm2") == norm2 and roles.count("norm") == 1
    # (spilling: LN1 runs per token tile, each but the last followed by the next tile's LOAD)
    norm1 = sum(a.label.endswith("norm1") and b.op is isa.Op.MATMUL
                for a, b in zip(plain.program, plain.program[1:], strict=False))  # fmt: skip
    assert roles.count("norm1") == norm1 == spec.depth
    softmaxes = [i for i in plain.program if i.op is isa.Op.SOFTMAX]
    assert len(prog) == len(plain.program) + spec.depth * jobs - len(softmaxes)
    assert_program_equals_golden(compiled, codec, golden, patches[:4])
