"""Run one command in a fresh guest and report what it did."""

from __future__ import annotations

import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from . import accel as accelerators
from . import debian, initramfs, qemu, shares
from .accel import Accel
from .console import MARKER, Console
from .consumers import ENVIRONMENT as CONSUMER_ENVIRONMENT
from .consumers import MOUNT_POINT, ConsumerRootError, ensure_root
from .host import available, find_busybox, find_qemu
from .kernel import Kernel, ensure_kernel

# Exit statuses for failures of the VM itself, following timeout(1) and
# "docker run": never 0, and distinct from what most commands return.
STATUS_TIMEOUT = 124
STATUS_VM_FAILED = 125

# A normal boot reaches the command in about 6 s under TCG, even on a loaded host.
BOOT_TIMEOUT = 180.0
BOOT_ATTEMPTS = 2

# The KVM probe (see pydmabuf.vm.accel): a KVM boot to a Python prompt takes a few
# seconds; one that has not finished by then is hung or crashed.
PROBE_TIMEOUT = 30.0
_PROBE_WORDS = "pydmabuf kvm probe ok"

_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class VMError(RuntimeError):
    """The VM cannot be used here (see :func:`pydmabuf.vm.available`)."""


@dataclass(frozen=True)
class VMResult:
    """What one guest run did: its exit status, console output, timings, and why it
    failed if the VM itself did (``error``); ``ok`` is status 0 and no error."""

    returncode: int  # the guest command's status, or 124/125 if the VM failed
    output: str = field(repr=False)  # everything the guest printed on its console
    boot_seconds: float | None  # until the guest command started; None if it never did
    total_seconds: float
    timed_out: bool = False
    error: str | None = None  # why the guest did not report a status, if it did not
    kernel: str = ""
    accel: str = ""  # "kvm (why)" or "tcg (why)": which accelerator ran it, and why that one

    @property
    def ok(self) -> bool:
        """The guest command exited 0 and the VM reported no error."""
        return self.returncode == 0 and self.error is None


def guest_cpus() -> int:
    """The guest's CPU count: ``PYDMABUF_VM_CPUS``, else the host's (at most 8).

    Under TCG each guest CPU is a host thread, so more than the host has only adds
    contention; the real-kernel tier runs one test worker per guest CPU."""
    configured = os.environ.get("PYDMABUF_VM_CPUS")
    if configured:
        return max(1, int(configured))
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def guest_memory(cpus: int) -> str:
    """The guest's memory: ``PYDMABUF_VM_MEMORY``, else 2 GiB, or 512 MiB per CPU above four."""
    return os.environ.get("PYDMABUF_VM_MEMORY") or f"{max(2048, 512 * cpus)}M"


def choose_accel(kernel: Kernel | None = None, *, stream: TextIO | None = None) -> Accel:
    """The accelerator :func:`run` uses: see :mod:`pydmabuf.vm.accel`.

    With ``PYDMABUF_VM_ACCEL=auto`` (the default) and a usable /dev/kvm, the first
    call per host, QEMU and guest kernel boots a short probe under KVM (at most
    :data:`PROBE_TIMEOUT` seconds) and remembers whether it worked."""
    qemu_binary = find_qemu()
    guest = kernel

    def key() -> str | None:
        nonlocal guest
        guest = guest or ensure_kernel()
        return accelerators.cache_key(qemu_binary, guest.release) if qemu_binary else None

    try:
        known = accelerators.without_probe(key)
    except ValueError as exc:
        raise VMError(str(exc)) from None
    if known is not None:
        return known
    if qemu_binary is None or guest is None:
        raise VMError(available()[1])
    if stream is not None:
        stream.write("pydmabuf.vm: /dev/kvm is there; trying a short boot under KVM (once per host and kernel)\n")
        stream.flush()
    probe = run([sys.executable, "-c", f"print({_PROBE_WORDS!r})"], cwd="/", live_dirs=[], kernel=guest,
                timeout=PROBE_TIMEOUT, accel="kvm")
    if probe.ok and _PROBE_WORDS in probe.output:
        verdict = Accel("kvm", f"a probe boot under KVM worked in {probe.total_seconds:.1f} s")
    else:
        failure = probe.error or f"the probe exited {probe.returncode}"
        verdict = Accel("tcg", f"software emulation: a probe boot under KVM failed ({failure})")
    accelerators.remember(accelerators.cache_key(qemu_binary, guest.release), verdict)
    if stream is not None:
        stream.write(f"pydmabuf.vm: accelerator {verdict}\n")
        stream.flush()
    return verdict


def _under(directory: str, path: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def guest_environment(env: dict[str, str] | None, scratch: str) -> dict[str, str]:
    """The guest command's whole environment: sane defaults, then ``env``.

    PATH always leads with the directory of this Python, so ``python3`` in the
    guest is the interpreter (and virtualenv) that started the VM.
    """
    python_dir = os.path.dirname(sys.executable)
    result = {
        "PATH": f"{python_dir}:{_SYSTEM_PATH}",
        "HOME": scratch,
        "TMPDIR": scratch,
        "LANG": "C.UTF-8",
        "TERM": "dumb",  # the console is a tty, but no colour codes in logs
        "PYTHONUNBUFFERED": "1",  # stream output as it happens
        "PYDMABUF_IN_VM": "1",  # lets tests (and available()) know; no nested VMs
    }
    result.update(env or {})
    if python_dir not in result["PATH"].split(":"):
        result["PATH"] = f"{python_dir}:{result['PATH']}"
    return result


def _boot(
    cmd: list[str], nonce: str, stream: TextIO | None, timeout: float, idle_timeout: float | None = None
) -> tuple[Console, qemu.Boot, str]:
    """Boot, and boot once more if the guest died before starting the command."""
    started = time.monotonic()
    outputs: list[str] = []
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        console = Console(nonce, stream, time.monotonic())
        remaining = timeout - (time.monotonic() - started)
        booted = qemu.boot(cmd, console, timeout=remaining, boot_timeout=BOOT_TIMEOUT, idle_timeout=idle_timeout)
        outputs.append(console.output())
        setup_failed = f"{MARKER}ERROR {nonce}" in console.text
        if console.booted or setup_failed or booted.timed_out or booted.stalled or attempt == BOOT_ATTEMPTS:
            break
        # The command never started, so booting again cannot run it twice.
        # Rare TCG boot crashes have been seen; a second boot gets past them.
        note = "\npydmabuf.vm: the guest did not get as far as the command; booting again\n"
        outputs.append(note)
        if stream is not None:
            stream.write(note)
            stream.flush()
    return console, booted, "".join(outputs)


def _outcome(console: Console, booted: qemu.Boot, timeout: float) -> tuple[int, str | None]:
    """The guest command's exit status, or ours and an explanation of what went wrong."""
    text, nonce = console.text, console.nonce
    status = re.search(rf"{MARKER}EXIT=(\d+) {nonce}", text)
    if status is not None:
        return int(status.group(1)), None
    guest_error = re.search(rf"{MARKER}ERROR {nonce} (.*)", text)
    if guest_error:
        return STATUS_VM_FAILED, f"guest setup failed: {guest_error.group(1).strip()}"
    if booted.timed_out:
        return STATUS_TIMEOUT, f"timed out after {timeout:g} s; QEMU was killed"
    if booted.stalled:
        return STATUS_TIMEOUT, "the guest printed nothing for the idle limit (hung?); QEMU was killed"
    if booted.boot_timed_out:
        return (
            STATUS_VM_FAILED,
            f"the guest command had not started after {BOOT_TIMEOUT:g} s; QEMU was killed",
        )
    return STATUS_VM_FAILED, (
        f"the guest stopped without reporting a status (QEMU exit {booted.exit_status}); "
        "kernel panic or crash? See the output."
    )


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 1200,
    kernel: Kernel | None = None,
    stream: TextIO | None = None,
    live_dirs: Sequence[str] | None = None,
    snapshot_dirs: Sequence[str] = (),
    consumers: bool = False,
    idle_timeout: float | None = None,
    accel: str | None = None,
) -> VMResult:
    """Boot a guest, run ``argv`` in it and return once it has powered off.

    The guest sees the host's root read-only, with fresh tmpfs mounts on
    /tmp, /run and /dev/shm; ``cwd`` defaults to the current directory.
    ``env`` is added to a minimal default environment (nothing else is
    inherited from the host).  Console output is copied to ``stream`` as it
    arrives.  A guest still running after ``timeout`` seconds is killed and
    reported with ``timed_out`` and status 124, as is one whose running command
    printed nothing for ``idle_timeout`` seconds (None: no such limit).

    ``accel`` is ``"kvm"``, ``"tcg"`` or None for :func:`choose_accel`'s choice;
    the result's ``accel`` says which ran, and why.

    The host root is shared with caching, so the guest would not see (or
    would see torn) files the host changes during the run.  ``live_dirs``
    (default: ``cwd``) are shared uncached instead, and ``snapshot_dirs``
    (small trees, such as a checkout being edited) are copied when the run
    starts and show that copy; see :mod:`pydmabuf.vm.shares`.

    ``consumers=True`` boots over the consumer root instead (Debian trixie with Mesa
    and GStreamer, built and cached on first use: :mod:`pydmabuf.vm.consumers`); the
    command then runs in ``/src``, a snapshot of ``cwd``, with ``PYTHONPATH=/src``
    and the root's own Python.
    """
    started = time.monotonic()
    if not argv:
        raise ValueError("no command given")
    usable, reason = available()
    if not usable:
        raise VMError(reason)
    qemu_binary = find_qemu()
    busybox = find_busybox()
    assert qemu_binary is not None and busybox is not None  # checked by available()
    kernel = kernel or ensure_kernel()
    chosen = Accel(accel, "asked for") if accel in ("kvm", "tcg") else choose_accel(kernel, stream=stream)
    base = initramfs.base_archive(busybox, kernel.modules)

    cwd = os.path.abspath(cwd or os.getcwd())
    live = list(live_dirs) if live_dirs is not None else [cwd]
    root = "/"
    if consumers:
        try:
            root = str(ensure_root())
        except (ConsumerRootError, debian.AptError) as exc:
            raise VMError(f"no consumer root: {exc}") from exc
        env = {"PYTHONPATH": MOUNT_POINT, **CONSUMER_ENVIRONMENT, **(env or {})}
    nonce = secrets.token_hex(12)
    with tempfile.TemporaryDirectory(prefix="pydmabuf-vm-") as tmp:
        try:
            if consumers:  # the checkout, copied, at /src of the other root
                layout = shares.plan([], [cwd], Path(tmp), targets={os.path.realpath(cwd): MOUNT_POINT}, keep=False)
            else:
                layout = shares.plan(live, snapshot_dirs, Path(tmp))
        except shares.SnapshotTooLarge as exc:
            raise VMError(str(exc)) from exc
        # A tmpfs on /tmp would hide a checkout or interpreter that lives there.
        needed = [cwd, sys.executable, os.path.realpath(sys.executable), *(s.target for s in layout.shares)]
        scratch_over_tmp = consumers or not any(_under("/tmp", path) for path in needed)
        scratch = "/tmp" if scratch_over_tmp else "/run/tmp"
        job = initramfs.Job(list(argv), guest_environment(env, scratch), MOUNT_POINT if consumers else cwd, nonce,
                            scratch_over_tmp, layout)
        initrd = Path(tmp) / "initrd.cpio"
        initrd.write_bytes(base.read_bytes() + initramfs.job_archive(job))
        cpus = guest_cpus()
        cmd = qemu.command_line(
            qemu_binary,
            kernel.vmlinuz,
            initrd,
            memory=guest_memory(cpus),
            cpus=cpus,
            shares=tuple((share.tag, share.source) for share in layout.shares),
            root=root,
            accel=chosen.name,
        )
        console, booted, output = _boot(cmd, nonce, stream, timeout - (time.monotonic() - started), idle_timeout)

    returncode, error = _outcome(console, booted, timeout)
    return VMResult(
        returncode=returncode,
        output=output,
        boot_seconds=console.boot_seconds,
        total_seconds=time.monotonic() - started,
        timed_out=error is not None and (booted.timed_out or booted.stalled),
        error=error,
        kernel=kernel.release,
        accel=str(chosen),
    )
