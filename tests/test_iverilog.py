"""The generated Verilog on a second simulator: Icarus Verilog, as Verilog-2005 and as
SystemVerilog, bit-exact against the reference functions (vitaccel.quant.ref).

The testbenches are the project's cocotb ones (tb_nonlinear, tb_matmul, tb_top) with the
simulator as a parameter (:func:`vitaccel.sim.runner.run_cocotb`). Under SystemVerilog rules a
declaration initialiser makes no event at time 0, so Verilog that relied on one to evaluate
its combinational blocks showed X on the first rows (layernorm at 3 and 4 lanes, softmax at 3
lanes, a first row of one element); each case here starts with such rows. The cases are small:
Icarus runs the same per-cycle cocotb loop ~4x slower than Verilator (the long random runs
are in test_sim_nonlinear / test_sim_matmul, on Verilator).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vitaccel.flow.unit_nonlinear import (
    UNITS,
    assert_bit_exact,
    concat_cases,
    gelu_case,
    gelu_table,
    layernorm_case,
    layernorm_inputs,
    layernorm_params,
    simulate_case,
    softmax_case,
    unit_verilog,
)
from vitaccel.quant.ref import INT8_MAX, INT8_MIN

pytestmark = pytest.mark.skipif(
    shutil.which("iverilog") is None, reason="Icarus Verilog not installed (scripts/install.sh)"
)

STANDARDS = ("icarus-2005", "icarus-2012")


def short_case(unit: str, lanes: int, seed: int = 0):
    """~1-2k elements whose first rows are the ones that showed X: one element, then a row
    shorter than the lanes, then longer random rows (and for layernorm/gelu a second set of
    constants)."""
    rng = np.random.default_rng(seed)

    def rand(n):
        return rng.integers(INT8_MIN, INT8_MAX + 1, n)

    if unit == "softmax":
        lengths = [1, 1, max(1, lanes - 1), 2 * lanes + 1, 197, 64, 5, 197]
        rows = [rand(n) for n in lengths]
        rows.append(np.full(17, INT8_MAX))
        return softmax_case(rows, [int(t) for t in rng.integers(0, 13, len(rows))], lanes=lanes)
    if unit == "layernorm":
        cases = []
        for channels, n in ((1, 3), (lanes + 1, 3), (192, 5)):
            _, base, alpha, _ = layernorm_inputs(rng, 4, channels)
            params = layernorm_params(alpha, rng=rng, in_scale=base)
            cases.append(layernorm_case([rand(channels) for _ in range(n)], params))
        return concat_cases(cases)
    first = gelu_case([rand(1), rand(lanes + 1), np.arange(INT8_MIN, INT8_MAX + 1)], gelu_table())
    second = gelu_case([rand(1), rand(300)], gelu_table(0.08, 0.07))
    return concat_cases([first, second])


@pytest.mark.parametrize("unit", UNITS)
def test_generated_verilog_has_no_block_waiting_for_a_time_zero_event(unit):
    """No ``always @*`` (combinational logic as continuous assignments) and no register that
    only a declaration initialiser would kick: the construct behind the X under SV rules."""
    verilog, _ = unit_verilog(unit, lanes=3)
    assert "always @*" not in verilog
    assert "always @(posedge clk)" in verilog
    assert "$auto$verilog_backend" not in verilog


@pytest.mark.parametrize(
    "lanes",
    [3, 4, pytest.param(1, marks=pytest.mark.slow), pytest.param(8, marks=pytest.mark.slow)],
)
@pytest.mark.parametrize("simulator", STANDARDS)
@pytest.mark.parametrize("unit", UNITS)
def test_units_bit_exact_on_icarus(unit, simulator, lanes):
    case = short_case(unit, lanes)
    res = simulate_case(unit, case, lanes=lanes, stall=0.2, seed=4, simulator=simulator)
    assert res["vectors"] == case.elements
    assert_bit_exact(res)


@pytest.mark.parametrize("simulator", STANDARDS)
def test_unit_reset_mid_row_on_icarus(simulator):
    """Reset with a row half sent and outputs in flight; the rows after it come out exact."""
    rng = np.random.default_rng(5)
    rows = [rng.integers(INT8_MIN, INT8_MAX + 1, 197) for _ in range(4)]
    case = softmax_case(rows, [4, 3, 5, 4], lanes=4)
    reset = {"row": 1, "beats": 20, "outputs": 10}
    res = simulate_case(
        "softmax", case, lanes=4, stall=0.2, seed=6, reset=reset, simulator=simulator
    )
    assert res["rows"] == 2
    assert_bit_exact(res)


@pytest.mark.parametrize("simulator", STANDARDS)
def test_gvsa_engine_bit_exact_on_icarus(simulator):
    from vitaccel.flow.unit_gvsa import engine_params, random_case, simulate_jobs

    params = engine_params(rows=2, cols=4, vector=4, w4_share=0.5, w4_kind="int4", x_words=512)
    rng = np.random.default_rng(21)
    cases = [
        random_case(rng, 1, 1, 1, name="1x1x1"),
        random_case(rng, 5, 13, 7, w4_ratio=0.5, name="5x13x7 int4 0.5"),
        random_case(rng, 9, 20, 10, x_unsigned=True, name="uint8 x"),
    ]
    for r in simulate_jobs(cases, params, stall=0.2, seed=2, simulator=simulator):
        assert r["mismatches"] == 0, (r["name"], r["first_mismatch"])


@pytest.mark.parametrize("simulator", STANDARDS)
def test_whole_top_short_program_on_icarus(simulator):
    """LOAD, GELU, STORE on the whole accelerator (AXI DDR and registers), compared with the
    ISA interpreter; STATUS must say DONE (not ERROR) at the END instruction."""
    from vitaccel import isa
    from vitaccel.compile.interp import run as interp_run
    from vitaccel.design import ArrayConfig, Design, NonlinearConfig
    from vitaccel.quant.ref import gelu_lut
    from vitaccel.rtl.top import TopParams
    from vitaccel.sim.tb_top import default_regs, run_top

    design = Design(
        array=ArrayConfig(groups=1, rows=2, cols=4, vector=4),
        nonlinear=NonlinearConfig(
            gelu_lanes=2, softmax_lanes=2, layernorm_lanes=2, max_tokens=16, max_channels=32
        ),
        spm_kib=4,
        input_buffer_kib=1,
        weight_buffer_kib=1,
    )
    base = 0x1_0000
    rng = np.random.default_rng(3)
    image = bytearray(0x200)
    table = gelu_lut(0.05, 0.04).astype(np.int8).tobytes()
    data = rng.integers(0, 256, 16 * 8, dtype=np.uint8).tobytes()
    t_off, d_off, o_off = 0x200, 0x300, 0x400
    image += bytes(t_off - len(image)) + table
    image += bytes(d_off - len(image)) + data
    image += bytes(o_off - len(image)) + bytes(16 * 8)
    prog = [
        isa.load(spm=0, words=16, ddr=t_off),
        isa.load(spm=16, words=8, ddr=d_off),
        isa.gelu(src=16, src_stride=1, rows=8, cols=16, dst=32, dst_stride=1, table=0),
        isa.store(spm=32, words=8, ddr=o_off),
        isa.end(),
    ]
    code = isa.encode_program(prog)
    image[: len(code)] = code
    want = interp_run(
        bytearray(image), None, spm_words=TopParams(design).spm_words, softmax_lanes=2
    )
    res = run_top(
        design,
        bytes(image),
        base=base,
        regs=default_regs(base, base),
        outputs=[(base + o_off, 16 * 8)],
        pause=0.2,
        seed=1,
        simulator=simulator,
    )
    assert not res.get("errors"), res.get("errors")
    assert not res["timeout"], res
    assert res["status"] == isa.STATUS_DONE, res
    assert res["pc"] == len(prog) - 1
    expected = bytes(want.ddr[o_off : o_off + 16 * 8])
    got = res["outputs"][0]
    assert got == expected, "first difference at byte " + str(
        next(i for i in range(len(got)) if got[i] != expected[i])
    )


@pytest.mark.slow
def test_amaranths_own_verilog_shows_x_under_sv_rules(monkeypatch):
    """The failure the fix removes (so the tests above can fail): Amaranth's stock
    ``verilog.convert`` output of AILayerNorm at 3 lanes gives X on its first rows under
    ``-g2012`` (cocotb cannot read an X output as an integer), and is fine under ``-g2005``."""
    from amaranth.back import verilog

    import vitaccel.flow.unit_nonlinear as un
    import vitaccel.rtl.verilog as rv
    from vitaccel.sim.runner import SimError

    monkeypatch.setattr(
        rv, "to_verilog", lambda c, name: verilog.convert(c, name=name, emit_src=False)
    )
    un._verilog_cached.cache_clear()
    try:
        case = short_case("layernorm", 3)
        ok = simulate_case("layernorm", case, lanes=3, simulator="icarus-2005")
        assert_bit_exact(ok)
        with pytest.raises((SimError, AssertionError)):
            res = simulate_case("layernorm", case, lanes=3, simulator="icarus-2012")
            assert_bit_exact(res)
    finally:
        un._verilog_cached.cache_clear()
