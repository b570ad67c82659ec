"""WriterProcess: start a directory's writer as a separate OS process and stop it.

The child is a fresh interpreter (``subprocess`` running ``child_main``), not a
``multiprocessing`` child: it never re-imports the caller's ``__main__``, so a
script without an ``if __name__ == "__main__"`` guard cannot spawn itself
recursively, and no ZeroMQ context or socket ever crosses a fork (the child
builds its own, DESIGN rule 9).

Handshake, over two pipes:

- the child's stdin carries the pickled ``WriterSpec`` (length-prefixed) and
  then stays open as a **lifeline**: when the spawning process dies, the child
  sees EOF and stops gracefully (drain, fsync, exit 0) instead of holding the
  directory's lock forever. Forked children of the spawner inherit the
  lifeline, so the writer outlives the spawner while they live.
- a ready pipe carries one JSON line back: ``{"endpoint", "pid", "recovery"}``
  once the writer serves, or ``{"error", "message"}`` when it could not start
  (the directory is locked: ``spawn`` raises WalLockedError at once).

The child runs in its own session, so a Ctrl-C meant for the caller's
terminal reaches the caller (whose ``with`` block then calls ``stop``), not the
writer directly. ``stop()`` sends SIGTERM: drain, final fsync, clean close, exit 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from typing import Any

from .. import protocol
from ..config import WalConfig
from ..errors import WalError, WalLockedError, WriterUnavailableError
from ..exit_codes import EXIT_IO, EXIT_LOCKED, EXIT_USAGE
from ..fs import FileLayer
from ..recovery import RecoveryInfo
from .budget import DEFAULT_MAX_CONNECTION_BYTES, DEFAULT_MAX_PENDING_BYTES
from .loop import FatalStop, WriterServer
from .server import WriterSpec, run_writer

_LEN = struct.Struct("<Q")
_CHILD_CODE = "from nori_wal.writer_proc.process import child_main; child_main()"
SPAWN_TIMEOUT = 60.0  # seconds for the child to recover its directory and bind
STOP_TIMEOUT = 30.0  # seconds for a graceful stop before SIGKILL

_log = logging.getLogger("nori_wal.writer")


class WriterProcess:
    """A running writer process for one directory (the handle the spawning process holds)."""

    def __init__(
        self, proc: subprocess.Popen[bytes], endpoint: str, pid: int, recovery_info: RecoveryInfo, directory: str
    ):
        self._proc = proc
        self.endpoint = endpoint
        self.pid = pid
        self.recovery_info = recovery_info
        self.directory = directory
        self._owner_pid = os.getpid()

    @classmethod
    def spawn(
        cls,
        config: WalConfig,
        endpoint: str | None = None,
        *,
        timeout: float = SPAWN_TIMEOUT,
        layer: FileLayer | None = None,
        metrics_port: int | None = None,
        metrics_addr: str = "127.0.0.1",
        log_level: str = "WARNING",
        overlap: bool = False,
        curve_secret: str | bytes | os.PathLike[str] | None = None,
        curve_clients: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_connection_bytes: int = DEFAULT_MAX_CONNECTION_BYTES,
    ) -> WriterProcess:
        """Start a writer for ``config.dir`` in a new process; returns once it serves.

        ``endpoint``: ``ipc://...`` or ``tcp://host:port`` (``tcp://127.0.0.1:*``
        picks a free port; see ``.endpoint``); None picks the ``ipc://``
        endpoint tied to the directory that ``WalClient.for_dir`` finds.
        ``layer`` is a test seam: a picklable FileLayer the writer uses instead
        of the OS (e.g. one that records or fails fsyncs). ``overlap`` runs
        fsyncs in a flush thread while the next group is received (see
        ``commit.overlap_fsync``: opt-in, it measured slower for synchronous producers).
        ``curve_secret`` (the writer's ``.key_secret`` file, or secret key bytes)
        and ``curve_clients`` (a directory of allowed ``*.key`` files) require
        CURVE from every client (``nori_wal.security``); a non-loopback tcp
        endpoint needs them unless ``insecure``. ``max_pending_bytes`` and
        ``max_connection_bytes`` cap the request bytes the writer holds
        (``writer_proc.budget``; docs/SECURITY.md).

        Raises WalLockedError at once when another live writer (process or
        embedded Wal) owns the directory; WriterUnavailableError when the
        child is not serving within ``timeout`` seconds; WalError if it exits.
        """
        spec = WriterSpec(
            config=config,
            endpoint=endpoint,
            layer=layer,
            metrics_port=metrics_port,
            metrics_addr=metrics_addr,
            log_level=log_level,
            overlap=overlap,
            curve_secret=None if curve_secret is None else _key_arg(curve_secret),
            curve_clients=None if curve_clients is None else os.fspath(curve_clients),
            insecure=insecure,
            max_pending_bytes=max_pending_bytes,
            max_connection_bytes=max_connection_bytes,
        )
        path = json.dumps([p for p in sys.path if isinstance(p, str)]).encode()
        blob = pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
        ready_r, ready_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE, str(ready_w)],
                stdin=subprocess.PIPE,
                pass_fds=(ready_w,),
                start_new_session=True,
            )
        except BaseException:
            os.close(ready_r)
            os.close(ready_w)
            raise
        os.close(ready_w)
        try:
            assert proc.stdin is not None
            try:
                proc.stdin.write(_LEN.pack(len(path)) + path + _LEN.pack(len(blob)) + blob)
                proc.stdin.flush()  # keep stdin open: it is the lifeline
            except BrokenPipeError:
                pass  # the child died at once; the ready pipe says why
            msg = _read_ready(ready_r, timeout)
        except BaseException:
            _kill(proc)
            raise
        finally:
            os.close(ready_r)
        if msg is None or "error" in msg:
            if msg is None:
                rc = _wait(proc, 5.0)
                if rc is None:
                    _kill(proc)
                    raise WriterUnavailableError(f"writer for {config.dir} did not start serving within {timeout:g} s")
                _kill(proc)  # reaped already; closes the lifeline pipe (no ResourceWarning)
                raise WalError(f"writer for {config.dir} exited with code {rc} before serving")
            _wait(proc, 10.0)
            _kill(proc)  # (if still running) and close the lifeline pipe
            raise protocol.ERRORS.get(msg["error"], WalError)(msg["message"])
        recovery = msg["recovery"]
        info = RecoveryInfo(**{**recovery, "set_aside": tuple(recovery["set_aside"])})  # (JSON made it a list)
        return cls(proc, msg["endpoint"], int(msg["pid"]), info, os.fspath(config.dir))

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited (None while it runs)."""
        return self._proc.poll()

    def is_alive(self) -> bool:
        return self._proc.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds for the process to exit; its exit code or None."""
        return _wait(self._proc, timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Graceful stop: the writer drains pending requests, fsyncs, acks, closes the log, exits 0.

        Returns the exit code. If it has not exited within ``timeout`` seconds
        it is killed (SIGKILL) and WalError is raised. Only the spawning process
        stops its writer; in a forked child this is a no-op.
        """
        if os.getpid() != self._owner_pid:
            return 0
        proc = self._proc
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        rc = _wait(proc, timeout)
        self._close_lifeline()
        if rc is None:
            _kill(proc)
            raise WalError(f"writer pid {self.pid} did not stop within {timeout:g} s; killed")
        return rc

    def kill(self) -> int:
        """SIGKILL the writer (crash tests) and reap it; returns the exit code (-9)."""
        _kill(self._proc)
        self._close_lifeline()
        return self._proc.returncode

    def _close_lifeline(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass

    def __enter__(self) -> WriterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else f"exited {self.returncode}"
        return f"WriterProcess(pid={self.pid}, endpoint={self.endpoint!r}, {state})"


def _key_arg(source: str | bytes | os.PathLike[str]) -> str | bytes:
    """A key argument as it crosses into the child: key bytes as they are, a path made absolute."""
    return source if isinstance(source, bytes) else os.path.abspath(os.fspath(source))


def _read_ready(fd: int, timeout: float) -> dict[str, Any] | None:
    """The child's one JSON line, or None at EOF (it died) or timeout."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    line = buf.split(b"\n", 1)[0]
    if not line:
        return None
    data = json.loads(line)
    return data if isinstance(data, dict) else None


def _wait(proc: subprocess.Popen[bytes], timeout: float | None) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    proc.wait()
    if proc.stdin is not None and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass


# -- the child side -------------------------------------------------------------------------


def child_main() -> None:
    """Entry point of the spawned interpreter: read the spec, serve, exit with the writer's code."""
    ready_fd = int(sys.argv[1])
    # The spawner's sys.path first (as multiprocessing's spawn does), so a picklable
    # FileLayer defined in the caller's modules (a test's) resolves here too.
    path = json.loads(_read_exact(0, _LEN.unpack(_read_exact(0, _LEN.size))[0]))
    sys.path[:0] = [p for p in path if p not in sys.path]
    spec: WriterSpec = pickle.loads(_read_exact(0, _LEN.unpack(_read_exact(0, _LEN.size))[0]))
    logging.basicConfig(
        level=getattr(logging, spec.log_level.upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )

    def ready(server: WriterServer) -> None:
        _send_ready(
            ready_fd, {"endpoint": server.endpoint, "pid": os.getpid(), "recovery": dataclasses.asdict(server.info)}
        )

    try:
        code = run_writer(spec, ready, lifeline_fd=0)
    except WalLockedError as exc:
        _send_ready(ready_fd, {"error": "WalLockedError", "message": str(exc)})
        print(f"nori-wal writer: {exc}", file=sys.stderr)
        code = EXIT_LOCKED
    except FatalStop as stop:
        _send_ready(ready_fd, {"error": "WalError", "message": stop.reason})
        print(f"nori-wal writer: {stop.reason}", file=sys.stderr)
        code = stop.exit_code
    except WalError as exc:
        _send_ready(ready_fd, {"error": type(exc).__name__, "message": str(exc)})
        print(f"nori-wal writer: {exc}", file=sys.stderr)
        code = EXIT_IO
    except Exception as exc:
        _send_ready(ready_fd, {"error": "WalError", "message": f"{type(exc).__name__}: {exc}"})
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: the log is closed, the sockets are gone


def _send_ready(fd: int, msg: dict[str, Any]) -> None:
    try:
        os.write(fd, json.dumps(msg).encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise SystemExit(EXIT_USAGE)
        buf += chunk
    return buf


__all__ = ["WriterProcess", "child_main"]
