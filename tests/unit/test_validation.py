"""Bad arguments fail where they are written: TypeError/ValueError naming the field.

WalConfig, FsyncPolicy, Record's constructors and Position check what they are
given; Position's and FsyncPolicy's text forms round-trip; the error classes are
also the matching built-ins. Pure: no files, no sockets.
"""

from __future__ import annotations

import json
import pickle
import pydoc
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import nori_wal
from nori_wal import (
    Compression,
    FsyncPolicy,
    InvalidRecordError,
    Position,
    Record,
    Wal,
    WalConfig,
    WalError,
    WalIOError,
    WriterUnavailableError,
)
from nori_wal.config import MAX_SEGMENT_SIZE
from nori_wal.position import make_position

# -- FsyncPolicy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("always", FsyncPolicy.always()),
        ("batch", FsyncPolicy.batch()),
        ("batch:5ms", FsyncPolicy.batch(0.005)),
        ("batch:0.02s", FsyncPolicy.batch(0.02)),
        ("os", FsyncPolicy.os()),
        (" Always ", FsyncPolicy.always()),
    ],
)
def test_wal_config_takes_a_policy_as_text(text, policy):
    assert WalConfig(fsync_policy=text).fsync_policy == policy
    assert FsyncPolicy.parse(text) == policy


@pytest.mark.parametrize(
    ("args", "exc", "says"),
    [
        (("bogus",), ValueError, "FsyncPolicy kind must be one of 'always', 'batch', 'os', got 'bogus'"),
        (("batch:5ms",), ValueError, r"FsyncPolicy.parse\('batch:5ms'\) reads text"),
        ((None,), ValueError, "FsyncPolicy kind"),
        (("batch", 0), ValueError, "batch window must be a finite number of seconds > 0"),
        (("batch", float("inf")), ValueError, "batch window"),
        (("batch", -1.0), ValueError, "batch window"),
        (("batch", "5ms"), TypeError, "FsyncPolicy window must be a number of seconds, got str"),
        (("os", 0.5), ValueError, "window applies to 'batch' only"),
        (("always", True), TypeError, "window"),
    ],
)
def test_fsync_policy_refuses_what_it_cannot_mean(args, exc, says):
    with pytest.raises(exc, match=says):
        FsyncPolicy(*args)


def test_fsync_policy_parse_refuses_non_text_and_unknown_text():
    with pytest.raises(TypeError, match="FsyncPolicy.parse takes a string"):
        FsyncPolicy.parse(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown fsync policy 'sometimes'"):
        FsyncPolicy.parse("sometimes")


@given(st.integers(1, 10_000))
def test_a_policy_prints_as_text_that_parses_back(ms):
    for policy in (FsyncPolicy.batch(ms / 1000), FsyncPolicy.always(), FsyncPolicy.os()):
        assert FsyncPolicy.parse(str(policy)) == policy


# -- WalConfig -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "says"),
    [
        ({"fsync_policy": "sometimes"}, ValueError, "WalConfig fsync_policy: unknown fsync policy 'sometimes'"),
        ({"fsync_policy": 0.005}, TypeError, "WalConfig fsync_policy must be an FsyncPolicy or its text"),
        ({"max_segment_size": 99999999999999999999}, ValueError, "WalConfig max_segment_size must be from 4096 to"),
        ({"max_segment_size": MAX_SEGMENT_SIZE + 1}, ValueError, "largest file offset"),
        ({"max_segment_size": 4095}, ValueError, "WalConfig max_segment_size"),
        ({"max_segment_size": "4096"}, TypeError, "WalConfig max_segment_size must be an int, got str"),
        ({"max_segment_size": 4096.0}, TypeError, "WalConfig max_segment_size must be an int, got float"),
        ({"max_segment_size": True}, TypeError, "WalConfig max_segment_size must be an int, got bool"),
        ({"node_id": -1}, ValueError, "WalConfig node_id must fit in 32 bits"),
        ({"node_id": 2**32}, ValueError, "WalConfig node_id"),
        ({"node_id": "1"}, TypeError, "WalConfig node_id must be an int"),
        ({"dir": 5}, TypeError, "WalConfig dir must be a str or os.PathLike path, got int"),
        ({"dir": b"wal"}, TypeError, "WalConfig dir"),
        ({"dir": ""}, ValueError, "WalConfig dir must not be empty"),
    ],
)
def test_wal_config_refuses_bad_settings_naming_the_field(kwargs, exc, says):
    with pytest.raises(exc, match=says):
        WalConfig(**kwargs)


def test_wal_config_keeps_good_settings_as_given():
    cfg = WalConfig("d", max_segment_size=MAX_SEGMENT_SIZE, fsync_policy="os", node_id=2**32 - 1)
    assert (cfg.max_segment_size, cfg.fsync_policy, cfg.node_id) == (2**63 - 1, FsyncPolicy.os(), 2**32 - 1)
    assert WalConfig().fsync_policy == FsyncPolicy.batch(0.005)


# -- Record --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "kept"),
    [
        (5, timedelta(seconds=5)),
        (0.25, timedelta(milliseconds=250)),
        (0, timedelta(0)),
        (timedelta(minutes=5), timedelta(minutes=5)),
        (timedelta(microseconds=1999), timedelta(milliseconds=1)),  # kept to the millisecond, rounded down
    ],
)
def test_put_with_ttl_takes_a_timedelta_or_seconds(ttl, kept):
    assert Record.put_with_ttl(b"k", b"v", ttl).ttl == kept


@pytest.mark.parametrize(
    ("ttl", "exc", "says"),
    [
        ("5", TypeError, "Record ttl must be a datetime.timedelta or a number of seconds, got str"),
        (True, TypeError, "Record ttl must be a datetime.timedelta or a number of seconds, got bool"),
        (None, TypeError, "Record ttl"),
        (-1, ValueError, "Record ttl must be a finite, non-negative number of seconds, got -1"),
        (float("nan"), ValueError, "Record ttl must be a finite"),
        (1e300, ValueError, "longer than a timedelta can hold"),
        (timedelta(seconds=-1), ValueError, "Record ttl must not be negative"),
    ],
)
def test_put_with_ttl_refuses_what_is_not_a_duration(ttl, exc, says):
    with pytest.raises(exc, match=says):
        Record.put_with_ttl(b"k", b"v", ttl)


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: Record.put("k", b"v"), "Record key must be bytes, bytearray or memoryview"),
        (lambda: Record.put(b"k", 5), "Record value must be bytes"),
        (lambda: Record.delete(None), "Record key"),
    ],
)
def test_record_constructors_refuse_non_bytes_naming_the_field(call, says):
    with pytest.raises(TypeError, match=says):
        call()


def test_with_compression_names_the_choices():
    assert Record.put(b"k", b"v").with_compression(2).compression is Compression.ZSTD
    with pytest.raises(ValueError, match="Record compression must be one of Compression.NONE, .* got 7"):
        Record.put(b"k", b"v").with_compression(7)  # type: ignore[arg-type]


def test_an_invalid_raw_record_is_an_invalid_record_error_and_a_value_error():
    """``Record(...)`` is the unchecked tuple constructor (the decoder's); appending a bad one is refused."""
    assert issubclass(InvalidRecordError, ValueError) and issubclass(InvalidRecordError, WalError)
    from nori_wal.codec import encode_record

    with pytest.raises(InvalidRecordError, match="make one with Record.put"):
        encode_record(Record(b"k", "v"))  # type: ignore[arg-type]


# -- Position ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "exc", "says"),
    [
        ((-1, 0), ValueError, "Position segment_id must be >= 0 and < 2\\*\\*64, got -1"),
        ((0, -32), ValueError, "Position offset must be >= 0"),
        ((2**64, 0), ValueError, "Position segment_id"),
        ((0, 2**64), ValueError, "Position offset"),
        (("0", 32), TypeError, "Position segment_id must be an int, got str"),
        ((0, 32.0), TypeError, "Position offset must be an int, got float"),
        ((0, None), TypeError, "Position offset must be an int, got NoneType"),
        ((True, 32), TypeError, "Position segment_id must be an int, got bool"),
    ],
)
def test_position_refuses_negative_and_non_int_fields(args, exc, says):
    with pytest.raises(exc, match=says):
        Position(*args)


def test_position_keyword_and_largest_fields_are_fine():
    assert Position(segment_id=3, offset=32) == (3, 32)
    assert Position(2**64 - 1, 2**64 - 1) > Position(0, 0)
    assert make_position((-1, -1)) < Position(0, 0)  # the unchecked internal constructor (commit's "never")


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_position_text_json_and_pickle_round_trip(seg, off):
    pos = Position(seg, off)
    assert str(pos) == f"{seg}:{off}"
    assert Position.parse(str(pos)) == pos
    as_json = json.loads(json.dumps(pos))  # what a Celery task's result becomes: a list
    assert as_json == [seg, off]
    assert Position(*as_json) == pos == Position.coerce(as_json) == Position.coerce(str(pos))
    back = pickle.loads(pickle.dumps(pos))
    assert back == pos and type(back) is Position


@pytest.mark.parametrize("text", ["0", "0:", ":32", "a:b", "1:2:3", "-1:32", "0:-5", ""])
def test_position_parse_refuses_what_is_not_seg_off(text):
    with pytest.raises(ValueError, match="bad position"):
        Position.parse(text)


@pytest.mark.parametrize("value", [32, 1.5, None, b"0:32", (1, 2, 3), {"segment_id": 0}])
def test_position_coerce_says_what_it_takes(value):
    with pytest.raises(TypeError, match="a Position, a 'SEG:OFF' string or a \\[segment_id, offset\\] pair"):
        Position.coerce(value)


def test_position_fields_keep_tuple_behaviour():
    pos = Position(2, 96)
    assert pos._replace(offset=100) == Position(2, 100)
    assert hash(pos) == hash((2, 96)) and pos == (2, 96)


# -- error classes -------------------------------------------------------------------------------


def test_error_classes_are_also_the_matching_builtins():
    assert issubclass(WalIOError, OSError) and issubclass(WalIOError, WalError)
    assert issubclass(WriterUnavailableError, ConnectionError) and issubclass(WriterUnavailableError, WalError)
    err = WalIOError("opening /x failed: Permission denied")
    assert (err.errno, err.filename, str(err)) == (None, None, "opening /x failed: Permission denied")
    err.errno, err.filename = 13, "/x"
    assert (err.errno, err.filename) == (13, "/x")


def test_wal_io_error_takes_errno_and_filename_from_the_chained_os_error():
    import errno

    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/var/wal")
        except OSError as exc:
            raise WalIOError("opening /var/wal failed: Permission denied") from exc
    except OSError as caught:  # code written for the built-in catches it
        assert isinstance(caught, WalIOError)
        assert (caught.errno, caught.filename) == (errno.EACCES, "/var/wal")
        assert str(caught) == "opening /var/wal failed: Permission denied"  # not "[Errno 13] ..."


# -- the package's surface -----------------------------------------------------------------------


def test_clients_and_the_log_handler_are_importable_from_the_package():
    from nori_wal.client import AsyncWalClient, WalClient
    from nori_wal.log_handler import WalHandler

    assert (nori_wal.WalClient, nori_wal.AsyncWalClient, nori_wal.WalHandler) == (
        WalClient,
        AsyncWalClient,
        WalHandler,
    )
    assert {"WalClient", "AsyncWalClient", "WalHandler"} <= set(nori_wal.__all__) & set(dir(nori_wal))
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        nori_wal.NoSuchThing  # noqa: B018


def test_help_of_wal_leads_with_wal_open_and_wal_itself_says_to_use_it():
    text = pydoc.render_doc(Wal, renderer=pydoc.plaintext)
    body = text.split("class Wal", 1)[1]
    assert body.index("Wal.open") < body.index("Methods defined here")
    assert "Wal(log" not in text and "Wal() ->" not in text
    with pytest.raises(TypeError, match=r"Wal.open\(WalConfig\(dir\)\)"):
        Wal()
