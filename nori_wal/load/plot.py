"""The run's picture: throughput against producers, one panel per fsync policy, the peers beside.

matplotlib is optional (``pip install nori-wal[plot]``); without it the run
still prints its table and says how to get the picture. The Agg backend draws
to a file with no display, so it works on a server and in CI.
"""

from __future__ import annotations

import os
from typing import Any

from .plan import POLICIES, REDIS_FSYNC, YARD_FSYNC, CellResult, LoadReport, mode_label

DEFAULT_PLOT = "nori-wal-load.png"
INSTALL_HINT = "pip install nori-wal[plot]"

_COLOUR = {"sync": "tab:blue", "pipelined": "tab:orange", "submit": "tab:red", "batch": "tab:green"}
_STYLE = {"nori": "-", "yardstick": "--", "redis": ":", "sqlite": "-."}
_WHO = {"nori": "nori-wal", "yardstick": "yardstick", "redis": "Redis"}


class PlotUnavailable(Exception):
    """matplotlib cannot be imported: no picture (the message says how to install it)."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker  # noqa: F401 -- used through plt's matplotlib
    except ImportError:
        raise PlotUnavailable(f"matplotlib is not installed: no PNG ({INSTALL_HINT})") from None
    return plt


def write_png(rep: LoadReport, path: str, depth: int, batch_size: int) -> str:
    """Draw ``rep`` to ``path``; returns the path, or '' when no nori-wal cell has a number to plot.

    In each panel nori-wal's modes are solid lines (colour = mode), the yardstick
    dashed and Redis dotted in the colour of the mode they stand beside, SQLite FULL
    black dash-dot, F a grey line. Raises ``PlotUnavailable`` without matplotlib,
    ``OSError`` when the file cannot be written.
    """
    plt = _pyplot()
    ok = [r for r in rep.results if not r.error]
    policies = [p for p in POLICIES if any(r.cell.system == "nori" and r.cell.policy == p for r in ok)]
    if not policies:
        return ""
    counts = sorted({r.cell.producers for r in ok})
    fig, axes = plt.subplots(1, len(policies), figsize=(6.5 * len(policies), 6), sharey=True, squeeze=False)
    try:
        for ax, policy in zip(axes[0], policies):
            _panel(ax, policy, ok, counts, rep.f_start, depth, batch_size)
        axes[0][0].set_ylabel("acked 1 KB records / s")
        fig.suptitle("nori-wal contention load: every line measured in the same run")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _panel(
    ax: Any, policy: str, ok: list[CellResult], counts: list[int], f: float, depth: int, batch_size: int
) -> None:
    """One policy's panel: nori-wal's modes and the peers that stand beside them."""
    import matplotlib.ticker

    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in ok:
        c = r.cell
        if c.policy == policy or c.system == "sqlite":
            series.setdefault((c.system, c.mode), []).append((c.producers, r.records_per_s))
    for (system, mode), pts in sorted(series.items(), key=lambda kv: (list(_STYLE).index(kv[0][0]), kv[0][1])):
        pts.sort()
        if system == "sqlite":
            label, col = "SQLite FULL, 1 row/txn", "black"
        else:
            label, col = f"{_WHO[system]} {mode_label(mode, depth, batch_size)}", _COLOUR[mode]
        xs, ys = [p for p, _ in pts], [v for _, v in pts]
        ax.plot(xs, ys, _STYLE[system], color=col, marker="o", markersize=3, label=label)
    if f:
        ax.axhline(f, color="grey", linewidth=0.8, label=f"F = {f:,.0f}/s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(counts)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("producer processes")
    present = {system for system, _ in series}
    peers = ["SQLite FULL"] if "sqlite" in present else []
    if "yardstick" in present:
        peers.append(f"yardstick fsync {YARD_FSYNC[policy]}")
    if "redis" in present:
        peers.append(f"Redis appendfsync {REDIS_FSYNC[policy]}")
    ax.set_title(f"nori-wal fsync {policy}" + (f"; beside: {', '.join(peers)}" if peers else ""), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def plot_note(rep: LoadReport, path: str, depth: int, batch_size: int) -> str:
    """Draw the PNG and say what happened in one line: where it is, or why there is none."""
    try:
        written = write_png(rep, path, depth, batch_size)
    except PlotUnavailable as exc:
        return str(exc)
    except OSError as exc:
        return f"writing the PNG {path} failed: {exc.strerror or exc}"
    if not written:
        return "no nori-wal cell measured: no PNG"
    return f"wrote {os.path.abspath(written)} (throughput against producers)"
