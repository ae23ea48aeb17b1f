"""The command line: one-line errors with exit code 2, JSON output, nothing written on error."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

VITACCEL = [sys.executable, "-m", "vitaccel.cli"]


def run(*args, cwd=None):
    return subprocess.run([*VITACCEL, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["quantize", "--model", "resnet"],
            "choose one of: deit-base, deit-small, deit-tiny, digits-vit, vit-base",
        ),
        (["quantize", "--scheme", "w2a2"], "'w8a8', 'w4a8', 'mixed'"),
        (["quantize", "--w4-ratio", "1.5"], "--w4-ratio must be in [0, 1]"),
        (["quantize", "--weights", "/nonexistent/w.safetensors"], "does not exist"),
        (["quantize", "--residual-bits", "17"], "--residual-bits"),
        (["build", "--board", "zcu999"], "choose one of: kv260, zcu102, zcu104"),
        (["build", "--w4-ratio", "1.5"], "--w4-ratio must be in [0, 1]"),
        (["build", "--scheme", "w2"], "'w8a8', 'w4a8', 'mixed'"),
        (["generate", "--unit", "fft", "-o", "x"], "'softmax', 'layernorm', 'gelu', 'gvsa'"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_build_scheme_gives_the_array_its_w4_lanes():
    """``build --scheme``: the default design gets as many W4 columns as W8 ones; an explored
    design must already have W4 columns of the asked kind (one-line errors otherwise)."""
    from vitaccel.design import ArrayConfig, Design, DesignError
    from vitaccel.flow.build import default_design, design_for_scheme

    d = default_design("digits-vit", "zcu102")
    assert design_for_scheme(d, "w8a8", 0.5, "int4") == d
    m = design_for_scheme(d, "mixed", 0.25, "pot4")
    assert (m.array.cols, m.array.w4_share, m.array.w4_kind) == (8, 0.5, "pot4")
    assert m.default_w4_ratio == 0.25
    # every weight port carries its own columns' map entries: mixed arrays take 2-4 ports
    two = design_for_scheme(d.model_copy(update={"weight_ports": 2}), "mixed", 0.5, "int4")
    assert (two.weight_ports, two.array.cols_w4) == (2, 4)
    with pytest.raises(DesignError, match=r"allowed: --scheme w8a8"):
        design_for_scheme(d, "mixed", 0.5, "int4", explored=True)
    mixed = Design(array=ArrayConfig(cols=8, w4_share=0.5, w4_kind="int4"))
    with pytest.raises(DesignError, match=r"array.w4_kind\); allowed: int4"):
        design_for_scheme(mixed, "mixed", 0.5, "pot4", explored=True)
    with pytest.raises(DesignError, match=r"w4_ratio must be in \[0, 1\]"):
        design_for_scheme(d, "mixed", -0.1, "int4")


@pytest.mark.parametrize("scheme, precision", [("w8a8", "w8"), ("mixed", "mixed")])
def test_build_fps_asks_the_explorer_for_the_schemes_precision(scheme, precision, tmp_path,
                                                               monkeypatch):  # fmt: skip
    """``build --fps F --scheme mixed`` takes the explorer's mixed answer (W4 columns); a
    w8a8 build its all-W8 answer. The explorer is stopped at the call (the whole build is
    the slow test test_build_scheme_mixed_end_to_end); nothing is left in the output."""
    from vitaccel.dse import search
    from vitaccel.flow.build import BuildOptions, build

    asked = {}

    def fake_explore(model, board, fps, **kw):
        asked.update(model=model, fps=fps, **kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(search, "explore", fake_explore)
    opts = BuildOptions(fps=1000.0, scheme=scheme, out_dir=tmp_path / "out", rtl=False,
                        synth=False)  # fmt: skip
    with pytest.raises(RuntimeError, match="stop here"):
        build(opts, progress=lambda *_: None)
    assert asked["precision"] == precision and asked["fps"] == 1000.0
    assert not (tmp_path / "out").exists()


def test_corrupt_weights_file(tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    r = run("quantize", "--weights", str(bad))
    assert r.returncode == 2
    assert str(bad) in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_per_layer_json():
    r = run("quantize", "--images", "20", "--per-layer", "--json")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    rows = obj["per_layer"]
    names = {"patch_embed", "embed", "norm", "logits"} | {
        f"blocks.{i}.{n}"
        for i in range(4)
        for n in ("norm1", "attn.q", "attn.k", "attn.v", "attn.logits", "attn.probs",
                  "attn.context", "attn.proj", "add1", "norm2", "mlp.fc1", "mlp.gelu",
                  "mlp.fc2", "add2")
    }  # fmt: skip
    assert obj["calibration_images"] > 0
    assert {row["name"] for row in rows} == names
    assert [row["local_sqnr_db"] for row in rows] == sorted(row["local_sqnr_db"] for row in rows)
    assert set(rows[0]) == {
        "name",
        "kind",
        "sqnr_db",
        "rel_error",
        "local_sqnr_db",
        "local_rel_error",
    }


def test_quantize_refuses_non_finite_weights(tmp_path):
    """One CLI round trip; the other ways a checkpoint can miss the model (missing,
    unexpected, misshapen tensors) are the loader's, tested in test_models.py."""
    from safetensors.torch import save_file

    from vitaccel.models.zoo import build_float_model

    state = build_float_model("digits-vit").state_dict()
    state["blocks.2.attn.proj.weight"][0, 0] = float("nan")
    needle = "'blocks.2.attn.proj.weight' (shape (64, 64)) holds 1 NaN/Inf"
    weights = tmp_path / "w.safetensors"
    save_file(state, str(weights))
    out = tmp_path / "out"
    out.mkdir()
    r = run("quantize", "--weights", str(weights), "--per-layer", "--json", cwd=out)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert r.stdout == "" and list(out.iterdir()) == []


def test_bad_design_file_names_the_field(tmp_path):
    d = tmp_path / "d.json"
    d.write_text(json.dumps({"schema_version": 1, "array": {"rows": 0}}))
    r = run("generate", "--design", str(d), "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "array.rows" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_quantize_json_digits():
    r = run("quantize", "--json", "--images", "40")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    for key in ("float_top1", "int_top1", "agreement", "cosine", "scheme", "w4_ratio"):
        assert key in obj
    assert 0 <= obj["agreement"] <= 1 and obj["scheme"] == "w8a8"


def test_help_lists_every_command():
    r = run("--help")
    for cmd in ("quantize", "dse", "generate", "sim", "report", "build"):
        assert cmd in r.stdout


def test_readme_commands_match_ci():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    ci = (root / ".ci" / "run").read_text()
    assert "scripts/install.sh && .venv/bin/pytest" in readme
    assert "scripts/install.sh && .venv/bin/pytest" in ci
