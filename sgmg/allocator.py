"""How the C library's ``malloc`` treats large blocks, which decides how often CPU tensors fault in fresh pages.

PyTorch allocates CPU tensors with ``malloc``. glibc serves every block above its mmap threshold (128 KiB at start,
raised at most to 32 MiB as blocks are freed) with a fresh ``mmap`` and returns it to the system on ``free``; the next
tensor of that size is again fresh memory, and the kernel zero-fills each of its 4 KiB pages on first touch. A
forward of SgMg Swin-T on a 5 x 360 x 640 clip allocates hundreds of megabytes of such short-lived tensors: on 2 cores
it took 150-400 thousand page faults and 0.3-0.9 s of system time a forward, about a tenth of its time.

:func:`tune_malloc` pins the mmap threshold at 32 MiB (blocks below it come from the heap) and stops glibc from
trimming the heap, so freed tensors are reused instead of faulted in again (30 thousand faults a forward). The cost:
the process keeps its peak heap instead of giving freed memory back to the system (the same as jemalloc or tcmalloc,
the allocators PyTorch's CPU performance guide suggests preloading). It changes no result.

It is a process-wide setting: ``sgmg`` commands, the Serve replicas and the training workers call it at start;
library users call it themselves. ``SGMG_TUNE_MALLOC=0`` leaves ``malloc`` as it is. No effect (``False``) off glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt() parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 1 << 30


def tune_malloc() -> bool:
    """Keep freed blocks below 32 MiB for reuse (see the module); True if glibc took the setting."""
    if os.environ.get("SGMG_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the C library already loaded into this process
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # musl and others: their own policies
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
