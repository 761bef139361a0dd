"""The ``pydmabuf`` command line (also ``python -m pydmabuf``).

Subcommands register themselves in ``COMMANDS``: a name, a help line, a function
that adds its arguments, and a function that runs it and returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

from . import __version__
from .cli_ps import ps, ps_args, top, top_args


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _info_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _info(args: argparse.Namespace) -> int:
    from .features import probe

    report = probe()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    yes_no = {True: "yes", False: "no", None: "unknown"}
    print(f"backend:  {report.backend}")
    print(f"kernel:   {report.kernel} ({report.machine})")
    if report.heaps:
        for heap in report.heaps:
            state = "usable" if heap.usable else f"NOT usable: {heap.problem}"
            print(f"heap:     {heap.name}: {state}")
    else:
        print("heaps:    none (no /dev/dma_heap)")
    if report.udmabuf:
        state = "usable" if report.udmabuf_usable else f"NOT usable: {report.udmabuf_problem}"
        print(f"udmabuf:  {state} (size_limit_mb={report.udmabuf_size_limit_mb}, "
              f"list_limit={report.udmabuf_list_limit})")
    else:
        print("udmabuf:  absent (no /dev/udmabuf)")
    for name, value in report.features.items():
        print(f"feature:  {name}: {yes_no[value]}")
    if report.backend == "fallback":
        print("note:     no dma-buf devices here; the fallback backend (memfd/eventfd) is active")
    return 0


COMMANDS: dict[str, Command] = {
    "info": Command("backend, kernel, heaps, udmabuf and feature probes", _info_args, _info),
    "ps": Command("dma-bufs per process (largest first) and per exporter", ps_args, ps),
    "top": Command("the ps table, refreshed every few seconds until interrupted", top_args, top),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pydmabuf", description="Linux dma-buf tools")
    parser.add_argument("--version", action="version", version=f"pydmabuf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        print(f"pydmabuf {args.command}: {exc}", file=sys.stderr)
        return 1
