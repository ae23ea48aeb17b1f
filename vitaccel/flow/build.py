"""``vitaccel build``: the main job, one model on one board, end to end.

Steps (each shown as progress on stderr): quantize (golden model + accuracy against float),
design (the DSE for the FPS target when one is given, else the documented default design),
compile (program + DDR image) and check it on the ISA interpreter, generate (Verilog +
Vivado project + host driver), Yosys resources, and the RTL co-simulation of N images
against the golden model (the native Verilator harness, :mod:`vitaccel.sim.native`).
Everything is written into a temporary folder that replaces the output folder only when all
steps succeed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitaccel.design import Design
from vitaccel.util import atomic_output_dir

__all__ = ["BuildOptions", "build", "default_design", "design_for_scheme", "resources_summary"]


@dataclass
class BuildOptions:
    model: str = "digits-vit"
    board: str = "zcu102"
    fps: float | None = None
    images: int = 20
    out_dir: Path = Path("vitaccel-build")
    weights: Path | None = None
    rtl: bool = True
    synth: bool = True
    scheme: str = "w8a8"
    w4_ratio: float = 0.5
    w4_kind: str = "int4"
    extra: dict = field(default_factory=dict)


def default_design(model: str, board: str) -> Design:
    """The documented default when no FPS target is given: a small array that fits every
    board and simulates quickly (1 group of 4 x 4 PEs, vector 8, 200 MHz)."""
    from vitaccel.design import ArrayConfig, NonlinearConfig

    return Design(
        name=f"{model}-{board}-default",
        model=model,
        board=board,
        clock_mhz=200.0,
        array=ArrayConfig(groups=1, rows=4, cols=4, vector=8),
        nonlinear=NonlinearConfig(softmax_lanes=4, layernorm_lanes=4, gelu_lanes=4),
    )


def design_for_scheme(design: Design, scheme: str, w4_ratio: float, w4_kind: str, *,
                      explored: bool = False) -> Design:  # fmt: skip
    """``design`` with the weight scheme of ``vitaccel quantize --scheme``: ``w8a8`` as is;
    ``mixed`` (``w4_ratio`` of every encoder layer's rows in W4) or ``w4a8`` (all of them)
    on W4 lanes of ``w4_kind``. The default design (``explored`` False) gets as many W4
    columns as it has W8 ones (same DSPs); an explored design must already have them.

    Raises
    ------
    DesignError
        One line naming the field and the allowed values: a scheme or ratio out of range, a
        W4 kind the array lacks, or an array the accelerator RTL cannot build.
    """
    from vitaccel.design import DesignError, parse_design
    from vitaccel.models.golden import SCHEMES
    from vitaccel.rtl.top import Accelerator

    if scheme not in SCHEMES:
        raise DesignError(f"scheme must be one of {', '.join(SCHEMES)}, not {scheme!r}")
    if not 0.0 <= w4_ratio <= 1.0:
        raise DesignError(f"w4_ratio must be in [0, 1], not {w4_ratio!r}")
    if scheme != "w8a8":
        a = design.array
        if explored and not a.w4_share:
            raise DesignError(
                f"--scheme {scheme}: the explored design has no W4 columns (array.w4_share = 0); "
                "allowed: --scheme w8a8"
            )
        if explored and a.w4_kind != w4_kind:
            raise DesignError(
                f"--w4-kind {w4_kind}: the explored design's W4 columns are {a.w4_kind} "
                f"(array.w4_kind); allowed: {a.w4_kind}"
            )
        data = design.model_dump()
        if not explored:
            data["array"].update(cols=2 * a.cols, w4_share=0.5, w4_kind=w4_kind)
        data["name"] = f"{design.name}-{scheme}"
        data["default_w4_ratio"] = 1.0 if scheme == "w4a8" else w4_ratio
        design = parse_design(data)  # the design's own checks, one line on error
    try:
        Accelerator.check(design=design)
    except ValueError as e:
        raise DesignError(str(e)) from None
    return design


def build(opts: BuildOptions, progress=print, steps=None) -> dict:
    """Run the build of ``opts``; return its summary (also written to summary.json, and laid
    out in report.html). ``steps``: a :class:`vitaccel.flow.progress.BuildProgress` (rich
    bars on a terminal); without it each step prints a line through ``progress``."""
    import torch

    from vitaccel.compile import interp
    from vitaccel.compile.compiler import compile_model, spm_layout
    from vitaccel.compile.driver import Driver
    from vitaccel.compile.schedule import chain_roles
    from vitaccel.design import load_design, save_design
    from vitaccel.flow.codec import codec_for
    from vitaccel.flow.generate import generate_design
    from vitaccel.flow.progress import BuildProgress
    from vitaccel.models.evaluate import evaluate, prepare
    from vitaccel.models.golden import quant_config_for
    from vitaccel.models.specs import get_spec

    summary: dict = {"model": opts.model, "board": opts.board}
    steps = steps or BuildProgress(say=progress)
    key = f"{opts.model}|{opts.board}|{opts.fps}"  # names the steps in the ETA history
    with atomic_output_dir(opts.out_dir) as out, steps:
        # 1. design: from the DSE for an FPS target, else the documented default
        with steps.step("design (explore)" if opts.fps else "design", key=f"design|{key}"):
            if opts.fps is not None:
                from vitaccel.dse.search import explore

                # a W4 scheme asks the explorer for its mixed answer (W4 columns), w8a8 for W8
                precision = "w8" if opts.scheme == "w8a8" else "mixed"
                res = explore(opts.model, opts.board, opts.fps, out_dir=out / "dse",
                              precision=precision)  # fmt: skip
                design = load_design(res["design"])
                summary["dse"] = {k: res[k] for k in ("fps", "target_fps", "binding") if k in res}
            else:
                design = default_design(opts.model, opts.board)
            design = design_for_scheme(design, opts.scheme, opts.w4_ratio, opts.w4_kind,
                                       explored=opts.fps is not None)  # fmt: skip
            save_design(design, out / "design.json")
            # The scratchpad layout needs only the model's shape: refuse a model that does
            # not fit now, not after minutes of quantisation.
            spm_layout(get_spec(opts.model), design.spm_kib * 1024 // 16)
        cfg = quant_config_for(design)
        # 2. quantize: the golden model and its accuracy against float (whole test split)
        with steps.step("quantize", key=f"quantize|{key}"):
            ev = evaluate(opts.model, weights=opts.weights, config=cfg)
            summary["quantize"] = ev.as_dict()
        spec, model, golden, x, y = prepare(
            opts.model, weights=opts.weights, config=cfg, images=opts.images
        )
        patches = golden.quantize_images(x)
        golden_logits = golden.forward_patches(patches)
        with torch.no_grad():
            float_logits = model(x).double().numpy()
        # 3. compile, and check the program on the ISA interpreter
        with steps.step("compile"):
            codec = codec_for(design)
            compiled = compile_model(
                golden,
                groups=design.array.groups,
                codec=codec,
                spm_words=design.spm_kib * 1024 // 16,
                chain=chain_roles(golden.spec, design),
            )
        with steps.step("check the program on the ISA interpreter", total=len(patches)) as st:
            same = 0
            for j in range(len(patches)):
                m = interp.run(
                    compiled.image_with_input(patches[j]),
                    codec,
                    spm_words=compiled.spm_words,
                    softmax_lanes=design.nonlinear.softmax_lanes,
                )
                same += int(np.array_equal(compiled.read_logits(m.ddr), golden_logits[j]))
                st.advance()
            summary["program_bit_exact"] = same
        # 4. generate: Verilog, Vivado project, program, driver, lint, Yosys resources
        label = "generate + Yosys (minutes, cached)" if opts.synth else "generate"
        with steps.step(label, key=f"generate|{opts.synth}|{key}") as st:
            gen = generate_design(design, out / "hw", resources=opts.synth, progress=st.note)
            summary["lint_warnings"] = gen["lint_warnings"]
            summary.update(resources_summary(design, gen["resources"] if opts.synth else None))
        # 5. co-simulate on Verilator through the host driver
        if opts.rtl:
            from vitaccel.sim.native import NativeBackend

            # The compiled harness (vitaccel.sim.native): every image in one process.
            with steps.step("Verilator build (cached)", key=f"verilator-native|{key}") as st:
                backend = NativeBackend(design, progress=st.note)
                backend.ensure_built()
            drv = Driver(backend)
            drv.load(compiled)
            with steps.step(f"co-simulate {len(patches)} images on Verilator (native)",
                            total=len(patches)) as st:  # fmt: skip
                shown = [0]  # images the bar shows; the harness reports them as it goes

                def on_progress(done, *_):
                    st.advance(done - shown[0])
                    shown[0] = done

                backend.on_progress = on_progress
                t0 = time.monotonic()
                results = drv.infer_batch(list(patches))
                on_progress(len(patches))
            summary["rtl_seconds"] = round(time.monotonic() - t0, 2)
            summary["simulator"] = "Verilator (native C++ harness: DDR model and AXI-Lite host)"
            summary["sim_engine"] = "native"
            summary["sim_cycles_per_s"] = backend.last["sim_cycles"] / backend.last["wall_s"]
            rtl_logits = np.stack([r.logits for r in results])
            cycles = [r.cycles for r in results]
            summary["bit_exact"] = int(
                sum(np.array_equal(a, b) for a, b in zip(rtl_logits, golden_logits, strict=True))
            )
            summary["first_mismatch"] = _first_mismatch(rtl_logits, golden_logits)
            summary["cycles_per_image"] = float(np.mean(cycles))
            summary["fps"] = design.clock_mhz * 1e6 / summary["cycles_per_image"]
            if y is not None:
                summary["rtl_top1"] = float((rtl_logits.argmax(1) == y.numpy()).mean())
        summary["images"] = int(len(patches))
        summary["clock_mhz"] = design.clock_mhz
        if y is not None:
            labels = y.numpy()
            summary["float_top1"] = float((float_logits.argmax(1) == labels).mean())
            summary["golden_top1"] = float((golden_logits.argmax(1) == labels).mean())
        else:
            summary["float_top1"] = summary["golden_top1"] = None
            if "bit_exact" in summary:
                summary["rtl_top1"] = None
        summary["output_dir"] = str(opts.out_dir.resolve())
        summary["report_html"] = str(opts.out_dir.resolve() / "report.html")
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
        with steps.step("report.html", key=f"report|{key}"):
            from vitaccel.report import write_build_report

            write_build_report(out, summary)
    return summary


def resources_summary(design: Design, yosys: dict | None = None) -> dict:
    """The summary's resources of ``design``: ``resources_source``, ``resources`` ({kind:
    {used, available}}, URAM288 beside BRAM36 on the boards that have it) and ``fits``.

    ``yosys``: :func:`~vitaccel.flow.generate.fits_board` of the Yosys counts (``--synth``);
    ``None`` prices the design with the resource model instead.
    """
    from vitaccel.boards import get_budget
    from vitaccel.dse.resources import ALL_KINDS, board_kinds, design_resources
    from vitaccel.flow.generate import fits_board

    if yosys is not None:
        res, source = yosys, "yosys synth_xilinx -family xcup"
    else:
        total = design_resources(design)["total"]
        res = fits_board({k: int(round(getattr(total, k))) for k in ALL_KINDS}, design.board)
        source = "dse resource model (calibrated on Yosys; --synth for real synthesis)"
    kinds = board_kinds(get_budget(design.board))
    return {
        "resources_source": source,
        "resources": {k: {"used": res["used"][k], "available": res["available"][k]} for k in kinds},
        "fits": res["fits"],
    }


def _first_mismatch(rtl: np.ndarray, golden: np.ndarray) -> dict | None:
    """The first image whose logits differ, with the first differing logit."""
    for i, (a, b) in enumerate(zip(rtl, golden, strict=True)):
        diff = np.flatnonzero(a != b)
        if diff.size:
            j = int(diff[0])
            return {"image": i, "index": j, "rtl": int(a[j]), "golden": int(b[j])}
    return None
