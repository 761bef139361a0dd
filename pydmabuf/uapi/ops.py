"""The ops layer: one free function per kernel operation, on plain int fds.

Each function issues the ioctl (the hot ones through the compiled path's C functions
where it was built, :mod:`pydmabuf.uapi.fast`, else through ``fcntl.ioctl`` with packed
structs, the cheapest call pure CPython has; the rest through cffi), retries EINTR (and
EAGAIN where the kernel uses it for "try again"), and turns a failure into a
:mod:`pydmabuf.errors` exception carrying errno. Nothing here owns an fd or knows about backends; hints
that need context (which heap, which device) are added by the caller through
``hints``.
"""

from __future__ import annotations

import errno as E
import fcntl
import os
import struct
import threading
from collections.abc import Callable
from functools import partial

from ..errors import ENOTTY_HINTS, error
from . import fast as _fast
from . import ffi as _ffi
from .ffi import ffi, lib

# typing (with re) is ~5 ms of import that annotations alone don't need: mypy reads
# this name as typing.TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

Hints = dict[int, str]
_ioctl = lib.ioctl
_flib = _fast.lib  # the compiled path's functions, or None (pure)
_RETRY = (E.EINTR, E.EAGAIN)


def _hint(code: int, what: str, hints: Hints | None) -> str | None:
    if hints and code in hints:
        return hints[code]
    return ENOTTY_HINTS.get(what) if code == E.ENOTTY else None


def fail(what: str, hints: Hints | None = None, code: int | None = None) -> OSError:
    code = ffi.errno if code is None else code
    return error(code, what, _hint(code, what, hints))


def ioctl(fd: int, request: int, arg: object, what: str, hints: Hints | None = None) -> int:
    """ioctl(2) with EINTR/EAGAIN retried; returns the ioctl's non-negative result."""
    while True:
        ret: int = _ioctl(fd, request, arg)
        if ret >= 0:
            return ret
        if ffi.errno not in _RETRY:
            raise fail(what, hints)


def retry_or_raise(exc: OSError, what: str, hints: Hints | None = None) -> None:
    """For the hot paths that call fcntl.ioctl: return if ``exc`` means "call again"
    (EINTR/EAGAIN), else raise the library's error for it."""
    code = exc.errno or E.EIO
    if code not in _RETRY:
        raise error(code, what, _hint(code, what, hints)) from None


# --- hot-path argument layouts ------------------------------------------------------
# fcntl.ioctl with a packed argument is the cheapest ioctl call CPython has (no
# libffi), so the three hottest ioctls pack their structs with these formats. They
# are checked here against cffi's layout, which tests/test_abi.py checks against C.

def _packed(fmt: str, ctype: str) -> struct.Struct:
    layout = struct.Struct(fmt)
    fields = ffi.typeof(ctype).fields
    offsets = [struct.calcsize(fmt[: i + 2]) - struct.calcsize(fmt[i + 1]) for i in range(len(fields))]
    if layout.size != ffi.sizeof(ctype) or offsets != [f.offset for _, f in fields]:
        raise ImportError(f"pydmabuf: packed layout {fmt} does not match {ctype}")
    return layout


SYNC_ARG = _packed("=Q", "struct dma_buf_sync")
ALLOC_ARG = _packed("=QIIQ", "struct dma_heap_allocation_data")
EXPORT_ARG = _packed("=Ii", "struct dma_buf_export_sync_file")
UDMABUF_ARG = _packed("=IIQQ", "struct udmabuf_create")


# --- dma-buf ---------------------------------------------------------------------------

_fioctl = fcntl.ioctl
_SYNC = _ffi.DMA_BUF_IOCTL_SYNC
# DMA_BUF_SYNC_* flag bits (START is 0), also the direction bits of EXPORT/IMPORT_SYNC_FILE.
SYNC_READ, SYNC_WRITE, SYNC_END = lib.DMA_BUF_SYNC_READ, lib.DMA_BUF_SYNC_WRITE, lib.DMA_BUF_SYNC_END
# The kernel only reads this struct: one packed argument per valid flag value.
_SYNC_ARGS = {flags: SYNC_ARG.pack(flags) for flags in range(1, 8) if flags & 3}


def dma_buf_sync_call(flags: int) -> tuple[Callable[[int, int, object], object], int, object, object]:
    """SYNC START and END for ``flags`` as (call, request, start, end): what a
    CPU-access bracket calls directly, with no Python frame around the ioctl. The call
    is ``fcntl.ioctl`` with packed arguments (pure) or the compiled ``pdb_sync`` with
    the flags; either returns a true value on success. A false one (compiled) or a raw
    OSError (pure) is retried through ``dma_buf_sync``, which raises the typed error."""
    start, end = _SYNC_ARGS.get(flags), _SYNC_ARGS.get(flags | 4)
    if start is None or end is None or flags & 4:
        raise error(E.EINVAL, f"DMA_BUF_IOCTL_SYNC flags {flags:#x}")
    if _flib is not None:
        return _flib.pdb_sync, _SYNC, flags, flags | 4
    return _ioctl_call, _SYNC, start, end


_ioctl_call: Callable[[int, int, object], object] = _fioctl  # type: ignore[assignment]


def dma_buf_sync(fd: int, flags: int) -> None:
    arg = _SYNC_ARGS.get(flags)
    if arg is None:
        raise error(E.EINVAL, f"DMA_BUF_IOCTL_SYNC flags {flags:#x}")
    if _flib is not None:  # retries EINTR/EAGAIN itself
        if not _flib.pdb_sync(fd, _SYNC, flags):
            raise fail("DMA_BUF_IOCTL_SYNC", code=_fast.ffi.errno)
        return
    while True:
        try:
            _fioctl(fd, _SYNC, arg)
            return
        except OSError as exc:
            retry_or_raise(exc, "DMA_BUF_IOCTL_SYNC")


def dma_buf_set_name(fd: int, name: bytes) -> None:
    # The ioctl argument is the string pointer itself, not a struct.
    ioctl(fd, _ffi.DMA_BUF_SET_NAME_B, ffi.new("char[]", name), "DMA_BUF_SET_NAME")


_EXPORT = _ffi.DMA_BUF_IOCTL_EXPORT_SYNC_FILE
# EXPORT_SYNC_FILE's input is only the flags: one packed argument per flag value.
_EXPORT_ARGS = {flags: EXPORT_ARG.pack(flags, -1) for flags in (1, 2, 3)}
_unpack_export = EXPORT_ARG.unpack


def dma_buf_export_sync_file_call() -> tuple[Callable[[int, int, object], object], int, dict[int, object],
                                              Callable[[Any], tuple[int, int]] | None]:
    """EXPORT_SYNC_FILE as (call, request, argument per flags, unpack to (flags, fd) or
    None): what Buffer.export_sync_file calls with no Python frame around the ioctl.
    Pure: ``fcntl.ioctl`` with packed arguments, whose result ``unpack`` reads. Compiled:
    ``pdb_export_sync_file`` with the flags, which returns the new fd itself (unpack
    None), or -1. A raw OSError or -1 is retried through ``dma_buf_export_sync_file``."""
    if _flib is not None:
        return _flib.pdb_export_sync_file, _EXPORT, {flags: flags for flags in _EXPORT_ARGS}, None
    return _ioctl_call, _EXPORT, dict(_EXPORT_ARGS), _unpack_export


def dma_buf_export_sync_file(fd: int, flags: int) -> int:
    arg = _EXPORT_ARGS.get(flags)
    if arg is None:
        raise error(E.EINVAL, f"DMA_BUF_IOCTL_EXPORT_SYNC_FILE flags {flags:#x}")
    if _flib is not None:  # retries EINTR/EAGAIN itself
        new: int = _flib.pdb_export_sync_file(fd, _EXPORT, flags)
        if new < 0:
            raise fail("DMA_BUF_IOCTL_EXPORT_SYNC_FILE", code=_fast.ffi.errno)
        return new
    while True:
        try:
            return _unpack_export(_fioctl(fd, _EXPORT, arg))[1]  # type: ignore[no-any-return]
        except OSError as exc:
            retry_or_raise(exc, "DMA_BUF_IOCTL_EXPORT_SYNC_FILE")


def dma_buf_import_sync_file(fd: int, sync_fd: int, flags: int) -> None:
    arg = ffi.new("struct dma_buf_import_sync_file *", {"flags": flags, "fd": sync_fd})
    ioctl(fd, _ffi.DMA_BUF_IOCTL_IMPORT_SYNC_FILE, arg, "DMA_BUF_IOCTL_IMPORT_SYNC_FILE")


# --- dma-heap ------------------------------------------------------------------------

_ALLOC = _ffi.DMA_HEAP_IOCTL_ALLOC
_pack_alloc = ALLOC_ARG.pack
_unpack_alloc = ALLOC_ARG.unpack


def heap_allocator(fd_flags: int, hints: Hints | None = None, heap_flags: int = 0) -> Callable[[int, int], int]:
    """DMA_HEAP_IOCTL_ALLOC with its flags and hints bound: ``alloc(heap_fd, length)``
    returns the new buffer fd. A Heap binds it once, so an allocation is this one
    Python frame around the ioctl (``heap_alloc_call`` is the compiled path's, with none)."""
    def alloc(heap_fd: int, length: int) -> int:
        # A fresh packed struct each call: the kernel rejects a non-zero input fd field.
        arg = _pack_alloc(length, 0, fd_flags, heap_flags)
        while True:
            try:
                return _unpack_alloc(_fioctl(heap_fd, _ALLOC, arg))[1]  # type: ignore[no-any-return]
            except OSError as exc:
                retry_or_raise(exc, "DMA_HEAP_IOCTL_ALLOC", hints)

    return alloc


def heap_alloc_call(fd_flags: int) -> Callable[[int, int], int] | None:
    """The compiled path's DMA_HEAP_IOCTL_ALLOC with its flags bound, as
    ``alloc(heap_fd, length)`` with no Python frame at all (a partial of the C call);
    it returns the new fd, or -1 when the ioctl failed (``heap_allocator``'s call then
    raises the typed error). None on the pure path."""
    if _flib is None:
        return None
    return partial(_flib.pdb_heap_alloc, _ALLOC, fd_flags)


def heap_alloc(heap_fd: int, length: int, fd_flags: int, hints: Hints | None = None,
               heap_flags: int = 0) -> int:
    """One DMA_HEAP_IOCTL_ALLOC (probes and tests; Heaps keep a ``heap_allocator``)."""
    return heap_allocator(fd_flags, hints, heap_flags)(heap_fd, length)


# --- udmabuf -------------------------------------------------------------------------

def udmabuf_create_list(
    dev_fd: int, items: list[tuple[int, int, int]], flags: int, hints: Hints | None = None
) -> int:
    """UDMABUF_CREATE_LIST (also used for one item); returns the new dma-buf fd."""
    # The list's length sizes the trailing flexible array member.
    arg = ffi.new("struct udmabuf_create_list *", {
        "flags": flags,
        "count": len(items),
        "list": [{"memfd": m, "offset": o, "size": s} for m, o, s in items],
    })
    return ioctl(dev_fd, _ffi.UDMABUF_CREATE_LIST, arg, "UDMABUF_CREATE_LIST", hints)


_UDMABUF_CREATE = _ffi.UDMABUF_CREATE
_pack_udmabuf = UDMABUF_ARG.pack


def udmabuf_creator(dev_fd: int, flags: int, hints: Hints | None = None) -> Callable[[int, int, int], int]:
    """UDMABUF_CREATE (one range, the common case) on ``/dev/udmabuf`` fd ``dev_fd``
    with its flags and hints bound: ``create(memfd, offset, size)`` returns the new
    dma-buf fd, in one Python frame around the ioctl (``udmabuf_create_call`` is the
    compiled path's, with none)."""
    def create(memfd: int, offset: int, size: int) -> int:
        # A mutable buffer: then fcntl.ioctl returns the ioctl's result, the new fd.
        arg = bytearray(_pack_udmabuf(memfd, flags, offset, size))
        while True:
            try:
                return _fioctl(dev_fd, _UDMABUF_CREATE, arg, True)  # type: ignore[no-any-return]
            except OSError as exc:
                retry_or_raise(exc, "UDMABUF_CREATE", hints)

    return create


def udmabuf_create_call(dev_fd: int, flags: int) -> Callable[[int, int, int], int] | None:
    """The compiled path's UDMABUF_CREATE on ``dev_fd`` with its flags bound, as
    ``create(memfd, offset, size)`` with no Python frame (a partial of the C call); it
    returns the new fd, or -1 when the ioctl failed (``udmabuf_creator``'s call then
    raises the typed error). None on the pure path."""
    if _flib is None:
        return None
    return partial(_flib.pdb_udmabuf_create, dev_fd, _UDMABUF_CREATE, flags)


def udmabuf_create(
    dev_fd: int, memfd: int, offset: int, size: int, flags: int, hints: Hints | None = None
) -> int:
    """One UDMABUF_CREATE (see ``udmabuf_creator``)."""
    return udmabuf_creator(dev_fd, flags, hints)(memfd, offset, size)


# --- sync_file -----------------------------------------------------------------------

def sync_merge(fd: int, other_fd: int, name: bytes) -> int:
    arg = ffi.new("struct sync_merge_data *")
    arg.name = name[:31]
    arg.fd2 = other_fd
    ioctl(fd, _ffi.SYNC_IOC_MERGE, arg, "SYNC_IOC_MERGE")
    return arg.fence  # type: ignore[no-any-return]


FenceTuple = tuple[str, str, int, int]  # obj_name, driver_name, status, timestamp_ns


def sync_file_info(fd: int) -> tuple[str, int, list[FenceTuple]]:
    """Two-call SYNC_IOC_FILE_INFO: (name, status, per-fence tuples)."""
    info = ffi.new("struct sync_file_info *")
    ioctl(fd, _ffi.SYNC_IOC_FILE_INFO, info, "SYNC_IOC_FILE_INFO")
    count = info.num_fences
    fences = ffi.new("struct sync_fence_info[]", max(count, 1))
    info = ffi.new("struct sync_file_info *")
    info.num_fences = count
    info.sync_fence_info = int(ffi.cast("uintptr_t", fences))
    ioctl(fd, _ffi.SYNC_IOC_FILE_INFO, info, "SYNC_IOC_FILE_INFO")
    out = [
        (_str(f.obj_name), _str(f.driver_name), f.status, f.timestamp_ns)
        for f in fences[0 : info.num_fences]
    ]
    return _str(info.name), info.status, out


def sync_set_deadline(fd: int, deadline_ns: int) -> None:
    arg = ffi.new("struct sync_set_deadline *", {"deadline_ns": deadline_ns})
    ioctl(fd, _ffi.SYNC_IOC_SET_DEADLINE, arg, "SYNC_IOC_SET_DEADLINE")


def sw_sync_create_fence(timeline_fd: int, value: int) -> int:
    arg = ffi.new("struct sw_sync_create_fence_data *", {"value": value})
    ioctl(timeline_fd, _ffi.SW_SYNC_IOC_CREATE_FENCE, arg, "SW_SYNC_IOC_CREATE_FENCE")
    return arg.fence  # type: ignore[no-any-return]


def sw_sync_inc(timeline_fd: int, step: int) -> None:
    ioctl(timeline_fd, _ffi.SW_SYNC_IOC_INC, ffi.new("uint32_t *", step), "SW_SYNC_IOC_INC")


# --- DRM / vgem ----------------------------------------------------------------------

def drm_driver_name(fd: int) -> str:
    version = ffi.new("struct drm_version *")
    ioctl(fd, _ffi.DRM_IOCTL_VERSION, version, "DRM_IOCTL_VERSION")
    name = ffi.new("char[]", version.name_len + 1)
    version = ffi.new("struct drm_version *", {"name_len": len(name) - 1, "name": name})
    ioctl(fd, _ffi.DRM_IOCTL_VERSION, version, "DRM_IOCTL_VERSION")
    return _str(name)


def drm_create_dumb(fd: int, width: int, height: int, bpp: int) -> tuple[int, int]:
    """(handle, size) of a new dumb buffer."""
    arg = ffi.new("struct drm_mode_create_dumb *", {"width": width, "height": height, "bpp": bpp})
    ioctl(fd, _ffi.DRM_IOCTL_MODE_CREATE_DUMB, arg, "DRM_IOCTL_MODE_CREATE_DUMB")
    return arg.handle, arg.size


def drm_prime_handle_to_fd(fd: int, handle: int, flags: int) -> int:
    arg = ffi.new("struct drm_prime_handle *", {"handle": handle, "flags": flags})
    ioctl(fd, _ffi.DRM_IOCTL_PRIME_HANDLE_TO_FD, arg, "DRM_IOCTL_PRIME_HANDLE_TO_FD")
    return arg.fd  # type: ignore[no-any-return]


def drm_gem_close(fd: int, handle: int) -> None:
    arg = ffi.new("struct drm_gem_close *", {"handle": handle})
    ioctl(fd, _ffi.DRM_IOCTL_GEM_CLOSE, arg, "DRM_IOCTL_GEM_CLOSE")


def vgem_fence_attach(fd: int, handle: int, flags: int) -> int:
    arg = ffi.new("struct drm_vgem_fence_attach *", {"handle": handle, "flags": flags})
    ioctl(fd, _ffi.DRM_IOCTL_VGEM_FENCE_ATTACH, arg, "DRM_IOCTL_VGEM_FENCE_ATTACH")
    return arg.out_fence  # type: ignore[no-any-return]


def vgem_fence_signal(fd: int, fence_id: int) -> None:
    arg = ffi.new("struct drm_vgem_fence_signal *", {"fence": fence_id})
    ioctl(fd, _ffi.DRM_IOCTL_VGEM_FENCE_SIGNAL, arg, "DRM_IOCTL_VGEM_FENCE_SIGNAL")


# A new fd for the same open file, close-on-exec like every fd we create: os.dup makes
# non-inheritable fds (F_DUPFD_CLOEXEC), and is cheaper than fcntl.fcntl with it.
dup_cloexec = os.dup


# --- generic fd facts ----------------------------------------------------------------

DMA_BUF_MAGIC = 0x444D4142
ANON_INODE_FS_MAGIC = 0x09041934


def fs_magic(fd: int) -> int:
    """``fstatfs(fd).f_type``: f_type is the first (long) field on every Linux ABI we run on."""
    buf = ffi.new("long[32]")  # struct statfs is 120 bytes on LP64
    if lib.fstatfs(fd, buf) < 0:
        raise fail("fstatfs")
    return buf[0] & 0xFFFFFFFF  # type: ignore[no-any-return]


# --- what the kernel knows of a file, without asking its file system --------------------
# statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC): the VFS and the inode's cached
# attributes only. FUSE answers it from its attribute cache whatever the timeout its
# server set (fuse_update_get_attr: DONT_SYNC means no FUSE_GETATTR), as do NFS, CIFS
# and ceph; fstat() would ask the server once the cache expired, which a hostile FUSE
# server never lets happen.
AT_EMPTY_PATH = 0x1000
AT_STATX_DONT_SYNC = 0x4000
_STATX_FLAGS = AT_EMPTY_PATH | AT_STATX_DONT_SYNC
_STATX_MASK = 0x1 | 0x2 | 0x200  # STATX_TYPE | STATX_MODE | STATX_SIZE
# struct statx: stx_mode (u16) at 28, stx_size (u64) at 40, stx_dev_major and
# stx_dev_minor (u32) at 136 and 140; 256 bytes in all.
_STATX = struct.Struct("=28xH10xQ88xII")
_EMPTY = ffi.new("char[]", b"")
# __NR_statx: 332 on x86_64, 291 on aarch64 and the other asm-generic ABIs.
_SYS_STATX = 332 if os.uname().machine == "x86_64" else 291
_tls = threading.local()


def _statx_by_syscall(fd: int, path: object, flags: int, mask: int, buf: object) -> int:
    # Where cdefs/libc.h does not declare statx: the raw syscall. Variadic, so every
    # argument is cast (about 2 us more per call), and a cast would wrap a huge fd.
    if fd > 0x7FFFFFFF:
        raise OverflowError(f"fd {fd} is greater than the largest C int")
    return lib.syscall(ffi.cast("long", _SYS_STATX), ffi.cast("int", fd), path,  # type: ignore[no-any-return]
                       ffi.cast("int", flags), ffi.cast("unsigned int", mask), buf)


try:
    _statx: Callable[[int, object, int, int, object], int] = lib.statx  # cdefs/libc.h
except AttributeError:
    _statx = _statx_by_syscall


def _statx_buffer() -> tuple[bytearray, object]:
    """This thread's statx result buffer (cffi releases the GIL around the call)."""
    buf = bytearray(256)
    _tls.statx = found = (buf, ffi.from_buffer(buf))
    return found


def _cached_stat_pure(fd: int, _statx: Callable[[int, object, int, int, object], int] = _statx,
                _tls: threading.local = _tls, _unpack: Callable[[bytearray], tuple[int, ...]] = _STATX.unpack_from,
                _makedev: Callable[[int, int], int] = os.makedev) -> tuple[int, int, int]:
    """(st_mode, st_size, st_dev) of ``fd`` as the kernel has them cached: one statx
    with AT_STATX_DONT_SYNC, which no file system's server is asked to answer (see
    above). st_dev is os.fstat's encoding. OSError (EBADF, ...) as os.fstat raises it,
    OverflowError for a number beyond a C int. (Hot path: globals bound as defaults.)"""
    if fd < 0:  # AT_FDCWD (-100) with AT_EMPTY_PATH would describe the working directory
        raise OSError(E.EBADF, os.strerror(E.EBADF))
    try:
        buf, ptr = _tls.statx
    except AttributeError:
        buf, ptr = _statx_buffer()
    if _statx(fd, _EMPTY, _STATX_FLAGS, _STATX_MASK, ptr) < 0:
        code = ffi.errno
        raise OSError(code, os.strerror(code))
    mode, size, major, minor = _unpack(buf)
    return mode, size, _makedev(major, minor)


_pdb_cached_stat: Any = getattr(_flib, "pdb_cached_stat", None)


def _cached_stat_compiled(fd: int, _stat: Any = _pdb_cached_stat, _tls: threading.local = _tls) -> tuple[int, int, int]:
    # The compiled path's statx: the same call, in C, into this thread's three int64s.
    try:
        out = _tls.stat3
    except AttributeError:
        out = _tls.stat3 = _fast.ffi.new("int64_t[3]")
    if _stat(fd, out) < 0:  # a negative fd: EBADF from the C side
        code = _fast.ffi.errno
        raise OSError(code, os.strerror(code))
    return out[0], out[1], out[2]


cached_stat = _cached_stat_pure if _flib is None else _cached_stat_compiled
cached_stat.__doc__ = _cached_stat_pure.__doc__


_STATX_ID = struct.Struct("=32xQ96xII")  # stx_ino at 32, stx_dev_major/minor at 136/140


def cached_identity(fd: int) -> tuple[int, int]:
    """(st_dev, st_ino) of ``fd``, as ``cached_stat`` reads them (no file system asked)."""
    if fd < 0:
        raise OSError(E.EBADF, os.strerror(E.EBADF))
    try:
        buf, ptr = _tls.statx
    except AttributeError:
        buf, ptr = _statx_buffer()
    if _statx(fd, _EMPTY, _STATX_FLAGS, 0x100, ptr) < 0:  # STATX_INO
        code = ffi.errno
        raise OSError(code, os.strerror(code))
    ino, major, minor = _STATX_ID.unpack_from(buf)
    return os.makedev(major, minor), ino


SYS_PIDFD_GETFD = 438  # same number on x86_64 and aarch64 (asm-generic)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    ret: int = lib.syscall(ffi.cast("long", SYS_PIDFD_GETFD), ffi.cast("int", pidfd),
                           ffi.cast("int", target_fd), ffi.cast("unsigned int", 0))
    if ret < 0:
        raise fail("pidfd_getfd")
    return ret


def _str(chars: object) -> str:
    return ffi.string(chars).decode("utf-8", "replace")  # type: ignore[no-any-return]
