"""CURVE authentication end to end: real writer processes, real tcp sockets, keys from nori-wal keygen."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from nori_wal import Position, Record, WalConfig, WriterUnavailableError
from nori_wal.client import AsyncWalClient, WalClient
from nori_wal.endpoint_file import read_endpoint_file
from nori_wal.security import public_key


def _keygen(directory, name: str) -> tuple[str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "nori_wal.cli", "keygen", str(directory), "--name", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return os.path.join(directory, name + ".key"), os.path.join(directory, name + ".key_secret")


@pytest.fixture
def keys(tmp_path):
    server = _keygen(tmp_path / "server", "writer")
    alice = _keygen(tmp_path / "alice", "alice")
    mallory = _keygen(tmp_path / "mallory", "mallory")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(alice[0], allowed)
    return {"server": server, "alice": alice, "mallory": mallory, "allowed": str(allowed)}


def _log_digest(d: str) -> dict[str, str]:
    out = {}
    for n in sorted(os.listdir(d)):
        if n.endswith(".wal"):
            with open(os.path.join(d, n), "rb") as f:
                out[n] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_keygen_refuses_to_overwrite_and_keeps_the_secret_private(tmp_path):
    pub, sec = _keygen(tmp_path, "k")
    assert os.stat(sec).st_mode & 0o077 == 0
    proc = subprocess.run(
        [sys.executable, "-m", "nori_wal.cli", "keygen", str(tmp_path), "--name", "k"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "refusing to overwrite" in proc.stderr


@pytest.mark.timeout(120)
def test_only_allowed_keys_append_or_delete(tmp_path, keys, spawn_writer):
    d = str(tmp_path / "wal")
    w = spawn_writer(
        WalConfig(dir=d, max_segment_size=4096),
        endpoint="tcp://127.0.0.1:*",
        curve_secret=keys["server"][1],
        curve_clients=keys["allowed"],
    )
    server_pub = keys["server"][0]
    with WalClient(w.endpoint, timeout=10.0, curve_server_key=server_pub, curve_secret=keys["alice"][1]) as c:
        positions = [c.append(Record.put(b"k%d" % i, b"v" * 300)) for i in range(40)]
        c.sync()
    assert positions[-1].segment_id > 2
    # key bytes work as well as paths; the async client too
    with WalClient(
        w.endpoint, timeout=10.0, curve_server_key=public_key(server_pub), curve_secret=keys["alice"][1]
    ) as c:
        c.append(Record.put(b"bytes", b"key"))

    async def via_async() -> Position:
        async with AsyncWalClient(
            w.endpoint, timeout=10.0, curve_server_key=server_pub, curve_secret=keys["alice"][1]
        ) as a:
            return await a.append(Record.put(b"async", b"ok"))

    asyncio.run(via_async())
    # for_dir finds the writer's public key in DIR/WRITER; the client brings its own secret
    assert read_endpoint_file(d).curve_server_key == public_key(server_pub).decode()
    with WalClient.for_dir(d, timeout=10.0, curve_secret=keys["alice"][1]) as c:
        c.append(Record.put(b"for_dir", b"ok"))
    with WalClient.for_dir(d, timeout=2.0) as keyless, pytest.raises(WriterUnavailableError, match="requires CURVE"):
        keyless.append(Record.put(b"no", b"key"))

    before = _log_digest(d)
    strangers = [
        WalClient(w.endpoint, timeout=2.0),  # plain
        WalClient(w.endpoint, timeout=2.0, curve_server_key=server_pub, curve_secret=keys["mallory"][1]),
    ]
    for stranger in strangers:
        with stranger:
            t0 = time.monotonic()
            with pytest.raises(WriterUnavailableError):
                stranger.append(Record.put(b"evil", b"x"))
            with pytest.raises(WriterUnavailableError):
                stranger.delete_segments_before(positions[-1])
            assert time.monotonic() - t0 < 30  # within their timeouts, not forever
    assert _log_digest(d) == before  # byte for byte
    assert w.is_alive()

    # SIGHUP reloads the allowed keys: mallory is let in once her key is added
    shutil.copy(keys["mallory"][0], keys["allowed"])
    os.kill(w.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while True:
        try:
            with WalClient(w.endpoint, timeout=2.0, curve_server_key=server_pub, curve_secret=keys["mallory"][1]) as m:
                m.append(Record.put(b"mallory", b"allowed now"))
            break
        except WriterUnavailableError:
            assert time.monotonic() < deadline, "the reloaded key was never accepted"


def _serve(*args: str, timeout: float = 30) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nori_wal.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_non_loopback_tcp_needs_curve_or_insecure(tmp_path, keys, serve_process):
    d = str(tmp_path / "wal")
    for endpoint in ("tcp://0.0.0.0:0", "tcp://*:0"):
        p = serve_process("--dir", d, "--endpoint", endpoint)
        assert p.wait(30) == 2
        err = p.stderr.read()
        assert "without authentication" in err and len(err.strip().splitlines()) == 1, err
        assert not os.path.exists(d)  # refused before anything was created
    # with CURVE: serves, and prints and records the endpoint actually bound
    p = serve_process(
        "--dir",
        d,
        "--endpoint",
        "tcp://0.0.0.0:0",
        "--curve-secret",
        keys["server"][1],
        "--curve-clients",
        keys["allowed"],
    )
    line = p.stdout.readline().strip()
    assert line.startswith("tcp://0.0.0.0:") and not line.endswith(":0"), line
    assert read_endpoint_file(d).endpoint == line
    with WalClient.for_dir(d, timeout=10.0, curve_secret=keys["alice"][1]) as c:
        c.append(Record.put(b"k", b"v"))
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    # --insecure: serves, and warns on every start
    for _ in range(2):
        p = serve_process("--dir", d, "--endpoint", "tcp://0.0.0.0:0", "--insecure")
        assert p.stdout.readline().startswith("tcp://0.0.0.0:")
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        assert "WITHOUT authentication" in p.stderr.read()
