"""A private NATS JetStream cluster on 127.0.0.1, for tests and benchmarks.

``LocalCluster(n=3)`` starts ``n`` ``nats-server -js`` processes with free
ports, a temporary store directory per node and full-mesh cluster routes;
``wait_ready()`` polls until JetStream answers account info (a meta leader is
elected); ``kill(i)`` / ``restart(i)`` crash and revive one node (same ports,
same store); ``close()`` stops every node with bounded waits and removes the
directory. Needs the ``nats-server`` binary (``find_nats_server()``: PATH,
then /usr/sbin, /usr/local/bin).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Optional

_CANDIDATES = ("/usr/sbin/nats-server", "/usr/local/bin/nats-server", "/usr/bin/nats-server")


def find_nats_server() -> Optional[str]:
    """The nats-server executable, or None when it is not installed."""
    found = shutil.which("nats-server")
    if found:
        return found
    return next((c for c in _CANDIDATES if os.access(c, os.X_OK)), None)


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    """``n`` JetStream nodes forming one cluster on loopback (see the module docstring)."""

    def __init__(self, n: int = 3, binary: Optional[str] = None, base: Optional[str] = None) -> None:
        exe = binary or find_nats_server()
        if exe is None:
            raise FileNotFoundError("nats-server not found (apt-get install nats-server)")
        self.binary = exe
        self.base = base or tempfile.mkdtemp(prefix="nori-nats-")
        ports = free_ports(2 * n)
        self.client_ports, self.route_ports = ports[:n], ports[n:]
        self.procs: list[Optional[subprocess.Popen[bytes]]] = [None] * n
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.route_ports)
        self.confs = []
        for i in range(n):
            node = os.path.join(self.base, f"n{i}")
            os.makedirs(node, exist_ok=True)
            conf = os.path.join(node, "server.conf")
            with open(conf, "w") as f:
                f.write(
                    f'server_name: "n{i}"\nlisten: "127.0.0.1:{self.client_ports[i]}"\n'
                    f'jetstream {{ store_dir: "{node}/store" }}\n'
                    f'cluster {{ name: "nori"\n listen: "127.0.0.1:{self.route_ports[i]}"\n routes: [{routes}] }}\n'
                )
            self.confs.append(conf)
        for i in range(n):
            self.start(i)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    @property
    def servers(self) -> str:
        """The ``--to`` form: comma-separated URLs."""
        return ",".join(self.urls)

    def start(self, i: int) -> None:
        log = open(os.path.join(self.base, f"n{i}", "server.log"), "ab")
        try:
            self.procs[i] = subprocess.Popen([self.binary, "-c", self.confs[i]], stdout=log, stderr=log)
        finally:
            log.close()

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (a crash: no goodbye to its peers)."""
        proc = self.procs[i]
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            self.procs[i] = None

    def restart(self, i: int) -> None:
        self.kill(i)
        self.start(i)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll until every node's JetStream is enabled and a meta leader answers, or raise TimeoutError."""
        import asyncio

        asyncio.run(_wait_ready(self.urls, timeout))

    def close(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for i, proc in enumerate(self.procs):
            if proc is None:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            self.procs[i] = None
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _wait_ready(urls: list[str], timeout: float) -> None:
    import asyncio

    import nats

    async def quiet(exc: Exception) -> None:  # nodes still starting: expected, not worth a traceback
        pass

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            for url in urls:  # every node, so a later kill leaves a working majority that knows the stream
                nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=1, error_cb=quiet)
                try:
                    await nc.jetstream().account_info()
                finally:
                    await nc.close()
            return
        except Exception as exc:  # not up yet, no meta leader yet: poll again
            last = exc
            await asyncio.sleep(0.1)
    raise TimeoutError(f"NATS cluster {urls} not ready within {timeout} s: {last!r}")
