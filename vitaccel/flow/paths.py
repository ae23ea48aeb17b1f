"""Register-to-register logic depth of a synthesised netlist, weighed as the clock rule weighs it.

The clock rule (:mod:`vitaccel.dse.clock`) counts a path's *effective levels*: LUT and MUXF
cells 1 each, CARRY cells 1/4. Yosys' ``ltp`` finds the path with the most *cells*, which
is rarely the one with the most effective levels: a 16-cell carry chain is 4 levels, while a
handshake through ten LUTs and six carries (``ltp``: 16 cells too) is 11.5. And ``ltp``
restricted to LUTs cuts every path at its first carry. This module computes the weighted
longest path itself, from the JSON netlist that ``write_json`` gives after ``synth_xilinx``:

* combinational cells: ``LUT1..6`` and ``MUXF7..9`` (weight 1), ``CARRY4/8`` (1/4), and the
  read side of distributed RAM (``RAM32M``, ``RAM64M8``, ``RAM64X1D``, ...: weight 1 from a
  read-address input to the data outputs; its write inputs are path ends);
* everything else (flip-flops, block RAM, DSP48E2, shift registers, ports) starts and ends
  paths. Yosys absorbs no registers into DSP48E2 for xcup, so a DSP is counted as a
  boundary here, as ``ltp`` did; Vivado puts its M/P registers in the slice.

``worst_paths`` lists the worst path into each group of endpoint registers, with the
register it starts from, so a designer can see every path above a clock's limit at once
instead of one ``ltp`` run per fix::

    python -m vitaccel.flow.paths netlist.json [--limit 8.5] [--count 30]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PathReport", "cell_weight", "worst_paths", "max_levels", "yosys_json_commands"]

# Distributed RAM: inputs on these ports reach the data outputs combinationally.
_LUTRAM = re.compile(r"^RAM(32|64|128|256|512)")
_READ_ADDR = re.compile(r"^(ADDR[A-Z]?|A\d*|DPRA\d*|RADR\d*)$")


def cell_weight(cell_type: str) -> float | None:
    """Effective levels of one cell on a path, or None when the cell is a path boundary."""
    if cell_type.startswith(("LUT", "MUXF")):
        return 1.0
    if cell_type.startswith("CARRY"):
        return 0.25
    if _LUTRAM.match(cell_type):
        return 1.0
    return None


@dataclass(frozen=True)
class PathReport:
    """The worst path into one group of endpoints."""

    levels: float  # LUT + MUXF + CARRY/4 (+ LUT RAM reads)
    luts: int  # LUT, MUXF and LUT RAM cells on the path
    carries: int
    start: str  # the net the path starts from (a register output or an input port)
    end: str  # the register (or port, or cell type) it ends at
    via: tuple[str, ...] = ()  # public net names along the path, start to end

    def as_dict(self) -> dict:
        return {
            "levels": self.levels,
            "lut": self.luts,
            "muxf": 0,
            "carry": self.carries,
            "from": self.start,
            "to": self.end,
        }


def yosys_json_commands(filename: str = "netlist.json") -> str:
    """Yosys commands (after ``synth_xilinx``) that write the netlist :func:`worst_paths`
    reads; ``src`` attributes are dropped first (they are most of the file's size)."""
    return f"setattr -unset src\nsetattr -unset src w:*\nwrite_json {filename}\n"


def _module(netlist: dict, top: str | None) -> dict:
    mods = netlist["modules"]
    if top is not None:
        return mods[top]
    return max(mods.values(), key=lambda m: len(m.get("cells", {})))


def _bit_names(mod: dict) -> dict[int, str]:
    """A readable name per net bit: a public name (no leading '$') where there is one."""
    names: dict[int, str] = {}
    for name, net in mod.get("netnames", {}).items():
        public = not name.startswith("$")
        for i, b in enumerate(net["bits"]):
            if not isinstance(b, int):
                continue
            label = name if len(net["bits"]) == 1 else f"{name}[{i}]"
            old = names.get(b)
            if old is None or (public and (old.startswith("$") or len(label) < len(old))):
                names[b] = label
    return names


def worst_paths(netlist: dict | str | Path, *, top: str | None = None, count: int = 20,
                limit: float = 0.0) -> list[PathReport]:  # fmt: skip
    """The worst weighted paths, one per (start register, end register) name group, worst
    first: at most ``count`` of them, only those above ``limit`` levels."""
    if not isinstance(netlist, dict):
        netlist = json.loads(Path(netlist).read_text())
    mod = _module(netlist, top)
    cells = mod.get("cells", {})
    names = _bit_names(mod)
    driver: dict[int, str] = {}
    comb_in: dict[str, list[int]] = {}  # inputs that propagate through the cell
    end_in: dict[str, list[int]] = {}  # inputs that end a path here
    weight: dict[str, float] = {}
    first_out: dict[str, int] = {}
    for cname, cell in cells.items():
        w = cell_weight(cell["type"])
        dirs = cell.get("port_directions", {})
        lutram = bool(_LUTRAM.match(cell["type"]))
        through, ends = [], []
        for port, bits in cell["connections"].items():
            bits = [b for b in bits if isinstance(b, int)]
            if dirs.get(port, "input") == "output":
                for b in bits:
                    driver[b] = cname
                if bits and cname not in first_out:
                    first_out[cname] = bits[0]
            elif w is not None and (not lutram or _READ_ADDR.match(port)):
                through += bits
            else:
                ends += bits
        if w is not None:
            weight[cname] = w
        comb_in[cname], end_in[cname] = through, ends

    # Arrival (levels at the cell's output) in topological order, iteratively.
    arrival: dict[str, float] = {}
    pred: dict[str, str | None] = {}
    state: dict[str, int] = {}
    for root in weight:
        if root in state:
            continue
        stack = [(root, 0)]
        while stack:
            cname, k = stack.pop()
            if k == 0:
                if state.get(cname) == 2:
                    continue
                state[cname] = 1
            srcs = [driver.get(b) for b in comb_in[cname]]
            srcs = [s for s in srcs if s in weight]
            if k < len(srcs):
                stack.append((cname, k + 1))
                s = srcs[k]
                if s not in state:  # (a state-1 source is a combinational loop: cut it)
                    stack.append((s, 0))
                continue
            best, best_src = 0.0, None
            for s in srcs:
                a = arrival.get(s)
                if a is not None and a > best:
                    best, best_src = a, s
            arrival[cname] = best + weight[cname]
            pred[cname] = best_src
            state[cname] = 2

    def start_of(cname: str) -> str:
        for b in comb_in[cname]:
            d = driver.get(b)
            if d is None or d not in weight:
                return names.get(b, f"<bit {b}>")
        return "<constant>"

    def end_name(cname: str) -> str:
        out = first_out.get(cname)
        if out is not None and out in names and not names[out].startswith("$"):
            return names[out]
        return cells[cname]["type"]

    ends: list[tuple[float, str, str]] = []  # (levels, end cell, last comb cell)
    for cname in cells:
        inputs = end_in[cname] if cname in weight else end_in[cname] + comb_in[cname]
        best, last = 0.0, None
        for b in inputs:
            d = driver.get(b)
            if d in weight and arrival[d] > best:
                best, last = arrival[d], d
        if last is not None:
            ends.append((best, cname, last))
    for port, info in mod.get("ports", {}).items():
        if info.get("direction") == "output":
            for b in info["bits"]:
                d = driver.get(b) if isinstance(b, int) else None
                if d in weight:
                    ends.append((arrival[d], f"<port {port}>", d))
    ends.sort(key=lambda e: -e[0])

    out: list[PathReport] = []
    seen: set[tuple[str, str]] = set()
    for levels, end, last in ends:
        if levels <= limit or len(out) >= count:
            break
        chain = []
        c: str | None = last
        while c is not None:
            chain.append(c)
            c = pred[c]
        start = start_of(chain[-1])
        stop = end if end.startswith("<port") else end_name(end)
        key = (re.sub(r"\[\d+\]$", "", start), re.sub(r"\[\d+\]$", "", stop))
        if key in seen:
            continue
        seen.add(key)
        carries = sum(1 for x in chain if cells[x]["type"].startswith("CARRY"))
        via = []
        for x in reversed(chain):
            o = first_out.get(x)
            name = names.get(o) if o is not None else None
            if name and not name.startswith("$") and (not via or via[-1] != name):
                via.append(name)
        out.append(PathReport(levels, len(chain) - carries, carries, start, stop, tuple(via)))
    return out


def max_levels(netlist: dict | str | Path, *, top: str | None = None) -> PathReport | None:
    """The single worst path (None for a design without combinational cells)."""
    worst = worst_paths(netlist, top=top, count=1)
    return worst[0] if worst else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("netlist", help="Yosys JSON netlist (write_json after synth_xilinx)")
    ap.add_argument("--top", default=None)
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--limit", type=float, default=0.0, help="only paths above this many levels")
    ap.add_argument("--via", action="store_true", help="also the named nets along each path")
    args = ap.parse_args(argv)
    for p in worst_paths(args.netlist, top=args.top, count=args.count, limit=args.limit):
        print(f"{p.levels:6.2f}  {p.luts:2d} LUT + {p.carries:2d} CARRY   {p.start}  ->  {p.end}")
        if args.via and p.via:
            print("        via " + " > ".join(p.via))
    return 0


if __name__ == "__main__":
    sys.exit(main())
