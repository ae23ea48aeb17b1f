"""The engine's cycle recursion: one definition, its per-step-count form equal to it."""

import random

from vitaccel.engine_timing import StepCycles, matmul_cycles


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
        job = dict(heads=heads, w_word_cycles=wc, x_keep=keep)
        steps = StepCycles(t, k, n, g, r, c, v, c // 2, **job)
        assert len(steps) == n and steps.last == steps.at(n)
        slack = 0 if wc in (1.0, 0.25) else 1
        for q in range(1, n + 1):
            want = matmul_cycles(t, k, q, g, r, c, v, c // 2, **job)
            assert abs(steps.at(q) - want) <= slack, (t, k, q, wc, steps.at(q), want)
