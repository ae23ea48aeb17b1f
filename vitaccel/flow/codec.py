"""The packed W stream of a linear layer in DDR, in the GVSA engine's own format.

Packing is the engine's (:func:`vitaccel.engine_host.pack_job`); this module only lays the
engine's ``w`` stream words into 16-byte DDR slots (one slot per stream word, so the DMA
feeds the stream one beat per word) and decodes them again for the ISA interpreter. The
decoder reads the parameter word and weight bytes at the positions the engine's packer
wrote them, so an interpreter run on a compiled image checks the packing too.

Whole-model programs need the identity column plan (every column W8): channel n of a step
is column ``n - s * groups * cols``, so the output writer stores words as they come.

With ``w_ports`` > 1 the engine takes W over several streams, one AXI port each, stream q
carrying columns ``q*M .. (q+1)*M - 1`` of every step (:func:`vitaccel.engine_host.split_w_stream`);
the layer's slots then hold the streams one after the other, each contiguous, so each port
reads one burst sequence starting at ``q * stream_bytes / w_ports``.
"""

from __future__ import annotations

import numpy as np

from vitaccel.compile.compiler import CompileError, WCodec
from vitaccel.isa import WORD_BYTES

__all__ = ["GVSACodec", "codec_for"]


class GVSACodec(WCodec):
    def __init__(self, params):
        from vitaccel.engine_host import MULT_BITS

        if params.cols_w4:
            raise CompileError(
                "whole-model programs need an all-W8 array (w4_share = 0): mixed W4/W8 columns "
                "permute output channels, which the output writer does not map yet"
            )
        self.params = params
        self.mult_bits = MULT_BITS
        wbytes = -(-params.w_word_bits // 8)
        self.slot = -(-wbytes // WORD_BYTES) * WORD_BYTES
        self.wbytes = wbytes

    def _ks(self, k: int) -> int:
        return -(-k // self.params.vector)

    def _nsteps(self, n: int) -> int:
        p = self.params
        return max(1, -(-n // (p.groups * p.cols)))

    def stream_bytes(self, n: int, k: int) -> int:
        p = self.params
        return self._nsteps(n) * p.groups * p.cols * (self._ks(k) + 1) * self.slot

    def pack(self, q, kind, bias, mult, shift) -> bytes:
        from vitaccel.engine_host import pack_job

        q = np.asarray(q, dtype=np.int64)
        job = pack_job(
            np.zeros((1, q.shape[1]), dtype=np.int64),
            q,
            np.zeros(len(q), dtype=np.int64),
            bias,
            mult,
            shift,
            self.params,
        )
        from vitaccel.engine_host import split_w_stream

        words = np.concatenate(split_w_stream(job.w_words, self.params, job.plan.nsteps))
        slots = np.zeros((len(words), self.slot), dtype=np.uint8)
        slots[:, : words.shape[1]] = words
        raw = slots.tobytes()
        assert len(raw) == self.stream_bytes(*q.shape)
        return raw

    def unpack(self, raw: bytes, n: int, k: int):
        p = self.params
        ks = self._ks(k)
        a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, self.slot)[:, : self.wbytes]
        # the port streams back into stream order: per step, every port's columns in turn
        P, nsteps = p.w_ports, self._nsteps(n)
        a = a.reshape(P, nsteps, -1, a.shape[1]).transpose(1, 0, 2, 3).reshape(a.shape)
        q = np.zeros((n, k), dtype=np.int64)
        bias = np.zeros(n, dtype=np.int64)
        mult = np.zeros(n, dtype=np.int64)
        shift = np.zeros(n, dtype=np.int64)
        at = 0
        acc_mask = (1 << p.acc_bits) - 1
        for s in range(self._nsteps(n)):
            for g in range(p.groups):
                for c in range(p.cols):
                    ch = (s * p.groups + g) * p.cols + c
                    pw = int.from_bytes(a[at].tobytes(), "little")
                    if ch < n:
                        b = pw & acc_mask
                        bias[ch] = b - (1 << p.acc_bits) if b >> (p.acc_bits - 1) else b
                        mult[ch] = (pw >> p.acc_bits) & ((1 << self.mult_bits) - 1)
                        shift[ch] = pw >> (p.acc_bits + self.mult_bits) & 0x3F
                        w = a[at + 1 : at + 1 + ks, : p.vector].reshape(-1)[:k]
                        q[ch] = w.view(np.int8).astype(np.int64)
                    at += 1 + ks
        return q, bias, mult, shift


def codec_for(design) -> GVSACodec:
    """The codec of ``design``'s engine, with the buffer sizes the top gives it (so a layer
    the engine cannot hold is refused when the program is compiled, not when it runs)."""
    from vitaccel.rtl.top import TopParams

    return GVSACodec(TopParams(design).engine)
