"""Scratchpad (SPM) and the address generators every instruction uses (a package).

The SPM is one memory of 16-byte words (docs/isa.md, "Scratchpad") with one read port and
one byte-enabled write port, so it maps to simple-dual-port block RAM. Around it:

* :class:`Scratchpad`: the memory, a round-robin arbiter for several read clients (each a
  :func:`read_client_signature`: request/grant, data one cycle after the grant) and a
  priority mux for the write clients (at most one writes at a time by construction).
* :class:`RowReader`: (base, stride, rows, cols) -> a stream of beats of ``lanes`` bytes
  with row framing (``count``/``last``, :func:`vitaccel.rtl.common.row_layout`); bytes past
  ``cols`` read as 0. A *dual* command interleaves the rows of two tensors (A row 0, B row 0,
  A row 1, ...) for the residual add. A credit counter keeps the reader from requesting
  more words than its FIFO holds, so a stalled consumer never blocks the read port.
* :class:`ByteRunWriter`: runs of up to 16 bytes at any byte offset -> one or two word writes
  with byte enables. Every writer below produces runs.
* :class:`RowWriter`: a row stream of ``lanes`` bytes -> runs at (base, stride, rows, cols);
  bytes past ``cols`` are never written.
* :class:`MatmulOutWriter`: the matmul engine's output words (one token x G*C channels per
  step) -> runs, in shared or heads mode, row-major or transposed (OUT_T).
* :class:`MappedOutWriter`: a mixed W4/W8 array's output writer (the column map);
  :class:`MixedOutWriter` adds a :class:`MatmulOutWriter` of the W8 columns for W_SPM jobs.
* :class:`WStreamBuilder`: the engine's ``w`` stream from SPM rows (MATMUL with W_SPM):
  per step, group and column a parameter word, then the row's ``ceil(K/V)`` words.

``lanes`` must be a power of two (1..64): beats then never straddle a word boundary except
as whole words, which keeps the byte selection a plain mux.

Modules: :mod:`~vitaccel.rtl.spm.scratchpad` (the memory and its client signatures),
:mod:`~vitaccel.rtl.spm.readers` (:class:`RowReader`), :mod:`~vitaccel.rtl.spm.writers`
(:class:`ByteRunWriter`, :class:`RowWriter`) and :mod:`~vitaccel.rtl.spm.matmul_streams`
(:class:`XStreamBuilder`, :class:`WStreamBuilder`, :class:`MatmulOutWriter`,
:class:`MappedOutWriter`, :class:`MixedOutWriter`, :class:`ResidualRuns`). Every name is importable from the package.
"""

from vitaccel.isa import WORD_BYTES
from vitaccel.rtl.spm import matmul_streams, readers, scratchpad, writers

# every module's public names, from the package (`from vitaccel.rtl.spm import RowReader`)
from vitaccel.rtl.spm.matmul_streams import *  # noqa: F403
from vitaccel.rtl.spm.readers import *  # noqa: F403
from vitaccel.rtl.spm.scratchpad import *  # noqa: F403
from vitaccel.rtl.spm.writers import *  # noqa: F403

__all__ = [
    "WORD_BYTES",
    *scratchpad.__all__,
    *readers.__all__,
    *writers.__all__,
    *matmul_streams.__all__,
]
