"""``nori-wal consumers DIR [--json] [--drop NAME]``: list a log's consumers, or drop one.

Lists every registered consumer (``DIR/consumers/NAME.cursor``): its last
committed position, where it resumes, its lag to the durable end in records
and bytes, its last commit time, and whether retention expired it. Read-only
and lock-free (cursor files are replaced atomically). ``--drop NAME`` forgets a
consumer, so it no longer holds GC back; it fails while that consumer is open.

Exit codes: 0 done; 1 a cursor file is damaged (listed, with why, on stderr);
2 a wrong path, a bad or unknown name; 3 ``--drop`` of a consumer that is open
in some process; 4 an I/O error.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..consumer import ConsumerInfo, drop_consumer, list_consumers
from ..cursor import name_problem
from ..errors import WalIOError, WalLockedError
from ._common import EXIT_FAILED, EXIT_IO, EXIT_LOCKED, EXIT_OK, check_dir, error, fail, guarded, human_bytes

HELP = "list a log's consumers (cursor, lag, last commit, expired), or --drop NAME"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="the log directory")
    parser.add_argument("--json", action="store_true", help="print one JSON array of objects")
    parser.add_argument("--drop", metavar="NAME", help="forget the consumer NAME (it stops holding GC back)")


def as_dict(info: ConsumerInfo) -> dict[str, Any]:
    """One consumer as plain values (what ``--json`` prints)."""
    return {
        "name": info.name,
        "committed": None if info.committed is None else str(info.committed),
        "next": None if info.next is None else str(info.next),
        "lag_records": info.lag_records,
        "lag_bytes": info.lag_bytes,
        "last_commit": None if info.last_commit is None else info.last_commit.isoformat(),
        "expired": info.expired,
        "lost": None if info.lost is None else [str(info.lost[0]), str(info.lost[1])],
        "damage": info.damage,
    }


def _table(infos: list[ConsumerInfo]) -> None:
    if not infos:
        print("no consumers")
        return
    rows = [("NAME", "COMMITTED", "NEXT", "LAG RECORDS", "LAG BYTES", "LAST COMMIT (UTC)", "STATE")]
    for i in infos:
        state = "damaged" if i.damage else "expired" if i.expired else "ok"
        when = "-" if i.last_commit is None else i.last_commit.strftime("%Y-%m-%d %H:%M:%S")
        committed = "-" if i.committed is None else str(i.committed)
        nxt = "-" if i.next is None else str(i.next)
        rows.append((i.name, committed, nxt, str(i.lag_records), human_bytes(i.lag_bytes), when, state))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def _drop(directory: str, name: str) -> int:
    problem = name_problem(name)
    if problem:
        fail(problem)
    try:
        dropped = drop_consumer(directory, name)
    except WalLockedError as exc:
        fail(f"{exc}; close it first", EXIT_LOCKED)
    if not dropped:
        fail(f"no consumer named {name!r} in {directory}")
    print(f"dropped consumer {name!r}")
    return EXIT_OK


@guarded("consumers")
def run(args: argparse.Namespace) -> int:
    directory = check_dir(args.dir)
    try:
        if args.drop is not None:
            return _drop(directory, args.drop)
        infos = list_consumers(directory)
    except (WalIOError, OSError) as exc:
        fail(f"{directory}: {exc}", EXIT_IO)
    if args.json:
        print(json.dumps([as_dict(i) for i in infos], indent=2))
    else:
        _table(infos)
    damaged = [i for i in infos if i.damage]
    for i in damaged:
        error("consumers", i.damage or "")
    return EXIT_FAILED if damaged else EXIT_OK
