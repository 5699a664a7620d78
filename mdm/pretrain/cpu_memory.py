"""Keep freed CPU memory in the process instead of handing it back to the OS after every large
tensor.

glibc serves allocations above its mmap threshold (dynamic, at most 32 MiB) with fresh mmap()s and
unmaps them on free, so every large activation of a training step pays page faults on first touch,
and it trims the heap top when it is free. A CPU training step allocates and frees the same sizes
over and over; pinning the mmap threshold at its maximum and raising the trim threshold lets those
allocations reuse heap memory. Measured on this 2-core CPU at the cpu-small preset
(``perf/pretrain_throughput.py``): half the minor page faults, fp32 steps 14% faster, bf16 1%. The
price: the process keeps its peak heap size until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems
TRIM_THRESHOLD = 2 ** 31 - 1


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; returns False (and changes nothing) where the C library is not
    glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # no loadable C library, or one without mallopt (not glibc)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD,
                        MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
