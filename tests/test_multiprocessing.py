"""Buffers and SyncFiles as multiprocessing arguments, Queue items and Pool tasks,
on every start method: the fd is duplicated into the receiving process."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler

import _mp_workers
import pytest
from conftest import needs_timeline

import pydmabuf

METHODS = [m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


@pytest.fixture(scope="module", autouse=True)
def _warm_up() -> Iterator[None]:
    # multiprocessing keeps a few fds for the life of the process (the resource
    # sharer's listener, the forkserver and resource tracker pipes): open them
    # before the per-test fd-leak check counts.
    with pydmabuf.Heap("system") as heap, heap.allocate(4096) as buf:
        pickle.loads(ForkingPickler.dumps(buf)).close()  # only multiprocessing pickles a Buffer
    for method in METHODS:
        p = multiprocessing.get_context(method).Process(target=os.getpid)
        p.start()
        p.join(60)
    yield


@needs_timeline
@pytest.mark.parametrize("method", METHODS)
def test_process_args_and_queue(method: str, heap: pydmabuf.Heap, timeline: pydmabuf.Timeline) -> None:
    ctx = multiprocessing.get_context(method)
    out = ctx.Queue()
    taken = ctx.Event()
    with heap.allocate(4096) as buf, timeline.fence(1) as fence:
        p = ctx.Process(target=_mp_workers.fill, args=(buf, fence, out, taken))
        p.start()
        try:
            timeline.signal(1)  # the worker waits on this fence first
            back = out.get(timeout=60)
            taken.set()
            with back, back.map(write=False) as m:
                assert isinstance(back, pydmabuf.Buffer) and m[:4] == b"back"
                assert not os.get_inheritable(back.fileno())
        finally:
            p.join(60)
        assert p.exitcode == 0
        with buf.map(write=False) as m:
            assert m[:6] == b"worker"
    out.close()
    out.join_thread()


@pytest.mark.parametrize("method", METHODS)
def test_pool_tasks(method: str, heap: pydmabuf.Heap) -> None:
    with heap.allocate(4096) as buf:
        with buf.map() as m:
            m[:6] = b"pooled"
        with multiprocessing.get_context(method).Pool(1) as pool:
            assert pool.apply(_mp_workers.read, (buf,)) == b"pooled"
            pool.close()
            pool.join()
