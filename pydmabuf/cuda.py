"""GPU memory as dma-bufs: CUDA device memory exported with
``cuMemGetHandleForAddressRange(..., CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0)``.

The result is a real dma-buf (exporter ``nv_dmabuf``) wrapped as a kernel-backend
``Buffer``: it can be sent to another process (``pydmabuf.send``, pickling), named,
polled, asked for a sync_file, and imported by another device (an RDMA NIC with
``ibv_reg_dmabuf_mr``, a Vulkan or V4L2 importer). It cannot be CPU-mapped (the
exporter refuses mmap: ``map()`` raises UnsupportedError), and CUDA itself cannot
import a dma-buf on desktop drivers.

What is exported is the whole driver allocation around the pointer (page-aligned,
as the call requires), not just the object: ``export_region`` says where the object
starts inside it (``Region.offset``). With a caching allocator (PyTorch, CuPy) an
allocation may hold other tensors too; allocate what you share on its own.

The driver (``libcuda.so.1``) is loaded with ctypes on the first call; importing this
module loads nothing. Without a driver or GPU, or where the GPU reports
``CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED`` (124) as 0 (proprietary kernel modules,
kernels before 5.12), the calls raise UnsupportedError and ``available()`` is False.
"""

from __future__ import annotations

import errno as E
import fcntl
import os
import threading
from typing import TYPE_CHECKING, NamedTuple

from .buffer import Buffer
from .errors import Error, UnsupportedError, invalid
from .uapi.memfd import PAGE_SIZE

if TYPE_CHECKING:
    from .uapi.cuda_driver import Driver

__all__ = ["Region", "available", "check", "device_pointer", "export", "export_region"]

_U64 = 2**64
_lock = threading.Lock()
_loaded: Driver | UnsupportedError | None = None


class Region(NamedTuple):
    """An exported allocation: ``buffer`` (the dma-buf), where the object starts in it
    (``offset``, bytes) and how many bytes the object covers (``size``)."""

    buffer: Buffer
    offset: int
    size: int


Region.buffer.__doc__ = "The dma-buf (a :class:`pydmabuf.Buffer`) that holds the allocation."
Region.offset.__doc__ = "Where the object starts in ``buffer``, in bytes."
Region.size.__doc__ = "How many bytes the object covers."


def _driver() -> Driver:
    """The loaded driver; its absence is remembered (it will not appear later)."""
    global _loaded
    with _lock:
        if _loaded is None:
            from .uapi.cuda_driver import load

            try:
                _loaded = load()
            except UnsupportedError as exc:
                _loaded = exc
        if isinstance(_loaded, UnsupportedError):
            raise UnsupportedError(_loaded.errno, _loaded.strerror)
        return _loaded


def _ordinal(device: object) -> int:
    if isinstance(device, bool) or not isinstance(device, int):
        raise TypeError(f"device must be an int, got {type(device).__name__}")
    if device < 0:
        raise invalid(f"device must be >= 0, got {device}")
    return device


def check(device: int = 0) -> None:
    """Raise UnsupportedError saying why GPU ``device`` cannot export dma-bufs here
    (no driver, no such GPU, or DMA_BUF_SUPPORTED is 0); return if it can."""
    ordinal = _ordinal(device)
    driver = _driver()
    from .uapi.cuda_driver import CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED

    try:
        dev = driver.device(ordinal)
    except Error as exc:
        raise UnsupportedError(exc.errno or E.ENODEV, f"no CUDA device {ordinal}: {exc.strerror}") from None
    if driver.attribute(CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED, dev) != 1:
        raise UnsupportedError(E.EOPNOTSUPP, f"CUDA device {ordinal} cannot export dma-bufs "
                               "(CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED is 0): it needs NVIDIA's "
                               "open kernel modules and Linux >= 5.12")


def available(device: int = 0) -> bool:
    """Whether GPU ``device`` can export its memory as dma-bufs here."""
    _ordinal(device)  # a bad argument is an error, not a "no"
    try:
        check(device)
    except Error:
        return False
    return True


def device_pointer(obj: object, size: int | None = None) -> tuple[int, int | None]:
    """(pointer, bytes) of what to export, without asking the driver: an int device
    pointer (``size`` bytes, None: to the end of its allocation), an object with
    ``__cuda_array_interface__`` (CuPy, Numba, PyTorch) or one with ``data_ptr()``
    (a PyTorch tensor: ``nbytes`` from the object)."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise TypeError(f"size must be an int or None, got {type(size).__name__}")
    if isinstance(obj, int) and not isinstance(obj, bool):
        if not 0 < obj < _U64:
            raise invalid(f"device pointer must be in 1..2**64-1, got {obj}")
        if size is not None and not 0 < size < _U64 - obj:
            raise invalid(f"size must be > 0 and end below 2**64, got {size}")
        return obj, size
    if size is not None:
        raise invalid("size is only for a bare pointer: an array object says its own size")
    try:
        interface = obj.__cuda_array_interface__  # type: ignore[attr-defined]
    except AttributeError:
        interface = None
    except Exception:  # e.g. torch refuses it for tensors that require grad
        interface = None
    if isinstance(interface, dict):
        return _from_interface(interface)
    data_ptr = getattr(obj, "data_ptr", None)
    if callable(data_ptr):
        ptr = data_ptr()
        nbytes = getattr(obj, "nbytes", None)
        if nbytes is None:
            nbytes = obj.numel() * obj.element_size()  # type: ignore[attr-defined]
        return _checked(ptr, nbytes)
    raise TypeError(f"expected a CUDA device pointer (int), an object with __cuda_array_interface__ "
                    f"or one with data_ptr(), got {type(obj).__name__}")


def _from_interface(interface: dict[str, object]) -> tuple[int, int]:
    if interface.get("mask") is not None:
        raise invalid("masked CUDA arrays cannot be exported")
    data = interface.get("data")
    shape = interface.get("shape")
    typestr = interface.get("typestr")
    if not isinstance(data, tuple) or not isinstance(shape, tuple) or not isinstance(typestr, str):
        raise invalid(f"malformed __cuda_array_interface__: {interface!r}")
    try:
        itemsize = int(typestr[2:])
        extents = [int(n) for n in shape]
    except ValueError:
        raise invalid(f"malformed __cuda_array_interface__ typestr/shape: {typestr!r} {shape!r}") from None
    if any(n == 0 for n in extents):
        raise invalid("the CUDA array is empty: nothing to export")
    strides = interface.get("strides")
    ptr = int(data[0]) if data and data[0] is not None else 0
    if strides is None:
        nbytes = itemsize
        for n in extents:
            nbytes *= n
        return _checked(ptr, nbytes)
    if not isinstance(strides, tuple) or len(strides) != len(extents):
        raise invalid(f"malformed __cuda_array_interface__ strides: {strides!r}")
    low = high = 0  # byte offsets of the first and last element from data[0]
    for n, stride in zip(extents, strides, strict=True):
        step = (n - 1) * int(stride)
        low, high = (low + step, high) if step < 0 else (low, high + step)
    return _checked(ptr + low, high - low + itemsize)


def _checked(ptr: object, nbytes: object) -> tuple[int, int]:
    if not isinstance(ptr, int) or not 0 < ptr < _U64:
        raise invalid(f"the object has no device memory (pointer {ptr!r})")
    if not isinstance(nbytes, int) or nbytes <= 0:
        raise invalid(f"the object covers no bytes ({nbytes!r})")
    return ptr, nbytes


def export_region(obj: object, size: int | None = None) -> Region:
    """Export the CUDA allocation holding ``obj`` (see ``device_pointer``) as a
    dma-buf: Region(buffer, offset of the object inside it, the object's bytes)."""
    ptr, nbytes = device_pointer(obj, size)
    driver = _driver()
    from .uapi.cuda_driver import (
        CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED,
        CU_MEMORYTYPE_DEVICE,
        CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
        CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
    )

    kind = driver.pointer_int(CU_POINTER_ATTRIBUTE_MEMORY_TYPE, ptr, "cuPointerGetAttribute(MEMORY_TYPE)")
    if kind != CU_MEMORYTYPE_DEVICE:
        raise invalid(f"0x{ptr:x} is not CUDA device memory (memory type {kind}): only device "
                      "allocations can be exported as dma-bufs")
    ordinal = driver.pointer_int(CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, ptr,
                                 "cuPointerGetAttribute(DEVICE_ORDINAL)")
    dev = driver.device(ordinal)
    if driver.attribute(CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED, dev) != 1:
        check(ordinal)  # raises the explanation
    base, length, fd = _export_range(driver, dev, ptr)
    if nbytes is None:
        nbytes = base + length - ptr
    elif ptr + nbytes > base + length:
        os.close(fd)
        raise invalid(f"[0x{ptr:x}, +{nbytes}) runs past its allocation "
                      f"[0x{base:x}, +{length})")
    try:
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)  # like every fd this library makes
        buffer = Buffer.from_fd(fd)
    except BaseException:
        os.close(fd)
        raise
    return Region(buffer, ptr - base, nbytes)


def _export_range(driver: Driver, dev: int, ptr: int) -> tuple[int, int, int]:
    """(base, page-rounded size, dma-buf fd) of the allocation around ``ptr``, with
    the context that owns it current meanwhile (the primary one when it has none)."""
    from ctypes import byref, c_void_p

    lib = driver.lib
    ctx = driver.pointer_context(ptr)
    retained = ctx is None
    if retained:
        handle = c_void_p()
        driver.check(lib.cuDevicePrimaryCtxRetain(byref(handle), dev), "cuDevicePrimaryCtxRetain")
        ctx = handle.value
    try:
        driver.check(lib.cuCtxPushCurrent_v2(ctx), "cuCtxPushCurrent")
        try:
            base, size = driver.address_range(ptr)
            if base % PAGE_SIZE:
                raise UnsupportedError(E.EINVAL, f"the allocation at 0x{base:x} is not page-aligned: "
                                       "cuMemGetHandleForAddressRange needs host-page alignment")
            length = -(-size // PAGE_SIZE) * PAGE_SIZE
            fd = driver.dma_buf_fd(base, length)
        finally:
            popped = c_void_p()
            lib.cuCtxPopCurrent_v2(byref(popped))
    finally:
        if retained:
            lib.cuDevicePrimaryCtxRelease_v2(dev)
    return base, length, fd


def export(obj: object, size: int | None = None) -> Buffer:
    """``export_region(obj, size).buffer``: the dma-buf of the allocation around
    ``obj`` (when the object's offset inside it matters, use ``export_region``)."""
    return export_region(obj, size).buffer
