"""E2Softmax unit (SOLE): base-2 exponent, online normalisation, log-domain division.

Bit-exact hardware form of :func:`vitaccel.quant.ref.e2softmax` (pass 1 is
:func:`vitaccel.quant.ref.e2softmax_k`) with ``SoftmaxParams(in_shift, frac_bits, lanes,
code_bits)``; the docstrings there are the definition. No multiplier and no table larger than
32 entries: the log2(e) factor is folded into the preceding requantisation (``in_shift``),
exponentials are a 4-entry table plus a shift, the division is a leading-one detector, a
32-entry log2 table and a subtraction (pass 2 works in 1/32 log2 units, ``E2_FRAC``).

Structure (docs/nonlinear.md has the diagram)::

    i ──► pass 1: running max, rescaled running sum S (one beat/cycle, 11 stages, 12 > 16 lanes)
                 ├──► row descriptor (m, log2 S, beats) ──► descriptor FIFO
                 └──► each element's rest (dq - 4m, stage C) ──► row ring buffer (>= two rows)
                        ──► pass 2: exponent, output code/probability ──► o

Pass 1 of row r+1 streams in while pass 2 of row r streams out; the ring is elastic (a
circular buffer sized ``max_beats + max(max_beats, pass-1 latency + 4)``), so rows of any
length follow each other without a bubble.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2

from vitaccel.engine_timing import SOFTMAX_WIDE_LANES as WIDE_LANES
from vitaccel.quant.ref import E2_FRAC, EXP2_FRAC4, EXP2_FRAC4_BITS, EXP2_FRAC32, LOG2_MANT32
from vitaccel.rtl.common import (
    CheckedComponent,
    admit_rows,
    check_choice,
    check_limits,
    count_bits,
    delay_each,
    elaborate_parts,
    leading_one_registered,
    replay_rows,
    row_layout,
    row_signature,
    tree_reduce,
)

__all__ = ["E2Softmax", "OUTPUT_FORMATS"]

OUTPUT_FORMATS = ("uint8", "log2")
# Cycles from a row's last input beat to its descriptor being readable by pass 2.
PASS1_LATENCY = 12
# The uint8 output's clamp is a flag for e = 0 (``_output_parts``): it relies on this.
if not EXP2_FRAC32[0] == 256 > max(EXP2_FRAC32[1:]):
    raise AssertionError("EXP2_FRAC32: only entry 0 may reach 256")


def _masked_max(group, size: int):
    """Compare-and-select levels over ``(value, within count)`` pairs of consecutive lanes
    until at most ``size`` remain. The flags are a prefix (``count > lane``) and a pair's flag
    is its first lane's, so a lane beyond count loses every comparison (its flag ands into the
    select, no level of its own) and each result is the maximum of its lanes within count
    (lane 0 always is)."""
    while len(group) > size:
        pairs = [group[j : j + 2] for j in range(0, len(group), 2)]
        group = [
            (Mux(p[1][1] & (p[1][0] > p[0][0]), p[1][0], p[0][0]), p[0][1]) if len(p) == 2 else p[0]
            for p in pairs
        ]
    return group


class E2Softmax(CheckedComponent):
    """E2Softmax over rows of signed logits, ``lanes`` elements per cycle.

    Parameters
    ----------
    lanes : int
        Elements per beat and per cycle (1..64). Equals ``SoftmaxParams.lanes``: the running
        max is updated once per beat, which is part of the reference definition.
    in_bits : int
        Signed input width (2..12; the reference and the model use 8).
    max_row : int
        Longest supported row (tokens), 1..65536. Sizes the ring buffer and the sum S.
        Longer rows are not supported (the unit would wait for buffer space forever).
    frac_bits : int
        F, fraction bits of S (8..20), ``SoftmaxParams.frac_bits``.
    output : str
        ``"uint8"`` (probability, scale 2**-8) or ``"log2"`` (``code_bits``-bit code q,
        p ~ 2**-q), as ``e2softmax(..., output=...)``.
    code_bits : int
        Width of the log2 code (2..6), ``SoftmaxParams.code_bits``.
    row_queue : int
        Rows that may be in flight between the end of pass 1 and the start of pass 2
        (descriptor FIFO depth, 2..64); 16 keeps rows as short as one beat bubble-free.

    Members
    -------
    i : ``In(stream.Signature(row_layout(signed(in_bits), lanes)))``
        Logit beats: ``data`` (element 0 in lane 0), ``count`` valid lanes (``lanes`` on all
        but the last beat of a row), ``last`` on the row's final beat.
    o : ``Out(stream.Signature(row_layout(unsigned(out_bits), lanes)))``
        Same framing; ``out_bits`` is 8 (uint8) or ``code_bits`` (log2). Lanes beyond
        ``count`` carry don't-care values.
    in_shift : ``In(unsigned(4))``
        T of ``SoftmaxParams.in_shift`` (0..12), sampled with each row's first beat and
        carried with the row, so it may change from one row (layer) to the next.
    busy : ``Out(1)``
        A row is partly received or not yet fully sent.
    row_sum : SimpleNamespace
        Set by elaboration, for tests: the pass-1 registers ``valid``, ``r``, ``p`` holding
        each row's final S as ``r >> p`` (valid for one cycle per row, in row order).
    """

    LIMITS = dict(lanes=(1, 64), in_bits=(2, 12), max_row=(1, 65536), frac_bits=(8, 20),
                  code_bits=(2, 6), row_queue=(2, 64))  # fmt: skip

    @classmethod
    def check(cls, *, output, **arguments):
        check_limits(arguments, cls.LIMITS)
        check_choice("output", output, OUTPUT_FORMATS)

    def __init__(
        self,
        *,
        lanes: int = 1,
        in_bits: int = 8,
        max_row: int = 256,
        frac_bits: int = 15,
        output: str = "uint8",
        code_bits: int = 4,
        row_queue: int = 16,
    ):
        self.lanes, self.in_bits, self.max_row = lanes, in_bits, max_row
        self.frac_bits, self.output, self.code_bits = frac_bits, output, code_bits
        self.row_queue = row_queue
        self.out_bits = 8 if output == "uint8" else code_bits
        self.max_beats = -(-max_row // lanes)
        self.pass1_latency = PASS1_LATENCY + (lanes > WIDE_LANES)
        self.ring_depth = self.max_beats + max(self.max_beats, self.pass1_latency + 4)
        super().__init__(
            {
                "i": In(row_signature(signed(in_bits), lanes)),
                "o": Out(row_signature(unsigned(self.out_bits), lanes)),
                "in_shift": In(unsigned(4)),
                "busy": Out(1),
            }
        )

    # -- widths ------------------------------------------------------------------------------

    @property
    def sum_bits(self) -> int:
        """S <= max_row * 2**F (each term is at most 2**F)."""
        return self.frac_bits + bits_for(self.max_row)

    @property
    def rest_bits(self) -> int:
        """The m-free part of dq, ``rest = (h - 4x) >> T`` (``_dq_diff``), which the ring
        stores for pass 2, fits ``in_bits + 3`` signed bits: with ``x`` in
        ``[-2**(xb-1), 2**(xb-1) - 1]``, T = 0 (h = 0) gives ``-4x`` in ``[4 - 2**(xb+1),
        2**(xb+1)]``; T = 1, 2 (h = 0) halve and quarter that; T >= 3 gives
        ``floor((2**(T-1) - 4x) / 2**T)`` in ``[-2**(xb-2), 2**(xb-2)]`` (T = 3 the widest).
        2**(xb+1) (x = -2**(xb-1), T = 0) needs xb + 3 bits. (Pass 2
        reads rest from the ring instead of x: its own subtract and 13:1 shift per lane were
        about a sixth of the unit's LUTs.)"""
        return self.in_bits + 3

    @property
    def e_cap(self) -> int:
        """Pass 2 holds the exponent e (1/32 log2 units, >= 0) capped at this value, since
        every larger e gives the same output as the cap: uint8 is 0 from whole = e >> 5 > 9,
        i.e. from e = 320 (10 whole units) on; the log2 code ``min(q_max, (e + 16) >> 5)`` is
        q_max from e = 32 q_max - 16 on (one below: q_max - 1). Nine bits are needed either
        way: uint8 e = 288 (whole 9, fraction 0) is still 1, so no uint8 cap below 289 gives
        the same outputs. (Clamping the 19-bit sum at 0 alone kept 19 bits a lane up to the
        output.)"""
        if self.output == "uint8":
            return 10 << E2_FRAC
        return (((1 << self.code_bits) - 1) << E2_FRAC) - (1 << (E2_FRAC - 1))

    @property
    def dq_bits(self) -> int:
        """dq = distance below the max in quarter-log2 steps, < 2**(in_bits + 2) + 8."""
        return self.in_bits + 4

    def _term_table(self) -> list[int]:
        # The pass-1 table EXP2_FRAC4 expressed with F fraction bits (a constant shift).
        scale = self.frac_bits - EXP2_FRAC4_BITS
        return [t << scale if scale >= 0 else t >> -scale for t in EXP2_FRAC4]

    # -- the S recurrence ----------------------------------------------------------------------

    # S is held as R with S = R >> p, p < S_STEP: the loop shifts R only by multiples of S_STEP.
    S_STEP = 8

    def _s_step(self, m: Module, r_acc, e_sum, v, delta, rb: int) -> SimpleNamespace:
        """One beat of ``S = (S >> delta) + terms`` (exact, ref.e2softmax_k) on R, ``S = R >> p``.

        With ``P = p + delta``, ``k = P // 8`` and ``p' = P % 8``, ``R' = (R >> 8k) + (terms
        << p')`` holds ``S' = R' >> p'``: ``(R >> 8k) >> p'`` is ``R >> (p + delta)``, which is
        ``S >> delta`` (floors compose), and adding a multiple of ``2**p'`` adds its quotient
        exactly; the bits below ``p'`` are never read. ``delta = sb`` (a row's first beat)
        clears S by itself (S < 2**sb), and R < 2**(sb + 7) = 2**rb. The running p is a 3-bit
        recurrence of its own: the beat's ``k`` and ``p'`` are registered a stage early (stage
        E, from ``delta`` of the beat in E0, valid ``v``), so the R loop in stage F is a 4:1 mux
        (``k``), the adder's LUT and its carry chain (the 25:1 shifter of ``S >> delta`` before
        the adder held 7.25 LUT levels in the tops; 300 MHz allows 6.83). Returns the beat's next
        R (combinational, stage F) and its ``p'`` (a register).
        """
        sb, step = self.sum_bits, self.S_STEP
        lg = ceil_log2(step)
        p_run = Signal(range(step), name="s_p")
        total = p_run + delta
        k = Signal(range((sb + step - 1) // step + 1), name="s_k")
        pn = Signal(range(step), name="s_pn")
        m.d.sync += [k.eq(total >> lg), pn.eq(total[:lg])]
        with m.If(v):
            m.d.sync += p_run.eq(total[:lg])
        value = ((r_acc >> Cat(Const(0, lg), k)) + (e_sum << pn))[:rb]
        return SimpleNamespace(value=value, p=pn)

    # -- shared arithmetic ---------------------------------------------------------------------

    @staticmethod
    def _dq_diff(x, t):
        """dq = ``rshift_round(m*2**T - x, T - 2)`` (or ``<< (2 - T)``) is computed without
        shifting m: since m*2**T is a multiple of 2**T, it equals ``4m + ((h - 4x) >> T)``
        with ``h = 2**(T-1)`` for T >= 3 and 0 otherwise. This is ``h - 4x``; pass 1 shifts
        it by T a stage later (``rest``, which the ring keeps for pass 2) and adds ``4m`` after
        that (the decode of h, the subtraction and the shift held 8.25 LUT levels in one
        stage: 300 MHz allows 6.83)."""
        h = Mux(t >= 3, (Const(1, 1) << t)[1:], 0)
        return h - (x << 2)

    def _wide_max_stage(self, m: Module, v, x, cnt, first, last, t, beats, ceil, inside):
        """Stage P0 of a unit of more than WIDE_LANES lanes: the group maximum's first levels,
        down to WIDE_LANES candidates (at most 4x, two compare-and-select levels: the tree
        over P and B alone held 12.0 levels at 64 lanes, 300 MHz allows 6.83; P and B then
        reduce 4x each, _masked_max). Returns the stage's registers in the arguments' order,
        the candidates and their "within count" flags last."""
        group = _masked_max(list(zip(ceil, inside, strict=True)), WIDE_LANES)
        regs = [Signal(ceil[0].shape(), name=f"p0_max{j}") for j in range(len(group))]
        flags = [Signal(name=f"p0_in{j}") for j in range(len(group))]
        ins = (v, x, cnt, first, last, t, beats)
        names = ("v", "x", "cnt", "first", "last", "t", "beats")
        out = [Signal.like(sig, name=f"p0_{name}") for sig, name in zip(ins, names, strict=True)]
        m.d.sync += [o.eq(sig) for o, sig in zip(out, ins, strict=True)]
        m.d.sync += [r.eq(g) for r, (g, _) in zip(regs, group, strict=True)]
        m.d.sync += [f.eq(g_in) for f, (_, g_in) in zip(flags, group, strict=True)]
        return (*out, regs, flags)

    def elaborate(self, platform):
        return elaborate_parts(self._input_side, self._pass1, self._pass2)

    def _input_side(self, m: Module, s: SimpleNamespace) -> None:
        """Memories, widths; the input side: acceptance, ring write, row bookkeeping."""
        lanes, F = self.lanes, self.frac_bits
        xb = self.in_bits
        mb = xb + 1  # running max in whole log2 units, signed
        sb = self.sum_bits
        # the ring holds each element's rest (``rest_bits``), written by pass 1's stage C
        layout = row_layout(signed(self.rest_bits), lanes)

        m.submodules.ring = ring = Memory(shape=layout, depth=self.ring_depth, init=[])
        ring_w = ring.write_port()
        ring_r = ring.read_port()
        aw = ceil_log2(self.ring_depth) or 1

        desc_layout = data.StructLayout(
            {
                "m": signed(mb),
                "log2s": signed(bits_for(sb << E2_FRAC) + 1),
                "beats": unsigned(bits_for(self.max_beats)),
            }
        )
        m.submodules.queue = queue = SyncFIFO(width=desc_layout.size, depth=self.row_queue)
        q_in = data.View(desc_layout, queue.w_data)
        q_out = data.View(desc_layout, queue.r_data)

        def wrap_inc(ptr):
            return Mux(ptr == self.ring_depth - 1, 0, ptr + 1)

        # ---------------- input side: acceptance, ring write, row bookkeeping -------------
        used, in_flight, in_row, accept, first = admit_rows(
            m, self.i, ring_depth=self.ring_depth, row_queue=self.row_queue
        )
        t_row = Signal(4)
        beats_in = Signal(range(self.max_beats + 1))
        t_cur = Mux(first, self.in_shift, t_row)
        with m.If(accept):
            m.d.sync += [
                in_row.eq(~self.i.payload.last),
                t_row.eq(t_cur),
                beats_in.eq(Mux(first, 1, beats_in + 1)),
            ]

        (
            s.F, s.accept, s.aw, s.beats_in, s.desc_layout, s.first, s.in_flight, s.in_row,
            s.lanes, s.mb, s.q_in, s.q_out, s.queue, s.ring_r, s.ring_w, s.sb, s.t_cur, s.used,
            s.wrap_inc, s.xb
        ) = (
            F, accept, aw, beats_in, desc_layout, first, in_flight, in_row, lanes, mb, q_in,
            q_out, queue, ring_r, ring_w, sb, t_cur, used, wrap_inc, xb
        )  # fmt: skip

    def _pass1(self, m: Module, s: SimpleNamespace) -> None:
        """Pass 1 (never stalls: the ring and queue were checked at accept)."""
        (
            F, accept, beats_in, first, lanes, mb, q_in, queue, sb, t_cur, xb
        ) = (
            s.F, s.accept, s.beats_in, s.first, s.lanes, s.mb, s.q_in, s.queue, s.sb, s.t_cur,
            s.xb
        )  # fmt: skip
        # ---------------- pass 1 (never stalls: the ring and queue were checked at accept) --
        # A: registered input beat, and each element's whole-log2 ceiling ceil(x / 2**T);
        # lanes beyond count take lane 0's ceiling, which leaves the group maximum unchanged.
        a_v = Signal()
        a_x = Signal(data.ArrayLayout(signed(xb), lanes))
        a_cnt = Signal(count_bits(lanes))
        a_first, a_last, a_t = Signal(), Signal(), Signal(4)
        a_beats = Signal.like(beats_in)
        a_ceil = [Signal(signed(mb), name=f"a_ceil{lane}") for lane in range(lanes)]
        ceil = [-((-self.i.payload.data[lane]) >> t_cur) for lane in range(lanes)]
        wide = lanes > WIDE_LANES
        # (wide: each lane's "within count" registered beside its ceiling instead of the
        # select, which sat behind the count compare: 7.0 levels at 64 lanes; the max tree
        # takes the flags, _wide_max_stage)
        a_in = [Signal(name=f"a_in{lane}") for lane in range(lanes)] if wide else []
        for lane in range(lanes):
            if wide:
                m.d.sync += [
                    a_ceil[lane].eq(ceil[lane]),
                    a_in[lane].eq(self.i.payload.count > lane),
                ]
                continue
            v = Mux(self.i.payload.count > lane, ceil[lane], ceil[0]) if lane else ceil[0]
            m.d.sync += a_ceil[lane].eq(v)
        m.d.sync += [
            a_v.eq(accept),
            a_x.eq(self.i.payload.data),
            a_cnt.eq(self.i.payload.count),
            a_first.eq(first),
            a_last.eq(self.i.payload.last),
            a_t.eq(t_cur),
            a_beats.eq(Mux(first, 1, beats_in + 1)),
        ]

        # P, B: the group maximum of the ceilings, a max tree split over two stages (P
        # reduces to at most 4 candidates, B to one): each compare-and-select level is a
        # carry chain and a mux, so 16 lanes in one stage would hold 4 of them.
        def max_level(group):
            pairs = [group[j : j + 2] for j in range(0, len(group), 2)]
            return [Mux(p[1] > p[0], p[1], p[0]) if len(p) == 2 else p[0] for p in pairs]

        if wide:
            a_v, a_x, a_cnt, a_first, a_last, a_t, a_beats, a_ceil, a_in = self._wide_max_stage(
                m, a_v, a_x, a_cnt, a_first, a_last, a_t, a_beats, a_ceil, a_in
            )
            group = _masked_max(list(zip(a_ceil, a_in, strict=True)), 4)
            p_in = [Signal(name=f"p_in{j}") for j in range(len(group))]
            m.d.sync += [p.eq(g_in) for p, (_, g_in) in zip(p_in, group, strict=True)]
            group = [g for g, _ in group]
        else:
            group = list(a_ceil)
            while len(group) > 4:
                group = max_level(group)
        p_group = [Signal(signed(mb), name=f"p_max{j}") for j in range(len(group))]
        p_v, p_first, p_last, p_t = Signal(), Signal(), Signal(), Signal(4)
        p_x = Signal.like(a_x)
        p_cnt = Signal.like(a_cnt)
        p_beats = Signal.like(a_beats)
        m.d.sync += [
            *[p.eq(g) for p, g in zip(p_group, group, strict=True)],
            p_v.eq(a_v),
            p_x.eq(a_x),
            p_cnt.eq(a_cnt),
            p_first.eq(a_first),
            p_last.eq(a_last),
            p_t.eq(a_t),
            p_beats.eq(a_beats),
        ]
        if wide:
            group = [g for g, _ in _masked_max(list(zip(p_group, p_in, strict=True)), 1)]
        else:
            group = list(p_group)
            while len(group) > 1:
                group = max_level(group)
        b_v, b_first, b_last, b_t = Signal(), Signal(), Signal(), Signal(4)
        # h - 4x per lane (the m-free part of dq before its shift by T, see _dq_diff)
        diff0 = self._dq_diff(p_x[0], p_t)
        b_diff = [Signal(diff0.shape(), name=f"b_diff{lane}") for lane in range(lanes)]
        b_cnt = Signal.like(p_cnt)
        b_beats = Signal.like(p_beats)
        b_g = Signal(signed(mb))
        m.d.sync += [
            b_v.eq(p_v),
            *[d.eq(self._dq_diff(p_x[lane], p_t)) for lane, d in enumerate(b_diff)],
            b_cnt.eq(p_cnt),
            b_first.eq(p_first),
            b_last.eq(p_last),
            b_t.eq(p_t),
            b_beats.eq(p_beats),
            b_g.eq(group[0]),
        ]

        # C: running maximum (the only recurrence on m) and the rescale distance.
        run_max = Signal(signed(mb))
        m_new = Mux(b_first | (b_g > run_max), b_g, run_max)
        c_v, c_first, c_last = Signal(), Signal(), Signal()
        c_cnt = Signal.like(b_cnt)
        # each lane's "within count" for stage D's mask, a register of its own: behind the
        # 7-bit count's compare, ABC mapped D's term and mask as 7.0 levels at 64 lanes
        # (lane 0 is always within count)
        c_in = {lane: Signal(name=f"c_in{lane}") for lane in range(1, lanes)}
        m.d.sync += [flag.eq(b_cnt > lane) for lane, flag in c_in.items()]
        c_beats = Signal.like(b_beats)
        c_m = Signal(signed(mb))
        c_delta = Signal(range(sb + 1))  # S >> delta; anything >= sb clears S
        delta = m_new - run_max
        # The m-free part of each element's dq (pass 1 stage D adds 4m): computed here, a
        # stage early, so D holds one add, the 4-entry table and the shift.
        c_r = []
        for lane in range(lanes):
            r = b_diff[lane] >> b_t
            c_r.append(Signal(signed(self.rest_bits), name=f"c_r{lane}"))
            m.d.sync += c_r[lane].eq(r)
        # The ring word is written here, not at accept: pass 2 reads a row's words only after
        # its descriptor (stage H, past this stage for every beat of the row), and ``used``
        # still counts the word from its accept, so admission is as before.
        ring_w, wr_ptr = s.ring_w, Signal(s.aw)
        m.d.comb += [
            ring_w.addr.eq(wr_ptr),
            ring_w.data.data.eq(Cat(c_r)),
            ring_w.data.count.eq(c_cnt),
            ring_w.data.last.eq(c_last),
            ring_w.en.eq(c_v),
        ]
        with m.If(c_v):
            m.d.sync += wr_ptr.eq(s.wrap_inc(wr_ptr))
        with m.If(b_v):
            m.d.sync += run_max.eq(m_new)
        m.d.sync += [
            c_v.eq(b_v),
            c_cnt.eq(b_cnt),
            c_first.eq(b_first),
            c_last.eq(b_last),
            c_beats.eq(b_beats),
            c_m.eq(m_new),
            # a row's first beat: sb, which clears S (F needs no select of its own for it)
            c_delta.eq(Mux(b_first | (delta >= sb), sb, delta)),
        ]

        # D: each element's term EXP2_FRAC4[dq & 3] >> (dq >> 2) with F fraction bits.
        term_table = Array(Const(v, F + 1) for v in self._term_table())
        d_terms = [Signal(F + 1, name=f"d_term{lane}") for lane in range(lanes)]
        d_v, d_first, d_last = Signal(), Signal(), Signal()
        d_m = Signal.like(c_m)
        d_delta = Signal.like(c_delta)
        d_beats = Signal.like(c_beats)
        for lane in range(lanes):
            dq = Signal(self.dq_bits, name=f"c_dq{lane}")
            m.d.comb += dq.eq((c_m << 2) + c_r[lane])
            sh = dq[2:]
            sh_c = Mux(sh > F, F + 1, sh)[: bits_for(F + 1)]
            term = term_table[dq[:2]] >> sh_c
            m.d.sync += d_terms[lane].eq(Mux(c_in[lane], term, 0) if lane else term)
        m.d.sync += [
            d_v.eq(c_v),
            d_first.eq(c_first),
            d_last.eq(c_last),
            d_m.eq(c_m),
            d_delta.eq(c_delta),
            d_beats.eq(c_beats),
        ]

        # E0, E: sum of the beat's terms, the adder tree split over two stages (E0 sums
        # groups of up to 2**ceil(levels / 2) terms): 16 lanes in one stage held 8.25 LUT
        # levels, 300 MHz allows 6.83.
        def add(a, b):
            return a + b

        chunk = 1 << ((ceil_log2(lanes) + 1) // 2)
        e0_parts = [
            Signal(F + 1 + ceil_log2(chunk), name=f"e0_part{j}") for j in range(0, lanes, chunk)
        ]
        for j, part in enumerate(e0_parts):
            m.d.sync += part.eq(tree_reduce(m, d_terms[j * chunk : (j + 1) * chunk], add)[0])
        e0_v, e0_first, e0_last, e0_m, e0_delta, e0_beats = delay_each(
            m, 1, "e0", v=d_v, first=d_first, last=d_last, max=d_m, delta=d_delta,
            beats=d_beats,
        )  # fmt: skip
        e_sum = Signal(F + 1 + ceil_log2(lanes) + 1)
        e_v, e_first, e_last = Signal(), Signal(), Signal()
        e_m = Signal.like(d_m)
        e_beats = Signal.like(d_beats)
        total, _ = tree_reduce(m, e0_parts, add)
        m.d.sync += [
            e_sum.eq(total),
            e_v.eq(e0_v),
            e_first.eq(e0_first),
            e_last.eq(e0_last),
            e_m.eq(e0_m),
            e_beats.eq(e0_beats),
        ]

        # F: S = (S >> delta) + terms, held as R with S = R >> p, p in 0..7 (``_s_step``): the
        # loop is a 4:1 mux, the adder's LUT and its carry chain. The row's final R and p go on
        # to the descriptor stages.
        rb = sb + self.S_STEP - 1
        r_acc = Signal(rb)
        r_next = self._s_step(m, r_acc, e_sum, e0_v, e0_delta, rb)
        f_v = Signal()
        f_r = Signal(rb)
        f_p = Signal(range(self.S_STEP))
        f_m = Signal.like(e_m)
        f_beats = Signal.like(e_beats)
        with m.If(e_v):
            m.d.sync += r_acc.eq(r_next.value)
        self.row_sum = SimpleNamespace(valid=f_v, r=f_r, p=f_p)
        m.d.sync += [
            f_v.eq(e_v & e_last),
            f_r.eq(r_next.value),
            f_p.eq(r_next.p),
            f_m.eq(e_m),
            f_beats.eq(e_beats),
        ]

        # L: leading one of R, its 8-bit slices' (any bit set, local leading one) registered
        # (leading_one_registered). G: the slice ci holding R's leading one, the 16 bits of
        # slices ci-1 and ci, and in them the E2_FRAC bits below the leading one (8 + loc):
        # the mantissa S >> (L - E2_FRAC) of the reference (S >= 2**(F-1), so L >= 7). S = R
        # >> p and S >= 2**(F-1), so S's leading one is R's minus p, and the mantissa bits are
        # the same in R and S. (A whole detector in L held 7.0 levels, and the shift by
        # L - E2_FRAC behind it needed a second detector and a stage of its own.)
        step = 8
        l_v = Signal()
        l_s = Signal(rb)
        l_p = Signal.like(f_p)
        l_m = Signal.like(f_m)
        l_beats = Signal.like(f_beats)
        lead = leading_one_registered(m, f_r, chunk=step, name="l_lod")
        m.d.sync += [
            l_v.eq(f_v),
            l_s.eq(f_r),
            l_p.eq(f_p),
            l_m.eq(f_m),
            l_beats.eq(f_beats),
        ]

        # G: the mantissa and S's leading one.
        g_v = Signal()
        g_lead = Signal(range(sb))
        g_mant = Signal(E2_FRAC)
        g_m = Signal.like(f_m)
        g_beats = Signal.like(f_beats)
        slices = -(-rb // step)
        padded = Cat(Const(0, step), l_s, Const(0, slices * step - rb))
        windows = Array(padded[j * step : (j + 2) * step] for j in range(slices))
        loc, ci = lead[: ceil_log2(step)], lead[ceil_log2(step) :]
        window = windows[ci]
        m.d.sync += [
            g_v.eq(l_v),
            g_lead.eq(lead - l_p),
            g_mant.eq((window[step - E2_FRAC :] >> loc)[:E2_FRAC]),
            g_m.eq(l_m),
            g_beats.eq(l_beats),
        ]

        # H: log2(S / 2**F) in 1/32 units -> descriptor queue.
        log2_mant = Array(Const(v, E2_FRAC + 1) for v in LOG2_MANT32)
        m.d.comb += [
            q_in.m.eq(g_m),
            q_in.log2s.eq(((g_lead - F) << E2_FRAC) + log2_mant[g_mant]),
            q_in.beats.eq(g_beats),
            queue.w_en.eq(g_v),
        ]

        (
            s.a_v, s.b_v, s.c_v, s.d_v, s.e0_v, s.e_v, s.f_v, s.g_v, s.lane
        ) = (
            a_v, b_v, c_v, d_v, e0_v, e_v, f_v, g_v, lane
        )  # fmt: skip

    def _pass2(self, m: Module, s: SimpleNamespace) -> None:
        """Pass 2 (stalls as a whole when the output is not taken)."""
        (
            a_v, accept, aw, b_v, beats_in, c_v, d_v, desc_layout, e0_v, e_v, f_v, g_v,
            in_flight, in_row, lane, lanes, q_out, queue, ring_r, used, wrap_inc
        ) = (
            s.a_v, s.accept, s.aw, s.b_v, s.beats_in, s.c_v, s.d_v, s.desc_layout, s.e0_v,
            s.e_v, s.f_v, s.g_v, s.in_flight, s.in_row, s.lane, s.lanes, s.q_out, s.queue,
            s.ring_r, s.used, s.wrap_inc
        )  # fmt: skip
        # ---------------- pass 2 (stalls as a whole when the output is not taken) -----------
        advance = Signal()
        out_valid = Signal()
        m.d.comb += advance.eq(~out_valid | self.o.ready)

        rd_ptr = Signal(aw)
        replay = replay_rows(m, queue, q_out, advance, beats_shape=beats_in.shape(), name="cur")
        issue, pop, sel, cur_active = replay.issue, replay.pop, replay.sel, replay.active
        m.d.comb += [ring_r.addr.eq(rd_ptr), ring_r.en.eq(advance)]
        with m.If(issue):
            m.d.sync += rd_ptr.eq(wrap_inc(rd_ptr))

        # Ring occupancy and row credits.
        m.d.sync += used.eq(used + accept - issue)
        m.d.sync += in_flight.eq(in_flight + (accept & self.i.payload.last) - pop)

        # R1: ring word arrives (each element's rest = (h - 4x) >> T from pass 1, count,
        # last); the row's descriptor rides along.  R1b: the row's 32m + log2 S.  R2: a delay
        # (pass 2 computed rest itself in R1b and R2 before the ring held it; the stages stay,
        # so the unit's cycles do not change).  R3: the exponent e in 1/32 log2 units,
        # 8 dq + log2 S = 8 rest + (32m + log2 S).  R4: output register.
        r1_v = Signal()
        r1_d = Signal(desc_layout)
        r1b_v, r1b_last = Signal(), Signal()
        r1b_cnt = Signal(count_bits(lanes))
        row_term = (r1_d.m << E2_FRAC) + r1_d.log2s
        r1b_row = Signal(row_term.shape())
        rest_shape = signed(self.rest_bits)
        r1b_rest = [Signal(rest_shape, name=f"r1b_rest{lane}") for lane in range(lanes)]
        r2_v, r2_last = Signal(), Signal()
        r2_cnt = Signal(count_bits(lanes))
        r2_row = Signal.like(r1b_row)
        r2_rest = [Signal(rest_shape, name=f"r2_rest{lane}") for lane in range(lanes)]
        eb = bits_for(self.e_cap)
        r3_v, r3_last = Signal(), Signal()
        r3_cnt = Signal.like(r2_cnt)
        r3_e = [Signal(eb, name=f"r3_e{lane}") for lane in range(lanes)]
        r4_v, r4_last = Signal(), Signal()
        r4_cnt = Signal.like(r2_cnt)
        r4_parts = [self._output_parts(r3_e[lane], lane) for lane in range(lanes)]
        o_data = Signal(data.ArrayLayout(unsigned(self.out_bits), lanes))
        o_cnt = Signal.like(r2_cnt)
        o_last = Signal()
        word = ring_r.data
        with m.If(advance):
            m.d.sync += [r1_v.eq(issue), r1_d.eq(sel)]
            m.d.sync += [
                r1b_v.eq(r1_v),
                r1b_last.eq(word.last),
                r1b_cnt.eq(word.count),
                r1b_row.eq(row_term),
            ]
            m.d.sync += [r.eq(x) for r, x in zip(r1b_rest, word.data, strict=True)]
            m.d.sync += [
                r2_v.eq(r1b_v),
                r2_last.eq(r1b_last),
                r2_cnt.eq(r1b_cnt),
                r2_row.eq(r1b_row),
            ]
            m.d.sync += [r2.eq(r1) for r2, r1 in zip(r2_rest, r1b_rest, strict=True)]
            m.d.sync += [r3_v.eq(r2_v), r3_last.eq(r2_last), r3_cnt.eq(r2_cnt)]
            for lane in range(lanes):
                # e = 8 dq + log2 S with dq = 4m + rest (dq >= 0 on the valid lanes)
                e = (r2_rest[lane] << (E2_FRAC - 2)) + r2_row
                m.d.sync += r3_e[lane].eq(Mux(e < 0, 0, Mux(e > self.e_cap, self.e_cap, e)))
            # R4: the output's first half (R4 -> output: the second)
            m.d.sync += [r4_v.eq(r3_v), r4_last.eq(r3_last), r4_cnt.eq(r3_cnt)]
            for regs, values in r4_parts:
                m.d.sync += [r.eq(v) for r, v in zip(regs, values, strict=True)]
            m.d.sync += [out_valid.eq(r4_v), o_last.eq(r4_last), o_cnt.eq(r4_cnt)]
            for lane in range(lanes):
                m.d.sync += o_data[lane].eq(self._output(r4_parts[lane][0]))
        m.d.comb += [
            self.o.valid.eq(out_valid),
            self.o.payload.data.eq(o_data),
            self.o.payload.count.eq(o_cnt),
            self.o.payload.last.eq(o_last),
        ]

        pipe_busy = (
            a_v
            | b_v
            | c_v
            | d_v
            | e0_v
            | e_v
            | f_v
            | g_v
            | r1_v
            | r1b_v
            | r2_v
            | r3_v
            | r4_v
            | out_valid
        )
        m.d.comb += self.busy.eq(in_row | (in_flight != 0) | cur_active | pipe_busy)

    def _output_parts(self, e, lane):
        """The output's first stage from e (1/32 log2 units): (registers, their values).

        log2: the code ``min(q_max, (e + 16) >> 5)``. uint8: with ``v`` the table value of
        e's fraction and ``w`` its whole part, ``rshift_round(v, w) = (v >> w) + v[w - 1]``
        (``v[-1]`` = 0): the shift and the rounding bit are registered here, with the clamps
        already applied (0 past 9 whole units, 255 for e = 0), and the next stage adds them.
        (Adding the rounding half before the shift took a 10-bit adder and a 16:1 shift of
        its sum per lane, about a quarter of the unit's LUTs; 8 bits of ``v >> w`` and one
        9:1 bit select are less than half of that.)"""
        if self.output == "log2":
            q_max = (1 << self.code_bits) - 1
            q = (e + (1 << (E2_FRAC - 1))) >> E2_FRAC
            code = Signal(self.code_bits, name=f"r4_q{lane}")
            return (code,), (Mux(q > q_max, q_max, q),)
        whole = e >> E2_FRAC
        table = Array(Const(v, 9) for v in EXP2_FRAC32)
        v = table[e[:E2_FRAC]]
        w = whole[:4]  # the whole part itself wherever the output is not 0 (whole <= 9)
        zero = whole > 9
        # v >> w < 256 but for e = 0 (v = EXP2_FRAC32[0] = 256, w = 0): the clamp to 255 is a
        # flag, not a compare. v >> w <= 128 for w >= 1, so the next stage's sum fits 8 bits.
        sat = e == 0
        shifted = Mux(zero, 0, Mux(sat, 255, (v >> w)[:8]))
        rounding = ~zero & (Cat(Const(0, 1), v) >> w)[0]  # v[w - 1]; 0 for w = 0 (and e = 0)
        regs = (Signal(8, name=f"r4_shifted{lane}"), Signal(name=f"r4_round{lane}"))
        return regs, (shifted, rounding)

    def _output(self, parts):
        """The output's second stage: log2 code, or uint8 probability ``(v >> w) + v[w-1]``
        (clamped in ``_output_parts``)."""
        if self.output == "log2":
            return parts[0]
        shifted, rounding = parts
        return (shifted + rounding)[:8]
