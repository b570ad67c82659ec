"""One table of damaged logs, one helper: recovery, ``verify``, ``dump`` and readers agree on each.

Each case builds a log of whole records, damages it one way, and states the
verdict (``scan.classify_tail``'s words, docs/FORMAT.md "Damage"):

* ``ok``      nothing to cut: every tool reads every record;
* ``tail``    a crash's tail: recovery cuts it without ``corruption_detected``,
  ``verify`` warns (exit 0), ``dump`` and a reader yield the records before it, no error;
* ``garbage`` bad bytes to the end of the last segment: recovery cuts, reports and sets
  them aside, ``verify`` fails; a reader (and ``dump``) stop there (the end of what it can read);
* ``corrupt`` bad bytes with records after them: recovery cuts, reports and sets aside,
  ``verify`` fails, a reader raises CorruptionError and ``dump`` exits 1.
* ``kept``    a checksummed record the tools cannot return (its value will not decompress):
  recovery keeps it (its bytes are as written), ``verify`` fails, readers raise.

``good`` is how many records every tool agrees come before the damage.
"""

from __future__ import annotations

import os
import shutil
import struct

import pytest
from crc32c import crc32c
from writer_support import run_cli

from nori_wal import CorruptionError, FsyncPolicy, Record, Wal, WalConfig
from nori_wal.codec import COMPRESSION_SHIFT, encode_record, encode_seal
from nori_wal.reader import WalReader
from nori_wal.segment import encode_header, segment_name

N = 12
RECS = [Record.put(b"k%02d" % i, (b"v%02d" % i) * 30) for i in range(N)]
FRAMES = [encode_record(r) for r in RECS]
ENDS = [32 + sum(len(f) for f in FRAMES[: i + 1]) for i in range(N)]


def log_bytes(tail: bytes = b"", n: int = N, sealed: bool = False) -> bytes:
    body = encode_header(0) + b"".join(FRAMES[:n])
    return body + (encode_seal(n, len(body)) if sealed else b"") + tail


def with_crc(body: bytes) -> bytes:
    return struct.pack("<I", crc32c(body)) + body


def flip(data: bytes, at: int, mask: int = 0x40) -> bytes:
    b = bytearray(data)
    b[at] ^= mask
    return bytes(b)


def torn_into_pieces() -> bytes:
    """LazyFS torn-op: a group write of 8 records whose second part never reached the disk."""
    group = b"".join(encode_record(Record.put(b"g%02d" % i, b"w" * 200)) for i in range(8))
    a, b = len(group) // 4 + 10, len(group) // 2 + 5  # part 2 (inside a record) lost: a hole of zeros
    return log_bytes(group[:a] + bytes(b - a) + group[b:], n=6)


def bad_zstd_value(extra: bytes) -> bytes:
    import zstandard

    stored = zstandard.ZstdCompressor(write_content_size=True).compress(b"z" * 100) + extra
    body = bytes((2, len(stored) & 0x7F | 0x80, len(stored) >> 7, 2 << COMPRESSION_SHIFT)) + b"zz" + stored
    return log_bytes(with_crc(body) + FRAMES[0], n=3)


def bad_lz4_value() -> bytes:
    stored = b"\x05\x00\x00\x00junk"
    return log_bytes(with_crc(bytes((1, len(stored), 1 << COMPRESSION_SHIFT)) + b"x" + stored) + FRAMES[0], n=3)


# (name, files: {name: bytes}, verdict, good records before the damage)
CASES = [
    ("clean", {segment_name(0): log_bytes()}, "ok", N),
    ("sealed", {segment_name(0): log_bytes(sealed=True)}, "ok", N),
    ("torn tail", {segment_name(0): log_bytes(FRAMES[0][:9], n=5)}, "tail", 5),
    ("zeroed tail", {segment_name(0): log_bytes(bytes(4096), n=5)}, "tail", 5),
    ("torn into zeros", {segment_name(0): log_bytes(FRAMES[0][:20] + bytes(4096), n=5)}, "tail", 5),
    ("zeros then data", {segment_name(0): log_bytes(bytes(600) + FRAMES[1] + FRAMES[2], n=5)}, "tail", 5),
    ("torn into pieces (LazyFS torn-op)", {segment_name(0): torn_into_pieces()}, "tail", 8),  # 6 + 2 whole
    ("zeros after the seal", {segment_name(0): log_bytes(bytes(100), sealed=True)}, "tail", N),
    ("garbage tail", {segment_name(0): log_bytes(b"\x01\x02\x03\x04\x05garbage!!" * 3, n=5)}, "garbage", 5),
    ("checksum mismatch, records after", {segment_name(0): flip(log_bytes(), ENDS[4] + 12)}, "corrupt", 5),
    ("corrupted length, records after", {segment_name(0): flip(log_bytes(), ENDS[4] + 5, 0x7F)}, "corrupt", 5),
    (
        "varint over 64 bits",
        {segment_name(0): log_bytes(b"\x01\x02\x03\x04\x01" + b"\xff" * 9 + b"\x7f", n=5)},
        "garbage",
        5,
    ),
    ("bytes after the seal", {segment_name(0): log_bytes(FRAMES[0], sealed=True)}, "corrupt", N),
    ("value fails to decompress", {segment_name(0): bad_lz4_value()}, "kept", 3),
    ("zstd value with trailing bytes", {segment_name(0): bad_zstd_value(b"tail")}, "kept", 3),
    ("stray 7-digit segment name", {segment_name(0): log_bytes(), "0000003.wal": log_bytes()}, "ok", N),
    ("stub last segment", {segment_name(0): log_bytes(sealed=True), segment_name(1): encode_header(1)[:20]}, "tail", N),
]


def read_all(d: str) -> tuple[int, bool]:
    """(records a reader yields, whether it raised CorruptionError)."""
    got = 0
    try:
        with WalReader(d) as r:
            for _ in r:
                got += 1
    except CorruptionError:
        return got, True
    return got, False


@pytest.mark.parametrize("name,files,verdict,good", CASES, ids=[c[0] for c in CASES])
def test_every_tool_agrees_on_the_damage(tmp_path, name, files, verdict, good):
    d = tmp_path / "wal"
    d.mkdir()
    for fname, data in files.items():
        (d / fname).write_bytes(data)
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)

    # verify (read-only)
    proc = run_cli("verify", str(d), timeout=120)
    assert proc.returncode == (1 if verdict in ("garbage", "corrupt", "kept") else 0), proc.stdout + proc.stderr
    if verdict == "tail":
        assert "warning:" in proc.stdout

    # a reader, and dump (read-only, same reader)
    got, raised = read_all(str(d))
    assert got == good
    assert raised == (verdict in ("corrupt", "kept"))
    proc = run_cli("dump", "--json", str(d), timeout=120)
    assert len(proc.stdout.splitlines()) == good
    assert proc.returncode == (1 if verdict in ("corrupt", "kept") else 0), proc.stderr

    # recovery (on a copy: the tools above changed nothing)
    wal, info = Wal.open(WalConfig(dir=str(copy), fsync_policy=FsyncPolicy.always()))
    wal.close()
    assert info.corruption_detected == (verdict in ("garbage", "corrupt")), info
    assert bool(info.set_aside) == (verdict in ("garbage", "corrupt"))
    kept = info.valid_records
    if verdict == "kept":
        assert kept > good  # the record and those after it stay (their bytes are as written)
    else:
        assert kept == good
    if verdict != "kept":  # after recovery every tool reads the same records, cleanly
        assert read_all(str(copy)) == (good, False)
        assert run_cli("verify", str(copy), timeout=120).returncode == 0
    assert os.path.exists(copy / "0000003.wal") == (name == "stray 7-digit segment name")
