"""The channel carries whole frames: a Producer made for a frame layout (or given
Frames) delivers pydmabuf.Frame objects with the same descriptor and pixels to
another process, reuses them after release, and (on the fallback) hands consumers
read-only copies of the planes. Both backends."""

from __future__ import annotations

import itertools
import os

import pytest
from _procs import fork, join

import pydmabuf
from pydmabuf.channel import Consumer, Delivery, Producer
from pydmabuf.frame import Frame, allocate_frame

_names = itertools.count()
W, H = 64, 32


def address() -> str:
    return f"\0pydmabuf-frames-{os.getpid()}-{next(_names)}"


def _paint(frame: Frame, seq: int) -> None:
    with frame.cpu_access(read=False):
        for i, view in enumerate(frame.plane_views()):
            for r in range(view.shape[0]):
                view.row(r)[:] = bytes([(seq * 5 + i * 3 + r) % 251]) * view.shape[1]
            view.release()


def _check(frame: Frame, seq: int) -> bool:
    with frame.cpu_access(write=False):
        for i, view in enumerate(frame.plane_views(write=False)):
            for r in range(view.shape[0]):
                if bytes(view.row(r)) != bytes([(seq * 5 + i * 3 + r) % 251]) * view.shape[1]:
                    return False
            view.release()
    return True


def _consume(path: str, expect: int) -> int:
    with Consumer.connect(path, timeout=10) as consumer:
        n = 0
        while (item := consumer.receive(timeout=10)) is not None:
            assert isinstance(item, Delivery) and isinstance(item.frame, Frame)
            with item:
                frame = item.frame
                if (frame.width, frame.height, frame.format.name) != (W, H, "NV12") or not _check(frame, item.seq):
                    return 4
                if frame.objects[0].backend == "fallback":
                    with pytest.raises(OSError):  # read-only copies of the producer's planes
                        frame.objects[0].map(write=True)
            n += 1
    return 0 if n == expect else 3


@pytest.mark.parametrize("separate", [False, True])
def test_frames_flow_to_another_process_and_are_reused(separate: bool) -> None:
    path = address()
    frames = [allocate_frame(W, H, "NV12", separate_planes=separate) for _ in range(2)]
    with Producer(path, frames=frames) as producer:
        assert producer.frames == frames and len(producer.buffers) == (4 if separate else 2)
        pid = fork(lambda: _consume(path, expect=6))
        producer.wait_for_consumers(1, timeout=10)
        seen = set()
        for seq in range(1, 7):  # the channel numbers frames from 1
            frame = producer.acquire(timeout=10)
            assert isinstance(frame, Frame)
            seen.add(id(frame))
            _paint(frame, seq)
            assert producer.submit(frame) == 1
        assert seen == {id(f) for f in frames}  # released frames come back
        producer.close()
        assert join(pid) == 0
    assert all(f.closed for f in frames)


def test_frame_layout_allocates_the_pool() -> None:
    path = address()
    with Producer(path, frame_layout=(W, H, "NV12"), count=3) as producer:
        assert len(producer.frames) == 3
        assert all((f.width, f.height, f.format.name) == (W, H, "NV12") for f in producer.frames)
        pid = fork(lambda: _consume(path, expect=2))
        producer.wait_for_consumers(1, timeout=10)
        for seq in (1, 2):
            frame = producer.acquire(timeout=10)
            assert isinstance(frame, Frame)
            _paint(frame, seq)
            producer.submit(frame)
        producer.close()
        assert join(pid) == 0


def test_frame_and_buffer_arguments_do_not_mix() -> None:
    with allocate_frame(W, H, "NV12") as frame, pytest.raises(pydmabuf.InvalidArgumentError):
        Producer(address(), frames=[frame], size=4096)
    with pytest.raises(pydmabuf.InvalidArgumentError):
        Producer(address(), frame_layout=(W, H))  # type: ignore[arg-type]
    with pytest.raises(pydmabuf.InvalidArgumentError):
        Producer(address(), frames=[])
