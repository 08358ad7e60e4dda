"""Ask the kernel for a memory-mapped record batch's pages in one request, before they are touched.

The sparse loader reads row groups of Arrow IPC files through a memory map (no decode, no copy until the block
is permuted). When the pages are not in the page cache (a store larger than memory, or the first epoch), each
4 KiB page the checksum or the gather touches faults on its own and the kernel reads around it a little at a
time: a row group of ~17 MB took a few hundred synchronous faults. ``madvise(MADV_WILLNEED)`` over the batch's
byte range starts the read of the whole range at once (large sequential I/O, asynchronous), so the faults that
follow find the pages arriving or there. Pages already cached cost nothing. Linux and macOS have the call;
elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys

import pyarrow as pa

MADV_WILLNEED = 3  # the same value on Linux and the BSDs/macOS
_PAGE = mmap.PAGESIZE

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    _madvise = _libc.madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    _madvise.restype = ctypes.c_int
except (OSError, AttributeError):  # no libc madvise (Windows)
    _madvise = None


def batch_span(batch: pa.RecordBatch) -> tuple[int, int] | None:
    """(first address, end address) of the buffers behind ``batch`` (its columns and their children), or None
    when it holds no data. The buffers of one IPC record batch are one contiguous body in the file."""
    lo = hi = None
    for col in batch.columns:
        for buf in col.buffers():
            if buf is None or buf.size == 0:
                continue
            lo = buf.address if lo is None else min(lo, buf.address)
            hi = buf.address + buf.size if hi is None else max(hi, buf.address + buf.size)
    return None if lo is None else (lo, hi)


def will_need(batch: pa.RecordBatch) -> int:
    """madvise(MADV_WILLNEED) over ``batch``'s pages; bytes advised (0 where the call is unavailable or failed:
    the advice is only a hint, reading works the same without it)."""
    span = batch_span(batch)
    if span is None or _madvise is None or not sys.platform.startswith(("linux", "darwin")):
        return 0
    start = span[0] - span[0] % _PAGE
    length = span[1] - start
    return length if _madvise(start, length, MADV_WILLNEED) == 0 else 0
