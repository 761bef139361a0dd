"""Wait on fences: with a timeout, after a signal from another thread, and merged."""

import threading

import pydmabuf

with pydmabuf.Timeline() as timeline:
    print(f"backend: {pydmabuf.backend}, fence source: {timeline.kind}")
    first, second = timeline.fence(1), timeline.fence(2)

    try:
        first.wait(timeout=0.1)
    except pydmabuf.TimeoutError:
        print("first fence: not signaled after 0.1 s")

    both = first.merge(second, name="first+second")
    threading.Timer(0.05, timeline.signal, args=(1,)).start()
    first.wait(timeout=5)
    print(f"first signaled; merged signaled: {both.signaled}")

    timeline.signal(2)
    both.wait(timeout=5)
    print(both)  # status and the fences inside
    for fence in both.info().fences:
        print(f"  {fence.driver_name}/{fence.obj_name} status={fence.status} at {fence.timestamp_ns} ns")
    for f in (first, second, both):
        f.close()
print("ok")
