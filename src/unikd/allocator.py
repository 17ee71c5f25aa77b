"""CPU training: stop glibc from handing a step's memory back to the OS, only to fault it in again.

With glibc's defaults, a tensor above the (dynamic, at most 32 MiB) mmap threshold is its own mapping,
returned to the kernel when freed, and the top of the heap is trimmed whenever 2x that threshold is free.
A training step frees most of what it allocates, so the next step page-faults the same memory back in: on
the 2-core development machine, a MiniLM-L6 -> 4x312 KD step took ~40,000 minor faults and ~140 ms of
kernel time. Raising both thresholds once keeps freed blocks in the heap for reuse (docs/performance.md
has the measurement). The price: the process keeps its peak heap until it exits, which a training process
keeps anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1
_applied = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when applied (or already was).

    A no-op returning False where there is no glibc ``mallopt`` (macOS, Windows, musl).
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # 1 GiB: tensors up to it come from the heap; larger ones are rare in a step and stay mmapped
    _applied = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    return _applied
