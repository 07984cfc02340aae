"""Process-level performance settings the ``deps`` program applies (never the library on its own).

- :func:`tune_cpu_allocator`: glibc returns every large freed block to the OS and faults fresh pages in on the next
  allocation. A per-subnet backward allocates and frees the same large activation gradients every step, so on the
  CPU the page faults cost 10–20 % of a step (measured on this project's 2-core machine, 2026-11-21: DεpS step of
  ``ofa_mbv3_32`` w0.5, batch 64, 2.31 s → 2.07 s, when the step's backward still recorded its graph as
  ``torch.func.grad`` makes it, which keeps more buffers alive at once). Raising the mmap and trim thresholds keeps
  freed memory in the process. It changes nothing on CUDA (PyTorch's caching allocator) and is a no-op where glibc's
  ``mallopt`` is absent.
- :func:`cpu_threads`: one compute thread per core, leaving the loader's decoding thread its share; oversubscribed
  OpenMP threads spin and each op slows by orders of magnitude.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

__all__ = ["tune_cpu_allocator", "cpu_threads"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_cpu_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 34, top_pad: int = 256 << 20) -> bool:
    """Keep freed heap memory in the process (glibc ``mallopt``); returns whether the settings took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, min(mmap_threshold, (1 << 31) - 1)) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, (1 << 31) - 1)) == 1
    ok &= mallopt(_M_TOP_PAD, min(top_pad, (1 << 31) - 1)) == 1
    return bool(ok)


def cpu_threads(loader_threads: int = 1, local_processes: int = 1) -> int:
    """Set torch's intra-op threads to this process's share of the cores, less ``loader_threads`` when more than two
    are left; returns the count. ``local_processes``: training processes on this machine (they split the cores).
    An explicit ``OMP_NUM_THREADS`` in the environment wins (the user or a launcher already chose)."""
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        n = max(1, int(os.environ["OMP_NUM_THREADS"]))
        torch.set_num_threads(n)
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cores // max(1, local_processes))
    n = max(1, share - loader_threads) if share > 2 else share
    torch.set_num_threads(n)
    return n
