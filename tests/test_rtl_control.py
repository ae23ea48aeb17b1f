"""The controller's pieces (vitaccel.rtl.control) without simulation: the RTL instruction
layout against the ISA's encoder, and components that reject arguments before they exist."""

import gc
import warnings

import pytest

from vitaccel import isa
from vitaccel.rtl.control import instr_layout
from vitaccel.rtl.spm import RowReader


def _distinct_instr(op: isa.Op, flags: int) -> tuple[isa.Instr, dict]:
    """An instruction of ``op`` with a different value in every field ``flags`` selects."""
    fmt = isa.FORMATS[op]
    probe = isa.Instr(op, flags)
    values = {}
    for k, f in enumerate(fmt.fields):
        if f.applies(probe.flags):
            values[f.name] = (0x1234 + 97 * k) if f.width == 16 else 0x89AB_CDEF - k
    return isa.Instr(op, flags, **values), values


@pytest.mark.parametrize("op", list(isa.FORMATS), ids=lambda o: o.name)
def test_instr_layout_reads_every_field_and_flag_the_encoder_writes(op):
    """The RTL decodes by name (``instr.matmul.tokens``) from the same field table the encoder
    writes: every field and flag of every opcode reads back, aliases under their flags."""
    fmt = isa.FORMATS[op]
    flag_sets = [0] + [int(f) for f in fmt.flags if int(f)]
    layout = instr_layout()
    for flags in flag_sets:
        instr, values = _distinct_instr(op, flags)
        bits = int.from_bytes(isa.encode(instr), "little")
        view = layout.from_bits(bits)
        assert view.opcode == int(op)
        mine = getattr(view, op.name.lower())
        for name, value in values.items():
            assert getattr(mine, name) == value, (op.name, flags, name)
        for name in isa.flag_bits(op):
            want = bool(fmt.flags[name] & instr.flags)
            assert bool(getattr(mine.flag, name.lower())) == want, (op.name, flags, name)


def test_rejected_component_raises_before_it_exists():
    """A bad argument raises a one-line error naming it, and no half-built component is left
    for Amaranth to warn about (no private ``_MustUse__silence``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="lanes must be a power of two"):
            RowReader(lanes=3)
        gc.collect()
    assert not [w for w in caught if "never used" in str(w.message)]
