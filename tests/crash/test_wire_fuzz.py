"""Hostile producers: malformed, truncated, oversized and wrong-typed messages against a live writer.

Invariant: every malformed message sent on a raw DEALER socket gets an ERR
reply naming a WalError (ProtocolError or RecordTooLargeError), the writer
stays up, a well-behaved producer appending meanwhile is never disturbed, and
at the end the log holds exactly the good producer's records, at the positions
it was given. The messages are invalid by construction (or, for random bytes,
checked against the protocol's pure validator first), so "the writer accepted
it" is always a failure.
"""

from __future__ import annotations

import struct
import threading

import msgpack
import pytest
import zmq
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nori_wal import FsyncPolicy, ProtocolError, Record, RecordTooLargeError, WalConfig, open_reader
from nori_wal import protocol as P
from nori_wal.client import WalClient
from nori_wal.codec import FORMAT_MAX_FRAME, _varint, decompress_value, encode_record, encode_seal
from nori_wal.writer_proc import WriterProcess

SEGMENT = 64 * 1024
FUZZ = settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


class RawProducer:
    """A bare DEALER socket: sends any frames, waits (bounded) for one reply."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sent = 0

    def ask(self, frames: list[bytes], timeout_ms: int = 10_000) -> P.Reply | None:
        self.sock.send_multipart(frames)
        self.sent += 1
        if not self.sock.poll(timeout_ms):
            return None
        return P.decode_reply(self.sock.recv())

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


class GoodProducer(threading.Thread):
    """A well-behaved producer appending all along; remembers what was acknowledged where."""

    def __init__(self, directory: str):
        super().__init__(name="good-producer", daemon=True)
        self.client = WalClient.for_dir(directory, timeout=20)
        self.stop = threading.Event()
        self.acked: list[tuple[bytes, object]] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                rec = Record.put(b"good-%07d" % i, b"v" * (i % 200))
                self.acked.append((rec.key, self.client.append(rec)))
                i += 1
        except BaseException as exc:  # noqa: BLE001 - the test asserts there were none
            self.errors.append(exc)
        finally:
            self.client.close()


@pytest.fixture
def live(tmp_path):
    cfg = WalConfig(dir=str(tmp_path / "wal"), max_segment_size=SEGMENT, fsync_policy=FsyncPolicy.always())
    writer = WriterProcess.spawn(cfg)
    good = GoodProducer(cfg.dir)
    raw = RawProducer(writer.endpoint)
    good.start()
    try:
        yield writer, good, raw, cfg
    finally:
        good.stop.set()
        good.join(30)
        raw.close()
        if writer.is_alive():
            writer.stop()


def frame_with(body: bytes) -> bytes:
    """A frame with a correct CRC over ``body`` (checksums are no defence against a hostile producer)."""
    return struct.pack("<I", crc32c(body)) + body


def good_frames(n: int, seed: int) -> list[bytes]:
    return [encode_record(Record.put(b"fuzz-%d-%d" % (seed, i), b"x" * ((seed + i * 37) % 300))) for i in range(n)]


# -- strategies: each yields (frames to send, request id to expect or None) ---------------------


def _valid_by_the_book(frames: list[bytes]) -> bool:
    """Whether the protocol's pure validator would accept ``frames`` (random bytes rarely are)."""
    req = P.decode_request(frames)
    if type(req) is P.Control:
        return True
    if type(req) is P.Append:
        return P.check_payload(req.payload, req.record_count, SEGMENT - 55) is None
    return False


random_frames = st.lists(st.binary(max_size=400), min_size=1, max_size=4).filter(lambda f: not _valid_by_the_book(f))

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def typed_headers(draw):
    """Wrong-typed headers: any msgpack value, sometimes with a payload frame."""
    head = msgpack.packb(draw(msgpack_values), use_bin_type=True)
    frames = [head] + ([draw(st.binary(max_size=200))] if draw(st.booleans()) else [])
    return frames


@st.composite
def near_valid_headers(draw):
    """A header one mistake away from valid: version, op, argument count or types, request id, payload.

    Returns the frames and the request id the error reply must carry (0 when the header
    is unreadable as a whole).
    """
    rid = draw(st.integers(0, 2**64 - 1))
    op = draw(st.sampled_from(list(P.Op)))
    header = [P.VERSION, int(op), rid] + [draw(st.integers(1, 2**32)) for _ in range(P._ARGS[op])]
    payload = [draw(st.binary(min_size=1, max_size=50))] if op is P.Op.APPEND else []
    mistake = draw(st.sampled_from(["version", "op", "args", "argtype", "rid", "payload", "negative"]))
    expect = rid
    if mistake == "version":
        header[0] = draw(st.integers(-(2**63), 2**64 - 1).filter(lambda v: v != P.VERSION))
    elif mistake == "op":
        header[1] = draw(st.integers(-(2**63), 2**64 - 1).filter(lambda v: v not in {int(o) for o in P.Op}))
    elif mistake == "args":
        header = header[:3] + [1] * draw(st.integers(0, 6).filter(lambda k: k != P._ARGS[op]))
    elif mistake == "argtype":
        header.append(draw(st.floats() | st.text(max_size=3) | st.binary(max_size=3) | st.none()))
        expect = 0
    elif mistake == "rid":
        header[2] = draw(st.integers(-(2**63), -1))
        expect = 0
    elif mistake == "payload":
        payload = [] if op is P.Op.APPEND else [draw(st.binary(max_size=50))]
    elif mistake == "negative":
        if op is P.Op.APPEND:
            header[3] = draw(st.integers(-(2**63), 0))
        elif op is P.Op.DELETE:
            header[3 + draw(st.integers(0, 1))] = draw(st.integers(-(2**63), -1))
        else:
            header.append(-1)
    return [msgpack.packb(header, use_bin_type=True)] + payload, expect


_BAD_FRAME_KINDS = ("seal", "reserved", "compmask", "lz4-poison", "zstd-poison", "too-large", "huge-length")


def _bad_frame(draw, kind: str, count: int) -> bytes:
    """One frame the writer must refuse, to follow ``count`` good ones: a seal, reserved or bad flags,
    a checksummed value that does not decompress, a frame larger than a segment, a huge length."""
    if kind == "seal":
        return encode_seal(count, 32)
    if kind == "reserved":
        return frame_with(_varint(1) + _varint(1) + bytes([draw(st.sampled_from([0x10, 0x20, 0x40]))]) + b"kv")
    if kind == "compmask":
        return frame_with(_varint(1) + _varint(1) + bytes([0x0C]) + b"kv")
    if kind in ("lz4-poison", "zstd-poison"):
        comp = 1 if kind == "lz4-poison" else 2
        junk = draw(st.binary(min_size=0, max_size=60))
        if comp == 1:
            junk = struct.pack("<I", draw(st.integers(0, 2**32 - 1))) + junk
        if decompress_value(junk, comp, FORMAT_MAX_FRAME) is not None:  # by chance a real compressed value
            junk = b"\x10\x00\x00\x00\xff\xff\xff"  # LZ4 claiming 16 bytes, invalid block
        return frame_with(_varint(1) + _varint(len(junk)) + bytes([comp << 2]) + b"k" + junk)
    if kind == "too-large":
        big = b"b" * (SEGMENT + draw(st.integers(0, 5000)))
        return frame_with(_varint(1) + _varint(len(big)) + b"\x00" + b"k" + big)
    assert kind == "huge-length"
    return b"\x01\x02\x03\x04" + _varint(1) + _varint(draw(st.integers(2**20, 2**35 - 1))) + b"\x00k"


@st.composite
def bad_payloads(draw):
    """APPENDs whose payload is wrong: counts, cuts, flips, seals, flags, zeros, poison values, size."""
    seed = draw(st.integers(0, 10**6))
    frames = good_frames(draw(st.integers(1, 6)), seed)
    payload = b"".join(frames)
    count = len(frames)
    kind = draw(
        st.sampled_from(
            [
                "count",
                "cut",
                "flip",
                "garbage",
                "zeros",
                "seal",
                "reserved",
                "compmask",
                "lz4-poison",
                "zstd-poison",
                "too-large",
                "empty",
                "huge-length",
            ]
        )
    )
    if kind in _BAD_FRAME_KINDS:
        payload += _bad_frame(draw, kind, count)
        count += 1
    elif kind == "count":
        count = draw(st.integers(-(2**31), 2**32).filter(lambda c: c != len(frames)))
    elif kind == "cut":
        payload = payload[: draw(st.integers(1, len(payload) - 1))]
        if P.check_payload(payload, count, SEGMENT) is None:  # cut exactly at a frame boundary
            count += 1
    elif kind == "flip":
        at = draw(st.integers(0, len(payload) - 1))
        payload = payload[:at] + bytes([payload[at] ^ draw(st.integers(1, 255))]) + payload[at + 1 :]
    elif kind == "garbage":
        payload += draw(st.binary(min_size=1, max_size=40).filter(any))
    elif kind == "zeros":
        payload += bytes(draw(st.integers(1, 40)))
    elif kind == "empty":
        payload, count = b"", draw(st.integers(0, 3))
    rid = draw(st.integers(0, 2**64 - 1))
    head = P.encode_append(rid, count) if -(2**63) <= count < 2**64 else P.encode_append(rid, 0)
    # The one-frame form needs the fixed header; msgpack's own encoding can be 17 bytes long too
    # (a request id under 2**32 and a count over), so ask the parser, not the length.
    if P.append_header(head) is not None and draw(st.booleans()):
        return [head + payload], rid, kind + "/compact"
    return [head, payload], rid, kind


def expect_error(reply: P.Reply | None, rid: int | None, what: object) -> None:
    assert reply is not None, f"no reply to {what!r:.200}"
    assert not reply.ok, f"the writer accepted {what!r:.300}"
    assert isinstance(reply.result, (ProtocolError, RecordTooLargeError)), reply.result
    assert str(reply.result)
    if rid is not None:
        assert reply.request_id == rid


def test_wire_fuzz_against_a_live_writer(live, crash_counts):
    writer, good, raw, cfg = live
    kinds: dict[str, int] = {}

    @FUZZ
    @given(random_frames)
    def fuzz_random_bytes(frames):
        expect_error(raw.ask(frames), None, frames)

    @FUZZ
    @given(typed_headers())
    def fuzz_wrong_types(frames):
        if _valid_by_the_book(frames):
            return
        expect_error(raw.ask(frames), None, frames)

    @FUZZ
    @given(near_valid_headers())
    def fuzz_near_valid_headers(case):
        frames, rid = case
        expect_error(raw.ask(frames), rid, frames)

    @FUZZ
    @given(bad_payloads())
    def fuzz_bad_payloads(case):
        frames, rid, kind = case
        for k in (kind.split("/")[0], "one-frame" if kind.endswith("/compact") else "two-frame"):
            kinds[k] = kinds.get(k, 0) + 1
        expect_error(raw.ask(frames), rid, (kind, frames[-1][:120]))

    for fuzz in (fuzz_random_bytes, fuzz_wrong_types, fuzz_near_valid_headers, fuzz_bad_payloads):
        fuzz()
        assert writer.is_alive() and not good.errors

    # A payload over the message limit (but under the transport's hard cap): a clear error.
    over = b"".join(good_frames(1, 1)) * (P.MAX_PAYLOAD_BYTES // len(b"".join(good_frames(1, 1))) + 1)
    expect_error(raw.ask([P.encode_append(99, over.count(b"fuzz-1-0")), over], 60_000), 99, "oversized")
    # The writer still answers properly.
    ok = raw.ask([P.encode_request(P.Op.POSITION, 5)])
    assert ok is not None and ok.ok and ok.request_id == 5

    crash_counts["malformed"] += raw.sent - 1
    good.stop.set()
    good.join(30)
    assert not good.errors and len(good.acked) > 0
    assert writer.stop() == 0
    with open_reader(cfg.dir) as r:
        log = [(bytes(rec.key), pos) for rec, pos in r]
    assert log == good.acked, "the log must hold exactly the good producer's records"
    assert set(kinds) >= {"count", "cut", "flip", "seal", "lz4-poison", "too-large", "one-frame", "two-frame"}, kinds


def test_a_message_over_the_transport_cap_cannot_harm_the_writer(live, crash_counts):
    """Beyond ZMQ_MAXMSGSIZE the transport drops the connection (no reply possible); the writer stays up."""
    writer, good, raw, cfg = live
    raw.sock.send_multipart([P.encode_append(1, 1), b"\x00" * (P.MAX_MESSAGE_BYTES + 1)])
    assert raw.sock.poll(2000) == 0
    crash_counts["malformed"] += 1
    with WalClient(writer.endpoint, timeout=20) as client:
        pos = client.append(Record.put(b"still", b"serving"))
    good.stop.set()
    good.join(30)
    assert not good.errors and writer.stop() == 0
    with open_reader(cfg.dir) as r:
        keys = [bytes(rec.key) for rec, _ in r]
    assert keys.count(b"still") == 1 and all(k == b"still" or k.startswith(b"good-") for k in keys)
    assert pos.segment_id >= 0
