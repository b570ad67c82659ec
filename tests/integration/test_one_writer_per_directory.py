"""One writer per directory, refused *at once*, against real writer processes.

A directory held by a live writer (an embedded ``Wal`` in this or another
process, ``nori-wal serve``, ``WriterProcess.spawn``) refuses ``Wal.open`` (here
and in another process) and ``WriterProcess.spawn`` with ``WalLockedError``, and
``nori-wal serve`` with exit 3 and a one-line reason, leaving the live writer as
it was. No timing is measured: the holder never lets go before the contender
has failed, so a contender that waited for the lock would wait forever, and the
test would fail at its timeout instead of passing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any, Callable, Iterator, Optional

import pytest
from writer_support import keys_in, read_line

from nori_wal import Position, Record, Wal, WalConfig, WalLockedError
from nori_wal.client import WalClient
from nori_wal.endpoint_file import ENDPOINT_FILE, SOCKET_NAME, read_endpoint_file
from nori_wal.writer_proc import WriterProcess

# Holds DIR with an embedded Wal (one record appended) until its stdin is closed: it never lets go first.
_EMBEDDED_HOLDER = """
import sys
from nori_wal import Record, Wal, WalConfig
wal, _ = Wal.open(WalConfig(dir=sys.argv[1]))
wal.append(Record.put(b"held", b"by an embedded Wal"))
print("holding", flush=True)
sys.stdin.read()
wal.close()
"""

# Tries Wal.open(DIR) in a process of its own; prints the outcome (exit 0 only for WalLockedError).
_CONTENDER = """
import sys
from nori_wal import Wal, WalConfig, WalLockedError
try:
    wal, _ = Wal.open(WalConfig(dir=sys.argv[1]))
except WalLockedError as exc:
    print("WalLockedError", exc)
    sys.exit(0)
wal.close()
print("opened")
sys.exit(1)
"""


@pytest.fixture
def embedded_holder() -> Iterator[Callable[[str], "subprocess.Popen[str]"]]:
    """``embedded_holder(dir)``: a process holding ``dir`` with an embedded Wal until its stdin closes."""
    procs: list[subprocess.Popen[str]] = []

    def start(directory: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", _EMBEDDED_HOLDER, directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        assert read_line(p) == "holding\n", p.stderr.read() if p.stderr else ""
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()


def release(holder: subprocess.Popen[str]) -> None:
    """Let an embedded holder close its Wal and exit; it must do so cleanly."""
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(30) == 0, holder.stderr.read() if holder.stderr else ""


def contend_in_another_process(directory: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CONTENDER, directory], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and out.stdout.startswith("WalLockedError"), (out.stdout, out.stderr)


def serve_refused(serve_process: Any, *args: str) -> str:
    """``nori-wal serve ARGS`` on a held directory: exit 3, one line on stderr saying so, no endpoint printed."""
    p = serve_process(*args)
    assert p.wait(60) == 3
    err = p.stderr.read()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "locked" in lines[0] and "Traceback" not in err, err
    assert p.stdout.read() == ""
    return str(lines[0])


def assert_every_other_writer_refused(path: str, serve_process: Any) -> None:
    """Every way to open a second writer on ``path`` fails at once: ``Wal.open`` here and in another
    process, ``WriterProcess.spawn`` (default and tcp endpoints), ``nori-wal serve`` (with and without one)."""
    with pytest.raises(WalLockedError):
        Wal.open(WalConfig(dir=path))
    contend_in_another_process(path)
    for endpoint in (None, "tcp://127.0.0.1:*"):
        with pytest.raises(WalLockedError):
            WriterProcess.spawn(WalConfig(dir=path), endpoint, timeout=60)
    serve_refused(serve_process, "--dir", path)
    serve_refused(serve_process, "--dir", path, "--endpoint", "tcp://127.0.0.1:*")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["another process", "this process"])
def test_a_directory_held_by_an_embedded_wal_refuses_every_other_writer_at_once(
    tmp_path: Any, serve_process: Any, embedded_holder: Any, where: str
) -> None:
    d = str(tmp_path / "wal")
    held: Optional[Wal] = None
    holder = None
    if where == "another process":
        holder = embedded_holder(d)
    else:
        held, _ = Wal.open(WalConfig(dir=d))
        held.append(Record.put(b"held", b"by an embedded Wal"))
    assert_every_other_writer_refused(d, serve_process)
    # Nothing was disturbed: no contender recorded an endpoint or left a socket, the holder still holds.
    assert not os.path.exists(os.path.join(d, ENDPOINT_FILE))
    assert not os.path.exists(os.path.join(d, SOCKET_NAME))
    if holder is not None:
        assert holder.poll() is None
        release(holder)
    else:
        assert held is not None
        assert held.append(Record.put(b"after", b"the contenders")) > Position(0, 0)
        held.close()
    wal, info = Wal.open(WalConfig(dir=d))  # free again; closed cleanly by its holder
    wal.close()
    assert info.bytes_truncated == 0 and not info.corruption_detected
    assert keys_in(d)[0] == b"held"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("holder_kind", ["serve", "spawn"])
def test_a_directory_held_by_a_writer_process_refuses_every_other_writer_at_once(
    tmp_path: Any, serve_process: Any, spawn_writer: Any, holder_kind: str
) -> None:
    d = str(tmp_path / "wal")
    if holder_kind == "serve":
        holder = serve_process("--dir", d, "--fsync", "always")
        endpoint = read_line(holder).strip()
        pid = holder.pid
    else:
        w = spawn_writer(d)
        endpoint, pid = w.endpoint, w.pid
    with WalClient.for_dir(d, timeout=10) as c:
        first = c.append(Record.put(b"first", b"before the contenders"))
    link = str(tmp_path / "link")
    os.symlink(d, link)
    for path in (d, link):  # the same directory by another name is the same directory
        assert_every_other_writer_refused(path, serve_process)
    # The live writer was not disturbed: its record and socket stand and it goes on serving.
    rec = read_endpoint_file(d)
    assert rec is not None and (rec.endpoint, rec.pid) == (endpoint, pid)
    with WalClient.for_dir(d, timeout=10) as c:
        assert c.endpoint == endpoint and c.info()["pid"] == pid
        assert c.append(Record.put(b"second", b"after the contenders")) > first
    if holder_kind == "serve":
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(30) == 0
    else:
        assert w.stop() == 0
    assert keys_in(d) == [b"first", b"second"]
