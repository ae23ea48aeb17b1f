"""The GVSA matmul engine on Verilator (cocotb): bit-exact against matmul_int + requantize.

Most tests share one engine (1 group x 4 x 4 PEs, vector 8, half the columns int4 W4
lanes) so that one cached Verilator build serves them; each test runs all its jobs in one
simulation. A small pot4 engine checks the power-of-two lanes. The 197-token DeiT-Tiny
benchmark is behind ``-m slow``.
"""

import numpy as np
import pytest

from vitaccel.flow.unit_gvsa import (
    benchmark_layers,
    engine_params,
    format_benchmark,
    generate_gvsa,
    random_case,
    simulate_jobs,
    simulate_matmul,
)

# The shared CI engine: X banks deep enough for every DeiT-Tiny shape at 197 tokens.
CI = engine_params(rows=4, cols=4, vector=8, w4_share=0.5, w4_kind="int4", x_words=8192)
POT = engine_params(rows=2, cols=4, vector=4, w4_share=0.5, w4_kind="pot4", x_words=512)
# A log2-capable engine: 2 groups (heads side by side), half the columns int4.
LOG2 = engine_params(
    groups=2, rows=4, cols=4, vector=8, w4_share=0.5, w4_kind="int4", x_words=4096, log2=True
)


def check(results):
    """Every element compared; report the first mismatch as (t, n), expected, got."""
    for r in results:
        assert r["mismatches"] == 0, (
            f"{r['name']}: {r['mismatches']} mismatches, first at index / expected / got "
            f"{r['first_mismatch']}"
        )


def scheme_cases(rng, kinds):
    """Random shapes (dimensions not multiples of the array) x weight schemes."""
    shapes = [(1, 1, 1), (5, 13, 7), (9, 20, 10), (4, 8, 4), (23, 70, 19), (7, 9, 33)]
    cases = []
    for t, k, n in shapes:
        for kind, ratio in kinds:
            cases.append(
                random_case(
                    rng,
                    t,
                    k,
                    n,
                    w4_ratio=ratio,
                    w4_kind=kind,
                    name=f"{t}x{k}x{n} {kind} {ratio}",
                )
            )
    # uint8 activations (softmax probabilities) and non-default clamp bounds
    cases.append(random_case(rng, 11, 37, 6, x_unsigned=True, name="uint8 x"))
    cases.append(random_case(rng, 6, 30, 9, lo=-20, hi=90, name="clamp [-20, 90]"))
    return cases


SCHEMES_INT4 = [("int4", 0.0), ("int4", 0.25), ("int4", 0.5), ("int4", 1.0), ("pot4", 0.5)]


STRESS_OUTPUTS = 100_000


def test_random_shapes_every_scheme_then_100k_outputs_with_stalls_and_a_reset():
    """Every W4 scheme on odd shapes, then a job cut short by a reset (half its outputs taken,
    X and W still streaming), then >= 100k more random outputs (K 24-40, all schemes): random
    stalls on the X, W and output streams throughout; every output of every job but the cut
    one is compared (a leftover from before the reset would shift or corrupt them)."""
    rng = np.random.default_rng(11)
    cases = scheme_cases(rng, SCHEMES_INT4)
    cut = len(cases)
    cases.append(random_case(rng, 64, 40, 96, w4_ratio=0.5, name="cut by reset"))
    after = 0
    j = 0
    while after < STRESS_OUTPUTS:
        kind, ratio = SCHEMES_INT4[j % len(SCHEMES_INT4)]
        t, k, n = 64 + j, 24 + (j % 3) * 8, 150 + 3 * j
        cases.append(random_case(rng, t, k, n, w4_ratio=ratio, w4_kind=kind, name=f"big {j}"))
        after += t * n
        j += 1
    results = simulate_jobs(cases, CI, stall=0.3, seed=3, reset_after=cut)
    assert results[cut] is None
    check(results[:cut] + results[cut + 1 :])
    assert sum(r["outputs"].size for r in results[cut + 1 :]) >= STRESS_OUTPUTS


def test_cycles_match_the_model_without_stalls():
    rng = np.random.default_rng(12)
    results = simulate_jobs(scheme_cases(rng, [("int4", 0.0), ("int4", 0.5)]), CI)
    check(results)
    for r in results:
        assert r["cycles"] == r["model_cycles"], (r["name"], r["cycles"], r["model_cycles"])


def test_pot4_lanes_with_stalls():
    rng = np.random.default_rng(13)
    schemes = [("pot4", 0.0), ("pot4", 0.25), ("pot4", 0.5), ("pot4", 1.0), ("int4", 0.5)]
    check(simulate_jobs(scheme_cases(rng, schemes), POT, stall=0.25, seed=4))


def log2_cases(rng):
    """Log2-code x V jobs (shared and heads mode, odd shapes) between ordinary jobs."""
    cases = []
    for t, k, n in ((1, 1, 1), (5, 13, 7), (9, 20, 10), (17, 17, 16), (23, 70, 19)):
        cases.append(random_case(rng, t, k, n, x_log2=True, name=f"log2 {t}x{k}x{n}"))
    cases.append(random_case(rng, 17, 17, 16, heads=2, x_log2=True, name="log2 2 heads"))
    cases.append(random_case(rng, 9, 33, 8, heads=1, x_log2=True, name="log2 1 head"))
    cases.append(random_case(rng, 11, 30, 9, w4_ratio=0.5, name="int8/int4 between"))
    cases.append(random_case(rng, 12, 17, 16, heads=2, x_unsigned=True, name="uint8 heads"))
    cases.append(random_case(rng, 6, 40, 5, x_log2=True, name="log2 after uint8"))
    return cases


def test_log2_mode_with_stalls():
    rng = np.random.default_rng(15)
    check(simulate_jobs(log2_cases(rng), LOG2, stall=0.3, seed=6))


def test_log2_mode_cycles_match_the_model():
    rng = np.random.default_rng(16)
    results = simulate_jobs(log2_cases(rng), LOG2)
    check(results)
    for r in results:
        assert r["cycles"] == r["model_cycles"], (r["name"], r["cycles"], r["model_cycles"])


def test_deit_tiny_attention_log2_reduced_tokens(capsys):
    rows = benchmark_layers(
        "deit-tiny", LOG2, tokens=33, layers=["qk^T", "attn_v"], log2=True, seed=8
    )
    with capsys.disabled():
        print("\n" + format_benchmark(rows, "deit-tiny attention (33 tokens, log2 P) on 2x4x4x8"))
    for r in rows:
        assert r["mismatches"] == 0, (r["layer"], r["first_mismatch"])
        assert r["cycles"] == r["model_cycles"], r


def test_simulate_matmul_api():
    rng = np.random.default_rng(14)
    case = random_case(rng, 6, 24, 8, w4_ratio=0.5)
    r = simulate_matmul(
        x=case.x,
        wq=(case.q, case.kind),
        bias=case.bias,
        mult=case.mult,
        shift=case.shift,
        rows=4,
        cols=4,
        vector=8,
        w4_share=0.5,
        x_words=8192,
        stall=0.2,
        seed=1,
    )
    assert r["mismatches"] == 0 and r["first_mismatch"] is None
    assert r["macs"] == 6 * 24 * 8 and r["cycles"] > 0 and 0 < r["utilization"] <= 1
    np.testing.assert_array_equal(r["outputs"], case.expected())


@pytest.mark.parametrize("w4_ratio", [0.0, 0.5])
def test_digits_vit_layers(w4_ratio, capsys):
    rows = benchmark_layers("digits-vit", CI, w4_ratio=w4_ratio, stall=0.2, seed=5)
    with capsys.disabled():
        print("\n" + format_benchmark(rows, f"digits-vit on 1x4x4x8, W4 ratio {w4_ratio}"))
    for r in rows:
        assert r["mismatches"] == 0, (r["layer"], r["first_mismatch"])


def test_deit_tiny_layers_reduced_tokens(capsys):
    rows = benchmark_layers("deit-tiny", CI, tokens=21, w4_ratio=0.5, seed=6)
    with capsys.disabled():
        print("\n" + format_benchmark(rows, "deit-tiny (21 tokens) on 1x4x4x8, W4 ratio 0.5"))
    for r in rows:
        assert r["mismatches"] == 0, (r["layer"], r["first_mismatch"])
        assert r["cycles"] == r["model_cycles"], r


@pytest.mark.slow
def test_deit_tiny_benchmark_197_tokens(capsys):
    rows = benchmark_layers("deit-tiny", CI, w4_ratio=0.5, seed=7)
    with capsys.disabled():
        print("\n" + format_benchmark(rows, "deit-tiny (197 tokens) on 1x4x4x8, W4 ratio 0.5"))
    for r in rows:
        assert r["mismatches"] == 0, (r["layer"], r["first_mismatch"])
        assert r["cycles"] == r["model_cycles"], r
    fc1 = next(r for r in rows if r["layer"] == "fc1")
    assert fc1["utilization"] >= 0.85, fc1


@pytest.mark.slow
def test_deit_tiny_attention_log2_197_tokens(capsys):
    rows = benchmark_layers("deit-tiny", LOG2, layers=["qk^T", "attn_v"], log2=True, seed=9)
    with capsys.disabled():
        print("\n" + format_benchmark(rows, "deit-tiny attention (197 tokens, log2 P) on 2x4x4x8"))
    for r in rows:
        assert r["mismatches"] == 0, (r["layer"], r["first_mismatch"])
        assert r["cycles"] == r["model_cycles"], r


def test_generate_gvsa_is_deterministic(tmp_path):
    kw = dict(groups=1, rows=2, cols=4, vector=4, w4_share=0.5)
    a = generate_gvsa(tmp_path / "a", **kw)
    b = generate_gvsa(tmp_path / "b", **kw)
    for key in ("array_verilog", "engine_verilog"):
        text_a = open(a[key]).read()
        assert text_a == open(b[key]).read()
        assert "/work" not in text_a
    assert a["w8_macs_per_cycle"] == 2 * 2 * 4 and a["w4_macs_per_cycle"] == 2 * 2 * 4
