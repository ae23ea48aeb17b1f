"""``vitaccel report design FILE``: utilisation, predicted FPS, per-layer cycles and bounds.

Everything comes from the same models the explorer uses (:mod:`vitaccel.dse.cost`,
:mod:`vitaccel.dse.resources`, :mod:`vitaccel.dse.sensitivity`), applied to a saved design.
"""

from __future__ import annotations

from pathlib import Path

from vitaccel.design import load_design
from vitaccel.dse import clock as clock_rule
from vitaccel.dse import resources as res
from vitaccel.dse import sensitivity as sens
from vitaccel.dse.cost import SLOT_BYTES, column_split, estimate, spm_w_builders
from vitaccel.dse.shapes import spec_of

__all__ = ["design_report"]


def design_report(design_path: str | Path) -> dict:
    """Report on the design file at ``design_path``.

    Returns a dict with ``design`` (path), ``model``, ``board``, ``clock_mhz``, ``fps``,
    ``cycles``, ``latency_ms``, ``utilisation`` ({kind: {used, available, util}}), ``parts``
    (usage per block), ``memories`` (the buffers the design may place on URAM288: {buffer:
    {memory: "bram" | "uram", uram: URAM288 it takes}}), ``layers`` (one row per op: name,
    kind, cycles, share, bound, utilisation of the array), ``cycles_by_kind``, ``cycles_by_bound``,
    ``linear_utilisation``, ``fidelity``, ``clock_rule`` and ``scratchpad`` (``kib``, the
    ``layout``: standard, compact or spilling, ``spill_tile`` and ``spill_kib_per_image``).
    """
    from vitaccel.boards import get_budget

    design = load_design(design_path)
    spec = spec_of(design.model)
    budget = get_budget(design.board)
    est = estimate(design, budget=budget, spec=spec)
    usage = res.design_resources(design, spec=spec)
    avail = {
        "dsp48e2": budget.dsp48e2, "lut": budget.lut, "ff": budget.ff, "bram36": budget.bram36,
        "uram": budget.uram,
    }  # fmt: skip
    total = usage["total"].as_dict()
    layers = [
        {
            "name": lc.name,
            "kind": lc.kind,
            "cycles": lc.cycles,
            "share": round(lc.cycles / est.cycles, 5),
            "bound": lc.bound,
            "array_utilisation": round(lc.utilisation, 4) if lc.macs else None,
            "instructions": lc.instructions,
            "tiling": lc.tiles,
            "w4_ratio": design.w4_ratio(lc.name)
            if lc.kind in ("qkv", "proj", "fc1", "fc2")
            else None,
        }
        for lc in est.layers
    ]
    ratios = {
        lc.name: design.w4_ratio(lc.name)
        for lc in est.layers
        if lc.kind in ("qkv", "proj", "fc1", "fc2") and design.w4_ratio(lc.name) > 0
    }
    try:
        fidelity = sens.predict(spec.name, ratios, design.array.w4_kind)
    except sens.SensitivityError as err:
        fidelity = {"error": str(err)}
    depth = res.calibration().get("depth_runs", {})
    levels, unknown = None, None
    if depth:
        nl = design.nonlinear
        c8, c4 = column_split(design.array.cols, design.array.w4_share)
        try:
            levels = clock_rule.design_levels(
                depth,
                (nl.softmax_lanes, nl.layernorm_lanes, nl.gelu_lanes),
                mixed=(design.array.groups, design.array.cols, c8)
                if design.array.w4_share > 0
                else None,
                word_groups=clock_rule.word_groups(
                    design.array.groups, c8, design.datapath_bytes // SLOT_BYTES
                ),
                w_builders=spm_w_builders(design.weight_ports, c4),
            )
        except ValueError as err:  # no calibrated run of its kind: the depth is unknown
            unknown = str(err)
    allowed = (
        clock_rule.allowed_clocks(budget.pl_clocks_mhz, levels) if levels is not None else None
    )
    return {
        "design": str(design_path),
        "model": design.model,
        "board": design.board,
        "clock_mhz": design.clock_mhz,
        "fps": round(est.fps, 2),
        "cycles": est.cycles,
        "latency_ms": round(est.latency_ms, 3),
        "utilisation": {
            k: {"used": total[k], "available": avail[k], "util": round(total[k] / avail[k], 4)}
            for k in res.board_kinds(budget)  # URAM288 on the boards that have it
        },
        "parts": {name: u.as_dict() for name, u in usage["parts"].items()},
        # which buffers are on URAM288 (Design.spm_memory / x_memory); the engine's URAM is
        # its X banks'
        "memories": {
            "scratchpad": {"memory": design.spm_memory, "uram": usage["parts"]["spm"].uram},
            "input (X) buffers": {
                "memory": design.x_memory,
                "uram": usage["parts"]["engine"].uram,
            },
        },
        "scratchpad": _scratchpad(design, spec, est),
        "shell_resources": usage["shell"],
        "engine_buffers": usage["buffers"],
        "layers": layers,
        "cycles_by_kind": est.by_kind(),
        "cycles_by_bound": est.by_bound(),
        "linear_utilisation": round(est.linear_utilisation(), 4),
        "fidelity": fidelity,
        "clock_rule": {
            "levels": levels,
            "allowed_clocks_mhz": allowed,
            "design_clock_allowed": None if allowed is None else design.clock_mhz in allowed,
            **({"unknown": unknown} if unknown else {}),
        },
    }


def _scratchpad(design, spec, est) -> dict:
    """The scratchpad's size and the program's layout in it (docs/isa.md)."""
    from vitaccel.compile.schedule import CompileError, spm_layout

    try:
        al = spm_layout(spec, design.spm_kib * 1024 // 16)
        layout = "spilling" if al.spill_tile else "compact" if al.compact else "standard"
        tile = al.spill_tile
    except CompileError:  # priced on the standard layout, but no program compiles
        layout, tile = "does not fit", 0
    return {"kib": design.spm_kib, "layout": layout, "spill_tile": tile,
            "spill_kib_per_image": round(est.spill_bytes / 1024, 1)}  # fmt: skip
