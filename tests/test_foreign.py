"""Foreign dma-bufs: buffers a driver exported, wrapped with default settings.

Most dma-bufs a program holds come from drivers (a camera's ``VIDIOC_EXPBUF``, a
GPU's PRIME export), often on machines with no ``/dev/dma_heap`` and no
``/dev/udmabuf``. Each test here wraps such an export with ``Buffer.from_fd`` and no
``backend=`` argument, and uses one part of what a Buffer offers on it: name,
fences, CPU access and mapping, sending to another process, accounting. The
exporters are vgem (a PRIME export of a dumb buffer) and vivid (a virtual V4L2
camera; an exported MMAP capture buffer holding a streamed frame).

The real-kernel VM loads both modules. Its tier runs this file twice: in the big
boot (allocator nodes present, ``PYDMABUF_BACKEND=kernel``) and in a short boot
with ``/dev/dma_heap`` and ``/dev/udmabuf`` removed and ``PYDMABUF_BACKEND``
unset, where the default backend is the fallback and every wrapped buffer must
still be a kernel buffer. Elsewhere (natively, no vgem or vivid) they skip: there
is no foreign dma-buf to wrap.
"""

from __future__ import annotations

import fcntl
import glob
import os
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from _procs import fork, join

import pydmabuf
from pydmabuf.backends.kernel_timelines import find_vgem_card
from pydmabuf.tools import accounting
from pydmabuf.uapi import ops as _ops

ALLOCATOR_NODES = ("/dev/dma_heap", "/dev/udmabuf")
PAGE = os.sysconf("SC_PAGE_SIZE")
NO_EXPORT = "there is no foreign dma-buf to wrap here (the real-kernel tier loads vgem and vivid)"

# --- V4L2: the few ioctls we need, from linux/videodev2.h ---------------------------
# Checked once by hand against /usr/include/linux/videodev2.h (x86_64) with a C
# program printing sizeof/offsetof and the VIDIOC_* values:
#   struct v4l2_capability 104; v4l2_format 208 (the fmt union at offset 8,
#   v4l2_pix_format 48); v4l2_requestbuffers 20; v4l2_exportbuffer 64 (fd at 16);
#   v4l2_buffer 88 (timestamp at 24, sequence 56, memory 60, m 64, length 72).
#   VIDIOC_QUERYCAP 0x80685600, G_FMT 0xc0d05604, REQBUFS 0xc0145608,
#   QBUF 0xc058560f, EXPBUF 0xc0405610, DQBUF 0xc0585611, STREAMON 0x40045612,
#   STREAMOFF 0x40045613.
_CAPABILITY = struct.Struct("=16s32s32sIII12x")  # driver, card, bus_info, version, capabilities, device_caps
_FORMAT = struct.Struct("=I4x200s")  # type, fmt union (pix: width, height, pixelformat, field, ...)
_REQUESTBUFFERS = struct.Struct("=IIIIB3x")  # count, type, memory, capabilities, flags
_EXPORTBUFFER = struct.Struct("=IIIIi44x")  # type, index, plane, flags, fd
# index, type, bytesused, flags, field, [timeval, timecode], sequence, memory, m, length, reserved2, request_fd
_BUFFER = struct.Struct("=5I4x16x16x2IQ2Ii4x")
assert (_CAPABILITY.size, _FORMAT.size, _REQUESTBUFFERS.size, _EXPORTBUFFER.size, _BUFFER.size) == (
    104, 208, 20, 64, 88)


def _vidioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("V") << 8) | nr  # asm-generic/ioctl.h


_W, _R = 1, 2
VIDIOC_QUERYCAP = _vidioc(_R, 0, _CAPABILITY.size)
VIDIOC_G_FMT = _vidioc(_R | _W, 4, _FORMAT.size)
VIDIOC_REQBUFS = _vidioc(_R | _W, 8, _REQUESTBUFFERS.size)
VIDIOC_QBUF = _vidioc(_R | _W, 15, _BUFFER.size)
VIDIOC_EXPBUF = _vidioc(_R | _W, 16, _EXPORTBUFFER.size)
VIDIOC_DQBUF = _vidioc(_R | _W, 17, _BUFFER.size)
VIDIOC_STREAMON = _vidioc(_W, 18, 4)
VIDIOC_STREAMOFF = _vidioc(_W, 19, 4)
assert (VIDIOC_QUERYCAP, VIDIOC_REQBUFS, VIDIOC_EXPBUF, VIDIOC_DQBUF) == (
    0x80685600, 0xC0145608, 0xC0405610, 0xC0585611)

V4L2_BUF_TYPE_VIDEO_CAPTURE = 1
V4L2_MEMORY_MMAP = 1
V4L2_CAP_VIDEO_CAPTURE = 0x1
V4L2_CAP_STREAMING = 0x04000000
V4L2_CAP_DEVICE_CAPS = 0x80000000
FRAME_TIMEOUT = 20.0  # seconds for vivid's first frame; emulated, it takes well under one


def _v4l2(fd: int, request: int, arg: bytes) -> bytearray:
    out = bytearray(arg)
    fcntl.ioctl(fd, request, out, True)
    return out


def find_vivid_capture() -> str | None:
    """A vivid video capture node (single-planar, streaming), or None."""
    for path in sorted(glob.glob("/dev/video*")):
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            cap = _v4l2(fd, VIDIOC_QUERYCAP, bytes(_CAPABILITY.size))
        except OSError:
            continue
        finally:
            os.close(fd)
        driver, _card, _bus, _version, caps, device_caps = _CAPABILITY.unpack(cap)
        if caps & V4L2_CAP_DEVICE_CAPS:
            caps = device_caps  # this node's own capabilities, not the whole device's
        wanted = V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_STREAMING
        if driver.rstrip(b"\0") == b"vivid" and caps & wanted == wanted:
            return path
    return None


def _dequeue(video: int) -> tuple[int, int, int]:
    """(index, bytesused, length) of the first filled buffer, within FRAME_TIMEOUT."""
    until = time.monotonic() + FRAME_TIMEOUT
    poller = select.poll()
    poller.register(video, select.POLLIN)
    request = _BUFFER.pack(0, V4L2_BUF_TYPE_VIDEO_CAPTURE, 0, 0, 0, 0, V4L2_MEMORY_MMAP, 0, 0, 0, 0)
    while True:
        try:
            done = _v4l2(video, VIDIOC_DQBUF, request)
        except BlockingIOError:
            left = until - time.monotonic()
            if left <= 0:
                raise AssertionError(f"vivid delivered no frame within {FRAME_TIMEOUT} s") from None
            poller.poll(int(left * 1000) + 1)
            continue
        fields = _BUFFER.unpack(done)
        return fields[0], fields[2], fields[8]


def vivid_frame_export(device: str) -> tuple[int, int, int]:
    """Stream one frame from ``device`` into V4L2_MEMORY_MMAP buffers and export the
    filled one: (dma-buf fd, buffer length, bytes of frame in it). vivid's defaults
    (its webcam input, 640x360 YUYV) are kept; closing the node at the end leaves
    the exported buffer alive, held by the dma-buf."""
    video = os.open(device, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    capture = struct.pack("=i", V4L2_BUF_TYPE_VIDEO_CAPTURE)
    try:
        _v4l2(video, VIDIOC_G_FMT, _FORMAT.pack(V4L2_BUF_TYPE_VIDEO_CAPTURE, b""))
        granted = _v4l2(video, VIDIOC_REQBUFS,
                        _REQUESTBUFFERS.pack(2, V4L2_BUF_TYPE_VIDEO_CAPTURE, V4L2_MEMORY_MMAP, 0, 0))
        count = _REQUESTBUFFERS.unpack(granted)[0]
        for index in range(count):  # vivid starts streaming once two are queued
            _v4l2(video, VIDIOC_QBUF,
                  _BUFFER.pack(index, V4L2_BUF_TYPE_VIDEO_CAPTURE, 0, 0, 0, 0, V4L2_MEMORY_MMAP, 0, 0, 0, 0))
        _v4l2(video, VIDIOC_STREAMON, capture)
        try:
            index, bytesused, length = _dequeue(video)
            exported = _v4l2(video, VIDIOC_EXPBUF, _EXPORTBUFFER.pack(
                V4L2_BUF_TYPE_VIDEO_CAPTURE, index, 0, os.O_RDWR | os.O_CLOEXEC, -1))
        finally:
            _v4l2(video, VIDIOC_STREAMOFF, capture)
        return _EXPORTBUFFER.unpack(exported)[4], length, bytesused
    finally:
        os.close(video)


def vgem_export() -> tuple[int, int]:
    """A PRIME export of a new 64 KiB vgem dumb buffer: (dma-buf fd, size)."""
    card = find_vgem_card()
    assert card is not None
    drm = os.open(card, os.O_RDWR | os.O_CLOEXEC)
    try:
        handle, size = _ops.drm_create_dumb(drm, 128, 128, 32)
        try:
            fd = _ops.drm_prime_handle_to_fd(drm, handle, os.O_RDWR | os.O_CLOEXEC)
        finally:
            _ops.drm_gem_close(drm, handle)  # the dma-buf keeps the object
    finally:
        os.close(drm)
    return fd, size


# --- the exports, as the tests see them ---------------------------------------------

# What each exporter calls itself in fdinfo's exp_name (the KBUILD_MODNAME of the
# code that exported): DRM's PRIME helpers for vgem, videobuf2's vmalloc allocator
# (vivid's default) for vivid.
EXPORTERS = {"vgem": "drm", "vivid": "videobuf2_vmalloc"}


@dataclass
class Export:
    kind: str  # "vgem" or "vivid"
    fd: int  # the driver's dma-buf fd; the fixture closes it
    size: int  # what the buffer's size must be
    frame: int  # bytes of a captured frame at the start (vivid), else 0

    @property
    def exporter(self) -> str:
        return EXPORTERS[self.kind]

    def wrap(self) -> pydmabuf.Buffer:
        """Buffer.from_fd with default settings, on a dup of our fd."""
        return pydmabuf.Buffer.from_fd(os.dup(self.fd))


@pytest.fixture(params=sorted(EXPORTERS))
def export(request: pytest.FixtureRequest) -> Iterator[Export]:
    if request.param == "vgem":
        if find_vgem_card() is None:
            pytest.skip(f"no vgem card (modprobe vgem): {NO_EXPORT}")
        fd, size = vgem_export()
        found = Export("vgem", fd, size, 0)
    else:
        device = find_vivid_capture()
        if device is None:
            pytest.skip(f"no vivid capture node (modprobe vivid): {NO_EXPORT}")
        fd, length, bytesused = vivid_frame_export(device)
        # vb2 allocates whole pages; QUERYBUF's length is the plane's unrounded size.
        found = Export("vivid", fd, -(-length // PAGE) * PAGE, bytesused)
    try:
        yield found
    finally:
        os.close(found.fd)


def expected_default_backend() -> str:
    """What PYDMABUF_BACKEND (default auto) must choose here: auto means kernel only
    where an allocator node exists, whatever dma-bufs drivers export."""
    choice = os.environ.get("PYDMABUF_BACKEND", "auto").strip().lower() or "auto"
    if choice != "auto":
        return choice
    return "kernel" if any(os.path.exists(node) for node in ALLOCATOR_NODES) else "fallback"


def _pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


# --- the tests ----------------------------------------------------------------------

def test_a_driver_export_is_a_kernel_buffer_whatever_the_default(export: Export) -> None:
    assert pydmabuf.backend == expected_default_backend()
    if not any(os.path.exists(node) for node in ALLOCATOR_NODES) and "PYDMABUF_BACKEND" not in os.environ:
        assert pydmabuf.backend == "fallback"  # the boot with the allocator nodes removed
    with export.wrap() as buf:
        assert buf.backend == "kernel"
        assert buf.size == export.size
        info = buf.info()
        assert (info.size, info.exporter) == (export.size, export.exporter)
        with pytest.raises(pydmabuf.InvalidArgumentError):
            pydmabuf.Buffer.from_fd(buf.fileno(), own=False, backend="fallback")
    borrowed = pydmabuf.Buffer.from_fd(export.fd, own=False)
    assert borrowed.fileno() != export.fd and borrowed.backend == "kernel"
    borrowed.close()
    os.fstat(export.fd)  # own=False left the driver's fd open


def test_name(export: Export) -> None:
    with export.wrap() as buf:
        buf.set_name(f"foreign-{export.kind}")
        assert buf.name == f"foreign-{export.kind}"
        assert buf.info().name == f"foreign-{export.kind}"


def test_idle_buffer_exports_a_signaled_fence(export: Export) -> None:
    with export.wrap() as buf:
        with buf.export_sync_file() as snapshot:
            assert snapshot.backend == "kernel"
            assert snapshot.signaled
            snapshot.wait(timeout=5)
        buf.wait(timeout=5)
        buf.wait(write=True, timeout=5)


def test_an_imported_fence_holds_the_buffer_until_signaled(export: Export) -> None:
    with pydmabuf.Timeline(backend="kernel") as timeline, export.wrap() as buf:
        with timeline.fence(1) as fence:
            buf.import_sync_file(fence, write=True)
        with pytest.raises(pydmabuf.TimeoutError):
            buf.wait(timeout=0.05)
        with buf.export_sync_file(read=True, write=False) as snapshot:
            assert not snapshot.signaled
            timeline.signal(1)
            snapshot.wait(timeout=5)
        buf.wait(write=True, timeout=5)
        with buf.cpu_access(timeout=5):
            pass


def test_cpu_access_and_map(export: Export) -> None:
    with export.wrap() as buf, buf.map() as mapping:
        assert len(mapping) == export.size
        if export.frame:
            # A streamed frame: limited-range YUYV test pattern has no zero byte;
            # allow text and borders some.
            with buf.cpu_access(read=True, write=False, timeout=5):
                frame = mapping[: export.frame]
            assert frame.count(0) < len(frame) // 2, "vivid's frame is blank"
        with buf.cpu_access(write=True, read=False, timeout=5):
            mapping[:] = _pattern(export.size)
        with buf.map(write=False) as reader, buf.cpu_access(read=True, write=False):
            assert reader[:] == _pattern(export.size)


def test_send_to_another_process(export: Export) -> None:
    """A forked child receives the buffer (and a default-backend buffer in the same
    message), maps it read-only and checks every byte; its exit status reports."""
    with export.wrap() as buf, pydmabuf.udmabuf(PAGE) as local:
        with buf.map() as mapping, buf.cpu_access(write=True, read=False):
            mapping[:] = _pattern(export.size)
        expected = zlib.crc32(_pattern(export.size))
        parent, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def child() -> int:
            parent.close()
            received = pydmabuf.recv(child_end, timeout=10)
            theirs, small = received
            assert isinstance(theirs, pydmabuf.Buffer) and isinstance(small, pydmabuf.Buffer)
            if (theirs.backend, theirs.size, small.backend) != ("kernel", export.size, local.backend):
                return 2
            with theirs.map(write=False) as seen, theirs.cpu_access(read=True, write=False, timeout=5):
                return 0 if zlib.crc32(seen) == expected else 3

        with parent, child_end:
            pid = fork(child)
            pydmabuf.send(parent, buf, local)
            assert join(pid) == 0


def test_accounting_names_the_exporter(export: Export) -> None:
    with export.wrap() as buf:
        buf.set_name("foreign-ps")
        inode = buf.info().inode
        mine = accounting.snapshot().filter(pids=[os.getpid()])
        [usage] = [b for b in mine.buffers if b.inode == inode and b.exporter == export.exporter]
        assert (usage.size, usage.name) == (export.size, "foreign-ps")
        [holder] = [h for h in usage.holders if h.pid == os.getpid()]
        assert holder.fds >= 2  # the fixture's fd and the Buffer's
