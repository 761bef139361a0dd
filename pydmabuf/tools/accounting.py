"""Who holds which buffer: system-wide dma-buf accounting, and leaks in this process.

dma-buf memory is charged to no process, so ``ps`` and ``top`` cannot show it. This
module walks ``/proc`` (its numeric entries are the processes): per process, the fd links
(``/dmabuf:...`` on the kernel, ``/memfd:pydmabuf...`` for fallback buffers), the
fdinfo of those fds only, and ``/proc/PID/maps`` once. Processes that cannot be read
(another user's, without root) are counted, never fatal.

Python's ``mmap.mmap`` keeps a dup of the fd, so a mapping made with
``Buffer.map()`` counts as one fd *and* one mapping of its process.
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import gc
import mmap
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from .._fd import FdHolder
from ..uapi import fdinfo as _fdinfo

FALLBACK_EXPORTER = "pydmabuf-fallback"  # == backends.fallback.EXPORTER, without importing cffi
NAME_XATTR = "user.pydmabuf.name"
_MEMFD_PREFIXES = ("/memfd:pydmabuf:", "/memfd:pydmabuf-udmabuf:")
_PF_KTHREAD = 0x00200000

_Key = tuple[bool, int]  # (is a kernel dma-buf, inode): dma-buf and shmem inodes may collide


@dataclass(frozen=True)
class Holder:
    """One process's hold on a buffer: open fds and mapped regions (VMAs)."""

    pid: int
    fds: int
    maps: int


@dataclass
class BufferUsage:
    """One buffer. ``exporter`` is ``""`` and ``size`` the mapped extent when nobody
    holds an fd to it (only mappings, whose /proc entries lack both facts)."""

    inode: int
    size: int
    exporter: str
    name: str | None
    holders: list[Holder] = field(default_factory=list)


@dataclass(frozen=True)
class ProcessUsage:
    """One process: ``size`` sums its buffers, ``pss`` divides each buffer's size by
    the number of processes holding it (proportional share, like smaps' Pss).
    ``cmdline`` is its arguments as /proc/PID/cmdline has them (empty if it exited)."""

    pid: int
    name: str
    buffers: int
    size: int
    pss: int
    cmdline: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unreadable:
    """A process whose fds or maps this user may not read: another user's, without root."""

    pid: int
    name: str


@dataclass(frozen=True)
class ExporterTotal:
    exporter: str
    buffers: int
    size: int


@dataclass
class Snapshot:
    """``unreadable``: how many processes' fds or maps this user may not read;
    ``unreadable_processes`` names them (by pid, ascending)."""

    buffers: list[BufferUsage]
    processes: list[ProcessUsage]
    unreadable: int
    scanned: int
    unreadable_processes: list[Unreadable] = field(default_factory=list)

    @property
    def exporters(self) -> list[ExporterTotal]:
        totals: dict[str, list[int]] = {}
        for buf in self.buffers:
            entry = totals.setdefault(buf.exporter, [0, 0])
            entry[0] += 1
            entry[1] += buf.size
        rows = [ExporterTotal(name, n, size) for name, (n, size) in totals.items()]
        return sorted(rows, key=lambda r: (-r.size, r.exporter))

    def filter(
        self, *, pids: Iterable[int] | None = None, name: str | None = None, exporter: str | None = None
    ) -> Snapshot:
        """Buffers matching every given filter (``name`` is a shell glob on the
        buffer name), and the processes recomputed over them. PSS still divides by
        all holders, so shares stay true to the whole system."""
        wanted = set(pids) if pids is not None else None
        kept = [
            b
            for b in self.buffers
            if (exporter is None or b.exporter == exporter)
            and (name is None or fnmatch.fnmatchcase(b.name or "", name))
            and (wanted is None or any(h.pid in wanted for h in b.holders))
        ]
        known = {p.pid: p for p in self.processes}  # names and command lines: read once, in snapshot()
        processes = _processes(kept, known)
        if wanted is not None:
            processes = [p for p in processes if p.pid in wanted]
        return Snapshot(kept, processes, self.unreadable, self.scanned, self.unreadable_processes)

    def as_dict(self) -> dict[str, object]:
        """The JSON schema of ``pydmabuf ps --json`` (sizes in bytes)."""
        return {
            "buffers": [asdict(b) for b in self.buffers],
            "processes": [asdict(p) for p in self.processes],
            "exporters": [asdict(e) for e in self.exporters],
            "unreadable": self.unreadable,
            "scanned": self.scanned,
            "unreadable_processes": [asdict(u) for u in self.unreadable_processes],
        }


class _Found:
    """A buffer while scanning: facts from an fd (authoritative) or a mapping."""

    __slots__ = ("exporter", "fds", "map_extent", "map_path", "maps", "name", "size")

    def __init__(self) -> None:
        self.size = -1  # unknown until an fd is seen
        self.exporter = ""
        self.name: str | None = None
        self.fds: dict[int, int] = {}
        self.maps: dict[int, int] = {}
        self.map_extent = 0
        self.map_path: str | None = None  # a /proc/PID/map_files entry, for maps-only buffers


def snapshot() -> Snapshot:
    """Every dma-buf (and fallback buffer) that this user can see, with its holders."""
    found: dict[_Key, _Found] = {}
    denied: list[Unreadable] = []
    scanned = 0
    for pid in pids():
        state = _scan(pid, found)
        if state is None:
            continue  # exited meanwhile, or a kernel thread
        scanned += 1
        if not state:
            # comm stays world-readable when fd and maps are not: the name costs one read
            denied.append(Unreadable(pid, _process_name(pid)))
    buffers = [_finish(key, f) for key, f in found.items()]
    buffers.sort(key=lambda b: (-b.size, b.inode))
    return Snapshot(buffers, _processes(buffers, {}), len(denied), scanned, denied)


def _processes(buffers: list[BufferUsage], known: dict[int, ProcessUsage]) -> list[ProcessUsage]:
    acc: dict[int, list[int]] = {}  # pid -> [buffers, size, pss]
    for buf in buffers:
        share = buf.size // len(buf.holders)
        for h in buf.holders:
            entry = acc.setdefault(h.pid, [0, 0, 0])
            entry[0] += 1
            entry[1] += buf.size
            entry[2] += share
    rows = []
    for pid, (n, size, pss) in acc.items():
        old = known.get(pid)
        name, cmdline = (old.name, old.cmdline) if old is not None else (_process_name(pid), _cmdline(pid))
        rows.append(ProcessUsage(pid, name, n, size, pss, cmdline))
    return sorted(rows, key=lambda p: (-p.pss, -p.size, p.pid))


def pids() -> list[int]:
    """Every process's pid (the numeric entries of /proc), ascending."""
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def pid_exists(pid: int) -> bool:
    """Whether process ``pid`` exists (as /proc shows it)."""
    return pid > 0 and os.path.isdir(f"/proc/{pid}")


def _process_name(pid: int) -> str:
    """The process's name as ps shows it: /proc/PID/comm, which the kernel cuts to 15
    characters; the full name from the command line where that was cut."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            name = f.read().rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return "?"
    if len(name) == 15:  # maybe cut: the command line's program name, if it starts the same
        with contextlib.suppress(OSError, IndexError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                program = os.path.basename(f.read().split(b"\0")[0].decode("utf-8", "replace"))
            if program.startswith(name):
                return program
    return name


def _cmdline(pid: int) -> tuple[str, ...]:
    """The process's arguments: /proc/PID/cmdline, NUL-separated (world-readable, like
    comm). Empty for a process that exited, a zombie or a kernel thread."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ()
    # A process that rewrote its title (setproctitle) may leave one string, or end
    # without the trailing NUL: drop only the empty piece that trailing NUL makes.
    args = raw.split(b"\0")
    if args and not args[-1]:
        args.pop()
    return tuple(a.decode("utf-8", "replace") for a in args)


def _is_kthread(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return bool(int(stat.rsplit(b")", 1)[1].split()[6]) & _PF_KTHREAD)
    except (OSError, IndexError, ValueError):
        return False


def _scan(pid: int, found: dict[_Key, _Found]) -> bool | None:
    """Add pid's fds and mappings to ``found``. True if read, False if not allowed,
    None if the process is gone or is a kernel thread (which holds no user fds)."""
    base = f"/proc/{pid}"
    try:
        fds = os.listdir(f"{base}/fd")
        with open(f"{base}/maps", "rb") as f:
            maps = f.read()
    except PermissionError:
        return None if _is_kthread(pid) else False
    except OSError:
        return None
    for fd in fds:
        try:
            key = _fd_buffer(pid, fd, found)
        except (OSError, KeyError, ValueError):
            continue  # closed or replaced while we looked
        if key is not None:
            entry = found[key]
            entry.fds[pid] = entry.fds.get(pid, 0) + 1
    _scan_maps(pid, maps, found)
    return True


_MAP_MARKERS = (b"/dmabuf:", b"/memfd:pydmabuf:", b"/memfd:pydmabuf-udmabuf:")


def _scan_maps(pid: int, maps: bytes, found: dict[_Key, _Found]) -> None:
    # Jump from marker to marker instead of splitting every line: a process maps
    # hundreds of files and few buffers. A marker counts only as a line's path
    # column (after the 5 fields); names containing newlines split a line, and the
    # continuation lines fail that test.
    for marker in _MAP_MARKERS:
        at = maps.find(marker)
        while at >= 0:
            start = maps.rfind(b"\n", 0, at) + 1
            end = maps.find(b"\n", at)
            line = maps[start : end if end >= 0 else len(maps)]
            at = maps.find(marker, end) if end >= 0 else -1
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].startswith(marker):
                _add_mapping(pid, fields, marker is _MAP_MARKERS[0], found)


def _add_mapping(pid: int, fields: list[bytes], kernel: bool, found: dict[_Key, _Found]) -> None:
    try:
        lo, _, hi = fields[0].partition(b"-")
        key: _Key = (kernel, int(fields[4]))
        extent = int(fields[2], 16) + int(hi, 16) - int(lo, 16)
    except ValueError:
        return
    entry = found.get(key)
    if entry is None:
        entry = found[key] = _Found()
    entry.maps[pid] = entry.maps.get(pid, 0) + 1
    if extent > entry.map_extent:
        entry.map_extent = extent
        entry.map_path = f"/proc/{pid}/map_files/{fields[0].decode()}"
    path = fields[5]
    if kernel and entry.name is None and len(path) > 8:
        entry.name = path[8:].decode("utf-8", "surrogateescape")


def _fd_buffer(pid: int | str, fd: str, found: dict[_Key, _Found]) -> _Key | None:
    """The buffer behind ``/proc/PID/fd/FD`` (registered in ``found`` with its facts
    the first time), or None for any other kind of file. fdinfo is read only for
    fds whose link says dma-buf."""
    path = f"/proc/{pid}/fd/{fd}"
    link = os.readlink(path)
    key: _Key
    if link.startswith("/dmabuf:") or link == "anon_inode:dmabuf":
        info = _fdinfo.read(fd, pid)
        key = (True, int(info["ino"]))
        entry = found.get(key)
        if entry is None or entry.size < 0:
            entry = found.setdefault(key, _Found())
            entry.size, entry.exporter = int(info["size"]), info.get("exp_name", "")
            entry.name = info.get("name")
    elif link.startswith(_MEMFD_PREFIXES):
        st = os.stat(path)
        key = (False, st.st_ino)
        entry = found.get(key)
        if entry is None or entry.size < 0:
            entry = found.setdefault(key, _Found())
            entry.size, entry.exporter, entry.name = st.st_size, FALLBACK_EXPORTER, _xattr_name(path)
    else:
        return None
    return key


def _finish(key: _Key, f: _Found) -> BufferUsage:
    if f.size < 0:  # only mapped: map_files (root only) still knows the real file
        f.size = f.map_extent
        if f.map_path is not None:
            try:
                f.size = os.stat(f.map_path).st_size
                if not key[0]:
                    f.exporter = FALLBACK_EXPORTER
                    f.name = _xattr_name(f.map_path)
            except OSError:
                if not key[0]:
                    f.exporter = FALLBACK_EXPORTER
    holders = [Holder(pid, f.fds.get(pid, 0), f.maps.get(pid, 0)) for pid in sorted(f.fds.keys() | f.maps.keys())]
    return BufferUsage(key[1], f.size, f.exporter, f.name, holders)


def _xattr_name(path: str) -> str | None:
    try:
        return os.getxattr(path, NAME_XATTR).decode("utf-8", "replace")
    except OSError:
        return None


# --- leaks in this process ------------------------------------------------------------


@dataclass(frozen=True)
class Leak:
    """A buffer fd of this process that no live pydmabuf object (or mmap) owns."""

    fd: int
    inode: int
    size: int
    exporter: str
    name: str | None


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def _address(m: mmap.mmap) -> int | None:
    """Where an mmap object's memory starts (also for read-only maps, which
    ``ctypes.c_char.from_buffer`` refuses)."""
    view = _PyBuffer()
    if ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(m), ctypes.byref(view), 0) != 0:
        return None
    try:
        addr: int | None = view.buf
        return addr
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


def leaks() -> list[Leak]:
    """Buffer fds this process holds that no live pydmabuf object owns.

    Owners are found by walking ``gc.get_objects()`` only when this is called, so
    allocating and closing buffers pay nothing for it. A live ``mmap`` of a buffer
    holds an fd of its own (a dup nobody can name); each one excuses one fd of its
    buffer, and the lowest fd numbers of that buffer are the ones reported (an mmap's
    dup is made after the fd it maps).
    Call ``gc.collect()`` first if unreachable objects may still hold fds.
    """
    owned: set[int] = set()
    mapped_at: list[int] = []
    for obj in gc.get_objects():
        if isinstance(obj, FdHolder):
            if not obj.closed:
                with contextlib.suppress(OSError):  # closed by another thread just now
                    owned.add(obj.fileno())
        elif isinstance(obj, mmap.mmap) and not obj.closed:
            addr = _address(obj)
            if addr is not None:
                mapped_at.append(addr)
    found: dict[_Key, _Found] = {}
    by_key: dict[_Key, list[int]] = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in owned:
            continue
        try:
            key = _fd_buffer("self", name, found)
        except (OSError, KeyError, ValueError):
            continue  # not a buffer, or closed while we looked (listdir's own fd)
        if key is not None:
            by_key.setdefault(key, []).append(fd)
    excused = _mapped_keys(mapped_at) if by_key else {}
    result: list[Leak] = []
    for key, fds in by_key.items():
        f = found[key]
        keep = max(len(fds) - excused.get(key, 0), 0)
        result.extend(Leak(fd, key[1], f.size, f.exporter, f.name) for fd in sorted(fds)[:keep])
    return sorted(result, key=lambda leak: leak.fd)


def _mapped_keys(addresses: list[int]) -> dict[_Key, int]:
    """How many live mmap objects map each buffer, from their start addresses."""
    if not addresses:
        return {}
    wanted = set(addresses)
    counts: dict[_Key, int] = {}
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            fields = line.split(None, 5)
            if len(fields) < 6 or int(fields[0].partition(b"-")[0], 16) not in wanted:
                continue
            path = fields[5]
            kernel = path.startswith(b"/dmabuf:")
            if kernel or path.startswith(b"/memfd:pydmabuf"):
                key: _Key = (kernel, int(fields[4]))
                counts[key] = counts.get(key, 0) + 1
    return counts
