"""Frames travel whole: send/recv keep the descriptor and the objects (one buffer or
one per plane), pickling for multiprocessing does too, and a lying descriptor is a
ProtocolError with every fd closed. Both backends."""

from __future__ import annotations

import multiprocessing
import os
import socket
import struct

import _mp_workers
import pytest
from _procs import fork, join
from conftest import open_fds

import pydmabuf
from pydmabuf import share
from pydmabuf.frame import Frame, allocate_frame


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def _fill(frame: Frame) -> None:
    for i, view in enumerate(frame.plane_views()):
        with view:
            for r in range(view.shape[0]):
                view.row(r)[:] = bytes([(i * 16 + r) % 251]) * view.shape[1]


@pytest.mark.parametrize("separate", [False, True])
def test_frame_round_trip_keeps_descriptor_and_pixels(separate: bool) -> None:
    a, b = _pair()
    with a, b, allocate_frame(641, 479, "NV12", separate_planes=separate) as sent:
        _fill(sent)
        with pydmabuf.Timeline() as tl, tl.fence(1) as fence:
            tl.signal(1)
            pydmabuf.send(a, sent, fence, data=b"meta")
            got, data = share.recv_data(b)
        assert data == b"meta" and len(got) == 2
        frame, fence_back = got
        assert isinstance(frame, Frame) and isinstance(fence_back, pydmabuf.SyncFile)
        with frame, fence_back:
            assert (frame.width, frame.height, frame.format, frame.modifier) == (641, 479, sent.format, 0)
            assert frame.planes == sent.planes and len(frame.objects) == len(sent.objects)
            for mine, theirs in zip(sent.plane_views(write=False), frame.plane_views(write=False), strict=True):
                with mine, theirs:
                    assert mine.tobytes() == theirs.tobytes()
            assert fence_back.signaled
        assert all(obj.closed for obj in frame.objects)


def test_frame_reaches_another_process() -> None:
    a, b = _pair()
    with allocate_frame(64, 32, "NV12") as sent:
        _fill(sent)
        expected = sum(bytes(sent.plane_view(0, write=False).row(0)))

        def child() -> int:
            a.close()
            [frame] = pydmabuf.recv(b, timeout=20)
            assert isinstance(frame, Frame)
            with frame, frame.plane_view(0, write=False) as y:
                return 0 if sum(y.row(0)) == expected and frame.format.name == "NV12" else 3

        pid = fork(child)
        b.close()
        with a:
            pydmabuf.send(a, sent)
        assert join(pid) == 0


def test_lying_frame_descriptor_is_refused_and_fds_closed() -> None:
    a, b = _pair()
    with a, b, allocate_frame(64, 32, "NV12") as sent:
        # Capture a valid message, then claim a frame far larger than its buffer.
        pydmabuf.send(a, sent)
        msg, anc, _flags, _addr = b.recvmsg(4096, socket.CMSG_SPACE(16))
        for fd in struct.unpack(f"{len(anc[0][2]) // 4}i", anc[0][2]):
            os.close(fd)
        head = struct.Struct("<IIIQBB")
        at = 8 + 20  # prefix, then the frame record's fixed part
        width, height, fourcc, modifier, nobj, nplanes = head.unpack_from(msg, at)
        forged = bytearray(msg)
        head.pack_into(forged, at, width, height * 100, fourcc, modifier, nobj, nplanes)
        before = open_fds()
        a.sendmsg([bytes(forged)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", sent.objects[0].fileno()))])
        with pytest.raises(share.ProtocolError, match="frame descriptor"):
            pydmabuf.recv(b)
        assert open_fds() == before


@pytest.fixture(scope="module")
def _resource_sharer() -> None:
    # multiprocessing's resource sharer keeps a listener open for the life of the
    # process: open it before the per-test fd count (as test_multiprocessing does).
    import pickle
    from multiprocessing.reduction import ForkingPickler

    with pydmabuf.Heap("system") as heap, heap.allocate(4096) as buf:
        pickle.loads(ForkingPickler.dumps(buf)).close()  # only multiprocessing pickles a Buffer


def test_frame_pickles_for_multiprocessing(_resource_sharer: None) -> None:
    ctx = multiprocessing.get_context("fork")
    with allocate_frame(64, 32, "NV12") as sent, ctx.Pool(1) as pool:
        _fill(sent)
        width, height, name, objects, row_sum = pool.apply(_mp_workers.frame_sum, (sent,))
        assert (width, height, name, objects) == (64, 32, "NV12", 1)
        with sent.plane_view(0, write=False) as y:
            assert row_sum == sum(y.row(0))
        pool.close()
        pool.join()
