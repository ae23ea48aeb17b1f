"""Helpers several test files share (one definition each)."""

import numpy as np
import pytest

from vitaccel.compile import interp


def _program_equals_golden(compiled, codec, golden, patches):
    """The program on the ISA interpreter gives the golden model's logits for every image;
    fails on the first image that differs and names its first mismatching class."""
    expect = golden.forward_patches(patches)
    for j in range(len(patches)):
        m = interp.run(compiled.image_with_input(patches[j]), codec, spm_words=compiled.spm_words)
        got = compiled.read_logits(m.ddr)
        assert np.array_equal(got, expect[j]), (
            f"image {j}: first mismatch at class {np.flatnonzero(got != expect[j])[0]}"
        )


@pytest.fixture
def assert_program_equals_golden():
    return _program_equals_golden
