"""A camera through GStreamer into pydmabuf: ``v4l2src io-mode=dmabuf`` frames as Frames.

GStreamer's ``v4l2src io-mode=dmabuf`` exports the driver's capture buffers as dma-bufs
(VIDIOC_EXPBUF) and ``appsink`` hands each GstBuffer to Python. pydmabuf wraps the
memory's fd with ``Buffer.from_fd(fd, own=False)`` (a dup: GStreamer keeps its own and
recycles the buffer once the sample is dropped) and the buffer's layout (its
GstVideoMeta, else the caps' default) as a :class:`pydmabuf.Frame`. Each frame's rows,
read through pydmabuf's mapping under ``cpu_access``, are compared with GStreamer's own
mapping of the same buffer.

Needs PyGObject, GStreamer's good plugins (v4l2src) and a V4L2 capture device (a
camera, or the virtual one: ``sudo modprobe vivid``); without them it says so and exits
0 (``--require`` makes that a failure: the real-kernel tier's consumer boot has all).

    python examples/gstreamer_v4l2src.py [--frames 4] [--format YUY2] [--require]
"""

from __future__ import annotations

import argparse
import glob
import sys
from typing import Any

import pydmabuf
from pydmabuf import Buffer
from pydmabuf.frame import Frame, Plane


def load_gstreamer() -> tuple[Any, Any, Any] | str:
    """(Gst, GstAllocators, GstVideo), or why they cannot be loaded."""
    try:
        import gi

        for name in ("Gst", "GstAllocators", "GstVideo"):
            gi.require_version(name, "1.0")
        from gi.repository import Gst, GstAllocators, GstVideo
    except (ImportError, ValueError) as exc:
        return f"no GStreamer with PyGObject here ({exc})"
    Gst.init(None)
    if Gst.ElementFactory.find("v4l2src") is None:
        return "GStreamer lacks v4l2src (install gstreamer1.0-plugins-good)"
    return Gst, GstAllocators, GstVideo


def open_pipeline(gst: tuple[Any, Any, Any], gst_format: str, frames: int) -> tuple[Any, Any, str] | None:
    """(pipeline, appsink, device) streaming from the first capture device that gives
    ``gst_format`` as dma-bufs, or None."""
    Gst = gst[0]
    for device in sorted(glob.glob("/dev/video*"), key=lambda d: int(d[len("/dev/video"):] or 0)):
        pipeline = Gst.parse_launch(f"v4l2src device={device} io-mode=dmabuf num-buffers={frames} ! "
                                    f"video/x-raw,format={gst_format} ! appsink name=sink sync=false")
        pipeline.set_state(Gst.State.PLAYING)
        changed, _state, _pending = pipeline.get_state(10 * Gst.SECOND)
        if changed != Gst.StateChangeReturn.FAILURE:
            sink = pipeline.get_by_name("sink")
            sample = sink.emit("try-pull-preroll", 10 * Gst.SECOND)
            if sample is not None:
                return pipeline, sink, device
        pipeline.set_state(Gst.State.NULL)
    return None


def as_frame(gst: tuple[Any, Any, Any], sample: Any) -> tuple[Frame, Buffer]:
    """The sample's buffer as a Frame over a pydmabuf Buffer (a dup of its dma-buf fd)."""
    _Gst, GstAllocators, GstVideo = gst
    gst_buffer = sample.get_buffer()
    if gst_buffer.n_memory() != 1:
        raise SystemExit(f"a buffer of {gst_buffer.n_memory()} memories: this example takes one")
    memory = gst_buffer.peek_memory(0)
    if not GstAllocators.is_dmabuf_memory(memory):
        raise SystemExit("v4l2src did not give dma-buf memory (io-mode=dmabuf refused by the driver?)")
    buf = Buffer.from_fd(GstAllocators.dmabuf_memory_get_fd(memory), own=False)
    info = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
    meta = GstVideo.buffer_get_video_meta(gst_buffer)
    layout = [((meta or info).offset[i], (meta or info).stride[i]) for i in range(info.finfo.n_planes)]
    fmt = pydmabuf.formats.Format.from_name(info.finfo.name)
    planes = [Plane(0, memory.offset + offset, stride) for offset, stride in layout]
    return Frame(info.width, info.height, fmt, [buf], planes, own=False), buf


def gstreamer_rows(gst: tuple[Any, Any, Any], sample: Any, frame: Frame) -> list[bytes]:
    """GStreamer's own mapping of the sample, cut into the frame's planes' rows."""
    Gst = gst[0]
    gst_buffer = sample.get_buffer()
    ok, mapped = gst_buffer.map(Gst.MapFlags.READ)
    if not ok:
        raise SystemExit("GStreamer could not map its own buffer")
    try:
        data = bytes(mapped.data)
    finally:
        gst_buffer.unmap(mapped)
    start = gst_buffer.peek_memory(0).offset
    rows = []
    for index, plane in enumerate(frame.planes):
        count, row_bytes = frame.plane_extent(index)
        base = plane.offset - start
        rows.append(b"".join(data[base + y * plane.pitch:base + y * plane.pitch + row_bytes] for y in range(count)))
    return rows


def pydmabuf_rows(frame: Frame) -> list[bytes]:
    with frame.cpu_access(write=False):
        views = frame.plane_views(write=False)
        try:
            return [view.tobytes() for view in views]
        finally:
            for view in views:
                view.release()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--format", default="YUY2", help="GStreamer's format name (YUY2, NV12, ...)")
    parser.add_argument("--require", action="store_true", help="fail, not skip, without GStreamer or a camera")
    args = parser.parse_args()
    gst = load_gstreamer()
    if isinstance(gst, str):
        print(f"gstreamer_v4l2src: nothing to do here: {gst}")
        return 1 if args.require else 0
    opened = open_pipeline(gst, args.format, args.frames)
    if opened is None:
        print(f"gstreamer_v4l2src: nothing to do here: no V4L2 capture device gives {args.format} as dma-bufs "
              "(try a camera, or: sudo modprobe vivid)")
        return 1 if args.require else 0
    pipeline, sink, device = opened
    Gst = gst[0]
    try:
        for seq in range(args.frames):
            sample = sink.emit("try-pull-sample", 20 * Gst.SECOND)
            if sample is None:
                raise SystemExit(f"{device}: no frame {seq} within 20 s")
            frame, buf = as_frame(gst, sample)
            try:
                info = buf.info()
                if pydmabuf_rows(frame) != gstreamer_rows(gst, sample, frame):
                    raise SystemExit(f"frame {seq}: pydmabuf's mapping differs from GStreamer's")
            finally:
                frame.close()
                buf.close()
            del sample  # GStreamer may now requeue the buffer
        print(f"{device}: {args.frames} {frame.format.name} {frame.width}x{frame.height} frames from v4l2src "
              f"io-mode=dmabuf (exporter {info.exporter!r}) as pydmabuf Frames: every byte as GStreamer mapped it")
    finally:
        pipeline.set_state(Gst.State.NULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
