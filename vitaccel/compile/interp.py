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
    def read(
        self,
        base: int,
        rows: int,
        cols: int,
        stride: int,
        *,
        signed: bool = True,
        elem_bytes: int = 1,
    ) -> np.ndarray:
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
    c = i.f(4)
    raw = m.block(i.f(7), 8 * c).reshape(c, 8)
    return LayerNormParams(
        alpha=raw[:, 0].astype(np.int64),
        recip_mult=i.f(8),
        recip_shift=i.f(9),
        gain=np.ascontiguousarray(raw[:, 2:4]).view("<i2").reshape(c).astype(np.int64),
        bias=np.ascontiguousarray(raw[:, 4:8]).view("<i4").reshape(c).astype(np.int64),
        out_shift=i.f(10),
        eps_q=i.f(11),
    )


def _matmul(m: Machine, i: isa.Instr, codec) -> None:
    fl = MatmulFlags(i.flags)
    tokens, k, n = i.f(3), i.f(4), i.f(5)
    heads = i.f(12) if fl & MatmulFlags.HEADS else 1
    if fl & isa.FUSED_FLAGS and fl & MatmulFlags.W_SPM:
        raise InterpError("MATMUL: GELU/RESADD need W from DDR")
    if fl & MatmulFlags.GELU and fl & MatmulFlags.RESADD:
        raise InterpError("MATMUL: GELU and RESADD are exclusive")
    if fl & MatmulFlags.RESADD and fl & (MatmulFlags.HEADS | MatmulFlags.OUT_T):
        raise InterpError("MATMUL: RESADD needs shared mode, row-major output")
    if fl & MatmulFlags.X_KEEP:
        # the engine still holds the previous MATMUL's X: only that X, at the same shape
        if fl & MatmulFlags.HEADS or m.last_x is None or m.last_x[:2] != (tokens, k):
            raise InterpError("MATMUL X_KEEP: the previous MATMUL loaded no X of this shape")
    for h in range(heads):
        # the engine holds X as bytes; the job's flags say how they are read
        if fl & MatmulFlags.X_KEEP:
            raw = m.last_x[2]
        else:
            raw = m.read(i.f(1) + h * i.f(13), tokens, k, i.f(2), signed=False)
            # heads mode leaves per-group X in the engine: nothing X_KEEP may reuse
            m.last_x = None if fl & MatmulFlags.HEADS else (tokens, k, raw)
        unsigned = fl & (MatmulFlags.X_UNSIGNED | MatmulFlags.X_LOG2)
        x = raw if unsigned else np.where(raw > 127, raw - 256, raw)
        if fl & MatmulFlags.X_LOG2:
            x = ref.log2_code_weights(x)
        if fl & MatmulFlags.W_SPM:
            w = m.read(i.f(10) + h * i.f(14), n, k, i.f(11))
            bias = np.zeros(n, dtype=np.int64)
            mult = np.full(n, i.f(8), dtype=np.int64)
            shift = np.full(n, i.f(9), dtype=np.int64)
        else:
            off = i.u32(8)
            raw = bytes(m.ddr[off : off + codec.stream_bytes(n, k)])
            w, bias, mult, shift = codec.unpack(raw, n, k)
        y = ref.requantize(ref.matmul_int(x, w, bias), mult, shift)
        if fl & MatmulFlags.GELU:
            y = ref.lut_lookup(y, _gelu_table(m, i.f(10)))
        elif fl & MatmulFlags.RESADD:
            a = m.read(i.f(10), tokens, n, i.f(7))
            ma, mb = _resadd_mults(m, i.f(11), n)
            y = ref.residual_add(a, ma, y, mb, i.f(13))
        if fl & MatmulFlags.OUT_T:
            y = y.T
        m.write(i.f(6) + h * i.f(15), y, i.f(7))


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
        spm, words, off = i.f(1), i.f(2), i.u32(3)
        raw = np.frombuffer(bytes(m.ddr[off : off + words * WORD_BYTES]), dtype=np.uint8)
        if raw.size != words * WORD_BYTES or spm + words > len(m.spm):
            raise InterpError(f"LOAD out of range (spm {spm}, words {words}, ddr {off})")
        m.spm[spm : spm + words] = raw.reshape(words, WORD_BYTES)
    elif op is Op.STORE:
        spm, words, off = i.f(1), i.f(2), i.u32(3)
        m.ddr[off : off + words * WORD_BYTES] = m.spm[spm : spm + words].tobytes()
    elif op is Op.MATMUL:
        _matmul(m, i, codec)
    elif op is Op.SOFTMAX:
        x = m.read(i.f(1), i.f(3), i.f(4), i.f(2))
        out = "log2" if SoftmaxFlags(i.flags) & SoftmaxFlags.LOG2 else "uint8"
        p = ref.e2softmax(x, SoftmaxParams(in_shift=i.f(7), lanes=m.softmax_lanes), output=out)
        m.write(i.f(5), _as_u8(p), i.f(6))
    elif op is Op.LAYERNORM:
        x = m.read(i.f(1), i.f(3), i.f(4), i.f(2))
        m.write(i.f(5), ref.ailayernorm(x, _ln_params(m, i)), i.f(6))
    elif op is Op.GELU:
        x = m.read(i.f(1), i.f(3), i.f(4), i.f(2))
        m.write(i.f(5), ref.lut_lookup(x, _gelu_table(m, i.f(7))), i.f(6))
    elif op is Op.RESADD:
        rows, cols = i.f(3), i.f(4)
        a = m.read(i.f(1), rows, cols, i.f(2))
        b = m.read(i.f(7), rows, cols, i.f(8))
        ma, mb = _resadd_mults(m, i.f(9), cols)
        m.write(i.f(5), ref.residual_add(a, ma, b, mb, i.f(10)), i.f(6))
    else:  # pragma: no cover - decode() rejects unknown opcodes
        raise InterpError(f"unknown opcode {op}")
    m.executed += 1
    return True


def _as_u8(p: np.ndarray) -> np.ndarray:
    # uint8 probabilities are stored as their byte pattern; write() takes int8 values.
    return np.where(p > 127, p - 256, p)


def run(
    image: bytearray, codec, *, spm_words: int, softmax_lanes: int = 1, max_steps: int = 1_000_000
) -> Machine:
    """Run the program at offset 0 of ``image`` until END; returns the final machine state."""
    m = Machine(
        ddr=bytearray(image),
        spm=np.zeros((spm_words, WORD_BYTES), dtype=np.uint8),
        softmax_lanes=softmax_lanes,
    )
    pc = 0
    for _ in range(max_steps):
        instr = isa.decode(bytes(m.ddr[pc * isa.INSTR_BYTES : (pc + 1) * isa.INSTR_BYTES]))
        if not step(m, instr, codec):
            return m
        pc += 1
    raise InterpError(f"no END after {max_steps} instructions")
