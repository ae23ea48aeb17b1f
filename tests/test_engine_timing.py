"""The engine's cycle recursion: one definition, its per-step-count form equal to it."""

import math
import random

import pytest

from vitaccel.engine_timing import StepCycles, matmul_cycles, x_beat_words, x_load_cycles


def test_step_cycles_equal_the_recursion_at_every_step_count():
    """StepCycles (the explorer's periodic extension) against matmul_cycles itself: equal
    when the W word rate is dyadic (1, 1/2, 1/4 ports); with other rates (3 ports, a slow
    DDR port) the extrapolated float sum may round to the next cycle."""
    rng = random.Random(7)
    for _ in range(100):
        g, r, c, v = (
            rng.choice((1, 3, 8)),
            rng.choice((1, 4, 7)),
            rng.choice((2, 8)),
            rng.choice((4, 16)),
        )
        t, k, n = rng.randint(1, 300), rng.randint(1, 2000), rng.randint(1, 60)
        heads, keep = rng.random() < 0.3, rng.random() < 0.2
        wc = rng.choice((1.0, 1 / 3, 0.25, 1.7, 4 / 3))
        job = dict(heads=heads, w_word_cycles=wc, x_keep=keep, x_beat=rng.choice((1, 2, 4)))
        steps = StepCycles(t, k, n, g, r, c, v, c // 2, **job)
        assert len(steps) == n and steps.last == steps.at(n)
        slack = 0 if wc in (1.0, 0.25) else 1
        for q in range(1, n + 1):
            want = matmul_cycles(t, k, q, g, r, c, v, c // 2, **job)
            assert abs(steps.at(q) - want) <= slack, (t, k, q, wc, steps.at(q), want)


def test_x_beat_is_the_scratchpad_word_and_divides_the_x_load():
    """The accelerator's X beat: datapath_bytes / 16 k-steps of a token (one per scratchpad
    bank); the X load is ceil(KS / x_beat) beats per token (per group in heads mode)."""
    assert [x_beat_words(v, d) for v in (4, 16) for d in (16, 32, 64)] == [1, 2, 4] * 2
    with pytest.raises(ValueError, match="vector"):
        x_beat_words(0)
    with pytest.raises(ValueError, match="datapath_bytes"):
        x_beat_words(16, 48)
    assert x_load_cycles(17, 9, 4, heads=False, x_beat=2) == 17 * 5
    assert x_load_cycles(17, 9, 4, heads=True, x_beat=2) == 4 * 17 * 5
    assert x_load_cycles(17, 9, 4, heads=True, x_keep=True, x_beat=2) == 0
    # an X-bound job (64 tokens, K = 128 on V = 8: 16 k-steps) is shorter by the halved load
    narrow = matmul_cycles(64, 128, 1, 1, 4, 4, 8, 2)
    wide = matmul_cycles(64, 128, 1, 1, 4, 4, 8, 2, x_beat=2)
    assert narrow - wide == 64 * 16 - 64 * 8


def test_word_writer_segments_pack_one_piece_per_bank():
    """The output writer's word path: shared mode writes ``banks`` pieces a cycle; heads mode
    packs the groups' pieces until a bank repeats (``head_step mod banks`` decides), and a
    token costs the segments up to the last one that writes."""
    from vitaccel.engine_timing import word_writer_cycles, word_writer_segments, word_writes

    assert word_writes(16, 4) and word_writes(32, 2)
    assert not word_writes(8, 4) and not word_writes(16, 1)
    assert word_writer_segments(3, 16, 4, heads=False) == ((0, 1, 2),)
    assert word_writer_segments(3, 32, 4, heads=False) == ((0, 1, 2, 3), (4, 5))
    assert word_writer_segments(3, 16, 4, heads=True, head_step=2561) == ((0, 1, 2),)
    assert word_writer_segments(3, 16, 4, heads=True, head_step=2) == ((0, 1), (2,))
    assert word_writer_segments(2, 32, 4, heads=True, head_step=1) == ((0, 1), (2, 3))
    # DeiT-Tiny's QK^T on 3 x 16 columns, 4 banks: 13 steps of 197 tokens, a cycle each
    assert word_writer_cycles(197, 197, 3, 16, 4, heads=True, nheads=3, head_step=2561) == 2561
    # head step 2 mod 4: 2 cycles a token, 1 when the third group is not a head
    assert word_writer_cycles(5, 16, 3, 16, 4, heads=True, nheads=3, head_step=90) == 10
    assert word_writer_cycles(5, 16, 3, 16, 4, heads=True, nheads=2, head_step=90) == 5
    # shared, 96 channels a step on 2 banks: 3 cycles a token, the last step (4 of 100
    # channels) 1
    assert word_writer_cycles(2, 100, 3, 32, 2, heads=False) == 2 * (3 + 1)


def test_word_path_takes_out_t_with_an_odd_stride():
    """OUT_T takes the word path when the Y stride is odd: per step a cycle per token, per
    chunk of 16 tokens a cycle per ``banks`` channel rows up to the last one written."""
    from vitaccel.engine_timing import word_path_takes, word_writer_cycles

    def takes(**kw):
        return word_path_takes(**{"cols": 16, "banks": 4, "transposed": True, "y_stride": 13,
                                  "runs": False, **kw})  # fmt: skip

    assert takes() and takes(y_stride=3) and takes(transposed=False, y_stride=2)
    assert not takes(y_stride=2) and not takes(runs=True) and not takes(banks=1)
    assert not takes(cols=8)
    # DeiT-Tiny's V^T (192 channels, 197 tokens) on 3 x 16 columns, 4 banks: 4 steps of
    # 197 intake cycles and 13 chunks of 12 segments (the runs: 3,336 cycles)
    assert word_writer_cycles(197, 192, 3, 16, 4, heads=False, transposed=True) == 4 * (
        197 + 13 * 12
    )
    # heads: 2 heads of 16 columns, N = 21 (a step of 16, one of 5): every segment of head
    # 0, then head 1's up to its last channel row
    assert word_writer_cycles(20, 21, 3, 16, 4, heads=True, nheads=2, transposed=True) == (
        20 + 2 * (4 + 4) + 20 + 2 * (4 + 2)
    )


def test_step_zero_streams_behind_the_x_load():
    """A tile of step 0 issues once its own X is in (two cycles after its last beat, or
    one after the whole load), not after the whole X: the X load hides behind step 0's
    compute down to the last tile's. Heads mode: the last group's tiles stream."""
    from vitaccel.engine_timing import first_step, x_tile_ends

    # 4 groups of 3 tokens per tile, 5 beats a token (KS = 9 at x_beat 2)
    assert x_tile_ends(10, 9, 4, 3, heads=False, x_beat=2) == [15, 30, 45, 50]
    assert x_tile_ends(10, 9, 4, 3, heads=True, x_beat=2) == [165, 180, 195, 200]
    # load-bound (15 beats a tile > P = 9; 9 tokens): tile 0 waits for W (WL + 1 = 21),
    # tile 1 two edges after its X (32), the last one edge after the whole load (46)
    assert first_step(45, 20, 9, 0, [15, 30, 45]) == (21, 46 + 8)
    assert first_step(45, 10, 9, 0, [15, 30, 45])[0] == 17  # W in first: b_0 + 2
    # compute-bound tiles (1 beat a tile): back to back from the first tile's X on
    assert first_step(4, 0, 9, 0, [1, 2, 3, 4]) == (3, 3 + 4 * 9 - 1)
    # X_KEEP, or one tile: the X-then-compute schedule
    assert first_step(0, 20, 9, 0, [15, 30]) == (21, 21 + 9 + 8)
    assert first_step(5, 2, 9, 0, [5]) == (6, 14)
    # a whole job: an X-bound one is shorter than X-then-compute by step 0's overlap
    t, k, r, v = 64, 128, 4, 8  # 16 tiles of KS = 16 k-steps, X 64 x 16 beats
    one = matmul_cycles(t, k, 1, 1, r, 4, v, 2)
    keep = matmul_cycles(t, k, 1, 1, r, 4, v, 2, x_keep=True)
    # without the overlap the X load (1024) would add XL - WL = 1024 - 68; streamed, step 0
    # ends KS after the load, so all its tiles but the last (15 x 16 cycles) hide
    assert one - keep == 64 * 16 - 4 * 17 - 15 * 16


def test_first_step_of_tiles_equals_the_tile_by_tile_recursion():
    """The explorer's closed form of step 0 (no loop over tiles) gives :func:`first_step`'s
    edges on every shape of a sweep: load- and compute-bound, heads and shared, X_KEEP,
    W in first or last, one tile or many, X finishing inside the middle tiles."""
    import itertools

    from vitaccel.engine_timing import first_step, first_step_of_tiles, x_tile_ends

    seen = 0
    for tokens, k, groups, rows, heads, x_beat, wl, keep in itertools.product(
        (1, 5, 17, 64, 197), (8, 24, 64, 192), (1, 3), (1, 4, 8, 16), (False, True),
        (1, 2, 4), (0, 7, 300), (False, True),
    ):  # fmt: skip
        ks = -(-k // 8)
        pad = max(0, rows - ks)
        x_load = 0 if keep else (groups if heads else 1) * tokens * -(-ks // x_beat)
        ends = x_tile_ends(tokens, ks, groups, rows, heads=heads, x_beat=x_beat)
        want = first_step(x_load, wl, ks, pad, ends)
        got = first_step_of_tiles(x_load, wl, ks, pad, tokens, groups, rows, heads=heads,
                                  x_beat=x_beat)  # fmt: skip
        assert got == want, (tokens, k, groups, rows, heads, x_beat, wl, keep, got, want)
        seen += 1
    assert seen == 5 * 4 * 2 * 4 * 2 * 3 * 3 * 2


def test_word_writer_end_is_the_word_by_word_queue():
    """The word path's end (:func:`word_writer_end`) against the writer taken word by word:
    step s's tile i puts its R words out a cycle apart from ``S_s + i*P + KS - 1 +
    first_out`` (X_KEEP: every tile a period apart, step 0 too), the writer spends
    ``work[s]`` cycles on each, in order. At a cycle a word it is the engine's own end
    (:func:`matmul_cycles`, X_KEEP or not); a heads job whose heads share a bank (3 cycles
    a word) ends later by the writer's lag in its last step."""
    from vitaccel.engine_timing import _job, _steps, first_issue, latencies, word_writer_end

    rng = random.Random(5)
    for _ in range(150):
        g, r, c, v = rng.choice((1, 3)), rng.choice((1, 2, 4)), 16, rng.choice((4, 16))
        t, k, nsteps = rng.randint(1, 70), rng.randint(1, 300), rng.randint(1, 5)
        heads, wc = rng.random() < 0.5, rng.choice((1.0, 0.5, 1.5))
        shape = (t, k, g, r, c, v, c // 2)
        work = tuple(rng.choice((1, 1, 2, 3, 4)) for _ in range(nsteps))
        job = dict(heads=heads, w_word_cycles=wc, x_keep=True, x_beat=rng.choice((1, 4)),
                   w_lag=rng.choice((0, 2)))  # fmt: skip
        end0, w_load, loaded0, pad, span, release, _ = _job(
            *shape, heads, wc, True, job["x_beat"], job["w_lag"]
        )
        ks, out = -(-k // v), latencies(r, c // 2, v)["first_out"]
        start0 = first_issue(0, loaded0, ks, t, g, r, heads=heads, x_beat=job["x_beat"])
        done, steps = -1e9, _steps(end0, w_load, loaded0, pad, span, release)
        for s in range(nsteps):
            end = next(steps)[0]
            start = start0 if s == 0 else end - span
            for j in range(t):
                arrive = start + (j // r) * (pad + ks) + ks - 1 + out + j % r
                done = max(done, arrive) + work[s]
        got = word_writer_end(*shape, work, **job)
        assert got == done, (shape, work, job, got, done)
        ones = (1,) * nsteps
        for keep in (True, False):
            same = {**job, "x_keep": keep}
            eng = matmul_cycles(t, k, nsteps, g, r, c, v, c // 2, **same)
            assert math.ceil(word_writer_end(*shape, ones, **same)) == eng, (shape, same)


def test_mixed_w_spm_jobs_are_priced_as_the_all_w8_word_path_of_the_w8_columns():
    """On a mixed array whose W8 columns are whole words of a banked scratchpad (rtl/spm
    MixedOutWriter), ``cost.writer_bound`` prices a W_SPM job as the all-W8 word path of
    the W8 columns (``word_writer_cycles`` with ``cols_w8``, which
    test_rtl_spm.py::test_mixed_out_writer_w_spm_jobs_take_the_word_path measures exactly),
    after the same first output word; a DDR job, or one bank, keeps the mapped writer."""
    from vitaccel.dse.cost import first_out_edge, mapped_writer_cycles, writer_bound
    from vitaccel.engine_timing import word_writer_cycles

    g, r, c, c8, v, banks = 2, 8, 20, 16, 16, 4
    t, k = 197, 64
    first = first_out_edge(t, k, g, r, c, v, c8 // 2, True, 1.0, False, banks)
    job = dict(heads=True, nheads=2, transposed=False, x_beat=banks, cols_w8=c8, first=first)
    qk = writer_bound(t, k, t, g, r, c, v, c8 // 2, mapped_steps=13, w_spm=True, banks=banks,
                      head_step=13, **job)  # fmt: skip
    assert qk == first + word_writer_cycles(t, t, g, c8, banks, heads=True, nheads=2,
                                            head_step=13)  # fmt: skip
    mapped = first + mapped_writer_cycles(t, t, t, g, c, c8, heads=True, nheads=2,
                                          transposed=False, w_spm=True)  # fmt: skip
    assert qk < mapped / 2  # (DeiT-Base's QK^T: 13 steps of 197 tokens, both heads a cycle)
    one_bank = writer_bound(t, k, t, g, r, c, v, c8 // 2, mapped_steps=13, w_spm=True,
                            banks=1, **job)  # fmt: skip
    assert one_bank == mapped
    job["heads"], job["nheads"] = False, 1
    ddr = writer_bound(t, k, 768, g, r, c, v, c8 // 2, mapped_steps=24, w_spm=False,
                       banks=banks, **job)  # fmt: skip
    assert ddr == first + mapped_writer_cycles(t, 768, 768, g, c, c8, heads=False, nheads=1,
                                               transposed=False, w_spm=False)  # fmt: skip
