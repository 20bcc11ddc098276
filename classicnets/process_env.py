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
"""

from __future__ import annotations

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
    return {k: os.environ.get(k) for k in FAST_CPU_ENV}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cores_per_process() -> int:
    """usable_cores() shared among the training processes torchrun started on this machine (LOCAL_WORLD_SIZE)."""
    return max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
