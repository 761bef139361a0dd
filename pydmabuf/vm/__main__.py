"""Command line: ``python -m pydmabuf.vm {run,fetch,consumers,check}``."""

from __future__ import annotations

import argparse
import os
import sys

from . import accel, available, ensure_kernel, run
from .consumers import ConsumerRootError, ensure_root, versions
from .host import find_qemu
from .kernel import Kernel, KernelError, cached_kernel
from .runner import STATUS_VM_FAILED, VMError, guest_cpus, guest_memory

_PROBE = 'uname -r; ls -l /dev/udmabuf /dev/dma_heap/ /dev/dri/; python3 -c "import sys; print(sys.version)"'


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pydmabuf.vm",
        description="Run commands under a real Linux kernel (Debian trixie) in QEMU.",
    )
    sub = parser.add_subparsers(dest="action", required=True)

    def kernel_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kernel", metavar="VMLINUZ", help="kernel image (default: $PYDMABUF_VM_KERNEL, else Debian's)")
        p.add_argument(
            "--modules", metavar="DIR", help="its /lib/modules/<release> tree (default: $PYDMABUF_VM_MODULES)"
        )

    p_run = sub.add_parser("run", help="run a command in the guest; exit with its status")
    kernel_options(p_run)
    p_run.add_argument(
        "--timeout",
        type=float,
        default=1200,
        metavar="S",
        help="kill the guest after S seconds (default 1200)",
    )
    p_run.add_argument("-C", "--cwd", metavar="DIR", help="working directory in the guest (default: the current one)")
    p_run.add_argument(
        "-e", "--env", action="append", default=[], metavar="NAME[=VALUE]",
        help="set a guest environment variable; NAME alone copies the host's value",
    )  # fmt: skip
    p_run.add_argument(
        "--live",
        action="append",
        metavar="DIR",
        help="a directory the host may change during the run, shared uncached "
        "(default: the working directory; / for none)",
    )
    p_run.add_argument(
        "--snapshot",
        action="append",
        default=[],
        metavar="DIR",
        help="a small tree (a checkout) to copy at the start and show as that copy, cached",
    )
    p_run.add_argument(
        "--consumers", action="store_true",
        help="boot over the consumer root (Debian trixie with Mesa and GStreamer, built on first use) "
        "with this checkout at /src",
    )  # fmt: skip
    p_run.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")

    p_fetch = sub.add_parser("fetch", help="download (or refresh) the Debian kernel into the cache")
    kernel_options(p_fetch)

    sub.add_parser("consumers", help="build (or find) the consumer root and print its Mesa and GStreamer versions")

    p_check = sub.add_parser("check", help="say whether the VM can run here (never downloads)")
    kernel_options(p_check)
    p_check.add_argument("--boot", action="store_true", help="also boot once and list the dma-buf devices")
    return parser


def _environment(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        env[name] = value if sep else os.environ.get(name, "")
    return env


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.action == "fetch":
            print(ensure_kernel(args.kernel, args.modules, refresh=True))
            return 0
        if args.action == "consumers":
            root = ensure_root()
            print(root)
            for package, version in versions(root).items():
                print(f"{package} {version}")
            return 0
        usable, reason = available()
        if args.action == "check":
            print(f"available: {'yes' if usable else 'no'} ({reason})")
            if not usable:
                return 1
            # check never downloads: a user kernel, or the cached one, or say how to get one
            if args.kernel or args.modules or os.environ.get("PYDMABUF_VM_KERNEL"):
                kernel = ensure_kernel(args.kernel, args.modules)
            else:
                found = cached_kernel()
                if found is None:
                    print("kernel: none cached; 'python -m pydmabuf.vm fetch' downloads Debian's (about 100 MB), "
                          "or set PYDMABUF_VM_KERNEL")
                    return 1 if args.boot else 0
                kernel = found
            print(f"kernel: {kernel}")
            print(f"guest: {guest_cpus()} CPUs, {guest_memory(guest_cpus())} memory")
            if not args.boot:
                print(f"accelerator: {_accel_guess(kernel)}")
                return 0
            command = ["sh", "-c", _PROBE]
            return _report(run(command, kernel=kernel, timeout=300, stream=sys.stdout))
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            print("python -m pydmabuf.vm run: no command (usage: run [options] -- CMD ...)", file=sys.stderr)
            return 2
        kernel = ensure_kernel(args.kernel, args.modules)
        result = run(
            command,
            env=_environment(args.env),
            cwd=args.cwd,
            timeout=args.timeout,
            kernel=kernel,
            stream=sys.stdout,
            live_dirs=args.live,
            snapshot_dirs=args.snapshot,
            consumers=args.consumers,
        )
        return _report(result)
    except (VMError, KernelError, ConsumerRootError, OSError) as exc:
        print(f"pydmabuf.vm: {exc}", file=sys.stderr)
        return STATUS_VM_FAILED
    except KeyboardInterrupt:
        return 130


def _accel_guess(kernel: Kernel) -> str:
    """What run() would use, without booting a probe (check without --boot boots nothing)."""
    qemu = find_qemu()
    try:
        known = accel.without_probe(lambda: accel.cache_key(qemu, kernel.release) if qemu else None)
    except ValueError as exc:  # a bad PYDMABUF_VM_ACCEL: run would refuse it the same way
        return f"none: {exc}"
    return str(known) if known else "kvm if a short probe boot under KVM works, else tcg (decided on the first run)"


def _report(result: object) -> int:
    from .runner import VMResult

    assert isinstance(result, VMResult)
    boot = f"{result.boot_seconds:.1f}s" if result.boot_seconds is not None else "n/a"
    summary = f"pydmabuf.vm: exit {result.returncode}, boot {boot}, total {result.total_seconds:.1f}s, {result.accel}"
    if result.error:
        summary += f": {result.error}"
    print(summary, file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
