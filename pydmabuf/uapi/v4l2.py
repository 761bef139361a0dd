"""The V4L2 declarations (``cdefs/videodev2.h``) and their ioctl numbers, loaded only
by the programs that import this module (examples/v4l2_capture.py): no other part of
pydmabuf needs them, so ``import pydmabuf`` does not pay for them.

``ffi`` includes the core FFI of ``pydmabuf.uapi.ffi`` (its types are the same
objects, so it makes any of the structs); ``lib`` gives the V4L2 constants
(``lib.V4L2_*``, ``lib.VIDEO_MAX_PLANES``); functions stay on the core lib, so
``ioctl`` is libc's from there. ``tests/test_abi.py`` checks every size, offset and
number here against the kernel header, as it does the core ones.
"""

from __future__ import annotations

from ._cdefs_v4l2 import ffi as ffi
from .ffi import IOC_READ, IOC_WRITE, ioc
from .ffi import lib as _libc

lib = ffi.dlopen(None)
ioctl = _libc.ioctl


def _ior(nr: int, ctype: str) -> int:
    return ioc(IOC_READ, "V", nr, ffi.sizeof(ctype))


def _iow(nr: int, ctype: str) -> int:
    return ioc(IOC_WRITE, "V", nr, ffi.sizeof(ctype))


def _iowr(nr: int, ctype: str) -> int:
    return ioc(IOC_READ | IOC_WRITE, "V", nr, ffi.sizeof(ctype))


# The streaming subset examples/v4l2_capture.py uses
VIDIOC_QUERYCAP = _ior(0, "struct v4l2_capability")
VIDIOC_ENUM_FMT = _iowr(2, "struct v4l2_fmtdesc")
VIDIOC_G_FMT = _iowr(4, "struct v4l2_format")
VIDIOC_S_FMT = _iowr(5, "struct v4l2_format")
VIDIOC_REQBUFS = _iowr(8, "struct v4l2_requestbuffers")
VIDIOC_QUERYBUF = _iowr(9, "struct v4l2_buffer")
VIDIOC_QBUF = _iowr(15, "struct v4l2_buffer")
VIDIOC_EXPBUF = _iowr(16, "struct v4l2_exportbuffer")
VIDIOC_DQBUF = _iowr(17, "struct v4l2_buffer")
VIDIOC_STREAMON = _iow(18, "int")
VIDIOC_STREAMOFF = _iow(19, "int")
VIDIOC_TRY_FMT = _iowr(64, "struct v4l2_format")

IOCTLS = {name: value for name, value in globals().items() if name.startswith("VIDIOC_")}
