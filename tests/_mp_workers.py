"""Worker functions for test_multiprocessing: a module of their own so that spawn
and forkserver children import only this and pydmabuf, not the test module."""

from __future__ import annotations

import os
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

import pydmabuf


def fill(buf: pydmabuf.Buffer, fence: pydmabuf.SyncFile, out: Queue, taken: Event) -> None:
    """Wait for the parent's fence, write into its buffer, send back a new buffer."""
    fence.wait(20)
    assert not os.get_inheritable(buf.fileno())
    with buf, fence, buf.map() as m:
        m[:6] = b"worker"
    with pydmabuf.Heap("system") as heap, heap.allocate(4096) as mine:
        with mine.map() as m:
            m[:4] = b"back"
        out.put(mine)
        taken.wait(20)  # our resource sharer hands the fd over while we live


def read(buf: pydmabuf.Buffer) -> bytes:
    with buf, buf.map(write=False) as m:
        return bytes(m[:6])


def frame_sum(frame: pydmabuf.Frame) -> tuple[int, int, str, int, int]:
    """What arrived: the layout, and the sum of the luma plane's first row."""
    with frame, frame.plane_view(0, write=False) as y:
        return frame.width, frame.height, frame.format.name, len(frame.objects), sum(y.row(0))
