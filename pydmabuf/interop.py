"""What other APIs take to import a frame, as plain Python values (no binding needed).

Each function takes the frame's facts (size, fourcc, modifier and per plane the fd,
offset and pitch) and returns the argument form of one consumer; ``pydmabuf.Frame``
has a method for each. The numeric constants are the specifications' own:

- EGL ``EGL_EXT_image_dma_buf_import`` and ``EGL_EXT_image_dma_buf_import_modifiers``
  (Khronos ``eglext.h``; ``EGL_WIDTH``/``EGL_HEIGHT``/``EGL_NONE`` from ``egl.h``),
- KMS ``drmModeAddFB2WithModifiers`` (``DRM_MODE_FB_MODIFIERS`` from ``drm_mode.h``),
- Wayland ``zwp_linux_buffer_params_v1.add`` (linux-dmabuf protocol),
- V4L2 ``struct v4l2_plane`` (``videodev2.h``), multi-planar API,
- GStreamer ``video/x-raw(memory:DMABuf)`` caps with ``format=DMA_DRM`` (GStreamer 1.24).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from .errors import invalid
from .formats import LINEAR, MOD_INVALID

# egl.h
EGL_NONE = 0x3038
EGL_HEIGHT = 0x3056
EGL_WIDTH = 0x3057
# EGL_EXT_image_dma_buf_import: the target of eglCreateImageKHR and its attributes
EGL_LINUX_DMA_BUF_EXT = 0x3270
EGL_LINUX_DRM_FOURCC_EXT = 0x3271
# per plane 0..3 (plane 3 and the modifier pairs: EGL_EXT_image_dma_buf_import_modifiers)
EGL_DMA_BUF_PLANE_FD_EXT = (0x3272, 0x3275, 0x3278, 0x3440)
EGL_DMA_BUF_PLANE_OFFSET_EXT = (0x3273, 0x3276, 0x3279, 0x3441)
EGL_DMA_BUF_PLANE_PITCH_EXT = (0x3274, 0x3277, 0x327A, 0x3442)
EGL_DMA_BUF_PLANE_MODIFIER_LO_EXT = (0x3443, 0x3445, 0x3447, 0x3449)
EGL_DMA_BUF_PLANE_MODIFIER_HI_EXT = (0x3444, 0x3446, 0x3448, 0x344A)
# drm_mode.h: the modifier[] array of ADDFB2 is valid
DRM_MODE_FB_MODIFIERS = 1 << 1


class PlaneArgs(NamedTuple):
    """One plane as every consumer sees it."""

    fd: int
    offset: int
    pitch: int


PlaneArgs.fd.__doc__ = "The fd of the buffer that holds the plane (a Frame gives its buffer's own, not a dup)."
PlaneArgs.offset.__doc__ = "Where the plane's first row starts in that buffer, in bytes."
PlaneArgs.pitch.__doc__ = "The distance in bytes from the start of one row to the next (stride)."


class KmsFramebuffer(NamedTuple):
    """The arguments of ``drmModeAddFB2WithModifiers(fd, width, height, pixel_format,
    handles, pitches, offsets, modifiers, &fb_id, flags)``: arrays of 4, zero past the
    last plane as the kernel requires."""

    width: int
    height: int
    pixel_format: int
    handles: tuple[int, int, int, int]
    pitches: tuple[int, int, int, int]
    offsets: tuple[int, int, int, int]
    modifiers: tuple[int, int, int, int]
    flags: int


KmsFramebuffer.width.__doc__ = "The image's width in pixels."
KmsFramebuffer.height.__doc__ = "The image's height in pixels."
KmsFramebuffer.pixel_format.__doc__ = "The DRM fourcc code of the format."
KmsFramebuffer.handles.__doc__ = "The GEM handle of each plane's buffer (in the DRM device's handle space)."
KmsFramebuffer.pitches.__doc__ = "Each plane's pitch (stride) in bytes."
KmsFramebuffer.offsets.__doc__ = "Where each plane starts in its buffer, in bytes."
KmsFramebuffer.modifiers.__doc__ = "Each plane's format modifier: the frame's for every plane, or 0 with MOD_INVALID."
KmsFramebuffer.flags.__doc__ = "``DRM_MODE_FB_MODIFIERS`` when ``modifiers`` is valid, else 0 (the implicit layout)."


class V4l2Plane(NamedTuple):
    """The fields of one ``struct v4l2_plane`` for ``V4L2_MEMORY_DMABUF``: ``fd`` goes
    to ``m.fd``; ``bytesused`` includes ``data_offset`` (as V4L2 defines it)."""

    fd: int
    length: int
    data_offset: int
    bytesused: int


V4l2Plane.fd.__doc__ = "The fd of the plane's buffer, for ``m.fd``."
V4l2Plane.length.__doc__ = "The size of that buffer in bytes."
V4l2Plane.data_offset.__doc__ = "Where the plane's data starts in the buffer, in bytes."
V4l2Plane.bytesused.__doc__ = "The bytes used, ``data_offset`` included (as V4L2 counts): where the data ends."


def egl_attributes(width: int, height: int, fourcc: int, modifier: int, planes: Sequence[PlaneArgs],
                   *, terminate: bool = False) -> list[int]:
    """The attribute list of ``eglCreateImageKHR(dpy, EGL_NO_CONTEXT,
    EGL_LINUX_DMA_BUF_EXT, NULL, attribs)``: width, height, fourcc, then per plane its
    fd, offset and pitch and, unless ``modifier`` is MOD_INVALID (let the driver
    decide), the modifier's low and high 32 bits. ``terminate=True`` appends EGL_NONE.

    Values are unsigned; where a binding wants signed EGLint, a modifier half of
    2**31 or more becomes ``value - 2**32``."""
    attributes = [EGL_WIDTH, width, EGL_HEIGHT, height, EGL_LINUX_DRM_FOURCC_EXT, fourcc]
    for index, plane in enumerate(planes):
        attributes += [EGL_DMA_BUF_PLANE_FD_EXT[index], plane.fd,
                       EGL_DMA_BUF_PLANE_OFFSET_EXT[index], plane.offset,
                       EGL_DMA_BUF_PLANE_PITCH_EXT[index], plane.pitch]
        if modifier != MOD_INVALID:
            attributes += [EGL_DMA_BUF_PLANE_MODIFIER_LO_EXT[index], modifier & 0xFFFFFFFF,
                           EGL_DMA_BUF_PLANE_MODIFIER_HI_EXT[index], modifier >> 32]
    if terminate:
        attributes.append(EGL_NONE)
    return attributes


def wayland_planes(modifier: int, planes: Sequence[PlaneArgs]) -> list[tuple[int, int, int, int, int, int]]:
    """``zwp_linux_buffer_params_v1.add(fd, plane_idx, offset, stride, modifier_hi,
    modifier_lo)`` for each plane, in order (the protocol wants one add per plane, also
    when planes share an fd). MOD_INVALID is sent as is: it asks for the implicit layout."""
    high, low = modifier >> 32, modifier & 0xFFFFFFFF
    return [(plane.fd, index, plane.offset, plane.pitch, high, low) for index, plane in enumerate(planes)]


def kms_framebuffer(width: int, height: int, fourcc: int, modifier: int, pitches_offsets: Sequence[tuple[int, int]],
                    handles: Sequence[int]) -> KmsFramebuffer:
    """``drmModeAddFB2WithModifiers`` arguments for planes given as (pitch, offset) with
    their GEM ``handles`` (one per plane). With MOD_INVALID no modifier is passed (flags
    0, modifiers 0): the driver uses the buffer's implicit layout."""
    count = len(pitches_offsets)
    explicit = modifier != MOD_INVALID
    pad = (0,) * (4 - count)

    def four(values: Sequence[int]) -> tuple[int, int, int, int]:
        a, b, c, d = (*values, *pad)
        return (a, b, c, d)

    return KmsFramebuffer(
        width, height, fourcc, four(handles), four([p for p, _ in pitches_offsets]),
        four([o for _, o in pitches_offsets]), four([modifier if explicit else 0] * count),
        DRM_MODE_FB_MODIFIERS if explicit else 0,
    )


def v4l2_planes(entries: Sequence[tuple[int, int, int, int]]) -> list[V4l2Plane]:
    """V4L2 planes from (fd, object size, offset, end of the plane's data)."""
    return [V4l2Plane(fd, length, offset, min(end, length)) for fd, length, offset, end in entries]


# GStreamer writes a string without quotes only when every character is one of these.
_GST_PLAIN = re.compile(r"[A-Za-z0-9_+\-/:.]+")


def _gst_string(value: str) -> str:
    if _GST_PLAIN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def gst_drm_format(fourcc_string: str, modifier: int) -> str:
    """GStreamer's ``drm-format`` value: the fourcc's four characters, and for any
    modifier but LINEAR ``:0x`` and 16 hex digits (gst_video_dma_drm_fourcc_to_string)."""
    if modifier == MOD_INVALID:
        raise invalid("GStreamer's DMA_DRM caps need an explicit modifier; this frame has "
                      "MOD_INVALID (the driver's implicit layout): give the frame its real modifier")
    if modifier == LINEAR:
        return fourcc_string
    return f"{fourcc_string}:0x{modifier:016x}"


def gst_caps(width: int, height: int, fourcc_string: str, modifier: int,
             framerate: tuple[int, int] | None = None) -> str:
    """``video/x-raw(memory:DMABuf), format=DMA_DRM, drm-format=..., width, height``
    (and ``framerate`` when given as (numerator, denominator)), in caps-string syntax."""
    caps = (f"video/x-raw(memory:DMABuf), format=(string)DMA_DRM, "
            f"drm-format=(string){_gst_string(gst_drm_format(fourcc_string, modifier))}, "
            f"width=(int){width}, height=(int){height}")
    if framerate is not None:
        numerator, denominator = framerate
        if (not isinstance(numerator, int) or not isinstance(denominator, int) or isinstance(numerator, bool)
                or isinstance(denominator, bool) or numerator < 0 or denominator <= 0):
            raise invalid(f"framerate is (numerator, denominator) with ints >= 0 and > 0, got {framerate!r}")
        caps += f", framerate=(fraction){numerator}/{denominator}"
    return caps
