"""Everything the build report shows, gathered in one plain dict.

Two sources: the design file (what the cycle, resource and accuracy models say about it,
:func:`vitaccel.dse.report.design_report`) and, when the design was built, the build's
summary (:func:`vitaccel.flow.build.build`: Yosys resources, the RTL run, accuracy on real
images, the files written). Every figure carries where it comes from ("cycle model",
"RTL run", "Yosys", "resource model") so the page never passes a prediction off as a
measurement.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from vitaccel.design import Design, load_design

__all__ = ["collect", "board_peak_macs", "performance"]

WEIGHT_KINDS = ("qkv", "proj", "fc1", "fc2")


def board_peak_macs(design: Design) -> float:
    """The board's MAC peak at the design's clock: 2 MACs per DSP48E2 x DSPs x clock."""
    from vitaccel.boards import get_budget

    return 2 * get_budget(design.board).dsp48e2 * design.clock_mhz * 1e6


def performance(design: Design, summary: dict | None = None) -> dict:
    """FPS, latency and the share of the board's peak, from the cycle model and (when the
    build ran the RTL) from the RTL run; ``macs`` is the useful MACs of one image."""
    from vitaccel.dse.cost import estimate

    est = estimate(design)
    macs = sum(lc.macs for lc in est.layers)
    peak = board_peak_macs(design)
    out = {
        "macs": macs,
        "board_peak_macs": peak,
        "array_macs_per_cycle": est.macs_per_cycle,
        "model": {
            "source": "cycle model",
            "cycles": est.cycles,
            "fps": est.fps,
            "latency_ms": est.latency_ms,
            "peak_share": macs * est.fps / peak,
        },
        "rtl": None,
    }
    if summary and summary.get("cycles_per_image"):
        cyc = float(summary["cycles_per_image"])
        fps = design.clock_mhz * 1e6 / cyc
        out["rtl"] = {
            "source": "RTL run",
            "cycles": cyc,
            "fps": fps,
            "latency_ms": cyc / (design.clock_mhz * 1e3),
            "peak_share": macs * fps / peak,
            "model_error": est.cycles / cyc - 1,
        }
    return out


@lru_cache(maxsize=8)
def _explorer_front(model: str, board: str, max_util: float) -> tuple[list[dict], int]:
    """The explorer's Pareto front of ``model`` on ``board`` (no FPS target), as the points
    ``vitaccel dse`` writes to pareto.json; and the number of candidates."""
    from vitaccel.dse.search import _fit_mask, pareto_front, search

    result = search(model, board, max_util=max_util)
    mask = _fit_mask(result)
    front = pareto_front([c for c, ok in zip(result["pool"], mask, strict=True) if ok])
    pts = [
        {
            "fps": c.fps,
            "dsp48e2": c.usage["dsp48e2"],
            "lut": c.usage["lut"],
            "array": {"w4_share": c.w4_share},
        }
        for c in front
    ]
    return pts, len(result["pool"])


def _pareto(design: Design, utilisation: dict, perf: dict, pareto_path: Path | None) -> dict:
    chosen = {
        "fps": perf["model"]["fps"],
        "dsp48e2": utilisation["dsp48e2"]["used"],
        "lut": utilisation["lut"]["used"],
    }
    if pareto_path is not None and Path(pareto_path).is_file():
        data = json.loads(Path(pareto_path).read_text())
        pts = data["points"]
        picked = [p for p in pts if p.get("chosen")]
        if picked:
            chosen.update({k: picked[0][k] for k in ("fps", "dsp48e2", "lut")})
        chosen["label"] = "chosen by the explorer"
        return {"points": pts, "chosen": chosen, "source": str(pareto_path), "candidates": None}
    pts, candidates = _explorer_front(design.model, design.board, 0.85)
    chosen["label"] = "this design"
    return {"points": pts, "chosen": chosen, "source": "explorer", "candidates": candidates}


def _roofline(design: Design, est, perf: dict) -> dict:
    from vitaccel.dse.roofline import _ceilings, roofline
    from vitaccel.dse.shapes import spec_of

    spec = spec_of(design.model)
    ratios = [design.w4_ratio(f"blocks.{i}.{k}") for i in range(spec.depth) for k in
              ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]  # fmt: skip
    w4 = sum(ratios) / len(ratios) if ratios else 0.0
    rows = roofline(design.model, board=design.board, w4_ratio=w4)
    by_kind = est.by_kind()
    clock = design.clock_mhz * 1e6
    for r in rows:
        # GELU runs fused into FC1's output (no cycles of its own); FC1's point includes it
        cycles = by_kind.get(r["op"], 0) / spec.depth
        r["achieved_gflops"] = r["flops"] / (cycles / clock) / 1e9 if cycles else None
    return {
        "rows": rows,
        "ceilings": _ceilings(design.board, None, w4),
        "design_peak_gflops": 2 * perf["array_macs_per_cycle"] * design.clock_mhz / 1e3,
    }


def layer_lanes(design: Design) -> dict[str, dict[str, int]]:
    """Per weight layer of the scheduled program: its rows on W8 lanes (``w8``) and on W4
    lanes (``w4``) and its output steps, as the engine's column plan places
    ``round(w4_ratio * N)`` W4 rows of each MATMUL (:func:`vitaccel.engine_host.lane_rows`;
    the cycle model's assumption). The patch embedding and the head are W8 (the golden
    quantiser's rule)."""
    from vitaccel.compile.schedule import schedule
    from vitaccel.dse.cost import w4_rows
    from vitaccel.dse.shapes import spec_of
    from vitaccel.engine_host import EngineParams, lane_rows
    from vitaccel.isa import MatmulFlags, Op

    params = EngineParams.from_array(design.array)
    out: dict[str, dict[str, int]] = {}
    for ins in schedule(spec_of(design.model), design, strict=False):
        if ins.op is not Op.MATMUL or MatmulFlags.W_SPM in ins.flags:
            continue
        w8_only = ins.label in ("patch_embed", "head") or not params.cols_w4
        n4 = 0 if w8_only else w4_rows(ins.n, design.w4_ratio(ins.label))
        row = out.setdefault(ins.label, dict.fromkeys(("w8", "w4", "steps"), 0))
        for k, v in lane_rows(ins.n, n4, params).items():
            row[k] += v
    return out


def _find_per_layer(summary: dict | None) -> list[dict] | None:
    """A per-layer quantisation error table, if the build measured one (``per_layer``: a
    list of rows with a layer name and numbers, or {layer: {metric: value}})."""
    if not summary:
        return None
    for holder in (summary, summary.get("quantize") or {}):
        table = holder.get("per_layer")
        if isinstance(table, dict):
            table = [
                {"layer": k, **(v if isinstance(v, dict) else {"value": v})}
                for k, v in table.items()
            ]
        if isinstance(table, list) and table and all(isinstance(r, dict) for r in table):
            return table
    return None


def collect(
    design_path: str | Path,
    *,
    summary: dict | None = None,
    pareto_path: str | Path | None = None,
    files: list[tuple[str, str]] | None = None,
) -> dict:
    """The report's data for the design file at ``design_path``.

    Parameters
    ----------
    design_path : path
        A design file (validated by :func:`vitaccel.design.load_design`).
    summary : dict, optional
        The build's summary (``vitaccel build --json``); without it every figure is the
        models' (marked so).
    pareto_path : path, optional
        The explorer's pareto.json; without it the explorer is run on the design's model and
        board (no FPS target) and the design is placed against that front.
    files : list of (path, what), optional
        The files the build wrote, for the "files" section.
    """
    from vitaccel.boards import get_budget
    from vitaccel.dse.cost import estimate
    from vitaccel.dse.report import design_report
    from vitaccel.report.cycles import layer_causes

    design = load_design(design_path)
    dr = design_report(design_path)
    budget = get_budget(design.board)
    est = estimate(design, budget=budget)
    perf = performance(design, summary)
    resources = {"resource model": {k: dict(v) for k, v in dr["utilisation"].items()}}
    res_source = "resource model (calibrated on Yosys)"
    if summary and summary.get("resources"):
        src = summary.get("resources_source", "")
        if src.startswith("yosys"):
            resources = {"Yosys": summary["resources"], **resources}
            res_source = "Yosys synth_xilinx -family xcup"
    spec_layers = [r for r in dr["layers"] if r["kind"] in WEIGHT_KINDS]
    lanes = layer_lanes(design)
    precision = [
        {"name": r["name"], "w4_ratio": design.w4_ratio(r["name"]), **lanes.get(r["name"], {})}
        for r in spec_layers
    ]
    return {
        "design": design,
        "design_path": str(design_path),
        "design_report": dr,
        "board": {
            "name": budget.name,
            "part": budget.part,
            "dsp48e2": budget.dsp48e2,
            "lut": budget.lut,
            "ff": budget.ff,
            "bram36": budget.bram36,
            "uram": budget.uram,
        },
        "built": summary is not None,
        "summary": summary,
        "resources": resources,
        "resources_source": res_source,
        "performance": perf,
        "layers": layer_causes(design, budget=budget),
        "pareto": _pareto(design, dr["utilisation"], perf, pareto_path),
        "roofline": _roofline(design, est, perf),
        "precision": precision,
        "per_layer_error": _find_per_layer(summary),
        "files": files or [],
    }
