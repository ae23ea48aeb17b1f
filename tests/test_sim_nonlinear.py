"""E2Softmax, AILayerNorm and GELU on Verilator (cocotb), bit-exact against vitaccel.quant.ref.

One Verilog per unit and lane count (run-time scalars and tables are inputs), so the
Verilator builds are shared by every test here and cached across runs. Every element is
compared; a failure names the first differing row and index with expected and got values.
The 1,000,000-element runs and the benchmark are ``@pytest.mark.slow``.
"""

import json

import numpy as np
import pytest

from vitaccel.flow.unit_nonlinear import (
    assert_bit_exact,
    concat_cases,
    gelu_case,
    gelu_table,
    generate_unit,
    golden_capture,
    golden_case,
    layernorm_case,
    layernorm_inputs,
    layernorm_params,
    simulate_case,
    simulate_unit,
    softmax_case,
    softmax_logits,
)
from vitaccel.quant.ref import INT8_MAX, INT8_MIN

UNITS = ("softmax", "layernorm", "gelu")
LANES = 4


def _extremes(length):
    idx = np.arange(length)
    return [
        np.full(length, 0),
        np.full(length, INT8_MAX),  # all equal, saturated
        np.full(length, INT8_MIN),
        np.where(idx == length // 3, INT8_MAX, INT8_MIN),  # one huge
        np.where(idx == length - 1, INT8_MIN, INT8_MAX),  # one tiny
        np.where(idx % 2 == 0, INT8_MAX, INT8_MIN),  # saturation both ways
    ]


def random_case(unit, seed, min_elements=10_000):
    """Random rows (>= min_elements), extremes, lengths 1 and not a multiple of LANES and
    model-like rows; for layernorm/gelu a second layer with other constants."""
    rng = np.random.default_rng(seed)
    if unit == "softmax":
        rows, shifts = [], []
        while sum(len(r) for r in rows) < min_elements:
            n = int(rng.choice([1, 2, 3, 5, 17, 64, 197, 256, int(rng.integers(1, 257))]))
            rows.append(rng.integers(INT8_MIN, INT8_MAX + 1, n))
            shifts.append(int(rng.integers(0, 13)))
        for n in (1, 7, 197):
            rows += _extremes(n)
            shifts += [int(t) for t in rng.integers(0, 13, 6)]
        for t in (3, 4, 5):
            rows += list(softmax_logits(rng, 4, 197, in_shift=t))
            shifts += [t] * 4
        return softmax_case(rows, shifts, lanes=LANES)
    if unit == "layernorm":
        cases = []
        for channels, n_random in ((192, -(-min_elements // 192)), (37, 6), (1, 4)):
            x, base, alpha, _ = layernorm_inputs(rng, 6, channels)
            params = layernorm_params(alpha, rng=rng, in_scale=base)
            rows = [rng.integers(INT8_MIN, INT8_MAX + 1, channels) for _ in range(n_random)]
            rows += list(x) + _extremes(channels)
            cases.append(layernorm_case(rows, params))
        return concat_cases(cases)
    cases = []
    for table in (gelu_table(), gelu_table(0.08, 0.07)):
        rows = [np.arange(INT8_MIN, INT8_MAX + 1)] + _extremes(5) + [np.array([3])]
        while sum(len(r) for r in rows) < min_elements // 2:
            rows.append(rng.integers(INT8_MIN, INT8_MAX + 1, int(rng.integers(1, 769))))
        cases.append(gelu_case(rows, table))
    return concat_cases(cases)


STRESS_ELEMENTS = 100_000


@pytest.mark.parametrize("unit", UNITS)
def test_100k_random_rows_with_stalls_and_a_reset_mid_row(unit):
    """>= 100k random, extreme and model-like elements per unit and CI run, random stalls on
    the input and output streams, and a reset with row 2 half sent and outputs of rows 0-1
    still in flight: the beats taken before the reset are row 0's, and every row after the
    reset comes out exact with nothing from before it (framing and values checked)."""
    case = random_case(unit, seed=1, min_elements=STRESS_ELEMENTS + 2_000)
    beats = [-(-len(r) // LANES) for r in case.rows]
    reset = {"row": 2, "beats": max(1, beats[2] // 2), "outputs": max(1, beats[0] // 2)}
    res = simulate_case(unit, case, lanes=LANES, stall=0.3, seed=3, reset=reset)
    assert res["vectors"] == sum(len(r) for r in case.rows[3:]) >= STRESS_ELEMENTS
    assert_bit_exact(res)


@pytest.fixture(scope="module")
def golden():
    pytest.importorskip("torch")
    return golden_capture(images=2)


@pytest.mark.parametrize("unit", UNITS)
def test_bit_exact_on_rows_captured_from_the_golden_model(unit, golden):
    model, capture = golden
    case = golden_case(unit, model, capture, lanes=LANES)
    if unit == "softmax":
        # Sanity: at the golden model's own lanes the reference reproduces its capture.
        ref_lanes = golden_case(unit, model, capture, lanes=model.config.softmax_lanes)
        got = np.concatenate(ref_lanes.expected)
        np.testing.assert_array_equal(
            got,
            np.concatenate(
                [capture[f"blocks.{b}.attn.probs"].ravel() for b in range(len(model.blocks))]
            ),
        )
    res = simulate_case(unit, case, lanes=LANES, stall=0.2, seed=5)
    assert res["vectors"] == case.elements
    assert_bit_exact(res)


@pytest.mark.parametrize(
    "unit, lanes",
    [
        ("gelu", 4),
        ("softmax", 4),
        ("layernorm", 4),
        # Lanes = 1 needs three more Verilator builds (~30 s each when cold): slow suite.
        pytest.param("gelu", 1, marks=pytest.mark.slow),
        pytest.param("softmax", 1, marks=pytest.mark.slow),
        pytest.param("layernorm", 1, marks=pytest.mark.slow),
    ],
)
def test_sustained_throughput(unit, lanes):
    """Back-to-back rows, no stalls: >= 0.95 x lanes elements per cycle, first input to last
    output (DeiT shapes: 197-token softmax rows, 192 channels, 768-wide GELU rows)."""
    res = simulate_unit(unit, lanes=lanes, vectors=12_000)
    assert {"unit", "vectors", "mismatches", "cycles", "elements_per_cycle"} <= set(res)
    json.dumps(res)  # the CLI prints it as one JSON object
    assert_bit_exact(res)
    assert res["elements_per_cycle"] >= 0.95 * lanes, res


@pytest.mark.parametrize("unit", UNITS)
def test_generate_unit_is_byte_identical_on_repeat(unit, tmp_path):
    first = generate_unit(unit, tmp_path / "a", lanes=4, max_len=64)
    second = generate_unit(unit, tmp_path / "b", lanes=4, max_len=64)
    text = open(first["verilog"]).read()
    assert text == open(second["verilog"]).read()
    assert first["verilog"].endswith(f"{unit}.v")
    assert f"module {first['top']}(" in text


def test_unit_flow_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unit"):
        generate_unit("relu", tmp_path)
    with pytest.raises(TypeError, match="max_row"):
        generate_unit("gelu", tmp_path, max_row=4)
    with pytest.raises(ValueError, match="lanes"):
        generate_unit("softmax", tmp_path, lanes=0)


@pytest.mark.slow
@pytest.mark.parametrize("lanes", [1, 4])
@pytest.mark.parametrize("unit", UNITS)
def test_one_million_elements(unit, lanes):
    res = simulate_unit(unit, lanes=lanes, vectors=1_000_000, seed=42, stall=0.1)
    assert res["vectors"] >= 1_000_000
    assert_bit_exact(res)


@pytest.mark.slow
def test_benchmark_prints_throughput_and_latency(capsys):
    """Cycles per row, elements per cycle and latency for 1 and 4 lanes (no assertion on
    wall-clock time; the cycle counts come from the simulation)."""
    lines = []
    for unit in UNITS:
        for lanes in (1, 4):
            res = simulate_unit(unit, lanes=lanes, vectors=20_000)
            assert_bit_exact(res)
            keys = ("unit", "lanes", "vectors", "rows", "cycles", "cycles_per_row")
            row = {k: res[k] for k in keys}
            row["elements_per_cycle"] = round(res["elements_per_cycle"], 3)
            row["latency"] = res["latency"]
            lines.append(json.dumps(row))
    with capsys.disabled():
        print("\n" + "\n".join(lines))
