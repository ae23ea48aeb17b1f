"""``vitaccel generate --design FILE``: everything a user takes to Vivado and to the board.

Output folder (written to a temporary folder and moved into place)::

    design.json              the design, canonical form
    rtl/vitaccel_top.v       the accelerator (Amaranth -> Verilog, byte-identical on repeat)
    vivado/project.tcl       project + Zynq UltraScale+ block design (PS8, HPM0 -> AXI-Lite,
    vivado/constraints.xdc   HP0 <- AXI4 master, HP1..HP3 <- weight masters, pl_clk0, reset,
                             irq), synth, impl, bitstream
    vivado/build.sh
    program/image.bin        the compiled model: program + constants + packed weights
    program/layout.json      where the host writes the input and reads the logits
    driver/run_on_board.py   PYNQ host script (vitaccel.compile.driver.PynqBackend)
    lint.txt                 Verilator --lint-only -Wall output (documented suppressions)
    resources.json           with --resources: Yosys xcup counts against the board budget
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from vitaccel.design import Design
from vitaccel.util import atomic_output_dir

__all__ = ["generate_design", "lint_verilog", "LintError", "LINT_SUPPRESSED", "fits_board"]

TOP_NAME = "vitaccel_top"

# Warnings Amaranth's Verilog raises by construction (not design bugs), suppressed in lint:
# width changes are explicit in Amaranth; unused bits of wide buses are expected;
# DECLFILENAME because the file holds several generated modules; PROCASSINIT because every
# register is declared with its reset value (`reg x = 0;`, honoured by FPGA configuration)
# and also assigned in its process; CASEINCOMPLETE because Amaranth assigns a default before
# every case statement (ROM lookups), so an uncovered value cannot infer a latch;
# CASEOVERLAP because Yosys writes a $pmux (one-hot select, docs/verification.md) as a
# parallel_case function whose ``casez`` patterns overlap only for select values a one-hot
# select never takes.
LINT_SUPPRESSED = (
    "WIDTHEXPAND",
    "WIDTHTRUNC",
    "UNUSEDSIGNAL",
    "UNUSEDPARAM",
    "DECLFILENAME",
    "PINCONNECTEMPTY",
    "UNDRIVEN",
    "SYNCASYNCNET",
    "VARHIDDEN",
    "PROCASSINIT",
    "CASEINCOMPLETE",
    "CASEOVERLAP",
)


class LintError(RuntimeError):
    """Verilator could not lint the Verilog (a missing file or a syntax error): not a count
    of warnings, a failed step."""


def lint_verilog(verilog_path: Path, top: str) -> tuple[int, str]:
    """Run Verilator --lint-only -Wall; returns (number of warnings, output text).
    :class:`LintError` when Verilator reports an error other than its warning tally."""
    from vitaccel.sim.runner import verilator_env

    env = verilator_env()
    args = [
        "verilator",
        "--lint-only",
        "-Wall",
        "--top-module",
        top,
        *(f"-Wno-{w}" for w in LINT_SUPPRESSED),
        verilog_path.name,  # Verilator runs in the file's folder (its obj_dir lands there)
    ]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=verilog_path.parent)
    # Drop Verilator's run report ("- V e r i l a t i o n   R e p o r t", wall time, memory):
    # it changes from run to run, and the output folder must be byte-identical.
    text = "".join(
        line
        for line in (proc.stdout + proc.stderr).splitlines(keepends=True)
        if not line.startswith("- ")
    )
    lines = text.splitlines()
    errors = [ln for ln in lines if ln.startswith("%Error") and "Exiting due to" not in ln]
    if errors:
        raise LintError(f"Verilator lint of {verilog_path.name} failed: {errors[0]}")
    return sum(1 for ln in lines if ln.startswith("%Warning")), text


def fits_board(resources: dict, board: str) -> dict:
    from vitaccel.boards import get_budget

    b = get_budget(board)
    avail = {"lut": b.lut, "ff": b.ff, "dsp48e2": b.dsp48e2, "bram36": b.bram36, "uram": b.uram}
    used = {k: resources.get(k, 0) for k in avail}
    return {
        "used": used,
        "available": avail,
        "utilization": {k: used[k] / avail[k] if avail[k] else float(used[k] > 0) for k in avail},
        "fits": all(used[k] <= avail[k] for k in avail),
    }


def generate_design(
    design: Design,
    out_dir: Path,
    *,
    resources: bool = False,
    compile_model: bool = True,
    progress=None,
) -> dict:
    from vitaccel.boards.vivado import AcceleratorInterface, check_hp_ports, write_project
    from vitaccel.rtl.top import top_verilog

    say = progress or (lambda msg: None)
    out_dir = Path(out_dir)
    if compile_model:
        # the program's scratchpad layout needs only the model's shape: refuse before minutes
        # of Verilog generation and lint
        from vitaccel.compile.compiler import spm_layout
        from vitaccel.models.specs import get_spec

        spm_layout(get_spec(design.model), design.spm_kib * 1024 // 16)
    # buffers beyond the board's BRAM36/URAM288, or weights beyond its DDR: one line, exit 2
    from vitaccel.dse.resources import check_fits

    check_fits(design)
    # The interface says which weight masters (m_axi_w<q>) the block design wires to HP
    # ports; a board without enough of them is refused before the Verilog is generated.
    interface = AcceleratorInterface(weight_ports=design.weight_ports)
    check_hp_ports(design.board, interface)
    summary: dict = {"design": design.name, "board": design.board, "clock_mhz": design.clock_mhz}
    with atomic_output_dir(out_dir) as tmp:
        (tmp / "design.json").write_text(design.canonical_json())
        say("generating Verilog")
        verilog = top_verilog(design, TOP_NAME)
        paths = write_project(
            design.board, tmp, TOP_NAME, verilog, design.clock_mhz, interface=interface
        )
        vpath = tmp / "rtl" / f"{TOP_NAME}.v"
        say("linting with Verilator")
        warnings, text = lint_verilog(vpath, TOP_NAME)
        (tmp / "lint.txt").write_text(text or "no warnings\n")
        summary["lint_warnings"] = warnings
        if compile_model:
            say(f"compiling {design.model}")
            _write_program(design, tmp)
        _write_driver(tmp)
        if resources:
            from vitaccel.flow.yosys import synth_xcup

            say("synthesising with Yosys (synth_xilinx -family xcup)")
            res = synth_xcup(verilog, TOP_NAME).as_dict()
            fit = fits_board(res, design.board)
            summary["resources"] = {**fit, "lut_depth": res.get("lut_depth")}
            (tmp / "resources.json").write_text(json.dumps(summary["resources"], indent=2) + "\n")
        summary["files"] = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        del paths
    summary["output_dir"] = str(out_dir.resolve())
    return summary


def _write_program(design: Design, out: Path) -> None:
    from vitaccel.compile.compiler import compile_model
    from vitaccel.compile.schedule import chain_roles
    from vitaccel.flow.codec import codec_for
    from vitaccel.models.evaluate import prepare
    from vitaccel.models.golden import quant_config_for

    _, _, golden, _, _ = prepare(design.model, config=quant_config_for(design), images=1)
    compiled = compile_model(
        golden,
        groups=design.array.groups,
        codec=codec_for(design),
        spm_words=design.spm_kib * 1024 // 16,
        chain=chain_roles(golden.spec, design),
    )
    (out / "program").mkdir(exist_ok=True)
    (out / "program" / "image.bin").write_bytes(bytes(compiled.image))
    t = compiled.tensors["patches"]
    layout = {
        "model": design.model,
        "input_offset": compiled.input_offset,
        "input_rows": t.rows,
        "input_cols": t.cols,
        "input_stride_words": t.stride,
        "output_offset": compiled.output_offset,
        "classes": compiled.classes,
        "input_scale": golden.input_scale,
        "patch_size": golden.spec.patch_size,
        "instructions": len(compiled.program),
    }
    (out / "program" / "layout.json").write_text(json.dumps(layout, indent=2) + "\n")


_DRIVER = '''"""Run the generated accelerator on a PYNQ board (ZCU104/KV260 images; ZCU102 community).

    python run_on_board.py vitaccel.bit ../program image.npy

image.npy: one normalised image (C, H, W), as the model expects. Needs the vitaccel package
on the board (its host parts use numpy only; pynq is imported by the PYNQ back end).
"""

import json
import sys
from pathlib import Path

import numpy as np

from vitaccel.compile.compiler import spm_rows
from vitaccel.compile.driver import PynqBackend, parse_reads, protocol_steps
from vitaccel.models.specs import patchify
from vitaccel.quant.scales import quantize_activation


def main(bitfile: str, program_dir: str, image_file: str) -> None:
    layout = json.loads((Path(program_dir) / "layout.json").read_text())
    backend = PynqBackend(bitfile)
    base = backend.load_image((Path(program_dir) / "image.bin").read_bytes())
    image = quantize_activation(np.load(image_file)[None], layout["input_scale"])
    patches = patchify(image, layout["patch_size"])[0]
    steps = protocol_steps(
        input_offset=layout["input_offset"],
        input_bytes=spm_rows(patches, layout["input_stride_words"]),
        output_offset=layout["output_offset"],
        output_bytes=layout["classes"],
        base=base,
    )
    result = parse_reads(backend.run(steps))
    print(json.dumps({"class": int(result.logits.argmax()), "logits": result.logits.tolist(), "cycles": result.cycles}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
'''


def _write_driver(out: Path) -> None:
    (out / "driver").mkdir(exist_ok=True)
    (out / "driver" / "run_on_board.py").write_text(_DRIVER)
