"""Roofline report: Table I of the survey for ViT-Base, board view bit widths, plot, errors."""

import pytest

from vitaccel.dse.roofline import DEVICES, RooflineError, roofline
from vitaccel.dse.shapes import BLOCK_KINDS


def _by_op(rows):
    return {r["op"]: r for r in rows}


def test_one_row_per_block_operation():
    rows = roofline("deit-tiny")
    assert [r["op"] for r in rows] == list(BLOCK_KINDS)
    for r in rows:
        assert {"op", "flops", "bytes", "intensity"} <= set(r)
        assert r["intensity"] == pytest.approx(r["flops"] / r["bytes"], rel=1e-3)


def test_vit_base_matches_survey_table_one():
    # Survey Table I (ViT-Base, 224, FP16): qkv 697M FLOPs / 4.8M bytes / 147,
    # FC1 and FC2 929M / 6.2M / 149.
    rows = _by_op(roofline("vit-base", device="rtx4090"))
    assert rows["qkv"]["flops"] == pytest.approx(697e6, rel=0.01)
    assert rows["qkv"]["bytes"] == pytest.approx(4.8e6, rel=0.02)
    assert rows["qkv"]["intensity"] == pytest.approx(147, rel=0.01)
    for op in ("fc1", "fc2"):
        assert rows[op]["flops"] == pytest.approx(929e6, rel=0.01)
        assert rows[op]["bytes"] == pytest.approx(6.2e6, rel=0.01)
        assert rows[op]["intensity"] == pytest.approx(149, rel=0.01)
    assert rows["qk"]["flops"] == pytest.approx(60e6, rel=0.01)
    # the nonlinear ops are memory bound on a GPU, the big linear layers nearly at the ridge
    for op in ("softmax", "layernorm", "gelu"):
        assert rows[op]["intensity"] < 5 and rows[op]["bound"] == "memory"


def test_board_view_moves_int8_bytes():
    gpu = _by_op(roofline("deit-small", device="a100"))
    board = _by_op(roofline("deit-small", board="zcu102"))
    for op in ("qkv", "qk", "sv", "proj", "fc1", "fc2", "softmax", "gelu"):
        assert board[op]["flops"] == gpu[op]["flops"]
        assert board[op]["bytes"] == pytest.approx(gpu[op]["bytes"] / 2, rel=1e-6)
    assert board["fc1"]["view"] == "board-int8"
    # ZCU102 int8 peak: 2520 DSP x 2 MACs x 2 ops x 300 MHz
    assert board["fc1"]["peak_gflops"] == pytest.approx(3024.0)
    # mixed weights move fewer bytes for weight layers only
    mixed = _by_op(roofline("deit-small", board="zcu102", w4_ratio=0.5))
    assert mixed["fc1"]["bytes"] < board["fc1"]["bytes"]
    assert mixed["qk"]["bytes"] == board["qk"]["bytes"]


def test_plot_is_written(tmp_path):
    roofline("deit-tiny", board="zcu102", out_dir=tmp_path)
    png = tmp_path / "roofline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_devices_and_errors():
    assert {"a100", "rtx3090", "rtx4090"} <= set(DEVICES)
    with pytest.raises(RooflineError, match="unknown device"):
        roofline("deit-tiny", device="tpu9")
    with pytest.raises(RooflineError, match="not both"):
        roofline("deit-tiny", board="zcu102", device="a100")
