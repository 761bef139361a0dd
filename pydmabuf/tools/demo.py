"""``python -m pydmabuf demo``: the main job end to end, in two processes.

This process is the producer: it allocates a pool from the best allocator there is
(``pydmabuf.Allocator``: the CMA heap, else the system heap, else udmabuf, else the
fallback's memfds; ``PYDMABUF_PROVIDERS`` overrides), fills frames and
submits each with a fence that it signals after the submit (standing in for a GPU
finishing its work). A second process (this module again, with ``--consume``) is
the consumer: it waits on each fence, maps the frame read-only, checksums every
byte against the producer's checksum, and releases the buffer for reuse.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import zlib
from typing import TYPE_CHECKING

from .ps import SIZE_FORMS, count_arg, human, size_arg

if TYPE_CHECKING:
    from ..buffer import Buffer
    from ..timeline import Timeline

# The library's channel, allocator and timelines load when the demo runs, not when
# the CLI builds its parser (``pydmabuf --help``, ``pydmabuf info``).
_CRC = struct.Struct("<I")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=count_arg(), default=60, help="frames to send (default 60)")
    parser.add_argument(
        "--size",
        type=size_arg,
        default=1 << 20,
        help=f"frame size: {SIZE_FORMS} (default 1M = 1 MiB); rounded up to whole pages, which the demo says",
    )
    parser.add_argument("--buffers", type=count_arg(), default=4, help="buffers in the pool (default 4)")
    parser.add_argument("--consume", metavar="ADDRESS", help=argparse.SUPPRESS)


def _pool(size: int, count: int) -> tuple[list[Buffer], str]:
    from ..allocator import Allocator
    from ..backends import get_backend

    out: list[Buffer] = []
    with Allocator() as allocator:
        try:
            out = [allocator.allocate(size, name=f"demo{i}") for i in range(count)]
        except BaseException:
            for b in out:
                b.close()
            raise
        provider = allocator.last_provider
    if get_backend().name == "fallback" or provider == "fallback":
        what = "fallback memfds"
    else:
        what = "udmabuf" if provider == "udmabuf" else f"the {provider!r} dma-heap"
    return out, what


def _rounding(asked: int, got: int, source: str) -> str | None:
    """What to say when a buffer is larger than ``--size`` asked for (allocators hand out
    whole pages, and some heaps align further), so the sizes printed later do not
    seem to contradict it; None when it is exactly the size asked for."""
    if got == asked:
        return None
    page = os.sysconf("SC_PAGESIZE")
    why = f"whole {page}-byte pages" if got == -(-asked // page) * page else f"as {source} allocates"
    return f"--size {asked} rounded up to {got} bytes ({human(got)}): {why}"


def _consume(address: str) -> int:
    from .. import channel

    t0 = time.monotonic()
    frames = nbytes = bad = fenced = 0
    with channel.Consumer.connect(address, timeout=30) as consumer:
        while (frame := consumer.receive(timeout=60)) is not None:
            with frame:
                if frame.fence is not None:
                    frame.wait(10)
                    fenced += 1
                with frame.buffer.cpu_access(write=False):
                    crc = zlib.crc32(frame.map())
                if crc != _CRC.unpack(frame.meta)[0]:
                    bad += 1
                    print(f"consumer: frame {frame.seq}: checksum MISMATCH", flush=True)
                elif frame.seq <= 3:
                    print(
                        f"consumer: frame {frame.seq}: {frame.buffer.size} bytes, "
                        f"fence {'waited' if frame.fence else 'none'}, crc32 {crc:08x} ok",
                        flush=True,
                    )
                frames += 1
                nbytes += frame.buffer.size
        dt = time.monotonic() - t0
        print(
            f"consumer: {consumer.end_reason}; {frames} frames ({fenced} fenced), "
            f"{bad} checksum mismatches, {nbytes / dt / 2**20:.0f} MiB/s checksummed",
            flush=True,
        )
    return 1 if bad or frames == 0 else 0


def run(args: argparse.Namespace) -> int:
    if args.consume:
        return _consume(args.consume)
    import subprocess

    from .. import channel
    from ..backends import get_backend
    from ..buffer import Buffer
    from ..errors import UnsupportedError
    from ..timeline import Timeline

    address = f"@pydmabuf-demo-{os.getpid()}"
    buffers, what = _pool(args.size, args.buffers)
    rounded = _rounding(args.size, buffers[0].size, what)
    if rounded:
        print(f"producer: {rounded}", flush=True)
    try:
        timeline: Timeline | None = Timeline()
    except UnsupportedError as exc:
        timeline = None
        print(f"producer: no fence source here ({exc}); frames go without fences")
    print(
        f"producer: backend {get_backend().name}, {args.buffers} x {buffers[0].size} bytes from {what}"
        + (f", fences from a {timeline.kind} timeline" if timeline else ""),
        flush=True,
    )
    child: subprocess.Popen[bytes] | None = None
    status = 1
    try:
        with channel.Producer(address, buffers=buffers) as producer:
            child = subprocess.Popen([sys.executable, "-m", "pydmabuf", "demo", "--consume", address])
            producer.wait_for_consumers(1, timeout=60)
            t0 = time.monotonic()
            for seq in range(1, args.frames + 1):
                buf = producer.acquire(timeout=30)
                assert isinstance(buf, Buffer)  # a buffer producer (not frames)
                m = producer.mapping(buf)
                with buf.cpu_access(read=False):
                    m[:8] = seq.to_bytes(8, "little")  # a different frame each time
                    crc = zlib.crc32(m)
                if timeline is None:
                    producer.submit(buf, meta=_CRC.pack(crc))
                else:
                    with timeline.fence(seq) as fence:
                        producer.submit(buf, fence, meta=_CRC.pack(crc))
                    timeline.signal(seq)  # "the GPU is done": the consumer was waiting on it
            while producer.free < args.buffers and producer.consumers:
                producer.poll(1.0)
            dt = time.monotonic() - t0
            print(f"producer: {args.frames} frames sent through {args.buffers} reused buffers", flush=True)
    finally:  # the Producer's close above ended the stream
        if child is not None:
            status = child.wait(60)
        if timeline is not None:
            timeline.close()
    size = buffers[0].size
    print(
        f"throughput: {args.frames / dt:.0f} frames/s, {args.frames * size / dt / 2**20:.0f} MiB/s "
        f"({size} byte frames, producer checksums, consumer waits, maps, checksums, releases)"
    )
    return status
