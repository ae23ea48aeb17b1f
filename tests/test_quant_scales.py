"""Compile-time quantisers (vitaccel.quant.scales): the MSE range search."""

import numpy as np
import pytest

from vitaccel.quant import scales


def _mse(values: np.ndarray, clip: float, levels: int = 127) -> float:
    step = clip / levels
    deq = np.minimum(np.floor(values / step + 0.5), levels) * step
    return float(((deq - values) ** 2).mean())


def test_mse_clip_keeps_the_max_for_uniform_data():
    a = np.random.default_rng(0).uniform(0, 1, 100_000)
    # Clipping uniform data only adds error: the search keeps (nearly) the whole range.
    assert scales.mse_clip(a) >= 0.99 * a.max()


def test_mse_clip_cuts_a_heavy_tail_and_lowers_the_error():
    # Laplace magnitudes on a 4-bit grid: the MSE-optimal clip is about 5 scale units
    # (Banner et al., ACIQ), well below the sample maximum (about 11.5).
    a = np.abs(np.random.default_rng(1).laplace(size=100_000))
    clip = scales.mse_clip(a, levels=15)
    assert 0.3 * a.max() < clip < 0.6 * a.max()
    # Exact error (no histogram) of the chosen clip beats the plain maximum.
    assert _mse(a, clip, 15) < 0.5 * _mse(a, a.max(), 15)


def test_mse_clip_is_one_of_the_candidates_and_deterministic():
    a = np.abs(np.random.default_rng(2).normal(size=10_000))
    clip = scales.mse_clip(a, levels=255)
    assert clip == scales.mse_clip(a, levels=255)
    assert np.isclose(clip / a.max(), scales.MSE_FRACTIONS).any()


@pytest.mark.parametrize("bad", [np.array([]), np.array([-1.0, 2.0]), np.array([np.nan, 1.0])])
def test_mse_clip_refuses_bad_input(bad):
    with pytest.raises(ValueError, match="mse_clip"):
        scales.mse_clip(bad)


def test_mse_clip_of_zeros_is_zero():
    assert scales.mse_clip(np.zeros(5)) == 0.0
