"""Broker and result backend of the Celery test, shared by the worker (celery_app) and the test that sends.

kombu's ``filesystem://`` transport and Celery's ``file://`` result backend: no broker server.
kombu writes a message file in place, so a worker polling the folder can take
it while still empty and die of a JSONDecodeError (seen on a loaded machine);
``AtomicFilesystemTransport`` writes it under a name the worker skips and
renames it in whole.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.json import dumps


class _AtomicChannel(filesystem.Channel):  # type: ignore[misc]
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"  # kombu's own naming
        final = os.path.join(self.data_folder_out, name)
        tmp = os.path.join(self.data_folder_out, f"writing-{uuid.uuid4()}")  # not "<...>.<queue>.msg": skipped
        with open(tmp, "wb") as f:
            f.write(dumps(payload).encode())
        os.rename(tmp, final)


class AtomicFilesystemTransport(filesystem.Transport):  # type: ignore[misc]
    Channel = _AtomicChannel


TRANSPORT_ALIASES["norifs"] = lambda: AtomicFilesystemTransport


def configure(app: Celery, celery_dir: str) -> Celery:
    """Broker and result backend in ``celery_dir`` (used by the worker and by the test that sends tasks)."""
    queue_dir = os.path.join(celery_dir, "queue")
    results_dir = os.path.join(celery_dir, "results")
    for d in (queue_dir, results_dir):
        os.makedirs(d, exist_ok=True)
    app.conf.update(
        broker_url="norifs://",
        broker_transport_options={
            "data_folder_in": queue_dir,
            "data_folder_out": queue_dir,
            "control_folder": os.path.join(celery_dir, "control"),  # (default: ./control in the cwd)
            "polling_interval": 0.05,
        },
        result_backend=f"file://{results_dir}",
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app
