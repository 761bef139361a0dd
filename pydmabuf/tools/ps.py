"""``pydmabuf ps`` and ``pydmabuf top``: who holds which dma-buf, as tables, JSON or CSV.

Tables use human units (KiB, MiB, ...); JSON and CSV give bytes. Warnings (unreadable
processes) go to stderr so that piped output stays clean.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .accounting import Snapshot

# The accounting scan, json and csv load when a command runs, not when the
# CLI builds its parser (``pydmabuf --help``, ``pydmabuf info``).

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human(size: int) -> str:
    """1536 -> '1.5 KiB' (IEC units, one decimal); bytes below 1 KiB."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def printable(name: str | None) -> str:
    """A buffer name on one table cell: control characters (names may hold
    newlines) escaped; '-' for a buffer never named."""
    if name is None:
        return "-"
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--buffers", action="store_true", help="one row per buffer with its holders, instead of per process"
    )
    parser.add_argument(
        "-p", "--pid", type=int, action="append", metavar="PID", help="only buffers held by PID (repeatable)"
    )
    parser.add_argument("--name", metavar="GLOB", help="only buffers whose name matches GLOB")
    parser.add_argument(
        "--exporter",
        metavar="NAME",
        help="only buffers of this exporter (system, udmabuf, drm, pydmabuf-fallback, ...)",
    )


def ps_args(parser: argparse.ArgumentParser) -> None:
    add_filters(parser)
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON, sizes in bytes (schema in the README)")
    out.add_argument("--csv", action="store_true", help="CSV with a header row, sizes in bytes")


def top_args(parser: argparse.ArgumentParser) -> None:
    add_filters(parser)
    parser.add_argument(
        "-d", "--delay", type=float, default=2.0, metavar="SECONDS", help="seconds between refreshes (default: 2)"
    )
    parser.add_argument(
        "-n", "--iterations", type=int, metavar="N", help="stop after N refreshes (default: until interrupted)"
    )


def _take(args: argparse.Namespace) -> Snapshot:
    from .accounting import snapshot

    snap = snapshot()
    if args.pid is None and args.name is None and args.exporter is None:
        return snap
    return snap.filter(pids=args.pid, name=args.name, exporter=args.exporter)


def _missing_pids(args: argparse.Namespace) -> int:
    from .accounting import pid_exists

    missing = [pid for pid in args.pid or () if not pid_exists(pid)]
    for pid in missing:
        print(f"pydmabuf {args.command}: no such process: {pid}", file=sys.stderr)
    return 1 if missing else 0


def _warn_unreadable(snap: Snapshot, command: str) -> None:
    if snap.unreadable:
        fix = " (run as root to see them)" if os.geteuid() else ""
        print(
            f"pydmabuf {command}: {snap.unreadable} of {snap.scanned} processes could not be read; "
            f"their buffers are missing{fix}",
            file=sys.stderr,
        )


def ps(args: argparse.Namespace) -> int:
    if _missing_pids(args):
        return 1
    snap = _take(args)
    if args.json:
        import json

        json.dump(snap.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.csv:
        write_csv(snap, args.buffers, sys.stdout)
    else:
        sys.stdout.write(table(snap, args.buffers))
    _warn_unreadable(snap, "ps")
    return 0


def top(args: argparse.Namespace) -> int:
    if args.delay <= 0:
        print("pydmabuf top: --delay must be > 0", file=sys.stderr)
        return 2
    if _missing_pids(args):
        return 1
    clear = sys.stdout.isatty()
    frame = 0
    try:
        while args.iterations is None or frame < args.iterations:
            if frame:
                time.sleep(args.delay)
            snap = _take(args)
            total = sum(b.size for b in snap.buffers)
            head = (
                f"pydmabuf top - {time.strftime('%H:%M:%S')}: {len(snap.buffers)} buffers, "
                f"{human(total)}, {len(snap.processes)} processes"
            )
            if snap.unreadable:
                head += f", {snap.unreadable} unreadable"
            sys.stdout.write(
                ("\x1b[H\x1b[2J" if clear else "\n" if frame else "") + head + "\n\n" + table(snap, args.buffers)
            )
            sys.stdout.flush()
            frame += 1
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    return 0


def table(snap: Snapshot, buffers: bool) -> str:
    lines = []
    if buffers:
        lines.append(f"{'INODE':>8} {'SIZE':>10}  {'EXPORTER':<18} {'NAME':<20} HOLDERS pid(fds/maps)")
        for b in snap.buffers:
            holders = " ".join(f"{h.pid}({h.fds}/{h.maps})" for h in b.holders)
            lines.append(f"{b.inode:>8} {human(b.size):>10}  {b.exporter or '?':<18} {printable(b.name):<20} {holders}")
    else:
        lines.append(f"{'PID':>8} {'COMMAND':<16} {'BUFS':>5} {'SIZE':>10} {'PSS':>10}")
        for p in snap.processes:
            lines.append(f"{p.pid:>8} {p.name[:16]:<16} {p.buffers:>5} {human(p.size):>10} {human(p.pss):>10}")
    lines.append("")
    lines.append(f"{'EXPORTER':<20} {'BUFS':>5} {'SIZE':>10}")
    for e in snap.exporters:
        lines.append(f"{e.exporter or '?':<20} {e.buffers:>5} {human(e.size):>10}")
    lines.append(f"{'total':<20} {len(snap.buffers):>5} {human(sum(b.size for b in snap.buffers)):>10}")
    return "\n".join(lines) + "\n"


def write_csv(snap: Snapshot, buffers: bool, out: TextIO) -> None:
    import csv

    writer = csv.writer(out, lineterminator="\n")
    if buffers:  # one row per (buffer, holder); a buffer's facts repeat on each
        writer.writerow(["inode", "size", "exporter", "name", "pid", "fds", "maps"])
        for b in snap.buffers:
            for h in b.holders:
                writer.writerow([b.inode, b.size, b.exporter, b.name or "", h.pid, h.fds, h.maps])
    else:
        writer.writerow(["pid", "name", "buffers", "size", "pss"])
        for p in snap.processes:
            writer.writerow([p.pid, p.name, p.buffers, p.size, p.pss])
