"""Launching QEMU and supervising it: output streaming, timeout, clean-up."""

from __future__ import annotations

import codecs
import ctypes
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Grace period for the guest to power off after it reported its result.
POWEROFF_GRACE = 20.0


def command_line(
    qemu: str,
    vmlinuz: Path,
    initrd: Path,
    *,
    memory: str = "2G",
    cpus: int = 2,
    shares: tuple[tuple[str, str], ...] = (),
    root: str = "/",
    accel: str = "tcg",
) -> list[str]:
    """QEMU's arguments; ``shares`` are extra read-only 9p exports (tag, host path);
    ``root`` is the directory the guest runs in (the host's root by default);
    ``accel`` is ``"kvm"`` or ``"tcg"`` (see :mod:`pydmabuf.vm.accel`)."""
    extra = []
    for tag, path in shares:
        path = path.replace(",", ",,")  # QEMU's escape for a comma in an option value
        extra += ["-virtfs", f"local,path={path},mount_tag={tag},security_model=none,readonly=on,multidevs=remap"]
    return [
        qemu,
        *_accelerator(accel),
        "-m", memory,
        "-smp", str(cpus),
        # Serial console on stdio.  Not -nographic: that also turns on
        # SeaBIOS's serial console, which writes terminal-reset escapes.
        "-display", "none",
        "-serial", "stdio",
        "-monitor", "none",
        "-no-reboot",  # a guest panic or reboot ends QEMU instead of looping
        "-vga", "none",
        "-nic", "none",
        "-kernel", str(vmlinuz),
        "-initrd", str(initrd),
        "-append", "console=ttyS0 quiet panic=-1 rdinit=/init",
        # The host's root, read-only: the guest runs the host's own Python,
        # virtualenv and checkout without copying anything.
        "-virtfs", f"local,path={root.replace(',', ',,')},mount_tag=hostroot,security_model=none,readonly=on,"
        "multidevs=remap",
        *extra,
    ]  # fmt: skip


def _accelerator(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    # Multi-threaded TCG: each guest CPU is a host thread, so the guest's parallel
    # test workers really run in parallel.
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


class Watcher(Protocol):
    """Consumes the guest's console output and tracks how far the guest got."""

    @property
    def booted(self) -> bool:  # the guest command has started
        ...

    @property
    def finished(self) -> bool:  # the guest has reported its result
        ...

    def feed(self, text: str) -> None: ...


@dataclass(frozen=True)
class Boot:
    exit_status: int | None  # QEMU's own status; None if we had to kill it
    timed_out: bool  # killed at the overall timeout
    boot_timed_out: bool  # killed because the guest command never started
    seconds: float
    stalled: bool = False  # killed because the running guest printed nothing for ``idle_timeout``


def _die_with_parent() -> None:
    # Runs in the child before exec: if the Python process is killed outright
    # (SIGKILL, OOM), the kernel kills QEMU too instead of leaving it running.
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def boot(
    cmd: list[str], console: Watcher, *, timeout: float, boot_timeout: float, idle_timeout: float | None = None
) -> Boot:
    """Run QEMU, feeding its console output to ``console`` as it arrives.

    QEMU is killed after ``timeout`` seconds, or after ``boot_timeout`` if the
    guest command has not started by then, or once the started command has
    printed nothing for ``idle_timeout`` seconds (a hung guest: a slow one keeps
    printing), or :data:`POWEROFF_GRACE` seconds after the guest reported its
    result; and in any case before this function returns or raises
    (KeyboardInterrupt included).
    """
    start = time.monotonic()
    deadline = start + timeout
    boot_deadline = start + min(boot_timeout, timeout)
    last_output = start
    timed_out = boot_timed_out = stalled = False
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Own session: a terminal's Ctrl-C reaches only us, and we stop QEMU.
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    assert proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                if not console.booted and now >= boot_deadline:
                    boot_timed_out = True
                    break
                if idle_timeout is not None and console.booted and now - last_output >= idle_timeout:
                    stalled = True
                    break
                if not sel.select(min(deadline - now, 1.0)):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break  # QEMU closed its output: it is exiting
                last_output = time.monotonic()
                console.feed(decoder.decode(chunk))
                if console.finished:
                    deadline = min(deadline, time.monotonic() + POWEROFF_GRACE)
        console.feed(decoder.decode(b"", final=True))
        if not (timed_out or boot_timed_out or stalled):
            try:
                proc.wait(timeout=max(0.1, min(POWEROFF_GRACE, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    status = None if (timed_out or boot_timed_out or stalled) else proc.returncode
    return Boot(status, timed_out, boot_timed_out, time.monotonic() - start, stalled)
