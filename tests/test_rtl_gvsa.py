"""GVSA PEs and array in Amaranth's simulator, against vitaccel.quant.ref.matmul_int."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from vitaccel.engine_host import pot4_code
from vitaccel.quant.ref import log2_code_weights, matmul_int
from vitaccel.rtl.gvsa import W4PE, GVSArray, W8PairPE, column_split
from vitaccel.sim.streams import pack_lanes, unpack_lanes

FLAG_ACTIVE, FLAG_FIRST, FLAG_LAST, FLAG_PARITY, FLAG_ROW_VALID = 1, 2, 4, 8, 16


def _w4_codes(q, kind):
    q = np.asarray(q)
    return pot4_code(q) if kind == "pot4" else q & 0xF


def run_array(arr: GVSArray, tiles):
    """Drive ``arr`` with back-to-back tiles; return per-column lists of results.

    ``tiles``: list of (x, w) or (x, w, log2) per group: x (G, R, K) activations (log2: 4-bit
    codes q, sent as 2**((15-q) mod 8) plus the lane's shift-by-8 bit), w (G, C, K) integer
    weights (column c's kind is the array's: W8 for c < cols_w8, else W4 of arr.w4_kind).
    Tiles are issued as densely as the array allows: a tile starts right after the previous
    one, but its ``last`` k-step comes at least ``rows`` cycles after the previous ``last``
    (the output chains need R cycles). Row r sees an issue r cycles later, unit u u later.
    """
    G, R, C, V = arr.groups, arr.rows, arr.cols, arr.vector
    xb = arr.in_bits + 1
    schedule = {}  # cycle -> (x word, f word, w8 word, w4 word) contributions
    prev_last = -(10**9)
    for i, (x, w, *mode) in enumerate(tiles):
        log2 = bool(mode and mode[0])
        K = x.shape[-1]
        ks = -(-K // V)
        start = 0 if i == 0 else max(prev_last + 1, prev_last + R - ks + 1)
        prev_last = start + ks - 1
        xpad = np.zeros((G, R, ks * V), dtype=np.int64)
        xpad[..., :K] = x
        wpad = np.zeros((G, C, ks * V), dtype=np.int64)
        wpad[..., :K] = w
        for j in range(ks):
            t0 = start + j
            for g in range(G):
                for r in range(R):
                    idx = g * R + r
                    flags = FLAG_ACTIVE | FLAG_ROW_VALID | (FLAG_PARITY if i % 2 else 0)
                    flags |= FLAG_FIRST if j == 0 else 0
                    flags |= FLAG_LAST if j == ks - 1 else 0
                    lanes = xpad[g, r, j * V : (j + 1) * V]
                    s = schedule.setdefault(t0 + r, {})
                    if log2:
                        amount = 15 - lanes
                        s.setdefault("xh", {})[idx] = pack_lanes(amount >> 3, 1)
                        lanes = 1 << (amount & 7)
                    s.setdefault("x", {})[idx] = pack_lanes(lanes, xb)
                    s.setdefault("f", {})[idx] = flags
                for c in range(C):
                    u = arr.unit_of_column(c)
                    lanes = wpad[g, c, j * V : (j + 1) * V]
                    s = schedule.setdefault(t0 + u, {})
                    if c < arr.cols_w8:
                        s.setdefault("w8", {})[g * arr.cols_w8 + c] = pack_lanes(lanes, 8)
                    else:
                        codes = _w4_codes(lanes, arr.w4_kind)
                        s.setdefault("w4", {})[g * arr.cols_w4 + c - arr.cols_w8] = pack_lanes(
                            codes, 4
                        )
    end = max(schedule) + 4 * (R + arr.units) + 16
    col_bits = arr.acc_bits + 2
    outputs = [[] for _ in range(G * C)]

    async def bench(ctx):
        for t in range(end):
            s = schedule.get(t, {})
            for name, lane_bits in (
                ("x", xb * V),
                ("xh", V),
                ("f", 5),
                ("w8", 8 * V),
                ("w4", 4 * V),
            ):
                if not hasattr(arr, name) or (name == "w8" and not arr.cols_w8):
                    continue
                if name == "w4" and not arr.cols_w4:
                    continue
                entries = s.get(name, {})
                word = 0
                for idx, val in entries.items():
                    word |= val << (idx * lane_bits)
                ctx.set(getattr(arr, name).as_value(), word)
            await ctx.tick()
            word = ctx.get(arr.col_o.as_value())
            for col in range(G * C):
                bits = (word >> (col * col_bits)) & ((1 << col_bits) - 1)
                value = unpack_lanes(bits, 1, arr.acc_bits, True)[0]
                valid = (bits >> arr.acc_bits) & 1
                if valid:
                    outputs[col].append(value)

    sim = Simulator(arr)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return outputs


def check_array(arr, tiles):
    outputs = run_array(arr, tiles)
    G, R, C = arr.groups, arr.rows, arr.cols
    for g in range(G):
        for c in range(C):
            got = outputs[g * C + c]
            want = [
                int(v)
                for x, w, *mode in tiles
                for v in matmul_int(log2_code_weights(x[g]) if mode and mode[0] else x[g], w[g])[
                    :, c
                ]
            ]
            assert len(got) == len(want), (g, c, len(got), len(want))
            for idx, (a, b) in enumerate(zip(want, got, strict=True)):
                if a != b:
                    tile, r = divmod(idx, R)
                    pytest.fail(f"group {g} column {c} tile {tile} row {r}: expected {a}, got {b}")


def _weights(rng, arr, K, kind_w4=None):
    """Weights per group for the array's columns: W8 columns int8, W4 columns of its kind."""
    G, C = arr.groups, arr.cols
    w = rng.integers(-128, 128, size=(G, C, K))
    for c in range(arr.cols_w8, C):
        if arr.w4_kind == "int4":
            w[:, c] = rng.integers(-8, 8, size=(G, K))
        else:
            mag = 1 << rng.integers(0, 7, size=(G, K))
            w[:, c] = np.where(rng.random((G, K)) < 0.2, 0, mag * rng.choice([-1, 1], (G, K)))
    return w


@pytest.mark.parametrize(
    "shape",
    [
        dict(groups=1, rows=2, cols=2, vector=4, w4_share=0.0),
        dict(groups=1, rows=3, cols=4, vector=3, w4_share=0.5, w4_kind="int4"),
        dict(groups=2, rows=2, cols=3, vector=2, w4_share=1 / 3, w4_kind="pot4"),
        dict(groups=1, rows=2, cols=2, vector=4, w4_share=1.0, w4_kind="pot4"),
    ],
)
def test_array_random_tiles(shape):
    rng = np.random.default_rng(sum(map(ord, str(shape))))
    arr = GVSArray(**shape)
    R = arr.rows
    tiles = []
    for K in (5, 1, 9, 8):  # includes K < V, K not a multiple of V, back-to-back tiles
        x = rng.integers(-128, 256, size=(arr.groups, R, K))  # int8 and uint8 activations
        tiles.append((x, _weights(rng, arr, K)))
    check_array(arr, tiles)


def test_w8_pair_extremes():
    """All corners of the packed product: the borrow of the low product must be corrected."""
    arr = GVSArray(groups=1, rows=1, cols=2, vector=4)
    vals_x = [-128, -1, 0, 1, 127, 255]
    vals_w = [-128, -127, -1, 0, 1, 127]
    tiles = []
    for xa in vals_x:
        for w1 in vals_w:
            x = np.full((1, 1, 4), xa)
            w = np.stack([np.full(4, w1), np.array(vals_w[:4])])[None]
            tiles.append((x, w))
    check_array(arr, tiles)


@pytest.mark.parametrize("kind", ["int4", "pot4"])
def test_w4_extremes_at_vector_16(kind):
    """Every W4 code against the activation corners at vector 16, the DeiT arrays' width: the
    lane products sit at their narrowed widths' bounds (int4 255 * -8, pot4 255 << 6,
    inverted) and the +1 corrections are counted in four groups of lanes; then random K that
    is not a multiple of the vector."""
    arr = GVSArray(groups=1, rows=2, cols=2, vector=16, w4_share=1.0, w4_kind=kind)
    if kind == "int4":
        codes = np.arange(-8, 8)
    else:
        codes = np.array([0] + [s * (1 << e) for e in range(7) for s in (1, -1)] + [-64])
    w = np.stack([codes, codes[::-1]])[None]
    tiles = []
    for xa, xb in ((-128, 255), (255, -128), (-1, 127), (0, 1), (255, 255), (-128, -128)):
        x = np.array([np.full(16, xa), np.full(16, xb)])[None]
        tiles.append((x, w))
    rng = np.random.default_rng(16)
    x = rng.integers(-128, 256, size=(1, 2, 37))
    tiles.append((x, _weights(rng, arr, 37)))
    check_array(arr, tiles)


def test_log2_mode_shift_add_on_the_w8_pairs():
    """Log2-code activations (p ~ 2**-q): every product is w << (15 - q), across all 16 codes
    and the weight extremes, back to back with ordinary int8/uint8 tiles on the same array."""
    rng = np.random.default_rng(21)
    arr = GVSArray(groups=2, rows=2, cols=4, vector=4, log2=True)
    tiles = []
    for K in (16, 3, 9, 8):
        codes = rng.integers(0, 16, size=(arr.groups, arr.rows, K))
        if K == 16:
            codes[..., :] = np.arange(16)  # every code in every lane position
        w = rng.integers(-128, 128, size=(arr.groups, arr.cols, K))
        w[:, 0] = -128
        w[:, 1] = 127
        tiles.append((codes, w, True))
        x = rng.integers(-128, 256, size=(arr.groups, arr.rows, K))
        tiles.append((x, rng.integers(-128, 128, size=(arr.groups, arr.cols, K))))
    check_array(arr, tiles)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_log2_mode_needs_w8_columns():
    with pytest.raises(ValueError, match="W8 columns"):
        GVSArray(groups=1, rows=2, cols=2, vector=4, w4_share=1.0, log2=True)


def test_column_split_rules():
    assert column_split(4, 0.5) == (2, 2)
    assert column_split(4, 1.0) == (0, 4)
    assert column_split(8, 0.25) == (6, 2)
    with pytest.raises(ValueError, match="even"):
        column_split(4, 0.25)
    with pytest.raises(ValueError, match="w4_share"):
        column_split(4, 1.5)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_pe_parameters_are_validated():
    with pytest.raises(ValueError, match="vector"):
        W8PairPE(vector=0)
    with pytest.raises(ValueError, match="kind"):
        W4PE(vector=4, kind="int3")
    with pytest.raises(ValueError, match="w4_kind"):
        GVSArray(groups=1, rows=2, cols=2, vector=2, w4_kind="fp4")
    # the accumulator limits are the design file's (design.ACC_BITS), one definition
    with pytest.raises(ValueError, match=r"acc_bits must be an integer in 16\.\.48, not 64"):
        W8PairPE(vector=4, acc_bits=64)


def test_yosys_dsp48e2_count_is_half_the_w8_macs():
    """The packing claim, by synthesis: two int8 MACs per DSP48E2, W4 lanes use none."""
    from vitaccel.flow.yosys import synth_xcup
    from vitaccel.rtl.verilog import to_verilog

    arr = GVSArray(groups=1, rows=2, cols=4, vector=4, w4_share=0.5)  # W8 pair + 2 W4
    res = synth_xcup(to_verilog(arr, "gvsa_array"), "gvsa_array")
    assert res.dsp48e2 * 2 == arr.w8_macs_per_cycle
    assert res.lut_depth is not None and res.lut_depth > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["int4", "pot4"])
def test_w4_pe_at_vector_16_fits_300_mhz(kind):
    """A 16-lane W4 PE alone (the DeiT arrays' PE) within 300 MHz's levels by the clock rule:
    its +1 corrections are counted per 4 lanes (one count of all 32 bits was 7.25 levels,
    w_o -> neg_fix; ~10 s of Yosys per PE)."""
    from vitaccel.dse.clock import MAX_LEVELS
    from vitaccel.flow.yosys import synth_xcup
    from vitaccel.rtl.verilog import to_verilog

    res = synth_xcup(to_verilog(W4PE(vector=16, kind=kind), "w4pe"), "w4pe")
    assert 0 < res.lut_depth <= MAX_LEVELS[300.0], res
