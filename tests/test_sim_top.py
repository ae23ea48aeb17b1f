"""The whole accelerator in Verilator (cocotb): hand-written programs, one per operation.

Each test builds a DDR memory image (program at offset 0, data after it), runs it on the RTL
through the generic testbench (vitaccel/sim/tb_top.py: AxiRam as DDR with random pauses,
AxiLiteMaster as the host) and compares the bytes the program stores with what the ISA
interpreter (vitaccel.compile.interp, every unit through vitaccel.quant.ref) gives for the
same image (packed weights by the project's codec, vitaccel.flow.codec). All tests share one
Verilator build of one small design.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SMALL_TOP

from vitaccel import isa
from vitaccel.compile.compiler import spm_rows
from vitaccel.compile.interp import run as interp_run
from vitaccel.flow.codec import codec_for
from vitaccel.isa import STATUS_DONE, STATUS_ERROR
from vitaccel.quant.ref import gelu_lut
from vitaccel.quant.scales import dyadic
from vitaccel.rtl.top import TopParams
from vitaccel.sim.tb_top import default_regs, run_top

DESIGN = SMALL_TOP  # shared with test_sim_accelerator's compact layout (one build)
PARAMS = TopParams(DESIGN)
SPM_WORDS = PARAMS.spm_words
BASE = 0x0004_0000  # DDR byte address of the image (PROG_ADDR = DATA_BASE)
G, C, V = DESIGN.array.groups, DESIGN.array.cols, DESIGN.array.vector


class Image:
    """A DDR image under construction: program at 0, 16-byte aligned data blobs after it."""

    def __init__(self, data_at: int = 0x1000):
        self.buf = bytearray(data_at)
        self.outputs: list[tuple[int, int]] = []

    def add(self, raw: bytes) -> int:
        off = len(self.buf)
        self.buf += raw + bytes(-len(raw) % 16)
        return off

    def reserve(self, nbytes: int) -> int:
        off = self.add(bytes(nbytes))
        self.outputs.append((off, nbytes))
        return off

    def program(self, instrs: list) -> bytes:
        code = isa.encode_program(instrs)
        assert len(code) <= 0x1000
        self.buf[: len(code)] = code
        return bytes(self.buf)


def _run(img: Image, instrs: list, *, pause: float = 0.2, seed: int = 1, codec=None):
    image = img.program(instrs)
    res = run_top(
        DESIGN,
        image,
        base=BASE,
        regs=default_regs(BASE, BASE),
        outputs=[(BASE + off, size) for off, size in img.outputs],
        pause=pause,
        seed=seed,
    )
    assert not res.get("errors"), res.get("errors")
    assert not res["timeout"], res
    want = interp_run(bytearray(image), codec, spm_words=SPM_WORDS, softmax_lanes=4)
    expected = [bytes(want.ddr[off : off + size]) for off, size in img.outputs]
    return res, expected


def _check(res, expected, instrs):
    assert res["status"] == STATUS_DONE, res
    assert res["pc"] == len(instrs) - 1
    for k, (got, want) in enumerate(zip(res["outputs"], expected, strict=True)):
        assert got == want, f"output {k}: first difference at byte " + str(
            next(i for i in range(len(got)) if got[i] != want[i])
        )


def _tensor(img: Image, values, stride=None):
    values = np.asarray(values)
    stride = stride or -(-values.shape[1] // 16)
    return img.add(spm_rows(values, stride)), stride


# ---- LOAD / STORE ------------------------------------------------------------------------------


@pytest.mark.parametrize("pause", [0.0, 0.3])
def test_load_store_roundtrip(pause):
    rng = np.random.default_rng(0)
    img = Image()
    data = rng.integers(0, 256, 300 * 16, dtype=np.uint8).tobytes()
    src = img.add(data)
    dst = img.reserve(len(data))
    dst2 = img.reserve(16 * 7)
    prog = [
        isa.load(spm=3, words=300, ddr=src),
        isa.store(spm=3, words=300, ddr=dst),
        isa.load(spm=0, words=0, ddr=src),  # no-ops
        isa.store(spm=100, words=7, ddr=dst2),  # a slice of it
        isa.store(spm=0, words=0, ddr=dst2),
        isa.end(),
    ]
    res, expected = _run(img, prog, pause=pause)
    _check(res, expected, prog)
    assert res["outputs"][0] == data
    if pause == 0.0:
        print(f"LOAD+STORE of 300 words: {res['cycles']} cycles")
        assert res["cycles"] < 2 * 300 + 300  # ~1 word/cycle each way plus fetches


# ---- nonlinear units and residual add ------------------------------------------------------


def test_gelu():
    rng = np.random.default_rng(1)
    img = Image()
    x = rng.integers(-128, 128, size=(9, 37))
    src, stride = _tensor(img, x)
    table = gelu_lut(0.05, 0.04).astype(np.int8).tobytes()
    tab = img.add(table)
    out = img.reserve(9 * stride * 16)
    prog = [
        isa.load(spm=0, words=9 * stride, ddr=src),
        isa.load(spm=200, words=16, ddr=tab),
        isa.gelu(src=0, src_stride=stride, rows=9, cols=37, dst=300, dst_stride=stride, table=200),
        isa.store(spm=300, words=9 * stride, ddr=out),
        isa.end(),
    ]
    res, expected = _run(img, prog)
    _check(res, expected, prog)


def test_softmax():
    rng = np.random.default_rng(2)
    img = Image()
    x = rng.integers(-128, 128, size=(6, 45))
    src, stride = _tensor(img, x, stride=4)
    out = img.reserve(6 * 4 * 16)
    prog = [
        isa.load(spm=10, words=24, ddr=src),
        isa.softmax(src=10, src_stride=4, rows=6, cols=45, dst=50, dst_stride=4, in_shift=4),
        isa.store(spm=50, words=24, ddr=out),
        isa.end(),
    ]
    res, expected = _run(img, prog)
    _check(res, expected, prog)


def test_layernorm():
    rng = np.random.default_rng(3)
    img = Image()
    rows, ch = 5, 40
    x = rng.integers(-128, 128, size=(rows, ch))
    src, stride = _tensor(img, x)
    block = np.zeros((ch, 8), dtype=np.uint8)
    block[:, 0] = rng.integers(0, 4, ch)
    block[:, 2:4] = rng.integers(-3000, 3000, ch).astype("<i2").view(np.uint8).reshape(ch, 2)
    block[:, 4:8] = rng.integers(-20000, 20000, ch).astype("<i4").view(np.uint8).reshape(ch, 4)
    par = img.add(block.tobytes())
    mult, shift = (int(v) for v in dyadic(1.0 / ch))
    out = img.reserve(rows * stride * 16)
    prog = [
        isa.load(spm=0, words=rows * stride, ddr=src),
        isa.load(spm=400, words=ch * 8 // 16, ddr=par),
        isa.layernorm(
            src=0,
            src_stride=stride,
            rows=rows,
            cols=ch,
            dst=100,
            dst_stride=stride,
            params=400,
            recip_mult=mult,
            recip_shift=shift,
            out_shift=10,
            eps_q=1,
        ),  # fmt: skip
        isa.store(spm=100, words=rows * stride, ddr=out),
        isa.end(),
    ]
    res, expected = _run(img, prog)
    _check(res, expected, prog)


def test_resadd_in_place():
    rng = np.random.default_rng(4)
    img = Image()
    rows, ch = 7, 50
    a = rng.integers(-128, 128, size=(rows, ch))
    b = rng.integers(-128, 128, size=(rows, ch))
    sa, stride = _tensor(img, a)
    sb, _ = _tensor(img, b, stride=stride + 1)
    mults = np.stack([rng.integers(0, 1 << 16, ch), rng.integers(0, 1 << 16, ch)], axis=1)
    par = img.add(mults.astype("<u2").tobytes())
    out = img.reserve(rows * stride * 16)
    prog = [
        isa.load(spm=0, words=rows * stride, ddr=sa),
        isa.load(spm=100, words=rows * (stride + 1), ddr=sb),
        isa.load(spm=300, words=-(-ch * 4 // 16), ddr=par),
        isa.resadd(
            a=0,
            a_stride=stride,
            rows=rows,
            cols=ch,
            dst=0,
            dst_stride=stride,
            b=100,
            b_stride=stride + 1,
            params=300,
            shift=17,
        ),  # fmt: skip
        isa.store(spm=0, words=rows * stride, ddr=out),
        isa.end(),
    ]
    res, expected = _run(img, prog)
    _check(res, expected, prog)


# ---- MATMUL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens, k, n", [(5, 20, 19), (9, 64, 8), (3, 7, 33)])
def test_matmul_shared_weights_from_ddr(tokens, k, n):
    rng = np.random.default_rng(tokens * k + n)
    img = Image()
    x = rng.integers(-128, 128, size=(tokens, k))
    q = rng.integers(-128, 128, size=(n, k))
    bias = rng.integers(-5000, 5000, n)
    mult = rng.integers(1, 1 << 15, n)
    shift = rng.integers(12, 20, n)
    codec = codec_for(DESIGN)
    wraw = codec.pack(q, np.zeros(n, dtype=np.int64), bias, mult, shift)
    src, sx = _tensor(img, x)
    woff = img.add(wraw)
    sy = -(-n // 16)
    out = img.reserve(tokens * sy * 16)
    prog = [
        isa.load(spm=0, words=tokens * sx, ddr=src),
        isa.matmul(x=0, x_stride=sx, tokens=tokens, k=k, n=n, y=200, y_stride=sy, w_ddr=woff),
        isa.store(spm=200, words=tokens * sy, ddr=out),
        isa.end(),
    ]
    res, expected = _run(img, prog, codec=codec)
    _check(res, expected, prog)


def _layer(rng, n, k):
    q = rng.integers(-128, 128, size=(n, k))
    return q, rng.integers(-5000, 5000, n), rng.integers(1, 1 << 15, n), rng.integers(12, 20, n)


def test_matmul_fused_gelu_then_x_keep():
    """FC1 with its GELU fused (every output byte through the table), then a MATMUL that
    reuses the X the first one loaded (X_KEEP, as QKV's V part does)."""
    rng = np.random.default_rng(21)
    img = Image()
    tokens, k, n1, n2 = 7, 40, 24, 9
    codec = codec_for(DESIGN)
    x = rng.integers(-128, 128, size=(tokens, k))
    src, sx = _tensor(img, x)
    w1 = img.add(codec.pack(*_with_kind(_layer(rng, n1, k))))
    w2 = img.add(codec.pack(*_with_kind(_layer(rng, n2, k))))
    tab = img.add(gelu_lut(0.05, 0.04).astype(np.int8).tobytes())
    sy1, sy2 = -(-n1 // 16), -(-n2 // 16)
    out1 = img.reserve(tokens * sy1 * 16)
    out2 = img.reserve(tokens * sy2 * 16)
    mm = dict(x=0, x_stride=sx, tokens=tokens, k=k)
    prog = [
        isa.load(spm=0, words=tokens * sx, ddr=src),
        isa.load(spm=400, words=16, ddr=tab),
        isa.matmul(**mm, n=n1, y=200, y_stride=sy1, w_ddr=w1, gelu_table=400),
        isa.load(spm=0, words=tokens * sx, ddr=tab),  # X in the SPM changes: X_KEEP ignores it
        isa.matmul(**mm, n=n2, y=300, y_stride=sy2, w_ddr=w2, x_keep=True),
        isa.store(spm=200, words=tokens * sy1, ddr=out1),
        isa.store(spm=300, words=tokens * sy2, ddr=out2),
        isa.end(),
    ]
    res, expected = _run(img, prog, codec=codec)
    _check(res, expected, prog)


def _with_kind(layer):
    q, bias, mult, shift = layer
    return q, np.zeros(len(q), dtype=np.int64), bias, mult, shift


@pytest.mark.parametrize("in_place, pause", [(False, 0.2), (True, 0.0)])
def test_matmul_fused_residual_add(in_place, pause):
    """The projection / FC2 with the residual add fused: Y = residual_add(A, Y) per channel,
    40 channels (an output step of 16 and a partial one), A beside Y or Y = A."""
    rng = np.random.default_rng(22 + in_place)
    img = Image()
    tokens, k, n = 6, 24, 40
    codec = codec_for(DESIGN)
    x = rng.integers(-128, 128, size=(tokens, k))
    a = rng.integers(-128, 128, size=(tokens, n))
    src, sx = _tensor(img, x)
    sa_off, sa = _tensor(img, a)
    w = img.add(codec.pack(*_with_kind(_layer(rng, n, k))))
    mults = np.stack([rng.integers(0, 1 << 16, n), rng.integers(0, 1 << 16, n)], axis=1)
    par = img.add(mults.astype("<u2").tobytes())
    y = 100 if in_place else 200
    out = img.reserve(tokens * sa * 16)
    prog = [
        isa.load(spm=0, words=tokens * sx, ddr=src),
        isa.load(spm=100, words=tokens * sa, ddr=sa_off),
        isa.load(spm=300, words=-(-n * 4 // 16), ddr=par),
        isa.matmul(
            x=0,
            x_stride=sx,
            tokens=tokens,
            k=k,
            n=n,
            y=y,
            y_stride=sa,
            w_ddr=w,
            residual=100,
            residual_params=300,
            residual_shift=17,
        ),  # fmt: skip
        isa.store(spm=y, words=tokens * sa, ddr=out),
        isa.end(),
    ]
    res, expected = _run(img, prog, codec=codec, pause=pause)
    _check(res, expected, prog)


@pytest.mark.parametrize("heads, transposed, x_unsigned", [(2, False, False), (1, True, False),
                                                           (2, True, True)])  # fmt: skip
def test_matmul_heads_from_spm(heads, transposed, x_unsigned):
    """Attention-style jobs: per head X_h (T x dh) times W_h^T with W_h rows in the SPM."""
    rng = np.random.default_rng(10 * heads + transposed)
    img = Image()
    tokens, dh, n = 6, 12, 10
    lo = 0 if x_unsigned else -128
    hx = rng.integers(lo, lo + 256, size=(heads, tokens, dh))
    hw = rng.integers(-128, 128, size=(heads, n, dh))
    xstep, wstep, ystep = 8, 16, 20
    offs = []
    for h in range(heads):
        offs.append(img.add(spm_rows(hx[h], 1)))
    for h in range(heads):
        offs.append(img.add(spm_rows(hw[h], 1)))
    out_rows, out_cols = (n, tokens) if transposed else (tokens, n)
    out = img.reserve(heads * ystep * 16)
    prog = []
    for h in range(heads):
        prog.append(isa.load(spm=h * xstep, words=tokens, ddr=offs[h]))
        prog.append(isa.load(spm=100 + h * wstep, words=n, ddr=offs[heads + h]))
    prog += [
        isa.matmul(
            x=0,
            x_stride=1,
            tokens=tokens,
            k=dh,
            n=n,
            y=300,
            y_stride=1,
            w_spm=100,
            w_stride=1,
            mult=411,
            shift=13,
            heads=heads,
            head_x_step=xstep,
            head_w_step=wstep,
            head_y_step=ystep,
            x_unsigned=x_unsigned,
            out_transposed=transposed,
        ),  # fmt: skip
        isa.store(spm=300, words=heads * ystep, ddr=out),
        isa.end(),
    ]
    assert out_rows <= ystep and out_cols <= 16
    res, expected = _run(img, prog)
    _check(res, expected, prog)


# ---- errors ------------------------------------------------------------------------------------


def test_bad_opcode_sets_error_and_done():
    img = Image()
    bad = isa.Instr(isa.Op.END)
    prog = [isa.load(spm=0, words=1, ddr=0x1000), bad, isa.end()]
    image = bytearray(img.program(prog))
    image[32] = 0x0B  # opcode 11 in the second instruction
    res = run_top(DESIGN, bytes(image), base=BASE, regs=default_regs(BASE, BASE), outputs=[])
    assert res["status"] == STATUS_DONE | STATUS_ERROR
    assert res["pc"] == 1


@pytest.mark.parametrize("which", ["softmax", "matmul"])
def test_log2_instructions_on_a_uint8_build_set_error(which):
    """A program compiled for a log2 build must not run silently wrong on a uint8 build."""
    img = Image()
    if which == "softmax":
        bad = isa.softmax(src=0, src_stride=2, rows=2, cols=17, dst=64, dst_stride=2,
                          in_shift=4, log2=True)  # fmt: skip
    else:
        bad = isa.matmul(x=0, x_stride=1, tokens=4, k=16, n=4, y=64, y_stride=1, w_spm=32,
                         w_stride=1, mult=1, shift=8, x_log2=True)  # fmt: skip
    prog = [isa.load(spm=0, words=1, ddr=0x1000), bad, isa.end()]
    res = run_top(DESIGN, img.program(prog), base=BASE, regs=default_regs(BASE, BASE), outputs=[])
    assert res["status"] == STATUS_DONE | STATUS_ERROR
    assert res["pc"] == 1


def test_polling_without_irq():
    img = Image()
    prog = [isa.end()]
    res = run_top(DESIGN, img.program(prog), base=BASE, regs=default_regs(BASE, BASE),
                  outputs=[], ctrl=isa.CTRL_START)  # fmt: skip
    assert res["status"] == STATUS_DONE and not res["timeout"]
    assert res["cycles"] < 100
