"""Stream helpers shared by every testbench: Amaranth-simulator and cocotb sides.

Streams are ``amaranth.lib.stream`` interfaces (payload/valid from the source, ready from the
sink). In Verilog an interface member ``i`` becomes ports ``i__payload``, ``i__valid`` and
``i__ready``; a struct payload is one flat vector, packed LSB first in field order.

Random back-pressure comes from pause generators (iterables of bools, True = pause this
cycle), as in cocotbext-axi.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "pack_lanes",
    "unpack_lanes",
    "random_pauses",
    "no_pauses",
    "amaranth_put",
    "amaranth_get",
    "StreamSource",
    "StreamSink",
]


def pack_lanes(values: Sequence[int], bits: int) -> int:
    """Pack ``values`` (signed or unsigned) into one integer, element 0 in the low bits."""
    mask = (1 << bits) - 1
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & mask) << (i * bits)
    return word


def unpack_lanes(word: int, count: int, bits: int, signed: bool) -> list[int]:
    mask = (1 << bits) - 1
    out = []
    for i in range(count):
        v = (int(word) >> (i * bits)) & mask
        if signed and v >> (bits - 1):
            v -= 1 << bits
        out.append(v)
    return out


def random_pauses(probability: float, seed: int) -> Iterator[bool]:
    """Endless pause pattern: True (stall) with the given probability each cycle."""
    rng = random.Random(seed)
    while True:
        yield rng.random() < probability


def no_pauses() -> Iterator[bool]:
    return itertools.repeat(False)


# ---- Amaranth simulator (async testbenches: ctx.set / ctx.get / ctx.tick) ----------------


async def amaranth_put(ctx, stream, payload, *, pauses: Iterator[bool] | None = None) -> None:
    """Offer ``payload`` on ``stream`` until the sink takes it (optionally idling first)."""
    if pauses is not None:
        while next(pauses):
            await ctx.tick()
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def amaranth_get(ctx, stream, *, pauses: Iterator[bool] | None = None):
    """Take one payload from ``stream`` (optionally refusing it for a few cycles first)."""
    if pauses is not None:
        while next(pauses):
            await ctx.tick()
    ctx.set(stream.ready, 1)
    (payload,) = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


# ---- cocotb (Verilator) ----------------------------------------------------------------


class _StreamPorts:
    """An Amaranth stream's Verilog ports (``<prefix>__payload/valid/ready``) and a pause pattern."""

    def __init__(self, dut, prefix: str, clock, pauses: Iterable[bool] | None = None):
        self.payload = getattr(dut, f"{prefix}__payload")
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.clock = clock
        self.pauses = iter(pauses) if pauses is not None else no_pauses()


class StreamSource(_StreamPorts):
    """Drives an Amaranth stream's Verilog ports (``<prefix>__payload/valid/ready``).

    ``await source.send(words)`` presents each integer word in turn, idling on the cycles
    the pause generator says, and returns when the last word has been accepted.
    """

    def __init__(self, dut, prefix: str, clock, pauses: Iterable[bool] | None = None):
        super().__init__(dut, prefix, clock, pauses)
        self.valid.value = 0

    async def send(self, words: Iterable[int]) -> int:
        from cocotb.triggers import ReadOnly, RisingEdge

        cycles = 0
        for word in words:
            while next(self.pauses):
                self.valid.value = 0
                await RisingEdge(self.clock)
                cycles += 1
            self.payload.value = int(word)
            self.valid.value = 1
            while True:
                await ReadOnly()
                accepted = bool(self.ready.value)
                await RisingEdge(self.clock)
                cycles += 1
                if accepted:
                    break
            self.valid.value = 0
        self.valid.value = 0
        return cycles


class StreamSink(_StreamPorts):
    """Collects words from an Amaranth stream's Verilog ports, with optional back-pressure."""

    def __init__(self, dut, prefix: str, clock, pauses: Iterable[bool] | None = None):
        super().__init__(dut, prefix, clock, pauses)
        self.ready.value = 0

    async def recv(self, count: int, on_word=None) -> list[int]:
        """Receive ``count`` words; ``on_word(word)`` may return True to stop early."""
        from cocotb.triggers import ReadOnly, RisingEdge

        words: list[int] = []
        while len(words) < count:
            stall = next(self.pauses)
            self.ready.value = 0 if stall else 1
            await ReadOnly()
            if not stall and self.valid.value:
                word = int(self.payload.value)
                words.append(word)
                if on_word is not None and on_word(word):
                    await RisingEdge(self.clock)
                    break
            await RisingEdge(self.clock)
        self.ready.value = 0
        return words
