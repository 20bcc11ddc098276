"""Random number generators: seeds mixed from several integers, and every global RNG seeded, saved and restored.

The data pipeline draws per-sample and per-batch randomness from generators seeded by `mix_seed(seed, epoch, ...)`,
so what an epoch draws depends only on (seed, epoch); a training checkpoint saves the global generators'
states (`capture_rng`) as plain lists and tensors, so `torch.load(weights_only=True)` can read them back.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from several integers (numpy's SeedSequence hashing), for torch generators."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's random and numpy's global generator from the config seed."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def capture_rng() -> dict[str, Any]:
    """Every global RNG state, as tensors and plain lists."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_state(), "numpy": _numpy_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
