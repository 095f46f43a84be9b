"""Read official SMPL-X ``.pkl`` files without running arbitrary pickled code.

The official pickles hold numpy arrays, ``scipy.sparse`` matrices and ``chumpy.Ch``
objects (chumpy does not install on current Python). ``SafeModelUnpickler`` builds
only numpy/scipy arrays; a chumpy object becomes a stub whose array is its ``x``;
every other global (``os.system``, ``builtins.eval``, ...) is refused.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("copyreg", "_reconstructor"), ("builtins", "object"), ("_codecs", "encode"),
}
_SPARSE = {"csc_matrix", "csr_matrix", "coo_matrix"}
_SPARSE_MODULES = {"scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr",
                   "scipy.sparse._csr", "scipy.sparse.coo", "scipy.sparse._coo"}


class _ChumpyStub:
    """Stands in for ``chumpy.Ch``; keeps the pickled state, whose array is ``x``."""

    def __init__(self, *args, **kwargs):
        self.state: dict = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"x": state}

    def array(self) -> np.ndarray:
        if "x" not in self.state:
            raise pickle.UnpicklingError("a chumpy object in the file carries no array 'x'")
        return np.asarray(self.state["x"])


class SafeModelUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy/scipy arrays (and chumpy stubs)."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("chumpy"):
            return _ChumpyStub
        if (module, name) in _ALLOWED:
            mod = __import__(module, fromlist=[name])
            return getattr(mod, name)
        if module in _SPARSE_MODULES and name in _SPARSE:
            import scipy.sparse
            return getattr(scipy.sparse, name)
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: body-model pickles may only contain numpy/scipy "
            "arrays. The file is not an SMPL-X model file, or it was tampered with.")


def _plain(value: Any) -> Any:
    if isinstance(value, _ChumpyStub):
        return value.array()
    if hasattr(value, "toarray") and hasattr(value, "tocsr"):  # scipy.sparse
        return np.asarray(value.toarray())
    return value


def load_model_pickle(path: str | Path) -> dict[str, Any]:
    """Read a body-model ``.pkl`` into plain numpy arrays.

    Args:
        path: the ``.pkl`` file.
    Returns:
        dict of key -> np.ndarray (strings and scalars are kept as numpy values).
    Raises:
        ValueError: the file is not a pickle of a dict, or asks for a disallowed class.
    """
    data = Path(path).read_bytes()
    try:
        obj = SafeModelUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{Path(path).name}: {e}") from None
    except Exception as e:  # truncated or not a pickle at all
        raise ValueError(f"{Path(path).name}: not a readable body-model pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{Path(path).name}: expected a dict of arrays, got {type(obj).__name__}")
    return {str(k): _plain(v) for k, v in obj.items()}
