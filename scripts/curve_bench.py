"""What CURVE authentication costs: tcp+CURVE vs plain tcp, same writer settings, same run.

    python scripts/curve_bench.py                  # full: 20,000 appends per case
    python scripts/curve_bench.py --quick          # tiny sizes (a smoke run; figures mean nothing)

Each case spawns a writer (fsync os, so the wire is what is measured) on
``tcp://127.0.0.1:*``, with and without CURVE (keys from ``zmq.auth``), and one
client appends N records of ``--size`` bytes with ``submit`` (pipelined, up to
the client's in-flight limit) and then one by one; it prints records/s per case
and CURVE's cost in percent. Compare figures of one run only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from nori_wal import FsyncPolicy, Record, WalConfig
from nori_wal.client import WalClient
from nori_wal.security import keygen
from nori_wal.writer_proc import WriterProcess


def run_case(n: int, size: int, curve: bool, pipelined: bool) -> float:
    """Records per second for one case on a fresh directory and writer."""
    root = tempfile.mkdtemp(prefix="curve-bench-")
    try:
        kw: dict[str, str] = {}
        client_kw: dict[str, str] = {}
        if curve:
            _, server_secret = keygen(os.path.join(root, "keys"), "writer")
            client_pub, client_secret = keygen(os.path.join(root, "client"), "app")
            allowed = os.path.join(root, "allowed")
            os.makedirs(allowed)
            shutil.copy(client_pub, allowed)
            kw = {"curve_secret": server_secret, "curve_clients": allowed}
            client_kw = {"curve_server_key": server_secret, "curve_secret": client_secret}
        config = WalConfig(dir=os.path.join(root, "wal"), fsync_policy=FsyncPolicy.os())
        with WriterProcess.spawn(config, "tcp://127.0.0.1:*", **kw) as w:  # type: ignore[arg-type]
            with WalClient(w.endpoint, timeout=30.0, **client_kw) as c:  # type: ignore[arg-type]
                value = b"x" * size
                c.append(Record.put(b"warm", value))
                t0 = time.perf_counter()
                if pipelined:
                    pending = [c.submit(Record.put(b"k%d" % i, value)) for i in range(n)]
                    for p in pending:
                        p.result()
                else:
                    for i in range(n):
                        c.append(Record.put(b"k%d" % i, value))
                return n / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20_000, help="appends per case")
    ap.add_argument("--size", type=int, default=100, help="value bytes per record")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = ap.parse_args()
    n = 200 if args.quick else args.n
    print(f"{'mode':<12} {'plain tcp rec/s':>16} {'tcp+CURVE rec/s':>16} {'CURVE cost':>11}")
    for pipelined in (True, False):
        plain = run_case(n, args.size, False, pipelined)
        curve = run_case(n, args.size, True, pipelined)
        mode = "pipelined" if pipelined else "one by one"
        print(f"{mode:<12} {plain:>16,.0f} {curve:>16,.0f} {100 * (1 - curve / plain):>10.1f}%")


if __name__ == "__main__":
    main()
