"""Pickling is for multiprocessing only: a plain ``pickle.dumps`` (or ``copy``) of an
fd-owning object is a TypeError that duplicates nothing and starts nothing, while
multiprocessing's own pickler still carries the fd (its process tests are
test_multiprocessing.py and test_frame_share.py)."""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import threading
import time
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler

import pytest
from conftest import needs_timeline, open_fds

import pydmabuf


@pytest.fixture(scope="module", autouse=True)
def _resource_sharer() -> Iterator[None]:
    # multiprocessing's resource sharer keeps a listener (an fd and a thread) for the
    # life of the process once used: start it before the per-test fd count.
    from multiprocessing import resource_sharer

    base = open_fds()
    new_listener = getattr(resource_sharer._resource_sharer, "_listener", None) is None
    with pydmabuf.Heap("system") as heap, heap.allocate(4096) as buf:
        pickle.loads(ForkingPickler.dumps(buf)).close()
    # The sharer's thread closes its duplicate and the accepted connection *after* the
    # receiver has the fd, so wait for that: a count taken earlier would see those fds
    # vanish during the first test (seen once on a loaded 2-core CI machine).
    settled = base + (1 if new_listener else 0)
    deadline = time.monotonic() + 30.0
    while open_fds() != settled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open_fds() == settled, f"the resource sharer kept {open_fds() - settled} fds open"
    yield


def _objects(heap: pydmabuf.Heap, timeline: pydmabuf.Timeline | None) -> list[object]:
    objs: list[object] = [heap.allocate(4096), pydmabuf.allocate_frame(16, 16, "NV12", allocator=heap), heap]
    if timeline is not None:
        objs.append(timeline.fence(1))
    return objs


@pytest.fixture
def objects(heap: pydmabuf.Heap, request: pytest.FixtureRequest) -> Iterator[list[object]]:
    from conftest import TIMELINE_MISSING

    timeline = None if TIMELINE_MISSING else pydmabuf.Timeline()
    objs = _objects(heap, timeline)
    yield objs
    for obj in objs:
        if obj is not heap:
            obj.close()  # type: ignore[attr-defined]
    if timeline is not None:
        timeline.close()


def test_plain_pickle_refuses_and_leaks_nothing(objects: list[object]) -> None:
    fds, threads = open_fds(), threading.active_count()
    for obj in objects:
        kind = type(obj).__name__
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError, match=f"cannot pickle.*{kind}"):
                pickle.dumps(obj, protocol)
        for _ in range(50):  # each of these used to pin a duplicate fd for good
            with pytest.raises(TypeError, match="multiprocessing"):
                pickle.dumps(obj)
        with pytest.raises(TypeError):
            copy.copy(obj)
        with pytest.raises(TypeError):
            copy.deepcopy(obj)
        with pytest.raises(TypeError):
            pickle.dumps([1, {"nested": obj}])
    assert (open_fds(), threading.active_count()) == (fds, threads)


def test_the_refusal_says_what_to_do_instead(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf, pytest.raises(TypeError, match=r"pydmabuf\.send\(\).*dup\(\)"):
        pickle.dumps(buf)
    with pytest.raises(TypeError, match="open Heap"):
        pickle.dumps(heap)


def test_closing_after_refused_pickles_frees_the_fd(heap: pydmabuf.Heap) -> None:
    before = open_fds()
    buf = heap.allocate(4096)
    for _ in range(20):
        with pytest.raises(TypeError):
            pickle.dumps(buf)
    buf.close()
    assert open_fds() == before


def test_multiprocessings_pickler_still_carries_the_fd(heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf:
        with buf.map() as m:
            m[:4] = b"mp!!"
        again = pickle.loads(ForkingPickler.dumps(buf))  # what Queue.put and Pool send
        with again, again.map(write=False) as m:
            assert isinstance(again, pydmabuf.Buffer) and again.fileno() != buf.fileno()
            assert m[:4] == b"mp!!"
        with pydmabuf.allocate_frame(16, 16, "NV12", allocator=heap) as frame, \
                pickle.loads(ForkingPickler.dumps(frame)) as copied:
            assert (copied.width, copied.format.name, len(copied.objects)) == (16, "NV12", 1)


@needs_timeline
def test_multiprocessings_pickler_carries_a_fence(timeline: pydmabuf.Timeline) -> None:
    with timeline.fence(1) as fence, pickle.loads(ForkingPickler.dumps(fence)) as again:
        assert isinstance(again, pydmabuf.SyncFile) and not again.signaled
        timeline.signal(1)
        again.wait(5)


def test_a_pipe_between_processes(heap: pydmabuf.Heap) -> None:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    with heap.allocate(4096) as buf, parent, child:
        parent.send(buf)  # Connection.send: ForkingPickler
        with child.recv() as received:
            assert received.size == 4096 and received.fileno() != buf.fileno()
