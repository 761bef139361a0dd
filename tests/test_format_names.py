"""The names users type for a format: ``Format.from_name`` takes DRM names, fourcc
strings, GStreamer's and V4L2's names, in any case where that is unambiguous, and
suggests the nearest names on a miss; ``formats.v4l2_format`` maps V4L2 pixel formats
(codes or names) to (DRM format, buffers per frame). The V4L2 codes are checked
against the installed videodev2.h with a C compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import pydmabuf
from pydmabuf.formats import Format, v4l2_format
from pydmabuf.uapi.format_names import GSTREAMER, V4L2


def test_drm_names_in_any_case_and_fourcc_strings() -> None:
    for fmt in Format.all():
        assert Format.from_name(fmt.name) is fmt
        assert Format.from_name(f"DRM_FORMAT_{fmt.name}") is fmt
        assert Format.from_name(fmt.fourcc_string) is fmt  # exactly as printed ("R8  " too)
        assert Format.from_name(fmt.fourcc_string.rstrip(" ")) is fmt
        try:
            assert Format.from_name(fmt.name.lower()) is fmt
        except pydmabuf.InvalidArgumentError as exc:  # only where two formats fold to one name
            assert "more than one format" in str(exc)
    assert Format.from_name("XR24") is Format.from_name("XRGB8888")
    assert Format.from_name("xr24") is Format.from_name("XRGB8888")
    assert Format.from_name("nv12") is Format.from_name(" NV12 ") is Format.from_name("NV12")


def test_gstreamer_names() -> None:
    expected = {"I420": "YUV420", "YV12": "YVU420", "YUY2": "YUYV", "NV12": "NV12", "BGRx": "XRGB8888",
                "RGBx": "XBGR8888", "BGRA": "ARGB8888", "RGBA": "ABGR8888", "xRGB": "BGRX8888", "RGB": "BGR888",
                "BGR": "RGB888", "P010_10LE": "P010", "VUYA": "AYUV"}
    for gst, drm in expected.items():
        assert Format.from_name(gst).name == drm, gst
    for gst, drm in GSTREAMER.items():
        assert Format.from_name(gst).name == drm, gst
    assert Format.from_name("i420").name == "YUV420" and Format.from_name("yuy2").name == "YUYV"


def test_gstreamer_rgb_names_only_in_their_exact_case() -> None:
    # "XRGB": DRM's XRGB8888, or GStreamer's xRGB (DRM's BGRX8888)? Refused, with both names.
    for folded in ("XRGB", "bgrx", "rgba", "Bgra"):
        with pytest.raises(pydmabuf.InvalidArgumentError, match="exact case") as info:
            Format.from_name(folded)
        assert info.value.errno == 22


def test_v4l2_names_and_codes() -> None:
    assert v4l2_format("NV12M") == (Format.from_name("NV12"), 2)
    assert v4l2_format("V4L2_PIX_FMT_NV12") == (Format.from_name("NV12"), 1)
    assert v4l2_format("yuv420m") == (Format.from_name("YUV420"), 3)
    assert v4l2_format(0x32314D4E) == (Format.from_name("NV12"), 2)  # 'NM12'
    for name, (code, drm, buffers) in V4L2.items():
        value = int.from_bytes(code.encode("latin-1"), "little")
        assert v4l2_format(value) == v4l2_format(name) == (Format.from_name(drm), buffers)
        assert Format.from_name(f"V4L2_PIX_FMT_{name}").name == drm
        assert buffers in (1, Format.from_name(drm).num_planes)  # "M": a buffer per plane
    assert Format.from_name("XBGR32").name == "XRGB8888"  # V4L2 names bytes: B, G, R, X
    for bad in ("NV13", "MJPG", 0x47504A4D, -1, 1 << 40):
        with pytest.raises(pydmabuf.InvalidArgumentError, match="no DRM format for V4L2"):
            v4l2_format(bad)  # type: ignore[arg-type]
    for wrong in (None, 1.5, b"NV12", True):
        with pytest.raises(TypeError):
            v4l2_format(wrong)  # type: ignore[arg-type]


def test_a_miss_names_the_nearest() -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError, match=r"nearest: .*NV21") as info:
        Format.from_name("NV13")
    assert "Format.all()" in str(info.value)
    for nothing in ("", "DRM_FORMAT_", "\0", "é" * 5, "x" * 1000):
        with pytest.raises(pydmabuf.InvalidArgumentError, match="unknown DRM format name"):
            Format.from_name(nothing)


def test_v4l2_codes_match_videodev2_h(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not Path("/usr/include/linux/videodev2.h").exists():
        if os.environ.get("CI"):
            pytest.fail("CI must check the V4L2 codes against videodev2.h (gcc, linux-libc-dev)")
        pytest.skip("no C compiler or linux/videodev2.h here")
    lines = ["#include <stdio.h>", "#include <linux/videodev2.h>", "int main(void) {"]
    lines += [f'    printf("{name} %u\\n", (unsigned)V4L2_PIX_FMT_{name});' for name in V4L2]
    lines += ["    return 0;", "}"]
    (tmp_path / "v.c").write_text("\n".join(lines) + "\n")
    subprocess.run([cc, "-o", str(tmp_path / "v"), str(tmp_path / "v.c")], check=True, capture_output=True)
    out = subprocess.run([str(tmp_path / "v")], check=True, capture_output=True, text=True).stdout
    seen = {name: int(value) for name, value in (line.split() for line in out.splitlines())}
    wrong = {name: (code, seen[name]) for name, (code, _drm, _n) in V4L2.items()
             if int.from_bytes(code.encode("latin-1"), "little") != seen[name]}
    assert not wrong, wrong
