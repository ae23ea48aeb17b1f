"""The clock rule: which PL clocks a design may use, from the logic depth Yosys measures.

Without Vivado there is no timing report, so the explorer bounds the clock by the worst
register-to-register path of the synthesised units (``synth_xilinx -family xcup``), counted
in *effective logic levels*:

    levels = LUT + MUXF cells on the path + CARRY cells / 4   (+ 1 per LUT RAM read)

A LUT level on UltraScale+ (-2 speed grade) costs about 0.4 ns with its routing (~0.1 ns
of LUT, ~0.3 ns of typical local net); a CARRY4/CARRY8 cell adds only its carry propagation
(~0.1 ns), so four of them count as one level. The path is the one with the most levels,
found by flow/paths.py on the JSON netlist (Yosys' ``ltp`` finds the path with
the most *cells*, a long carry run, and missed the mixed LUT/carry paths that set the clock).

The period must hold the levels plus ~0.6 ns of clock-to-out, setup, skew and jitter margin:

    f_max = 1 / (0.6 ns + 0.4 ns * levels)

which gives the allowed levels per board clock in :data:`MAX_LEVELS`. A design runs at the
fastest board clock (``BoardBudget.pl_clocks_mhz``) whose limit every unit meets
(:func:`design_levels`: the engine, the whole top, the nonlinear units at their lanes, on
a top whose output writer puts several groups on the bank-parallel word path
(:func:`word_groups`) that writer's top runs, at its W builders' count
(:func:`word_top_levels`), and on a mixed W4/W8 array its column-map output writer). The rule is
a planning rule, not timing closure: Vivado's report decides (docs/boards.md).
"""

from __future__ import annotations

__all__ = [
    "LEVEL_NS",
    "OVERHEAD_NS",
    "MAX_LEVELS",
    "effective_levels",
    "unit_levels",
    "max_levels",
    "allowed_clocks",
    "design_levels",
    "word_groups",
    "word_top_levels",
    "writer_key",
    "writer_levels",
]

LEVEL_NS = 0.4
UNITS = ("softmax", "layernorm", "gelu")  # the nonlinear units, in a lane triple's order
OVERHEAD_NS = 0.6


def max_levels(clock_mhz: float) -> float:
    """Effective logic levels a path may have at ``clock_mhz``."""
    return (1e3 / clock_mhz - OVERHEAD_NS) / LEVEL_NS


MAX_LEVELS = {f: round(max_levels(f), 2) for f in (100.0, 125.0, 150.0, 200.0, 250.0, 300.0)}


def effective_levels(run: dict) -> float:
    """Effective levels of one calibration run: its worst path as
    ``worst_paths`` (flow/paths.py) weighs it (see the module docstring)."""
    path = run.get("path") or {}
    if "levels" in path:
        return float(path["levels"])
    return path.get("lut", 0) + path.get("muxf", 0) + path.get("carry", 0) / 4


def allowed_clocks(board_clocks, levels: float) -> list[float]:
    """Board clocks whose limit ``levels`` meets, fastest first."""
    return sorted((f for f in board_clocks if levels <= max_levels(f)), reverse=True)


def _run_at_or_above(runs: dict, n: int, field: str, what: str, counted: str,
                     table: str) -> float:  # fmt: skip
    """The run of ``runs`` (keyed by a count as text) at the next calibrated count >= ``n``;
    none up there is refused (one line naming ``field``, the calibrated counts and the
    calibrate.py ``table`` to extend): the depth grows with the count, no run below tells it."""
    known = sorted(int(k) for k in runs)
    above = [k for k in known if k >= n]
    if not above:
        raise ValueError(
            f"{field}={n}: no calibrated {what} at or above it (calibrated {counted}: "
            f"{', '.join(map(str, known))}; add it to calibrate.{table} and rerun)"
        )
    return runs[str(above[0])]


def unit_levels(depth: dict, unit: str, lanes: int) -> float:
    """Calibrated levels of nonlinear ``unit`` at ``lanes`` (``depth``: calibration.json's
    ``depth_runs``): the run at the next calibrated lane count up (a unit's depth grows with
    its lanes: its trees deepen). No run at all of ``unit``: 0.0 (no data, no bound). A lane
    count above every calibrated one is refused: the units' trees deepen with their lanes (64
    lanes held 12.0 levels where 16 held 5.5, before the cut), so no run below tells its depth.
    """
    runs = depth.get(unit, {})
    if not runs:
        return 0.0
    return _run_at_or_above(runs, lanes, f"{unit}_lanes", "depth", "lanes", "UNIT_LANES")


def word_groups(groups: int, cols_w8: int, banks: int) -> bool:
    """Whether a top's output writer (rtl/spm MatmulOutWriter; a mixed array's W_SPM jobs
    take one of its W8 columns) has several groups on the bank-parallel word path
    (:func:`vitaccel.engine_timing.word_writes` of ``cols_w8`` and ``banks``): the writer
    the calibration's multi-group word-path top run (``word_top``) measures and no
    one-group top run holds (its group registers and heads-mode pieces)."""
    from vitaccel.engine_timing import word_writes

    return groups > 1 and word_writes(cols_w8, banks)


def word_top_levels(depth: dict, w_builders: int = 1) -> float:
    """Calibrated levels of a top with several groups on the word path (:func:`word_groups`)
    and ``w_builders`` W builders on W_SPM jobs (``cost.spm_w_builders``: one a weight port
    on an all-W8 array, each a client of the scratchpad's read arbiter beside the row
    readers): the one-builder run (``word_top``: the writer's group paths, in every such top)
    and, with several builders, the run at the next calibrated builder count up
    (``word_top_ports``, by weight ports: the per-port builders and the arbiter's wider
    grant). A count above every calibrated one is refused (the arbiter widens with its
    clients: no run below tells its depth); no builder runs at all: ``word_top`` alone."""
    levels = depth.get("word_top", 0.0)
    runs = depth.get("word_top_ports", {})
    if w_builders <= 1 or not runs:
        return levels
    at = _run_at_or_above(runs, w_builders, "weight_ports", "multi-group word-path top",
                          "weight ports", "TOP_DEPTH")  # fmt: skip
    return max(levels, at)


def design_levels(
    depth: dict,
    lanes: tuple[int, int, int],
    mixed: tuple[int, int, int] | None,
    word_groups: bool = False,
    w_builders: int = 1,
) -> float:
    """A design's worst calibrated path (``depth``: calibration.json's ``depth_runs``): the
    engine's and the whole top's runs, each nonlinear unit's at its (softmax, layernorm,
    gelu) ``lanes`` (:func:`unit_levels`), on a top with ``word_groups``
    (:func:`word_groups`) the multi-group word-path top's runs at its ``w_builders``
    (:func:`word_top_levels`), and on a
    mixed W4/W8 array (``w4_share > 0``; ``mixed``: its (groups, cols, cols_w8), None on an
    all-W8 array) its column-map output writer's runs (:func:`writer_levels`: rtl/spm
    MappedOutWriter, which every mixed top writes through and no all-W8 top run contains)."""
    parts = [depth.get("engine", 0.0), depth.get("top", 0.0)]
    parts += [unit_levels(depth, u, n) for u, n in zip(UNITS, lanes, strict=True)]
    if word_groups:
        parts.append(word_top_levels(depth, w_builders))
    if mixed:
        parts.append(writer_levels(depth, *mixed))
    return max(parts)


def _select_levels(n: int) -> int:
    """4:1 levels of an ``n``-way select tree (rtl/spm ``_mux_tree``)."""
    levels = 0
    while n > 1:
        n, levels = -(-n // 4), levels + 1
    return levels


def writer_key(groups: int, cols: int, cols_w8: int) -> str:
    """``depth_runs["mixed_writer"]``'s key of a MappedOutWriter(groups, cols, cols_w8) run."""
    return f"{groups}x{cols}x{cols_w8}"


def writer_levels(depth: dict, groups: int, cols: int, cols_w8: int) -> float:
    """Calibrated levels of a mixed array's column-map output writer (rtl/spm
    MappedOutWriter of ``groups`` x ``cols`` columns, ``cols_w8`` W8; ``depth``:
    calibration.json's ``depth_runs``, whose ``mixed_writer`` holds each run by
    :func:`writer_key`). Its paths run through selects over its ``groups * cols``
    positions, and ABC's depth is not monotone in that count (g1 c22 measured 6.5 where g2
    c20 measured 6.25 and g2 c24 7.0): the run of that very shape if there is one, else the
    worst run of the positions' select class (the 4:1 levels of a ``groups * cols``-way
    select; none there, the next class up). Positions above every run's are refused (its
    selects widen: no run below tells its depth). No run at all: 0.0 (no data, no bound)."""
    runs = depth.get("mixed_writer", {})
    if not runs:
        return 0.0
    if writer_key(groups, cols, cols_w8) in runs:
        return runs[writer_key(groups, cols, cols_w8)]
    sizes = {}
    for key, levels in runs.items():
        g, c, _ = (int(x) for x in key.split("x"))
        sizes.setdefault(_select_levels(g * c), []).append((g * c, levels))
    n = groups * cols
    biggest = max(p for runs_k in sizes.values() for p, _ in runs_k)
    if n > biggest:
        raise ValueError(
            f"mixed writer groups x cols={groups}x{cols}: {n} positions, above every "
            f"calibrated MappedOutWriter run (calibrated: {', '.join(sorted(runs))}; "
            "add it to calibrate.WRITER_DEPTH and rerun)"
        )
    cls = min(k for k in sizes if k >= _select_levels(n))
    return max(levels for _, levels in sizes[cls])
