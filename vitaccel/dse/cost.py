"""Cycle model: cycles per instruction of the compiled program, from the controller's own tiling.

Pure Python (no amaranth, no torch): the explorer calls it thousands of times per query.

What it models (docs/gvsa.md, docs/isa.md):

* **MATMUL** on the GVSA: the recursion of docs/gvsa.md ("Cycle model"), step by step:
  ``KS = ceil(K/V)`` k-steps, ``tiles = ceil(T/R)`` token tiles of period
  ``P = max(KS, R)``, X load ``Tx*KS`` words (``Tx = T`` shared, ``G*T`` heads), W load
  ``G*C*(KS+1)`` words per output step, double-buffered so step ``s+1`` loads while step
  ``s`` computes, step 0 streaming behind the X load (a tile issues once its own X is in,
  :func:`vitaccel.engine_timing.first_step`), ``nsteps = max(ceil(N8/(G*C8)), ceil(N/(G*C)))`` (``N8`` rows that must
  run on W8 lanes; every activation-as-weight row in heads mode). W words of a linear
  layer come from DDR, each in its own 16-byte slot, through one 128-bit HP port: the word
  rate is ``min(1, port bytes per cycle / 16)`` (the DDR roofline per board).
* **SOFTMAX / LAYERNORM / GELU / RESADD**: rows stream through the unit at ``lanes`` elements
  per cycle, back to back; plus a fixed latency per instruction.
* **LOAD / STORE**: 16-byte words through the HP port.
* Instructions run one after another (docs/isa.md "Execution"): no overlap between
  instructions, except a chained SOFTMAX / LAYERNORM and the MATMUL after it, which run
  together, the MATMUL's X arriving as the unit writes it (:func:`priced_program`,
  :func:`chain_line`); inside a MATMUL the W stream overlaps compute and the X load step 0's.

The fixed latencies (``L_rel``, ``L_out``, ``c0``, unit latencies, instruction overhead) are
constants: the engine's from :mod:`vitaccel.engine_timing` (shared with the RTL), the
instruction overheads in :data:`LATENCIES`, measured on the top and checked by
``vitaccel.verify.validate`` against Verilator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from vitaccel import engine_timing, isa
from vitaccel.compile.schedule import kind_of, resident_prologue, schedule, spill_traffic
from vitaccel.design import ArrayConfig, Design, w_word_bits
from vitaccel.engine_timing import (
    first_issue,
    latencies,
    matmul_cycles,
    softmax_max_stages,
    word_path_takes,
    word_writer_cycles,
    word_writer_end,
    word_writer_steps,
    word_writes,
    x_beat_words,
    x_edge,
    x_load_cycles,
)
from vitaccel.isa import WORD_BYTES, Instr, MatmulFlags, Op

__all__ = [
    "LATENCIES",
    "SLOT_BYTES",
    "LayerCost",
    "Estimate",
    "geometry",
    "matmul_cycles",
    "instr_cycles",
    "fused_of",
    "stream_bound",
    "job_nsteps",
    "latencies",
    "nonlinear_cycles",
    "unit_phases",
    "chain_line",
    "chain_ratio",
    "chain_delay",
    "chained_unit_cycles",
    "program_cycles",
    "priced_program",
    "lane_tree_stages",
    "unit_lanes",
    "fused_cycles",
    "first_out_edge",
    "port_bytes_per_cycle",
    "weight_word_cycles",
    "w_lag",
    "estimate",
]

# DDR slot of one W stream word: an SPM word / LOAD-STORE beat.
SLOT_BYTES = WORD_BYTES

# Fixed overheads in cycles, measured on the accelerator top in Verilator (one-instruction
# micro-programs, `vitaccel.verify.validate.micro_cycles`; cocotbext-axi AxiRam as the DDR, which
# answers a read in a few cycles; a board's DDR adds its latency to every DMA request).
LATENCIES = {
    # Re-measured (validate.micro_cycles, three designs incl. 2 groups x 2 weight ports) after
    # the 250 MHz re-pipelining: PREDECODE, the registered WAIT exit and the skid buffers on
    # the command and data streams made the per-instruction overhead 14 (was 10).
    "instr": 14,  # fetch (2 AXI beats) + predecode + decode + the idle check + next
    # Unit pipeline drain after the last input beat, less what the reader/writer overlap
    # (docs/nonlinear.md "Throughput and latency"): E2Softmax one row's beats + 16 in the
    # unit (its pass-1 sum tree over two stages for 300 MHz: one more; its pass-2 output over
    # two stages, #17: one more; above 16 lanes its max tree over three stages, one more:
    # softmax_max_stages), AILayerNorm two rows' beats + 33 (+2 more at 8-16 lanes),
    # GELU 1.
    "softmax": 8,
    "layernorm": 32,
    # AILayerNorm: per stage of its two lane sums beyond the first (lane_tree_stages: 8-16
    # lanes one more, 32-64 two more), one cycle each
    "layernorm_wide": 2,
    "gelu": 0,
    "residual": 7,
    "unit_io": 8,  # scratchpad row reader + row writer pipeline of a unit instruction
    # the same for a unit of more than 16 lanes, whose wide row writer writes the scratchpad
    # itself (one register, not the byte-run writer's two stages); measured with
    # validate.micro_cycles on a 32-byte, 32-lane top
    "unit_io_wide": 6,
    "load": 5,  # DMA request to first LOAD/STORE word
    # A MATMUL with a fused output, beyond its table / multiplier load (PARAMS, one GELU
    # entry or one word of 4 channels' multipliers a cycle) and the plain MATMUL: the
    # parameter phase's own states and, for the residual add, the A read and the residual
    # pipeline behind the last output run.
    "fused_gelu": 7,
    "fused_residual": 19,
    # A MATMUL beyond `instr`, MM_SETUP's loop (`top_matmul_extra`) and the job itself
    # (`matmul_cycles`, the writer bound): MM_SETUP's registered verdict, the skid buffers
    # on the X, W and output streams; heads-mode jobs also the X and W builders' command
    # turnarounds per group (measured 19-27 at T = 64-128 on 2 groups: 12 fits).
    "matmul_ddr": 6,
    "matmul_spm": 6,
    "matmul_heads": 12,
    # A DDR W stream's first word reaches the engine this many cycles after the X stream's
    # first beat (the engine's W_0 arrives at edge w_ddr_lag + WL, engine_timing.matmul_cycles'
    # w_lag): from the same ISSUE edge the W path is the DMA's request (3 edges to AR), the
    # DDR's read latency, the DMA's read stages and the W skid (4), the X path the X
    # builder's command, scratchpad read and row reader (7); with cocotbext-axi's AxiRam as
    # the DDR, 2 more for W (a board's DDR adds its latency). It shows whenever W bounds
    # step 0: an X_KEEP job (no X load), or step 0 streamed behind a short X load (32-byte
    # datapath: 2 k-steps a beat).
    "w_ddr_lag": 2,
}


class CostError(ValueError):
    """A design the cycle model cannot evaluate (e.g. odd W8 columns)."""


def column_split(cols: int, w4_share: float) -> tuple[int, int]:
    """(W8 columns, W4 columns) by the engine's rule; the explorer also needs one W8 pair
    (whole-model programs run their activation x activation products on W8 columns)."""
    try:
        cols_w8, cols_w4 = engine_timing.column_split(cols, w4_share)
    except ValueError as e:
        raise CostError(str(e)) from None
    if cols_w8 < 2:
        raise CostError(
            f"w4_share={w4_share!r} leaves {cols_w8} W8 columns of cols={cols}; "
            "at least one DSP-sharing W8 pair is needed"
        )
    return cols_w8, cols_w4


def geometry(design: Design) -> ArrayConfig:
    """The design's array, once :func:`column_split` accepts it (:class:`CostError` if not)."""
    a = design.array
    column_split(a.cols, a.w4_share)
    return a


def w4_rows(n: int, ratio: float) -> int:
    """W4 rows of an ``n``-row weight at ``ratio`` (the golden quantiser's rounding)."""
    return int(round(ratio * n))


@lru_cache(maxsize=16384)
def _column_plan(n: int, n8: int, groups: int, cols: int, cols_w8: int, heads: bool):
    """``engine_host.plan_columns`` of :func:`seeded_w4_rows` (read-only channel array)."""
    from vitaccel.engine_host import EngineParams, plan_columns

    params = EngineParams(groups=groups, cols=cols, w4_share=(cols - cols_w8) / cols)
    kind = _seeded_eligible(n, n8).astype("int64")  # seeded_w4_rows: 1 = int4
    channel = plan_columns(kind, params, heads=heads).channel
    channel.flags.writeable = False
    return channel


@lru_cache(maxsize=4096)
def _seeded_eligible(n: int, n8: int):
    """The W4-eligible rows of :func:`seeded_w4_rows` (read-only), kept per (n, n8): every
    array geometry plans the same rows."""
    from vitaccel.engine_host import seeded_w4_rows

    eligible = seeded_w4_rows(n, n8).astype(bool)
    eligible.flags.writeable = False
    return eligible


@lru_cache(maxsize=65536)
def window_steps(n: int, n8: int, groups: int, cols: int, cols_w8: int) -> int:
    """:func:`job_nsteps` of a shared-mode job from the windows alone
    (``engine_host.column_windows`` of the seeded rows, without the channel array that
    :func:`mapped_writer_cycles` needs): the explorer scans the steps of more W4 row counts
    than it prices."""
    from vitaccel.engine_host import column_windows

    if n8 >= n or n8 == 0 or cols_w8 >= cols:
        return job_nsteps(n, n8, groups, cols, cols_w8, heads=False)
    bounds = column_windows(_seeded_eligible(n, n8), groups * cols, groups * cols_w8)
    return max(len(bounds) - 1, 1)


def job_nsteps(n: int, n8: int, groups: int, cols: int, cols_w8: int, *, heads: bool) -> int:
    """Output steps of a job of ``n`` channels, ``n8`` of them on W8 columns only:
    ``plan_columns``' windows (heads mode plans one head per group). With every row W8 or
    every row W4-eligible the count is ``max(ceil(N8 / (G*C8)), ceil(N / (G*C)))``; in
    between it depends on where the W4 rows are (``engine_host.seeded_w4_rows``)."""
    g = 1 if heads else groups
    if n8 >= n or n8 == 0 or cols_w8 >= cols:
        return max(-(-n8 // (g * cols_w8)), -(-n // (g * cols)), 1)
    return int(_column_plan(n, n8, groups, cols, cols_w8, heads).shape[0])


@lru_cache(maxsize=65536)
def writer_cycles(tokens: int, n: int, cm: int, groups_active: int, transposed: bool) -> int:
    """SPM write cycles of a MATMUL's outputs (the scratchpad's ``MatmulOutWriter``, rtl/spm).

    Per output step (``cm`` channels: ``G*C`` shared, ``C`` per head) and token, each active
    group writes its channels as runs of up to ``min(16, cm)`` consecutive bytes; a run costs
    one write, two when it crosses a 16-byte word (the word is taken with its last run).
    OUT_T gathers 16 tokens, then writes one run per channel.
    """
    if transposed:
        # OUT_T gathers up to 16 tokens of every lane (input stalls while it flushes), then
        # writes one aligned 16-byte run per channel: per step T intake cycles, per chunk
        # of 16 tokens one write per valid channel, and one cycle that selects the first
        # lane's bytes into the flush register.
        steps = -(-n // cm)
        chunks = -(-tokens // SLOT_BYTES)
        return (steps * tokens + chunks * n) * groups_active + steps * chunks
    sw = min(SLOT_BYTES, cm)
    per_token = 0
    for start in range(0, n, cm):
        c = 0
        while c < cm and start + c < n:
            nn = start + c
            count = min(sw, n - nn, cm - c)
            per_token += 1 if (nn % SLOT_BYTES) + count <= SLOT_BYTES else 2
            c += sw
    return tokens * per_token * groups_active


@lru_cache(maxsize=4096)
def mapped_writer_cycles(tokens: int, n: int, n8: int, groups: int, cols: int, cols_w8: int,
                         *, heads: bool, nheads: int, transposed: bool,
                         w_spm: bool) -> int:  # fmt: skip
    """SPM write cycles of a MATMUL's outputs on a mixed W4/W8 array (the scratchpad's
    ``MappedOutWriter``, :func:`vitaccel.engine_timing.mapped_writer_cycles`) for a job of
    ``n`` channels, ``n8`` of them on W8 columns only: the column plan of the compiler
    (``engine_host.plan_columns``) for W4 rows at seeded random places
    (``engine_host.seeded_w4_rows``), or the W8-column rule (``w_spm``: every row W8).
    """
    channel = _column_plan(n, n if w_spm else n8, groups, cols, cols_w8, heads)
    return engine_timing.mapped_writer_cycles(
        channel, tokens, nheads=nheads if heads else 0, transposed=transposed
    )


def first_out_edge(tokens, k, groups, rows, cols, vector, units, heads, w_word_cycles, x_keep,
                   x_beat, w_lag=0, x_stretch=None) -> float:  # fmt: skip
    """Edge of a job's first output word (:func:`writer_bound`): ``first_out`` after the
    first tile's last k-step, the first tile issuing once W (from edge ``1 + w_lag``,
    :func:`matmul_cycles`) and its own X are in (``x_stretch``: :func:`spm_x_stretch`)."""
    ks = -(-k // vector)
    if x_keep:
        x_stretch = None
    x_load = x_edge(x_load_cycles(tokens, ks, groups, heads=heads, x_keep=x_keep,
                                  x_beat=x_beat), x_stretch)  # fmt: skip
    w_load = w_lag + round(groups * cols * (ks + 1) * w_word_cycles, 9)  # 1/ports: exact
    # the first tile issues once its own X is in (step 0 streams behind the X load)
    start = first_issue(x_load, w_load, ks, tokens, groups, rows, heads=heads, x_beat=x_beat,
                        x_stretch=x_stretch)  # fmt: skip
    return start + ks - 1 + latencies(rows, units, vector)["first_out"]


def writer_bound(tokens, k, n, groups, rows, cols, vector, units, *, heads, nheads, transposed,
                 w_word_cycles=1.0, x_keep=False, x_beat=None,
                 mapped_steps=0, mapped_n8=None, cols_w8=0, w_spm=False, banks=1, head_step=0,
                 runs=False, y_stride=1, first=None, w_lag=0,
                 x_stretch=None) -> float:  # fmt: skip
    """Cycles a job needs when the output writer is its bottleneck: the first output word
    appears ``first_out`` after the first tile's last k-step, then every write takes a cycle
    (the output FIFO with credits throttles the engine to the writer's pace). ``x_beat``:
    the top's X beat (None: :func:`x_beat_words` of a 16-byte datapath). ``mapped_steps``:
    on a mixed W4/W8 array the job's output steps (:func:`job_nsteps`, the steps of the plan
    :func:`mapped_writer_cycles` prices); 0 on an all-W8 array. ``mapped_n8`` (None: ``n``), ``cols_w8``, ``w_spm``: the job's rows on
    W8 columns only, the W8 columns of a group, W built from the scratchpad
    (:func:`mapped_writer_cycles`; a W_SPM job on a scratchpad where ``cols_w8`` columns
    have the word path, :func:`word_writes`, takes the all-W8 writer of ``cols_w8`` columns
    and is priced as on an all-W8 array of them). ``banks``: the scratchpad's (``datapath_bytes / 16``); on an
    all-W8 array with the output writer's word path (:func:`word_path_takes`: a row-major
    job not forced onto runs, ``runs``: a fused residual add; an OUT_T job of odd
    ``y_stride``) writes its pieces one per bank a cycle (:func:`word_writer_cycles`, heads
    mode by ``head_step``, the Y head step); row-major, step by step as the engine's tiles
    put the words out (:func:`word_writer_end`: a writer slower than the tiles, e.g. heads
    whose rows share a bank, ends its last step after the engine; a mixed top's W_SPM job
    on its W8 columns' writer: after the first word, :func:`word_writer_cycles`). ``first``: :func:`first_out_edge` of these
    arguments, when the caller has it (the explorer prices a job's every W4 option).
    ``w_lag``: :func:`w_lag` of the job's W source; ``x_stretch``: the X load sharing the
    read port with W builders (:func:`spm_x_stretch`, W_SPM jobs only)."""
    if first is None:
        first = first_out_edge(tokens, k, groups, rows, cols, vector, units, heads,
                               w_word_cycles, x_keep, x_beat or x_beat_words(vector),
                               w_lag, x_stretch)  # fmt: skip
    mixed_words = bool(mapped_steps and w_spm and word_writes(cols_w8, banks))
    if mixed_words:
        # the mixed top's all-W8 writer of the W8 columns (rtl/spm MixedOutWriter)
        cols = cols_w8
    elif mapped_steps:
        n8 = n if mapped_n8 is None else mapped_n8
        return first + mapped_writer_cycles(tokens, n, n8, groups, cols, cols_w8, heads=heads,
                                            nheads=nheads, transposed=transposed,
                                            w_spm=w_spm)  # fmt: skip
    if word_path_takes(cols, banks, transposed=transposed, y_stride=y_stride, runs=runs):
        if not transposed and not mixed_words:  # each step's words as the engine puts them out
            work = word_writer_steps(n, groups, cols, banks, heads=heads, nheads=nheads,
                                     head_step=head_step)  # fmt: skip
            return word_writer_end(tokens, k, groups, rows, cols, vector, units, work,
                                   heads=heads, w_word_cycles=w_word_cycles, x_keep=x_keep,
                                   x_beat=x_beat or x_beat_words(vector), w_lag=w_lag,
                                   x_stretch=x_stretch)  # fmt: skip
        return first + word_writer_cycles(tokens, n, groups, cols, banks, heads=heads,
                                          nheads=nheads, head_step=head_step,
                                          transposed=transposed)  # fmt: skip
    cm = cols if heads else groups * cols
    return first + writer_cycles(tokens, n, cm, nheads if heads else 1, transposed)


def w_lag(w_spm: bool) -> int:
    """Cycles a job's W stream starts after its X stream (``matmul_cycles``' ``w_lag``): a
    DDR stream ``LATENCIES["w_ddr_lag"]``, the scratchpad-built one 0."""
    return 0 if w_spm else LATENCIES["w_ddr_lag"]


def top_matmul_extra(tokens, k, nsteps, groups, rows, cols, vector, *, w_spm: bool,
                     heads: bool, x_beat=None, w_ports=1) -> int:  # fmt: skip
    """What the top adds to a MATMUL job: MM_SETUP computes ``nsteps`` and ``tiles`` by
    repeated addition (``max(nsteps, tiles)`` cycles); with W built from the scratchpad the X
    and W builders share its one read port (round-robin, a grant a cycle): each builder's
    row reader turns a 16-byte word into ``16/V`` beats of ``V`` bytes, so X and W of step
    0 together need ``(XL + WL / B) * V / 16`` port cycles. ``B`` is the scratchpad's banks
    (``datapath_bytes / 16``, which is also the X beat in words, :func:`x_beat_words`): both
    builders read ``B`` consecutive words a grant, so ``XL`` counts X beats (a beat of 1, 2
    or 4 k-steps is one grant) and the ``WL`` W words take ``WL / B`` grants' worth. For
    ``V <= 8`` that is within ``max(XL, WL)`` on the shapes of a ViT (both load in
    parallel, as the engine's recursion assumes); at ``V = 16`` on one bank every beat and
    every W word is a grant and the two loads serialise; on 4 banks W takes a quarter.
    ``w_ports``: the W builders (:func:`spm_w_word_cycles`); with several (one per weight
    port) the port's sharing is in the engine's recursion instead (:func:`spm_x_stretch`:
    the X load at the share of the grants the builders leave), nothing here."""
    ks = -(-k // vector)
    extra = max(nsteps, -(-tokens // rows))
    if w_spm and w_ports == 1:
        banks = x_beat = x_beat or x_beat_words(vector)
        x_load = x_load_cycles(tokens, ks, groups, heads=heads, x_beat=x_beat)
        w_load = groups * cols * (ks + 1)
        per_word = min(vector, SLOT_BYTES)
        port = -(-(x_load * banks + w_load) * per_word // (SLOT_BYTES * banks))
        extra += max(0, port - max(x_load, w_load))
    return extra


# A row reader's FIFO (rtl.spm.RowReader's default depth): a builder's reads run this many
# grants ahead of the words it has put out.
ROW_READER_AHEAD = 4


@lru_cache(maxsize=4096)
def spm_x_stretch(tokens: int, k: int, n: int, nsteps: int, groups: int, cols: int,
                  vector: int, banks: int, builders: int, *, heads: bool,
                  nheads: int = 1) -> tuple[tuple[float, float], ...] | None:  # fmt: skip
    """The X load of a W_SPM job on ``builders`` > 1 W builders (one per weight port) as the
    engine sees it: :func:`engine_timing.x_edge`'s lines (None: a beat a cycle).

    The X builder and the W builders read rows from the scratchpad's one read port, granted
    round-robin a cycle at a time, each row reader ``banks`` consecutive words a grant: a
    row of K bytes is ``g = ceil(ceil(K/16) / banks)`` grants (X: a token's, W: a
    column's). X asks ``dx = g / ceil(KS/x_beat)`` grants a beat (1 at V = 16: it asks
    every cycle). At the start both W halves of the engine are free, so each builder puts
    out the first ``min(nsteps, 2)`` steps' words at a word a cycle, ``G*C*(KS+1) /
    builders`` cycles a step, reading ``g`` grants per real column (a column past N or of a
    head past ``nheads`` reads nothing): ``d_s`` grants a cycle in step s on average. Its
    reads run up to ``F`` (:data:`ROW_READER_AHEAD`) grants ahead of its words, and the
    round-robin arbiter gives a builder that always asks at most ``r``, its max-min fair
    share beside X (``1 / (builders + 1)`` when X asks every cycle). So a builder has
    taken ``min(r*t, F + its words' grants by t, Gw)`` grants by edge t (``Gw``: its real
    grants of the two steps, + ``F`` read ahead into step 2 when there is one), and X
    ``t - builders * that``: its beat j (``dx*j`` grants) comes at the least of the
    inverses of those lines (X's grants are a max of lines: ``dx*j / (1 - B*r)``, ``(dx*j
    + B*F) / (1 - B*d_0)``, ... , ``dx*j + B*Gw``; ``B`` builders), never before edge j.
    Returns those lines as (slope, offset) pairs on the beat count. The X_KEEP case has no X load (the engine ignores these)."""
    row_words = -(-k // WORD_BYTES)
    row_grants = -(-row_words // banks)
    ks = -(-k // vector)
    dx = row_grants / -(-ks // banks)  # the X beat is ``banks`` k-steps (x_beat_words)
    steps = min(nsteps, 2)
    t_w = steps * groups * cols * (ks + 1) / builders  # a builder's cycles for them

    def real(s):  # step s's real columns (rows of W)
        if heads:
            return max(0, min(cols, n - s * cols)) * min(nheads, groups)
        return max(0, min(groups * cols, n - s * groups * cols))

    ahead, step_cycles = ROW_READER_AHEAD, t_w / steps
    per_step = [row_grants * real(s) / builders for s in range(steps)]  # a builder's grants
    g_w = sum(per_step)
    if g_w == 0:
        return None
    g_w += min(ahead, row_grants * real(2) / builders) if nsteps > 2 else 0
    r = (1 - min(dx, 1 / (builders + 1))) / builders  # a greedy builder's share
    # a builder's grants by edge t: the least of these lines (slope, offset) in t
    w_lines = [(r, 0.0), (0.0, g_w), (per_step[0] / step_cycles, ahead)]
    if steps == 2:  # step 1 (as many real columns or fewer: the line below from Tw/2 on)
        d1 = per_step[1] / step_cycles
        w_lines.append((d1, per_step[0] - d1 * step_cycles + ahead))
    # X's grants by t: t - builders * (those), a max of lines; beat j (dx*j grants) at the
    # least of their inverses
    return tuple(
        (dx / (1 - builders * a), builders * b / (1 - builders * a))
        for a, b in w_lines
        if builders * a < 1
    )


def spm_w_word_cycles(ports: int, cols_w4: int) -> float:
    """Cycles per W word as the engine sees them in a W_SPM job (W built from the
    scratchpad): one W builder per weight port on an all-W8 array, each a word a cycle into
    its port's columns; a mixed W4/W8 array has one builder for every port (one word a
    cycle in all)."""
    return 1.0 if cols_w4 else 1.0 / ports


def spm_w_builders(ports: int, cols_w4: int) -> int:
    """The W builders of a W_SPM job (:func:`spm_w_word_cycles`)."""
    return 1 if cols_w4 else ports


def fused_cycles(fused: str, n: int) -> int:
    """What a fused output adds to a MATMUL of ``n`` output channels: the GELU table (256
    entries, one a cycle) or the residual add's multipliers (one word of 4 channels a cycle)
    loaded before the job, and the fixed latencies of :data:`LATENCIES`."""
    if not fused:
        return 0
    if fused == "gelu":
        return 256 + LATENCIES["fused_gelu"]
    if fused == "residual":
        return -(-4 * n // SLOT_BYTES) + LATENCIES["fused_residual"]
    raise ValueError(f"unknown fused output {fused!r}")


def lane_tree_stages(lanes: int) -> int:
    """Pipeline stages of a unit's sum over its lanes: a balanced adder tree with a register
    every two adder levels and at the root (``rtl.common.tree_reduce(levels_per_stage=2)``,
    AILayerNorm's two lane sums)."""
    return max(1, -(-(lanes - 1).bit_length() // 2))


def unit_lanes(lanes: int, datapath_bytes: int = WORD_BYTES) -> int:
    """Elements a nonlinear unit takes per cycle: its ``lanes``, at most ``datapath_bytes``
    (the unit's row reader and writer move ``lanes / 16`` scratchpad words a cycle, one from
    each bank, ``rtl.top``; :class:`~vitaccel.design.Design` rejects more lanes)."""
    return min(lanes, datapath_bytes)


def unit_phases(
    kind: str, rows: int, width: int, lanes: int, datapath_bytes: int = WORD_BYTES
) -> tuple[int, int, int]:
    """``(params, stream, drain)``: the cycles of one SOFTMAX / LAYERNORM / GELU / RESADD
    instruction over ``rows x width`` (beyond the per-instruction overhead) in its three
    phases, :func:`nonlinear_cycles` their sum.

    ``params``: per-instruction constants loaded by the top's parameter loader before the
    unit is issued (``rtl.top``, PARAMS_WAIT): AILayerNorm one channel per cycle, RESADD one
    word (4 channels) per cycle, the GELU table one entry (of 256) per cycle. ``stream``:
    rows stream back to back at ``ceil(width / unit_lanes(lanes, datapath_bytes))`` beats
    each (a unit reads and writes one 16-byte SPM word per bank and cycle), so the unit's
    output beats leave at that rate too, a beat a cycle; RESADD reads row r of A then row r
    of B through one port: two words per output word, whatever the datapath. ``drain``:
    the unit's pipeline after its last input beat (one row for E2Softmax, two for
    AILayerNorm) with the reader and writer's pipeline, so its last output beat is written
    at ``params + stream + drain`` (a chained MATMUL's X, :func:`chain_line`).
    """
    per_cycle = unit_lanes(lanes, datapath_bytes)
    beats = -(-width // per_cycle)
    io = LATENCIES["unit_io_wide" if per_cycle > WORD_BYTES else "unit_io"]
    if kind == "softmax":
        # (a max-tree stage beyond the two of <= 16 lanes: one cycle, softmax_max_stages)
        wide = softmax_max_stages(lanes) - softmax_max_stages(1)
        return 0, rows * beats, beats + LATENCIES["softmax"] + wide + io
    if kind == "layernorm":
        wide = LATENCIES["layernorm_wide"] * (lane_tree_stages(lanes) - 1)
        return width, rows * beats, 2 * beats + LATENCIES["layernorm"] + wide + io
    if kind == "gelu":
        return 256, rows * beats, LATENCIES["gelu"] + io
    if kind == "residual":
        words = -(-width // SLOT_BYTES)
        params = -(-4 * width // SLOT_BYTES)
        # (16 lanes whatever the datapath: the word reader and a row writer of 16)
        return params, 2 * rows * words, LATENCIES["residual"] + LATENCIES["unit_io"]
    raise ValueError(f"unknown nonlinear op {kind!r}")


def nonlinear_cycles(
    kind: str, rows: int, width: int, lanes: int, datapath_bytes: int = WORD_BYTES
) -> int:
    """Cycles of one SOFTMAX / LAYERNORM / GELU / RESADD instruction over ``rows x width``:
    its parameter load, its rows streaming through the unit and its drain
    (:func:`unit_phases`)."""
    return sum(unit_phases(kind, rows, width, lanes, datapath_bytes))


def chain_line(drain: int, delay: int, port=None,
               ratio: float = 1.0) -> tuple[tuple[float, ...], ...] | None:  # fmt: skip
    """The X stream of a chained MATMUL (docs/isa.md "Chains") as
    :func:`engine_timing.x_edge`'s ``x_stretch``. The unit's output beats leave a beat a
    cycle (:func:`unit_phases`' ``stream``), beat j written ``drain + j`` cycles after the
    unit's issue; ``ratio`` (:func:`chain_ratio`) unit beats make an X beat (1: the unit's
    lanes are the X beat; more: the top packs a narrower unit's beats), so X beat b
    (1-based) is complete ``drain + ratio * b - 1`` cycles after that issue. The MATMUL's
    command comes ``delay`` cycles after it (:func:`chain_delay`), so X beat b is at the
    MATMUL's edge ``ratio * b + drain - delay`` at the earliest: a floor line. A unit of
    ratio 1 ahead of the X builder (``drain <= delay``) is held by its back-pressure, and
    the X stream is the X builder's own: ``port``, the lines of a scratchpad read port
    shared with W builders (:func:`spm_x_stretch`: the unit's reader takes the X builder's
    place on the port), or None, a beat a cycle; a packed unit (ratio > 1) is slower than the
    builder whatever its start: its floor line stays."""
    if drain <= delay and ratio == 1:
        return port
    return (*(port or ()), (float(ratio), float(drain - delay), 1))


def chain_ratio(cols: int, lanes: int, datapath_bytes: int) -> float:
    """Unit output beats per X beat of a chained row of ``cols`` bytes: the unit's beats a row
    (``ceil(cols / unit_lanes)``) over the X beats a row (``ceil(cols / datapath_bytes)``,
    the X builder's beat of a chain: the datapath); 1 where the unit's lanes are the
    datapath's bytes."""
    per_cycle = unit_lanes(lanes, datapath_bytes)
    return -(-cols // per_cycle) / -(-cols // datapath_bytes)


def chain_delay(fused: str, n: int, setup: int) -> int:
    """Cycles from a chained unit's issue to its MATMUL's command: the controller goes on to
    the (prefetched) MATMUL at once and spends its usual overhead before the job, the
    per-instruction overhead, the fused output's table or multipliers
    (:func:`fused_cycles`) and MM_SETUP (``setup``: :func:`top_matmul_extra`)."""
    return LATENCIES["instr"] + fused_cycles(fused, n) + setup


def chained_unit_cycles(phases: tuple[int, int, int], mm_cycles: int) -> int:
    """What a chained unit instruction adds to the image beyond its own per-instruction
    overhead: its parameter load, and what of its stream and drain outlasts its MATMUL
    (``mm_cycles``: the MATMUL's cycles with the chained X, overhead included, from the
    unit's issue). The pair ends when both have."""
    params, stream, drain = phases
    return params + max(0, stream + drain - mm_cycles)


@dataclass
class LayerCost:
    """Cycles of one op of the model (summed over its instructions) and what bounds it."""

    name: str
    kind: str
    cycles: int
    macs: int = 0
    bound: str = "compute"  # compute | bandwidth | writer | nonlinear | memory
    utilisation: float = 0.0  # useful MACs / (cycles * MACs per cycle)
    instructions: int = 1
    tiles: dict | None = None


@dataclass
class Estimate:
    """Predicted cycles of one image and the breakdown per op."""

    design_name: str
    clock_mhz: float
    cycles: int
    macs_per_cycle: int
    layers: list[LayerCost] = field(default_factory=list)
    bound_cycles: dict[str, int] = field(default_factory=dict)
    # bytes the program moves to and from the DDR scratch region (a spilling program)
    spill_bytes: int = 0
    # what the first image after a reset costs beyond ``cycles``: the program's resident
    # prologue (schedule.resident_prologue, the constants LOAD); ``cycles`` is an image of
    # a stream, the figure FPS is taken on
    first_image_cycles: int = 0

    @property
    def fps(self) -> float:
        return self.clock_mhz * 1e6 / self.cycles

    @property
    def latency_ms(self) -> float:
        return self.cycles / (self.clock_mhz * 1e3)

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for lc in self.layers:
            out[lc.kind] = out.get(lc.kind, 0) + lc.cycles
        return out

    def by_bound(self) -> dict[str, int]:
        """Cycles per bound, instruction by instruction (compute, bandwidth, writer, ...)."""
        return dict(self.bound_cycles)

    def linear_utilisation(self) -> float:
        """Useful MACs / (cycles x MACs per cycle) over the encoder's weight layers."""
        lin = [lc for lc in self.layers if lc.kind in ("qkv", "proj", "fc1", "fc2")]
        macs = sum(lc.macs for lc in lin)
        cycles = sum(lc.cycles for lc in lin)
        return macs / (cycles * self.macs_per_cycle) if cycles else 0.0


def port_bytes_per_cycle(clock_mhz: float, budget, ports: int = 1) -> float:
    """Bytes per design-clock cycle each of ``ports`` 128-bit HP ports delivers when all of
    them stream at once (their sum capped by the DDR)."""
    return budget.axi_gbps(clock_mhz, ports=ports) * 1e9 / (clock_mhz * 1e6) / ports


def weight_word_cycles(vector: int, clock_mhz: float, budget, ports: int = 1,
                       acc_bits: int = 32) -> float:  # fmt: skip
    """Cycles per W stream word as the engine sees them: each word takes one 16-byte DDR
    slot, every port streams its share of each step's columns at once (the engine loads
    ``ports`` words a cycle), so a step's W load is ``G*C*(KS+1)`` times this."""
    per_port = port_bytes_per_cycle(clock_mhz, budget, ports)
    return max(1.0, w_slot_bytes(vector, acc_bits) / per_port) / ports


def w_slot_bytes(vector: int, acc_bits: int = 32) -> int:
    """DDR bytes of one W stream word: ``max(8V, acc+16+6)`` bits in whole 16-byte slots."""
    wbytes = -(-w_word_bits(vector, acc_bits) // 8)
    return -(-wbytes // SLOT_BYTES) * SLOT_BYTES


def _lanes(design: Design, kind: str) -> int:
    nl = design.nonlinear
    return {
        "softmax": nl.softmax_lanes,
        "layernorm": nl.layernorm_lanes,
        "gelu": nl.gelu_lanes,
    }.get(kind, SLOT_BYTES)  # RESADD: one SPM word (16 elements) per cycle


def _matmul_job(ins: Instr, design: Design, geom: ArrayConfig) -> tuple[bool, int, int]:
    """(heads mode, heads in the job, output steps, rows on W8 columns only) of a scheduled
    MATMUL."""
    fl, n = ins.flags, ins.n
    heads = MatmulFlags.HEADS in fl
    n8, nh = n, 1
    if MatmulFlags.W_SPM in fl:  # activation rows: every row on W8 lanes
        nh = ins.heads if heads else 1
    elif geom.cols_w4 and ins.label not in ("patch_embed", "head"):
        n8 = n - w4_rows(n, design.w4_ratio(ins.label))
    c8 = geom.cols_w8
    return heads, nh, job_nsteps(n, n8, geom.groups, geom.cols, c8, heads=heads), n8


def x_stretch_of(ins: Instr, design: Design, geom: ArrayConfig,
                 chain: Instr | None = None) -> tuple[tuple[float, ...], ...] | None:  # fmt: skip
    """The X stream of a scheduled MATMUL as :func:`engine_timing.x_edge` takes it: with W
    built from the scratchpad by several builders, its share of the read port
    (:func:`spm_x_stretch`); then, for the MATMUL the unit ``chain`` is chained into, no
    earlier than that unit writes it (:func:`chain_line`); None: a beat a cycle."""
    g, r, c, v = geom.groups, geom.rows, geom.cols, geom.vector
    heads, nh, nsteps, _ = _matmul_job(ins, design, geom)
    w_spm = MatmulFlags.W_SPM in ins.flags
    x_beat = x_beat_words(v, design.datapath_bytes)
    builders = spm_w_builders(design.weight_ports, geom.cols_w4) if w_spm else 0
    port = None
    if builders > 1:
        port = spm_x_stretch(ins.tokens, ins.k, ins.n, nsteps, g, c, v, x_beat, builders,
                             heads=heads, nheads=nh)  # fmt: skip
    if chain is None:
        return port
    kind = kind_of(chain)
    lanes = _lanes(design, kind)
    drain = unit_phases(kind, chain.rows, chain.cols, lanes, design.datapath_bytes)[2]
    setup = top_matmul_extra(ins.tokens, ins.k, nsteps, g, r, c, v, w_spm=w_spm, heads=heads,
                             x_beat=x_beat, w_ports=max(1, builders))  # fmt: skip
    return chain_line(drain, chain_delay(fused_of(ins), ins.n, setup), port,
                      chain_ratio(chain.cols, lanes, design.datapath_bytes))  # fmt: skip


def instr_cycles(
    ins: Instr,
    design: Design,
    geom: ArrayConfig,
    port: float,
    budget,
    chain: Instr | None = None,
) -> tuple[int, str, int]:
    """(cycles, bound, useful MACs) of one scheduled instruction (``port``: bytes per cycle
    of the main HP port, for LOAD/STORE), not counting the per-instruction overhead.
    ``chain``: a MATMUL's chained unit instruction (the one before it, with CHAIN): its X
    arrives as that unit writes it (:func:`x_stretch_of`)."""
    if ins.op in (Op.LOAD, Op.STORE):
        return int(math.ceil(ins.words * SLOT_BYTES / port)) + LATENCIES["load"], "memory", 0
    if ins.op is not Op.MATMUL:
        kind = kind_of(ins)
        lanes = _lanes(design, kind)
        return (
            nonlinear_cycles(kind, ins.rows, ins.cols, lanes, design.datapath_bytes),
            "nonlinear",
            0,
        )
    a = design.array
    g, r, c, v, units = geom.groups, geom.rows, geom.cols, geom.vector, geom.units
    t, k, n, fl = ins.tokens, ins.k, ins.n, ins.flags
    heads, nh, nsteps, n8 = _matmul_job(ins, design, geom)
    w_spm, x_keep = MatmulFlags.W_SPM in fl, MatmulFlags.X_KEEP in fl
    x_beat = x_beat_words(v, design.datapath_bytes)
    # scratchpad-built W arrives a word a cycle per builder; a DDR stream at the port's rate
    ports = design.weight_ports
    word_cycles = spm_w_word_cycles(ports, geom.cols_w4) if w_spm else weight_word_cycles(
        a.vector, design.clock_mhz, budget, ports, a.acc_bits
    )  # fmt: skip
    # a DDR W stream lags X (w_lag); W_SPM's builders share the read port with X instead
    builders = spm_w_builders(ports, geom.cols_w4) if w_spm else 0
    stretch = x_stretch_of(ins, design, geom, chain)
    lag = w_lag(w_spm)
    cycles = matmul_cycles(t, k, nsteps, g, r, c, v, units, heads=heads,
                           w_word_cycles=word_cycles, x_keep=x_keep,
                           x_beat=x_beat, w_lag=lag, x_stretch=stretch)  # fmt: skip
    bound = "compute" if w_spm else stream_bound(t, k, g, r, c, v, word_cycles)
    wb = writer_bound(t, k, n, g, r, c, v, units, heads=heads, nheads=nh,
                      transposed=MatmulFlags.OUT_T in fl, w_word_cycles=word_cycles,
                      x_keep=x_keep, x_beat=x_beat,
                      mapped_steps=nsteps if geom.cols_w4 else 0, mapped_n8=n8,
                      cols_w8=geom.cols_w8, w_spm=w_spm, w_lag=lag, x_stretch=stretch,
                      **writer_path(ins, design))  # fmt: skip
    if wb > cycles:
        cycles, bound = int(math.ceil(wb)), "writer"
    cycles += top_matmul_extra(t, k, nsteps, g, r, c, v, w_spm=w_spm, heads=heads,
                               x_beat=x_beat, w_ports=max(1, builders))  # fmt: skip
    if w_spm:
        fixed = LATENCIES["matmul_heads"] if heads else LATENCIES["matmul_spm"]
        return cycles + fixed, bound, nh * t * k * n
    cycles += fused_cycles(fused_of(ins), n)
    return cycles + LATENCIES["matmul_ddr"], bound, t * k * n


def priced_program(program, design: Design, *, budget=None, geom: ArrayConfig | None = None,
                   port: float | None = None):  # fmt: skip
    """``(instruction, cycles, bound, useful MACs, chained unit)`` for each instruction of
    ``program`` up to END (the cycle counter stops there), the per-instruction overhead
    included: the one pricing of a program :func:`estimate`, :func:`program_cycles` and
    :mod:`vitaccel.dse.causes` share. Instructions run one after another, except a chained
    pair (docs/isa.md "Chains"): the MATMUL is priced with its X arriving as the unit writes
    it (``chained unit``: that unit, else None), and the unit with what of it the MATMUL does
    not hide (:func:`chained_unit_cycles`)."""
    if budget is None:
        from vitaccel.boards import get_budget

        budget = get_budget(design.board)
    geom = geometry(design) if geom is None else geom
    port = port_bytes_per_cycle(design.clock_mhz, budget) if port is None else port
    program = list(program)
    held = None  # (index, unit) of a chained unit waiting for its MATMUL's price
    for j, ins in enumerate(program):
        if ins.op is Op.END:
            break
        chained = isa.chained(ins) and j + 1 < len(program) \
            and program[j + 1].op is Op.MATMUL  # fmt: skip
        if chained:
            held = ins
            continue
        unit = held if ins.op is Op.MATMUL else None
        cycles, bound, macs = instr_cycles(ins, design, geom, port, budget, chain=unit)
        cycles += LATENCIES["instr"]
        if unit is not None:
            kind = kind_of(unit)
            phases = unit_phases(kind, unit.rows, unit.cols, _lanes(design, kind),
                                 design.datapath_bytes)  # fmt: skip
            yield unit, LATENCIES["instr"] + chained_unit_cycles(phases, cycles), \
                "nonlinear", 0, None  # fmt: skip
        held = None
        yield ins, cycles, bound, macs, unit


def program_cycles(program, design: Design, *, budget=None) -> int:
    """Cycles of ``program`` on ``design`` (:func:`priced_program` summed)."""
    return sum(p[1] for p in priced_program(program, design, budget=budget))


def writer_path(ins: Instr, design: Design) -> dict:
    """The :func:`writer_bound` arguments that pick a job's output writer path: the
    scratchpad's banks, the Y head step and whether a fused residual add takes runs."""
    return {
        "banks": design.datapath_bytes // WORD_BYTES,
        "head_step": ins.head_y_step,
        "runs": MatmulFlags.RESADD in ins.flags,
        "y_stride": ins.y_stride,
    }


def stream_bound(tokens, k, groups, rows, cols, vector, w_word_cycles) -> str:
    """What bounds a job's steps: ``"bandwidth"`` when a step's W load (``G*C*(KS+1)``
    words, port-limited) outlasts its compute (``tiles`` periods), else ``"compute"``."""
    ks = -(-k // vector)
    compute = -(-tokens // rows) * max(ks, rows)
    w_load = round(groups * cols * (ks + 1) * w_word_cycles, 9)
    return "bandwidth" if w_load > compute else "compute"


def fused_of(ins: Instr) -> str:
    """A MATMUL's fused output: ``"gelu"``, ``"residual"`` or ``""``."""
    if MatmulFlags.GELU in ins.flags:
        return "gelu"
    return "residual" if MatmulFlags.RESADD in ins.flags else ""


def tiling(ins: Instr, design: Design, geom: ArrayConfig) -> dict:
    """How the controller tiles one MATMUL job of ``ins`` (docs/gvsa.md loop order)."""
    heads, _, nsteps, _ = _matmul_job(ins, design, geom)
    return {
        "mode": "heads" if heads else "shared",
        "token_tile": geom.rows,
        "channels_per_step": geom.cols if heads else geom.groups * geom.cols,
        "k_slice": geom.vector,
        "token_tiles": -(-ins.tokens // geom.rows),
        "ksteps": -(-ins.k // geom.vector),
        "steps": nsteps,
    }


def estimate(design: Design, *, budget=None, spec=None) -> Estimate:
    """Cycles of one image through the scheduled program of ``design``, per model op."""
    if budget is None:
        from vitaccel.boards import get_budget

        budget = get_budget(design.board)
    from vitaccel.dse.shapes import spec_of

    spec = spec_of(spec if spec is not None else design.model)
    geom = geometry(design)
    port = port_bytes_per_cycle(design.clock_mhz, budget)
    by_name: dict[str, LayerCost] = {}
    bounds: dict[str, int] = {}
    program = schedule(spec, design, strict=False)
    once = resident_prologue(program)
    first_image = sum(p[1] for p in priced_program(program[:once], design, budget=budget,
                                                   geom=geom, port=port))  # fmt: skip
    for ins, cycles, bound, macs, _ in priced_program(program[once:], design, budget=budget,
                                                      geom=geom, port=port):  # fmt: skip
        bounds[bound] = bounds.get(bound, 0) + cycles
        lc = by_name.get(ins.label)
        if lc is None:
            lc = LayerCost(ins.label, kind_of(ins), cycles, macs, bound, 0.0, 1)
            by_name[ins.label] = lc
            if ins.op is Op.MATMUL:
                lc.tiles = tiling(ins, design, geom)
        else:
            if cycles > lc.cycles:
                lc.bound = bound
            lc.cycles += cycles
            lc.macs += macs
            lc.instructions += 1
    layers = list(by_name.values())
    for lc in layers:
        lc.utilisation = lc.macs / (lc.cycles * geom.macs_per_cycle) if lc.macs else 0.0
    total = sum(lc.cycles for lc in layers)
    return Estimate(design.name, design.clock_mhz, total, geom.macs_per_cycle, layers, bounds,
                    spill_traffic(program), first_image)  # fmt: skip
