"""The ``vitaccel`` command line: quantize, dse, generate, sim, report, build.

Every command validates its input up front; bad input gets ONE line on stderr naming the
field and the allowed values, exit code 2, and nothing is written. ``--json`` prints one JSON
object (or list) on stdout and keeps progress on stderr.
"""

from __future__ import annotations

import json
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
        from rich.table import Table

        table = Table(show_header=False)
        for k, v in obj.items():
            table.add_row(
                str(k),
                json.dumps(v, default=_json_default) if isinstance(v, dict | list) else str(v),
            )
        Console().print(table)


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
    generate  design file (or one unit) -> Verilog, Vivado project, resources
    sim       RTL co-simulation on Verilator, bit-exact against the golden model
    report    roofline and design reports
    build     all of the above for one model/board/FPS (default: digits-vit on ZCU102)
    """


# ---------------------------------------------------------------------------------------
# quantize
# ---------------------------------------------------------------------------------------


def _model_choice():
    from vitaccel.models.zoo import ZOO

    return click.Choice(sorted(ZOO))


@main_group.command()
@click.option(
    "--model", "model_name", default="digits-vit", show_default=True, help="zoo model name"
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="checkpoint (.safetensors or torch .pth)",
)
@click.option(
    "--scheme", type=click.Choice(["w8a8", "w4a8", "mixed"]), default="w8a8", show_default=True
)
@click.option(
    "--w4-ratio",
    type=float,
    default=0.5,
    show_default=True,
    help="W4 share of each encoder linear layer (mixed)",
)
@click.option("--w4-kind", type=click.Choice(["int4", "pot4"]), default="int4", show_default=True)
@click.option(
    "--softmax-output", type=click.Choice(["uint8", "log2"]), default="uint8", show_default=True
)
@click.option(
    "--images",
    type=click.IntRange(min=1),
    default=None,
    help="images to evaluate (default: digits test split / 8)",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def quantize(model_name, weights, scheme, w4_ratio, w4_kind, softmax_output, images, as_json):
    """Quantise a float model to the integer golden model and compare it with float."""
    from vitaccel.models.evaluate import evaluate
    from vitaccel.models.golden import QuantConfig
    from vitaccel.models.zoo import get_spec

    get_spec(model_name)
    if not 0.0 <= w4_ratio <= 1.0:
        raise CliError(f"--w4-ratio must be in [0, 1], got {w4_ratio}")
    if weights is not None and not weights.is_file():
        raise CliError(f"--weights: file '{weights}' does not exist")
    cfg = QuantConfig(
        scheme=scheme, w4_ratio=w4_ratio, w4_kind=w4_kind, softmax_output=softmax_output
    )
    result = evaluate(
        model_name, weights=weights, config=cfg, images=images, progress=_progress(True)
    )
    _emit(result.as_dict(), as_json)


# ---------------------------------------------------------------------------------------
# entry point with one-line errors
# ---------------------------------------------------------------------------------------


def _known_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [CliError]
    from vitaccel.design import DesignError
    from vitaccel.models.zoo import ModelError, WeightsError

    errs += [DesignError, ModelError, WeightsError]
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
