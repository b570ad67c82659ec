"""CURVE keys and the endpoint policy, shared by the writer and the clients.

Keys are ZeroMQ's own: certificate files as ``zmq.auth.create_certificates``
writes them (``NAME.key`` public, ``NAME.key_secret`` both halves), read with
``zmq.auth.load_certificate``; nothing here does cryptography. A key given as
bytes is the 40-character Z85 text or the 32 raw bytes.

Rules:
1. A tcp endpoint that is not loopback requires CURVE (``endpoint_problem``),
   unless the operator says ``--insecure``: whoever can reach the port could
   otherwise append and delete.
2. Secret key files are written owner-only (0600) whatever the umask.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any, Union

import zmq
import zmq.auth

KeySource = Union[str, bytes, "os.PathLike[str]"]  # a certificate file's path, or the key itself

_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


class CurveKeyError(ValueError):
    """A key or certificate file that cannot be used (also a ValueError)."""


def _z85(key: bytes, what: str) -> bytes:
    if len(key) == 40:
        try:
            if len(zmq.utils.z85.decode(key)) == 32:
                return key
        except (ValueError, KeyError, IndexError):
            pass
    elif len(key) == 32:
        return zmq.utils.z85.encode(key)
    raise CurveKeyError(f"{what}: not a CURVE key (40 Z85 characters or 32 raw bytes), got {len(key)} bytes")


def public_key(source: KeySource, what: str = "curve_server_key") -> bytes:
    """The Z85 public key in ``source`` (a ``.key`` or ``.key_secret`` file, or the key's bytes)."""
    if isinstance(source, bytes):
        return _z85(source, what)
    try:
        public, _secret = zmq.auth.load_certificate(os.fspath(source))
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"{what}: {exc}") from None
    return _z85(public, f"{what} {os.fspath(source)}")


def key_pair(source: KeySource, what: str = "curve_secret") -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file or a secret key's bytes."""
    if isinstance(source, bytes):
        key = _z85(source, what)
        return zmq.curve_public(key), key
    path = os.fspath(source)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"{what}: {exc}") from None
    if secret is None:
        raise CurveKeyError(f"{what}: {path} holds no secret key (give the .key_secret file, not the .key)")
    return _z85(public, f"{what} {path}"), _z85(secret, f"{what} {path}")


def keygen(directory: str, name: str = "nori-wal") -> tuple[str, str]:
    """Write a CURVE key pair DIR/NAME.key and DIR/NAME.key_secret (zmq.auth format); their paths.

    The secret file is owner-only (0600); an existing pair is never overwritten.
    """
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"key name must be a plain file name, got {name!r}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for suffix in (".key", ".key_secret"):
        path = os.path.join(directory, name + suffix)
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; refusing to overwrite a key")
    old = os.umask(0o077)  # the secret file never exists with looser modes, even for a moment
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)  # public: anyone may have it
    return public, secret


@dataclass(frozen=True)
class ClientCurve:
    """What a client's sockets need for CURVE: the writer's public key and the client's own pair."""

    server_key: bytes
    public: bytes
    secret: bytes

    @classmethod
    def make(cls, server_key: KeySource | None, secret: KeySource | None) -> ClientCurve | None:
        """None when neither is given; CurveKeyError (a ValueError) when only one is, or one is unusable."""
        if server_key is None and secret is None:
            return None
        if server_key is None or secret is None:
            raise CurveKeyError("CURVE needs both curve_server_key (the writer's public key) and curve_secret (yours)")
        pub, sec = key_pair(secret)
        return cls(public_key(server_key), pub, sec)

    def apply(self, ctx: zmq.Context[Any]) -> None:
        """Make every socket ``ctx`` creates from now on a CURVE client of this writer."""
        ctx.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        ctx.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        ctx.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


def is_loopback_tcp(endpoint: str) -> bool:
    """Whether a ``tcp://HOST:PORT`` endpoint listens on loopback only (127.0.0.0/8, ::1, localhost)."""
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
    if ";" in host:  # tcp://SOURCE;HOST:PORT (connect syntax): the host is after the ';'
        host = host.rsplit(";", 1)[1]
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name, a host name: may be reachable from elsewhere


def endpoint_problem(endpoint: str, curve: bool, insecure: bool) -> str | None:
    """Why the writer must not listen on ``endpoint`` (Rule 1), or None. Pure."""
    if curve or insecure or not endpoint.startswith("tcp://") or is_loopback_tcp(endpoint):
        return None
    return (
        f"refusing to listen on {endpoint} without authentication: anyone who can reach it could append and "
        f"delete; give --curve-secret FILE --curve-clients DIR (see nori-wal keygen), listen on 127.0.0.1, "
        f"or pass --insecure"
    )


INSECURE_WARNING = (
    "listening on {endpoint} WITHOUT authentication (--insecure): anyone who can reach it may append and delete"
)


__all__ = [
    "INSECURE_WARNING",
    "ClientCurve",
    "CurveKeyError",
    "KeySource",
    "endpoint_problem",
    "is_loopback_tcp",
    "key_pair",
    "keygen",
    "public_key",
]
