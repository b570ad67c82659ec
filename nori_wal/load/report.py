"""The run's output: the table and ratios as printed, and the ``--json`` document."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .plan import MODES, POLICIES, RECORD_BYTES, REDIS_FSYNC, CellResult, LoadReport, mode_label, peer_label

HEADER = (
    f"{'producers':>9}  {'mode':<10}  {'policy':<16}  {'acked rec/s':>12}  {'MiB/s':>8}  "
    f"{'p50 ms':>8}  {'p99 ms':>8}  {'x F':>7}  {'x SQLite':>8}  {'group':>6}  {'cpu us':>6}"
)


def format_row(r: CellResult, f: float, sqlite: CellResult | None, depth: int, batch_size: int) -> str:
    c = r.cell
    name = c.policy if c.system == "nori" else peer_label(c)
    mode = mode_label(c.mode, depth, batch_size)
    if r.error:
        return f"{c.producers:>9}  {mode:<10}  {name:<16}  error: {r.error}"
    xf = r.records_per_s / f if f > 0 else 0.0
    xs = f"{r.records_per_s / sqlite.records_per_s:>8.2f}" if sqlite and sqlite.records_per_s > 0 else f"{'-':>8}"
    group = f"{r.group:>6.1f}" if r.group else f"{'-':>6}"
    cpu = f"{r.cpu_us:>6.1f}" if r.cpu_us else f"{'-':>6}"
    return (
        f"{c.producers:>9}  {mode:<10}  {name:<16}  {r.records_per_s:>12,.0f}  {r.mib_per_s:>8.2f}  "
        f"{r.p50_ms:>8.3f}  {r.p99_ms:>8.3f}  {xf:>7.2f}  {xs}  {group}  {cpu}"
    )


def _ratio(a: CellResult | None, b: CellResult | None) -> float | None:
    if a is None or b is None or b.records_per_s <= 0:
        return None
    return a.records_per_s / b.records_per_s


def ratio_lines(rep: LoadReport, depth: int, batch_size: int) -> list[str]:
    """The ratios issue 3 sets targets for, each with its target and whether this run met it."""
    out: list[str] = []

    def verdict(value: float | None, target: float, unit: str = "x") -> str:
        if value is None:
            return "n/a (not measured in this run)"
        shown = f"{value:.2f}{unit}" if unit == "x" else f"{value:.0%}"
        return f"{shown}  (target >= {target:g}{unit if unit == 'x' else ''}: {'met' if value >= target else 'MISSED'})"

    ns = sorted({r.cell.producers for r in rep.results})
    parts = []
    for n in ns:
        v = _ratio(rep.find("nori", "always", "sync", n), rep.find("yardstick", "always", "sync", n))
        if v is not None:
            parts.append(f"N={n} {v:.2f}x{'' if v >= 1 or n > 32 else '!'}")
    out.append(
        "Always sync / yardstick always, same N (target >= 1x for N <= 32, ! = missed): "
        + (", ".join(parts) if parts else "n/a (not measured in this run)")
    )
    sq8 = rep.find("sqlite", "-", "sync", 8)
    out.append("Always sync N=8 / SQLite FULL N=8: " + verdict(_ratio(rep.find("nori", "always", "sync", 8), sq8), 2))
    for mode in ("pipelined", "submit"):
        r8 = rep.find("nori", "always", mode, 8)
        if r8 is not None or mode == "pipelined":
            out.append(
                f"Always {mode_label(mode, depth, batch_size)} N=8 / SQLite FULL N=8: " + verdict(_ratio(r8, sq8), 10)
            )
    out.append(
        f"Always {mode_label('batch', depth, batch_size)} N=8 / SQLite FULL N=8: "
        + verdict(_ratio(rep.find("nori", "always", "batch", 8), sq8), 25)
    )
    osb = rep.find("nori", "os", "batch", 8)
    yb = rep.find("yardstick", "os", "batch", 8)
    if osb is None:
        out.append(f"Os {mode_label('batch', depth, batch_size)} N=8 MiB/s: n/a (not measured in this run)")
    else:
        met = "met" if osb.mib_per_s >= 150 else "MISSED"
        line = f"Os {mode_label('batch', depth, batch_size)} N=8: {osb.mib_per_s:.0f} MiB/s (target >= 150: {met})"
        if yb is not None and yb.mib_per_s > 0:
            line += f"; / yardstick --batch {batch_size} --fsync none ({yb.mib_per_s:.0f} MiB/s): " + verdict(
                osb.mib_per_s / yb.mib_per_s, 0.5, "%"
            )
        out.append(line)
    for policy in POLICIES:
        for mode in MODES:
            parts = []
            for n in ns:  # submit is a nori-wal client call: Redis's pipelined rows stand beside it
                rd = rep.find("redis", policy, "pipelined" if mode == "submit" else mode, n)
                v = _ratio(rep.find("nori", policy, mode, n), rd)
                if v is not None and rd is not None:
                    parts.append(f"N={n} {v:.2f}x")
            if parts:
                fs = REDIS_FSYNC[policy]
                out.append(
                    f"{policy} {mode_label(mode, depth, batch_size)} / Redis appendfsync {fs}: " + ", ".join(parts)
                )
    return out


def render(rep: LoadReport, depth: int, batch_size: int) -> str:
    """The tables and ratios, as printed."""
    s = rep.settings
    f = rep.f_start
    lines = [
        f"nori-wal contention load: {RECORD_BYTES} B records, {s.get('seconds_per_cell', 0):g} s per cell"
        + (f" in {s['slices']} interleaved slices" if s.get("slices", 1) > 1 else "")
        + ", "
        f"{s.get('cpus')} CPUs, {s.get('disk')}, Python {s.get('python')}, SQLite {s.get('sqlite')}"
        + (f", Redis {s['redis']}" if "redis" in s else ""),
        (
            f"F = {rep.f_start:,.0f} appends+fdatasync/s at start ({1e3 / rep.f_start if rep.f_start else 0:.3f} ms), "
            f"{rep.f_end:,.0f}/s at end; x F uses the start figure"
        ),
        "",
        HEADER,
    ]

    def sqlite_at(n: int) -> CellResult | None:
        return rep.find("sqlite", "-", "sync", n)

    order = {m: i for i, m in enumerate(MODES)}
    pol = {p: i for i, p in enumerate(POLICIES)}
    nori = sorted(
        (r for r in rep.results if r.cell.system == "nori"),
        key=lambda r: (pol[r.cell.policy], order[r.cell.mode], r.cell.producers),
    )
    prev: tuple[str, ...] | None = None
    for r in nori:
        if prev is not None and (r.cell.policy, r.cell.mode) != prev:
            lines.append("")
        prev = (r.cell.policy, r.cell.mode)
        lines.append(format_row(r, f, sqlite_at(r.cell.producers), depth, batch_size))
    peers = [r for r in rep.results if r.cell.system != "nori"]
    if peers:
        sysorder = {"sqlite": 0, "yardstick": 1, "redis": 2}
        peers.sort(
            key=lambda r: (sysorder[r.cell.system], pol.get(r.cell.policy, -1), order[r.cell.mode], r.cell.producers)
        )
        lines += ["", "Peers, same run:", HEADER.replace("policy      ", "peer        ")]
        prev = None
        for r in peers:
            key = (r.cell.system, r.cell.policy, r.cell.mode)
            if prev is not None and key != prev:
                lines.append("")
            prev = key
            lines.append(format_row(r, f, sqlite_at(r.cell.producers), depth, batch_size))
    lines += ["", "Ratios (same run):"] + ["  " + x for x in ratio_lines(rep, depth, batch_size)]
    if rep.notes:
        lines += [""] + [f"note: {x}" for x in rep.notes]
    return "\n".join(lines)


def report_json(rep: LoadReport) -> dict[str, Any]:
    return {
        "f_start": rep.f_start,
        "f_end": rep.f_end,
        "settings": rep.settings,
        "notes": rep.notes,
        "results": [
            {
                **asdict(r.cell),
                "records_per_s": r.records_per_s,
                "mib_per_s": r.mib_per_s,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "calls": r.calls,
                "error": r.error,
                "records_per_group": r.group or None,
                "cpu_us_per_record": r.cpu_us or None,
                "x_f": r.records_per_s / rep.f_start if rep.f_start else None,
            }
            for r in rep.results
        ],
    }
