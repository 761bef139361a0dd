"""The ``pydmabuf`` command line (also ``python -m pydmabuf``).

Subcommands register themselves in ``COMMANDS``: a name, a help line, a function
that adds its arguments, and a function that runs it and returns the exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from .._version import __version__
from . import demo
from .ps import ps, ps_args, top, top_args

if TYPE_CHECKING:
    from .features import Report

# Building the parser loads only argparse and each command's arguments: what a command
# needs (the accounting scan, the library's channel, the feature probes, json) it imports when it
# runs, so `pydmabuf --help` and `pydmabuf info` start fast.


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _info_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _heaps_line(report: Report) -> str:
    """The heaps pydmabuf.heaps() returns and who provides them: on the fallback backend
    'system' with no /dev/dma_heap at all, so the line must not read as "none"."""
    kernel_has = "" if report.heaps else "; no /dev/dma_heap in this kernel: CONFIG_DMABUF_HEAPS off"
    if report.backend == "fallback":
        source = f"emulated by the fallback backend with memfds{kernel_has}"
    elif report.backend == "kernel":
        source = "from the kernel backend: /dev/dma_heap" if report.heaps else f"kernel backend{kernel_has}"
    else:
        return "unknown (no usable backend: see the backend line)"
    if not report.backend_heaps:
        return f"none ({source})"
    # ", " between names: heap names may hold commas themselves (linux,cma)
    return f"{', '.join(report.backend_heaps)} ({source})"


def _info(args: argparse.Namespace) -> int:
    from .features import probe

    report = probe()
    if args.json:
        import json

        print(json.dumps(report.as_dict(), indent=2))
        return 0
    yes_no = {True: "yes", False: "no", None: "unknown"}
    print(f"backend:  {report.backend}")
    print(
        "path:     "
        + (
            "compiled (the hot calls and the fd holder in C: pydmabuf.uapi._fastops, _fdcore)"
            if report.compiled
            else "pure Python (no compiled path: built without a C compiler, or PYDMABUF_PURE=1)"
        )
    )
    print(f"kernel:   {report.kernel} ({report.machine})")
    print(f"heaps:    {_heaps_line(report)}")
    for heap in report.heaps:
        print(f"heap:     {heap.name}: {'usable' if heap.usable else heap.problem}")
        if heap.fix:
            print(f"          fix: {heap.fix}")
    limits = f"size_limit_mb={report.udmabuf_size_limit_mb}, list_limit={report.udmabuf_list_limit}"
    if report.udmabuf is None:
        print("udmabuf:  absent (no /dev/udmabuf: kernel without CONFIG_UDMABUF)")
    else:
        print(f"udmabuf:  {'usable' if report.udmabuf.usable else report.udmabuf.problem} ({limits})")
        if report.udmabuf.fix:
            print(f"          fix: {report.udmabuf.fix}")
    for feature in report.features:
        print(f"feature:  {feature.name:<17} {yes_no[feature.supported]:<8} {feature.detail}")
        if feature.fix:
            print(f"          fix: {feature.fix}")
    if report.backend == "fallback":
        print("note:     no usable dma-buf devices; the fallback backend (memfds, socketpair fences) is active")
    return 0


COMMANDS: dict[str, Command] = {
    "info": Command("backend, kernel, heaps, udmabuf and feature probes", _info_args, _info),
    "ps": Command("dma-bufs per process (largest first) and per exporter", ps_args, ps),
    "top": Command("the ps table, refreshed every few seconds until q or Ctrl-C", top_args, top),
    "demo": Command(
        "share frames with fences from a producer process to a consumer process", demo.add_arguments, demo.run
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pydmabuf",
        description="Linux dma-buf tools",
        epilog="exit status: 0 success, 1 failure (reason on stderr), 2 usage error. "
        "'pydmabuf COMMAND --help' describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"pydmabuf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"pydmabuf: error: a command is required ({', '.join(COMMANDS)}); see 'pydmabuf --help'", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pydmabuf ps | head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    except OSError as exc:
        print(f"pydmabuf {args.command}: {exc}", file=sys.stderr)
        return 1
