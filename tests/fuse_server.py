"""A minimal FUSE file system served from a thread of the test process, over a raw
``/dev/fuse`` fd (no libfuse): one read-only file, as a hostile sender could mount.

It answers INIT, LOOKUP, GETATTR, OPEN, READ, STATFS, FLUSH and RELEASE with
attributes that are never cached (``attr_valid`` 0, so every ``fstat`` asks it),
until ``freeze()``. From then on it reads every request and answers none but FLUSH
and RELEASE (so that closing the file never hangs): a caller that asks it anything
waits for ever, and after the server has read the request not even SIGKILL ends the
wait (D state). ``asked`` lists what was asked while frozen. ``close()`` aborts the
connection (every waiting request fails), unmounts and joins the thread.

    with FuseServer(directory) as fs:
        fd = os.open(fs.path, os.O_RDONLY)
        fs.freeze()
        ...  # hand fd to the code under test, in a child process
        os.close(fd)

Needs root (or CAP_SYS_ADMIN) and /dev/fuse; ``unavailable()`` says why not, if not.
The root is either a directory holding the file (``file_root=False``, mounted on a
directory) or the file itself (``file_root=True``, mounted on a file: then
``fs.path`` is the mount point, whose name the file keeps).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as E
import os
import select
import stat
import struct
import threading

FUSE_KERNEL_VERSION = 7
FUSE_KERNEL_MINOR = 31  # what we speak; the kernel settles on the lower of its and ours
LOOKUP, FORGET, GETATTR, OPEN, READ, STATFS, RELEASE = 1, 2, 3, 14, 15, 17, 18
GETXATTR, LISTXATTR, FLUSH, INIT, OPENDIR, RELEASEDIR = 22, 23, 25, 26, 27, 29
ACCESS, INTERRUPT, DESTROY, BATCH_FORGET = 34, 36, 38, 42
NAMES = {1: "LOOKUP", 3: "GETATTR", 5: "READLINK", 14: "OPEN", 15: "READ", 17: "STATFS", 22: "GETXATTR",
         23: "LISTXATTR", 25: "FLUSH", 27: "OPENDIR", 28: "READDIR", 34: "ACCESS", 36: "INTERRUPT",
         39: "IOCTL", 40: "POLL", 46: "LSEEK", 52: "STATX"}
_NO_REPLY = (FORGET, BATCH_FORGET, INTERRUPT)
_ALWAYS = (FLUSH, RELEASE, RELEASEDIR, DESTROY)  # answered even when frozen: close() must not hang
_IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, extlen, pad
_OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr: 88 bytes
_ENTRY = struct.Struct("<QQQQII")  # fuse_entry_out before its fuse_attr
_ATTR_OUT = struct.Struct("<QII")  # fuse_attr_out before its fuse_attr
_OPEN_OUT = struct.Struct("<QIi")
_INIT_IN = struct.Struct("<IIII")
_INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")  # 64 bytes
_STATFS_OUT = struct.Struct("<QQQQQIIII24x")  # fuse_kstatfs: 80 bytes
_READ_IN = struct.Struct("<QQI")  # fh, offset, size
ROOT, FILE = 1, 2
MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2
_CONNECTIONS = "/sys/fs/fuse/connections"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def unavailable() -> str | None:
    """Why this process cannot serve a FUSE mount, or None if it can."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (FUSE is not in this kernel, or /dev is not devtmpfs)"
    if os.geteuid() != 0:
        return "mounting a FUSE file system needs root"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return f"cannot open /dev/fuse: {exc}"
    return None


class FuseServer:
    def __init__(self, directory: str, *, name: str = "data", size: int = 65536,
                 file_root: bool = False) -> None:
        self.size = size
        self.file_root = file_root
        self.asked: list[tuple[str, int]] = []  # (operation, caller's pid) while frozen
        self.errors: list[str] = []  # the server's own failures (a bug in this file)
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._mounted = False
        self._init_done = threading.Event()
        self.mountpoint = os.path.join(directory, name if file_root else "fuse")
        self.name = name
        self.path = self.mountpoint if file_root else os.path.join(self.mountpoint, name)
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name="test-fuse-server", daemon=True)
        try:
            if file_root:
                with open(self.mountpoint, "wb"):
                    pass
            else:
                os.mkdir(self.mountpoint)
            mode = stat.S_IFREG if file_root else stat.S_IFDIR
            options = f"fd={self.fd},rootmode={mode:o},user_id=0,group_id=0,allow_other".encode()
            if _libc.mount(b"pydmabuf-test", self.mountpoint.encode(), b"fuse", MS_NOSUID | MS_NODEV, options):
                code = ctypes.get_errno()
                raise OSError(code, f"mount -t fuse {self.mountpoint}: {os.strerror(code)}")
            self._mounted = True
            # Only now: before the mount, /dev/fuse polls POLLERR and reads fail (EPERM).
            # The kernel queued INIT at mount time; nothing waits for it before this.
            self._thread.start()
            if not self._init_done.wait(10):
                raise OSError(E.ETIMEDOUT, "the kernel never sent FUSE_INIT")
            # The connection's number in fusectl is the superblock's device number; the
            # mount point now is the root, so this asks our server (answering).
            self.connection = os.stat(self.mountpoint).st_dev
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> FuseServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def freeze(self) -> None:
        """Answer nothing from now on but FLUSH and RELEASE; record the rest."""
        self.frozen.set()

    def abort(self) -> None:
        """Fail every request waiting for this server (and every later one): through
        fusectl where it is mounted, else by closing /dev/fuse, which does the same
        once no other process holds a copy of it (the test's children close theirs)."""
        path = f"{_CONNECTIONS}/{os.minor(self.connection)}/abort" if hasattr(self, "connection") else ""
        if path and os.path.exists(path):
            with open(path, "w") as f:
                f.write("1")
            return
        self._stop.set()
        self._thread.join(5)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        self.abort()
        if self._mounted:
            _libc.umount2(self.mountpoint.encode(), MNT_DETACH)
            self._mounted = False
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            if self.file_root:
                os.unlink(self.mountpoint)
            else:
                os.rmdir(self.mountpoint)
        except OSError:
            pass

    # --- serving ---------------------------------------------------------------------
    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            try:
                request = os.read(self.fd, 1 << 17)
            except OSError as exc:
                if exc.errno in (E.EINTR, E.EAGAIN, E.ENOENT):  # ENOENT: interrupted meanwhile
                    continue
                return  # ENODEV: aborted or unmounted
            try:
                self._handle(request)
            except Exception as exc:  # a bug here must not leave callers waiting
                self.errors.append(repr(exc))
            continue

    def _handle(self, request: bytes) -> None:
        _len, opcode, unique, node, _uid, _gid, pid, _ext, _pad = _IN_HEADER.unpack_from(request)
        body = request[_IN_HEADER.size:]
        if opcode in _NO_REPLY:
            return
        if self.frozen.is_set() and opcode not in _ALWAYS:
            self.asked.append((NAMES.get(opcode, str(opcode)), pid))
            return  # the caller waits for ever
        try:
            payload = self._answer(opcode, node, body)
        except OSError as exc:
            self._reply(unique, -(exc.errno or E.EIO))
            return
        self._reply(unique, 0, payload)

    def _answer(self, opcode: int, node: int, body: bytes) -> bytes:
        if opcode == INIT:
            _major, minor, readahead, _flags = _INIT_IN.unpack_from(body)
            self._init_done.set()
            return _INIT_OUT.pack(FUSE_KERNEL_VERSION, min(minor, FUSE_KERNEL_MINOR), readahead, 0,
                                  16, 12, 4096, 1, 0, 0, 0, 0)
        if opcode == LOOKUP:
            if node == ROOT and not self.file_root and body.rstrip(b"\0") == self.name.encode():
                return _ENTRY.pack(FILE, 1, 0, 0, 0, 0) + self._attr(FILE)
            raise OSError(E.ENOENT, "no such file")
        if opcode == GETATTR:
            return _ATTR_OUT.pack(0, 0, 0) + self._attr(node)
        if opcode in (OPEN, OPENDIR):
            return _OPEN_OUT.pack(1, 0, 0)
        if opcode == READ:
            _fh, offset, size = _READ_IN.unpack_from(body)
            return bytes(max(0, min(size, self.size - offset)))
        if opcode == STATFS:
            return _STATFS_OUT.pack(0, 0, 0, 0, 0, 4096, 255, 4096, 0)
        if opcode in _ALWAYS:
            return b""
        raise OSError(E.ENOSYS, "not implemented")

    def _attr(self, node: int) -> bytes:
        if node == ROOT and not self.file_root:
            mode, size = stat.S_IFDIR | 0o755, 0
        else:
            mode, size = stat.S_IFREG | 0o644, self.size
        return _ATTR.pack(node, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0, 4096, 0)

    def _reply(self, unique: int, error: int, payload: bytes = b"") -> None:
        out = _OUT_HEADER.pack(_OUT_HEADER.size + len(payload), error, unique) + payload
        with contextlib.suppress(OSError):  # the request was interrupted (ENOENT), or aborted
            os.write(self.fd, out)
