"""The public names of API.md import, and the small value types behave as documented."""

import importlib
from datetime import timedelta

import pytest

import nori_wal
from nori_wal import Compression, FsyncPolicy, Position, Record, WalConfig

CONTRACT = {
    "nori_wal": [
        "Record",
        "Compression",
        "FsyncPolicy",
        "Position",
        "WalConfig",
        "RecoveryInfo",
        "Wal",
        "open_reader",
        "WalError",
        "CorruptionError",
        "WalLockedError",
        "WalClosedError",
        "RecordTooLargeError",
        "WriterUnavailableError",
        "ProtocolError",
    ],
    "nori_wal.writer_proc": ["WriterProcess"],
    "nori_wal.client": ["WalClient", "AsyncWalClient"],
}


@pytest.mark.parametrize("module", sorted(CONTRACT))
def test_contract_names_import(module):
    mod = importlib.import_module(module)
    missing = [n for n in CONTRACT[module] if not hasattr(mod, n)]
    assert not missing


def test_all_lists_the_public_names():
    assert set(CONTRACT["nori_wal"]) <= set(nori_wal.__all__)
    assert all(hasattr(nori_wal, n) for n in nori_wal.__all__)


def test_errors_derive_from_wal_error():
    for name in [
        "CorruptionError",
        "WalLockedError",
        "WalClosedError",
        "RecordTooLargeError",
        "WriterUnavailableError",
        "ProtocolError",
        "WalIOError",
    ]:
        assert issubclass(getattr(nori_wal, name), nori_wal.WalError)


def test_position_is_frozen_hashable_ordered_and_parses():
    a, b = Position(1, 100), Position(2, 32)
    assert a < b and max(a, b) == b and len({a, Position(1, 100)}) == 1
    with pytest.raises(AttributeError):
        a.offset = 3
    assert Position.parse("3:32") == Position(3, 32) and str(Position(3, 32)) == "3:32"
    with pytest.raises(ValueError):
        Position.parse("3")


def test_fsync_policy_parse():
    assert FsyncPolicy.parse("always") == FsyncPolicy.always()
    assert FsyncPolicy.parse("os") == FsyncPolicy.os()
    assert FsyncPolicy.parse("batch") == FsyncPolicy.batch(0.005)
    assert FsyncPolicy.parse("batch:10ms") == FsyncPolicy.batch(0.010)
    assert FsyncPolicy.parse("batch:0.02s") == FsyncPolicy.batch(0.02)
    with pytest.raises(ValueError):
        FsyncPolicy.parse("sometimes")
    for window in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            FsyncPolicy.batch(window)


def test_config_defaults_and_validation():
    cfg = WalConfig()
    assert cfg.max_segment_size == 128 * 1024 * 1024 and cfg.fsync_policy == FsyncPolicy.batch(0.005)
    assert str(cfg.dir) == "wal" and cfg.node_id == 0
    with pytest.raises(ValueError):
        WalConfig(max_segment_size=100)


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
def test_clients_refuse_a_timeout_that_is_not_a_finite_positive_number(timeout):
    from nori_wal.client import AsyncWalClient, WalClient

    for cls in (WalClient, AsyncWalClient):
        with pytest.raises(ValueError, match="timeout"):
            cls("ipc:///nonexistent", timeout=timeout)


def test_record_constructors():
    r = Record.put(bytearray(b"k"), memoryview(b"v"))
    assert r.key == b"k" and r.value == b"v" and not r.tombstone and r.ttl is None
    assert r.compression is Compression.NONE
    d = Record.delete(b"k")
    assert d.tombstone and d.value == b""
    t = Record.put_with_ttl(b"k", b"v", timedelta(seconds=2))
    assert t.ttl == timedelta(seconds=2)
    c = r.with_compression(Compression.LZ4)
    assert c.compression is Compression.LZ4 and r.compression is Compression.NONE and c != r
