"""The host half of the GVSA matmul engine: sizes, column plan, stream packing, cycle model.

Pure numpy (no amaranth), beside :mod:`vitaccel.engine_timing`: the hardware is
:class:`vitaccel.rtl.matmul.MatmulEngine`; this module is the same contract seen from the
host (how words are packed into the engine's streams, which output channel each column
computes, how many cycles a job takes), so the testbenches, the compiler, the CLI and the
design-space explorer share one definition:

* :class:`EngineParams` - every size and width of an engine instance.
* :func:`plan_columns` - which weight row each (step, group, column) computes.
* :func:`pack_job` / :func:`unpack_outputs` - stream words in, int8 matrix out.
* :func:`cycle_model` - cycles of a job, the recursion of docs/gvsa.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vitaccel.design import ACC_BITS, ArrayGeometry
from vitaccel.engine_timing import column_split, full_rate_out_depth, latencies, matmul_cycles
from vitaccel.quant.ref import log2_code_weights
from vitaccel.quant.scales import WEIGHT_KINDS

__all__ = [
    "MULT_BITS",
    "SHIFT_BITS",
    "LOG2_CODE_BITS",
    "POT4_ZERO",
    "pot4_code",
    "lane_weights",
    "EngineParams",
    "ColumnPlan",
    "plan_columns",
    "seeded_w4_rows",
    "lane_rows",
    "Job",
    "pack_job",
    "unpack_outputs",
    "split_w_stream",
    "cycle_model",
]

# Requantiser parameter widths (one parameter word: bias, mult, shift).
MULT_BITS = 16
SHIFT_BITS = 6
# Log2 codes are 4 bits: p ~ 2**-q, product w * 2**(LOG2_Q - q) (ref.log2_code_weights).
LOG2_CODE_BITS = 4
# pot4 code: bit 3 = sign, bits 2:0 = left shift 0..6 (weight +-2**shift); 0b0111 is zero.
POT4_ZERO = 0b0111


def pot4_code(q):
    """Host-side encoding of pot4 weights (0, +-1, +-2, ..., +-64) as 4-bit lane codes."""
    q = np.asarray(q, dtype=np.int64)
    mag = np.abs(q)
    if np.any((mag != 0) & ((mag & (mag - 1)) != 0)) or np.any(mag > 64):
        raise ValueError("pot4 weights must be 0 or +-2**s with s in 0..6")
    shift = np.where(mag > 0, np.log2(np.maximum(mag, 1)).astype(np.int64), 7)
    return np.where(mag > 0, ((q < 0).astype(np.int64) << 3) | shift, POT4_ZERO)


def lane_weights(codes, w4_kind: str) -> np.ndarray:
    """The weights a W4 lane computes with from its 4-bit codes (the inverse of the packing
    in :func:`pack_job`): int4 two's complement, or the :func:`pot4_code` code."""
    codes = np.asarray(codes, dtype=np.int64) & 0xF
    if w4_kind == "int4":
        return np.where(codes > 7, codes - 16, codes)
    shift = codes & 0b111
    mag = np.where(shift == 7, 0, 1 << np.minimum(shift, 6))
    return np.where(codes >> 3, -mag, mag)


def _bits(n: int) -> int:
    """Bits to hold 0..n."""
    return max(1, int(n).bit_length())


@dataclass(frozen=True)
class EngineParams(ArrayGeometry):
    """Sizes and widths of one matmul engine (array + buffers).

    Parameters
    ----------
    groups, rows, cols, vector, w4_share, w4_kind, in_bits, acc_bits :
        The array (:class:`vitaccel.rtl.gvsa.GVSArray`; ``ArrayConfig`` in the design file).
    x_words : int
        Depth of each X bank (one bank per group and PE row; a word is one k-step of one
        token). A job fits when ``ceil(T / rows) * ksteps <= x_words``.
    max_ksteps : int
        Largest ceil(K / vector); each W bank holds two halves of this many words (rounded
        up to a power of two).
    out_depth : int or None
        Output FIFO depth in words (one word = one token of one step: groups*cols int8).
        None: :attr:`full_rate_out_depth`, the depth at which back-pressure from the FIFO
        never throttles issue and :func:`cycle_model` is exact.
    log2 : bool
        Also run attention x V on 4-bit log2-code probabilities in shift-add form (jobs with
        ``x_log2``; see :mod:`vitaccel.rtl.gvsa`). Off by default: it adds a shift mux per
        W8 lane and the command bit.
    x_beat : int
        X words (k-steps of one token) per beat of the ``x`` stream: a power of two, 1 by
        default; the accelerator uses :func:`vitaccel.engine_timing.x_beat_words` (its X
        path at the scratchpad's 16-byte width). Each X bank is then ``x_beat`` sub-banks of
        ``x_words / x_beat`` words (k-step ``k`` of a token in sub-bank ``k mod x_beat``), and
        a job fits when ``ceil(T / rows) * ceil(ksteps / x_beat) <= x_words / x_beat``.
    w_ports : int
        W streams loaded in parallel (1..4; one AXI read port each in the accelerator):
        stream p carries the columns ``p*G*C/P .. (p+1)*G*C/P - 1`` of every step (see
        :func:`split_w_stream`), so a step loads in ``G*C*(KS+1)/P`` cycles. ``G*C`` must
        be a multiple of it.
    x_memory : {"bram", "uram"}
        ``"uram"`` marks the X banks ``ram_style = "ultra"`` (URAM288 in Yosys and Vivado;
        still one cycle to read, see ``dse.resources.memory_uram288``).
    """

    groups: int = 1
    rows: int = 4
    cols: int = 4
    vector: int = 8
    w4_share: float = 0.0
    w4_kind: str = "int4"
    in_bits: int = 8
    acc_bits: int = 32
    x_words: int = 4096
    max_ksteps: int = 128
    out_depth: int | None = None
    log2: bool = False
    w_ports: int = 1
    x_beat: int = 1
    x_memory: str = "bram"

    def __post_init__(self):
        for name in ("groups", "rows", "cols", "vector", "x_words", "max_ksteps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.x_memory not in ("bram", "uram"):
            raise ValueError(f"x_memory must be 'bram' or 'uram', not {self.x_memory!r}")
        if self.w4_kind not in ("int4", "pot4"):
            raise ValueError(f"w4_kind must be 'int4' or 'pot4', not {self.w4_kind!r}")
        if self.in_bits != 8:
            raise ValueError(f"in_bits must be 8 (int8/uint8 activations), not {self.in_bits!r}")
        lo, hi = ACC_BITS
        if not lo <= self.acc_bits <= hi:
            raise ValueError(f"acc_bits must be in {lo}..{hi}, not {self.acc_bits!r}")
        c8, _ = column_split(self.cols, self.w4_share)
        if not isinstance(self.log2, bool):
            raise ValueError(f"log2 must be true or false, not {self.log2!r}")
        if self.log2 and not c8:
            raise ValueError("log2=True needs W8 columns (w4_share < 1)")
        if (
            not isinstance(self.w_ports, int)
            or isinstance(self.w_ports, bool)
            or not 1 <= self.w_ports <= 4
            or (self.groups * self.cols) % self.w_ports
        ):
            raise ValueError(
                f"w_ports must be 1..4 and divide groups*cols ({self.groups * self.cols}), "
                f"not {self.w_ports!r}"
            )
        if (
            not isinstance(self.x_beat, int)
            or isinstance(self.x_beat, bool)
            or self.x_beat not in (1, 2, 4, 8, 16)
            or self.x_words % self.x_beat
        ):
            raise ValueError(
                f"x_beat must be 1, 2, 4, 8 or 16 and divide x_words ({self.x_words}), "
                f"not {self.x_beat!r}"
            )
        if self.out_depth is None:
            object.__setattr__(self, "out_depth", self.full_rate_out_depth)
        if (
            not isinstance(self.out_depth, int)
            or isinstance(self.out_depth, bool)
            or self.out_depth < self.rows
        ):
            raise ValueError(
                f"out_depth must be an integer >= rows ({self.rows}), not {self.out_depth!r}"
            )

    @classmethod
    def from_array(cls, array, **buffers) -> EngineParams:
        """From a design file's ``ArrayConfig`` plus buffer sizes (and ``w_ports``)."""
        return cls(
            groups=array.groups,
            rows=array.rows,
            cols=array.cols,
            vector=array.vector,
            w4_share=array.w4_share,
            w4_kind=array.w4_kind,
            in_bits=array.in_bits,
            acc_bits=array.acc_bits,
            **buffers,
        )

    @property
    def column_split(self) -> tuple[int, int]:
        """(W8 columns, W4 columns) of a group (:func:`vitaccel.engine_timing.column_split`)."""
        return column_split(self.cols, self.w4_share)

    @property
    def kstep_bits(self) -> int:
        return _bits(self.max_ksteps - 1)

    @property
    def x_word_bits(self) -> int:
        """Bits of one beat of the ``x`` stream: ``x_beat`` words of ``vector`` bytes."""
        return 8 * self.vector * self.x_beat

    def x_fits(self, tokens: int, ksteps: int) -> bool:
        """Whether a job's X fits the X banks (``x_beat`` sub-banks per bank)."""
        n = self.x_beat
        return -(-tokens // self.rows) * -(-ksteps // n) <= self.x_words // n

    @property
    def param_bits(self) -> int:
        return self.acc_bits + MULT_BITS + SHIFT_BITS

    @property
    def o_word_bits(self) -> int:
        return 8 * self.groups * self.cols

    def unit_of_column(self, c: int) -> int:
        return c // 2 if c < self.cols_w8 else self.cols_w8 // 2 + (c - self.cols_w8)

    @property
    def full_rate_out_depth(self) -> int:
        """Output FIFO depth at which output credits never throttle issue (sink at 1/cycle).

        A tile reserves ``rows`` words when it issues and gets them back as they leave, at
        most ``first_out + 2*rows`` cycles later; tiles issue every P >= rows cycles.
        :func:`cycle_model` is exact when ``out_depth`` is at least this.
        """
        return full_rate_out_depth(self.rows, self.units, self.vector)

    def latencies(self) -> dict[str, int]:
        """Fixed pipeline latencies in cycles (see docs/gvsa.md, "Cycle model").

        ``first_out``: issue of a tile's last k-step -> its first output word in the FIFO;
        ``release``: issue of a step's last k-step -> its W half is free again.
        """
        return latencies(self.rows, self.units, self.vector)


@dataclass(frozen=True)
class ColumnPlan:
    """Which weight row every (step, group, column) computes; -1 = idle column.

    ``channel[s, g, c]`` indexes the rows of the layer's weight matrix (shared mode) or the
    rows of head g's matrix (heads mode).
    """

    channel: np.ndarray  # (nsteps, groups, cols) int64

    @property
    def nsteps(self) -> int:
        return int(self.channel.shape[0])


def column_windows(eligible: np.ndarray, per_step: int, per_step8: int) -> list[int]:
    """The bounds ``[0, hi_0, hi_1, ..., n]`` of :func:`plan_columns`' windows for rows whose
    W4 eligibility is ``eligible``: each the longest from the previous bound with at most
    ``per_step`` rows, at most ``per_step8`` of them not eligible (the steps' count is
    ``len - 1``)."""
    n = eligible.shape[-1]
    # w8_before[i]: rows below i that need a W8 column; a window [lo, hi) fits a step when
    # hi - lo <= G*C and w8_before[hi] - w8_before[lo] <= G*C8.
    w8_before = np.concatenate([[0], np.cumsum(~eligible)])
    # the window from lo stops before the (w8_before[lo] + G*C8)-th W8 row (pos8 of it)
    before = w8_before.tolist()
    pos8 = np.flatnonzero(~eligible).tolist() + [n] * (per_step8 + 1)
    bounds = [0]
    while bounds[-1] < n:
        lo = bounds[-1]
        bounds.append(min(lo + per_step, n, pos8[before[lo] + per_step8]))
    return bounds


def plan_columns(kind, params: EngineParams, heads: bool = False) -> ColumnPlan:
    """Assign weight rows to columns: each output step computes a contiguous window of
    channels, its W4-eligible rows on W4 columns, the rest on W8 columns.

    A row may use a W4 column when its kind is the array's ``w4_kind``; every row may use a
    W8 column. Step s computes channels ``[lo_s, lo_{s+1})`` with ``lo_0 = 0``: the longest
    window from ``lo_s`` whose rows fit a step (at most ``G*C`` rows, at most ``G*C8`` of
    them not W4-eligible; heads mode: G = 1 per head). Within the window the W8 rows go to
    the W8 columns and the eligible rows to the W4 columns, in channel order, step-major
    then group then column; eligible rows beyond the W4 columns take the free W8 columns
    after the window's W8 rows. The windows let the mixed output writer
    (:class:`vitaccel.rtl.spm.MappedOutWriter`) store a token's step output as the few
    contiguous runs of an all-W8 array; the steps depend on where the eligible rows are
    (a few more than ``max(ceil(N8 / (G*C8)), ceil(N / (G*C)))``). On an all-W8 array the
    plan is ``channel[s, g, c] = s*G*C + g*C + c``.
    """
    kind = np.asarray(kind, dtype=np.int64)
    n = kind.shape[-1]
    G = 1 if heads else params.groups
    c8, c4 = params.cols_w8, params.cols_w4
    eligible = kind == WEIGHT_KINDS.index(params.w4_kind) if c4 else np.zeros(n, dtype=bool)
    rows8 = np.flatnonzero(~eligible)
    if c8 == 0 and rows8.size:
        raise ValueError(
            f"{rows8.size} weight rows are not {params.w4_kind} and the array has no W8 columns"
        )
    per_step, per_step8, per_step4 = G * params.cols, G * c8, G * c4
    bounds = column_windows(eligible, per_step, per_step8)
    w8_before = np.concatenate([[0], np.cumsum(~eligible)])
    nsteps = max(len(bounds) - 1, 1)
    # every row's step, and its rank among its step's W8 rows or its eligible rows
    rows = np.arange(n)
    step = np.searchsorted(np.array(bounds), rows, "right") - 1
    first = np.array(bounds)[step]
    rank8 = w8_before[rows] - w8_before[first]
    rank4 = (rows - first) - rank8
    n8_step = np.diff(w8_before[np.array(bounds)])  # W8 rows of each step
    spill = eligible & (rank4 >= per_step4)  # past the W4 slots: the free W8 ones
    slot8 = np.where(spill, n8_step[step] + rank4 - per_step4, rank8)
    on8 = ~eligible | spill
    group = np.where(on8, slot8 // max(c8, 1), rank4 // max(c4, 1))
    col = np.where(on8, slot8 % max(c8, 1), c8 + rank4 % max(c4, 1))
    channel = np.full((nsteps, G, params.cols), -1, dtype=np.int64)
    channel[step, group, col] = rows
    if heads:
        channel = np.repeat(channel, params.groups, axis=1)
    return ColumnPlan(channel)


def seeded_w4_rows(n: int, n8: int) -> np.ndarray:
    """Kinds (0 = W8, 1 = int4) of an ``n``-row layer with ``n - n8`` W4 rows at seeded
    random places: what the shape-only models (the cost model's steps and writer cycles,
    :func:`lane_rows`) plan with, since the quantiser picks a layer's W4 rows by their
    error, not by their position."""
    kind = np.zeros(n, dtype=np.int64)
    if n8 < n:
        kind[np.random.default_rng(n * 7919 + n8).choice(n, n - n8, replace=False)] = 1
    return kind


def lane_rows(n: int, n4: int, params: EngineParams) -> dict[str, int]:
    """Where :func:`plan_columns` puts an ``n``-row layer with ``n4`` rows of the array's
    W4 kind (at :func:`seeded_w4_rows`' places): ``{"w8": rows on W8 lanes, "w4": rows on
    W4 lanes, "steps": output steps}`` (the design report's per-layer lanes)."""
    kind = seeded_w4_rows(n, n - n4) * WEIGHT_KINDS.index(params.w4_kind)
    ch = plan_columns(kind, params).channel
    on_w4 = int((ch[:, :, params.cols_w8 :] >= 0).sum())
    return {"w8": n - on_w4, "w4": on_w4, "steps": int(ch.shape[0])}


@dataclass
class Job:
    """One packed job: the command and the stream contents, as the testbench sends them."""

    cmd: dict
    x_bytes: np.ndarray  # (beats, x_beat * vector) uint8
    w_words: np.ndarray  # (words, w_word_bytes) uint8, little-endian words
    plan: ColumnPlan
    tokens: int
    channels: int
    heads: bool
    macs: int
    heads_n: int = 1
    out_words: int = field(init=False)

    def __post_init__(self):
        self.out_words = self.plan.nsteps * self.tokens


def _le_bytes(values: list[int], nbytes: int) -> np.ndarray:
    return np.frombuffer(
        b"".join(int(v).to_bytes(nbytes, "little") for v in values), dtype=np.uint8
    ).reshape(len(values), nbytes)


def pack_job(
    x,
    q,
    kind,
    bias,
    mult,
    shift,
    params: EngineParams,
    *,
    lo: int = -128,
    hi: int = 127,
    heads: bool = False,
    x_unsigned: bool = False,
    x_log2: bool = False,
) -> Job:
    """Pack one matmul into the engine's streams.

    Shared mode: x (T, K), q (N, K), kind/bias/mult/shift (N,). Heads mode: a leading head
    axis of size <= groups on every array (missing heads are computed on zeros).
    ``x_log2``: x holds 4-bit log2 codes (0..15) and the job computes
    ``requant(log2_code_weights(x) @ q.T + bias)`` (engines built with ``log2``).
    """
    x = np.asarray(x, dtype=np.int64)
    q = np.asarray(q, dtype=np.int64)
    G, V = params.groups, params.vector
    if heads:
        heads_n = x.shape[0]
        if not 1 <= heads_n <= G:
            raise ValueError(f"heads mode needs 1..{G} heads, got {heads_n}")
        if q.ndim != 3 or q.shape[0] != heads_n:
            raise ValueError("heads mode: q must be (heads, N, K) like x (heads, T, K)")
    else:
        if x.ndim != 2 or q.ndim != 2:
            raise ValueError("shared mode: x must be (T, K) and q (N, K)")
        x, q = x[None], q[None]
        heads_n = 1
    kind = np.broadcast_to(np.asarray(kind, dtype=np.int64), q.shape[:2])
    bias = np.broadcast_to(np.asarray(bias, dtype=np.int64), q.shape[:2])
    mult = np.broadcast_to(np.asarray(mult, dtype=np.int64), q.shape[:2])
    shift = np.broadcast_to(np.asarray(shift, dtype=np.int64), q.shape[:2])
    _, T, K = x.shape
    N = q.shape[1]
    if q.shape[2] != K:
        raise ValueError(f"x has K={K} but the weights have K={q.shape[2]}")
    if T < 1 or N < 1 or K < 1:
        raise ValueError(f"empty matmul: T={T}, N={N}, K={K}")
    if x_log2 and not params.log2:
        raise ValueError("x_log2 jobs need an engine built with log2=True")
    if x_log2 and x_unsigned:
        raise ValueError("x_log2 and x_unsigned are exclusive")
    if x_log2:
        lo_x, hi_x = 0, (1 << LOG2_CODE_BITS) - 1
    else:
        lo_x, hi_x = (0, 255) if x_unsigned else (-128, 127)
    if x.min() < lo_x or x.max() > hi_x:
        what = "log2 codes" if x_log2 else "activations"
        raise ValueError(f"{what} must be in [{lo_x}, {hi_x}]")
    if np.abs(q).max() > 128 or q.min() < -128:
        raise ValueError("weights must be int8")
    if np.any(mult < 0) or np.any(mult >= 1 << MULT_BITS):
        raise ValueError("mult must be in [0, 2**16)")
    if np.any(shift < 0) or np.any(shift > 62):
        raise ValueError("shift must be in 0..62")
    if not -128 <= lo <= hi <= 127:
        raise ValueError(f"clamp bounds must satisfy -128 <= lo <= hi <= 127, not {lo}, {hi}")
    ks = -(-K // V)
    if ks > params.max_ksteps:
        raise ValueError(f"K={K} needs {ks} k-steps; this engine holds {params.max_ksteps}")
    if not params.x_fits(T, ks):
        raise ValueError(
            f"X of {T} tokens x {ks} k-steps does not fit the X banks ({params.x_words} words)"
        )
    acc_lim = 1 << (params.acc_bits - 1)
    x_mag = int((log2_code_weights(x) if x_log2 else np.abs(x)).max())
    worst = x_mag * int(np.abs(q).max()) * K
    if worst >= acc_lim:
        raise ValueError(f"sum of products may reach {worst}: exceeds acc_bits={params.acc_bits}")
    if x_log2 and np.any(kind != WEIGHT_KINDS.index("w8")):
        raise ValueError("x_log2 jobs run on the W8 pairs: every weight row must be w8")
    if heads:
        plans = [plan_columns(kind[h], params, heads=True) for h in range(heads_n)]
        nsteps = max(pl.nsteps for pl in plans)
        channel = np.full((nsteps, G, params.cols), -1, dtype=np.int64)
        for h, pl in enumerate(plans):
            channel[: pl.nsteps, h] = pl.channel[:, h]
        plan = ColumnPlan(channel)
    else:
        plan = plan_columns(kind[0], params)
    # X: token-major beats of x_beat words of V bytes (zero padded); heads mode: group
    # after group.
    xv = params.x_beat * V
    xg = np.zeros((G if heads else 1, T, -(-ks * V // xv) * xv), dtype=np.int64)
    xg[:heads_n, :, :K] = x
    x_bytes = (xg.reshape(-1, xv) & 0xFF).astype(np.uint8)
    # W: per step, group, column: parameter word, then ks words of V bytes.
    wbytes = params.w_word_bits // 8 + (params.w_word_bits % 8 > 0)
    words: list[int] = []
    acc_mask = (1 << params.acc_bits) - 1
    for s in range(plan.nsteps):
        for g in range(G):
            h = g if heads else 0
            for c in range(params.cols):
                n = plan.channel[s, g, c]
                if n < 0 or h >= heads_n:
                    words.append(0)
                    words.extend([0] * ks)
                    continue
                words.append(
                    (int(bias[h, n]) & acc_mask)
                    | int(mult[h, n]) << params.acc_bits
                    | int(shift[h, n]) << (params.acc_bits + MULT_BITS)
                )
                row = np.zeros(ks * V, dtype=np.int64)
                row[:K] = q[h, n]
                if c >= params.cols_w8:
                    row = pot4_code(row) if params.w4_kind == "pot4" else row & 0xF
                row = (row & 0xFF).astype(np.uint8).reshape(ks, V)
                words.extend(int.from_bytes(r.tobytes(), "little") for r in row)
    cmd = {
        "tokens": T,
        "ksteps": ks,
        "nsteps": plan.nsteps,
        "heads": int(heads),
        "x_unsigned": int(x_unsigned),
        "x_keep": 0,
        "lo": lo,
        "hi": hi,
        **({"x_log2": int(x_log2)} if params.log2 else {}),
    }
    return Job(
        cmd=cmd,
        x_bytes=x_bytes,
        w_words=_le_bytes(words, wbytes),
        plan=plan,
        tokens=T,
        channels=N,
        heads=heads,
        macs=heads_n * T * N * K,
        heads_n=heads_n,
    )


def split_w_stream(w_words: np.ndarray, params: EngineParams, nsteps: int) -> list[np.ndarray]:
    """A job's ``w`` stream words cut into the engine's ``w_ports`` streams: stream q takes,
    of every step, the words (parameter word + k-step words) of columns ``q*M .. (q+1)*M - 1``
    (``M = G*C / w_ports``; column ``g*C + c``), in stream order."""
    P = params.w_ports
    words = np.asarray(w_words)
    gc = params.groups * params.cols
    per_step = words.reshape(nsteps, gc, -1, *words.shape[1:])
    m = gc // P
    return [per_step[:, q * m : (q + 1) * m].reshape(-1, *words.shape[1:]) for q in range(P)]


def unpack_outputs(o_bytes: np.ndarray, job: Job, params: EngineParams) -> np.ndarray:
    """Output words (rows of ``groups*cols`` int8 bytes) -> Y (T, N), or (heads, T, N)."""
    G, C = params.groups, params.cols
    o = np.asarray(o_bytes, dtype=np.uint8).astype(np.int8).astype(np.int64)
    o = o.reshape(job.plan.nsteps, job.tokens, G, C)
    heads_n = job.heads_n
    y = np.zeros((heads_n, job.tokens, job.channels), dtype=np.int64)
    for s in range(job.plan.nsteps):
        for g in range(G):
            h = g if job.heads else 0
            for c in range(C):
                n = job.plan.channel[s, g, c]
                if n >= 0 and h < heads_n:
                    y[h, :, n] = o[s, :, g, c]
    return y if job.heads else y[0]


def cycle_model(
    tokens: int,
    k: int,
    nsteps: int,
    params: EngineParams,
    *,
    heads: bool = False,
    x_keep: bool = False,
) -> int:
    """Cycles of one job, command handshake to last output word, when no stream stalls.

    Exact for the RTL (tests compare it with Verilator); the recursion is
    :func:`vitaccel.engine_timing.matmul_cycles`.
    """
    p = params
    return matmul_cycles(
        tokens, k, nsteps, p.groups, p.rows, p.cols, p.vector, p.units, heads=heads,
        x_keep=x_keep, w_word_cycles=1 / p.w_ports, x_beat=p.x_beat,
    )  # fmt: skip
