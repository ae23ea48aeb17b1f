"""AILayerNorm unit (SOLE): PTF alignment, compressed statistics, folded affine, int8 out.

Bit-exact hardware form of :func:`vitaccel.quant.ref.ailayernorm` (statistics as
:func:`vitaccel.quant.ref.ailayernorm_stats`); those docstrings are the definition. The
centred variance needs the mean first, so each row passes three stages, each streaming one
beat of ``lanes`` channels per cycle over a shared ring of row buffers::

    i ─► stage 1: align x << alpha_c, write ring, sum ─► mean = sum*recip (shift-add)
                                                                │ row queue 1
          stage 2: read ring, d = x' - mean, 4-bit compressed   ▼
                   squares (16-entry table + shifts), sum ─► var, 1/sqrt (64-entry table)
                                                                │ row queue 2
          stage 3: read ring, z = d*isq >> s, y = (z*gain_c + bias_c) >> out_shift ─► o

Rows of any length follow each other without bubbles: stage 1 of row r+2 overlaps stage 2
of row r+1 and stage 3 of row r. Every multiplier is a shift-add tree in LUT fabric
(:func:`vitaccel.rtl.common.shift_add_mul`), so the unit uses no DSP48E2.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2

from vitaccel.quant.ref import (
    INT8_MAX,
    INT8_MIN,
    INV_SQRT_BITS,
    INV_SQRT_LUT,
    INV_SQRT_MANT,
    NORM_FRAC,
    SQUARE_LUT16,
)
from vitaccel.rtl.common import (
    CheckedComponent,
    admit_rows,
    check_limits,
    count_bits,
    delay,
    delay_each,
    elaborate_parts,
    leading_one,
    leading_one_registered,
    replay_rows,
    row_signature,
    rshift_round_staged,
    shift_add_mul,
    tree_reduce,
)

__all__ = ["AILayerNorm"]

MAX_ALPHA = 3  # PTF factors are 0..3 (LayerNormParams.alpha)
# Ring slack beyond two rows: covers the pipeline latency of all three stages (a row's
# first output comes 2 * beats + 33 cycles after its first input, + 35 at 8-32 lanes).
RING_SLACK = 48
# More lanes than this: the "lane < count" flags registered and kept beside the ring (_setup).
FLAG_LANES = 32


def _divmod_const(value, divisor: int, chunk: int = 6):
    """``(value // divisor, value % divisor)`` for an unsigned ``value`` and a constant
    ``divisor``, shallow: each ``chunk``-bit slice of ``value`` looks up its own quotient and
    remainder (one LUT level), the remainders are summed and looked up once more, and the
    quotients are added. A generic divider by 12 of a 10-bit address was 9.75 levels."""
    parts = []
    for lo in range(0, len(value), chunk):
        part = value[lo : lo + chunk]
        vals = [v << lo for v in range(1 << len(part))]
        q = Array(Const(v // divisor, bits_for(max(vals) // divisor)) for v in vals)[part]
        r = Array(Const(v % divisor, bits_for(divisor - 1)) for v in vals)[part]
        parts.append((q, r))
    if len(parts) == 1:
        return parts[0]
    rsum = sum((r for _, r in parts[1:]), parts[0][1])
    rmax = len(parts) * (divisor - 1)
    qc = Array(Const(v // divisor, bits_for(rmax // divisor)) for v in range(rmax + 1))[rsum]
    rr = Array(Const(v % divisor, bits_for(divisor - 1)) for v in range(rmax + 1))[rsum]
    return sum((q for q, _ in parts[1:]), parts[0][0]) + qc, rr


def _shift_right(value, amount, width=None, lsb=0):
    """The low ``width`` (default ``len(value)``) bits of ``value >> amount`` (arithmetic
    for a signed value), as one 4-way mux level per two bits of ``amount``, the most
    significant first, each level keeping only the bits the ones below can still reach. A
    4-way mux is one LUT6 a bit; the earlier split by 8s, then by 1s (an 8-way mux, two
    LUTs and a third to join) cost ~40 % more LUTs in the z and y shifters, at the same
    depth. (Yosys' generic shifter of the z product with the rounding increment behind it
    was 7.5 levels.)"""
    width = len(value) if width is None else width
    fill = value[-1] if value.shape().signed else Const(0, 1)
    cur = value
    for lo in reversed(range(0, len(amount), 2)):
        digit = amount[lo : lo + 2]
        step = 1 << (lo + lsb)
        need = width + step - (1 << lsb)  # bits the lower digits can still shift in
        ext = Cat(cur, fill.replicate(step * (2 ** len(digit) - 1) + need))
        cur = Array(ext[k * step : k * step + need] for k in range(2 ** len(digit)))[digit]
    cur = cur[:width]
    return cur.as_signed() if value.shape().signed else cur


class AILayerNorm(CheckedComponent):
    """AILayerNorm over rows of C channels (C <= ``max_channels``), ``lanes`` per cycle.

    Parameters
    ----------
    lanes : int
        Channels per beat and per cycle, 1..64.
    in_bits : int
        Signed input width, 2..12 (8 in the model). The output is int8, as the reference
        clamps to [-128, 127].
    max_channels : int
        Largest C, 1..8192: sizes the constant memories and the ring (two rows plus slack).
    gain_bits, bias_bits : int
        Signed widths of the per-channel folded constants (``LayerNormParams.gain/bias``).
    mult_bits : int
        Width of ``recip_mult`` (``dyadic(1/C)`` gives 16 bits).
    row_queue : int
        Rows that may be in flight after their last input beat (queue depth, 4..64).

    Members
    -------
    i : ``In(stream.Signature(row_layout(signed(in_bits), lanes)))``
        One row (token) of C channels, channel 0 in lane 0 of the first beat; ``count`` valid
        lanes (``lanes`` except on the last beat), ``last`` on the row's final beat.
    o : ``Out(stream.Signature(row_layout(signed(8), lanes)))``
        The normalised row, same framing.
    recip_mult, recip_shift, out_shift, eps_q : ``In``
        Per-layer scalars of ``LayerNormParams`` (``recip_shift``/``out_shift`` 0..63,
        ``eps_q`` 16 bits), sampled with each row's first beat and carried with the row.
        Exactness needs ``recip_mult * C <= 2 * 2**recip_shift`` (a reciprocal of C, as
        ``dyadic(1/C)`` gives), so the mean fits ``in_bits + 5`` bits, and d, the squares,
        the variance and z the widths their bounds under it give (``d_bits`` ...).
    const_addr, const_alpha, const_gain, const_bias, const_we : ``In``
        Write port of the per-channel constants: on a cycle with ``const_we`` high, channel
        ``const_addr`` gets ``alpha`` (0..3), ``gain`` and ``bias``. Load them while the unit
        is not busy (between layers); they persist across reset.
    busy : ``Out(1)``
        Some row is partly received or not yet fully sent.
    """

    LIMITS = dict(lanes=(1, 64), in_bits=(2, 12), max_channels=(1, 8192), gain_bits=(2, 24),
                  bias_bits=(2, 40), mult_bits=(1, 24), row_queue=(4, 64))  # fmt: skip

    @classmethod
    def check(cls, **arguments):
        check_limits(arguments, cls.LIMITS)

    def __init__(
        self,
        *,
        lanes: int = 1,
        in_bits: int = 8,
        max_channels: int = 768,
        gain_bits: int = 16,
        bias_bits: int = 24,
        mult_bits: int = 16,
        row_queue: int = 32,
    ):
        self.lanes, self.in_bits, self.max_channels = lanes, in_bits, max_channels
        self.gain_bits, self.bias_bits, self.mult_bits = gain_bits, bias_bits, mult_bits
        self.row_queue = row_queue
        self.out_bits = 8
        self.max_beats = -(-max_channels // lanes)
        self.ring_depth = 2 * self.max_beats + RING_SLACK
        super().__init__(
            {
                "i": In(row_signature(signed(in_bits), lanes)),
                "o": Out(row_signature(signed(8), lanes)),
                "recip_mult": In(unsigned(mult_bits)),
                "recip_shift": In(unsigned(6)),
                "out_shift": In(unsigned(6)),
                "eps_q": In(unsigned(16)),
                "const_addr": In(unsigned(bits_for(max_channels - 1))),
                "const_alpha": In(unsigned(2)),
                "const_gain": In(signed(gain_bits)),
                "const_bias": In(signed(bias_bits)),
                "const_we": In(1),
                "busy": Out(1),
            }
        )

    # -- widths (see the module docstring of vitaccel.quant.ref for the arithmetic) ---------

    @property
    def aligned_bits(self) -> int:
        return self.in_bits + MAX_ALPHA

    @property
    def mean_bits(self) -> int:
        return self.in_bits + 5

    # The widths below hold under the exactness condition on the reciprocal
    # (``recip_mult * C <= 2 * 2**recip_shift``, which the mean's width already needs), for
    # any int row, per-channel constants and ``eps_q``; each is the bound's bit length:
    # * |mean| <= 2 * 2**(in_bits + 2) (twice the largest |x'|), so
    #   |d| = |x' - mean| <= 3 * 2**(in_bits + 2) (``d_max``);
    # * a compressed square is the square of its interval's midpoint, m*m or
    #   ((m + 1/2) << e)**2, so sq <= (d_max + 2**(e_max - 1))**2 (``square_max``);
    # * var <= 2 * square_max + eps_q (the reciprocal at most doubles the row's mean
    #   square), so the z shift's (p >> 1) is at most (var_bits - 1) // 2;
    # * |z| <= d_max * max(INV_SQRT_LUT) / 2**NORM_FRAC (the shift is >= NORM_FRAC).
    # Until 2026-12 d, the squares, var and z were 1, 3, 29 and 2 bits wider at 8 bits (the
    # widths of any reciprocal); the Amaranth test
    # ``test_ailayernorm_extremes_of_the_reciprocal_condition`` runs rows at the condition's
    # limit (|d| = 3000 of the bound 3072) against the reference.

    @property
    def d_max(self) -> int:
        return 3 << (self.in_bits + 2)

    @property
    def d_bits(self) -> int:
        return self.d_max.bit_length() + 1

    @property
    def square_max(self) -> int:
        e_max = max(0, self.d_max.bit_length() - 4)
        return (self.d_max + ((1 << e_max) >> 1)) ** 2

    @property
    def square_bits(self) -> int:
        return self.square_max.bit_length()

    @property
    def var_bits(self) -> int:
        return (2 * self.square_max + 2**16 - 1).bit_length()

    @property
    def z_bits(self) -> int:
        z_max = -((-self.d_max * max(max(row) for row in INV_SQRT_LUT)) >> NORM_FRAC)
        return z_max.bit_length() + 1

    def elaborate(self, platform):
        return elaborate_parts(
            self._setup, self._constants, self._stage1, self._stage2, self._stage3
        )

    def _setup(self, m: Module, s: SimpleNamespace) -> None:
        """Ring and queue memories, widths and the ring pointer helper."""
        lanes = self.lanes
        cb = count_bits(lanes)
        ab, mw, dw = self.aligned_bits, self.mean_bits, self.d_bits
        cw = bits_for(self.max_channels)
        sum_w = ab + cw
        sq_w = self.square_bits
        vsum_w = sq_w + cw
        var_w = self.var_bits
        beats_shape = unsigned(bits_for(self.max_beats))

        scalars = data.StructLayout(
            {
                "recip_mult": unsigned(self.mult_bits),
                "recip_shift": unsigned(6),
                "out_shift": unsigned(6),
                "eps_q": unsigned(16),
            }
        )
        ring_layout = data.StructLayout(
            {
                "data": data.ArrayLayout(signed(ab), lanes),
                "count": unsigned(cb),
                "last": unsigned(1),
            }
        )
        m.submodules.ring = ring = Memory(shape=ring_layout, depth=self.ring_depth, init=[])
        ring_w = ring.write_port()
        ring_r2 = ring.read_port()
        ring_r3 = ring.read_port()
        aw = ceil_log2(self.ring_depth)
        # Above FLAG_LANES lanes each beat's "lane < count" flags are registered at the
        # input and kept beside the ring (one bit a lane, read with stage 2's ring word): at
        # 64 lanes ``count > lane`` before the masks of stage 1's lane sum and stage 2's |d|
        # held 8.0 and 7.0 levels (count has 7 bits there: no longer one LUT).
        s.flags_w = s.flags_r2 = None
        if lanes > FLAG_LANES:
            m.submodules.ring_flags = flags = Memory(
                shape=unsigned(lanes), depth=self.ring_depth, init=[]
            )
            s.flags_w, s.flags_r2 = flags.write_port(), flags.read_port()

        def wrap_inc(ptr):
            return Mux(ptr == self.ring_depth - 1, 0, ptr + 1)

        (
            s.ab, s.aw, s.beats_shape, s.cb, s.dw, s.lanes, s.mw, s.ring_r2, s.ring_r3,
            s.ring_w, s.scalars, s.sq_w, s.sum_w, s.var_w, s.vsum_w, s.wrap_inc
        ) = (
            ab, aw, beats_shape, cb, dw, lanes, mw, ring_r2, ring_r3, ring_w, scalars, sq_w,
            sum_w, var_w, vsum_w, wrap_inc
        )  # fmt: skip

    def _constants(self, m: Module, s: SimpleNamespace) -> None:
        """Per-channel constants: lane l holds channels c = k*lanes + l."""
        lanes = s.lanes
        # ---------------- per-channel constants: lane l holds channels c = k*lanes + l -----
        if lanes & (lanes - 1) == 0:
            lane_sel = self.const_addr[: ceil_log2(lanes)] if lanes > 1 else Const(0, 1)
            word_sel = self.const_addr >> ceil_log2(lanes)
        else:
            word_sel, lane_sel = _divmod_const(self.const_addr, lanes)
        gb_layout = data.StructLayout(
            {"gain": signed(self.gain_bits), "bias": signed(self.bias_bits)}
        )
        alpha_rd, gb_rd = [], []
        for lane in range(lanes):
            alpha_mem = Memory(shape=unsigned(2), depth=self.max_beats, init=[])
            gb_mem = Memory(shape=gb_layout, depth=self.max_beats, init=[])
            m.submodules[f"alpha{lane}"] = alpha_mem
            m.submodules[f"gainbias{lane}"] = gb_mem
            we = self.const_we & (lane_sel == lane)
            aw_port = alpha_mem.write_port()
            gw_port = gb_mem.write_port()
            m.d.comb += [
                aw_port.addr.eq(word_sel),
                aw_port.data.eq(self.const_alpha),
                aw_port.en.eq(we),
                gw_port.addr.eq(word_sel),
                gw_port.data.gain.eq(self.const_gain),
                gw_port.data.bias.eq(self.const_bias),
                gw_port.en.eq(we),
            ]
            alpha_rd.append(alpha_mem.read_port())
            gb_rd.append(gb_mem.read_port())

        s.alpha_rd, s.gb_layout, s.gb_rd, s.lane = alpha_rd, gb_layout, gb_rd, lane

    def _stage1(self, m: Module, s: SimpleNamespace) -> None:
        """Stage 1: accept, align, store, sum, mean."""
        (
            ab, alpha_rd, aw, beats_shape, cb, lane, lanes, mw, ring_w, scalars, sum_w,
            wrap_inc
        ) = (
            s.ab, s.alpha_rd, s.aw, s.beats_shape, s.cb, s.lane, s.lanes, s.mw, s.ring_w,
            s.scalars, s.sum_w, s.wrap_inc
        )  # fmt: skip
        # ---------------- stage 1: accept, align, store, sum, mean -------------------------
        used, in_flight, in_row, accept, first = admit_rows(
            m, self.i, ring_depth=self.ring_depth, row_queue=self.row_queue
        )
        bcnt = Signal(range(self.max_beats + 1))
        sc_row = Signal(scalars)
        sc_in = Signal(scalars)
        m.d.comb += [
            sc_in.recip_mult.eq(self.recip_mult),
            sc_in.recip_shift.eq(self.recip_shift),
            sc_in.out_shift.eq(self.out_shift),
            sc_in.eps_q.eq(self.eps_q),
        ]
        sc_cur = Mux(first, sc_in, sc_row)
        bidx = Mux(first, 0, bcnt)
        for rp in alpha_rd:
            m.d.comb += [rp.addr.eq(bidx), rp.en.eq(1)]
        with m.If(accept):
            m.d.sync += [
                in_row.eq(~self.i.payload.last),
                sc_row.eq(sc_cur),
                bcnt.eq(bidx + 1),
            ]

        a_v, a_first, a_last = Signal(), Signal(), Signal()
        a_x = Signal(data.ArrayLayout(signed(self.in_bits), lanes))
        a_cnt = Signal(cb)
        a_sc = Signal(scalars)
        a_beats = Signal(beats_shape)
        m.d.sync += [
            a_v.eq(accept),
            a_first.eq(first),
            a_last.eq(self.i.payload.last),
            a_x.eq(self.i.payload.data),
            a_cnt.eq(self.i.payload.count),
            a_sc.eq(sc_cur),
            a_beats.eq(bidx + 1),
        ]
        if s.flags_w is not None:
            a_in = Signal(lanes)
            m.d.sync += a_in.eq(Cat(self.i.payload.count > lane for lane in range(lanes)))
            within = [a_in[lane] for lane in range(lanes)]
        else:
            within = [a_cnt > lane for lane in range(lanes)]
        # A: x' = x << alpha (alpha read with the accept), into the ring; masked lane sum.
        wptr = Signal(aw)
        aligned = [a_x[lane] << alpha_rd[lane].data for lane in range(lanes)]
        m.d.comb += [ring_w.addr.eq(wptr), ring_w.en.eq(a_v)]
        if s.flags_w is not None:
            m.d.comb += [s.flags_w.addr.eq(wptr), s.flags_w.data.eq(a_in), s.flags_w.en.eq(a_v)]
        for lane in range(lanes):
            m.d.comb += ring_w.data.data[lane].eq(aligned[lane])
        m.d.comb += [ring_w.data.count.eq(a_cnt), ring_w.data.last.eq(a_last)]
        with m.If(a_v):
            m.d.sync += wptr.eq(wrap_inc(wptr))
        # AS: the masked aligned lanes registered, then their sum as a balanced adder tree
        # (shift, mask and a 16-lane sum in one stage were 11 LUT levels).
        as_v, as_first, as_last = Signal(), Signal(), Signal()
        as_x = [Signal(signed(ab), name=f"as_x{lane}") for lane in range(lanes)]
        as_sc = Signal(scalars)
        as_beats = Signal(beats_shape)
        m.d.sync += [
            as_v.eq(a_v),
            as_first.eq(a_first),
            as_last.eq(a_last),
            as_sc.eq(a_sc),
            as_beats.eq(a_beats),
        ]
        for lane in range(lanes):
            m.d.sync += as_x[lane].eq(Mux(within[lane], aligned[lane], 0) if lane else aligned[0])
        # The tree has a register every two adder levels (one stage up to 4 lanes, two up
        # to 16: four levels in one stage were 8 LUT levels at 16 lanes).
        b_sum, lat_b1 = tree_reduce(
            m, as_x, lambda a, b: a + b, levels_per_stage=2, name="lane_tree"
        )
        b_v, b_first, b_last, b_sc, b_beats = delay_each(
            m, lat_b1, "b", v=as_v, first=as_first, last=as_last, sc=as_sc, beats=as_beats
        )
        # B: row sum (exact, order-free).
        acc1 = Signal(signed(sum_w))
        acc1_next = Mux(b_first, 0, acc1) + b_sum
        c_v = Signal()
        c_sum = Signal(signed(sum_w))
        c_sc = Signal(scalars)
        c_beats = Signal(beats_shape)
        with m.If(b_v):
            m.d.sync += acc1.eq(acc1_next)
        m.d.sync += [
            c_v.eq(b_v & b_last),
            c_sum.eq(acc1_next),
            c_sc.eq(b_sc),
            c_beats.eq(b_beats),
        ]
        # C..: mean = rshift_round(sum * recip_mult, recip_shift).
        prod1, lat1 = shift_add_mul(m, c_sum, c_sc.recip_mult, name="mean_mul")
        m1_sc = delay(m, c_sc, lat1, name="mean_sc")
        mean_full, lat_r1 = rshift_round_staged(m, prod1, m1_sc.recip_shift, name="mean_rnd")
        mean_reg = Signal(signed(mw))
        m.d.comb += mean_reg.eq(mean_full)
        d1_v = delay(m, c_v, lat1 + lat_r1, name="mean_v")
        d1_sc = delay(m, m1_sc, lat_r1, name="mean_sc_r")
        d1_beats = delay(m, c_beats, lat1 + lat_r1, name="mean_beats")
        desc1 = data.StructLayout({"mean": signed(mw), "sc": scalars, "beats": beats_shape})
        m.submodules.queue1 = queue1 = SyncFIFO(width=desc1.size, depth=self.row_queue)
        q1_in = data.View(desc1, queue1.w_data)
        q1_out = data.View(desc1, queue1.r_data)
        m.d.comb += [
            q1_in.mean.eq(mean_reg),
            q1_in.sc.eq(d1_sc),
            q1_in.beats.eq(d1_beats),
            queue1.w_en.eq(d1_v),
        ]

        (
            s.accept, s.desc1, s.in_flight, s.in_row, s.lane, s.q1_out, s.queue1, s.rp, s.used
        ) = (
            accept, desc1, in_flight, in_row, lane, q1_out, queue1, rp, used
        )  # fmt: skip

    def _stage2(self, m: Module, s: SimpleNamespace) -> None:
        """Stage 2: centred compressed squares, variance, 1/sqrt."""
        (
            aw, beats_shape, desc1, dw, lane, lanes, mw, q1_out, queue1, ring_r2, sq_w, var_w,
            vsum_w, wrap_inc
        ) = (
            s.aw, s.beats_shape, s.desc1, s.dw, s.lane, s.lanes, s.mw, s.q1_out, s.queue1,
            s.ring_r2, s.sq_w, s.var_w, s.vsum_w, s.wrap_inc
        )  # fmt: skip
        # ---------------- stage 2: centred compressed squares, variance, 1/sqrt ------------
        cur2_active = Signal()
        cur2_left = Signal(beats_shape)
        cur2 = Signal(desc1)
        rd2 = Signal(aw)
        pop1 = Signal()
        issue2 = Signal()
        m.d.comb += [
            pop1.eq(~cur2_active & queue1.r_rdy),
            issue2.eq(cur2_active | queue1.r_rdy),
            queue1.r_en.eq(pop1),
            ring_r2.addr.eq(rd2),
            ring_r2.en.eq(1),
        ]
        if s.flags_r2 is not None:
            m.d.comb += [s.flags_r2.addr.eq(rd2), s.flags_r2.en.eq(1)]
        sel2 = Signal(desc1)
        m.d.comb += sel2.eq(Mux(cur2_active, cur2, q1_out))
        with m.If(issue2):
            m.d.sync += rd2.eq(wrap_inc(rd2))
            with m.If(cur2_active):
                m.d.sync += [cur2_left.eq(cur2_left - 1), cur2_active.eq(cur2_left != 1)]
            with m.Else():
                m.d.sync += [
                    cur2.eq(q1_out),
                    cur2_left.eq(q1_out.beats - 1),
                    cur2_active.eq(q1_out.beats != 1),
                ]
        # S1: ring word arrives.
        s1_v, s1_first = Signal(), Signal()
        s1_d = Signal(desc1)
        m.d.sync += [s1_v.eq(issue2), s1_first.eq(pop1), s1_d.eq(sel2)]
        word2 = ring_r2.data
        # S2: |d| per lane (lanes beyond count contribute 0).
        s2_v, s2_first, s2_last = Signal(), Signal(), Signal()
        s2_d = Signal(desc1)
        s2_mag = [Signal(dw, name=f"s2_mag{lane}") for lane in range(lanes)]
        m.d.sync += [s2_v.eq(s1_v), s2_first.eq(s1_first), s2_last.eq(word2.last), s2_d.eq(s1_d)]
        for lane in range(lanes):
            d = word2.data[lane] - s1_d.mean
            mag = Mux(d < 0, -d, d)
            within = s.flags_r2.data[lane] if s.flags_r2 is not None else word2.count > lane
            m.d.sync += s2_mag[lane].eq(Mux(within, mag, 0) if lane else mag)
        # S3E, S3: compress_magnitude: e = max(0, bitlength - 4), then m = |d| >> e a stage
        # later (the leading-one detector, e and the shifter in one stage were 8 LUT levels).
        e_w = bits_for(dw)
        s3e_v, s3e_first, s3e_last = Signal(), Signal(), Signal()
        s3e_d = Signal(desc1)
        s3e_mag = [Signal(dw, name=f"s3e_mag{lane}") for lane in range(lanes)]
        s3e_e = [Signal(e_w, name=f"s3e_e{lane}") for lane in range(lanes)]
        m.d.sync += [
            s3e_v.eq(s2_v),
            s3e_first.eq(s2_first),
            s3e_last.eq(s2_last),
            s3e_d.eq(s2_d),
        ]
        for lane in range(lanes):
            lead = leading_one(s2_mag[lane])
            # bitlength - 4 = lead - 3
            m.d.sync += [
                s3e_mag[lane].eq(s2_mag[lane]),
                s3e_e[lane].eq(Mux(lead >= 4, lead - 3, 0)),
            ]
        s3_v, s3_first, s3_last = Signal(), Signal(), Signal()
        s3_d = Signal(desc1)
        s3_m = [Signal(4, name=f"s3_m{lane}") for lane in range(lanes)]
        s3_e = [Signal(e_w, name=f"s3_e{lane}") for lane in range(lanes)]
        m.d.sync += [s3_v.eq(s3e_v), s3_first.eq(s3e_first), s3_last.eq(s3e_last), s3_d.eq(s3e_d)]
        for lane in range(lanes):
            m.d.sync += [s3_e[lane].eq(s3e_e[lane]), s3_m[lane].eq(s3e_mag[lane] >> s3e_e[lane])]
        # S4: sq = m*m (e == 0) or (m*m + m) << 2e + 1 << (2e - 2), i.e. (4(m*m+m)+1) << (2e-2).
        sq_exact = Array(Const(v, 8) for v in SQUARE_LUT16)
        sq_mid = Array(Const(4 * (v + k) + 1, 10) for k, v in enumerate(SQUARE_LUT16))
        s4_v, s4_first, s4_last = Signal(), Signal(), Signal()
        s4_d = Signal(desc1)
        s4_sq = [Signal(sq_w, name=f"s4_sq{lane}") for lane in range(lanes)]
        m.d.sync += [s4_v.eq(s3_v), s4_first.eq(s3_first), s4_last.eq(s3_last), s4_d.eq(s3_d)]
        for lane in range(lanes):
            mm, e = s3_m[lane], s3_e[lane]
            shifted = sq_mid[mm] << ((e << 1) - 2)[: bits_for(2 * (dw - 5))]
            m.d.sync += s4_sq[lane].eq(Mux(e == 0, sq_exact[mm], shifted))
        # S5: lane sum, a balanced tree with a register every two adder levels (four 27-bit
        # levels at 12-16 lanes in one stage were 9 levels): one stage up to 4 lanes, two
        # up to 16.  S6: row sum.
        s5_sum, lat_s5 = tree_reduce(
            m, s4_sq, lambda a, b: a + b, levels_per_stage=2, name="sq_tree"
        )
        s5_v, s5_first, s5_last, s5_d = delay_each(
            m, lat_s5, "s5", v=s4_v, first=s4_first, last=s4_last, d=s4_d
        )
        acc2 = Signal(vsum_w)
        acc2_next = Mux(s5_first, 0, acc2) + s5_sum
        v_v = Signal()
        v_sum = Signal(vsum_w)
        v_d = Signal(desc1)
        with m.If(s5_v):
            m.d.sync += acc2.eq(acc2_next)
        m.d.sync += [v_v.eq(s5_v & s5_last), v_sum.eq(acc2_next), v_d.eq(s5_d)]
        # var = rshift_round(var_sum * recip_mult, recip_shift) + eps_q.
        prod2, lat2 = shift_add_mul(m, v_sum, v_d.sc.recip_mult, name="var_mul")
        w_v = delay(m, v_v, lat2, name="var_v")
        w_d = delay(m, v_d, lat2, name="var_d")
        # Rounding shift over two stages, then + eps: short carry chains.
        rounded, lat_r2 = rshift_round_staged(m, prod2, w_d.sc.recip_shift, name="var_rnd")
        r_v = delay(m, w_v, lat_r2, name="var_rv")
        r_d = delay(m, w_d, lat_r2, name="var_rd")
        var = Signal(var_w)
        x_v = Signal()
        x_d = Signal(desc1)
        m.d.sync += [var.eq(rounded + r_d.sc.eps_q), x_v.eq(r_v), x_d.eq(r_d)]
        # p = leading one of var over two stages (detector split by a register, then the
        # index registered), m5 = the INV_SQRT_MANT bits below it (zero-padded) in a third:
        # in one stage the detector and the shifter were 12 LUT levels.
        lv_v, lp_v = Signal(), Signal()
        lv_d, lp_d = Signal(desc1), Signal(desc1)
        lv_var, lp_var = Signal(var_w), Signal(var_w)
        lp_p = Signal(range(var_w))
        pos = leading_one_registered(m, var, name="var_lod")
        m.d.sync += [lv_v.eq(x_v), lv_d.eq(x_d), lv_var.eq(var)]
        m.d.sync += [lp_v.eq(lv_v), lp_d.eq(lv_d), lp_var.eq(lv_var), lp_p.eq(pos)]
        y_v = Signal()
        y_d = Signal(desc1)
        y_p = Signal(range(var_w))
        y_mant = Signal(INV_SQRT_MANT)
        # m5 = bits p-5..p-1 of var (zeros below bit 0): the low bits of
        # (var << INV_SQRT_MANT) >> p, as two explicit mux levels (by 8s, then by 1s); the
        # generic shifter of all var_w bits mapped to 8 LUT levels.
        ext = Cat(Const(0, INV_SQRT_MANT), lp_var, Const(0, 8 + INV_SQRT_MANT))
        coarse = Array(ext[8 * k : 8 * k + 8 + INV_SQRT_MANT] for k in range(-(-var_w // 8)))[
            lp_p[3:]
        ]
        norm = Array(coarse[j : j + INV_SQRT_MANT] for j in range(8))[lp_p[:3]]
        m.d.sync += [y_v.eq(lp_v), y_d.eq(lp_d), y_p.eq(lp_p), y_mant.eq(norm)]
        # isq = INV_SQRT_LUT[p & 1][m5]; z shift s = INV_SQRT_BITS + (p >> 1) - NORM_FRAC,
        # queued as p >> 1: stage 3 rounds as ((v >> (s - 1)) + 1) >> 1, the constant part
        # of s - 1 (>= 0) as wiring and only p >> 1 (0..12 at 8 bits) through the shifter.
        assert INV_SQRT_BITS - NORM_FRAC >= 1
        inv_sqrt = Array(Const(v, INV_SQRT_BITS) for row in INV_SQRT_LUT for v in row)
        desc2 = data.StructLayout(
            {
                "mean": signed(mw),
                "isq": unsigned(INV_SQRT_BITS),
                "zhalf": unsigned(bits_for((var_w - 1) // 2)),
                "out_shift": unsigned(6),
                "beats": beats_shape,
            }
        )
        m.submodules.queue2 = queue2 = SyncFIFO(width=desc2.size, depth=self.row_queue)
        q2_in = data.View(desc2, queue2.w_data)
        q2_out = data.View(desc2, queue2.r_data)
        m.d.comb += [
            q2_in.mean.eq(y_d.mean),
            q2_in.isq.eq(inv_sqrt[(y_p[0] << INV_SQRT_MANT) | y_mant]),
            q2_in.zhalf.eq(y_p >> 1),
            q2_in.out_shift.eq(y_d.sc.out_shift),
            q2_in.beats.eq(y_d.beats),
            queue2.w_en.eq(y_v),
        ]

        s.desc2, s.ext, s.lane, s.q2_out, s.queue2 = desc2, ext, lane, q2_out, queue2

    def _stage3(self, m: Module, s: SimpleNamespace) -> None:
        """Stage 3: normalise and affine (stalls as a whole)."""
        (
            accept, aw, beats_shape, cb, desc2, dw, gb_layout, gb_rd, in_flight, in_row, lane,
            lanes, q2_out, queue2, ring_r3, used, wrap_inc
        ) = (
            s.accept, s.aw, s.beats_shape, s.cb, s.desc2, s.dw, s.gb_layout, s.gb_rd,
            s.in_flight, s.in_row, s.lane, s.lanes, s.q2_out, s.queue2, s.ring_r3, s.used,
            s.wrap_inc
        )  # fmt: skip
        # ---------------- stage 3: normalise and affine (stalls as a whole) ----------------
        advance = Signal()
        out_valid = Signal()
        m.d.comb += advance.eq(~out_valid | self.o.ready)
        bidx3 = Signal(beats_shape)
        rd3 = Signal(aw)
        replay = replay_rows(m, queue2, q2_out, advance, beats_shape=beats_shape, name="cur3")
        issue3, pop2, sel3 = replay.issue, replay.pop, replay.sel
        m.d.comb += [ring_r3.addr.eq(rd3), ring_r3.en.eq(advance)]
        beat3 = Mux(replay.active, bidx3, 0)
        for rp in gb_rd:
            m.d.comb += [rp.addr.eq(beat3), rp.en.eq(advance)]
        with m.If(issue3):
            m.d.sync += [rd3.eq(wrap_inc(rd3)), bidx3.eq(beat3 + 1)]
        m.d.sync += [
            used.eq(used + accept - issue3),
            in_flight.eq(in_flight + (accept & self.i.payload.last) - pop2),
        ]

        # T1: ring word and gain/bias arrive.  T2: d = x' - mean.
        t1_v = Signal()
        t1_d = Signal(desc2)
        word3 = ring_r3.data
        t2_v, t2_last = Signal(), Signal()
        t2_cnt = Signal(cb)
        t2_d = Signal(desc2)
        t2_x = [Signal(signed(dw), name=f"t2_d{lane}") for lane in range(lanes)]
        t2_gb = [Signal(gb_layout, name=f"t2_gb{lane}") for lane in range(lanes)]
        with m.If(advance):
            m.d.sync += [t1_v.eq(issue3), t1_d.eq(sel3)]
            m.d.sync += [
                t2_v.eq(t1_v),
                t2_last.eq(word3.last),
                t2_cnt.eq(word3.count),
                t2_d.eq(t1_d),
            ]
            for lane in range(lanes):
                m.d.sync += [
                    t2_x[lane].eq(word3.data[lane] - t1_d.mean),
                    t2_gb[lane].eq(gb_rd[lane].data),
                ]
        # d * isq (shift-add), then z = rshift_round(., s) as ((. >> (s - 1)) + 1) >> 1, the
        # same floor((v + 2**(s-1)) / 2**s): the barrel shifter starts at flip-flops and only
        # a short increment follows (the half's decode, a full-width add and the shifter in
        # one stage were 9.75 levels).
        z_regs = []
        lat_a = 0
        z_fixed = INV_SQRT_BITS - NORM_FRAC - 1  # the constant part of s - 1
        for lane in range(lanes):
            prod, lat_a = shift_add_mul(m, t2_x[lane], t2_d.isq, en=advance, name=f"z_mul{lane}")
            z_regs.append(prod)
        ta_v, ta_last, ta_cnt, ta_d = delay_each(
            m, lat_a, "ta", en=advance, v=t2_v, last=t2_last, cnt=t2_cnt, d=t2_d
        )
        ta_gb = [
            delay(m, t2_gb[lane], lat_a, en=advance, name=f"ta_gb{lane}") for lane in range(lanes)
        ]
        t3_v, t3_last = Signal(), Signal()
        t3_cnt = Signal(cb)
        t3_out_shift = Signal(6)
        t3_z = [Signal(signed(self.z_bits), name=f"t3_z{lane}") for lane in range(lanes)]
        t3_gb = [Signal(gb_layout, name=f"t3_gb{lane}") for lane in range(lanes)]
        with m.If(advance):
            m.d.sync += [
                t3_v.eq(ta_v),
                t3_last.eq(ta_last),
                t3_cnt.eq(ta_cnt),
                t3_out_shift.eq(ta_d.out_shift),
            ]
            for lane in range(lanes):
                m.d.sync += [
                    t3_z[lane].eq((_shift_right(z_regs[lane] >> z_fixed, ta_d.zhalf) + 1) >> 1),
                    t3_gb[lane].eq(ta_gb[lane]),
                ]
        # z * gain (shift-add), then y = clamp(rshift_round(. + bias, out_shift)).
        y_prods = []
        lat_b = 0
        for lane in range(lanes):
            prod, lat_b = shift_add_mul(
                m, t3_z[lane], t3_gb[lane].gain, en=advance, name=f"y_mul{lane}"
            )
            y_prods.append(prod)
        tb_v, tb_last, tb_cnt = delay_each(
            m, lat_b, "tb", en=advance, v=t3_v, last=t3_last, cnt=t3_cnt
        )
        # y = clamp(rshift_round(S, s), -128, 127) with S = z * gain + bias and s = out_shift,
        # rounded as q + r: q = S >> s (floor) and r = bit s - 1 of S (the half). So no add
        # of the half across all of S (it was a second 37-bit adder a lane): a 9-bit window
        # of Cat(0, S) from bit s (r, then q's low 8 bits) is shifted out, and the increment
        # is 8 bits wide. y is clamped when q is outside [-128, 127], or q = 127 and r = 1.
        # For s at or beyond the top of S the window is all sign bits and q + r is -1 + 1
        # or 0 + 0 = 0, as the reference's (S + 2**(s-1)) >> s is for |S| < 2**(s-1) (S
        # has a bit of headroom in sum_bits: |S| < 2**(sum_bits - 2)).
        sum_bits = max(self.z_bits + self.gain_bits, self.bias_bits) + 2
        tb_shift = delay(m, t3_out_shift, lat_b, en=advance, name="tb_shift")
        tb_bias = [
            delay(m, t3_gb[lane].bias, lat_b, en=advance, name=f"tb_bias{lane}")
            for lane in range(lanes)
        ]
        # T4: S = z * gain + bias.  T5: clamp decision; the window by 16s and 4s.
        # T6: by 1s, + r, clamp, int8 out. (A shift, two wide compares and the select in
        # one stage were 8.5 levels.) The clamp is decided on S, beside the shifter:
        # q = S >> s lies outside [-128, 127] exactly when a bit of S at position s + 7 or
        # above (below the sign) differs from the sign: the OR of S ^ sign under a
        # thermometer mask of the bits 7 + k for k >= s, a row constant registered in T4
        # (empty when s + 7 is beyond S). Two bits and their mask bits a LUT6, then a
        # 6-input OR tree: 3 LUT levels from flip-flops, ~17 LUTs a lane fewer at 4 lanes
        # than the compare of S ^ sign against 2**(s + 7) on a carry chain it replaces.
        t4_v, t4_last = Signal(), Signal()
        t4_cnt = Signal(cb)
        t4_shift = Signal(6)
        t4_sum = [Signal(signed(sum_bits), name=f"t4_sum{lane}") for lane in range(lanes)]
        t4_thr = Signal(sum_bits - 8)  # bit k: S's bit 7 + k is above q's int8 range
        with m.If(advance):
            m.d.sync += [
                t4_v.eq(tb_v),
                t4_last.eq(tb_last),
                t4_cnt.eq(tb_cnt),
                t4_shift.eq(tb_shift),
                t4_thr.eq(Cat(*(tb_shift <= k for k in range(sum_bits - 8)))),
            ]
            for lane in range(lanes):
                m.d.sync += t4_sum[lane].eq(y_prods[lane] + tb_bias[lane])
        t5_v, t5_last = Signal(), Signal()
        t5_cnt = Signal(cb)
        t5_fine = Signal(2)
        t5_win = [Signal(12, name=f"t5_win{lane}") for lane in range(lanes)]
        t5_out = [Signal(name=f"t5_outside{lane}") for lane in range(lanes)]
        t5_sign = [Signal(name=f"t5_sign{lane}") for lane in range(lanes)]
        with m.If(advance):
            m.d.sync += [
                t5_v.eq(t4_v),
                t5_last.eq(t4_last),
                t5_cnt.eq(t4_cnt),
                t5_fine.eq(t4_shift[:2]),
            ]
            for lane in range(lanes):
                total = t4_sum[lane]
                sign = total[-1]
                m.d.sync += [
                    t5_out[lane].eq(((total[7:-1] ^ sign.replicate(sum_bits - 8)) & t4_thr).any()),
                    t5_sign[lane].eq(sign),
                    # bits (s & ~3) - 1 .. (s & ~3) + 10 of the sign-extended S
                    t5_win[lane].eq(
                        _shift_right(Cat(Const(0, 1), total).as_signed(), t4_shift[2:], 12, lsb=2)
                    ),
                ]
        o_data = Signal(data.ArrayLayout(signed(8), lanes))
        o_cnt = Signal(cb)
        o_last = Signal()
        with m.If(advance):
            m.d.sync += [out_valid.eq(t5_v), o_last.eq(t5_last), o_cnt.eq(t5_cnt)]
            for lane in range(lanes):
                win = _shift_right(t5_win[lane], t5_fine, 9)
                half, q = win[0], win[1:].as_signed()
                clamp = t5_out[lane] | ((q == INT8_MAX) & half)
                y = Mux(clamp, Mux(t5_sign[lane], INT8_MIN, INT8_MAX), q + half)
                m.d.sync += o_data[lane].eq(y)
        m.d.comb += [
            self.o.valid.eq(out_valid),
            self.o.payload.data.eq(o_data),
            self.o.payload.count.eq(o_cnt),
            self.o.payload.last.eq(o_last),
        ]
        # Beats issued by stage 3 and not yet taken from the output (for busy).
        pending = Signal(range(64))
        m.d.sync += pending.eq(pending + issue3 - (out_valid & self.o.ready))
        m.d.comb += self.busy.eq(in_row | (in_flight != 0) | (pending != 0))
