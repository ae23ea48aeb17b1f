"""Tiled matmul engine around the GVSA: on-chip buffers, loaders, issue, requant, output FIFO.

One job computes ``Y = requantize(matmul_int(X, W, bias), mult, shift, lo, hi)`` for any
T x K activations and N x K weights (docs/gvsa.md: dataflow, loop order, cycle model). This
module is the hardware, :class:`MatmulEngine`, and its command layout; the host side of the
same contract (:class:`~vitaccel.engine_host.EngineParams`, the column plan, stream packing,
the cycle model) is the pure module :mod:`vitaccel.engine_host`.
"""

from __future__ import annotations

import functools
import re
from types import SimpleNamespace

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, exact_log2

from vitaccel.engine_host import LOG2_CODE_BITS, MULT_BITS, SHIFT_BITS, EngineParams
from vitaccel.engine_timing import REQUANT_STAGES
from vitaccel.rtl.common import RAM_STYLE, delay, elaborate_parts
from vitaccel.rtl.gvsa import FLAGS, GVSArray

__all__ = [
    "EngineParams",
    "MatmulEngine",
    "CMD_LAYOUT",
    "cmd_layout",
    "cmd_word",
    "engine_array",
    "engine_verilog",
]

_CMD_FIELDS = {
    "tokens": unsigned(16),  # T (per head in heads mode)
    "ksteps": unsigned(16),  # ceil(K / vector)
    "nsteps": unsigned(16),  # output-channel steps (see plan_columns)
    "heads": 1,  # 1: group g has its own X (heads mode); 0: X broadcast (shared)
    "x_unsigned": 1,  # activations are uint8 (softmax probabilities)
    "x_keep": 1,  # X is the previous job's, still in the banks: no X load
    "lo": signed(8),  # clamp bounds of the requantised output
    "hi": signed(8),
}


def cmd_layout(log2: bool = False) -> data.StructLayout:
    """The command of an engine; ``log2`` engines have one more bit, ``x_log2``: the
    activation bytes are 4-bit log2 codes q and each product is ``w << (15 - q)``."""
    return data.StructLayout({**_CMD_FIELDS, **({"x_log2": 1} if log2 else {})})


CMD_LAYOUT = cmd_layout()


def _banks(m: Module, name: str, groups: int, per_group: int, width, depth: int, attrs=None):
    """``groups`` x ``per_group`` memories (``width(j)`` bits wide, ``depth`` words, Memory
    ``attrs``), named ``name.format(g, j)``, as ``[g][j] -> (write port, read port)``."""
    banks = []
    for g in range(groups):
        row = []
        for j in range(per_group):
            mem = Memory(shape=unsigned(width(j)), depth=depth, init=[], attrs=attrs)
            m.submodules[name.format(g, j)] = mem
            row.append((mem.write_port(), mem.read_port()))
        banks.append(row)
    return banks


def _next_value(m: Module, reg: Signal) -> Signal:
    """``reg``'s next value as a net: the register's updates assign it (``m.d.comb``, with the
    same last-one-wins priority as ``m.d.sync``) and ``reg`` takes it each cycle, so flags
    computed from next values can be registered beside ``reg`` (the issue's start decision)."""
    nxt = Signal.like(reg, name=f"{reg.name}_nx")
    m.d.comb += nxt.eq(reg)
    m.d.sync += reg.eq(nxt)
    return nxt


def _x_step(s: SimpleNamespace):
    """X bank words per token and tile: ``ksteps``, or its X beats (``x_beat`` > 1)."""
    return s.job.ksteps if s.x_step is None else s.x_step


def engine_array(params: EngineParams) -> GVSArray:
    """The engine's array (also synthesised alone by ``generate --unit gvsa``)."""
    p = params
    return GVSArray(
        groups=p.groups, rows=p.rows, cols=p.cols, vector=p.vector, w4_share=p.w4_share,
        w4_kind=p.w4_kind, in_bits=p.in_bits, acc_bits=p.acc_bits, log2=p.log2,
    )  # fmt: skip


class MatmulEngine(wiring.Component):
    """Tiled ``Y = requant(X W^T + b)`` on a GVSA with on-chip X/W buffers.

    Parameters
    ----------
    params : EngineParams

    Members
    -------
    cmd : In(stream of CMD_LAYOUT)
        One command per job.
    x : In(stream of ``8*vector`` bits)
        X words (``vector`` activation bytes of one token, one k-step, zero padded past K),
        token-major; in heads mode all tokens of group 0, then group 1, ...
    w : In(stream of ``w_word_bits``)
        Per step, group and column: one parameter word ``bias | mult << acc_bits | shift <<
        (acc_bits + 16)``, then ``ksteps`` weight words (``vector`` bytes; W4 columns use the
        low nibble: int4 two's complement or the pot4 code). With ``w_ports`` > 1 it carries
        the first ``G*C/w_ports`` columns of each step, ``w1``, ``w2``, ``w3`` the next ones.
    o : Out(stream of ``8*groups*cols`` bits)
        One word per valid token per step: byte ``g*cols + c`` is the output of column c of
        group g (see :func:`plan_columns` for its channel).
    busy : Out(1)
        A job is in progress (accepted and not yet drained from the array).
    """

    def __init__(self, params: EngineParams):
        if not isinstance(params, EngineParams):
            raise TypeError(f"params must be an EngineParams, not {params!r}")
        self.params = params
        super().__init__(
            {
                "cmd": In(stream.Signature(cmd_layout(params.log2))),
                "x": In(stream.Signature(unsigned(params.x_word_bits))),
                "w": In(stream.Signature(unsigned(params.w_word_bits))),
                **{
                    f"w{q}": In(stream.Signature(unsigned(params.w_word_bits)))
                    for q in range(1, params.w_ports)
                },
                "o": Out(stream.Signature(unsigned(params.o_word_bits))),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        return elaborate_parts(self._job, self._x_side, self._w_side, self._issue, self._requant)

    def _job(self, m: Module, s: SimpleNamespace) -> None:
        """The array and the job registers."""
        p = self.params
        G, R, C, V = p.groups, p.rows, p.cols, p.vector
        U = p.units
        m.submodules.array = arr = engine_array(p)
        xa_bits = bits_for(p.x_words - 1)
        kb = p.kstep_bits
        kmax = 1 << kb

        # ---- job registers ---------------------------------------------------------------
        job = Signal(cmd_layout(p.log2))
        active = Signal()
        m.d.comb += [self.cmd.ready.eq(~active), self.busy.eq(active)]
        start = Signal()
        m.d.comb += start.eq(self.cmd.valid & self.cmd.ready)
        with m.If(start):
            m.d.sync += [job.eq(self.cmd.payload), active.eq(1)]
        # Job constants minus one, registered at the handshake: comparing counters with
        # ``field - 1`` combinationally made a 16-bit LUT ripple (11 levels) in the loaders.
        kw = kb + 1  # k-step counters: ksteps <= max_ksteps < 2**kw
        ks_last = Signal(kw)
        ks_before_last = Signal(kw + 1)
        # T == 1 (not ``tokens - 1``): a heads-mode group change sets the X loader's xt_last
        # from it, and a 16-bit compare there sat behind the group decision (7 LUT levels)
        tokens_one = Signal()
        tokens_before_last = Signal(17)
        nsteps_last = Signal(16)
        nsteps_before_last = Signal(17)
        with m.If(start):
            m.d.sync += [
                ks_last.eq(self.cmd.payload.ksteps - 1),
                ks_before_last.eq(self.cmd.payload.ksteps - 2),
                tokens_one.eq(self.cmd.payload.tokens == 1),
                tokens_before_last.eq(self.cmd.payload.tokens - 2),
                nsteps_last.eq(self.cmd.payload.nsteps - 1),
                nsteps_before_last.eq(self.cmd.payload.nsteps - 2),
            ]

        # X beats of a token (ceil(ksteps / x_beat)), the X loader's and the issue's unit
        # of X bank addresses; with x_beat = 1 they are the k-step registers themselves.
        if p.x_beat == 1:
            # (x_step read where it is used: the netlist, and so the Verilog, stays as before)
            s.xks_last, s.xks_before_last = ks_last, ks_before_last
            s.x_step = None
        else:
            nb = exact_log2(p.x_beat)
            s.xks_last = Signal(kw, name="xks_last")
            s.xks_before_last = Signal(kw + 1, name="xks_before_last")
            s.x_step = Signal(16, name="x_step")
            beats = (self.cmd.payload.ksteps + p.x_beat - 1) >> nb
            with m.If(start):
                m.d.sync += [
                    s.x_step.eq(beats),
                    s.xks_last.eq(beats - 1),
                    s.xks_before_last.eq(beats - 2),
                ]

        (
            s.C, s.G, s.R, s.U, s.V, s.active, s.arr, s.job, s.kb, s.kmax, s.ks_before_last,
            s.ks_last, s.kw, s.nsteps_before_last, s.p, s.start, s.tokens_before_last,
            s.tokens_one, s.xa_bits
        ) = (
            C, G, R, U, V, active, arr, job, kb, kmax, ks_before_last, ks_last, kw,
            nsteps_before_last, p, start, tokens_before_last, tokens_one, xa_bits
        )  # fmt: skip

    def _x_side(self, m: Module, s: SimpleNamespace) -> None:
        """X buffer (G x R banks) and X loader."""
        (
            G, R, V, job, ks_before_last, ks_last, kw, p, start, tokens_before_last,
            tokens_one, xa_bits
        ) = (
            s.G, s.R, s.V, s.job, s.xks_before_last, s.xks_last, s.kw, s.p, s.start,
            s.tokens_before_last, s.tokens_one, s.xa_bits
        )  # fmt: skip
        N = p.x_beat
        # ---- X buffer: G x R banks (each N sub-banks: a beat writes N k-steps at once) ---
        if N == 1:
            x_banks = _banks(m, "xbank_g{}_r{}", G, R, lambda r: 8 * V, p.x_words,
                             RAM_STYLE[p.x_memory])  # fmt: skip
        else:
            x_banks = _banks(m, "xbank_g{}_s{}", G, R * N, lambda j: 8 * V, p.x_words // N,
                             RAM_STYLE[p.x_memory])  # fmt: skip

        # ---- X loader --------------------------------------------------------------------
        xl_busy = Signal()
        x_done = Signal()
        x_done_nx = _next_value(m, x_done)
        xg = Signal(bits_for(G - 1))
        xr = Signal(bits_for(R - 1))
        xk = Signal(kw)
        xt = Signal(16)
        xbase = Signal(xa_bits + 1)
        xaddr = Signal(xa_bits + 1)
        # "the current k-step / token is the last": registered one word ahead, so that a
        # handshake only ANDs flags (the loader's address updates hang off these).
        xk_last = Signal()
        xt_last = Signal()
        # (a token's first X beat is its last when it holds every k-step)
        one_beat = self.cmd.payload.ksteps == 1 if N == 1 else self.cmd.payload.ksteps <= N
        with m.If(start):
            m.d.sync += [
                xk_last.eq(one_beat),
                xt_last.eq(self.cmd.payload.tokens == 1),
            ]
        # xt == T - 2 ("the next token is the last") from 1-bit registers only: last cycle's
        # compares of xt and xt + 1, picked by how xt moved since (Yosys chained the 16-bit
        # compare behind the token-end and group decisions: 7 LUT levels, 300 MHz allows 6.83)
        xt_eq, xt_eq_next, xt_moved, xt_cleared, two_tokens = (
            Signal(name=n) for n in ("xt_eq", "xt_eq_next", "xt_moved", "xt_cleared", "two_tokens")
        )
        # T - 3: ``xt == T - 3`` is ``xt + 1 == T - 2`` (no false match: T - 3 mod 2**17 is
        # >= 2**16 > xt when T < 3), an equality of registers; ABC rippled ``xt + 1`` into
        # the compare (9 LUT levels into xt_eq_next in the 2-weight-port top)
        tokens_before_last2 = Signal(17)
        with m.If(start):
            m.d.sync += tokens_before_last2.eq(self.cmd.payload.tokens - 3)
        m.d.sync += [
            xt_eq.eq(xt == tokens_before_last),
            xt_eq_next.eq(xt == tokens_before_last2),
            xt_moved.eq(0),
            xt_cleared.eq(start),
        ]
        with m.If(start):
            m.d.sync += two_tokens.eq(self.cmd.payload.tokens == 2)
        xt_next_last = Mux(xt_moved, xt_eq_next, Mux(xt_cleared, two_tokens, xt_eq))
        with m.If(start):
            m.d.comb += x_done_nx.eq(self.cmd.payload.x_keep)
            m.d.sync += [
                xl_busy.eq(~self.cmd.payload.x_keep),
                xg.eq(0),
                xr.eq(0),
                xk.eq(0),
                xt.eq(0),
                xbase.eq(0),
                xaddr.eq(0),
            ]
        m.d.comb += self.x.ready.eq(xl_busy)
        x_take = Signal()
        m.d.comb += x_take.eq(self.x.valid & self.x.ready)
        for g in range(G):
            for r in range(R):
                for b in range(N):
                    # sub-bank b of row r takes word b of the beat (the padding past the
                    # token's last k-step too: it is never read)
                    wp = x_banks[g][r * N + b][0]
                    m.d.comb += [
                        wp.addr.eq(xaddr),
                        wp.data.eq(
                            self.x.payload
                            if N == 1
                            else self.x.payload[8 * V * b : 8 * V * (b + 1)]
                        ),
                        wp.en.eq(x_take & (xr == r) & (~job.heads | (xg == g))),
                    ]
        with m.If(x_take):
            with m.If(xk_last):
                m.d.sync += [
                    xk.eq(0),
                    xt.eq(xt + 1),
                    xk_last.eq(ks_last == 0),
                    xt_last.eq(xt_next_last),
                    xt_moved.eq(1),
                ]
                with m.If(xr == R - 1):
                    m.d.sync += [
                        xr.eq(0),
                        xbase.eq(xbase + _x_step(s)),
                        xaddr.eq(xbase + _x_step(s)),
                    ]
                with m.Else():
                    m.d.sync += [xr.eq(xr + 1), xaddr.eq(xbase)]
                with m.If(xt_last):
                    with m.If(job.heads & (xg != G - 1)):
                        m.d.sync += [
                            xg.eq(xg + 1),
                            xt.eq(0),
                            xt_last.eq(tokens_one),
                            xt_moved.eq(0),
                            xt_cleared.eq(1),
                            xr.eq(0),
                            xbase.eq(0),
                            xaddr.eq(0),
                        ]
                    with m.Else():
                        m.d.sync += xl_busy.eq(0)
                        m.d.comb += x_done_nx.eq(1)
            with m.Else():
                m.d.sync += [
                    xk.eq(xk + 1),
                    xaddr.eq(xaddr + 1),
                    xk_last.eq(xk == ks_before_last),
                ]

        # X base of the tile being loaded (tiles below it are in) and whether it is the
        # last group's, for the issue's streamed start of step 0 (``_issue``)
        s.xbase, s.x_last_group = xbase, ~job.heads | (xg == G - 1)
        s.g, s.r, s.wp, s.x_banks, s.x_done, s.x_done_nx = g, r, wp, x_banks, x_done, x_done_nx

    def _w_side(self, m: Module, s: SimpleNamespace) -> None:
        """W buffer (one bank per group and logical column, two halves) and the W loaders (one per W stream, each owning a contiguous range of columns)."""
        (
            C, G, V, kb, kmax, ks_before_last, ks_last, kw, nsteps_before_last, p, start
        ) = (
            s.C, s.G, s.V, s.kb, s.kmax, s.ks_before_last, s.ks_last, s.kw,
            s.nsteps_before_last, s.p, s.start
        )  # fmt: skip
        # ---- W buffer: one bank per (group, logical column), two halves -----------------
        w_banks = _banks(
            m, "wbank_g{}_c{}", G, C, lambda c: 8 * V if c < p.cols_w8 else 4 * V, 2 * kmax
        )
        par_layout = data.StructLayout(
            {"bias": signed(p.acc_bits), "mult": unsigned(MULT_BITS), "shift": unsigned(6)}
        )
        params = [
            [[Signal(par_layout, name=f"par_g{g}_c{c}_h{h}") for h in range(2)] for c in range(C)]
            for g in range(G)
        ]
        # Per half: w_full = loaded and not yet released, w_taken = its step has started.
        # The issue may start step s only on a full, untaken half: a half still full from
        # step s-2 (not yet drained) must not be mistaken for step s's weights.
        # (``_nx``: their next values, from which the issue registers its start flags)
        w_full_nx = Signal(2)
        w_taken = Signal(2)
        w_taken_nx = _next_value(m, w_taken)
        release = Signal(2)

        # ---- W loaders: one per W stream, each owning a contiguous range of columns -------
        # The (group, column) being loaded is a one-hot register, so a handshake enables
        # its bank and parameter register through one AND (no counter decode). A half is
        # full once every loader has loaded its columns of the step into it.
        P = p.w_ports
        M = G * C // P  # columns per loader
        streams = [self.w] + [getattr(self, f"w{q}") for q in range(1, P)]
        done = [Signal(2, name=f"w_done{q}") for q in range(P)]  # loader q's part of half h
        done_nx = [_next_value(m, d) for d in done]
        m.d.comb += [
            w_full_nx.eq(Cat(*[Cat(*[d[h] for d in done_nx]).all() for h in range(2)])),
        ]
        take_half = Signal(2)  # set by the issue when a step starts on a half
        for q, w in enumerate(streams):
            sfx = "" if q == 0 else str(q)
            wl_busy = Signal(name=f"wl_busy{sfx}")
            ws = Signal(16, name=f"ws{sfx}")
            ws_inc = Signal(16, name=f"ws_inc{sfx}")  # ws + 1, a cycle ahead (a step spans
            m.d.sync += ws_inc.eq(ws + 1)  # >= 2 words)
            w_col = Signal(M, name=f"w_col{sfx}")  # one-hot: g * C + c - q * M
            w_step_end = Signal(name=f"w_step_end{sfx}")  # ws == nsteps - 1
            wk = Signal(kw, name=f"wk{sfx}")
            wk_last = Signal(name=f"wk_last{sfx}")  # wk is the column's last k-step
            w_param = Signal(name=f"w_param{sfx}")
            half = ws[0]
            with m.If(start):
                m.d.sync += [
                    wl_busy.eq(1),
                    ws.eq(0),
                    w_col.eq(1),
                    wk.eq(0),
                    w_param.eq(1),
                    w_step_end.eq(self.cmd.payload.nsteps == 1),
                ]
            # ready == wl_busy & ~done[half], kept in a register computed from the next
            # state (below), so the handshake that fans out to the banks starts at a flip-flop.
            w_ready = Signal(name=f"w_ready{sfx}")
            m.d.comb += w.ready.eq(w_ready)
            w_take = Signal(name=f"w_take{sfx}")
            m.d.comb += w_take.eq(w.valid & w.ready)
            take_param = Signal(name=f"take_param{sfx}")
            take_weight = Signal(name=f"take_weight{sfx}")
            m.d.comb += [take_param.eq(w_take & w_param), take_weight.eq(w_take & ~w_param)]
            word = w.payload
            for j in range(q * M, (q + 1) * M):
                g, c = divmod(j, C)
                wp = w_banks[g][c][0]
                here = w_col[j - q * M]
                if c < p.cols_w8:
                    wdata = word[: 8 * V]
                else:
                    wdata = Cat(*[word[8 * v : 8 * v + 4] for v in range(V)])
                m.d.comb += [
                    wp.addr.eq(Cat(wk[:kb], half)),
                    wp.data.eq(wdata),
                    wp.en.eq(take_weight & here),
                ]
                for h in range(2):
                    with m.If(take_param & here & (half == h)):
                        m.d.sync += params[g][c][h].eq(word[: p.param_bits])
            w_step_loaded = Signal(name=f"w_step_loaded{sfx}")
            # The next weight word ends the step (~w_param & wk_last & w_col[-1]) and ws is
            # the last step, both registered ahead, so that the handshake only ANDs a flag
            # (through the AND chain Yosys made of them the loader held 7 LUT levels; 300 MHz
            # allows 6.83). ws changes only when a step ends, >= 2 words apart.
            step_word = Signal(name=f"w_step_word{sfx}")
            ws_last = Signal(name=f"ws_last{sfx}")
            m.d.sync += ws_last.eq(ws == nsteps_before_last)
            m.d.comb += w_step_loaded.eq(w_take & step_word)
            with m.If(start):
                m.d.sync += step_word.eq(0)
            with m.If(w_take):
                with m.If(w_param):
                    m.d.sync += [w_param.eq(0), wk.eq(0), wk_last.eq(ks_last == 0)]
                    m.d.sync += step_word.eq((ks_last == 0) & w_col[-1])
                with m.Elif(wk_last):
                    m.d.sync += [w_param.eq(1), w_col.eq(Cat(w_col[-1], w_col[:-1]))]
                    m.d.sync += step_word.eq(0)
                    with m.If(w_col[-1]):
                        m.d.sync += [ws.eq(ws_inc), w_step_end.eq(ws_last)]
                        with m.If(w_step_end):
                            m.d.sync += wl_busy.eq(0)
                with m.Else():
                    m.d.sync += [wk.eq(wk + 1), wk_last.eq(wk == ks_before_last)]
                    m.d.sync += step_word.eq((wk == ks_before_last) & w_col[-1])
            # Both outcomes from registers; the handshake (step loaded or not) only selects.
            # Loading a step needs wl_busy, so it never coincides with ``start``.
            kept = Cat(*[done[q][h] & ~release[h] for h in range(2)])  # no step loaded
            ready_if_loaded = ~w_step_end & ~kept.bit_select(~half, 1)
            ready_if_not = Mux(start, ~kept[0], wl_busy & ~kept.bit_select(half, 1))
            m.d.sync += w_ready.eq(Mux(w_step_loaded, ready_if_loaded, ready_if_not))
            for h in range(2):
                with m.If(w_step_loaded & (half == h)):
                    m.d.comb += done_nx[q][h].eq(1)
                with m.Elif(release[h]):
                    m.d.comb += done_nx[q][h].eq(0)
        for h in range(2):
            with m.If(release[h]):
                m.d.comb += w_taken_nx[h].eq(0)
            with m.If(take_half[h]):
                m.d.comb += w_taken_nx[h].eq(1)

        (
            s.c, s.done, s.g, s.j, s.par_layout, s.params, s.release, s.take_half, s.w_banks,
            s.w_full_nx, s.w_taken_nx
        ) = (
            c, done, g, j, par_layout, params, release, take_half, w_banks, w_full_nx, w_taken_nx
        )  # fmt: skip

    def _issue(self, m: Module, s: SimpleNamespace) -> None:
        """Issue: steps x tiles x k-steps, and the shared delay line to the array."""
        (
            C, G, R, U, V, active, arr, done, j, job, kb, ks_before_last, kw,
            nsteps_before_last, p, r, release, start, take_half, w_banks, w_full_nx,
            w_taken_nx, x_banks, x_done_nx, xa_bits
        ) = (
            s.C, s.G, s.R, s.U, s.V, s.active, s.arr, s.done, s.j, s.job, s.kb,
            s.ks_before_last, s.kw, s.nsteps_before_last, s.p, s.r, s.release, s.start,
            s.take_half, s.w_banks, s.w_full_nx, s.w_taken_nx, s.x_banks, s.x_done_nx,
            s.xa_bits
        )  # fmt: skip
        # ---- issue: steps x tiles x k-steps ----------------------------------------------
        credit_bits = bits_for(p.out_depth)
        credits = Signal(credit_bits, init=p.out_depth)
        iss_tile = Signal()  # a tile is being issued
        iss_done = Signal()
        iss_tile_nx, iss_done_nx = _next_value(m, iss_tile), _next_value(m, iss_done)
        ik = Signal(kw)
        iss_s = Signal(16)
        remaining = Signal(17)  # tokens from the current tile on: T - tile * R
        ibase = Signal(xa_bits + 1)
        gap = Signal(bits_for(R))
        gap_nx = _next_value(m, gap)
        pad = Signal(bits_for(R))  # idle cycles after a tile: max(0, R - ksteps)
        # Per-tile quantities are registered whenever ``remaining`` changes, so the issue
        # decision only compares small registers (it sets the controller's logic depth).
        vrows = Signal(bits_for(R))  # valid rows of the current tile: min(R, remaining)
        row_valid = Signal(R)
        tile_last = Signal()  # the current tile is the step's last
        s_last = Signal()  # the current step is the job's last
        k_last_next = Signal()  # ik (the next k-step of the tile) is its last
        # The step after the current one is the job's last (iss_s == nsteps - 2). With rows
        # >= 2 two step ends are >= 2 cycles apart, so it is registered from iss_s every
        # cycle (set with the command for step 0) and a step end only copies it: compared
        # at the step end, the 16-bit compare headed a 7.0-level path into ``s_last`` on
        # the flat 2-group 64-byte 2-port top (300 MHz allows 6.83).
        if R >= 2:
            s_next_last = Signal()
            m.d.sync += s_next_last.eq(iss_s == nsteps_before_last)
        else:
            s_next_last = iss_s == nsteps_before_last
        ks_one = Signal()  # ksteps == 1: a tile's first k-step is also its last

        def tile_values(value):
            return [
                value,
                Mux(value < R, value, R),
                Cat(*[value > r for r in range(R)]),
                value <= R,
            ]

        tile_regs = [remaining, vrows, row_valid, tile_last]

        def set_remaining(values):
            return [reg.eq(val) for reg, val in zip(tile_regs, values, strict=True)]

        # The first tile of a step (T tokens left) and the tile after the current one
        # (remaining - R): registered ahead, so that advancing a tile copies registers. With
        # rows >= 2 two tile ends are >= 2 cycles apart, so "next" is always up to date.
        first_regs = [Signal.like(r, name=f"first_{r.name}") for r in tile_regs]
        if R >= 2:
            next_regs = [Signal.like(r, name=f"next_{r.name}") for r in tile_regs]
            m.d.sync += [
                reg.eq(val) for reg, val in zip(next_regs, tile_values(remaining - R), strict=True)
            ]
        else:
            next_regs = tile_values(remaining - R)

        with m.If(start):
            cmd = self.cmd.payload
            m.d.comb += [iss_done_nx.eq(0), gap_nx.eq(0)]
            m.d.sync += [
                iss_s.eq(0),
                ibase.eq(0),
                pad.eq(Mux(cmd.ksteps < R, R - cmd.ksteps, 0)),
                s_last.eq(cmd.nsteps == 1),
                *([s_next_last.eq(cmd.nsteps == 2)] if R >= 2 else []),
                ks_one.eq(cmd.ksteps == 1),
                *set_remaining(tile_values(cmd.tokens)),
                *[
                    reg.eq(val)
                    for reg, val in zip(first_regs, tile_values(cmd.tokens), strict=True)
                ],
            ]
        parity = iss_s[0]
        # iss_step_open: the current step has started (its half is taken)
        iss_step_open = Signal()
        open_nx = _next_value(m, iss_step_open)
        with m.If(start):
            m.d.comb += open_nx.eq(0)
        # A tile starts when the FIFO has room for a full tile (a constant compare: this is
        # on the start decision's path) and takes its valid rows; the credits after taking
        # are computed from registers in parallel, the decision only selects.
        o_pop = Signal()
        cred_take = Signal(signed(credit_bits + 2))
        m.d.comb += cred_take.eq(credits - vrows)
        # credits >= R, kept in a register beside `credits` (from the next credits' two
        # candidates, each compared before the start decision selects): the compare in the
        # decision made a 9-level path from `credits` in the whole top's netlist
        enough_credits = Signal(init=int(p.out_depth >= R))
        enough_nx = _next_value(m, enough_credits)
        # The start decision from flags registered from the next values of the registers
        # they read (_next_value): go_x, the tile's X is in; go_issue, the issue is free;
        # go_w per W half, the half is full and untaken (or its step open) and the FIFO
        # has room. So can_start is one LUT (active, go_x, go_issue, go_w, parity);
        # computed from the registers themselves it was 3 LUT levels, 8 to the tile
        # registers in the whole top's netlist (300 MHz allows 6.83).
        can_start = Signal(attrs={"keep": 1})
        x_tile_in = Signal()  # the current tile's X is in its banks (before x_done)
        x_tile_in_nx = Signal()
        go_x = Signal()  # x_done | x_tile_in
        go_issue = Signal(init=1)  # ~iss_done & ~iss_tile & (gap == 0)
        go_w = Signal(2)  # half h: w_full & (iss_step_open | ~w_taken) & enough_credits
        m.d.comb += can_start.eq(active & go_x & go_issue & go_w.bit_select(parity, 1))
        with m.If(can_start & ~iss_step_open):
            m.d.comb += [take_half.eq(Mux(parity, 0b10, 0b01)), open_nx.eq(1)]
        # fire: a k-step issues; tile_end: it is the tile's last (fire & k_last, from
        # registers but can_start: a tile starting takes can_start, when iss_tile is 0);
        # step_end: the step's last. Kept nets, one LUT each: the registers behind them
        # select by them (ABC had mapped the chain behind can_start into 5 LUT levels).
        fire = Signal(attrs={"keep": 1})
        m.d.comb += fire.eq(iss_tile | can_start)
        kk = Signal(kw)
        m.d.comb += kk.eq(Mux(iss_tile, ik, 0))
        k_last = Signal()
        m.d.comb += k_last.eq(Mux(iss_tile, k_last_next, ks_one))
        tile_end = Signal(attrs={"keep": 1})
        m.d.comb += tile_end.eq(Mux(iss_tile, k_last_next, can_start & ks_one))
        step_end = Signal(attrs={"keep": 1})
        m.d.comb += step_end.eq(tile_end & tile_last)
        with m.If(gap != 0):
            m.d.comb += gap_nx.eq(gap - 1)
        with m.If(tile_end):  # (tile_end implies fire)
            m.d.comb += [iss_tile_nx.eq(0), gap_nx.eq(pad)]
            with m.If(tile_last):
                m.d.comb += open_nx.eq(0)
                m.d.sync += [
                    *set_remaining(first_regs),
                    ibase.eq(0),
                    iss_s.eq(iss_s + 1),
                    s_last.eq(s_next_last),
                ]
                with m.If(s_last):
                    m.d.comb += iss_done_nx.eq(1)
            with m.Else():
                m.d.sync += [*set_remaining(next_regs), ibase.eq(ibase + _x_step(s))]
        with m.Elif(fire):
            m.d.comb += iss_tile_nx.eq(1)
            m.d.sync += [
                ik.eq(kk + 1),
                k_last_next.eq(kk == ks_before_last),
            ]
        m.d.sync += credits.eq(Mux(can_start, cred_take + o_pop, credits + o_pop))
        keep_ok = Mux(o_pop, credits >= R - 1, credits >= R)  # credits + o_pop >= R
        take_ok = Mux(o_pop, cred_take >= R - 1, cred_take >= R)  # cred_take + o_pop >= R
        m.d.comb += enough_nx.eq(Mux(can_start, take_ok, keep_ok))
        # Step 0 streams behind the X load: a tile issues once the loader has moved past it
        # (its X base beyond the tile's, in the last group in heads mode), so the X load
        # hides behind step 0's compute. Registered (a compare off the issue decision's
        # path), and cleared for the cycle after a tile ends, while ``ibase`` advances.
        m.d.comb += x_tile_in_nx.eq(~tile_end & s.x_last_group & (s.xbase > ibase) & ~start)
        m.d.sync += [
            x_tile_in.eq(x_tile_in_nx),
            go_x.eq(x_done_nx | x_tile_in_nx),
            go_issue.eq(~iss_done_nx & ~iss_tile_nx & (gap_nx == 0)),
            go_w.eq(w_full_nx & (Cat(open_nx, open_nx) | ~w_taken_nx) & Cat(enough_nx, enough_nx)),
        ]

        # Shared delay line: stage j is the issue j cycles later. Row r reads its X bank with
        # the address of stage r and gets its flags from stage r + 1 (memory latency);
        # unit u reads its W banks with the address of stage u.
        N = p.x_beat
        nb = exact_log2(N)
        line_layout = data.StructLayout(
            {
                "xaddr": unsigned(xa_bits + 1),
                "waddr": unsigned(kb + 1),
                "flags": FLAGS,
                "row_valid": unsigned(R),
                # the X sub-bank of the k-step (its address is then kk >> log2(N))
                **({"xsub": unsigned(nb)} if N > 1 else {}),
            }
        )
        depth = max(R + 1, U)
        line = [Signal(line_layout, name=f"line{j}") for j in range(depth)]
        if N > 1:
            xline = [line[0].xaddr.eq(ibase + (kk >> nb)), line[0].xsub.eq(kk[:nb])]
        else:
            xline = [line[0].xaddr.eq(ibase + kk)]
        m.d.sync += [
            *xline,
            line[0].waddr.eq(Cat(kk[:kb], parity)),
            line[0].flags.active.eq(fire),
            line[0].flags.first.eq(~iss_tile),
            line[0].flags.last.eq(k_last),
            line[0].flags.parity.eq(parity),
            line[0].row_valid.eq(row_valid),
        ]
        for j in range(1, depth):
            m.d.sync += line[j].eq(line[j - 1])

        x_uns = job.x_unsigned
        for g in range(G):
            for r in range(R):
                subs = [x_banks[g][r * N + b][1] for b in range(N)]
                for rp in subs:
                    m.d.comb += rp.addr.eq(line[r].xaddr)
                if N > 1:
                    # the data comes a cycle after the address: its sub-bank from stage r + 1
                    xdata = Signal(8 * V, name=f"xdata_g{g}_r{r}")
                    m.d.comb += xdata.eq(
                        Cat(*[rp.data for rp in subs]).word_select(line[r + 1].xsub, 8 * V)
                    )
                else:
                    xdata = subs[0].data
                lanes, hbits = [], []
                for v in range(V):
                    byte = xdata[8 * v : 8 * v + 8]
                    lane = Cat(byte, byte[7] & ~x_uns)
                    if p.log2:
                        # log2 code q -> shift s = 15 - q = ~q: 2**(s mod 8) on the
                        # activation port, s >= 8 on the lane's shift-by-8 bit.
                        s_amt = ~byte[:LOG2_CODE_BITS]
                        one_hot = (Const(1, 9) << s_amt[:3])[:9]
                        lane = Mux(job.x_log2, one_hot, lane)
                        hbits.append(job.x_log2 & s_amt[3])
                    lanes.append(lane)
                if p.log2:
                    m.d.comb += arr.xh[g * R + r].eq(Cat(*hbits))
                flags = line[r + 1].flags
                m.d.comb += [
                    arr.x[g * R + r].eq(Cat(*lanes)),
                    arr.f[g * R + r].active.eq(flags.active),
                    arr.f[g * R + r].first.eq(flags.first),
                    arr.f[g * R + r].last.eq(flags.last),
                    arr.f[g * R + r].parity.eq(flags.parity),
                    arr.f[g * R + r].row_valid.eq(line[r + 1].row_valid[r]),
                ]
            for c in range(C):
                rp = w_banks[g][c][1]
                m.d.comb += rp.addr.eq(line[p.unit_of_column(c)].waddr)
                if c < p.cols_w8:
                    m.d.comb += arr.w8[g * p.cols_w8 + c].as_value().eq(rp.data)
                else:
                    m.d.comb += arr.w4[g * p.cols_w4 + c - p.cols_w8].as_value().eq(rp.data)

        # Release a W half once its step has left the array and latched its parameters.
        lat = p.latencies()
        rel_line = [Signal(2, name=f"rel{j}") for j in range(lat["release"])]
        m.d.sync += rel_line[0].eq(Mux(step_end, Mux(parity, 0b10, 0b01), 0))
        for j in range(1, len(rel_line)):
            m.d.sync += rel_line[j].eq(rel_line[j - 1])
        m.d.comb += release.eq(rel_line[-1])
        # The job ends when every step is issued and every half released (the tail of the
        # last step still drains through requant and the FIFO while the next job loads).
        pending = Cat(*rel_line).any()
        with m.If(active & iss_done & (Cat(*done) == 0) & ~pending):
            m.d.sync += active.eq(0)

        s.c, s.g, s.o_pop = c, g, o_pop

    def _requant(self, m: Module, s: SimpleNamespace) -> None:
        """Requantisation per logical column, then deskew to one word per token; the output FIFO."""
        (
            C, G, U, arr, job, o_pop, p, par_layout, params
        ) = (
            s.C, s.G, s.U, s.arr, s.job, s.o_pop, s.p, s.par_layout, s.params
        )  # fmt: skip
        # ---- requantisation per logical column, then deskew to one word per token -------
        lo_q, hi_q = job.lo, job.hi
        out_bytes = []
        out_valid = None
        for g in range(G):
            for c in range(C):
                col = arr.col_o[g * C + c]
                u = p.unit_of_column(c)
                sel = Signal(par_layout, name=f"sel_g{g}_c{c}")
                m.d.comb += sel.eq(Mux(col.parity, params[g][c][1], params[g][c][0]))
                # stage 1: bias; the right-shift amount max(shift - 1, 0) and shift == 0
                # (the shift amount and the shift == 0 bit travel in delay lines to the
                # stages that use them, the valid bit to the output)
                s1 = Signal(signed(p.acc_bits + 1), name=f"rq_sum_g{g}_c{c}")
                m1 = Signal(unsigned(MULT_BITS), name=f"rq_mult_g{g}_c{c}")
                m.d.sync += [s1.eq(col.value + sel.bias), m1.eq(sel.mult)]
                amt_now = Mux(sel.shift == 0, 0, (sel.shift - 1)[:SHIFT_BITS])
                amt3 = delay(m, amt_now, 3, name=f"rq_amt_g{g}_c{c}")  # at stage 4
                amt4 = delay(m, amt3, 1, name=f"rq_amt3_g{g}_c{c}")  # at stage 5
                raw6 = delay(m, sel.shift == 0, 6, name=f"rq_noshift_g{g}_c{c}")  # stage 7
                valid = delay(m, col.valid, REQUANT_STAGES, name=f"rq_valid_g{g}_c{c}")
                # stages 2, 3: the multiply (two registers, the DSP's M and P registers)
                pw = p.acc_bits + 1 + MULT_BITS + 1
                prod_a = Signal(signed(pw), name=f"rq_prod_a_g{g}_c{c}")
                prod_b = Signal(signed(pw), name=f"rq_prod_b_g{g}_c{c}")
                m.d.sync += [prod_a.eq(s1 * m1), prod_b.eq(prod_a)]
                # stage 4: coarse arithmetic shift by the multiple of 8 in (shift - 1)
                t4 = Signal(signed(pw), name=f"rq_shr8_g{g}_c{c}")
                m.d.sync += t4.eq(prod_b >> Cat(Const(0, 3), amt3[3:]))
                # stage 5: fine shift by the rest, saturated to 10 bits: any value outside
                # [-512, 511] clamps to lo or hi in the end (lo, hi are int8), so the
                # rounding add of stage 6 is 10 bits wide instead of 50.
                # (registered: the 8-way shift and the wide saturation test behind it were a
                # 9-level path; stage 5 is the shift, stage 6 the test)
                fine = Signal(signed(pw), name=f"rq_fine_g{g}_c{c}")
                m.d.sync += fine.eq(t4 >> amt4[:3])
                upper = fine[9:]
                f10 = Signal(signed(10), name=f"rq_f10_g{g}_c{c}")
                big = Signal(name=f"rq_big_g{g}_c{c}")
                small = Signal(name=f"rq_small_g{g}_c{c}")
                m.d.sync += [
                    f10.eq(fine[:10]),
                    big.eq(~fine[-1] & upper.any()),
                    small.eq(fine[-1] & ~upper.all()),
                ]
                # stage 6: round half up, ((p >> (s-1)) + 1) >> 1 == (p + 2**(s-1)) >> s
                # for s >= 1 (s == 0 passes p), then clamp to [lo, hi]
                t6 = Mux(raw6, f10, (f10 + 1) >> 1)
                y = Signal(signed(8), name=f"rq_out_g{g}_c{c}")
                m.d.sync += y.eq(
                    Mux(
                        big,
                        hi_q,
                        Mux(small, lo_q, Mux(t6 < lo_q, lo_q, Mux(t6 > hi_q, hi_q, t6))),
                    )
                )
                # deskew: unit u is u cycles behind unit 0
                cur = delay(m, y, U - 1 - u, name=f"dsk_g{g}_c{c}")
                cur_valid = delay(m, valid, U - 1 - u, name=f"dsk_valid_g{g}_c{c}")
                out_bytes.append(cur)
                if out_valid is None:
                    out_valid = cur_valid

        m.submodules.ofifo = fifo = SyncFIFOBuffered(width=p.o_word_bits, depth=p.out_depth)
        m.d.comb += [
            fifo.w_data.eq(Cat(*[b.as_unsigned() for b in out_bytes])),
            fifo.w_en.eq(out_valid),
            self.o.payload.eq(fifo.r_data),
            self.o.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o.ready),
            o_pop.eq(self.o.valid & self.o.ready),
        ]


def cmd_word(cmd: dict) -> int:
    """The cmd stream payload for a job's command dict (:func:`cmd_layout`)."""
    return cmd_layout("x_log2" in cmd).const(cmd).as_value().value


# Amaranth writes one `initial` assignment per word of every memory, even when all are zero
# (1.9 MB of Verilog for 32k buffer words). Buffers need no initial contents (every word is
# written before it is read, and zero is the power-up value of BRAM and of Verilator), so the
# all-zero memory initialisers are dropped: a deterministic text transform.
_ZERO_MEM_INIT = re.compile(r"  initial begin\n(?:    [\w$\\]+\[\d+\] = \d+'(?:h0+|d0);\n)+  end\n")


@functools.lru_cache(maxsize=8)
def engine_verilog(params: EngineParams, name: str = "gvsa_matmul") -> str:
    """Verilog of a :class:`MatmulEngine` (deterministic; zero memory initialisers removed)."""
    from vitaccel.rtl.verilog import to_verilog

    return _ZERO_MEM_INIT.sub("", to_verilog(MatmulEngine(params), name))
