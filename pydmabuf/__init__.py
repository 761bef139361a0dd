"""pydmabuf: the Linux dma-buf uAPI from Python.

Allocate buffers from dma-heaps or memfds (udmabuf), map them, bracket CPU access,
and wait on fences, on real kernel fds or, where the kernel lacks the devices, on
a pure-Python fallback backend. ``pydmabuf.backend`` says which one is in use.
"""

from __future__ import annotations

from . import channel
from ._access import CpuAccess
from .backends import get_backend
from .buffer import Buffer, Mapping
from .channel import Consumer, Frame, Producer
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
from .heap import Heap, heaps
from .info import BufferInfo, FenceInfo, SyncFileInfo
from .share import ProtocolError, recv, send
from .syncfile import SyncFile
from .timeline import Timeline
from .udmabuf import udmabuf, udmabuf_from_memfd, udmabuf_from_ranges
from .waiting import FenceSet, wait_all, wait_any

__version__ = "0.1.0"

__all__ = [
    "Buffer",
    "BufferInfo",
    "ClosedError",
    "Consumer",
    "CpuAccess",
    "Error",
    "FenceInfo",
    "FenceSet",
    "Frame",
    "Heap",
    "InvalidArgumentError",
    "Mapping",
    "NotFoundError",
    "OutOfMemoryError",
    "PeerCredentials",
    "PermissionDeniedError",
    "Producer",
    "ProtocolError",
    "SyncFile",
    "SyncFileInfo",
    "Timeline",
    "TimeoutError",
    "UnsupportedError",
    "backend",
    "channel",
    "check_peer",
    "get_backend",
    "heaps",
    "peer_credentials",
    "recv",
    "send",
    "udmabuf",
    "udmabuf_from_memfd",
    "udmabuf_from_ranges",
    "wait_all",
    "wait_any",
]

backend: str  # resolved on first access (module __getattr__), see below


def __getattr__(name: str) -> str:
    # Resolved lazily so that a bad PYDMABUF_BACKEND (or kernel asked for where it
    # cannot work) raises a clear error where it is used, not at import.
    if name == "backend":
        from .backends import default_name

        return default_name()
    raise AttributeError(f"module 'pydmabuf' has no attribute {name!r}")
