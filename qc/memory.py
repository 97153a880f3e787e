"""Process-wide memory setting for assessing large volumes (issue: reliability, item 5).

glibc's malloc serves a request from its heap, not from a fresh ``mmap``, once a chunk of that size has been
freed: its mmap threshold rises to the largest freed chunk (up to 32 MiB), and the trim threshold to twice
that. The working-grid masks, label images and per-slice-chunk temporaries of segmentation and metrics (4-30 MiB
each) then end up on the heap, where freed memory is kept by the process instead of returned to the system:
on the 512 x 512 x 300 benchmark the resident set held ~90 MiB more than numpy had allocated (tracemalloc)
when the full-size masks were built. A fixed threshold of 4 MiB (which also switches the dynamic adjustment off)
returns every array of 4 MiB or more to the system as soon as it is freed; smaller ones (single slices) stay on
the heap, where reuse is fast. No effect (and no error) outside glibc.
"""

from __future__ import annotations

import ctypes
import sys

_M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
MMAP_THRESHOLD_BYTES = 4 << 20
_set = False


def return_large_arrays_to_the_system() -> bool:
    """Set glibc's mmap threshold to :data:`MMAP_THRESHOLD_BYTES` (once per process). True when set."""
    global _set
    if _set:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        _set = bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    return _set
