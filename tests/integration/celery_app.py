"""The Celery app the Celery test runs a real worker of (``celery -A celery_app worker``).

The docs' recipe, as a user writes it: one module-level WalClient, which works in
every pool (prefork children, threads, solo): it connects lazily, after the fork,
and gives each thread its own connection. (A client made in ``worker_process_init``
stays None under ``--pool=threads``, which never sends that signal.)

No broker server: kombu's ``filesystem://`` transport and the ``file://`` result
backend, both in directories the test names through the environment
(NORI_CELERY_DIR; NORI_WAL_DIR is the log a writer process serves).
"""

from __future__ import annotations

import os

from celery import Celery
from celery_config import configure

from nori_wal import Position, Record, WalClient

CELERY_DIR = os.environ.get("NORI_CELERY_DIR", "celery")
WAL_DIR = os.environ.get("NORI_WAL_DIR", "wal")


app = configure(Celery("celery_app"), CELERY_DIR)

client = WalClient.for_dir(WAL_DIR, timeout=10.0)  # module level: one per process, connected on first use


@app.task(name="celery_app.append_order")
def append_order(n: int) -> str:
    """Append one record; the Position as its text, which ``Position.parse`` reads back."""
    pos = client.append(Record.put(b"order:%d" % n, b"payload %d" % n))
    return str(pos)


@app.task(name="celery_app.append_order_position")
def append_order_position(n: int) -> Position:
    """Return the Position itself: JSON makes it a list ``[seg, off]``; ``Position(*result)`` rebuilds it."""
    return client.append(Record.put(b"order:%d" % n, b"payload %d" % n))


@app.task(name="celery_app.worker_pid")
def worker_pid() -> int:
    return os.getpid()


from nori_wal import WriterUnavailableError  # noqa: E402


@app.task(
    name="celery_app.append_order_once",
    bind=True,
    autoretry_for=(WriterUnavailableError,),
    default_retry_delay=0.2,
    max_retries=200,
)
def append_order_once(self, n: int) -> str:  # type: ignore[no-untyped-def]
    """docs/RETRIES.md's pattern: the task id is the key, so a retried task appends its record once."""
    record = Record.put(b"order:%d" % n, b"payload %d" % n).with_idempotency_key(self.request.id.encode())
    return str(client.append(record))
