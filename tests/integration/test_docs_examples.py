"""The documentation's code examples, run for real.

Every ```python fenced block of README.md and the docs/ pages of DOC_FILES is
extracted from the markdown when the tests are collected (so an edited example
is tested as edited) and executed with real files, real writer processes and
real sockets, each in a fresh temporary directory that is also the working
directory: the examples' relative paths ("wal", "mwal") land there unchanged.
What had to change to run an example in a test is listed, with the reason, in
SUBSTITUTIONS; nothing else differs from the docs.

A block is identified by its file and its first line ("README.md: from datetime
import timedelta"; a repeated first line in one file gets " #2", " #3"). Every
block must be registered in CHECKS (it runs, then its check asserts what the
surrounding text claims) or SKIPPED (with a reason): test_every_python_block_is_registered
fails for a new, unregistered block (which is still run) and for a stale entry.

No block needs context from another block or a writer started for it: each
runs alone in one fresh namespace (the writer example starts its own writer),
so the only context is the working directory (fixture doc_namespace), which
keeps relative paths as the docs print them instead of substituting them. A
block written as a script (SCRIPTS: ``if __name__ == "__main__":``, functions a
process pool must import) runs as ``python example.py`` in that directory instead.

A block whose feature is not merged yet is in PENDING: skipped with the reason,
its check already written; moving the entry to CHECKS turns it on.

test_cli_examples_print_what_the_docs_show additionally runs a few of the
``$ nori-wal ...`` command lines of CLI_DOCS against the log
docs/CLI.md's own example makes, and compares with the output printed there
(CLI_EXAMPLES, CLI_NORMALISE); README's ``nori-wal serve`` line is run too.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import msgpack
import pytest
import zmq
from writer_support import read_line

from nori_wal import (
    Compression,
    FsyncPolicy,
    Position,
    Record,
    Wal,
    WalConfig,
    WalReader,
    list_consumers,
    open_consumer,
    open_reader,
)
from nori_wal.client import WalClient
from nori_wal.codec import encode_record
from nori_wal.prometheus import MetricsServer
from nori_wal.writer_proc import WriterProcess

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = (
    "README.md",
    "docs/CLI.md",
    "docs/PROTOCOL.md",
    "docs/FORMAT.md",
    "docs/RECIPES.md",
    "docs/ARCHITECTURE.md",
    "docs/DURABILITY.md",
    "docs/PERFORMANCE.md",
    "docs/SECURITY.md",
    "docs/RETRIES.md",
)
PYTHON_INFO = frozenset({"python", "py", "python3"})  # fence info strings that mark a python block


# -- extracting fenced blocks ----------------------------------------------------------------


@dataclass(frozen=True)
class DocBlock:
    file: str  # relative to the repository root
    line: int  # 1-based line of the block's first line of code
    info: str  # the fence's info string's first word ("python", "" ...)
    source: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})\s*([^\s`]*)")


def fenced_blocks(rel: str, text: str | None = None) -> list[DocBlock]:
    """Every fenced code block of a markdown file (CommonMark fences: ``` or ~~~, up to 3 spaces indent)."""
    if text is None:
        text = (ROOT / rel).read_text(encoding="utf-8")
    lines = text.splitlines()
    out: list[DocBlock] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = len(m.group(1)), m.group(2), m.group(3).lower()
        close = re.compile(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        body = [ln[min(indent, len(ln) - len(ln.lstrip(" "))) :] for ln in lines[i + 1 : j]]  # CommonMark
        out.append(DocBlock(rel, i + 2, info, "\n".join(body) + "\n"))
        i = j + 1
    return out


def python_blocks() -> dict[str, DocBlock]:
    """The python blocks of DOC_FILES by key: ``FILE: FIRST LINE`` (" #N" for the Nth repeat in a file)."""
    found: dict[str, DocBlock] = {}
    for rel in DOC_FILES:
        for block in fenced_blocks(rel):
            if block.info not in PYTHON_INFO:
                continue
            first = next((ln.strip() for ln in block.source.splitlines() if ln.strip()), "")
            key, n = f"{rel}: {first}", 1
            while key in found:
                n += 1
                key = f"{rel}: {first} #{n}"
            found[key] = block
    return found


BLOCKS = python_blocks()


# -- what differs from the docs --------------------------------------------------------------


class Sub(NamedTuple):
    old: str  # text of the block (every occurrence is replaced; it must occur)
    new: str  # "{tmp}" is the test's temporary (and working) directory
    why: str


SUBSTITUTIONS: dict[str, tuple[Sub, ...]] = {
    "README.md: from nori_wal import Record, WalClient": (
        Sub(
            "tcp://db1.example:5555",
            "{endpoint}",
            "the README's host is an example: the writer SETUP starts with CURVE on loopback serves instead",
        ),
    ),
    "docs/CLI.md: from nori_wal import FsyncPolicy, Record, Wal, WalConfig": (
        Sub(
            "start_metrics_server(9464, meter)",
            "start_metrics_server(0, meter)",
            "a fixed port may be taken on a shared machine; the doc's own comment: port 0 picks one",
        ),
    ),
}

SKIPPED: dict[str, str] = {
    # "FILE: first line": "why it cannot run as written (e.g. a signature listing)",
}

# Blocks run as ``python example.py`` in the temporary directory (see the module docstring).
SCRIPTS: frozenset[str] = frozenset({"README.md: from multiprocessing import Pool"})


# -- running a block -------------------------------------------------------------------------


def rewritten(key: str, tmp: Path, fields: dict[str, str] | None = None) -> str:
    block = BLOCKS[key]
    src = block.source
    for sub in SUBSTITUTIONS.get(key, ()):
        assert sub.old in src, (
            f"{block.where}: the example no longer contains {sub.old!r}; update SUBSTITUTIONS in {__name__}"
        )
        src = src.replace(sub.old, sub.new.format(tmp=tmp, **(fields or {})))
    return src


def run_script(key: str, tmp: Path) -> str:
    """Run block ``key`` as ``python example.py`` in ``tmp`` (it must exit 0 within a minute); its stdout."""
    # Blank lines first, so that a traceback's line numbers are the markdown file's.
    (tmp / "example.py").write_text("\n" * (BLOCKS[key].line - 1) + rewritten(key, tmp), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp, capture_output=True, text=True, timeout=90, check=False
    )
    assert proc.returncode == 0, f"{BLOCKS[key].where} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def run_block(key: str, tmp: Path, namespace: dict[str, Any], fields: dict[str, str] | None = None) -> None:
    """Execute block ``key`` in ``namespace``; tracebacks name the markdown file and its line numbers."""
    block = BLOCKS[key]
    source = "\n" * (block.line - 1) + rewritten(key, tmp, fields)
    code = compile(source, str(ROOT / block.file), "exec", dont_inherit=True)
    exec(code, namespace)


def close_all(namespace: dict[str, Any]) -> None:
    """Release what an example left open (the docs' examples may leave a client open; -W error sees it)."""
    for value in namespace.values():
        if isinstance(value, logging.Handler):  # a WalHandler: off every logger, so later tests never reach it
            for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
                if isinstance(logger, logging.Logger):
                    logger.removeHandler(value)
            value.close()
        elif isinstance(value, WriterProcess):
            if value.is_alive():
                value.stop()
        elif isinstance(value, (WalClient, Wal, WalReader, MetricsServer)):
            value.close()


@pytest.fixture
def doc_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A fresh namespace for one example, run with the temporary directory as working directory."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__doc_example__"}
    try:
        yield namespace
    finally:
        close_all(namespace)


@dataclass
class Ctx:
    tmp: Path
    stdout: str
    spawn_writer: Callable[..., Any]


# -- what each example claims ----------------------------------------------------------------


def check_embedded(ns: dict[str, Any], ctx: Ctx) -> None:
    """README, "Embedded use": a fresh log recovers nothing; every record reads back as appended."""
    info = ns["info"]
    assert (info.valid_records, info.bytes_truncated) == (0, 0)
    assert ctx.stdout.splitlines()[0] == "0 0"
    assert ns["pos"] == Position(0, 32)  # the first record, just after the 32-byte header
    with open_reader(ctx.tmp / "app-wal") as reader:
        got = [(r.key, bytes(r.value), r.tombstone, r.ttl, r.compression) for r, _ in reader]
    assert got == [
        (b"user:1", b"alice", False, None, Compression.NONE),
        (b"session", b"x", False, timedelta(minutes=5), Compression.NONE),
        (b"blob", b"y" * 10_000, False, None, Compression.ZSTD),
        (b"user:0", b"", True, None, Compression.NONE),
    ]
    assert len(ctx.stdout.splitlines()) == 1 + len(got)  # the example prints each record once


def check_writer_service(ns: dict[str, Any], ctx: Ctx) -> None:
    """README, "The writer service": acked records are in the log, in order; the writer stopped cleanly."""
    assert ns["writer"].returncode == 0  # leaving the `with` stopped it gracefully
    with open_reader(ctx.tmp / "wal") as reader:
        got = [(r.key, bytes(r.value), p) for r, p in reader]
    assert [k for k, _, _ in got] == [b"k"] + [b"k%d" % i for i in range(100)]
    assert all(v == b"v" for _, v, _ in got)
    assert got[0][2] == ns["pos"]


def check_cli_demo_log(ns: dict[str, Any], ctx: Ctx) -> None:
    """docs/CLI.md's demo log: 254 records in 4 tiny segments, as the outputs below it say."""
    assert sorted(p.name for p in (ctx.tmp / "wal").glob("*.wal")) == [f"{i:06d}.wal" for i in range(4)]
    with open_reader(ctx.tmp / "wal") as reader:
        records = [r for r, _ in reader]
    assert len(records) == 254
    assert records[-1] == Record.delete(b"user:7")
    assert (records[-3].key, records[-3].compression) == (b"report:2026-11", Compression.ZSTD)
    assert bytes(records[-3].value) == b"month,orders,revenue\n" * 40


def check_prometheus(ns: dict[str, Any], ctx: Ctx) -> None:
    """docs/CLI.md, Prometheus: the figures of the scrape excerpt printed after the example."""
    text = ns["meter"].exposition().decode()
    for line in (
        "wal_records_total 1000.0",
        "wal_bytes_total 111900.0",
        "wal_segment_count 1.0",
        'wal_events_total{type="SegmentRoll"} 1.0',
        'wal_events_total{type="SegmentsDeleted"} 1.0',
        "wal_recovery_truncated_bytes_total 0.0",
    ):
        assert line in text.splitlines(), f"{line!r} not in the exposition"


def check_positions(ns: dict[str, Any], ctx: Ctx) -> None:
    """docs/PROTOCOL.md's positions(): fed a real writer's APPEND reply, it gives every record's position.

    The request is built as the protocol text describes it (a msgpack header, the
    frames as the second frame) and is larger than a segment, so the writer
    cuts it into several units: the reply has several runs.
    """
    positions = ns["positions"]
    writer = ctx.spawn_writer(
        WalConfig(dir=str(ctx.tmp / "proto-wal"), max_segment_size=4096, fsync_policy=FsyncPolicy.always())
    )
    frames = [encode_record(Record.put(b"key-%02d" % i, bytes([i]) * (900 + 37 * i))) for i in range(12)]
    ctx_zmq = zmq.Context()
    try:
        sock = ctx_zmq.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(writer.endpoint)
        sock.send_multipart([msgpack.packb([1, 1, 7, len(frames)]), b"".join(frames)])
        assert sock.poll(30_000), "no reply from the writer"
        version, request_id, status, runs = msgpack.unpackb(sock.recv())
    finally:
        ctx_zmq.destroy(linger=0)  # closes the socket too, also when the assert failed
    assert (version, request_id, status) == (1, 7, 0), runs
    assert len(runs) > 3, f"expected several runs, got {runs}"
    with open_reader(ctx.tmp / "proto-wal") as reader:
        on_disk = [tuple(p) for _, p in reader]
    assert positions(runs, [len(f) for f in frames]) == on_disk


def check_recipe_settings(ns: dict[str, Any], ctx: Ctx) -> None:
    """docs/RECIPES.md, settings: the two refusals print what the comments show; the record is in the log."""
    lines = ctx.stdout.splitlines()
    assert lines[0].startswith("WalConfig max_segment_size must be from 4096 to 9223372036854775807 bytes (")
    assert lines[1] == "Position segment_id must be >= 0 and < 2**64, got -1"
    with open_reader(ctx.tmp / "wal") as reader:
        assert [(bytes(r.key), p) for r, p in reader] == [(b"k", Position(0, 32))]


def check_recipe_errors(ns: dict[str, Any], ctx: Ctx) -> None:
    """docs/RECIPES.md, errors: the message printed is the one in the comment; the file is untouched."""
    assert ctx.stdout == "opening afile failed: Not a directory (a file has that name)\n"
    assert (ctx.tmp / "afile").read_text() == "not a log"


def check_recipe_log_handler(ns: dict[str, Any], ctx: Ctx) -> None:
    """docs/RECIPES.md, WalHandler: both records sent, keyed by the logger, printed as the comment shows."""
    lines = ctx.stdout.splitlines()
    assert lines[0] == "2 0"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO     app\.orders \[pid \d+ MainProcess\] "
        r"order 42 paid  order_id=42 amount=9\.5",
        lines[1],
    ), lines[1]
    assert " ERROR    app.orders " in lines[2] and lines[2].endswith("refund failed")
    with open_reader(ctx.tmp / "logs") as reader:
        docs = [(bytes(r.key), json.loads(bytes(r.value))) for r, _ in reader]
    assert [k for k, _ in docs] == [b"app.orders", b"app.orders"]
    assert docs[0][1]["extra"] == {"order_id": 42, "amount": 9.5}
    assert "ZeroDivisionError: division by zero" in docs[1][1]["exception"]


def check_recipe_celery(ns: dict[str, Any], ctx: Ctx) -> None:
    """docs/RECIPES.md, Celery: the task, run in this process against a real writer, appends and returns SEG:OFF.

    (A real worker of each pool runs the same code in tests/integration/test_celery.py.)
    """
    ctx.spawn_writer(str(ctx.tmp / "wal"))
    result = ns["record_payment"](7, 950)  # calling a task runs it here, as the worker would
    pos = Position.parse(result)
    with open_reader(ctx.tmp / "wal") as reader:
        assert [(bytes(r.key), bytes(r.value), p) for r, p in reader] == [(b"payment:7", b"950", pos)]


def check_consumer_quickstart(ns: dict[str, Any], ctx: Ctx) -> None:
    """README, Quickstart 3: the consumer prints each record, commits the last; a restart resumes after it."""
    log = ctx.tmp / "wal"
    with open_reader(log) as reader:
        got = [(p, bytes(r.key)) for r, p in reader]
    assert [k for _, k in got] == [b"order:0", b"order:1", b"order:2"]
    assert ctx.stdout.splitlines() == [f"{p} {k!r}" for p, k in got] + ["0"]  # "0:32 b'order:0'" ..., then the lag
    (info,) = list_consumers(log)
    assert (info.name, info.committed, info.lag_records) == ("mailer", got[-1][0], 0)
    with Wal.open(WalConfig(str(log), fsync_policy=FsyncPolicy.always()))[0] as wal:
        new = wal.append(Record.put(b"order:3", b"paid"))
    with open_consumer(log, "mailer") as consumer:  # "a restart, in any process, resumes after its last commit"
        record, position = next(iter(consumer))
    assert (bytes(record.key), position) == (b"order:3", new)


def check_pool_recipe(ns: dict[str, Any], ctx: Ctx) -> None:
    """README, multiprocessing pool (run as a script): 1000 jobs acknowledged, each in the log once."""
    assert ctx.stdout == "1000\n"
    with open_reader(ctx.tmp / "wal") as reader:
        keys = [bytes(r.key) for r, _ in reader]
    assert sorted(keys) == sorted(b"job:%d" % n for n in range(1000))


def check_readme_log_handler(ns: dict[str, Any], ctx: Ctx) -> None:
    """README, logging: the one log record is in the log, keyed by the logger, its extra= field kept."""
    assert (ns["handler"].sent, ns["handler"].dropped) == (1, 0)
    with open_reader(ctx.tmp / "logs") as reader:
        docs = [(bytes(r.key), json.loads(bytes(r.value))) for r, _ in reader]
    assert [k for k, _ in docs] == [b"app"]
    doc = docs[0][1]
    assert (doc["level"], doc["message"], doc["extra"]) == ("INFO", "order 42 paid", {"order_id": 42})


def check_readme_celery(ns: dict[str, Any], ctx: Ctx) -> None:
    """README, Celery exactly once: the same task id twice appends once; both calls return its position.

    ``Task.apply`` runs the task here, as a worker would, with the task id given.
    (A real worker of each pool runs tests/integration/test_celery.py.)
    """
    ctx.spawn_writer(str(ctx.tmp / "wal"))
    task = ns["record_payment"]
    first = task.apply(args=(7, 950), task_id="task-7").get()
    again = task.apply(args=(7, 950), task_id="task-7").get()  # a redelivery of the same task
    other = task.apply(args=(8, 100), task_id="task-8").get()
    assert first == again != other
    with open_reader(ctx.tmp / "wal") as reader:
        got = [(bytes(r.key), r.idempotency_key, p) for r, p in reader]
    assert got == [(b"payment:7", b"task-7", Position.parse(first)), (b"payment:8", b"task-8", Position.parse(other))]


def check_retries_keys(ns: dict[str, Any], ctx: Ctx) -> None:
    """docs/RETRIES.md: the retry returns the original position, says so, and writes nothing."""
    assert ctx.stdout.splitlines()[0] == "False True"
    with open_reader(ctx.tmp / "wal") as reader:
        records = [(bytes(r.key), r.idempotency_key, p) for r, p in reader]
    assert records[0] == (b"order:42", b"order-42-payment", ns["first"].position)
    assert len(records) == 2 and records[1][2] == ns["plain"] and len(records[1][1]) == 16  # an automatic key


def check_retries_celery(ns: dict[str, Any], ctx: Ctx) -> None:
    """docs/RETRIES.md, Celery: every run of one task (one task id) returns the same position; one record.

    (tests/integration/test_celery.py runs it in a real prefork worker across writer SIGKILLs.)
    """
    ctx.spawn_writer(str(ctx.tmp / "wal"))
    task = ns["record_payment"]
    runs = [task.apply(args=(7, 950), task_id="task-7").get() for _ in range(3)]  # run here, as the worker would
    assert len(set(runs)) == 1
    with open_reader(ctx.tmp / "wal") as reader:
        assert [(bytes(r.key), p) for r, p in reader] == [(b"payment:7", Position.parse(runs[0]))]


def serve_with_curve(ctx: Ctx) -> dict[str, str]:
    """README, Security, before its client runs: the keys and the clients directory as its shell lines make
    them (``nori-wal keygen``; the allowed public key copied), and a writer requiring CURVE on loopback tcp."""
    for name in ("server", "app"):
        subprocess.run(
            [sys.executable, "-m", "nori_wal.cli", "keygen", "keys", "--name", name],
            cwd=ctx.tmp,
            check=True,
            timeout=60,
        )
    (ctx.tmp / "clients").mkdir()
    (ctx.tmp / "clients" / "app.key").write_bytes((ctx.tmp / "keys" / "app.key").read_bytes())
    writer = ctx.spawn_writer(
        str(ctx.tmp / "wal"),
        endpoint="tcp://127.0.0.1:*",
        curve_secret=str(ctx.tmp / "keys" / "server.key_secret"),
        curve_clients=str(ctx.tmp / "clients"),
    )
    return {"endpoint": writer.endpoint}


def check_readme_security(ns: dict[str, Any], ctx: Ctx) -> None:
    """README, Security: the allowed CURVE client's append is in the log."""
    ns["client"].close()
    with open_reader(ctx.tmp / "wal") as reader:
        assert [(bytes(r.key), bytes(r.value)) for r, _ in reader] == [(b"k", b"v")]


# Run before a block (after which its check runs): returns the fields its SUBSTITUTIONS format in.
SETUP: dict[str, Callable[[Ctx], dict[str, str]]] = {
    "README.md: from nori_wal import Record, WalClient": serve_with_curve
}


CHECKS: dict[str, Callable[[dict[str, Any], Ctx], None]] = {
    "docs/RETRIES.md: from nori_wal import Record, WalClient, WalConfig": check_retries_keys,
    "docs/RETRIES.md: from celery import Celery": check_retries_celery,
    "README.md: from datetime import timedelta": check_embedded,
    "README.md: from nori_wal import WalConfig, FsyncPolicy, Record": check_writer_service,
    "README.md: from nori_wal import Record, WalClient, WalConfig, list_consumers, open_consumer": (
        check_consumer_quickstart
    ),
    "README.md: from multiprocessing import Pool": check_pool_recipe,
    "README.md: import logging": check_readme_log_handler,
    "README.md: from celery import Celery": check_readme_celery,
    "README.md: from nori_wal import Record, WalClient": check_readme_security,
    "docs/CLI.md: from datetime import timedelta": check_cli_demo_log,
    "docs/CLI.md: from nori_wal import FsyncPolicy, Record, Wal, WalConfig": check_prometheus,
    "docs/PROTOCOL.md: def positions(runs, frame_lengths):": check_positions,
    "docs/RECIPES.md: from nori_wal import FsyncPolicy, Position, Record, Wal, WalConfig": check_recipe_settings,
    "docs/RECIPES.md: import errno": check_recipe_errors,
    "docs/RECIPES.md: import logging": check_recipe_log_handler,
    "docs/RECIPES.md: from celery import Celery": check_recipe_celery,
}


# Written, not yet run: the feature is being merged. Move an entry to CHECKS to turn it on.
PENDING: dict[str, tuple[Callable[[dict[str, Any], Ctx], None], str]] = {}
SKIPPED.update({key: reason for key, (_, reason) in PENDING.items()})


# -- the tests -------------------------------------------------------------------------------


def test_every_python_block_is_registered() -> None:
    """A new python block must be given a check (CHECKS) or a reason to skip it (SKIPPED); no stale entries."""
    assert BLOCKS, "no python blocks found: did the docs move?"
    unregistered = [f"{BLOCKS[k].where}  {k!r}" for k in BLOCKS if k not in CHECKS and k not in SKIPPED]
    assert not unregistered, "python blocks neither checked nor skipped:\n" + "\n".join(unregistered)
    both = sorted(set(CHECKS) & set(SKIPPED))
    assert not both, f"both checked and skipped: {both}"
    stale = sorted((set(CHECKS) | set(SKIPPED) | set(SUBSTITUTIONS) | SCRIPTS) - set(BLOCKS))
    assert not stale, f"entries for blocks no longer in the docs (first line changed?): {stale}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key", list(BLOCKS), ids=[b.where for b in BLOCKS.values()])
def test_python_example(
    key: str,
    tmp_path: Path,
    doc_namespace: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    spawn_writer: Callable[..., Any],
) -> None:
    if key in SKIPPED:
        pytest.skip(f"{BLOCKS[key].where}: {SKIPPED[key]}")
    if key in SCRIPTS:
        stdout = run_script(key, tmp_path)
    else:
        fields = SETUP[key](Ctx(tmp_path, "", spawn_writer)) if key in SETUP else None
        run_block(key, tmp_path, doc_namespace, fields)
        stdout = capsys.readouterr().out
    check = CHECKS.get(key)
    if check is not None:  # an unregistered block still runs; the registry test fails for it
        check(doc_namespace, Ctx(tmp_path, stdout, spawn_writer))


# -- the command line: docs/CLI.md's real output ---------------------------------------------

CLI_DEMO_LOG = "docs/CLI.md: from datetime import timedelta"  # the python block that makes the log
CLI_DOCS = ("docs/CLI.md", "README.md", "docs/ARCHITECTURE.md")

# The command lines (as printed after "$ ", comment dropped) that are run, in this order, against
# the demo log, with the exit code docs/CLI.md's table gives; gc last, since it deletes segments.
CLI_EXAMPLES: dict[str, int] = {
    "nori-wal verify wal": 0,
    "nori-wal verify wal -v": 0,
    "nori-wal dump wal | head -3": 0,
    "nori-wal dump wal --from 3:491": 0,
    "nori-wal dump wal --from 3:542 -n 2": 0,
    "nori-wal dump wal --json --from 3:32 -n 2": 0,
    "nori-wal stats wal": 0,
    "nori-wal stats wal | head -3": 0,
    "nori-wal stats wal --json": 0,
    "nori-wal dump nowhere": 2,
    "nori-wal dump wal --from 2:40": 2,
    "nori-wal gc wal --before 2": 2,
    "nori-wal gc wal --before 2:32 --dry-run": 0,
    "nori-wal gc wal --before 2:32": 0,
}

# What legitimately differs between the docs' run and this one, normalised on both sides.
CLI_NORMALISE: tuple[tuple[str, str], ...] = (
    (r"checked in \d+\.\d\d s", "checked in <T> s"),  # verify's timing
    (r"^(directory\s+)\S+$", r"\1<DIR>"),  # stats: the log's absolute path
    (r'"directory": "[^"]*"', '"directory": "<DIR>"'),  # stats --json: the same
    (r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "<TIME> "),  # serve's log: timestamps
    (r"\(pid \d+,", "(pid <PID>,"),  # and the writer's pid
)


class Session(NamedTuple):
    where: str
    command: str
    output: list[str]


def cli_sessions() -> list[Session]:
    """Every ``$ nori-wal ...`` line of CLI_DOCS' plain code blocks, with the output lines under it."""
    out: list[Session] = []
    for rel in CLI_DOCS:
        for block in fenced_blocks(rel):
            if block.info not in ("", "console", "shell-session"):
                continue
            current: Session | None = None
            for n, line in enumerate(block.source.splitlines()):
                if line.startswith("$ "):
                    current = None
                    command = re.sub(r"\s+#.*$", "", line[2:]).strip()
                    if command.startswith("nori-wal "):
                        current = Session(f"{rel}:{block.line + n}", command, [])
                        out.append(current)
                elif current is not None:
                    current.output.append(line)
    return out


def normalise(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern, repl in CLI_NORMALISE:
            line = re.sub(pattern, repl, line)
        out.append(line)
    return out


def run_cli(command: str, cwd: Path) -> tuple[int, list[str]]:
    """Run a doc command line (``nori-wal ARGS [| head -N]``) as ``python -m nori_wal.cli``; (rc, stdout+stderr)."""
    m = re.fullmatch(r"(.*?)\s*\|\s*head -(\d+)", command)
    args = shlex.split(m.group(1) if m else command)
    assert args[0] == "nori-wal", command
    proc = subprocess.run(
        [sys.executable, "-m", "nori_wal.cli", *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    stdout = proc.stdout.splitlines()
    if m:
        stdout = stdout[: int(m.group(2))]
    return proc.returncode, stdout + proc.stderr.splitlines()


@pytest.mark.timeout(180)
def test_cli_examples_print_what_the_docs_show(tmp_path: Path, doc_namespace: dict[str, Any]) -> None:
    """The listed command lines, on the log docs/CLI.md's example makes, print what the docs print."""
    sessions = cli_sessions()
    missing = [c for c in CLI_EXAMPLES if not any(s.command == c for s in sessions)]
    assert not missing, f"command lines no longer in {CLI_DOCS}; update CLI_EXAMPLES: {missing}"
    run_block(CLI_DEMO_LOG, tmp_path, doc_namespace)
    failures = []
    for command, expected_rc in CLI_EXAMPLES.items():
        rc, got = run_cli(command, tmp_path)
        if rc != expected_rc:
            failures.append(f"$ {command}\nexit {rc}, expected {expected_rc}\n" + "\n".join(got))
        for s in (s for s in sessions if s.command == command):
            if normalise(got) != normalise(s.output):
                failures.append(
                    f"{s.where}: $ {command}\n--- docs\n" + "\n".join(s.output) + "\n--- this run\n" + "\n".join(got)
                )
    assert not failures, "\n\n".join(failures)


SERVE_EXAMPLE = "nori-wal serve --dir /tmp/sv/wal --fsync always"  # README.md, "Quickstart", 4
SERVE_DIR = "/tmp/sv/wal"  # replaced by a directory below tmp_path, in the command and its output


@pytest.mark.timeout(120)
def test_serve_example_prints_its_endpoint_and_exits_0_on_sigterm(
    tmp_path: Path, serve_process: Callable[..., subprocess.Popen[str]]
) -> None:
    """README's ``nori-wal serve`` line: stdout is the endpoint, stderr the log shown; SIGTERM exits 0."""
    sessions = [s for s in cli_sessions() if s.command == SERVE_EXAMPLE]
    assert sessions, f"{SERVE_EXAMPLE!r} is no longer in {CLI_DOCS}"
    real = str(tmp_path / "sv" / "wal")
    expected = [line.replace(SERVE_DIR, real) for line in sessions[0].output]
    args = shlex.split(SERVE_EXAMPLE.replace(SERVE_DIR, real))
    assert args[:2] == ["nori-wal", "serve"]
    proc = serve_process(*args[2:])
    assert read_line(proc).rstrip("\n") == expected[0]  # printed once it serves
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out == ""
    assert normalise(err.splitlines()) == normalise(expected[1:])


def test_fence_parser_sees_what_markdown_sees() -> None:
    """The extractor itself: info strings, indented and ~~~ fences, longer closing fences, line numbers."""
    sample = textwrap.dedent("""\
        text
        ```python
        a = 1
        ```
          ~~~~ py
          b = 2
          ```
          ~~~~~
        ```
        $ nori-wal x
        ````
        """)
    blocks = fenced_blocks("sample.md", sample)
    assert [(b.info, b.line, b.source) for b in blocks] == [
        ("python", 3, "a = 1\n"),
        ("py", 6, "b = 2\n```\n"),
        ("", 10, "$ nori-wal x\n"),
    ]
