"""The explorer: the cheapest design that reaches a target FPS on a board, and the Pareto front.

``explore(model, board, fps)`` enumerates array shapes (groups, rows, cols, vector, W4
columns and kind), nonlinear lanes and per-layer W4 ratios, predicts each candidate's cycles
(:mod:`vitaccel.dse.cost`, the controller's own tiling) and resources
(:mod:`vitaccel.dse.resources`, calibrated on Yosys), bounds the W4 ratios by the measured or
proxy sensitivity (:mod:`vitaccel.dse.sensitivity`) and the clock by the LUT-depth rule
(:mod:`vitaccel.dse.clock`), and keeps:

* the **chosen design**: among the candidates within ``max_util`` of every resource that
  reach the target, the one whose tightest resource is least used (then the best fidelity,
  then the highest FPS);
* the **Pareto front** of FPS against DSP48E2, LUT and predicted fidelity;
* **what binds**: the constraint whose relaxation (doubling one resource limit, or the DDR
  bandwidth) raises the best reachable FPS the most, measured on the same candidate pool.

W4 ratios: for every weight layer the useful ratios are those that cut an output step
(``nsteps = max(ceil(N8/(G*C8)), ceil(N/(G*C)))``), and above the W4 columns' share those
that take off the steps the W4 rows' places cost (:func:`_w4_ratio_options`: the rows past
a window's W4 slots run on its free W8 columns); they are granted greedily, most cycles
saved per unit of predicted accuracy cost first, until the budget ``max_drop`` (top-1
agreement points with W8A8, :func:`vitaccel.dse.sensitivity.cost_curves`) is spent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import itertools
import json
import math
import operator
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitaccel.compile import schedule as scheduler
from vitaccel.compile.schedule import (
    MAX_SPM_WORDS,
    CompileError,
    kind_of,
    per_image,
    program_for,
    spill_traffic,
    spill_words_needed,
    spm_layout,
)
from vitaccel.design import (
    ArrayConfig,
    Design,
    LayerConfig,
    NonlinearConfig,
    Prediction,
    column_units,
    save_design,
)
from vitaccel.dse import clock as clock_rule
from vitaccel.dse import resources as res
from vitaccel.dse import sensitivity as sens
from vitaccel.dse.cost import (
    LATENCIES,
    SLOT_BYTES,
    chain_delay,
    chain_line,
    chain_ratio,
    chained_unit_cycles,
    column_split,
    first_out_edge,
    fused_cycles,
    fused_of,
    job_nsteps,
    nonlinear_cycles,
    port_bytes_per_cycle,
    spm_w_builders,
    spm_w_word_cycles,
    spm_x_stretch,
    stream_bound,
    top_matmul_extra,
    unit_phases,
    w_lag,
    weight_word_cycles,
    window_steps,
    writer_bound,
)
from vitaccel.dse.shapes import spec_of
from vitaccel.engine_timing import StepCycles
from vitaccel.isa import WORD_BYTES, MatmulFlags, Op, chained, residual_fusable
from vitaccel.util import atomic_write_bytes, cache_dir, content_hash

__all__ = [
    "InfeasibleError",
    "SearchSpace",
    "explore",
    "explain_unfit",
    "search",
    "DEFAULT_MAX_DROP",
]

# Top-1 agreement with W8A8 (points) a design's W4 rows may cost (sensitivity.cost_curves).
DEFAULT_MAX_DROP = sens.DEFAULT_MAX_DROP
RESOURCE_KINDS = ("dsp48e2", "lut", "ff", "bram36")
# The ISA's 16-bit scratchpad word addresses: at most 1 MiB (Design.spm_kib <= 1024).
SPM_KIB_MAX = 1024


def _kib(words: int) -> int:
    return -(-words * SLOT_BYTES // 1024)


def spill_kibs(spec, below: int) -> list[int]:
    """Smaller scratchpads (KiB, largest first, all below ``below``) the explorer tries when
    the whole one does not answer: the compact layout's need, then the spilling layout's
    (the residual stream in DDR) at 1/1, 1/2, 1/4 and 1/8 of the tokens per tile and at one
    token (fewer tiles stream the weights fewer times)."""
    T = spec.tokens
    tiles = sorted({max(1, -(-T // n)) for n in (1, 2, 4, 8, T)}, reverse=True)
    kibs = {_kib(spill_words_needed(spec, t)) for t in tiles}
    try:
        kibs.add(_kib(spm_layout(spec, MAX_SPM_WORDS, compact=True, spill=False).next))
    except CompileError:
        pass
    return [k for k in sorted(kibs, reverse=True) if k < below and k <= SPM_KIB_MAX]


# diagnose: the FPS gain (share) that lifting one limit must buy to be named.
BINDING_GAIN = 0.10


class InfeasibleError(Exception):
    """No design reaches the target: ``message`` is one line; best FPS and the binding limit.

    ``facts`` holds the same answer as structured fields (``vitaccel dse --json``): when no
    candidate fits at all, the smallest design's needs per resource against the board's
    budget, what is short and by how much, and what would make it fit
    (:func:`explain_unfit`); otherwise the best reachable FPS and what binds it.
    """

    def __init__(self, message: str, best_fps: float, binding: str, facts: dict | None = None):
        super().__init__(message)
        self.message = message
        self.best_fps = best_fps
        self.binding = binding
        self.facts = facts or {}


@dataclass(frozen=True)
class SearchSpace:
    groups: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12)
    rows: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28)
    cols: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 16, 20, 24)
    # The top level takes a power-of-two vector of at most 16 (one W word per 16-byte slot).
    vector: tuple[int, ...] = (4, 8, 16)
    # W4 columns added beside a base array's W8 columns (any count: w4_share = c4 / cols),
    # at most max_w4_share of the columns (the attention products need the W8 ones)
    w4_cols: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 10, 12, 16)
    max_w4_share: float = 0.5
    w4_kinds: tuple[str, ...] = ("int4", "pot4")
    # nonlinear lanes; those above 16 only with a datapath at least as wide
    lanes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    # HP ports streaming the weights (the board's hp_ports caps it)
    weight_ports: tuple[int, ...] = (1, 2, 3, 4)
    # bytes of X per cycle (Design.datapath_bytes): a scratchpad in 1, 2 or 4 banks
    datapath_bytes: tuple[int, ...] = (16, 32, 64)


@dataclass
class Candidate:
    groups: int
    rows: int
    cols: int
    vector: int
    w4_share: float
    w4_kind: str
    lanes: tuple[int, int, int]  # softmax, layernorm, gelu
    ratios: dict[str, float]
    cycles: int
    usage: dict[str, float]
    error: float
    fps: float = 0.0
    clock_mhz: float = 0.0
    bound_cycles: dict[str, int] = field(default_factory=dict)
    weight_ports: int = 1
    datapath_bytes: int = 16

    def util(self, limits: dict[str, float]) -> dict[str, float]:
        return {k: self.usage[k] / limits[k] for k in RESOURCE_KINDS}


# ---------------------------------------------------------------------------------------
# Fast evaluation
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)
def _steps(tokens, k, nsteps, g, r, c, v, units, heads, word_cycles, keep=False, x_beat=1,
           lag=0, x_stretch=None):  # fmt: skip
    """A job's cycles for every step count (:class:`engine_timing.StepCycles`) and what
    bounds its steps (:func:`cost.stream_bound`); kept per job and array (an array's
    scratchpad-built W jobs are the same at every clock and at every weight-port count
    with the same W builders; the StepCycles is only read). ``lag``: :func:`cost.w_lag`;
    ``x_stretch``: :func:`cost.spm_x_stretch`."""
    ends = StepCycles(tokens, k, nsteps, g, r, c, v, units, heads=heads,
                      w_word_cycles=word_cycles, x_keep=keep, x_beat=x_beat,
                      w_lag=lag, x_stretch=x_stretch)  # fmt: skip
    return ends, stream_bound(tokens, k, g, r, c, v, word_cycles)


class _Model:
    """Per (model, board, clock) data shared by all candidates."""

    def __init__(self, model: str, board, clock_mhz: float, max_drop: float, max_util=0.85,
                 spm_kib: int | None = None):  # fmt: skip
        self.spec = spec_of(model)
        self.board = board
        self.clock = clock_mhz
        self.port = port_bytes_per_cycle(clock_mhz, board)
        self.max_drop = max_drop
        self.instr = LATENCIES["instr"]
        self.spm_kib_needed = res.spm_kib_for(self.spec)
        if spm_kib is None and self.spm_kib_needed > SPM_KIB_MAX:
            # beyond the ISA even in the compact layout: spill in the whole 1 MiB if that fits
            try:
                spm_kib = _kib(spm_layout(self.spec, MAX_SPM_WORDS, spill=True).next)
            except CompileError:
                pass
        # a scratchpad smaller than the program's need: the compact layout, or the residual
        # stream spilled to DDR (``spill``)
        self.reduced = spm_kib is not None and spm_kib < self.spm_kib_needed
        self.spm_kib = spm_kib if self.reduced else min(self.spm_kib_needed, SPM_KIB_MAX)
        # the scratchpad and X banks go on URAM288 per array where the board has room
        # (_memories), so the scratchpad's memory is no longer a fixed part
        self.spm_words = self.spm_kib * 1024 // SLOT_BYTES
        self.spill = self.reduced and self.spill_bytes(1, False) > 0
        # a spilling program runs the MLP per token tile: its X buffers hold one tile
        self.jobs = None
        if self.spill:
            self.jobs = tuple(sorted({(i.tokens, i.k) for i in self.program(1, False)
                                      if i.op is Op.MATMUL}))  # fmt: skip
        self.max_util = max_util
        try:
            # per W4 kind: each layer's agreement cost curve (no data: no W4 candidates)
            self.sens = {k: sens.cost_curves(self.spec.name, k)[0] for k in ("int4", "pot4")}
        except sens.SensitivityError:
            self.sens = {}
        depth = res.calibration().get("depth_runs", {})
        self.depth = depth
        self.levels = None
        shell, self.shell_kind = res.shell_resources()
        self.shell = shell
        self._nl_cache: dict = {}

    def w4_error(self, kind: str, layer: str, ratio: float) -> float:
        """A layer's predicted error at a W4 ratio (its sensitivity curve), kept per ratio:
        every datapath width and weight-port count of an array asks for the same ones."""
        key = ("w4_error", kind, layer, ratio)
        if key not in self._nl_cache:
            self._nl_cache[key] = sens.curve_at(self.sens[kind].get(layer), ratio)
        return self._nl_cache[key]

    def w4_errors(self, kind: str, layers: tuple[str, ...], ratios: tuple) -> tuple[dict, float]:
        """:meth:`w4_error` of each of ``layers`` at each of ``ratios`` (no W4 data or one
        ratio: ``[0.0]``), by layer, and the sum of every error increase from one ratio to
        the next; kept per ratio tuple, which many arrays share."""
        key = ("w4_errors", kind, layers, ratios)
        if key not in self._nl_cache:
            if self.sens.get(kind) is None or len(ratios) < 2:
                out = {la: [0.0] for la in layers}
            else:
                out = {la: [self.w4_error(kind, la, r) for r in ratios] for la in layers}
            rise = sum(max(e[j] - e[j - 1], 0.0) for e in out.values() for j in range(1, len(e)))
            self._nl_cache[key] = out, rise
        return self._nl_cache[key]

    def unit_levels(self, unit: str, lanes: int) -> float:
        """Calibrated logic levels of ``unit`` at ``lanes`` (:func:`clock.unit_levels`: the
        next calibrated lane count up; none up there is an error)."""
        return clock_rule.unit_levels(self.depth, unit, lanes)

    def design_levels(self, lanes: tuple[int, int, int], mixed: tuple | None = None,
                      word_groups: bool = False, w_builders: int = 1) -> float | None:  # fmt: skip
        """The design's worst calibrated path (:func:`clock.design_levels`; ``mixed``: a
        W4/W8 array's (groups, cols, cols_w8), whose column-map output writer counts too,
        :func:`clock.writer_levels`; ``word_groups``: several
        groups on the output writer's word path, :func:`clock.word_groups`, whose runs are
        taken at ``w_builders``, :func:`cost.spm_w_builders`); None without data."""
        if not self.depth:
            return None
        return clock_rule.design_levels(self.depth, lanes, mixed, word_groups, w_builders)

    def word_top_known(self, w_builders: int) -> bool:
        """Whether the calibration tells the depth of a multi-group word-path top with
        ``w_builders`` W builders (:func:`clock.word_top_levels` does not refuse it)."""
        try:
            clock_rule.word_top_levels(self.depth, w_builders)
        except ValueError:
            return False
        return True

    def writer_known(self, groups: int, cols: int, cols_w8: int) -> bool:
        """Whether the calibration tells the depth of a mixed array's column-map writer of
        that shape (:func:`clock.writer_levels` does not refuse it)."""
        try:
            clock_rule.writer_levels(self.depth, groups, cols, cols_w8)
        except ValueError:
            return False
        return True

    def clock_for(self, lanes: tuple[int, int, int], mixed: tuple | None = None,
                  word_groups: bool = False, w_builders: int = 1) -> float:  # fmt: skip
        """Fastest board clock the LUT-depth rule allows with these lanes (default w/o data);
        kept per answer (every array of a shape asks for the same lane triples)."""
        key = ("clock", lanes, mixed, word_groups, w_builders)
        clock = self._nl_cache.get(key)
        if clock is None:
            levels = self.design_levels(lanes, mixed, word_groups, w_builders)
            if levels is None:
                clock = self.board.default_clock_mhz
            else:
                allowed = clock_rule.allowed_clocks(self.board.pl_clocks_mhz, levels)
                clock = allowed[0] if allowed else min(self.board.pl_clocks_mhz)
            self._nl_cache[key] = clock
        return clock

    def program(self, groups: int, fuse: bool, chain: frozenset = frozenset()) -> tuple:
        """The scheduled program on ``groups`` groups in the ISA's whole scratchpad (the
        spilling program in ``spm_kib`` when the model spills); ``chain``: its chained unit
        roles (:func:`vitaccel.compile.schedule.program_for`)."""
        words = self.spm_words if self.reduced else MAX_SPM_WORDS
        return program_for(self.spec, groups=groups, fuse_residual=fuse, spm_words=words,
                           strict=False, chain=chain)  # fmt: skip

    def spill_bytes(self, groups: int, fuse: bool) -> int:
        """Bytes the program moves to and from the DDR scratch region per image."""
        return spill_traffic(self.program(groups, fuse))

    def plan(self, groups: int, fuse: bool, chain: frozenset = frozenset()) -> dict:
        """The program's matmuls grouped: identical jobs counted once (per group count,
        residual fusion and chained roles). A job's last part is the unit chained into it,
        ``(kind, rows, cols)``, or None."""
        key = ("plan", groups, fuse, chain)
        if key not in self._nl_cache:
            fixed: dict = {}
            every: dict = {}
            kinds: dict[str, list] = {}
            layers: dict[str, str] = {}
            prog = self.program(groups, fuse, chain)
            for j, ins in enumerate(prog):
                if ins.op is not Op.MATMUL:
                    continue
                fl = ins.flags
                w_ddr = MatmulFlags.W_SPM not in fl
                prev = prog[j - 1] if j else None
                unit = (kind_of(prev), prev.rows, prev.cols) if prev and chained(prev) else None
                job = (ins.tokens, ins.k, ins.n, MatmulFlags.OUT_T in fl,
                       MatmulFlags.X_KEEP in fl, fused_of(ins), unit)  # fmt: skip
                # (the Y head step: the output writer's word path packs heads by its banks)
                heads = MatmulFlags.HEADS in fl
                sig = ("matmul" if w_ddr else "heads", ins.heads if heads else 0, *job,
                       ins.head_y_step if heads else 0)  # fmt: skip
                every[sig] = every.get(sig, 0) + 1
                if w_ddr and ins.label not in ("patch_embed", "head"):
                    parts = kinds.setdefault(kind_of(ins), [])
                    if job not in parts:
                        parts.append(job)
                    layers[ins.label] = kind_of(ins)
                else:
                    fixed[sig] = fixed.get(sig, 0) + 1
            by_kind = {lk: tuple(la for la, k in layers.items() if k == lk) for lk in kinds}
            self._nl_cache[key] = {"fixed": fixed, "all": every, "kinds": kinds, "layers": layers,
                                   "layers_of": by_kind}  # fmt: skip
        return self._nl_cache[key]

    # nonlinear cycles per unit for the whole program, for each lane count
    def nonlinear(self, groups: int, fuse: bool,
                  chain: frozenset = frozenset()) -> dict[str, dict[int, int]]:  # fmt: skip
        """Per unit kind and lane count, the program's unit instructions' cycles (as if none
        were chained: :func:`_price_array` prices what a chained MATMUL hides of its unit),
        and under ``"fixed"`` its RESADD, LOAD and STORE instructions'."""
        key = (_nl_key(self, groups), fuse, chain)
        if key not in self._nl_cache:
            out: dict[str, dict[int, int]] = {"softmax": {}, "layernorm": {}, "gelu": {}}
            fixed = 0
            # an image of a stream: past the resident prologue (the constants LOAD)
            prog = [(kind_of(i), i) for i in per_image(self.program(groups, fuse, chain))]
            for lanes in SearchSpace.lanes:
                for unit in out:
                    # at a datapath of >= lanes bytes (the only widths a triple is paired with)
                    out[unit][lanes] = sum(
                        nonlinear_cycles(kind, i.rows, i.cols, lanes, lanes) + self.instr
                        for kind, i in prog
                        if kind == unit
                    )
            for kind, i in prog:
                if kind == "residual":
                    fixed += nonlinear_cycles("residual", i.rows, i.cols, SLOT_BYTES) + self.instr
                elif kind in ("load", "store"):
                    fixed += (
                        int(math.ceil(i.words * SLOT_BYTES / self.port))
                        + LATENCIES["load"]
                        + self.instr
                    )
            out["fixed"] = {0: fixed}
            self._nl_cache[key] = out
        return self._nl_cache[key]


# Weight ports are added while the W stream bounds more than this share of an array's
# matmul cycles (beyond it another port buys next to nothing and costs a DMA).
PORT_STOP = 0.02

# How far towards the fewest steps a layer's W4 rows may go: fractions of the way.
_CUTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Beyond the column share: W4 rows on the W8 columns' free slots (plan_columns' spill) even
# out the windows the W4 rows' places leave short, so the seeded plan's extra steps go;
# ratios up to this far above the share's, on a 1/_OVER_STEPS grid, each one kept only
# when it takes the largest part a step lower than the last kept ratio.
_OVER_SHARE = 0.25
_OVER_STEPS = 16


@functools.lru_cache(maxsize=4096)
def _w4_ratio_options(n: int, ns0: int, ns_min: int, g: int, c: int, c8: int) -> tuple:
    """A layer's W4 ratios to price (its largest part: ``n`` rows, ``ns0`` steps all-W8,
    ``ns_min`` with every row W4-eligible): the cuts towards the fewest steps at the
    share of W4 columns, then ratios above that share that lower the part's steps in
    ``plan_columns``' windows for rows at seeded places (:func:`cost.window_steps`, the
    steps :func:`cost.job_nsteps` gives)."""
    ratios = [round(max(0, n - (ns0 - int(round(cut * (ns0 - ns_min)))) * g * c8) / n, 6)
              for cut in _CUTS]  # fmt: skip
    top = ratios[-1]
    if not 0 < top < 1:
        return tuple(ratios)
    steps = window_steps(n, n - int(round(top * n)), g, c, c8)
    for j in range(1, int(_OVER_SHARE * _OVER_STEPS) + 1):
        ratio = round(min(1.0, top + j / _OVER_STEPS), 6)
        if steps <= ns_min:
            break
        ns = window_steps(n, n - int(round(ratio * n)), g, c, c8)
        if ns < steps:
            ratios.append(ratio)
            steps = ns
    return tuple(ratios)


def _evaluate_array(m: _Model, g, r, c, v, share, kind, max_drop, word_cycles, x_beat=1,
                    ports=1, chain: frozenset = frozenset(), base=None,
                    chain_lanes: tuple = ()):  # fmt: skip
    """Matmul cycles (with greedy W4 ratios), ratios, predicted error, cycles by bound;
    ``word_cycles``: the engine's cycles per W stream word (:func:`cost.weight_word_cycles`);
    ``x_beat``: k-steps per X beat (:func:`engine_timing.x_beat_words` of the datapath);
    ``ports``: the weight ports (only their W_SPM builders matter,
    :func:`cost.spm_w_builders`: the pool passes those); ``chain``: the chained unit roles
    (:func:`_chain_of`; the matmul cycles then include what the chained MATMULs hide of
    their units, a negative part; ``base``: this function's answer without chains, when the
    caller has it); ``chain_lanes``: ``(kind, lanes)`` of the chained units narrower than the
    datapath (:func:`_chain_lanes_of`; the others' lanes are the datapath's bytes)."""
    if chain:
        # the unchained array and what the chained jobs change, when that does not depend on
        # the W4 options (then the greedy's choice is the unchained one); else all again
        if base is None:
            base = _evaluate_array(m, g, r, c, v, share, kind, max_drop, word_cycles, x_beat,
                                   ports)  # fmt: skip
        delta = _chain_delta(m, g, r, c, v, share, word_cycles, x_beat, ports, chain,
                             chain_lanes)  # fmt: skip
        if delta is not None:
            mm, ratios, error, bound = base
            bound = dict(bound)
            for b, part in delta.items():
                bound[b] = bound.get(b, 0) + part
            return mm + sum(delta.values()), ratios, error, bound
    key = ("price", g, r, c, v, share, word_cycles, x_beat, ports, chain, chain_lanes)
    priced = m._nl_cache.get(key)
    if priced is None:
        priced = _price_array(m, g, r, c, v, share, word_cycles, x_beat, ports, chain,
                              chain_lanes)  # fmt: skip
        if share or chain:  # (a W4 array is priced once for every W4 kind)
            m._nl_cache[key] = priced
    mm_total, bound, kind_opts, w4_layers, layers_of = priced
    bound = dict(bound)
    ratios: dict[str, float] = {}
    error = 0.0
    if w4_layers:
        curves = m.sens.get(kind)
        # Greedy over (layer, option): most cycles saved per unit of predicted error.
        import heapq

        choice = {layer: 0 for layer in w4_layers}
        errs: dict[str, list[float]] = {}
        heap = []
        push, pop = heapq.heappush, heapq.heappop
        rise = 0.0
        for lk, opts in kind_opts.items():
            ratios_lk = tuple(ratio for _, ratio, _ in opts)
            kind_errs, kind_rise = m.w4_errors(kind, layers_of[lk], ratios_lk)
            rise += kind_rise
            for layer, e in kind_errs.items():
                errs[layer] = e
                if curves is None or len(opts) < 2:
                    continue
                push(heap, (-(opts[0][0] - opts[1][0]) / max(e[1], 1e-12), layer, 1))
        if curves is not None and rise <= max_drop - 1e-12:
            # every option fits the budget whatever the order: the greedy takes them all
            choice = {layer: len(kind_opts[lk]) - 1 for layer, lk in w4_layers.items()}
            heap = []
        budget = max_drop
        # (max() as conditional expressions: ~10^5 rounds per query)
        while heap:
            _, layer, j = pop(heap)
            e = errs[layer]
            cost = e[j] - e[j - 1]
            if cost > budget + 1e-15:
                continue
            budget -= 0.0 if 0.0 > cost else cost
            choice[layer] = j
            opts = kind_opts[w4_layers[layer]]
            if j + 1 < len(opts):
                c2 = e[j + 1] - e[j]
                c2 = 1e-12 if 1e-12 > c2 else c2
                push(heap, (-(opts[j][0] - opts[j + 1][0]) / c2, layer, j + 1))
        for layer, lk in w4_layers.items():
            j = choice[layer]
            cyc, ratio, split = kind_opts[lk][j]
            mm_total += cyc
            for b, part in split.items():
                bound[b] = bound.get(b, 0) + part
            if ratio > 0:
                ratios[layer] = ratio
                error += errs[layer][j]
    return mm_total, ratios, error, bound


@functools.lru_cache(maxsize=65536)  # an array's chain variants share their jobs
def _chained_job(m: _Model, unit, tokens, k, n, ns, g, r, c, v, units, *, heads, nheads,
                 transposed, keep, fused, word_cycles, x_beat, lag, port, w_spm, builders,
                 fixed, hstep=0, c8=0, mapped=False, n8=None,
                 chain_lanes=()) -> tuple[int, str, int]:  # fmt: skip
    """``(cycles, bound, unit)`` of a chained MATMUL job: its cycles as
    :func:`cost.instr_cycles` prices it with the X of its unit ``(kind, rows, cols)``
    (:func:`cost.chain_line`; the unit's lanes are its entry in ``chain_lanes``, else the
    datapath's bytes, ``16 * x_beat``; a narrower one packs its beats, :func:`cost.chain_ratio`),
    and what the pair changes of the unit's unchained cycles (which
    :meth:`_Model.nonlinear` counts): the unit as :func:`cost.priced_program` prices it
    (:func:`cost.chained_unit_cycles`) less those, <= 0."""
    width = 16 * x_beat
    lanes = dict(chain_lanes).get(unit[0], width) if unit else width
    # (no unit: the job as _price_array prices it unchained)
    phases = unit_phases(unit[0], unit[1], unit[2], lanes, width) if unit else (0, 0, 0)
    setup = top_matmul_extra(tokens, k, ns, g, r, c, v, w_spm=w_spm, heads=heads,
                             x_beat=x_beat, w_ports=max(1, builders))  # fmt: skip
    ratio = chain_ratio(unit[2], lanes, width) if unit else 1
    stretch = chain_line(phases[2], chain_delay(fused, n, setup), port, ratio)
    ends, b = _steps(tokens, k, ns, g, r, c, v, units, heads, word_cycles, keep, x_beat, lag,
                     stretch)  # fmt: skip
    if w_spm:
        b = "compute"
    wb = writer_bound(tokens, k, n, g, r, c, v, units, heads=heads, nheads=nheads,
                      transposed=transposed, w_word_cycles=word_cycles, x_keep=keep,
                      x_beat=x_beat, mapped_steps=ns if mapped else 0, mapped_n8=n8,
                      cols_w8=c8, w_spm=w_spm, banks=x_beat, head_step=hstep,
                      runs=fused == "residual", w_lag=lag, x_stretch=stretch)  # fmt: skip
    job = ends.last
    if wb > job:
        job, b = int(math.ceil(wb)), "writer"
    mm = job + setup + fused_cycles(fused, n) + fixed
    return mm, b, chained_unit_cycles(phases, mm) - sum(phases)


def _chained_w4_job(m, key, n, ns, n8, g, r, c, v, units, word_cycles, x_beat, fixed, c8,
                    chain_lanes):  # fmt: skip
    """:func:`_chained_job` of a DDR job with a W4 choice (``key``: a plan's job, its unit
    at ``key[6]``) at ``ns`` steps, ``n8`` rows on W8 columns."""
    return _chained_job(
        m,
        key[6],
        key[0],
        key[1],
        n,
        ns,
        g,
        r,
        c,
        v,
        units,
        heads=False,
        nheads=1,
        transposed=key[3],
        keep=key[4],
        fused=key[5],
        word_cycles=word_cycles,
        x_beat=x_beat,
        lag=w_lag(False),
        port=None,
        w_spm=False,
        builders=0,
        fixed=fixed,
        c8=c8,
        mapped=True,
        n8=n8,
        chain_lanes=chain_lanes,
    )


def _w4_streams(key, g, r, c, v, c8, units, word_cycles, x_beat):
    """A DDR job with a W4 choice (``key``: a plan's job): its :func:`_steps` for every
    step count and its output writer's bound as a function of the steps (the mapped
    writer's cycles follow the steps: priced per option, after the same first word)."""
    tokens, k, n, transposed, keep, fused, _ = key
    ns0 = job_nsteps(n, n, g, c, c8, heads=False)
    first = first_out_edge(tokens, k, g, r, c, v, units, False, word_cycles, keep, x_beat,
                           w_lag(False))  # fmt: skip
    writer = functools.partial(
        writer_bound, tokens, k, n, g, r, c, v, units, heads=False, nheads=1,
        transposed=transposed, w_word_cycles=word_cycles, x_keep=keep, x_beat=x_beat,
        cols_w8=c8, banks=x_beat, runs=fused == "residual", first=first,
    )  # fmt: skip
    steps = _steps(tokens, k, ns0, g, r, c, v, units, False, word_cycles, keep, x_beat,
                   w_lag(False))  # fmt: skip
    return steps, writer


def _w4_part(key, ns, n8, steps, writer, g, r, c, v, x_beat, fixed) -> tuple[int, str]:
    """(cycles, bound) of a DDR job with a W4 choice at ``ns`` steps, ``n8`` rows on W8
    columns (:func:`_w4_streams`' ``steps`` and ``writer``), as :func:`cost.instr_cycles`."""
    ends, b = steps
    job = ends.at(ns)
    wb = writer(mapped_steps=ns, mapped_n8=n8)
    if wb > job:
        job, b = int(math.ceil(wb)), "writer"
    job += top_matmul_extra(key[0], key[1], ns, g, r, c, v, w_spm=False, heads=False,
                            x_beat=x_beat)  # fmt: skip
    return job + fused_cycles(key[5], key[2]) + fixed, b


def _chain_delta(m: _Model, g, r, c, v, share, word_cycles, x_beat, ports,
                 chain: frozenset, chain_lanes: tuple = ()) -> dict | None:  # fmt: skip
    """What chaining the roles ``chain`` changes of an array's matmul cycles
    (:func:`_price_array`), by bound (``"nonlinear"``: what the chained MATMULs hide of their
    units, <= 0): each chained job priced with its unit (:func:`_chained_job`) less the same
    job unchained. None when that depends on the W4 options (a chained job with a W4 choice
    whose change is not the same at every option: the greedy's choice may then differ from
    the unchained array's) or the chained program's W4 jobs are not the unchained one's."""
    key = ("chain delta", g, r, c, v, share, word_cycles, x_beat, ports, chain, chain_lanes)
    if key in m._nl_cache:
        return m._nl_cache[key]
    c8, c4 = column_split(c, share)
    units = column_units(c8, c4)
    fuse = residual_fusable(g, c, c4)
    plan = m.plan(g, fuse, chain)
    spm_wc, spm_builders = spm_w_word_cycles(ports, c4), spm_w_builders(ports, c4)
    instr_ddr = m.instr + LATENCIES["matmul_ddr"]
    delta: dict[str, int] = {}

    def add(b: str, cycles: int) -> None:
        delta[b] = delta.get(b, 0) + cycles

    for sig, count in (plan["fixed"] if c4 else plan["all"]).items():
        unit = sig[8]
        if unit is None:
            continue
        op, nheads, tokens, k, n, transposed, keep, fused, _, hstep = sig
        heads, w_spm = nheads > 0, op != "matmul"
        ns = job_nsteps(n, n, g, c, c8, heads=heads and w_spm)
        port = spm_x_stretch(tokens, k, n, ns, g, c, v, x_beat, spm_builders, heads=heads,
                             nheads=max(1, nheads)) if w_spm and spm_builders > 1 else None  # fmt: skip
        fixed = instr_ddr if not w_spm else m.instr + LATENCIES[
            "matmul_heads" if heads else "matmul_spm"]  # fmt: skip
        wc = spm_wc if w_spm else word_cycles
        args = dict(heads=heads, nheads=max(1, nheads), transposed=transposed, keep=keep,
                    fused=fused, word_cycles=wc, x_beat=x_beat, lag=w_lag(w_spm), port=port,
                    w_spm=w_spm, builders=spm_builders if w_spm else 0, fixed=fixed,
                    hstep=hstep, c8=c8, mapped=bool(c4), chain_lanes=chain_lanes)  # fmt: skip
        mm, b, hidden = _chained_job(m, unit, tokens, k, n, ns, g, r, c, v, units, **args)
        mm0, b0, _ = _chained_job(m, None, tokens, k, n, ns, g, r, c, v, units, **args)
        add(b, mm * count)
        add(b0, -mm0 * count)
        add("nonlinear", hidden * count)
    if c4:
        strip = {lk: [p[:6] + (None,) for p in parts] for lk, parts in plan["kinds"].items()}
        if strip != m.plan(g, fuse)["kinds"]:
            m._nl_cache[key] = None
            return None
        for lk, parts in plan["kinds"].items():
            layers = len(plan["layers_of"][lk])
            n_big = max(p[2] for p in parts)
            ns0_big = job_nsteps(n_big, n_big, g, c, c8, heads=False)
            ns_min_big = job_nsteps(n_big, 0, g, c, c8, heads=False)
            ratios = _w4_ratio_options(n_big, ns0_big, ns_min_big, g, c, c8)
            for part in parts:
                if part[6] is None:
                    continue
                steps, writer = _w4_streams(part, g, r, c, v, c8, units, word_cycles, x_beat)
                seen = None
                for ratio in ratios:
                    n = part[2]
                    n8 = n - int(round(ratio * n))
                    ns = job_nsteps(n, n8, g, c, c8, heads=False)
                    mm, b, hidden = _chained_w4_job(m, part, n, ns, n8, g, r, c, v, units,
                                                    word_cycles, x_beat, instr_ddr, c8,
                                                    chain_lanes)  # fmt: skip
                    mm0, b0 = _w4_part(part, ns, n8, steps, writer, g, r, c, v, x_beat,
                                       instr_ddr)  # fmt: skip
                    d = (mm - mm0, b, b0, hidden, mm)
                    if seen is not None and d[:4] != seen[:4]:
                        m._nl_cache[key] = None
                        return None
                    seen = d
                # (the chosen option's bounds are the unchained one's: the same b0)
                mm_minus, b, b0, hidden, _ = seen
                if b != b0:
                    m._nl_cache[key] = None
                    return None
                add(b, mm_minus * layers)
                add("nonlinear", hidden * layers)
    m._nl_cache[key] = delta
    return delta


def _price_array(m: _Model, g, r, c, v, share, word_cycles, x_beat, ports=1,
                 chain: frozenset = frozenset(), chain_lanes: tuple = ()):  # fmt: skip
    """What :func:`_evaluate_array` needs of an array whatever its W4 kind: the cycles and
    bounds of the jobs without a W4 choice, per layer kind its options (cycles, ratio, cycles
    by bound) from no W4 to the fewest steps, the W4 layers and their kinds' layers; with
    ``chain``, the program with those roles chained, each chained job with its unit
    (:func:`_chained_job`)."""
    c8, c4 = column_split(c, share)
    units = column_units(c8, c4)
    plan = m.plan(g, residual_fusable(g, c, c4), chain)
    cache: dict = {}
    mm_total = 0
    bound = {"compute": 0, "bandwidth": 0, "writer": 0}
    instr_ddr = m.instr + LATENCIES["matmul_ddr"]
    instr_spm = m.instr + LATENCIES["matmul_spm"]
    instr_heads = m.instr + LATENCIES["matmul_heads"]
    spm_wc, spm_builders = spm_w_word_cycles(ports, c4), spm_w_builders(ports, c4)
    w4_kinds = plan["kinds"] if c4 else {}
    w4_layers = plan["layers"] if c4 else {}
    sigs = plan["fixed"] if c4 else plan["all"]
    for (op, nheads, tokens, k, n, transposed, keep, fused, unit, hstep), count in sigs.items():
        heads = nheads > 0
        lag = w_lag(op != "matmul")  # "matmul": W from DDR
        if op == "matmul":
            ns = job_nsteps(n, n, g, c, c8, heads=False)
            wc, stretch = word_cycles, None
        else:
            ns = job_nsteps(n, n, g, c, c8, heads=heads)
            # X shares the read port with the W builders (as cost.instr_cycles prices it)
            stretch = spm_x_stretch(tokens, k, n, ns, g, c, v, x_beat, spm_builders,
                                    heads=heads, nheads=max(1, nheads),
                                    ) if spm_builders > 1 else None  # fmt: skip
            wc = spm_wc
        fixed = instr_ddr if op == "matmul" else (instr_heads if heads else instr_spm)
        if unit is not None:
            cyc1, b, hidden = _chained_job(
                m, unit, tokens, k, n, ns, g, r, c, v, units, heads=heads,
                nheads=max(1, nheads), transposed=transposed, keep=keep, fused=fused,
                word_cycles=wc, x_beat=x_beat, lag=lag, port=stretch, w_spm=op != "matmul",
                builders=spm_builders if op != "matmul" else 0, fixed=fixed, hstep=hstep,
                c8=c8, mapped=bool(c4), chain_lanes=chain_lanes,
            )  # fmt: skip
            mm_total += (cyc1 + hidden) * count
            bound[b] = bound.get(b, 0) + cyc1 * count
            bound["nonlinear"] = bound.get("nonlinear", 0) + hidden * count
            continue
        if op == "matmul":
            ends, b = _steps(tokens, k, ns, g, r, c, v, units, False, word_cycles, keep, x_beat,
                             lag)  # fmt: skip
        else:
            ends, _ = _steps(tokens, k, ns, g, r, c, v, units, heads, spm_wc, keep, x_beat,
                             lag, stretch)  # fmt: skip
            b = "compute"  # scratchpad-built W: as cost.instr_cycles labels it
        wb = writer_bound(tokens, k, n, g, r, c, v, units, heads=heads, nheads=max(1, nheads),
                          transposed=transposed, w_word_cycles=wc, x_keep=keep,
                          x_beat=x_beat, mapped_steps=ns if c4 else 0, cols_w8=c8,
                          w_spm=op != "matmul", banks=x_beat, head_step=hstep,
                          runs=fused == "residual", w_lag=lag,
                          x_stretch=stretch)  # fmt: skip
        job = ends.last
        if wb > job:
            job, b = int(math.ceil(wb)), "writer"
        job += top_matmul_extra(tokens, k, ns, g, r, c, v, w_spm=op != "matmul", heads=heads,
                                x_beat=x_beat, w_ports=spm_builders)  # fmt: skip
        job += fused_cycles(fused, n)
        cyc = (job + fixed) * count
        mm_total += cyc
        bound[b] = bound.get(b, 0) + cyc
    writer: dict = {}
    for parts in w4_kinds.values():
        for key in parts:
            cache[key], writer[key] = _w4_streams(key, g, r, c, v, c8, units, word_cycles,
                                                  x_beat)  # fmt: skip
    # Per layer kind: options (cycles, ratio) from no W4 to the fewest steps.
    kind_opts: dict[str, list] = {}
    for lk, parts in w4_kinds.items():
        # The ratio is one per layer; the largest part (QKV: the Q|K job) sets it, and
        # every part then gets round(ratio * n) W4 rows, as the cycle model reads it.
        n_big = max(key[2] for key in parts)
        ends_big = cache[next(key for key in parts if key[2] == n_big)][0]
        ns0_big = len(ends_big)
        ns_min_big = job_nsteps(n_big, 0, g, c, c8, heads=False)
        opts = []
        for ratio in _w4_ratio_options(n_big, ns0_big, ns_min_big, g, c, c8):
            if opts and ratio <= opts[-1][1]:
                continue
            cyc = 0
            split: dict[str, int] = {}
            for key in parts:
                ends, b = cache[key]
                n = key[2]
                n8 = n - int(round(ratio * n))
                ns = job_nsteps(n, n8, g, c, c8, heads=False)
                if key[6] is not None:  # chained: the job with its unit (as above)
                    cyc1, b, hidden = _chained_w4_job(m, key, n, ns, n8, g, r, c, v, units,
                                                      word_cycles, x_beat, instr_ddr, c8,
                                                      chain_lanes)  # fmt: skip
                    cyc += cyc1 + hidden
                    split[b] = split.get(b, 0) + cyc1
                    split["nonlinear"] = split.get("nonlinear", 0) + hidden
                    continue
                job, b = _w4_part(key, ns, n8, (ends, b), writer[key], g, r, c, v, x_beat,
                                  instr_ddr)  # fmt: skip
                cyc += job
                split[b] = split.get(b, 0) + job
            if opts and cyc >= opts[-1][0]:  # more W4 rows for no fewer cycles: no option
                continue
            opts.append((cyc, ratio, split))
        kind_opts[lk] = opts
    return mm_total, bound, kind_opts, w4_layers, plan["layers_of"]


def _memories(g, r, v, x_words, spm_words, budget, max_util) -> dict[str, str]:
    """The scratchpad's and the X banks' memory (res.design_memories: URAM288 where the
    board has room for them); one definition for search, usage_parts and to_design."""
    return res.design_memories(groups=g, rows=r, vector=v, x_words=x_words,
                               spm_words=spm_words, budget=budget, max_util=max_util)  # fmt: skip


def _engine_usage(g, r, c, v, share, kind, buffers, x_memory="bram") -> dict[str, float]:
    # buffers carries the X beat: the X banks' sub-banks of a wide datapath
    u = res.engine_resources(g, r, c, v, share, kind, **buffers, x_memory=x_memory)
    return {"dsp48e2": u.dsp48e2, "lut": u.lut, "ff": u.ff, "bram36": u.bram36, "uram": u.uram}


def _buffers(spec, g, r, c, v, datapath_bytes: int = 16, jobs=None) -> dict:
    kib = res.buffer_kib(spec, g, r, c, v, jobs)
    return res.engine_buffers_from_kib(
        g, r, c, v, kib["input_buffer_kib"], kib["weight_buffer_kib"], datapath_bytes
    )


# What `vitaccel dse` and `vitaccel bench` answer for: W4 columns allowed, or all-W8 arrays.
PRECISIONS = ("mixed", "w8")


def precision_mask(pool: list[Candidate], precision: str) -> np.ndarray:
    """The candidates a precision admits: all of them for ``mixed``, all-W8 arrays for
    ``w8``."""
    return np.array([precision == "mixed" or c.w4_share == 0 for c in pool], dtype=bool)


# ---------------------------------------------------------------------------------------
# The candidate pool, cached
# ---------------------------------------------------------------------------------------

# Pools already evaluated in this process, by every argument of `search` (the FPS target is
# not one of them: one pool answers every target).
_POOLS: dict[tuple, dict] = {}
_POOLS_KEPT = 4
# Bump when the pool file's layout changes (the code fingerprint covers everything else).
_POOL_FORMAT = 1


@functools.cache
def _code_fingerprint() -> str:
    """A hash of every module and data file of the package: a cached pool is only reused by
    the code (cycle model, resource model, scheduler, calibration) that produced it."""
    root = Path(__file__).resolve().parent.parent
    files = sorted(root.rglob("*.py")) + sorted((root / "dse" / "data").glob("*.json"))
    return content_hash(*(f"{f.relative_to(root)}".encode() + f.read_bytes() for f in files))


def _pool_path(key: tuple) -> Path:
    return cache_dir("dse") / f"pool-{content_hash(repr(key), _code_fingerprint())}.pkl"


@contextlib.contextmanager
def _no_cyclic_gc():
    """The cyclic collector paused (restored after): building or loading a pool makes ~10^5
    small objects, none of them in a cycle, which the collector would walk repeatedly
    (~10 % of a cold query's CPU)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_pool(path: Path) -> tuple[list[Candidate], int] | None:
    """The pool stored at ``path`` (None when absent or unreadable: it is evaluated again)."""
    import pickle

    try:
        data = path.read_bytes()
    except OSError:
        return None
    with _no_cyclic_gc():
        try:
            stored = pickle.loads(data)
            if stored.get("format") != _POOL_FORMAT:
                return None
            return [Candidate(*row) for row in stored["rows"]], stored["evaluated"]
        except Exception:  # a truncated or foreign file is a cache miss, never an error
            return None


def _store_pool(path: Path, pool: list[Candidate], evaluated: int) -> None:
    import pickle

    row = operator.attrgetter(*[f.name for f in dataclasses.fields(Candidate)])
    rows = [row(c) for c in pool]
    data = pickle.dumps({"format": _POOL_FORMAT, "rows": rows, "evaluated": evaluated}, 5)
    try:
        atomic_write_bytes(path, data)
    except OSError:  # a read-only cache only costs the next query its search
        pass


def search(
    model: str,
    board: str,
    *,
    max_util: float = 0.85,
    max_drop: float = DEFAULT_MAX_DROP,
    space: SearchSpace = SearchSpace(),
    clock_mhz: float | None = None,
    relax: float = 2.0,
    cache: bool = True,
    spm_kib: int | None = None,
) -> dict:
    """Evaluate the design space; return the candidate pool and its context.

    ``spm_kib``: the scratchpad of every candidate (default: what the program needs); a
    smaller one runs the spilling program (the residual stream in DDR, docs/isa.md).

    The pool holds every candidate within ``relax`` times the ``max_util`` limits (the
    binding analysis needs the ones just outside). Phase 1 evaluates every all-W8 array;
    phase 2 adds W4 columns (each share and kind) to the arrays on the phase-1 Pareto front
    (FPS against DSP and LUT): a W4 variant keeps its base array's W8 columns and DSPs.

    The pool does not depend on an FPS target, so it is kept (``cache=True``) in memory
    for the process and on disk under :func:`vitaccel.util.cache_dir` ``("dse")``, in a
    file named by the arguments and a hash of the package's code and data (written
    atomically; an unreadable file is evaluated again).
    """
    from vitaccel.boards import get_budget

    budget = get_budget(board)
    if clock_mhz is not None:
        budget.check_clock(clock_mhz)
    spec_of(model)  # an unknown model fails here, before any cache lookup
    key = (model, budget.name, float(max_util), float(max_drop), space, clock_mhz,
           float(relax), spm_kib, scheduler.CHAIN_DEFAULT)  # fmt: skip
    if cache and key in _POOLS:
        return _POOLS[key]
    port_clock = clock_mhz or max(budget.pl_clocks_mhz)
    m = _Model(model, budget, port_clock, max_drop, max_util, spm_kib)
    limits = {
        "dsp48e2": budget.dsp48e2 * max_util,
        "lut": budget.lut * max_util,
        "ff": budget.ff * max_util,
        "bram36": budget.bram36 * max_util,
    }
    path = _pool_path(key) if cache else None
    stored = _load_pool(path) if path is not None else None
    if stored is not None:
        pool, evaluated = stored
    else:
        with _no_cyclic_gc():
            pool, evaluated = _evaluate_pool(m, budget, limits, space, clock_mhz, relax)
        if path is not None:
            _store_pool(path, pool, evaluated)
    result = {
        "pool": pool,
        "limits": limits,
        "clock_mhz": max((c.clock_mhz for c in pool), default=port_clock),
        "levels": m.levels,
        "model": m,
        "budget": budget,
        "evaluated": evaluated,
        "max_util": max_util,
        "max_drop": max_drop,
        "cached": stored is not None,
    }
    if cache:
        while len(_POOLS) >= _POOLS_KEPT:  # a sweep's queries: keep the latest few pools
            del _POOLS[next(iter(_POOLS))]
        _POOLS[key] = result
    return result


def _evaluate_pool(m: _Model, budget, limits: dict, space: SearchSpace, clock_mhz, relax):
    """Every candidate of ``space`` within ``relax`` x ``limits``, and the arrays evaluated."""
    fixed_usage = {
        "dsp48e2": m.shell.dsp48e2,
        "lut": m.shell.lut,
        "ff": m.shell.ff,
        "bram36": m.shell.bram36,
    }

    @functools.cache
    def per_column(g: int, c: int, share: float, width: int, spm_memory: str):
        """The shell's share that grows with the output columns (m.shell is the rest) and the
        scratchpad with its output writer's word path (if the array has one) or the mixed
        array's; kept per answer: every row count and vector of an array shape asks again."""
        spm = res.spm_usage(m.spm_words, spm_memory, width // SLOT_BYTES)
        spm = spm + res.word_writer_resources(g, c, width // SLOT_BYTES, share)
        spm = spm + res.mapped_writer_resources(g, c, share, width // SLOT_BYTES)
        return res.shell_resources(g * c)[0] - m.shell + spm

    @functools.cache
    def memories(g: int, r: int, v: int, x_words: int) -> dict[str, str]:
        # (a few hundred distinct answers over the pool; the dict is only read)
        return _memories(g, r, v, x_words, m.spm_words, budget, m.max_util)

    lane_opts = _lane_options(m, budget, space.lanes, clock_mhz, space.datapath_bytes)
    spec = m.spec
    pool: list[Candidate] = []
    evaluated = 0

    port_choices = [q for q in space.weight_ports if q <= budget.hp_ports]
    port_usage = {q: res.weight_ports_resources(q) for q in port_choices}

    @functools.cache
    def word_cycles(v: int, clock: float, ports: int) -> float:
        # asked for every lane triple of every array: a handful of distinct answers
        return weight_word_cycles(v, clock, budget, ports)

    def evaluate(g, r, c, v, share, kind, widths=space.datapath_bytes) -> list[Candidate]:
        """The candidates of one array at every datapath width of ``widths``."""
        out = []
        for width in widths:
            out.extend(evaluate_width(g, r, c, v, share, kind, width))
        return out

    def evaluate_width(g, r, c, v, share, kind, width) -> list[Candidate]:
        nonlocal evaluated
        # a wider datapath banks the scratchpad and splits each X bank into x_beat sub-banks
        buffers = _buffers(spec, g, r, c, v, width, m.jobs)
        mem = memories(g, r, v, buffers["x_words"])
        eng = _engine_usage(g, r, c, v, share, kind, buffers, mem["x"])
        per_col = per_column(g, c, share, width, mem["spm"])
        base0 = [eng[k] + fixed_usage[k] + getattr(per_col, k) for k in RESOURCE_KINDS]
        uram = eng["uram"] + per_col.uram  # within the board's: _memories placed it
        if any(base0[i] > relax * limits[k] for i, k in enumerate(RESOURCE_KINDS)):
            return []
        evaluated += 1
        # a mixed array's column-map writer: (groups, cols, cols_w8), None on an all-W8 one
        writer = (g, c, column_split(c, share)[0]) if share > 0 else None
        if writer and clock_mhz is None and not m.writer_known(*writer):
            return []  # above every calibrated writer run: its clock is unknown
        fuse = residual_fusable(g, c, column_split(c, share)[1])
        nl = m.nonlinear(g, fuse)
        fixed = nl["fixed"][0]
        opts = lane_opts[(_nl_key(m, g), fuse, width, v == WORD_BYTES)]
        out = []
        word_groups = clock_rule.word_groups(g, column_split(c, share)[0], width // SLOT_BYTES)
        # by cycles per W word (clock and DDR ceiling) and W_SPM builders (one a port on an
        # all-W8 array, one in all on a mixed one): port counts the DDR caps share them
        priced: dict[tuple[float, int, frozenset], tuple] = {}
        # lanes -> chained roles (_chain_of) and the chained program's unit cycles
        chains: dict[tuple, tuple] = {}
        builders_of = functools.partial(spm_w_builders, cols_w4=column_split(c, share)[1])
        # (a mixed array's ports each carry their own columns' map entries: any port count)
        for ports in port_choices:
            if (g * c) % ports:
                continue
            builders = builders_of(ports)
            if word_groups and clock_mhz is None and not m.word_top_known(builders):
                continue  # no calibrated top of as many W builders: its clock is unknown
            extra = port_usage[ports]
            base = [base0[i] + getattr(extra, k) for i, k in enumerate(RESOURCE_KINDS)]
            evals: dict[tuple, tuple] = {}  # this port count's
            for lanes, nl_cycles, lane_usage, clock in opts:
                if (share > 0 or word_groups) and clock_mhz is None:
                    # a mixed array writes through its column-map writer, several groups
                    # on the word path through that writer (and its W builders' arbiter):
                    # their depth too
                    clock = min(clock, m.clock_for(lanes, writer, word_groups, builders))
                wc = word_cycles(v, clock, ports)
                got = chains.get(lanes)
                if got is None:
                    chain = _chain_of(lanes, v, width)
                    got = chains[lanes] = chain, chain and m.nonlinear(g, fuse, chain)
                chain, nlc = got
                chained = _chain_lanes_of(lanes, width) if chain else ()
                if chain:  # the chained program's units (a chained softmax runs per job)
                    nl_cycles = sum(nlc[u][n] for u, n in zip(NONLINEAR_UNITS, lanes,
                                                              strict=True))  # fmt: skip
                if (wc, chain, chained) not in evals:
                    # (chained: from the unchained answer)
                    for ch, cl in ((frozenset(), ()), (chain, chained)):
                        if (wc, builders, ch, cl) not in priced:
                            priced[wc, builders, ch, cl] = _evaluate_array(
                                m, g, r, c, v, share, kind, m.max_drop, wc, buffers["x_beat"],
                                builders, ch, base=priced.get((wc, builders, frozenset(), ())),
                                chain_lanes=cl,
                            )  # fmt: skip
                    evals[wc, chain, chained] = priced[wc, builders, chain, chained]
                mm, ratios, error, bound = evals[wc, chain, chained]
                cyc = mm + fixed + nl_cycles
                usage = dict(zip(RESOURCE_KINDS, map(operator.add, base, lane_usage), strict=True))
                usage["uram"] = uram
                out.append(
                    Candidate(
                        g, r, c, v, share, kind, lanes, ratios, cyc, usage, error,
                        fps=clock * 1e6 / cyc, clock_mhz=clock,
                        bound_cycles={**bound,
                                      "nonlinear": fixed + nl_cycles + bound.get("nonlinear", 0)},
                        weight_ports=ports, datapath_bytes=width,
                    )
                )  # fmt: skip
            # another port only helps an array whose matmuls wait for their weights
            if all(e[3].get("bandwidth", 0) <= PORT_STOP * e[0] for e in evals.values()):
                break
        return out

    # Phase 1: every all-W8 array at the narrowest width, then the wider widths of the arrays
    # on its Pareto front (a wider X path changes cycles and BRAM only, not DSP or LUT)
    widths = tuple(sorted(space.datapath_bytes))
    narrow, wide = widths[:1], widths[1:]
    for v in space.vector:
        for r in space.rows:
            if r > spec.tokens:
                continue
            for g in space.groups:
                for c in space.cols:
                    pool.extend(evaluate(g, r, c, v, 0.0, "int4", narrow))
    if wide:
        arrays = {(c.groups, c.rows, c.cols, c.vector) for c in pareto_front(pool)}
        for g, r, c, v in sorted(arrays):
            pool.extend(evaluate(g, r, c, v, 0.0, "int4", wide))
    if space.w4_cols and m.sens:
        front = pareto_front(pool)
        # W4 columns beside a front array at its own datapath width
        bases = {(c.groups, c.rows, c.cols, c.vector, c.datapath_bytes) for c in front}
        for g, r, c8, v, width in sorted(bases):
            for c4 in space.w4_cols:
                # c4 W4 columns beside the base's c8 W8 columns (its DSPs unchanged)
                cols = c8 + c4
                share = c4 / cols
                if share > space.max_w4_share + 1e-9:
                    continue
                if column_split(cols, share) != (c8, c4):  # the engine's own rounding
                    continue
                for kind in space.w4_kinds:
                    pool.extend(evaluate(g, r, cols, v, share, kind, (width,)))
    return pool, evaluated


def _chain_of(lanes: tuple[int, int, int], vector: int, width: int) -> frozenset[str]:
    """The unit roles a candidate of these lanes (softmax, layernorm, gelu), array vector and
    datapath chains (:data:`vitaccel.compile.schedule.CHAIN_DEFAULT`: none, or every role
    its units can chain, :func:`vitaccel.compile.schedule.chain_candidates_of`). The
    explorer prices ``"paying"`` as ``"all"``: in the cycle model a chained pair is never
    slower than the two apart (its MATMUL's X comes at most ``drain - delay`` later, while
    the unit's stream and drain, which it hides, are longer), which
    tests/test_dse.py checks on the designs it prices."""
    return _chain_roles_of(scheduler.CHAIN_DEFAULT, lanes[0], lanes[1], vector, width)


def _chain_lanes_of(lanes: tuple[int, int, int], width: int) -> tuple[tuple[str, int], ...]:
    """``(kind, lanes)`` of a candidate's softmax and layernorm of fewer lanes than the
    datapath's ``width`` bytes (their beats packed into X beats when chained,
    :func:`cost.chain_ratio`); the pricing functions' key, () when every unit's lanes are the
    datapath's."""
    return tuple((kind, n) for kind, n in (("softmax", lanes[0]), ("layernorm", lanes[1]))
                 if WORD_BYTES < n < width)  # fmt: skip


@functools.lru_cache(maxsize=4096)  # (asked for every lane triple of every array)
def _chain_roles_of(mode: str, softmax_lanes: int, layernorm_lanes: int, vector: int,
                    width: int) -> frozenset[str]:  # fmt: skip
    if mode == "none":
        return frozenset()
    return scheduler.chain_candidates_of(softmax_lanes, layernorm_lanes, vector, width)


def _nl_key(m: _Model, g: int) -> int:
    return min(g, m.spec.heads) if g > 1 else 1


def _lane_options(m: _Model, budget, lanes_all, clock_mhz, widths=SearchSpace.datapath_bytes):
    """Per group count, residual fusion, datapath width and whether units can chain (array
    vector 16): (lanes, cycles, usage, clock) of the useful lane triples.

    Every triple (softmax, layernorm, gelu lanes) gets its cycles, its usage and the fastest
    clock the LUT-depth rule allows for it (with the engine's depth). A width takes the
    triples of at most ``width`` lanes each (``Design`` rejects more: a unit reads and writes
    ``lanes / 16`` scratchpad words a cycle); among them, triples beaten on cycles, LUT and
    clock by another are dropped.
    """

    units = ("softmax", "layernorm", "gelu")
    usage = {u: {n: res.nonlinear_resources(u, n) for n in lanes_all} for u in units}
    lut = RESOURCE_KINDS.index("lut")
    out: dict[tuple, list] = {}
    # a triple's usage and clock do not depend on the program (group count, fusion)
    triples = [
        (
            lanes,
            [
                sum(getattr(usage[u][n], k) for u, n in zip(units, lanes, strict=True))
                for k in RESOURCE_KINDS
            ],
            clock_mhz if clock_mhz is not None else m.clock_for(lanes),
        )
        for lanes in itertools.product(lanes_all, repeat=3)
    ]
    widest = np.array([max(lanes) for lanes, _, _ in triples])
    for g, fuse in itertools.product(
        sorted({_nl_key(m, g) for g in SearchSpace.groups} | {1}), (False, True)
    ):
        nl = m.nonlinear(g, fuse)
        opts = [
            (lanes, sum(nl[u][n] for u, n in zip(units, lanes, strict=True)), use, clock)
            for lanes, use, clock in triples
        ]
        # (cycles, LUT, -clock) of every triple: smaller is better on each; where units
        # chain (_chain_of), chaining ones too: a chained unit's cycles are mostly hidden
        keys = np.array([(o[1], o[2][lut], -o[3]) for o in opts], dtype=float)
        for width, chains in itertools.product(widths, (False, True)):
            # (chains: on arrays of vector 16, where units of ``width`` lanes chain)
            inside = np.flatnonzero(widest <= width)
            k = keys[inside]
            if chains and scheduler.CHAIN_DEFAULT != "none":
                # a chained unit's cycles are mostly hidden (_chain_of): chaining is a
                # criterion too, so no triple that chains is dropped for one that does not
                roles = [_chain_of(opts[i][0], WORD_BYTES, width) for i in inside]
                k = np.hstack([k, np.array([[-("attn.softmax" in ch), -("norm1" in ch)]
                                            for ch in roles]).reshape(len(inside), 2)])  # fmt: skip
            # Keep a triple unless another is no worse on all criteria and better on one.
            no_worse = (k[:, None, :] <= k[None, :, :]).all(axis=2)  # [p, o]: p <= o
            better = (k[:, None, :] < k[None, :, :]).any(axis=2)
            dominated = (no_worse & better).any(axis=0)
            out[(g, fuse, width, chains)] = [
                opts[i] for i, d in zip(inside, dominated, strict=True) if not d
            ]
    return out


# ---------------------------------------------------------------------------------------
# Selection, Pareto, binding
# ---------------------------------------------------------------------------------------


def _fits(c: Candidate, limits: dict[str, float], scale: dict[str, float] | None = None) -> bool:
    scale = scale or {}
    return all(c.usage[k] <= limits[k] * scale.get(k, 1.0) for k in RESOURCE_KINDS)


def _fit_mask(result: dict, scale: dict[str, float] | None = None):
    """Boolean mask over the pool: within the limits (one limit scaled by ``scale``)."""
    arrays = _arrays(result)
    limits = result["limits"]
    scale = scale or {}
    lim = np.array([limits[k] * scale.get(k, 1.0) for k in RESOURCE_KINDS])
    return (arrays["use"] <= lim).all(axis=1)


def _arrays(result: dict) -> dict:
    if "arrays" not in result:
        pool = result["pool"]
        kinds = operator.itemgetter(*RESOURCE_KINDS)  # (a tuple: more than one kind)
        result["arrays"] = {
            "fps": np.array([c.fps for c in pool], dtype=float),
            "use": np.array([kinds(c.usage) for c in pool], dtype=float).reshape(
                len(pool), len(RESOURCE_KINDS)
            ),
            "err": np.array([c.error for c in pool], dtype=float),
        }
    return result["arrays"]


def _cost(c: Candidate, limits) -> tuple:
    u = c.util(limits)
    return (round(max(u.values()), 3), round(sum(u.values()), 3), c.error, -c.fps)


def pareto_front(cands: list[Candidate]) -> list[Candidate]:
    """Non-dominated candidates: maximise FPS, minimise DSP, LUT and predicted error.

    Candidates in FPS order; an error-free candidate is checked against the error-free front
    with a Fenwick tree (DSP rank -> least LUT), one with error against the whole front.
    """
    n = len(cands)
    if n == 0:
        return []
    fps = np.fromiter(map(operator.attrgetter("fps"), cands), float, n)
    usage = [c.usage for c in cands]
    dsp = np.fromiter(map(operator.itemgetter("dsp48e2"), usage), float, n)
    lut = np.fromiter(map(operator.itemgetter("lut"), usage), float, n)
    err = np.fromiter(map(operator.attrgetter("error"), cands), float, n)
    order = np.lexsort((err, lut, dsp, -fps))
    values = np.unique(dsp)
    size = len(values)
    tree = [math.inf] * (size + 1)
    # the loop below on Python numbers (a numpy scalar per index costs more than the work)
    rank_of = (np.searchsorted(values, dsp) + 1).tolist()
    dsp_l, lut_l, err_l = dsp.tolist(), lut.tolist(), err.tolist()

    def covered(i: int, v: float) -> bool:
        """Some error-free front point of DSP rank <= i has at most ``v`` LUTs."""
        while i > 0:
            if tree[i] <= v:
                return True
            i -= i & -i
        return False

    def update(i: int, v: float) -> None:
        while i <= size:
            if v < tree[i]:
                tree[i] = v
            i += i & -i

    front: list[int] = []
    f_dsp = np.empty(n)
    f_lut = np.empty(n)
    f_err = np.empty(n)
    k = 0
    for i in order.tolist():
        rank, lut_i, err_i = rank_of[i], lut_l[i], err_l[i]
        if covered(rank, lut_i):
            continue
        if err_i > 0 and k:
            dominated = (
                (f_dsp[:k] <= dsp_l[i]) & (f_lut[:k] <= lut_i) & (f_err[:k] <= err_i + 1e-15)
            )
            if dominated.any():
                continue
        front.append(i)
        f_dsp[k], f_lut[k], f_err[k] = dsp_l[i], lut_i, err_i
        k += 1
        if err_i == 0:
            update(rank, lut_i)
    return [cands[i] for i in front]


# What lifting each limit means, as the answer states it (diagnose).
LIFTED = {
    "DSP": "twice the DSP48E2",
    "LUT": "twice the LUTs",
    "FF": "twice the FFs",
    "BRAM": "twice the BRAM36",
    "clock": "the board's fastest clock",
    "X load": "X loads hidden",
    "writer": "output writes hidden",
    "nonlinear": "nonlinear units hidden",
    "DDR": "DDR waits hidden",
}
# Named when no single limit buys BINDING_GAIN: only other array shapes would help.
SEARCH_SPACE = "array shape (search space)"


def diagnose(result: dict, select=None) -> dict:
    """What binds the best reachable design: every limit named on its own, with the best
    reachable FPS once that one limit is lifted.

    * ``DSP``, ``LUT``, ``FF``, ``BRAM``: that resource's budget doubled (the pool holds
      the candidates up to twice the limits);
    * ``clock``: every candidate at the board's fastest clock with its cycles unchanged
      (the LUT-depth rule lifted);
    * ``X load``, ``writer``, ``nonlinear``, ``DDR``: the best design with that cause's
      cycles removed, priced by cause on the scheduler's program
      (:func:`vitaccel.dse.causes.cause_totals`, the cycle model's own split).

    ``select`` (a boolean mask over the pool) restricts the candidates considered.

    Returns
    -------
    dict
        ``binding`` (the limit whose lifting gains most, if it gains more than
        :data:`BINDING_GAIN`; else :data:`SEARCH_SPACE`), ``best_fps``, ``lifted_fps``
        ({limit: FPS}), ``cycles_by_cause`` ({cause: share} of the best design) and
        ``best`` (that candidate, or None when nothing fits).
    """
    from vitaccel.dse.causes import STALLS, cause_totals

    arrays = _arrays(result)
    fps = arrays["fps"]
    pool = result["pool"]
    if select is None:
        select = np.ones(len(fps), dtype=bool)
    feasible = _fit_mask(result) & select
    best = pool[int(np.argmax(np.where(feasible, fps, -1.0)))] if feasible.any() else None
    best_fps = best.fps if best is not None else 0.0
    lifted = {}
    for k in RESOURCE_KINDS:
        mask = _fit_mask(result, {k: 2.0}) & select
        lifted[BINDING_LABELS[k]] = float(fps[mask].max()) if mask.any() else 0.0
    shares: dict[str, float] = {}
    if best is not None:
        fastest = max(result["budget"].pl_clocks_mhz)
        clocks = np.array([c.clock_mhz for c in pool], dtype=float)
        lifted["clock"] = float((fps * fastest / clocks)[feasible].max())
        spec = result["model"].spec
        design = to_design(best, spec.name, result["budget"].name, best.clock_mhz, spec)
        totals = cause_totals(design, budget=result["budget"])
        cycles = sum(totals.values())
        shares = {k: round(v / cycles, 4) for k, v in totals.items()}
        for cause in STALLS:
            lifted[cause] = best_fps * cycles / max(cycles - totals[cause], 1.0)
    lifted = {k: round(v, 2) for k, v in lifted.items()}
    top = max(lifted, key=lifted.get)
    if best is None:  # nothing fits: the resource that doubled admits the fastest design
        binding = max((BINDING_LABELS[k] for k in RESOURCE_KINDS), key=lambda k: lifted[k])
    elif lifted[top] - best_fps > BINDING_GAIN * best_fps:
        binding = top
    else:
        binding = SEARCH_SPACE
    return {
        "binding": binding,
        "best_fps": best_fps,
        "lifted_fps": lifted,
        "cycles_by_cause": shares,
        "best": best,
    }


def binding_of(result: dict, select=None) -> tuple[str, float]:
    """The limit whose lifting raises the best reachable FPS most, and that best FPS
    (:func:`diagnose`)."""
    d = diagnose(result, select)
    return d["binding"], d["best_fps"]


def binding_text(d: dict) -> str:
    """``binding: X load (X loads hidden: 329.1 FPS)``, the diagnosis in one phrase."""
    b = d["binding"]
    if b in LIFTED and b in d["lifted_fps"]:
        return f"binding: {b} ({LIFTED[b]}: {d['lifted_fps'][b]:.1f} FPS)"
    return f"binding: {b}"


# ---------------------------------------------------------------------------------------
# Why nothing fits
# ---------------------------------------------------------------------------------------

RESOURCE_LABELS = {"dsp48e2": "DSP48E2", "lut": "LUT", "ff": "FF", "bram36": "BRAM36"}
# The names binding_of gives the same limits.
BINDING_LABELS = {"dsp48e2": "DSP", "lut": "LUT", "ff": "FF", "bram36": "BRAM"}
NONLINEAR_UNITS = ("softmax", "layernorm", "gelu")


def usage_parts(
    spec, groups: int, rows: int, cols: int, vector: int, *, budget=None, max_util=0.85
) -> dict[str, res.Usage]:
    """What an all-W8 array with one weight port and one lane per nonlinear unit uses, by
    part, as :func:`search` adds it up (the BRAM of the engine split into its buffers; the
    scratchpad and X banks on URAM288 where ``budget``'s board has room for them)."""
    g, r, c, v = groups, rows, cols, vector
    buf = _buffers(spec, g, r, c, v)
    spm_kib = min(res.spm_kib_for(spec), SPM_KIB_MAX)
    spm_words = spm_kib * 1024 // SLOT_BYTES
    mem = {"spm": "bram", "x": "bram"}
    if budget is not None:
        mem = _memories(g, r, v, buf["x_words"], spm_words, budget, max_util)
    eng = res.engine_resources(g, r, c, v, 0.0, "int4", **buf, x_memory=mem["x"])
    # all-W8: every column W8
    bram = res.engine_bram36_parts(g, r, c, v, c, **buf, x_memory=mem["x"])
    x, w, out = bram["x"], bram["w"], bram["out"]
    nonlinear = res.Usage()
    for unit in NONLINEAR_UNITS:
        nonlinear = nonlinear + res.nonlinear_resources(unit, 1)
    return {
        "scratchpad": res.spm_usage(spm_words, mem["spm"]),
        "input (X) buffers": res.Usage(bram36=x, uram=eng.uram),
        "weight (W) buffers": res.Usage(bram36=w),
        "output buffer": res.Usage(bram36=out),
        "array": res.Usage(eng.dsp48e2, eng.lut, eng.ff, eng.bram36 - x - w - out, 0),
        "nonlinear units": nonlinear,
        "controller and DMA": res.shell_resources(g * c)[0] + res.weight_ports_resources(1),
    }


def _total(parts: dict[str, res.Usage]) -> dict[str, float]:
    return {k: sum(getattr(u, k) for u in parts.values()) for k in RESOURCE_KINDS}


_SHAPE_TOTALS: dict[tuple, list] = {}


def _shape_totals(spec, space: SearchSpace, budget=None, max_util=0.85) -> list:
    """Every one-group array shape of the space with its total usage (cached per model).

    One group only: every part grows with the groups (banks, W columns, output width,
    shell per column), while rows and vector trade X banks against bank depth and cols
    changes the output FIFO's depth, so those are all scanned.
    """
    key = (spec, space, budget, max_util)
    if key not in _SHAPE_TOTALS:
        g = min(space.groups)
        _SHAPE_TOTALS[key] = [
            ((g, r, c, v), _total(usage_parts(spec, g, r, c, v, budget=budget, max_util=max_util)))
            for v, r, c in itertools.product(space.vector, space.rows, space.cols)
            if r <= spec.tokens
        ]
    return _SHAPE_TOTALS[key]


def smallest_design(spec, budget, *, max_util: float = 0.85, space: SearchSpace = SearchSpace()):
    """The space's all-W8 array whose tightest resource is least used on ``budget`` at
    ``max_util``: ``((groups, rows, cols, vector), parts)`` (:func:`usage_parts`)."""
    limits = {k: getattr(budget, k) * max_util for k in RESOURCE_KINDS}
    best = None
    for (g, r, c, v), total in _shape_totals(spec, space, budget, max_util):
        util = [total[k] / limits[k] for k in RESOURCE_KINDS]
        key = (round(max(util), 6), round(sum(util), 6), g * r * c * v)
        if best is None or key < best[0]:
            best = (key, (g, r, c, v))
    shape = best[1]
    return shape, usage_parts(spec, *shape, budget=budget, max_util=max_util)


def _fits_board(spec, budget, max_util: float, space: SearchSpace) -> bool:
    _, parts = smallest_design(spec, budget, max_util=max_util, space=space)
    total = _total(parts)
    return all(total[k] <= getattr(budget, k) * max_util for k in RESOURCE_KINDS)


def explain_unfit(
    model: str,
    board: str,
    *,
    max_util: float = 0.85,
    space: SearchSpace = SearchSpace(),
    spill_tried: bool = False,
) -> dict:
    """Why no design of ``model`` fits ``board`` within ``max_util``, and what would fit.

    Every known board uses the same resource model (calibration.json), so "a larger board
    that fits" and "a smaller model" are checked, not guessed.

    Parameters
    ----------
    model, board : str
        A zoo model and a known board.
    max_util : float
        The share of each resource a design may use (``vitaccel dse --max-util``).
    space : SearchSpace
        The explorer's space; its smallest design is the one examined.
    spill_tried : bool
        The explorer tried smaller scratchpads with the residual stream spilled to DDR
        (:func:`explore`): the remedy says they do not fit either.

    Returns
    -------
    dict
        ``smallest_design`` (array, lanes, weight ports); ``resources``: per kind the
        ``needed``, ``available``, ``budget`` (available x max_util), ``short_by`` and the
        ``parts`` that add up to the need; ``short`` (kinds over budget); ``binding`` (the
        most over-used kind, named as :func:`binding_of` names it); ``uram`` (available,
        used); ``spm_kib_needed``; ``would_fit`` (``boards``, ``models``); ``remedies``;
        ``message``, the same in one line.
    """
    from vitaccel.boards import DEVICES, get_budget
    from vitaccel.models.specs import ZOO

    spec, budget = spec_of(model), get_budget(board)
    (g, r, c, v), parts = smallest_design(spec, budget, max_util=max_util, space=space)
    total = _total(parts)
    on_uram = {p: u.uram for p, u in parts.items() if u.uram}
    uram_used = sum(on_uram.values())
    resources = {}
    for k in RESOURCE_KINDS:
        limit = getattr(budget, k) * max_util
        resources[k] = {
            "needed": round(total[k], 1),
            "available": getattr(budget, k),
            "budget": round(limit, 1),
            "short_by": round(max(0.0, total[k] - limit), 1),
            "parts": {
                p: round(getattr(u, k), 1) for p, u in parts.items() if getattr(u, k) >= 0.05
            },
        }
    short = [k for k in RESOURCE_KINDS if total[k] > resources[k]["budget"]]
    worst = max(RESOURCE_KINDS, key=lambda k: total[k] / (getattr(budget, k) * max_util))
    spm_kib = res.spm_kib_for(spec)
    boards = [
        name
        for name in sorted(DEVICES)
        if name != budget.name and _fits_board(spec, get_budget(name), max_util, space)
    ]
    models = [
        name
        for name in sorted(ZOO, key=lambda n: (res.spm_kib_for(ZOO[n]), n))
        if name != spec.name and _fits_board(ZOO[name], budget, max_util, space)
    ]
    remedies = []
    if models:
        remedies.append(f"a smaller model ({', '.join(models)} fit on {budget.name})")
    if boards:
        remedies.append(f"a larger board ({', '.join(boards)} fit {spec.name})")
    if all(total[k] <= getattr(budget, k) for k in RESOURCE_KINDS):
        need = max(total[k] / getattr(budget, k) for k in RESOURCE_KINDS)
        remedies.append(f"--max-util {math.ceil(need * 100) / 100:g} (the smallest design fits)")
    memory = {"scratchpad", "input (X) buffers", "weight (W) buffers", "output buffer"}
    if "bram36" in short and set(short) <= {"bram36", "uram"} and not spill_tried:
        # the scratchpad and X banks already take the URAM the budget allows (_memories)
        remedies.append(
            "a smaller scratchpad with the residual stream spilled to DDR (vitaccel dse tries it)"
        )
    if spm_kib > SPM_KIB_MAX:
        remedies.append(
            f"the program needs {spm_kib} KiB of scratchpad, beyond the ISA's {SPM_KIB_MAX} KiB "
            "(it needs spilling to DDR on any board)"
        )

    def need_text(k: str) -> str:
        e = resources[k]
        top = sorted(((val, p) for p, val in e["parts"].items()), reverse=True)
        named = [f"{p} {val:.0f}" for val, p in top if val >= 0.05 * e["needed"]]
        if k == "bram36":  # name the buffers: they are what spilling and URAM would move
            named = [f"{p} {val:g}" for val, p in top if p in memory or val >= 1]
        return (
            f"{e['needed']:.0f} {RESOURCE_LABELS[k]} (board: {e['available']}, "
            f"{e['budget']:.0f} at {max_util:.0%}; {e['short_by']:.0f} short: {', '.join(named)})"
        )

    shape = f"{g}x{r}x{c}x{v} array, 1 lane per nonlinear unit"
    fitting = [k for k in RESOURCE_KINDS if k not in short]
    text = [
        f"infeasible: no {spec.name} design fits {budget.name} within {max_util:.0%}: "
        f"the smallest ({shape}) needs " + "; ".join(need_text(k) for k in short)
    ]
    if fitting:
        text.append(
            ", ".join(
                f"{RESOURCE_LABELS[k]} {resources[k]['needed']:.0f} of {resources[k]['budget']:.0f}"
                for k in fitting
            )
            + " fit"
        )
    text.append(
        (f"URAM {uram_used:.0f} of {budget.uram} ("
         + ", ".join(f"{p} {n:.0f}" for p, n in on_uram.items()) + ")" if uram_used
         else f"URAM unused ({budget.uram} on the board)")
        if budget.uram else "no URAM on the device"
    )  # fmt: skip
    if not boards:
        text.append(f"no other known board fits {spec.name} within {max_util:.0%}")
    if spill_tried:
        text.append("nor does a smaller scratchpad with the residual stream spilled to DDR")
    text.append("to fit: " + "; or ".join(remedies))
    return {
        "fits": False,
        "smallest_design": {
            "array": {"groups": g, "rows": r, "cols": c, "vector": v, "w4_share": 0.0},
            "nonlinear_lanes": [1, 1, 1],
            "weight_ports": 1,
        },
        "resources": resources,
        "short": short,
        "binding": BINDING_LABELS[worst],
        "uram": {"available": budget.uram, "used": uram_used},
        "spm_kib_needed": spm_kib,
        "spm_kib_isa_max": SPM_KIB_MAX,
        "would_fit": {"boards": boards, "models": models},
        "remedies": remedies,
        "message": "; ".join(text),
    }


def to_design(
    c: Candidate,
    model: str,
    board: str,
    clock_mhz: float,
    spec,
    *,
    max_util: float = 0.85,
    spm_kib: int | None = None,
    jobs=None,
) -> Design:
    """The design file of a candidate (buffer sizes as ``TopParams`` reads them back; the
    scratchpad's memory as :func:`res.spm_memory` picks it within ``max_util``; ``spm_kib``
    and ``jobs``: a smaller scratchpad's and its program's MATMULs, :attr:`_Model.jobs`)."""
    from vitaccel.boards import get_budget

    spm_kib = spm_kib or min(res.spm_kib_for(spec), SPM_KIB_MAX)
    buffers = _buffers(spec, c.groups, c.rows, c.cols, c.vector, c.datapath_bytes, jobs)
    mem = _memories(c.groups, c.rows, c.vector, buffers["x_words"],
                    spm_kib * 1024 // SLOT_BYTES, get_budget(board), max_util)  # fmt: skip
    layers = {name: LayerConfig(w4_ratio=r) for name, r in sorted(c.ratios.items())}
    return Design(
        name=f"{model}-{board}-dse",
        model=model,
        board=board,
        clock_mhz=clock_mhz,
        array=ArrayConfig(
            groups=c.groups,
            rows=c.rows,
            cols=c.cols,
            vector=c.vector,
            w4_share=c.w4_share,
            w4_kind=c.w4_kind,
        ),  # fmt: skip
        nonlinear=NonlinearConfig(
            softmax_lanes=c.lanes[0],
            layernorm_lanes=c.lanes[1],
            gelu_lanes=c.lanes[2],
            max_tokens=spec.tokens,
            max_channels=spec.embed_dim,
        ),  # fmt: skip
        layers=layers,
        spm_kib=spm_kib,
        spm_memory=mem["spm"],
        x_memory=mem["x"],
        weight_ports=c.weight_ports,
        datapath_bytes=c.datapath_bytes,
        **res.buffer_kib(spec, c.groups, c.rows, c.cols, c.vector, jobs),
    )


def _expected_cosine(logit: dict) -> float:
    return logit.get("cosine_to_float", logit.get("cosine_to_w8a8", 1.0))


def _fidelity(model: str, c: Candidate, max_drop: float) -> dict:
    """The chosen design's accuracy cost: top-1 agreement with W8A8 lost (predicted, and
    measured where the golden model ran the uniform ratios), and the logit-error figures."""
    base = {"metric": "top-1 agreement with W8A8 lost (points)", "max_drop": max_drop}
    base["predicted_error"] = round(c.error, 6)
    try:
        base["logit_error"] = sens.predict(model, c.ratios, c.w4_kind)
        base.update(sens.predict_drop(model, c.ratios, c.w4_kind))
    except sens.SensitivityError as e:
        base["method"] = str(e)
    base["w4_layers"] = len(c.ratios)
    return base


@_no_cyclic_gc()  # (and the Pareto front, the summary and the outputs: ~10^5 objects live)
def explore(
    model: str,
    board: str,
    fps: float,
    *,
    max_util: float = 0.85,
    out_dir: Path | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
    precision: str = "w8",
    space: SearchSpace = SearchSpace(),
) -> dict:
    """Choose the cheapest design reaching ``fps``; write design.json, pareto.json, pareto.png.

    ``precision``: ``"mixed"`` lets the explorer choose arrays with W4 columns (per-layer W4
    ratios within the error budget; the attention products stay on the W8 columns);
    ``"w8"`` (the default of this function, which ``vitaccel build`` calls: the accelerator
    top builds all-W8 arrays until the mixed whole-model path lands) keeps ``w4_share = 0``,
    while mixed candidates are still evaluated, appear on the Pareto front (flagged) and are
    reported when they would do better. ``vitaccel dse`` defaults to ``--precision mixed``.

    Raises :class:`InfeasibleError` (one-line message with the best reachable FPS and the
    binding limit) when no design within ``max_util`` of every resource reaches ``fps``.
    """
    t0 = time.monotonic()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if not fps > 0:
        raise ValueError(f"target FPS must be positive, not {fps!r}")
    if not 0 < max_util <= 1:
        raise ValueError(f"max_util must be in (0, 1], not {max_util!r}")
    if not 0 <= max_drop <= 100:
        raise ValueError(f"max_drop must be in [0, 100] points, not {max_drop!r}")

    def answer(result: dict):
        pool = result["pool"]
        mask = _fit_mask(result)
        select = precision_mask(pool, precision)
        feasible = [c for c, ok in zip(pool, mask, strict=True) if ok]
        meeting = [c for c, ok in zip(pool, mask & select, strict=True) if ok and c.fps >= fps]
        return mask, select, feasible, meeting, diagnose(result, select)

    result = search(model, board, max_util=max_util, max_drop=max_drop, space=space)
    mask, select, feasible, meeting, diagnosis = answer(result)
    spill_tried = not meeting and _spilling_may_help(result, mask & select, diagnosis, fps, space)
    if spill_tried:
        # a smaller scratchpad, the residual stream spilled to DDR: the largest that answers
        kibs = spill_kibs(result["model"].spec, result["model"].spm_kib)
        if not (mask & select).any():
            # a smaller scratchpad never takes more memory (nor larger X banks): when the
            # smallest does not fit, none does
            smallest = search(model, board, max_util=max_util, max_drop=max_drop, space=space,
                              spm_kib=kibs[-1])  # fmt: skip
            found = answer(smallest)
            if not (found[0] & found[1]).any():
                kibs = []
        for kib in kibs:
            spilled = search(model, board, max_util=max_util, max_drop=max_drop, space=space,
                             spm_kib=kib)  # fmt: skip
            found = answer(spilled)
            if found[3] or ((found[0] & found[1]).any() and not (mask & select).any()):
                # it answers, or at least fits where the whole scratchpad did not
                result, (mask, select, feasible, meeting, diagnosis) = spilled, found
            if meeting:
                break
    pool, limits = result["pool"], result["limits"]
    spec, budget = result["model"].spec, result["budget"]
    binding, best_fps = diagnosis["binding"], diagnosis["best_fps"]
    if not meeting:
        facts = {"model": spec.name, "board": budget.name, "target_fps": float(fps),
                 "max_util": max_util}  # fmt: skip
        if not (mask & select).any():
            # Nothing fits: "at most 0.0 FPS, binding: <first resource>" would say nothing.
            facts.update(explain_unfit(spec.name, budget.name, max_util=max_util,
                                       spill_tried=spill_tried))  # fmt: skip
            facts["best_reachable_fps"] = None
            raise InfeasibleError(facts["message"], 0.0, facts["binding"], facts)
        message = (
            f"infeasible: {model} on {board} reaches at most {best_fps:.1f} FPS "
            f"(target {fps:g}) within {max_util:.0%} of the board; {binding_text(diagnosis)}"
        )
        facts.update(fits=True, best_reachable_fps=round(best_fps, 2), binding=binding,
                     binding_detail=_binding_detail(diagnosis), message=message)  # fmt: skip
        raise InfeasibleError(message, best_fps, binding, facts)
    chosen = min(meeting, key=lambda c: _cost(c, limits))
    design = to_design(chosen, spec.name, budget.name, chosen.clock_mhz, spec, max_util=max_util,
                       spm_kib=result["model"].spm_kib, jobs=result["model"].jobs)  # fmt: skip
    front = pareto_front(feasible)
    summary = _summary(chosen, design, result, fps, diagnosis)
    summary["pareto_points"] = len(front)
    summary["warnings"] = _warnings(result, chosen, feasible, fps, limits, precision)
    summary["precision"] = precision
    summary["evaluated"] = result["evaluated"]
    summary["candidates"] = len(pool)
    fid = summary["fidelity"]
    design = design.model_copy(
        update={
            "prediction": Prediction(
                fps=summary["fps"],
                target_fps=float(fps),
                cycles=summary["cycles"],
                binding=binding,
                fidelity_metric=fid["metric"],
                predicted_error=fid["predicted_error"],
                expected_cosine=_expected_cosine(fid.get("logit_error") or {}),
            )
        }
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        summary.update(_write_outputs(out_dir, design, front, chosen, summary, budget))
    summary["query_seconds"] = round(time.monotonic() - t0, 3)
    return summary


def _spilling_may_help(result: dict, fits, diagnosis: dict, fps: float, space) -> bool:
    """Whether a smaller scratchpad (the residual stream spilled to DDR) may answer a query
    the whole scratchpad does not: nothing fits, but would without the scratchpad's BRAM36
    and URAM288; or the best design is bound by BRAM36 and twice the BRAM36 would reach
    ``fps``. Spilling never speeds a design up; it only frees memory for a larger array."""
    m = result["model"]
    if m.reduced or not spill_kibs(m.spec, m.spm_kib):
        return False
    if not fits.any():
        facts = explain_unfit(m.spec.name, result["budget"].name, max_util=result["max_util"],
                              space=space)  # fmt: skip
        # the scratchpad's BRAM36, or its URAM288 that the X banks could take instead
        return set(facts["short"]) <= {"bram36", "uram"}
    return diagnosis["binding"] == "BRAM" and diagnosis["lifted_fps"].get("BRAM", 0.0) >= fps


def _binding_detail(d: dict) -> dict:
    """The diagnosis as JSON fields (:func:`diagnose`): the best reachable design, its cycles
    by cause and the best FPS with each limit lifted."""
    b = d["best"]
    return {
        "best_design": None if b is None else _shape_text(b),
        "lifted_fps": d["lifted_fps"],
        "lifted": {k: LIFTED[k] for k in d["lifted_fps"]},
        "cycles_by_cause": d["cycles_by_cause"],
        "text": binding_text(d),
    }


def _shape_text(c: Candidate) -> str:
    w4 = f" w4 {c.w4_share:.2f} {c.w4_kind}" if c.w4_share else ""
    return (f"{c.groups}x{c.rows}x{c.cols}x{c.vector}{w4}, {c.weight_ports} port(s), "
            f"{c.datapath_bytes}-byte datapath @ {c.clock_mhz:g} MHz, "
            f"lanes {list(c.lanes)}")  # fmt: skip


def _summary(c: Candidate, design: Design, result: dict, target: float, diagnosis: dict) -> dict:
    budget = result["budget"]
    avail = {"dsp48e2": budget.dsp48e2, "lut": budget.lut, "ff": budget.ff, "bram36": budget.bram36}
    from vitaccel.dse.causes import cause_totals
    from vitaccel.dse.cost import estimate

    est = estimate(design, budget=budget)
    by_bound = est.by_bound()
    m = result["model"]
    spill_bytes = (
        m.spill_bytes(
            c.groups, residual_fusable(c.groups, c.cols, column_split(c.cols, c.w4_share)[1])
        )
        if m.spill
        else 0
    )
    causes = cause_totals(design, budget=budget)
    per_layer = {
        name: design.w4_ratio(name) for name in sorted(_weight_layers(result["model"].spec))
    }
    c8, c4 = column_split(c.cols, c.w4_share)
    words = clock_rule.word_groups(c.groups, c8, c.datapath_bytes // SLOT_BYTES)
    builders = spm_w_builders(c.weight_ports, c4)
    writer = (c.groups, c.cols, c8) if c.w4_share > 0 else None
    return {
        "model": design.model,
        "board": design.board,
        "fps": round(est.fps, 2),
        "target_fps": target,
        "clock_mhz": design.clock_mhz,
        "cycles": est.cycles,  # an image of a stream (past the resident constants LOAD)
        "first_image_cycles": est.first_image_cycles,  # beyond it, the first after a reset
        "latency_ms": round(est.latency_ms, 3),
        "design": None,
        "array": design.array.model_dump(),
        "nonlinear_lanes": list(c.lanes),
        "weight_ports": design.weight_ports,
        "datapath_bytes": design.datapath_bytes,
        "resources": {
            k: {
                "used": round(c.usage[k], 1),
                "available": avail[k],
                "util": round(c.usage[k] / avail[k], 4),
            }
            for k in RESOURCE_KINDS
        },
        # the scratchpad's and X banks' memory (res.design_memories) and the URAM they take
        "spm_memory": design.spm_memory,
        "x_memory": design.x_memory,
        # a scratchpad smaller than the program's need: the residual stream spills to DDR
        "spm_kib": design.spm_kib,
        "spm_kib_needed": m.spm_kib_needed,
        "spill_kib_per_image": round(spill_bytes / 1024, 1),
        "uram": {"used": c.usage["uram"], "available": budget.uram},
        "binding": diagnosis["binding"],
        "best_reachable_fps": round(diagnosis["best_fps"], 2),
        "binding_detail": _binding_detail(diagnosis),
        # the chosen design's cycles split by cause (dse.causes: X load, writer, ... apart)
        "cycles_by_cause": {k: int(round(v)) for k, v in causes.items()},
        # the cycle model's own accounting, as `vitaccel report design` shows it (the
        # search's quick tally counts loads and stores with the nonlinear units)
        "design_bound": max(by_bound, key=by_bound.get),
        "cycles_by_bound": by_bound,
        "linear_utilisation": round(est.linear_utilisation(), 4),
        "w4_ratio": per_layer,
        "fidelity": _fidelity(design.model, c, result["max_drop"]),
        "max_util": result["max_util"],
        "clock_rule": {
            # None without data, or for a word-path top of W builders no run measured (a
            # given clock lets the explorer keep it)
            "levels": result["model"].design_levels(
                c.lanes, mixed=writer, word_groups=words, w_builders=builders
            )
            if (not words or result["model"].word_top_known(builders))
            and (writer is None or result["model"].writer_known(*writer))
            else None,
            "max_levels_at_clock": clock_rule.MAX_LEVELS.get(design.clock_mhz),
        },
        "shell_resources": result["model"].shell_kind,
    }


def _warnings(result, chosen, feasible, target, limits, precision) -> list[str]:
    m = result["model"]
    out = []
    if m.spm_kib_needed > SPM_KIB_MAX and not m.spill:
        out.append(
            f"the compiled program needs {m.spm_kib_needed} KiB of scratchpad; the ISA addresses "
            f"{SPM_KIB_MAX} KiB (spm_kib is capped) and even the compact layout does not fit, so "
            "this model cannot be compiled yet (it needs activations spilled to DDR)"
        )
    if precision == "w8":
        w4 = [c for c in feasible if c.w4_share > 0 and c.fps >= target]
        if w4:
            best = min(w4, key=lambda c: _cost(c, limits))
            tight_w4 = max(best.util(limits).values())
            tight_w8 = max(chosen.util(limits).values())
            if tight_w4 < tight_w8 - 0.05:  # worth saying only if it frees a real share
                out.append(
                    f"a mixed W4/W8 array (w4_share {best.w4_share:.2f}, {best.w4_kind}) would reach "
                    f"the target with {tight_w4:.0%} of its tightest limit vs {tight_w8:.0%} "
                    "(--precision mixed)"
                )
    if m.shell_kind != "calibrated":
        out.append("top-level controller/DMA/SPM logic is a fixed estimate, not synthesised")
    return out


def _weight_layers(spec) -> list[str]:
    return [
        f"blocks.{i}.{n}"
        for i in range(spec.depth)
        for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ]


def _candidate_json(c: Candidate, chosen: Candidate) -> dict:
    return {
        "fps": round(c.fps, 2),
        "dsp48e2": round(c.usage["dsp48e2"]),
        "lut": round(c.usage["lut"]),
        "ff": round(c.usage["ff"]),
        "bram36": round(c.usage["bram36"], 1),
        "uram": round(c.usage["uram"], 1),  # URAM288: the scratchpad / X banks placed there
        "predicted_error": round(c.error, 8),
        "array": {"groups": c.groups, "rows": c.rows, "cols": c.cols, "vector": c.vector,
                  "w4_share": round(c.w4_share, 4), "w4_kind": c.w4_kind},
        "lanes": list(c.lanes),
        "weight_ports": c.weight_ports,
        "datapath_bytes": c.datapath_bytes,
        "w4_layers": len(c.ratios),
        "chosen": c is chosen,
    }  # fmt: skip


def _write_outputs(out_dir: Path, design, front, chosen, summary, budget) -> dict:
    from vitaccel.util import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    design_path = save_design(design, out_dir / "design.json")
    pts = [_candidate_json(c, chosen) for c in front]
    if chosen not in front:
        pts.append(_candidate_json(chosen, chosen))
    pareto = {
        "model": design.model,
        "board": design.board,
        "clock_mhz": design.clock_mhz,
        "axes": ["fps (max)", "dsp48e2 (min)", "lut (min)", "predicted_error (min)"],
        "points": pts,
    }
    pareto_path = atomic_write_text(out_dir / "pareto.json", json.dumps(pareto, indent=1) + "\n")
    plot_path = plot_pareto(pts, out_dir / "pareto.png", summary, budget)
    summary["design"] = str(design_path)
    return {"design": str(design_path), "pareto": str(pareto_path), "plot": str(plot_path)}


def plot_pareto(points: list[dict], path: Path, summary: dict, budget) -> Path:
    """FPS against DSP, LUT and predicted error; the chosen design and the target marked."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vitaccel.util import atomic_write_bytes

    fig = Figure(figsize=(12, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, key, label, avail in (
        (axes[0], "dsp48e2", "DSP48E2", budget.dsp48e2),
        (axes[1], "lut", "LUT", budget.lut),
        (axes[2], "predicted_error", "predicted added logit error", None),
    ):
        xs = [p[key] for p in points]
        ys = [p["fps"] for p in points]
        w4 = [p["array"]["w4_share"] > 0 for p in points]
        ax.scatter(
            [x for x, m in zip(xs, w4, strict=True) if not m],
            [y for y, m in zip(ys, w4, strict=True) if not m],
            s=8,
            c="tab:blue",
            label="all W8",
        )
        ax.scatter(
            [x for x, m in zip(xs, w4, strict=True) if m],
            [y for y, m in zip(ys, w4, strict=True) if m],
            s=8,
            c="tab:green",
            label="W4/W8",
        )
        ax.scatter([p[key] for p in points if p["chosen"]], [p["fps"] for p in points if p["chosen"]],
                   s=80, marker="*", c="tab:red", zorder=5, label="chosen")  # fmt: skip
        ax.axhline(summary["target_fps"], color="k", ls="--", lw=1, label="target")
        if avail:
            ax.axvline(avail * summary["max_util"], color="gray", ls=":", lw=1, label="max util")
        ax.set_xlabel(label)
        ax.set_ylabel("FPS")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{summary['model']} on {summary['board']} at {summary['clock_mhz']:g} MHz: "
        f"Pareto front (red = chosen, {summary['fps']:.1f} FPS)"
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(Path(path), buf.getvalue())
