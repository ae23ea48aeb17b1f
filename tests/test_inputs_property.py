"""Property-based tests (hypothesis) of what users hand the tool: design files, weights files
and CLI options. Whatever the input, the answer is the design/model or one line naming the
field (CLI: ``vitaccel: error: ...`` or ``vitaccel <cmd>: error: ...`` on stderr, exit code
2) and nothing written. Example counts are kept small for CI time.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vitaccel.cli import main as cli_main
from vitaccel.design import Design, DesignError, load_design, parse_design

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    database=None,  # no .hypothesis folder in the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``vitaccel argv`` run in-process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_one_line_usage_error(code: int, err: str, *names: str) -> str:
    """Exit 2, exactly one line on stderr, naming one of ``names`` (if given)."""
    assert code == 2, (code, err)
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("vitaccel"), err
    assert "Traceback" not in err
    if names:
        assert any(n in lines[0] for n in names), (names, lines[0])
    return lines[0]


# ---- design files ------------------------------------------------------------------------------

DEFAULT = Design().model_dump(mode="json")


def _leaf_paths(d: dict, prefix=()) -> list[tuple[str, ...]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _leaf_paths(v, (*prefix, k))
        else:
            out.append((*prefix, k))
    return out


FIELDS = _leaf_paths(DEFAULT)
# Fields a cross-field check ties together: an error may name the other one.
LINKED = {
    "groups": ("weight_ports", "groups", "cols"),
    "cols": ("weight_ports", "groups", "cols"),
    "weight_ports": ("weight_ports",),
    "w4_share": ("w4_share", "w4_ratio"),
    "default_w4_ratio": ("w4_ratio",),
}

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _set(d: dict, path: tuple[str, ...], value) -> dict:
    d = json.loads(json.dumps(d))
    node = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return d


@SETTINGS
@given(path=st.sampled_from(FIELDS), value=ANY_VALUE)
@example(path=("array", "rows"), value=0)
@example(path=("array", "rows"), value="4x")
@example(path=("spm_kib",), value=4096)
@example(path=("board",), value="zcu999")
@example(path=("weight_ports",), value=3)
def test_design_field_with_any_value_parses_or_names_the_field(tmp_path, path, value):
    data = _set(DEFAULT, path, value)
    try:
        design = parse_design(data)
    except DesignError as err:
        msg = str(err)
        assert "\n" not in msg
        assert any(n in msg for n in LINKED.get(path[-1], (".".join(path),))), msg
        # the CLI says the same in one line, exit 2, and writes nothing
        f = tmp_path / "d.json"
        f.write_text(json.dumps(data))
        out = tmp_path / "out"
        code, _, stderr = run_cli(["generate", "--design", str(f), "-o", str(out)])
        assert_one_line_usage_error(code, stderr, *LINKED.get(path[-1], (".".join(path),)))
        assert not out.exists()
    else:
        assert isinstance(design, Design)


@SETTINGS
@given(
    key=st.text(min_size=1, max_size=10).filter(
        lambda k: k not in DEFAULT and k not in DEFAULT["array"]
    ),
    at=st.booleans(),
)
@example(key="rows", at=True)
def test_unknown_design_key_is_named(key, at):
    data = json.loads(json.dumps(DEFAULT))
    (data if at else data["array"])[key] = 1
    with pytest.raises(DesignError) as info:
        parse_design(data)
    assert "\n" not in str(info.value)
    assert repr(key)[1:-1] in str(info.value) or key in str(info.value)


def _valid_texts():
    toml = "\n".join(
        [
            'name = "x"',
            'board = "zcu104"',
            "[array]",
            "rows = 4",
            "cols = 8",
            "[nonlinear]",
            "softmax_lanes = 2",
        ]
    )
    return {".json": Design().canonical_json(), ".toml": toml}


@SETTINGS
@given(
    suffix=st.sampled_from([".json", ".toml"]),
    cut=st.floats(0, 1, exclude_max=True),
    noise=st.text(max_size=8),
)
def test_malformed_design_text_is_one_line_exit_2(tmp_path, suffix, cut, noise):
    """Truncated JSON/TOML with junk appended: a DesignError (or, rarely, still a design)."""
    text = _valid_texts()[suffix]
    broken = text[: int(len(text) * cut)] + noise
    f = tmp_path / f"design{suffix}"
    f.write_text(broken)
    try:
        load_design(f)
    except DesignError as err:
        assert "\n" not in str(err)
        out = tmp_path / "out"
        code, _, stderr = run_cli(["generate", "--design", str(f), "-o", str(out)])
        assert_one_line_usage_error(code, stderr)
        assert not out.exists()


def test_design_file_errors_name_file_and_format(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("{}")
    with pytest.raises(DesignError, match="extension must be .json or .toml"):
        load_design(f)
    g = tmp_path / "d.json"
    g.write_text("[1, 2]")
    with pytest.raises(DesignError, match="object at the top level"):
        load_design(g)


# ---- weights files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    """The digits-vit float model and its shipped safetensors bytes."""
    pytest.importorskip("torch")
    from vitaccel.models.zoo import build_float_model, shipped_weights_path

    return build_float_model("digits-vit"), shipped_weights_path("digits-vit").read_bytes()


@SETTINGS
@given(data=st.data())
def test_truncated_or_corrupt_safetensors_is_one_line(tmp_path, digits, data):
    from vitaccel.models.specs import WeightsError
    from vitaccel.models.zoo import load_weights

    model, blob = digits
    header = 8 + int.from_bytes(blob[:8], "little")
    if data.draw(st.booleans(), label="truncate"):
        raw = blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    else:  # corrupt bytes of the length field or the JSON header
        raw = bytearray(blob)
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            at = data.draw(st.integers(0, header - 1), label="at")
            raw[at] = data.draw(st.integers(0, 255).filter(lambda b, a=at: b != blob[a]))
        raw = bytes(raw)
    f = tmp_path / "w.safetensors"
    f.write_bytes(raw)
    try:
        load_weights(model, f)
    except WeightsError as err:
        assert "\n" not in str(err) and str(f) in str(err), str(err)


@SETTINGS
@given(cut=st.integers(0, 4096))
def test_truncated_weights_on_the_cli_exit_2(tmp_path, digits, cut):
    _, blob = digits
    f = tmp_path / "w.safetensors"
    f.write_bytes(blob[: min(cut, len(blob) - 1)])
    code, out, err = run_cli(["quantize", "--model", "digits-vit", "--weights", str(f)])
    assert_one_line_usage_error(code, err, str(f))
    assert out == ""


@settings(max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_wrong_tensor_shape_for_the_named_model_is_named(tmp_path, digits, data):
    import torch
    from safetensors.torch import save_file

    from vitaccel.models.specs import WeightsError
    from vitaccel.models.zoo import load_weights

    model, _ = digits
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    key = data.draw(st.sampled_from(sorted(state)), label="key")
    shape = tuple(state[key].shape)
    new = data.draw(
        st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple).filter(lambda s: s != shape),
        label="shape",
    )
    state[key] = torch.zeros(new)
    f = tmp_path / "w.safetensors"
    save_file(state, str(f))
    with pytest.raises(WeightsError) as info:
        load_weights(model, f)
    msg = str(info.value)
    assert "\n" not in msg and repr(key) in msg and str(new) in msg, msg
    code, _, err = run_cli(["quantize", "--model", "digits-vit", "--weights", str(f)])
    assert_one_line_usage_error(code, err, repr(key))


# ---- CLI options -------------------------------------------------------------------------------

NOT_AN_INT = st.text(min_size=1, max_size=8).filter(
    lambda s: not s.strip().lstrip("+-").isdigit() and not s.startswith("-")
)


@SETTINGS
@given(
    option=st.sampled_from(["--lanes", "--rows", "--cols", "--vector", "--groups", "--max-len"]),
    value=st.one_of(
        st.integers(-(10**6), 0).map(str),
        st.integers(65, 10**6).map(str),
        NOT_AN_INT,
    ),
)
def test_generate_option_out_of_range_or_wrong_type(tmp_path, option, value):
    if option == "--max-len" and value.lstrip("-").isdigit() and 1 <= int(value) <= 4096:
        return  # in range for --max-len
    out = tmp_path / "out"
    code, _, err = run_cli(["generate", "--unit", "softmax", option, value, "-o", str(out)])
    assert_one_line_usage_error(code, err, option)
    assert not out.exists()


@SETTINGS
@given(
    unit=st.text(min_size=1, max_size=10).filter(
        lambda s: (
            s not in ("softmax", "layernorm", "gelu", "gvsa", "matmul") and not s.startswith("-")
        )
    ),
    command=st.sampled_from(["generate", "sim"]),
)
def test_unknown_unit_is_named(tmp_path, unit, command):
    out = tmp_path / "out"
    argv = [command, "--unit", unit] + (["-o", str(out)] if command == "generate" else [])
    code, _, err = run_cli(argv)
    assert_one_line_usage_error(code, err, "--unit")
    assert not out.exists()


@SETTINGS
@given(
    fps=st.one_of(
        st.floats(max_value=0, allow_nan=False).map(repr),
        st.just("nan"),
        st.just("inf"),
        NOT_AN_INT.filter(lambda s: not _is_float(s)),
    )
)
def test_dse_fps_must_be_a_positive_number(tmp_path, fps):
    out = tmp_path / "dse"
    code, _, err = run_cli(["dse", "--model", "digits-vit", "--fps", fps, "-o", str(out)])
    assert_one_line_usage_error(code, err, "fps")
    assert not out.exists()


def _is_float(s: str) -> bool:
    try:
        return math.isfinite(float(s)) and float(s) > 0
    except ValueError:
        return False


def test_no_half_written_output_on_a_bad_design(tmp_path):
    """A design that fails validation leaves the output folder as it was (absent)."""
    f = tmp_path / "d.toml"
    f.write_text("[array]\nrows = 0\n")
    out = tmp_path / "out"
    code, _, err = run_cli(["generate", "--design", str(f), "-o", str(out)])
    line = assert_one_line_usage_error(code, err, "array.rows")
    assert "greater than or equal to 1" in line
    assert not out.exists() and sorted(p.name for p in Path(tmp_path).iterdir()) == ["d.toml"]
