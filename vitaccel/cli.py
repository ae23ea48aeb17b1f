"""The ``vitaccel`` command line: quantize, dse, generate, sim, report, build.

Every command validates its input up front; bad input gets ONE line on stderr naming the
field and the allowed values, exit code 2, and nothing is written. ``--json`` prints one JSON
object (or list) on stdout and keeps progress on stderr.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from vitaccel import __version__

EXIT_USAGE = 2
EXIT_INFEASIBLE = 3
EXIT_MISMATCH = 1


class CliError(Exception):
    """A user-facing error: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def _progress(enabled: bool = True):
    def say(msg: str) -> None:
        if enabled:
            click.echo(f"vitaccel: {msg}", err=True)

    return say


def _emit(obj, as_json: bool, human=None) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=None, sort_keys=False, default=_json_default))
    elif human is not None:
        human(obj)
    else:
        from rich.console import Console

        Console().print(_table_of(obj))


def _cell(v):
    """A value for a person: nested dicts as tables, lists as lines, numbers with commas."""
    from rich.table import Table

    if isinstance(v, dict):
        return _table_of(v, nested=True)
    if isinstance(v, list | tuple):
        if v and all(isinstance(x, dict) for x in v):
            table = Table(*v[0].keys(), box=None, pad_edge=False, header_style="dim")
            for x in v:
                table.add_row(*(_text(x.get(k)) for k in v[0]))
            return table
        return ", ".join(_text(x) for x in v) if len(v) <= 8 else "\n".join(_text(x) for x in v)
    return _text(v)


def _text(v) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "-"}[v]
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table_of(obj: dict, nested: bool = False):
    from rich import box
    from rich.table import Table

    table = Table(show_header=False, box=None if nested else box.SIMPLE, pad_edge=False)
    table.add_column(style="dim" if nested else "bold", no_wrap=True)
    table.add_column()
    for k, v in obj.items():
        table.add_row(str(k), _cell(v))
    return table


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vitaccel")
def main_group():
    """vitaccel: FPGA accelerators for quantized Vision Transformers.

    \b
    quantize  float model -> integer golden model, accuracy against float
    dse       model + board + FPS target -> design file, Pareto front
    bench     per model: best FPS, % of board peak, cycles by cause, binding (predicted)
    generate  design file (or one unit) -> Verilog, Vivado project, resources
    sim       RTL co-simulation on Verilator, bit-exact against the golden model
    report    roofline and design reports
    sweep     many models x boards x FPS targets on Dask (explore, synthesise, simulate)
    build     all of the above for one model/board/FPS (default: digits-vit on ZCU102)
    """


# ---------------------------------------------------------------------------------------
# quantize
# ---------------------------------------------------------------------------------------


def _model_choice():
    from vitaccel.models.zoo import ZOO

    return click.Choice(sorted(ZOO))


# Option factories: the commands share these option kinds, and --help shows every default.


def _number(*decls: str, lo, hi=None, default=None, help: str | None = None):
    """A number option bounded to [lo, hi]: a float one when ``lo`` is a float."""
    kind = click.FloatRange if isinstance(lo, float) else click.IntRange
    return click.option(*decls, type=kind(lo, hi), default=default, show_default=True, help=help)


def _pick(*decls: str, choices, default=None, help: str | None = None):
    """An option taking one of ``choices``."""
    return click.option(
        *decls, type=click.Choice(choices), default=default, show_default=True, help=help
    )


def _path(*decls: str, file: bool = False, help: str | None = None):
    """A path option (``file=True``: it must not name a folder)."""
    kind = click.Path(dir_okay=False, path_type=Path) if file else click.Path(path_type=Path)
    return click.option(*decls, type=kind, default=None, help=help)


def _out_dir(default: Path | None = None, required: bool = False):
    """``-o/--out DIR``, the folder a command writes."""
    return click.option(
        "-o",
        "--out",
        "out_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=default,
        show_default=default is not None,
        required=required,
    )


def _json_flag(help: str | None = None):
    """``--json``: print one JSON object on stdout."""
    return click.option("--json", "as_json", is_flag=True, help=help)


_SOFTMAX_OUTPUT_HELP = (
    "softmax: its output; gvsa: log2 adds the shift-add mode for log2-code attention x V"
)
_W4_KINDS = ["int4", "pot4"]


def _scheme_options(f):
    """--scheme, --w4-ratio, --w4-kind: the weight scheme, the same for quantize and build."""
    f = _pick("--w4-kind", choices=_W4_KINDS, default="int4")(f)
    f = click.option(
        "--w4-ratio",
        type=float,
        default=0.5,
        show_default=True,
        help="W4 share of each encoder linear layer (mixed)",
    )(f)
    return _pick("--scheme", choices=["w8a8", "w4a8", "mixed"], default="w8a8")(f)


_WIDTH_HELP = "signed bits of the %s (golden model only; the RTL is int8)"


@main_group.command()
@click.option(
    "--model", "model_name", default="digits-vit", show_default=True, help="zoo model name"
)
@_path("--weights", file=True, help="checkpoint (.safetensors or torch .pth)")
@_scheme_options
@_pick("--softmax-output", choices=["uint8", "log2"], default="uint8", help=_SOFTMAX_OUTPUT_HELP)
@_number("--images", lo=1, help="images to evaluate (default: digits test split / 8)")
@_number("--residual-bits", lo=8, hi=16, default=8, help=_WIDTH_HELP % "residual stream")
@_number("--branch-bits", lo=8, hi=16, default=8, help=_WIDTH_HELP % "patch embed/proj/FC2")
@_number("--logit-bits", lo=8, hi=16, default=8, help=_WIDTH_HELP % "attention logits")
@_pick(
    "--weight-rounding",
    choices=["nearest", "gptq"],
    default="nearest",
    help="weight integers: round to nearest, or GPTQ over the calibration inputs (same scales)",
)
@click.option(
    "--gptq-act-order",
    is_flag=True,
    help="with --weight-rounding gptq: round the input columns by decreasing energy first",
)
@click.option(
    "--per-layer",
    is_flag=True,
    help="also rank every quantised tensor by its SQNR against float (calibration images)",
)
@_json_flag(help="print one JSON object")
def quantize(model_name, weights, images, per_layer, as_json, **quant):
    """Quantise a float model to the integer golden model and compare it with float."""
    from vitaccel.models.specs import get_spec

    get_spec(model_name)
    # the other options are QuantConfig's fields by name (scheme, w4_*, softmax_output, widths,
    # weight_rounding)
    if not 0.0 <= quant["w4_ratio"] <= 1.0:
        raise CliError(f"--w4-ratio must be in [0, 1], got {quant['w4_ratio']}")
    if quant["gptq_act_order"] and quant["weight_rounding"] != "gptq":
        raise CliError(
            f"--gptq-act-order needs --weight-rounding gptq, got {quant['weight_rounding']}"
        )
    if weights is not None and not weights.is_file():
        raise CliError(f"--weights: file '{weights}' does not exist")
    from vitaccel.models.evaluate import evaluate
    from vitaccel.models.golden import QuantConfig

    cfg = QuantConfig(**quant)
    result = evaluate(
        model_name,
        weights=weights,
        config=cfg,
        images=images,
        progress=_progress(True),
        per_layer=per_layer,
    )
    _emit(result.as_dict(), as_json, human=_print_quantize if per_layer else None)


def _print_quantize(obj: dict) -> None:
    """The summary, then the per-layer table (worst operator first)."""
    from rich.console import Console
    from rich.table import Table

    summary = Table(show_header=False)
    for k, v in obj.items():
        if k != "per_layer":
            summary.add_row(str(k), str(v))
    rows = obj["per_layer"]
    ranked = Table(
        "#",
        "tensor",
        "kind",
        "local dB",
        "local err",
        "total dB",
        "total err",
        title=f"per-layer error vs float on {obj['calibration_images']} calibration images, "
        "worst operator first",
        caption="SQNR (dB) and relative error. local: the operator alone, fed the float "
        "model's inputs on their int8 grids; total: the integer model end to end.",
    )
    for i, r in enumerate(rows, 1):
        ranked.add_row(
            str(i),
            r["name"],
            r["kind"],
            f"{r['local_sqnr_db']:.1f}",
            f"{r['local_rel_error']:.4f}",
            f"{r['sqnr_db']:.1f}",
            f"{r['rel_error']:.4f}",
        )
    # Wide enough for the tensor names when stdout is not a terminal (rich assumes 80).
    console = Console(width=max(Console().width, 100))
    console.print(summary)
    console.print(ranked)


# ---------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------

NONLINEAR_UNITS = ("softmax", "layernorm", "gelu")


@main_group.command()
@_path("--design", "design_path", help="design file (.json/.toml): whole accelerator")
@_pick("--unit", choices=[*NONLINEAR_UNITS, "gvsa"], help="generate one unit instead")
@_number("--lanes", lo=1, hi=64, default=1, help="nonlinear unit lanes")
@_number("--in-bits", lo=2, hi=12, default=8, help="nonlinear unit input width")
@_pick("--softmax-output", choices=["uint8", "log2"], default="uint8", help=_SOFTMAX_OUTPUT_HELP)
@_number("--max-len", lo=1, hi=4096, help="max row length / channels")
@_number("--groups", lo=1, hi=64, default=1)
@_number("--rows", lo=1, hi=64, default=4)
@_number("--cols", lo=1, hi=64, default=4)
@_number("--vector", lo=1, hi=64, default=8)
@_number("--w4-share", lo=0.0, hi=1.0, default=0.0)
@_pick("--w4-kind", choices=_W4_KINDS, default="int4", help="gvsa: W4 lanes (int4 or power-of-two)")
@click.option(
    "--resources", is_flag=True, help="also synthesise with Yosys (xcup) and report counts"
)
@_out_dir(required=True)
@_json_flag()
def generate(
    design_path,
    unit,
    lanes,
    in_bits,
    softmax_output,
    max_len,
    groups,
    rows,
    cols,
    vector,
    w4_share,
    w4_kind,
    resources,
    out_dir,
    as_json,
):
    """Write Verilog (byte-identical on repeat): a whole accelerator from a design file, or one unit."""
    if (design_path is None) == (unit is None):
        raise CliError("give exactly one of --design FILE or --unit {softmax,layernorm,gelu,gvsa}")
    if design_path is not None:
        from vitaccel.design import load_design

        design = load_design(design_path)
        from vitaccel.flow.generate import generate_design

        result = generate_design(design, out_dir, resources=resources, progress=_progress(True))
    elif unit == "gvsa":
        from vitaccel.flow.unit_gvsa import generate_gvsa

        try:
            result = generate_gvsa(
                out_dir,
                groups=groups,
                rows=rows,
                cols=cols,
                vector=vector,
                w4_share=w4_share,
                w4_kind=w4_kind,
                log2=softmax_output == "log2",
                resources=resources,
            )
        except ValueError as err:  # array parameters (e.g. an odd number of W8 columns)
            raise CliError(f"--unit gvsa: {err}") from None
    else:
        from vitaccel.flow.unit_nonlinear import generate_unit

        opts = {}
        if unit == "softmax":
            opts["output"] = softmax_output
        if max_len is not None:
            opts["max_len"] = max_len
        result = generate_unit(unit, out_dir, lanes=lanes, in_bits=in_bits, **opts)
    _emit(result, as_json)


# ---------------------------------------------------------------------------------------
# sim
# ---------------------------------------------------------------------------------------


@main_group.command()
@_pick(
    "--unit",
    choices=[*NONLINEAR_UNITS, "matmul"],
    help="one unit or one matmul (default: the whole model, see --model)",
)
@_number("--lanes", lo=1, hi=64, default=1)
@_number("--vectors", lo=1, hi=10_000_000, default=20000, help="elements to compare")
@_number(
    "--stall",
    lo=0.0,
    hi=0.9,
    default=0.0,
    help="random stall probability on every stream (whole model: on every DDR channel)",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--model",
    "model_name",
    default=None,
    help="model to run whole (or, with --unit matmul, whose layer); default: the design's, "
    "else digits-vit",
)
@click.option("--layer", default=None, help="matmul: layer name (see --list-layers)")
@_number("--tokens", lo=1, hi=4096, help="matmul: tokens (default: the model's)")
@_pick(
    "--softmax",
    choices=["uint8", "log2"],
    default="uint8",
    help="matmul: softmax output of the golden model; log2 runs blocks.N.attn.sv in the "
    "engine's shift-add mode",
)
@click.option(
    "--list-layers", is_flag=True, help="matmul: list the model's matmuls (linear and attention)"
)
@_path(
    "--design",
    "design_path",
    help="whole model: design file (default: the documented default design)",
)
@_path("--weights", file=True, help="whole model: checkpoint of the float model")
@_number("--images", lo=1, hi=100_000, default=20, help="whole model: test images to run")
@_pick(
    "--engine",
    choices=["native", "cocotb"],
    default="native",
    help="whole model: compiled Verilator harness, or cocotb (Python AXI models, slow)",
)
@_json_flag()
def sim(
    unit,
    lanes,
    vectors,
    stall,
    seed,
    model_name,
    layer,
    tokens,
    softmax,
    list_layers,
    design_path,
    weights,
    images,
    engine,
    as_json,
):
    """Co-simulate the whole model (or a unit, or one golden-model layer on the GVSA) on
    Verilator, bit-exact against the golden model; exit 1 on any mismatch."""
    if unit is None:
        result = _sim_model(model_name, design_path, weights, images, engine, stall, seed)
    elif unit == "matmul":
        from vitaccel.flow.layer_sim import list_layers as _list
        from vitaccel.flow.layer_sim import simulate_layer

        model_name = model_name or "digits-vit"
        if list_layers:
            names = _list(model_name)
            if as_json:
                click.echo(json.dumps(names))
            else:
                click.echo("\n".join(names))
            return
        if layer is None:
            raise CliError(f"--layer is required; choose one of: {', '.join(_list(model_name))}")
        result = simulate_layer(
            model_name,
            layer,
            tokens=tokens,
            stall=stall,
            seed=seed,
            softmax=softmax,
            progress=_progress(True),
        )
    else:
        from vitaccel.flow.unit_nonlinear import simulate_unit

        result = simulate_unit(unit, lanes=lanes, vectors=vectors, seed=seed, stall=stall)
    _emit(result, as_json)
    if result.get("mismatches", 0):
        raise click.exceptions.Exit(EXIT_MISMATCH)


def _sim_model(model_name, design_path, weights, images, engine, stall, seed) -> dict:
    """``sim --model``: validate everything (design against the model included) before any
    quantisation or Verilator build, then run the images."""
    from vitaccel.design import load_design
    from vitaccel.models.specs import get_spec

    design = load_design(design_path) if design_path is not None else None
    model_name = model_name or (design.model if design is not None else "digits-vit")
    spec = get_spec(model_name)
    if weights is not None and not weights.is_file():
        raise CliError(f"--weights: file '{weights}' does not exist")
    from vitaccel.flow.model_sim import check_design_fits, simulate_model

    if design is not None:
        check_design_fits(design, spec)
    from vitaccel.sim.native import NativeRunError

    try:
        return simulate_model(
            model_name,
            design=design,
            weights=weights,
            images=images,
            engine=engine,
            pause=stall,
            seed=seed,
            progress=_progress(True),
        )
    except NativeRunError as err:  # a cycle limit or STATUS.ERROR: the run stopped
        raise CliError(f"RTL run stopped: {err}", code=EXIT_MISMATCH) from None


# ---------------------------------------------------------------------------------------
# dse and reports
# ---------------------------------------------------------------------------------------


@main_group.command()
@click.option("--model", "model_name", required=True)
@click.option("--board", default="zcu102", show_default=True)
@click.option("--fps", type=float, required=True, help="target frames per second")
@_number(
    "--max-util",
    lo=0.05,
    hi=1.0,
    default=0.85,
    help="max fraction of each resource",
)
@_pick(
    "--precision",
    choices=["mixed", "w8"],
    default="mixed",
    help="mixed: W4 columns and per-layer W4 ratios allowed; w8: all-W8 arrays",
)
@_number(
    "--max-drop",
    lo=0.0,
    hi=100.0,
    default=0.5,
    help="top-1 agreement with W8A8 the W4 rows may cost, in points (measured sensitivity)",
)
@_pick(
    "--datapath-bytes",
    choices=["16", "32", "64"],
    help="pin the X datapath width in bytes per cycle (default: the explorer tries 16, 32, 64)",
)
@_out_dir(default=Path("vitaccel-dse"))
@_json_flag()
def dse(model_name, board, fps, max_util, precision, max_drop, datapath_bytes, out_dir, as_json):
    """Explore array shape, tiling and the W4/W8 mix for an FPS target; exit 3 if infeasible."""
    from vitaccel.dse.search import InfeasibleError, SearchSpace, explore

    if not (fps > 0 and math.isfinite(fps)):  # inf would run the whole search to fail
        raise CliError(f"--fps must be a finite number > 0, got {fps}")
    try:
        space = SearchSpace()
        if datapath_bytes is not None:
            space = SearchSpace(datapath_bytes=(int(datapath_bytes),))
        result = explore(
            model_name, board, fps, max_util=max_util, out_dir=out_dir, precision=precision,
            max_drop=max_drop, space=space,
        )  # fmt: skip
    except InfeasibleError as err:
        if as_json:  # the same facts as fields on stdout; the one line still goes to stderr
            _emit({"feasible": False, **err.facts}, as_json)
        raise CliError(str(err).splitlines()[0], code=EXIT_INFEASIBLE) from None
    from vitaccel.dse.render import print_dse

    _emit(result, as_json, human=print_dse)


@main_group.command()
@click.option(
    "--models",
    default="deit-tiny,deit-small,deit-base",
    show_default=True,
    help="comma-separated zoo models",
)
@click.option("--board", default="zcu102", show_default=True)
@_number("--max-util", lo=0.05, hi=1.0, default=0.85, help="max fraction of each resource")
@_pick("--precision", choices=["mixed", "w8"], default="w8",
       help="w8: all-W8 arrays; mixed: W4 columns allowed")  # fmt: skip
@_json_flag()
def bench(models, board, max_util, precision, as_json):
    """Per model, the fastest design's FPS, % of board peak, cycles by cause, binding (predicted)."""
    from vitaccel.dse.benchmark import bench as run_bench
    from vitaccel.models.zoo import ZOO

    names = tuple(m.strip() for m in models.split(",") if m.strip())
    unknown = [m for m in names if m not in ZOO]
    if unknown or not names:
        raise CliError(
            f"--models: unknown model {', '.join(unknown) or '(none given)'}; "
            f"allowed: {', '.join(sorted(ZOO))}"
        )
    rows = run_bench(names, board, max_util=max_util, precision=precision)
    if as_json:
        _emit({"source": "cycle-model prediction", "rows": rows}, as_json)
        return
    from vitaccel.dse.render import print_bench

    print_bench(rows)


@main_group.command()
@click.option("--models", required=True, help="comma-separated zoo models")
@click.option("--boards", required=True, help="comma-separated boards")
@click.option("--fps", required=True, help="comma-separated FPS targets")
@_number(
    "--synth-top",
    lo=0,
    hi=16,
    default=0,
    help="synthesise the K best candidates of each query with Yosys and re-rank them",
)
@_number(
    "--images",
    lo=0,
    hi=10000,
    default=0,
    help="simulate each chosen design on the RTL for N images against the golden model",
)
@_number("--max-util", lo=0.05, hi=1.0, default=0.85)
@click.option("--scheduler", default=None, help="an existing Dask scheduler, tcp://host:8786")
@_number(
    "--workers",
    lo=1,
    hi=256,
    default=2,
    help="worker processes of the local cluster (without --scheduler)",
)
@_out_dir(required=True)
@click.option("--resume", is_flag=True, help="reuse a folder that holds another sweep's results")
@_json_flag()
def sweep(scheduler, workers, out_dir, resume, as_json, **query):
    """Explore (and synthesise, simulate) every model x board x FPS on Dask; exit 1 on a failure."""
    from vitaccel.flow.sweep import SweepError, parse_spec, print_sweep, run_sweep

    try:
        # the query options (--models ... --max-util) are parse_spec's keywords, by name
        spec = parse_spec(**query)
        results = run_sweep(spec, out_dir, scheduler=scheduler, workers=workers, resume=resume)
    except SweepError as err:
        raise CliError(str(err)) from None
    _emit(results, as_json, human=print_sweep)
    if any(r["status"] in ("failed", "mismatch") for r in results["rows"]):
        raise click.exceptions.Exit(EXIT_MISMATCH)


@main_group.group()
def report():
    """Roofline and design reports."""


@report.command("roofline")
@click.option("--model", "model_name", required=True)
@click.option("--board", default=None)
@click.option("--device", default=None, help="a GPU for the FP16 view (see docs/dse.md)")
@_out_dir()
@_json_flag()
def report_roofline(model_name, board, device, out_dir, as_json):
    """Per-operation FLOPs, bytes and arithmetic intensity of one encoder block."""
    from vitaccel.dse.roofline import roofline

    if board is not None and device is not None:
        raise CliError("give at most one of --board or --device")
    rows = roofline(model_name, board=board, device=device, out_dir=out_dir)
    if as_json:
        click.echo(json.dumps(rows, default=_json_default))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*rows[0].keys()) if rows else Table()
        for r in rows:
            table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()))
        Console().print(table)


@report.command("design")
@click.argument("design_file", type=click.Path(path_type=Path))
@_path(
    "--html",
    "html_path",
    help="also write the self-contained HTML report there (model figures only)",
)
@_json_flag()
def report_design(design_file, html_path, as_json):
    """Utilisation per resource, predicted FPS, per-layer cycles and bounds of a design."""
    from vitaccel.dse.render import print_design_report
    from vitaccel.dse.report import design_report

    if html_path is not None:
        _check_writable(html_path, "--html")
    report = design_report(design_file)
    if html_path is not None:
        from vitaccel.report import write_design_report

        try:
            write_design_report(design_file, html_path)
        except OSError as err:
            raise CliError(f"--html: cannot write '{html_path}': {err.strerror or err}") from None
        report["html"] = str(html_path.resolve())
    _emit(report, as_json, human=print_design_report)
    if html_path is not None and not as_json:
        click.echo(f"report: {report['html']}")


def _check_writable(path: Path, option: str) -> None:
    """Refuse an output file that cannot be written, before any work."""
    import os

    if path.is_dir():
        raise CliError(f"{option}: '{path}' is a folder; give a file name (e.g. report.html)")
    parent = path.parent
    if not parent.is_dir():
        raise CliError(f"{option}: folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(f"{option}: cannot write '{path}' (permission denied)")


# ---------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------


@main_group.command()
@click.option("--model", "model_name", default="digits-vit", show_default=True)
@click.option("--board", default="zcu102", show_default=True)
@click.option(
    "--fps",
    type=float,
    default=None,
    help="FPS target for the DSE (default: the documented default design)",
)
@_number("--images", lo=1, hi=10000, default=20)
@_path("--weights", file=True)
@_out_dir(default=Path("vitaccel-build"))
@click.option(
    "--synth/--no-synth",
    default=True,
    show_default=True,
    help="count resources by Yosys synthesis (minutes, cached) or by the DSE resource model",
)
@_scheme_options
@_json_flag()
def build(model_name, as_json, **options):
    """Quantize, design, compile, generate, synthesise and co-simulate one model on one board;
    write DIR/report.html (docs/report.md)."""
    from vitaccel.boards import get_board
    from vitaccel.flow.build import BuildOptions, default_design, design_for_scheme
    from vitaccel.flow.build import build as run_build
    from vitaccel.models.specs import get_spec

    # the click options are BuildOptions' fields, by name
    opts = BuildOptions(model=model_name, **options)
    get_spec(opts.model)
    get_board(opts.board)
    if opts.fps is not None and not opts.fps > 0:
        raise CliError(f"--fps must be > 0, got {opts.fps}")
    if not 0.0 <= opts.w4_ratio <= 1.0:
        raise CliError(f"--w4-ratio must be in [0, 1], got {opts.w4_ratio}")
    if opts.weights is not None and not opts.weights.is_file():
        raise CliError(f"--weights: file '{opts.weights}' does not exist")
    if opts.fps is None:  # the default design's scheme errors before any step starts
        design = default_design(opts.model, opts.board)
        design_for_scheme(design, opts.scheme, opts.w4_ratio, opts.w4_kind)
    from vitaccel.flow.progress import BuildProgress

    say = _progress(True)
    steps = BuildProgress(say=say, live=sys.stderr.isatty())
    summary = run_build(opts, progress=say, steps=steps)
    if as_json:
        _emit(summary, as_json)
    else:
        from vitaccel.design import load_design
        from vitaccel.report.terminal import print_build_summary

        design = load_design(Path(summary["output_dir"]) / "design.json")
        print_build_summary(summary, design)


# ---------------------------------------------------------------------------------------
# entry point with one-line errors
# ---------------------------------------------------------------------------------------


def _known_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [CliError]
    from vitaccel.design import DesignError
    from vitaccel.models.specs import ModelError, WeightsError

    errs += [DesignError, ModelError, WeightsError]
    from vitaccel.compile.compiler import CompileError

    errs.append(CompileError)
    from vitaccel.flow.generate import LintError

    errs.append(LintError)
    try:
        from vitaccel.boards import BoardError

        errs.append(BoardError)
    except ImportError:
        pass
    return tuple(errs)


def main(argv: list[str] | None = None) -> int:
    prog = "vitaccel"
    try:
        main_group.main(args=argv, prog_name=prog, standalone_mode=False)
        return 0
    except click.exceptions.NoArgsIsHelpError as err:
        click.echo(err.ctx.get_help() if err.ctx else str(err))
        return 0
    except click.UsageError as err:
        cmd = err.ctx.command_path if err.ctx else prog
        click.echo(f"{cmd}: error: {err.format_message()}", err=True)
        sys.exit(EXIT_USAGE)
    except click.exceptions.Abort:
        click.echo(f"{prog}: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as err:
        return err.exit_code
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted; no partial output was kept", err=True)
        sys.exit(130)
    except _known_errors() as err:
        code = getattr(err, "code", EXIT_USAGE)
        click.echo(
            f"{prog}: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
            err=True,
        )
        sys.exit(code if isinstance(code, int) else EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
