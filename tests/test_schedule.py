"""The shape-only scheduler: every instruction labelled with the model op it computes, the
packed fields left open, the weight layers covered row for row (no torch, no weights)."""

import pytest

from vitaccel.compile.schedule import CompileError, kind_of, program_for, schedule
from vitaccel.design import ArrayConfig, Design
from vitaccel.dse.shapes import MATMUL_KINDS, NONLINEAR_KINDS, model_ops, spec_of
from vitaccel.isa import MatmulFlags, Op


@pytest.mark.parametrize("model, groups", [("digits-vit", 1), ("deit-base", 2)])
def test_schedule_labels_every_instruction_and_covers_every_weight_row(model, groups):
    design = Design(model=model, spm_kib=1024, array=ArrayConfig(groups=groups, cols=8))
    spec_ops = {op.name: op for op in model_ops(model)}
    prog = schedule(spec_of(model), design)
    assert prog[-1].op is Op.END
    rows: dict[str, int] = {}
    for ins in prog[:-1]:
        assert kind_of(ins) in (*MATMUL_KINDS, *NONLINEAR_KINDS, "load", "store"), ins
        if ins.op is Op.MATMUL and MatmulFlags.W_SPM not in ins.flags:
            assert ins.w_ddr == 0  # the packer places the W stream
            rows[ins.label] = rows.get(ins.label, 0) + ins.n
        elif ins.op is Op.MATMUL:
            assert spec_ops[ins.label].kind == kind_of(ins) and ins.mult == ins.shift == 0
        elif ins.op in (Op.LAYERNORM, Op.SOFTMAX, Op.RESADD):
            assert spec_ops[ins.label].kind == kind_of(ins)
            assert ins.get("recip_mult", 0) == ins.get("in_shift", 0) == ins.get("shift", 0) == 0
    assert rows == {op.weight_layer: op.n for op in spec_ops.values() if op.weight_layer}


def test_strict_schedule_refuses_what_does_not_fit_and_pricing_still_gets_a_program():
    spec = spec_of("deit-base")
    with pytest.raises(CompileError, match="scratchpad too small"):
        program_for(spec, groups=1, spm_words=4096)
    assert program_for(spec, groups=1, spm_words=4096, strict=False)[-1].op is Op.END
