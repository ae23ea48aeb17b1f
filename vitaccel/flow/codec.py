"""The packed W stream of a linear layer in DDR, in the GVSA engine's own format.

Packing is the engine's (:func:`vitaccel.engine_host.pack_job`); this module only lays the
engine's ``w`` stream words into 16-byte DDR slots (one slot per stream word, so the DMA
feeds the stream one beat per word) and decodes them again for the ISA interpreter. The
decoder reads the parameter word and weight bytes at the positions the engine's packer
wrote them, so an interpreter run on a compiled image checks the packing too.

On an all-W8 array the column plan is the identity: channel n of a step is column
``n - s * groups * cols``, so the output writer stores words as they come. On an array with
W4 columns (``w4_share`` > 0) the engine's :func:`~vitaccel.engine_host.plan_columns` puts a
layer's W4 rows on W4 columns and the rest on W8 columns, which permutes the channels (and
may take more steps than ``ceil(N / (G*C))``): every parameter word's slot then carries the
output channel of its column in bytes 14-15 (``IDLE_COLUMN`` for an idle column; the
parameter word itself is at most 70 bits), and the MATMUL's ``w_steps`` field the number of
steps (docs/isa.md, "Mixed W4/W8 arrays"). W4 columns carry 4-bit codes in the low nibble of
each weight byte (int4 two's complement or the pot4 code), decoded with
:func:`~vitaccel.engine_host.lane_weights`.

With ``w_ports`` > 1 the engine takes W over several streams, one AXI port each, stream q
carrying columns ``q*M .. (q+1)*M - 1`` of every step (:func:`vitaccel.engine_host.split_w_stream`);
the layer's slots then hold the streams one after the other, each contiguous, so each port
reads one burst sequence starting at ``q * stream_bytes / w_ports``.
"""

from __future__ import annotations

import numpy as np

from vitaccel.compile.compiler import CompileError, WCodec
from vitaccel.isa import WORD_BYTES

__all__ = ["GVSACodec", "codec_for", "IDLE_COLUMN", "CHANNEL_BYTE"]

# Where a parameter word's 16-byte slot holds its column's output channel (mixed arrays).
CHANNEL_BYTE = 14
IDLE_COLUMN = 0xFFFF


class GVSACodec(WCodec):
    """The packed W stream of one engine (:class:`~vitaccel.engine_host.EngineParams`)."""

    def __init__(self, params):
        from vitaccel.engine_host import MULT_BITS

        self.params = params
        self.mult_bits = MULT_BITS
        wbytes = -(-params.w_word_bits // 8)
        self.slot = -(-wbytes // WORD_BYTES) * WORD_BYTES
        self.wbytes = wbytes
        # Arrays with W4 columns carry the column map beside each parameter word (at most
        # 48 + 16 + 6 = 70 bits, so bytes 14-15 of its slot are always free).
        self.mixed = params.cols_w4 > 0
        assert params.param_bits <= 8 * CHANNEL_BYTE

    def _ks(self, k: int) -> int:
        return -(-k // self.params.vector)

    def _nsteps(self, n: int, nsteps: int | None = None) -> int:
        p = self.params
        return nsteps or max(1, -(-n // (p.groups * p.cols)))

    def stream_bytes(self, n: int, k: int, nsteps: int | None = None) -> int:
        """Bytes of the packed stream of an ``n x k`` layer over ``nsteps`` output steps
        (default: ``ceil(n / (groups*cols))``, the all-W8 plan)."""
        p = self.params
        return self._nsteps(n, nsteps) * p.groups * p.cols * (self._ks(k) + 1) * self.slot

    def steps_of(self, raw: bytes, k: int) -> int:
        """The output steps of a packed stream (what the MATMUL's ``w_steps`` says)."""
        p = self.params
        return len(raw) // (p.groups * p.cols * (self._ks(k) + 1) * self.slot)

    def pack(self, q, kind, bias, mult, shift) -> bytes:
        from vitaccel.engine_host import pack_job, split_w_stream

        q = np.asarray(q, dtype=np.int64)
        try:
            job = pack_job(
                np.zeros((1, q.shape[1]), dtype=np.int64),
                q,
                kind,
                bias,
                mult,
                shift,
                self.params,
            )
        except ValueError as e:
            raise CompileError(str(e)) from None
        p, ks = self.params, self._ks(q.shape[1])
        slots = np.zeros((len(job.w_words), self.slot), dtype=np.uint8)
        slots[:, : job.w_words.shape[1]] = job.w_words
        if self.mixed:
            # the column map: parameter word of (step, group, column) -> its output channel
            channel = np.where(job.plan.channel < 0, IDLE_COLUMN, job.plan.channel)
            params_at = slots.reshape(-1, 1 + ks, self.slot)[:, 0]
            params_at[:, CHANNEL_BYTE:] = (
                channel.reshape(-1, 1).astype("<u2").view(np.uint8).reshape(-1, 2)
            )
        slots = np.concatenate(split_w_stream(slots, p, job.plan.nsteps))
        raw = slots.tobytes()
        assert len(raw) == self.stream_bytes(*q.shape, job.plan.nsteps)
        return raw

    def unpack(self, raw: bytes, n: int, k: int, nsteps: int | None = None):
        """The layer back from its packed stream: ``(q, bias, mult, shift)`` in channel order
        (W4 columns' codes decoded to the weights their lanes compute with)."""
        from vitaccel.engine_host import lane_weights

        p = self.params
        ks = self._ks(k)
        nsteps = self._nsteps(n, nsteps)
        a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, self.slot)
        # the port streams back into stream order: per step, every port's columns in turn
        P = p.w_ports
        a = a.reshape(P, nsteps, -1, a.shape[1]).transpose(1, 0, 2, 3).reshape(a.shape)
        q = np.zeros((n, k), dtype=np.int64)
        bias = np.zeros(n, dtype=np.int64)
        mult = np.zeros(n, dtype=np.int64)
        shift = np.zeros(n, dtype=np.int64)
        seen = np.zeros(n, dtype=bool)
        at = 0
        acc_mask = (1 << p.acc_bits) - 1
        for s in range(nsteps):
            for g in range(p.groups):
                for c in range(p.cols):
                    if self.mixed:
                        ch = int(a[at, CHANNEL_BYTE]) | int(a[at, CHANNEL_BYTE + 1]) << 8
                        ch = -1 if ch == IDLE_COLUMN else ch
                    else:
                        ch = (s * p.groups + g) * p.cols + c
                    if 0 <= ch < n:
                        if seen[ch]:
                            raise CompileError(f"W stream: channel {ch} is on two columns")
                        seen[ch] = True
                        pw = int.from_bytes(a[at, : self.wbytes].tobytes(), "little")
                        b = pw & acc_mask
                        bias[ch] = b - (1 << p.acc_bits) if b >> (p.acc_bits - 1) else b
                        mult[ch] = (pw >> p.acc_bits) & ((1 << self.mult_bits) - 1)
                        shift[ch] = pw >> (p.acc_bits + self.mult_bits) & 0x3F
                        w = a[at + 1 : at + 1 + ks, : p.vector].reshape(-1)[:k]
                        if c >= p.cols_w8:
                            q[ch] = lane_weights(w, p.w4_kind)
                        else:
                            q[ch] = w.view(np.int8).astype(np.int64)
                    elif ch >= n and self.mixed:
                        raise CompileError(f"W stream: column map names channel {ch} of {n}")
                    at += 1 + ks
        if not seen.all():
            raise CompileError(f"W stream: channel {int(np.flatnonzero(~seen)[0])} is on no column")
        return q, bias, mult, shift


def codec_for(design) -> GVSACodec:
    """The codec of ``design``'s engine, with the buffer sizes the top gives it (so a layer
    the engine cannot hold is refused when the program is compiled, not when it runs)."""
    from vitaccel.rtl.top import TopParams

    return GVSACodec(TopParams(design).engine)
