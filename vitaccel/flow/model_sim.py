"""``vitaccel sim --model M``: a whole model on the RTL of a design, against the golden model.

The golden model is quantised as the design says (:func:`~vitaccel.models.golden.quant_config_for`),
compiled into a program and memory image for the design, and N images run through the host
driver on one of two engines: ``native`` (:mod:`vitaccel.sim.native`, a compiled Verilator
harness, one process for all images) or ``cocotb`` (:class:`vitaccel.sim.host.SimBackend`,
Python AXI models, ~1-2k cycles/s: for cross-checks). Every image's logits must equal the
golden model's, element for element; the cycles are compared with the cycle model's
prediction for the same program.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ENGINES", "DesignProgram", "check_design_fits", "design_program", "simulate_model",
    "first_mismatch",
]  # fmt: skip

ENGINES = ("native", "cocotb")


def check_design_fits(design, spec) -> None:
    """Refuse a design the model's program cannot run on, before any Verilog or build.

    Raises
    ------
    DesignError
        One line naming the design field and the value it needs.
    """
    from vitaccel.compile.compiler import CompileError, spm_layout
    from vitaccel.design import DesignError

    nl = design.nonlinear
    if spec.tokens > nl.max_tokens:
        raise DesignError(
            f"design field 'nonlinear.max_tokens': {nl.max_tokens} is below {spec.name}'s "
            f"{spec.tokens} tokens (the E2Softmax row length); it must be >= {spec.tokens}"
        )
    if spec.embed_dim > nl.max_channels:
        raise DesignError(
            f"design field 'nonlinear.max_channels': {nl.max_channels} is below {spec.name}'s "
            f"embedding width {spec.embed_dim} (AILayerNorm and RESADD rows); it must be >= "
            f"{spec.embed_dim}"
        )
    try:
        spm_layout(spec, design.spm_kib * 1024 // 16)
    except CompileError as err:
        raise DesignError(
            f"design field 'spm_kib': {design.spm_kib} KiB is too small for {spec.name}: "
            f"{str(err).splitlines()[0]}"
        ) from None


def first_mismatch(got: np.ndarray, want: np.ndarray) -> tuple[int, int, int] | None:
    """``(class, rtl, golden)`` of the first differing logit, or None when equal."""
    diff = np.flatnonzero(np.asarray(got) != np.asarray(want))
    return None if diff.size == 0 else (int(diff[0]), int(got[diff[0]]), int(want[diff[0]]))


class _Bar:
    """Progress of a native run: a rich bar with simulated cycles/s and ETA on a terminal,
    a line every ~10 s otherwise (logs, CI)."""

    def __init__(self, images: int, expected_cycles: float, say: Callable[[str], None] | None):
        self.images = images
        self.total = max(1, int(images * expected_cycles))
        self.say = say
        self.done = 0
        self.done_cycles = 0  # cycles of the finished images
        self.last_line = 0.0
        self.progress = None
        if say is not None and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]RTL[/] {task.fields[images]}"),
                BarColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.progress.add_task(
                "sim", total=self.total, images=f"0/{images} images", rate=""
            )
            self.progress.start()

    def __call__(self, done: int, images: int, image_cycles: int, sim_cycles: int, wall_s: float):
        # The harness reports the running image's cycles so far, and once more (with
        # ``done`` one higher) the finished image's total.
        rate = sim_cycles / wall_s if wall_s > 0 else 0.0
        if done > self.done:
            self.done = done
            self.done_cycles += image_cycles
            completed = self.done_cycles
        else:
            completed = self.done_cycles + image_cycles
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=min(completed, self.total),
                images=f"{done}/{images} images",
                rate=f"{rate / 1e3:,.0f}k cycles/s",
            )
        elif self.say is not None and (time.monotonic() - self.last_line > 10 or done == images):
            self.last_line = time.monotonic()
            left = max(0, self.total - completed)
            eta = f", ETA {left / rate:,.0f} s" if rate > 0 and done < images else ""
            self.say(
                f"RTL: {done}/{images} images, {completed:,} cycles, {rate / 1e3:,.1f}k cycles/s{eta}"
            )

    def close(self):
        if self.progress is not None:
            self.progress.stop()


@dataclass(frozen=True)
class DesignProgram:
    """A model quantised as a design says, its test images and the compiled program."""

    golden: object  # vitaccel.models.golden.IntViT
    patches: np.ndarray  # quantised input patches, one image a row
    want: np.ndarray  # the golden model's integer logits for them
    labels: np.ndarray | None  # digits labels (None for models without a test split)
    compiled: object  # vitaccel.compile.compiler.Compiled


def design_program(design, *, model: str | None = None, weights: Path | None = None,
                   images: int = 20) -> DesignProgram:  # fmt: skip
    """Quantise ``model`` (default: the design's) as ``design`` says, take ``images`` test
    images, and compile the program and memory image for the design: the one place the
    whole-model RTL runs (``sim --model``, its tests) prepare their inputs."""
    from vitaccel.compile.compiler import compile_model
    from vitaccel.compile.schedule import chain_roles
    from vitaccel.flow.codec import codec_for
    from vitaccel.models.evaluate import prepare
    from vitaccel.models.golden import quant_config_for

    _, _, golden, x, y = prepare(
        model or design.model, weights=weights, config=quant_config_for(design), images=images
    )
    patches = golden.quantize_images(x)
    compiled = compile_model(
        golden,
        groups=design.array.groups,
        codec=codec_for(design),
        spm_words=design.spm_kib * 1024 // 16,
        chain=chain_roles(golden.spec, design),
    )
    labels = y.numpy() if y is not None else None
    return DesignProgram(golden, patches, golden.forward_patches(patches), labels, compiled)


def simulate_model(
    model: str = "digits-vit",
    *,
    design=None,
    weights: Path | None = None,
    images: int = 20,
    engine: str = "native",
    pause: float = 0.0,
    seed: int = 0,
    timeout_cycles: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run ``images`` test images of ``model`` on the RTL of ``design``; compare with golden.

    Parameters
    ----------
    model : str
        Zoo model name (its test images: the digits test split, random images otherwise).
    design : Design, optional
        Default: :func:`vitaccel.flow.build.default_design` for the model on ZCU102.
    weights : Path, optional
        Checkpoint of the float model.
    engine : {"native", "cocotb"}
    pause : float
        Random pause probability per cycle on every DDR channel (0 for cycle counting).
    timeout_cycles : int, optional
        Cycle limit per image (default: 4x the cycle model's prediction + 100k).

    Returns
    -------
    dict
        ``images``, ``bit_exact`` (all images equal to golden), ``mismatches``,
        ``cycles_per_image`` (RTL), ``model_cycles_per_image`` (cycle model, same program),
        ``sim_cycles_per_s``, ``build_s``, ``sim_s``, ``rtl_top1``, ``golden_top1`` (None
        without labels), and the engine, design and FPS figures.

    Raises
    ------
    DesignError
        The design cannot run the model (before any build).
    NativeRunError
        A run hit the cycle limit or STATUS.ERROR.
    """
    from vitaccel.compile.driver import Driver
    from vitaccel.dse.cost import estimate
    from vitaccel.flow.build import default_design
    from vitaccel.models.specs import get_spec

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    spec = get_spec(model)
    if design is None:
        design = default_design(model, "zcu102")
    check_design_fits(design, spec)
    say = progress or (lambda _msg: None)
    est = estimate(design, spec=spec)
    model_cycles = est.cycles  # an image of a stream (past the resident prologue)

    say(f"quantising {model} for the design and compiling its program")
    prog = design_program(design, model=model, weights=weights, images=images)
    patches, want, labels, compiled = prog.patches, prog.want, prog.labels, prog.compiled
    limit = timeout_cycles or 4 * model_cycles + 100_000

    build_s, cached = 0.0, None
    bar = None
    if engine == "native":
        from vitaccel.sim.native import NativeBackend

        bar = _Bar(len(patches), model_cycles, progress)
        backend = NativeBackend(
            design, pause=pause, seed=seed, timeout_cycles=limit, on_progress=bar, progress=say
        )
        build = backend.ensure_built()
        build_s, cached = build.build_s, build.cached
    else:
        from vitaccel.sim.host import SimBackend

        backend = SimBackend(design, pause=pause, seed=seed, timeout_cycles=limit)
    say(f"running {len(patches)} image(s) on the RTL ({engine} engine)")
    drv = Driver(backend)
    drv.load(compiled)
    t0 = time.monotonic()
    try:
        results = drv.infer_batch(list(patches))
    finally:
        if bar is not None:
            bar.close()
    sim_s = time.monotonic() - t0

    rtl = np.stack([r.logits for r in results])
    cycles = [int(r.cycles) for r in results]
    bad = [j for j in range(len(rtl)) if first_mismatch(rtl[j], want[j]) is not None]
    cpu_s = None
    if engine == "native":
        sim_cycles = int(backend.last["sim_cycles"])
        sim_s = float(backend.last["wall_s"])  # the harness's own clock: no Python start-up
        cpu_s = float(backend.last["cpu_s"])
    else:
        sim_cycles = int(sum(cycles))
    cpi = float(np.mean(cycles))
    # The first image after the load runs the resident prologue (the constants LOAD) too;
    # the model's mean over the same run, and the stream's figure (images after the first)
    model_cpi = model_cycles + est.first_image_cycles / len(cycles)
    stream = float(np.mean(cycles[1:])) if len(cycles) > 1 else None
    result = {
        "model": model,
        "design": design.name,
        "engine": engine,
        "images": int(len(patches)),
        "bit_exact": not bad,
        "mismatches": len(bad),
        "first_mismatch": None
        if not bad
        else {"image": bad[0], "class_rtl_golden": first_mismatch(rtl[bad[0]], want[bad[0]])},
        "cycles_per_image": cpi,
        "cycles_min": min(cycles),
        "cycles_max": max(cycles),
        "model_cycles_per_image": round(model_cpi, 1),
        "model_error": cpi / model_cpi - 1.0,
        # the first image (with the prologue) and the images after it, RTL and model
        "first_image_cycles": cycles[0],
        "model_first_image_cycles": int(model_cycles + est.first_image_cycles),
        "stream_cycles_per_image": stream,
        "model_stream_cycles_per_image": int(model_cycles),
        "status_done": all(r.status & 2 for r in results),
        "pause": pause,
        "sim_cycles": sim_cycles,
        "sim_cycles_per_s": sim_cycles / sim_s if sim_s > 0 else None,
        # CPU seconds of the simulator: on a shared machine the honest speed figure
        "sim_cpu_s": cpu_s,
        "sim_cycles_per_cpu_s": sim_cycles / cpu_s if cpu_s else None,
        "build_s": build_s,
        "build_cached": cached,
        "sim_s": sim_s,
        "clock_mhz": design.clock_mhz,
        # FPS of a stream from the RTL's counts (one image: its first-image count)
        "rtl_fps": design.clock_mhz * 1e6 / (stream or cycles[0]),
        "rtl_top1": float((rtl.argmax(1) == labels).mean()) if labels is not None else None,
        "golden_top1": float((want.argmax(1) == labels).mean()) if labels is not None else None,
    }
    return result
