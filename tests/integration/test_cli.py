"""The command-line tools run as a user runs them: a subprocess on a real log, stdout and exit code."""

import base64
import hashlib
import json
import os
import queue
import re
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta

import pytest

from nori_wal import Compression, FsyncPolicy, Position, Record, Wal, WalConfig
from nori_wal.codec import COMPRESSION_SHIFT, FLAG_TTL, SEAL_FRAME_SIZE, compress_value, encode_record
from nori_wal.segment import segment_name

SEGMENT = 4096  # small segments, so a few hundred records span several


def cli(*args, timeout=60):
    """Run ``nori-wal ARGS`` (as ``python -m nori_wal.cli``); returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "nori_wal.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(proc, *needles):
    """The command failed with exactly one line on stderr, mentioning every needle, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def sample_records():
    recs = []
    for i in range(400):
        if i % 10 == 3:
            recs.append(Record.delete(b"key-%d" % (i - 1)))
        elif i % 10 == 5:
            recs.append(Record.put_with_ttl(b"key-%d" % i, b"ttl-value-%d" % i, timedelta(seconds=i)))
        elif i % 10 == 7:
            recs.append(Record.put(b"key-%d" % i, b"lz4 " * 40).with_compression(Compression.LZ4))
        elif i % 10 == 9:
            recs.append(Record.put(b"key-%d" % i, b"zstd " * 50).with_compression(Compression.ZSTD))
        else:
            recs.append(Record.put(b"key-%d" % i, b"value-%d-" % i + bytes(range(i % 40))))
    return recs


def make_log(path, records, segment=SEGMENT):
    with Wal.open(WalConfig(dir=path, max_segment_size=segment, fsync_policy=FsyncPolicy.os()))[0] as wal:
        return wal.append_batch(records)


@pytest.fixture
def log(tmp_path):
    """A closed log of 400 mixed records over several segments: (dir, records, positions)."""
    d = tmp_path / "wal"
    recs = sample_records()
    pos = make_log(d, recs)
    assert pos[-1].segment_id >= 3
    return d, recs, pos


def segment_files(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".wal"))


def digest(d):
    return {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in os.listdir(d)}


# -- --help -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["dump", "verify", "stats", "gc"])
def test_each_command_has_help(command):
    proc = cli(command, "--help")
    assert proc.returncode == 0 and "usage: nori-wal " + command in proc.stdout


# -- dump ---------------------------------------------------------------------------------------


def test_dump_prints_every_record_in_order(log):
    d, recs, pos = log
    proc = cli("dump", d, "--max-bytes", "0")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(recs)
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in pos]
    assert lines[0] == f"{pos[0]}\tPUT\tkey=b'key-0'\tvalue=b'value-0-'"
    assert lines[3] == f"{pos[3]}\tDEL\tkey=b'key-2'"
    assert lines[5] == f"{pos[5]}\tPUT\tkey=b'key-5'\tvalue=b'ttl-value-5'\tttl=5000ms"
    assert lines[7].endswith("\tcompression=LZ4") and repr(b"lz4 " * 40) in lines[7]


def test_dump_cuts_long_values_in_plain_output(log):
    d, _recs, pos = log
    line = cli("dump", d, "--max-bytes", "4", "-n", "1").stdout.strip()
    assert line == f"{pos[0]}\tPUT\tkey=b'key-'...(5 bytes)\tvalue=b'valu'...(8 bytes)"


def test_dump_json_round_trips_every_field(log):
    d, recs, pos = log
    proc = cli("dump", d, "--json")
    assert proc.returncode == 0, proc.stderr
    objs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(objs) == len(recs)
    for o, r, p in zip(objs, recs, pos):
        assert (o["segment"], o["offset"], o["position"]) == (p.segment_id, p.offset, str(p))
        assert base64.b64decode(o["key"]) == r.key and base64.b64decode(o["value"]) == bytes(r.value)
        assert o["tombstone"] == r.tombstone and o["compression"] == r.compression.name
        assert o["ttl_ms"] == (None if r.ttl is None else r.ttl // timedelta(milliseconds=1))


def test_dump_from_a_position(log):
    d, _recs, pos = log
    start = pos[100]
    proc = cli("dump", d, "--from", start, "--json")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["position"] for x in proc.stdout.splitlines()] == [str(p) for p in pos[100:]]


def test_dump_rejects_bad_positions_and_paths(log, tmp_path):
    d, _recs, pos = log
    mid = Position(pos[10].segment_id, pos[10].offset + 3)
    proc = cli("dump", d, "--from", mid)
    assert proc.returncode == 2 and proc.stdout == ""
    one_line_error(proc, "bad position", str(mid))
    proc = cli("dump", d, "--from", f"{pos[0].segment_id}:999999")
    assert proc.returncode == 2
    one_line_error(proc, "bad position")
    proc = cli("dump", d, "--from", "three:4")
    assert proc.returncode == 2
    one_line_error(proc, "bad position", "SEG:OFF")
    proc = cli("dump", tmp_path / "missing")
    assert proc.returncode == 2
    one_line_error(proc, "no such directory")
    (tmp_path / "empty").mkdir()
    proc = cli("dump", tmp_path / "empty")
    assert proc.returncode == 2
    one_line_error(proc, "no segments")


def test_dump_rejects_negative_counts(log):
    d, _recs, _pos = log
    for args in (("-n", "-1"), ("--max-bytes", "-5")):
        proc = cli("dump", d, *args)
        assert proc.returncode == 2 and proc.stdout == "" and "must be 0 or more" in proc.stderr, args


WRITER = textwrap.dedent("""
    import sys
    from nori_wal import FsyncPolicy, Record, Wal, WalConfig
    wal, _ = Wal.open(WalConfig(dir=sys.argv[1], max_segment_size=4096, fsync_policy=FsyncPolicy.always()))
    with wal:
        for i in range(int(sys.argv[2])):
            wal.append(Record.put(b"live-%d" % i, b"x" * 100))
""")


def test_dump_follow_sees_records_another_process_appends(tmp_path):
    d = tmp_path / "wal"
    make_log(d, [Record.put(b"old-%d" % i, b"o") for i in range(3)])
    follow = subprocess.Popen(
        [sys.executable, "-m", "nori_wal.cli", "dump", d, "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout], daemon=True)
    reader.start()
    writer = None
    try:
        keys = [base64.b64decode(json.loads(lines.get(timeout=30))["key"]) for _ in range(3)]
        assert keys == [b"old-0", b"old-1", b"old-2"]  # the follower is now at the end, waiting
        live = 100  # ~3 segments' worth: the follower crosses rolls
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(d), str(live)])
        got = [json.loads(lines.get(timeout=30)) for _ in range(live)]
        assert [base64.b64decode(o["key"]) for o in got] == [b"live-%d" % i for i in range(live)]
        assert len({o["segment"] for o in got}) >= 3
        assert writer.wait(timeout=60) == 0
        assert follow.poll() is None  # still following
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait(timeout=10)
        follow.terminate()
        follow.wait(timeout=10)
        reader.join(timeout=10)
        follow.stdout.close()
        follow.stderr.close()


# -- verify -------------------------------------------------------------------------------------


def test_verify_ok_and_never_modifies(log):
    d, recs, _pos = log
    before = digest(d)
    proc = cli("verify", d, "-v")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    assert out[-1].startswith(f"OK: {len(segment_files(d))} segments, {len(recs)} records")
    assert sum(" sealed " in line for line in out) == len(segment_files(d))
    assert digest(d) == before


def test_verify_progress_bar_on_request(log):
    d, _recs, _pos = log
    proc = cli("verify", d, "--progress")
    assert proc.returncode == 0 and "100%" in proc.stderr and "verify [" in proc.stderr
    assert "verify [" not in cli("verify", d).stderr  # not a tty: no bar unless asked


def test_verify_fails_on_a_corrupted_sealed_segment_naming_segment_and_offset(log):
    d, _recs, pos = log
    victim = [p for p in pos if p.segment_id == 1][5]
    path = d / segment_name(1)
    data = bytearray(path.read_bytes())
    data[victim.offset + 12] ^= 0x40
    path.write_bytes(bytes(data))
    before = digest(d)
    proc = cli("verify", d)
    assert proc.returncode == 1
    where = f"segment 1 offset {victim.offset}"
    assert f"corrupt: {where}: checksum mismatch" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("FAILED: 1 corrupt")
    one_line_error(proc, where)
    assert digest(d) == before


def test_verify_warns_on_a_torn_tail_and_fails_on_it_with_strict(log):
    d, _recs, _pos = log
    last = d / segment_files(d)[-1]
    with open(last, "r+b") as f:
        f.truncate(os.path.getsize(last) - 5)  # the seal's last bytes never reached the disk
    proc = cli("verify", d)
    assert proc.returncode == 0 and "warning: segment" in proc.stdout and "torn tail" in proc.stdout
    assert cli("verify", d, "--strict").returncode == 1


def test_verify_fails_on_garbage_in_the_last_segment(log):
    d, _recs, pos = log
    last = pos[-1]
    path = d / segment_name(last.segment_id)
    data = bytearray(path.read_bytes())
    data[last.offset + 8] ^= 0xFF
    path.write_bytes(bytes(data))
    proc = cli("verify", d)
    assert proc.returncode == 1
    one_line_error(proc, f"segment {last.segment_id} offset {last.offset}")


def test_verify_deep_decompresses_values(tmp_path):
    d = tmp_path / "wal"
    # A frame with a valid CRC whose LZ4 value is garbage: only decompressing finds it.
    good = encode_record(Record.put(b"k", b"v" * 40).with_compression(Compression.LZ4))
    bad = bytearray(encode_record(Record.put(b"bad", b"\x05\x00\x00\x00junk").with_compression(Compression.NONE)))
    bad[4 + 2] |= Compression.LZ4 << COMPRESSION_SHIFT
    from crc32c import crc32c

    assert bad[6] == Compression.LZ4 << COMPRESSION_SHIFT and not bad[6] & FLAG_TTL  # the flags byte
    bad[:4] = crc32c(bytes(bad[4:])).to_bytes(4, "little")
    with Wal.open(WalConfig(dir=d, fsync_policy=FsyncPolicy.os()))[0] as wal:
        wal.append_frames([good, bytes(bad), good])
    # Issue 18 settled this edge: dump raised where verify said OK. Verify now always decompresses
    # compressed values (readers must, so a value that will not is corruption for every tool).
    assert cli("verify", d).returncode == 1
    proc = cli("verify", d, "--deep")
    assert proc.returncode == 1 and "does not decompress" in proc.stdout


def test_verify_runs_beside_a_writer_holding_the_lock(log):
    d, recs, _pos = log
    with Wal.open(WalConfig(dir=d, max_segment_size=SEGMENT))[0] as wal:
        wal.append(Record.put(b"one-more", b"x"))
        proc = cli("verify", d)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(recs) + 1} records" in proc.stdout


def test_verify_beside_a_live_always_writer_is_strict_clean(tmp_path):
    """The zeros a live Always writer keeps ahead of its records are not a crash's tail: no warning."""
    from nori_wal.fs import writer_lock_held

    d = tmp_path / "wal"
    with Wal.open(WalConfig(dir=d, fsync_policy=FsyncPolicy.always()))[0] as wal:
        wal.append(Record.put(b"k", b"v" * 100))
        assert os.path.getsize(d / segment_name(0)) > 1024 * 1024  # preallocated zeros
        assert writer_lock_held(str(d)) is True
        proc = cli("verify", d, "--strict")
    assert proc.returncode == 0 and "a live writer holds the directory" in proc.stdout, proc.stdout + proc.stderr
    assert writer_lock_held(str(d)) is False


def test_verify_warns_on_zeros_a_crash_left_behind(tmp_path):
    """Without a live writer the same zeros are what a crash leaves: a warning, and --strict fails."""
    d = tmp_path / "wal"
    wal = Wal.open(WalConfig(dir=d, fsync_policy=FsyncPolicy.always()))[0]
    wal.append(Record.put(b"k", b"v" * 100))
    zeroed = (d / segment_name(0)).read_bytes()
    wal.close()
    (d / segment_name(0)).write_bytes(zeroed)  # as if it had died before sealing
    proc = cli("verify", d)
    assert proc.returncode == 0 and "zero-filled tail" in proc.stdout and "live writer" not in proc.stdout
    assert cli("verify", d, "--strict").returncode == 1


def test_verify_wrong_path_and_empty_dir(tmp_path):
    proc = cli("verify", tmp_path / "nope")
    assert proc.returncode == 2
    one_line_error(proc, "no such directory")
    proc = cli("verify", tmp_path)
    assert proc.returncode == 2
    one_line_error(proc, "no segments")


def one_sealed_segment(d, n=20):
    """A cleanly closed log of one segment, ending with its seal (the durable mark at its records' end)."""
    with Wal.open(WalConfig(dir=d, fsync_policy=FsyncPolicy.always()))[0] as wal:
        return [wal.append(Record.put(b"k%02d" % i, b"v" * 200)) for i in range(n)]


def stretch_value_len(path, at):
    """One bit of the record at ``at``'s value_len flipped: 200 becomes 8392, past the end of the file."""
    data = bytearray(path.read_bytes())
    data[at + 6] ^= 0x40
    path.write_bytes(bytes(data))


def test_damage_inside_a_sealed_last_segment_fails_verify_dump_and_stats(tmp_path):
    """Not a torn tail: the seal after it vouches for records there (the reader raises, see test_recovery)."""
    d = tmp_path / "wal"
    pos = one_sealed_segment(d)
    stretch_value_len(d / segment_name(0), pos[5].offset)
    where = f"segment 0 offset {pos[5].offset}"
    proc = cli("verify", d)
    assert proc.returncode == 1 and f"corrupt: {where}: " in proc.stdout and "sealed segment" in proc.stdout
    proc = cli("dump", d)
    assert proc.returncode == 1 and len(proc.stdout.splitlines()) == 5
    one_line_error(proc, where)
    assert cli("stats", d).returncode == 1


def test_verify_fails_on_a_tail_below_the_durable_mark(tmp_path):
    """The writer died (no seal) after making 20 records durable: a stop before their end cuts them."""
    d = tmp_path / "wal"
    pos = one_sealed_segment(d)
    path = d / segment_name(0)
    path.write_bytes(path.read_bytes()[:-SEAL_FRAME_SIZE])
    stretch_value_len(path, pos[5].offset)
    proc = cli("verify", d)
    assert proc.returncode == 1 and "records the writer had made durable" in proc.stdout
    one_line_error(proc, f"segment 0 offset {pos[5].offset}")


def test_verify_warns_on_zeros_then_data_past_the_durable_mark(tmp_path):
    """A power loss kept a later page of an unacknowledged write over preallocated zeros: recovery cuts it."""
    d = tmp_path / "wal"
    one_sealed_segment(d)
    path = d / segment_name(0)
    acked = path.read_bytes()[:-SEAL_FRAME_SIZE]
    group = b"".join(encode_record(Record.put(b"g%02d" % i, b"w" * 200)) for i in range(40))
    path.write_bytes(acked + bytes(4096) + group[4096:8192] + bytes(8192))
    proc = cli("verify", d)
    assert proc.returncode == 0 and "warning: segment 0" in proc.stdout and "followed by data" in proc.stdout


def test_verify_fails_when_the_durable_mark_names_a_segment_that_is_gone(log):
    d, _recs, pos = log
    (d / segment_name(pos[-1].segment_id)).unlink()
    proc = cli("verify", d)
    assert proc.returncode == 1 and "are gone" in proc.stdout
    one_line_error(proc, f"segment {pos[-1].segment_id}")


# -- stats --------------------------------------------------------------------------------------


def test_stats_figures(log):
    d, recs, pos = log
    proc = cli("stats", d, "--json")
    assert proc.returncode == 0, proc.stderr
    f = json.loads(proc.stdout)
    files = segment_files(d)
    compressed = [r for r in recs if r.compression]
    stored = sum(len(compress_value(r.value, r.compression)) for r in compressed)
    raw = sum(len(r.value) for r in compressed)
    assert f["segments"] == len(files) and f["sealed_segments"] == len(files)
    assert f["bytes_on_disk"] == sum(os.path.getsize(d / n) for n in files)
    assert f["records"] == len(recs)
    assert f["tombstones"] == sum(r.tombstone for r in recs)
    assert f["records_with_ttl"] == sum(r.ttl is not None for r in recs)
    assert f["record_bytes"] == sum(len(encode_record(r)) for r in recs)
    assert f["key_bytes"] == sum(len(r.key) for r in recs)
    assert (f["first_position"], f["last_position"]) == (str(pos[0]), str(pos[-1]))
    assert f["compressed_records"] == {"LZ4": 40, "ZSTD": 40}
    assert (f["compressed_bytes_stored"], f["compressed_bytes_raw"]) == (stored, raw)
    assert f["compression_ratio"] == pytest.approx(raw / stored, rel=1e-3)
    assert f["problems"] == []

    text = cli("stats", d)
    assert text.returncode == 0
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in text.stdout.splitlines())
    assert rows["records"].startswith(f"{len(recs)} (")
    assert rows["first position"] == str(pos[0]) and rows["last position"] == str(pos[-1])
    assert rows["compression"].startswith(f"{raw / stored:.2f}x")


def test_stats_reports_corruption_with_exit_1(log):
    d, _recs, pos = log
    victim = next(p for p in pos if p.segment_id == 2)
    path = d / segment_name(2)
    data = bytearray(path.read_bytes())
    data[victim.offset] ^= 1
    path.write_bytes(bytes(data))
    proc = cli("stats", d)
    assert proc.returncode == 1
    one_line_error(proc, f"segment 2 offset {victim.offset}")


# -- gc -----------------------------------------------------------------------------------------


def test_gc_deletes_whole_segments_before_a_position(log):
    d, recs, pos = log
    keep = pos[250]
    files = segment_files(d)
    dry = cli("gc", d, "--before", keep, "--dry-run")
    assert dry.returncode == 0 and f"would delete {keep.segment_id} segment" in dry.stdout
    assert segment_files(d) == files
    proc = cli("gc", d, "--before", keep)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"deleted {keep.segment_id} segment")
    assert segment_files(d) == files[keep.segment_id :]
    dumped = cli("dump", d, "--json").stdout.splitlines()
    first_kept = next(i for i, p in enumerate(pos) if p.segment_id == keep.segment_id)
    assert [json.loads(x)["position"] for x in dumped] == [str(p) for p in pos[first_kept:]]
    assert len(dumped) == len(recs) - first_kept


def test_gc_never_deletes_the_active_segment(log):
    d, _recs, pos = log
    past = cli("gc", d, "--before", "999:0")  # past the end: refused, nothing deleted (test_gc_past_end.py)
    assert past.returncode == 2 and "past the end" in past.stderr
    proc = cli("gc", d, "--before", pos[-1])  # the last record: every segment before the active one
    assert proc.returncode == 0, proc.stderr
    assert len(segment_files(d)) == 1


def test_gc_on_a_locked_directory_fails_with_exit_3(log):
    d, _recs, _pos = log
    files = segment_files(d)
    with Wal.open(WalConfig(dir=d, max_segment_size=SEGMENT))[0]:
        proc = cli("gc", d, "--before", "3:0", "--timeout", "1")
    assert proc.returncode == 3
    one_line_error(proc, "locked")
    assert segment_files(d) == files


def test_gc_rejects_bad_positions_paths_and_non_logs(log, tmp_path):
    d, _recs, _pos = log
    proc = cli("gc", d, "--before", "2")
    assert proc.returncode == 2
    one_line_error(proc, "bad position")
    proc = cli("gc", tmp_path / "nope", "--before", "1:0")
    assert proc.returncode == 2
    one_line_error(proc, "no such directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cli("gc", empty, "--before", "1:0")
    assert proc.returncode == 2
    one_line_error(proc, "no segments")
    assert os.listdir(empty) == []  # gc never makes a log where there was none


def test_gc_asks_the_writer_process_that_owns_the_directory(tmp_path):
    from nori_wal.client import WalClient
    from nori_wal.writer_proc import WriterProcess

    d = tmp_path / "wal"
    config = WalConfig(dir=d, max_segment_size=SEGMENT, fsync_policy=FsyncPolicy.always())
    with WriterProcess.spawn(config) as writer:
        with WalClient(writer.endpoint, timeout=10.0) as client:
            pos = client.append_batch([Record.put(b"k%d" % i, b"x" * 100) for i in range(150)])
        keep = pos[-1]
        assert keep.segment_id >= 3
        proc = cli("gc", d, "--before", keep)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == (
            f"deleted {keep.segment_id} segments before {keep} through the writer process at {writer.endpoint}"
        )
        assert segment_files(d) == [segment_name(keep.segment_id)]
        assert cli("verify", d).returncode == 0


# -- wrong paths and failed reads -----------------------------------------------------------------


@pytest.mark.parametrize("command", ["dump", "verify", "stats"])
def test_a_segment_that_cannot_be_read_is_one_line_and_exit_4(log, command):
    d, _recs, _pos = log
    (d / segment_name(1)).unlink()
    (d / segment_name(1)).mkdir()  # reading it fails with EISDIR: an I/O error, not corruption
    proc = cli(command, d)
    assert proc.returncode == 4, proc.stderr
    one_line_error(proc, f"nori-wal {command}: error:", "Is a directory")


def test_dump_from_a_segment_that_cannot_be_read_exits_4(log):
    d, _recs, _pos = log
    (d / segment_name(1)).unlink()
    (d / segment_name(1)).mkdir()
    proc = cli("dump", d, "--from", "1:100")  # fails while checking the start position
    assert proc.returncode == 4 and proc.stdout == ""
    one_line_error(proc, "Is a directory")


def test_a_file_where_a_directory_must_be_is_a_wrong_path_exit_2(tmp_path):
    afile = tmp_path / "afile"
    afile.write_bytes(b"not a log")
    for path in (afile, afile / "sub", afile / "sub" / "deeper"):
        proc = cli("serve", "--dir", path)
        assert proc.returncode == 2, proc.stderr
        one_line_error(proc, "nori-wal serve: error:", str(path), "not a directory")
    proc = cli("torture", "--dir", afile / "sub", "--rounds", "1")
    assert proc.returncode == 2
    one_line_error(proc, f"{afile} is not a directory")
    proc = cli("load", "--dir", afile, "--quick", "--no-peers", "--no-plot")
    assert proc.returncode == 2
    one_line_error(proc, "nori-wal load: error:", "not a directory")
    for command in ("dump", "verify", "stats"):
        assert cli(command, afile).returncode == 2
    assert afile.read_bytes() == b"not a log"


def test_serve_keeps_exit_4_for_a_directory_it_cannot_recover(tmp_path):
    d = tmp_path / "wal"
    (d / segment_name(0)).mkdir(parents=True)  # the path is right; reading the segment fails
    proc = cli("serve", "--dir", d)
    assert proc.returncode == 4, proc.stderr
    one_line_error(proc, "nori-wal serve: error:", "Is a directory")


def test_serve_judges_the_directory_before_the_metrics_port(tmp_path, serve_process):
    """A second writer on a locked directory hears that (exit 3), even when its metrics port is the first
    writer's; a port already in use is named as such (exit 2), and the log is left closed cleanly."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        d = str(tmp_path / "wal")
        with Wal.open(WalConfig(dir=d))[0]:
            locked = serve_process("--dir", d, "--metrics-port", port)
            assert locked.wait(60) == 3
            assert "locked" in locked.stderr.read()
        other = serve_process("--dir", d, "--metrics-port", port)
        assert other.wait(60) == 2
        err = other.stderr.read()
        assert f"metrics port 127.0.0.1:{port}" in err and "in use" in err
    wal, info = Wal.open(WalConfig(dir=d))  # the lock is free again, the log clean
    wal.close()
    assert info.bytes_truncated == 0 and not info.corruption_detected


def test_gc_of_a_copied_directory_never_reaches_the_originals_writer(tmp_path, spawn_writer):
    """A copy of a live directory carries the original's DIR/WRITER; with the copy held by another process,
    gc (and a client) must not follow that record to the original's writer."""
    import shutil

    from nori_wal import WriterUnavailableError
    from nori_wal.client import WalClient

    orig, copy = tmp_path / "orig", tmp_path / "copy"
    w = spawn_writer(WalConfig(dir=orig, max_segment_size=SEGMENT, fsync_policy=FsyncPolicy.always()))
    with WalClient(w.endpoint, timeout=30) as c:
        c.append_batch([Record.put(b"k%d" % i, b"v" * 200) for i in range(80)])
        last = c.current_position()
    shutil.copytree(orig, copy, ignore=shutil.ignore_patterns("writer.sock*"))  # cp skips sockets too
    before = sorted(os.listdir(orig))
    with Wal.open(WalConfig(dir=copy, max_segment_size=SEGMENT))[0]:
        proc = cli("gc", copy, "--before", last, "--timeout", "5")
        assert proc.returncode == 3, proc.stderr
        with WalClient.for_dir(copy, timeout=1) as lost, pytest.raises(WriterUnavailableError):
            lost.append(Record.put(b"meant", b"for the copy"))
    assert sorted(os.listdir(orig)) == before


def test_gc_refuses_when_opening_the_log_had_to_cut_durable_records(tmp_path, spawn_writer):
    from nori_wal.client import WalClient

    d = tmp_path / "wal"
    w = spawn_writer(WalConfig(dir=d, max_segment_size=SEGMENT, fsync_policy=FsyncPolicy.always()))
    with WalClient(w.endpoint, timeout=30) as c:
        positions = c.append_batch([Record.put(b"k%d" % i, b"v" * 200) for i in range(40)])
    w.kill()  # no clean close: the last segment is not sealed
    last = positions[-1]
    path = d / segment_name(last.segment_id)
    data = bytearray(path.read_bytes())
    data[last.offset + 8] ^= 0x01  # damage the last record, below the durable mark
    path.write_bytes(bytes(data))
    before = sorted(os.listdir(d))
    proc = cli("gc", d, "--before", last)
    assert proc.returncode == 1
    line = one_line_error(proc, "found damage", "nothing was deleted")
    assert "made durable" in line
    assert sorted(n for n in os.listdir(d) if n.endswith(".wal")) == sorted(n for n in before if n.endswith(".wal"))


def test_cli_argument_checks_that_used_to_end_in_tracebacks(tmp_path):
    for bad in (["--metrics-port", "99999"], ["--max-segment-size", "0"]):
        proc = cli("serve", "--dir", tmp_path / "wal", *bad)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    for bad in (["--max-acks-per-round", "-1"], ["--max-segment-size", "10"]):
        proc = cli("torture", "--dir", tmp_path / "t", "--rounds", "1", *bad)
        assert proc.returncode == 2, proc.stderr
        one_line_error(proc)
    proc = cli(
        "load",
        "--dir",
        tmp_path / "ld",
        "--producers",
        "1",
        "--policies",
        "os",
        "--modes",
        "sync",
        "--seconds",
        "0.1",
        "--slices",
        "1",
        "--no-peers",
        "--f-seconds",
        "0.05",
        "--no-plot",
        "--json",
        tmp_path / "missing" / "x.json",
        timeout=120,
    )
    assert proc.returncode == 4 and "acked rec/s" in proc.stdout  # the table was printed first
    assert "Traceback" not in proc.stderr and "error: writing" in proc.stderr.strip().splitlines()[-1]


def test_an_unknown_log_level_is_bad_usage(tmp_path):
    proc = cli("--log-level", "bogus", "verify", tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
