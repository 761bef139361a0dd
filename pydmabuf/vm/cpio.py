"""Minimal writer for the "newc" cpio format the kernel unpacks as initramfs.

Written in Python rather than shelling out to cpio(1) so archives are
byte-for-byte reproducible (fixed mtimes, inode numbers and owners) and can
hold device nodes without root privileges on the host.
"""

from __future__ import annotations

import stat
from typing import BinaryIO

_MAGIC = b"070701"


class CpioWriter:
    """Append entries to a newc archive; call :meth:`close` to write the trailer."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 0
        self._written = 0

    def directory(self, path: str, mode: int = 0o755) -> None:
        self._entry(path, stat.S_IFDIR | mode, b"")

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(path, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, b"", nlink=1)
        # Pad to a whole block so further archives can be concatenated after
        # this one: the kernel unpacks every archive in the initrd in turn.
        self._pad(512)

    def _entry(
        self,
        path: str,
        mode: int,
        data: bytes,
        *,
        rdev: tuple[int, int] = (0, 0),
        nlink: int | None = None,
    ) -> None:
        name = path.lstrip("/").encode() + b"\0"
        self._ino += 1
        fields = (
            self._ino,  # ino: unique per entry so the kernel never hard-links
            mode,
            0,  # uid
            0,  # gid
            nlink if nlink is not None else (2 if stat.S_ISDIR(mode) else 1),
            0,  # mtime: fixed for reproducible archives
            len(data),
            0,  # devmajor
            0,  # devminor
            rdev[0],
            rdev[1],
            len(name),
            0,  # check (unused by newc)
        )
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        self._write(header + name)
        self._pad(4)
        self._write(data)
        self._pad(4)

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._written += len(data)

    def _pad(self, boundary: int) -> None:
        self._write(b"\0" * (-self._written % boundary))
