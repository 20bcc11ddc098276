"""Process-wide settings that make PyTorch faster on a CPU. They are read once, when torch (its allocator and
libgomp) starts, so `apply_fast_cpu_env()` must run before `import torch`; the command line does that first.

Measured with benchmarks of issue 6 on the 2-core test machines (AMD EPYC, torch 2.13):
- THP_MEM_ALLOC_ENABLE=1: PyTorch's CPU allocator backs tensors of 2 MB and more with transparent huge pages, so a
  fresh 37 MB activation costs about 900 page faults instead of 9,000 (AlexNet-2012 training step, one thread:
  2.85 instead of 3.21 s).
- OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep at barriers instead of spinning. When other processes share the
  cores, spinning threads stall every parallel region: AlexNet-2012 at batch 1 took 110-320 ms per image with the
  default policy and 40-50 ms with PASSIVE at load 2-3; a training step at batch 32, 4.6-5.0 s against 3.1-4.0 s.
Variables the user has set are left alone.

`keep_freed_memory()` (glibc's malloc, set at run time) is the third setting; see there.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

FAST_CPU_ENV = {"THP_MEM_ALLOC_ENABLE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def apply_fast_cpu_env() -> dict[str, str]:
    """Set the FAST_CPU_ENV variables the user has not set; returns those set now ({} once torch is imported)."""
    if "torch" in sys.modules:
        log.debug("torch is already imported: %s would have no effect", ", ".join(FAST_CPU_ENV))
        return {}
    applied = {k: v for k, v in FAST_CPU_ENV.items() if k not in os.environ}
    os.environ.update(applied)
    return applied


def fast_cpu_env_status() -> dict[str, str | None]:
    """The values in effect for this process (what a benchmark report records)."""
    return {**{k: os.environ.get(k) for k in FAST_CPU_ENV}, "malloc": _malloc_status}


# mallopt(3) parameters (glibc's malloc.h) and the values keep_freed_memory sets: blocks up to 1 GiB come from the
# heap rather than from a fresh mmap, and freed memory at the top of the heap is kept (up to 2 GiB - 1) rather than
# handed back to the kernel.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEPT_MMAP_THRESHOLD = 1 << 30
_KEPT_TRIM_THRESHOLD = (1 << 31) - 1
# The variables (and tunables) by which a user sets these himself: then they are left alone.
_USER_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_malloc_status = "default"


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel; True if it did.

    A training step allocates and frees the same large tensors (activations, gradients) every step. By default
    glibc serves blocks above its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh mmap, and a fresh
    mapping costs a page fault on every page at first touch, every step, plus the kernel's work for huge pages. With
    blocks up to 1 GiB served from the heap and the heap never trimmed, the step reuses the same pages. AlexNet
    training step, batch 32, bf16, 2 threads, 60 steps after 10, 2-core AVX-512 BF16 EPYC (2026-12-02): mean 518-546
    ms against 592-743 ms, system time 3.2-4.4 s against 11.8-16.0 s, and no step above 1.5x the median (5-12 of 60
    before: the "slow step every 8-10 steps" of docs/benchmarks.md). The cost: the process keeps its peak memory
    (1.87 against 1.44 GB peak RSS in that test). A run-time setting (mallopt), so it works after `import torch`;
    skipped where the C library is not glibc, and where the user set any MALLOC_* tuning variable or GLIBC_TUNABLES.
    """
    global _malloc_status
    if not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in os.environ:
        return False
    if any(name in os.environ for name in _USER_MALLOC_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only (musl has mallopt but other meanings)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    gnu_get_libc_version.restype = ctypes.c_char_p
    if not (mallopt(_M_MMAP_THRESHOLD, _KEPT_MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _KEPT_TRIM_THRESHOLD)):
        return False  # refused (an older glibc caps the mmap threshold): the default stays
    _malloc_status = f"glibc {gnu_get_libc_version().decode()}: mmap threshold 1 GiB, no trim (keep_freed_memory)"
    return True


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cores_per_process() -> int:
    """usable_cores() shared among the training processes torchrun started on this machine (LOCAL_WORLD_SIZE)."""
    return max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
