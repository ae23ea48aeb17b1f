"""Building blocks shared by the nonlinear units (E2Softmax, AILayerNorm, GELU).

* Row framing: every unit streams rows as beats of ``lanes`` elements, with a ``count`` of
  valid lanes (always ``lanes`` except on the last beat of a row) and a ``last`` flag.
* Constructor validation helpers that raise ``TypeError``/``ValueError`` naming the value.
* Arithmetic the units must build from LUT fabric: a tree leading-one detector, a
  shift-add multiplier (partial products summed by an adder tree, so Yosys never sees a
  ``$mul`` and can map nothing to a DSP48E2), a rounding right shift and small delay lines.

The arithmetic itself (what is rounded where) is defined by :mod:`vitaccel.quant.ref`; these
helpers only provide the hardware shapes the units compose.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.hdl import Value
from amaranth.lib import data, stream, wiring
from amaranth.utils import bits_for, ceil_log2

__all__ = [
    "row_layout",
    "row_signature",
    "replay_rows",
    "count_bits",
    "check_int",
    "check_limits",
    "check_choice",
    "CheckedComponent",
    "elaborate_parts",
    "leading_one",
    "shift_add_mul",
    "rshift_round",
    "rshift_round_staged",
    "delay",
    "tree_reduce",
]


# ---- row framing -----------------------------------------------------------------------


def count_bits(lanes: int) -> int:
    """Width of the ``count`` field: enough for the value ``lanes``."""
    return bits_for(lanes)


def row_layout(elem_shape, lanes: int) -> data.StructLayout:
    """Payload of one beat: ``data`` (``lanes`` elements, element 0 first, i.e. in the low
    bits of the flat Verilog vector), ``count`` (valid lanes, 1..lanes; only the last beat
    of a row may carry fewer than ``lanes``), ``last`` (this beat ends the row)."""
    return data.StructLayout(
        {
            "data": data.ArrayLayout(elem_shape, lanes),
            "count": unsigned(count_bits(lanes)),
            "last": unsigned(1),
        }
    )


def row_signature(elem_shape, lanes: int) -> stream.Signature:
    return stream.Signature(row_layout(elem_shape, lanes))


def replay_rows(m: Module, queue, head: data.View, advance, *, beats_shape, name: str):
    """A second pass over stored rows, one beat a cycle while ``advance``: ``queue`` (a FIFO)
    holds a descriptor per row (``head`` its read data, with the row's ``beats``); it is
    popped at the row's first beat and held for the rest.

    Returns a namespace: ``issue`` (a beat goes out this cycle), ``pop`` (a descriptor is
    taken), ``sel`` (the current row's descriptor), ``active`` (past the row's first beat).
    """
    active = Signal(name=f"{name}_active")
    left = Signal(beats_shape, name=f"{name}_left")
    cur = Signal(head.shape(), name=name)
    sel = Signal(head.shape(), name=f"{name}_sel")
    issue = Signal(name=f"{name}_issue")
    pop = Signal(name=f"{name}_pop")
    m.d.comb += [
        pop.eq(advance & ~active & queue.r_rdy),
        issue.eq(advance & (active | queue.r_rdy)),
        queue.r_en.eq(pop),
        sel.eq(Mux(active, cur, head)),
    ]
    with m.If(issue):
        with m.If(active):
            m.d.sync += [left.eq(left - 1), active.eq(left != 1)]
        with m.Else():
            m.d.sync += [cur.eq(head), left.eq(head.beats - 1), active.eq(head.beats != 1)]
    return SimpleNamespace(issue=issue, pop=pop, sel=sel, active=active)


# ---- constructor validation --------------------------------------------------------------


def admit_rows(m: Module, i, *, ring_depth: int, row_queue: int):
    """Input admission of a two-pass row unit (softmax, layernorm): a beat is taken while
    the ring has room for it and the row queue for its row.

    Returns ``(used, in_flight, in_row, accept, first)``: ring words written and not yet
    read, rows ended in pass 1 and not popped (both for the caller to update), inside a row,
    the beat is taken this cycle, and the beat starts a row.
    """
    used = Signal(range(ring_depth + 1))
    in_flight = Signal(range(row_queue + 1))
    in_row = Signal()
    accept = Signal()
    m.d.comb += [
        i.ready.eq((used < ring_depth) & (in_flight < row_queue)),
        accept.eq(i.valid & i.ready),
    ]
    return used, in_flight, in_row, accept, ~in_row


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """``value`` must be an int (not bool) in ``lo..hi``; errors name the parameter and value."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be in {bound}, not {value!r}")
    return value


def elaborate_parts(*parts) -> Module:
    """A module built by ``parts`` in turn, each called as ``part(m, s)`` with the module
    and a namespace ``s`` holding what the parts share (a long ``elaborate`` cut at its
    stage boundaries)."""
    m = Module()
    s = SimpleNamespace()
    for part in parts:
        part(m, s)
    return m


class CheckedComponent(wiring.Component):
    """A component whose constructor arguments are checked before the object exists.

    A subclass defines :meth:`check`, a classmethod taking the constructor's arguments by
    name (defaults applied). ``__new__`` calls it first: a rejected component is never
    created, so Amaranth has no unused elaboratable to warn about beside the error.
    """

    @classmethod
    def check(cls, **arguments) -> None:
        """Raise ``TypeError``/``ValueError`` naming the first bad argument."""

    def __new__(cls, *args, src_loc_at: int = 0, **kwargs):
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(arguments)))  # self
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(name))
        cls.check(**arguments)
        return super().__new__(cls, src_loc_at=src_loc_at + 1)


def check_limits(arguments: dict, limits: dict) -> None:
    """Every ``name: (lo, hi)`` of ``limits``: ``arguments[name]`` must be an int in range."""
    for name, (lo, hi) in limits.items():
        check_int(name, arguments[name], lo, hi)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, not {value!r}")
    return value


# ---- arithmetic in fabric --------------------------------------------------------------


def _lod(v: Value) -> tuple[Value, Value]:
    """(any bit set, index of the highest set bit) for a power-of-two wide ``v``."""
    w = len(v)
    if w == 1:
        return v[0], Const(0, 0)
    half = w // 2
    any_hi, pos_hi = _lod(v[half:])
    any_lo, pos_lo = _lod(v[:half])
    pos = Mux(any_hi, Cat(pos_hi, Const(1, 1)), Cat(pos_lo, Const(0, 1)))
    return any_hi | any_lo, pos


def leading_one(value: Value) -> Value:
    """Index of the most significant set bit of unsigned ``value`` (0 when value == 0).

    A balanced tree (log2 width levels of one OR and one 2:1 mux), not a priority chain.
    """
    width = len(value)
    if width == 1:
        return Const(0, 1)
    padded = Cat(value, Const(0, (1 << ceil_log2(width)) - width))
    _, pos = _lod(padded)
    return pos


def leading_one_registered(m: Module, value: Value, *, chunk: int = 8, name: str = "lod") -> Value:
    """:func:`leading_one` split by a register: one cycle later, from flip-flops.

    Registers each ``chunk``-bit slice's (any bit set, local index); the returned value
    (combinational from those registers) picks the highest non-zero slice and its index.
    For a 40-bit value that is about 4 LUT levels on each side of the register instead of
    9 in one piece. The caller delays everything that travels with ``value`` by one cycle.
    """
    if chunk & (chunk - 1) or chunk < 2:
        raise ValueError(f"chunk must be a power of two >= 2, not {chunk!r}")
    width = len(value)
    if width <= chunk:
        reg = Signal(len(leading_one(value)), name=f"{name}_pos")
        m.d.sync += reg.eq(leading_one(value))
        return reg
    n = -(-width // chunk)
    padded = Cat(value, Const(0, n * chunk - width))
    anys = Signal(n, name=f"{name}_any")
    locs = [Signal(ceil_log2(chunk), name=f"{name}_loc{i}") for i in range(n)]
    for i in range(n):
        any_i, loc_i = _lod(padded[i * chunk : (i + 1) * chunk])
        m.d.sync += [anys[i].eq(any_i), locs[i].eq(loc_i)]
    if n == 1:
        return locs[0]
    _, ci = _lod(Cat(anys, Const(0, (1 << ceil_log2(n)) - n)))
    return Cat(Array(locs)[ci], ci)


def _register(m: Module, value: Value, en, name: str) -> Signal:
    sig = Signal(value.shape(), name=name)
    if en is None:
        m.d.sync += sig.eq(value)
    else:
        with m.If(en):
            m.d.sync += sig.eq(value)
    return sig


def tree_reduce(m: Module, items, combine, *, en=None, levels_per_stage=0, name="tree"):
    """Reduce ``items`` pairwise in a balanced tree; returns ``(result, latency)``.

    With ``levels_per_stage > 0`` a register (enabled by ``en``; always when ``en`` is None)
    follows every that many levels and the root.
    """
    level = list(items)
    depth = 0
    latency = 0
    while len(level) > 1:
        nxt = []
        for j in range(0, len(level) - 1, 2):
            nxt.append(combine(level[j], level[j + 1]))
        if len(level) % 2:
            nxt.append(level[-1])
        depth += 1
        if levels_per_stage and depth % levels_per_stage == 0:
            nxt = [_register(m, v, en, f"{name}_l{depth}_{k}") for k, v in enumerate(nxt)]
            latency += 1
        level = nxt
    if levels_per_stage and (depth == 0 or depth % levels_per_stage):
        level = [_register(m, level[0], en, f"{name}_out")]
        latency += 1
    return level[0], latency


def _extend(v: Value, width: int) -> Value:
    """``v`` sign- or zero-extended to ``width`` bits (keeps its signedness)."""
    pad = width - len(v)
    if pad <= 0:
        return v
    if v.shape().signed:
        return Cat(v, *([v[-1]] * pad)).as_signed()
    return Cat(v, Const(0, pad))


def _add_offset(a, b):
    """Add two (value, bit offset) terms; bits below the larger offset pass through."""
    (va, oa), (vb, ob) = sorted([a, b], key=lambda t: t[1])
    k = ob - oa
    if k == 0:
        return va + vb, oa
    va = _extend(va, k + 1)
    high = va.shift_right(k) + vb
    total = Cat(va[:k], high)
    return (total.as_signed() if high.shape().signed else total), oa


def _radix2_terms(a: Value, b: Value) -> list:
    nb = len(b)
    terms = []
    for i in range(nb):
        pp = Mux(b[i], a, 0)
        if b.shape().signed and i == nb - 1:
            pp = -pp  # the top bit of a signed b weighs -2**(n-1)
        terms.append((pp, i))
    return terms


def _booth_terms(a: Value, b: Value) -> list:
    """Radix-4 Booth digits of ``b`` (-2..2), each selecting 0, +-a or +-2a.

    A negative digit takes the one's complement of the magnitude; the missing +1s are
    gathered into one extra term, so no partial product needs its own adder.
    """
    bits = [b[i] for i in range(len(b))]
    if not b.shape().signed:
        bits.append(Const(0, 1))  # as a signed number with a zero sign bit
    if len(bits) % 2:
        bits.append(bits[-1])  # sign-extend to whole digits
    width = len(a) + 2
    terms, negs = [], []
    prev = Const(0, 1)
    for k in range(len(bits) // 2):
        lo, hi = bits[2 * k], bits[2 * k + 1]
        one = lo ^ prev
        two = (hi & ~lo & ~prev) | (~hi & lo & prev)
        mag = Mux(one, a, Mux(two, a << 1, 0))
        mask = Mux(hi, Const(-1, signed(width)), Const(0, signed(width)))
        terms.append((_extend(mag ^ mask, width), 2 * k))
        negs += [hi, Const(0, 1)]
        prev = hi
    terms.append((Cat(*negs), 0))
    return terms


def shift_add_mul(
    m: Module,
    a: Value,
    b: Value,
    *,
    en=None,
    levels_per_stage: int = 2,
    booth: bool = True,
    name: str = "mul",
) -> tuple[Value, int]:
    """``a * b`` as a sum of shifted partial products selected by the bits of ``b``.

    No ``*`` operator is used, so synthesis infers no multiplier and maps nothing to a
    DSP48E2; the partial products are summed by an adder tree in LUT/CARRY8 fabric (pass
    the narrower operand as ``b``). With ``booth`` (default) ``b`` is recoded in radix-4
    Booth digits, halving the partial products; otherwise there is one per bit of ``b``.
    Signed operands are two's complement. Returns ``(product, latency)``; the product is
    exact (``len(a) + len(b)`` bits, signed if either operand is) and registers are inserted
    every ``levels_per_stage`` adder levels (0: purely combinational), enabled by ``en``.
    """
    nb = len(b)
    signed_b = b.shape().signed
    terms = _booth_terms(a, b) if booth and nb > 2 else _radix2_terms(a, b)
    out_signed = a.shape().signed or signed_b
    width = len(a) + nb

    level = terms
    depth = 0
    latency = 0
    while len(level) > 1:
        nxt = [_add_offset(level[j], level[j + 1]) for j in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        depth += 1
        if levels_per_stage and depth % levels_per_stage == 0 and len(nxt) > 1:
            nxt = [
                (_register(m, v, en, f"{name}_l{depth}_{k}"), off) for k, (v, off) in enumerate(nxt)
            ]
            latency += 1
        level = nxt
    value, offset = level[0]
    full = Cat(Const(0, offset), value) if offset else value
    product = Signal(signed(width) if out_signed else unsigned(width), name=f"{name}_p")
    if levels_per_stage:
        with m.If(en if en is not None else 1):
            m.d.sync += product.eq(full.as_signed() if value.shape().signed else full)
        latency += 1
    else:
        m.d.comb += product.eq(full.as_signed() if value.shape().signed else full)
    return product, latency


def rshift_round(value: Value, shift: Value) -> Value:
    """``(value + 2**(shift-1)) >> shift`` (round half up), ``value`` when shift == 0.

    The hardware form of :func:`vitaccel.quant.ref.rshift_round` for a run-time shift.
    """
    half = (Const(1, 1) << shift)[1:]
    total = value + half
    return total >> shift


def rshift_round_staged(
    m: Module, value: Value, shift: Value, *, en=None, name: str = "rsr"
) -> tuple[Value, int]:
    """:func:`rshift_round` over two register stages (add the half, then shift), so the
    long carry chain and the barrel shifter do not share a cycle. Returns (result, 2)."""
    half = (Const(1, 1) << shift)[1:]
    total = _register(m, value + half, en, f"{name}_sum")
    amount = _register(m, shift, en, f"{name}_shift")
    return _register(m, total >> amount, en, f"{name}_out"), 2


def delay(m: Module, value: Value, cycles: int, *, en=None, name: str = "dly") -> Value:
    """``value`` delayed by ``cycles`` registers (enabled by ``en``)."""
    for k in range(cycles):
        value = _register(m, value, en, f"{name}_{k}")
    return value


def delay_each(m: Module, cycles: int, prefix: str, *, en=None, **values) -> list[Value]:
    """:func:`delay` of each of ``values`` by the same ``cycles`` (the side signals that
    travel beside a pipelined datapath), named ``<prefix>_<key>``, in the order given."""
    return [delay(m, v, cycles, en=en, name=f"{prefix}_{k}") for k, v in values.items()]


# Memory attributes per memory kind of a design (Design.spm_memory, Design.x_memory): "ultra" is
# the ram_style Yosys (xcup) and Vivado map to URAM288; "bram" leaves the choice to the tools.
RAM_STYLE = {"bram": None, "uram": {"ram_style": "ultra"}}
