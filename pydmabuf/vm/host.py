"""What the host must provide: an x86_64 Linux, QEMU, a static busybox."""

from __future__ import annotations

import os
import platform
import shutil
import struct
import sys
from pathlib import Path

from .cache import cache_dir
from .kernel import cached_kernel

__all__ = ["INSTALL_HINT", "QEMU", "available", "cache_dir", "find_busybox", "find_qemu"]

INSTALL_HINT = "apt-get install --no-install-recommends qemu-system-x86 busybox-static cpio"
QEMU = "qemu-system-x86_64"


def find_qemu() -> str | None:
    return shutil.which(os.environ.get("PYDMABUF_VM_QEMU") or QEMU)


def find_busybox() -> Path | None:
    """A statically linked busybox: it must run in an initramfs with no libc."""
    candidates = [os.environ.get("PYDMABUF_VM_BUSYBOX"), shutil.which("busybox"), "/bin/busybox"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and is_static_elf(Path(candidate)):
            return Path(candidate)
    return None


def is_static_elf(path: Path) -> bool:
    """True for an ELF64 executable without a PT_INTERP (dynamic loader) header."""
    try:
        with path.open("rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2:
                return False
            endian = "<" if ident[5] == 1 else ">"
            (phoff,) = struct.unpack_from(endian + "Q", ident, 0x20)
            phentsize, phnum = struct.unpack_from(endian + "HH", ident, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        (p_type,) = struct.unpack_from(endian + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def available() -> tuple[bool, str]:
    """Whether :func:`pydmabuf.vm.run` can work here, and if not, why.

    Does not touch the network: a kernel that still has to be downloaded
    counts as available as long as apt is there to fetch it.
    """
    if os.environ.get("PYDMABUF_IN_VM"):
        # Nested emulation would be unbearably slow, and the host can run it.
        return False, "already inside the pydmabuf VM (PYDMABUF_IN_VM is set)"
    if not sys.platform.startswith("linux"):
        return False, f"the real-kernel VM needs Linux, not {sys.platform}"
    machine = platform.machine()
    if machine != "x86_64":
        # The guest runs the host's own Python binary, so it must be x86_64 too.
        return False, f"the real-kernel VM needs an x86_64 host, not {machine}"
    if find_qemu() is None:
        return False, f"{QEMU} not found (install: {INSTALL_HINT})"
    if find_busybox() is None:
        return False, f"no statically linked busybox found (install: {INSTALL_HINT})"
    if not os.environ.get("PYDMABUF_VM_KERNEL") and not shutil.which("apt-get") and cached_kernel() is None:
        return False, "no cached kernel, no apt-get to fetch one, and PYDMABUF_VM_KERNEL unset"
    return True, "ok"
