"""``nori-wal dump DIR [--from SEG:OFF] [--follow] [--json]``: print the records of a log.

Reads the segment files directly (no lock, safe beside a running writer) and
prints one line per record. Plain lines show keys and values as Python bytes
literals, cut to ``--max-bytes``; ``--json`` prints one JSON object per line with
key and value in base64 (standard alphabet, padded), whole::

    {"position": "0:32", "segment": 0, "offset": 32, "key": "dXNlcjox", "value": "YWxpY2U=",
     "tombstone": false, "ttl_ms": null, "compression": "NONE"}

``--logs`` shows records a ``WalHandler`` wrote as log lines. ``--follow``
keeps waiting for records a writer appends (until Ctrl-C, which exits 0),
woken by the writer's wake-up socket after each fsync. Exit codes: 0 done; 1 corruption (names segment and offset); 2 a
wrong path or a bad ``--from`` position; 4 an I/O error.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from datetime import timedelta
from typing import Callable, TextIO

from ..errors import CorruptionError, WalError
from ..inspect_log import NotAWalDirectory, check_start, list_segments
from ..log_handler import format_log_record
from ..position import Position
from ..reader import WalReader, open_reader
from ..record import Record
from ._common import EXIT_FAILED, EXIT_IO, EXIT_OK, check_dir, count_arg, fail, guarded, parse_position

_MS = timedelta(milliseconds=1)

HELP = "print the records of a log, oldest first (--json: one JSON object per line; --follow: wait for more)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="the log directory")
    parser.add_argument(
        "--from",
        dest="start",
        metavar="SEG:OFF",
        default="0:0",
        help="start at this record position (default 0:0, the oldest record)",
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="after the last record, wait for new ones (Ctrl-C to stop)"
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="only records the writer has fsynced (read up to the durable mark it publishes)",
    )
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="one JSON object per line; key and value in base64")
    shape.add_argument(
        "--logs",
        action="store_true",
        help="show records a WalHandler wrote as log lines (time, level, logger, process, message); "
        "other records as usual",
    )
    parser.add_argument("-n", "--limit", type=count_arg, metavar="N", default=None, help="stop after N records")
    parser.add_argument(
        "--max-bytes",
        type=count_arg,
        metavar="N",
        default=64,
        help="plain output: show at most N bytes of each key and value (0: all; default 64)",
    )


def _show(data: bytes, max_bytes: int) -> str:
    if max_bytes and len(data) > max_bytes:
        return f"{data[:max_bytes]!r}...({len(data)} bytes)"
    return repr(data)


def format_plain(record: Record, pos: Position, max_bytes: int = 64) -> str:
    """One human-readable line: position, PUT/DEL, key, value, ttl, compression."""
    key = _show(bytes(record.key), max_bytes)
    if record.tombstone:
        line = f"{pos}\tDEL\tkey={key}"
    else:
        line = f"{pos}\tPUT\tkey={key}\tvalue={_show(bytes(record.value), max_bytes)}"
    if record.ttl is not None:
        line += f"\tttl={record.ttl // _MS}ms"
    if record.compression:
        line += f"\tcompression={record.compression.name}"
    return line


def format_log(record: Record, pos: Position, max_bytes: int = 64) -> str:
    """A WalHandler record as ``POS<TAB>LOG<TAB>`` and its log line (a traceback adds lines); any other
    record as ``format_plain`` shows it."""
    if not record.tombstone:
        try:
            return f"{pos}\tLOG\t{format_log_record(record.value)}"
        except ValueError:  # not a log record: the usual line
            pass
    return format_plain(record, pos, max_bytes)


def format_json(record: Record, pos: Position) -> str:
    """One JSON object (one line); key and value base64-encoded."""
    ttl_ms = None if record.ttl is None else record.ttl // _MS
    return json.dumps(
        {
            "position": str(pos),
            "segment": pos.segment_id,
            "offset": pos.offset,
            "key": base64.b64encode(bytes(record.key)).decode("ascii"),
            "value": base64.b64encode(bytes(record.value)).decode("ascii"),
            "tombstone": bool(record.tombstone),
            "ttl_ms": ttl_ms,
            "compression": record.compression.name,
        }
    )


def _check_start(directory: str, start: Position, follow: bool) -> None:
    """Fail (exit 2, or 4 on an I/O error) unless the log is there and ``start`` is a record boundary."""
    try:
        if not list_segments(directory) and not follow:
            fail(f"{directory}: no segments (NNNNNN.wal files) here; not a nori-wal log?")
        problem = check_start(directory, start)
    except NotAWalDirectory as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"reading {directory}: {exc}", EXIT_IO)
    if problem is not None:
        fail(f"bad position {start}: {problem}")


def _print_records(
    reader: WalReader, out: TextIO, fmt: Callable[[Record, Position], str], args: argparse.Namespace
) -> None:
    """Print records until the end (or ``--limit``); with ``--follow`` wait for more."""
    printed = 0
    while args.limit is None or printed < args.limit:
        item = reader.next_record()
        if item is None:
            if not args.follow:
                break
            out.flush()
            reader.wait_for_more()  # the writer's wake-up (within poll_interval without one)
            continue
        out.write(fmt(*item))
        out.write("\n")
        printed += 1
        if args.follow and printed % 1024 == 0:
            out.flush()
    out.flush()


@guarded("dump")
def run(args: argparse.Namespace) -> int:
    directory = check_dir(args.dir)
    start = parse_position(args.start)
    _check_start(directory, start, args.follow)
    out: TextIO = sys.stdout
    fmt: Callable[[Record, Position], str]
    if args.json:
        fmt = format_json
    elif args.logs:

        def fmt(record: Record, pos: Position) -> str:
            return format_log(record, pos, args.max_bytes)

    else:

        def fmt(record: Record, pos: Position) -> str:
            return format_plain(record, pos, args.max_bytes)

    try:
        with open_reader(directory, start, follow=args.follow, durable_only=args.durable) as reader:
            _print_records(reader, out, fmt, args)
    except CorruptionError as exc:
        out.flush()
        fail(str(exc), EXIT_FAILED)
    except WalError as exc:  # WalIOError: the reader wraps a failed read (the OSError is its cause)
        out.flush()
        fail(str(exc), EXIT_IO)
    except KeyboardInterrupt:
        out.flush()
        return EXIT_OK
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        fail(f"reading {directory}: {exc}", EXIT_IO)
    return EXIT_OK
