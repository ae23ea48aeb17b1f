"""Design-space exploration: the models against the code they mirror, the search, the outputs.

Fast tests only check the models in pure Python (and against the controller's own formulas);
the Yosys and Verilator comparisons are ``vitaccel.verify.validate`` (tests/test_verify.py).
"""

import itertools
import json
import os
import random
import subprocess
import sys
import time

import pytest

from vitaccel import isa
from vitaccel.design import ArrayConfig, Design, NonlinearConfig, load_design
from vitaccel.dse import clock as clock_rule
from vitaccel.dse import resources as res
from vitaccel.dse import sensitivity as sens
from vitaccel.dse.cost import (
    estimate,
    job_nsteps,
    nonlinear_cycles,
)
from vitaccel.dse.search import InfeasibleError, explore, pareto_front
from vitaccel.dse.shapes import block_ops, linear_layer_names, model_ops
from vitaccel.models.specs import get_spec
from vitaccel.verify import calibrate

# ---------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------


def test_ops_follow_the_golden_model():
    from vitaccel.models.golden import linear_layer_names as golden_names

    for model in ("digits-vit", "deit-tiny", "deit-base"):
        spec = get_spec(model)
        assert linear_layer_names(model) == golden_names(spec.depth)
    ops = block_ops("deit-small")
    kinds = [op.kind for op in ops]
    assert kinds == [
        "layernorm", "qkv", "qk", "softmax", "sv", "proj", "residual",
        "layernorm", "fc1", "gelu", "fc2", "residual",
    ]  # fmt: skip
    # DeiT-Base: ~17.6 GMAC per image, 86 M weights in the encoder + embed + head
    base = model_ops("deit-base")
    assert sum(op.macs for op in base) == pytest.approx(17.56e9, rel=0.01)
    assert sum(op.weights for op in base) == pytest.approx(86.4e6, rel=0.01)


# ---------------------------------------------------------------------------------------
# cycle model
# ---------------------------------------------------------------------------------------


def test_explorer_geometry_matches_the_engine():
    """The explorer and the RTL share engine_timing; what it must get right is the
    geometry it feeds it: W8/W4 columns and systolic units of every array shape."""
    from vitaccel.design import ArrayConfig, Design
    from vitaccel.dse.cost import geometry
    from vitaccel.engine_host import EngineParams

    checked = 0
    for g, r, c, v, share in itertools.product(
        (1, 3), (1, 4), (2, 4, 6, 8), (4, 16), (0.0, 0.25, 0.5, 0.75)
    ):
        try:
            p = EngineParams(groups=g, rows=r, cols=c, vector=v, w4_share=share)
        except ValueError:
            continue
        if p.cols_w8 < 2:
            continue
        design = Design(
            model="digits-vit",
            array=ArrayConfig(groups=g, rows=r, cols=c, vector=v, w4_share=share),
        )
        geom = geometry(design)
        assert (geom.cols_w8, geom.cols_w4) == (p.cols_w8, p.cols_w4), (g, r, c, v, share)
        assert geom.cols_w8 // 2 + geom.cols_w4 == p.units
        checked += 1
    assert checked > 50


def test_job_steps_equal_the_column_plan():
    """The cost model's steps are the column plan's: of any rows when every row is W8 or
    every one may take a W4 column, of the seeded W4 rows in between (the steps then depend
    on where the W4 rows are: at least the column counts' bound, within 10 % above it)."""
    import numpy as np

    from vitaccel.dse.cost import window_steps
    from vitaccel.engine_host import EngineParams, plan_columns, seeded_w4_rows

    rng = random.Random(3)
    for _ in range(100):
        p = EngineParams(groups=rng.choice([1, 2, 4]), rows=4, cols=rng.choice([4, 8]),
                         vector=8, w4_share=rng.choice([0.0, 0.5]))  # fmt: skip
        n = rng.randint(1, 300)
        n4 = rng.choice([0, n, rng.randint(0, n)]) if p.cols_w4 else 0
        kind = np.zeros(n, dtype=np.int64)
        kind[rng.sample(range(n), n4)] = 1  # int4
        for heads in (False, True):
            k = np.zeros(n, dtype=np.int64) if heads else kind
            n8 = n if heads else n - n4
            got = job_nsteps(n, n8, p.groups, p.cols, p.cols_w8, heads=heads)
            if not heads:  # the explorer's scan of W4 row counts: the windows alone
                assert window_steps(n, n8, p.groups, p.cols, p.cols_w8) == got
            if n8 in (0, n) or not p.cols_w4:
                assert got == plan_columns(k, p, heads=heads).nsteps
            else:
                assert got == plan_columns(seeded_w4_rows(n, n8), p).nsteps
                bound = max(-(-n8 // (p.groups * p.cols_w8)), -(-n // (p.groups * p.cols)))
                assert bound <= got <= max(bound + 1, 1.1 * bound)


# What the compiler fills in when it packs the model into the DDR image (schedule.py).
_PACKED = {"ddr", "w_ddr", "recip_mult", "recip_shift", "out_shift", "eps_q", "in_shift", "mult",
           "shift", "residual_shift"}  # fmt: skip


def _assert_compiled_from_schedule(compiled, scheduled):
    """The compiled program is the scheduler's list (the one the cost model prices), with
    only the DDR offsets and the model's quantisation scalars filled in."""
    assert len(compiled.program) == len(scheduled)
    for got, want in zip(compiled.program, scheduled, strict=True):
        assert (got.op, got.flags, got.label) == (want.op, want.flags, want.label), want
        shape = {k: v for k, v in got.fields().items() if k not in _PACKED}
        assert shape == {k: v for k, v in want.fields().items() if k not in _PACKED}, want


def test_compiled_program_is_the_priced_schedule():
    from vitaccel.compile.compiler import compile_model
    from vitaccel.compile.schedule import program_for, schedule
    from vitaccel.flow.codec import codec_for
    from vitaccel.isa import residual_fusable
    from vitaccel.models.evaluate import prepare

    _, _, golden, _, _ = prepare("digits-vit", images=1)
    spec = get_spec("digits-vit")
    for groups, cols in ((1, 4), (2, 4), (3, 4), (2, 8)):
        design = Design(array=ArrayConfig(groups=groups, rows=4, cols=cols, vector=8))
        compiled = compile_model(golden, groups=groups, codec=codec_for(design))
        _assert_compiled_from_schedule(compiled, schedule(spec, design))
        assert res.spm_words(spec) == compiled.spm_words
    # a scratchpad too small for the standard layout: the compiler and the model go compact
    for groups, cols, spm_words in ((1, 4, 599), (2, 8, 640)):
        design = Design(array=ArrayConfig(groups=groups, rows=4, cols=cols, vector=8))
        compiled = compile_model(
            golden, groups=groups, codec=codec_for(design), spm_words=spm_words
        )
        assert compiled.compact
        fuse = residual_fusable(groups, cols)
        scheduled = program_for(spec, groups=groups, spm_words=spm_words, fuse_residual=fuse)
        _assert_compiled_from_schedule(compiled, scheduled)


def test_deit_base_design_compiles_and_its_program_equals_golden(
    tmp_path, assert_program_equals_golden
):
    """The explorer's DeiT-Base design compiles (the compact layout: 1,016 KiB of the ISA's
    1 MiB), its program is the schedule the cycle model prices, and on the ISA interpreter it gives the
    golden model's logits (random init, one image)."""
    from vitaccel.compile.compiler import compile_model
    from vitaccel.compile.schedule import chain_roles, schedule
    from vitaccel.flow.codec import codec_for
    from vitaccel.models.evaluate import prepare

    result = explore("deit-base", "zcu102", 30, out_dir=tmp_path)
    assert not any("cannot be compiled" in w for w in result["warnings"]), result["warnings"]
    design = load_design(result["design"])
    a = design.array
    _, _, golden, x, _ = prepare("deit-base", images=1)
    codec = codec_for(design)
    spec = get_spec("deit-base")
    # (the chains of the design in the default mode, as the flows compile it)
    compiled = compile_model(golden, groups=a.groups, codec=codec, spm_words=design.spm_kib * 64,
                             chain=chain_roles(spec, design))  # fmt: skip
    assert compiled.compact and compiled.spm_words <= design.spm_kib * 64 <= 1 << 16
    assert res.spm_words(spec) == compiled.spm_words
    _assert_compiled_from_schedule(compiled, schedule(spec, design))
    assert_program_equals_golden(compiled, codec, golden, golden.quantize_images(x))


def test_lane_tree_stages_follow_the_rtl_tree():
    """The cycle model's count of AILayerNorm's lane-sum stages is the RTL tree's latency."""
    from amaranth import Module, Signal

    from vitaccel.dse.cost import lane_tree_stages
    from vitaccel.rtl.common import tree_reduce

    for lanes in range(1, 65):
        items = [Signal(8) for _ in range(lanes)]
        _, latency = tree_reduce(Module(), items, lambda a, b: a + b, levels_per_stage=2)
        assert lane_tree_stages(lanes) == latency, lanes


def test_estimate_is_a_sum_of_instructions():
    # a scratchpad that holds DeiT-Tiny's standard layout (a smaller one spills: its token
    # tiles stream the weights again, so a larger array need not be faster)
    d = Design(model="deit-tiny", clock_mhz=200, array=ArrayConfig(groups=2, rows=8, cols=8, vector=16),
               nonlinear=NonlinearConfig(softmax_lanes=8, layernorm_lanes=8, gelu_lanes=8),
               spm_kib=448)  # fmt: skip
    est = estimate(d)
    assert est.cycles == sum(lc.cycles for lc in est.layers)
    assert est.fps == pytest.approx(200e6 / est.cycles)
    assert 0 < est.linear_utilisation() <= 1
    # wider units are never slower; a unit moves at most datapath_bytes a cycle (16 lanes
    # on the default 16-byte datapath, 32 / 64 on the banked ones)
    assert nonlinear_cycles("softmax", 591, 197, 16) < nonlinear_cycles("softmax", 591, 197, 4)
    assert nonlinear_cycles("gelu", 197, 768, 32) == nonlinear_cycles("gelu", 197, 768, 16)
    for width in (32, 64):
        for kind in ("softmax", "layernorm", "gelu"):
            wide = nonlinear_cycles(kind, 197, 768, width, width)
            assert wide < nonlinear_cycles(kind, 197, 768, 16, width)
            assert nonlinear_cycles(kind, 197, 768, 128, width) >= wide  # no faster
    # RESADD stays one 16-byte word a cycle
    assert nonlinear_cycles("residual", 197, 192, 64, 64) == nonlinear_cycles(
        "residual", 197, 192, 16
    )
    # a larger array is faster on the same model
    big = d.model_copy(update={"array": ArrayConfig(groups=4, rows=8, cols=8, vector=16)})
    assert estimate(big).cycles < est.cycles


# ---------------------------------------------------------------------------------------
# resources, clock rule, sensitivity
# ---------------------------------------------------------------------------------------


def test_memory_mapping():
    assert res.memory_bram36(64, 128) == 0  # LUT RAM
    assert res.memory_bram36(512, 72) == 1
    assert res.memory_bram36(512, 36) == 0.5
    assert res.memory_bram36(1024, 128) == 4
    assert res.memory_bram36(2048, 64) == 4


def test_dsp_count_is_structural():
    d = Design(model="deit-tiny", array=ArrayConfig(groups=2, rows=4, cols=8, vector=16))
    parts = res.design_resources(d)["parts"]
    per_col = res.calibration().get("engine_fit", {}).get("dsp_per_column", 2.0)
    assert parts["engine"].dsp48e2 == pytest.approx(2 * 4 * 4 * 16 + per_col * 2 * 8)
    mixed = d.model_copy(
        update={"array": ArrayConfig(groups=2, rows=4, cols=8, vector=16, w4_share=0.5)}
    )
    assert res.design_resources(mixed)["parts"]["engine"].dsp48e2 < parts["engine"].dsp48e2


def test_clock_rule():
    assert clock_rule.max_levels(300) < clock_rule.max_levels(200) < clock_rule.max_levels(100)
    clocks = (100.0, 125.0, 150.0, 200.0, 250.0, 300.0)
    assert clock_rule.allowed_clocks(clocks, 3)[0] == 300.0
    assert clock_rule.allowed_clocks(clocks, clock_rule.max_levels(200))[0] == 200.0
    assert clock_rule.allowed_clocks(clocks, 100) == []
    # a run carries its worst path as vitaccel.flow.paths weighs it; older runs the cells
    assert clock_rule.effective_levels({"path": {"levels": 9.25, "lut": 8, "carry": 5}}) == 9.25
    assert clock_rule.effective_levels({"path": {"lut": 2, "carry": 12, "muxf": 1}}) == 6


def test_calibrated_units_meet_300_mhz_at_the_top_lane_counts():
    """The nonlinear units at the lane counts the top takes (powers of two, up to the
    explorer's 64) are within 300 MHz's levels in the stored calibration (issue #17:
    E2Softmax was 8.25 at 8-16 lanes, and 12.0 at 64 before its max tree took a third
    stage); a re-pipelining that regresses shows here without a Yosys run."""
    from vitaccel.dse.search import SearchSpace

    depth = res.calibration()["depth_runs"]
    limit = clock_rule.max_levels(300)
    for unit in ("softmax", "layernorm", "gelu"):
        assert {1, 16, 32, max(SearchSpace.lanes)} <= {int(n) for n in depth[unit]}, unit
        for lanes, levels in depth[unit].items():
            if int(lanes) & (int(lanes) - 1) == 0:
                assert levels <= limit, (unit, lanes, levels, limit)


def test_unit_levels_take_the_next_calibrated_lanes_up_and_refuse_beyond():
    """The clock rule's unit depth: the run at the next calibrated lane count up; a lane
    count above every run is an error naming the unit's field, never the widest run's figure
    (a 64-lane E2Softmax is not a 16-lane one); a unit without runs has no bound."""
    depth = {"softmax": {"1": 5.25, "4": 6.5, "16": 5.5}}
    assert clock_rule.unit_levels(depth, "softmax", 1) == 5.25
    assert clock_rule.unit_levels(depth, "softmax", 3) == 6.5
    assert clock_rule.unit_levels(depth, "softmax", 16) == 5.5
    with pytest.raises(ValueError, match=r"softmax_lanes=32: .*calibrated lanes: 1, 4, 16"):
        clock_rule.unit_levels(depth, "softmax", 32)
    assert clock_rule.unit_levels(depth, "gelu", 64) == 0.0


def test_mixed_designs_clock_follows_the_mapped_writer_run(monkeypatch):
    """Issue #18: a mixed W4/W8 array writes through rtl/spm MappedOutWriter, which no
    all-W8 top run contains; the clock rule takes its calibrated run (``mixed_writer``) for
    designs with ``w4_share > 0`` only: in the rule, in the explorer's candidates (whose
    FPS is priced at that clock) and in ``vitaccel report design``'s check."""
    from vitaccel.dse.search import SearchSpace

    stored = res.calibration()
    depth = stored["depth_runs"]
    for g, c, c8 in calibrate.WRITER_DEPTH:  # every writer run, by its shape
        run = stored["runs"][f"writer mapped g{g} c{c} w8c{c8}"]
        key = clock_rule.writer_key(g, c, c8)
        assert depth["mixed_writer"][key] == clock_rule.effective_levels(run), key
    lanes = (16, 16, 16)
    shape = (2, 20, 16)  # the DeiT-Base mixed answer of s25-map
    plain = clock_rule.design_levels(depth, lanes, mixed=None)
    assert clock_rule.design_levels(depth, lanes, mixed=shape) == max(
        plain, clock_rule.writer_levels(depth, *shape)
    )
    # a writer deeper than everything else sets a mixed design's clock, never a W8 one's
    deep = {**depth, "mixed_writer": {k: clock_rule.max_levels(125) for k in depth["mixed_writer"]}}
    at = clock_rule.allowed_clocks
    assert at(CLOCKS, clock_rule.design_levels(deep, lanes, shape))[0] == 125
    assert at(CLOCKS, clock_rule.design_levels(deep, lanes, None))[0] > 125
    space = SearchSpace(groups=(1,), rows=(4,), cols=(16,), vector=(16,), w4_cols=(4,),
                        lanes=(16,), datapath_bytes=(16,))  # fmt: skip
    _capped_pool_clocks(monkeypatch, {**stored, "depth_runs": deep}, space,
                        lambda c: c.w4_share > 0, 125.0)  # fmt: skip


def test_mixed_writer_levels_by_select_class():
    """Issue #18: ABC's depth of MappedOutWriter is not monotone in its positions (groups x
    cols): the rule takes the design's own run, else the worst run of its position-select
    class (4:1 levels of a groups*cols-way select), the next class up without one, and
    refuses a writer with more positions than every run (its selects widen)."""
    runs = {"1x8x4": 5.0, "1x16x8": 6.0, "1x22x16": 7.0, "2x20x16": 6.25, "2x24x16": 6.5}
    depth = {"mixed_writer": runs}
    assert clock_rule.writer_levels(depth, 1, 4, 2) == 6.0  # 4 positions: class 1, none: up
    assert clock_rule.writer_levels(depth, 1, 12, 8) == 6.0  # 12 and 16: class 2
    assert clock_rule.writer_levels(depth, 1, 8, 4) == 5.0  # its own run
    assert clock_rule.writer_levels(depth, 2, 20, 16) == 6.25
    assert clock_rule.writer_levels(depth, 2, 20, 12) == 7.0  # 17..64: the worst, g1 c22's
    assert clock_rule.writer_levels(depth, 1, 17, 16) == 7.0
    assert clock_rule.writer_levels(depth, 2, 24, 16) == 6.5
    with pytest.raises(ValueError, match=r"groups x cols=2x25: 50 positions, above every"):
        clock_rule.writer_levels(depth, 2, 25, 16)
    assert clock_rule.writer_levels({}, 12, 40, 24) == 0.0  # no data, no bound
    # the explorer leaves such designs out (their clock is unknown)
    lanes = (16, 16, 16)
    with pytest.raises(ValueError, match="MappedOutWriter"):
        clock_rule.design_levels(depth, lanes, (3, 20, 16))
    assert clock_rule.design_levels(depth, lanes, None) == 0.0


def test_explorer_leaves_out_mixed_writers_above_every_run(monkeypatch):
    """A mixed candidate whose writer has more positions than every calibrated run has no
    known clock: the explorer leaves it out (and keeps it with a run that covers it)."""
    from vitaccel.dse.search import SearchSpace, search

    stored = res.calibration()
    space = SearchSpace(groups=(1,), rows=(4,), cols=(16,), vector=(16,), w4_cols=(4,),
                        lanes=(16,), datapath_bytes=(16,))  # fmt: skip

    def pool(runs):
        depth = {**stored["depth_runs"], "mixed_writer": runs}
        monkeypatch.setattr(res, "calibration", lambda: {**stored, "depth_runs": depth})
        return search("digits-vit", "zcu102", space=space, cache=False)["pool"]

    small = pool({"1x8x4": 6.0})  # 20 positions above 8
    assert small and not [c for c in small if c.w4_share > 0]
    assert [c for c in pool({"1x8x4": 6.0, "1x22x16": 6.0}) if c.w4_share > 0]


CLOCKS = (100.0, 125.0, 150.0, 200.0, 250.0, 300.0)


def _capped_pool_clocks(monkeypatch, calibration, space, capped, clock):
    """The explorer's pool on ``calibration``: the candidates ``capped`` picks run at
    ``clock`` and are priced there, the others faster (both kinds present)."""
    from vitaccel.dse.search import search

    monkeypatch.setattr(res, "calibration", lambda: calibration)
    pool = search("digits-vit", "zcu102", space=space, cache=False)["pool"]
    low = [c for c in pool if capped(c)]
    rest = [c for c in pool if not capped(c)]
    assert low and rest
    assert {c.clock_mhz for c in low} == {clock}
    assert min(c.clock_mhz for c in rest) > clock
    assert all(c.fps == pytest.approx(clock * 1e6 / c.cycles) for c in low)
    return pool


def test_multi_group_word_path_designs_clock_follows_the_word_top_run(monkeypatch):
    """Issue #17: a top whose output writer puts several groups on the bank-parallel word
    path (64-byte datapath, whole-word columns: the DeiT designs) holds paths no one-group
    top run has (the writer's group registers, heads-mode pieces); the clock rule takes the
    two-group word-path top's run (``word_top``, calibrate.TOP_DEPTH) for such designs
    only: in the rule and in the explorer's candidates, priced at that clock."""
    from vitaccel.dse.search import SearchSpace

    stored = res.calibration()
    key = "top g2 r2 c16 v8 lanes16 spm64 digits-vit dp64"
    assert key in stored["runs"]  # calibrate.TOP_DEPTH's two-group run
    depth = stored["depth_runs"]
    assert depth["word_top"] == clock_rule.effective_levels(stored["runs"][key])
    assert clock_rule.allowed_clocks((250.0, 300.0), depth["word_top"])[0] == 300.0  # s24-ow
    assert clock_rule.word_groups(2, 16, 4) and clock_rule.word_groups(3, 32, 2)
    assert not clock_rule.word_groups(1, 16, 4)  # one group
    assert not clock_rule.word_groups(2, 16, 1)  # one bank: no word path
    assert not clock_rule.word_groups(2, 8, 4)  # columns not whole words
    lanes = (16, 16, 16)
    deep = {**depth, "word_top": clock_rule.max_levels(200)}
    at = clock_rule.allowed_clocks
    assert at(CLOCKS, clock_rule.design_levels(deep, lanes, False, True))[0] == 200
    assert at(CLOCKS, clock_rule.design_levels(deep, lanes, False, False))[0] > 200
    space = SearchSpace(groups=(1, 2), rows=(2,), cols=(16,), vector=(8,), w4_cols=(0,),
                        lanes=(16,), datapath_bytes=(64,))  # fmt: skip
    _capped_pool_clocks(monkeypatch, {**stored, "depth_runs": deep}, space,
                        lambda c: c.groups > 1, 200.0)  # fmt: skip


def test_two_port_word_path_designs_clock_follows_the_two_port_top_run(monkeypatch):
    """Issue #17: an all-W8 top with several groups on the word path and a W builder per
    weight port (the DeiT bench designs: cost.spm_w_builders) has one more client of the
    scratchpad's read arbiter a port and the builders beside the writer: the clock rule
    takes the 2-port two-group word-path top's run (calibrate.TOP_DEPTH, ``word_top_ports``
    "2") for them, with the 1-port run (:func:`clock.word_top_levels`); more ports than any
    run are refused, and the explorer leaves such tops out rather than guess their clock."""
    from vitaccel.dse.search import SearchSpace

    stored = res.calibration()
    key = "top g2 r2 c16 v8 lanes16 spm64 digits-vit ports2 dp64"
    assert key in stored["runs"]  # calibrate.TOP_DEPTH's 2-port run
    depth = stored["depth_runs"]
    assert depth["word_top_ports"] == {"2": clock_rule.effective_levels(stored["runs"][key])}
    lanes = (16, 16, 16)
    two = clock_rule.design_levels(depth, lanes, False, True, 2)
    assert two == max(clock_rule.design_levels(depth, lanes, False, True, 1),
                      depth["word_top_ports"]["2"])  # fmt: skip
    deep = {**depth, "word_top_ports": {"2": clock_rule.max_levels(200)}}
    at = clock_rule.allowed_clocks
    assert at(CLOCKS, clock_rule.design_levels(deep, lanes, False, True, 2))[0] == 200
    assert at(CLOCKS, clock_rule.design_levels(deep, lanes, False, True, 1))[0] > 200
    assert at(CLOCKS, clock_rule.design_levels(deep, lanes, False, False, 2))[0] > 200
    with pytest.raises(ValueError, match=r"weight_ports=4: .*calibrated weight ports: 2"):
        clock_rule.design_levels(deep, lanes, False, True, 4)
    space = SearchSpace(groups=(1, 2), rows=(2,), cols=(16,), vector=(8,), w4_cols=(0,),
                        lanes=(16,), datapath_bytes=(64,))  # fmt: skip
    pool = _capped_pool_clocks(monkeypatch, {**stored, "depth_runs": deep}, space,
                               lambda c: c.groups > 1 and c.weight_ports == 2, 200.0)  # fmt: skip
    assert {c.weight_ports for c in pool if c.groups > 1} == {1, 2}  # 4 ports: no run


@pytest.mark.skipif(not sens.DATA_PATH.is_file(), reason="sensitivity data not generated")
def test_sensitivity_data():
    data = sens.load()
    for model in ("digits-vit", "deit-tiny", "deit-small", "deit-base"):
        for kind in ("int4", "pot4"):
            entry = sens.model_entry(model, kind)
            spec = get_spec(model)
            assert len(entry["layers"]) == 4 * spec.depth
            for curve in entry["layers"].values():
                assert curve[0] == 0 and all(b >= a for a, b in zip(curve, curve[1:], strict=False))
    assert data["models"]["digits-vit"]["int4"]["method"] == "measured"
    assert data["models"]["deit-base"]["int4"]["method"] == "proxy"
    assert sens.predict("digits-vit", {})["added_error"] == 0
    one = sens.predict("deit-small", {"blocks.0.mlp.fc1": 0.5})
    two = sens.predict("deit-small", {"blocks.0.mlp.fc1": 0.5, "blocks.1.mlp.fc1": 1.0})
    assert 0 < one["added_error"] < two["added_error"]
    # additivity on digits-vit: the sum of single-layer errors vs the uniform-ratio runs
    for check in data["models"]["digits-vit"]["int4"]["uniform_check"]:
        assert check["predicted_error"] == pytest.approx(check["measured_error"], rel=0.6, abs=3e-4)


def test_agreement_cost_measured_on_digits_and_scaled_for_the_zoo():
    """Each layer's W4 cost in top-1 agreement with W8A8: measured on the golden model for
    digits-vit (trained weights); the zoo's (synthetic weights) from their error curves
    times the points per unit error fitted on the measurement, and said so."""
    agree = sens.model_entry("digits-vit", "int4")["agreement"]
    assert agree["weights"] == "trained" and agree["images"] >= 360
    spec = get_spec("digits-vit")
    assert set(agree["layers"]) == set(sens.model_entry("digits-vit", "int4")["layers"])
    assert len(agree["layers"]) == 4 * spec.depth and len(agree["uniform_check"]) == 4
    curves, how = sens.cost_curves("digits-vit", "int4")
    assert how.startswith("measured on the golden model")
    for layer, curve in curves.items():
        assert curve[0] == 0 and all(b >= a for a, b in zip(curve, curve[1:], strict=False))
        assert curve[-1] >= agree["layers"][layer][-1] - 1e-9  # never credits a dip
    assert sens.points_per_error("int4") > 0
    zoo, how = sens.cost_curves("deit-base", "int4")
    assert "synthetic" in how and len(zoo) == 48
    gain = sens.points_per_error("int4")
    entry = sens.model_entry("deit-base", "int4")
    for layer, curve in zoo.items():
        assert curve == pytest.approx([gain * e for e in entry["layers"][layer]])
    one = sens.predict_drop("deit-small", {"blocks.0.mlp.fc1": 0.5})
    two = sens.predict_drop("deit-small", {"blocks.0.mlp.fc1": 0.5, "blocks.1.mlp.fc1": 1.0})
    assert 0 < one["predicted_drop"] < two["predicted_drop"]
    d = sens.predict_drop("digits-vit", dict.fromkeys(curves, 0.5))
    assert d["measured_uniform"]["w4_ratio"] == 0.5  # the joint run the sum is checked on


def test_max_drop_bounds_the_chosen_w4_rows(capsys, tmp_path):
    from vitaccel.cli import main
    from vitaccel.dse.search import SearchSpace

    # a small space: each budget is its own pool
    space = SearchSpace(groups=(1, 2), rows=(4, 8), cols=(8, 16), vector=(16,))
    free = explore("deit-tiny", "zcu102", 50, precision="mixed", max_drop=0.0, space=space)
    assert free["fidelity"]["predicted_drop"] == 0
    res = explore("deit-tiny", "zcu102", 50, precision="mixed", max_drop=0.5, space=space)
    fid = res["fidelity"]
    assert fid["predicted_drop"] <= 0.5 + 1e-9 and fid["max_drop"] == 0.5
    assert "synthetic" in fid["method"]  # DeiT: no trained weights here, and the answer says so
    with pytest.raises(SystemExit) as ex:
        main(["dse", "--model", "deit-tiny", "--fps", "30", "--max-drop", "-1",
              "-o", str(tmp_path / "o")])  # fmt: skip
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-drop" in err and "0" in err


# ---------------------------------------------------------------------------------------
# search and outputs
# ---------------------------------------------------------------------------------------


def test_pareto_front_is_non_dominated():
    from vitaccel.dse.search import Candidate

    rng = random.Random(1)
    cands = [
        Candidate(
            1,
            1,
            2,
            4,
            0.0,
            "int4",
            (1, 1, 1),
            {},
            1,
            {"dsp48e2": rng.randint(1, 50), "lut": rng.randint(1, 50), "ff": 0, "bram36": 0},
            rng.choice([0.0, 0.0, rng.random()]),
            fps=rng.randint(1, 50),
        )  # fmt: skip
        for _ in range(400)
    ]

    def dominates(a, b):
        return (a.fps >= b.fps and a.usage["dsp48e2"] <= b.usage["dsp48e2"]
                and a.usage["lut"] <= b.usage["lut"] and a.error <= b.error
                and (a.fps, a.usage["dsp48e2"], a.usage["lut"], a.error)
                != (b.fps, b.usage["dsp48e2"], b.usage["lut"], b.error))  # fmt: skip

    front = pareto_front(cands)
    ids = {id(c) for c in front}
    for c in cands:
        if id(c) in ids:
            assert not any(dominates(o, c) for o in cands)
        else:
            assert any(dominates(o, c) or o is not c and id(o) in ids for o in cands)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dse")
    t0 = time.process_time()
    # the acceptance query: DeiT-Small at 100 FPS on ZCU102
    result = explore("deit-small", "zcu102", 100, out_dir=out)
    return result, out, time.process_time() - t0


def test_explore_writes_a_design_the_generator_accepts(small_run):
    result, out, cpu = small_run
    # A figure, not a check: CPU time depends on the machine and its load. The < 5 s target
    # is checked by the slow benchmark test_dse_query_cpu_benchmark below.
    print(f"\nDeiT-Small at 100 FPS on ZCU102: {cpu:.2f} s of CPU in this process")
    for key in (
        "fps",
        "target_fps",
        "design",
        "resources",
        "binding",
        "w4_ratio",
        "pareto",
        "plot",
    ):
        assert key in result
    assert result["fps"] >= result["target_fps"] == 100
    design = load_design(result["design"])
    assert design.model == "deit-small" and design.board == "zcu102"
    assert len(result["w4_ratio"]) == 48
    for kind, r in result["resources"].items():
        assert r["used"] <= 0.85 * r["available"] + 1e-6, kind
    from vitaccel.rtl.top import TopParams

    params = TopParams(design)  # the generator's reading of the design file
    x_need, ks_need = res.buffer_needs(
        get_spec("deit-small"), design.array.rows, design.array.vector
    )
    assert params.engine.x_words >= x_need and params.engine.max_ksteps >= ks_need
    from vitaccel.boards.vivado import AcceleratorInterface, check_hp_ports
    from vitaccel.compile.compiler import spm_layout

    # generate's own checks before it elaborates: the scratchpad layout, the board's HP ports
    spm_layout(get_spec("deit-small"), design.spm_kib * 1024 // 16)
    check_hp_ports(design.board, AcceleratorInterface(weight_ports=design.weight_ports))
    pareto = json.loads((out / "pareto.json").read_text())
    assert any(p["chosen"] for p in pareto["points"])
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # the explorer's prediction is the design report's
    from vitaccel.dse.report import design_report

    rep = design_report(result["design"])
    assert rep["fps"] == pytest.approx(result["fps"], rel=1e-6)
    assert {row["name"] for row in rep["layers"]} >= {"blocks.0.attn.qkv", "blocks.11.mlp.fc2"}


@pytest.mark.slow
def test_dse_query_cpu_benchmark(tmp_path):
    """Benchmark (slow): the issue's acceptance query, DeiT-Small at 100 FPS on ZCU102, from a
    cold candidate-pool cache in a fresh process, three runs; prints min / median / max CPU
    seconds and checks the median against the 5 s target."""
    code = (
        "import sys, time; from vitaccel.dse.search import explore; t0 = time.process_time();"
        "explore('deit-small', 'zcu102', 100, out_dir=sys.argv[1]);"
        "print(time.process_time() - t0)"
    )
    runs = []
    for k in range(3):
        env = {**os.environ, "VITACCEL_CACHE": str(tmp_path / f"cache{k}")}
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"dse{k}")], env=env,
                             check=True, capture_output=True, text=True).stdout  # fmt: skip
        runs.append(float(out.split()[-1]))
    runs.sort()
    print(f"\nDSE query CPU s (cold cache, fresh process): min {runs[0]:.2f}, "
          f"median {runs[1]:.2f}, max {runs[2]:.2f}")  # fmt: skip
    assert runs[1] < 5.0, runs


def test_human_output_shows_the_answer_and_every_layer(small_run):
    from rich.console import Console

    from vitaccel.dse.render import print_design_report, print_dse
    from vitaccel.dse.report import design_report

    result, out, _ = small_run
    con = Console(record=True, width=100)
    print_dse(result, con)
    text = con.export_text()
    assert f"{result['fps']:.1f} FPS" in text and f"binding: {result['binding']}" in text
    # the FPS is a stream's; the first image after a reset also loads the constants
    from vitaccel.design import load_design

    est = estimate(load_design(result["design"]))
    assert (result["cycles"], result["first_image_cycles"]) == (est.cycles, est.first_image_cycles)
    assert result["first_image_cycles"] > 0
    assert f"+{result['first_image_cycles']:,} for the constants" in " ".join(text.split())
    for needle in ("DSP48E2", "LUT", "FF", "BRAM36", str(out / "design.json"), "pareto.png"):
        assert needle in text, needle
    assert "cycles by cause" in text and "FPS with one limit lifted" in text
    assert abs(sum(result["cycles_by_cause"].values()) - result["cycles"]) <= 6  # rounding
    # the summary's cycles by bound are the cycle model's (the report's), summing to the total
    rep = design_report(result["design"])
    assert result["cycles_by_bound"] == rep["cycles_by_bound"]
    assert sum(result["cycles_by_bound"].values()) == result["cycles"]
    con = Console(record=True, width=80)
    print_design_report(rep, con)
    text = con.export_text()
    lines = text.splitlines()
    for row in rep["layers"]:  # one unwrapped line per layer, with its cycles and bound
        assert any(
            line.split()[:2] == [row["name"], f"{row['cycles']:,}"] and row["bound"] in line
            for line in lines
        ), row["name"]
    assert "NOT allowed" not in text and "total" in text


def test_report_design_names_the_buffers_on_uram(capsys, tmp_path):
    """`vitaccel report design` on a KV260 design with its scratchpad and X banks on URAM
    says so, with the URAM288 each takes (text and --json); on BRAM they are named so."""
    from vitaccel.cli import main
    from vitaccel.design import save_design
    from vitaccel.flow.build import default_design

    bram = default_design("digits-vit", "kv260").model_copy(
        update={"spm_memory": "bram", "x_memory": "bram"}
    )
    uram = bram.model_copy(update={"spm_memory": "uram", "x_memory": "uram"})
    parts = res.design_resources(uram)["parts"]
    spm, x = parts["spm"].uram, parts["engine"].uram
    assert spm > 0 and x > 0
    path = save_design(uram, tmp_path / "uram.json")
    assert main(["report", "design", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["memories"] == {
        "scratchpad": {"memory": "uram", "uram": spm},
        "input (X) buffers": {"memory": "uram", "uram": x},
    }
    assert rep["utilisation"]["uram"]["used"] == spm + x
    assert main(["report", "design", str(path)]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich may wrap the line
    assert (
        f"buffers: scratchpad on URAM288 ({spm:.0f}), input (X) buffers on URAM288 ({x:.0f}); "
        f"URAM288 {spm + x:.0f} of the board's 64" in text
    )
    assert main(["report", "design", str(save_design(bram, tmp_path / "bram.json"))]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "buffers: scratchpad on BRAM36, input (X) buffers on BRAM36; URAM288 0 of" in text


def test_infeasible_target_names_best_fps_and_binding():
    with pytest.raises(InfeasibleError) as err:
        explore("deit-base", "zcu102", 100000)
    e = err.value
    assert "\n" not in e.message and "binding" in e.message
    assert 0 < e.best_fps < 100000 and f"{e.best_fps:.1f}" in e.message
    from vitaccel.dse.search import LIFTED, SEARCH_SPACE

    assert e.binding in (*LIFTED, SEARCH_SPACE)
    detail = e.facts["binding_detail"]
    if e.binding != SEARCH_SPACE:  # named because lifting it buys more than 10 %
        assert detail["lifted_fps"][e.binding] == max(detail["lifted_fps"].values())
        assert detail["lifted_fps"][e.binding] > 1.1 * e.best_fps
        assert f"{detail['lifted_fps'][e.binding]:.1f} FPS" in e.message


def test_binding_names_x_load_apart_from_compute():
    """The diagnosis splits the best design's cycles by cause (dse.causes, the cycle model's
    own split): X load, writer, nonlinear and DDR each named, not hidden in "compute"."""
    from vitaccel.dse.causes import CAUSES, STALLS, cause_totals
    from vitaccel.dse.search import SearchSpace, diagnose, search, to_design

    # the 16-byte datapath, where the X load binds (issue 17's table)
    result = search("deit-tiny", "zcu102", space=SearchSpace(datapath_bytes=(16,)))
    d = diagnose(result)
    best = d["best"]
    assert set(d["cycles_by_cause"]) == set(CAUSES)
    assert sum(d["cycles_by_cause"].values()) == pytest.approx(1.0, abs=1e-3)
    spec = result["model"].spec
    design = to_design(best, spec.name, "zcu102", best.clock_mhz, spec)
    totals = cause_totals(design, budget=result["budget"])
    assert sum(totals.values()) == pytest.approx(best.cycles, abs=1e-6)
    for cause in STALLS:  # each wait priced on its own: the best design without it
        want = best.fps * best.cycles / (best.cycles - totals[cause])
        assert d["lifted_fps"][cause] == pytest.approx(want, abs=0.01)
    assert set(d["lifted_fps"]) >= {"DSP", "LUT", "FF", "BRAM", "clock", *STALLS}
    # DeiT-Tiny's best design waits longest for its X operand (issue 17's table: 33 %); what
    # binds may be the clock (the clock rule's depth_runs), but of the waits it is the X load
    assert d["cycles_by_cause"]["X load"] > 0.2
    assert max(STALLS, key=d["cycles_by_cause"].get) == "X load"
    assert d["binding"] in ("X load", "clock")
    # the explorer's own widths (16, 32, 64 bytes) take most of that wait away
    wide = diagnose(search("deit-tiny", "zcu102"))
    assert wide["best"].datapath_bytes > 16 and wide["best_fps"] > best.fps
    assert wide["cycles_by_cause"]["X load"] < d["cycles_by_cause"]["X load"] / 2


def test_smaller_budget_never_faster():
    full = explore("deit-tiny", "zcu102", 1)
    half = explore("deit-tiny", "zcu102", 1, max_util=0.4)
    assert half["best_reachable_fps"] <= full["best_reachable_fps"] + 1e-9


def test_cli_free_import_path_stays_torch_free():
    code = "import sys, vitaccel.dse.search, vitaccel.dse.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dse_names_nothing_from_rtl_sim_or_flow():
    """vitaccel/dse is the explorer only: no module of it imports rtl, sim or flow, not even
    inside a function (calibration and validation are vitaccel.verify)."""
    import re
    from pathlib import Path

    import vitaccel.dse

    pattern = re.compile(r"vitaccel\.(rtl|sim|flow)|from vitaccel import (rtl|sim|flow)")
    for path in Path(vitaccel.dse.__file__).parent.glob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.name}:{n}: {line.strip()}"


# ---------------------------------------------------------------------------------------
# against the RTL and Yosys (slow: Verilator builds, Yosys runs)
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_reports_every_goal():
    from vitaccel.dse.benchmark import GOALS, benchmark

    rows = benchmark()
    assert [(r["model"], r["goal_fps"]) for r in rows] == [(m, g) for m, _, g in GOALS]
    for r in rows:
        assert r["fps"] > 0 and (r["reached"] or r["binding"])


def test_search_evaluation_equals_the_cycle_model():
    from vitaccel.dse.search import search, to_design

    result = search("deit-tiny", "zcu102")
    spec = result["model"].spec
    rng = random.Random(5)
    w8 = [c for c in result["pool"] if not c.w4_share]
    w4 = [c for c in result["pool"] if c.w4_share and c.ratios]
    assert w4, "no mixed candidate with W4 layers in the pool"
    for cand in rng.sample(w8, 15) + rng.sample(w4, min(15, len(w4))):
        design = to_design(cand, spec.name, "zcu102", cand.clock_mhz, spec)
        assert estimate(design, budget=result["budget"]).cycles == cand.cycles, cand


def test_w4_greedy_shortcuts_equal_the_heap(monkeypatch):
    """The explorer's two shortcuts give the plain greedy's answer: a W4 array priced once
    for every W4 kind, and every option taken at once when the sum of every error increase
    fits the budget (the heap, forced by an infinite sum, takes the same options)."""
    from vitaccel.dse import search as srch
    from vitaccel.engine_timing import x_beat_words

    result = srch.search("deit-tiny", "zcu102")
    m = result["model"]
    shortcut = []
    plain_w4_errors = srch._Model.w4_errors
    for c in [c for c in result["pool"] if c.w4_share][:40:4]:
        wc = 1.0 / c.weight_ports
        x_beat = x_beat_words(c.vector, c.datapath_bytes)  # as the explorer passes it
        m._nl_cache = {k: v for k, v in m._nl_cache.items() if k[0] != "price"}
        price: dict = {}
        for kind, drop in itertools.product(("int4", "pot4"), (m.max_drop, 10.0)):
            args = (c.groups, c.rows, c.cols, c.vector, c.w4_share, kind)
            rises = []

            def recorded(self, *a, rises=rises):
                out = plain_w4_errors(self, *a)
                rises.append(out[1])
                return out

            def forced(self, *a):
                return plain_w4_errors(self, *a)[0], float("inf")

            runs = []
            # the fast runs price the array once (the first kind) and reuse it; the heap's
            # run prices it afresh
            m._nl_cache.update(price)
            for w4_errors in (recorded, forced):
                with monkeypatch.context() as mp:
                    mp.setattr(srch._Model, "w4_errors", w4_errors)
                    runs.append(srch._evaluate_array(m, *args, drop, wc, x_beat))
                if w4_errors is recorded:
                    price = {k: v for k, v in m._nl_cache.items() if k[0] == "price"}
                m._nl_cache = {k: v for k, v in m._nl_cache.items() if k[0] != "price"}
            assert runs[0] == runs[1], (c, drop)
            shortcut.append(sum(rises) <= drop - 1e-12)
    assert any(shortcut), "the budget never took every option: the shortcut is untested"
    assert not all(shortcut), "the heap never ran: the comparison is untested"


def test_benchmark_markdown_states_every_verdict():
    from vitaccel.dse.benchmark import GOALS, LINEAR_DSP_GOAL, MIXED_GAIN_GOAL, benchmark, markdown

    rows = benchmark()
    text = markdown(rows)
    for r in rows:
        assert r["reached"] or (r["gap"] and r["binding"])
        assert r["linear_dsp_reached"] == (r["linear_dsp_efficiency"] >= LINEAR_DSP_GOAL)
        assert f"{r['model']} {r['precision']} >= {r['goal_fps']:g} FPS" in text
    # each goal's FPS and linear-layer verdicts, and the mixed-over-W8 gain's
    assert text.count("reached**") + text.count("missed**") == 2 * len(GOALS) + 1
    assert f"mixed over w8 >= x{MIXED_GAIN_GOAL:g}" in text


def test_log2_softmax_design_pays_the_shift_add_mode():
    from vitaccel.dse.resources import LOG2_LUT_PER_DSP_LANE, design_resources
    from vitaccel.flow.build import default_design

    d = default_design("digits-vit", "zcu102")
    log2 = d.model_copy(
        update={"nonlinear": d.nonlinear.model_copy(update={"softmax_output": "log2"})}
    )
    a, b = design_resources(d)["total"], design_resources(log2)["total"]
    lanes = d.array.groups * d.array.rows * (d.array.cols // 2) * d.array.vector
    assert b.lut - a.lut == pytest.approx(LOG2_LUT_PER_DSP_LANE * lanes)
    assert b.dsp48e2 == a.dsp48e2 and b.bram36 == a.bram36


def test_pool_is_cached_in_memory_and_on_disk(monkeypatch, tmp_path):
    """One pool per (model, board, max_util, ...): a second process reads it from the cache
    file (the same candidates), a damaged file is evaluated again, never an error."""
    from vitaccel.dse import search as search_mod
    from vitaccel.dse.search import SearchSpace, search

    monkeypatch.setenv("VITACCEL_CACHE", str(tmp_path))
    monkeypatch.setattr(search_mod, "_POOLS", {})
    space = SearchSpace(groups=(1, 2), rows=(2, 4), cols=(4, 8), vector=(8,))
    first = search("digits-vit", "zcu102", space=space)
    assert not first["cached"] and first["pool"]
    assert search("digits-vit", "zcu102", space=space) is first  # in memory
    files = list((tmp_path / "dse").glob("pool-*.pkl"))
    assert len(files) == 1
    search_mod._POOLS.clear()  # as a new process sees it
    again = search("digits-vit", "zcu102", space=space)
    assert again["cached"] and again["pool"] == first["pool"]
    assert again["evaluated"] == first["evaluated"]
    # another max_util is another pool (the pool keeps candidates up to twice the limits)
    other = search("digits-vit", "zcu102", space=space, max_util=0.5)
    assert not other["cached"] and len(list((tmp_path / "dse").glob("pool-*.pkl"))) == 2
    files[0].write_bytes(b"not a pickle")
    search_mod._POOLS.clear()
    fresh = search("digits-vit", "zcu102", space=space)
    assert not fresh["cached"] and fresh["pool"] == first["pool"]
    # the FPS target does not enter the pool: explore answers from the cached one
    assert explore("digits-vit", "zcu102", 1, space=space)["fps"] > 0


def test_bench_table_states_fps_peak_causes_and_binding(capsys):
    """`vitaccel bench` on DeiT-Tiny: every row a cycle-model prediction whose cycle shares
    sum to 100 % and whose peak share is MACs x FPS over 2 x DSPs x clock."""
    from vitaccel.boards import get_budget
    from vitaccel.cli import main
    from vitaccel.dse.causes import CAUSES

    assert main(["bench", "--models", "deit-tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "cycle-model prediction"
    (row,) = out["rows"]
    assert row["model"] == "deit-tiny" and row["fits"] and row["precision"] == "w8"
    assert list(row["cause_share"]) == list(CAUSES)
    assert sum(row["cause_share"].values()) == pytest.approx(1.0, abs=1e-9)
    assert abs(sum(row["cycles_by_cause"].values()) - row["cycles"]) <= len(CAUSES)
    macs = sum(op.macs for op in model_ops("deit-tiny"))  # 1.254 GMAC
    peak = 2 * get_budget("zcu102").dsp48e2 * row["clock_mhz"] * 1e6
    fps = row["clock_mhz"] * 1e6 / row["cycles"]
    assert row["fps"] == pytest.approx(fps, abs=0.01)
    assert row["peak_share"] == pytest.approx(macs * fps / peak, abs=1e-4)
    assert row["binding"] in row["lifted_fps"] or row["binding"].startswith("array shape")
    assert main(["bench", "--models", "deit-tiny"]) == 0
    text = capsys.readouterr().out
    assert "cycle-model predictions" in text and "deit-tiny" in text and "X load" in text
    with pytest.raises(SystemExit) as ex:
        main(["bench", "--models", "deit-tiny,deit-huge"])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--models" in err and "deit-huge" in err and "deit-base" in err


def test_w4_columns_any_count_beside_the_base_w8_columns():
    """Mixed arrays add any count of W4 columns (up to half the columns) to a base array's
    W8 columns, split by the engine's own rule; not only cols = c8 / (1 - share)."""
    from vitaccel.dse.cost import column_split
    from vitaccel.dse.search import SearchSpace, search

    space = SearchSpace()
    result = search("deit-tiny", "zcu102")
    mixed = [c for c in result["pool"] if c.w4_share > 0]
    assert mixed
    shares = set()
    for c in mixed:
        c8, c4 = column_split(c.cols, c.w4_share)
        assert c8 in space.cols and c4 in space.w4_cols and c4 <= c8, c
        assert c.w4_share == c4 / c.cols
        shares.add(round(c.w4_share, 6))
    # shares the old rule dropped (1 W4 column of 9, 4 of 20, ...)
    assert len(shares - {0.25, round(1 / 3, 6), 0.5}) > 5
    # every weight port carries its own columns' map entries: mixed arrays on 2-4 ports too
    assert {c.weight_ports for c in mixed} > {1}
    # W4 ratios only on the encoder's weight layers: attention products stay W8
    for c in mixed:
        assert all(name.rsplit(".", 1)[-1] in ("qkv", "proj", "fc1", "fc2") for name in c.ratios)


def test_precision_mixed_never_worse_than_w8(capsys, tmp_path):
    from vitaccel.cli import main

    w8 = explore("deit-tiny", "zcu102", 150, precision="w8")
    mixed = explore("deit-tiny", "zcu102", 150, precision="mixed")
    assert w8["array"]["w4_share"] == 0 and w8["precision"] == "w8"
    assert mixed["precision"] == "mixed" and mixed["best_reachable_fps"] >= w8["best_reachable_fps"]
    tight = {r["util"] / 0.85 for r in mixed["resources"].values()}
    assert max(tight) <= max(r["util"] / 0.85 for r in w8["resources"].values()) + 1e-3
    with pytest.raises(SystemExit) as ex:
        main(["dse", "--model", "deit-tiny", "--fps", "30", "--precision", "w4",
              "-o", str(tmp_path / "o")])  # fmt: skip
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--precision" in err and "mixed" in err and "w8" in err
    assert not (tmp_path / "o").exists()


def test_wider_datapath_is_chosen_when_it_wins_and_its_design_round_trips(tmp_path):
    """One array at 16, 32 and 64 bytes: every width priced by the cycle model and the
    resource model (banked scratchpad, X sub-banks); a target the 16-byte datapath misses
    takes a wider one, and the design file carries it back to the same figures."""
    from vitaccel.dse.search import SearchSpace, search, to_design

    one = dict(groups=(1,), rows=(8,), cols=(16,), vector=(16,), w4_cols=())
    narrow = explore("deit-tiny", "zcu102", 1, space=SearchSpace(**one, datapath_bytes=(16,)))
    assert narrow["datapath_bytes"] == 16
    space = SearchSpace(**one)
    result = search("deit-tiny", "zcu102", space=space)
    spec = result["model"].spec
    widths = {c.datapath_bytes for c in result["pool"]}
    assert widths == {16, 32, 64}
    for c in result["pool"][:: max(1, len(result["pool"]) // 12)]:
        design = to_design(c, spec.name, "zcu102", c.clock_mhz, spec)
        assert design.datapath_bytes == c.datapath_bytes
        assert estimate(design, budget=result["budget"]).cycles == c.cycles, c
        total = res.design_resources(design)["total"]
        assert total.bram36 == pytest.approx(c.usage["bram36"]), c
    # nonlinear lanes up to the width (a unit moves at most datapath_bytes a cycle), their
    # cycles and LUTs priced as the design file's
    assert all(max(c.lanes) <= c.datapath_bytes for c in result["pool"])
    for width in (32, 64):
        c = max((c for c in result["pool"] if c.datapath_bytes == width), key=lambda c: c.fps)
        assert max(c.lanes) > 16, c
        design = to_design(c, spec.name, "zcu102", c.clock_mhz, spec)
        assert estimate(design, budget=result["budget"]).cycles == c.cycles, c
        total = res.design_resources(design)["total"]
        assert total.lut == pytest.approx(c.usage["lut"]), c
    target = narrow["best_reachable_fps"] * 1.05
    wide = explore("deit-tiny", "zcu102", target, space=space, out_dir=tmp_path)
    assert wide["datapath_bytes"] in (32, 64) and wide["fps"] >= target
    design = load_design(wide["design"])
    assert design.datapath_bytes == wide["datapath_bytes"]
    assert estimate(design).fps == pytest.approx(wide["fps"], abs=0.01)
    assert res.design_resources(design)["total"].bram36 == pytest.approx(
        wide["resources"]["bram36"]["used"], abs=0.05
    )
    assert wide["resources"]["bram36"]["used"] >= narrow["resources"]["bram36"]["used"]
    point = next(p for p in json.loads((tmp_path / "pareto.json").read_text())["points"]
                 if p["chosen"])  # fmt: skip
    assert point["datapath_bytes"] == design.datapath_bytes


def test_cli_datapath_bytes_pins_the_width(capsys, tmp_path):
    from vitaccel.cli import main

    args = ["dse", "--model", "deit-tiny", "--fps", "200", "--precision", "w8", "--json"]
    assert main([*args, "--datapath-bytes", "16", "-o", str(tmp_path / "a")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["datapath_bytes"] == 16
    assert load_design(out["design"]).datapath_bytes == 16
    assert "16-byte datapath" in out["binding_detail"]["best_design"]
    with pytest.raises(SystemExit) as ex:
        main([*args, "--datapath-bytes", "24", "-o", str(tmp_path / "b")])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--datapath-bytes" in err and "64" in err
    assert not (tmp_path / "b").exists()


def test_report_design_says_a_design_spills(capsys, tmp_path):
    """`vitaccel report design` names the program's layout in the design's scratchpad, and a
    spilling design's DDR traffic per image (the cycle model's own program)."""
    from vitaccel.cli import main
    from vitaccel.compile.schedule import schedule, spill_traffic
    from vitaccel.design import save_design
    from vitaccel.flow.build import default_design

    fits = default_design("digits-vit", "zcu102")
    spills = fits.model_copy(update={"spm_kib": 9})
    est = estimate(spills)
    assert est.spill_bytes == spill_traffic(schedule(get_spec("digits-vit"), spills)) > 0
    assert estimate(fits).spill_bytes == 0
    path = save_design(spills, tmp_path / "spills.json")
    assert main(["report", "design", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["scratchpad"] == {"kib": 9, "layout": "spilling", "spill_tile": 9,
                                 "spill_kib_per_image": round(est.spill_bytes / 1024, 1)}  # fmt: skip
    assert main(["report", "design", str(path)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "scratchpad: 9 KiB, spilling layout (the residual stream in DDR, tiles of 9 tokens): "
        f"spills {est.spill_bytes / 1024:,.1f} KiB per image to DDR" in text
    )
    assert main(["report", "design", str(save_design(fits, tmp_path / "fits.json"))]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"scratchpad: {fits.spm_kib} KiB, standard layout" in text


def test_w4_ratios_beyond_the_column_share_even_out_the_windows():
    """A layer's W4 rows at their seeded places leave some windows short of W4 rows, so at
    the W4 columns' share the plan takes more steps than the fewest (DeiT-Base FC1 on
    1 x (16 W8 + 6 W4) columns: 832 W4 rows of 3072 fill 140 steps of 22 only if every
    window holds 6); more W4 rows than W4 columns, the rest on the W8 columns' free slots
    (``plan_columns``' spill), take those steps off. The explorer prices such ratios too,
    each one a step lower than the last, and grants them within the budget."""
    from vitaccel.dse.cost import job_nsteps
    from vitaccel.dse.search import _w4_ratio_options, search

    g, c, c8, n = 1, 22, 16, 3072

    def steps(ratio):
        return job_nsteps(n, n - int(round(ratio * n)), g, c, c8, heads=False)

    ns0, ns_min = steps(0.0), steps(1.0)
    assert (ns0, ns_min) == (192, 140)
    ratios = _w4_ratio_options(n, ns0, ns_min, g, c, c8)
    share = round((n - ns_min * g * c8) / n, 6)  # 832 rows: 6 of every 22
    assert ratios[0] == 0.0 and ratios == tuple(sorted(ratios)) and share in ratios
    above = [r for r in ratios if r > share]
    assert above and steps(share) > ns_min, (ratios, steps(share))
    counts = [steps(r) for r in [share, *above]]
    assert all(b < a for a, b in zip(counts, counts[1:], strict=False)), counts
    assert counts[-1] < counts[0]
    # the explorer grants such ratios (within the budget) to arrays of the pool
    result = search("deit-tiny", "zcu102")
    over = [
        cand
        for cand in result["pool"]
        if cand.w4_share and any(r > cand.w4_share + 1e-6 for r in cand.ratios.values())
    ]
    assert over
    assert all(cand.error <= result["max_drop"] + 1e-9 for cand in over)


def test_explore_pauses_the_cyclic_gc_and_restores_it(monkeypatch):
    """The explorer runs with the cyclic collector paused (its ~10^5 candidates hold no
    cycles; the collector walked them repeatedly, ~10 % of a cold query's CPU) and gives it
    back as it found it, also when the query raises."""
    import gc

    from vitaccel.dse import search as search_mod

    seen = []

    def stop(*args, **kwargs):
        seen.append(gc.isenabled())
        raise RuntimeError("stop")

    monkeypatch.setattr(search_mod, "search", stop)
    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="stop"):
        search_mod.explore("deit-tiny", "zcu102", 100)
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        with search_mod._no_cyclic_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # a caller's paused collector stays paused
    finally:
        gc.enable()


# ---------------------------------------------------------------------------------------
# chains (docs/isa.md "Chains"): a unit's rows into the next MATMUL's X
# ---------------------------------------------------------------------------------------

CHAINED_DEIT_T = Design(model="deit-tiny", clock_mhz=300, datapath_bytes=64, weight_ports=2,
                        spm_kib=442, array=ArrayConfig(groups=3, rows=5, cols=16, vector=16),
                        nonlinear=NonlinearConfig(softmax_lanes=64, layernorm_lanes=64,
                                                  gelu_lanes=1))  # fmt: skip


def test_chained_pair_is_priced_as_the_unit_start_and_the_matmul_on_its_output(monkeypatch):
    """A chained pair costs the unit's overhead and parameter load, then the longer of the
    unit's stream + drain and the MATMUL priced with its X at the unit's output rate
    (cost.chain_line); the layer causes split the same cycles (the unit's unhidden part
    "nonlinear", the MATMUL's wait for it "X load")."""
    from vitaccel.compile import schedule as sch
    from vitaccel.dse import cost
    from vitaccel.dse.causes import layer_causes

    d = CHAINED_DEIT_T
    monkeypatch.setattr(sch, "CHAIN_DEFAULT", "none")
    plain = estimate(d)
    monkeypatch.setattr(sch, "CHAIN_DEFAULT", "all")
    est = estimate(d)
    spec = get_spec("deit-tiny")
    prog = sch.per_image(sch.schedule(spec, d))
    priced = list(cost.priced_program(prog, d))
    assert est.cycles == sum(p[1] for p in priced) == cost.program_cycles(prog, d)
    lane = {"softmax": 64, "layernorm": 64}
    for j, (ins, cycles, bound, _, _) in enumerate(priced[:-1]):
        if not isa.chained(ins):
            continue
        mm, mm_cycles, _, _, unit = priced[j + 1]
        assert unit is ins and mm.op is isa.Op.MATMUL and bound == "nonlinear"
        params, stream, drain = cost.unit_phases(sch.kind_of(ins), ins.rows, ins.cols,
                                                 lane[sch.kind_of(ins)], 64)  # fmt: skip
        instr = cost.LATENCIES["instr"]
        assert cycles + mm_cycles == instr + params + max(stream + drain, mm_cycles)
    by_kind, before = est.by_kind(), plain.by_kind()
    # LayerNorm: only the overhead and the parameters left (25 of them, 192 channels)
    assert by_kind["layernorm"] == 25 * (cost.LATENCIES["instr"] + 192) < before["layernorm"]
    assert by_kind["softmax"] == 12 * cost.LATENCIES["instr"] < before["softmax"]
    # the MATMULs take their X as fast as from the scratchpad: none slower here
    for kind in ("qkv", "sv", "fc1", "head"):
        assert by_kind[kind] == before[kind], kind
    assert est.cycles == plain.cycles - (before["layernorm"] - by_kind["layernorm"]) - (
        before["softmax"] - by_kind["softmax"])  # fmt: skip
    rows = {r["name"]: r for r in layer_causes(d)}
    for lc in est.layers:
        assert rows[lc.name]["cycles"] == lc.cycles
        assert sum(rows[lc.name]["causes"].values()) == pytest.approx(lc.cycles, abs=1e-6)
    assert rows["blocks.0.norm1"]["causes"]["nonlinear"] == cost.LATENCIES["instr"] + 192


def test_chained_x_stream_waits_for_a_unit_slower_to_start_than_its_matmul():
    """cost.chain_line: beat j of a chained X no earlier than the unit writes it (``j +
    drain - delay`` after the MATMUL's command), on top of a shared read port's lines; a unit
    ahead of its MATMUL leaves the X stream as it was."""
    from vitaccel.dse import cost
    from vitaccel.engine_timing import matmul_cycles, x_edge

    port = ((1.5, 2.0),)
    assert cost.chain_line(10, 40) is None and cost.chain_line(10, 40, port) == port
    late = cost.chain_line(40, 10, port)
    assert [x_edge(j, late) for j in (1, 100)] == [31, 152]  # max(j + 30, 1.5 j + 2)
    assert x_edge(100, cost.chain_line(40, 10)) == 130
    shape = (197, 192, 8, 3, 5, 16, 16, 8)
    base = matmul_cycles(*shape, x_beat=4)
    # (step 0 waits for W here: a short delay of X changes nothing, a long one does)
    assert matmul_cycles(*shape, x_beat=4, x_stretch=cost.chain_line(40, 10)) == base
    assert matmul_cycles(*shape, x_beat=4, x_stretch=cost.chain_line(2010, 10)) > base
    # a unit narrower than the datapath (beats packed, ratio unit beats an X beat): its floor
    # line holds even when it starts ahead of its MATMUL, at ratio cycles an X beat
    assert cost.chain_ratio(96, 32, 64) == 1.5 and cost.chain_ratio(768, 64, 64) == 1
    assert cost.chain_line(10, 40, ratio=2.0) == ((2.0, -30.0, 1),)
    assert x_edge(100, cost.chain_line(40, 10, ratio=1.5)) == 180


@pytest.mark.parametrize("model, space, mode", [
    ("deit-tiny", None, "all"),
    ("deit-tiny", None, "paying"),
    ("deit-small", dict(groups=(2, 3), rows=(5, 8), cols=(8, 16), w4_cols=(4, 8)), "all"),
])  # fmt: skip
def test_explorer_prices_chains_as_the_cycle_model(monkeypatch, model, space, mode):
    """With chains on, the explorer's closed form (search._chain_delta / _chained_job, the
    cost model's functions) equals cost.estimate on chained candidates, all-W8 and mixed,
    with the softmax split per P x V job (DeiT-Small on 2 groups); a chaining candidate is
    faster than the same one priced without chains. "paying" is priced as "all" by the
    explorer: equal because no role loses."""
    from vitaccel.compile import schedule as sch
    from vitaccel.dse.search import SearchSpace, _chain_lanes_of, _chain_of, search, to_design

    monkeypatch.setattr(sch, "CHAIN_DEFAULT", mode)
    result = search(model, "zcu102", space=SearchSpace(**space) if space else SearchSpace(),
                    cache=False)  # fmt: skip
    spec = result["model"].spec
    pool = [c for c in result["pool"] if _chain_of(c.lanes, c.vector, c.datapath_bytes)]
    w8 = [c for c in pool if not c.w4_share]
    w4 = [c for c in pool if c.w4_share and c.ratios]
    assert w8 and w4
    rng = random.Random(7)
    picked = rng.sample(w8, min(12, len(w8))) + rng.sample(w4, min(12, len(w4)))
    if model == "deit-small":
        assert any(c.groups == 2 for c in picked) or any(c.groups == 2 for c in w8)
        picked += [c for c in w8 if c.groups == 2][:3]
    # units narrower than the datapath chaining (their beats packed into X beats, a floor
    # line of slope cost.chain_ratio), all-W8 and mixed
    packed = [c for c in pool if _chain_lanes_of(c.lanes, c.datapath_bytes)]
    assert [c for c in packed if c.w4_share and c.ratios] and [c for c in packed if not c.w4_share]
    picked += rng.sample(packed, min(8, len(packed)))
    for cand in picked:
        design = to_design(cand, spec.name, "zcu102", cand.clock_mhz, spec)
        assert sch.chain_candidates(design)
        assert estimate(design, budget=result["budget"]).cycles == cand.cycles, cand
    monkeypatch.setattr(sch, "CHAIN_DEFAULT", "none")
    cand = picked[0]
    design = to_design(cand, spec.name, "zcu102", cand.clock_mhz, spec)
    assert estimate(design, budget=result["budget"]).cycles > cand.cycles


def test_bench_figures_move_with_chains_as_reported(monkeypatch):
    """docs/dse.md's chained figures (cycle model, `vitaccel bench --precision w8`): DeiT-Tiny's
    best design is the same with or without chains, 490,768 -> 446,785 cycles (611.3 ->
    671.5 FPS), its "nonlinear" cause 49,301 -> 5,318 cycles and no other cause moving."""
    from vitaccel.compile import schedule as sch
    from vitaccel.dse.benchmark import bench

    got = {}
    for mode in ("none", "paying"):
        monkeypatch.setattr(sch, "CHAIN_DEFAULT", mode)
        (got[mode],) = bench(("deit-tiny",), precision="w8")
    none, chained = got["none"], got["paying"]
    assert none["design"] == chained["design"] and none["clock_mhz"] == chained["clock_mhz"]
    assert (none["cycles"], chained["cycles"]) == (490_768, 446_785)
    assert (round(none["fps"], 1), round(chained["fps"], 1)) == (611.3, 671.5)
    a, b = none["cycles_by_cause"], chained["cycles_by_cause"]
    assert (a["nonlinear"], b["nonlinear"]) == (49_301, 5_318)
    assert {k: v for k, v in a.items() if k != "nonlinear"} == {
        k: v for k, v in b.items() if k != "nonlinear"}  # fmt: skip
