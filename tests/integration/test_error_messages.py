"""What a user sees when the file system or the writer fails them: the built-in class,
the errno, and a message naming the path; and positions given as text reach a reader."""

from __future__ import annotations

import errno
import os

import pytest
from writer_support import run_cli

from nori_wal import Position, Record, Wal, WalConfig, WalIOError, WriterUnavailableError, open_reader
from nori_wal.client import WalClient
from nori_wal.testing.faultyos import FaultyOsLayer


def test_opening_a_log_whose_path_is_a_file_says_not_a_directory(tmp_path):
    afile = tmp_path / "afile"
    afile.write_bytes(b"not a log")
    for path in (afile, afile / "wal"):  # the path itself, or a parent, is a regular file
        with pytest.raises(NotADirectoryError.__mro__[1]) as e:  # OSError: code for the built-in catches it
            Wal.open(WalConfig(path))
        err = e.value
        assert isinstance(err, WalIOError)
        assert err.errno == errno.ENOTDIR
        assert str(err).startswith(f"opening {path} failed: Not a directory"), str(err)
        assert "File exists" not in str(err)
    assert afile.read_bytes() == b"not a log"  # untouched


def test_permission_denied_names_the_directory(tmp_path):
    layer = FaultyOsLayer()
    layer.inject("makedirs", errno.EACCES)
    path = tmp_path / "wal"
    with pytest.raises(PermissionError.__mro__[1]) as e:
        Wal.open(WalConfig(path), layer=layer)
    assert isinstance(e.value, WalIOError) and e.value.errno == errno.EACCES
    assert str(e.value) == f"opening {path} failed: Permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root is not refused by file modes")
def test_permission_denied_by_the_real_file_system(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(WalIOError, match=f"opening {locked / 'wal'} failed: Permission denied") as e:
        Wal.open(WalConfig(locked / "wal"))
    assert e.value.errno == errno.EACCES


def test_a_full_disk_says_no_space_left_names_the_log_and_stops_it(tmp_path):
    layer = FaultyOsLayer()
    wal, _ = Wal.open(WalConfig(tmp_path / "wal", fsync_policy="always"), layer=layer)
    try:
        first = wal.append(Record.put(b"k", b"before"))
        layer.inject("append", errno.ENOSPC)
        with pytest.raises(OSError) as e:
            wal.append(Record.put(b"k", b"v" * 100))
        err = e.value
        assert isinstance(err, WalIOError) and err.errno == errno.ENOSPC
        assert str(err).startswith(f"{tmp_path / 'wal'}: write of ")
        assert "No space left on device" in str(err) and "fail-stop" in str(err)
        assert err.filename is not None
        with pytest.raises(WalIOError, match="No space left on device"):  # sticky until reopened
            wal.append(Record.put(b"k", b"after"))
    finally:
        wal.close()
    with open_reader(tmp_path / "wal") as reader:
        assert [p for _, p in reader] == [first]


def test_a_writer_that_is_not_there_is_a_connection_error(tmp_path):
    with WalClient(f"ipc://{tmp_path}/nobody.sock", timeout=0.3) as client:
        with pytest.raises(ConnectionError) as e:  # as redis-py's and requests' users catch it
            client.append(Record.put(b"k", b"v"))
    assert isinstance(e.value, WriterUnavailableError)


def test_readers_take_a_position_as_text_or_as_the_list_json_makes(tmp_path):
    with Wal.open(WalConfig(tmp_path / "wal"))[0] as wal:
        positions = [wal.append(Record.put(b"k%d" % i, b"v")) for i in range(3)]
        second = positions[1]
        for start in (second, str(second), [second.segment_id, second.offset], tuple(second)):
            with wal.read_from(start) as reader:
                assert [p for _, p in reader] == positions[1:]
        with open_reader(tmp_path / "wal", f"{second}") as reader:  # type: ignore[arg-type]
            assert [p for _, p in reader] == positions[1:]
        with pytest.raises(TypeError, match="a Position, a 'SEG:OFF' string"):
            wal.read_from(32)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="bad position '0-32'"):
            wal.read_from("0-32")
        assert wal.delete_segments_before("0:32") == 0
    assert isinstance(positions[0], Position)


def test_serve_refuses_a_segment_size_no_offset_can_address(tmp_path):
    proc = run_cli("serve", "--dir", str(tmp_path / "wal"), "--max-segment-size", "99999999999999999999")
    assert proc.returncode == 2, proc.stderr
    assert "max_segment_size must be from 4096 to 9223372036854775807 bytes" in proc.stderr
    assert not (tmp_path / "wal").exists()
