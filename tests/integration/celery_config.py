"""Broker and result backend of the Celery test, shared by the worker (celery_app) and the test that sends.

kombu's ``filesystem://`` transport and Celery's ``file://`` result backend: no broker server.
"""

from __future__ import annotations

import os

from celery import Celery


def configure(app: Celery, celery_dir: str) -> Celery:
    """Broker and result backend in ``celery_dir`` (used by the worker and by the test that sends tasks)."""
    queue_dir = os.path.join(celery_dir, "queue")
    results_dir = os.path.join(celery_dir, "results")
    for d in (queue_dir, results_dir):
        os.makedirs(d, exist_ok=True)
    app.conf.update(
        broker_url="filesystem://",
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
