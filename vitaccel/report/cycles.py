"""Where each layer's cycles go: the cycle model's per-layer cycles split by cause.

:func:`vitaccel.dse.cost.estimate` gives each layer's cycles and the one bound that
dominates it. A hardware engineer wants the split: how much of a MATMUL is the array doing
MACs, how much waits for its X operand, for weights from DDR, for the output writer. The
split here asks the cycle model itself (no second copy of its formulas) by removing one
cause at a time from each MATMUL job, in a fixed order, so the parts add up exactly to the
model's cycles:

* ``writer``: the output writer's bound above the engine's own schedule
  (:func:`~vitaccel.dse.cost.writer_bound` minus :func:`~vitaccel.dse.cost.matmul_cycles`),
* ``DDR``: the weight stream slowed by the HP port (the schedule at the port's word rate
  minus the schedule at one word per cycle), plus every LOAD / STORE instruction,
* ``X load``: the X operand's load before the first k-step (the schedule minus the same
  job with ``x_keep``, which skips it),
* ``MAC``: useful MACs over the array's MACs per cycle (the ideal array time),
* ``nonlinear``: the SOFTMAX / LAYERNORM / GELU / RESADD instructions,
* ``fill & control``: the rest: pipeline fill and drain, padding of short k-loops, W loads
  from the scratchpad, MM_SETUP, fused-output tables and the per-instruction overhead.
"""

from __future__ import annotations

import re

from vitaccel.design import Design
from vitaccel.dse import cost
from vitaccel.isa import residual_fusable

__all__ = ["CAUSES", "layer_causes", "group_layers"]

CAUSES = ("MAC", "X load", "DDR", "writer", "nonlinear", "fill & control")


def _matmul_parts(ins: cost.Instr, design: Design, geom, budget) -> dict[str, float]:
    """Cycles of one MATMUL / heads job by cause (without the instruction overhead)."""
    a = design.array
    units = geom.cols_w8 // 2 + geom.cols_w4
    heads = ins.op == "heads" and ins.heads > 0
    if ins.op == "matmul":
        n8 = ins.n
        if geom.cols_w4 and ins.weight_layer not in (None, "patch_embed", "head"):
            n8 = ins.n - cost.w4_rows(ins.n, design.w4_ratio(ins.weight_layer))
        word = cost.weight_word_cycles(
            a.vector, design.clock_mhz, budget, design.weight_ports, a.acc_bits
        )
        ideal_word = 1.0 / design.weight_ports  # the engine's own rate: ports words a cycle
    else:
        n8, word, ideal_word = ins.n, 1.0, 1.0
    nsteps = cost.job_nsteps(ins.n, n8, geom.groups, geom.cols, geom.cols_w8, heads=heads)
    shape = (ins.tokens, ins.k, nsteps, geom.groups, geom.rows, geom.cols, geom.vector, units)

    def sched(w: float, x_keep: bool) -> int:
        return cost.matmul_cycles(*shape, heads=heads, w_word_cycles=w, x_keep=x_keep)

    full = sched(word, ins.x_keep)
    no_ddr = sched(ideal_word, ins.x_keep)
    no_x = sched(ideal_word, True)
    nh = max(1, ins.heads) if ins.op == "heads" else 1
    wb = cost.writer_bound(
        ins.tokens, ins.k, ins.n, geom.groups, geom.rows, geom.cols, geom.vector, units,
        heads=heads, nheads=nh, transposed=ins.transposed,
        w_word_cycles=word if ins.op == "matmul" else 1.0, x_keep=ins.x_keep,
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
    """One row per layer of the compiled program: ``name``, ``kind``, ``cycles`` and
    ``causes`` ({cause: cycles}, summing to ``cycles``; see the module docstring).

    ``cycles`` equals :func:`vitaccel.dse.cost.estimate`'s cycles of the same layer.
    """
    from vitaccel.dse.shapes import spec_of

    if budget is None:
        from vitaccel.boards import get_budget

        budget = get_budget(design.board)
    spec = spec_of(design.model)
    geom = cost.geometry(design)
    port = cost.port_bytes_per_cycle(design.clock_mhz, budget)
    fuse = residual_fusable(geom.groups, geom.cols)
    rows: dict[str, dict] = {}
    for ins in cost.program(spec, geom.groups, fuse, design.spm_kib * 1024 // cost.SLOT_BYTES):
        cycles = cost.instr_cycles(ins, design, geom, port, budget)[0] + cost.LATENCIES["instr"]
        parts = dict.fromkeys(CAUSES, 0.0)
        if ins.op in ("load", "store"):
            parts["DDR"] = cycles
        elif ins.op in ("matmul", "heads"):
            parts.update(_matmul_parts(ins, design, geom, budget))
            parts["fill & control"] = cycles - sum(parts.values())
        else:
            parts["nonlinear"] = cycles
        row = rows.setdefault(
            ins.name, {"name": ins.name, "kind": ins.kind, "cycles": 0, "causes": {}}
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
