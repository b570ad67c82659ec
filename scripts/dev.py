#!/usr/bin/env python3
"""One entry point for a fresh machine that has only Python: builds .venv, installs, runs.

    python3 scripts/dev.py load    # the main job: the contention load benchmark on a temp dir
    python3 scripts/dev.py test    # the whole test suite, one pytest-xdist worker per core
    python3 scripts/dev.py check   # ruff check, ruff format --check, mypy --strict (the versions pinned in [lint])
Extra arguments are passed through (e.g. ``test -k recovery``).
"""

import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")
PY = os.path.join(VENV, "bin", "python")
STAMP = os.path.join(VENV, ".nori-installed")


def ensure_venv() -> None:
    if not os.path.exists(PY):
        venv.EnvBuilder(with_pip=True).create(VENV)
    src = os.path.join(ROOT, "pyproject.toml")
    if not os.path.exists(STAMP) or os.path.getmtime(STAMP) < os.path.getmtime(src):
        # An editable install from pyproject.toml alone needs pip >= 21.3 (PEP 660); the pip that
        # ensurepip bundles with Python 3.9 and early 3.10 is older.
        subprocess.check_call([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-U", "pip"])
        subprocess.check_call([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", f"{ROOT}[dev]"])
        open(STAMP, "w").close()


def main() -> int:
    cmd, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("load", [])
    ensure_venv()
    os.chdir(ROOT)
    if cmd == "test":
        chosen = any(a.startswith(("-n", "--numprocesses", "--dist")) or a == "no:xdist" for a in rest)
        return subprocess.call([PY, "-m", "pytest", *([] if chosen else ["-n", "auto"]), *rest])
    if cmd == "load":
        return subprocess.call([PY, "-m", "nori_wal.cli", "load", *rest])
    if cmd == "check":
        paths = ["nori_wal", "tests", "scripts"]
        steps = [
            [PY, "-m", "ruff", "check", *paths],
            [PY, "-m", "ruff", "format", "--check", *paths],
            [PY, "-m", "mypy", "--strict", "nori_wal"],
        ]
        failed = [" ".join(step[2:4]) for step in steps if subprocess.call(step) != 0]
        if failed:
            print("check failed: " + ", ".join(failed), file=sys.stderr)
        return 1 if failed else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
