"""onnxruntime on our own ONNX export: the one place that builds a session (bench's "onnxruntime" row and
`predict --runtime onnxruntime`), and the cache of exported graphs that predict keeps.

The cache: the graph exported from a weight file is kept as `<weights file name>.<first 16 hex digits of the file's
SHA-256>.onnx`, beside the weights when that folder can be written, else in <cache>/onnx/ (cache as for downloaded
weights: CLASSICNETS_HOME, else $XDG_CACHE_HOME/classicnets, else ~/.cache/classicnets). The key is the bytes of the
weights, not their name or time stamp, so a checkpoint rewritten in place (last.pt, every epoch) gets a new graph and
a copied file finds its old one. A new graph written beside the weights removes the older graphs of that file name
there, so a checkpoint predicted after every epoch leaves one graph behind, not one per epoch (in <cache>/onnx the
files of one name may come from several read-only folders, so none is removed). When neither folder can be
written, the graph is kept in memory for that run (a warning says so).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from classicnets.errors import UsageError, WriteError, first_line
from classicnets.fileio import atomic_write_bytes
from classicnets.models.base import ClassicNet

log = logging.getLogger(__name__)

KEY_HEX_DIGITS = 16  # 64 bits of SHA-256: a collision between two weight files of one name is not a concern


def import_onnxruntime(needed_by: str) -> ModuleType:
    """The onnxruntime module, or UsageError naming what needs it and the install command."""
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(f"{needed_by} needs onnxruntime: pip install 'classicnets[onnx]'") from None
    return onnxruntime


def onnxruntime_session(graph: str | os.PathLike | bytes, threads: int) -> Any:
    """An onnxruntime InferenceSession on `graph` (an .onnx file or its bytes) with the CPU provider, `threads` intra-op
    threads (callers pass torch's count, so both runtimes get the same cores) and one inter-op thread."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning workers would keep burning the cores for a while after each run, into bench's interleaved turn of
    # the other path or predict's decoding of the next batch; without spinning onnxruntime itself measured as fast
    # or faster here (48 vs 65 ms at load 3, 2 threads).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = graph if isinstance(graph, bytes) else os.fspath(graph)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def cached_graph_name(weights_file: Path) -> str:
    """`<weights file name>.<first 16 hex digits of its SHA-256>.onnx` (the file is read in 8 MiB blocks)."""
    from classicnets.weights.hub import sha256_of

    return f"{weights_file.name}.{sha256_of(weights_file)[:KEY_HEX_DIGITS]}.onnx"


def graph_cache_dir() -> Path:
    """<cache>/onnx, beside <cache>/weights where downloaded weights go (weights.hub.cache_dir)."""
    from classicnets.weights.hub import cache_dir

    return cache_dir() / "onnx"


def session_for_weights(model: ClassicNet, weights_file: Path | None, threads: int) -> Any:
    """An onnxruntime session on the ONNX graph of `model`, whose weights were read from `weights_file`: the cached
    graph when there is one, else one exported now and cached (see the module docstring). `weights_file` None (a
    model given as a module) exports into memory, uncached."""
    if weights_file is None:
        return onnxruntime_session(_export(model), threads)
    name = cached_graph_name(weights_file)
    folders = [weights_file.parent, graph_cache_dir()]
    for folder in folders:
        cached = folder / name
        if cached.is_file():
            try:
                session = onnxruntime_session(cached, threads)
            except Exception as e:  # onnxruntime's errors (InvalidProtobuf, Fail) derive from Exception only
                log.warning("the cached ONNX graph %s cannot be loaded (%s): exporting it again", cached, first_line(e))
                continue
            log.info("ONNX graph: %s (cached)", cached)
            return session
    start = time.perf_counter()
    data = _export(model)
    export_s = time.perf_counter() - start
    failures = []
    for folder in folders:
        target = folder / name
        try:
            atomic_write_bytes(target, data)
        except WriteError as e:
            failures.append(first_line(e))
            continue
        if folder == weights_file.parent:
            _remove_older_graphs(folder, weights_file.name, keep=name)
        log.info("exported the ONNX graph in %.1f s and cached it as %s", export_s, target)
        return onnxruntime_session(target, threads)
    log.warning("the ONNX graph could not be cached (%s): it is kept in memory for this run", "; ".join(failures))
    return onnxruntime_session(data, threads)


def _export(model: ClassicNet) -> bytes:
    """The float32 ONNX graph of `model` (input "input", N x C x H x W, N dynamic; output "logits"), checked with
    onnx.checker and compared with PyTorch on random batches: done once per weight file, and a graph that went wrong
    would otherwise give wrong predictions on every later run."""
    from classicnets.weights.export import export_bytes

    data, _ = export_bytes(model, fmt="onnx", verify=True)
    return data


def _remove_older_graphs(folder: Path, weights_name: str, *, keep: str) -> None:
    """Remove `<weights_name>.<16 hex>.onnx` files other than `keep`: graphs of earlier contents of that file."""
    pattern = re.compile(rf"{re.escape(weights_name)}\.[0-9a-f]{{{KEY_HEX_DIGITS}}}\.onnx")
    with contextlib.suppress(OSError):
        for old in folder.iterdir():
            if old.name != keep and pattern.fullmatch(old.name) and old.is_file():
                with contextlib.suppress(OSError):
                    old.unlink()
                    log.info("removed %s (the graph of an earlier %s)", old, weights_name)
