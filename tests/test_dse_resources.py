"""The resource model's memories (issue 19): URAM288 next to BRAM36, the explorer's choice of
memory per buffer, the scratchpad's URAM in Yosys, and designs beyond their board refused."""

from __future__ import annotations

import pytest

from vitaccel.boards import get_budget
from vitaccel.cli import main
from vitaccel.design import ArrayConfig, Design, DesignError, parse_design, save_design
from vitaccel.dse import resources as res


def test_uram288_tiles_like_yosys():
    # Yosys' $__XILINX_URAM_ is 4096 x 72 with 8-bit byte enables: 128-bit words take two
    assert res.memory_uram288(4096, 72) == 1
    assert res.memory_uram288(4096, 128) == 2
    assert res.memory_uram288(4097, 128) == 4
    assert res.memory_uram288(65536, 128) == 32  # the ISA's whole 1 MiB scratchpad
    assert res.memory_uram288(16, 8) == 1


def test_place_buffers_saves_the_most_bram_per_uram_first():
    kv260 = get_budget("kv260")  # 64 URAM288, 54.4 at 85%
    buffers = {
        "spm": (1, 65536, 128),  # 32 URAM for 240 BRAM36: 7.5 per URAM
        "x": (4, 2048, 128),  # 8 URAM for 32 BRAM36: 4 per URAM
        "out": (1, 128, 8),  # 1 URAM for 0.5 BRAM36: too little to pay
        "w": (16, 4096, 72),  # 16 URAM for 128 BRAM36: 8 per URAM, first
    }
    placed = res.place_buffers(buffers, kv260)
    assert placed == {"spm": "uram", "x": "bram", "out": "bram", "w": "uram"}  # 48 URAM
    assert res.place_buffers(buffers, kv260, max_util=1.0)["x"] == "uram"  # 56 <= 64
    assert set(res.place_buffers(buffers, get_budget("zcu102")).values()) == {"bram"}


def test_design_resources_count_the_scratchpad_where_it_is():
    bram = Design(board="kv260", model="deit-tiny", spm_kib=512)
    uram = bram.model_copy(update={"spm_memory": "uram"})
    words = 512 * 1024 // 16
    on_bram, on_uram = (res.design_resources(d)["total"] for d in (bram, uram))
    assert on_bram.bram36 - on_uram.bram36 == pytest.approx(res.spm_bram36(words)) == 120
    assert (on_bram.uram, on_uram.uram) == (0, res.memory_uram288(words, 128)) == (0, 16)
    assert on_uram.lut == on_bram.lut and on_uram.dsp48e2 == on_bram.dsp48e2


def test_x_banks_on_uram_move_from_bram_to_uram():
    bram = Design(board="kv260", model="deit-base", spm_kib=1024, spm_memory="uram",
                  array={"groups": 1, "rows": 2, "cols": 4, "vector": 16},
                  input_buffer_kib=512)  # fmt: skip
    uram = bram.model_copy(update={"x_memory": "uram"})
    x_words = res.engine_buffers(bram)["x_words"]  # 512 KiB over 2 banks of 16 bytes
    assert x_words == 16384
    on_bram, on_uram = (res.design_resources(d)["total"] for d in (bram, uram))
    x_bram = 2 * res.memory_bram36(x_words, 128)
    assert on_bram.bram36 - on_uram.bram36 == pytest.approx(x_bram) and x_bram == 120
    assert on_uram.uram - on_bram.uram == res.engine_x_uram(1, 2, 16, x_words) == 2 * 8


def test_explorer_places_spm_and_x_banks_jointly():
    kv260 = get_budget("kv260")  # 64 URAM288, 54.4 at 85%

    def place(groups, rows, x_words, vector=16, budget=kv260):
        return res.design_memories(groups=groups, rows=rows, vector=vector, x_words=x_words,
                                   spm_words=65536, budget=budget)  # fmt: skip

    # DeiT-B on a 1x1x2x16 array: its X bank (37824 x 128 bit) is 142.5 BRAM36 or 20
    # URAM288, the 1 MiB scratchpad 240 or 32: both fit (52)
    assert place(1, 1, 37824) == {"spm": "uram", "x": "uram"}
    # 16 banks of 1200 words save 3 BRAM36 per URAM, the scratchpad 7.5: it goes first
    assert place(2, 8, 1200) == {"spm": "uram", "x": "bram"}
    # 32 banks 64 bits wide save 8 per URAM (one URAM, 8 BRAM36 each): they go first
    assert place(4, 8, 4096, vector=8) == {"spm": "bram", "x": "uram"}
    assert place(1, 1, 37824, budget=get_budget("zcu102")) == {"spm": "bram", "x": "bram"}


@pytest.mark.parametrize("field", ["spm_memory", "x_memory"])
def test_uram_needs_a_board_with_uram(field):
    with pytest.raises(DesignError) as err:
        parse_design({"board": "zcu102", field: "uram"})
    assert f"{field} 'uram' needs UltraRAM; board zcu102 has none" in str(err.value)
    assert "zcu104, kv260" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DesignError, match=f"design field '{field}'"):
        parse_design({field: "flash"})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"board": "kv260", "model": "deit-tiny", "spm_kib": 1024},
            "design field 'spm_kib' / 'input_buffer_kib' / 'weight_buffer_kib': the buffers "
            "need 278 BRAM36 (engine 32, layernorm 6, spm 240), board kv260 has 144 "
            "(or spm_memory / x_memory 'uram')",
        ),
        (
            {"board": "zcu104", "model": "deit-tiny", "input_buffer_kib": 8192},
            "board zcu104 has 312",
        ),
    ],
)
def test_design_beyond_the_board_is_refused_in_one_line(fields, message):
    with pytest.raises(DesignError) as err:
        res.check_fits(Design(**fields))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_uram_beyond_the_board_and_weights_beyond_ddr(monkeypatch):
    from vitaccel.boards import devices

    small = Design(board="kv260", model="deit-tiny", spm_kib=1024, spm_memory="uram")
    assert res.check_fits(small)["total"].uram == 32
    # the same 32 URAM288 on a K26 with 16 of them, and DeiT-B's weights in a 64 KiB DDR
    few = devices.DEVICES["kv260"].__class__(
        **{**devices.DEVICES["kv260"].__dict__, "uram": 16, "ddr_gib": 1}
    )
    monkeypatch.setitem(devices.DEVICES, "kv260", few)
    with pytest.raises(DesignError) as err:
        res.check_fits(small)
    assert str(err.value) == (
        "design field 'spm_memory' / 'x_memory': the buffers on URAM need 32 URAM288 "
        "(spm 32), board kv260 has 16"
    )
    monkeypatch.setattr(type(few), "ddr_bytes", property(lambda b: 64 << 10))
    with pytest.raises(DesignError, match=r"design field 'model': deit-tiny's weights take"):
        res.check_fits(small.model_copy(update={"spm_memory": "bram", "spm_kib": 64}))


def test_weights_and_scratch_region_beyond_ddr(monkeypatch, tmp_path, capsys):
    """A spilling design's DDR scratch region (the residual stream) counts against the
    board's DDR beside the weights: one line naming both and the limit, exit 2."""
    from vitaccel.boards import devices
    from vitaccel.compile.schedule import scratch_bytes
    from vitaccel.dse.shapes import model_ops, spec_of

    spec = spec_of("deit-tiny")
    weights = sum(op.weights for op in model_ops(spec))
    spilling = Design(board="kv260", model="deit-tiny", spm_kib=240)  # compact needs 441
    assert res.spill_scratch_bytes(spec, 240 * 64) == scratch_bytes(spec) == 197 * 12 * 16
    assert res.spill_scratch_bytes(spec, 441 * 64) == 0
    board = devices.DEVICES["kv260"]
    monkeypatch.setattr(type(board), "ddr_bytes", property(lambda b: weights + 1024))
    res.check_fits(spilling.model_copy(update={"spm_kib": 441}))  # no scratch region: fits
    with pytest.raises(DesignError) as err:
        res.check_fits(spilling)
    assert str(err.value).startswith(
        "design field 'model': deit-tiny's weights take 0.01 GiB and its DDR scratch region "
        "0.04 MiB, board kv260's PS DDR holds"
    )
    path = save_design(spilling, tmp_path / "spill.json")
    with pytest.raises(SystemExit) as ex:
        main(["generate", "--design", str(path), "-o", str(tmp_path / "hw")])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DDR scratch region" in err
    assert not (tmp_path / "hw").exists()


def test_cli_generate_refuses_a_design_beyond_the_board(tmp_path, capsys):
    path = save_design(
        Design(board="kv260", model="deit-tiny", spm_kib=1024), tmp_path / "big.json"
    )
    with pytest.raises(SystemExit) as ex:
        main(["generate", "--design", str(path), "-o", str(tmp_path / "hw")])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "278 BRAM36" in err and "board kv260 has 144" in err
    assert not (tmp_path / "hw").exists()


# ---------------------------------------------------------------------------------------
# The URAM scratchpad in RTL: Yosys maps it to the URAM288 the model counts, and the
# Verilog Verilator runs is the block-RAM design's but for the attribute
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_yosys_maps_the_uram_scratchpad_to_the_predicted_uram288():
    """A 4096-word scratchpad marked ``ram_style = "ultra"``: Yosys ``synth_xilinx -family
    xcup`` infers the URAM288 the resource model predicts and no block RAM (~1.5 CPU-min
    uncached; the count is cached by Verilog hash)."""
    from amaranth.back import verilog

    from vitaccel.flow.yosys import synth_xcup
    from vitaccel.rtl.spm.scratchpad import Scratchpad

    words = 4096
    text = verilog.convert(Scratchpad(words=words, memory="uram"), name="spm_uram")
    counts = synth_xcup(text, "spm_uram", lut_depth=False)
    print(f"\nYosys xcup, {words}-word URAM scratchpad: {counts.as_dict()}")
    predicted = res.spm_usage(words, "uram")
    assert counts.uram == predicted.uram == 2
    assert counts.bram36 == predicted.bram36 == 0


@pytest.mark.slow
def test_yosys_maps_the_uram_x_banks_to_the_predicted_uram288():
    """A 1x2x2x8 engine with 4096-word X banks on URAM: Yosys infers one URAM288 per bank
    (64-bit words) as the model predicts, and its W and output buffers stay in LUT RAM as
    modelled (~1 CPU-min uncached)."""
    from vitaccel.engine_host import EngineParams
    from vitaccel.flow.yosys import synth_xcup
    from vitaccel.rtl.matmul import engine_verilog

    p = EngineParams(groups=1, rows=2, cols=2, vector=8, x_words=4096, max_ksteps=4,
                     x_memory="uram")  # fmt: skip
    counts = synth_xcup(engine_verilog(p, "eng_uram"), "eng_uram", lut_depth=False)
    print(f"\nYosys xcup, 1x2x2x8 engine, X banks on URAM: {counts.as_dict()}")
    bram = res.engine_bram36_parts(1, 2, 2, 8, 2, 4096, 4, p.out_depth, "uram")
    assert counts.uram == res.engine_x_uram(1, 2, 8, 4096) == 2
    assert counts.bram36 == sum(bram.values()) == 0


@pytest.mark.slow
def test_yosys_counts_the_uram_of_a_whole_top_as_predicted():
    """The default digits-vit design on KV260 with its scratchpad and X banks on URAM: the
    whole top through Yosys xcup (~5 CPU-min uncached) holds the URAM288 the resource model
    predicts (8 for the 256 KiB scratchpad, 1 per 2048 x 64-bit X bank) and its BRAM36
    within 10%."""
    from vitaccel.flow.build import default_design
    from vitaccel.flow.yosys import synth_xcup
    from vitaccel.rtl.top import top_verilog

    design = default_design("digits-vit", "kv260").model_copy(
        update={"spm_memory": "uram", "x_memory": "uram"}
    )
    predicted = res.design_resources(design)["total"]
    counts = synth_xcup(top_verilog(design), "vitaccel_top", lut_depth=False)
    print(f"\nYosys xcup, whole top with URAM: {counts.as_dict()}; model {predicted.as_dict()}")
    assert counts.uram == predicted.uram == 8 + 4
    assert counts.bram36 == pytest.approx(predicted.bram36, rel=0.1)


def _uram_lines(bram: str, uram: str) -> list[str]:
    """The lines ``uram`` adds to ``bram``; asserts it removes none and changes nothing else."""
    a, b = bram.splitlines(), uram.splitlines()
    marked = [i for i, line in enumerate(b) if line.strip() == '(* ram_style = "ultra" *)']
    assert [line for i, line in enumerate(b) if i not in marked] == a
    # the memory each attribute marks: the next line that is not an attribute
    return [next(x.strip() for x in b[i + 1 :] if not x.strip().startswith("(*")) for i in marked]


def test_uram_units_are_the_bram_units_but_for_the_attribute():
    """What Verilator simulates of a URAM-backed memory: the block-RAM Verilog plus one
    ``(* ram_style = "ultra" *)`` line on the array (Verilator ignores attributes), so a
    bit-exact run of the one is a bit-exact run of the other; the slow-marked test below
    runs a whole URAM design anyway."""
    from amaranth.back import verilog

    from vitaccel.engine_host import EngineParams
    from vitaccel.rtl.matmul import engine_verilog
    from vitaccel.rtl.spm.scratchpad import Scratchpad

    spm = [verilog.convert(Scratchpad(words=64, memory=k), name="spm") for k in ("bram", "uram")]
    assert _uram_lines(*spm) == ["reg [127:0] mem [63:0];"]
    p = EngineParams(groups=1, rows=2, cols=2, vector=4, x_words=64, max_ksteps=4)
    uram = EngineParams(**{**p.__dict__, "x_memory": "uram"})
    assert _uram_lines(engine_verilog(p), engine_verilog(uram)) == [
        f"reg [31:0] xbank_g0_r{r} [63:0];" for r in range(2)
    ]


def test_design_memories_reach_the_rtl():
    from vitaccel.rtl.top import TopParams

    design = Design(board="kv260", spm_memory="uram", x_memory="uram")
    assert TopParams(design).engine.x_memory == "uram"
    assert TopParams(Design()).engine.x_memory == "bram"


@pytest.mark.slow
def test_uram_design_bit_exact_on_verilator_with_pauses():
    """digits-vit images on the default design with its scratchpad and X banks on URAM (kv260), random
    pauses on every AXI channel: bit-exact against the golden model (native harness)."""
    from vitaccel.flow.build import default_design
    from vitaccel.flow.model_sim import simulate_model

    design = default_design("digits-vit", "kv260").model_copy(
        update={"spm_memory": "uram", "x_memory": "uram", "name": "digits-uram"}
    )
    from vitaccel.rtl.top import top_verilog

    marked = _uram_lines(top_verilog(default_design("digits-vit", "kv260")), top_verilog(design))
    assert len(marked) == 1 + design.array.groups * design.array.rows  # the SPM, each X bank
    out = simulate_model("digits-vit", design=design, images=4, pause=0.2, seed=19)
    print(
        f"\ndigits on a URAM scratchpad and X banks (native RTL): bit-exact {out['bit_exact']}, "
        f"{out['cycles_per_image']:.0f} cycles/image with pauses, build {out['build_s']:.0f} s"
    )
    assert out["bit_exact"], out["first_mismatch"]


def test_word_writer_resources_only_with_the_word_path():
    """The output writer's word path is priced (Yosys calibration of the writer alone) on a
    banked all-W8 array of whole-word groups, and appears in a design's parts; nothing
    otherwise."""
    Usage = res.Usage
    assert res.word_writer_resources(3, 16, 4) == Usage(lut=1713 + 4356, ff=655 + 142)
    assert res.word_writer_resources(3, 16, 1) == Usage()
    assert res.word_writer_resources(3, 8, 4) == Usage()
    assert res.word_writer_resources(2, 16, 4, w4_share=0.5) == Usage()
    wide = Design(array=ArrayConfig(groups=3, rows=5, cols=16, vector=16), datapath_bytes=64)
    parts = res.design_resources(wide)["parts"]
    assert parts["word_writer"] == Usage(lut=1713 + 4356, ff=655 + 142)
    narrow = wide.model_copy(update={"datapath_bytes": 16})
    assert "word_writer" not in res.design_resources(narrow)["parts"]


@pytest.mark.parametrize(
    # (groups, cols, W8 cols) and the Yosys xcup LUT / FF of MappedOutWriter over
    # MatmulOutWriter (one bank), each synthesised alone (the constants' comment)
    "groups, cols, cols_w8, lut, ff",
    [
        (1, 8, 4, 8, 399),
        (1, 16, 8, 760, 813),
        (1, 22, 16, 2318, 1286),
        (2, 12, 8, 2034, 1388),
        (2, 24, 16, 5531, 2816),
    ],
)
def test_mapped_writer_resources_against_yosys(groups, cols, cols_w8, lut, ff):
    """A mixed array's output writer is priced within 600 LUT / 80 FF of its Yosys counts
    (0.2 % of ZCU102's LUTs), and appears in the design's parts; an all-W8 array has
    none."""
    share = (cols - cols_w8) / cols
    got = res.mapped_writer_resources(groups, cols, share)
    assert abs(got.lut - lut) < 600 and abs(got.ff - ff) < 80, (got, lut, ff)
    assert res.mapped_writer_resources(groups, cols, 0.0) == res.Usage()
    array = ArrayConfig(groups=groups, rows=2, cols=cols, vector=8, w4_share=share)
    assert res.design_resources(Design(array=array))["parts"]["mapped_writer"] == got


def test_mixed_w_spm_writer_resources_against_yosys():
    """A mixed top whose W8 columns are whole words of a banked scratchpad adds the W_SPM
    jobs' all-W8 writer (rtl/spm MixedOutWriter): at 2 x (16 W8 + 4 W4), 4 banks, priced
    within 10 % of Yosys xcup's MixedOutWriter over MappedOutWriter (+8,744 LUT, +5,860 FF;
    the constants' comment); the design's parts hold it; one bank or 12 W8 columns add
    nothing (no word path: MappedOutWriter alone)."""
    share = 4 / 20
    extra = res.mapped_writer_resources(2, 20, share, 4) - res.mapped_writer_resources(2, 20, share)
    assert abs(extra.lut / 8744 - 1) < 0.1 and abs(extra.ff / 5860 - 1) < 0.1, extra
    array = ArrayConfig(groups=2, rows=8, cols=20, vector=16, w4_share=share)
    parts = res.design_resources(Design(array=array, datapath_bytes=64))["parts"]
    assert parts["mapped_writer"] == res.mapped_writer_resources(2, 20, share, 4)
    assert "word_writer" not in parts
    assert res.mapped_writer_resources(2, 16, 0.25, 4) == res.mapped_writer_resources(2, 16, 0.25)
