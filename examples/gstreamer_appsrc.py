"""pydmabuf frames into GStreamer: ``appsrc ! videoconvert ! appsink``, pixels checked.

Allocates frames with ``pydmabuf.allocate_frame`` (dma-heap or udmabuf memory on a
real kernel, memfds on the fallback), draws a pattern into them under
``frame.cpu_access()``, and pushes each as a GstBuffer whose memories are the frame's
own fds: ``GstAllocators.DmaBufAllocator`` for dma-bufs (GStreamer then brackets its
reads with DMA_BUF_IOCTL_SYNC itself), ``FdAllocator`` for memfds. A GstVideoMeta
carries pydmabuf's plane offsets and pitches (the default ``pitch_align=256`` pads
rows, which caps alone cannot say). ``videoconvert`` turns XRGB8888 (GStreamer's
``BGRx``) into ``RGBA`` and NV12 into ``I420``: byte rearrangements, no colour maths,
so ``appsink``'s pixels are compared with the pattern byte for byte.

GStreamer memory is sized to where the last plane ends (``frame.v4l2_planes()``), not
to the buffer's page-rounded size: ``v4l2sink`` refuses memory larger than the image.

Needs PyGObject and GStreamer (base and good plugins); without them it says so and
exits 0 (``--require`` makes that a failure: the real-kernel tier's consumer root has
them, see docs/real-kernel-tier.md, "Real consumers").

    python examples/gstreamer_appsrc.py [--frames 4] [--size 66x50] [--require]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import pydmabuf
from pydmabuf.frame import Frame, allocate_frame

# pydmabuf format -> (GStreamer's name for it, what videoconvert makes of it for appsink)
CASES = {"XRGB8888": ("BGRx", "RGBA"), "NV12": ("NV12", "I420")}


def load_gstreamer() -> tuple[Any, Any, Any, Any] | str:
    """(Gst, GstAllocators, GstApp, GstVideo), or why they cannot be loaded."""
    try:
        import gi

        for name in ("Gst", "GstAllocators", "GstApp", "GstVideo"):
            gi.require_version(name, "1.0")
        from gi.repository import Gst, GstAllocators, GstApp, GstVideo
    except (ImportError, ValueError) as exc:
        return f"no GStreamer with PyGObject here ({exc})"
    Gst.init(None)
    missing = [e for e in ("appsrc", "videoconvert", "appsink") if Gst.ElementFactory.find(e) is None]
    if missing:
        return f"GStreamer lacks {', '.join(missing)} (install gstreamer1.0-plugins-base)"
    return Gst, GstAllocators, GstApp, GstVideo


def pattern(fmt: str, plane: int, x: int, y: int, seq: int) -> int:
    """The byte of plane ``plane`` at byte column ``x``, row ``y`` of frame ``seq``."""
    if fmt == "XRGB8888" and x % 4 == 3:
        return 0xFF  # X: what videoconvert's RGBA alpha becomes either way
    return (x * 7 + y * 13 + plane * 50 + seq * 31) & 0xFF


def draw(frame: Frame, seq: int) -> None:
    with frame.cpu_access():
        for index, view in enumerate(frame.plane_views()):
            for y in range(view.rows):
                view.row(y)[:] = bytes(pattern(frame.format.name, index, x, y, seq) for x in range(view.row_bytes))
            view.release()


def expected(fmt: str, width: int, height: int, seq: int) -> list[bytes]:
    """appsink's planes, row by row without padding."""
    if fmt == "XRGB8888":  # BGRx -> RGBA: swap B and R, alpha opaque
        rows = []
        for y in range(height):
            row = bytearray()
            for x in range(width):
                b, g, r = (pattern(fmt, 0, 4 * x + i, y, seq) for i in range(3))
                row += bytes((r, g, b, 0xFF))
            rows.append(bytes(row))
        return [b"".join(rows)]
    luma = b"".join(bytes(pattern(fmt, 0, x, y, seq) for x in range(width)) for y in range(height))
    half_w, half_h = (width + 1) // 2, (height + 1) // 2
    cb = b"".join(bytes(pattern(fmt, 1, 2 * x, y, seq) for x in range(half_w)) for y in range(half_h))
    cr = b"".join(bytes(pattern(fmt, 1, 2 * x + 1, y, seq) for x in range(half_w)) for y in range(half_h))
    return [luma, cb, cr]


def to_gst_buffer(gst: tuple[Any, Any, Any, Any], frame: Frame, gst_format: str, seq: int) -> Any:
    Gst, GstAllocators, _GstApp, GstVideo = gst
    buffer = Gst.Buffer.new()
    kernel = frame.objects[0].backend == "kernel"
    allocator = GstAllocators.DmaBufAllocator.new() if kernel else GstAllocators.FdAllocator.new()
    # One GstMemory per object, sized to where its last plane ends; GStreamer owns a dup.
    ends = [plane.offset + frame.plane_extent(i)[0] * plane.pitch for i, plane in enumerate(frame.planes)]
    first_plane = {}
    for index, plane in enumerate(frame.planes):
        first_plane.setdefault(plane.object_index, index)
    for object_index, obj in enumerate(frame.objects):
        size = max(end for plane, end in zip(frame.planes, ends, strict=True) if plane.object_index == object_index)
        fd = os.dup(obj.fileno())
        if kernel:
            memory = GstAllocators.DmaBufAllocator.alloc(allocator, fd, size)
        else:
            memory = GstAllocators.FdAllocator.alloc(allocator, fd, size, GstAllocators.FdMemoryFlags.NONE)
        buffer.append_memory(memory)
    # Offsets in a GstVideoMeta count from the start of the buffer's memories laid end to end.
    starts, total = [], 0
    for obj_index, _obj in enumerate(frame.objects):
        starts.append(total)
        total += max(end for plane, end in zip(frame.planes, ends, strict=True) if plane.object_index == obj_index)
    offsets = [starts[p.object_index] + p.offset for p in frame.planes] + [0] * (4 - len(frame.planes))
    strides = [p.pitch for p in frame.planes] + [0] * (4 - len(frame.planes))
    GstVideo.buffer_add_video_meta_full(buffer, GstVideo.VideoFrameFlags.NONE,
                                        GstVideo.VideoFormat.from_string(gst_format), frame.width, frame.height,
                                        len(frame.planes), offsets, strides)
    buffer.pts = seq * Gst.SECOND // 30
    buffer.duration = Gst.SECOND // 30
    return buffer


def received_planes(gst: tuple[Any, Any, Any, Any], sample: Any) -> list[bytes]:
    """appsink's sample as planes of unpadded rows (its layout from its caps and meta)."""
    Gst, _GstAllocators, _GstApp, GstVideo = gst
    info = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
    buffer = sample.get_buffer()
    meta = GstVideo.buffer_get_video_meta(buffer)
    ok, mapped = buffer.map(Gst.MapFlags.READ)
    assert ok, "appsink's buffer does not map"
    try:
        data = bytes(mapped.data)
    finally:
        buffer.unmap(mapped)
    planes = []
    for index in range(info.finfo.n_planes):
        offset = meta.offset[index] if meta else info.offset[index]
        stride = meta.stride[index] if meta else info.stride[index]
        height = info.height if index == 0 else (info.height + 1) // 2
        row_bytes = info.width * 4 if info.finfo.n_planes == 1 else (info.width if index == 0 else
                                                                      (info.width + 1) // 2)
        planes.append(b"".join(data[offset + y * stride:offset + y * stride + row_bytes] for y in range(height)))
    return planes


def run_case(gst: tuple[Any, Any, Any, Any], fmt: str, width: int, height: int, count: int) -> None:
    Gst = gst[0]
    gst_in, gst_out = CASES[fmt]
    frames = [allocate_frame(width, height, fmt) for _ in range(count)]
    pipeline = Gst.parse_launch(f"appsrc name=src format=time ! videoconvert ! video/x-raw,format={gst_out} "
                                f"! appsink name=sink sync=false")
    src, sink = pipeline.get_by_name("src"), pipeline.get_by_name("sink")
    src.set_property("caps", Gst.Caps.from_string(
        f"video/x-raw,format={gst_in},width={width},height={height},framerate=30/1"))
    pipeline.set_state(Gst.State.PLAYING)
    try:
        for seq, frame in enumerate(frames):
            draw(frame, seq)
            assert src.emit("push-buffer", to_gst_buffer(gst, frame, gst_in, seq)) == Gst.FlowReturn.OK
        src.emit("end-of-stream")
        for seq in range(count):
            sample = sink.emit("try-pull-sample", 20 * Gst.SECOND)
            if sample is None:
                bus_error = pipeline.get_bus().timed_pop_filtered(0, Gst.MessageType.ERROR)
                detail = bus_error.parse_error()[0].message if bus_error else "no sample within 20 s"
                raise SystemExit(f"{fmt}: frame {seq}: {detail}")
            got = received_planes(gst, sample)
            want = expected(fmt, width, height, seq)
            if got != want:
                plane = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
                at = next(i for i, (a, b) in enumerate(zip(got[plane], want[plane], strict=False)) if a != b)
                raise SystemExit(f"{fmt} frame {seq}: plane {plane} differs at byte {at}")
        print(f"{fmt} {width}x{height}: {count} frames from pydmabuf ({frames[0].objects[0].backend} "
              f"{'dma-bufs' if frames[0].objects[0].backend == 'kernel' else 'memfds'}) through "
              f"appsrc ({gst_in}) ! videoconvert ! appsink ({gst_out}): every byte as drawn")
    finally:
        pipeline.set_state(Gst.State.NULL)
        for frame in frames:
            frame.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", default="66x50", help="WIDTHxHEIGHT (odd sizes test the padding)")
    parser.add_argument("--require", action="store_true", help="fail, not skip, without GStreamer")
    args = parser.parse_args()
    gst = load_gstreamer()
    if isinstance(gst, str):
        print(f"gstreamer_appsrc: nothing to do here: {gst}")
        return 1 if args.require else 0
    Gst = gst[0]
    print(f"{Gst.version_string()}; pydmabuf {pydmabuf.__version__} on the {pydmabuf.backend} backend")
    width, height = (int(v) for v in args.size.split("x"))
    for fmt in CASES:
        run_case(gst, fmt, width, height, args.frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
