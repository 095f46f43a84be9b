"""Command line: ``python -m blade_nodes {demo,open-body,test}``.

Run with any Python >= 3.10: the first call creates ``.venv`` in the repository root,
installs what the pack needs (CPU torch pinned by ``constraints.txt``) and re-runs itself
inside it. Later calls reuse it.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
REQUIREMENT_FILES = ("requirements.txt", "requirements-dev.txt")


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def _requirements_digest() -> str:
    h = hashlib.sha256()
    for name in (*REQUIREMENT_FILES, "constraints.txt"):
        p = REPO / name
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()


def ensure_venv() -> None:
    """Create/refresh ``.venv`` and re-exec inside it (no-op when already inside and current)."""
    if os.environ.get("BLADE_NO_VENV") == "1":
        return
    stamp = VENV / ".blade-requirements"
    digest = _requirements_digest()
    if _in_venv() and stamp.exists() and stamp.read_text() == digest:
        return
    if not _venv_python().exists():
        print(f"[blade-nodes] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not (stamp.exists() and stamp.read_text() == digest):
        print("[blade-nodes] installing requirements (CPU torch pinned in constraints.txt)", flush=True)
        cmd = [str(_venv_python()), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt")]
        for name in REQUIREMENT_FILES:
            cmd += ["-r", str(REPO / name)]
        subprocess.run(cmd, check=True)
        stamp.write_text(digest)
    if not _in_venv():
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        sys.exit(subprocess.call([str(_venv_python()), "-m", "blade_nodes", *sys.argv[1:]],
                                 cwd=os.getcwd(), env=env))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blade_nodes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="synthetic close-range photo through every stage")
    demo.add_argument("--out", required=True, help="folder for the results (created)")
    demo.add_argument("--seed", type=int, default=0)
    ob = sub.add_parser("open-body", help="build (if needed) the free open body model")
    ob.add_argument("--path", action="store_true", help="print the model file's path last")
    ob.add_argument("--rebuild", action="store_true", help="build again even if cached")
    t = sub.add_parser("test", help="run the test suite (pytest arguments may follow)")
    t.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    ensure_venv()
    if args.command == "test":
        import pytest
        return pytest.main(["-q", str(REPO / "tests"), *args.pytest_args])
    if args.command == "open-body":
        from .body.open_body import ensure_open_body
        path = ensure_open_body(rebuild=args.rebuild)
        if args.path:
            print(path)
        return 0
    if args.command == "demo":
        from .demo import run_demo
        run_demo(Path(args.out), seed=args.seed)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
