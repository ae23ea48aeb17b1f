"""Human-readable output of ``vitaccel dse`` and ``vitaccel report design`` (rich tables).

The JSON objects of :func:`vitaccel.dse.search.explore` and
:func:`vitaccel.dse.report.design_report` stay the machine interface (``--json``); these
functions lay the same numbers out for a person: a headline, the resources against the
board, where the cycles go, and (for the report) one row per layer.
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from vitaccel.dse.resources import KIND_NAMES

__all__ = ["print_dse", "print_design_report", "resources_table", "parts_table", "w4_summary"]

_LINEAR_KINDS = ("qkv", "proj", "fc1", "fc2")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _bar(x: float, width: int = 20) -> str:
    full = max(0, min(width, round(x * width)))
    return "#" * full + "." * (width - full)


def _array_text(array: dict) -> str:
    text = (
        f"{array['groups']} group(s) x {array['rows']}x{array['cols']} PEs x "
        f"{array['vector']} lanes"
    )
    if array.get("w4_share"):
        text += f", W4 share {array['w4_share']:g} ({array['w4_kind']})"
    return text


def resources_table(resources: dict, title: str = "resources") -> Table:
    """Used / available / utilisation per kind, with a bar."""
    table = Table(title=title, title_justify="left")
    for col, right in (("resource", False), ("used", True), ("available", True),
                       ("util", True), ("", False)):  # fmt: skip
        table.add_column(col, justify="right" if right else "left")
    for kind, row in resources.items():
        table.add_row(
            KIND_NAMES.get(kind, kind),
            f"{row['used']:,.0f}",
            f"{row['available']:,}",
            _pct(row["util"]),
            _bar(row["util"]),
        )
    return table


def parts_table(resources: dict, parts: dict, title: str = "resources per block") -> Table:
    """One row per block, one column per kind, then the total, the board and the share."""
    kinds = list(resources)
    table = Table(title=title, title_justify="left")
    table.add_column("block")
    for kind in kinds:
        table.add_column(KIND_NAMES.get(kind, kind), justify="right")
    for name, usage in parts.items():
        table.add_row(name, *(f"{usage.get(k, 0.0):,.0f}" for k in kinds))
    table.add_section()
    table.add_row("total", *(f"{resources[k]['used']:,.0f}" for k in kinds))
    table.add_row("available", *(f"{resources[k]['available']:,}" for k in kinds))
    table.add_row("util", *(_pct(resources[k]["util"]) for k in kinds), style="bold")
    return table


def memories_text(memories: dict, uram: dict | None) -> str:
    """``scratchpad on URAM288 (8), input (X) buffers on BRAM36; ...``: where the buffers the
    design may place on URAM are (``uram``: the board's URAM288 row, None without)."""
    placed = [
        f"{name} on URAM288 ({m['uram']:.0f})" if m["memory"] == "uram" else f"{name} on BRAM36"
        for name, m in memories.items()
    ]
    board = (
        "; the board has no URAM" if uram is None
        else f"; URAM288 {uram['used']:.0f} of the board's {uram['available']:,}"
    )  # fmt: skip
    return ", ".join(placed) + board


def _shares_table(cycles: dict[str, int], title: str, label: str) -> Table:
    total = sum(cycles.values()) or 1
    table = Table(title=title, title_justify="left")
    table.add_column(label)
    table.add_column("cycles", justify="right")
    table.add_column("share", justify="right")
    for name, n in sorted(cycles.items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{n:,}", _pct(n / total))
    return table


def lifted_text(lifted: dict[str, float]) -> str:
    """``FPS with one limit lifted: X load 329.1, DSP 126.0, ...``, largest first."""
    items = sorted(lifted.items(), key=lambda kv: -kv[1])
    return "FPS with one limit lifted: " + ", ".join(f"{k} {v:.1f}" for k, v in items)


def w4_summary(ratios: dict[str, float]) -> str:
    """One line for the per-layer W4 ratios: their range per layer kind."""
    if not ratios:
        return "no weight layers"
    if not any(ratios.values()):
        return f"0 on all {len(ratios)} weight layers (all W8)"
    parts = []
    for kind in _LINEAR_KINDS:
        vals = [v for name, v in ratios.items() if name.rsplit(".", 1)[-1] == kind]
        if vals:
            lo, hi = min(vals), max(vals)
            parts.append(f"{kind} {lo:g}" if lo == hi else f"{kind} {lo:g}-{hi:g}")
    return ", ".join(parts) or f"{len(ratios)} layers"


def _fidelity_text(fid: dict) -> str:
    if "error" in fid:
        return fid["error"]
    if "predicted_drop" in fid:  # the explorer's answer: the agreement budget first
        text = (
            f"top-1 agreement with W8A8: {fid['predicted_drop']:.3g} points lost predicted "
            f"(budget {fid['max_drop']:g}; {fid['method']})"
        )
        check = fid.get("measured_uniform")
        if check:
            text += (
                f"; measured with every layer at ratio {check['w4_ratio']:g}: "
                f"{check['measured_drop']:.3g} points (predicted {check['predicted_drop']:.3g})"
            )
        return text + "; " + _fidelity_text(fid.get("logit_error") or {"method": "-"})
    parts = [f"method {fid.get('method', '?')}"]
    if "cosine_to_w8a8" in fid:
        parts.append(f"logit cosine to W8A8 {fid['cosine_to_w8a8']:.4f}")
    if "added_error" in fid:
        parts.append(f"added error {fid['added_error']:.3g}")
    return ", ".join(parts)


def _performance(d: dict) -> str:
    first = d.get("first_image_cycles")
    return (
        f"[bold green]{d['fps']:.1f} FPS[/] predicted, {d['latency_ms']:.3f} ms/frame, "
        f"{d['cycles']:,} cycles at {d['clock_mhz']:g} MHz"
        + (f" (the first image after a reset: +{first:,} for the constants)" if first else "")
    )


def print_dse(s: dict, console: Console | None = None) -> None:
    """The explorer's answer: chosen design, resources, bounds, files written."""
    console = console or Console()
    console.print(
        f"[bold]{s['model']} on {s['board']}[/] (target {s['target_fps']:g} FPS, "
        f"{s.get('precision', 'w8')}): " + _performance(s)
    )
    lanes = s["nonlinear_lanes"]
    ports = s.get("weight_ports")
    width = s.get("datapath_bytes")
    console.print(
        f"array: {_array_text(s['array'])}; units: softmax {lanes[0]}, layernorm {lanes[1]}, "
        f"gelu {lanes[2]} lanes"
        + (f"; {ports} weight port(s)" if ports else "")
        + (f"; {width}-byte datapath" if width else "")
    )
    console.print(resources_table(s["resources"], title=f"resources (limit {_pct(s['max_util'])})"))
    if s.get("spm_kib", 0) < s.get("spm_kib_needed", 0):  # a smaller scratchpad than the need
        spilled = s.get("spill_kib_per_image", 0.0)
        console.print(
            f"scratchpad: {s['spm_kib']:,} KiB of the {s['spm_kib_needed']:,} the program needs; "
            + (f"spills {spilled:,.1f} KiB per image to DDR (the residual stream, per token "
               "tile)" if spilled else "the compact layout, nothing spilled")
        )  # fmt: skip
    detail = s["binding_detail"]
    console.print(
        f"{detail['text']}; best reachable {s['best_reachable_fps']:.1f} FPS "
        f"({detail['best_design']}); linear layers at {_pct(s['linear_utilisation'])} of the "
        "DSP peak"
    )
    console.print(lifted_text(detail["lifted_fps"]))
    console.print(_shares_table(s["cycles_by_cause"], "cycles by cause (chosen design)", "cause"))
    console.print(f"W4 ratio: {w4_summary(s['w4_ratio'])}")
    console.print(f"fidelity: {_fidelity_text(s['fidelity'])}")
    rule = s["clock_rule"]
    if rule.get("levels") is not None:
        console.print(
            f"clock: {rule['levels']:g} effective LUT levels "
            f"(limit at {s['clock_mhz']:g} MHz: {rule.get('max_levels_at_clock')})"
        )
    console.print(
        f"search: {s['candidates']:,} candidates, {s['evaluated']:,} evaluated, "
        f"{s['pareto_points']:,} on the Pareto front, {s['query_seconds']:.1f} s"
    )
    for key in ("design", "pareto", "plot"):
        console.print(f"{key:>7}: {s[key]}")
    for w in s.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")


def _tiling_text(t: dict | None) -> str:
    """``steps x token tiles x k-steps`` of a MATMUL, with ``h`` for heads mode."""
    if not t:
        return ""
    mode = "h " if t["mode"] == "heads" else ""
    return f"{mode}{t['steps']}x{t['token_tiles']}x{t['ksteps']}"


def print_design_report(r: dict, console: Console | None = None) -> None:
    """``vitaccel report design``: headline, resources per block, cycles per kind and layer."""
    console = console or Console()
    console.print(f"[bold]{r['design']}[/]: {r['model']} on {r['board']}, " + _performance(r))
    rule = r["clock_rule"]
    if rule.get("levels") is not None:
        ok = "allowed" if rule["design_clock_allowed"] else "[red]NOT allowed[/]"
        console.print(
            f"clock: {rule['levels']:g} effective LUT levels, {r['clock_mhz']:g} MHz is {ok} "
            f"(allowed: {', '.join(f'{c:g}' for c in rule['allowed_clocks_mhz'])} MHz)"
        )
    elif rule.get("unknown"):
        console.print(f"clock: depth not calibrated ({rule['unknown']})")
    console.print("buffers: " + memories_text(r["memories"], r["utilisation"].get("uram")))
    spm = r.get("scratchpad")
    if spm:
        console.print(
            f"scratchpad: {spm['kib']:,} KiB, {spm['layout']} layout"
            + (f" (the residual stream in DDR, tiles of {spm['spill_tile']} tokens): spills "
               f"{spm['spill_kib_per_image']:,.1f} KiB per image to DDR" if spm["spill_tile"]
               else "")
        )  # fmt: skip
    title = f"resources per block (shell: {r['shell_resources']})"
    console.print(parts_table(r["utilisation"], r["parts"], title=title))
    console.print(
        f"linear layers at {_pct(r['linear_utilisation'])} of the DSP peak; "
        f"fidelity: {_fidelity_text(r['fidelity'])}"
    )
    console.print(_shares_table(r["cycles_by_kind"], "cycles by kind", "kind"))
    console.print(_shares_table(r["cycles_by_bound"], "cycles by bound", "bound"))
    table = Table(title="layers", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, right in (
        ("layer", False), ("cycles", True), ("share", True), ("bound", False),
        ("util", True), ("W4", True), ("tiling", False),
    ):  # fmt: skip
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    for row in r["layers"]:
        table.add_row(
            row["name"],
            f"{row['cycles']:,}",
            _pct(row["share"]),
            row["bound"],
            _pct(row["array_utilisation"]),
            "" if row["w4_ratio"] is None else f"{row['w4_ratio']:g}",
            _tiling_text(row["tiling"]),
        )
    console.print(table)
    console.print(
        "util: MACs over the array's peak; tiling: output steps x token tiles x k-steps "
        "per job (h: one job per head)"
    )


def print_bench(rows: list[dict], console: Console | None = None) -> None:
    """``vitaccel bench``: per model FPS, share of the board's peak, cycles by cause and what
    binds; every figure a cycle-model prediction."""
    from vitaccel.dse.causes import CAUSES

    console = console or Console()
    if not rows:
        return
    first = rows[0]
    table = Table(
        title=f"best designs on {first['board']} ({first['precision']}), cycle-model "
        "predictions; % of the board's peak and of the cycles",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 0, 0, 1),  # one space between columns: the table fits 80 columns
    )
    short = {"nonlinear": "nonlin", "fill & control": "fill/ctl"}
    for col in ("model", "FPS", "peak", *(short.get(c, c) for c in CAUSES), "binding"):
        right = col not in ("model", "binding")
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    for r in rows:
        if not r["fits"]:
            table.add_row(r["model"], "-", "-", *("" for _ in CAUSES), "nothing fits")
            continue
        table.add_row(
            r["model"],
            f"{r['fps']:.1f}",
            f"{100 * r['peak_share']:.1f}",
            *(f"{100 * r['cause_share'][c]:.1f}" for c in CAUSES),
            r["binding"],
        )
    console.print(table)
    for r in rows:
        if r["fits"]:
            console.print(
                f"{r['model']}: {r['design']}; binding: {r['binding_text']}; "
                + lifted_text(r["lifted_fps"])
            )
        else:
            console.print(f"{r['model']}: {r['message']}")
    console.print(
        "Predicted by the cycle model (vitaccel.dse.cost on the scheduler's program), not RTL "
        "runs. Peak: 2 MACs per DSP48E2 x the board's DSPs x the design's clock. Cycles by "
        "cause: MAC = useful MACs at the full array rate; X load = the X operand's load "
        "not hidden by step 0; DDR = weight-stream and LOAD/STORE waits; writer = output writes beyond "
        "the engine; nonlinear = LayerNorm, softmax, GELU, residual instructions; fill & "
        "control = pipeline fill and drain, padding, setup, instruction overhead."
    )
