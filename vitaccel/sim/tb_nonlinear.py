"""Testbenches for the nonlinear row units (E2Softmax, AILayerNorm, GELU).

Two halves:

* Host side (plain Python): row framing (rows -> beats of ``lanes`` elements with
  ``count``/``last``), packing beats into the flat Verilog payload vector and back, and an
  Amaranth-simulator driver (:func:`amaranth_run_rows`) used by the unit tests.
* cocotb side: one generic testbench for all three units on Verilator. It is unit-agnostic:
  the caller (:mod:`vitaccel.flow.unit_nonlinear`) passes the rows, the constants to write
  through the unit's write port (arrays ``cfg_<port>`` plus the strobe name) and the per-row
  scalar inputs (arrays ``row_<port>``, applied with each row's first beat). The testbench
  returns the raw output words and timing; the caller unpacks and compares them with the
  reference functions, so no arithmetic lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from amaranth import Shape, unsigned

from vitaccel.rtl.common import row_layout
from vitaccel.sim.streams import amaranth_get, amaranth_put, random_pauses

__all__ = [
    "frame_row",
    "frame_rows",
    "pack_beat",
    "unpack_beat",
    "amaranth_run_rows",
]


# ---- host side: framing and packing ------------------------------------------------------


def frame_row(row: Sequence[int], lanes: int) -> list[tuple[list[int], int, bool]]:
    """Split one row into beats ``(values padded to lanes, count, last)``."""
    row = [int(v) for v in row]
    if not row:
        raise ValueError("a row must hold at least one element")
    beats = []
    for start in range(0, len(row), lanes):
        chunk = row[start : start + lanes]
        beats.append((chunk + [0] * (lanes - len(chunk)), len(chunk), start + lanes >= len(row)))
    return beats


def frame_rows(
    rows: Sequence[Sequence[int]], lanes: int
) -> list[list[tuple[list[int], int, bool]]]:
    return [frame_row(r, lanes) for r in rows]


def pack_beat(values: Sequence[int], count: int, last: bool, *, lanes: int, bits: int) -> int:
    """The flat payload vector of :func:`vitaccel.rtl.common.row_layout` (data, count, last)."""
    layout = row_layout(unsigned(bits), lanes)
    beat = {"data": [int(v) for v in values], "count": int(count), "last": int(bool(last))}
    return layout.const(beat).as_value().value


def unpack_beat(word: int, *, lanes: int, bits: int, signed: bool) -> tuple[list[int], int, bool]:
    """One payload vector of :func:`vitaccel.rtl.common.row_layout` -> (data, count, last)."""
    beat = row_layout(Shape(bits, signed=signed), lanes).from_bits(int(word))
    return list(beat.data), beat.count, bool(beat.last)


def unframe(beats, lengths: Sequence[int], lanes: int) -> tuple[list[np.ndarray], list[str]]:
    """Output beats -> rows, checking the framing; returns (rows, framing errors)."""
    rows, errors = [], []
    pos = 0
    for r, n in enumerate(lengths):
        expect = frame_row([0] * n, lanes)
        got = beats[pos : pos + len(expect)]
        pos += len(expect)
        if len(got) < len(expect):
            errors.append(f"row {r}: {len(got)} of {len(expect)} beats received")
            rows.append(np.zeros(0, dtype=np.int64))
            continue
        vals = []
        for b, ((_, cnt, last), (gv, gc, gl)) in enumerate(zip(expect, got, strict=True)):
            if (gc, gl) != (cnt, last):
                errors.append(f"row {r} beat {b}: count/last {gc}/{gl}, expected {cnt}/{last}")
            vals.extend(gv[:cnt])
        rows.append(np.asarray(vals, dtype=np.int64))
    if pos < len(beats):
        errors.append(f"{len(beats) - pos} unexpected extra beats")
    return rows, errors


# ---- Amaranth simulator driver ------------------------------------------------------------


def amaranth_run_rows(
    dut,
    rows: Sequence[Sequence[int]],
    *,
    setup: Callable | None = None,
    row_setup: Callable | None = None,
    finish: Callable | None = None,
    stall_in: float = 0.0,
    stall_out: float = 0.0,
    seed: int = 0,
    max_cycles: int = 200_000,
) -> dict:
    """Run ``rows`` through ``dut`` (a row unit) in Amaranth's simulator.

    ``setup(ctx)`` (async) runs first, e.g. to write tables; ``row_setup(ctx, r)`` (sync)
    sets per-row scalars before row r's first beat; ``finish(ctx)`` (async) runs after the
    last output beat. Returns ``{"rows": [...], "errors":
    [...], "first_in", "first_out", "last_out"}`` with the output rows unframed and the
    clock edges at which the first input and the first/last output beats were transferred.
    """
    from amaranth.sim import Simulator

    lanes = dut.lanes
    framed = frame_rows(rows, lanes)
    total = sum(len(f) for f in framed)
    got_beats: list = []
    # Cycle numbers are clock edges: a transfer's number is the edge at which it happened.
    timing = {"cycle": 0, "first_out": None, "first_in": None, "last_out": None}
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def clock_count(ctx):
        while True:
            await ctx.tick()
            timing["cycle"] += 1
            if timing["cycle"] > max_cycles:
                raise TimeoutError(
                    f"{len(got_beats)} of {total} output beats after {max_cycles} cycles"
                )

    async def producer(ctx):
        if setup is not None:
            await setup(ctx)
        pauses = random_pauses(stall_in, seed) if stall_in else None
        for r, beats in enumerate(framed):
            if row_setup is not None:
                row_setup(ctx, r)
            for values, count, last in beats:
                payload = {"data": values, "count": count, "last": int(last)}
                await amaranth_put(ctx, dut.i, payload, pauses=pauses)
                if timing["first_in"] is None:
                    timing["first_in"] = timing["cycle"]

    async def consumer(ctx):
        pauses = random_pauses(stall_out, seed + 1) if stall_out else None
        while len(got_beats) < total:
            payload = await amaranth_get(ctx, dut.o, pauses=pauses)
            if timing["first_out"] is None:
                timing["first_out"] = timing["cycle"]
            timing["last_out"] = timing["cycle"]
            got_beats.append(
                (
                    [int(payload.data[k]) for k in range(lanes)],
                    int(payload.count),
                    bool(payload.last),
                )
            )
        if finish is not None:
            await finish(ctx)

    sim.add_process(clock_count)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    out_rows, errors = unframe(got_beats, [len(r) for r in rows], lanes)
    return {
        "rows": out_rows,
        "errors": errors,
        "first_in": timing["first_in"],
        "first_out": timing["first_out"],
        "last_out": timing["last_out"],
    }


# ---- cocotb testbench (Verilator) ----------------------------------------------------------

CLOCK_NS = 10

try:  # the testbench half needs cocotb; the host half above must import without a simulator
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None


class RowBench:
    """Clock, reset, constant loading, per-row scalars and the two streams of one row unit.

    Arguments (``args.json``): ``lanes``, ``in_bits``, ``stall_in``, ``stall_out``, ``seed``,
    ``cfg_strobe`` (write-enable port name or null), ``mode`` (``"rows"`` or ``"reset"``).
    Arrays (``args.npz``): ``x`` (all elements, rows concatenated), ``lengths`` (row
    lengths), ``cfg_<port>`` (one value per write, all of equal length), ``write_row`` (the
    row before which each write happens, writes for a later row wait until ``busy`` is low:
    a new layer's constants), ``row_<port>`` (one value per row, set with that row's first
    beat).
    """

    def __init__(self, dut, args: dict, arrays: dict):
        from vitaccel.sim.streams import StreamSink, StreamSource

        self.dut = dut
        self.args = args
        self.lanes = int(args["lanes"])
        self.in_bits = int(args["in_bits"])
        seed = int(args.get("seed", 0))
        self.source = StreamSource(
            dut, "i", dut.clk, random_pauses(float(args.get("stall_in", 0.0)), seed)
        )
        self.sink = StreamSink(
            dut, "o", dut.clk, random_pauses(float(args.get("stall_out", 0.0)), seed + 1)
        )
        lengths = [int(n) for n in arrays["lengths"]]
        x = arrays["x"]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.rows = [x[offsets[r] : offsets[r + 1]] for r in range(len(lengths))]
        self.cfg = {k[4:]: v for k, v in arrays.items() if k.startswith("cfg_")}
        n_writes = len(next(iter(self.cfg.values()))) if self.cfg else 0
        self.write_row = arrays.get("write_row", np.zeros(n_writes, dtype=np.int64))
        self.row_scalars = {k[4:]: v for k, v in arrays.items() if k.startswith("row_")}
        self.first_out_ns = None
        self.last_out_ns = None

    def words(self, row) -> list[int]:
        return [
            pack_beat(v, c, last, lanes=self.lanes, bits=self.in_bits)
            for v, c, last in frame_row(row, self.lanes)
        ]

    async def reset(self, cycles: int = 2):
        from cocotb.triggers import RisingEdge

        self.source.valid.value = 0
        self.sink.ready.value = 0
        self.dut.rst.value = 1
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def load_constants(self, row: int = 0):
        """Write the constants scheduled before ``row`` (waiting for the unit to go idle)."""
        from cocotb.triggers import ReadOnly, RisingEdge

        strobe = self.args.get("cfg_strobe")
        if not strobe or not self.cfg:
            return
        writes = np.flatnonzero(self.write_row == row)
        if writes.size == 0:
            return
        if row > 0:
            while True:
                await ReadOnly()
                idle = not int(self.dut.busy.value)
                await RisingEdge(self.dut.clk)
                if idle:
                    break
        we = getattr(self.dut, strobe)
        for k in writes:
            for port, values in self.cfg.items():
                getattr(self.dut, port).value = int(values[k])
            we.value = 1
            await RisingEdge(self.dut.clk)
        we.value = 0

    async def send_rows(self, first: int, stop: int, partial_beats: int | None = None):
        """Send rows first..stop-1; with ``partial_beats`` only that many beats of the last."""
        for r in range(first, stop):
            if r > 0:
                await self.load_constants(r)
            for port, values in self.row_scalars.items():
                getattr(self.dut, port).value = int(values[r])
            words = self.words(self.rows[r])
            if partial_beats is not None and r == stop - 1:
                words = words[:partial_beats]
            await self.source.send(words)

    def beats(self, first: int, stop: int) -> int:
        return sum(-(-len(self.rows[r]) // self.lanes) for r in range(first, stop))

    def _on_word(self, word) -> bool:
        from cocotb.simtime import get_sim_time

        now = get_sim_time("ns")
        if self.first_out_ns is None:
            self.first_out_ns = now
        self.last_out_ns = now
        return False

    async def run_rows(self, first: int, stop: int) -> dict:
        """Stream rows first..stop-1 through the unit; outputs and transfer-edge timing."""
        from cocotb.simtime import get_sim_time

        self.first_out_ns = self.last_out_ns = None
        recv = cocotb.start_soon(self.sink.recv(self.beats(first, stop), on_word=self._on_word))
        start_ns = get_sim_time("ns")
        await self.send_rows(first, stop)
        words = await recv
        # ReadOnly of cycle k precedes the edge k+1 at which the transfer happens.
        first_in = int(start_ns // CLOCK_NS) + 1
        first_out = int(self.first_out_ns // CLOCK_NS) + 1
        last_out = int(self.last_out_ns // CLOCK_NS) + 1
        return {"words": words, "first_in": first_in, "first_out": first_out, "last_out": last_out}


if cocotb is not None:

    @cocotb.test()
    async def rows(dut):
        """Load constants, stream every row (random stalls), return the raw output words.

        ``mode == "reset"``: rows ``0..reset_row-1`` are sent and ``reset_outputs`` output
        beats taken, then ``reset_beats`` beats of row ``reset_row``; reset is asserted in the
        middle of that row (with earlier outputs still in flight) and the remaining rows are
        streamed from a clean state. Returns the words before and after the reset.
        """
        from cocotb.clock import Clock
        from cocotb.triggers import ClockCycles

        from vitaccel.sim.runner import load_args, save_result

        args, arrays = load_args()
        cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
        tb = RowBench(dut, args, arrays)
        await tb.reset()
        await tb.load_constants()
        n_rows = len(tb.rows)
        if args.get("mode", "rows") == "rows":
            save_result(await tb.run_rows(0, n_rows))
            return
        cut = int(args["reset_row"])
        sender = cocotb.start_soon(tb.send_rows(0, cut + 1, partial_beats=int(args["reset_beats"])))
        before = await tb.sink.recv(int(args["reset_outputs"]))
        await ClockCycles(dut.clk, int(args.get("reset_delay", 3)))
        if not sender.done():
            sender.cancel()
        await tb.reset()
        result = await tb.run_rows(cut + 1, n_rows)
        result["before"] = before
        save_result(result)
