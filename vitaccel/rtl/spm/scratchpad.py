"""The scratchpad memory: 16-byte words (optionally in banks by the low word-address bits, so
a wide read client gets several consecutive words per grant), a round-robin read arbiter, the
write clients' mux.

Part of :mod:`vitaccel.rtl.spm` (the package docstring describes the whole).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from vitaccel.isa import WORD_BYTES
from vitaccel.rtl.common import (
    RAM_STYLE,
    CheckedComponent,
    check_int,
)

__all__ = [
    "ADDR_BITS",
    "read_client_signature",
    "write_client_signature",
    "bank_write_signature",
    "bank_lanes",
    "spm_bank_memory",
    "Scratchpad",
]


# Instruction fields are 16 bits: every SPM word address is computed in 16 bits and the
# memory uses the low ceil(log2(words)) of them.
ADDR_BITS = 16


def read_client_signature(addr_bits: int = ADDR_BITS, words: int = 1) -> wiring.Signature:
    """A read client of the SPM (client side): ``req``/``addr`` out, ``grant`` in (the request
    is taken on this cycle), ``rvalid``/``rdata`` in one cycle after the grant. A wide client
    (``words`` > 1, on a scratchpad of as many banks) gets the words ``addr .. addr +
    words - 1`` at once, word i in bits ``128 i ..``."""
    return wiring.Signature(
        {
            "req": Out(1),
            "addr": Out(addr_bits),
            "grant": In(1),
            "rvalid": In(1),
            "rdata": In(8 * WORD_BYTES * words),
        }
    )


def write_client_signature(addr_bits: int = ADDR_BITS, words: int = 1) -> wiring.Signature:
    """A write client of the SPM (client side): ``en``, ``addr``, ``data``, byte enables ``be``.
    A wide client (``words`` > 1, on a scratchpad of at least as many banks) writes the words
    ``addr .. addr + words - 1`` at once, word i in bits ``128 i ..`` (enables ``16 i ..``)."""
    return wiring.Signature(
        {
            "en": Out(1),
            "addr": Out(addr_bits),
            "data": Out(8 * WORD_BYTES * words),
            "be": Out(WORD_BYTES * words),
        }
    )


def bank_write_signature(banks: int, addr_bits: int = ADDR_BITS) -> wiring.Signature:
    """A bank-parallel write client of a banked SPM (client side): one
    :func:`write_client_signature` lane per bank, members ``l0, l1, ...``
    (:func:`bank_lanes`), lane ``b`` writing only bank ``b`` (its ``addr`` must be a word of
    that bank: ``addr mod banks == b``), all lanes in one cycle (the matmul output writer's
    word path: one output word's pieces at once)."""
    return wiring.Signature({f"l{b}": Out(write_client_signature(addr_bits)) for b in range(banks)})


def bank_lanes(client) -> list:
    """The lanes of a :func:`bank_write_signature` client, bank 0 first."""
    return [getattr(client, name) for name in sorted(client.signature.members, key=lambda n:
            int(n[1:]))]  # fmt: skip


def _check_lanes(lanes, name: str = "lanes") -> int:
    check_int(name, lanes, 1, 64)
    if lanes & (lanes - 1):
        raise ValueError(f"{name} must be a power of two, not {lanes!r}")
    return lanes


def _client_ports(signature, count: int, wide: dict, lanes: dict | None = None):
    """``count`` clients of ``signature`` (scratchpad side): an array, or with ``wide``
    (client -> words) members ``c0, c1, ...``, each ``wide.get(i, 1)`` words wide; ``lanes``
    (client -> banks): those clients are :func:`bank_write_signature` clients."""
    if not wide and not lanes:
        return In(signature()).array(count)
    lanes = lanes or {}
    return In(
        wiring.Signature({
            f"c{i}": Out(bank_write_signature(lanes[i]) if i in lanes
                         else signature(words=wide.get(i, 1)))
            for i in range(count)
        })
    )  # fmt: skip


def _bank_row(addr, b: int, lb: int, abits: int):
    """Bank ``b``'s row for the words from ``addr`` on (``2**lb`` banks): ``addr div B``, one
    further for the banks below ``addr mod B`` (they hold the words after the last bank's)."""
    return addr[lb:abits] + (addr[:lb] > b)


def spm_bank_memory(depth: int, init=(), memory: str = "bram") -> Memory:
    """One memory of the scratchpad (the whole SPM, or one bank): ``depth`` 16-byte words on
    ``memory`` (``RAM_STYLE``). Every scratchpad memory is created here."""
    return Memory(shape=unsigned(8 * WORD_BYTES), depth=depth, init=list(init) or [],
                  attrs=RAM_STYLE[memory])  # fmt: skip


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
    banks : int
        1 (one memory), 2 or 4: word ``a`` lives in bank ``a mod banks`` at ``a div banks``,
        so any ``banks`` consecutive words are in different banks and a *wide* read client
        gets them all in one grant (the words after ``addr``, wrapping like addresses).
    wide : collection of int, or mapping of int to int
        The read clients that read ``banks`` words per grant (the others read one); a mapping
        gives each wide client its own word count (2..``banks``).
    wide_writes : mapping of int to int
        Write clients that write several consecutive words (2..``banks``) in one cycle, at
        any alignment (a nonlinear unit's row writer as wide as the datapath).
    memory : {"bram", "uram"}
        ``"uram"`` marks the memory ``ram_style = "ultra"``, which Yosys (xcup) and Vivado map
        to URAM288; read latency stays one cycle (``dse.resources.memory_uram288``).
    bank_writes : collection of int
        Write clients that are :func:`bank_write_signature` clients: one lane per bank, every
        bank written in the same cycle (needs ``banks`` > 1).

    Members
    -------
    rd : ``In(read_client_signature()).array(read_clients)``
        (a wide client's ``rdata`` is ``banks`` words wide)
    wr : ``In(write_client_signature()).array(write_clients)``
        (with ``wide_writes``, members ``c{i}`` as in ``rd``; :meth:`writers` lists them)
    """

    @classmethod
    def check(cls, *, words, read_clients=1, write_clients=1, banks=1, wide=(), wide_writes=None,
              bank_writes=(), **_):  # fmt: skip
        check_int("words", words, 16, 1 << ADDR_BITS)
        check_int("read_clients", read_clients, 1, 16)
        check_int("write_clients", write_clients, 1, 16)
        if banks not in (1, 2, 4) or words % banks:
            raise ValueError(f"banks must be 1, 2 or 4 and divide words ({words}), not {banks!r}")
        if bank_writes and (banks < 2 or any(not 0 <= i < write_clients for i in bank_writes)):
            raise ValueError(
                f"bank_writes must name write clients 0..{write_clients - 1} of a scratchpad "
                f"of 2 or 4 banks, not {tuple(bank_writes)!r} with banks={banks}"
            )
        if any(not 0 <= i < read_clients for i in wide):
            raise ValueError(f"wide must name read clients 0..{read_clients - 1}, not {wide!r}")
        for name, ports, n in (
            ("wide", wide, read_clients),
            ("wide_writes", wide_writes, write_clients),
        ):
            if not isinstance(ports, dict):
                continue
            if any(not 0 <= i < n or not 2 <= w <= banks for i, w in ports.items()):
                raise ValueError(
                    f"{name} must map clients 0..{n - 1} to 2..{banks} words (banks), not {ports!r}"
                )

    def __init__(self, *, words: int, read_clients: int = 1, write_clients: int = 1, init=None,
                 banks: int = 1, wide=(), wide_writes=None, memory: str = "bram",
                 bank_writes=()):  # fmt: skip
        self.words = words
        self.banks = banks
        # client -> words per grant / per write
        self.wide = dict(wide) if isinstance(wide, dict) else {i: banks for i in wide}
        self.wide_writes = dict(wide_writes or {})
        self.bank_writes = {i: banks for i in bank_writes}
        init = list(init or [])
        # Built here (not in elaborate) so testbenches can read ``mem.data`` (one bank) or
        # ``banks_mem[b].data`` (word a at ``banks_mem[a % banks].data[a // banks]``).
        if banks == 1:
            self.mem = spm_bank_memory(words, init, memory)
        else:
            self.banks_mem = [
                spm_bank_memory(words // banks, init[b::banks], memory) for b in range(banks)
            ]
        self.read_clients = read_clients
        self.write_clients = write_clients
        super().__init__(
            {
                "rd": _client_ports(read_client_signature, read_clients, self.wide),
                "wr": _client_ports(
                    write_client_signature, write_clients, self.wide_writes, self.bank_writes
                ),  # fmt: skip
            }
        )

    def word(self, ctx, a: int) -> int:
        """Word ``a`` of the memory in a testbench (``ctx.get``), whatever the banking."""
        if self.banks == 1:
            return ctx.get(self.mem.data[a])
        return ctx.get(self.banks_mem[a % self.banks].data[a // self.banks])

    def clients(self) -> list:
        """The read clients in index order (``rd[i]``, or ``rd.c{i}`` with wide clients)."""
        if not self.wide:
            return list(self.rd)
        return [getattr(self.rd, f"c{i}") for i in range(self.read_clients)]

    def writers(self) -> list:
        """The write clients in index order (``wr[i]``, or ``wr.c{i}`` with wide writers)."""
        if not self.wide_writes and not self.bank_writes:
            return list(self.wr)
        return [getattr(self.wr, f"c{i}") for i in range(self.write_clients)]

    def elaborate(self, platform):
        if self.banks > 1:
            return self._elaborate_banked()
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

        n = self.read_clients
        grant, addr = self._arbiter(m, list(self.rd), abits)
        m.d.comb += [rp.addr.eq(addr), rp.en.eq(grant.any())]
        granted = Signal(n)
        m.d.sync += granted.eq(grant)
        for i, r in enumerate(self.rd):
            m.d.comb += [r.rvalid.eq(granted[i]), r.rdata.eq(rp.data)]
        return m

    def _arbiter(self, m: Module, clients, abits: int):
        """Round-robin grant over ``clients``; returns (one-hot grant, granted address).

        Round-robin after the last granted client (priority last+1, last+2, ..., wrapping),
        as two lowest-set-bit picks: among the clients above the last granted one
        (``above``, a register), else among all. ``x & -x`` is a carry chain, so the grant
        is a few levels from the requests; the address is an AND-OR of the one-hot grant (a
        chain of muxes was most of a 9-level path into the block RAM)."""
        n = self.read_clients
        reqs = Cat(*[r.req for r in clients])
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
        for i, r in enumerate(clients):
            m.d.comb += r.grant.eq(grant[i])
            addr = addr | Mux(grant[i], r.addr[:abits], 0)
        return grant, addr

    def _elaborate_banked(self):
        """``banks`` memories by the low word-address bits; the same arbiter and write mux
        as one memory. A read of word ``a`` reads every bank at ``a div B`` (banks below
        ``a mod B`` one further: the words after the last bank's) and rotates the words by
        ``a mod B`` (registered with the grant) so word ``a + i`` is word i of the answer."""
        m = Module()
        B = self.banks
        lb = exact_log2(B)
        abits = ceil_log2(self.words)
        ports = []
        for b, mem in enumerate(self.banks_mem):
            m.submodules[f"bank{b}"] = mem
            ports.append((mem.write_port(granularity=8), mem.read_port()))

        for i, w in reversed(list(enumerate(self.writers()))):
            if i in self.bank_writes:  # each lane its own bank, every lane in one cycle
                for (wp, _), lane in zip(ports, bank_lanes(w), strict=True):
                    with m.If(lane.en):
                        m.d.comb += [wp.addr.eq(lane.addr[lb:abits]), wp.data.eq(lane.data),
                                     wp.en.eq(lane.be)]  # fmt: skip
                continue
            with m.If(w.en):
                if i in self.wide_writes:
                    self._wide_write(m, w, self.wide_writes[i], ports, abits)
                    continue
                for b, (wp, _) in enumerate(ports):
                    m.d.comb += [wp.addr.eq(w.addr[lb:abits]), wp.data.eq(w.data)]
                    with m.If(w.addr[:lb] == b):
                        m.d.comb += wp.en.eq(w.be)

        clients = self.clients()
        grant, addr = self._arbiter(m, clients, abits)
        a = Signal(abits)
        m.d.comb += a.eq(addr)
        # Bank b's row for each client's address, before the grant selects one (the add
        # after the grant's AND-OR was a carry chain between the arbiter and every block
        # RAM's address, 7.0 levels from a reader's room); a narrow client's word is in
        # bank a mod B, whose row is a div B: only the wide clients add
        for b, (_, rp) in enumerate(ports):
            row = 0
            for i, r in enumerate(clients):
                rb = _bank_row(r.addr, b, lb, abits) if i in self.wide else r.addr[lb:abits]
                row = row | Mux(grant[i], rb, 0)
            m.d.comb += [rp.addr.eq(row), rp.en.eq(grant.any())]
        rot = Signal(lb)
        granted = Signal(self.read_clients)
        m.d.sync += granted.eq(grant)
        with m.If(grant.any()):
            m.d.sync += rot.eq(a[:lb])
        data = Cat(*[rp.data for _, rp in ports])
        # word i of the answer: bank (rot + i) mod B; rotating the concatenation right by rot
        # words puts bank rot first
        words = Signal(8 * WORD_BYTES * B)
        m.d.comb += words.eq(data.rotate_right(0))
        with m.Switch(rot):
            for k in range(B):
                with m.Case(k):
                    m.d.comb += words.eq(data.rotate_right(8 * WORD_BYTES * k))
        for i, r in enumerate(clients):
            width = 8 * WORD_BYTES * self.wide.get(i, 1)
            m.d.comb += [r.rvalid.eq(granted[i]), r.rdata.eq(words[:width])]
        return m

    def _wide_write(self, m: Module, w, nwords: int, ports, abits: int) -> None:
        """Words ``a .. a + nwords - 1`` of a wide write client into their banks in one cycle:
        word i goes to bank ``(a + i) mod B`` at ``(a + i) div B``, i.e. bank b takes word
        ``(b - a) mod B`` (none past ``nwords``), one row further below ``a mod B``."""
        B = self.banks
        lb = exact_log2(B)
        rot = w.addr[:lb]
        for b, (wp, _) in enumerate(ports):
            m.d.comb += wp.addr.eq(_bank_row(w.addr, b, lb, abits))
            with m.Switch(rot):
                for r in range(B):
                    i = (b - r) % B
                    if i < nwords:
                        with m.Case(r):
                            m.d.comb += [
                                wp.data.eq(w.data[8 * WORD_BYTES * i : 8 * WORD_BYTES * (i + 1)]),
                                wp.en.eq(w.be[WORD_BYTES * i : WORD_BYTES * (i + 1)]),
                            ]
