"""``nori-wal stats DIR``: segments, records, bytes, first/last position, compression ratio.

Walks every record (read-only, no lock; CRCs checked on the way, as verify does).
The compression ratio is the compressed values' uncompressed size over their
stored size (read from the LZ4 / zstd headers, nothing is decompressed).
``--json`` prints the same figures as one JSON object.

Exit codes: 0 done (warnings allowed); 1 corruption was found (the figures cover
what could be read; each problem is printed on stderr); 2 a wrong path or no
segments; 4 an I/O error.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..inspect_log import LogReport, NotAWalDirectory, inspect_log
from ..segment import segment_name
from ._common import EXIT_FAILED, EXIT_IO, EXIT_OK, check_dir, error, fail, guarded, human_bytes, n, warn

HELP = "summarise a log: segments, records, bytes, first/last position, compression ratio"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="the log directory")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def figures(report: LogReport) -> dict[str, Any]:
    """The stats of a detailed LogReport as plain values (what ``--json`` prints)."""
    segs = report.segments
    by_comp: dict[str, int] = {}
    for s in segs:
        for name, count in s.by_compression.items():
            by_comp[name] = by_comp.get(name, 0) + count
    stored = sum(s.compressed_stored for s in segs)
    raw = sum(s.compressed_raw for s in segs)
    key_bytes = sum(s.key_bytes for s in segs)
    values = sum(s.value_bytes_stored for s in segs)
    first, last = report.first_position, report.last_position
    return {
        "directory": os.path.abspath(report.directory),
        "segments": len(segs),
        "first_segment": segs[0].segment_id if segs else None,
        "last_segment": segs[-1].segment_id if segs else None,
        "sealed_segments": sum(1 for s in segs if s.sealed),
        "bytes_on_disk": report.bytes,
        "records": report.records,
        "tombstones": sum(s.tombstones for s in segs),
        "records_with_ttl": sum(s.with_ttl for s in segs),
        "record_bytes": sum(s.frame_bytes for s in segs),
        "key_bytes": key_bytes,
        "value_bytes_stored": values,
        "value_bytes_raw": values - stored + raw,
        "largest_record_bytes": max((s.largest_frame for s in segs), default=0),
        "first_position": None if first is None else str(first),
        "last_position": None if last is None else str(last),
        "compressed_records": by_comp,
        "compressed_bytes_stored": stored,
        "compressed_bytes_raw": raw,
        "compression_ratio": round(raw / stored, 3) if stored else None,
        "problems": [
            {"segment": p.segment_id, "offset": p.offset, "message": p.message, "fatal": p.fatal}
            for p in report.problems
        ],
    }


def format_text(f: dict[str, Any]) -> str:
    """The figures as aligned ``name  value`` lines."""
    span = f"{segment_name(f['first_segment'])} .. {segment_name(f['last_segment'])}"
    segments = (
        f"{n(f['segments'])} ({span}, {n(f['sealed_segments'])} sealed), "
        f"{n(f['bytes_on_disk'])} bytes on disk ({human_bytes(f['bytes_on_disk'])})"
    )
    records = f"{n(f['records'])} ({n(f['tombstones'])} tombstones, {n(f['records_with_ttl'])} with TTL)"
    record_bytes = (
        f"{n(f['record_bytes'])} (keys {n(f['key_bytes'])}, values {n(f['value_bytes_stored'])} "
        f"stored / {n(f['value_bytes_raw'])} raw; largest record {n(f['largest_record_bytes'])})"
    )
    comp = f["compressed_records"]
    if comp:
        kinds = ", ".join(f"{name} {n(count)}" for name, count in sorted(comp.items()))
        compression = (
            f"{f['compression_ratio']:.2f}x: {n(f['compressed_bytes_raw'])} bytes of values "
            f"stored in {n(f['compressed_bytes_stored'])} ({kinds} records)"
        )
    else:
        compression = "none (no compressed records)"
    rows = [
        ("directory", f["directory"]),
        ("segments", segments),
        ("records", records),
        ("record bytes", record_bytes),
        ("first position", f["first_position"] or "-"),
        ("last position", f["last_position"] or "-"),
        ("compression", compression),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@guarded("stats")
def run(args: argparse.Namespace) -> int:
    directory = check_dir(args.dir)
    try:
        report = inspect_log(directory, detailed=True)
    except NotAWalDirectory as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"reading {directory}: {exc}", EXIT_IO)
    f = figures(report)
    print(json.dumps(f) if args.json else format_text(f), flush=True)
    for p in report.problems:
        (error if p.fatal else warn)("stats", f"{'corruption: ' if p.fatal else ''}{p}")
    return EXIT_OK if report.ok else EXIT_FAILED
