"""The few CUDA driver API calls ``pydmabuf.cuda`` needs, through ctypes on
``libcuda.so.1`` (the driver, not the toolkit: nothing to install beyond the GPU
driver). Imported on the first ``pydmabuf.cuda`` call only.

Signatures from cuda.h; the ``_v2`` entry points are the 64-bit ones that the
header's macros select (cuMemGetAddressRange, cuCtxPushCurrent, cuCtxPopCurrent,
cuMemAlloc, cuMemFree).
"""

from __future__ import annotations

import ctypes
import errno as E
from ctypes import POINTER, byref, c_char_p, c_int, c_size_t, c_uint, c_uint64, c_ulonglong, c_void_p

from ..errors import Error, InvalidArgumentError, OutOfMemoryError, PermissionDeniedError, UnsupportedError

LIBRARY = "libcuda.so.1"
CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 124
CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD = 1
CU_POINTER_ATTRIBUTE_CONTEXT = 1
CU_POINTER_ATTRIBUTE_MEMORY_TYPE = 2
CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9
CU_MEMORYTYPE_DEVICE = 2

CUDA_ERROR_NO_DEVICE = 100
# CUresult -> (our exception, errno) for the answers that have a meaning here.
_ERRORS: dict[int, tuple[type[Error], int]] = {
    1: (InvalidArgumentError, E.EINVAL),  # CUDA_ERROR_INVALID_VALUE
    2: (OutOfMemoryError, E.ENOMEM),  # CUDA_ERROR_OUT_OF_MEMORY
    35: (UnsupportedError, E.EOPNOTSUPP),  # CUDA_ERROR_INSUFFICIENT_DRIVER
    100: (UnsupportedError, E.ENODEV),  # CUDA_ERROR_NO_DEVICE
    101: (InvalidArgumentError, E.EINVAL),  # CUDA_ERROR_INVALID_DEVICE
    500: (InvalidArgumentError, E.EINVAL),  # CUDA_ERROR_NOT_FOUND
    800: (PermissionDeniedError, E.EPERM),  # CUDA_ERROR_NOT_PERMITTED
    801: (UnsupportedError, E.EOPNOTSUPP),  # CUDA_ERROR_NOT_SUPPORTED
    803: (UnsupportedError, E.EOPNOTSUPP),  # CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
    804: (UnsupportedError, E.EOPNOTSUPP),  # CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE
}

CUdeviceptr = c_uint64
CUresult = c_int


class Driver:
    """libcuda.so.1, loaded and initialised (cuInit)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        signatures: dict[str, list[type]] = {
            "cuInit": [c_uint],
            "cuGetErrorName": [CUresult, POINTER(c_char_p)],
            "cuDeviceGet": [POINTER(c_int), c_int],
            "cuDeviceGetCount": [POINTER(c_int)],
            "cuDeviceGetAttribute": [POINTER(c_int), c_int, c_int],
            "cuDevicePrimaryCtxRetain": [POINTER(c_void_p), c_int],
            "cuDevicePrimaryCtxRelease_v2": [c_int],
            "cuCtxPushCurrent_v2": [c_void_p],
            "cuCtxPopCurrent_v2": [POINTER(c_void_p)],
            "cuPointerGetAttribute": [c_void_p, c_int, CUdeviceptr],
            "cuMemGetAddressRange_v2": [POINTER(CUdeviceptr), POINTER(c_size_t), CUdeviceptr],
            "cuMemGetHandleForAddressRange": [c_void_p, CUdeviceptr, c_size_t, c_int, c_ulonglong],
            "cuMemAlloc_v2": [POINTER(CUdeviceptr), c_size_t],
            "cuMemFree_v2": [CUdeviceptr],
            "cuMemsetD8_v2": [CUdeviceptr, ctypes.c_ubyte, c_size_t],
        }
        for name, argtypes in signatures.items():
            fn = getattr(lib, name)  # AttributeError: a driver too old for this entry point
            fn.argtypes = argtypes
            fn.restype = CUresult
        self.check(lib.cuInit(0), "cuInit")

    def error_name(self, code: int) -> str:
        name = c_char_p()
        if self.lib.cuGetErrorName(code, byref(name)) == 0 and name.value:
            return name.value.decode()
        return f"CUresult {code}"

    def check(self, code: int, what: str, hint: str | None = None) -> None:
        if code == 0:
            return
        cls, errno = _ERRORS.get(code, (Error, E.EIO))
        message = f"{what}: {self.error_name(code)}"
        if hint:
            message += f" ({hint})"
        raise cls(errno, message)

    # --- the calls, typed ------------------------------------------------------
    def device(self, ordinal: int) -> int:
        dev = c_int()
        self.check(self.lib.cuDeviceGet(byref(dev), ordinal), f"cuDeviceGet({ordinal})")
        return dev.value

    def attribute(self, attribute: int, device: int) -> int:
        value = c_int()
        self.check(self.lib.cuDeviceGetAttribute(byref(value), attribute, device),
                   f"cuDeviceGetAttribute({attribute})")
        return value.value

    def pointer_int(self, attribute: int, ptr: int, what: str) -> int:
        value = c_uint()
        self.check(self.lib.cuPointerGetAttribute(byref(value), attribute, ptr), what,
                   "not memory the CUDA driver knows: pass a device pointer or a CUDA array")
        return value.value

    def pointer_context(self, ptr: int) -> int | None:
        ctx = c_void_p()
        self.check(self.lib.cuPointerGetAttribute(byref(ctx), CU_POINTER_ATTRIBUTE_CONTEXT, ptr),
                   "cuPointerGetAttribute(CONTEXT)")
        return ctx.value

    def address_range(self, ptr: int) -> tuple[int, int]:
        base = CUdeviceptr()
        size = c_size_t()
        self.check(self.lib.cuMemGetAddressRange_v2(byref(base), byref(size), ptr), "cuMemGetAddressRange")
        return base.value, size.value

    def dma_buf_fd(self, base: int, size: int) -> int:
        fd = c_int(-1)
        self.check(self.lib.cuMemGetHandleForAddressRange(byref(fd), base, size,
                                                          CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0),
                   "cuMemGetHandleForAddressRange(DMA_BUF_FD)",
                   "dma-buf export needs NVIDIA's open kernel modules and Linux >= 5.12")
        return fd.value


def load() -> Driver:
    """The driver, or UnsupportedError saying why there is none."""
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError as exc:
        raise UnsupportedError(E.EOPNOTSUPP, f"no CUDA driver: cannot load {LIBRARY} ({exc}); "
                               "install the NVIDIA driver") from None
    try:
        return Driver(lib)
    except AttributeError as exc:
        raise UnsupportedError(E.EOPNOTSUPP, f"the CUDA driver is too old: {exc} "
                               "(dma-buf export needs CUDA 11.7+ drivers)") from None
    except Error as exc:  # cuInit: no GPU, driver/library mismatch, no access to /dev/nvidia*
        raise UnsupportedError(exc.errno or E.ENODEV, f"the CUDA driver cannot start: {exc.strerror}") from None
