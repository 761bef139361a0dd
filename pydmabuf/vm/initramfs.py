"""The guest's initramfs: a cached base archive plus a small per-run job archive.

The kernel unpacks every cpio archive concatenated in the initrd, later ones
adding to earlier ones, so the expensive part (busybox and the modules) is
built once and cached by content hash, while the command to run travels in a
tiny second archive.  That keeps the command off the kernel command line,
where quoting, length limits and the kernel's own parameter parsing would
mangle it.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from . import modules
from .cpio import CpioWriter
from .host import cache_dir
from .shares import Layout

FORMAT = "pydmabuf-vm-initramfs-1"  # bump when the archive layout changes
_APPLETS = ("sh", "mount", "mkdir", "insmod", "chroot", "env", "poweroff", "cat", "ln", "stty", "sleep")

# Runs as PID 1 under busybox.  Everything the guest command sees comes from
# the host's root over 9p (read-only); only the kernel's pseudo filesystems
# and scratch tmpfs mounts are added on top.
INIT = r"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /job/run

drain() {
    # stty sets attributes with TCSADRAIN: it returns once the console has
    # sent everything queued, so nothing is lost to the power-off below.
    stty -F /dev/console -echo 2>/dev/null
}
fail() {
    drain
    echo
    echo "PYDMABUF_VM_ERROR $NONCE $*"
    drain
    poweroff -f
}
must() {
    "$@" || fail "failed: $*"
}

# One module a line, then its parameters (words without spaces or quotes).
while read -r m args; do
    insmod "/modules/$m.ko" $args || echo "pydmabuf-vm: insmod $m $args failed"
done </modules.order
mkdir -p /host
must mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /host
mount_shares
must mount -t proc proc /host/proc
must mount -t sysfs sysfs /host/sys
must mount -t devtmpfs devtmpfs /host/dev
mount -t debugfs debugfs /host/sys/kernel/debug 2>/dev/null
# devtmpfs has no /dev/shm or /dev/pts: without them multiprocessing's locks
# and queues fail with FileNotFoundError.
mkdir -p /host/dev/shm /host/dev/pts
must mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
must mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /host/dev/pts
ln -sf /proc/self/fd /host/dev/fd
ln -sf /proc/self/fd/0 /host/dev/stdin
ln -sf /proc/self/fd/1 /host/dev/stdout
ln -sf /proc/self/fd/2 /host/dev/stderr
must mount -t tmpfs -o mode=755 tmpfs /host/run
if [ "$SCRATCH_OVER_TMP" = 1 ]; then
    must mount -t tmpfs -o mode=1777 tmpfs /host/tmp
else
    mkdir -p -m 1777 /host/run/tmp
fi

echo
echo "PYDMABUF_VM_START $NONCE"
job
rc=$?
drain
echo
echo "PYDMABUF_VM_EXIT=$rc $NONCE"
drain
poweroff -f
"""


@dataclass(frozen=True)
class Job:
    """What the guest runs: ``argv`` in ``cwd`` with exactly ``env``."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    nonce: str  # tags our marker lines so guest output cannot forge them
    scratch_over_tmp: bool = True  # False when the host's /tmp must stay visible
    layout: Layout = field(default_factory=Layout)  # live and snapshot directories mounted over the host root

    def script(self) -> str:
        for text in [*self.argv, *self.env, *self.env.values(), self.cwd]:
            if "\0" in text:
                raise ValueError(f"NUL byte in guest command, cwd or environment: {text!r}")
        for name in self.env:
            if not name or "=" in name:
                raise ValueError(f"invalid environment variable name {name!r}")
        assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in self.env.items())
        # busybox's chroot always changes to "/", so the host's /bin/sh does the cd.
        inner = 'cd -- "$1" || exit 126; shift; exec "$@"'
        command = shlex.join(["pydmabuf-vm", self.cwd, *self.argv])
        return (
            f"NONCE={shlex.quote(self.nonce)}\n"
            f"SCRATCH_OVER_TMP={int(self.scratch_over_tmp)}\n"
            "mount_shares() {\n"
            f"{self.layout.mount_script()}"
            "    :\n"
            "}\n"
            "job() {\n"
            f"    /bin/busybox env -i {assignments} /bin/busybox chroot /host "
            f"/bin/sh -c {shlex.quote(inner)} {command} </dev/null\n"
            "}\n"
        )


def job_archive(job: Job) -> bytes:
    buf = io.BytesIO()
    cpio = CpioWriter(buf)
    cpio.directory("job")
    cpio.file("job/run", job.script().encode())
    cpio.close()
    return buf.getvalue()


def base_archive(busybox: Path, module_files: tuple[Path, ...]) -> Path:
    """Path of the cached base archive for this busybox and these modules."""
    payload: list[tuple[str, bytes]] = []
    for path in module_files:
        payload.append((modules.module_name(path.name), modules.decompress(path.read_bytes(), path.name)))
    busybox_bytes = busybox.read_bytes()
    order = "".join(" ".join((name, *modules.parameters(name))) + "\n" for name, _ in payload)
    digest = hashlib.sha256(FORMAT.encode() + INIT.encode() + order.encode())
    digest.update(hashlib.sha256(busybox_bytes).digest())
    for name, data in payload:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    target = cache_dir() / "initramfs" / f"{digest.hexdigest()[:32]}.cpio"
    if target.exists():
        os.utime(target)  # recently used: keep it when pruning
        return target

    buf = io.BytesIO()
    cpio = CpioWriter(buf)
    for directory in ("bin", "dev", "proc", "sys", "host", "modules"):
        cpio.directory(directory)
    # The kernel opens /dev/console for PID 1's stdio before /init runs.
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox_bytes, 0o755)
    for applet in _APPLETS:
        cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("init", INIT.encode(), 0o755)
    for name, data in payload:
        cpio.file(f"modules/{name}.ko", data)
    cpio.file("modules.order", order.encode())
    cpio.close()

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(target)
    _prune(target.parent, keep=3)
    return target


def _prune(directory: Path, keep: int) -> None:
    archives = sorted(directory.glob("*.cpio"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[keep:]:
        old.unlink(missing_ok=True)
