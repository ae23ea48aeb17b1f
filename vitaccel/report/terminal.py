"""``vitaccel build``'s summary on the terminal: a few rich tables, numbers with units.

It fits one 100 x 40 terminal: a headline panel, performance (RTL run and cycle model)
beside resources against the board, one table of verification and accuracy, and the path of
report.html, where the plots and the per-layer detail are. ``--json`` prints the summary
dict instead, for scripts.
"""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from vitaccel.design import Design
from vitaccel.dse.resources import KIND_NAMES
from vitaccel.report.data import performance

__all__ = ["build_summary", "print_build_summary"]


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f} %"


def _bar(x: float, width: int = 10) -> Text:
    full = max(0, min(width, round(x * width)))
    style = "red" if x > 0.85 else "green"
    return Text("█" * full, style=style) + Text("░" * (width - full), style="grey50")


def _ok(good: bool, text: str) -> Text:
    return Text(text, style="bold green" if good else "bold red")


def build_summary(s: dict, design: Design) -> Group:
    """The renderable summary of a build (``s``: its summary dict)."""
    perf = performance(design, s)
    a, nl = design.array, design.nonlinear
    ok = s.get("fits", True) and s.get("bit_exact", s.get("images")) == s.get("images")
    head = Text.assemble(
        (f"{s['model']} on {s['board'].upper()} at {design.clock_mhz:g} MHz", "bold"),
        "  ",
        ("build OK", "bold green") if ok else ("build finished with problems", "bold red"),
        "\n",
        f"array {a.groups} group x {a.rows}x{a.cols} PEs x {a.vector} lanes "
        f"({a.macs_per_cycle} MACs/cycle), units softmax/layernorm/gelu "
        f"{nl.softmax_lanes}/{nl.layernorm_lanes}/{nl.gelu_lanes} lanes",
    )
    if s.get("dse"):
        d = s["dse"]
        head.append(
            f"\nexplorer: target {d.get('target_fps', 0):g} FPS, binding: {d.get('binding', '-')}"
        )

    pt = Table(title="performance", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("", "FPS", "latency", "board peak"):
        pt.add_column(col, justify="right" if col else "left", no_wrap=True)
    rows = [("RTL run", perf["rtl"])] if perf["rtl"] else []
    rows.append(("cycle model", perf["model"]))
    for label, p in rows:
        pt.add_row(
            label, f"{p['fps']:,.0f}", f"{p['latency_ms'] * 1e3:,.1f} µs", _pct(p["peak_share"], 2)
        )
    if perf["rtl"]:
        pt.caption = f"cycle model {100 * perf['rtl']['model_error']:+.1f} % vs the RTL run"
        pt.caption_justify = "left"

    src = s.get("resources_source", "")
    rt = Table(
        title="resources (" + ("Yosys" if src.startswith("yosys") else "resource model") + ")",
        title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
    )  # fmt: skip
    for col, right in (("", False), ("used", True), ("of", True), ("util", True), ("", False)):
        rt.add_column(col, justify="right" if right else "left", no_wrap=True)
    resources = s.get("resources") or {}
    for kind in sorted(resources, key=lambda k: list(KIND_NAMES).index(k)):
        row = resources[kind]
        util = row["used"] / row["available"] if row["available"] else float(row["used"] > 0)
        rt.add_row(
            KIND_NAMES.get(kind, kind), f"{row['used']:,.0f}", f"{row['available']:,}",
            _pct(util), _bar(util),
        )  # fmt: skip
    rt.caption = "fits the board" if s.get("fits") else "DOES NOT FIT the board"
    rt.caption_justify = "left"

    top = Table.grid(padding=(0, 3))
    top.add_row(pt, rt)

    vt = Table(title="verification and accuracy", title_justify="left", box=box.SIMPLE_HEAD,
               show_header=False, pad_edge=False)  # fmt: skip
    vt.add_column(no_wrap=True)
    vt.add_column()
    n = s.get("images", 0)
    if "bit_exact" in s:
        mm = s.get("first_mismatch")
        text = _ok(s["bit_exact"] == n, f"{s['bit_exact']}/{n} images bit-exact")
        text.append(
            " against the golden model"
            + (
                f"; first mismatch: image {mm['image']}, logit {mm['index']}"
                if mm
                else ", every logit"
            )
        )
        if s.get("rtl_seconds"):
            rate = s["cycles_per_image"] * n / s["rtl_seconds"]
            text.append(f" ({s['rtl_seconds']:.0f} s, {rate:,.0f} cycles/s)")
        vt.add_row("RTL (Verilator)", text)
    if "program_bit_exact" in s:
        vt.add_row(
            "ISA interpreter",
            _ok(s["program_bit_exact"] == n, f"{s['program_bit_exact']}/{n} images bit-exact"),
        )
    if a.w4_share:
        from vitaccel.report.data import layer_lanes

        lanes = layer_lanes(design).values()
        on_w4, rows = sum(r["w4"] for r in lanes), sum(r["w4"] + r["w8"] for r in lanes)
        vt.add_row(
            "W4 lanes",
            f"{on_w4:,} of {rows:,} weight rows on {a.w4_kind} lanes (per layer: report.html)",
        )
    if "lint_warnings" in s:
        vt.add_row("Verilator lint", f"{s['lint_warnings']} warning(s)")
    q = s.get("quantize") or {}
    if q.get("float_top1") is not None:
        vt.add_row(
            "top-1",
            f"float {_pct(q['float_top1'], 2)}, integer {_pct(q['int_top1'], 2)} "
            f"({q['images']} test images); RTL run {_pct(s.get('rtl_top1'), 2)} on its {n}",
        )
    if q:
        vt.add_row(
            "integer vs float",
            f"top-1 agreement {_pct(q['agreement'], 2)}, logit cosine {q['cosine']:.4f}",
        )
    parts: list = [Panel(head, box=box.ROUNDED, expand=False), top, vt]
    if s.get("report_html"):
        parts.append(Text.assemble(("report: ", "bold"), s["report_html"]))
    parts.append(Text(f"files:  {s['output_dir']}", style="dim"))
    return Group(*parts)


def print_build_summary(s: dict, design: Design, console: Console | None = None) -> None:
    """Print :func:`build_summary` (on stdout by default)."""
    (console or Console()).print(build_summary(s, design))
