"""pydmabuf: the Linux dma-buf uAPI from Python.

Allocate buffers from dma-heaps or memfds (udmabuf), map them, bracket CPU access,
and wait on fences, on real kernel fds or, where the kernel lacks the devices, on
a pure-Python fallback backend. ``pydmabuf.backend`` says which one is in use.
"""

from __future__ import annotations

from . import channel, formats, interop
from ._version import __version__ as __version__
from .allocator import Allocator
from .backends import get_backend
from .buffer import Buffer, CpuAccess, Mapping
from .channel import Consumer, Delivery, Event, Producer
from .credentials import PeerCredentials, check_peer, peer_credentials
from .errors import (
    ClosedError,
    Error,
    InvalidArgumentError,
    NotFoundError,
    OutOfMemoryError,
    PermissionDeniedError,
    TimeoutError,
    UnsupportedError,
)
from .formats import LINEAR, MOD_INVALID, Format, describe_modifier, modifier_name, modifier_value
from .frame import Frame, Plane, PlaneView, allocate_frame, plane_layout
from .heap import Heap, heaps
from .info import BufferInfo, FenceInfo, SyncFileInfo
from .pool import BufferPool, Lease
from .share import ProtocolError, recv, send
from .syncfile import SyncFile
from .timeline import Timeline
from .udmabuf import udmabuf, udmabuf_from_memfd, udmabuf_from_ranges
from .waiting import FenceSet, wait_all, wait_any


def __dir__() -> list[str]:
    return sorted([*globals(), "accounting", "backend", "cuda", "dlpack"])

__all__ = [
    "LINEAR",
    "MOD_INVALID",
    "Allocator",
    "Buffer",
    "BufferInfo",
    "BufferPool",
    "ClosedError",
    "Consumer",
    "CpuAccess",
    "Delivery",
    "Error",
    "Event",
    "FenceInfo",
    "FenceSet",
    "Format",
    "Frame",
    "Heap",
    "InvalidArgumentError",
    "Lease",
    "Mapping",
    "NotFoundError",
    "OutOfMemoryError",
    "PeerCredentials",
    "PermissionDeniedError",
    "Plane",
    "PlaneView",
    "Producer",
    "ProtocolError",
    "SyncFile",
    "SyncFileInfo",
    "Timeline",
    "TimeoutError",
    "UnsupportedError",
    "allocate_frame",
    "backend",
    "channel",
    "check_peer",
    "cuda",
    "describe_modifier",
    "dlpack",
    "formats",
    "get_backend",
    "heaps",
    "interop",
    "modifier_name",
    "modifier_value",
    "peer_credentials",
    "plane_layout",
    "recv",
    "send",
    "udmabuf",
    "udmabuf_from_memfd",
    "udmabuf_from_ranges",
    "wait_all",
    "wait_any",
]

backend: str  # resolved on first access (module __getattr__), see below


def __getattr__(name: str) -> object:
    # Resolved lazily so that a bad PYDMABUF_BACKEND (or kernel asked for where it
    # cannot work) raises a clear error where it is used, not at import.
    if name == "backend":
        from .backends import default_name

        return default_name()
    if name in ("cuda", "dlpack"):  # ctypes and the driver: only for programs that use them
        import importlib

        return importlib.import_module(f".{name}", __name__)
    if name == "accounting":  # a tool (psutil, /proc scans): loaded when asked for
        from .tools import accounting

        return accounting
    raise AttributeError(f"module 'pydmabuf' has no attribute {name!r}")
