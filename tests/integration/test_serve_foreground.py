"""``nori-wal serve --dir D`` without ``--endpoint`` is the writer itself, against a real process.

It runs in the foreground and in our session, on a default ``ipc://`` endpoint
that it prints and records for ``WalClient.for_dir(D)``; SIGTERM ends it with 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
from typing import Any

import pytest
from writer_support import assert_log_is, read_line

from nori_wal import Record, Wal, WalConfig
from nori_wal.client import WalClient
from nori_wal.endpoint_file import ENDPOINT_FILE, SOCKET_NAME, read_endpoint_file


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["short", "long"])
def test_serve_without_an_endpoint_is_the_foreground_writer_on_its_default_ipc_endpoint(
    tmp_path: Any, serve_process: Any, monkeypatch: Any, request: Any, path: str
) -> None:
    # A long directory path cannot hold its socket (sun_path): the socket goes to a private directory of
    # XDG_RUNTIME_DIR, a fresh short directory here (the serve process inherits the environment).
    run_dir = tempfile.mkdtemp(prefix="nw-run-")
    request.addfinalizer(lambda: shutil.rmtree(run_dir, ignore_errors=True))
    monkeypatch.setenv("XDG_RUNTIME_DIR", run_dir)
    d = str(tmp_path / "wal") if path == "short" else str(tmp_path / ("d" * 60) / ("e" * 60) / "wal")
    early = WalClient.for_dir(d, timeout=10)  # made before the writer runs: the default endpoint
    p = serve_process("--dir", d, "--fsync", "always")
    endpoint = read_line(p).strip()  # printed once it serves
    assert endpoint.startswith("ipc://")
    socket_path = endpoint[len("ipc://") :]
    if path == "short":
        assert socket_path == os.path.join(os.path.realpath(d), SOCKET_NAME)
    else:
        private = os.path.dirname(socket_path)
        assert os.path.dirname(private) == run_dir and stat.S_IMODE(os.stat(private).st_mode) == 0o700
    assert os.path.exists(socket_path)
    # The process we started is the writer (nothing was forked off to serve in its place), in our session.
    rec = read_endpoint_file(d)
    assert rec is not None and (rec.endpoint, rec.pid) == (endpoint, p.pid)
    assert os.getsid(p.pid) == os.getsid(0)
    records = [Record.put(b"k%03d" % i, b"v%d" % i) for i in range(50)]
    with WalClient.for_dir(d, timeout=10) as c:
        assert c.endpoint == endpoint
        assert c.info()["pid"] == p.pid
        positions = [c.append(r) for r in records[:10]] + c.append_batch(records[10:])
    assert p.poll() is None  # serves on until it is told to stop
    with early:
        assert early.endpoint == endpoint
        records.append(Record.put(b"early", b"client"))
        positions.append(early.append(records[-1]))
        early.sync()
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert p.stdout.read() == ""  # stdout carried the endpoint only
    assert not os.path.exists(os.path.join(d, ENDPOINT_FILE)) and not os.path.exists(socket_path)
    assert_log_is(d, list(zip(records, positions)))
    wal, info = Wal.open(WalConfig(dir=d))
    wal.close()
    assert info.valid_records == 51 and info.bytes_truncated == 0
