"""Validation of the DSE models against the RTL (Verilator) and real synthesis (Yosys).

    python -m vitaccel.verify.validate            # quick: stored Yosys runs + small RTL runs
    python -m vitaccel.verify.validate --full     # every RTL run; rewrites data/validation.json
    python -m vitaccel.verify.validate --full --docs docs/dse.md   # and the table in the doc

Cycle model (``vitaccel.dse.cost``) against Verilator:

* ``engine``: single MATMUL jobs on the GVSA engine (``vitaccel.flow.unit_gvsa``), shapes of
  real layers (digits-vit, DeiT-Tiny) in shared and heads mode, W8 and mixed W4/W8;
* ``units``: the nonlinear units streaming whole rows (``vitaccel.flow.unit_nonlinear``);
* ``top``: the whole compiled program of digits-vit on the accelerator top
  (``vitaccel.sim.host``): the cycle counter after one image.

Resource model (``vitaccel.dse.resources``) against Yosys ``synth_xilinx -family xcup``:
engines and units of shapes that were **not** used for fitting (``calibrate.ENGINE_VALIDATE``,
``calibrate.UNIT_VALIDATE``), from the runs stored in ``data/calibration.json`` (the full run
re-synthesises them).

Bounds: cycles within 5 %, each resource within 10 % (DSP, LUT, FF; BRAM36 equivalents with a
one-block allowance for small memories).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

__all__ = [
    "CYCLE_BOUND",
    "RESOURCE_BOUND",
    "ENGINE_CASES",
    "TOP_CASES",
    "MeasureStore",
    "validate",
    "markdown",
]

CYCLE_BOUND = 0.05
RESOURCE_BOUND = 0.10
DATA_PATH = Path(__file__).parents[1] / "dse" / "data" / "validation.json"

# (name, groups, rows, cols, vector, w4_share, tokens, K, N, heads, w4 rows share)
ENGINE_CASES = (
    ("digits fc1", 1, 4, 4, 8, 0.0, 17, 64, 128, False, 0.0),
    ("digits qk (heads)", 2, 4, 4, 8, 0.0, 17, 16, 17, True, 0.0),
    ("deit-tiny qkv.v", 1, 4, 4, 8, 0.0, 197, 192, 192, False, 0.0),
    ("deit-tiny fc2", 2, 4, 4, 16, 0.0, 197, 768, 64, False, 0.0),
    ("deit-tiny sv (heads)", 2, 8, 4, 8, 0.0, 197, 197, 64, True, 0.0),
    ("deit-tiny proj W4/W8", 1, 4, 8, 8, 0.5, 197, 192, 96, False, 0.5),
)
QUICK_ENGINE = ("digits fc1", "digits qk (heads)")
# (groups, rows, cols, vector, lanes, weight ports): whole digits-vit programs on the top
# level; the last two have output steps of whole SPM words, so their residual adds run
# fused into the MATMULs, one of them with the weights over two ports
TOP_CASES = (
    (1, 4, 4, 8, 4, 1),
    (2, 4, 4, 8, 8, 1),
    (1, 8, 8, 16, 16, 1),
    (2, 2, 4, 4, 1, 1),
    (3, 4, 2, 8, 2, 1),
    (1, 4, 16, 16, 16, 1),
    (2, 4, 8, 8, 8, 2),
)
UNIT_CASES = (("softmax", 4), ("layernorm", 4), ("gelu", 4), ("softmax", 16), ("gelu", 16))


def _err(model: float, real: float) -> float:
    return (model - real) / real if real else 0.0


class MeasureStore(dict):
    """The measured side (RTL cycles, Yosys counts) by case key, saved after every run.

    A Verilator or Yosys run takes seconds to half an hour; the models take microseconds.
    Each measurement is written to ``path`` (``data/validation.json``, key ``measured``) as
    soon as it exists, so an interrupted run loses nothing, and ``reuse=True`` re-evaluates
    the models against the stored measurements (remeasuring only what is missing). The keys
    carry every parameter of a case, not a hash of the RTL: after an RTL change, run without
    ``reuse``. ``offline=True`` (with ``reuse``) never measures: the fast test re-checks the
    models against the stored evidence in seconds.
    """

    def __init__(self, path: Path | None = None, *, reuse: bool = False, offline: bool = False):
        self.offline = offline  # never measure: a missing measurement is an error
        stored = {}
        if path is not None and path.is_file():
            stored = json.loads(path.read_text()).get("measured", {})
        super().__init__(stored if reuse else {})
        self.path = path
        self._stored = stored

    def save(self) -> None:
        if self.path is None:
            return
        from vitaccel.util import atomic_write_text

        doc = json.loads(self.path.read_text()) if self.path.is_file() else {}
        doc["measured"] = {**self._stored, **self}
        atomic_write_text(self.path, json.dumps(doc, indent=1) + "\n")


def _measured(store: MeasureStore | None, key: str, measure) -> dict:
    if store is not None and key in store:
        return store[key]
    if store is not None and store.offline:
        raise KeyError(
            f"no stored measurement {key!r}: run python -m vitaccel.verify.validate --full"
        )
    t0 = time.monotonic()
    value = measure()
    print(f"measured {key} in {time.monotonic() - t0:.0f} s", flush=True)
    if store is not None:
        store[key] = value
        store.save()
    return value


# ---------------------------------------------------------------------------------------
# cycles
# ---------------------------------------------------------------------------------------


def _engine_case(case, seed: int = 0, store: dict | None = None) -> dict:
    import numpy as np

    from vitaccel.dse.cost import column_split, matmul_cycles
    from vitaccel.engine_host import plan_columns
    from vitaccel.flow.unit_gvsa import MatmulCase, engine_params, simulate_jobs

    name, g, r, c, v, share, t, k, n, heads, w4 = case
    rng = np.random.default_rng(seed)
    params = engine_params(groups=g, rows=r, cols=c, vector=v, w4_share=share,
                           x_words=max(64, -(-t // r) * -(-k // v)), max_ksteps=max(2, -(-k // v)))  # fmt: skip
    c8, c4 = column_split(c, share)
    lead = (g,) if heads else ()
    x = rng.integers(-128, 128, size=(*lead, t, k))
    q = rng.integers(-127, 128, size=(*lead, n, k))
    kind = np.zeros((*lead, n), dtype=np.int64)
    n4 = int(round(w4 * n))
    if n4:
        kind[..., rng.choice(n, n4, replace=False)] = 1  # int4 rows
        q = np.where(kind[..., :, None] == 1, np.clip(q, -7, 7), q)
    bias = rng.integers(-1000, 1000, size=(*lead, n))
    mult = np.full((*lead, n), 1 << 14)
    shift = np.full((*lead, n), 24)

    def measure() -> dict:
        res = simulate_jobs(
            [MatmulCase(x, q, kind, bias, mult, shift, heads=heads, name=name)], params
        )[0]
        if res["mismatches"]:
            raise RuntimeError(f"{name}: RTL output mismatches ({res['first_mismatch']})")
        return {"cycles": int(res["cycles"])}

    res = _measured(store, f"engine {case} seed{seed}", measure)
    # the steps of the job's own rows (the column plan's windows depend on where they are)
    nsteps = max(plan_columns(kd, params, heads=heads).nsteps for kd in kind.reshape(-1, n))
    model = matmul_cycles(t, k, nsteps, g, r, c, v, c8 // 2 + c4, heads=heads)
    return {
        "kind": "engine",
        "case": name,
        "design": f"{g}x{r}x{c}x{v}" + (f" w4 {share:g}" if share else ""),
        "shape": f"T={t} K={k} N={n}" + (f" x{g} heads" if heads else ""),
        "rtl": res["cycles"],
        "model": int(model),
        "error": _err(model, res["cycles"]),
    }


def _unit_case(unit: str, lanes: int, vectors: int, store: dict | None = None) -> dict:
    from vitaccel.dse.cost import LATENCIES
    from vitaccel.flow.unit_nonlinear import default_case, simulate_case

    case = default_case(unit, vectors=vectors, lanes=lanes)

    def measure() -> dict:
        res = simulate_case(unit, case, lanes=lanes)
        if res["mismatches"]:
            raise RuntimeError(f"{unit}: RTL output mismatches ({res['first_mismatch']})")
        return {"cycles": int(res["cycles"])}

    res = _measured(store, f"unit {unit} lanes{lanes} vectors{vectors}", measure)
    # The unit alone (first input beat to last output beat): the streaming part of
    # cost.nonlinear_cycles without the scratchpad I/O and constant loads of an instruction.
    row_beats = [-(-len(row) // min(lanes, 16)) for row in case.rows]
    drain = {"softmax": row_beats[-1], "layernorm": 2 * row_beats[-1], "gelu": 0}[unit]
    model = sum(row_beats) + drain + LATENCIES[unit]
    return {
        "kind": "unit",
        "case": f"{unit} x{lanes}",
        "design": f"lanes {lanes}",
        "shape": f"{len(case.rows)} rows of {len(case.rows[0])}",
        "rtl": res["cycles"],
        "model": int(model),
        "error": _err(model, res["cycles"]),
    }


def _top_case(
    g: int, r: int, c: int, v: int, lanes: int, ports: int = 1, store: dict | None = None
) -> dict:
    from vitaccel.compile.compiler import compile_model
    from vitaccel.compile.driver import Driver
    from vitaccel.compile.schedule import chain_roles
    from vitaccel.design import ArrayConfig, Design, NonlinearConfig
    from vitaccel.dse.cost import estimate
    from vitaccel.flow.codec import codec_for
    from vitaccel.models.evaluate import prepare
    from vitaccel.models.golden import quant_config_for
    from vitaccel.sim.native import NativeBackend

    design = Design(
        model="digits-vit",
        array=ArrayConfig(groups=g, rows=r, cols=c, vector=v),
        nonlinear=NonlinearConfig(softmax_lanes=lanes, layernorm_lanes=lanes, gelu_lanes=lanes),
        spm_kib=64,
        weight_ports=ports,
    )

    def measure() -> dict:
        _, _, golden, x, _ = prepare("digits-vit", config=quant_config_for(design), images=1)
        compiled = compile_model(golden, groups=g, codec=codec_for(design),
                                 chain=chain_roles(golden.spec, design))  # fmt: skip
        # the native harness: the same cycles as cocotb (test_sim_native checks it), a
        # leaner build
        drv = Driver(NativeBackend(design))
        drv.load(compiled)
        res = drv.infer(golden.quantize_images(x)[0])
        expect = golden.forward_patches(golden.quantize_images(x))[0]
        if not (res.logits == expect).all():
            raise RuntimeError(f"top {g}x{r}x{c}x{v}: logits differ from the golden model")
        return {"cycles": int(res.cycles)}

    port_key = f" ports{ports}" if ports > 1 else ""
    res = _measured(store, f"top g{g} r{r} c{c} v{v} lanes{lanes}{port_key} digits-vit", measure)
    est = estimate(design)
    model = est.cycles + est.first_image_cycles  # one image after the load: the first
    return {
        "kind": "top",
        "case": "digits-vit program",
        "design": f"{g}x{r}x{c}x{v} lanes {lanes}"
        + (f", {ports} weight ports" if ports > 1 else ""),
        "shape": "whole model, 1 image",
        "rtl": res["cycles"],
        "model": int(model),
        "error": _err(model, res["cycles"]),
    }


# ---------------------------------------------------------------------------------------
# resources
# ---------------------------------------------------------------------------------------


def _resource_rows(resynth: bool, store: MeasureStore | None = None) -> list[dict]:
    """Held-out Yosys runs against the resource model.

    ``resynth``: synthesise every validation shape again (measurements already in ``store``
    are kept); otherwise the runs stored in ``data/calibration.json`` serve where present.
    """
    from vitaccel.dse import resources as res
    from vitaccel.verify import calibrate

    runs = dict(res.calibration().get("runs", {}))

    def run_of(key: str, synthesise, *, optional: bool = False) -> dict | None:
        if store is not None and f"yosys {key}" in store:
            return store[f"yosys {key}"]
        if not resynth and key in runs:
            return runs[key]
        if optional and not resynth:
            return None  # the whole top is synthesised only by the full run
        return _measured(store, f"yosys {key}", synthesise)

    rows = []
    for cfg in calibrate.ENGINE_VALIDATE:
        run = run_of(calibrate._engine_key(cfg), lambda cfg=cfg: calibrate.run_engine(cfg))
        g, r, c, v, share, kind, xw, ks = cfg
        u = res.engine_resources(g, r, c, v, share, kind, xw, ks, 32)
        name = f"engine {g}x{r}x{c}x{v}" + (f" w4 {share:.2g} {kind}" if share else "")
        rows.append(_res_row(name, u, run))
    for unit, lanes_list in calibrate.UNIT_VALIDATE.items():
        for lanes in lanes_list:
            key = f"unit {unit} lanes{lanes}"
            run = run_of(key, lambda unit=unit, lanes=lanes: calibrate.run_unit(unit, lanes))
            rows.append(_res_row(f"{unit} x{lanes}", res.nonlinear_resources(unit, lanes), run))
    for cfg in calibrate.TOP_VALIDATE:
        key = calibrate._top_key(cfg)
        run = run_of(key, lambda cfg=cfg: calibrate.run_top(cfg), optional=True)
        if run is None:
            continue
        total = res.design_resources(calibrate.top_design(cfg))["total"]
        g, r, c, v, lanes, spm, model, ports = cfg
        name = f"top {g}x{r}x{c}x{v} lanes {lanes} spm {spm} KiB"
        rows.append(_res_row(name + (f", {ports} weight ports" if ports > 1 else ""), total, run))
    return rows


def _res_row(name: str, model, run: dict) -> dict:
    real = {
        "dsp48e2": run["dsp48e2"],
        "lut": run["lut"],
        "ff": run["ff"],
        "bram36": run["ramb36"] + run["ramb18"] / 2,
    }
    pred = {"dsp48e2": model.dsp48e2, "lut": model.lut, "ff": model.ff, "bram36": model.bram36}
    errors = {}
    for k in real:
        if k == "bram36":
            # BRAM: count blocks; small memories may land in LUT RAM or one block either way.
            errors[k] = 0.0 if abs(pred[k] - real[k]) <= 1 else _err(pred[k], real[k])
        else:
            errors[k] = _err(pred[k], real[k]) if real[k] else (0.0 if pred[k] < 1 else 1.0)
    return {"design": name, "yosys": real, "model": {k: round(v, 1) for k, v in pred.items()},
            "error": errors}  # fmt: skip


# ---------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------


def validate(*, quick: bool = True, store: MeasureStore | None = None) -> dict:
    """Compare the cycle and resource models with the RTL and Yosys; return the tables.

    ``quick``: two small engine jobs and one unit on Verilator, resources from the stored
    Yosys runs (a few minutes with warm Verilator caches). The full run adds DeiT-Tiny-sized
    jobs, every unit case, whole programs on the accelerator top, and re-synthesises.
    ``store`` keeps (and, built with ``reuse``, supplies) the measurements.
    """
    t0 = time.monotonic()
    cycles = []
    for case in ENGINE_CASES:
        if quick and case[0] not in QUICK_ENGINE:
            continue
        cycles.append(_engine_case(case, store=store))
    for unit, lanes in UNIT_CASES[: 1 if quick else None]:
        cycles.append(_unit_case(unit, lanes, 2000 if quick else 20000, store=store))
    if not quick:
        for case in TOP_CASES:
            cycles.append(_top_case(*case, store=store))
    resources = _resource_rows(resynth=not quick, store=store)
    out = {
        "cycles": cycles,
        "resources": resources,
        "cycle_bound": CYCLE_BOUND,
        "resource_bound": RESOURCE_BOUND,
        "cycles_ok": all(abs(r["error"]) <= CYCLE_BOUND for r in cycles),
        "resources_ok": all(
            abs(e) <= RESOURCE_BOUND for r in resources for e in r["error"].values()
        ),
        "quick": quick,
        "seconds": round(time.monotonic() - t0, 1),
    }
    return out


def markdown(result: dict) -> str:
    """The two validation tables as markdown."""
    lines = [
        "| kind | case | design | shape | RTL cycles | model cycles | error |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in result["cycles"]:
        lines.append(
            f"| {r['kind']} | {r['case']} | {r['design']} | {r['shape']} | {r['rtl']} | "
            f"{r['model']} | {r['error']:+.2%} |"
        )
    lines += [
        "",
        "| design | DSP48E2 Yosys / model | LUT Yosys / model | FF Yosys / model | BRAM36 Yosys / model | worst error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["resources"]:
        y, m, e = r["yosys"], r["model"], r["error"]
        worst = max(e.values(), key=abs)
        lines.append(
            f"| {r['design']} | {y['dsp48e2']} / {m['dsp48e2']:g} | {y['lut']} / {m['lut']:g} | "
            f"{y['ff']} / {m['ff']:g} | {y['bram36']:g} / {m['bram36']:g} | {worst:+.1%} |"
        )
    return "\n".join(lines) + "\n"


BEGIN = "<!-- validation:begin -->"
END = "<!-- validation:end -->"


def main(argv=None) -> int:
    from vitaccel.util import atomic_write_text

    ap = argparse.ArgumentParser(prog="python -m vitaccel.verify.validate")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--docs", default=None, help="rewrite the table between the markers here")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="take the RTL cycles and Yosys counts stored in data/validation.json "
        "(measure only what is missing) and re-evaluate the models",
    )
    args = ap.parse_args(argv)
    store = MeasureStore(DATA_PATH, reuse=args.reuse) if args.full else None
    result = validate(quick=not args.full, store=store)
    table = markdown(result)
    print(table)
    print(f"cycles within {CYCLE_BOUND:.0%}: {result['cycles_ok']}; "
          f"resources within {RESOURCE_BOUND:.0%}: {result['resources_ok']}")  # fmt: skip
    if args.full:
        measured = {**store._stored, **store}
        atomic_write_text(DATA_PATH, json.dumps({**result, "measured": measured}, indent=1) + "\n")
    if args.docs:
        doc = Path(args.docs)
        text = doc.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            atomic_write_text(doc, f"{head}{BEGIN}\n{table}{END}{tail}")
    return 0 if result["cycles_ok"] and result["resources_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------------------------------
# per-instruction overheads of the top (micro-programs, one instruction each)
# ---------------------------------------------------------------------------------------

MICRO_DESIGN = (1, 4, 4, 8, 4)  # groups, rows, cols, vector, lanes (spm 64 KiB)


def micro_design(g=1, r=4, c=4, v=8, lanes=4):
    from vitaccel.design import ArrayConfig, Design, NonlinearConfig

    return Design(
        model="digits-vit",
        array=ArrayConfig(groups=g, rows=r, cols=c, vector=v),
        nonlinear=NonlinearConfig(softmax_lanes=lanes, layernorm_lanes=lanes, gelu_lanes=lanes),
        spm_kib=64,
    )


def micro_programs(design) -> dict:
    """name -> (program without END, model cycles of its instructions, DDR bytes needed);
    the cycle model prices the very instructions the top runs."""
    from vitaccel import isa
    from vitaccel.boards import get_budget
    from vitaccel.dse.cost import geometry, instr_cycles, port_bytes_per_cycle, w_slot_bytes

    geom = geometry(design)
    budget = get_budget(design.board)
    port = port_bytes_per_cycle(design.clock_mhz, budget)
    g, c, v = geom.groups, geom.cols, geom.vector
    data = 0x1000  # DDR offset of the data after the program
    t, k, n = 17, 64, 128
    ks = -(-k // v)
    nsteps = -(-n // (g * c))
    w_bytes = nsteps * g * c * (ks + 1) * w_slot_bytes(v)
    ddr_w = dict(x=0, x_stride=ks * v // 16 or 1, tokens=t, k=k, n=n, y=1024, y_stride=n // 16,
                 w_ddr=data, label="micro.fc1")  # fmt: skip
    rows = dict(rows=17, cols=64, dst=1024, dst_stride=4)
    # fmt: off
    heads_job = isa.matmul(x=0, x_stride=4, tokens=t, k=16, n=t, y=1024, y_stride=2, w_spm=256,
                           w_stride=4, mult=1, shift=8, heads=g if g > 1 else 0, head_x_step=1,
                           head_w_step=1, head_y_step=64, label="micro.qk")
    # fmt: on
    progs = {
        "load 8 x 1 word": [isa.load(spm=0, words=1, ddr=data)] * 8,
        "load 2048 words": [isa.load(spm=0, words=2048, ddr=data)],
        "matmul T17 K64 N128 (DDR W)": [isa.matmul(**ddr_w)],
        "matmul T17 K64 N128 GELU (DDR W)": [isa.matmul(**ddr_w, gelu_table=2048)],
        "matmul T17 K64 N128, then X_KEEP": [isa.matmul(**ddr_w), isa.matmul(**ddr_w, x_keep=True)],
        "matmul heads T17 K16 N17": [heads_job],
        "softmax 68 x 17": [
            isa.softmax(src=0, src_stride=2, rows=68, cols=17, dst=1024, dst_stride=2, in_shift=4)
        ],
        "layernorm 17 x 64": [
            isa.layernorm(
                src=0,
                src_stride=4,
                **rows,
                params=2048,
                recip_mult=1 << 15,
                recip_shift=21,
                out_shift=8,
                eps_q=1,
            )  # fmt: skip
        ],
        "gelu 17 x 128": [
            isa.gelu(src=0, src_stride=8, rows=17, cols=128, dst=1024, dst_stride=8, table=2048)
        ],
        "resadd 17 x 64": [
            isa.resadd(a=0, a_stride=4, **rows, b=512, b_stride=4, params=2048, shift=8)
        ],
    }
    if isa.residual_fusable(g, c):
        progs["matmul T17 K64 N128 RESADD (DDR W)"] = [
            isa.matmul(**ddr_w, residual=512, residual_params=2048, residual_shift=8)
        ]

    def model(prog) -> int:
        return sum(instr_cycles(ins, design, geom, port, budget)[0] for ins in prog)

    need = data + max(w_bytes, 2048 * 16)
    return {name: (prog, model(prog), need) for name, prog in progs.items()}


def micro_cycles(design=None) -> list[dict]:
    """Run each micro-program (plus an END-only one) on the top; cycles per instruction."""
    from vitaccel import isa
    from vitaccel.sim.tb_top import default_regs, run_top

    design = design or micro_design()
    base_addr = 0x0004_0000

    def run(prog, nbytes) -> int:
        image = bytearray(max(nbytes, 0x1000))
        code = isa.encode_program([*prog, isa.end()])
        image[: len(code)] = code
        res = run_top(design, bytes(image), base=base_addr,
                      regs=default_regs(base_addr, base_addr), outputs=[])  # fmt: skip
        if res.get("timeout"):
            raise RuntimeError(f"micro-program timed out: {prog[:1]}")
        return int(res["cycles"])

    empty = run([], 0x1000)
    rows = [{"case": "END only", "rtl": empty, "model": 0}]
    for name, (prog, model, nbytes) in micro_programs(design).items():
        rtl = run(prog, nbytes) - empty
        rows.append({"case": name, "rtl": rtl, "model": model, "instructions": len(prog)})
    return rows
