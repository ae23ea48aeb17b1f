"""The GVSA matmul engine's timing: pipeline depths and the exact cycle model of one job.

Pure Python (no amaranth, no torch), so the RTL (:mod:`vitaccel.rtl.gvsa`,
:mod:`vitaccel.rtl.matmul`, :mod:`vitaccel.engine_host`) and the explorer
(:mod:`vitaccel.dse.cost` and :mod:`vitaccel.dse.search`, thousands of calls per query)
share one definition: the recursion :func:`matmul_cycles` and its per-step-count form
:class:`StepCycles` run the same step generator. docs/gvsa.md ("Cycle model") derives it;
the tests compare it with Verilator on every engine shape they simulate.
"""

from __future__ import annotations

import math
from functools import lru_cache
from types import MappingProxyType

from vitaccel.isa import WORD_BYTES  # the scratchpad word: 16 bytes a grant

__all__ = [
    "MAPPED_SETTLE",
    "REQUANT_STAGES",
    "SOFTMAX_WIDE_LANES",
    "softmax_max_stages",
    "column_split",
    "mapped_writer_cycles",
    "word_path_takes",
    "word_writes",
    "word_writer_segments",
    "word_writer_cycles",
    "word_writer_steps",
    "word_writer_end",
    "tree_stages",
    "pe_stages",
    "latencies",
    "full_rate_out_depth",
    "top_out_depth",
    "x_beat_words",
    "unit_chains",
    "x_load_cycles",
    "x_edge",
    "x_tile_ends",
    "first_issue",
    "first_step",
    "first_step_of_tiles",
    "matmul_cycles",
    "StepCycles",
]

# Requantiser: bias add, 2 multiply stages, coarse shift, fine shift, saturation test,
# round + clamp.
REQUANT_STAGES = 7

# E2Softmax (rtl.softmax): pass 1's group maximum is a compare-and-select tree reducing at
# most 4x a stage (P, B; and P0 before them above this many lanes: 64 -> 16 -> 4 -> 1, since
# 64 -> 4 in one stage held 12.0 logic levels).
SOFTMAX_WIDE_LANES = 16


def softmax_max_stages(lanes: int) -> int:
    """Pipeline stages of E2Softmax's pass-1 max tree (each one cycle of the unit's latency)."""
    return 3 if lanes > SOFTMAX_WIDE_LANES else 2


def column_split(cols: int, w4_share: float) -> tuple[int, int]:
    """(W8 columns, W4 columns) of a group; W8 columns come in DSP-sharing pairs."""
    if not isinstance(cols, int) or isinstance(cols, bool) or cols < 1:
        raise ValueError(f"cols must be a positive integer, not {cols!r}")
    if not 0.0 <= w4_share <= 1.0:
        raise ValueError(f"w4_share must be in [0, 1], not {w4_share!r}")
    cols_w4 = int(math.floor(w4_share * cols + 0.5))
    cols_w8 = cols - cols_w4
    if cols_w8 % 2:
        raise ValueError(
            f"w4_share={w4_share!r} leaves {cols_w8} W8 columns of cols={cols}; W8 columns "
            "share DSP48E2 slices in pairs, so their count must be even"
        )
    return cols_w8, cols_w4


def tree_stages(vector: int) -> int:
    """Registered reduction levels of a PE: groups of 4 per level until <= 2 partials remain.

    The last (<= 2) partial sums are added by the accumulator itself (a 3-operand add), so
    a PE has ``3 + tree_stages(vector)`` pipeline stages: 4 for vector <= 8.
    """
    n, stages = vector, 0
    while n > 2:
        n = -(-n // 4)
        stages += 1
    return max(1, stages)


def pe_stages(vector: int) -> int:
    """Pipeline stages of a PE: input register, product, reduction levels, accumulator."""
    return 3 + tree_stages(vector)


@lru_cache(maxsize=4096)  # the explorer asks for the same few arrays' ~10^5 times
def latencies(rows: int, units: int, vector: int) -> MappingProxyType:
    """Fixed pipeline latencies of the engine in cycles (docs/gvsa.md, "Cycle model"), a
    read-only mapping.

    ``first_out``: issue of a tile's last k-step -> its first output word in the FIFO;
    ``release``: issue of a step's last k-step -> its W half is free again. ``units`` is the
    number of systolic column units (W8 pairs + W4 columns).
    """
    # issue reg -> delay line (R-1 for the bottom row) -> memory read (1) -> PE stages
    # -> chain load (1) of unit u at +u; row 0 leaves the chain at once.
    chain = 1 + (rows - 1) + 1 + pe_stages(vector) + 1
    # +deskew to the last unit, requantiser, FIFO
    first_out = chain + (units - 1) + REQUANT_STAGES + 1
    # The last unit's chain emits row R-1 at chain + (U-1) + (R-1); the requantiser latches
    # its parameters on that cycle; one cycle of margin.
    release = chain + (units - 1) + (rows - 1) + 2
    return MappingProxyType({"first_out": first_out, "release": release})


def full_rate_out_depth(rows: int, units: int, vector: int) -> int:
    """Output FIFO depth at which output credits never throttle issue (sink at 1/cycle).

    A tile reserves ``rows`` words when it issues and gets them back as they leave, at most
    ``first_out + 2*rows`` cycles later; tiles issue every P >= rows cycles.
    """
    return rows * ((latencies(rows, units, vector)["first_out"] + 2 * rows) // rows + 2)


def top_out_depth(rows: int, cols: int, vector: int) -> int:
    """The accelerator top's output FIFO: full rate for its all-W8 array, at least 32."""
    return max(32, full_rate_out_depth(rows, cols // 2, vector))


def x_beat_words(vector: int, datapath_bytes: int = WORD_BYTES) -> int:
    """X words (k-steps of ``vector`` bytes) per beat of the accelerator's X stream.

    ``Design.datapath_bytes`` / 16: the scratchpad is in that many banks and the X builder
    reads as many consecutive words per grant, and the engine takes as many k-steps of a
    token per cycle (``datapath_bytes`` bytes a cycle at V = 16; 16 is one k-step a cycle,
    the accelerator before the datapath width existed, whatever V).
    """
    if not isinstance(vector, int) or isinstance(vector, bool) or vector < 1:
        raise ValueError(f"vector must be a positive integer, not {vector!r}")
    if datapath_bytes not in (16, 32, 64):
        raise ValueError(f"datapath_bytes must be 16, 32 or 64, not {datapath_bytes!r}")
    return datapath_bytes // WORD_BYTES


def unit_chains(lanes: int, vector: int, datapath_bytes: int) -> bool:
    """Whether a unit of ``lanes`` lanes can chain its rows into the next MATMUL's X
    (docs/isa.md, "Chains") on an accelerator of array vector ``vector`` and ``datapath_bytes``:
    its output beats fill the X beat (``vector == 16``, so the X beat is ``datapath_bytes``)
    a whole number of them to a beat (``datapath_bytes % lanes == 0``: the top packs
    ``datapath_bytes // lanes`` unit beats into one X beat, a row's last one flushing it), and
    its row writer is a wide one with its own scratchpad write port (``lanes > 16``), so the
    MATMUL's output writer never waits for it. The one rule the RTL (which ignores CHAIN
    elsewhere) and the compiler (which sets it only here) share."""
    return lanes > WORD_BYTES and vector == WORD_BYTES and datapath_bytes % lanes == 0


def x_load_cycles(tokens: int, ks: int, groups: int, *, heads: bool, x_keep: bool = False,
                  x_beat: int = 1) -> int:  # fmt: skip
    """Beats (cycles) of a job's X load: ``ceil(KS / x_beat)`` per token, for every group in
    heads mode (each has its own X), once in shared mode (broadcast); 0 with ``x_keep``."""
    if x_keep:
        return 0
    return (groups if heads else 1) * tokens * -(-ks // x_beat)


def x_edge(beats: float, x_stretch: tuple[tuple[float, ...], ...] | None = None) -> float:
    """Edge at which the X load has taken ``beats`` beats. Unstretched (``None``) a beat a
    cycle from edge 1: ``beats``. ``x_stretch``: (slope, offset) lines when the X stream
    shares the scratchpad's read port with W builders (``cost.spm_x_stretch``): the least
    of the lines at ``beats``, never before ``beats``; and (slope, offset, 1) *floors*: the
    beat no earlier than each of them (the X of a chained unit, written at its own pace,
    ``cost.chain_line``)."""
    if x_stretch is None:
        return beats
    edge = beats
    lines = [a * beats + b for a, b, *floor in x_stretch if not floor]
    if lines:
        edge = max(edge, min(lines))
    for a, b, *floor in x_stretch:
        if floor:
            edge = max(edge, a * beats + b)
    return edge


def x_tile_ends(tokens: int, ks: int, groups: int, rows: int, *, heads: bool, x_beat: int = 1,
                x_stretch: tuple[tuple[float, float], ...] | None = None) -> list[float]:  # fmt: skip
    """Edge of the X beat that completes each token tile's X (the last group's in heads mode).

    The X loader fills the banks token by token (heads mode: group 0's tokens, then group
    1's, ...); tile ``i`` is in once its last token's last beat is taken, at edge
    ``(G-1)*T*B + min(T, (i+1)*R)*B`` (``B = ceil(KS/x_beat)`` beats a token; the first
    term in heads mode only), counted from the command handshake as the X load is;
    ``x_stretch``: that beat's edge by :func:`x_edge`.
    """
    beats = -(-ks // x_beat)
    off = (groups - 1) * tokens * beats if heads else 0
    tiles = -(-tokens // rows)
    return [x_edge(off + min(tokens, (i + 1) * rows) * beats, x_stretch) for i in range(tiles)]


def first_step(
    x_load: int, w_load: float, ks: int, pad: int, x_ends: list[int]
) -> tuple[float, float]:
    """``(S, E)``: the edges of step 0's first and last k-step issue.

    Step 0 overlaps the X load (docs/gvsa.md, "X streamed into step 0"): tile ``i`` issues
    at ``max(E_{i-1} + pad + 1, min(XL + 1, max(b_i + 2, E_{i-1} + 2)))`` (tile 0:
    ``max(WL + 1, min(XL + 1, b_0 + 2))``), where ``b_i`` (``x_ends``,
    :func:`x_tile_ends`) is the edge of tile i's last X beat: the issue sees it through
    one register ("the tile's X is in", cleared for the cycle after a tile ends, while its
    X base advances), or through the loader's done flag once every beat is in (edge
    ``XL``; 0 with X_KEEP: every tile at once).
    """
    start = end = None
    for i, b in enumerate(x_ends):
        if end is None:
            f = start = max(w_load + 1, min(x_load + 1, b + 2))
        elif end >= x_load:
            # every X is in: each later tile issues pad + 1 after the last one ended
            return start, end + (len(x_ends) - i) * (pad + ks)
        else:
            f = max(end + pad + 1, min(x_load + 1, max(b + 2, end + 2)))
        end = f + ks - 1
    return start, end


def first_issue(x_load: float, w_load: float, ks: int, tokens: int, groups: int, rows: int,
                *, heads: bool, x_beat: int = 1,
                x_stretch: tuple[tuple[float, float], ...] | None = None) -> float:  # fmt: skip
    """Edge of a job's first k-step issue (:func:`first_step`'s ``S``): once W is in and
    the first tile's X (:func:`x_tile_ends`) or the whole X load is (``x_load``: the load's
    last edge, :func:`x_edge` of its beats)."""
    beats = -(-ks // x_beat)
    b0 = ((groups - 1) * tokens * beats if heads else 0) + min(tokens, rows) * beats
    return max(w_load + 1, min(x_load + 1, x_edge(b0, x_stretch) + 2))


def first_step_of_tiles(x_load: float, w_load: float, ks: int, pad: int, tokens: int,
                        groups: int, rows: int, *, heads: bool, x_beat: int = 1,
                        x_stretch: tuple[tuple[float, float], ...] | None = None,
                        ) -> tuple[float, float]:  # fmt: skip
    """:func:`first_step` on :func:`x_tile_ends`' tiles, without iterating over them (the
    explorer prices ~10^5 jobs): while X is still loading, a middle tile issues at
    ``max(E + max(pad, 1) + 1, b + 2)`` (the load's clamp only bites on the last tile), a
    max-plus recurrence over tile edges ``b_i = b_0 + i * db`` whose closed form is
    ``E_j = max(E_0 + j*c, b_j + KS + 1 if db >= c else b_1 + KS + 1 + (j-1)*c)``,
    ``c = max(pad, 1) + KS``; once a tile ends after the whole load, every later tile adds
    ``pad + KS``. Equal to :func:`first_step` (a test checks it over a sweep of shapes).
    A stretched X load (``x_stretch``, :func:`x_edge`: tile edges no longer a line) takes
    :func:`first_step` over the tiles (only W_SPM jobs on several W builders have one)."""
    if x_stretch is not None:
        ends = x_tile_ends(tokens, ks, groups, rows, heads=heads, x_beat=x_beat,
                           x_stretch=x_stretch)  # fmt: skip
        return first_step(x_load, w_load, ks, pad, ends)
    beats = -(-ks // x_beat)
    off = (groups - 1) * tokens * beats if heads else 0
    n = -(-tokens // rows)
    b0, db = off + min(tokens, rows) * beats, rows * beats
    start = first_issue(x_load, w_load, ks, tokens, groups, rows, heads=heads, x_beat=x_beat)
    end = start + ks - 1
    if n == 1:
        return start, end
    if end >= x_load:  # every X is in: each tile issues pad + 1 after the last one ended
        return start, end + (n - 1) * (pad + ks)
    m, c = n - 2, max(pad, 1) + ks
    # E_j = max(end + j*c, u + j*v) for 1 <= j <= m
    u, v = (b0 + ks + 1, db) if db >= c else (b0 + db + ks + 1 - c, c)
    last = max(end + m * c, u + m * v) if m else end
    if last >= x_load:
        # X is in within the middle tiles: from the first tile that ends after the load (E
        # increases with j: a binary search), each tile issues pad + 1 after the last one
        lo, hi = 0, m
        while lo < hi:
            mid = (lo + hi) // 2
            e_mid = max(end + mid * c, u + mid * v) if mid else end
            lo, hi = (lo, mid) if e_mid >= x_load else (mid + 1, hi)
        e_lo = max(end + lo * c, u + lo * v) if lo else end
        return start, e_lo + (n - 1 - lo) * (pad + ks)
    b = off + tokens * beats
    f = max(last + pad + 1, min(x_load + 1, max(b + 2, last + 2)))
    return start, f + ks - 1


@lru_cache(maxsize=65536)  # the explorer asks for the same jobs on many arrays
def _job(tokens, k, groups, rows, cols, vector, units, heads, w_word_cycles, x_keep, x_beat,
         w_lag=0, x_stretch=None):  # fmt: skip
    """The constants of one job's recursion (see :func:`matmul_cycles`)."""
    ks = -(-k // vector)
    tiles = -(-tokens // rows)
    pad = max(0, rows - ks)
    period = ks + pad
    lat = latencies(rows, units, vector)
    if x_keep:
        x_stretch = None  # no X load to share the port with
    x_load = x_edge(
        x_load_cycles(tokens, ks, groups, heads=heads, x_keep=x_keep, x_beat=x_beat), x_stretch
    )
    w_load = round(groups * cols * (ks + 1) * w_word_cycles, 9)  # 1/ports: exact
    span = (tiles - 1) * period + ks - 1
    tail = lat["first_out"] + 1 + (tokens - 1) % rows
    loaded0 = w_lag + w_load  # Lend_0: W's first step in
    end0 = first_step_of_tiles(x_load, loaded0, ks, pad, tokens, groups, rows, heads=heads,
                               x_beat=x_beat, x_stretch=x_stretch)[1]  # fmt: skip
    return end0, w_load, loaded0, pad, span, lat["release"], tail


def _steps(end0, w_load, loaded0, pad, span, release):
    """The recursion of :func:`matmul_cycles`: yields ``(E_s, Lend_s)`` for s = 0, 1, ..."""
    loaded = loaded0
    ends = [end0]
    yield ends[0], loaded
    s = 1
    while True:
        free = ends[s - 2] + release if s >= 2 else 0
        loaded = max(loaded, free) + w_load
        ends.append(max(ends[s - 1] + pad + 1, loaded + 1) + span)
        yield ends[s], loaded
        s += 1


@lru_cache(maxsize=65536)
def matmul_cycles(
    tokens: int,
    k: int,
    nsteps: int,
    groups: int,
    rows: int,
    cols: int,
    vector: int,
    units: int,
    *,
    heads: bool = False,
    w_word_cycles: float = 1.0,
    x_keep: bool = False,
    x_beat: int = 1,
    w_lag: int = 0,
    x_stretch: tuple[tuple[float, float], ...] | None = None,
) -> int:
    """Cycles of one job, command handshake to last output word, when no stream stalls.

    Exact for the RTL. Edges are counted from the command handshake; the X and W streams
    deliver one word per cycle from edge 1 (``w_word_cycles`` > 1 stretches every W load, as
    when the DDR port delivers less than one stream word per cycle), the W stream from edge
    ``1 + w_lag`` (in the accelerator a DDR W stream's first word reaches the engine
    ``dse.cost.LATENCIES["w_ddr_lag"]`` cycles after the X stream's first beat):

    * W step s is loaded at edge ``Lend_s``: ``Lend_0 = w_lag + WL``, ``Lend_1 = Lend_0 + WL``,
      ``Lend_s = max(Lend_{s-1}, E_{s-2} + release) + WL`` (a half is reloaded once the
      step that used it two steps earlier has drained),
    * step s >= 1 issues its first k-step at ``S_s = max(E_{s-1} + pad + 1, Lend_s + 1)``
      and its last at ``E_s = S_s + (tiles-1) P + KS - 1``; step 0 overlaps the X load,
      each tile issuing once its own X is in (``E_0``: :func:`first_step`),
      with ``KS = ceil(K/V)``, ``tiles = ceil(T/R)``, ``P = max(KS, R)``, ``pad = P - KS``,
      ``XL = Tx*ceil(KS/x_beat)`` (``Tx = T`` shared, ``G*T`` heads; ``x_beat`` k-steps of
      a token per X beat, :func:`x_beat_words` in the accelerator; 0 with ``x_keep``: the
      X of the previous job stays in the banks) and ``WL = G*C*(KS+1)``,
    * the last output word is taken at ``E_last + first_out + 1 + (T - 1) mod R``.

    ``x_stretch``: the X stream slower than a beat a cycle at first (:func:`x_edge`: it
    shares the scratchpad's read port with W builders); every X edge above is taken
    through it.
    """
    end0, w_load, loaded0, pad, span, release, tail = _job(
        tokens, k, groups, rows, cols, vector, units, heads, w_word_cycles, x_keep, x_beat,
        w_lag, x_stretch,
    )  # fmt: skip
    for s, (end, _) in enumerate(_steps(end0, w_load, loaded0, pad, span, release)):
        if s == nsteps - 1:
            return int(math.ceil(end + tail))
    raise AssertionError("unreachable")  # pragma: no cover - _steps never ends


class StepCycles:
    """:func:`matmul_cycles` of one job shape for every step count 1..n (``at(nsteps)``).

    The recursion settles into a periodic steady state after a few steps; once the state
    (the differences between the last end, the one before and the last load) repeats, the
    rest is extrapolated exactly instead of iterated. The explorer prices every W4 ratio of
    a layer (each a step count) from one of these.
    """

    __slots__ = ("ends", "periodic", "tail", "n")

    def __init__(self, tokens, k, nsteps, groups, rows, cols, vector, units, *,
                 heads=False, w_word_cycles=1.0, x_keep=False, x_beat=1, w_lag=0,
                 x_stretch=None):  # fmt: skip
        end0, w_load, loaded0, pad, span, release, self.tail = _job(
            tokens, k, groups, rows, cols, vector, units, heads, w_word_cycles, x_keep, x_beat,
            w_lag, x_stretch,
        )  # fmt: skip
        self.n, self.ends, self.periodic = nsteps, [], None
        ends, seen = self.ends, {}
        for s, (end, loaded) in enumerate(_steps(end0, w_load, loaded0, pad, span, release)):
            if s >= nsteps:
                break
            ends.append(end)
            if s >= 2:
                state = (ends[s] - ends[s - 1], ends[s - 1] - ends[s - 2], loaded - ends[s])
                if state in seen:
                    incs = [ends[i] - ends[i - 1] for i in range(seen[state] + 1, s + 1)]
                    self.periodic = (s, incs, sum(incs))
                    break
                seen[state] = s

    def __len__(self) -> int:
        return self.n

    def at(self, nsteps: int) -> int:
        i = nsteps - 1
        if i < len(self.ends):
            e = self.ends[i]
        else:
            s, incs, full = self.periodic
            q, rem = divmod(i - s, len(incs))
            e = self.ends[s] + q * full + sum(incs[:rem])
        return int(math.ceil(e + self.tail))

    @property
    def last(self) -> int:
        return self.at(self.n)


# Cycles MappedOutWriter settles after a step's first token when more work follows (a later
# token, or OUT_T's flush): the run links from the entries, the per-position run table from
# the links, then position 0's run into the current-run registers.
MAPPED_SETTLE = 6


def mapped_writer_cycles(channel, tokens: int, *, nheads: int = 0, transposed: bool = False) -> int:
    """Cycles the mixed array's output writer (``MappedOutWriter``) takes (is not stalled)
    for a job of ``tokens`` tokens whose column plan is ``channel`` (``(steps, groups,
    cols)``, -1 for an idle column; ``nheads`` > 0: heads mode, groups >= nheads write
    nothing).

    A step's first token takes every column, one a cycle, and puts each writing column at
    its *position*: in shared mode the channel's offset in the step's window
    (``plan_columns`` gives each step the channels after the previous step's), in heads
    mode the column itself. The positions up to the last writing one (at least one) are
    the step's *span*. Row-major, every later token goes a run a cycle over the span: a
    position whose channel is the previous one's plus one, within the same 16-channel SPM
    word, joins its run; consecutive silent positions make one run; a run holds at most 16
    positions; in heads mode runs stay within a group. OUT_T buffers every later token in
    one cycle and, per chunk of 16 tokens (the first token's included), writes each
    position of the span as one run of the chunk's tokens, a position a cycle. A first token
    followed by more work (a later token, or OUT_T's flush) is followed by
    :data:`MAPPED_SETTLE` cycles, in which the writer registers the step's run structure.
    """
    import numpy as np

    ch = np.array(channel, dtype=np.int64)
    steps, groups, cols = ch.shape
    lanes = groups * cols
    chunks = -(-tokens // 16)
    settle = MAPPED_SETTLE * int(transposed or tokens > 1)  # per step
    if not nheads:
        # shared mode: positions 0 .. w-1 hold the window's channels lo .. lo+w-1, so a
        # row-major token's runs are the SPM words the window touches
        flat = ch.reshape(steps, lanes)
        live = flat >= 0
        width = live.sum(axis=1)
        lo = np.cumsum(width) - width
        low = np.where(live, flat, np.iinfo(np.int64).max).min(axis=1)
        windows = (width == 0) | ((low == lo) & (flat.max(axis=1) == lo + width - 1))
        if not windows.all():
            s = int(np.flatnonzero(~windows)[0])
            raise ValueError(
                f"step {s} computes channels {sorted(flat[s][live[s]].tolist())}: not the "
                f"window of {int(width[s])} channels from {int(lo[s])} (engine_host.plan_columns)"
            )
        if transposed:
            per_step = tokens - 1 + chunks * np.maximum(width, 1)
        else:
            words = (lo + width - 1) // 16 - lo // 16 + 1
            per_step = (tokens - 1) * np.where(width > 0, words, 1)
        return int(steps * (lanes + settle) + per_step.sum())
    ch[:, nheads:, :] = -1
    total = 0
    for s in range(steps):
        order = ch[s].reshape(-1)  # heads mode: the positions are the columns
        live = np.flatnonzero(order >= 0)
        end = int(live[-1]) + 1 if live.size else 1
        total += lanes + settle
        if transposed:
            total += tokens - 1 + chunks * end
            continue
        silent = order < 0
        link = (silent[1:] & silent[:-1]) | (
            ~silent[1:] & ~silent[:-1] & (order[1:] == order[:-1] + 1) & (order[:-1] % 16 != 15)
        )
        link[cols - 1 :: cols] = False  # another head's rows
        runs, j = 0, 0
        while j < end:
            span = 1
            while span < 16 and j + span < lanes and link[j + span - 1]:
                span += 1
            runs += 1
            j += span
        total += (tokens - 1) * runs
    return total


def word_writes(cols: int, banks: int) -> bool:
    """Whether an all-W8 array's output writer (``MatmulOutWriter``) has its bank-parallel
    word path: a scratchpad of several banks (``datapath_bytes`` > 16) and groups of whole
    16-byte words (``cols`` a multiple of 16), so every piece of an output word is one
    aligned SPM word."""
    return banks > 1 and cols % WORD_BYTES == 0


def word_path_takes(cols: int, banks: int, *, transposed: bool, y_stride: int,
                    runs: bool) -> bool:  # fmt: skip
    """Whether a job's outputs take the word path (:func:`word_writes`): a row-major job
    unless a fused residual add takes the runs (``runs``), an OUT_T job when its Y stride
    is odd (its rows then fall in different banks, ``banks`` of them a cycle)."""
    if not word_writes(cols, banks) or runs:
        return False
    return not transposed or y_stride % 2 == 1


@lru_cache(maxsize=1024)
def word_writer_segments(groups: int, cols: int, banks: int, *, heads: bool,
                         head_step: int = 0) -> tuple[tuple[int, ...], ...]:  # fmt: skip
    """How the word path writes one engine word: its pieces (16 channels each, piece
    ``p = g * cols/16 + j``: group g's word j) in segments, one segment a cycle.

    Piece p goes to word ``a0 + off_p`` with ``off_p = p`` in shared mode (the word's
    channels are consecutive) and ``g * head_step + j`` in heads mode (head g's row), so its
    bank is ``(a0 + off_p) mod banks``. Pieces are taken in order; a segment ends before the
    first piece whose bank one of its pieces already has (so a segment writes each bank at
    most once, and the segments are the same for every word of a job: only ``head_step mod
    banks`` matters). Returns the segments as tuples of piece indices."""
    per = cols // WORD_BYTES
    segs: list[list[int]] = [[]]
    used: set[int] = set()
    for p in range(groups * per):
        g, j = divmod(p, per)
        bank = (g * head_step + j) % banks if heads else p % banks
        if bank in used:
            segs.append([])
            used = set()
        segs[-1].append(p)
        used.add(bank)
    return tuple(tuple(s) for s in segs)


def word_writer_cycles(tokens: int, n: int, groups: int, cols: int, banks: int, *,
                       heads: bool, nheads: int = 1, head_step: int = 0,
                       transposed: bool = False) -> int:  # fmt: skip
    """Cycles the word path takes for a job's outputs. Row-major: per output step and
    token, one cycle per segment (:func:`word_writer_segments`) up to the last one holding
    a piece that writes (channel < ``n``; heads mode: group < ``nheads``). OUT_T
    (``transposed``, odd Y stride): per step, a cycle per token gathered, and per chunk of
    16 tokens one cycle per segment of ``banks`` lanes up to the last one holding a lane
    that writes (a lane is one channel's 16 tokens, one SPM word)."""
    cm = cols if heads else groups * cols
    if transposed:
        chunks = -(-tokens // WORD_BYTES)
        total = 0
        for start in range(0, n, cm):
            width = min(cm, n - start)
            # heads mode: every lane of heads 0 .. nheads-2, then head nheads-1's first ones
            segs = -(-width // banks) + ((nheads - 1) * (cols // banks) if heads else 0)
            total += tokens + chunks * segs
        return total
    return tokens * sum(word_writer_steps(n, groups, cols, banks, heads=heads, nheads=nheads,
                                          head_step=head_step))  # fmt: skip


@lru_cache(maxsize=4096)
def word_writer_steps(n: int, groups: int, cols: int, banks: int, *, heads: bool,
                      nheads: int = 1, head_step: int = 0) -> tuple[int, ...]:  # fmt: skip
    """The row-major word path's cycles per output word, step by step: one cycle per
    segment (:func:`word_writer_segments`) up to the last one holding a piece that writes
    (channel < ``n``; heads mode: group < ``nheads``)."""
    per = cols // WORD_BYTES
    cm = cols if heads else groups * cols
    segs = word_writer_segments(groups, cols, banks, heads=heads,
                                head_step=head_step % banks)  # fmt: skip

    def writes(p: int, left: int) -> bool:  # piece p writes, ``left`` channels from the step's
        g, j = divmod(p, per)
        if heads:
            return g < nheads and WORD_BYTES * j < left
        return WORD_BYTES * p < left

    return tuple(
        1 + max(k for k, seg in enumerate(segs) if any(writes(p, n - start) for p in seg))
        for start in range(0, n, cm)
    )


def word_writer_end(tokens: int, k: int, groups: int, rows: int, cols: int, vector: int,
                    units: int, work: tuple[int, ...], *, heads: bool = False,
                    w_word_cycles: float = 1.0, x_keep: bool = False, x_beat: int = 1,
                    w_lag: int = 0,
                    x_stretch: tuple[tuple[float, float], ...] | None = None) -> float:  # fmt: skip
    """Edge of the word path's last write when the engine's steps (:func:`matmul_cycles`'
    recursion) hand it their words as they come: ``work[s]`` cycles per word of step s
    (:func:`word_writer_steps`), the writer taking the words in order, each once it is out
    of the FIFO and the one before is written. A step's tile i puts its ``R`` words out a
    cycle apart from ``S + i*P + KS - 1 + first_out``, so the step's last write is at the
    latest of: the previous step's last write + ``T * work``; the step's first word +
    ``T * work`` (the writer slower than the tiles, ``R * work > P``); the last tile's first
    word + its words' work (with 1 cycle a word: :func:`matmul_cycles`' end). The writer
    that lags its step (e.g. a heads job whose heads' rows share a bank, a segment each)
    finishes that much after the engine: the tail :func:`matmul_cycles` does not count."""
    if x_keep:
        x_stretch = None
    end0, w_load, loaded0, pad, span, release, _ = _job(
        tokens, k, groups, rows, cols, vector, units, heads, w_word_cycles, x_keep, x_beat,
        w_lag, x_stretch,
    )  # fmt: skip
    ks = -(-k // vector)
    out = latencies(rows, units, vector)["first_out"]
    last_words = tokens - (-(-tokens // rows) - 1) * rows
    x_load = x_edge(
        x_load_cycles(tokens, ks, groups, heads=heads, x_keep=x_keep, x_beat=x_beat), x_stretch
    )
    start0 = first_issue(x_load, loaded0, ks, tokens, groups, rows, heads=heads,
                         x_beat=x_beat, x_stretch=x_stretch)  # fmt: skip
    done = -math.inf
    steps = _steps(end0, w_load, loaded0, pad, span, release)  # (endless)
    for s, w in enumerate(work):
        end = next(steps)[0]
        first = (start0 if s == 0 else end - span) + ks - 1 + out
        done = max(done + tokens * w, first + tokens * w, end + out + last_words * w)
    return done
