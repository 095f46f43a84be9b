"""Where files come from and go to; nothing is ever written outside the output folder.

Inside ComfyUI, nodes.py passes ComfyUI's folders in. Outside it:
``$BLADE_MODELS_DIR`` (default ``./models``) holds ``smplx/``, ``blade/`` and
``depthanything/``; ``$BLADE_OUTPUT_DIR`` (default ``./output``) receives every file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path


class UnsafePathError(ValueError):
    """A file name or prefix that would leave the output folder."""


def models_root() -> Path:
    return Path(os.environ.get("BLADE_MODELS_DIR") or "models").absolute()


def model_dirs(kind: str) -> list[Path]:
    """Folders searched for model files of ``kind`` ("smplx", "blade", "depthanything")."""
    return [models_root() / kind]


def cache_root() -> Path:
    """Where built or converted files are cached: ``$BLADE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/blade-nodes``, else ``~/.cache/blade-nodes``."""
    root = os.environ.get("BLADE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "blade-nodes")
    return Path(root)


def output_root() -> Path:
    return Path(os.environ.get("BLADE_OUTPUT_DIR") or "output").absolute()


def inside(root: str | Path, candidate: str | Path) -> Path:
    """``candidate`` (relative to ``root`` or absolute) resolved, if it stays inside ``root``.

    Raises:
        UnsafePathError: the resolved path (symlinks followed) is outside ``root``.
    """
    root_r = Path(root).resolve()
    path = (root_r / candidate).resolve()
    if path != root_r and root_r not in path.parents:
        raise UnsafePathError(
            f"'{candidate}' leads outside the output folder {root_r}; use a plain name or a "
            "sub-folder such as 'blade/person'")
    return path


def output_path(filename_prefix: str, ext: str, root: str | Path | None = None) -> Path:
    """A new, numbered file path ``<root>/<prefix>_00001_.<ext>`` inside the output folder.

    Args:
        filename_prefix: name, optionally with sub-folders ("blade/frame"); no "..", no
            absolute paths.
        ext: extension without the dot.
        root: output folder (default ``output_root()``).
    Raises:
        UnsafePathError: the prefix would leave the output folder or is empty.
    """
    root = Path(root) if root is not None else output_root()
    prefix = (filename_prefix or "").strip().replace("\\", "/")
    if not prefix or prefix.endswith("/"):
        raise UnsafePathError(f"filename_prefix {filename_prefix!r}: give a file name, e.g. 'blade'")
    if prefix.startswith("/") or re.match(r"^[A-Za-z]:", prefix) or ".." in prefix.split("/"):
        raise UnsafePathError(
            f"filename_prefix {filename_prefix!r} leads outside the output folder; use a plain "
            "name or a sub-folder such as 'blade/person'")
    if not re.fullmatch(r"[\w\-. /]+", prefix):
        raise UnsafePathError(f"filename_prefix {filename_prefix!r}: use letters, digits, "
                              "'_', '-', '.', ' ' and '/' only")
    base = inside(root, prefix)
    base.parent.mkdir(parents=True, exist_ok=True)
    inside(root, base.parent)  # a symlinked sub-folder must not lead out either
    stem = base.name
    taken = [p.name for p in base.parent.glob(f"{stem}_*_.*")]
    numbers = [int(m.group(1)) for n in taken if (m := re.fullmatch(re.escape(stem) + r"_(\d+)_\..*", n))]
    counter = max(numbers, default=0) + 1
    return base.parent / f"{stem}_{counter:05d}_.{ext}"


def input_path(path: str, root: str | Path | None = None) -> Path:
    """An input file: absolute, or relative to ``root`` (ComfyUI's input folder) or the cwd."""
    p = Path(path.strip().strip('"'))
    if p.is_absolute() or root is None:
        return p
    cand = Path(root) / p
    return cand if cand.exists() or not p.exists() else p
