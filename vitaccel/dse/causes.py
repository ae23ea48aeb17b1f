"""Where each layer's cycles go: the cycle model's per-layer cycles split by cause.

:func:`vitaccel.dse.cost.estimate` gives each layer's cycles and the one bound that
dominates it. A hardware engineer wants the split: how much of a MATMUL is the array doing
MACs, how much waits for its X operand, for weights from DDR, for the output writer. The
split here asks the cycle model itself (no second copy of its formulas) by removing one
cause at a time from each MATMUL job, in a fixed order, so the parts add up exactly to the
model's cycles:

* ``writer``: the output writer's bound above the engine's own schedule
  (:func:`~vitaccel.dse.cost.writer_bound` minus :func:`~vitaccel.dse.cost.matmul_cycles`),
* ``DDR``: the weight stream slowed by the HP port and late by the DDR's latency (the
  schedule at the port's word rate, W starting ``cost.w_lag`` after X, minus the schedule
  at one word per cycle from the start), plus every LOAD / STORE instruction,
* ``X load``: what of the X operand's load step 0 does not hide (it streams tile by tile
  behind the load; the schedule minus the same job with ``x_keep``, which skips it),
* ``MAC``: useful MACs over the array's MACs per cycle (the ideal array time),
* ``nonlinear``: the SOFTMAX / LAYERNORM / GELU / RESADD instructions (a unit chained into
  the next MATMUL's X, docs/isa.md "Chains": what of it the MATMUL does not hide; the
  MATMUL's wait for the unit's rows is its ``X load``),
* ``fill & control``: the rest: pipeline fill and drain, padding of short k-loops, W loads
  from the scratchpad, MM_SETUP, fused-output tables and the per-instruction overhead.
"""

from __future__ import annotations

import re

from vitaccel.compile.schedule import kind_of, per_image, schedule
from vitaccel.design import Design
from vitaccel.dse import cost
from vitaccel.engine_timing import x_beat_words
from vitaccel.isa import Instr, MatmulFlags, Op

__all__ = ["CAUSES", "STALLS", "cause_totals", "layer_causes", "group_layers"]

CAUSES = ("MAC", "X load", "DDR", "writer", "nonlinear", "fill & control")
# The causes that are waits the array could be spared (hidden by overlap, a wider path or
# more lanes); MAC is the work itself and fill & control the per-job overhead.
STALLS = ("X load", "writer", "nonlinear", "DDR")


def _matmul_parts(ins: Instr, design: Design, geom, budget,
                  chain: Instr | None = None) -> dict[str, float]:  # fmt: skip
    """Cycles of one scheduled MATMUL by cause (without the instruction overhead); ``chain``:
    its chained unit, whose output is its X (the wait for it is "X load")."""
    a = design.array
    heads, nh, nsteps, n8 = cost._matmul_job(ins, design, geom)
    x_keep = MatmulFlags.X_KEEP in ins.flags
    g, r, c, v, units = geom.groups, geom.rows, geom.cols, geom.vector, geom.units
    x_beat = x_beat_words(v, design.datapath_bytes)
    stretch = cost.x_stretch_of(ins, design, geom, chain)
    if MatmulFlags.W_SPM in ins.flags:  # scratchpad-built W: a word a cycle a builder, no DDR
        word = ideal_word = cost.spm_w_word_cycles(design.weight_ports, geom.cols_w4)
    else:
        word = cost.weight_word_cycles(
            a.vector, design.clock_mhz, budget, design.weight_ports, a.acc_bits
        )
        ideal_word = 1.0 / design.weight_ports  # the engine's own rate: ports words a cycle
    shape = (ins.tokens, ins.k, nsteps, g, r, c, v, units)

    def sched(w: float, keep: bool, lag: int = 0) -> int:
        return cost.matmul_cycles(*shape, heads=heads, w_word_cycles=w, x_keep=keep,
                                  x_beat=x_beat, w_lag=lag, x_stretch=stretch)  # fmt: skip

    lag = cost.w_lag(MatmulFlags.W_SPM in ins.flags)
    full = sched(word, x_keep, lag)
    no_ddr = sched(ideal_word, x_keep)
    no_x = sched(ideal_word, True)
    wb = cost.writer_bound(
        ins.tokens, ins.k, ins.n, g, r, c, v, units, heads=heads, nheads=nh,
        transposed=MatmulFlags.OUT_T in ins.flags, w_word_cycles=word, x_keep=x_keep,
        x_beat=x_beat, x_stretch=stretch,
        mapped_steps=nsteps if geom.cols_w4 else 0, mapped_n8=n8, cols_w8=geom.cols_w8,
        w_spm=MatmulFlags.W_SPM in ins.flags, w_lag=lag, **cost.writer_path(ins, design),
    )  # fmt: skip
    macs = nh * ins.tokens * ins.k * ins.n
    mac = min(no_x, macs / geom.macs_per_cycle)
    return {
        "writer": max(0, int(-(-wb // 1)) - full),
        "DDR": full - no_ddr,
        "X load": no_ddr - no_x,
        "MAC": mac,
    }


def layer_causes(design: Design, *, budget=None) -> list[dict]:
    """One row per layer of the scheduled program: ``name``, ``kind``, ``cycles`` and
    ``causes`` ({cause: cycles}, summing to ``cycles``; see the module docstring).

    ``cycles`` equals :func:`vitaccel.dse.cost.estimate`'s cycles of the same layer: both
    price the scheduler's own instruction list (:func:`vitaccel.compile.schedule.schedule`).
    """
    from vitaccel.dse.shapes import spec_of

    if budget is None:
        from vitaccel.boards import get_budget

        budget = get_budget(design.board)
    spec = spec_of(design.model)
    geom = cost.geometry(design)
    port = cost.port_bytes_per_cycle(design.clock_mhz, budget)
    rows: dict[str, dict] = {}
    program = per_image(schedule(spec, design, strict=False))  # an image of a stream
    for ins, cycles, _, _, unit in cost.priced_program(program, design, budget=budget,
                                                       geom=geom, port=port):  # fmt: skip
        parts = dict.fromkeys(CAUSES, 0.0)
        if ins.op in (Op.LOAD, Op.STORE):
            parts["DDR"] = cycles
        elif ins.op is Op.MATMUL:
            parts.update(_matmul_parts(ins, design, geom, budget, unit))
            parts["fill & control"] = cycles - sum(parts.values())
        else:  # a chained unit: what of it its MATMUL does not hide
            parts["nonlinear"] = cycles
        row = rows.setdefault(
            ins.label, {"name": ins.label, "kind": kind_of(ins), "cycles": 0, "causes": {}}
        )
        row["cycles"] += cycles
        for k, v in parts.items():
            row["causes"][k] = row["causes"].get(k, 0.0) + v
    return list(rows.values())


_BLOCK = re.compile(r"^blocks\.\d+\.")


def group_layers(rows: list[dict], max_rows: int = 60) -> tuple[list[dict], bool]:
    """``rows`` as they are when there are at most ``max_rows``, else summed over the
    encoder blocks (``blocks.*.mlp.fc1``); the flag says whether they were grouped."""
    if len(rows) <= max_rows:
        return rows, False
    out: dict[str, dict] = {}
    for r in rows:
        name = _BLOCK.sub("blocks.*.", r["name"])
        g = out.setdefault(name, {"name": name, "kind": r["kind"], "cycles": 0, "causes": {}})
        g["cycles"] += r["cycles"]
        for k, v in r["causes"].items():
            g["causes"][k] = g["causes"].get(k, 0.0) + v
    return list(out.values()), True


def cause_totals(design: Design, *, budget=None) -> dict[str, float]:
    """The whole program's cycles by cause (:func:`layer_causes` summed over the layers):
    ``{cause: cycles}`` in :data:`CAUSES` order, summing to the cycle model's cycles."""
    totals = dict.fromkeys(CAUSES, 0.0)
    for row in layer_causes(design, budget=budget):
        for k, v in row["causes"].items():
            totals[k] += v
    return totals
