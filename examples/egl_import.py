"""pydmabuf frames into EGL and back: a dma-buf imported as a GL texture, read back exactly;
then a GL texture exported as a dma-buf (``eglExportDMABUFImageMESA``) wrapped as a Frame.

1. ``allocate_frame`` makes an ABGR8888 and an XRGB8888 frame (one is GL's RGBA byte
   order, the other is BGRx), a pattern is drawn under ``cpu_access``, and
   ``frame.egl_attributes(terminate=True)`` goes unchanged to ``eglCreateImageKHR(...,
   EGL_LINUX_DMA_BUF_EXT, ...)``. The image becomes a texture, the texture a
   framebuffer, and ``glReadPixels`` must return the pattern (XRGB8888's X reads as
   opaque alpha).
2. A texture cleared to a colour by GL is exported with ``eglExportDMABUFImageMESA``;
   ``Buffer.from_fd`` and a Frame with the exported fourcc, offset and pitch read the
   colour back through pydmabuf's mapping.

Plain ctypes against libEGL and libGLESv2, on EGL's device platform with Mesa's
software device (llvmpipe): no window, no GPU. Needs Mesa with
``EGL_EXT_image_dma_buf_import`` and a kernel that gives real dma-bufs (a dma-heap or
udmabuf); elsewhere it says so and exits 0 (``--require`` makes that a failure; the
real-kernel tier's consumer boot has both).

    python examples/egl_import.py [--size 67x33] [--require]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from typing import Any

import pydmabuf
from pydmabuf import Buffer
from pydmabuf.formats import Format
from pydmabuf.frame import Frame, Plane, allocate_frame

EGL_NONE, EGL_EXTENSIONS, EGL_PLATFORM_DEVICE_EXT = 0x3038, 0x3055, 0x313F
EGL_OPENGL_ES_API, EGL_CONTEXT_CLIENT_VERSION = 0x30A0, 0x3098
EGL_LINUX_DMA_BUF_EXT, EGL_GL_TEXTURE_2D = 0x3270, 0x30B1
GL_TEXTURE_2D, GL_FRAMEBUFFER, GL_COLOR_ATTACHMENT0, GL_FRAMEBUFFER_COMPLETE = 0x0DE1, 0x8D40, 0x8CE0, 0x8CD5
GL_RGBA, GL_UNSIGNED_BYTE, GL_COLOR_BUFFER_BIT = 0x1908, 0x1401, 0x4000
GL_TEXTURE_MIN_FILTER, GL_NEAREST = 0x2801, 0x2600
vp = ctypes.c_void_p


class Egl:
    """The EGL and GLES entry points this example uses, typed for ctypes."""

    def __init__(self) -> None:
        self.egl = ctypes.CDLL("libEGL.so.1")
        self.gl = ctypes.CDLL("libGLESv2.so.2")
        self.egl.eglGetProcAddress.restype = vp
        self.egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
        for name, res, args in (("eglInitialize", ctypes.c_uint, [vp, vp, vp]),
                                ("eglBindAPI", ctypes.c_uint, [ctypes.c_uint]),
                                ("eglCreateContext", vp, [vp, vp, vp, vp]),
                                ("eglMakeCurrent", ctypes.c_uint, [vp, vp, vp, vp]),
                                ("eglQueryString", ctypes.c_char_p, [vp, ctypes.c_int]),
                                ("eglGetError", ctypes.c_int, []),
                                ("eglTerminate", ctypes.c_uint, [vp])):
            fn = getattr(self.egl, name)
            fn.restype, fn.argtypes = res, args

    def proc(self, name: str, res: Any, *args: Any) -> Any:
        address = self.egl.eglGetProcAddress(name.encode())
        if not address:
            raise SystemExit(f"EGL has no {name}")
        return ctypes.CFUNCTYPE(res, *args)(address)


def software_display(egl: Egl) -> Any:
    """An initialised display on Mesa's software device (EGL_EXT_platform_device), or
    why there is none."""
    client = (egl.egl.eglQueryString(None, EGL_EXTENSIONS) or b"").decode()
    if "EGL_EXT_platform_device" not in client:
        return "EGL has no EGL_EXT_platform_device"
    query_devices = egl.proc("eglQueryDevicesEXT", ctypes.c_uint, ctypes.c_int, ctypes.POINTER(vp),
                             ctypes.POINTER(ctypes.c_int))
    device_string = egl.proc("eglQueryDeviceStringEXT", ctypes.c_char_p, vp, ctypes.c_int)
    platform_display = egl.proc("eglGetPlatformDisplayEXT", vp, ctypes.c_uint, vp, vp)
    devices, count = (vp * 16)(), ctypes.c_int()
    query_devices(16, devices, ctypes.byref(count))
    for device in devices[:count.value]:
        if b"EGL_MESA_device_software" in (device_string(device, EGL_EXTENSIONS) or b""):
            display = platform_display(EGL_PLATFORM_DEVICE_EXT, device, None)
            if display and egl.egl.eglInitialize(display, None, None):
                return display
    return "no Mesa software EGL device"


def make_current(egl: Egl, display: Any) -> str | None:
    """Make a GLES 2 context current; why not, if it cannot (an older Mesa)."""
    extensions = (egl.egl.eglQueryString(display, EGL_EXTENSIONS) or b"").decode()
    for needed in ("EGL_KHR_surfaceless_context", "EGL_KHR_no_config_context", "EGL_EXT_image_dma_buf_import"):
        if needed not in extensions:
            return f"the EGL display lacks {needed} (Mesa too old?)"
    egl.egl.eglBindAPI(EGL_OPENGL_ES_API)
    attributes = (ctypes.c_int * 3)(EGL_CONTEXT_CLIENT_VERSION, 2, EGL_NONE)
    context = egl.egl.eglCreateContext(display, None, None, attributes)
    if not context or not egl.egl.eglMakeCurrent(display, None, None, context):
        return f"no GLES 2 context (EGL error 0x{egl.egl.eglGetError():x})"
    return None


def framebuffer(egl: Egl, texture: int) -> None:
    gl = egl.gl
    fbo = ctypes.c_uint()
    gl.glGenFramebuffers(1, ctypes.byref(fbo))
    gl.glBindFramebuffer(GL_FRAMEBUFFER, fbo)
    gl.glFramebufferTexture2D(GL_FRAMEBUFFER, GL_COLOR_ATTACHMENT0, GL_TEXTURE_2D, texture, 0)
    status = gl.glCheckFramebufferStatus(GL_FRAMEBUFFER)
    if status != GL_FRAMEBUFFER_COMPLETE:
        raise SystemExit(f"framebuffer incomplete (0x{status:x})")


def texture_from_image(egl: Egl, image: Any) -> int:
    target_texture = egl.proc("glEGLImageTargetTexture2DOES", None, ctypes.c_uint, vp)
    texture = ctypes.c_uint()
    egl.gl.glGenTextures(1, ctypes.byref(texture))
    egl.gl.glBindTexture(GL_TEXTURE_2D, texture)
    egl.gl.glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MIN_FILTER, GL_NEAREST)
    target_texture(GL_TEXTURE_2D, image)
    return texture.value


def pattern(x: int, y: int) -> tuple[int, int, int, int]:
    return (x * 5 + y) & 0xFF, (x + y * 3) & 0xFF, (x * y) & 0xFF, (x * 7 + 11) & 0xFF


def import_frame(egl: Egl, display: Any, fmt: str, width: int, height: int) -> None:
    create_image = egl.proc("eglCreateImageKHR", vp, vp, vp, ctypes.c_uint, vp, ctypes.POINTER(ctypes.c_int))
    with allocate_frame(width, height, fmt) as frame:
        with frame.cpu_access():  # R, G, B, A in memory for ABGR8888; B, G, R, X for XRGB8888
            view = frame.plane_view(0)
            for y in range(view.rows):
                row = bytearray()
                for x in range(width):
                    r, g, b, a = pattern(x, y)
                    row += bytes((r, g, b, a)) if fmt == "ABGR8888" else bytes((b, g, r, a))
                view.row(y)[:] = row
            view.release()
        attributes = frame.egl_attributes(terminate=True)
        image = create_image(display, None, EGL_LINUX_DMA_BUF_EXT, None, (ctypes.c_int * len(attributes))(*attributes))
        if not image:
            raise SystemExit(f"{fmt}: eglCreateImageKHR refused the frame (EGL error 0x{egl.egl.eglGetError():x})")
        framebuffer(egl, texture_from_image(egl, image))
        pixels = (ctypes.c_ubyte * (width * height * 4))()
        egl.gl.glReadPixels(0, 0, width, height, GL_RGBA, GL_UNSIGNED_BYTE, pixels)
        got = bytes(pixels)
        for y in range(height):
            for x in range(width):
                r, g, b, a = pattern(x, y)
                want = bytes((r, g, b, a if fmt == "ABGR8888" else 0xFF))
                if got[(y * width + x) * 4:(y * width + x) * 4 + 4] != want:
                    raise SystemExit(f"{fmt}: pixel ({x}, {y}) reads {got[(y * width + x) * 4:][:4].hex()}, "
                                     f"drawn {want.hex()}")
        where = frame.objects[0].info().exporter
    print(f"{fmt} {width}x{height} ({where}) imported into EGL and read back by glReadPixels: every byte as drawn")


def export_texture(egl: Egl, display: Any, width: int, height: int) -> None:
    create_image = egl.proc("eglCreateImageKHR", vp, vp, vp, ctypes.c_uint, vp, ctypes.POINTER(ctypes.c_int))
    query = egl.proc("eglExportDMABUFImageQueryMESA", ctypes.c_uint, vp, vp, ctypes.POINTER(ctypes.c_int),
                     ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint64))
    export = egl.proc("eglExportDMABUFImageMESA", ctypes.c_uint, vp, vp, ctypes.POINTER(ctypes.c_int),
                      ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    gl = egl.gl
    texture = ctypes.c_uint()
    gl.glGenTextures(1, ctypes.byref(texture))
    gl.glBindTexture(GL_TEXTURE_2D, texture)
    gl.glTexImage2D(GL_TEXTURE_2D, 0, GL_RGBA, width, height, 0, GL_RGBA, GL_UNSIGNED_BYTE, None)
    framebuffer(egl, texture.value)
    gl.glClearColor.argtypes = [ctypes.c_float] * 4
    gl.glClearColor(0.2, 0.4, 0.6, 1.0)
    gl.glClear(GL_COLOR_BUFFER_BIT)
    gl.glFinish()
    context = egl.proc("eglGetCurrentContext", vp)()
    image = create_image(display, context, EGL_GL_TEXTURE_2D, ctypes.c_void_p(texture.value), None)
    fourcc, planes, modifier = ctypes.c_int(), ctypes.c_int(), ctypes.c_uint64()
    if not image or not query(display, image, ctypes.byref(fourcc), ctypes.byref(planes), ctypes.byref(modifier)):
        raise SystemExit(f"EGL cannot export the texture (EGL error 0x{egl.egl.eglGetError():x})")
    fds, strides, offsets = (ctypes.c_int * 4)(-1, -1, -1, -1), (ctypes.c_int * 4)(), (ctypes.c_int * 4)()
    if not export(display, image, fds, strides, offsets):
        raise SystemExit(f"eglExportDMABUFImageMESA failed (EGL error 0x{egl.egl.eglGetError():x})")
    for extra in fds[1:planes.value]:
        os.close(extra)
    fmt = Format(fourcc.value & 0xFFFFFFFF)
    with Buffer.from_fd(fds[0]) as buf, Frame(width, height, fmt, [buf], [Plane(0, offsets[0], strides[0])],
                                              modifier=modifier.value, own=False) as frame:
        with frame.cpu_access(write=False):
            view = frame.plane_view(0, write=False)
            first = bytes(view.row(0)[:4])
            rows = {bytes(view.row(y)) for y in range(view.rows)}
            view.release()
        exporter = buf.info().exporter
    # GL cleared to (0.2, 0.4, 0.6, 1.0): 51, 102, 153, 255 in the format's byte order
    expected = {"ABGR8888": bytes((51, 102, 153, 255)), "XBGR8888": bytes((51, 102, 153)),
                "ARGB8888": bytes((153, 102, 51, 255)), "XRGB8888": bytes((153, 102, 51))}.get(fmt.name)
    if expected is None or first[:len(expected)] != expected or len(rows) != 1:
        raise SystemExit(f"exported {fmt.name}: first pixel {first.hex()}, not the cleared colour")
    print(f"a GL texture exported by eglExportDMABUFImageMESA ({fmt.name}, {exporter}) read through pydmabuf: "
          "every byte as GL cleared it")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="67x33", help="WIDTHxHEIGHT (odd sizes test the pitch)")
    parser.add_argument("--require", action="store_true", help="fail, not skip, without EGL or real dma-bufs")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    def nothing(reason: str) -> int:
        print(f"egl_import: nothing to do here: {reason}")
        return 1 if args.require else 0

    if pydmabuf.backend != "kernel":
        return nothing("no real dma-bufs (the fallback backend's memfds are not dma-bufs EGL can import)")
    try:
        egl = Egl()
    except OSError as exc:
        return nothing(f"no EGL/GLES libraries ({exc})")
    display = software_display(egl)
    if isinstance(display, str):
        return nothing(display)
    try:
        problem = make_current(egl, display)
        if problem is not None:
            return nothing(problem)
        for fmt in ("ABGR8888", "XRGB8888"):
            import_frame(egl, display, fmt, width, height)
        export_texture(egl, display, width, height)
    finally:
        egl.egl.eglTerminate(display)
    return 0


if __name__ == "__main__":
    sys.exit(main())
