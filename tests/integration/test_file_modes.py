"""Owner-only files whatever the umask (0700/0600, the socket 0600), a shared group on request
(0750/0640/0660), and another user refused with "permission denied" naming the path."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

import pytest

from nori_wal import FsyncPolicy, Record, Wal, WalConfig, open_consumer
from nori_wal.client import WalClient
from nori_wal.endpoint_file import ENDPOINT_FILE

GROUP = "daemon"  # any group the test user need not belong to


def _modes(directory: str) -> dict[str, int]:
    out = {".": stat.S_IMODE(os.stat(directory).st_mode)}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


@pytest.fixture
def umask_000():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def open_tmp():
    """A directory every user may traverse (pytest's tmp_path is root's alone), removed afterwards."""
    d = tempfile.mkdtemp(prefix="nori-modes-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _exercise(d: str) -> None:
    """Create every kind of file a log gets: segments, key files, DURABLE, LOCK, a cursor, WRITER, the socket."""
    with WalClient.for_dir(d, timeout=10.0) as c:
        for i in range(40):
            c.append(Record.put(b"k%d" % i, b"v" * 200).with_idempotency_key(b"id%d" % i))
    with open_consumer(d, "indexer", start="earliest") as consumer:
        for _record, pos in consumer:
            consumer.commit(pos)
            break


def test_files_are_owner_only_under_umask_000(open_tmp, umask_000, spawn_writer):
    d = os.path.join(open_tmp, "wal")
    w = spawn_writer(WalConfig(dir=d, max_segment_size=4096, fsync_policy=FsyncPolicy.always()))
    _exercise(d)
    modes = _modes(d)
    assert modes["writer.sock"] == 0o600 and ENDPOINT_FILE in modes
    assert modes.get("writer.sock.pub", 0o600) == 0o600  # the wake-up socket, when it could bind
    for name, mode in modes.items():
        if name in (".", "consumers"):
            assert mode == 0o700, (name, oct(mode))
        elif name not in ("writer.sock", "writer.sock.pub"):
            assert mode == 0o600, (name, oct(mode))
    w.stop()
    # embedded too, and an existing directory left world-open is closed again
    os.chmod(d, 0o777)
    wal, _ = Wal.open(WalConfig(dir=d, max_segment_size=4096))
    with wal:
        wal.append(Record.put(b"k", b"v"))
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_group_gives_the_group_read_access_and_the_socket(open_tmp, umask_000, spawn_writer):
    import grp

    gid = grp.getgrnam(GROUP).gr_gid
    d = os.path.join(open_tmp, "wal")
    spawn_writer(WalConfig(dir=d, max_segment_size=4096, group=GROUP))
    _exercise(d)
    modes = _modes(d)
    assert modes["."] == 0o2750 and modes["consumers"] == 0o2750
    assert modes["writer.sock"] == 0o660 and modes.get("writer.sock.pub", 0o660) == 0o660
    for name, mode in modes.items():
        if name not in (".", "consumers", "writer.sock", "writer.sock.pub"):
            assert mode == 0o640, (name, oct(mode))
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            assert os.lstat(os.path.join(root, name)).st_gid == gid, name


def test_unknown_group_is_refused():
    with pytest.raises(ValueError, match="no such group"):
        WalConfig(dir="x", group="no-such-group-nori")


_AS_NOBODY = textwrap.dedent(
    """
    import sys
    from nori_wal import Record, WriterUnavailableError
    from nori_wal.client import WalClient
    how, target = sys.argv[1], sys.argv[2]
    try:
        client = WalClient.for_dir(target, timeout=3.0) if how == "dir" else WalClient(target, timeout=3.0)
        client.append(Record.put(b"k", b"from nobody"))
    except WriterUnavailableError as exc:
        print("REFUSED", exc)
    else:
        print("APPENDED")
    """
)


def _as_nobody(*args: str) -> str:
    try:
        uid = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no user nobody")
    if os.geteuid() != 0:
        pytest.skip("needs root to run as nobody")

    def drop() -> None:
        os.setgid(65534)
        os.setgroups([])
        os.setuid(uid)

    proc = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=drop,
        cwd="/",
        check=False,
    )
    if "REFUSED" not in proc.stdout and "APPENDED" not in proc.stdout:
        pytest.skip(f"cannot run python as nobody here: {proc.stderr[-300:]}")
    return proc.stdout


def test_another_user_is_refused_with_permission_denied(open_tmp, umask_000, spawn_writer):
    d = os.path.join(open_tmp, "wal")
    w = spawn_writer(WalConfig(dir=d, group=GROUP))  # the group may connect; nobody is not in it
    size = os.path.getsize(os.path.join(d, "000000.wal"))
    out = _as_nobody("endpoint", w.endpoint)
    assert "REFUSED" in out and "permission denied" in out and "writer.sock" in out, out
    out = _as_nobody("dir", d)
    assert "REFUSED" in out and "permission denied" in out and d in out, out
    assert os.path.getsize(os.path.join(d, "000000.wal")) == size
