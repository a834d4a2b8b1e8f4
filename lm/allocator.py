"""Keep glibc from handing each step's large tensors back to the kernel (CPU training on Linux).

A training step frees and reallocates tens of megabytes of (tokens x vocabulary) tensors. By default
glibc returns such blocks to the kernel when they are freed (blocks above its mmap threshold, and free
memory at the top of the heap above its trim threshold), so the next step page-faults them back in,
zero-filled: many times the page faults, and a noticeable share of a small model's step time on CPU
(compare with scripts/benchmark.py --default-malloc). Fixing both thresholds makes freed blocks stay in
the process for the next step; the resident set then stays at its peak.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameters, glibc malloc.h
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit; larger blocks are still mmapped
_TRIM_THRESHOLD = 1 << 30
_TOP_PAD = 64 << 20


def keep_freed_memory() -> bool:
    """Set the thresholds for this process; True if they were set (glibc on Linux), else a no-op."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
            (_M_TOP_PAD, _TOP_PAD),
        )
    )
