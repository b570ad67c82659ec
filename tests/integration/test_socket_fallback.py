"""Where the log directory cannot hold a unix socket (FUSE, some network file systems), the writer serves
from a private runtime directory and records it in DIR/WRITER; an I/O error at start exits 4 and leaves
nothing behind. The bind failure is injected (a real FUSE mount is not needed): ZeroMQ's bind of
DIR/writer.sock raises what bind(2) says on such a file system."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from typing import Iterator

import pytest
import zmq

from nori_wal import Record, WalConfig
from nori_wal.client import WalClient
from nori_wal.endpoint_file import default_endpoint, read_endpoint_file, runtime_endpoint
from nori_wal.exit_codes import EXIT_USAGE
from nori_wal.writer_proc.loop import FatalStop
from nori_wal.writer_proc.server import WriterSpec, open_writer


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A short $XDG_RUNTIME_DIR (pytest's tmp paths are too long for a socket address)."""
    path = tempfile.mkdtemp(prefix="nw-run-", dir="/tmp")
    monkeypatch.setenv("XDG_RUNTIME_DIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _refuse_bind(monkeypatch: pytest.MonkeyPatch, endpoint: str, err: int) -> None:
    real_bind = zmq.Socket.bind

    def bind(self: zmq.Socket, addr: str) -> object:
        if addr == endpoint:
            raise zmq.ZMQError(err)
        return real_bind(self, addr)

    monkeypatch.setattr(zmq.Socket, "bind", bind)


def _path(endpoint: str) -> str:
    assert endpoint.startswith("ipc://")
    return endpoint[len("ipc://") :]


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM])
def test_a_directory_without_sockets_is_served_from_a_private_runtime_dir(tmp_path, monkeypatch, run, err):
    d = str(tmp_path / "wal")
    _refuse_bind(monkeypatch, default_endpoint(d), err)
    old_umask = os.umask(0)  # the private directory and the socket are owner-only whatever the umask
    try:
        server = open_writer(WriterSpec(config=WalConfig(dir=d)))
    finally:
        os.umask(old_umask)
    rfd, wfd = os.pipe()
    codes: list[int] = []
    loop = threading.Thread(target=lambda: codes.append(server.serve(rfd)))
    loop.start()
    fallback = runtime_endpoint(d)
    sock_path = _path(fallback)
    try:
        assert server.endpoint == fallback and os.path.dirname(sock_path).startswith(run)
        record = read_endpoint_file(d)
        assert record is not None and record.endpoint == fallback
        private = os.stat(os.path.dirname(sock_path))
        assert private.st_uid == os.geteuid() and stat.S_IMODE(private.st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode) and stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        assert not os.path.exists(os.path.join(d, "writer.sock"))
        with WalClient.for_dir(d, timeout=20) as c:  # finds it through DIR/WRITER
            assert c.append(Record.put(b"k", b"v")).segment_id == 0
    finally:
        server.stop("test")
        os.write(wfd, b"x")  # the watcher wakes the loop
        loop.join(30)
        os.close(wfd)
        os.close(rfd)
    assert codes == [0]
    assert not os.path.exists(sock_path) and read_endpoint_file(d) is None


def test_a_runtime_dir_that_is_not_this_users_directory_is_never_used(tmp_path, monkeypatch, run):
    d = str(tmp_path / "wal")
    planted = tmp_path / "elsewhere"
    planted.mkdir()
    os.symlink(planted, os.path.dirname(_path(runtime_endpoint(d))))  # someone's link where ours would go
    _refuse_bind(monkeypatch, default_endpoint(d), errno.ENOSYS)
    with pytest.raises(FatalStop) as info:
        open_writer(WriterSpec(config=WalConfig(dir=d)))
    assert info.value.exit_code == EXIT_USAGE and "not a directory of this user" in info.value.reason
    assert os.listdir(planted) == []
    assert read_endpoint_file(d) is None
    assert not os.path.exists(os.path.join(d, "writer.sock"))


# Run `nori-wal serve` with one failure injected at start; the log is created, then the failure hits.
_SERVE = """
import errno, json, sys, types
import zmq
import nori_wal.endpoint_file as ef
from nori_wal.cli import main
where, d = sys.argv[1], sys.argv[2]
def fail(*_a, **_k):
    raise OSError(errno.ENOSPC if where == "writer-file" else errno.EIO, "injected")
if where == "writer-file":  # the disk fills while DIR/WRITER is written (its tmp file exists)
    ef.json = types.SimpleNamespace(dump=fail, load=json.load)
else:  # bind(2) of DIR/writer.sock fails with EIO
    real_bind = zmq.Socket.bind
    def bind(self, addr):
        if addr == ef.default_endpoint(d):
            raise zmq.ZMQError(errno.EIO)
        return real_bind(self, addr)
    zmq.Socket.bind = bind
sys.exit(main(["serve", "--dir", d]))
"""


@pytest.mark.parametrize("where", ["writer-file", "bind"])
def test_an_io_error_at_start_exits_4_and_leaves_nothing_behind(tmp_path, where):
    d = tmp_path / "wal"
    proc = subprocess.run([sys.executable, "-c", _SERVE, where, str(d)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("nori-wal serve: error:")]
    assert len(errors) == 1, proc.stderr
    left = sorted(os.listdir(d))
    assert not [n for n in left if n.startswith("WRITER") or n == "writer.sock"], left
    # What stays is the log itself (closed cleanly) and the ipc claim's lock file, kept by design.
    assert set(left) <= {"LOCK", "DURABLE", "LOG_ID", "writer.sock.lock"} | {n for n in left if n.endswith(".wal")}
