"""`vitaccel generate --design` and `vitaccel build`: what goes to Vivado and the board."""

import json
import re
import subprocess
import sys

import pytest

from vitaccel.flow.build import default_design
from vitaccel.flow.generate import generate_design


def test_generate_is_byte_identical_and_complete(tmp_path):
    design = default_design("digits-vit", "zcu102")
    a = generate_design(design, tmp_path / "a")
    b = generate_design(design, tmp_path / "b")
    assert a["files"] == b["files"]
    for rel in a["files"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    for rel in (
        "rtl/vitaccel_top.v",
        "vivado/project.tcl",
        "vivado/constraints.xdc",
        "vivado/build.sh",
        "driver/run_on_board.py",
        "program/image.bin",
        "program/layout.json",
        "design.json",
    ):
        assert rel in a["files"], rel
    assert a["lint_warnings"] == 0, (tmp_path / "a" / "lint.txt").read_text()[:2000]
    tcl = (tmp_path / "a" / "vivado" / "project.tcl").read_text()
    assert "xczu9eg-ffvb1156-2-e" in tcl and "zynq_ultra_ps_e" in tcl and "vitaccel_top" in tcl
    v = (tmp_path / "a" / "rtl" / "vitaccel_top.v").read_text()
    for port in ("s_axil_awaddr", "m_axi_araddr", "irq"):
        assert port in v


def _build(tmp_path, *extra):
    out = tmp_path / "build"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitaccel.cli",
            "build",
            "--images",
            "3",
            "--json",
            "-o",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=5400,
    )
    return out, r


def test_build_end_to_end_json(tmp_path):
    # Resources from the calibrated model here; the Yosys run of the whole top (minutes) is
    # test_build_with_yosys below, in the slow suite.
    out, r = _build(tmp_path, "--no-synth")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["images"] == 3 and s["bit_exact"] == 3 and s["program_bit_exact"] == 3
    assert s["rtl_top1"] == s["golden_top1"]
    assert s["float_top1"] is not None and s["cycles_per_image"] > 0 and s["clock_mhz"] == 200.0
    assert s["fps"] == pytest.approx(200e6 / s["cycles_per_image"])
    for kind in ("lut", "ff", "dsp48e2", "bram36"):
        used, avail = s["resources"][kind]["used"], s["resources"][kind]["available"]
        assert 0 <= used <= avail, kind
    assert s["resources"]["dsp48e2"]["used"] > 0 and s["fits"]
    for rel in (
        "hw/rtl/vitaccel_top.v",
        "hw/vivado/project.tcl",
        "hw/vivado/constraints.xdc",
        "hw/driver/run_on_board.py",
        "summary.json",
        "report.html",
    ):
        assert (out / rel).is_file(), rel
    # the report of this very build: self-contained, its plots, the RTL figures it measured
    # (tests/test_report_html.py opens such pages in Chromium)
    html = (out / "report.html").read_text()
    assert s["report_html"] == str((out / "report.html").resolve())
    assert len(html.encode()) < 5e6 and html.count("<svg") >= 4
    assert not re.search(r"https?://|<script|<link|<img|\bsrc=", html)
    assert "RTL run" in html and '<span class="ok">3 / 3 bit-exact</span>' in html


@pytest.mark.slow
def test_build_scheme_mixed_end_to_end(tmp_path):
    """``vitaccel build --scheme mixed --w4-ratio 0.5``: the default design with 4 W4
    columns beside its 4 W8 ones runs the mixed golden model bit-exact on the RTL (one
    weight port, as the default design; tests/test_sim_accelerator.py's default-suite mixed
    tests run the same array on two)."""
    out, r = _build(tmp_path, "--no-synth", "--scheme", "mixed", "--w4-ratio", "0.5")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["images"] == 3 and s["bit_exact"] == 3 and s["program_bit_exact"] == 3
    assert s["rtl_top1"] == s["golden_top1"]
    array = json.loads((out / "design.json").read_text())["array"]
    assert (array["cols"], array["w4_share"], array["w4_kind"]) == (8, 0.5, "int4")


def test_failed_build_leaves_nothing(tmp_path):
    # DeiT-Base does not fit the default scratchpad: the compile step fails after quantize.
    out = tmp_path / "never"
    r = subprocess.run(
        [sys.executable, "-m", "vitaccel.cli", "build", "--model", "deit-base", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert lines[-1].startswith("vitaccel: error: scratchpad too small")  # progress lines before it
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_build_with_yosys(tmp_path):
    out, r = _build(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["resources_source"].startswith("yosys") and s["fits"]
    assert s["resources"]["dsp48e2"]["used"] > 0


def test_generate_refuses_a_model_that_does_not_fit_before_any_work(tmp_path):
    from vitaccel.compile.compiler import CompileError

    # DeiT-Base needs 1,016 KiB even in the compact layout (the ISA's 1 MiB limit itself is
    # tested in test_compile with a larger model than the zoo has).
    design = default_design("deit-base", "zcu102").model_copy(update={"spm_kib": 512})
    out = tmp_path / "never"
    with pytest.raises(CompileError, match=r"scratchpad too small.*raise spm_kib"):
        generate_design(design, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_lint_runs_on_a_relative_path_and_fails_loudly(tmp_path, monkeypatch):
    # `vitaccel generate -o out` passes a relative path: Verilator runs in the file's folder,
    # so a path relative to the caller's folder used to be "not found" (and counted as
    # 2 warnings, the generate step still "succeeding").
    from vitaccel.flow.generate import LintError, lint_verilog

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "rtl").mkdir(parents=True)
    good = tmp_path / "out" / "rtl" / "top.v"
    good.write_text(
        "module top(input wire clk, input wire a, output reg q);\n"
        "  always @(posedge clk) q <= a;\nendmodule\n"
    )
    warnings, text = lint_verilog(good.relative_to(tmp_path), "top")
    assert warnings == 0, text
    bad = tmp_path / "out" / "rtl" / "bad.v"
    bad.write_text("module bad(input wire clk;\nendmodule\n")
    with pytest.raises(LintError, match=r"bad\.v failed: %Error"):
        lint_verilog(bad.relative_to(tmp_path), "bad")


def test_build_summary_shows_uram_on_boards_that_have_it():
    """`vitaccel build --no-synth`'s resources: URAM288 used / the board's, beside BRAM36,
    for a KV260 design with its scratchpad and X banks on URAM (resource model, no build)."""
    from vitaccel.dse.resources import design_resources
    from vitaccel.flow.build import resources_summary

    bram = default_design("digits-vit", "kv260").model_copy(
        update={"spm_memory": "bram", "x_memory": "bram"}
    )
    uram = bram.model_copy(update={"spm_memory": "uram", "x_memory": "uram"})
    on_bram, on_uram = resources_summary(bram)["resources"], resources_summary(uram)["resources"]
    total = design_resources(uram)["total"]
    assert on_uram["uram"] == {"used": round(total.uram), "available": 64} and total.uram > 0
    assert on_bram["uram"] == {"used": 0, "available": 64}
    assert on_uram["bram36"]["used"] < on_bram["bram36"]["used"]
    assert resources_summary(uram)["fits"]
    # --synth: Yosys's URAM288 count (fits_board of its cells) is what the summary shows
    from vitaccel.flow.generate import fits_board

    cells = {"lut": 30000, "ff": 28000, "dsp48e2": 75, "bram36": 23.5, "uram": 12}
    synth = resources_summary(uram, fits_board(cells, "kv260"))
    assert synth["resources"]["uram"] == {"used": 12, "available": 64}
    assert synth["resources_source"].startswith("yosys")
    # a board without URAM shows none (nothing to read there)
    assert "uram" not in resources_summary(default_design("digits-vit", "zcu102"))["resources"]
