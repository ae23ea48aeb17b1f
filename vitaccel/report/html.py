"""The build report as one self-contained HTML page.

:func:`render_html` lays out what :func:`vitaccel.report.data.collect` gathered: a headline
row of figures, then the design, resources, performance, design space (Pareto front and
roofline), accuracy, verification and the files written. Styles are inline, plots are
inline SVG (:mod:`vitaccel.report.plots`), there is no script and no URL: the page reads
the same offline, from an e-mail attachment, or printed. :func:`render_sweep_html` lays out
a sweep's ``results.json`` on the same page shell.
"""

from __future__ import annotations

import html
from pathlib import Path

from vitaccel import __version__
from vitaccel.dse.render import memories_text
from vitaccel.dse.resources import KIND_NAMES
from vitaccel.report import plots
from vitaccel.report.cycles import CAUSES, group_layers

__all__ = ["render_html", "write_html", "render_sweep_html", "write_sweep_html"]


_CSS = """
:root { --ink:#1c2833; --muted:#5d6d7e; --line:#d5dbe1; --bg:#f7f9fb; --accent:#2471a3;
        --good:#1e8449; --bad:#c0392b; --model:#2471a3; --rtl:#1e8449; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1120px; margin:0 auto; padding:24px 28px 48px; }
header { border-bottom:3px solid var(--accent); padding-bottom:10px; margin-bottom:18px; }
h1 { font-size:24px; margin:0 0 4px; }
h2 { font-size:18px; margin:30px 0 10px; padding-bottom:4px; border-bottom:1px solid var(--line); }
h3 { font-size:14px; margin:16px 0 6px; color:var(--muted); text-transform:uppercase;
     letter-spacing:.04em; }
.sub { color:var(--muted); }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(160px,1fr)); gap:10px;
         margin:14px 0 6px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 12px; }
.card .v { font-size:22px; font-weight:650; font-variant-numeric:tabular-nums; }
.card .k { color:var(--muted); font-size:12px; }
.tag { display:inline-block; font-size:11px; padding:0 6px; border-radius:9px; margin-left:4px;
       vertical-align:1px; border:1px solid currentColor; white-space:nowrap; }
.tag.model { color:var(--model); } .tag.rtl { color:var(--rtl); } .tag.syn { color:#6c3483; }
.ok { color:var(--good); font-weight:600; } .fail { color:var(--bad); font-weight:600; }
table { border-collapse:collapse; background:#fff; margin:6px 0 10px; font-size:13px; }
th, td { border-bottom:1px solid var(--line); padding:4px 10px; text-align:left; }
th { background:#eef2f6; font-weight:600; }
td.n, th.n { text-align:right; font-variant-numeric:tabular-nums; }
.kv td:first-child { color:var(--muted); padding-right:18px; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:18px; align-items:start; }
figure { background:#fff; border:1px solid var(--line); border-radius:8px; margin:8px 0 14px;
         padding:8px; }
figcaption { color:var(--muted); font-size:12px; padding:4px 6px 0; }
code { font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; background:#eef2f6;
       padding:1px 4px; border-radius:4px; }
.scroll { max-height:420px; overflow:auto; border:1px solid var(--line); border-radius:6px; }
.scroll table { margin:0; width:100%; }
footer { margin-top:36px; color:var(--muted); font-size:12px; }
@media (max-width:800px) { .grid2 { grid-template-columns:1fr; } }
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def _num(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _tag(text: str, cls: str) -> str:
    return f'<span class="tag {cls}">{_e(text)}</span>'


def _kv(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    th = "".join(
        f"<th{' class=n' if i in numeric else ''}>{_e(h)}</th>" for i, h in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if i in numeric else ''}>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def _card(value: str, key: str) -> str:
    return f'<div class="card"><div class="v">{value}</div><div class="k">{key}</div></div>'


# ---- sections ------------------------------------------------------------------------------


def _headline(d: dict) -> str:
    perf, s = d["performance"], d["summary"] or {}
    best = perf["rtl"] or perf["model"]
    src = _tag("RTL run", "rtl") if perf["rtl"] else _tag("cycle model", "model")
    res = next(iter(d["resources"].values()))
    dsp = res["dsp48e2"]["used"] / res["dsp48e2"]["available"]
    cards = [
        _card(f"{best['fps']:,.0f}", f"frames per second {src}"),
        _card(f"{best['latency_ms'] * 1e3:,.0f} µs", f"latency per image {src}"),
        _card(_pct(best["peak_share"]), "of the board's MAC peak"),
        _card(_pct(dsp), f"DSP48E2 of the board ({_e(next(iter(d['resources'])))})"),
    ]
    if "bit_exact" in s:
        ok = s["bit_exact"] == s["images"]
        cls = "ok" if ok else "fail"
        cards.append(
            _card(
                f'<span class="{cls}">{s["bit_exact"]} / {s["images"]}</span>',
                "images bit-exact on the RTL",
            )  # fmt: skip
        )
    q = s.get("quantize") or {}
    if q.get("int_top1") is not None:
        cards.append(
            _card(_pct(q["int_top1"], 2), f"integer top-1 (float {_pct(q['float_top1'], 2)})")
        )
    elif q.get("cosine") is not None:
        cards.append(_card(f"{q['cosine']:.4f}", "logit cosine, integer vs float"))
    return f'<div class="cards">{"".join(cards)}</div>'


def _design_section(d: dict) -> str:
    des, dr, board = d["design"], d["design_report"], d["board"]
    a, nl = des.array, des.nonlinear
    rule = dr["clock_rule"]
    clock = f"{des.clock_mhz:g} MHz"
    if rule.get("levels") is not None:
        allowed = ", ".join(f"{c:g}" for c in rule["allowed_clocks_mhz"])
        verdict = (
            '<span class="ok">allowed</span>'
            if rule["design_clock_allowed"]
            else '<span class="fail">not allowed</span>'
        )
        clock += (
            f" — worst path {rule['levels']:g} effective LUT levels: {verdict} "
            f"(the clock rule allows {allowed} MHz)"
        )
    array = (
        f"{a.groups} group{'s' if a.groups > 1 else ''} × {a.rows} × {a.cols} PEs × "
        f"{a.vector} lanes = {a.macs_per_cycle:,} MACs/cycle"
    )
    if a.w4_share:
        array += f" (W4 share {a.w4_share:g}, {a.w4_kind})"
    w4 = [p for p in d["precision"] if p["w4_ratio"] > 0]
    if w4:
        prec = (
            f"W4/W8 mix on {len(w4)} of {len(d['precision'])} weight layers (table under Accuracy)"
        )
    else:
        prec = f"W8 weights on all {len(d['precision'])} encoder weight layers"
    prec += f"; int8 activations; softmax output {nl.softmax_output}"
    rows = [
        ("model", _e(des.model)),
        ("board", f"{_e(board['name'])} <code>{_e(board['part'])}</code>"),
        ("array", _e(array)),
        (
            "nonlinear units",
            _e(
                f"softmax {nl.softmax_lanes}, layernorm {nl.layernorm_lanes}, "
                f"gelu {nl.gelu_lanes} lanes"
            ),
        ),  # fmt: skip
        ("clock", clock),
        ("scratchpad", _e(f"{des.spm_kib} KiB; {des.weight_ports} weight port(s)")),
        ("buffers", _e(memories_text(dr["memories"], dr["utilisation"].get("uram")))),
        ("precision", _e(prec)),
        ("design file", f"<code>{_e(d['design_path'])}</code>"),
    ]
    return "<h2>Design</h2>" + _kv(rows)


def _resources_section(d: dict) -> str:
    dr = d["design_report"]
    built_syn = "Yosys" in d["resources"]
    tag = _tag("Yosys", "syn") if built_syn else _tag("resource model", "model")
    svg = plots.resources_svg(d["resources"], limit=0.85)
    cap = "Utilisation of the board per resource; dashed: the explorer's 85 % limit. " + (
        "Yosys <code>synth_xilinx -family xcup</code> (no DSP register absorption for "
        "xcup: Vivado would use fewer LUT/FF) beside the calibrated resource model."
        if built_syn
        else "From the resource model calibrated on Yosys (build with <code>--synth</code> "
        "for synthesis)."
    )
    kinds = list(dr["utilisation"])
    head = ["block", *(KIND_NAMES[k] for k in kinds)]
    rows = [[_e(name), *(_num(u.get(k, 0.0)) for k in kinds)] for name, u in dr["parts"].items()]
    rows.append(
        ["<b>total (model)</b>", *(f"<b>{_num(dr['utilisation'][k]['used'])}</b>" for k in kinds)]
    )
    if built_syn:
        y = d["resources"]["Yosys"]
        rows.append(
            [
                "<b>total (Yosys)</b>",
                *(f"<b>{_num(y[k]['used'])}</b>" if k in y else "–" for k in kinds),
            ]
        )
    rows.append(["board", *(_num(dr["utilisation"][k]["available"]) for k in kinds)])
    table = _table(head, rows, numeric=set(range(1, len(head))))
    return (
        f"<h2>Resources {tag}</h2>"
        + _figure(svg, cap)
        + "<h3>per block (resource model)</h3>"
        + table
    )


def _performance_section(d: dict) -> str:
    perf, dr, des = d["performance"], d["design_report"], d["design"]
    m, r = perf["model"], perf["rtl"]
    head = ["", "FPS", "latency", "cycles / image", "% of board peak"]
    rows = [
        [
            _tag("cycle model", "model") + " prediction",
            _num(m["fps"], 1), f"{m['latency_ms'] * 1e3:,.1f} µs", _num(m["cycles"]),
            _pct(m["peak_share"], 2),
        ]
    ]  # fmt: skip
    if r:
        rows.append(
            [
                _tag("RTL run", "rtl") + " Verilator, no AXI pauses",
                _num(r["fps"], 1), f"{r['latency_ms'] * 1e3:,.1f} µs", _num(r["cycles"], 1),
                _pct(r["peak_share"], 2),
            ]
        )  # fmt: skip
    peak_text = (
        f"Board peak: 2 MACs per DSP48E2 × {d['board']['dsp48e2']:,} DSPs × "
        f"{des.clock_mhz:g} MHz = {perf['board_peak_macs'] / 1e9:,.0f} GMAC/s; one image is "
        f"{perf['macs'] / 1e6:,.2f} M useful MACs. The array itself peaks at "
        f"{perf['array_macs_per_cycle']:,} MACs/cycle; its weight layers reach "
        f"{_pct(dr['linear_utilisation'])} of that."
    )
    if r:
        peak_text += f" The cycle model is {r['model_error']:+.2%} off the RTL run."
    rows_g, grouped = group_layers(d["layers"])
    svg = plots.cycles_svg(rows_g, grouped=grouped)
    tot = {c: sum(x["causes"].get(c, 0.0) for x in d["layers"]) for c in CAUSES}
    total = sum(tot.values()) or 1.0
    cause_txt = ", ".join(f"{c} {_pct(v / total)}" for c, v in tot.items() if v)
    cap = (
        f"Cycles per layer of one image by cause {_tag('cycle model', 'model')}: "
        f"{_e(cause_txt)}. MAC = useful MACs at the full array; X load = the X operand's "
        "load not hidden by step 0; DDR = weights waiting on the HP port and LOAD/STORE; "
        "writer = the output writer's bound; fill &amp; control = pipeline fill, padding, "
        "scratchpad W loads and instruction overhead."
    )
    lay = [
        [
            _e(x["name"]), _e(x["kind"]), _num(x["cycles"]), _pct(x["share"]), _e(x["bound"]),
            _pct(x["array_utilisation"]),
            "" if x["w4_ratio"] is None else f"{x['w4_ratio']:g}",
        ]
        for x in dr["layers"]
    ]  # fmt: skip
    table = _table(["layer", "kind", "cycles", "share", "bound", "array util", "W4"], lay,
                   numeric={2, 3, 5, 6})  # fmt: skip
    return (
        "<h2>Performance</h2>"
        + _table(head, rows, numeric={1, 2, 3, 4})
        + f'<p class="sub">{peak_text}</p>'
        + _figure(svg, cap)
        + "<h3>per layer</h3>"
        + f'<div class="scroll">{table}</div>'
    )


def _space_section(d: dict) -> str:
    des, p, rf = d["design"], d["pareto"], d["roofline"]
    s = d["summary"] or {}
    target = (s.get("dse") or {}).get("target_fps")
    board = d["board"]
    svg_p = plots.pareto_svg(
        p["points"], p["chosen"], budget={"dsp48e2": board["dsp48e2"], "lut": board["lut"]},
        target_fps=target,
    )  # fmt: skip
    if p["source"] == "explorer":
        origin = (
            f"the explorer's front for {_e(des.model)} on {_e(board['name'])} "
            f"({len(p['points']):,} Pareto points of {p['candidates']:,} candidates, no FPS "
            "target); the star is this design"
        )
    else:
        origin = f"the explorer's Pareto front from <code>{_e(p['source'])}</code>; the star is its choice"
    cap_p = (
        f"FPS {_tag('cycle model', 'model')} against DSP48E2 and LUT: {origin}. Dashed: 85 % "
        "of the board."
    )
    svg_r = plots.roofline_svg(
        rf["rows"], rf["ceilings"], design_peak_gflops=rf["design_peak_gflops"]
    )
    cap_r = (
        f"Roofline of one encoder block on {_e(board['name'])} (int8, weights as built): "
        "hollow = what the board's ceilings allow each op, filled = where this design's cycle "
        "model puts it; blue dashed = this design's array peak. GELU runs fused into FC1. "
        f"{_e(rf['ceilings']['source'])}."
    )
    return "<h2>Design space</h2>" + _figure(svg_p, cap_p) + _figure(svg_r, cap_r)


def _accuracy_section(d: dict) -> str:
    s, dr = d["summary"] or {}, d["design_report"]
    out = ["<h2>Accuracy</h2>"]
    q = s.get("quantize")
    if q:
        rows = [
            ("images", f"{q['images']:,} ({'digits test split' if q.get('float_top1') is not None else 'random images: fidelity only'})"),
            ("scheme", _e(f"{q['scheme']}" + (f", W4 ratio {q['w4_ratio']:g}" if q.get("w4_ratio") else ""))),
        ]  # fmt: skip
        if q.get("float_top1") is not None:
            rows += [
                ("float top-1", _pct(q["float_top1"], 2)),
                ("integer top-1", _pct(q["int_top1"], 2)
                 + f" ({(q['int_top1'] - q['float_top1']) * 100:+.2f} points)"),
            ]  # fmt: skip
        rows += [
            ("top-1 agreement with float", _pct(q["agreement"], 2)),
            ("logit cosine, integer vs float", f"{q['cosine']:.4f}"),
        ]
        if s.get("rtl_top1") is not None:
            rows.append(
                ("top-1 on the RTL images",
                 f"{_pct(s['rtl_top1'], 2)} {_tag('RTL run', 'rtl')} (golden model "
                 f"{_pct(s['golden_top1'], 2)}, float {_pct(s['float_top1'], 2)}; {s['images']} images)")
            )  # fmt: skip
        out.append(_kv(rows))
    fid = dr.get("fidelity") or {}
    if fid:  # the accuracy model (sensitivity.py); its figures are predictions
        bits = []
        if fid.get("cosine_to_float") is not None:
            bits.append(f"logit cosine to float {fid['cosine_to_float']:.4f}")
        if fid.get("cosine_to_w8a8") is not None:
            bits.append(f"to W8A8 {fid['cosine_to_w8a8']:.4f}")
        if fid.get("w8a8_top1") is not None:
            bits.append(f"W8A8 top-1 {_pct(fid['w8a8_top1'], 2)}")
        if bits:
            out.append(
                f'<p class="sub">Accuracy model ({_e(fid.get("method", "?"))}, '
                f"{_tag('model', 'model')}): {_e(', '.join(bits))}.</p>"
            )
    prec = d["precision"]
    if prec:
        if any(p["w4_ratio"] for p in prec):
            out.append("<h3>W4 ratio per weight layer</h3>")
            out.append(_figure(plots.per_layer_svg(prec, "w4_ratio", ylabel="W4 share of rows"),
                               "Share of each weight layer's output rows quantised to 4 bits."))  # fmt: skip
            kind = d["design"].array.w4_kind
            head = ["layer", "W4 ratio", "rows on W8 lanes", f"rows on {kind} lanes", "steps"]
            body = [[_e(p["name"]), f"{p['w4_ratio']:g}", *(str(p.get(k, "-")) for k in
                     ("w8", "w4", "steps"))] for p in prec]  # fmt: skip
            out.append('<p class="sub">Lanes per layer (the engine\'s column plan; W4 rows '
                       "beyond the W4 columns' slots run on W8 lanes):</p>")  # fmt: skip
            out.append(f'<div class="scroll">{_table(head, body, {1, 2, 3, 4})}</div>')
        else:
            out.append(
                f'<p class="sub">Per-layer W4 ratio: 0 on all {len(prec)} weight layers (all W8).</p>'
            )
    table = d["per_layer_error"]
    if table:
        name_key = next((k for k in ("layer", "name") if k in table[0]), None)
        numeric = [
            k for k, v in table[0].items() if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        out.append("<h3>quantisation error per layer</h3>")
        if name_key and numeric:
            rows = [{"name": r[name_key], numeric[0]: r.get(numeric[0], 0.0)} for r in table]
            out.append(_figure(plots.per_layer_svg(rows, numeric[0], ylabel=numeric[0]),
                               f"{_e(numeric[0])} per layer (the build's per-layer report)."))  # fmt: skip
        keys = list(table[0])
        body = [[_e(_fmt(r.get(k))) for k in keys] for r in table]
        out.append(f'<div class="scroll">{_table(keys, body)}</div>')
    if len(out) == 1:
        out.append('<p class="sub">Not measured: a design report has no quantised model run; '
                   "<code>vitaccel build</code> measures it.</p>")  # fmt: skip
    return "".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _verification_section(d: dict) -> str:
    s = d["summary"]
    out = ["<h2>Verification</h2>"]
    if not s:
        out.append('<p class="sub">Not run: this is a design report (<code>vitaccel report design'
                   "</code>); <code>vitaccel build</code> co-simulates the RTL.</p>")  # fmt: skip
        return "".join(out)
    rows = []
    if "program_bit_exact" in s:
        n = s["images"]
        ok = s["program_bit_exact"] == n
        rows.append(("program on the ISA interpreter",
                     f'<span class="{"ok" if ok else "fail"}">{s["program_bit_exact"]} / {n} bit-exact</span>'))  # fmt: skip
    if "bit_exact" in s:
        n = s["images"]
        ok = s["bit_exact"] == n
        rows.append(("images on the RTL",
                     f'<span class="{"ok" if ok else "fail"}">{s["bit_exact"]} / {n} bit-exact</span> '
                     "against the golden model (every logit)"))  # fmt: skip
        mm = s.get("first_mismatch")
        rows.append(
            (
                "first mismatch",
                "none"
                if not mm
                else _e(
                    f"image {mm['image']}, logit {mm['index']}: RTL {mm['rtl']} vs golden {mm['golden']}"
                ),
            )
        )
        sim = s.get("simulator") or "Verilator (cocotb, cocotbext-axi DDR and host)"
        speed = ""
        if s.get("rtl_seconds"):
            rate = s["cycles_per_image"] * n / s["rtl_seconds"]
            speed = f": {rate:,.0f} simulated cycles/s ({s['rtl_seconds']:.1f} s for {n} images)"
        rows.append(("simulator", _e(sim + speed)))
    else:
        rows.append(("images on the RTL", "not run (<code>rtl</code> off)"))
    if "lint_warnings" in s:
        rows.append(("Verilator lint", f"{s['lint_warnings']} warning(s)"))
    out.append(_kv(rows))
    return "".join(out)


def _files_section(d: dict) -> str:
    files = d["files"]
    if not files:
        return ""
    body = [[f"<code>{_e(p)}</code>", _e(what)] for p, what in files]
    root = d.get("files_root")
    head = f'<p class="sub">in <code>{_e(root)}</code></p>' if root else ""
    return "<h2>Files written</h2>" + head + _table(["path", "what"], body)


def render_html(d: dict) -> str:
    """The report page for the data of :func:`vitaccel.report.data.collect`."""
    des = d["design"]
    kind = "build report" if d["built"] else "design report (model figures only)"
    title = f"{des.model} on {d['board']['name']}: vitaccel {kind}"
    body = "".join(
        [
            f"<header><h1>{_e(des.model)} on {_e(d['board']['name'].upper())}</h1>"
            f'<div class="sub">vitaccel {_e(kind)} · design <code>{_e(des.name)}</code> · '
            f"{des.clock_mhz:g} MHz</div></header>",
            _headline(d),
            _design_section(d),
            _resources_section(d),
            _performance_section(d),
            _space_section(d),
            _accuracy_section(d),
            _verification_section(d),
            _files_section(d),
            f"<footer>vitaccel {_e(__version__)}. Figures marked "
            f"{_tag('cycle model', 'model')} are predictions; {_tag('RTL run', 'rtl')} are "
            "measured on the generated Verilog in Verilator.</footer>",
        ]
    )
    return _page(title, body)


def _page(title: str, body: str) -> str:
    """The page shell every report shares: the styles inline, no script, no URL."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def write_html(path: str | Path, d: dict) -> Path:
    """Render and write the page atomically (temporary file, then rename)."""
    from vitaccel.util import atomic_write_text

    return atomic_write_text(Path(path), render_html(d))


# ---- the sweep's page ----------------------------------------------------------------------

SWEEP_PLOT_KINDS = ("dsp48e2", "lut", "bram36")


def _sweep_resources(r: dict, kinds: tuple[str, ...]) -> str:
    res = r.get("resources") or {}
    m, y = res.get("model") or {}, res.get("yosys") or {}
    if not m:
        return "–"
    return "<br>".join(
        f"{KIND_NAMES[k]} {_num(m.get(k))}" + (f" / {_num(y.get(k))}" if y else "") for k in kinds
    )


def _sweep_fps(r: dict) -> str:
    if r.get("predicted_fps"):
        return _num(r["predicted_fps"], 1)
    if r.get("best_reachable_fps") is not None:
        return f"best {_num(r['best_reachable_fps'], 1)}"
    return "–"


def _sweep_reason(r: dict) -> str:
    if r.get("errors"):
        return "; ".join(r["errors"])
    if r["status"] == "infeasible":
        reason = f"target not reachable within the board ({r.get('binding', '?')} binds)"
        if r.get("best_reachable_fps") is not None:
            reason += f"; best {r['best_reachable_fps']:,.1f} FPS"
        return reason
    if r["status"] == "mismatch":
        be = r["bit_exact"]
        return f"{be['images'] - be['bit_exact']} of {be['images']} images not bit-exact"
    return r["status"]


def render_sweep_html(results: dict) -> str:
    """The page of a ``vitaccel sweep``: a pure function of its ``results.json`` content
    (so a resumed sweep writes the same page): the rows, predicted FPS against DSP48E2, LUT
    and BRAM36 per board and model, and the rows that failed or were infeasible, with why."""
    rows, spec = results["rows"], results.get("sweep") or {}
    status_cls = {"ok": "ok", "failed": "fail", "mismatch": "fail"}
    head = ["model", "board", "FPS target", "FPS", "% W8 peak", "resources model / Yosys",
            "bit-exact", "binding", "status"]  # fmt: skip
    body = []
    for r in rows:
        be = r.get("bit_exact")
        st = r["status"]
        body.append(
            [
                _e(r["model"]), _e(r["board"]), _num(r["target_fps"], 1), _sweep_fps(r),
                _pct(r.get("peak_share")), _sweep_resources(r, SWEEP_PLOT_KINDS),
                f"{be['bit_exact']} / {be['images']}" if be else "–", _e(r.get("binding", "–")),
                f'<span class="{status_cls.get(st, "")}">{_e(st)}</span>',
            ]
        )  # fmt: skip
    table = _table(head, body, numeric={2, 3, 4})
    synthesised = any((r.get("resources") or {}).get("yosys") for r in rows)
    plotted = [
        r for r in rows if r.get("predicted_fps") and (r.get("resources") or {}).get("model")
    ]
    figs = "".join(
        _figure(
            plots.sweep_svg(rows, k),
            f"FPS {_tag('cycle model', 'model')} against {KIND_NAMES[k]}: a colour per board, "
            "a marker per model"
            + ("; filled = resource model, hollow = Yosys" if synthesised else " (resource model)"),
        )
        for k in SWEEP_PLOT_KINDS
    )
    bad = [r for r in rows if r["status"] != "ok"]
    out = [
        f"<header><h1>vitaccel sweep: {len(rows)} queries</h1>"
        f'<div class="sub">models {_e(", ".join(spec.get("models", [])))} · boards '
        f"{_e(', '.join(spec.get('boards', [])))} · FPS "
        f"{_e(', '.join(f'{f:g}' for f in spec.get('fps', [])))}</div></header>",
        "<h2>Queries</h2>",
        f'<p class="sub">FPS: {_e(results.get("fps_source", "cycle-model prediction"))}; '
        "% W8 peak: of 2 MACs per DSP48E2 × the board's DSPs × the design's clock. "
        "Resources: the calibrated model, then Yosys when synthesised.</p>",
        table,
        f"<h2>FPS against resources {_tag('cycle model', 'model')}</h2>",
        f'<div class="grid2">{figs}</div>' if plotted else "<p>No query has a design.</p>",
    ]
    if bad:
        out += [
            "<h2>Not answered</h2>",
            _table(
                ["model", "board", "FPS target", "status", "reason"],
                [
                    [
                        _e(r["model"]),
                        _e(r["board"]),
                        _num(r["target_fps"], 1),
                        _e(r["status"]),
                        _e(_sweep_reason(r)),
                    ]
                    for r in bad
                ],
                numeric={2},
            ),  # fmt: skip
        ]
    out.append(
        f"<footer>vitaccel {_e(__version__)}. Built from <code>results.json</code> only.</footer>"
    )
    return _page(f"vitaccel sweep: {len(rows)} queries", "".join(out))


def write_sweep_html(path: str | Path, results: dict) -> Path:
    """Render the sweep's page and write it atomically."""
    from vitaccel.util import atomic_write_text

    return atomic_write_text(Path(path), render_sweep_html(results))
