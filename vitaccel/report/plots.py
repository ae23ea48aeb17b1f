"""The report's plots: matplotlib figures rendered to inline SVG.

Each function takes plain data (dicts and lists, as :mod:`vitaccel.report.html` collects
them) and returns one ``<svg>`` element as text: glyphs drawn as paths (no font files, no
font names the reader's machine may lack), no XML prologue, no metadata, no namespace
URLs, so the page that holds it fetches nothing. Figures use the Agg-free ``Figure`` API
(no pyplot state) and a fixed hash salt, so the same data gives the same SVG.
"""

from __future__ import annotations

import io
import re

import matplotlib
import matplotlib.lines
import matplotlib.patches
import matplotlib.ticker
from matplotlib.figure import Figure

from vitaccel.dse.resources import KIND_NAMES
from vitaccel.report.cycles import CAUSES

__all__ = [
    "CAUSE_COLOURS",
    "svg_of",
    "resources_svg",
    "cycles_svg",
    "pareto_svg",
    "roofline_svg",
    "per_layer_svg",
    "sweep_svg",
]

CAUSE_COLOURS = {
    "MAC": "#2e7d32",
    "X load": "#f39c12",
    "DDR": "#c0392b",
    "writer": "#8e44ad",
    "nonlinear": "#2471a3",
    "fill & control": "#b0b7bf",
}
_RC = {
    "svg.fonttype": "path",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
}


_thousands = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")


def svg_of(fig: Figure, salt: str) -> str:
    """``fig`` as one self-contained ``<svg>`` element that scales with its container."""
    buf = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text)
    text = text.replace("xlink:href", "href")
    # ids are unique per figure (the salt), but two figures may both define a glyph: prefix
    # every id and reference with the figure's name so they never collide on one page
    text = re.sub(r'id="([^"]+)"', rf'id="{salt}-\1"', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{salt}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{salt}-\1)", text)
    # natural size (9 pt text reads as 12 px), shrunk to fit a narrow window
    text = text.replace("<svg", '<svg style="max-width:100%;height:auto"', 1)
    return text


def _figure(width: float, height: float, *, left=0.9, right=0.2, top=0.3, bottom=0.5, **kw):
    """A figure with fixed margins in inches (constrained layout would double the time)."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, top=1 - top / height,
        bottom=bottom / height, **kw,
    )  # fmt: skip
    return fig


def resources_svg(resources: dict[str, dict], *, limit: float = 0.85, title: str = "") -> str:
    """Utilisation bars per resource kind against the board, with the ``limit`` line.

    ``resources``: {source: {kind: {"used", "available"}}}, one bar per source and kind
    (e.g. ``{"Yosys": ..., "model": ...}``).
    """
    with matplotlib.rc_context(_RC):
        fig = _figure(10.0, 2.3, left=0.8, right=2.0, top=0.15, bottom=0.45)
        ax = fig.add_subplot()
        kinds = [k for k in KIND_NAMES if any(k in r for r in resources.values())]
        sources = list(resources)
        height = 0.8 / max(1, len(sources))
        colours = ["#2471a3", "#9fb8cc", "#7f8c8d"]
        for j, src in enumerate(sources):
            for i, kind in enumerate(kinds):
                row = resources[src].get(kind)
                if row is None:
                    continue
                util = row["used"] / row["available"]
                y = i + (j - (len(sources) - 1) / 2) * height
                over = util > limit
                ax.barh(
                    y, 100 * util, height=height * 0.9, color="#c0392b" if over else colours[j],
                    label=src if i == 0 else None,
                )  # fmt: skip
                ax.text(
                    100 * util + 1, y, f"{row['used']:,.0f} / {row['available']:,} ({util:.1%})",
                    va="center", fontsize=8,
                )  # fmt: skip
        ax.axvline(100 * limit, color="#c0392b", ls="--", lw=1)
        ax.text(100 * limit, len(kinds) - 0.45, f" {limit:.0%} limit", color="#c0392b", fontsize=8)
        ax.axvline(100, color="k", lw=0.8)
        ax.set_yticks(range(len(kinds)), [KIND_NAMES[k] for k in kinds])
        ax.invert_yaxis()
        ax.set_xlim(0, 105)
        ax.set_xlabel("% of the board")
        if len(sources) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        if title:
            ax.set_title(title)
        return svg_of(fig, "resources")


def cycles_svg(rows: list[dict], *, title: str = "", grouped: bool = False) -> str:
    """Stacked bars: each layer's cycles by cause (rows of
    :func:`vitaccel.report.cycles.layer_causes`)."""
    with matplotlib.rc_context(_RC):
        n = len(rows)
        fig = _figure(max(8.5, min(10.8, 0.18 * n + 2)), 3.9, left=0.8, bottom=1.2, top=0.15)
        ax = fig.add_subplot()
        xs = range(n)
        bottom = [0.0] * n
        for cause in CAUSES:
            vals = [r["causes"].get(cause, 0.0) for r in rows]
            if not any(vals):
                continue
            ax.bar(xs, vals, bottom=bottom, width=0.8, color=CAUSE_COLOURS[cause], label=cause)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_xticks(list(xs), [r["name"] for r in rows], rotation=90, fontsize=6)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylabel("cycles per image" + (" (summed over blocks)" if grouped else ""))
        ax.yaxis.set_major_formatter(_thousands)
        ax.legend(ncols=6, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(0, 1.0))
        ax.set_ylim(0, max(bottom) * 1.18 if bottom else 1)
        ax.grid(axis="y", alpha=0.3)
        if title:
            ax.set_title(title)
        return svg_of(fig, "cycles")


def pareto_svg(
    points: list[dict],
    chosen: dict,
    *,
    budget: dict,
    limit: float = 0.85,
    target_fps: float | None = None,
    title: str = "",
) -> str:
    """FPS against DSP48E2 and LUT over the explorer's Pareto front, the design marked.

    ``points``: the explorer's Pareto points (``fps``, ``dsp48e2``, ``lut``, ``array``);
    ``chosen``: the report's design (``fps``, ``dsp48e2``, ``lut``, ``label``); ``budget``:
    the board's ``dsp48e2`` and ``lut``.
    """
    with matplotlib.rc_context(_RC):
        fig = _figure(10.0, 3.4, left=0.8, top=0.4 if title else 0.15, wspace=0.08)
        axes = fig.subplots(1, 2, sharey=True)
        w4 = [bool(p.get("array", {}).get("w4_share")) for p in points]
        for ax, key in zip(axes, ("dsp48e2", "lut"), strict=True):
            for flag, colour, label in ((False, "#2471a3", "all W8"), (True, "#52be80", "W4/W8")):
                sel = [p for p, m in zip(points, w4, strict=True) if m == flag]
                if sel:
                    ax.scatter(
                        [p[key] for p in sel], [p["fps"] for p in sel], s=7, c=colour,
                        alpha=0.7, label=label, linewidths=0,
                    )  # fmt: skip
            ax.scatter(
                [chosen[key]], [chosen["fps"]], s=160, marker="*", c="#c0392b", zorder=5,
                edgecolors="k", linewidths=0.5, label=chosen.get("label", "this design"),
            )  # fmt: skip
            ax.axvline(budget[key] * limit, color="#c0392b", ls="--", lw=1, label=f"{limit:.0%}")
            if target_fps:
                ax.axhline(target_fps, color="k", ls=":", lw=1, label="target")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_formatter(_thousands)
            ax.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
            ax.xaxis.set_minor_formatter(_thousands)
            ax.yaxis.set_major_formatter(_thousands)
            ax.set_xlabel(f"{KIND_NAMES[key]} (log)")
            ax.grid(True, which="major", alpha=0.3)
        axes[0].set_ylabel("FPS (cycle model, log)")
        axes[0].legend(fontsize=7, frameon=False, loc="upper left")
        if title:
            fig.suptitle(title, x=0.01, ha="left", fontsize=10, fontweight="bold")
        return svg_of(fig, "pareto")


def roofline_svg(rows: list[dict], ceilings: dict, *, design_peak_gflops: float, title: str = ""):
    """Log-log roofline of the board with the model's ops: where the ceiling allows each op
    (hollow) and where the design's cycle model puts it (filled, when ``achieved_gflops``)."""
    with matplotlib.rc_context(_RC):
        fig = _figure(8.5, 4.4, left=0.8, top=0.15)
        ax = fig.add_subplot()
        peak, bw = ceilings["peak_gflops"], ceilings["bandwidth_gbps"]
        xs = [r["intensity"] for r in rows]
        lo, hi = min(xs) / 3, max(max(xs) * 3, 1.5 * min(peak / bw, design_peak_gflops / bw))
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ax.plot(grid, [min(peak, x * bw) for x in grid], "k-", lw=2,
                label=f"board: {peak:,.0f} GOP/s int8, HP port {bw:.1f} GB/s")  # fmt: skip
        for name, extra in ceilings.get("extra_bandwidths", {}).items():
            ax.plot(grid, [min(peak, x * extra) for x in grid], "k:", lw=1,
                    label=f"{name} {extra:.1f} GB/s")  # fmt: skip
        ax.plot(grid, [min(design_peak_gflops, x * bw) for x in grid], color="#2471a3", ls="--",
                lw=1.2, label=f"this design's array: {design_peak_gflops:,.1f} GOP/s")  # fmt: skip
        handles = []
        for i, r in enumerate(rows):
            colour = matplotlib.colormaps["tab10"](i % 10)
            att = min(peak, r["intensity"] * bw)
            ax.scatter([r["intensity"]], [att], s=34, facecolors="none", edgecolors=[colour])
            if r.get("achieved_gflops"):
                y = r["achieved_gflops"]
                ax.plot([r["intensity"]] * 2, [y, att], color=colour, lw=0.8, alpha=0.6)
                h = ax.scatter([r["intensity"]], [y], s=34, color=colour, zorder=4)
                handles.append((h, f"{r['op']} {y:,.1f} GOP/s"))
            else:
                handles.append((ax.scatter([], [], s=34, facecolors="none", edgecolors=[colour]),
                                f"{r['op']} (fused)"))  # fmt: skip
        ceilings_legend = ax.legend(fontsize=7, frameon=False, loc="lower right")
        ax.add_artist(ceilings_legend)
        ax.legend([h for h, _ in handles], [t for _, t in handles], fontsize=7, frameon=False,
                  loc="upper left", title="ops (filled: this design)", title_fontsize=7)  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (int ops per byte moved)")
        ax.set_ylabel("GOP/s")
        ax.xaxis.set_major_formatter(_thousands)
        ax.yaxis.set_major_formatter(_thousands)
        ax.grid(True, which="major", alpha=0.3)
        if title:
            ax.set_title(title)
        return svg_of(fig, "roofline")


def per_layer_svg(rows: list[dict], key: str, *, ylabel: str, title: str = "") -> str:
    """One bar per layer of a per-layer figure (``rows``: ``name`` and ``key``)."""
    with matplotlib.rc_context(_RC):
        n = len(rows)
        fig = _figure(
            max(8.5, min(10.8, 0.18 * n + 2)),
            3.2,
            left=0.8,
            bottom=1.55,
            top=0.3 if title else 0.15,
        )
        ax = fig.add_subplot()
        ax.bar(range(n), [float(r[key]) for r in rows], color="#2471a3", width=0.8)
        ax.set_xticks(range(n), [str(r["name"]) for r in rows], rotation=90, fontsize=6)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        if title:
            ax.set_title(title)
        return svg_of(fig, f"perlayer-{re.sub(r'[^a-z0-9]+', '-', key.lower())}")


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def sweep_svg(rows: list[dict], key: str, *, title: str = "") -> str:
    """Predicted FPS against one resource over a sweep's queries: a colour per board, a
    marker per model; filled = the resource model, hollow = Yosys (when synthesised).

    ``rows``: ``vitaccel sweep`` rows that have a design (``predicted_fps`` and
    ``resources``); the others are left out.
    """
    with matplotlib.rc_context(_RC):
        fig = _figure(5.2, 3.4, left=0.8, right=1.6, top=0.3 if title else 0.15)
        ax = fig.add_subplot()
        done = [
            r for r in rows if r.get("predicted_fps") and (r.get("resources") or {}).get("model")
        ]
        boards = list(dict.fromkeys(r["board"] for r in rows))
        models = list(dict.fromkeys(r["model"] for r in rows))
        colour = {b: matplotlib.colormaps["tab10"](i % 10) for i, b in enumerate(boards)}
        marker = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(models)}
        for r in done:
            c, m, fps = colour[r["board"]], marker[r["model"]], r["predicted_fps"]
            x = r["resources"]["model"].get(key, 0.0)
            ax.scatter([x], [fps], s=36, marker=m, color=c, zorder=4)
            y = (r["resources"].get("yosys") or {}).get(key)
            if y is not None:
                ax.plot([x, y], [fps, fps], color=c, lw=0.8, alpha=0.6)
                ax.scatter([y], [fps], s=36, marker=m, facecolors="none", edgecolors=[c])
        # boards as colour patches, models as grey markers: the two never read alike
        handles = [matplotlib.patches.Patch(color=colour[b]) for b in boards]
        handles += [ax.scatter([], [], s=36, marker=marker[m], color="#7f8c8d") for m in models]
        # linear from zero: the distances between boards and models read as they are
        xs = [r["resources"]["model"].get(key, 0.0) for r in done]
        xs += [(r["resources"].get("yosys") or {}).get(key) or 0.0 for r in done]
        targets = sorted({r["target_fps"] for r in rows})
        for t in targets:
            ax.axhline(t, color="k", ls=":", lw=0.8)
        handles.append(matplotlib.lines.Line2D([], [], color="k", ls=":", lw=0.8))
        ax.set_xlim(0, 1.1 * max(xs, default=0.0) or 1.0)
        ax.set_ylim(0, 1.12 * max([*(r["predicted_fps"] for r in done), *targets]))
        ax.legend(handles, [*boards, *models, "FPS target"], fontsize=7, frameon=False,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0))  # fmt: skip
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        ax.xaxis.set_major_formatter(_thousands)
        ax.yaxis.set_major_formatter(_thousands)
        ax.set_xlabel(KIND_NAMES[key])
        ax.set_ylabel("FPS (cycle model)")
        ax.grid(True, which="major", alpha=0.3)
        if title:
            ax.set_title(title)
        return svg_of(fig, f"sweep-{key}")
