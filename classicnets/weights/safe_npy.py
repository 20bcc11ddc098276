"""Read a pickled object out of an `.npy` file without letting the pickle run code.

`bvlc_alexnet.npy` is `np.save(path, {layer: [weights, biases]})`: an .npy header describing a 0-d object array,
followed by a pickle of that array. numpy's loader with pickles allowed would unpickle it with the full `pickle` module,
so a file from a stranger could call any function (`os.system`, ...). Here the header is parsed with numpy's own
reader (which uses `ast.literal_eval`) and the pickle with an Unpickler whose `find_class` hands out only the few
numpy functions that rebuild arrays and dtypes. Dicts, lists, tuples, strings, bytes and numbers are pickle opcodes,
not globals, so they need no permission. Anything else is refused; there is no fallback to an unsafe load.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format
from numpy._core import multiarray as _multiarray
from numpy._core import numeric as _numeric

from classicnets.errors import WeightsError, first_line
from classicnets.safe_pickle import latin1_encode, load_allowlisted

# (module, name) -> the object the pickle may use. numpy 1.x wrote `numpy.core.*`, numpy 2 writes `numpy._core.*`;
# both map to the same functions, without importing numpy.core (a deprecated alias in numpy 2).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): latin1_encode,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _multiarray._reconstruct  # empty array of a dtype
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _multiarray.scalar  # a numpy scalar from dtype + bytes
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _numeric._frombuffer  # type: ignore[attr-defined]  # protocol-5 arrays


def load_pickled_npy(path: str | Path) -> Any:
    """The object pickled inside an `.npy` file (a 0-d object array is unwrapped), loaded without running code.

    Raises WeightsError (one line naming the file) for a file that is not .npy, is truncated or garbled, holds a
    plain numeric array instead of a pickle, or whose pickle asks for anything beyond the allowed globals.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            try:
                version = npy_format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = npy_format.read_array_header_1_0(f)
                else:  # 2.0 and 3.0 differ from 1.0 only in the header length field (and 3.0 in its encoding)
                    shape, _, dtype = npy_format.read_array_header_2_0(f)
            except Exception as e:  # ValueError, SyntaxError, tokenize.TokenError ... from a damaged header
                raise WeightsError(f"{path}: not a readable .npy file ({first_line(e)})") from None
            if not dtype.hasobject:
                raise WeightsError(
                    f"{path}: holds a plain {dtype} array of shape {shape}, not the pickled dict of layers "
                    "that bvlc_alexnet.npy holds"
                )
            # Latin-1 strings (load_allowlisted): Python 2 pickles (the original bvlc_alexnet.npy) store array data
            # as `str`.
            obj = load_allowlisted(
                f,
                _ALLOWED,
                where=str(path),
                error=WeightsError,
                refused="the pickle inside asks for code ({message}); only dicts, lists, strings, numbers and "
                "numpy arrays are loaded",
                corrupt="truncated or corrupt pickle",
            )
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({first_line(e)})") from None
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        obj = obj.item()  # np.save wraps the dict in a 0-d object array
    return obj
