"""pydmabuf: the Linux dma-buf uAPI from Python.

Allocate buffers from dma-heaps or memfds (udmabuf), map them, bracket CPU access,
and wait on fences, on real kernel fds or, where the kernel lacks the devices, on
a pure-Python fallback backend. ``pydmabuf.backend`` says which one is in use, and
``pydmabuf.compiled`` whether the hot calls run compiled C (built at install where a C
compiler was present) or the pure-Python path (``PYDMABUF_PURE=1`` forces it).
"""

from __future__ import annotations

# What (nearly) every program uses is imported here; the rest (channel, frames and
# formats, fd passing, credentials, timelines, waiting on sets) loads on first use
# through __getattr__ below, so that `import pydmabuf` stays in milliseconds. The
# allocators stay eager (cheap): a program out of fds still gets TooManyOpenFilesError
# from BufferPool, not an import failing with EMFILE.
from ._version import __version__ as __version__
from .allocator import Allocator
from .backends import get_backend
from .buffer import Buffer, CpuAccess, Mapping
from .errors import (
    BusyError,
    ClosedError,
    Error,
    InvalidArgumentError,
    NotFoundError,
    OutOfMemoryError,
    PermissionDeniedError,
    TimeoutError,
    TooManyOpenFilesError,
    UnsupportedError,
)
from .heap import Heap, heaps
from .info import BufferInfo, FenceInfo, SyncFileInfo
from .pool import BufferPool, Lease
from .syncfile import SyncFile
from .uapi.fast import compiled as compiled
from .udmabuf import udmabuf, udmabuf_from_memfd, udmabuf_from_ranges

# typing (with re) is ~5 ms of import: this name does its job here (mypy reads it as
# typing.TYPE_CHECKING).
TYPE_CHECKING = False

if TYPE_CHECKING:  # the lazy names, as the type checkers should see them
    from . import channel, formats, interop
    from .channel import Consumer, Delivery, Event, Producer
    from .credentials import PeerCredentials, check_peer, peer_credentials
    from .formats import LINEAR, MOD_INVALID, Format, describe_modifier, modifier_name, modifier_value
    from .frame import Frame, Plane, PlaneView, allocate_frame, plane_layout
    from .share import ProtocolError, recv, send
    from .timeline import Timeline
    from .waiting import FenceSet, wait_all, wait_any

# name -> the module that defines it, imported on first access; a name equal to its
# module's is the module itself (pydmabuf.share, pydmabuf.frame, ... as before, when
# the package imported them all).
_LAZY = {
    **{name: "channel" for name in ("channel", "Consumer", "Delivery", "Event", "Producer")},
    **{name: "formats" for name in ("formats", "LINEAR", "MOD_INVALID", "Format", "describe_modifier",
                                    "modifier_name", "modifier_value")},
    **{name: "frame" for name in ("frame", "Frame", "Plane", "PlaneView", "allocate_frame", "plane_layout")},
    **{name: "share" for name in ("share", "ProtocolError", "recv", "send")},
    **{name: "credentials" for name in ("credentials", "PeerCredentials", "check_peer", "peer_credentials")},
    **{name: "waiting" for name in ("waiting", "FenceSet", "wait_all", "wait_any")},
    "timeline": "timeline", "Timeline": "timeline",
    "interop": "interop",
    "channel_wire": "channel_wire",
}


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "accounting", "aio", "backend", "cuda", "dlpack"})

__all__ = [
    "LINEAR",
    "MOD_INVALID",
    "Allocator",
    "Buffer",
    "BufferInfo",
    "BufferPool",
    "BusyError",
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
    "TooManyOpenFilesError",
    "UnsupportedError",
    "aio",
    "allocate_frame",
    "backend",
    "channel",
    "check_peer",
    "compiled",
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
    if name in ("aio", "cuda", "dlpack"):  # asyncio, ctypes and the driver: only for programs that use them
        import importlib

        return importlib.import_module(f".{name}", __name__)
    if name == "accounting":  # a tool (/proc scans): loaded when asked for
        from .tools import accounting

        return accounting
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        value = importlib.import_module(f".{module}", __name__)
        if name != module:
            value = getattr(value, name)
        globals()[name] = value  # the next access is a plain attribute read
        return value
    raise AttributeError(f"module 'pydmabuf' has no attribute {name!r}")
