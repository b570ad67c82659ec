"""Importing the package in a fresh interpreter: the clients (and pyzmq) load only when first used."""

import subprocess
import sys


def test_importing_the_package_does_not_load_zeromq():
    """The clients load lazily: an embedded-only user does not pay for pyzmq."""
    code = "import sys, nori_wal; print('zmq' in sys.modules); nori_wal.WalClient; print('zmq' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "True"]
