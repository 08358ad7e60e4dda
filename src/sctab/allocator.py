"""Let inference reuse freed memory instead of asking the kernel for fresh pages every batch.

Why: one scTab forward pass at 19,331 genes makes several cells x genes buffers per batch of 2,048 cells
(the attention scores, the densified input, the normalised counts: about 158 MB each). glibc serves every
allocation above its mmap threshold (at most 32 MB, raised dynamically) with a fresh ``mmap`` and gives it
back with ``munmap`` when freed, so each batch of each member pays for page faults on about a gigabyte of
zero-filled pages. Raising the threshold and the trim threshold keeps those blocks in the heap, where the
next batch finds them. PyTorch's CPU tuning guide makes the same point with jemalloc or TCMalloc preloaded;
this does it from inside the process with glibc's own ``mallopt``, with nothing to install.

Measured on 2 cores (see docs/bench.md): ``sctab annotate``, 100,000 cells, 5 members: about 1,330 against
1,570 cells/s, peak RSS 2.0 against 3.0 GiB (the kept blocks count). The entry points that train or predict
call it (the training workers, ``sctab annotate``, the served model, the evaluate stage);
``SCTAB_MALLOC=system`` leaves the allocator as it is. :func:`heap_stats` tells the memory kept this way
from live data (``make bench-heap``; docs/bench.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys

ENV = "SCTAB_MALLOC"
#: SCTAB_MALLOC values: keep freed blocks up to the limit (default) or leave glibc's defaults
MODES = ("keep", "system")
#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap and stay there when freed
DEFAULT_LIMIT_MIB = 512


def mode() -> str:
    """SCTAB_MALLOC, checked (default ``keep``)."""
    value = os.environ.get(ENV, "keep").strip().lower() or "keep"
    if value not in MODES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(MODES)}")
    return value


def keep_freed_memory(limit_mib: int = DEFAULT_LIMIT_MIB) -> bool:
    """Serve allocations up to ``limit_mib`` from the heap and keep up to twice that freed for reuse.

    Process-wide and lasting; returns whether it took effect (False: SCTAB_MALLOC=system, not Linux, or a
    C library without glibc's ``mallopt``, such as musl)."""
    libc = None if mode() == "system" else _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not 1 <= int(limit_mib) <= 1023:  # mallopt takes a C int
        raise ValueError(f"limit_mib must be between 1 and 1023, got {limit_mib}")
    limit = int(limit_mib) << 20
    return mallopt(_M_MMAP_THRESHOLD, limit) == 1 and mallopt(_M_TRIM_THRESHOLD, 2 * limit - 1) == 1


def _glibc():
    """The C library when it is glibc (Linux); None elsewhere: musl has neither gnu_get_libc_version nor
    glibc's mallopt and malloc_info."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "malloc_info") else None


def heap_stats() -> dict | None:
    """glibc's own account of its heaps (``malloc_info``), in bytes: ``held`` (what the heaps hold from the
    kernel), ``free`` (freed chunks kept inside them for reuse: what fragmentation costs), ``in_use`` (held -
    free) and ``mmapped`` (blocks served by mmap). None where the C library is not glibc.

    Why: a process's RSS cannot tell live data from memory the allocator keeps after a free; this can."""
    libc = _glibc()
    if libc is None:
        return None
    buf, size = ctypes.c_void_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)]
    libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not stream:
        return None
    try:
        libc.malloc_info(0, stream)
    finally:
        libc.fclose(stream)
    try:
        text = ctypes.string_at(buf, size.value).decode()
    finally:
        libc.free(buf)
    totals = text[text.rfind("</heap>"):]  # the process-wide totals follow the last arena

    def total(pattern: str) -> int:
        return sum(int(v) for v in re.findall(pattern, totals))

    held = total(r'<system type="current" size="(\d+)"')
    free = total(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"')
    return {"held": held, "free": free, "in_use": held - free,
            "mmapped": total(r'<total type="mmap" count="\d+" size="(\d+)"')}


def release_freed_memory() -> bool:
    """Give the freed memory the heaps keep back to the kernel (``malloc_trim(0)``, which also returns free
    pages in the middle of a heap). What stays resident afterwards is live data. False off glibc."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0) in (0, 1))
