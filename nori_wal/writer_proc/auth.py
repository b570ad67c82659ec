"""The writer's CURVE side: its key pair, the allowed clients' public keys, ZeroMQ's ZAP authenticator.

``zmq.auth.thread.ThreadAuthenticator`` answers ZAP requests for the writer's
context from a directory of allowed public keys (``*.key`` files, as
``nori-wal keygen`` writes them); ``reload`` reads that directory again (SIGHUP).
A client whose key is not there fails its handshake: it never gets a message
to the writer's loop.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from ..security import KeySource, key_pair

log = logging.getLogger("nori_wal.writer")


class ServerCurve:
    """A writer's CURVE keys and its authenticator (started with the writer's context)."""

    def __init__(self, secret: KeySource, clients_dir: str):
        self.public, self.secret = key_pair(secret, "--curve-secret")
        if not os.path.isdir(clients_dir):
            raise ValueError(f"--curve-clients {clients_dir}: not a directory of allowed public keys (*.key)")
        self.clients_dir = os.path.abspath(clients_dir)
        self._auth: ThreadAuthenticator | None = None

    def allowed(self) -> int:
        """How many public keys the clients directory allows now."""
        return len(zmq.auth.load_certificates(self.clients_dir))

    def start(self, ctx: zmq.Context[Any], sock: zmq.Socket[Any]) -> None:
        """Start the authenticator on ``ctx`` and make ``sock`` a CURVE server (before it binds)."""
        auth = ThreadAuthenticator(ctx, log=logging.getLogger("nori_wal.writer.auth"))
        auth.start()
        self._auth = auth
        self.reload()
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SERVER, 1)

    def reload(self) -> None:
        """Read the allowed public keys again (SIGHUP): added keys are let in, removed ones refused
        from their next connection on."""
        if self._auth is not None:
            self._auth.configure_curve(domain="*", location=self.clients_dir)
            log.info("CURVE: %d allowed client key(s) in %s", self.allowed(), self.clients_dir)

    def stop(self) -> None:
        """Stop the authenticator (before the context is terminated: its socket would hold it up)."""
        auth, self._auth = self._auth, None
        if auth is not None:
            auth.stop()


__all__ = ["ServerCurve"]
