"""Heap: an open dma-heap (``/dev/dma_heap/<name>``) that allocates Buffers."""

from __future__ import annotations

import errno as E
import os

from ._fd import FdHolder, finish, hold_append, hold_remove
from .backends import Backend, get_backend
from .buffer import Buffer, named, new_buffer
from .errors import Error, NotFoundError, PermissionDeniedError, check_index, check_name, closed, error, invalid
from .uapi.memfd import PAGE_SIZE

# Names that stand for whichever node a kernel gives one kind of heap, in the order
# tried. The CMA heap's node: its fixed name since Linux 6.17 first (the legacy node
# is a duplicate of it under CONFIG_DMABUF_HEAPS_CMA_LEGACY), then the older names
# taken from the device tree ("linux,cma", "default-pool") or from cma= on the command
# line ("reserved"), then "cma", the name Android's libdmabufheap and Rockchip's BSP
# kernels give it. (Raspberry Pi's "vidbuf_cached" is a udev symlink that points at
# the system heap on a Pi 5, so it is not an alias of CMA.)
HEAP_ALIASES: dict[str, tuple[str, ...]] = {
    "cma": ("default_cma_region", "linux,cma", "reserved", "default-pool", "cma"),
}


def heaps(*, backend: str | Backend | None = None) -> list[str]:
    """Names of the heaps the backend offers (may include ones you cannot open)."""
    return get_backend(backend).heaps()


def _physical_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


_MEMORY = _physical_memory()
_PAGE_MASK = PAGE_SIZE - 1
NAME_MAX = 255  # a file name


def check_size(size: object) -> int:
    """A size argument as an int > 0: an int or any integer with ``__index__`` (numpy
    integers); a non-integer or bool is InvalidArgumentError, as is a size <= 0."""
    if type(size) is not int:
        try:
            size = check_index(size, "size")
        except TypeError:
            raise invalid(f"size must be an int, got {type(size).__name__}") from None
    if size <= 0:
        raise invalid(f"size must be > 0, got {size}")
    return size


def _encoded_length(name: str) -> int:
    """The bytes of a file name as os.open encodes it; one it cannot encode (a lone
    surrogate outside surrogateescape's range) counts as too long."""
    try:
        return len(os.fsencode(name))
    except UnicodeEncodeError:
        return NAME_MAX + 1


class Heap(FdHolder):
    """An open heap. ``allocate`` is a single ioctl; the heap fd stays open until
    ``close()`` so repeated allocations pay no open/close."""

    __slots__ = ("_backend", "_name", "_allocate")
    _kind = "Heap"

    def __init__(self, name: str = "system", *, backend: str | Backend | None = None) -> None:
        self._fd = -1
        self._cell: list[int] = []
        check_name(name, "heap name")
        if not name or "/" in name or "\0" in name or name in (".", "..") or _encoded_length(name) > NAME_MAX:
            raise invalid(f"invalid heap name {name!r}: a file name in /dev/dma_heap, "
                          f"at most {NAME_MAX} bytes")
        self._backend = get_backend(backend)
        self._name = name
        candidates = HEAP_ALIASES.get(name)
        try:
            if candidates is None:
                fd = self._backend.open_heap(name)
            else:
                self._name, fd = _open_alias(self._backend, name, candidates)
        except OSError as exc:  # e.g. EMFILE from the fallback's placeholder open
            if isinstance(exc, Error):
                raise
            raise error(exc.errno or E.EIO, f"opening heap {name!r}") from None
        self._allocate = self._backend.allocator(self._name)
        self._cell = [fd]
        self._fd = fd

    @property
    def name(self) -> str:
        """The node actually opened: ``Heap("cma").name`` may be ``"linux,cma"``."""
        return self._name

    @property
    def backend(self) -> str:
        """``"kernel"`` (a /dev/dma_heap node) or ``"fallback"`` (memfds); readable after close."""
        return self._backend.name

    def allocate(self, size: int, *, name: str | None = None) -> Buffer:
        """A new zeroed, read-write buffer of ``size`` bytes rounded up to pages."""
        if type(size) is not int or size <= 0 or size > _MEMORY:
            size = check_size(size)
            if size > _MEMORY:
                # The system heap has no cap and its pages are not charged to the caller:
                # an oversized request makes the OOM killer pick some other process.
                raise error(E.ENOMEM, f"allocating {size} bytes from heap {self._name!r}",
                            f"larger than this machine's {_MEMORY} bytes of memory")
        if name is not None:
            check_name(name)
        hold_append(self)
        try:
            heap_fd = self._fd
            if heap_fd < 0:
                raise closed("Heap")
            fd = self._allocate(heap_fd, size)
            if fd < 0:  # the compiled call failed: the checked one raises the typed error
                fd = self._backend.allocate(heap_fd, self._name, size)
        except OSError as exc:  # e.g. EMFILE from the fallback's memfd_create: the library's error
            if isinstance(exc, Error):
                raise
            raise error(exc.errno or E.EIO, f"allocating {size} bytes from heap {self._name!r}") from None
        finally:
            hold_remove(self)  # _release, inlined on this hot path
            if self._fd < 0:
                finish(self)
        buf = new_buffer(fd, (size + _PAGE_MASK) & ~_PAGE_MASK, self._backend)
        return buf if name is None else named(buf, name)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError(f"cannot pickle a Heap: open Heap({self._name!r}) in the process that "
                        "allocates (a Buffer passes to multiprocessing workers)")

    def __repr__(self) -> str:
        state = f"fd={self._fd}" if self._fd >= 0 else "closed"
        return f"<Heap {self._name!r} {state} backend={self._backend.name}>"


def _open_alias(backend: Backend, alias: str, candidates: tuple[str, ...]) -> tuple[str, int]:
    """(name, fd) of the first of ``candidates`` that opens. A node this user may not
    open is passed over for a later one (udev rules often cover only the legacy
    name); if none opens, that refusal is the error, else NotFoundError."""
    refused: PermissionDeniedError | None = None
    for candidate in candidates:
        try:
            return candidate, backend.open_heap(candidate)
        except NotFoundError:
            continue
        except PermissionDeniedError as exc:
            refused = refused or exc
    if refused is not None:
        raise refused
    available = ", ".join(backend.heaps()) or "none"
    raise error(E.ENOENT, f"no {alias.upper()} dma-heap on the {backend.name} backend: tried "
                f"{', '.join(candidates)}", f"available: {available}")
