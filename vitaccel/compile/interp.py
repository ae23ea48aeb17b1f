"""Executable specification of the accelerator program (docs/isa.md).

``run(image, codec, ...)`` executes the program in a DDR image on a byte-exact model of the
scratchpad, every unit through :mod:`vitaccel.quant.ref`. It is the bridge between the golden
model and the RTL: tests require interpreter logits == golden logits (the compiler is right)
and RTL memory == interpreter memory (the hardware is right).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitaccel import isa
from vitaccel.isa import WORD_BYTES, MatmulFlags, Op, SoftmaxFlags
from vitaccel.quant import ref
from vitaccel.quant.ref import LayerNormParams, SoftmaxParams

__all__ = ["Machine", "run", "InterpError"]


class InterpError(RuntimeError):
    pass


@dataclass
class Machine:
    ddr: bytearray
    spm: np.ndarray  # (words, 16) uint8
    softmax_lanes: int = 1
    executed: int = 0
    # The X of the last MATMUL, as the engine holds it (tokens, K, values): X_KEEP reuses it.
    last_x: tuple[int, int, np.ndarray] | None = None

    # ---- scratchpad access in SPM row layout -------------------------------------------
    # fmt: off
    def read(self, base: int, rows: int, cols: int, stride: int, *, signed: bool = True,
             elem_bytes: int = 1) -> np.ndarray:
        # fmt: on
        if base + (rows - 1) * stride + (cols * elem_bytes - 1) // WORD_BYTES >= len(self.spm):
            raise InterpError(f"SPM read past the end (base {base}, rows {rows}, stride {stride})")
        idx = base + np.arange(rows)[:, None] * stride + np.arange(stride)[None, :]
        raw = self.spm[idx].reshape(rows, stride * WORD_BYTES)[:, : cols * elem_bytes]
        raw = np.ascontiguousarray(raw)
        dtype = {(1, True): "<i1", (1, False): "<u1", (2, True): "<i2", (4, True): "<i4"}[
            (elem_bytes, signed)
        ]
        return raw.view(dtype).reshape(rows, cols).astype(np.int64)

    def write(self, base: int, values: np.ndarray, stride: int, *, elem_bytes: int = 1) -> None:
        values = np.asarray(values)
        rows, cols = values.shape
        dtype = {1: "<i1", 2: "<i2"}[elem_bytes]
        raw = (
            np.ascontiguousarray(values.astype(dtype))
            .view(np.uint8)
            .reshape(rows, cols * elem_bytes)
        )
        nbytes = cols * elem_bytes
        for r in range(rows):
            flat = self.spm[base + r * stride : base + r * stride + stride].reshape(-1)
            if flat.size < nbytes:
                raise InterpError(f"SPM write past the end (base {base}, row {r})")
            flat[:nbytes] = raw[r]
            self.spm[base + r * stride : base + r * stride + stride] = flat.reshape(
                stride, WORD_BYTES
            )

    def block(self, base: int, nbytes: int) -> np.ndarray:
        words = (nbytes + WORD_BYTES - 1) // WORD_BYTES
        return self.spm[base : base + words].reshape(-1)[:nbytes].copy()


def _ln_params(m: Machine, i: isa.Instr) -> LayerNormParams:
    c = i.cols
    raw = m.block(i.params, 8 * c).reshape(c, 8)
    return LayerNormParams(
        alpha=raw[:, 0].astype(np.int64),
        recip_mult=i.recip_mult,
        recip_shift=i.recip_shift,
        gain=np.ascontiguousarray(raw[:, 2:4]).view("<i2").reshape(c).astype(np.int64),
        bias=np.ascontiguousarray(raw[:, 4:8]).view("<i4").reshape(c).astype(np.int64),
        out_shift=i.out_shift,
        eps_q=i.eps_q,
    )


def _matmul(m: Machine, i: isa.Instr, codec) -> None:
    fl = i.flags
    tokens, k, n = i.tokens, i.k, i.n
    heads = i.heads if MatmulFlags.HEADS in fl else 1
    if fl & isa.FUSED_FLAGS and MatmulFlags.W_SPM in fl:
        raise InterpError("MATMUL: GELU/RESADD need W from DDR")
    if MatmulFlags.GELU in fl and MatmulFlags.RESADD in fl:
        raise InterpError("MATMUL: GELU and RESADD are exclusive")
    if MatmulFlags.RESADD in fl and fl & (MatmulFlags.HEADS | MatmulFlags.OUT_T):
        raise InterpError("MATMUL: RESADD needs shared mode, row-major output")
    if MatmulFlags.X_KEEP in fl:
        # the engine still holds the previous MATMUL's X: only that X, at the same shape
        if MatmulFlags.HEADS in fl or m.last_x is None or m.last_x[:2] != (tokens, k):
            raise InterpError("MATMUL X_KEEP: the previous MATMUL loaded no X of this shape")
    for h in range(heads):
        # the engine holds X as bytes; the job's flags say how they are read
        if MatmulFlags.X_KEEP in fl:
            raw = m.last_x[2]
        else:
            raw = m.read(i.x + h * i.head_x_step, tokens, k, i.x_stride, signed=False)
            # heads mode leaves per-group X in the engine: nothing X_KEEP may reuse
            m.last_x = None if MatmulFlags.HEADS in fl else (tokens, k, raw)
        unsigned = fl & (MatmulFlags.X_UNSIGNED | MatmulFlags.X_LOG2)
        x = raw if unsigned else np.where(raw > 127, raw - 256, raw)
        if MatmulFlags.X_LOG2 in fl:
            x = ref.log2_code_weights(x)
        if MatmulFlags.W_SPM in fl:
            w = m.read(i.w_spm + h * i.head_w_step, n, k, i.w_stride)
            bias = np.zeros(n, dtype=np.int64)
            mult = np.full(n, i.mult, dtype=np.int64)
            shift = np.full(n, i.shift, dtype=np.int64)
        else:
            off = i.w_ddr
            steps = 0 if MatmulFlags.HEADS in fl else i.get("w_steps", 0)
            raw = bytes(m.ddr[off : off + codec.stream_bytes(n, k, steps or None)])
            w, bias, mult, shift = codec.unpack(raw, n, k, steps or None)
        y = ref.requantize(ref.matmul_int(x, w, bias), mult, shift)
        if MatmulFlags.GELU in fl:
            y = ref.lut_lookup(y, _gelu_table(m, i.gelu_table))
        elif MatmulFlags.RESADD in fl:
            a = m.read(i.residual, tokens, n, i.y_stride)
            ma, mb = _resadd_mults(m, i.residual_params, n)
            y = ref.residual_add(a, ma, y, mb, i.residual_shift)
        if MatmulFlags.OUT_T in fl:
            y = y.T
        m.write(i.y + h * i.head_y_step, y, i.y_stride)


def _gelu_table(m: Machine, base: int) -> np.ndarray:
    return m.block(base, 256).view(np.int8).astype(np.int64)


def _resadd_mults(m: Machine, base: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mult_a, mult_b) of a RESADD parameter block: 4 bytes a channel."""
    raw = m.block(base, 4 * cols).reshape(cols, 4)
    ma = np.ascontiguousarray(raw[:, 0:2]).view("<u2").reshape(cols).astype(np.int64)
    mb = np.ascontiguousarray(raw[:, 2:4]).view("<u2").reshape(cols).astype(np.int64)
    return ma, mb


def step(m: Machine, i: isa.Instr, codec) -> bool:
    """Execute one instruction; False at END."""
    op = i.op
    if op is Op.END:
        return False
    if op is Op.LOAD:
        spm, words, off = i.spm, i.words, i.ddr
        raw = np.frombuffer(bytes(m.ddr[off : off + words * WORD_BYTES]), dtype=np.uint8)
        if raw.size != words * WORD_BYTES or spm + words > len(m.spm):
            raise InterpError(f"LOAD out of range (spm {spm}, words {words}, ddr {off})")
        m.spm[spm : spm + words] = raw.reshape(words, WORD_BYTES)
    elif op is Op.STORE:
        spm, words, off = i.spm, i.words, i.ddr
        # a STORE past the image would grow the bytearray: the program's DDR is the image
        if off + words * WORD_BYTES > len(m.ddr) or spm + words > len(m.spm):
            raise InterpError(f"STORE out of range (spm {spm}, words {words}, ddr {off})")
        m.ddr[off : off + words * WORD_BYTES] = m.spm[spm : spm + words].tobytes()
    elif op is Op.MATMUL:
        _matmul(m, i, codec)
    elif op is Op.SOFTMAX:
        x = m.read(i.src, i.rows, i.cols, i.src_stride)
        out = "log2" if SoftmaxFlags.LOG2 in i.flags else "uint8"
        p = ref.e2softmax(x, SoftmaxParams(in_shift=i.in_shift, lanes=m.softmax_lanes), output=out)
        m.write(i.dst, _as_u8(p), i.dst_stride)
    elif op is Op.LAYERNORM:
        x = m.read(i.src, i.rows, i.cols, i.src_stride)
        m.write(i.dst, ref.ailayernorm(x, _ln_params(m, i)), i.dst_stride)
    elif op is Op.GELU:
        x = m.read(i.src, i.rows, i.cols, i.src_stride)
        m.write(i.dst, ref.lut_lookup(x, _gelu_table(m, i.table)), i.dst_stride)
    elif op is Op.RESADD:
        a = m.read(i.a, i.rows, i.cols, i.a_stride)
        b = m.read(i.b, i.rows, i.cols, i.b_stride)
        ma, mb = _resadd_mults(m, i.params, i.cols)
        m.write(i.dst, ref.residual_add(a, ma, b, mb, i.shift), i.dst_stride)
    else:  # pragma: no cover - decode() rejects unknown opcodes
        raise InterpError(f"unknown opcode {op}")
    m.executed += 1
    return True


def _as_u8(p: np.ndarray) -> np.ndarray:
    # uint8 probabilities are stored as their byte pattern; write() takes int8 values.
    return np.where(p > 127, p - 256, p)


def run(
    image: bytearray,
    codec,
    *,
    spm_words: int,
    softmax_lanes: int = 1,
    max_steps: int = 1_000_000,
    entry: int = 0,
    spm: np.ndarray | None = None,
) -> Machine:
    """Run the program at offset 0 of ``image`` from instruction ``entry`` until END; returns
    the final machine state. ``spm``: the scratchpad a previous run left (a stream of images
    starting past the resident prologue, ``schedule.resident_prologue``), else zeros."""
    m = Machine(
        ddr=bytearray(image),
        spm=np.zeros((spm_words, WORD_BYTES), dtype=np.uint8) if spm is None else spm.copy(),
        softmax_lanes=softmax_lanes,
    )
    pc = entry
    for _ in range(max_steps):
        instr = isa.decode(bytes(m.ddr[pc * isa.INSTR_BYTES : (pc + 1) * isa.INSTR_BYTES]))
        if isa.chained(instr):  # a chain is timing only, but only into a MATMUL it fits
            at = (pc + 1) * isa.INSTR_BYTES
            why = isa.chain_fits(instr, isa.decode(bytes(m.ddr[at : at + isa.INSTR_BYTES])))
            if why:
                raise InterpError(f"instruction {pc}: {instr.op.name} CHAIN: {why}")
        if not step(m, instr, codec):
            return m
        pc += 1
    raise InterpError(f"no END after {max_steps} instructions")
