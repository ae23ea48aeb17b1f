"""The matmul engine's streams from and to the SPM: the X and W builders, the output writer
and the residual runs of a fused residual add.

Part of :mod:`vitaccel.rtl.spm` (the package docstring describes the whole).
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from vitaccel.design import w_word_bits
from vitaccel.engine_timing import MAPPED_SETTLE as SETTLE
from vitaccel.engine_timing import word_writer_segments, word_writes
from vitaccel.isa import WORD_BYTES
from vitaccel.rtl.common import (
    CheckedComponent,
    check_int,
    row_layout,
    row_signature,
)
from vitaccel.rtl.skid import SkidBuffer
from vitaccel.rtl.spm.readers import RowReader, _room_next
from vitaccel.rtl.spm.scratchpad import (
    ADDR_BITS,
    _check_lanes,
    bank_lanes,
    bank_write_signature,
    read_client_signature,
)
from vitaccel.rtl.spm.writers import run_layout

__all__ = [
    "matmul_out_cmd_layout",
    "MatmulOutWriter",
    "mapped_out_cmd_layout",
    "MappedOutWriter",
    "MixedOutWriter",
    "ResidualRuns",
    "xbuild_cmd_layout",
    "XStreamBuilder",
    "wbuild_cmd_layout",
    "WStreamBuilder",
    "port_w_segments",
    "PortWStreamBuilder",
]


# ---- matmul streams --------------------------------------------------------------------------


def matmul_out_cmd_layout() -> data.StructLayout:
    """A :class:`MatmulOutWriter` job: Y base/stride, T, N, mode and heads."""
    return data.StructLayout(
        {
            "base": unsigned(ADDR_BITS),
            "stride": unsigned(16),
            "tokens": unsigned(16),
            "n": unsigned(16),
            "heads": unsigned(1),  # heads mode: group g writes head g (base + g*head_step)
            "nheads": unsigned(8),  # heads in this job (1..groups); 1 in shared mode
            "head_step": unsigned(16),
            "transposed": unsigned(1),  # OUT_T: element (t, n) to row n, column t
        }
    )


def _mode_consts(groups: int, cols: int):
    """Per mode (shared, heads): channels per step Cm and the row-major segment width."""
    shared = (groups * cols, min(WORD_BYTES, groups * cols))
    heads = (cols, min(WORD_BYTES, cols))
    return shared, heads


class MatmulOutWriter(CheckedComponent):
    """The matmul engine's ``o`` words -> SPM runs.

    Word order (docs/gvsa.md): per output step s, per token t < T, one word of ``groups*cols``
    bytes, byte ``g*cols + c``. In shared mode the step covers channels ``s*G*C ..`` (byte j is
    channel ``s*G*C + j``); in heads mode group g (< nheads) writes channel ``s*C + c`` of head
    g's Y at ``base + g*head_step``. Channels >= N are dropped. Row-major output writes each
    word as runs of up to 16 consecutive channels. OUT_T (element (t, n) to row n, column t)
    gathers 16 tokens of every lane in a ``16 x groups*cols``-byte register buffer (input
    stalls while it is flushed), then writes one 16-byte run per channel.

    On a scratchpad of ``banks`` > 1 banks with ``cols`` a multiple of 16
    (:func:`~vitaccel.engine_timing.word_writes`), a row-major job that is not forced onto
    the runs (``force_runs``: a fused residual add takes the runs) takes the *word path*
    instead: every 16 channels of a group are one aligned SPM word (a *piece*), and the
    writer writes the pieces of an output word in the segments of
    :func:`~vitaccel.engine_timing.word_writer_segments`, a segment (at most one piece per
    bank, e.g. the groups' heads at once in heads mode) a cycle, through ``wo``
    (registered once). The cycle model (:func:`~vitaccel.engine_timing.word_writer_cycles`)
    counts the same segments.

    Members
    -------
    cmd : ``In(stream.Signature(matmul_out_cmd_layout()))``
    i : ``In(stream.Signature(unsigned(8 * groups * cols)))``
    o : ``Out(stream.Signature(run_layout()))``
    chan : ``Out(16)``
        The channel (within the head, in heads mode) of the run on ``o``: a fused residual
        add (:class:`ResidualRuns`) reads its per-channel multipliers with it.
    wo : ``Out(bank_write_signature(banks))``
        (word path only) the pieces, one lane per bank.
    force_runs : ``In(1)``
        (word path only) read with the command: the job's outputs go out as runs on ``o``.
    idle : ``Out(1)``
    """

    @classmethod
    def check(cls, *, groups, cols, banks=1):
        check_int("groups", groups, 1, 64)
        check_int("cols", cols, 1, 64)
        if banks not in (1, 2, 4):
            raise ValueError(f"banks must be 1, 2 or 4, not {banks!r}")

    def __init__(self, *, groups: int, cols: int, banks: int = 1):
        self.groups = groups
        self.cols = cols
        self.banks = banks
        self.word_path = word_writes(cols, banks)
        words = (
            {"wo": Out(bank_write_signature(banks)), "force_runs": In(1)} if self.word_path else {}
        )
        super().__init__(
            {
                "cmd": In(stream.Signature(matmul_out_cmd_layout())),
                "i": In(stream.Signature(unsigned(8 * groups * cols))),
                "o": Out(stream.Signature(run_layout())),
                "chan": Out(16),
                **words,
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        G, C = self.groups, self.cols
        # output words come in through a skid buffer: the engine's FIFO pop and credits
        # never wait for this writer's run logic in the same cycle
        m.submodules.inb = inb = SkidBuffer(unsigned(8 * G * C))
        wiring.connect(m, wiring.flipped(self.i), inb.i)
        sink = inb.o
        (cm_sh, sw_sh), (cm_hd, sw_hd) = _mode_consts(G, C)
        # Every address and bound is a register updated incrementally with two-operand adds,
        # so the run (address, count) comes from short logic (the byte-run writer registers
        # it next).
        job = Signal(matmul_out_cmd_layout())
        active = Signal()
        cm = Signal(16)  # channels per step in this mode
        sw = Signal(5)  # lanes per run in this mode
        cm_stride = Signal(ADDR_BITS)  # cm * stride (rows of one step, OUT_T)

        g_last = Signal()  # on the last group of the word
        g_left = Signal(9)  # groups left in the word, this one included
        t_last = Signal()
        t_left = Signal(17)
        t = Signal(16)
        left_c = Signal(17)  # lanes of this group from c on
        lane0 = Signal(range(G * C + 1))  # first byte of the run in the word
        grp_lane = Signal(range(G * C + 1))  # first byte of this group
        # the next run's first byte in either case (OUT_T selects the flushed lane's bytes a
        # run ahead with them; the adds in front of the select made a 7.25-level path)
        lane_run = Signal(range(2 * G * C + 32))  # lane0 + sw
        lane_grp = Signal(range(2 * G * C + 1))  # grp_lane + C
        n = Signal(17)  # channel of the run
        left_n = Signal(17)  # N - n
        step_n = Signal(17)  # s * cm
        step_left = Signal(17)  # N - s * cm
        tok_base = Signal(ADDR_BITS)  # base + t * stride
        rowaddr = Signal(ADDR_BITS)  # tok_base + g * head_step (row-major)
        step_row_base = Signal(ADDR_BITS)  # base + s * cm * stride (OUT_T)
        grp_nrow = Signal(ADDR_BITS)  # step_row_base + g * head_step
        lane_row = Signal(ADDR_BITS)  # grp_nrow + (n - s*cm) * stride

        # "this run ends its group" is a register, set with the bounds it is computed from:
        # every way the bounds can change has its own compare on registers (the compare of
        # the fresh bounds sat between the writer's ready and every address register)
        grp_last = Signal()
        cm_le_sw = Signal()  # a whole step's group fits one run
        cm_sw = Signal(17)  # cm + sw
        # The end flags move through their next values (`*_n`, the current ones unless a
        # branch below sets them), so "the run ends its word" and "... its step" are
        # registers beside them: the handshake then ANDs one flag (the AND of the flags after
        # the handshake was a chain of 2-input LUTs in an 8-level path into every register).
        grp_last_n, g_last_n, t_last_n = Signal(), Signal(), Signal()
        word_last = Signal()  # grp_last & g_last
        step_last = Signal()  # grp_last & g_last & t_last
        m.d.comb += [grp_last_n.eq(grp_last), g_last_n.eq(g_last), t_last_n.eq(t_last)]
        m.d.sync += [grp_last.eq(grp_last_n), g_last.eq(g_last_n), t_last.eq(t_last_n)]
        # (word_last and step_last are set at the end, with the handshake as the last select)
        # A taken command spends one cycle "fresh" before the job is active: its end flags
        # come from the registered job then (computed from the command's payload they sat
        # behind its valid and the accept, an 8-level path into the flags). The fresh cycle
        # overlaps the engine's latency to its first output word.
        fresh = Signal()
        gact = Mux(job.heads, job.nheads, 1)  # groups that write
        # "one group writes" and "one token" (job constants) as registers set in the fresh
        # cycle: the compares behind a word's or step's end stay off the handshake's path
        gact1, tok1 = Signal(), Signal()
        m.d.comb += self.cmd.ready.eq(~active & ~fresh)
        cmdp = self.cmd.payload
        fresh_grp = cm_le_sw | (job.n <= sw)
        with m.If(fresh):
            m.d.comb += [
                grp_last_n.eq(fresh_grp),
                g_last_n.eq(gact <= 1),
                t_last_n.eq(job.tokens == 1),
            ]
            m.d.sync += [fresh.eq(0), active.eq(1), gact1.eq(gact <= 1), tok1.eq(job.tokens == 1)]
        with m.If(self.cmd.valid & self.cmd.ready):
            gact0 = Mux(cmdp.heads, cmdp.nheads, 1)
            cm0 = Mux(cmdp.heads, cm_hd, cm_sh)
            sw0 = Mux(cmdp.transposed, 1, Mux(cmdp.heads, sw_hd, sw_sh))
            m.d.sync += [
                cm_le_sw.eq(cm0 <= sw0),
                cm_sw.eq(cm0 + sw0),
                job.eq(cmdp),
                fresh.eq((cmdp.tokens != 0) & (cmdp.n != 0)),
                cm.eq(Mux(cmdp.heads, cm_hd, cm_sh)),
                sw.eq(Mux(cmdp.transposed, 1, Mux(cmdp.heads, sw_hd, sw_sh))),
                cm_stride.eq(cmdp.stride * Mux(cmdp.heads, cm_hd, cm_sh)),
                g_left.eq(gact0),
                t.eq(0),
                t_left.eq(cmdp.tokens),
                left_c.eq(Mux(cmdp.heads, cm_hd, cm_sh)),
                lane0.eq(0),
                grp_lane.eq(0),
                lane_run.eq(sw0),
                lane_grp.eq(C),
                n.eq(0),
                left_n.eq(cmdp.n),
                step_n.eq(0),
                step_left.eq(cmdp.n),
                tok_base.eq(cmdp.base),
                rowaddr.eq(cmdp.base),
                step_row_base.eq(cmdp.base),
                grp_nrow.eq(cmdp.base),
                lane_row.eq(cmdp.base),
            ]

        group_last = grp_last
        # bytes of this run, min(left_c, left_n, sw): sw unless the run ends its group (then
        # both bounds are known to be <= sw only one of which needs the compare)
        count = Signal(5)
        m.d.comb += count.eq(Mux(grp_last, Mux(left_c < left_n, left_c, left_n), sw))
        # grp_last after each kind of update (left_c, left_n as they will be)
        # next step: cm, step_left - cm (step_left - cm <= sw as one compare with cm + sw, a
        # job constant: the subtraction in front of it made a 7.25-level path)
        gl_step = cm_le_sw | (step_left <= cm_sw)
        gl_group = cm_le_sw | (step_left <= sw)  # next token or group: cm, step_left
        if self.word_path:
            # (word path) both as registers of the current step, set in the fresh cycle from
            # N and loaded with step_left when a step ends: the next step's gl_group is this
            # step's gl_step (step_left - cm <= sw), its gl_step the compare with 2 cm + sw (a
            # job constant). From step_left in the cycle they are used, they headed a
            # 7.25-level path into step_last (a step's last value is never used when
            # step_left <= cm: the job ends).
            gl_step_r, gl_group_r = Signal(), Signal()
            cm2_sw = Signal(18)  # 2 cm + sw
            with m.If(self.cmd.valid & self.cmd.ready):
                m.d.sync += cm2_sw.eq((cm0 << 1) + sw0)
            with m.If(fresh):
                m.d.sync += [
                    gl_step_r.eq(cm_le_sw | (job.n <= cm_sw)),
                    gl_group_r.eq(fresh_grp),
                ]
            gl_step_nx = cm_le_sw | (step_left <= cm2_sw)
            gl_step, gl_group = gl_step_r, gl_group_r
        gl_run = (left_c <= (sw << 1)) | (left_n <= (sw << 1))  # next run: both - sw

        word = sink.payload
        run = self.o.payload
        # OUT_T: up to 16 tokens of every lane are gathered (buf[lane] byte t % 16), then
        # flushed as one run per channel: row n, columns t0 .. t0 + 15.
        buf = [Signal(8 * WORD_BYTES, name=f"tbuf{lane}") for lane in range(G * C)]
        flushing = Signal()
        # The flushed lane's bytes come from a register, selected a run ahead (the G*C-way
        # select was most of a 9-level path into the byte-run writer); a flush starts with
        # one cycle that selects lane 0 once its last byte is in.
        tdata = Signal(8 * WORD_BYTES)
        tprimed = Signal()
        with m.If(job.transposed):
            m.d.comb += [
                run.addr.eq(lane_row + (t >> 4)),
                run.off.eq(0),
                run.count.eq(t[:4] + 1),
                run.data.as_value().eq(tdata),
            ]
        with m.Else():
            m.d.comb += [
                run.addr.eq(rowaddr + (n >> 4)),
                run.off.eq(n[:4]),
                run.count.eq(count),
            ]
            positions = sorted(
                set(range(0, G * C, sw_sh))
                | {g_ * C + j for g_ in range(G) for j in range(0, C, sw_hd)}
            )
            for p in positions:
                with m.If(lane0 == p):
                    for b in range(WORD_BYTES):
                        # bytes past the word are never written (count); any byte will do
                        q = (p + b) % (G * C)
                        m.d.comb += run.data[b].eq(word[8 * q : 8 * q + 8])

        m.d.comb += self.chan.eq(n)
        # fire: an output leaves (a run taken, or a word path write); a kept net, so the
        # registers select by it last (``_f`` below)
        fire = Signal(attrs={"keep": 1})
        word_end, step_end = word_last, step_last
        if self.word_path:
            # The job's route (runs / direct x OUT_T / not) with ``active`` folded in: four
            # registers set in the fresh cycle and cleared when the job ends. The handshake
            # is then dfire | o.valid & o.ready with both terms one LUT of registers (through
            # active and the modes' selects ABC mapped fire 5 LUTs deep, an 8.0-level path
            # job.transposed -> fire -> the group registers, or 7.0 from active).
            rt, rr, dt, dr = (Signal(name=f"route_{k}") for k in ("rt", "rr", "dt", "dr"))
            route = [rt, rr, dt, dr]
            direct, dfire, more, wbusy, step_regs = self._word_path(
                m, job, fresh, sink, tok_base, step_n, step_left, buf, flushing, t,
                step_row_base, dt, dr)  # fmt: skip
            with m.If(fresh):
                m.d.sync += [
                    rt.eq(~direct & job.transposed),
                    rr.eq(~direct & ~job.transposed),
                    dt.eq(direct & job.transposed),
                    dr.eq(direct & ~job.transposed),
                ]
            m.d.comb += fire.eq((self.o.valid & self.o.ready) | dfire)
            # a direct job's word ends with its last segment, its step with the token's
            word_end = Mux(direct, ~more, word_last)
            step_end = Mux(direct, t_last, step_last)
        else:
            m.d.comb += fire.eq(self.o.valid & self.o.ready)
        t_valid, t_prime = active & flushing & tprimed, flushing & ~tprimed
        t_fire, t_word_end = fire, word_end
        if self.word_path:  # a direct OUT_T job's flushes leave on wo: no runs, no priming
            t_valid, t_prime = rt & flushing & tprimed, t_prime & ~direct
            # the runs' own fire and word end: the word path's stay off tdata's path
            t_fire, t_word_end = t_valid & self.o.ready, word_last
        with m.If(job.transposed):
            m.d.comb += self.o.valid.eq(t_valid)
            with m.If(t_prime):
                m.d.sync += [
                    tdata.eq(Cat(*buf).word_select(lane0, 8 * WORD_BYTES)),
                    tprimed.eq(1),
                ]
            with m.If(t_fire):
                lane_next = Mux(group_last, lane_grp, lane_run)
                if self.word_path:
                    # a tree of 2-way selects by lane_next's bits (lanes past G*C are never
                    # selected: the word ends first); the word select's shifter was mapped
                    # as a chain of 7 LUTs, a 7.0-level path lane_run -> tdata (issue #17)
                    level = list(buf)
                    for k in range(max(1, (G * C - 1).bit_length())):
                        level = [Mux(lane_next[k], level[i + 1], level[i])
                                 if i + 1 < len(level) else level[i]
                                 for i in range(0, len(level), 2)]  # fmt: skip
                    m.d.sync += tdata.eq(level[0])
                else:
                    m.d.sync += tdata.eq(Cat(*buf).word_select(lane_next, 8 * WORD_BYTES))
                with m.If(t_word_end):
                    m.d.sync += tprimed.eq(0)
            t_take = sink.valid & active & ~flushing  # (sink.ready here)
            with m.If(t_take):
                for lane in range(G * C):
                    for j in range(WORD_BYTES):
                        with m.If(t[:4] == j):
                            m.d.sync += buf[lane][8 * j : 8 * j + 8].eq(
                                word[8 * lane : 8 * lane + 8]
                            )
                with m.If((t[:4] == WORD_BYTES - 1) | t_last):
                    m.d.sync += flushing.eq(1)
                with m.Else():  # next token of the chunk
                    m.d.sync += [t.eq(t + 1), t_left.eq(t_left - 1)]
                    m.d.comb += t_last_n.eq(t_left == 2)
        if self.word_path:  # from the route registers: OUT_T's flush or a word's runs
            m.d.comb += self.o.valid.eq(t_valid | (rr & sink.valid))
        else:
            with m.Else():
                m.d.comb += self.o.valid.eq(active & sink.valid)
        # The input's pop as (a register-driven term) | ready & (another): the byte-run
        # writer's ready then meets one LUT before the skid buffer (through the modes'
        # selects it was 8 levels deep into the skid registers)
        pop_any = Signal()  # pops whatever the output's ready
        pop_rdy = Signal()  # pops when the output is taken
        if self.word_path:
            m.d.comb += [  # (dfire & ~more, a row-major job's: dr & sink.valid & ~more)
                pop_any.eq(((rt | dt) & ~flushing) | (dr & sink.valid & ~more)),
                pop_rdy.eq(rr & word_last),
            ]
        else:
            m.d.comb += [
                pop_any.eq(job.transposed & active & ~flushing),
                pop_rdy.eq(~job.transposed & active & word_last),
            ]
        m.d.comb += sink.ready.eq(pop_any | (self.o.ready & pop_rdy))
        # An output's updates (a run, or a word path write) as next values ``*_f`` from
        # registers and compares alone; the handshake (``fire``: the byte-run writer's ready
        # through the output's route) is only the last select into each register (as the
        # outer condition of this case tree it headed an 8-level path into the row address).
        fregs = [flushing, g_left, left_c, lane0, grp_lane, lane_run, lane_grp, t, t_left, step_n,
                 step_left, n, left_n, tok_base, rowaddr, step_row_base, grp_nrow, lane_row,
                 active]  # fmt: skip
        if self.word_path:  # the pieces' flags of the current step (set with step_left)
            fregs += [r for r, _ in step_regs] + [gl_step_r, gl_group_r] + route
        nxt = {id(r): Signal.like(r, name=f"{r.name}_f") for r in fregs}

        def f(r):
            return nxt[id(r)]

        grp_last_f, g_last_f, t_last_f = Signal(), Signal(), Signal()
        m.d.comb += [f(r).eq(r) for r in fregs]
        m.d.comb += [grp_last_f.eq(grp_last), g_last_f.eq(g_last), t_last_f.eq(t_last)]
        with m.If(fire):
            m.d.sync += [r.eq(f(r)) for r in fregs]
            m.d.comb += [grp_last_n.eq(grp_last_f), g_last_n.eq(g_last_f), t_last_n.eq(t_last_f)]
        with m.If(word_end):
            m.d.comb += [
                f(flushing).eq(0),
                g_last_f.eq(gact1),
                f(g_left).eq(gact),
                f(left_c).eq(cm),
                f(lane0).eq(0),
                f(grp_lane).eq(0),
                f(lane_run).eq(sw),
                f(lane_grp).eq(C),
            ]
            with m.If(step_end):  # the step ends
                m.d.comb += [
                    grp_last_f.eq(gl_step),
                    t_last_f.eq(tok1),
                    f(t).eq(0),
                    f(t_left).eq(job.tokens),
                    f(step_n).eq(step_n + cm),
                    f(step_left).eq(step_left - cm),
                    f(n).eq(step_n + cm),
                    f(left_n).eq(step_left - cm),
                    f(tok_base).eq(job.base),
                    f(rowaddr).eq(job.base),
                    f(step_row_base).eq(step_row_base + cm_stride),
                    f(grp_nrow).eq(step_row_base + cm_stride),
                    f(lane_row).eq(step_row_base + cm_stride),
                ]
                if self.word_path:
                    m.d.comb += [f(r).eq(v) for r, v in step_regs]
                    m.d.comb += [f(gl_step_r).eq(gl_step_nx), f(gl_group_r).eq(gl_step_r)]
                with m.If(step_left <= cm):
                    m.d.comb += f(active).eq(0)
                    if self.word_path:
                        m.d.comb += [f(r).eq(0) for r in route]
            with m.Else():
                m.d.comb += [
                    grp_last_f.eq(gl_group),
                    t_last_f.eq(t_left == 2),
                    f(t).eq(t + 1),
                    f(t_left).eq(t_left - 1),
                    f(n).eq(step_n),
                    f(left_n).eq(step_left),
                    f(tok_base).eq(tok_base + job.stride),
                    f(rowaddr).eq(tok_base + job.stride),
                    f(grp_nrow).eq(step_row_base),
                    f(lane_row).eq(step_row_base),
                ]
        with m.Elif(group_last):
            m.d.comb += [
                grp_last_f.eq(gl_group),
                g_last_f.eq(g_left == 2),
                f(g_left).eq(g_left - 1),
                f(left_c).eq(cm),
                f(grp_lane).eq(grp_lane + C),
                f(lane0).eq(grp_lane + C),
                f(lane_run).eq(lane_grp + sw),
                f(lane_grp).eq(lane_grp + C),
                f(n).eq(step_n),
                f(left_n).eq(step_left),
                f(rowaddr).eq(rowaddr + job.head_step),
                f(grp_nrow).eq(grp_nrow + job.head_step),
                f(lane_row).eq(grp_nrow + job.head_step),
            ]
        with m.Else():
            m.d.comb += [
                grp_last_f.eq(gl_run),
                f(left_c).eq(left_c - sw),
                f(lane0).eq(lane0 + sw),
                f(lane_run).eq(lane_run + sw),
                f(n).eq(n + sw),
                f(left_n).eq(left_n - sw),
                f(lane_row).eq(lane_row + job.stride),
            ]
        # "the run ends its word" (grp_last & g_last as they will be) and "... its step" (&
        # t_last): each case's value from registers and compares, the handshake (``fire``,
        # through the output's route) only the last select (as a select of the *_n values
        # above, it headed an 8-level path into step_last)
        t_two = t_left == 2
        f_grp = Mux(word_end, Mux(step_end, gl_step, gl_group), Mux(group_last, gl_group, gl_run))
        f_g = Mux(word_end, gact1, Mux(group_last, g_left == 2, g_last))
        f_t = Mux(word_end, Mux(step_end, tok1, t_two), t_last)
        chunk_on = job.transposed & t_take & ~((t[:4] == WORD_BYTES - 1) | t_last)
        fresh_word = fresh_grp & (gact <= 1)
        m.d.sync += [
            word_last.eq(Mux(fire, f_grp & f_g, Mux(fresh, fresh_word, word_last))),
            step_last.eq(
                Mux(fire, f_grp & f_g & f_t,
                    Mux(fresh, fresh_word & (job.tokens == 1),
                        Mux(chunk_on, word_last & t_two, step_last)))
            ),
        ]  # fmt: skip
        if self.word_path:
            m.d.comb += self.idle.eq(~active & ~fresh & ~inb.busy & ~wbusy)
        else:
            m.d.comb += self.idle.eq(~active & ~fresh & ~inb.busy)
        return m

    def _word_path(self, m: Module, job, fresh, sink, tok_base, step_n, step_left, buf,
                   flushing, t, step_row_base, dt, dr):  # fmt: skip
        """The word path's pieces -> ``wo``. Returns (direct: the job takes it, dfire: a
        segment is written this cycle, more: a later segment of the word writes, busy: a
        registered write is pending, step registers: (register, its value for the next
        output step) pairs the caller loads when a step ends, as it does ``step_left``).

        An OUT_T job whose Y stride is odd takes it too: a flushed chunk's lanes (16 tokens
        of one channel each: one aligned SPM word, row n at ``n * stride`` words) go in
        segments of ``banks`` consecutive lanes, which fall in ``banks`` different banks
        because the stride is a unit mod ``banks`` (lane k of a segment is at bank offset
        ``k * stride``; relative lane r takes the lane k with ``k * stride = r`` mod banks)."""
        G, C, B = self.groups, self.cols, self.banks
        lb = exact_log2(B)
        per = C // WORD_BYTES
        P = G * per
        # segment tables: shared mode, then heads mode for head_step mod B = 0 .. B-1 (OUT_T:
        # segments of B lanes)
        tables = [word_writer_segments(G, C, B, heads=False)] + [
            word_writer_segments(G, C, B, heads=True, head_step=h) for h in range(B)
        ]
        K = max(len(t_) for t_ in tables)
        KT = G * C // B  # OUT_T segments per chunk
        direct = Signal()
        tbl = Signal(range(B + 2))
        # the table and the row-major segment one-hot, registers beside tbl and seg: "a later
        # segment writes" is then an AND-OR of flags (decoded from seg and tbl it was three
        # LUTs of compares in front of the word's end, an 8.0-level path into step_last)
        tbl1h = Signal(B + 2)
        seg1h = Signal(K)
        seg = Signal(range(max(K, KT, 2)))
        grp_ok = Signal(G)  # group g writes (shared: all; heads: g < nheads)
        grp_off = [Signal(ADDR_BITS, name=f"grp_off{g}") for g in range(G)]  # g * head_step
        # OUT_T: relative lane r takes segment lane k = r / stride mod B, at word offset
        # k * stride from the segment's first lane: k = r for stride 1 mod 4 (and on 2
        # banks), lanes 1 and 3 swap for stride 3 mod 4 (``srev``)
        srev = Signal()

        def kinv(r, lanes):
            return Mux(srev, lanes[-r % B], lanes[r]) if B == 4 and r % 2 else lanes[r]

        cmdp = self.cmd.payload
        tbl_n = Mux(cmdp.transposed, B + 1, Mux(cmdp.heads, 1 + cmdp.head_step[:lb], 0))
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [
                direct.eq(~self.force_runs & (~cmdp.transposed | cmdp.stride[0])),
                # (OUT_T: B + 1, a table of no cases: ``more`` is t_more's)
                tbl.eq(tbl_n),
                tbl1h.eq(Const(1, B + 2) << tbl_n),
                seg.eq(0),
                seg1h.eq(1),
                grp_ok.eq(Cat(*[~cmdp.heads | (g < cmdp.nheads) for g in range(G)])),
                *[off.eq(cmdp.head_step * g) for g, off in enumerate(grp_off)],
            ]
            m.d.sync += srev.eq(cmdp.stride[1] if B == 4 else 0)
        # piece p (group g, word j) writes when its first channel is < N (and its group
        # writes); all 16 bytes unless it holds channel N - 1 (then step_left mod 16 of them).
        # The flags are registers of the current step, set in the job's fresh cycle from N
        # and, when a step ends, from step_left's compares with the next step's channels
        # (first + cm), loaded with step_left: compared from step_left in the cycle they are
        # used, they sat in front of "a later segment writes" and the word's end, an
        # 8.25-level path into the group registers (lane_grp, g_left, rowaddr, ...).
        (cm_sh, _), (cm_hd, _) = _mode_consts(G, C)
        assert cm_sh % WORD_BYTES == 0 and cm_hd % WORD_BYTES == 0  # (cols % 16 == 0)
        ok = Signal(P)
        full = Signal(P)
        tail = Signal(WORD_BYTES)  # N mod 16 is step_left's in every step (cm % 16 == 0)
        ok_nx, full_nx = [], []
        for p in range(P):
            g, j = divmod(p, per)
            first_sh, first_hd = WORD_BYTES * p, WORD_BYTES * j
            ok_nx.append(grp_ok[g] & Mux(job.heads, step_left > first_hd + cm_hd,
                                         step_left > first_sh + cm_sh))  # fmt: skip
            full_nx.append(Mux(job.heads, step_left >= first_hd + WORD_BYTES + cm_hd,
                               step_left >= first_sh + WORD_BYTES + cm_sh))  # fmt: skip
            with m.If(fresh):
                first = Mux(job.heads, first_hd, first_sh)
                m.d.sync += [
                    ok[p].eq(grp_ok[g] & (job.n > first)),
                    full[p].eq(job.n >= first + WORD_BYTES),
                ]
        with m.If(fresh):
            m.d.sync += tail.eq(Cat(*[job.n[:4] > i for i in range(WORD_BYTES)]))
        be = [Mux(full[p], (1 << WORD_BYTES) - 1, Mux(ok[p], tail, 0)) for p in range(P)]
        step_regs = [(ok, Cat(*ok_nx)), (full, Cat(*full_nx))]
        # OUT_T: which lanes write (channel < N, group writes) and whether a segment after
        # segment k holds one, registered every cycle from step_left (constant while a chunk
        # is gathered, and a chunk takes at least one cycle before its flush)
        lane_ok = Signal(G * C)
        later = Signal(KT)
        lane_ok_n, later_n = [], []
        for q in range(G * C):
            g, c = divmod(q, C)
            lane_ok_n.append(Mux(job.heads, grp_ok[g] & (step_left > c), step_left > q))
        for k in range(KT):
            q = (k + 1) * B  # the next segment's first lane (lanes are a prefix per group)
            g, c = divmod(q, C)
            if q >= G * C:
                later_n.append(Const(0))
            elif c == 0:  # the next segment starts group g
                later_n.append(Mux(job.heads, grp_ok[g], step_left > q))
            else:
                later_n.append(Mux(job.heads, (step_left > c) | (grp_ok[g + 1] if g + 1 < G
                                                                 else 0),
                                   step_left > q))  # fmt: skip
        m.d.sync += [lane_ok.eq(Cat(*lane_ok_n)), later.eq(Cat(*later_n))]
        off = [Signal(ADDR_BITS, name=f"t_off{r}") for r in range(B)]
        kstride = [job.stride * k for k in range(B)]
        m.d.sync += [off[r].eq(kinv(r, kstride)) for r in range(B)]
        # the segment's first lane's word (row, chunk t / 16) and its group's (heads mode),
        # set while a chunk is gathered (t is the chunk's last token when it ends)
        seg_row = Signal(ADDR_BITS)
        grp_row = Signal(ADDR_BITS)
        sg = Signal(range(max(C // B, 2)))  # segment within the group
        tmask = Signal(WORD_BYTES)  # the chunk's tokens: bytes 0 .. t mod 16
        m.d.comb += tmask.eq(Cat(*[t[:4] >= i for i in range(WORD_BYTES)]))
        dfire = Signal()
        more = Signal()
        # (active & direct & OUT_T ? flushing : sink.valid, from the caller's route registers)
        m.d.comb += dfire.eq((dt & flushing) | (dr & sink.valid))
        with m.If(~flushing):
            chunk_row = step_row_base + (t >> 4)
            m.d.sync += [seg_row.eq(chunk_row), grp_row.eq(chunk_row), sg.eq(0)]
        with m.Elif(dfire & more):
            with m.If(job.heads & (sg == C // B - 1)):
                m.d.sync += [
                    seg_row.eq(grp_row + job.head_step),
                    grp_row.eq(grp_row + job.head_step),
                    sg.eq(0),
                ]
            with m.Else():
                m.d.sync += [seg_row.eq(seg_row + (job.stride << lb)), sg.eq(sg + 1)]
        # the word's first SPM word a0 (channel s*cm of token t's row); piece p at a0 + off_p
        a0 = Signal(ADDR_BITS)
        m.d.comb += a0.eq(tok_base + (step_n >> 4))
        word = sink.payload
        # relative lane r: the segment's piece whose bank is (a0 + r) mod B, registered
        r_en = Signal(B)
        r_addr = [Signal(ADDR_BITS, name=f"r_addr{r}") for r in range(B)]
        r_data = [Signal(8 * WORD_BYTES, name=f"r_data{r}") for r in range(B)]
        r_be = [Signal(WORD_BYTES, name=f"r_be{r}") for r in range(B)]
        rot = Signal(lb)
        m.d.sync += r_en.eq(0)
        with m.If(dfire):
            m.d.sync += rot.eq(Mux(job.transposed, seg_row[:lb], a0[:lb]))
        # OUT_T: "a later segment writes" for the current segment, in a register (set from
        # the step's rows while the chunk is gathered, then a segment ahead)
        more_rm, t_more = Signal(), Signal()
        m.d.comb += more.eq(more_rm | t_more)
        with m.If(~flushing):
            m.d.sync += t_more.eq(job.transposed & later_n[0])
        with m.Elif(dfire):
            m.d.sync += t_more.eq(Cat(later, Const(0, 1)).bit_select(seg + 1, 1))
        more_terms = []
        for ti, segs in enumerate(tables):
            for k in range(len(segs)):
                later_ok = [ok[p] for s_ in segs[k + 1 :] for p in s_]
                if later_ok:
                    more_terms.append(tbl1h[ti] & seg1h[k] & Cat(*later_ok).any())
        m.d.comb += more_rm.eq(Cat(*more_terms).any() if more_terms else 0)
        with m.Switch(Cat(seg, tbl)):
            for ti, segs in enumerate(tables):
                for k, pieces in enumerate(segs):
                    with m.Case(k | (ti << len(seg))):
                        for p in pieces:
                            g, j = divmod(p, per)
                            rel = p % B if ti == 0 else (g * (ti - 1) + j) % B
                            addr = a0 + p if ti == 0 else a0 + grp_off[g] + j
                            with m.If(dfire):
                                m.d.sync += [
                                    r_en[rel].eq(ok[p]),
                                    r_addr[rel].eq(addr),
                                    r_data[rel].eq(word[128 * p : 128 * (p + 1)]),
                                    r_be[rel].eq(be[p]),
                                ]
        # OUT_T: segment lane k is lane seg*B + k (a KT-way select per k)
        seg_ok = [Cat(*[lane_ok[q] for q in range(k, G * C, B)]).bit_select(seg, 1)
                  for k in range(B)]  # fmt: skip
        seg_data = [Cat(*buf[k::B]).word_select(seg, 8 * WORD_BYTES) for k in range(B)]
        with m.If(dfire & job.transposed):
            for r in range(B):
                m.d.sync += [
                    r_en[r].eq(kinv(r, seg_ok)),
                    r_addr[r].eq(seg_row + off[r]),
                    r_data[r].eq(kinv(r, seg_data)),
                    r_be[r].eq(tmask),
                ]
        with m.If(dfire):
            # (seg1h: past the row-major segments only in OUT_T, whose table has none)
            m.d.sync += [seg.eq(Mux(more, seg + 1, 0)), seg1h.eq(Mux(more, seg1h << 1, 1))]
        # bank b takes relative lane (b - rot) mod B
        with m.Switch(rot):
            for q in range(B):
                with m.Case(q):
                    for b, lane in enumerate(bank_lanes(self.wo)):
                        r = (b - q) % B
                        m.d.comb += [
                            lane.en.eq(r_en[r]),
                            lane.addr.eq(r_addr[r]),
                            lane.data.eq(r_data[r]),
                            lane.be.eq(r_be[r]),
                        ]
        return direct, dfire, more, r_en.any(), step_regs


def mapped_out_cmd_layout() -> data.StructLayout:
    """A :class:`MappedOutWriter` job: a :func:`matmul_out_cmd_layout` job, its output steps
    and whether the channels follow the W8-column rule (W_SPM) instead of the column map."""
    return data.StructLayout(
        {
            **{name: field.shape for name, field in matmul_out_cmd_layout()},
            "nsteps": unsigned(16),
            "w8_rule": unsigned(1),
        }
    )


def _mux_tree(sel, items):
    """``items[sel]`` as a tree of 4:1 selects (one LUT6 a bit each), two bits of ``sel`` a
    level from its least significant: an index past the items gives the last group's."""
    level, bit = list(items), 0
    while len(level) > 1:
        s0, s1 = sel[bit], sel[bit + 1] if bit + 1 < len(sel) else Const(0)
        nxt = []
        for i in range(0, len(level), 4):
            grp = level[i : i + 4]
            grp += [grp[-1]] * (4 - len(grp))
            nxt.append(Mux(s1, Mux(s0, grp[3], grp[2]), Mux(s0, grp[1], grp[0])))
        level, bit = nxt, bit + 2
    return level[0]


def _onehot_select(oh, items):
    """``items[k]`` for the one set bit ``k`` of ``oh`` (0 if none): a balanced OR tree of
    ANDs (no decode of a binary index: ABC mapped the binary 22- to 48-way selects of
    :class:`MappedOutWriter` into 7 levels)."""
    level = [Mux(oh[k], it, 0) for k, it in enumerate(items)]
    while len(level) > 1:
        level = [level[i] | level[i + 1] if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]  # fmt: skip
    return level[0]


class MappedOutWriter(CheckedComponent):
    """The matmul engine's ``o`` words -> SPM byte writes on a mixed W4/W8 array, through the
    column map (docs/isa.md, "Mixed W4/W8 arrays").

    The engine's words come as for :class:`MatmulOutWriter` (per step, per token, byte
    ``g*cols + c`` from column c of group g), but a column's channel is not its position:
    with W from DDR it is the step's map entry of the column (``map``: one 16-bit entry per
    column and step, in stream order, ``0xFFFF`` for an idle column; taken with the step's
    first token and kept for its other tokens); for a W_SPM job (``w8_rule``) W8 column c
    of group g has channel ``s*G*C8 + g*C8 + c`` (shared) or ``s*C8 + c`` (heads) and the W4
    columns are idle. The step's first token goes a column a cycle (each byte a one-byte
    run) and records, at the column's *position*, its channel and the column (the inverse
    map): in shared mode the position is the channel's offset in the step's window, the
    channels after the previous step's (``engine_host.plan_columns`` gives every step such a
    window), in heads mode the column itself. The step's other tokens gather the word's
    bytes into position order and go a run a cycle: positions from ``j`` on whose channels
    are consecutive within one 16-channel SPM word are one run (row-major; so a shared-mode
    token is the window's few word-sized runs, as on an all-W8 array), consecutive silent
    positions are skipped in one cycle, heads-mode runs stay within a group, and the token
    ends after its last writing position. Row-major runs go to ``base + t*stride
    (+ g*head_step)``, byte ``ch``; OUT_T writes each position to row ``ch``, byte ``t``.
    The run's data is the gathered bytes from position ``j`` on (a fused residual add takes
    them at the run's lanes, :class:`ResidualRuns` with ``byte_runs``). Channels >= N and
    groups >= nheads write nothing. The job ends after ``nsteps`` steps. Cycles (``work``):
    ``dse.cost.mapped_writer_cycles``.

    For the clock (300 MHz: Yosys xcup of ``MappedOutWriter(2, 20, 16)`` alone 6.25 levels,
    ``(1, 22, 16)`` 6.5; ``calibrate.WRITER_DEPTH``)
    a later token's cycle only steps through registers: after a step's first token (when
    more work follows) the writer settles ``engine_timing.MAPPED_SETTLE`` cycles, in which
    the last entry lands and registered stages of every position compute the run from it
    (span, the token's next run, whether the token or the group ends after it); a run then
    loads the next run's entry (and its positions' columns) by a one-hot position register
    (AND-OR selects; the next position's one-hot from a per-position table), the
    runs leave through an output register (``o``, ``chan``), and OUT_T keeps its tokens
    per column (the flush selects the position's column).

    Members
    -------
    cmd : ``In(stream.Signature(mapped_out_cmd_layout()))``
    i : ``In(stream.Signature(unsigned(8 * groups * cols)))``
    map : ``In(stream.Signature(unsigned(16)))``
    o : ``Out(stream.Signature(run_layout()))``
    chan : ``Out(16)``
        The channel (within the head, in heads mode) of the run on ``o``.
    work : ``Out(1)``
        The writer takes a column or a run this cycle (what its cycle model counts).
    idle : ``Out(1)``
    """

    @classmethod
    def check(cls, *, groups, cols, cols_w8):
        check_int("groups", groups, 1, 64)
        check_int("cols", cols, 1, 64)
        check_int("cols_w8", cols_w8, 1, cols)

    def __init__(self, *, groups: int, cols: int, cols_w8: int):
        self.groups, self.cols, self.cols_w8 = groups, cols, cols_w8
        super().__init__(
            {
                "cmd": In(stream.Signature(mapped_out_cmd_layout())),
                "i": In(stream.Signature(unsigned(8 * groups * cols))),
                "map": In(stream.Signature(unsigned(16))),
                "o": Out(stream.Signature(run_layout())),
                "chan": Out(16),
                "work": Out(1),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        G, C, C8 = self.groups, self.cols, self.cols_w8
        L = G * C
        m.submodules.inb = inb = SkidBuffer(unsigned(8 * L))
        wiring.connect(m, wiring.flipped(self.i), inb.i)
        sink = inb.o
        in_bytes = sink.payload
        # the map entries come through a skid buffer too (map.ready is a register: the
        # handshake below stays off the map queue's read side)
        m.submodules.mapb = mapb = SkidBuffer(unsigned(16))
        wiring.connect(m, wiring.flipped(self.map), mapb.i)
        job = Signal(mapped_out_cmd_layout())
        active = Signal()
        cm8 = Signal(16)  # W8-rule channels per step
        steps_left = Signal(16)  # steps after this one
        t = Signal(16)
        t_rem = Signal(16)  # tokens after this one
        t0 = Signal()  # t == 0: the step's first token takes the map entries
        t_last = Signal()
        j = Signal(range(L))  # first token: the column g*C + c
        g = Signal(range(G + 1))
        g_ok = Signal()  # first token: group g writes (shared mode, or g < nheads)
        c = Signal(range(C))
        tok_row = Signal(ADDR_BITS)  # base + t * stride
        tok_next = Signal(ADDR_BITS)  # tok_row + stride
        chunk_row = Signal(ADDR_BITS)  # base + t // 16
        chunk_end = Signal()  # t % 16 == 15 or t_last: an OUT_T chunk's last token
        # the runs' row: tok_row (+ g * head_step in heads mode); an OUT_T flush's
        # base + t // 16 (+ g * head_step)
        row = Signal(ADDR_BITS)
        sbase = Signal(16)  # s * cm8
        gbase = Signal(16)  # W8 rule: sbase (+ g * C8 in shared mode)
        w8_ch = Signal(16)  # W8 rule: gbase + c
        lo = Signal(16)  # shared mode: the step's first channel (the previous windows' sum)
        wlen = Signal(16)  # writing columns of the step so far
        # per position: its channel (0xFFFF: silent, also ``sil``) and the column it comes
        # from; ``last``: the last writing position + 1 (0: none)
        maps = [Signal(16, name=f"map{k}", init=0xFFFF) for k in range(L)]
        sil = Signal(L, init=(1 << L) - 1)
        inv = [Signal(range(L), name=f"col{k}") for k in range(L)]
        last = Signal(range(L + 1))
        settle = Signal(range(SETTLE + 1))  # cycles left of the step's settling
        settled = Signal(init=1)  # settle == 0
        flushing = Signal()
        # a first-token column's entry lands at its position a cycle after it is taken
        wr_take = Signal()  # a column was taken
        wr_v = Signal()  # it writes (to a position of the span)
        wr_pos = Signal(range(L))
        wr_ch = Signal(16)
        wr_col = Signal(range(L))

        # The run structure, in registers a step's later tokens only look up, in stages of
        # registers of every position that follow the entries (which change in a step's
        # first token only; SETTLE cycles after it, the last entry landing in the first,
        # the structure is the step's). 1: link[k] (position k's run goes on into k + 1:
        # both silent, or both writing with consecutive channels within one SPM word; never
        # in OUT_T, nor across heads). 2: the run from k (span_t: its positions, at most 16;
        # nxt_t: k + span_t). 3: whether the token ends after it (end_t: the positions after
        # it are silent), whether it ends its group (gend_t, heads mode) and the position of
        # the token's next run (nx_t: 0 after the token's last run, so a token's runs are a
        # chain from position 0 back to it).
        link = Signal(L)  # (link[L - 1] is 0)
        # (0: k+1's channel is k's + 1 within one SPM word: the same word, in two halves,
        # and the next byte)
        same_a, same_b, inc = Signal(L), Signal(L), Signal(L)
        for k in range(L - 1):
            m.d.sync += [
                same_a[k].eq(maps[k + 1][4:10] == maps[k][4:10]),
                same_b[k].eq(maps[k + 1][10:] == maps[k][10:]),
                inc[k].eq((maps[k][:4] != WORD_BYTES - 1)
                          & (maps[k + 1][:4] == (maps[k][:4] + 1)[:4])),
            ]  # fmt: skip
            cons = same_a[k] & same_b[k] & inc[k]
            follows = ~job.transposed & ((sil[k] & sil[k + 1]) | (~sil[k] & ~sil[k + 1] & cons))
            if (k + 1) % C == 0:
                follows = follows & ~job.heads  # heads mode: another head's rows
            m.d.comb += link[k].eq(follows)
        # (the links in nibbles from each position m: all four links (full4), the first
        # missing one (z4: 3 if none); registered, the links themselves are not)
        full4 = Signal(L)
        z4 = [Signal(2, name=f"gap{k}") for k in range(L)]
        for k in range(L):
            nib = [link[k + d] if k + d < L else Const(0) for d in range(4)]
            z = Const(3, 2)
            for d in reversed(range(3)):
                z = Mux(nib[d], z, d)
            m.d.sync += [full4[k].eq(Cat(*nib).all()), z4[k].eq(z)]
        # the run from k, link[k .. k+14] in nibbles: the first nibble that is not all links
        # (q; the fourth has three) and its first missing link: span_t = 4q + z4 (span - 1)
        span_t = [Signal(4, name=f"span{k}") for k in range(L)]
        nx_t = [Signal(L, name=f"next{k}") for k in range(L)]  # one-hot
        end_t = Signal(L)
        gend_t = Signal(L)
        for k in range(L):
            top = min(WORD_BYTES, L - k)  # the longest run from k
            full = [full4[k + 4 * i] if k + 4 * i < L else Const(0) for i in range(3)]
            zs = [z4[k + 4 * i] if k + 4 * i < L else Const(0, 2) for i in range(4)]
            q = Mux(~full[0], 0, Mux(~full[1], 1, Mux(~full[2], 2, 3)))
            m.d.sync += span_t[k].eq(Cat(Array(zs)[q], q))
            # then the position after it, whether the token ends there (the positions from it
            # are silent), whether the run ends its group, and the token's next run
            nxt = Signal(range(L + WORD_BYTES + 1), name=f"after{k}")
            m.d.comb += nxt.eq(k + 1 + span_t[k])
            end = nxt >= last
            m.d.sync += [
                end_t[k].eq(end),
                gend_t[k].eq(
                    Cat(
                        *[span_t[k] == e - k - 1 for e in range(k + 1, k + top + 1) if e % C == 0]
                    ).any()
                ),
                # (one-hot: position 0, or k + 1 + span_t, within the next 16)
                nx_t[k].eq(
                    Cat(
                        end,
                        *[
                            ~end & (span_t[k] == i - k - 1)
                            if k < i <= k + WORD_BYTES
                            else Const(0, 1)
                            for i in range(1, L)
                        ],
                    )
                ),
            ]

        # The current run of a later token (or OUT_T flush): its table entry, with the
        # columns of its positions (cur_col[b]: position + b's, whose byte is the run's byte
        # b), loaded as the run before it goes (from position cur_nx, one-hot), or, in the step's last
        # settle cycle, position 0's (cur_nx is 0 then).
        cur_sil, cur_end, cur_gend = Signal(), Signal(), Signal()
        cur_span = Signal(4)  # the span - 1
        cur_nx = Signal(L, init=1)  # one-hot
        cur_ch = Signal(16)
        cur_col = [Signal(range(L), name=f"cur_col{b}") for b in range(WORD_BYTES)]

        # The step's first token takes each column's channel (map entry or W8 rule), one
        # column a cycle: a one-byte run, and the channel and column recorded at the
        # column's position (0xFFFF: writes nothing).
        ch0 = Signal(16)  # first token: the column's channel
        writes0 = Signal()
        need_map = ~job.w8_rule & t0
        m.d.comb += [
            ch0.eq(Mux(job.w8_rule, w8_ch, mapb.o.payload)),
            writes0.eq(g_ok & (ch0 < job.n) & (~job.w8_rule | (c < C8))),
        ]
        pos0 = Signal(16)  # first token: the column's position
        m.d.comb += pos0.eq(Mux(job.heads, j, ch0 - lo))
        # OUT_T: a later token is taken in one cycle into tbuf (per column, byte t % 16; the
        # first token's too), and every 16 tokens (or at the step's last) the positions are
        # flushed, one a cycle: row ch, the chunk's tokens from byte 0
        tbuf = [Signal(8 * WORD_BYTES, name=f"tbuf{k}") for k in range(L)]
        intake = Signal()  # an OUT_T token after the step's first (transposed & ~t0 & ~flushing)
        writes = Signal()  # this cycle writes a run
        m.d.comb += writes.eq(Mux(t0, writes0 & ~job.transposed, ~intake & ~cur_sil))
        # The runs leave from a register (ov: o.valid). The writer goes on when that
        # register is free (or being freed) whether or not this cycle writes: the same
        # cycles when the runs are taken, and the handshake stays off the entries' compares.
        ov = Signal()
        opay = Signal(run_layout())
        ochan = Signal(16)
        ready_in = Signal()  # the word (not for a flush) and the column's map entry are here
        m.d.comb += ready_in.eq(
            active & settled & (flushing | sink.valid) & (~need_map | mapb.o.valid)
        )
        advance = Signal()
        m.d.comb += advance.eq(ready_in & (~ov | self.o.ready))
        word_end = Signal()
        group_end = Signal()
        j_last, c_last = Signal(), Signal()  # first token: j == L - 1, c == C - 1
        m.d.comb += [
            word_end.eq(Mux(t0, j_last, intake | cur_end)),
            group_end.eq(Mux(t0, c_last, cur_gend)),
        ]
        flush_start = Signal()  # OUT_T: the chunk's tokens are in, its flush follows
        step_done = Signal()  # the step is done after this token
        m.d.comb += [
            flush_start.eq(job.transposed & ~flushing & chunk_end),
            step_done.eq(t_last & (~job.transposed | flushing)),  # (~flush_start)
        ]

        chx = Mux(t0, ch0, cur_ch)
        run = Signal(run_layout())
        with m.If(job.transposed):
            m.d.comb += [
                run.addr.eq(row + cur_ch * job.stride),
                run.off.eq(0),
                run.count.eq(t[:4] + 1),
            ]
        with m.Else():
            m.d.comb += [
                run.addr.eq(row + (chx >> 4)),
                run.off.eq(chx[:4]),
                run.count.eq(Mux(t0, 1, cur_span + 1)),
            ]
        # The run's bytes: the word's bytes of its positions' columns, an OUT_T position's
        # buffered tokens, or (the first token) column j's byte. Each is an L-way select (ABC
        # made that 7 levels) in two halves: here each group of 16 columns' (the byte's
        # source taken here), and on o the group of the byte's column (psel).
        lanes = [in_bytes.word_select(k, 8) for k in range(L)]
        ngrp = -(-L // WORD_BYTES)

        def groups(sel, items):
            return [_mux_tree(sel[:4], items[WORD_BYTES * i : WORD_BYTES * (i + 1)])
                    for i in range(ngrp)]  # fmt: skip

        pg = [[Signal(8, name=f"od{b}_{i}") for i in range(ngrp)] for b in range(WORD_BYTES)]
        psel = [Signal(range(ngrp), name=f"od{b}_sel") for b in range(WORD_BYTES)]
        p0 = [Signal(8, name=f"od_first{i}") for i in range(ngrp)]
        p0sel = Signal(range(ngrp))
        o_0 = Signal()
        flushed = groups(cur_col[0], tbuf)
        with m.If(advance):
            m.d.sync += [
                ov.eq(writes),
                opay.eq(run),
                ochan.eq(chx),
                *[p.eq(q) for p, q in zip(p0, groups(j, lanes), strict=True)],
                p0sel.eq(j >> 4),
                o_0.eq(t0),
            ]
            for b, col in enumerate(cur_col):
                rows = groups(col, lanes)
                m.d.sync += psel[b].eq(Mux(job.transposed, cur_col[0] >> 4, col >> 4))
                for i in range(ngrp):
                    m.d.sync += pg[b][i].eq(
                        Mux(job.transposed, flushed[i].word_select(b, 8), rows[i])
                    )
        with m.Elif(self.o.ready):
            m.d.sync += ov.eq(0)
        m.d.comb += [
            self.o.valid.eq(ov),
            self.o.payload.eq(opay),
            *[self.o.payload.data[b].eq(_mux_tree(psel[b], pg[b])) for b in range(1, WORD_BYTES)],
            self.o.payload.data[0].eq(Mux(o_0, _mux_tree(p0sel, p0), _mux_tree(psel[0], pg[0]))),
            self.chan.eq(ochan),
            self.work.eq(advance | ~settled),
            mapb.o.ready.eq(advance & need_map),
            sink.ready.eq(advance & word_end & ~flushing),
        ]

        load = Signal()  # the next run's entry into cur_*
        m.d.comb += load.eq(
            (advance & ~t0 & ~intake & ~(word_end & step_done)) | (~settled & (settle == 1))
        )
        with m.If(load):
            m.d.sync += [
                cur_sil.eq(_onehot_select(cur_nx, list(sil))),
                cur_end.eq(_onehot_select(cur_nx, list(end_t))),
                cur_gend.eq(_onehot_select(cur_nx, list(gend_t))),
                cur_span.eq(_onehot_select(cur_nx, span_t)),
                # (bit i of the next position: from the 16 positions before i, or any for 0)
                cur_nx.eq(
                    Cat(
                        *[
                            _onehot_select(
                                Cat(*[cur_nx[k] for k in range(max(0, i - WORD_BYTES), i)])
                                if i
                                else cur_nx,
                                [nx_t[k][i] for k in range(max(0, i - WORD_BYTES), i)]
                                if i
                                else [nx_t[k][0] for k in range(L)],
                            )
                            for i in range(L)
                        ]
                    )
                ),
                cur_ch.eq(_onehot_select(cur_nx, maps)),
            ]
            for b, col in enumerate(cur_col):
                cols = [inv[k + b] if k + b < L else Const(0, len(col)) for k in range(L)]
                m.d.sync += col.eq(_onehot_select(cur_nx, cols))
        with m.If(~settled):
            m.d.sync += [settle.eq(settle - 1), settled.eq(settle == 1)]

        # the taken column's entry lands (a step's last column's in its first settle cycle;
        # a step that ends with its first token drops it: no token reads it)
        m.d.sync += [wr_take.eq(advance & t0), wr_v.eq(writes0 & (pos0 < L))]
        with m.If(advance & t0):
            m.d.sync += [wr_pos.eq(pos0), wr_ch.eq(ch0), wr_col.eq(j)]
        with m.If(wr_take & wr_v):
            with m.If(wr_pos >= last):
                m.d.sync += last.eq(wr_pos + 1)
            for k, (mp, col) in enumerate(zip(maps, inv, strict=True)):
                with m.If(wr_pos == k):
                    m.d.sync += [mp.eq(wr_ch), col.eq(wr_col), sil[k].eq(0)]

        wlen_next = Signal(16)
        m.d.comb += wlen_next.eq(wlen + (t0 & writes0))
        with m.If(advance & (t0 | intake)):
            for col, tb in zip(range(L), tbuf, strict=True):
                for s in range(WORD_BYTES):
                    with m.If(t[:4] == s):
                        m.d.sync += tb[8 * s : 8 * s + 8].eq(in_bytes.word_select(col, 8))
        with m.If(advance):
            with m.If(t0):
                m.d.sync += wlen.eq(wlen_next)
            with m.If(word_end):  # the word (or the flush) is done
                m.d.sync += [j.eq(0), g.eq(0), g_ok.eq(~job.heads | (job.nheads != 0)), c.eq(0),
                             j_last.eq(L == 1), c_last.eq(C == 1)]  # fmt: skip
                with m.If(t0):
                    # more tokens (or the flush) follow: the run structure settles first
                    m.d.sync += [
                        settle.eq(Mux(job.transposed | ~t_last, SETTLE, 0)),
                        settled.eq(~job.transposed & t_last),
                    ]
                with m.If(flush_start):
                    # the chunk's tokens are in
                    m.d.sync += [flushing.eq(1), t0.eq(0), intake.eq(0), row.eq(chunk_row)]
                with m.Elif(t_last):  # the step is done: the next one takes its map
                    m.d.sync += [
                        flushing.eq(0),
                        t.eq(0),
                        t_rem.eq(job.tokens - 1),
                        t0.eq(1),
                        intake.eq(0),
                        t_last.eq(job.tokens == 1),
                        chunk_end.eq(job.tokens == 1),
                        tok_row.eq(job.base),
                        tok_next.eq(job.base + job.stride),
                        chunk_row.eq(job.base),
                        row.eq(job.base),
                        sbase.eq(sbase + cm8),
                        gbase.eq(sbase + cm8),
                        w8_ch.eq(sbase + cm8),
                        lo.eq(lo + wlen_next),
                        wlen.eq(0),
                        steps_left.eq(steps_left - 1),
                        wr_take.eq(0),
                        sil.eq(-1),
                        last.eq(0),
                        *[mp.eq(0xFFFF) for mp in maps],
                    ]
                    with m.If(steps_left == 0):
                        m.d.sync += active.eq(0)
                with m.Else():
                    m.d.sync += [
                        flushing.eq(0),
                        t.eq(t + 1),
                        t_rem.eq(t_rem - 1),
                        t0.eq(0),
                        intake.eq(job.transposed),
                        t_last.eq(t_rem == 1),
                        chunk_end.eq((t[:4] == WORD_BYTES - 2) | (t_rem == 1)),
                        chunk_row.eq(chunk_row + (t[:4] == WORD_BYTES - 1)),
                        tok_row.eq(tok_next),
                        tok_next.eq(tok_next + job.stride),
                        row.eq(tok_next),
                    ]
            with m.Else():
                with m.If(group_end & job.heads):
                    m.d.sync += row.eq(row + job.head_step)
                with m.If(t0):
                    m.d.sync += [j.eq(j + 1), j_last.eq(j == L - 2)]
                    with m.If(group_end):
                        gstep = Mux(job.heads, 0, C8)
                        m.d.sync += [
                            c.eq(0),
                            c_last.eq(C == 1),
                            g.eq(g + 1),
                            g_ok.eq(~job.heads | (g + 1 < job.nheads)),
                            gbase.eq(gbase + gstep),
                            w8_ch.eq(gbase + gstep),
                        ]
                    with m.Else():
                        m.d.sync += [c.eq(c + 1), c_last.eq(c == C - 2), w8_ch.eq(w8_ch + 1)]
        # a command is taken while the writer is idle (last: its assignments win, so they
        # are the registers' synchronous resets)
        cmdp = self.cmd.payload
        m.d.comb += self.cmd.ready.eq(~active)
        with m.If(self.cmd.valid & ~active):
            m.d.sync += [
                job.eq(cmdp),
                active.eq((cmdp.tokens != 0) & (cmdp.n != 0) & (cmdp.nsteps != 0)),
                cm8.eq(Mux(cmdp.heads, C8, G * C8)),
                steps_left.eq(cmdp.nsteps - 1),
                t.eq(0),
                t_rem.eq(cmdp.tokens - 1),
                t0.eq(1),
                t_last.eq(cmdp.tokens == 1),
                intake.eq(0),
                chunk_end.eq(cmdp.tokens == 1),
                tok_next.eq(cmdp.base + cmdp.stride),
                chunk_row.eq(cmdp.base),
                j.eq(0),
                j_last.eq(L == 1),
                c_last.eq(C == 1),
                g.eq(0),
                g_ok.eq(~cmdp.heads | (cmdp.nheads != 0)),
                c.eq(0),
                tok_row.eq(cmdp.base),
                row.eq(cmdp.base),
                sbase.eq(0),
                gbase.eq(0),
                w8_ch.eq(0),
                lo.eq(0),
                wlen.eq(0),
                settle.eq(0),
                settled.eq(1),
                flushing.eq(0),
                sil.eq(-1),
                last.eq(0),
                *[mp.eq(0xFFFF) for mp in maps],
            ]
        m.d.comb += self.idle.eq(~active & ~inb.busy & ~ov)
        return m


class MixedOutWriter(CheckedComponent):
    """A mixed W4/W8 array's output writer on a banked scratchpad whose groups' W8 columns
    are whole words (:func:`~vitaccel.engine_timing.word_writes` of ``cols_w8`` and
    ``banks``): :class:`MappedOutWriter` for the jobs with W from DDR (the column map), and
    for W_SPM jobs (``w8_rule``) an all-W8 :class:`MatmulOutWriter` of ``groups`` x
    ``cols_w8`` columns with its bank-parallel word path.

    Under the W8-column rule W8 column c of group g has the channel ``s*G*C8 + g*C8 + c``
    (shared) or ``s*C8 + c`` of head g (heads), and the W4 columns are idle: exactly the
    channels an all-W8 array of ``cols_w8`` columns gives byte ``g*C8 + c`` of its words.
    So the engine's words go to that writer with the W4 columns' bytes dropped (wiring),
    and its runs, words and ``chan`` stand for the job's. The command goes to the writer
    its ``w8_rule`` names (taken only while the other writer is idle), the words and the
    runs follow the job of the last command. Cycles: a W_SPM job's are the all-W8 writer's
    (``dse.cost.writer_bound`` with ``cols_w8`` columns), the others' ``MappedOutWriter``'s.

    Members
    -------
    cmd : ``In(stream.Signature(mapped_out_cmd_layout()))``
    i : ``In(stream.Signature(unsigned(8 * groups * cols)))``
    map : ``In(stream.Signature(unsigned(16)))``
        The column map entries (jobs with W from DDR only).
    o : ``Out(stream.Signature(run_layout()))``
    chan : ``Out(16)``
    wo : ``Out(bank_write_signature(banks))``
        The W_SPM jobs' pieces (:attr:`MatmulOutWriter.wo`).
    force_runs : ``In(1)``
        (:attr:`MatmulOutWriter.force_runs`) read with a W_SPM job's command.
    work : ``Out(1)``
        ``MappedOutWriter``'s :attr:`~MappedOutWriter.work`.
    idle : ``Out(1)``
    """

    word_path = True

    @classmethod
    def check(cls, *, groups, cols, cols_w8, banks):
        MappedOutWriter.check(groups=groups, cols=cols, cols_w8=cols_w8)
        MatmulOutWriter.check(groups=groups, cols=cols_w8, banks=banks)
        if not word_writes(cols_w8, banks):
            raise ValueError(
                f"cols_w8 must be a multiple of {WORD_BYTES} and banks > 1 (the all-W8 "
                f"writer's word path), not cols_w8={cols_w8!r}, banks={banks!r}"
            )

    def __init__(self, *, groups: int, cols: int, cols_w8: int, banks: int):
        self.groups, self.cols, self.cols_w8, self.banks = groups, cols, cols_w8, banks
        super().__init__(
            {
                "cmd": In(stream.Signature(mapped_out_cmd_layout())),
                "i": In(stream.Signature(unsigned(8 * groups * cols))),
                "map": In(stream.Signature(unsigned(16))),
                "o": Out(stream.Signature(run_layout())),
                "chan": Out(16),
                "wo": Out(bank_write_signature(banks)),
                "force_runs": In(1),
                "work": Out(1),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        G, C, C8 = self.groups, self.cols, self.cols_w8
        m.submodules.mapped = mp = MappedOutWriter(groups=G, cols=C, cols_w8=C8)
        m.submodules.w8 = w8 = MatmulOutWriter(groups=G, cols=C8, banks=self.banks)
        on_w8 = Signal()  # the last command's job is a W_SPM one (the all-W8 writer's)
        cmdp = self.cmd.payload
        rule = cmdp.w8_rule
        m.d.comb += [
            mp.cmd.payload.eq(cmdp),
            *[getattr(w8.cmd.payload, name).eq(getattr(cmdp, name))
              for name, _ in matmul_out_cmd_layout()],
            mp.cmd.valid.eq(self.cmd.valid & ~rule & w8.idle),
            w8.cmd.valid.eq(self.cmd.valid & rule & mp.idle),
            self.cmd.ready.eq(Mux(rule, w8.cmd.ready & mp.idle, mp.cmd.ready & w8.idle)),
            w8.force_runs.eq(self.force_runs),
        ]  # fmt: skip
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += on_w8.eq(rule)
        # the words: all of them to the mapped writer, the W8 columns' bytes to the other
        w8_bytes = [self.i.payload.word_select(g * C + c, 8) for g in range(G) for c in range(C8)]
        m.d.comb += [
            mp.i.payload.eq(self.i.payload),
            w8.i.payload.eq(Cat(*w8_bytes)),
            mp.i.valid.eq(self.i.valid & ~on_w8),
            w8.i.valid.eq(self.i.valid & on_w8),
            self.i.ready.eq(Mux(on_w8, w8.i.ready, mp.i.ready)),
        ]
        wiring.connect(m, wiring.flipped(self.map), mp.map)
        wiring.connect(m, w8.wo, wiring.flipped(self.wo))
        # the runs of the job's writer
        m.d.comb += [
            self.o.valid.eq(Mux(on_w8, w8.o.valid, mp.o.valid)),
            self.o.payload.eq(Mux(on_w8, w8.o.payload, mp.o.payload)),
            w8.o.ready.eq(self.o.ready & on_w8),
            # (ungated: while on_w8 the mapped writer is idle, its output register empty, so
            # its handshake does not read o.ready; gated, on_w8 headed 7-level paths into it)
            mp.o.ready.eq(self.o.ready),
            self.chan.eq(Mux(on_w8, w8.chan, mp.chan)),
            self.work.eq(mp.work),
            self.idle.eq(mp.idle & w8.idle),
        ]
        return m


class ResidualRuns(CheckedComponent):
    """A residual add fused into a MATMUL's output: each output run (one token, 16 channels
    of a step: the engine's B) reads the matching word of A from the SPM, goes through the
    residual-add unit's pipeline (:class:`vitaccel.rtl.resadd.ResAdd`, ``pair`` mode) and
    leaves as the same run with ``residual_add(A, ma, B, mb, shift)`` in place of B.

    A has Y's stride, so A's word is the run's own address plus ``delta`` (A base - Y base,
    modulo 2**16). Runs must be word-aligned and within one word (``off == 0``), which holds
    in shared mode when an output step covers whole words (:func:`vitaccel.isa.residual_fusable`).
    A run's word of A is read before the run (or any later one) is written, so Y may equal A.
    Reads are requested only while the queues have room for their answers (credits), so a
    stalled writer never blocks the SPM read port; one run per cycle when the port is free.

    ``byte_runs`` (mixed W4/W8 arrays, :class:`MappedOutWriter`): runs start at any offset
    (within one word); the run's bytes go to lanes ``off ..`` of B and the sums leave from
    lanes ``off ..``. Each byte of Y is written by its own run only, so a later run's read
    of the same A word still sees its own lanes unchanged (Y may equal A).

    Members
    -------
    i : ``In(stream.Signature(run_layout()))``
    chan : ``In(16)``
        The channel of the run on ``i`` (:attr:`MatmulOutWriter.chan`).
    delta : ``In(ADDR_BITS)``
        A base - Y base; hold it while runs flow.
    mem : ``Out(read_client_signature())``
    pair : ``Out(stream.Signature(pair_layout(max_channels)))``
        To the residual-add unit.
    res : ``In(row_signature(signed(8), 16))``
        From the residual-add unit (its ``o``), in order.
    o : ``Out(stream.Signature(run_layout()))``
    idle : ``Out(1)``
        No run is queued or in the residual-add unit.
    """

    @classmethod
    def check(cls, *, max_channels, depth, out_depth, byte_runs=False):
        check_int("max_channels", max_channels, 16, 8192)
        check_int("depth", depth, 2, 64)
        check_int("out_depth", out_depth, 2, 64)

    def __init__(self, *, max_channels: int, depth: int = 6, out_depth: int = 16,
                 byte_runs: bool = False):  # fmt: skip
        from vitaccel.rtl.resadd import pair_layout

        self.byte_runs = byte_runs
        self.max_channels = max_channels
        self.depth = depth
        self.out_depth = out_depth
        self._pair_layout = pair_layout(max_channels)
        super().__init__(
            {
                "i": In(stream.Signature(run_layout())),
                "chan": In(16),
                "delta": In(ADDR_BITS),
                "mem": Out(read_client_signature()),
                "pair": Out(stream.Signature(self._pair_layout)),
                "res": In(row_signature(signed(8), WORD_BYTES)),
                "o": Out(stream.Signature(run_layout())),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        D = self.depth
        index_bits = self._pair_layout["index"].shape.width
        head_layout = data.StructLayout(
            {
                "addr": unsigned(ADDR_BITS),
                "off": unsigned(4),
                "count": unsigned(5),
                "index": unsigned(index_bits),
                "b": unsigned(8 * WORD_BYTES),
            }
        )
        out_layout = data.StructLayout(
            {"addr": unsigned(ADDR_BITS), "off": unsigned(4), "count": unsigned(5)}
        )
        # runs waiting for their A word, the A words (one cycle after the grant), and the
        # addresses of runs inside the residual-add pipeline (it keeps order)
        m.submodules.heads = heads = SyncFIFOBuffered(width=head_layout.size, depth=D)
        m.submodules.awords = awords = SyncFIFOBuffered(width=8 * WORD_BYTES, depth=D)
        m.submodules.outq = outq = SyncFIFO(width=out_layout.size, depth=self.out_depth)

        # runs come in through a skid buffer (with their channel): the SPM arbiter's grant,
        # which takes them, must not reach back into the output writer's logic
        tagged = data.StructLayout({"run": run_layout(), "chan": unsigned(16)})
        m.submodules.inb = inb = SkidBuffer(tagged, valid_next=True)
        m.d.comb += [
            inb.i.valid.eq(self.i.valid),
            inb.i.payload.run.eq(self.i.payload),
            inb.i.payload.chan.eq(self.chan),
            self.i.ready.eq(inb.i.ready),
        ]
        inflight = Signal(range(D + 1))  # granted reads whose pair has not been formed
        formed = Signal()
        # the request ("a run waits and inflight < D") is one register, set from the next
        # values of the skid's valid and of the credit compare (as RowReader's request):
        # as the AND of the two registers it headed a 7-level path through the arbiter
        req = Signal()
        m.d.comb += [
            self.mem.req.eq(req),
            self.mem.addr.eq(inb.o.payload.run.addr + self.delta),
            inb.o.ready.eq(self.mem.grant),
        ]
        m.d.sync += [
            inflight.eq(inflight + self.mem.grant - formed),
            req.eq(inb.valid_next & _room_next(inflight, self.mem.grant, formed, D)),
        ]
        head_in = Signal(head_layout)
        run = inb.o.payload.run
        m.d.comb += [
            head_in.addr.eq(run.addr),
            head_in.off.eq(run.off),
            head_in.count.eq(run.count),
            head_in.index.eq(inb.o.payload.chan >> 4),
            head_in.b.eq(
                (run.data.as_value() << (run.off * 8))[: 8 * WORD_BYTES]
                if self.byte_runs
                else run.data.as_value()
            ),
            heads.w_data.eq(head_in),
            heads.w_en.eq(self.mem.grant),
            awords.w_data.eq(self.mem.rdata),
            awords.w_en.eq(self.mem.rvalid),
        ]

        head = Signal(head_layout)
        m.d.comb += head.eq(heads.r_data)
        m.d.comb += [
            self.pair.valid.eq(heads.r_rdy & awords.r_rdy & outq.w_rdy),
            self.pair.payload.a.eq(awords.r_data),
            self.pair.payload.b.eq(head.b),
            self.pair.payload.index.eq(head.index),
            self.pair.payload.count.eq(WORD_BYTES),
            self.pair.payload.last.eq(1),
            formed.eq(self.pair.valid & self.pair.ready),
            heads.r_en.eq(formed),
            awords.r_en.eq(formed),
        ]
        out_in = Signal(out_layout)
        m.d.comb += [
            out_in.addr.eq(head.addr),
            out_in.off.eq(head.off),
            out_in.count.eq(head.count),
            outq.w_data.eq(out_in),
            outq.w_en.eq(formed),
        ]

        top = Signal(out_layout)
        m.d.comb += top.eq(outq.r_data)
        o = self.o.payload
        m.d.comb += [
            self.o.valid.eq(self.res.valid & outq.r_rdy),
            o.addr.eq(top.addr),
            o.off.eq(top.off),
            o.count.eq(top.count),
            self.res.ready.eq(self.o.ready & outq.r_rdy),
            outq.r_en.eq(self.o.valid & self.o.ready),
        ]
        if self.byte_runs:  # the run's bytes: the sums from its lane on
            from_off = Signal(8 * WORD_BYTES)
            m.d.comb += from_off.eq(self.res.payload.data.as_value() >> (top.off * 8))
            for b in range(WORD_BYTES):
                m.d.comb += o.data[b].eq(from_off[8 * b : 8 * b + 8])
        else:
            for b in range(WORD_BYTES):
                m.d.comb += o.data[b].eq(self.res.payload.data[b])
        m.d.comb += self.idle.eq((inflight == 0) & (outq.level == 0) & ~inb.busy)
        return m


def _builder_members(builder, cmd_layout, word_bits: int, vector: int, fetch_words=1,
                     inject=False) -> dict:  # fmt: skip
    """The members of a stream builder (and its row reader, ``vector`` lanes, reading
    ``fetch_words`` SPM words per request; ``inject``: it takes a chain's beats)."""
    builder.reader = RowReader(lanes=vector, fetch_words=fetch_words,
                               **({"inject": True} if inject else {}))  # fmt: skip
    return {
        "cmd": In(stream.Signature(cmd_layout)),
        "o": Out(stream.Signature(unsigned(word_bits))),
        "mem": Out(read_client_signature(words=fetch_words)),
        "idle": Out(1),
    }


def _builder_frame(m: Module, builder) -> tuple:
    """A builder's row reader on its SPM port, and the output's skid buffer: words leave
    through it, so the engine's loader logic behind its ready is not in the same cycle as
    the builder's counters. Returns (reader, skid buffer)."""
    m.submodules.reader = rd = builder.reader
    m.submodules.out = out = SkidBuffer(builder.o.payload.shape())
    wiring.connect(m, out.o, wiring.flipped(builder.o))
    wiring.connect(m, rd.mem, wiring.flipped(builder.mem))
    return rd, out


def xbuild_cmd_layout(chain: bool = False) -> data.StructLayout:
    """The X builder's command; with ``chain`` (a builder that takes chains) a ``chain`` bit:
    the real groups' rows come on the builder's ``chain`` input, not from the scratchpad."""
    return data.StructLayout(
        {
            "base": unsigned(ADDR_BITS),
            "stride": unsigned(16),
            "tokens": unsigned(16),
            "k": unsigned(16),
            "heads": unsigned(1),
            "nheads": unsigned(8),
            "head_step": unsigned(16),
            **({"chain": unsigned(1)} if chain else {}),
        }
    )


class XStreamBuilder(CheckedComponent):
    """The matmul engine's ``x`` stream from SPM rows: T tokens x ceil(K/V) words of V bytes,
    zero padded past K. Heads mode: groups 0..G-1 in turn, head g from ``base + g*head_step``;
    groups >= nheads get zero words (the engine loads X for every group). ``vector`` is the
    beat: the engine's ``x_beat * vector`` bytes (several k-steps of a token per beat); on a
    banked scratchpad the reader fetches ``fetch_words`` consecutive words per grant.

    With ``chain`` (docs/isa.md, "Chains") the builder also takes a unit's output rows: a
    command with its ``chain`` bit takes the real groups' beats from the ``chain`` input (a
    unit of ``vector`` lanes: its beat is the X beat, its rows the builder's rows in order;
    bytes past a beat's ``count`` read as 0, as the reader's past K) and reads nothing.

    Members
    -------
    cmd : ``In(stream.Signature(xbuild_cmd_layout(chain)))``
    o : ``Out(stream.Signature(unsigned(8 * vector)))``
    mem : ``Out(read_client_signature())``
    idle : ``Out(1)``
    chain : ``In(row_signature(unsigned(8), vector))``
        (``chain`` only) The unit's output beats, through a skid buffer (its ``ready`` is a
        register: the unit's fork to its writer ANDs it without a loop).
    drop : ``In(1)``
        (``chain`` only) Discard chain beats while no job runs (a run ended by an error
        before the MATMUL took them).
    """

    @classmethod
    def check(cls, *, groups, vector, fetch_words=1, chain=False):
        check_int("groups", groups, 1, 64)
        _check_lanes(vector, "vector")
        if not isinstance(chain, bool):
            raise TypeError(f"chain must be a bool, not {chain!r}")

    def __init__(self, *, groups: int, vector: int, fetch_words: int = 1, chain: bool = False):
        self.groups = groups
        self.vector = vector
        self.chains = chain
        members = _builder_members(
            self, xbuild_cmd_layout(chain), 8 * vector, vector, fetch_words, inject=chain
        )
        if chain:
            members |= {"chain": In(row_signature(unsigned(8), vector)), "drop": In(1)}
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        rd, out = _builder_frame(m, self)
        src = out.i
        V = self.vector
        job = Signal(xbuild_cmd_layout(self.chains))
        active = Signal()
        g = Signal(8)
        base = Signal(ADDR_BITS)
        issued = Signal()  # the reader command of group g is out
        zeros_left = Signal(32)  # zero words still to send for group g
        zeros_on = Signal()  # zeros_left != 0
        rows_to_go = Signal(16)  # rows of the group after the current one
        row_is_last = Signal()  # rows_to_go == 0
        row_next_last = Signal()  # rows_to_go == 1
        # group g is real / the job's last, registered where g changes (the compares of g
        # sat in the handshake: 8.25 LUT levels into ``active``, 300 MHz allows 6.83)
        real = Signal()  # ~heads | (g < nheads)
        g_final = Signal()  # g + 1 == (groups if heads else 1)
        m.d.comb += self.cmd.ready.eq(~active)
        with m.If(self.cmd.valid & ~active):
            cmd = self.cmd.payload
            m.d.sync += [
                job.eq(cmd),
                active.eq((cmd.tokens != 0) & (cmd.k != 0)),
                real.eq(~cmd.heads | (cmd.nheads != 0)),
                g_final.eq(~cmd.heads | (self.groups == 1)),
                g.eq(0),
                base.eq(self.cmd.payload.base),
                issued.eq(0),
                rows_to_go.eq(self.cmd.payload.tokens - 1),
                row_is_last.eq(self.cmd.payload.tokens == 1),
                row_next_last.eq(self.cmd.payload.tokens == 2),
            ]
        ks = (job.k + V - 1) >> exact_log2(V)
        m.d.comb += [
            rd.cmd.payload.base.eq(base),
            rd.cmd.payload.stride.eq(job.stride),
            rd.cmd.payload.rows.eq(job.tokens),
            rd.cmd.payload.cols.eq(job.k),
            rd.cmd.valid.eq(active & ~issued & real & ~job.chain if self.chains else
                            active & ~issued & real),
        ]  # fmt: skip
        with m.If(rd.cmd.valid & rd.cmd.ready):
            m.d.sync += issued.eq(1)
        # the beats of a real group: the reader's, or in a chain job the chain's, injected
        # into the reader's output skid (no reader command: "issued" at once)
        beats = rd.o
        if self.chains:
            m.submodules.chain_in = ch = SkidBuffer(row_layout(unsigned(8), V))
            wiring.connect(m, wiring.flipped(self.chain), ch.i)
            with m.If(active & ~issued & real & job.chain):
                m.d.sync += issued.eq(1)
            # a chain job runs (a register beside `active`: no stale beat enters the reader)
            chain_on = Signal()
            with m.If(self.cmd.valid & ~active):
                m.d.sync += chain_on.eq(self.cmd.payload.chain)
            m.d.comb += [
                rd.inject.valid.eq(ch.o.valid),
                rd.inject.payload.eq(ch.o.payload),
                rd.inject_on.eq(chain_on),
                ch.o.ready.eq(rd.inject.ready | (~active & self.drop)),
            ]
        # a group of zero words counts down; "one left" is a register (a 32-bit compare
        # of the counter sat in the handshake). A group of one word: T = 1 (row_is_last at
        # every group's start) and KS = 1 (K <= V), not the product's compare (8.0 levels
        # from the multiplier's DSP into zero_one on the 2-port 64 B top; same value: T,
        # KS >= 1 in an active job)
        zero_one = Signal()
        with m.If(active & ~issued & ~real):
            m.d.sync += [
                issued.eq(1),
                zeros_left.eq(job.tokens * ks),
                zeros_on.eq(1),  # tokens, ks >= 1 in an active job
                zero_one.eq(row_is_last & (job.k <= V)),
            ]

        # Output: the reader's beats for a real group, zeros otherwise.
        last_of_group = Signal()
        with m.If(real):
            m.d.comb += [
                src.valid.eq(active & issued & beats.valid),
                src.payload.eq(beats.payload.data.as_value()),
                beats.ready.eq(active & issued & src.ready),
            ]
            # the group ends with the last beat of its last row; count rows
        with m.Else():
            m.d.comb += [src.valid.eq(active & issued & zeros_on), src.payload.eq(0)]
        fire = src.valid & src.ready
        with m.If(fire):
            with m.If(real):
                with m.If(beats.payload.last):
                    m.d.sync += [
                        rows_to_go.eq(rows_to_go - 1),
                        row_is_last.eq(row_next_last),
                        row_next_last.eq(rows_to_go == 2),
                    ]
                    with m.If(row_is_last):
                        m.d.comb += last_of_group.eq(1)
            with m.Else():
                m.d.sync += [zeros_left.eq(zeros_left - 1), zero_one.eq(zeros_left == 2)]
                with m.If(zero_one):
                    m.d.comb += last_of_group.eq(1)
                    m.d.sync += zeros_on.eq(0)
        with m.If(last_of_group):
            m.d.sync += [
                rows_to_go.eq(job.tokens - 1),
                row_is_last.eq(job.tokens == 1),
                row_next_last.eq(job.tokens == 2),
                issued.eq(0),
                g.eq(g + 1),
                base.eq(base + job.head_step),
                real.eq(~job.heads | (g + 1 < job.nheads)),
                g_final.eq(g + 2 == self.groups),
            ]
            with m.If(g_final):
                m.d.sync += active.eq(0)
                if self.chains:
                    m.d.sync += chain_on.eq(0)
        m.d.comb += self.idle.eq(~active & ~out.busy)
        return m


def wbuild_cmd_layout() -> data.StructLayout:
    return data.StructLayout(
        {
            "base": unsigned(ADDR_BITS),
            "stride": unsigned(16),
            "n": unsigned(16),
            "k": unsigned(16),
            "heads": unsigned(1),
            "nheads": unsigned(8),
            "head_step": unsigned(16),
            "mult": unsigned(16),
            "shift": unsigned(6),
        }
    )


class WStreamBuilder(CheckedComponent):
    """The matmul engine's ``w`` stream from SPM rows (MATMUL with W_SPM, identity plan).

    Per output step s and block (shared: one block of G*C columns; heads: one block of C
    columns per group g, from ``base + g*head_step``), per column: a parameter word (bias 0,
    ``mult``, ``shift``), then ``ceil(K/V)`` words of row n (shared ``n = s*G*C + g*C + c``,
    heads ``n = s*C + c``); rows n >= N and groups >= nheads send zero words (parameter word
    included). Steps continue
    until they cover N. A block's rows are one :class:`RowReader` command (issued ahead while
    the previous block is still streaming); on a banked scratchpad the reader fetches
    ``fetch_words`` consecutive words per grant (a row of up to ``16 * fetch_words`` bytes in
    one grant), so the W rows take fewer grants of the read port the X builder shares.

    On a mixed W4/W8 array (``cols_w8 < cols``) the rows go to the W8 columns only (int8
    rows on W4 lanes would lose their high nibble): W8 column c of group g takes row
    ``s*G*C8 + g*C8 + c`` (shared) or ``s*C8 + c`` (heads), W4 columns get zero words
    (docs/isa.md, "Mixed W4/W8 arrays").

    Members
    -------
    cmd : ``In(stream.Signature(wbuild_cmd_layout()))``
    o : ``Out(stream.Signature(unsigned(w_bits)))``
    mem : ``Out(read_client_signature())``
    idle : ``Out(1)``
    """

    @classmethod
    def check(cls, *, groups, cols, vector, acc_bits, cols_w8=None, fetch_words=1, **_):
        check_int("groups", groups, 1, 64)
        check_int("cols", cols, 1, 64)
        _check_lanes(vector, "vector")
        check_int("acc_bits", acc_bits, 16, 48)
        if cols_w8 is not None:
            check_int("cols_w8", cols_w8, 1, cols)

    def __init__(self, *, groups: int, cols: int, vector: int, acc_bits: int = 32,
                 w_bits: int | None = None, cols_w8: int | None = None,
                 fetch_words: int = 1):  # fmt: skip
        self.groups, self.cols, self.vector, self.acc_bits = groups, cols, vector, acc_bits
        self.cols_w8 = cols if cols_w8 is None else cols_w8
        self.w_bits = w_bits or w_word_bits(vector, acc_bits)
        super().__init__(
            _builder_members(self, wbuild_cmd_layout(), self.w_bits, vector, fetch_words)
        )

    def elaborate(self, platform):
        m = Module()
        rd, out = _builder_frame(m, self)
        src = out.i
        G, C, V = self.groups, self.cols, self.vector
        C8 = self.cols_w8
        mixed = C8 < C
        (cm_sh, _), (cm_hd, _) = _mode_consts(G, C)
        # columns per block; ``cm`` below counts the rows of a block (the W8 columns')
        cols_sh, cols_hd = cm_sh, cm_hd
        if mixed:
            (cm_sh, _), (cm_hd, _) = _mode_consts(G, C8)
        job = Signal(wbuild_cmd_layout())
        cm = Signal(16)
        cm_stride = Signal(32)
        m_active = Signal()  # emitter busy
        m.d.comb += self.cmd.ready.eq(~m_active)
        cmdp = self.cmd.payload
        start = self.cmd.valid & ~m_active & (cmdp.n != 0) & (cmdp.k != 0)

        # Block b = (s, g): first row n0 = s*cm; rows min(cm, N - n0) if group is real.
        blocks_per_step = Mux(job.heads, G, 1)
        cm_new = Mux(cmdp.heads, cm_hd, cm_sh)

        # -- reader command issue --
        # The command's rows are a register set from the next values (the subtract, compare
        # and group test of ``min(cm, N - n0)`` from ``job`` were 7.25 levels into the
        # reader's command skid buffer); so are the end tests of the block and step loops.
        r_active = Signal()
        r_g = Signal(8)
        r_step_row = Signal(ADDR_BITS)  # base + s*cm*stride
        r_base = Signal(ADDR_BITS)  # + g*head_step
        r_left = Signal(17)  # N - s*cm: the rows left from this step on
        r_full = Signal(16)  # min(cm, r_left): a real block's rows in this step
        r_rows = Signal(16)  # the command's rows (r_full, or 0 for a group >= nheads)
        r_hl = Signal(signed(10))  # nheads - r_g: group r_g + j is real iff r_hl > j
        r_glast = Signal()  # r_g + 1 == blocks_per_step
        r_nlast = Signal()  # r_left <= cm: the step reaches N
        cm2 = Signal(18)  # 2 * cm
        m.d.comb += [
            rd.cmd.payload.base.eq(r_base),
            rd.cmd.payload.stride.eq(job.stride),
            rd.cmd.payload.rows.eq(r_rows),
            rd.cmd.payload.cols.eq(job.k),
            rd.cmd.valid.eq(r_active),
        ]
        with m.If(rd.cmd.valid & rd.cmd.ready):
            with m.If(r_glast):
                # the next step's group 0 (real iff ~heads | nheads != 0); r_left >= cm here
                # unless this step ends the job (then the values are not used)
                full_n = Mux(r_left < cm2, r_left - cm, cm)
                m.d.sync += [
                    r_g.eq(0),
                    r_step_row.eq(r_step_row + cm_stride),
                    r_base.eq(r_step_row + cm_stride),
                    r_left.eq(r_left - cm),
                    r_full.eq(full_n),
                    r_rows.eq(Mux(~job.heads | (job.nheads != 0), full_n, 0)),
                    r_hl.eq(job.nheads),
                    r_glast.eq(~job.heads | (G == 1)),
                    r_nlast.eq(r_left <= cm2),
                ]
                with m.If(r_nlast):
                    m.d.sync += r_active.eq(0)
            with m.Else():
                m.d.sync += [
                    r_g.eq(r_g + 1),
                    r_base.eq(r_base + job.head_step),
                    r_rows.eq(Mux(~job.heads | (r_hl > 1), r_full, 0)),
                    r_hl.eq(r_hl - 1),
                    r_glast.eq(r_g + 2 == blocks_per_step),
                ]

        # -- emitter --
        e_g = Signal(8)
        e_step_n = Signal(17)
        c = Signal(16)
        k = Signal(16)  # 0: parameter word, 1..ks: weight words
        k_zero = Signal()  # k == 0, in a register
        # N - e_step_n kept beside e_step_n (the rows left from this step on)
        e_left = Signal(17)
        row = c  # the block's row of column c
        if mixed:
            w8 = Signal()  # column c is a W8 column (its column within the group < C8)
            cc = Signal(range(C))  # column within the group
            row = Signal(16)  # W8 columns before c in the block
            cols_blk = Signal(16)
            m.d.comb += w8.eq(cc < C8)
        # "column c takes a row" (row < min(N - step_n, cm), group real, W8 column) is a
        # register, set when c moves from flags registered while the previous column streamed:
        # the compares of e_left and cm sat in the handshake (7 LUT + 3 carry levels from cm
        # into e_step_n, m_active and the skid buffers; 300 MHz allows 6.75). row < cm always
        # holds for a W8 column (cm counts a block's W8 columns), so the row test is row < left.
        take = Signal()
        real_cur = Signal()  # group e_g is real (~heads | e_g < nheads)
        real_gn = Signal()  # group e_g + 1 is real
        real_g0 = Signal()  # group 0 is real, set with the job
        more = Signal()  # the block's next column takes a row if its group is real

        from_reader = ~k_zero & take
        param = Signal(self.w_bits)
        m.d.comb += param.eq(Cat(Const(0, self.acc_bits), job.mult, job.shift))
        with m.If(k_zero):
            # idle columns get an all-zero parameter word, as the engine's packer gives them
            m.d.comb += [
                src.valid.eq(m_active),
                src.payload.eq(Mux(take, param, 0)),
            ]
        with m.Elif(from_reader):
            m.d.comb += [
                src.valid.eq(m_active & rd.o.valid),
                src.payload.eq(rd.o.payload.data.as_value()),
                rd.o.ready.eq(m_active & src.ready),
            ]
        with m.Else():
            m.d.comb += [src.valid.eq(m_active), src.payload.eq(0)]
        fire = src.valid & src.ready
        # End-of-loop flags in registers, so the handshake only selects (the nested compares
        # were a 12-LUT path into m_active). k_last is exact (k moves every word); the others
        # (and real_gn, more) follow c, e_g, e_step_n a cycle late, which is safe because each
        # of those holds for ks + 1 >= 2 words before it is tested again.
        k_last = Signal()  # k == ks
        ks_m1 = Signal(16)  # ks - 1, set with the job
        c_last = Signal()  # c + 1 == cm
        g_last = Signal()  # e_g + 1 == blocks_per_step
        n_last = Signal()  # e_step_n + cm >= N
        m.d.sync += [
            c_last.eq(c + 1 == (cols_blk if mixed else cm)),
            g_last.eq(e_g + 1 == blocks_per_step),
            n_last.eq(e_step_n + cm >= job.n),
            real_gn.eq(~job.heads | (e_g + 1 < job.nheads)),
        ]
        if mixed:
            # the next column within the group and whether it is a W8 one
            cc_next = Mux(cc == C - 1, 0, cc + 1)
            m.d.sync += more.eq((cc_next < C8) & (row + w8 < e_left))
        else:
            m.d.sync += more.eq(c + 1 < e_left)
        col_end = k_last
        blk_end = k_last & c_last
        step_end = blk_end & g_last
        with m.If(fire):
            m.d.sync += [
                k_last.eq(~k_last & (k == ks_m1)),
                k_zero.eq(k_last),
                k.eq(Mux(k_last, 0, k + 1)),
            ]
            with m.If(col_end):
                m.d.sync += [c.eq(Mux(c_last, 0, c + 1)), take.eq(real_cur & more)]
                if mixed:
                    m.d.sync += [
                        cc.eq(Mux(c_last | (cc == C - 1), 0, cc + 1)),
                        row.eq(Mux(c_last, 0, row + w8)),
                    ]
            with m.If(blk_end):
                # a new block's column 0 takes a row if its group is real (rows are left:
                # the job ends with the step that reaches N)
                real_next = Mux(g_last, real_g0, real_gn)
                m.d.sync += [
                    e_g.eq(Mux(g_last, 0, e_g + 1)),
                    real_cur.eq(real_next),
                    take.eq(real_next),
                ]
            with m.If(step_end):
                m.d.sync += [e_step_n.eq(e_step_n + cm), e_left.eq(e_left - cm)]
            with m.If(step_end & n_last):
                m.d.sync += m_active.eq(0)

        # the reader's next-value registers load with any command while idle (r_active is
        # 0 then; a job of N or K 0 never reads them): the zero tests of ``start`` put a
        # 7-level path from the controller's payload into them
        with m.If(self.cmd.valid & ~m_active):
            m.d.sync += [
                r_left.eq(cmdp.n),
                r_full.eq(Mux(cmdp.n < cm_new, cmdp.n, cm_new)),
                r_rows.eq(
                    Mux(~cmdp.heads | (cmdp.nheads != 0), Mux(cmdp.n < cm_new, cmdp.n, cm_new), 0)
                ),
                r_hl.eq(cmdp.nheads),
                r_glast.eq(~cmdp.heads | (G == 1)),
                r_nlast.eq(cmdp.n <= cm_new),
                cm2.eq(cm_new << 1),
            ]
        with m.If(start):
            m.d.sync += [
                job.eq(cmdp),
                cm.eq(cm_new),
                cm_stride.eq(cmdp.stride * cm_new),
                m_active.eq(1),
                r_active.eq(1),
                r_g.eq(0),
                r_step_row.eq(cmdp.base),
                r_base.eq(cmdp.base),
                e_g.eq(0),
                e_step_n.eq(0),
                e_left.eq(cmdp.n),
                real_g0.eq(~cmdp.heads | (cmdp.nheads != 0)),
                real_cur.eq(~cmdp.heads | (cmdp.nheads != 0)),
                take.eq(~cmdp.heads | (cmdp.nheads != 0)),
                c.eq(0),
                k.eq(0),
                k_last.eq(0),
                k_zero.eq(1),
                ks_m1.eq(((cmdp.k + V - 1) >> exact_log2(V)) - 1),
            ]
            if mixed:
                m.d.sync += [
                    cc.eq(0),
                    row.eq(0),
                    cols_blk.eq(Mux(cmdp.heads, cols_hd, cols_sh)),
                ]
        m.d.comb += self.idle.eq(~m_active & ~r_active & rd.idle & ~out.busy)
        return m


def port_w_segments(groups: int, cols: int, ports: int, port: int, heads: bool) -> list:
    """Weight port ``port``'s columns ``port*M .. port*M + M-1`` (``M = groups*cols/ports``)
    of an output step as (group, first row of the step's rows, columns) segments: one in
    shared mode (the step's rows are its G*C columns), one per group the range touches in
    heads mode (the step's rows are a group's C columns; only the first segment can start
    mid-group)."""
    M = groups * cols // ports
    lo, hi = port * M, (port + 1) * M
    if not heads:
        return [(0, lo, M)]
    out = []
    for g in range(groups):
        a, b = max(lo, g * cols), min(hi, (g + 1) * cols)
        if a < b:
            out.append((g, a - g * cols, b - a))
    return out


class PortWStreamBuilder(CheckedComponent):
    """One weight port's ``w`` stream from SPM rows (MATMUL with W_SPM on an all-W8 array of
    several weight ports): the words :class:`WStreamBuilder` makes for the port's columns
    (``port*M .. port*M + M-1`` of each output step, ``M = groups*cols/ports``), so each
    port's builder fills its port at a word a cycle. Per step, per segment of
    :func:`port_w_segments` (one :class:`RowReader` command, issued ahead), per column: the
    parameter word, then ``ceil(K/V)`` words of its row; rows >= N and groups >= nheads
    send zero words (parameter word included).

    Members
    -------
    cmd : ``In(stream.Signature(wbuild_cmd_layout()))``
    o : ``Out(stream.Signature(unsigned(w_bits)))``
    mem : ``Out(read_client_signature())``
    idle : ``Out(1)``
    """

    @classmethod
    def check(cls, *, groups, cols, vector, ports, port, acc_bits=32, fetch_words=1, **_):
        check_int("groups", groups, 1, 64)
        check_int("cols", cols, 1, 64)
        _check_lanes(vector, "vector")
        check_int("ports", ports, 2, 4)
        check_int("port", port, 0, ports - 1)
        if (groups * cols) % ports:
            raise ValueError(f"ports must divide groups*cols = {groups * cols}, not {ports}")

    def __init__(self, *, groups: int, cols: int, vector: int, ports: int, port: int,
                 acc_bits: int = 32, w_bits: int | None = None,
                 fetch_words: int = 1):  # fmt: skip
        self.groups, self.cols, self.vector, self.acc_bits = groups, cols, vector, acc_bits
        self.ports, self.port = ports, port
        self.w_bits = w_bits or w_word_bits(vector, acc_bits)
        super().__init__(
            _builder_members(self, wbuild_cmd_layout(), self.w_bits, vector, fetch_words)
        )

    def elaborate(self, platform):
        m = Module()
        rd, out = _builder_frame(m, self)
        src = out.i
        G, C, V = self.groups, self.cols, self.vector
        sh = port_w_segments(G, C, self.ports, self.port, False)
        hd = port_w_segments(G, C, self.ports, self.port, True)
        NS = len(hd)  # shared mode has one segment, heads mode NS
        job = Signal(wbuild_cmd_layout())
        m_active = Signal()
        m.d.comb += self.cmd.ready.eq(~m_active)
        cmdp = self.cmd.payload
        start = self.cmd.valid & ~m_active & (cmdp.n != 0) & (cmdp.k != 0)

        def seg(i, heads):
            """(off, len) of segment i as values of the mode ``heads`` (0, 0 past shared's)."""
            s_off, s_len = (sh[0][1], sh[0][2]) if i == 0 else (0, 0)
            return Mux(heads, hd[i][1], s_off), Mux(heads, hd[i][2], s_len)

        RW = (G * C).bit_length() + 1  # a row within a step, and one more bit
        S = Signal(RW)  # rows of a step: G*C (shared) or C (heads)
        seg_real = Signal(NS)  # segment i's group is real, set with the job
        nseg_m1 = Signal(range(NS))

        def real_of(heads, nheads):
            return Cat(*[~heads | (g < nheads) for g, _, _ in hd])

        def rows_of(left, lo, hi, ln):
            """rows of a segment, min(len, max(0, left - lo)), for ``left`` rows from the
            step's first (N - s*S) and ``lo`` = off (+ S for the next step), ``hi`` = lo + len:
            the compares and the subtraction side by side, then a select."""
            d = Signal(17)
            m.d.comb += d.eq(left - lo)
            return Mux(left <= lo, 0, Mux(left >= hi, ln, d[:16]))

        # per segment, set with the job: off + S and off + S + len (the next step's bounds)
        seg_lo = [Signal(RW + 1, name=f"seg_lo{i}") for i in range(NS)]
        seg_hi = [Signal(RW + 2, name=f"seg_hi{i}") for i in range(NS)]
        seg_len = [Signal(RW, name=f"seg_len{i}") for i in range(NS)]

        # -- reader command issue: every field a register, set from the next values --
        r_active = Signal()
        r_i = Signal(range(NS))
        r_seg_last = Signal()  # r_i == nseg - 1
        r_step_row = Signal(ADDR_BITS)  # segment 0's command base of this step
        r_base = Signal(ADDR_BITS)
        d0 = Signal(ADDR_BITS)  # head_step - off0*stride: segment 0 -> 1 (heads)
        r_left = Signal(17)  # N - s*S
        r_nlast = Signal()  # r_left <= S
        r_rows = Signal(16)  # this command's rows
        r_seg_rows = [Signal(16, name=f"r_seg_rows{i}") for i in range(NS)]  # this step's
        S2 = Signal(RW + 1)
        S_stride = Signal(32)  # S * stride
        m.d.comb += [
            rd.cmd.payload.base.eq(r_base),
            rd.cmd.payload.stride.eq(job.stride),
            rd.cmd.payload.rows.eq(r_rows),
            rd.cmd.payload.cols.eq(job.k),
            rd.cmd.valid.eq(r_active),
        ]
        with m.If(rd.cmd.valid & rd.cmd.ready):
            with m.If(r_seg_last):
                nxt = [
                    Mux(seg_real[i], rows_of(r_left, seg_lo[i], seg_hi[i], seg_len[i]), 0)
                    for i in range(NS)
                ]
                m.d.sync += [
                    r_i.eq(0),
                    r_seg_last.eq(nseg_m1 == 0),
                    r_step_row.eq(r_step_row + S_stride),
                    r_base.eq(r_step_row + S_stride),
                    r_left.eq(r_left - S),
                    r_nlast.eq(r_left <= S2),
                    r_rows.eq(nxt[0]),
                ]
                m.d.sync += [r_seg_rows[i].eq(nxt[i]) for i in range(NS)]
                with m.If(r_nlast):
                    m.d.sync += r_active.eq(0)
            with m.Else():
                m.d.sync += [
                    r_i.eq(r_i + 1),
                    r_seg_last.eq(r_i + 1 == nseg_m1),
                    r_base.eq(r_base + Mux(r_i == 0, d0, job.head_step)),
                    r_rows.eq(Array(r_seg_rows)[r_i + 1] if NS > 1 else r_seg_rows[0]),
                ]

        # -- emitter --
        e_i = Signal(range(NS))
        c = Signal(RW)
        k = Signal(16)  # 0: parameter word, 1..ks: weight words
        k_zero = Signal()
        e_left = Signal(17)  # N - s*S
        e_row = Signal(RW)  # off + c: the column's row within the step
        e_len = Signal(RW)  # columns of segment e_i
        take = Signal()
        real_cur = Signal()
        param = Signal(self.w_bits)
        m.d.comb += param.eq(Cat(Const(0, self.acc_bits), job.mult, job.shift))
        with m.If(k_zero):
            m.d.comb += [src.valid.eq(m_active), src.payload.eq(Mux(take, param, 0))]
        with m.Elif(take):
            m.d.comb += [
                src.valid.eq(m_active & rd.o.valid),
                src.payload.eq(rd.o.payload.data.as_value()),
                rd.o.ready.eq(m_active & src.ready),
            ]
        with m.Else():
            m.d.comb += [src.valid.eq(m_active), src.payload.eq(0)]
        fire = src.valid & src.ready
        # end flags registered a cycle late from c, e_i, e_left (each holds >= 2 words before
        # it is tested: a column is ks + 1 >= 2 words), as in WStreamBuilder
        k_last = Signal()
        ks_m1 = Signal(16)
        c_last = Signal()  # c + 1 == e_len
        s_last = Signal()  # e_i == nseg - 1
        n_last = Signal()  # e_left <= S
        more = Signal()  # the next column of the segment has a row
        take0 = Signal()  # the next step's segment 0 has a row: off0 < e_left - S
        real_n = Signal()  # segment e_i + 1 is real
        len_n = Signal(RW)  # its columns
        nxt_len = Array([seg(i, job.heads)[1] for i in range(NS)] + [0])
        off0 = seg(0, job.heads)[0]
        m.d.sync += [
            c_last.eq(c + 1 == e_len),
            s_last.eq(e_i == nseg_m1),
            n_last.eq(e_left <= S),
            more.eq(e_row + 1 < e_left),
            take0.eq(e_left > seg_lo[0]),
            real_n.eq(Cat(seg_real, 0).bit_select(e_i + 1, 1)),
            len_n.eq(nxt_len[e_i + 1]),
        ]
        col_end = k_last
        seg_end = k_last & c_last
        step_end = seg_end & s_last
        with m.If(fire):
            m.d.sync += [
                k_last.eq(~k_last & (k == ks_m1)),
                k_zero.eq(k_last),
                k.eq(Mux(k_last, 0, k + 1)),
            ]
            with m.If(col_end):
                m.d.sync += [c.eq(c + 1), e_row.eq(e_row + 1), take.eq(real_cur & more)]
            with m.If(seg_end):
                # the next segment (of this step: its first row is 0, rows are left)
                m.d.sync += [
                    c.eq(0),
                    e_i.eq(e_i + 1),
                    e_row.eq(0),
                    e_len.eq(len_n),
                    real_cur.eq(real_n),
                    take.eq(real_n),
                ]
            with m.If(step_end):
                m.d.sync += [
                    e_i.eq(0),
                    e_row.eq(off0),
                    e_len.eq(seg(0, job.heads)[1]),
                    real_cur.eq(seg_real[0]),
                    take.eq(seg_real[0] & take0),
                    e_left.eq(e_left - S),
                ]
            with m.If(step_end & n_last):
                m.d.sync += m_active.eq(0)

        # every register but the two busy flags loads with any command while idle (the
        # zero tests of ``start`` stay off their paths, as in WStreamBuilder)
        with m.If(start):
            m.d.sync += [m_active.eq(1), r_active.eq(1)]
        with m.If(self.cmd.valid & ~m_active):
            hds = cmdp.heads
            S_new = Mux(hds, C, G * C)
            off0_new, len0_new = seg(0, hds)
            real_new = real_of(hds, cmdp.nheads)
            segs_new = [seg(i, hds) for i in range(NS)]
            rows0 = [
                Mux(real_new[i], rows_of(cmdp.n, o, o + ln, ln), 0)
                for i, (o, ln) in enumerate(segs_new)
            ]
            base0 = cmdp.base + Mux(
                hds, hd[0][0] * cmdp.head_step + hd[0][1] * cmdp.stride, sh[0][1] * cmdp.stride
            )
            m.d.sync += [
                job.eq(cmdp),
                S.eq(S_new),
                S2.eq(S_new << 1),
                S_stride.eq(Mux(hds, cmdp.stride * C, cmdp.stride * (G * C))),
                *[seg_lo[i].eq(o + S_new) for i, (o, _) in enumerate(segs_new)],
                *[seg_hi[i].eq(o + ln + S_new) for i, (o, ln) in enumerate(segs_new)],
                *[seg_len[i].eq(ln) for i, (_, ln) in enumerate(segs_new)],
                seg_real.eq(real_new),
                nseg_m1.eq(Mux(hds, NS - 1, 0)),
                r_i.eq(0),
                r_seg_last.eq(~hds | (NS == 1)),
                r_step_row.eq(base0),
                r_base.eq(base0),
                d0.eq(cmdp.head_step - hd[0][1] * cmdp.stride),
                r_left.eq(cmdp.n),
                r_nlast.eq(cmdp.n <= S_new),
                r_rows.eq(rows0[0]),
                *[r_seg_rows[i].eq(rows0[i]) for i in range(NS)],
                e_i.eq(0),
                c.eq(0),
                k.eq(0),
                k_last.eq(0),
                k_zero.eq(1),
                ks_m1.eq(((cmdp.k + V - 1) >> exact_log2(V)) - 1),
                e_left.eq(cmdp.n),
                e_row.eq(off0_new),
                e_len.eq(len0_new),
                real_cur.eq(real_new[0]),
                take.eq(real_new[0] & (cmdp.n > off0_new)),
            ]
        m.d.comb += self.idle.eq(~m_active & ~r_active & rd.idle & ~out.busy)
        return m
