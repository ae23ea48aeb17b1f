"""The DSE performance goals on ZCU102, and what binds where one is missed.

    python -m vitaccel.dse.benchmark [--json]

For each goal the explorer's best reachable design (within 85 % of every resource, clock by
the LUT-depth rule) is reported with its FPS, the gap to the goal, the binding limit, where
the cycles go (compute-bound matmuls, weight-stream-bound matmuls, nonlinear units, loads)
and the linear layers' share of the DSP peak (useful MACs over cycles times the array's
MACs per cycle).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vitaccel.dse.search import _arrays, _fit_mask, binding_of, search, to_design

__all__ = ["GOALS", "REFERENCES", "run_goal", "benchmark"]

# (model, precision, FPS goal)
GOALS = (
    ("deit-tiny", "w8", 500.0),
    ("deit-small", "w8", 180.0),
    ("deit-base", "mixed", 60.0),
)
LINEAR_DSP_GOAL = 0.70
REFERENCES = {
    "Huang et al. (TCAS-I 2023), ViT-S on ZCU102": 89.7,
    "Auto-ViT-Acc (FPL 2022), DeiT-B on ZCU102": 56.8,
}


def run_goal(model: str, precision: str, goal: float, board: str = "zcu102") -> dict:
    import numpy as np

    from vitaccel.dse.cost import estimate

    t0 = time.monotonic()
    result = search(model, board)
    pool = result["pool"]
    select = np.array([precision == "mixed" or c.w4_share == 0 for c in pool], dtype=bool)
    mask = _fit_mask(result) & select
    binding, best_fps = binding_of(result, select)
    fps = _arrays(result)["fps"]
    if not mask.any():
        return {"model": model, "precision": precision, "goal_fps": goal, "fps": 0.0,
                "binding": binding, "reached": False}  # fmt: skip
    best = pool[int(np.argmax(np.where(mask, fps, -1)))]
    spec = result["model"].spec
    design = to_design(best, spec.name, board, best.clock_mhz, spec)
    est = estimate(design, budget=result["budget"], spec=spec)
    by_bound = est.by_bound()
    total = est.cycles
    return {
        "model": model,
        "precision": precision,
        "goal_fps": goal,
        "fps": round(est.fps, 1),
        "reached": est.fps >= goal,
        "gap": round(goal / est.fps, 2) if est.fps < goal else None,
        "binding": binding,
        "clock_mhz": design.clock_mhz,
        "array": f"{design.array.groups}x{design.array.rows}x{design.array.cols}x{design.array.vector}"
        + (
            f" w4 {design.array.w4_share:.2f} {design.array.w4_kind}"
            if design.array.w4_share
            else ""
        ),
        "lanes": [
            design.nonlinear.softmax_lanes,
            design.nonlinear.layernorm_lanes,
            design.nonlinear.gelu_lanes,
        ],  # fmt: skip
        "util": {
            k: round(best.usage[k] / lim * result["max_util"], 3)
            for k, lim in result["limits"].items()
        },  # fmt: skip
        "cycles": total,
        "cycle_share": {k: round(v / total, 3) for k, v in sorted(by_bound.items())},
        "linear_dsp_efficiency": round(est.linear_utilisation(), 3),
        "w4_layers": len(best.ratios),
        "predicted_error": round(best.error, 6),
        "seconds": round(time.monotonic() - t0, 2),
    }


def benchmark(board: str = "zcu102") -> list[dict]:
    return [run_goal(m, p, g, board) for m, p, g in GOALS]


def _line(r: dict) -> str:
    head = (
        f"{r['model']:<10} {r['precision']:<5} goal {r['goal_fps']:>5.0f} FPS: {r['fps']:>6.1f} FPS"
    )
    if r["reached"]:
        verdict = "reached"
    else:
        verdict = (
            f"MISSED by {r['goal_fps'] - r['fps']:.1f} FPS (x{r['gap']}), binding: {r['binding']}"
        )
    detail = (
        f"  [{r.get('array')} @ {r.get('clock_mhz')} MHz, lanes {r.get('lanes')}, "
        f"cycles {r.get('cycle_share')}, linear layers at {r.get('linear_dsp_efficiency', 0):.0%} "
        f"of the DSP peak (goal {LINEAR_DSP_GOAL:.0%})]"
    )
    return f"{head}  {verdict}\n{detail}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| goal | best design (G x R x C x V @ clock, lanes) | FPS | verdict | binding | "
        "cycles: compute / weight stream / nonlinear / loads | linear layers vs DSP peak |",
        "|---|---|---:|---|---|---|---:|",
    ]
    for r in rows:
        share = r.get("cycle_share", {})
        stream = share.get("weights", 0) + share.get("bandwidth", 0)
        verdict = (
            "reached" if r["reached"] else f"missed by {r['goal_fps'] - r['fps']:.1f} (x{r['gap']})"
        )
        lines.append(
            f"| {r['model']} {r['precision']} >= {r['goal_fps']:g} | {r.get('array')} @ "
            f"{r.get('clock_mhz'):g} MHz, lanes {r.get('lanes')} | {r['fps']} | {verdict} | "
            f"{r['binding']} | {share.get('compute', 0):.0%} / {stream:.0%} / "
            f"{share.get('nonlinear', 0):.0%} / {share.get('memory', 0):.0%} | "
            f"{r.get('linear_dsp_efficiency', 0):.0%} |"
        )
    for name, fps in REFERENCES.items():
        lines.append(f"| reference: {name} | | {fps} | | | | |")
    return "\n".join(lines) + "\n"


def _write_docs(doc: Path, rows: list[dict]) -> None:
    from vitaccel.util import atomic_write_text

    begin, end = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"
    text = doc.read_text()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        atomic_write_text(doc, f"{head}{begin}\n{markdown(rows)}{end}{tail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vitaccel.dse.benchmark")
    ap.add_argument("--board", default="zcu102")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--docs", default=None, help="rewrite the goal table between the markers")
    args = ap.parse_args(argv)
    rows = benchmark(args.board)
    if args.docs:
        _write_docs(Path(args.docs), rows)
    if args.json:
        print(json.dumps({"goals": rows, "references": REFERENCES}, indent=1))
        return 0
    for r in rows:
        print(_line(r))
    for name, fps in REFERENCES.items():
        print(f"reference: {name}: {fps} FPS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
