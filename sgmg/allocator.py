"""How the C library's ``malloc`` treats large blocks, which decides how often CPU tensors fault in fresh pages.

PyTorch allocates CPU tensors with ``malloc``. glibc gives blocks above its mmap threshold (128 KiB at start, raised
as blocks are freed, to at most 32 MiB) their own fresh ``mmap``, unmapped again on ``free``, and hands the top of its
heap back to the system whenever more than twice that threshold is free there; the kernel then zero-fills every 4 KiB
page of the next tensor placed there on first touch. A forward of SgMg Swin-T on a 5 x 360 x 640 clip allocates and
frees gigabytes of such intermediates: on 2 cores it took 150-400 thousand page faults and 0.3-0.9 s of system time a
forward, about a tenth of its time.

:func:`tune_malloc` pins the mmap threshold at 32 MiB and the trim threshold at 1 GiB, so tensors below 32 MiB reuse
heap memory already faulted in (0-100 thousand faults a forward; blocks above 32 MiB are still mapped afresh). The
cost: the process keeps its peak heap instead of giving freed memory back to the system (as jemalloc or tcmalloc, the
allocators PyTorch's CPU performance guide suggests preloading, do). It changes no result.

It is a process-wide setting: ``sgmg`` commands, the Serve replicas and the training workers call it at start;
library users call it themselves. ``SGMG_TUNE_MALLOC=0`` (or ``false``/``off``/``no``) leaves ``malloc`` as
it is. No effect (``False``) off glibc.
"""

from __future__ import annotations

import ctypes
import sys

from sgmg.config_io import env_switch

ENV = "SGMG_TUNE_MALLOC"

M_TRIM_THRESHOLD = -1  # glibc mallopt() parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 1 << 30


def tune_malloc() -> bool:
    """Keep freed blocks below 32 MiB for reuse (see the module); True if glibc took the setting."""
    if not env_switch(ENV) or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the C library already loaded into this process
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # musl and others: their own policies
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
