"""The names other APIs give DRM formats: plain data for ``Format.from_name``.

- ``GSTREAMER``: GStreamer's video format names (``GstVideoFormat``, what caps say in
  ``format=``) -> DRM format name, for the formats GStreamer maps to a DRM fourcc with
  the LINEAR modifier (``format_map`` in gst-plugins-base's video-info-dma.c, 1.26).
  GStreamer names RGB formats by byte order in memory (``BGRx``: bytes B, G, R, x) and
  DRM by a little-endian word (``XRGB8888``: [31:0] x:R:G:B), so the letters differ.
- ``V4L2``: V4L2 pixel format names (``V4L2_PIX_FMT_<name>`` in videodev2.h) -> (its
  fourcc's four characters, DRM format name, buffers per frame). The "M" formats put
  each plane in a buffer of its own (the multi-planar API); the others keep the planes
  one after another in one buffer. tests/test_format_names.py checks each code
  against the installed videodev2.h with a C compiler.

Only names whose memory layout is exactly the DRM format's are here.
"""

from __future__ import annotations

GSTREAMER: dict[str, str] = {
    "YUY2": "YUYV",
    "YVYU": "YVYU",
    "UYVY": "UYVY",
    "VYUY": "VYUY",
    "VUYA": "AYUV",
    "NV12": "NV12",
    "NV21": "NV21",
    "NV16": "NV16",
    "NV61": "NV61",
    "NV24": "NV24",
    "YUV9": "YUV410",
    "YVU9": "YVU410",
    "Y41B": "YUV411",
    "I420": "YUV420",
    "YV12": "YVU420",
    "Y42B": "YUV422",
    "Y444": "YUV444",
    "RGB16": "RGB565",
    "BGR16": "BGR565",
    "RGB": "BGR888",
    "BGR": "RGB888",
    "RGBA": "ABGR8888",
    "RGBx": "XBGR8888",
    "BGRA": "ARGB8888",
    "BGRx": "XRGB8888",
    "ARGB": "BGRA8888",
    "xRGB": "BGRX8888",
    "ABGR": "RGBA8888",
    "xBGR": "RGBX8888",
    "Y410": "Y410",
    "Y412_LE": "Y412",
    "Y210": "Y210",
    "Y212_LE": "Y212",
    "P010_10LE": "P010",
    "P012_LE": "P012",
    "BGR10A2_LE": "ARGB2101010",
}

V4L2: dict[str, tuple[str, str, int]] = {
    # YUV, semi-planar and planar: one buffer, or one per plane ("M")
    "NV12": ("NV12", "NV12", 1),
    "NV21": ("NV21", "NV21", 1),
    "NV16": ("NV16", "NV16", 1),
    "NV61": ("NV61", "NV61", 1),
    "NV24": ("NV24", "NV24", 1),
    "NV42": ("NV42", "NV42", 1),
    "NV12M": ("NM12", "NV12", 2),
    "NV21M": ("NM21", "NV21", 2),
    "NV16M": ("NM16", "NV16", 2),
    "NV61M": ("NM61", "NV61", 2),
    "YUV420": ("YU12", "YUV420", 1),
    "YVU420": ("YV12", "YVU420", 1),
    "YUV422P": ("422P", "YUV422", 1),
    "YUV420M": ("YM12", "YUV420", 3),
    "YVU420M": ("YM21", "YVU420", 3),
    "P010": ("P010", "P010", 1),
    # YUV, packed
    "YUYV": ("YUYV", "YUYV", 1),
    "YVYU": ("YVYU", "YVYU", 1),
    "UYVY": ("UYVY", "UYVY", 1),
    "VYUY": ("VYUY", "VYUY", 1),
    # greyscale: DRM's single-channel formats
    "GREY": ("GREY", "R8", 1),
    "Y16": ("Y16 ", "R16", 1),
    # RGB: V4L2 names by bytes in memory (RGB24: R, G, B), DRM by a little-endian word
    "RGB565": ("RGBP", "RGB565", 1),
    "RGB24": ("RGB3", "BGR888", 1),
    "BGR24": ("BGR3", "RGB888", 1),
    "ABGR32": ("AR24", "ARGB8888", 1),
    "XBGR32": ("XR24", "XRGB8888", 1),
    "BGRA32": ("RA24", "RGBA8888", 1),
    "BGRX32": ("RX24", "RGBX8888", 1),
    "RGBA32": ("AB24", "ABGR8888", 1),
    "RGBX32": ("XB24", "XBGR8888", 1),
    "ARGB32": ("BA24", "BGRA8888", 1),
    "XRGB32": ("BX24", "BGRX8888", 1),
}
