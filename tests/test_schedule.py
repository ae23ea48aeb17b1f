"""The shape-only scheduler: every instruction labelled with the model op it computes, the
packed fields left open, the weight layers covered row for row (no torch, no weights)."""

import pytest

from vitaccel import isa
from vitaccel.compile.schedule import (
    CHAIN_ROLES,
    CompileError,
    chain_candidates,
    chain_role,
    chain_roles,
    kind_of,
    per_image,
    program_for,
    schedule,
)
from vitaccel.design import ArrayConfig, Design, NonlinearConfig
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


# ---- chains (docs/isa.md "Chains") -------------------------------------------------------

# The explorer's DeiT-Tiny design (`vitaccel dse --model deit-tiny --board zcu102 --fps 600`):
# units of 64 lanes on a 64-byte datapath with V = 16, where both units chain.
DEIT_T = Design(model="deit-tiny", clock_mhz=300, datapath_bytes=64, weight_ports=2,
                spm_kib=442, array=ArrayConfig(groups=3, rows=5, cols=16, vector=16),
                nonlinear=NonlinearConfig(softmax_lanes=64, layernorm_lanes=64, gelu_lanes=1))  # fmt: skip


def _chained_roles(prog) -> list[str]:
    return [chain_role(i.label) for i in prog if isa.chained(i)]


def test_chain_is_set_exactly_where_it_fits_and_the_design_chains():
    """chain="all" sets CHAIN on every SOFTMAX / LAYERNORM whose next instruction fits
    (isa.chain_fits) on a unit the design can chain (engine_timing.unit_chains): on the
    DeiT-Tiny design norm1, the softmax, norm2 and the final norm, and nothing else changes;
    on the default 16-byte design none, and the program is byte-identical to "none"."""
    spec = spec_of("deit-tiny")
    none = schedule(spec, DEIT_T, chain="none")
    prog = schedule(spec, DEIT_T, chain="all")
    assert len(prog) == len(none)  # 3 heads on 3 groups: one P x V job, no softmax split
    for a, b, nxt in zip(prog, none, prog[1:] + [None], strict=True):
        assert a.replace(flags=b.flags) == b and a.label == b.label
        fits = a.op in isa.CHAIN_OPS and isa.chain_fits(a, nxt) is None
        assert isa.chained(a) == fits, a
    roles = _chained_roles(prog)
    assert roles == ["norm1", "attn.softmax", "norm2"] * spec.depth + ["norm"]
    assert chain_candidates(DEIT_T) == frozenset(CHAIN_ROLES)

    # only a unit of more than 16 lanes dividing the datapath chains: a 16-lane softmax not,
    # a 32-lane one on the 64-byte datapath (its beats packed two to an X beat) does
    def with_softmax(lanes):
        return DEIT_T.model_copy(update={"nonlinear": DEIT_T.nonlinear.model_copy(
            update={"softmax_lanes": lanes})})  # fmt: skip

    ln_only = with_softmax(16)
    assert set(_chained_roles(schedule(spec, ln_only, chain="all"))) == {"norm1", "norm2", "norm"}
    assert _chained_roles(schedule(spec, with_softmax(32), chain="all")) == roles
    # spilling in 256 KiB (2 token tiles): the last LN1 tile is followed by QKV, whose X is
    # every token: it does not fit, so it does not chain; LN2 -> FC1 per tile does
    tiles = DEIT_T.model_copy(update={"spm_kib": 256})
    prog = schedule(spec, tiles, chain="all", spill=True)
    for a, nxt in zip(prog, prog[1:], strict=False):
        if a.op in isa.CHAIN_OPS:
            assert isa.chained(a) == (isa.chain_fits(a, nxt) is None), a
    roles = _chained_roles(prog)
    assert "norm1" not in roles and roles.count("norm2") == 2 * spec.depth
    # the default design (16-byte datapath, 4 lanes): nothing chains, not a byte changes
    plain = Design(model="deit-tiny", spm_kib=1024)
    assert chain_candidates(plain) == frozenset()
    assert isa.encode_program(schedule(spec, plain, chain="all")) == isa.encode_program(
        schedule(spec, plain, chain="none"))  # fmt: skip
    with pytest.raises(ValueError, match="chain must be one of"):
        schedule(spec, DEIT_T, chain="some")


def test_chained_softmax_runs_per_p_x_v_job():
    """More heads than groups (DeiT-Small: 6 heads on 2 groups, 3 P x V jobs a block): a
    chained softmax is split into one instruction per job, its heads' rows at its heads'
    offset, right before the job, so each job chains; without chains one softmax a block."""
    spec = spec_of("deit-small")
    design = DEIT_T.model_copy(update={"model": "deit-small", "spm_kib": 1024,
                                       "array": ArrayConfig(groups=2, rows=8, cols=16, vector=16)})  # fmt: skip
    none = schedule(spec, design, chain="none")
    prog = schedule(spec, design, chain="all")
    T, jobs = spec.tokens, spec.heads // 2
    assert len(prog) == len(none) + spec.depth * (jobs - 1)
    sm = [i for i in prog if i.op is Op.SOFTMAX]
    whole = [i for i in none if i.op is Op.SOFTMAX]
    assert len(sm) == spec.depth * jobs and len(whole) == spec.depth
    stride = whole[0].src_stride
    for j, ins in enumerate(sm[:jobs]):
        assert ins.rows == 2 * T and ins.cols == T and isa.chained(ins)
        assert ins.src == ins.dst == whole[0].src + j * 2 * T * stride
    for j, ins in enumerate(prog[:-1]):
        if ins.op is Op.SOFTMAX:
            nxt = prog[j + 1]
            assert nxt.label.endswith("attn.sv") and isa.chain_fits(ins, nxt) is None
    # the same instructions otherwise: the program without the split softmaxes' CHAIN flags
    rest = [i.replace(flags=i.flags & ~isa.LayerNormFlags.CHAIN) if i.op is Op.LAYERNORM else i
            for i in prog if i.op is not Op.SOFTMAX]  # fmt: skip
    assert rest == [i for i in none if i.op is not Op.SOFTMAX]


@pytest.mark.parametrize("model", ["deit-tiny", "deit-small", "deit-base"])
def test_paying_chains_are_never_slower_in_the_cycle_model(model):
    """chain="paying" keeps only roles whose pairs gain in the cycle model, so its program
    is never slower than "none" (nor than "all"); on the zoo's designs every role pays."""
    from vitaccel.dse.cost import program_cycles

    spec = spec_of(model)
    design = DEIT_T.model_copy(update={"model": model, "spm_kib": 1024})
    cycles = {mode: program_cycles(per_image(schedule(spec, design, chain=mode)), design)
              for mode in ("none", "all", "paying")}  # fmt: skip
    assert cycles["paying"] <= cycles["none"] and cycles["paying"] <= cycles["all"]
    assert cycles["all"] < cycles["none"]
    assert chain_roles(spec, design, "paying") == chain_roles(spec, design, "all")


def test_chain_default_is_read_by_every_schedule(monkeypatch):
    """schedule.CHAIN_DEFAULT is the one default: schedule() without ``chain`` takes it."""
    from vitaccel.compile import schedule as sch

    spec = spec_of("deit-tiny")
    for mode in ("all", "none"):
        monkeypatch.setattr(sch, "CHAIN_DEFAULT", mode)
        assert schedule(spec, DEIT_T) == schedule(spec, DEIT_T, chain=mode)
