"""Capture from a V4L2 camera into pydmabuf frames and hand them to another process.

    python examples/v4l2_capture.py [DEVICE] [--memory dmabuf|mmap] [--format NV12]
                                    [--bytesperline N] [--frames 8] [--buffers 4]

Opens DEVICE (default: the first /dev/video* node that QUERYCAP calls a streaming
capture device, single- or multi-planar), negotiates a format (NV12M on a
multi-planar device, else NV12, else YUYV, else whatever of ours the driver offers;
``--format`` picks one), and streams into a pool of ``pydmabuf.Frame``s that a
``pydmabuf.channel.Producer`` serves to a consumer process:

- ``--memory dmabuf`` (the default): the frames are allocated with pydmabuf and
  queued as ``V4L2_MEMORY_DMABUF``, so the camera writes straight into them. Where
  the driver's pitches are what ``allocate_frame`` lays out at some alignment, that
  does the allocation; otherwise the driver's ``sizeimage`` is allocated and
  described with the driver's pitches and offsets.
- ``--memory mmap``: the driver allocates (``V4L2_MEMORY_MMAP``) and each buffer is
  exported with ``VIDIOC_EXPBUF`` and wrapped as a Frame (``Buffer.from_fd``). This
  works on a machine with no dma-heap or udmabuf too, and dmabuf mode switches to it
  there (and where the driver cannot import dma-bufs).

Each dequeued frame goes to the consumer with checksums of a few of its rows; the
consumer checks them against its own mapping, that the picture is not blank and,
from vivid, that it shows vivid's default 75% colour bars, and prints a line per
frame. Without a V4L2 capture device it says so and exits 0.

The V4L2 structs and VIDIOC_* numbers are pydmabuf's own declarations
(``cdefs/videodev2.h``, checked against the kernel header by tests/test_abi.py),
reached through the private ``pydmabuf.uapi.v4l2`` (loaded only by programs that
import it): the example shows the dma-buf side, not a V4L2 binding.
"""

from __future__ import annotations

import argparse
import errno
import glob
import itertools
import json
import multiprocessing
import os
import re
import select
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pydmabuf
from pydmabuf.allocator import Allocator
from pydmabuf.channel import Consumer, Producer
from pydmabuf.formats import Format, v4l2_format
from pydmabuf.frame import Frame, Plane, allocate_frame
from pydmabuf.uapi import v4l2  # the V4L2 declarations pydmabuf checks against videodev2.h
from pydmabuf.uapi.v4l2 import ffi, lib

CAPTURE = lib.V4L2_BUF_TYPE_VIDEO_CAPTURE
CAPTURE_MPLANE = lib.V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE
FRAME_TIMEOUT = 20.0  # seconds for one frame: generous for an emulated machine

# V4L2 pixel format -> (DRM format, buffers per frame), from pydmabuf's V4L2 table
# (formats.v4l2_format), for the formats whose layout this example computes. The "M"
# formats put each plane in a buffer of its own (multi-planar API only); the others are
# one buffer with the planes one after another, each pitch following from the first as
# V4L2 defines it.
V4L2_TO_DRM = {code: (drm.name, buffers) for code in (
    lib.V4L2_PIX_FMT_NV12M, lib.V4L2_PIX_FMT_NV21M, lib.V4L2_PIX_FMT_YUV420M, lib.V4L2_PIX_FMT_NV12,
    lib.V4L2_PIX_FMT_NV21, lib.V4L2_PIX_FMT_YUV420, lib.V4L2_PIX_FMT_YVU420, lib.V4L2_PIX_FMT_YUYV,
    lib.V4L2_PIX_FMT_UYVY) for drm, buffers in [v4l2_format(code)]}
PREFERRED = (lib.V4L2_PIX_FMT_NV12M, lib.V4L2_PIX_FMT_NV12, lib.V4L2_PIX_FMT_YUYV)


def fourcc_text(code: int) -> str:
    return code.to_bytes(4, "little").decode("ascii", "replace")


def v4l2_ioctl(fd: int, request: int, arg: object, what: str) -> None:
    while v4l2.ioctl(fd, request, arg) < 0:
        code = ffi.errno
        if code != errno.EINTR:
            raise OSError(code, f"{what}: {os.strerror(code)}")


def capture_type(fd: int) -> tuple[int, str, str] | None:
    """(buffer type, driver, bus) of a streaming video capture node, else None."""
    cap = ffi.new("struct v4l2_capability *")
    try:
        v4l2_ioctl(fd, v4l2.VIDIOC_QUERYCAP, cap, "VIDIOC_QUERYCAP")
    except OSError:
        return None
    caps = cap.device_caps if cap.capabilities & lib.V4L2_CAP_DEVICE_CAPS else cap.capabilities
    if not caps & lib.V4L2_CAP_STREAMING:
        return None
    names = ffi.string(cap.driver).decode(errors="replace"), ffi.string(cap.bus_info).decode(errors="replace")
    if caps & lib.V4L2_CAP_VIDEO_CAPTURE_MPLANE:
        return (CAPTURE_MPLANE, *names)
    if caps & lib.V4L2_CAP_VIDEO_CAPTURE:
        return (CAPTURE, *names)
    return None


def find_capture_device() -> str | None:
    """The first /dev/videoN (by N) that is a streaming capture node."""
    nodes = glob.glob("/dev/video[0-9]*")
    for path in sorted(nodes, key=lambda p: int(re.sub(r"\D", "", p) or 0)):
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if capture_type(fd) is not None:
                return path
        finally:
            os.close(fd)
    return None


@dataclass
class Negotiated:
    """The format the driver granted: size, pixel format and, per buffer of a frame,
    (bytesperline, sizeimage)."""

    width: int
    height: int
    pixelformat: int
    buffers: list[tuple[int, int]]

    @property
    def format(self) -> Format:
        return Format.from_name(V4L2_TO_DRM[self.pixelformat][0])

    def layout(self) -> tuple[list[int], list[Plane]]:
        """The frame as the driver lays it out: buffer sizes and planes."""
        fmt, planes = self.format, []
        if len(self.buffers) > 1:  # one buffer per plane, each at offset 0
            return [size for _, size in self.buffers], [Plane(i, 0, bpl) for i, (bpl, _) in enumerate(self.buffers)]
        bytesperline, sizeimage = self.buffers[0]
        first, offset = fmt.planes[0], 0
        for layout in fmt.planes:
            # v4l2_fill_pixfmt: a later plane's pitch is the first's scaled by bytes
            # per pixel and horizontal subsampling.
            pitch = (bytesperline * layout.bytes_per_block * first.block_width
                     // (first.bytes_per_block * layout.block_width * layout.hsub))
            planes.append(Plane(0, offset, pitch))
            offset += pitch * layout.height(self.height)
        return [sizeimage], planes

    def describe(self) -> str:
        pitches = "/".join(str(p.pitch) for p in self.layout()[1])
        return (f"{fourcc_text(self.pixelformat)} {self.width}x{self.height} as DRM {self.format.name}, "
                f"{len(self.buffers)} buffer(s) per frame, pitches {pitches}")


class Camera:
    """A V4L2 capture node: format negotiation and the streaming ioctls, on structs
    made once (queue and dequeue allocate nothing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        found = capture_type(self.fd)
        if found is None:
            os.close(self.fd)
            raise SystemExit(f"{path} is not a streaming V4L2 capture device")
        self.type, self.driver, self.bus = found
        self.mplane = self.type == CAPTURE_MPLANE
        self.memory = lib.V4L2_MEMORY_MMAP
        self._buf = ffi.new("struct v4l2_buffer *")
        self._zero = bytes(ffi.sizeof("struct v4l2_buffer"))
        self._planes = ffi.new("struct v4l2_plane[]", lib.VIDEO_MAX_PLANES)
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)

    def offered(self) -> list[int]:
        desc, found = ffi.new("struct v4l2_fmtdesc *"), list[int]()
        desc.type = self.type
        while True:
            try:
                v4l2_ioctl(self.fd, v4l2.VIDIOC_ENUM_FMT, desc, "VIDIOC_ENUM_FMT")
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # past the last one
                    return found
                raise
            found.append(desc.pixelformat)
            desc.index += 1

    def negotiate(self, wanted: str | None, bytesperline: int = 0) -> Negotiated:
        """G_FMT for the driver's size, then TRY_FMT and S_FMT with the first pixel
        format of ours the driver offers (or ``wanted``). ``bytesperline`` asks for
        padded rows (drivers take it as a minimum, or ignore it); 0 is the driver's
        own pitch."""
        fmt = ffi.new("struct v4l2_format *")
        fmt.type = self.type
        v4l2_ioctl(self.fd, v4l2.VIDIOC_G_FMT, fmt, "VIDIOC_G_FMT")
        offered = [code for code in self.offered() if code in V4L2_TO_DRM]
        if wanted is not None:
            codes = [code for code in offered if fourcc_text(code) == wanted
                     or V4L2_TO_DRM[code] == (wanted, 1) or (wanted.endswith("M") and V4L2_TO_DRM[code]
                                                             == (wanted[:-1], 2))]
            if not codes:
                raise SystemExit(f"{self.path} does not offer {wanted}; it offers "
                                 f"{', '.join(fourcc_text(c) for c in offered) or 'none of ours'}")
        else:
            codes = [c for c in PREFERRED if c in offered] + [c for c in offered if c not in PREFERRED]
        for code in codes:
            if self.mplane:
                mp = fmt.fmt.pix_mp
                mp.pixelformat, mp.field, mp.num_planes = code, lib.V4L2_FIELD_NONE, V4L2_TO_DRM[code][1]
                for i in range(lib.VIDEO_MAX_PLANES):  # G_FMT's were the old format's
                    mp.plane_fmt[i].bytesperline = mp.plane_fmt[i].sizeimage = 0
                mp.plane_fmt[0].bytesperline = bytesperline
            else:
                fmt.fmt.pix.pixelformat, fmt.fmt.pix.field = code, lib.V4L2_FIELD_NONE
                fmt.fmt.pix.bytesperline, fmt.fmt.pix.sizeimage = bytesperline, 0
            v4l2_ioctl(self.fd, v4l2.VIDIOC_TRY_FMT, fmt, "VIDIOC_TRY_FMT")
            if (fmt.fmt.pix_mp if self.mplane else fmt.fmt.pix).pixelformat != code:
                continue  # the driver substituted another format
            v4l2_ioctl(self.fd, v4l2.VIDIOC_S_FMT, fmt, "VIDIOC_S_FMT")
            if self.mplane:
                mp = fmt.fmt.pix_mp
                buffers = [(mp.plane_fmt[i].bytesperline, mp.plane_fmt[i].sizeimage) for i in range(mp.num_planes)]
                granted = Negotiated(mp.width, mp.height, mp.pixelformat, buffers)
            else:
                pix = fmt.fmt.pix
                granted = Negotiated(pix.width, pix.height, pix.pixelformat, [(pix.bytesperline, pix.sizeimage)])
            if granted.pixelformat in V4L2_TO_DRM and len(granted.buffers) == V4L2_TO_DRM[granted.pixelformat][1]:
                return granted
        raise SystemExit(f"{self.path}: no pixel format this example knows "
                         f"({', '.join(fourcc_text(c) for c in V4L2_TO_DRM)}) was granted")

    def request(self, count: int, memory: int) -> int:
        """VIDIOC_REQBUFS: the number of buffers the driver grants."""
        req = ffi.new("struct v4l2_requestbuffers *")
        req.count, req.type, req.memory = count, self.type, memory
        v4l2_ioctl(self.fd, v4l2.VIDIOC_REQBUFS, req, "VIDIOC_REQBUFS")
        self.memory = memory
        return int(req.count)

    def export(self, index: int, plane: int) -> pydmabuf.Buffer:
        """VIDIOC_EXPBUF of an MMAP buffer's plane, as a pydmabuf Buffer."""
        exp = ffi.new("struct v4l2_exportbuffer *")
        exp.type, exp.index, exp.plane, exp.flags = self.type, index, plane, os.O_RDWR | os.O_CLOEXEC
        v4l2_ioctl(self.fd, v4l2.VIDIOC_EXPBUF, exp, "VIDIOC_EXPBUF")
        return pydmabuf.Buffer.from_fd(exp.fd)

    def _reset(self, index: int) -> None:
        ffi.memmove(self._buf, self._zero, len(self._zero))
        self._buf.index, self._buf.type, self._buf.memory = index, self.type, self.memory
        if self.mplane:
            self._buf.m.planes, self._buf.length = self._planes, lib.VIDEO_MAX_PLANES

    def queue(self, index: int, frame: Frame) -> None:
        """VIDIOC_QBUF of buffer ``index``; with DMABUF memory, ``frame``'s fds."""
        self._reset(index)
        if self.memory == lib.V4L2_MEMORY_DMABUF:
            if self.mplane:
                planes = frame.v4l2_planes(contiguous=len(frame.objects) == 1)
                self._buf.length = len(planes)
                for i, plane in enumerate(planes):
                    self._planes[i].m.fd, self._planes[i].length = plane.fd, plane.length
                    self._planes[i].data_offset = 0  # capture: the driver sets what it wrote
            else:
                self._buf.m.fd, self._buf.length = frame.objects[0].fileno(), frame.objects[0].size
        v4l2_ioctl(self.fd, v4l2.VIDIOC_QBUF, self._buf, "VIDIOC_QBUF")

    def dequeue(self, timeout: float) -> tuple[int, int, bool]:
        """VIDIOC_DQBUF: (index, sequence, error flag) of the next filled buffer."""
        until = time.monotonic() + timeout
        while True:
            self._reset(0)
            try:
                v4l2_ioctl(self.fd, v4l2.VIDIOC_DQBUF, self._buf, "VIDIOC_DQBUF")
                return self._buf.index, self._buf.sequence, bool(self._buf.flags & lib.V4L2_BUF_FLAG_ERROR)
            except BlockingIOError:
                left = until - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.path} delivered no frame within {timeout} s") from None
                self._poll.poll(int(left * 1000) + 1)

    def stream(self, on: bool) -> None:
        kind = ffi.new("int *", self.type)
        request = v4l2.VIDIOC_STREAMON if on else v4l2.VIDIOC_STREAMOFF
        v4l2_ioctl(self.fd, request, kind, "VIDIOC_STREAMON" if on else "VIDIOC_STREAMOFF")

    def close(self) -> None:
        os.close(self.fd)


# --- frames ------------------------------------------------------------------------

def allocate_frames(granted: Negotiated, count: int) -> tuple[list[Frame], str]:
    """``count`` frames in the driver's layout from pydmabuf's allocator chain, and how
    they were made. ``allocate_frame`` lays planes out at a pitch alignment: where one
    (the largest power of two dividing the driver's pitch) gives exactly the driver's
    pitches and offsets, it allocates; otherwise buffers of the driver's sizeimage are
    allocated and described with the driver's pitches and offsets."""
    sizes, planes = granted.layout()
    width, height, fmt = granted.width, granted.height, granted.format
    align = min(planes[0].pitch & -planes[0].pitch, 4096)
    with Allocator() as allocator:
        first = allocate_frame(width, height, fmt, separate_planes=len(sizes) > 1, allocator=allocator,
                               name="v4l2-capture", pitch_align=align)
        if first.planes == tuple(planes) and all(o.size >= s for o, s in zip(first.objects, sizes, strict=True)):
            how = f"allocate_frame(pitch_align={align})"

            def make(index: int) -> Frame:
                return first if index == 0 else allocate_frame(
                    width, height, fmt, separate_planes=len(sizes) > 1, allocator=allocator,
                    name="v4l2-capture", pitch_align=align)
        else:
            first.close()
            how = "the driver's sizeimage, pitches and offsets"

            def make(index: int) -> Frame:
                return frame_over(granted, planes, [partial(allocator.allocate, size, name="v4l2-capture")
                                                    for size in sizes])
        frames = collect(count, make)
        if not frames:
            first.close()  # count 0: never handed out
        return frames, f"{how}, from {allocator.last_provider}"


def export_frames(camera: Camera, granted: Negotiated, count: int) -> list[Frame]:
    """The driver's MMAP buffers, each plane exported with VIDIOC_EXPBUF, as Frames."""
    sizes, planes = granted.layout()
    return collect(count, lambda index: frame_over(
        granted, planes, [partial(camera.export, index, plane) for plane in range(len(sizes))]))


def frame_over(granted: Negotiated, planes: list[Plane], makers: list[Callable[[], pydmabuf.Buffer]]) -> Frame:
    """A Frame over one new buffer from each of ``makers``; those made are closed if one fails."""
    objects: list[pydmabuf.Buffer] = []
    try:
        for make in makers:
            objects.append(make())
        return Frame(granted.width, granted.height, granted.format, objects, planes)
    except BaseException:
        for obj in objects:
            obj.close()
        raise


def collect(count: int, make: Callable[[int], Frame]) -> list[Frame]:
    """``make(0)``, ..., ``make(count - 1)``; the frames made are closed if one fails."""
    frames: list[Frame] = []
    try:
        for index in range(count):
            frames.append(make(index))
    except BaseException:
        for frame in frames:
            frame.close()
        raise
    return frames


def row_checksums(frame: Frame) -> list[int]:
    """crc32 of the first, middle and last row of every plane (padding left out)."""
    sums = []
    with frame.cpu_access(read=True, write=False, timeout=10):
        for index in range(len(frame.planes)):
            with frame.plane_view(index, write=False) as view:
                sums += [zlib.crc32(view.row(r)) for r in (0, view.rows // 2, view.rows - 1)]
    return sums


def bar_luma(frame: Frame) -> list[int]:
    """Luma at the centres of 8 vertical bars of the middle row."""
    fmt, width = frame.format.name, frame.width
    with frame.cpu_access(read=True, write=False, timeout=10), frame.plane_view(0, write=False) as view:
        row = bytes(view.row(view.rows // 2))
    if fmt in ("YUYV", "UYVY"):
        row = row[fmt == "UYVY"::2]  # Y0 Cb Y1 Cr / Cb Y0 Cr Y1
    return [row[(2 * bar + 1) * width // 16] for bar in range(8)]


def looks_like_colour_bars(luma: list[int]) -> bool:
    """vivid's default pattern (75% colour bars: white, yellow, cyan, green, magenta,
    red, blue, black) has luma falling bar by bar, over most of the range."""
    return all(a > b for a, b in itertools.pairwise(luma)) and luma[0] - luma[-1] >= 100


# --- the two processes ----------------------------------------------------------------

def consume(address: str, bars: bool) -> None:
    """The consumer process: check every frame against the producer's checksums and,
    if ``bars`` (a vivid camera), for its default test pattern; a real camera's
    picture is only checked not to be blank."""
    checked = 0
    with Consumer.connect(address, timeout=30) as stream:
        while (delivery := stream.receive(timeout=60)) is not None:
            with delivery:
                delivery.wait(timeout=10)
                frame, meta = delivery.frame, json.loads(delivery.meta)
                assert frame is not None, "the producer serves frames"
                sums, luma = row_checksums(frame), bar_luma(frame)
                if sums != meta["rows"]:
                    raise SystemExit(f"consumer: frame {delivery.seq}: rows differ from the producer's "
                                     f"({sums} != {meta['rows']})")
                if bars and not looks_like_colour_bars(luma):
                    raise SystemExit(f"consumer: frame {delivery.seq}: no colour bars (luma {luma})")
                if len(set(luma)) == 1:
                    raise SystemExit(f"consumer: frame {delivery.seq}: blank (luma {luma[0]} everywhere)")
                checked += 1
                print(f"consumer: frame {delivery.seq} (sequence {meta['sequence']}) {frame.width}x{frame.height} "
                      f"{frame.format.name} in {len(frame.objects)} dma-buf(s): {len(sums)} rows match, "
                      f"bar luma {luma}", flush=True)
        print(f"consumer: {checked} frames checked ({stream.end_reason})", flush=True)


def stream_frames(camera: Camera, frames: list[Frame], count: int, *, bars: bool) -> int:
    """Queue every frame, stream, and hand ``count`` filled frames to a consumer
    (which checks for colour bars if ``bars``); returns the consumer's exit code."""
    index_of = {id(frame): index for index, frame in enumerate(frames)}
    address = f"@pydmabuf-v4l2-{os.getpid()}"
    with Producer(address, frames=frames) as producer:
        child = multiprocessing.get_context("spawn").Process(target=consume, args=(address, bars))
        child.start()
        try:
            producer.wait_for_consumers(1, timeout=60)
            for _ in frames:
                index = index_of[id(producer.acquire(timeout=0))]
                camera.queue(index, frames[index])
            camera.stream(True)
            try:
                for n in range(count):
                    index, sequence, damaged = camera.dequeue(FRAME_TIMEOUT)
                    frame = frames[index]
                    if damaged:
                        print(f"producer: buffer {index} came back with V4L2_BUF_FLAG_ERROR", file=sys.stderr)
                    meta = json.dumps({"sequence": sequence, "rows": row_checksums(frame)}).encode()
                    producer.submit(frame, meta=meta)
                    if n + len(frames) < count:  # more to capture: give the camera a free frame
                        index = index_of[id(producer.acquire(timeout=60))]
                        camera.queue(index, frames[index])
            finally:
                camera.stream(False)
        except BaseException:
            child.kill()
            raise
    child.join(60)  # closing the producer ended the stream
    return child.exitcode if child.exitcode is not None else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("device", nargs="?", help="a V4L2 capture node (default: the first one)")
    parser.add_argument("--memory", choices=("dmabuf", "mmap"), default="dmabuf")
    parser.add_argument("--format", help="a V4L2 or DRM pixel format name, e.g. NV12, NV12M, YUYV")
    parser.add_argument("--bytesperline", type=int, default=0,
                        help="ask for rows padded to this many bytes (default: the driver's pitch)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--buffers", type=int, default=4)
    args = parser.parse_args()
    device = args.device or find_capture_device()
    if device is None:
        print("no V4L2 capture device here (no /dev/video* that streams video capture): nothing to "
              "capture. Try a camera, or the virtual one: sudo modprobe vivid")
        return 0
    camera = Camera(device)
    try:
        granted = camera.negotiate(args.format, args.bytesperline)
        api = "multi-planar" if camera.mplane else "single-planar"
        print(f"producer: {device} ({camera.driver}, {camera.bus}), {api} API, {granted.describe()}")
        memory = args.memory
        frames: list[Frame] = []
        if memory == "dmabuf":
            frames, how = allocate_frames(granted, args.buffers)
            if any(obj.backend != "kernel" for frame in frames for obj in frame.objects):
                for frame in frames:
                    frame.close()
                print("producer: no real dma-bufs to allocate here (no dma-heap or /dev/udmabuf): "
                      "using the driver's buffers (--memory mmap) instead")
                memory = "mmap"
            else:
                try:
                    granted_count = camera.request(len(frames), lib.V4L2_MEMORY_DMABUF)
                except OSError as exc:  # a driver without dma-buf import
                    print(f"producer: {exc}: using the driver's buffers (--memory mmap) instead")
                    granted_count, memory = 0, "mmap"
                for extra in frames[granted_count:]:
                    extra.close()
                frames = frames[:granted_count]
                if frames:
                    print(f"producer: {len(frames)} pydmabuf frames ({how}) queued as V4L2_MEMORY_DMABUF")
        if memory == "mmap":
            count = camera.request(args.buffers, lib.V4L2_MEMORY_MMAP)
            if count < 2:
                raise SystemExit(f"{device}: the driver granted {count} MMAP buffers; streaming needs 2")
            frames = export_frames(camera, granted, count)
            print(f"producer: {len(frames)} V4L2_MEMORY_MMAP buffers exported with VIDIOC_EXPBUF as Frames "
                  f"({frames[0].objects[0].info().exporter})")
        code = stream_frames(camera, frames, args.frames, bars=camera.driver == "vivid")
    finally:
        camera.close()
    print(f"producer: {args.frames} frames captured on the {pydmabuf.backend} backend; consumer exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
