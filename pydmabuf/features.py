"""Runtime feature probes: each one tries the real operation, never guesses from uname."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field

from .backends import get_backend
from .backends.kernel import HEAP_DIR, UDMABUF_DEV
from .backends.kernel_timelines import SW_SYNC, find_vgem_card
from .buffer import Buffer
from .errors import Error, UnsupportedError
from .heap import Heap
from .udmabuf import udmabuf


@dataclass
class HeapAccess:
    name: str
    usable: bool
    problem: str | None = None


@dataclass
class Report:
    backend: str
    kernel: str
    machine: str
    heaps: list[HeapAccess] = field(default_factory=list)
    udmabuf: bool = False
    udmabuf_usable: bool = False
    udmabuf_problem: str | None = None
    udmabuf_size_limit_mb: int | None = None
    udmabuf_list_limit: int | None = None
    features: dict[str, bool | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def probe() -> Report:
    import pydmabuf

    report = Report(backend=pydmabuf.backend, kernel=platform.release(), machine=platform.machine())
    names = sorted(os.listdir(HEAP_DIR)) if os.path.isdir(HEAP_DIR) else []
    for name in names:
        try:
            Heap(name, backend="kernel").close()
            report.heaps.append(HeapAccess(name, True))
        except Error as exc:
            report.heaps.append(HeapAccess(name, False, str(exc)))
    report.udmabuf = os.path.exists(UDMABUF_DEV)
    if report.udmabuf:
        try:
            os.close(os.open(UDMABUF_DEV, os.O_RDWR | os.O_CLOEXEC))
            report.udmabuf_usable = True
        except OSError as exc:
            report.udmabuf_problem = f"{exc.strerror}: add the user to the 'kvm' group"
    params = "/sys/module/udmabuf/parameters"
    report.udmabuf_size_limit_mb = _read_int(f"{params}/size_limit_mb")
    report.udmabuf_list_limit = _read_int(f"{params}/list_limit")
    report.features = {
        "sync_file_export_import": _probe_export(),
        "set_deadline": _probe_deadline(),
        "sw_sync": os.path.exists(SW_SYNC),
        "vgem": find_vgem_card() is not None,
    }
    return report


def _kernel_buffer() -> Buffer | None:
    """A small real dma-buf to probe ioctls on, from whatever this user may open."""
    backend = get_backend("kernel")
    for heap_name in sorted(os.listdir(HEAP_DIR)) if os.path.isdir(HEAP_DIR) else []:
        try:
            with Heap(heap_name, backend=backend) as heap:
                return heap.allocate(4096)
        except Error:
            continue
    try:
        return udmabuf(4096, backend=backend)
    except Error:
        return None


def _probe_export() -> bool | None:
    buf = _kernel_buffer()
    if buf is None:
        return None  # nothing to probe with
    with buf:
        try:
            buf.export_sync_file(read=True, write=False).close()
            return True
        except UnsupportedError:
            return False


def _probe_deadline() -> bool | None:
    buf = _kernel_buffer()
    if buf is None:
        return None
    with buf:
        try:
            with buf.export_sync_file(read=True, write=False) as fence:
                fence.set_deadline(0)
            return True
        except UnsupportedError:
            return False
