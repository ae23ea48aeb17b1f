"""The scratchpad memory: 16-byte words, a round-robin read arbiter, the write clients' mux.

Part of :mod:`vitaccel.rtl.spm` (the package docstring describes the whole).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from vitaccel.isa import WORD_BYTES
from vitaccel.rtl.common import (
    RAM_STYLE,
    CheckedComponent,
    check_int,
)

__all__ = ["ADDR_BITS", "read_client_signature", "write_client_signature", "Scratchpad"]


# Instruction fields are 16 bits: every SPM word address is computed in 16 bits and the
# memory uses the low ceil(log2(words)) of them.
ADDR_BITS = 16


def read_client_signature(addr_bits: int = ADDR_BITS) -> wiring.Signature:
    """A read client of the SPM (client side): ``req``/``addr`` out, ``grant`` in (the request
    is taken on this cycle), ``rvalid``/``rdata`` in one cycle after the grant."""
    return wiring.Signature(
        {
            "req": Out(1),
            "addr": Out(addr_bits),
            "grant": In(1),
            "rvalid": In(1),
            "rdata": In(8 * WORD_BYTES),
        }
    )


def write_client_signature(addr_bits: int = ADDR_BITS) -> wiring.Signature:
    """A write client of the SPM (client side): ``en``, ``addr``, ``data``, byte enables ``be``."""
    return wiring.Signature(
        {
            "en": Out(1),
            "addr": Out(addr_bits),
            "data": Out(8 * WORD_BYTES),
            "be": Out(WORD_BYTES),
        }
    )


def _check_lanes(lanes, name: str = "lanes") -> int:
    check_int(name, lanes, 1, 64)
    if lanes & (lanes - 1):
        raise ValueError(f"{name} must be a power of two, not {lanes!r}")
    return lanes


class Scratchpad(CheckedComponent):
    """The SPM: ``words`` x 16 bytes, one read port shared round-robin, one write port.

    Parameters
    ----------
    words : int
        Depth in 16-byte words (16..65536).
    read_clients, write_clients : int
        Number of read clients (round-robin, one grant per cycle) and write clients (lower
        index wins; the controller lets one write at a time).
    init : sequence of int, optional
        Power-up contents (128-bit words), for tests; zeros otherwise.
    memory : {"bram", "uram"}
        ``"uram"`` marks the memory ``ram_style = "ultra"``, which Yosys (xcup) and Vivado map
        to URAM288; read latency stays one cycle (``dse.resources.memory_uram288``).

    Members
    -------
    rd : ``In(read_client_signature()).array(read_clients)``
    wr : ``In(write_client_signature()).array(write_clients)``
    """

    @classmethod
    def check(cls, *, words, read_clients, write_clients, **_):
        check_int("words", words, 16, 1 << ADDR_BITS)
        check_int("read_clients", read_clients, 1, 16)
        check_int("write_clients", write_clients, 1, 16)

    def __init__(self, *, words: int, read_clients: int = 1, write_clients: int = 1, init=None,
                 memory: str = "bram"):  # fmt: skip
        self.words = words
        # Built here (not in elaborate) so testbenches can read ``mem.data``.
        self.mem = Memory(shape=unsigned(8 * WORD_BYTES), depth=words, init=init or [],
                          attrs=RAM_STYLE[memory])  # fmt: skip
        self.read_clients = read_clients
        self.write_clients = write_clients
        super().__init__(
            {
                "rd": In(read_client_signature()).array(read_clients),
                "wr": In(write_client_signature()).array(write_clients),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = self.mem
        abits = ceil_log2(self.words)
        wp = mem.write_port(granularity=8)
        rp = mem.read_port()

        # Writes: priority mux (the last assignment wins, so client 0 has priority).
        for w in reversed(list(self.wr)):
            with m.If(w.en):
                m.d.comb += [wp.addr.eq(w.addr[:abits]), wp.data.eq(w.data)]
                m.d.comb += wp.en.eq(w.be)

        # Reads: round-robin after the last granted client (priority last+1, last+2, ...,
        # wrapping), as two lowest-set-bit picks: among the clients above the last granted
        # one (``above``, a register), else among all. ``x & -x`` is a carry chain, so the
        # grant is a few levels from the requests; the address is an AND-OR of the one-hot
        # grant (a chain of muxes was most of a 9-level path into the block RAM).
        n = self.read_clients
        reqs = Cat(*[r.req for r in self.rd])
        above = Signal(n, init=((1 << n) - 1) & ~1)  # clients after the last granted one

        def lowest(x):
            return x & (~x + 1)[:n]

        masked = Signal(n)
        grant = Signal(n)
        m.d.comb += [
            masked.eq(reqs & above),
            grant.eq(Mux(masked.any(), lowest(masked), lowest(reqs))),
        ]
        with m.If(grant.any()):
            m.d.sync += above.eq(~(grant | (grant - 1)[:n]))
        addr = 0
        for i, r in enumerate(self.rd):
            m.d.comb += r.grant.eq(grant[i])
            addr = addr | Mux(grant[i], r.addr[:abits], 0)
        m.d.comb += [rp.addr.eq(addr), rp.en.eq(grant.any())]
        granted = Signal(n)
        m.d.sync += granted.eq(grant)
        for i, r in enumerate(self.rd):
            m.d.comb += [r.rvalid.eq(granted[i]), r.rdata.eq(rp.data)]
        return m
