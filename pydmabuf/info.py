"""Plain data returned by ``info()`` methods.

Immutable records with the interface of frozen dataclasses (keyword or positional
construction, ``repr``, ``==``, ``hash``, pickling), written out by hand: the
``dataclasses`` module imports ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``),
about 9 ms that every ``import pydmabuf`` paid for three small classes.
"""

from __future__ import annotations

# typing (with re) is ~5 ms of import that annotations alone don't need: mypy reads
# this name as typing.TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Record:
    """Fields are the class's ``__slots__``, in order (a dict: field name -> its docstring)."""

    __slots__: tuple[str, ...] | dict[str, str] = ()

    def __init__(self, *values: Any) -> None:
        # Subclasses spell their fields out in their own __init__ (so Python checks the
        # arguments and type checkers see them) and pass them on in __slots__ order.
        for key, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, key, value)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return type(self), self._values()


class BufferInfo(_Record):
    """What the kernel (or the fallback) reports about one buffer.

    ``count`` is the kernel's file reference count: fds, mmaps and kernel importers
    together, so it is often larger than the number of fds you hold.
    """

    __slots__ = {
        "size": "The buffer's size in bytes.",
        "exporter": "The name of the exporting driver (``exp_name`` in fdinfo, e.g. ``system`` for the system "
        "heap, ``udmabuf``); ``pydmabuf-fallback`` on the fallback backend.",
        "name": "The name set with ``Buffer.set_name()`` (``DMA_BUF_SET_NAME``), or None where it has none.",
        "inode": "The buffer's inode number: equal for every fd of the same buffer, here or in another process.",
        "count": "The file's reference count: the kernel's, system-wide (fds, mmaps and importers), or on the "
        "fallback this process's fds and mappings only.",
    }
    size: int
    exporter: str
    name: str | None
    inode: int
    count: int

    def __init__(self, size: int, exporter: str, name: str | None, inode: int, count: int) -> None:
        super().__init__(size, exporter, name, inode, count)


class FenceInfo(_Record):
    """One leaf fence inside a sync_file. ``status``: 1 signaled, 0 active, <0 -errno.
    ``timestamp_ns`` is CLOCK_MONOTONIC when it signaled, 0 before."""

    __slots__ = {
        "obj_name": "The name of the fence's timeline, as its driver gives it.",
        "driver_name": "The name of the driver that made the fence.",
        "status": "1 signaled, 0 still active, a negative -errno when it signaled with an error.",
        "timestamp_ns": "When it signaled, in CLOCK_MONOTONIC nanoseconds; 0 while it is active.",
    }
    obj_name: str
    driver_name: str
    status: int
    timestamp_ns: int

    def __init__(self, obj_name: str, driver_name: str, status: int, timestamp_ns: int) -> None:
        super().__init__(obj_name, driver_name, status, timestamp_ns)

    @property
    def signaled(self) -> bool:
        """Whether it has signaled (with success or an error status)."""
        return self.status != 0


class SyncFileInfo(_Record):
    """A sync_file as ``SYNC_IOC_FILE_INFO`` reports it: its name, its status (1
    signaled, 0 active, <0 -errno) and its leaf fences."""

    __slots__ = {
        "name": "The sync_file's name: the ``name`` given to ``SyncFile.merge()``, else one the kernel makes "
        "from its fence's driver and timeline; ``pydmabuf-fallback`` on the fallback backend.",
        "status": "1 signaled, 0 still active, a negative -errno when a fence signaled with an error.",
        "fences": "The leaf fences (a tuple of :class:`FenceInfo`), one per fence the sync_file merges.",
    }
    name: str
    status: int
    fences: tuple[FenceInfo, ...]

    def __init__(self, name: str, status: int, fences: tuple[FenceInfo, ...]) -> None:
        super().__init__(name, status, fences)

    @property
    def signaled(self) -> bool:
        """Whether it has signaled (with success or an error status)."""
        return self.status != 0
