"""The group-vector systolic array (GVSA): vector PEs in groups, W8 lanes on DSP48E2, W4 in LUTs.

The array is output-stationary and systolic (docs/gvsa.md has the diagram): activations
enter each PE row from the left and move one unit right per cycle, weights enter each column
from the top and move one row down per cycle, and the inputs arrive pre-skewed (row r by r
cycles, unit u by u cycles) from the controller in :mod:`vitaccel.rtl.matmul`.

Two kinds of PE unit:

* :class:`W8PairPE` covers two W8 output channels. Each of its ``vector`` lanes is one
  DSP48E2 product ``x * {hi', sext18(w_lo)}`` that yields both int8 products (the packing
  of Xilinx WP486, with the borrow of the low product corrected), so a W8 MAC costs half a
  slice.
* :class:`W4PE` covers one W4 output channel with shift-add products in LUT fabric, either
  uniform int4 (two's complement nibble) or power-of-two (``pot4``: sign + 3-bit shift).

Arrays built with ``log2=True`` also run attention x V on log2-code probabilities in the
shift-add form of PackQViT (eq. 3): each product is ``v << s`` with ``s = 15 - q``. The
activation of such a job arrives split as ``s = 8 h + l``: the one-hot ``2**l`` on the
activation port (so the W8 pair's DSP shifts both weights by ``l`` within the packing's
18-bit fields) and ``h`` on a separate lane bit that shifts both products by 8 in LUTs.

Every PE adds its ``vector`` products in a balanced adder tree, accumulates over k-steps
(``acc = first ? sum : acc + sum``) and captures the tile's result on ``last``; the array
drains each column's captures through a parallel-load shift chain, one value per cycle.
"""

from __future__ import annotations

import operator

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.lib.wiring import In, Out

from vitaccel.design import ACC_BITS, column_units
from vitaccel.engine_host import POT4_ZERO
from vitaccel.engine_timing import column_split, pe_stages, tree_stages
from vitaccel.rtl.common import CheckedComponent, tree_reduce

__all__ = [
    "FLAGS",
    "W8_LANE",
    "POT4_ZERO",
    "column_split",
    "W8PairPE",
    "W4PE",
    "GVSArray",
    "tree_stages",
    "pe_stages",
]

# Control that travels with the activations along a PE row.
FLAGS = data.StructLayout(
    {
        "active": 1,  # this cycle carries a k-step
        "first": 1,  # first k-step of a tile: restart the accumulator
        "last": 1,  # last k-step of a tile: capture the result
        "parity": 1,  # output-channel step parity (selects the requant parameter half)
        "row_valid": 1,  # the row's token exists (t < T); invalid rows are not emitted
    }
)

# One lane of a W8 pair as it travels down a column: the high weight already corrected for
# the borrow of the low one (hi' = w_hi - (w_lo < 0)), so the 27-bit DSP operand is the
# plain concatenation {hi', sext18(w_lo)} = w_hi * 2**18 + w_lo.
W8_LANE = data.StructLayout({"lo": signed(8), "hi": signed(9)})
# Bits of each product a W8 lane extracts from its DSP48E2 output (see W8PairPE._terms).
W8_PRODUCT_BITS = 16


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value!r}")


def _sum(m: Module, values: list):
    """Balanced sum of ``values``, combinational (Amaranth does a left-leaning chain for
    ``sum()``)."""
    return tree_reduce(m, values, operator.add)[0]


def _popcount(m: Module, bits: list):
    return _sum(m, [b.as_unsigned() for b in bits])


def _reduce(m: Module, lanes: list, stages: int, name: str) -> list:
    """``stages`` registered levels, each summing groups of up to 4; returns the partials.

    ``lanes`` holds one list of terms per lane (its product plus narrow corrections). The
    first level sums all terms of 4 lanes at once, so one-bit corrections join Yosys'
    compressor tree instead of costing an adder of their own.
    """

    def groups(items):
        size = 4 if len(items) > 2 else 1
        return [items[i : i + size] for i in range(0, len(items), size)]

    level = [sum(grp, []) for grp in groups(lanes)]  # lists of terms
    for st in range(stages):
        partials = []
        for j, terms in enumerate(level):
            total = _sum(m, terms)
            reg = Signal(signed(len(total.as_signed())), name=f"{name}_l{st}_{j}")
            m.d.sync += reg.eq(total)
            partials.append(reg)
        level = groups(partials) if st + 1 < stages else partials
    return level


class _PEBase(CheckedComponent):
    """Systolic forwarding, flag pipeline, accumulators and capture shared by both PE kinds.

    Pipeline (cycles after the inputs are registered): 1 products, then
    :func:`tree_stages` registered levels of 4-input partial sums, then the accumulator
    (``acc + p0 + p1``) and capture. ``cap_stb`` pulses the cycle after a capture.
    """

    @classmethod
    def check(cls, *, vector, in_bits, acc_bits, **_):
        _check_int("vector", vector, 1, 256)
        _check_int("in_bits", in_bits, 2, 8)
        _check_int("acc_bits", acc_bits, *ACC_BITS)

    def __init__(
        self,
        *,
        vector: int,
        in_bits: int,
        acc_bits: int,
        w_shape,
        outputs: int,
        log2: bool = False,
    ):
        self.vector = vector
        self.in_bits = in_bits
        self.acc_bits = acc_bits
        self.outputs = outputs
        self.log2 = log2
        x_shape = data.ArrayLayout(signed(in_bits + 1), vector)
        w_layout = data.ArrayLayout(w_shape, vector)
        xh = {"xh_i": In(vector), "xh_o": Out(vector)} if log2 else {}
        super().__init__(
            {
                **xh,
                "x_i": In(x_shape),
                "f_i": In(FLAGS),
                "w_i": In(w_layout),
                "x_o": Out(x_shape),
                "f_o": Out(FLAGS),
                "w_o": Out(w_layout),
                "cap": Out(data.ArrayLayout(signed(acc_bits), outputs)),
                "cap_valid": Out(1),
                "cap_parity": Out(1),
                "cap_stb": Out(1),
            }
        )

    def _terms(self, m: Module) -> list[list]:
        """Per output, per lane, the terms to sum (registered at stage 1). Subclasses.

        A subclass may also append narrow terms computed from the stage-1 registers to
        ``self._late[output]``; they are registered beside the partial sums and added by
        the accumulator.
        """
        raise NotImplementedError

    @staticmethod
    def _delayed(m: Module, values: list, stages: int) -> list:
        out = []
        for i, value in enumerate(values):
            for st in range(stages):
                reg = Signal(len(value.as_unsigned()), name=f"late{i}_l{st}")
                m.d.sync += reg.eq(value)
                value = reg
            out.append(value.as_unsigned())
        return out

    def elaborate(self, platform):
        m = Module()
        # stage 0: the systolic registers (x and flags forwarded right, w forwarded down)
        m.d.sync += [self.x_o.eq(self.x_i), self.f_o.eq(self.f_i), self.w_o.eq(self.w_i)]
        if self.log2:
            m.d.sync += self.xh_o.eq(self.xh_i)
        stages = tree_stages(self.vector)
        flags = self.f_o
        for j in range(1 + stages):  # product stage + reduction levels
            nxt = Signal(FLAGS, name=f"f{j + 1}")
            m.d.sync += nxt.eq(flags)
            flags = nxt
        self._late = [[] for _ in range(self.outputs)]  # terms the accumulator adds
        partials = [_reduce(m, terms, stages, f"sum{k}") for k, terms in enumerate(self._terms(m))]
        for j in range(self.outputs):
            partials[j] = partials[j] + self._delayed(m, self._late[j], stages)
        accs = [Signal(signed(self.acc_bits), name=f"acc{j}") for j in range(self.outputs)]
        m.d.sync += self.cap_stb.eq(0)
        with m.If(flags.active):
            for j in range(self.outputs):
                total = _sum(m, [Mux(flags.first, 0, accs[j])] + partials[j])
                m.d.sync += accs[j].eq(total)
                with m.If(flags.last):
                    m.d.sync += self.cap[j].eq(total)
            with m.If(flags.last):
                m.d.sync += [
                    self.cap_stb.eq(1),
                    self.cap_valid.eq(flags.row_valid),
                    self.cap_parity.eq(flags.parity),
                ]
        return m


class W8PairPE(_PEBase):
    """PE for two W8 output channels sharing one DSP48E2 per lane.

    Parameters
    ----------
    vector : int
        Lanes (products per channel per cycle).
    in_bits : int
        Activation width; activations arrive as ``in_bits + 1``-bit signed values (int8 or
        uint8 extended to 9 bits).
    acc_bits : int
        Accumulator width.
    log2 : bool
        Add the log2-code mode: ``xh_i`` / ``xh_o`` carry one bit per lane that shifts both
        products of the lane left by 8 (the activation port carries ``2**l``).

    Members
    -------
    x_i, f_i, w_i : In
        Activations, flags and weight lanes (:data:`W8_LANE`) from the left / top neighbour.
    xh_i, xh_o : In, Out (``log2`` only)
        The lanes' shift-by-8 bits, forwarded with the activations.
    x_o, f_o, w_o : Out
        The same, registered, to the right / bottom neighbour.
    cap : Out
        Captured results: ``cap[0]`` for the high weight's channel, ``cap[1]`` the low one.
    cap_valid, cap_parity, cap_stb : Out
        Row validity and step parity of the capture; ``cap_stb`` pulses after a capture.
    """

    def __init__(self, *, vector: int, in_bits: int = 8, acc_bits: int = 32, log2: bool = False):
        super().__init__(
            vector=vector,
            in_bits=in_bits,
            acc_bits=acc_bits,
            w_shape=W8_LANE,
            outputs=2,
            log2=log2,
        )

    def _terms(self, m: Module) -> list[list]:
        pw = 27 + self.in_bits + 1
        prods = []
        for v in range(self.vector):
            lane = self.w_o[v]
            lo = lane.lo
            # {hi', sext18(lo)}: one 27-bit operand, the other port gets the activation.
            packed = Cat(lo, lo[-1].replicate(10), lane.hi).as_signed()
            p = Signal(signed(pw), name=f"dsp{v}")
            m.d.sync += p.eq(packed * self.x_o[v])
            prods.append(p)
        # Low product: the low 16 bits, signed. High product: bits 33:18 plus the borrow
        # bit 17 of each lane; the borrows are counted beside the partial sums and the
        # count is added by the accumulator (no incrementer per lane). 16 bits hold both
        # exactly: x in -128..255 and w in -128..127 give x*w in -32640..32385, and the
        # high field is x*w_hi or one less (the borrow), so bits 17:16 and 35:34 are only
        # copies of the sign, which the adder trees need not carry (8 % of a pair PE's LUT
        # at vector 16, docs/gvsa.md).
        lo_lanes = [[p[0:W8_PRODUCT_BITS].as_signed()] for p in prods]
        hi_lanes = [[p[18 : 18 + W8_PRODUCT_BITS].as_signed()] for p in prods]
        if not self.log2:
            self._late[0].append(_popcount(m, [p[17] for p in prods]))
            return [hi_lanes, lo_lanes]
        # log2 mode: a lane whose h bit is set shifts both products (and its borrow) by 8.
        h = Signal(self.vector, name="xh_p")
        m.d.sync += h.eq(self.xh_o)
        lo_lanes = [[Mux(h[v], t << 8, t) for t in terms] for v, terms in enumerate(lo_lanes)]
        hi_lanes = [[Mux(h[v], t << 8, t) for t in terms] for v, terms in enumerate(hi_lanes)]
        borrow = [p[17] for p in prods]
        self._late[0].append(_popcount(m, [b & ~h[v] for v, b in enumerate(borrow)]))
        self._late[0].append(
            Cat(Const(0, 8), _popcount(m, [b & h[v] for v, b in enumerate(borrow)]))
        )
        return [hi_lanes, lo_lanes]


def _int4_digits(x, code):
    """x * w for a 4-bit two's complement w as two radix-4 Booth digits.

    w = 4*d1 + d0 with d0 = -2 w1 + w0 and d1 = -2 w3 + w2 + w1, each in -2..2: every digit
    selects a multiple {0, x, 2x} and a sign. Returns [(multiple, negative)] for d0, d1.
    The sign is XORed into the multiple (it merges into the adder LUTs) and the +1 of each
    inversion is summed once per PE, so no lane needs a negator.
    """
    w0, w1, w2, w3 = code[0], code[1], code[2], code[3]
    digits = (
        (w0, w1 & ~w0, w1),  # d0: one, two, negative
        (w2 ^ w1, (w3 & ~w2 & ~w1) | (~w3 & w2 & w1), w3 & ~(w2 & w1)),  # d1
    )
    return [(Mux(one, x, Mux(two, x << 1, 0)), neg) for one, two, neg in digits]


def _pot4_parts(x, code):
    """x * (+-2**shift) for a pot4 code (bit 3 sign, bits 2:0 shift, 7 = zero), as
    (magnitude, negative); the sign is folded like :func:`_int4_digits`'."""
    shift = code[0:3]
    return Mux(shift == 7, 0, x << shift), code[3]


class W4PE(_PEBase):
    """PE for one W4 output channel: ``vector`` shift-add products in LUT fabric.

    Parameters
    ----------
    vector, in_bits, acc_bits :
        As :class:`W8PairPE`.
    kind : str
        ``"int4"`` (two's complement nibble, -8..7) or ``"pot4"`` (bit 3 sign, bits 2:0
        shift 0..6, code 7 = 0; see :func:`vitaccel.engine_host.pot4_code`).

    Members
    -------
    As :class:`W8PairPE`, with 4-bit weight codes and one ``cap``.
    """

    @classmethod
    def check(cls, *, kind, **arguments):
        if kind not in ("int4", "pot4"):
            raise ValueError(f"W4 kind must be 'int4' or 'pot4', not {kind!r}")
        super().check(**arguments)

    def __init__(self, *, vector: int, kind: str, in_bits: int = 8, acc_bits: int = 32):
        self.kind = kind
        super().__init__(
            vector=vector, in_bits=in_bits, acc_bits=acc_bits, w_shape=unsigned(4), outputs=1
        )

    def _terms(self, m: Module) -> list[list]:
        xb = self.in_bits + 1
        prods, corr = [], []
        for v in range(self.vector):
            x, code = self.x_o[v], self.w_o[v]
            corr.append([])
            if self.kind == "int4":
                # |x * w| <= 255 * 8 and the inverted form is at most 5 below x * w:
                # -2045..1785 fits xb + 3 bits (12 at int8)
                width = xb + 3
                term = 0
                for j, (mag, neg) in enumerate(_int4_digits(x, code)):
                    sel = Signal(signed(xb + 1), name=f"booth{v}_{j}")
                    m.d.comb += sel.eq(mag)
                    term = term + ((sel ^ neg.replicate(xb + 1).as_signed()) << (2 * j))
                    corr[v].append(Cat(Const(0, 2 * j), neg) if j else neg)
            else:
                # x << 6 inverted: -16321..16320 fits xb + 6 bits (15 at int8)
                width = xb + 6
                mag, neg = _pot4_parts(x, code)
                sel = Signal(signed(width), name=f"pot{v}")
                m.d.comb += sel.eq(mag)
                term = sel ^ neg.replicate(width).as_signed()
                corr[v].append(neg)
            p = Signal(signed(width), name=f"prod{v}")
            m.d.sync += p.eq(term)
            prods.append([p])
        # The +1 of every inverted (negative) partial product, counted once per PE and added
        # by the accumulator: per 4 lanes at stage 1 (beside the products), the counts summed
        # after it (one count of all the lanes at once was a 7.25-level path at vector 16).
        counts = []
        for i in range(0, self.vector, 4):
            lanes = sum(corr[i : i + 4], [])
            cnt = Signal(range(5 * 4 + 1), name=f"neg_fix{i // 4}")
            m.d.sync += cnt.eq(_sum(m, [c.as_unsigned() for c in lanes]))
            counts.append(cnt)
        self._late[0].append(_sum(m, counts))
        return [prods]


# Result of one column as it leaves the array (one value per cycle).
def column_out_layout(acc_bits: int) -> data.StructLayout:
    return data.StructLayout({"value": signed(acc_bits), "valid": 1, "parity": 1})


class GVSArray(CheckedComponent):
    """``groups`` x ``rows`` x ``cols`` vector PEs (W8 pairs then W4 columns per group).

    Inputs arrive pre-skewed: the activation/flag vector of row r at cycle issue + r, the
    weights of unit u at cycle issue + u (units: W8 pairs first, then W4 columns). Outputs
    leave per logical column: after the bottom PE of a unit captures, its column results
    (rows 0..R-1) appear on ``col_o`` on R consecutive cycles, row 0 first.

    Parameters
    ----------
    groups, rows, cols, vector : int
        Array shape; ``vector`` lanes per PE.
    w4_share : float
        Share of the columns of every group that are W4 (see :func:`column_split`).
    w4_kind : str
        ``"int4"`` or ``"pot4"``.
    in_bits, acc_bits : int
        Activation and accumulator widths.
    log2 : bool
        Build the W8 pairs with the log2-code mode (see :class:`W8PairPE`).

    Members
    -------
    x : In, ArrayLayout over groups*rows (index g*rows + r) of ``vector`` activations
    xh : In (``log2`` only), per group row ``vector`` shift-by-8 bits travelling with ``x``
    f : In, FLAGS per group row
    w8 : In, ArrayLayout over groups*cols_w8 (index g*cols_w8 + c) of ``vector`` int8 weights
    w4 : In, ArrayLayout over groups*cols_w4 of ``vector`` 4-bit codes
    col_o : Out, per logical column (index g*cols + c): {value, valid, parity}
    """

    @classmethod
    def check(cls, *, groups, rows, cols, vector, w4_share, w4_kind, log2, **_):
        _check_int("groups", groups, 1, 64)
        _check_int("rows", rows, 1, 256)
        _check_int("cols", cols, 1, 256)
        _check_int("vector", vector, 1, 256)
        if w4_kind not in ("int4", "pot4"):
            raise ValueError(f"w4_kind must be 'int4' or 'pot4', not {w4_kind!r}")
        if log2 and not column_split(cols, w4_share)[0]:
            raise ValueError("log2=True needs W8 columns (the log2 mode runs on the W8 pairs)")

    def __init__(
        self,
        *,
        groups: int,
        rows: int,
        cols: int,
        vector: int,
        w4_share: float = 0.0,
        w4_kind: str = "int4",
        in_bits: int = 8,
        acc_bits: int = 32,
        log2: bool = False,
    ):
        self.groups, self.rows, self.cols, self.vector = groups, rows, cols, vector
        self.cols_w8, self.cols_w4 = column_split(cols, w4_share)
        self.units = column_units(self.cols_w8, self.cols_w4)
        self.w4_share, self.w4_kind = w4_share, w4_kind
        self.in_bits, self.acc_bits = in_bits, acc_bits
        self.log2 = log2
        x_vec = data.ArrayLayout(signed(in_bits + 1), vector)
        sig = {
            "x": In(data.ArrayLayout(x_vec, groups * rows)),
            "f": In(data.ArrayLayout(FLAGS, groups * rows)),
            "col_o": Out(data.ArrayLayout(column_out_layout(acc_bits), groups * cols)),
        }
        if log2:
            sig["xh"] = In(data.ArrayLayout(unsigned(vector), groups * rows))
        if self.cols_w8:
            sig["w8"] = In(
                data.ArrayLayout(data.ArrayLayout(signed(8), vector), groups * self.cols_w8)
            )
        if self.cols_w4:
            sig["w4"] = In(
                data.ArrayLayout(data.ArrayLayout(unsigned(4), vector), groups * self.cols_w4)
            )
        super().__init__(sig)

    @property
    def w8_macs_per_cycle(self) -> int:
        return self.groups * self.rows * self.cols_w8 * self.vector

    def unit_of_column(self, c: int) -> int:
        """Systolic unit (skew position) of logical column c within a group."""
        return c // 2 if c < self.cols_w8 else self.cols_w8 // 2 + (c - self.cols_w8)

    def elaborate(self, platform):
        m = Module()
        R, V = self.rows, self.vector
        for g in range(self.groups):
            pes = []
            for r in range(R):
                row = []
                for u in range(self.units):
                    if u < self.cols_w8 // 2:
                        pe = W8PairPE(
                            vector=V, in_bits=self.in_bits, acc_bits=self.acc_bits, log2=self.log2
                        )
                    else:
                        pe = W4PE(
                            vector=V,
                            kind=self.w4_kind,
                            in_bits=self.in_bits,
                            acc_bits=self.acc_bits,
                        )
                    m.submodules[f"pe_g{g}_r{r}_u{u}"] = pe
                    row.append(pe)
                pes.append(row)
            # activations and flags: left edge, then right along the row
            for r in range(R):
                for u in range(self.units):
                    pe = pes[r][u]
                    if u == 0:
                        m.d.comb += [pe.x_i.eq(self.x[g * R + r]), pe.f_i.eq(self.f[g * R + r])]
                    else:
                        m.d.comb += [pe.x_i.eq(pes[r][u - 1].x_o), pe.f_i.eq(pes[r][u - 1].f_o)]
                    if self.log2 and u < self.cols_w8 // 2:
                        src = self.xh[g * R + r] if u == 0 else pes[r][u - 1].xh_o
                        m.d.comb += pe.xh_i.eq(src)
            # weights: top edge (W8 pairs get the borrow-corrected high weight), then down
            for u in range(self.units):
                top = pes[0][u]
                if u < self.cols_w8 // 2:
                    w_hi = self.w8[g * self.cols_w8 + 2 * u]
                    w_lo = self.w8[g * self.cols_w8 + 2 * u + 1]
                    for v in range(V):
                        lo = w_lo[v]
                        m.d.comb += [
                            top.w_i[v].lo.eq(lo),
                            top.w_i[v].hi.eq(w_hi[v] - lo[-1]),
                        ]
                else:
                    m.d.comb += top.w_i.eq(self.w4[g * self.cols_w4 + u - self.cols_w8 // 2])
                for r in range(1, R):
                    m.d.comb += pes[r][u].w_i.eq(pes[r - 1][u].w_o)
            # output chains: parallel load when the bottom PE captured, then shift up
            for u in range(self.units):
                cols = (
                    [2 * u, 2 * u + 1]
                    if u < self.cols_w8 // 2
                    else [self.cols_w8 + u - self.cols_w8 // 2]
                )
                load = pes[R - 1][u].cap_stb
                valid = [Signal(name=f"chain_valid_g{g}_u{u}_r{r}") for r in range(R)]
                parity = Signal(name=f"chain_parity_g{g}_u{u}")
                with m.If(load):
                    m.d.sync += parity.eq(pes[R - 1][u].cap_parity)
                for r in range(R):
                    nxt_valid = valid[r + 1] if r + 1 < R else Const(0)
                    m.d.sync += valid[r].eq(Mux(load, pes[r][u].cap_valid, nxt_valid))
                for j, c in enumerate(cols):
                    chain = [
                        Signal(signed(self.acc_bits), name=f"chain_g{g}_c{c}_r{r}")
                        for r in range(R)
                    ]
                    for r in range(R):
                        nxt = chain[r + 1] if r + 1 < R else Const(0, signed(self.acc_bits))
                        m.d.sync += chain[r].eq(Mux(load, pes[r][u].cap[j], nxt))
                    out = self.col_o[g * self.cols + c]
                    m.d.comb += [
                        out.value.eq(chain[0]),
                        out.valid.eq(valid[0]),
                        out.parity.eq(parity),
                    ]
        return m
