"""The process's heap: memory that a command frees goes back to the system.

glibc serves an allocation below its mmap threshold from the heap and keeps what is freed there; the
threshold rises by itself to the size of the largest mapped block freed (up to 32 MiB). A command that
makes and drops many tensors of a few MiB each (pruning a big network layer by layer) then holds
hundreds of MiB it no longer uses: resnet152's random ticket peaked at 1.7 GB instead of 1.0 GB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_MMAP_THRESHOLD = -3  # mallopt's parameter (glibc's malloc.h)
THRESHOLD = 1 << 20


@functools.lru_cache(maxsize=1)
def map_large_blocks() -> bool:
    """Serve every block of 1 MiB or more by its own mapping, returned to the system when freed (a fixed mmap
    threshold: it no longer rises). For commands that build, prune, read or write big tickets; not for
    training loops, which reuse their buffers step after step and would map and unmap them every time.
    Returns whether it took effect (False off glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):
        return False
