"""Backend selection: ``PYDMABUF_BACKEND=auto|kernel|fallback`` (default auto).

The setting only chooses where *new* buffers and fences come from: an fd that is a
dma-buf or sync_file always gets kernel semantics, a fallback memfd or fence fallback
semantics (``buffer_backend``, ``fence_backend``). auto picks the kernel when
``/dev/dma_heap`` or ``/dev/udmabuf`` exists, else the fallback. ``kernel`` is valid
wherever the kernel has dma-buf (allocating from a heap that is not there then says
what exists); where it has none, asking for it is an error, never a silent fallback.
"""

from __future__ import annotations

import os

from ..errors import invalid, unsupported
from ..uapi.fdkind import DMA_BUF, FALLBACK_FENCE, MEMFD, SYNC_FILE, buffer_kind, buffer_kind_of, fence_kind
from .base import Backend, TimelineSource

__all__ = ["BACKEND_NAMES", "Backend", "TimelineSource", "buffer_backend", "buffer_backend_of", "default_name",
           "fence_backend", "get_backend"]

BACKEND_NAMES = ("kernel", "fallback")
# Backends by name; None maps to the default once chosen (one dict lookup per call).
_instances: dict[str | None, Backend] = {}
_BY_KIND = {DMA_BUF: "kernel", SYNC_FILE: "kernel", MEMFD: "fallback", FALLBACK_FENCE: "fallback"}
_default: str | None = None


def _requested() -> str:
    choice = os.environ.get("PYDMABUF_BACKEND", "auto").strip().lower() or "auto"
    if choice not in ("auto", *BACKEND_NAMES):
        raise invalid(f"PYDMABUF_BACKEND={choice!r}: expected auto, kernel or fallback")
    return choice


def default_name() -> str:
    """The name of the default backend, chosen once per process."""
    global _default
    if _default is None:
        from . import kernel

        choice = _requested()
        if choice == "auto":
            choice = "kernel" if kernel.available() else "fallback"
        elif choice == "kernel" and not kernel.has_dma_buf():
            raise unsupported(
                "PYDMABUF_BACKEND=kernel but this kernel has no dma-buf "
                "(CONFIG_DMA_SHARED_BUFFER): no /dev/dma_heap, /dev/udmabuf or /dev/dri, and no "
                "dma_buf_export in /proc/kallsyms; unset it to use the fallback backend"
            )
        _default = choice
    return _default


def get_backend(name: str | Backend | None = None) -> Backend:
    """A backend by name ("kernel", "fallback"), or the default one for None."""
    backend = _instances.get(name)  # type: ignore[arg-type]
    if backend is not None:
        return backend
    if isinstance(name, Backend):
        return name
    if name is None:
        backend = _instances[None] = get_backend(default_name())
        return backend
    backend = _instances.get(name)
    if backend is None:
        if name == "kernel":
            from .kernel import KernelBackend

            backend = KernelBackend()
        elif name == "fallback":
            from .fallback import FallbackBackend

            backend = FallbackBackend()
        else:
            raise invalid(f"unknown backend {name!r}: expected one of {BACKEND_NAMES}")
        _instances[name] = backend
    return backend


def buffer_backend(fd: int) -> tuple[Backend, int]:
    """The backend whose semantics apply to buffer ``fd`` (kernel for any dma-buf,
    fallback for a sealed memfd) and its size; InvalidArgumentError for anything else."""
    kind, size = buffer_kind(fd)
    return get_backend(_BY_KIND[kind]), size


def buffer_backend_of(fd: int, mode: int, size: int, dev: int) -> tuple[Backend, int]:
    """buffer_backend for a caller that has ``fd``'s ``ops.cached_stat`` already."""
    kind, size = buffer_kind_of(fd, mode, size, dev)
    return get_backend(_BY_KIND[kind]), size


def fence_backend(fd: int) -> Backend:
    """The backend for fence ``fd``: kernel for a sync_file, fallback for a fallback fence."""
    return get_backend(_BY_KIND[fence_kind(fd)])
