"""Unpickling without running code: a pickle may name only the globals its reader allows.

A pickle rebuilds objects by calling whatever functions it names (`os.system`, `builtins.eval`, ...), so the
standard `pickle.load` on a stranger's file runs the stranger's code. `AllowlistUnpickler` resolves a name only
through an explicit table and refuses every other one before anything is called. Dicts, lists, tuples, strings,
bytes and numbers are pickle opcodes, not globals, so they need no permission. Readers of pickled files
(`weights/safe_npy.py` for Caffe's `.npy`, `data/cifar.py` for CIFAR's batches) pass their own table.
"""

from __future__ import annotations

import _codecs
import pickle
from collections.abc import Mapping
from typing import IO, Any

from classicnets.errors import ClassicNetsError, first_line

_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1"}


def latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` limited to Latin-1: how Python 3 pickles bytes at protocol 2 (numpy array data)."""
    if not isinstance(text, str) or encoding.lower() not in _LATIN1 or errors != "strict":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return _codecs.encode(text, "latin1")


class AllowlistUnpickler(pickle.Unpickler):
    """An Unpickler whose globals come only from `allowed`: {(module, name): the object to hand out}.

    Any other global raises pickle.UnpicklingError("refused global module.name") before it is imported or called.
    """

    def __init__(self, file: IO[bytes], allowed: Mapping[tuple[str, str], Any], **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def load_allowlisted(
    file: IO[bytes],
    allowed: Mapping[tuple[str, str], Any],
    *,
    where: str,
    error: type[ClassicNetsError],
    refused: str,
    corrupt: str,
) -> Any:
    """Unpickle `file` with only the `allowed` globals (strings as Latin-1, which turns Python 2 pickles' byte
    strings back into the original bytes, as numpy documents). Every failure is one `error` line naming `where`:
    "{where}: refused: {refused} (refused global ...)" or "{where}: {corrupt} (what broke)"."""
    try:
        return AllowlistUnpickler(file, allowed, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        message = first_line(e)
        if message.startswith("refused"):
            raise error(f"{where}: refused: {refused.format(message=message)}") from None
        raise error(f"{where}: {corrupt} ({message})") from None
    except Exception as e:  # garbled bytes fail in many ways (EOFError, ValueError, KeyError, struct.error, ...)
        raise error(f"{where}: {corrupt} ({type(e).__name__}: {first_line(e)})") from None
