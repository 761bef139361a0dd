"""pydmabuf.frame: frame descriptors, allocation of every format, plane views, and the
argument forms of EGL, Wayland, KMS, V4L2 and GStreamer against their specifications'
numbers. Runs on the active backend (fallback natively, kernel in the VM)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import numpy as np
import pytest

import pydmabuf
from pydmabuf.formats import LINEAR, MOD_INVALID, Format, modifier_value
from pydmabuf.frame import DEFAULT_PITCH_ALIGN, Frame, Plane, PlaneView, allocate_frame, plane_layout
from pydmabuf.interop import KmsFramebuffer, V4l2Plane

Y_TILED = modifier_value("I915_FORMAT_MOD_Y_TILED")  # 0x0100000000000002
SIZES = [(1, 1), (33, 17), (641, 479)]


def ceil(a: int, b: int) -> int:
    return -(-a // b)


@pytest.fixture
def heap() -> Iterator[pydmabuf.Heap]:
    with pydmabuf.Heap("system") as h:
        yield h


# --- allocation ----------------------------------------------------------------------
def test_nv12_641x479_one_buffer() -> None:
    with allocate_frame(641, 479, "NV12") as frame:
        assert (frame.width, frame.height, frame.format, frame.modifier) == (641, 479, Format.from_name("NV12"), 0)
        assert len(frame.objects) == 1
        # luma: 641 bytes a row -> 768 (256-aligned), 479 rows; CbCr: 321 pairs = 642 -> 768, 240 rows
        assert frame.planes == (Plane(0, 0, 768), Plane(0, 768 * 479, 768))
        assert frame.objects[0].size >= 768 * 479 + 768 * 240
        assert frame.plane_extent(0) == (479, 641) and frame.plane_extent(1) == (240, 642)
        assert frame.own and not frame.closed


def test_separate_planes_and_pitch_align() -> None:
    with allocate_frame(641, 479, "NV12", separate_planes=True, pitch_align=1) as frame:
        assert frame.planes == (Plane(0, 0, 641), Plane(1, 0, 642))
        assert frame.objects[0].size >= 641 * 479 and frame.objects[1].size >= 642 * 240
        assert frame.objects[0] is not frame.objects[1]
    with allocate_frame(641, 479, "YUV420", pitch_align=64) as frame:
        # 641 -> 704; chroma 321 -> 384, 240 rows; offsets follow each plane, 64-aligned
        assert frame.planes == (Plane(0, 0, 704), Plane(0, 704 * 479, 384), Plane(0, 704 * 479 + 384 * 240, 384))
    assert DEFAULT_PITCH_ALIGN == 256


def test_plane_layout() -> None:
    assert plane_layout(641, 479, "NV12") == [(768, 768 * 479), (768, 768 * 240)]
    assert plane_layout(641, 479, "NV12", pitch_align=1) == [(641, 641 * 479), (642, 642 * 240)]
    assert plane_layout(641, 3, "NV15", pitch_align=2) == [(802, 802 * 3), (804, 804 * 2)]
    assert plane_layout(1, 1, "XRGB8888", pitch_align=1) == [(4, 4)]
    for bad in (0, -1, True, 1.0, 1 << 21):
        with pytest.raises(pydmabuf.InvalidArgumentError):
            plane_layout(64, 64, "NV12", pitch_align=bad)  # type: ignore[arg-type]
    with pytest.raises(pydmabuf.InvalidArgumentError, match="no linear layout"):
        plane_layout(64, 64, "YUV420_8BIT")


def _check_allocation(fmt: Format, width: int, height: int, separate: bool) -> None:
    with allocate_frame(width, height, fmt, separate_planes=separate, pitch_align=16) as frame:
        assert len(frame.planes) == fmt.num_planes
        assert len(frame.objects) == (fmt.num_planes if separate else 1)
        offset = 0
        for index, (plane, layout) in enumerate(zip(frame.planes, fmt.planes, strict=True)):
            # independent of the library: ceil division on every axis, as the kernel does
            rows = height if index == 0 else ceil(height, layout.vsub)
            plane_width = width if index == 0 else ceil(width, layout.hsub)
            row_bytes = ceil(plane_width * layout.bytes_per_block, layout.block_width * layout.block_height)
            assert frame.plane_extent(index) == (rows, row_bytes)
            assert plane.pitch == ceil(row_bytes, 16) * 16
            if separate:
                assert plane == Plane(index, 0, plane.pitch)
            else:
                assert plane.offset == ceil(offset, 16) * 16
                offset = plane.offset + plane.pitch * rows
            assert plane.offset + plane.pitch * rows <= frame.objects[plane.object_index].size
            with frame.plane_view(index) as view:
                assert view.shape == (rows, row_bytes) and view.strides == (plane.pitch, 1)
                assert len(view.data) == (rows - 1) * plane.pitch + row_bytes


def test_allocate_every_format() -> None:
    """Every format of the table at a few sizes, one buffer and one per plane. One test,
    not one per format: the per-test fd-leak check dominates the run time otherwise."""
    tested, skipped = [], []
    for fmt in Format.all():
        if not fmt.linear:  # drm_format_info gives no linear plane size: tiled/compressed only
            skipped.append(fmt.name)
            continue
        for width, height in SIZES:
            separate = fmt.num_planes > 1 and width == 33
            try:
                _check_allocation(fmt, width, height, separate)
            except AssertionError as exc:
                raise AssertionError(f"{fmt.name} {width}x{height} separate={separate}: {exc}") from exc
        tested.append(fmt.name)
    assert skipped == ["VUY101010", "YUV420_8BIT", "YUV420_10BIT"]
    assert len(tested) == len(Format.all()) - len(skipped) >= 120


def test_allocate_odd_sizes_write_every_plane_edge() -> None:
    with allocate_frame(641, 479, "YUV420", pitch_align=1) as frame, frame.cpu_access():
        for index, view in enumerate(frame.plane_views()):
            array = np.asarray(view)
            array[-1, -1] = index + 1  # the last byte of the last row is inside the buffer
            assert view.row(view.rows - 1)[-1] == index + 1
            del array
            view.release()


def test_allocator_argument(heap: pydmabuf.Heap) -> None:
    calls: list[tuple[int, str | None]] = []

    class Recording:
        def allocate(self, size: int, *, name: str | None = None) -> pydmabuf.Buffer:
            calls.append((size, name))
            return heap.allocate(size, name=name)

    with allocate_frame(64, 64, "NV12", allocator=Recording(), name="cam-0", separate_planes=True) as frame:
        assert calls == [(256 * 64, "cam-0"), (256 * 32, "cam-0")]
        assert [buf.name for buf in frame.objects] == ["cam-0", "cam-0"]
    with allocate_frame(64, 64, "XRGB8888", allocator=heap) as frame:
        assert frame.objects[0].size >= 256 * 64
    with allocate_frame(16, 16, "R8", name="default-heap") as frame:
        assert frame.objects[0].name == "default-heap"


def test_allocator_failures_close_what_was_allocated(heap: pydmabuf.Heap) -> None:
    made: list[pydmabuf.Buffer] = []

    class FailsSecond:
        def allocate(self, size: int, *, name: str | None = None) -> pydmabuf.Buffer:
            if made:
                raise pydmabuf.OutOfMemoryError(12, "no more")
            made.append(heap.allocate(size))
            return made[-1]

    with pytest.raises(pydmabuf.OutOfMemoryError):
        allocate_frame(64, 64, "NV12", allocator=FailsSecond(), separate_planes=True)
    assert made[0].closed

    class NotABuffer:
        def allocate(self, size: int, *, name: str | None = None) -> object:
            return bytearray(size)

    with pytest.raises(pydmabuf.InvalidArgumentError, match=r"not a pydmabuf\.Buffer"):
        allocate_frame(64, 64, "NV12", allocator=NotABuffer())  # type: ignore[arg-type]

    class TooSmall:
        def allocate(self, size: int, *, name: str | None = None) -> pydmabuf.Buffer:
            return heap.allocate(4096)

    with pytest.raises(pydmabuf.InvalidArgumentError, match="4096-byte"):
        allocate_frame(256, 256, "XRGB8888", allocator=TooSmall())
    with pytest.raises(pydmabuf.InvalidArgumentError, match="allocate"):
        allocate_frame(64, 64, "NV12", allocator=object())  # type: ignore[arg-type]


def test_allocate_rejects() -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError, match="linear buffers only"):
        allocate_frame(64, 64, "NV12", modifier=Y_TILED)
    with pytest.raises(pydmabuf.InvalidArgumentError, match="no linear layout"):
        allocate_frame(64, 64, "YUV420_10BIT")
    for width, height in ((0, 1), (1, 0), (-1, 5), (1 << 31, 1), (1.5, 2)):
        with pytest.raises(pydmabuf.InvalidArgumentError):
            allocate_frame(width, height, "NV12")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown DRM format name"):
        allocate_frame(64, 64, "NV99")
    with pytest.raises(TypeError):
        allocate_frame(64, 64, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        allocate_frame(64, 64, "NV12", name=b"x")  # type: ignore[arg-type]
    with pytest.raises(pydmabuf.OutOfMemoryError):  # 1 TiB: refused before the allocation
        allocate_frame(1 << 20, 1 << 20, "R8")
    with pytest.raises(pydmabuf.InvalidArgumentError, match="32-bit pitch"):
        allocate_frame((1 << 31) - 1, 1, "ABGR16161616")


def test_allocate_with_implicit_modifier() -> None:
    with allocate_frame(64, 64, "XRGB8888", modifier=MOD_INVALID) as frame:
        assert frame.modifier == MOD_INVALID
        assert frame.plane_view(0).shape == (64, 256)


# --- the descriptor ------------------------------------------------------------------
def test_frame_wraps_buffers_and_owns_them(heap: pydmabuf.Heap) -> None:
    buf = heap.allocate(768 * 720)
    frame = Frame(641, 479, "NV12", [buf], [Plane(0, 0, 768), (0, 768 * 480, 768)])
    assert frame.planes[1] == Plane(0, 768 * 480, 768) and isinstance(frame.planes[1], Plane)
    assert frame.format is Format.from_name("NV12")
    with frame:
        assert repr(frame) == ("<Frame 641x479 NV12 DRM_FORMAT_MOD_LINEAR objects=1 "
                               "planes=[(0, 0, 768), (0, 368640, 768)]>")
    assert frame.closed and buf.closed
    frame.close()  # idempotent
    assert repr(frame).endswith(" closed>")
    for call in (lambda: frame.plane_view(0), frame.egl_attributes, frame.wayland_planes, frame.gst_caps,
                 frame.v4l2_planes, lambda: frame.kms_framebuffer([1]), frame.cpu_access().__enter__,
                 frame.__enter__):
        with pytest.raises(pydmabuf.ClosedError):
            call()


def test_frame_own_false_leaves_buffers_open(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf:
        with Frame(16, 16, Format.from_name("XRGB8888").fourcc, [buf], [Plane(0, 0, 64)], own=False) as frame:
            assert not frame.own
        assert frame.closed and not buf.closed


def test_frame_validation(heap: pydmabuf.Heap) -> None:
    with heap.allocate(8192) as a, heap.allocate(4096) as b:
        def bad(match: str, *args: object, **kwargs: object) -> None:
            with pytest.raises(pydmabuf.InvalidArgumentError, match=match):
                Frame(*args, **kwargs)  # type: ignore[arg-type]
            assert not a.closed and not b.closed  # a refused frame closes nothing

        bad("has 2 plane", 64, 64, "NV12", [a], [Plane(0, 0, 64)])
        bad("has 2 plane", 64, 64, "NV12", [a], [Plane(0, 0, 64)] * 3)
        bad("object_index", 64, 64, "NV12", [a], [Plane(0, 0, 64), Plane(1, 0, 64)])
        bad("not used", 64, 64, "XRGB8888", [a, b], [Plane(0, 0, 256)])
        bad("pitch 255 < 256", 64, 8, "XRGB8888", [a], [Plane(0, 0, 255)])
        bad("past objects", 64, 64, "NV12", [a], [Plane(0, 0, 64), Plane(0, 6145, 64)])  # 6145+31*64+64 > 8192
        bad("past objects", 64, 33, "XRGB8888", [a], [Plane(0, 0, 256)])
        bad("1-4 planes", 64, 64, "NV12", [a], [])
        bad("1-4 objects", 64, 64, "NV12", [], [Plane(0, 0, 64)])
        bad("1-4 objects", 64, 64, "NV12", [a] * 5, [Plane(0, 0, 64)])
        bad("sequence", 64, 64, "NV12", a, [Plane(0, 0, 64)])
        bad("not a pydmabuf.Buffer", 64, 64, "R8", [3], [Plane(0, 0, 64)])
        bad("Plane.pitch", 64, 64, "R8", [a], [Plane(0, 0, 0)])
        bad("Plane.offset", 64, 64, "R8", [a], [Plane(0, -1, 64)])
        bad("Plane.offset", 64, 64, "R8", [a], [Plane(0, 1 << 32, 64)])
        bad("a plane is", 64, 64, "R8", [a], [(0, 0)])
        bad("width", 0, 64, "R8", [a], [Plane(0, 0, 64)])
        bad("height", 64, True, "R8", [a], [Plane(0, 0, 64)])
        bad("no linear layout", 64, 64, "YUV420_8BIT", [a], [Plane(0, 0, 64)])
        bad("modifier", 64, 64, "R8", [a], [Plane(0, 0, 64)], modifier=-1)
        bad("unknown DRM fourcc", 64, 64, 0x41414141, [a], [Plane(0, 0, 64)])
        with pytest.raises(TypeError):
            Frame(64, 64, None, [a], [Plane(0, 0, 64)])  # type: ignore[arg-type]
        # exactly fitting: the last row needs only its pixels, not the whole pitch (ADDFB2's rule)
        Frame(64, 32, "XRGB8888", [a], [Plane(0, 0, 256)], own=False).close()
        Frame(60, 32, "XRGB8888", [a], [Plane(0, 8192 - 31 * 256 - 240, 256)], own=False).close()
        bad("past objects", 60, 32, "XRGB8888", [a], [Plane(0, 8192 - 31 * 256 - 239, 256)])
        # vendor modifiers: tiles and auxiliary planes are the driver's; only offsets are checked
        with Frame(64, 64, "XRGB8888", [a, b], [Plane(0, 0, 256), Plane(1, 0, 128)],
                   modifier=Y_TILED, own=False) as tiled:
            assert tiled.modifier == Y_TILED
            with pytest.raises(pydmabuf.InvalidArgumentError, match="not linear"):
                tiled.plane_view(0)
        bad("past the end", 64, 64, "XRGB8888", [a], [Plane(0, 8192, 256)], modifier=Y_TILED)
    with heap.allocate(4096) as c:
        c.close()
        with pytest.raises(pydmabuf.ClosedError, match="closed Buffer"):
            Frame(16, 16, "R8", [c], [Plane(0, 0, 16)])


# --- CPU views -----------------------------------------------------------------------
def test_plane_views_are_numpy_arrays_on_the_buffer() -> None:
    with allocate_frame(641, 479, "NV12") as frame:
        luma, chroma = frame.plane_views()
        y, uv = np.asarray(luma), np.asarray(chroma)
        assert (y.shape, y.strides, y.dtype.str) == ((479, 641), (768, 1), "|u1")
        assert (uv.shape, uv.strides) == ((240, 642), (768, 1))
        assert y.flags.writeable and not y.flags.c_contiguous
        with frame.cpu_access(write=True, read=False):
            y[:] = 16
            y[478, 640] = 235
            cbcr = uv.reshape(240, 321, 2)
            cbcr[..., 0], cbcr[..., 1] = 90, 240
        del y, uv, cbcr
        luma.release()
        chroma.release()
        # the bytes landed where the layout says, seen through a separate mapping
        buf = frame.objects[0]
        with buf.map(write=False) as raw, buf.cpu_access(write=False):
            assert raw[0] == 16 and raw[640] == 16 and raw[641] == 0  # padding untouched
            assert raw[478 * 768 + 640] == 235
            assert raw[768 * 479:768 * 479 + 4] == bytes([90, 240, 90, 240])
            assert raw[768 * 479 + 239 * 768 + 641] == 240 and raw[768 * 479 + 239 * 768 + 642] == 0


def test_indices_out_of_range_are_library_errors() -> None:
    # InvalidIndexError: a pydmabuf.Error (EINVAL, an InvalidArgumentError) and still the
    # IndexError these raised before.
    with allocate_frame(16, 16, "NV12") as frame:
        for call in (lambda: frame.plane_view(2), lambda: frame.plane_extent(7), lambda: frame.plane_extent(-1),
                     lambda: frame.plane_view(2**70)):
            with pytest.raises(pydmabuf.errors.InvalidIndexError, match=r"planes are 0\.\.1") as bad:
                call()
            assert isinstance(bad.value, IndexError) and isinstance(bad.value, pydmabuf.InvalidArgumentError)
        with frame.plane_view(np.int64(1)) as view:  # any integer with __index__
            assert frame.plane_extent(np.uint8(1)) == (8, 16) and view.rows == 8
            assert view.row(np.int32(7)).nbytes == 16
            with pytest.raises(pydmabuf.errors.InvalidIndexError, match=r"rows are 0\.\.7"):
                view.row(8)
            for junk in (1.0, "0", None):
                with pytest.raises(TypeError):
                    view.row(junk)  # type: ignore[arg-type]
        for junk in (1.0, "0", None, True):
            with pytest.raises(TypeError, match="plane index"):
                frame.plane_view(junk)  # type: ignore[arg-type]


def test_integer_arguments_take_numpy_integers() -> None:
    with allocate_frame(np.int64(16), np.uint16(8), "NV12", pitch_align=np.int32(64)) as frame:
        assert (frame.width, frame.height, frame.planes[0].pitch) == (16, 8, 64)
        assert type(frame.width) is int


def test_read_only_views_and_rows() -> None:
    with allocate_frame(5, 3, "RGB888", pitch_align=1) as frame:
        with frame.plane_view(0) as view:
            assert repr(view) == "<PlaneView 3x15 bytes pitch=15 writable>"
            view.row(2)[:] = bytes(range(15))
            with pytest.raises(IndexError):
                view.row(3)
        assert repr(view).endswith("released>")
        with frame.plane_view(0, write=False) as view:
            assert view.readonly
            array = np.asarray(view)
            assert not array.flags.writeable
            assert array[2].tobytes() == bytes(range(15))
            assert view.tobytes() == bytes(30) + bytes(range(15))
            del array


def test_close_while_an_array_lives() -> None:
    frame = allocate_frame(64, 64, "R8")
    array = np.asarray(frame.plane_view(0))
    frame.close()  # the mapping stays until the array goes
    array[0, 0] = 1
    assert array[0, 0] == 1
    del array
    gc.collect()  # the fd-leak fixture then sees the mapping's fd closed


def test_numpy_is_not_imported_by_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydmabuf import formats, frame, interop

    for module in (formats, frame, interop):
        assert not any(getattr(value, "__name__", "") == "numpy" for value in vars(module).values())
    monkeypatch.setitem(sys.modules, "numpy", None)  # any `import numpy` now raises ImportError
    with allocate_frame(8, 8, "NV12") as f, f.plane_view(1) as view:
        assert view.__array_interface__["shape"] == (4, 8)
        assert f.egl_attributes() and f.gst_caps() and f.v4l2_planes() and f.wayland_planes()


def test_frame_cpu_access_brackets_every_object() -> None:
    with allocate_frame(64, 64, "NV12", separate_planes=True) as frame:
        with frame.cpu_access(read=True, write=False, timeout=5) as same:
            assert same is frame
        with pytest.raises(pydmabuf.InvalidArgumentError):
            frame.cpu_access(timeout=-1).__enter__()
        with pytest.raises(pydmabuf.InvalidArgumentError):
            frame.cpu_access(read=False, write=False).__enter__()


# --- argument forms, against the specifications' numbers -----------------------------
# EGL_EXT_image_dma_buf_import / _modifiers (Khronos eglext.h), egl.h
EGL_WIDTH, EGL_HEIGHT, EGL_NONE, EGL_LINUX_DRM_FOURCC_EXT = 0x3057, 0x3056, 0x3038, 0x3271
PLANE0 = (0x3272, 0x3273, 0x3274, 0x3443, 0x3444)  # FD, OFFSET, PITCH, MODIFIER_LO, MODIFIER_HI
PLANE1 = (0x3275, 0x3276, 0x3277, 0x3445, 0x3446)
PLANE2 = (0x3278, 0x3279, 0x327A, 0x3447, 0x3448)
PLANE3 = (0x3440, 0x3441, 0x3442, 0x3449, 0x344A)
NV12 = 0x3231564E  # fourcc_code('N', 'V', '1', '2')


def test_egl_attributes_nv12() -> None:
    with allocate_frame(641, 479, "NV12") as frame:
        fd = frame.objects[0].fileno()
        uv = 768 * 479
        assert frame.egl_attributes() == [
            EGL_WIDTH, 641, EGL_HEIGHT, 479, EGL_LINUX_DRM_FOURCC_EXT, NV12,
            PLANE0[0], fd, PLANE0[1], 0, PLANE0[2], 768, PLANE0[3], 0, PLANE0[4], 0,
            PLANE1[0], fd, PLANE1[1], uv, PLANE1[2], 768, PLANE1[3], 0, PLANE1[4], 0,
        ]
        assert frame.egl_attributes(terminate=True)[-1] == EGL_NONE
        assert len(frame.egl_attributes(terminate=True)) == 27


def test_egl_attributes_implicit_and_vendor_modifiers(heap: pydmabuf.Heap) -> None:
    with allocate_frame(64, 64, "YUV420", separate_planes=True, modifier=MOD_INVALID) as frame:
        fds = [buf.fileno() for buf in frame.objects]
        assert frame.egl_attributes() == [  # no modifier pairs: the driver's implicit layout
            EGL_WIDTH, 64, EGL_HEIGHT, 64, EGL_LINUX_DRM_FOURCC_EXT, 0x32315559,
            PLANE0[0], fds[0], PLANE0[1], 0, PLANE0[2], 256,
            PLANE1[0], fds[1], PLANE1[1], 0, PLANE1[2], 256,
            PLANE2[0], fds[2], PLANE2[1], 0, PLANE2[2], 256,
        ]
    amd = 0x02 << 56 | 0x8765_4321  # low half >= 2**31: stays unsigned
    with heap.allocate(1 << 16) as buf:
        fd = buf.fileno()
        planes = [Plane(0, i * 4096, 256) for i in range(4)]  # e.g. a CCS layout with aux planes
        with Frame(64, 64, "NV12", [buf], planes, modifier=amd, own=False) as frame:
            attributes = frame.egl_attributes()
            assert attributes[6:] == [
                value for index, plane in enumerate((PLANE0, PLANE1, PLANE2, PLANE3))
                for value in (plane[0], fd, plane[1], index * 4096, plane[2], 256,
                              plane[3], 0x8765_4321, plane[4], 0x0200_0000)]


def test_wayland_add_arguments() -> None:
    with allocate_frame(641, 479, "NV12") as frame:
        fd = frame.objects[0].fileno()
        # zwp_linux_buffer_params_v1.add(fd, plane_idx, offset, stride, modifier_hi, modifier_lo)
        assert frame.wayland_planes() == [(fd, 0, 0, 768, 0, 0), (fd, 1, 768 * 479, 768, 0, 0)]
    with allocate_frame(8, 8, "XRGB8888", modifier=MOD_INVALID) as frame:
        assert frame.wayland_planes() == [(frame.objects[0].fileno(), 0, 0, 256, 0x00FF_FFFF, 0xFFFF_FFFF)]


def test_wayland_vendor_modifier(heap: pydmabuf.Heap) -> None:
    with heap.allocate(1 << 16) as buf, Frame(64, 64, "XRGB8888", [buf], [Plane(0, 0, 512)],
                                               modifier=Y_TILED, own=False) as frame:
        assert frame.wayland_planes() == [(buf.fileno(), 0, 0, 512, 0x0100_0000, 2)]


def test_kms_addfb2_arguments() -> None:
    with allocate_frame(641, 479, "NV12", separate_planes=True) as frame:
        fb = frame.kms_framebuffer([11, 12])
        assert fb == KmsFramebuffer(641, 479, NV12, (11, 12, 0, 0), (768, 768, 0, 0), (0, 0, 0, 0),
                                    (0, 0, 0, 0), 2)  # DRM_MODE_FB_MODIFIERS = 1 << 1
        for handles in ([11], [11, 12, 13], [0, 1], [1, 1 << 32], "ab", 5):
            with pytest.raises(pydmabuf.InvalidArgumentError):
                frame.kms_framebuffer(handles)  # type: ignore[arg-type]
    with allocate_frame(641, 479, "NV12") as frame:
        assert frame.kms_framebuffer([7]) == KmsFramebuffer(641, 479, NV12, (7, 7, 0, 0), (768, 768, 0, 0),
                                                            (0, 768 * 479, 0, 0), (0, 0, 0, 0), 2)
    with allocate_frame(16, 16, "XRGB8888", modifier=MOD_INVALID) as frame:
        fb = frame.kms_framebuffer([3])
        assert (fb.modifiers, fb.flags) == ((0, 0, 0, 0), 0)  # implicit: no DRM_MODE_FB_MODIFIERS


def test_kms_vendor_modifier_on_every_plane(heap: pydmabuf.Heap) -> None:
    with heap.allocate(1 << 16) as buf, Frame(64, 64, "NV12", [buf], [Plane(0, 0, 128), Plane(0, 8192, 128)],
                                               modifier=Y_TILED, own=False) as frame:
        fb = frame.kms_framebuffer([9])
        assert fb.modifiers == (Y_TILED, Y_TILED, 0, 0) and fb.flags == 2 and fb.handles == (9, 9, 0, 0)


def test_v4l2_plane_fields() -> None:
    with allocate_frame(641, 479, "NV12") as frame:
        fd, size = frame.objects[0].fileno(), frame.objects[0].size
        uv = 768 * 479
        # NV12M-style: one v4l2_plane per plane, same fd, bytesused includes data_offset
        assert frame.v4l2_planes() == [V4l2Plane(fd, size, 0, uv), V4l2Plane(fd, size, uv, uv + 768 * 240)]
        # NV12 through the multi-planar API: one memory plane for the whole image
        assert frame.v4l2_planes(contiguous=True) == [V4l2Plane(fd, size, 0, uv + 768 * 240)]
    with allocate_frame(641, 479, "NV12", separate_planes=True) as frame:
        (a, b) = frame.objects
        assert frame.v4l2_planes() == [V4l2Plane(a.fileno(), a.size, 0, 768 * 479),
                                       V4l2Plane(b.fileno(), b.size, 0, 768 * 240)]
        with pytest.raises(pydmabuf.InvalidArgumentError, match="objects\\[0\\]"):
            frame.v4l2_planes(contiguous=True)


def test_v4l2_refuses_vendor_modifiers(heap: pydmabuf.Heap) -> None:
    with heap.allocate(1 << 16) as buf, Frame(64, 64, "XRGB8888", [buf], [Plane(0, 0, 512)],
                                               modifier=Y_TILED, own=False) as frame, \
            pytest.raises(pydmabuf.InvalidArgumentError, match="not linear"):
        frame.v4l2_planes()


def test_gstreamer_caps(heap: pydmabuf.Heap) -> None:
    with allocate_frame(641, 479, "NV12") as frame:
        assert frame.gst_caps() == ("video/x-raw(memory:DMABuf), format=(string)DMA_DRM, "
                                    "drm-format=(string)NV12, width=(int)641, height=(int)479")
        assert frame.gst_caps(framerate=(30000, 1001)).endswith(", framerate=(fraction)30000/1001")
        for bad in ((30, 0), (-1, 1), (1.5, 1), (True, 1)):
            with pytest.raises(pydmabuf.InvalidArgumentError):
                frame.gst_caps(framerate=bad)  # type: ignore[arg-type]
    with allocate_frame(8, 8, "XRGB8888") as frame:
        assert "drm-format=(string)XR24," in frame.gst_caps()  # the fourcc's characters, not the name
    with allocate_frame(8, 8, "R8") as frame:
        assert 'drm-format=(string)"R8  ",' in frame.gst_caps()  # spaces: quoted as GStreamer does
    with allocate_frame(8, 8, "NV12", modifier=MOD_INVALID) as frame, \
            pytest.raises(pydmabuf.InvalidArgumentError, match="explicit modifier"):
        frame.gst_caps()
    with heap.allocate(1 << 16) as buf, Frame(64, 64, "NV12", [buf], [Plane(0, 0, 128), Plane(0, 8192, 128)],
                                               modifier=Y_TILED, own=False) as frame:
        assert "drm-format=(string)NV12:0x0100000000000002," in frame.gst_caps()


def test_plane_view_type_is_public() -> None:
    with allocate_frame(4, 4, "R8") as frame, frame.plane_view(0) as view:
        assert isinstance(view, PlaneView)
        assert view.__array_interface__["strides"] == (256, 1)
        assert frame.modifier == LINEAR
