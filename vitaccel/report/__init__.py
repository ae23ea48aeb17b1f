"""Reports a person reads: the self-contained HTML report and the terminal summary.

* :func:`write_build_report`: ``<out>/report.html`` of a ``vitaccel build``.
* :func:`write_design_report`: the same page for a design file, model figures only
  (``vitaccel report design FILE --html OUT``).
* :func:`vitaccel.report.html.write_sweep_html`: ``DIR/report.html`` of a ``vitaccel sweep``
  (its rows and FPS-vs-resources plots across boards, from ``results.json``).
* :mod:`vitaccel.report.terminal`: the build's summary on the terminal.

Dependency direction: this package reads dse, boards and the design file; flow and cli call
it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUILD_FILES", "write_build_report", "write_design_report"]

# What a build writes that a person looks for, in the order the report lists them.
BUILD_FILES = (
    ("report.html", "this report"),
    ("summary.json", "the build's figures (what vitaccel build --json prints)"),
    ("design.json", "the design file"),
    ("dse/pareto.json", "the explorer's Pareto front"),
    ("hw/rtl/vitaccel_top.v", "Verilog of the accelerator"),
    ("hw/vivado/project.tcl", "Vivado project (block design with the Zynq PS)"),
    ("hw/vivado/build.sh", "Vivado batch build to a bitstream"),
    ("hw/vivado/constraints.xdc", "timing constraints"),
    ("hw/program/image.bin", "compiled program and weights (DDR image)"),
    ("hw/driver/run_on_board.py", "host driver for the board (PYNQ)"),
    ("hw/resources.json", "Yosys resource counts"),
    ("hw/lint.txt", "Verilator lint log"),
)


def write_build_report(out: Path, summary: dict) -> Path:
    """Write ``out/report.html`` for the build whose files are in ``out`` (the build's
    temporary folder; paths are shown under ``summary["output_dir"]``)."""
    from vitaccel.report.data import collect
    from vitaccel.report.html import write_html

    out = Path(out)
    final = Path(summary.get("output_dir") or out)
    files = [(rel, what) for rel, what in BUILD_FILES if rel == "report.html"
             or (out / rel).is_file()]  # fmt: skip
    data = collect(
        out / "design.json", summary=summary, pareto_path=out / "dse" / "pareto.json", files=files
    )
    # the page names the files where they will be, not in the build's temporary folder
    data["design_path"] = str(final / "design.json")
    data["files_root"] = str(final)
    if data["pareto"]["source"] != "explorer":
        data["pareto"]["source"] = str(final / "dse" / "pareto.json")
    return write_html(out / "report.html", data)


def write_design_report(design_path: Path, html_path: Path) -> Path:
    """Write the report of the design file ``design_path`` (no build: model figures)."""
    from vitaccel.report.data import collect
    from vitaccel.report.html import write_html

    return write_html(html_path, collect(design_path))
