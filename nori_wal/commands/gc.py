"""``nori-wal gc DIR --before SEG:OFF``: delete the segments wholly before a position.

Deletes whole segments whose number is below ``SEG``; never the active (last)
segment, never part of one. Records at or after the position stay readable.

Deleting needs the directory's writer lock, so gc opens the log as an embedded
``Wal`` (which recovers it, as any writer does) and closes it again. When a
writer process serves the directory, gc asks it instead through
``WalClient.for_dir(DIR)``; when another writer holds the lock and no writer
process answers (an embedded Wal in some program), gc fails with exit 3.
``--dry-run`` lists what would go, without the lock.

Exit codes: 0 done; 2 a wrong path, no segments or a bad position; 3 the
directory is locked by another writer that cannot be asked; 4 an I/O error;
1 recovery refused the log: an earlier segment's header or seal is damaged, or
an unsealed earlier segment holds a damaged record (a valid seal is trusted
without reading the records behind it: only verify checks every record).
"""

from __future__ import annotations

import argparse
import os

from ..codec import SEAL_FRAME_SIZE
from ..config import DEFAULT_MAX_SEGMENT_SIZE, FsyncPolicy, WalConfig
from ..errors import CorruptionError, PositionPastEndError, WalError, WalIOError, WalLockedError
from ..inspect_log import NotAWalDirectory, list_segments
from ..observe import CorruptionTruncated, RecordingMeter
from ..position import Position
from ..segment import segment_name
from ..wal import Wal
from ._common import EXIT_FAILED, EXIT_IO, EXIT_LOCKED, EXIT_OK, check_dir, fail, guarded, parse_position

HELP = "delete the segments wholly before SEG:OFF (never the active one)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="the log directory")
    parser.add_argument(
        "--before",
        required=True,
        metavar="SEG:OFF",
        help="delete every segment numbered below SEG (records from SEG:OFF on are kept)",
    )
    parser.add_argument("--dry-run", action="store_true", help="only list the segments that would be deleted")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for a writer process serving DIR (default 5)",
    )


def _names(ids: list[int]) -> str:
    if not ids:
        return "none"
    return segment_name(ids[0]) if len(ids) == 1 else f"{segment_name(ids[0])} .. {segment_name(ids[-1])}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _config(directory: str, ids: list[int]) -> WalConfig:
    """A config whose frame limit admits every record already on disk.

    gc appends nothing, but recovery treats a frame larger than the configured
    limit as damage, so a log written with larger segments than the default must
    not be opened with the default limit (it would cut off good records).
    """
    largest = max(os.path.getsize(os.path.join(directory, segment_name(s))) for s in ids)
    return WalConfig(
        dir=directory,
        max_segment_size=max(DEFAULT_MAX_SEGMENT_SIZE, largest + SEAL_FRAME_SIZE),
        fsync_policy=FsyncPolicy.always(),
    )


def _via_writer_process(directory: str, before: Position, timeout: float) -> tuple[int, str, str | None] | None:
    """Ask the writer process serving ``directory``; None when there is none to ask.

    Only the writer process recorded in DIR/WRITER that holds DIR's lock now is
    asked (``recorded_endpoint``): a directory locked by an embedded Wal fails at
    once instead of after ``timeout``, and a record copied with the directory (it
    names the original's writer) never deletes another log's segments.
    """
    try:
        from ..client import WalClient
        from ..endpoint_file import recorded_endpoint
    except ImportError:
        return None
    endpoint = recorded_endpoint(directory)
    if endpoint is None:
        return None
    try:
        client = WalClient(endpoint, timeout=timeout)
    except (WalError, OSError, ValueError):
        return None
    try:
        deleted = int(client.delete_segments_before(before))
        held = client.last_gc.describe(before) if client.last_gc else None  # consumers' cursors (retention)
    except PositionPastEndError as exc:
        fail(str(exc).removeprefix("writer: "))
    except WalError:
        return None
    finally:
        client.close()
    return deleted, endpoint, held


@guarded("gc")
def run(args: argparse.Namespace) -> int:
    directory = check_dir(args.dir)
    before = parse_position(args.before)
    try:
        ids = list_segments(directory)
    except NotAWalDirectory as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{directory}: {exc.strerror or exc}", EXIT_IO)
    if not ids:
        fail(f"{directory}: no segments (NNNNNN.wal files) here; not a nori-wal log?")
    if before.segment_id > ids[-1]:  # past the end: a typo must not empty the log
        fail(f"{before} is past the end of the log in {directory} (its last segment is {ids[-1]}); nothing was deleted")
    if args.dry_run:
        victims = [s for s in ids[:-1] if s < before.segment_id]
        print(
            f"would delete {_plural(len(victims), 'segment')} before {before} ({_names(victims)}); "
            f"{_plural(len(ids) - len(victims), 'segment')} would remain"
        )
        return EXIT_OK
    seen = RecordingMeter()
    try:
        wal, info = Wal.open_with_meter(_config(directory, ids), seen)  # (_config stats the segments)
    except WalLockedError as exc:
        asked = _via_writer_process(directory, before, args.timeout)
        if asked is None:
            fail(f"{exc}; stop it, or run gc through it (Wal.delete_segments_before)", EXIT_LOCKED)
        deleted, endpoint, held = asked
        print(
            f"deleted {_plural(deleted, 'segment')} before {before} through the writer process"
            + (f" at {endpoint}" if endpoint else "")
        )
        if held:
            print(held)
        return EXIT_OK
    except CorruptionError as exc:
        fail(f"{exc}; nothing was deleted (run nori-wal verify {directory})", EXIT_FAILED)
    except (WalIOError, OSError) as exc:
        fail(f"opening {directory}: {exc}", EXIT_IO)
    if info.corruption_detected:  # the open cut damage (recovery cannot do otherwise): say so, delete nothing
        wal.close()
        why = "; ".join(
            f"segment {e.segment} offset {e.offset}: {e.reason}" for e in seen.events_of(CorruptionTruncated)
        )
        fail(
            f"opening {directory} found damage and cut {info.bytes_truncated} bytes ({why}); nothing was deleted "
            f"(run nori-wal verify {directory})",
            EXIT_FAILED,
        )
    opened = list_segments(directory)
    try:
        with wal:
            deleted = wal.delete_segments_before(before)
            held = wal.last_gc.describe(before) if wal.last_gc else None  # consumers' cursors (retention)
    except PositionPastEndError as exc:
        fail(str(exc))
    except (WalIOError, OSError) as exc:
        fail(f"deleting segments in {directory}: {exc}", EXIT_IO)
    left = list_segments(directory)
    gone = [s for s in opened if s not in left]
    print(
        f"deleted {_plural(deleted, 'segment')} before {before} ({_names(gone)}); "
        f"{_plural(len(left), 'segment')} {'remains' if len(left) == 1 else 'remain'} ({_names(left)})"
    )
    if held:
        print(held)
    return EXIT_OK
