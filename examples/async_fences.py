"""Wait on many fences from asyncio while other tasks keep running.

A "device" (a thread here) finishes frames out of order and signals each frame's
fence; one consumer task per frame awaits its fence, ``pydmabuf.aio.as_completed``
reports the frames in the order they finish, a heartbeat task keeps ticking
meanwhile, and a last task awaits one fence merged from all of them. Waiting adds
no fd: the loop watches each fence's own fd, once for all its waiters.
Runs on either backend: on the fallback each fence is one end of a connected
SOCK_SEQPACKET socketpair (its signal end sends one message); on a kernel the
Timeline makes sw_sync fences, or vgem fences where sw_sync is missing.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pydmabuf
import pydmabuf.aio

FRAMES = 32


def device(timelines: list[pydmabuf.Timeline], order: list[int]) -> None:
    for i in order:
        time.sleep(0.005)
        timelines[i].signal(1)


async def consume(i: int, fence: pydmabuf.SyncFile, finished: list[int]) -> None:
    await fence.wait_async(timeout=8)  # vgem fences expire after ~10 s anyway
    finished.append(i)


async def heartbeat(stop: asyncio.Event) -> int:
    beats = 0
    while not stop.is_set():
        beats += 1
        await asyncio.sleep(0.002)
    return beats


async def main() -> None:
    timelines = [pydmabuf.Timeline() for _ in range(FRAMES)]  # one per frame: any order
    fences = [tl.fence(1) for tl in timelines]
    everything = pydmabuf.SyncFile.merge_all(fences, name="all-frames")
    print("before:", everything)
    order = random.sample(range(FRAMES), FRAMES)
    stop = asyncio.Event()
    beat = asyncio.create_task(heartbeat(stop))
    finished: list[int] = []
    thread = threading.Thread(target=device, args=(timelines, order))
    start = time.monotonic()
    thread.start()
    try:
        consumers = asyncio.gather(*(consume(i, f, finished) for i, f in enumerate(fences)))
        in_order = [f async for f in pydmabuf.aio.as_completed(fences, timeout=8)]
        await consumers
        await everything.wait_async(timeout=8)
    finally:
        await asyncio.to_thread(thread.join)
        stop.set()
        beats = await beat
    took = time.monotonic() - start
    print("after: ", everything)
    stamps = [f.info().fences[0].timestamp_ns for f in fences]  # CLOCK_MONOTONIC ns
    print(f"{FRAMES} frames done in {took * 1000:.0f} ms, signal times span "
          f"{(max(stamps) - min(stamps)) / 1e6:.1f} ms; heartbeat ticked {beats} times meanwhile")
    assert sorted(finished) == list(range(FRAMES)) and beats > 0 and everything.signaled
    assert sorted(fences.index(f) for f in in_order) == list(range(FRAMES))  # each once, as it finished
    everything.close()
    for fence in fences:
        fence.close()
    for tl in timelines:
        tl.close()


if __name__ == "__main__":
    asyncio.run(main())
