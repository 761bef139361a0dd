"""``pydmabuf ps`` and ``pydmabuf top``: who holds which dma-buf, as tables, JSON or CSV.

Tables use human units (KiB, MiB, ...); JSON and CSV give bytes. Warnings (unreadable
processes) go to stderr so that piped output stays clean. Sizes that users type
(``demo --size 1M``) are read by ``parse_size``, the inverse of ``human``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .accounting import BufferUsage, ProcessUsage, Snapshot

# The accounting scan, json, csv and the terminal modules load when a command runs,
# not when the CLI builds its parser (``pydmabuf --help``, ``pydmabuf info``).

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


# --- sizes and counts as users type them ---------------------------------------------

# K means 1024, as the help texts' KiB and MiB do: buffer sizes are page multiples, and
# nobody wants 1M to be 1000000 bytes (not a whole number of pages).
_SCALES: dict[str, int] = {"": 1, "b": 1} | {
    suffix: 1 << (10 * power) for power, letter in enumerate("kmgt", start=1) for suffix in (letter, letter + "ib")
}
SIZE_FORMS = "bytes, or with a suffix K, M, G, T (also KiB, MiB, ...; any case): powers of 1024, e.g. 64K, 1M, 1.5G"


def parse_size(text: str) -> int:
    """'1M' -> 1048576: a number of bytes with an optional suffix K, M, G or T (or KiB,
    MiB, GiB, TiB, any case), all powers of 1024. A fraction is fine where the result
    is whole bytes ('1.5K'). 'KB', 'MB', ... are refused as ambiguous (1000 or 1024?).
    ValueError says what was wrong and which forms are accepted."""
    body = text.strip()
    digits = body.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    unit = body[len(digits) :]
    digits = digits.rstrip()
    whole, _, fraction = digits.partition(".")
    # ASCII digits only: str.isdigit() also accepts '²' and other scripts' digits
    if not (whole or fraction) or not all(c in "0123456789" for c in whole + fraction):
        raise ValueError(f"not a size: {text!r} ({SIZE_FORMS})")
    scale = _SCALES.get(unit.lower())
    if scale is None:
        if unit.lower() in ("kb", "mb", "gb", "tb"):
            letter = unit[0].upper()
            raise ValueError(
                f"ambiguous size {text!r}: {unit} means powers of 1000 to some and of 1024 to others; "
                f"write {digits}{letter} or {digits}{letter}iB for powers of 1024, or the number of bytes"
            )
        raise ValueError(f"unknown unit {unit!r} in {text!r} ({SIZE_FORMS})")
    numerator = int(whole + fraction or "0") * scale  # exact: no float rounding of '1.1M'
    denominator: int = 10 ** len(fraction)  # int ** int is Any to mypy (a negative power is a float)
    if numerator % denominator:
        raise ValueError(f"not a whole number of bytes: {text!r} is {numerator / denominator:g} bytes")
    return numerator // denominator


def size_arg(text: str) -> int:
    """argparse type: a size of at least one byte, as ``parse_size`` reads it."""
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return size


def count_arg(hint: str = "") -> Callable[[str], int]:
    """argparse type: a whole number >= 1; ``hint`` follows the error (what to do instead)."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, got {value}{hint}")
        return value

    return count


def seconds_arg(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):  # also refuses nan, which compares false
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


# --- options -------------------------------------------------------------------------

# --sort key -> what orders the rows, per process and per buffer; ties go to the pid
# (processes) or inode (buffers) so that equal rows do not swap between refreshes.
SORT_KEYS = ("pss", "size", "count", "pid", "name")
# top's interactive keys; P and p differ as in procps top, where case picks the field
TOP_KEYS = {"P": "pss", "s": "size", "c": "count", "p": "pid", "n": "name"}
QUIT_KEYS = "qQ"


def printable(name: str | None) -> str:
    """A buffer name on one table cell: control characters (names may hold
    newlines) escaped; '-' for a buffer never named."""
    if name is None:
        return "-"
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def command(p: ProcessUsage) -> str:
    """A process's command line as tables show it: the program's file name and its
    arguments (``python -m myapp --x``), control characters escaped; the process name
    where there is no command line (it exited while we looked)."""
    if not p.cmdline:
        return printable(p.name)
    program, *rest = p.cmdline
    # A title set with setproctitle is one string with spaces, not a path: keep it whole.
    if " " not in program:
        program = os.path.basename(program)
    return printable(" ".join([program or p.name, *rest]))


def add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--buffers", action="store_true", help="one row per buffer with its holders, instead of per process"
    )
    parser.add_argument(
        "-p",
        "--pid",
        type=int,
        action="append",
        metavar="PID",
        help="only buffers held by PID (repeatable); a PID that does not exist or that this user may not "
        "read is an error (exit status 1)",
    )
    parser.add_argument("--name", metavar="GLOB", help="only buffers whose name matches GLOB")
    parser.add_argument(
        "--exporter",
        metavar="NAME",
        help="only buffers of this exporter (system, udmabuf, drm, pydmabuf-fallback, ...)",
    )
    parser.add_argument(
        "--sort",
        choices=SORT_KEYS,
        default="pss",
        help="row order: pss (default), size or count (buffers; per buffer: holders), largest first; "
        "pid (per buffer: its lowest holder) or name (the command line; per buffer: its name), ascending",
    )


def ps_args(parser: argparse.ArgumentParser) -> None:
    add_filters(parser)
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON, sizes in bytes (schema in docs/cli.md)")
    out.add_argument("--csv", action="store_true", help="CSV with a header row, sizes in bytes")
    parser.epilog = (
        "The COMMAND column is trimmed to the terminal's width ($COLUMNS if set); into a pipe or file it is whole."
    )


def top_args(parser: argparse.ArgumentParser) -> None:
    add_filters(parser)
    parser.add_argument(
        "-d",
        "--delay",
        type=seconds_arg,
        default=2.0,
        metavar="SECONDS",
        help="seconds between refreshes (default: 2)",
    )
    parser.add_argument(
        "-n",
        "--iterations",
        type=count_arg(" (leave -n out to refresh until q or Ctrl-C)"),
        metavar="N",
        help="stop after N refreshes, N >= 1 (default: until q or Ctrl-C)",
    )
    keys = ", ".join(f"{key} {name}" for key, name in TOP_KEYS.items())
    parser.epilog = (
        f"Keys, when stdin is a terminal: q quits; sort by {keys}. "
        "Without a terminal on stdin (a pipe, /dev/null, closed) top reads no keys and just refreshes."
    )


# --- taking and checking the snapshot ---------------------------------------------------


def _process_order(key: str) -> Callable[[ProcessUsage], Any]:
    orders: dict[str, Callable[[ProcessUsage], Any]] = {
        "pss": lambda p: (-p.pss, -p.size, p.pid),
        "size": lambda p: (-p.size, -p.pss, p.pid),
        "count": lambda p: (-p.buffers, -p.pss, p.pid),
        "pid": lambda p: p.pid,
        "name": lambda p: (command(p), p.pid),
    }
    return orders[key]


def _buffer_order(key: str) -> Callable[[BufferUsage], Any]:
    orders: dict[str, Callable[[BufferUsage], Any]] = {
        "pss": lambda b: (-b.size, b.inode),  # the PSS of a buffer, summed over its holders, is its size
        "size": lambda b: (-b.size, b.inode),
        "count": lambda b: (-len(b.holders), -b.size, b.inode),
        "pid": lambda b: (b.holders[0].pid if b.holders else 0, -b.size, b.inode),
        "name": lambda b: (b.name is None, b.name or "", b.inode),  # the unnamed last
    }
    return orders[key]


def sort_rows(snap: Snapshot, key: str) -> Snapshot:
    """``snap`` with its processes and buffers in the order of ``--sort key``."""
    from dataclasses import replace

    return replace(
        snap,
        processes=sorted(snap.processes, key=_process_order(key)),
        buffers=sorted(snap.buffers, key=_buffer_order(key)),
    )


def _take(args: argparse.Namespace, sort: str) -> Snapshot:
    from .accounting import snapshot

    snap = snapshot()
    if args.pid is not None or args.name is not None or args.exporter is not None:
        snap = snap.filter(pids=args.pid, name=args.name, exporter=args.exporter)
    return sort_rows(snap, sort)


def _missing_pids(args: argparse.Namespace) -> int:
    from .accounting import pid_exists

    missing = [pid for pid in args.pid or () if not pid_exists(pid)]
    for pid in missing:
        print(f"pydmabuf {args.command}: no such process: {pid}", file=sys.stderr)
    return 1 if missing else 0


def _unreadable_pids(args: argparse.Namespace, snap: Snapshot) -> int:
    """1 (after saying so) if a process chosen with -p could not be read: its table would
    be empty, and an empty table would say it holds nothing."""
    wanted = set(args.pid or ())
    denied = [u for u in snap.unreadable_processes if u.pid in wanted]
    for u in denied:
        fix = "; run as root to see its buffers" if os.geteuid() else ""
        print(
            f"pydmabuf {args.command}: cannot read process {u.pid} ({printable(u.name)}): "
            f"permission denied on /proc/{u.pid}/fd{fix}",
            file=sys.stderr,
        )
    return 1 if denied else 0


_NAMED = 10  # unreadable processes named on stderr; --json lists every one


def _warn_unreadable(snap: Snapshot, command: str) -> None:
    if not snap.unreadable:
        return
    fix = " (run as root to see them)" if os.geteuid() else ""
    denied = snap.unreadable_processes
    named = ", ".join(f"{u.pid} ({printable(u.name)})" for u in denied[:_NAMED])
    if len(denied) > _NAMED:
        named += f" and {len(denied) - _NAMED} more (--json lists them all)"
    print(
        f"pydmabuf {command}: {snap.unreadable} of {snap.scanned} processes could not be read (permission denied "
        f"on /proc/PID/fd); their buffers are missing{fix}" + (f": {named}" if named else ""),
        file=sys.stderr,
    )


def _width() -> int | None:
    """The columns a table row may take: the terminal's ($COLUMNS first) when printing to
    one or when $COLUMNS is set; None into a pipe or file, where command lines stay whole
    for grep, as procps ps does."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS", "").strip().isdigit():
        import shutil

        return shutil.get_terminal_size().columns
    return None


# --- the commands --------------------------------------------------------------------


def ps(args: argparse.Namespace) -> int:
    if _missing_pids(args):
        return 1
    snap = _take(args, args.sort)
    if _unreadable_pids(args, snap):
        return 1
    if args.json:
        import json

        json.dump(snap.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.csv:
        write_csv(snap, args.buffers, sys.stdout)
    else:
        sys.stdout.write(table(snap, args.buffers, _width()))
    if args.pid is None:
        # With -p the chosen processes were read (checked above); the others' buffers
        # are not asked for, so naming every unreadable process would only be noise.
        _warn_unreadable(snap, "ps")
    return 0


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class _Keys:
    """Single key presses from the terminal on stdin, for top: cbreak mode (no echo,
    no line buffering; Ctrl-C still interrupts), the terminal's settings put back by
    ``close()``."""

    def __init__(self, fd: int, saved: list[Any]) -> None:
        self._fd = fd
        self._saved = saved

    @classmethod
    def open(cls) -> _Keys | None:
        """None where stdin is no terminal to read keys from: a pipe or file, /dev/null,
        closed (sys.stdin is None: CI with no stdin), or a terminal that another job has
        in the foreground (changing or reading it would stop us: SIGTTOU, SIGTTIN)."""
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):  # None, closed, or no fd (io.UnsupportedOperation)
            return None
        if not os.isatty(fd):
            return None
        try:
            if os.tcgetpgrp(fd) != os.getpgrp():
                return None
        except OSError:
            pass  # a terminal, but not our controlling one: no job control can stop us
        import termios
        import tty

        try:
            saved = termios.tcgetattr(fd)
            tty.setcbreak(fd, termios.TCSANOW)
        except (termios.error, OSError):
            return None
        return cls(fd, saved)

    def wait(self, timeout: float) -> str | None:
        """The first command key (``TOP_KEYS``, ``QUIT_KEYS``) pressed within ``timeout``
        seconds, as soon as it is pressed; None when the time is up."""
        import select

        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self._fd < 0:  # the terminal hung up: no more keys, only the timer
                time.sleep(left)
                break
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                break
            try:
                data = os.read(self._fd, 64)
            except OSError:
                data = b""
            if not data:
                self.close()
                continue
            # An escape sequence (arrows, F1 = ESC O P) is no command, whatever letters it holds.
            for key in data.decode("latin-1").split("\x1b", 1)[0]:
                if key in TOP_KEYS or key in QUIT_KEYS:
                    return key
        return None

    def close(self) -> None:
        if self._fd < 0:
            return
        import termios

        with contextlib.suppress(termios.error, OSError):  # the terminal is gone: nothing to restore
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
        self._fd = -1


def top(args: argparse.Namespace) -> int:
    if _missing_pids(args):
        return 1
    clear = sys.stdout.isatty()
    keys = _Keys.open()
    sort = args.sort
    frame = 0
    try:
        while True:
            snap = _take(args, sort)
            if not frame and _unreadable_pids(args, snap):
                return 1
            total = sum(b.size for b in snap.buffers)
            head = (
                f"pydmabuf top - {time.strftime('%H:%M:%S')}: {_plural(len(snap.buffers), 'buffer', 'buffers')}, "
                f"{human(total)}, {_plural(len(snap.processes), 'process', 'processes')}"
            )
            if snap.unreadable:
                head += f", {snap.unreadable} unreadable"
            head += f"; sorted by {sort}"
            if keys is not None:
                head += "\nkeys: q quit; sort by " + ", ".join(f"{k} {name}" for k, name in TOP_KEYS.items())
            sys.stdout.write(
                ("\x1b[H\x1b[2J" if clear else "\n" if frame else "")
                + head
                + "\n\n"
                + table(snap, args.buffers, _width())
            )
            sys.stdout.flush()
            frame += 1
            if args.iterations is not None and frame >= args.iterations:
                break
            if keys is None:
                time.sleep(args.delay)
                continue
            key = keys.wait(args.delay)
            if key is not None and key in QUIT_KEYS:
                break
            if key is not None:
                sort = TOP_KEYS[key]  # and redraw now, as top does
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    finally:
        if keys is not None:
            keys.close()
    return 0


# --- output ----------------------------------------------------------------------------

_PROCESS_COLUMNS = 8 + 1 + 5 + 1 + 10 + 1 + 10 + 1  # PID BUFS SIZE PSS and their spaces, before COMMAND
_MIN_COMMAND = 16  # on a very narrow terminal, wrap rather than show nothing useful


def table(snap: Snapshot, buffers: bool, width: int | None = None) -> str:
    """The ps table; command lines cut to fit ``width`` columns (None: whole)."""
    lines = []
    if buffers:
        lines.append(f"{'INODE':>8} {'SIZE':>10}  {'EXPORTER':<18} {'NAME':<20} HOLDERS pid(fds/maps)")
        for b in snap.buffers:
            holders = " ".join(f"{h.pid}({h.fds}/{h.maps})" for h in b.holders)
            lines.append(f"{b.inode:>8} {human(b.size):>10}  {b.exporter or '?':<18} {printable(b.name):<20} {holders}")
    else:
        # COMMAND last, as in ps and top: the one column of any length gets what is left.
        room = None if width is None else max(width - _PROCESS_COLUMNS, _MIN_COMMAND)
        lines.append(f"{'PID':>8} {'BUFS':>5} {'SIZE':>10} {'PSS':>10} COMMAND")
        for p in snap.processes:
            lines.append(
                f"{p.pid:>8} {p.buffers:>5} {human(p.size):>10} {human(p.pss):>10} {command(p)[:room]}".rstrip()
            )
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
        # cmdline last, so that readers of the older five columns by position still work;
        # its arguments joined by spaces, as ps prints them (JSON has the exact list)
        writer.writerow(["pid", "name", "buffers", "size", "pss", "cmdline"])
        for p in snap.processes:
            writer.writerow([p.pid, p.name, p.buffers, p.size, p.pss, " ".join(p.cmdline)])
