"""pydmabuf.gstreamer against GStreamer's own ``unixfdsink`` and ``unixfdsrc`` (1.26, in the
consumer root): exact pixels both ways, GStreamer's layouts and format numbers, a
GStreamer consumer that dies mid-stream, and frames/s next to GStreamer talking to
itself. Skipped outside the consumer tier (see test_consumer_examples.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import pydmabuf
from pydmabuf.formats import Format
from pydmabuf.gstreamer import GST_VIDEO_FORMATS, GstConsumer, GstProducer, default_layout

pytestmark = pytest.mark.skipif(not os.environ.get("PYDMABUF_CONSUMER_TIER"),
                                reason="needs the consumer root: the real-kernel tier's consumer boot runs it")

W, H = 66, 50


def _gst() -> tuple[Any, Any]:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstVideo", "1.0")
    from gi.repository import Gst, GstVideo

    Gst.init(None)
    return Gst, GstVideo


def _info(gst_format: str, width: int = W, height: int = H) -> Any:
    _Gst, GstVideo = _gst()
    return GstVideo.VideoInfo.new_from_caps(
        _Gst.Caps.from_string(f"video/x-raw,format={gst_format},width={width},height={height}"))


def _plane_rows(data: bytes, info: Any, gst_format: str) -> list[bytes]:
    """GStreamer's planes in ``data`` (one frame, laid out as ``info`` says) as unpadded
    rows; how many rows of how many bytes: the DRM format's plane sizes."""
    fmt = Format.from_name(gst_format)
    return [b"".join(data[info.offset[i] + y * info.stride[i]:][:plane.min_pitch(info.width)]
                     for y in range(plane.height(info.height))) for i, plane in enumerate(fmt.planes)]


def _frame_rows(frame: Any) -> list[bytes]:
    with frame.cpu_access(write=False):
        views = frame.plane_views(write=False)
        try:
            return [view.tobytes() for view in views]
        finally:
            for view in views:
                view.release()


def test_layouts_and_format_numbers_are_gstreamers() -> None:
    _Gst, GstVideo = _gst()
    for name, number in GST_VIDEO_FORMATS.items():
        assert int(GstVideo.VideoFormat.from_string(name)) == number, name
        for width, height in ((W, H), (65, 49), (64, 48), (1, 1)):
            ours = default_layout(name, width, height)
            if ours is None:
                continue
            info = _info(name, width, height)
            theirs = [(info.offset[i], info.stride[i]) for i in range(info.finfo.n_planes)]
            assert ours == theirs, (name, width, height)


@pytest.mark.parametrize(("gst_format", "frames"), [("NV12", 6), ("RGBA", 6), ("I420", 4)])
def test_unixfdsink_into_pydmabuf(tmp_path: Path, gst_format: str, frames: int) -> None:
    sock, reference = tmp_path / "sink.sock", tmp_path / "reference.raw"
    caps = f"video/x-raw,format={gst_format},width={W},height={H},framerate=30/1"
    # The same deterministic test pattern twice: once to a file (GStreamer's own bytes),
    # once into unixfdsink for pydmabuf.
    _run_gst(["videotestsrc", f"num-buffers={frames}", "pattern=ball", "!", caps, "!",
                    "filesink", f"location={reference}"], check=True, timeout=120)
    sink = _start_gst(["videotestsrc", f"num-buffers={frames}", "pattern=ball", "!",
                             caps, "!", "unixfdsink", f"socket-path={sock}", "wait-for-connection=true"])
    try:
        info = _info(gst_format)
        data = reference.read_bytes()
        with GstConsumer.connect(str(sock), timeout=60) as consumer:
            for seq in range(frames):
                delivery = consumer.receive(timeout=60)
                assert delivery is not None and delivery.frame is not None, consumer.end_reason
                want = _plane_rows(data[seq * info.size:(seq + 1) * info.size], info, gst_format)
                assert _frame_rows(delivery.frame) == want, f"frame {seq} differs"
                assert delivery.pts is not None and delivery.duration in (33333333, 33333334)  # 1/30 s, rounded
                delivery.release()
            assert consumer.receive(timeout=60) is None and "EOS" in (consumer.end_reason or "")
        kind = delivery.buffer.backend if delivery.buffer is not None else "?"
        print(f"unixfdsink -> pydmabuf GstConsumer: {frames} {gst_format} {W}x{H} frames ({kind} memfds), "
              "exact pixels")
    finally:
        assert sink.wait(timeout=60) == 0


def _start_gst(args: list[str]) -> subprocess.Popen[bytes]:
    """gst-launch-1.0 with ``args``, its progress lines kept out of the log."""
    return subprocess.Popen(["gst-launch-1.0", "-q", *args], stdout=subprocess.DEVNULL)


def _run_gst(args: list[str], **kwargs: Any) -> None:
    subprocess.run(["gst-launch-1.0", "-q", *args], stdout=subprocess.DEVNULL, **kwargs)


def _wait_for(sock: Path) -> None:
    until = time.monotonic() + 60
    while not sock.exists():
        assert time.monotonic() < until, f"{sock} never appeared"
        time.sleep(0.05)


def _draw(frame: Any, seq: int) -> None:
    with frame.cpu_access():
        for index, view in enumerate(frame.plane_views()):
            for y in range(view.rows):
                view.row(y)[:] = bytes(((x * 7 + y * 13 + 50 * index + seq) & 0xFF) if not (
                    frame.format.name == "XRGB8888" and x % 4 == 3) else 0xFF for x in range(view.row_bytes))
            view.release()


@pytest.mark.parametrize(("fmt", "out"), [("NV12", "I420"), ("XRGB8888", "RGBA")])
def test_pydmabuf_into_unixfdsrc(tmp_path: Path, fmt: str, out: str) -> None:
    sock, received = tmp_path / "src.sock", tmp_path / "received.raw"
    frames = 5
    with GstProducer(str(sock), frame_layout=(W, H, fmt), count=3) as producer:
        source = _start_gst(["unixfdsrc", f"socket-path={sock}", "!", "videoconvert",
                                   "!", f"video/x-raw,format={out}", "!", "filesink", f"location={received}"])
        drawn = []
        producer.wait_for_sources(1, timeout=60)
        for seq in range(frames):
            frame = producer.acquire(timeout=60)
            _draw(frame, seq)
            drawn.append(_frame_rows(frame))
            assert producer.submit(frame) == 1
        backend = producer.frames[0].objects[0].backend
    assert source.wait(timeout=60) == 0  # EOS at close ends its pipeline cleanly
    info = _info(out)
    data = received.read_bytes()
    assert len(data) == frames * info.size
    for seq, planes in enumerate(drawn):
        got = _plane_rows(data[seq * info.size:(seq + 1) * info.size], info, out)
        if fmt == "NV12":  # I420: the same luma, NV12's interleaved CbCr split in two
            want = [planes[0], planes[1][0::2], planes[1][1::2]]
        else:  # XRGB8888 (bytes B, G, R, X) -> RGBA
            row = planes[0]
            want = [b"".join(bytes((row[i + 2], row[i + 1], row[i], 0xFF)) for i in range(0, len(row), 4))]
        assert got == want, f"frame {seq} differs"
    print(f"pydmabuf GstProducer -> unixfdsrc ! videoconvert: {frames} {fmt} {W}x{H} frames "
          f"({'dma-bufs' if backend == 'kernel' else 'memfds'}), exact pixels")


def test_a_gstreamer_consumer_that_dies_loses_pydmabuf_nothing(tmp_path: Path) -> None:
    sock = tmp_path / "src.sock"
    with GstProducer(str(sock), frame_layout=(W, H, "NV12"), count=3) as producer:
        # fakesink holds nothing; a queue that never drains holds every buffer it gets
        source = _start_gst(["unixfdsrc", f"socket-path={sock}", "!", "queue",
                                   "max-size-buffers=0", "max-size-time=0", "max-size-bytes=0", "!", "fakesink",
                                   "sync=true", "ts-offset=3600000000000"])
        producer.wait_for_sources(1, timeout=60)
        for _ in range(3):
            producer.submit(producer.acquire(timeout=60))
        with pytest.raises(pydmabuf.TimeoutError):
            producer.acquire(timeout=1)  # all three held by GStreamer
        os.kill(source.pid, signal.SIGKILL)
        source.wait(timeout=60)
        producer.acquire(timeout=30)  # the dead source's buffers are free again
        assert producer.sources == 0
    print("a GStreamer consumer killed holding every frame: all free again at once")


def test_frames_per_second_next_to_gstreamer_itself(tmp_path: Path) -> None:
    frames, caps = 300, "video/x-raw,format=NV12,width=320,height=240,framerate=1000/1"
    sock = tmp_path / "rate.sock"
    # GStreamer to GStreamer: unixfdsink in one process, unixfdsrc ! fakesink in another
    sink = _start_gst(["videotestsrc", f"num-buffers={frames}", "pattern=black", "!",
                             caps, "!", "unixfdsink", f"socket-path={sock}", "wait-for-connection=true"])
    _wait_for(sock)  # unixfdsrc fails at once, never retrying, if the sink does not listen yet
    started = time.monotonic()
    _run_gst(["unixfdsrc", f"socket-path={sock}", "!", "fakesink"], check=True,
                   timeout=300)
    gst_rate = frames / (time.monotonic() - started)
    assert sink.wait(timeout=60) == 0
    sock2 = tmp_path / "rate2.sock"
    sink = _start_gst(["videotestsrc", f"num-buffers={frames}", "pattern=black", "!",
                             caps, "!", "unixfdsink", f"socket-path={sock2}", "wait-for-connection=true"])
    with GstConsumer.connect(str(sock2), timeout=60) as consumer:
        started = time.monotonic()
        count = 0
        while (delivery := consumer.receive(timeout=60)) is not None:
            delivery.release()
            count += 1
        ours = count / (time.monotonic() - started)
    assert sink.wait(timeout=60) == 0 and count == frames
    print(f"frames/s, {frames} 320x240 NV12 frames from unixfdsink, wall clock from the source's start: "
          f"pydmabuf GstConsumer {ours:.0f}, GStreamer unixfdsrc ! fakesink {gst_rate:.0f}")
