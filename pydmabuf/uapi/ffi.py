"""The one cffi FFI, with the C declarations of ``cdefs/``, and the ioctl numbers.

ABI mode (``dlopen`` of libc) so installing needs no C compiler, and out-of-line:
``_cdefs`` is generated from ``cdefs/`` by ``tools/gen_cffi.py`` and holds the
declarations already parsed, so importing needs no pycparser (parsing them cost
most of ``import pydmabuf``). Because ABI mode trusts the declarations blindly,
``tests/test_abi.py`` checks every size, offset and ioctl number against the kernel
headers with a real C compiler, and that the generated modules match ``cdefs/``.

The V4L2 declarations (``videodev2.h``) are not here: ``pydmabuf.uapi.v4l2`` loads
them for the programs that ask.
"""

from __future__ import annotations

from ._cdefs import ffi as ffi

# Every file of cdefs/: the source of _cdefs and _cdefs_v4l2 (tools/gen_cffi.py reads
# them in its own order) and what the wheel carries.
CDEF_FILES = (
    "libc.h",
    "dma-buf.h",
    "dma-heap.h",
    "udmabuf.h",
    "sync_file.h",
    "sw_sync.h",
    "drm.h",
    "vgem_drm.h",
    "videodev2.h",
)

lib = ffi.dlopen(None)

# asm-generic/ioctl.h encoding; identical on x86_64 and aarch64.
IOC_WRITE = 1
IOC_READ = 2


def ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """_IOC(dir, type, nr, size): an ioctl request number."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | nr


def _iow(kind: str, nr: int, ctype: str) -> int:
    return ioc(IOC_WRITE, kind, nr, ffi.sizeof(ctype))


def _iowr(kind: str, nr: int, ctype: str) -> int:
    return ioc(IOC_READ | IOC_WRITE, kind, nr, ffi.sizeof(ctype))


DMA_BUF_IOCTL_SYNC = _iow("b", 0, "struct dma_buf_sync")
# The kernel dispatches on the u32 (_A) and u64 (_B) encodings; _B is the 64-bit one.
DMA_BUF_SET_NAME_B = _iow("b", 1, "uint64_t")
DMA_BUF_IOCTL_EXPORT_SYNC_FILE = _iowr("b", 2, "struct dma_buf_export_sync_file")
DMA_BUF_IOCTL_IMPORT_SYNC_FILE = _iow("b", 3, "struct dma_buf_import_sync_file")
DMA_HEAP_IOCTL_ALLOC = _iowr("H", 0, "struct dma_heap_allocation_data")
UDMABUF_CREATE = _iow("u", 0x42, "struct udmabuf_create")
# Encodes only the 8-byte header; the kernel reads `count` items after it.
UDMABUF_CREATE_LIST = _iow("u", 0x43, "struct udmabuf_create_list")
SYNC_IOC_MERGE = _iowr(">", 3, "struct sync_merge_data")
SYNC_IOC_FILE_INFO = _iowr(">", 4, "struct sync_file_info")
SYNC_IOC_SET_DEADLINE = _iow(">", 5, "struct sync_set_deadline")
SW_SYNC_IOC_CREATE_FENCE = _iowr("W", 0, "struct sw_sync_create_fence_data")
SW_SYNC_IOC_INC = _iow("W", 1, "uint32_t")
DRM_IOCTL_VERSION = _iowr("d", 0x00, "struct drm_version")
DRM_IOCTL_GEM_CLOSE = _iow("d", 0x09, "struct drm_gem_close")
DRM_IOCTL_PRIME_HANDLE_TO_FD = _iowr("d", 0x2D, "struct drm_prime_handle")
DRM_IOCTL_MODE_CREATE_DUMB = _iowr("d", 0xB2, "struct drm_mode_create_dumb")
DRM_COMMAND_BASE = 0x40
DRM_IOCTL_VGEM_FENCE_ATTACH = _iowr("d", DRM_COMMAND_BASE + 1, "struct drm_vgem_fence_attach")
DRM_IOCTL_VGEM_FENCE_SIGNAL = _iow("d", DRM_COMMAND_BASE + 2, "struct drm_vgem_fence_signal")

IOCTLS = {
    name: value
    for name, value in globals().items()
    if name.startswith(("DMA_BUF_IOCTL_", "DMA_BUF_SET_", "DMA_HEAP_IOCTL", "UDMABUF_CREATE",
                        "SYNC_IOC_", "SW_SYNC_IOC_", "DRM_IOCTL_"))
}
