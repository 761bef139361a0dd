"""Share frames with another process: a producer fills buffers from a pool and
submits each with a fence; a consumer process waits on the fence, reads the frame
through a read-only mapping and releases it, so the producer can reuse the buffer.
Runs on whichever backend is active (real dma-bufs and fences, or the fallback)."""

import multiprocessing
import os

import pydmabuf
from pydmabuf.channel import Consumer, Producer

FRAMES, SIZE = 8, 64 * 1024


def consumer(address: str) -> None:
    with Consumer.connect(address) as stream:
        while (frame := stream.receive(timeout=30)) is not None:
            with frame:  # releases the buffer back to the producer at the end
                frame.wait(timeout=10)  # the producer's fence: contents are ready
                with frame.buffer.cpu_access(write=False):
                    first = frame.map()[0]
                assert first == frame.seq, (first, frame.seq)
                print(f"consumer: frame {frame.seq} ({frame.meta.decode()}) starts with {first}")
        print("consumer:", stream.end_reason)


if __name__ == "__main__":
    address = f"@pydmabuf-example-{os.getpid()}"  # "@": an abstract socket, no file
    with Producer(address, size=SIZE, count=2) as producer, pydmabuf.Timeline() as timeline:
        child = multiprocessing.get_context("spawn").Process(target=consumer, args=(address,))
        child.start()
        producer.wait_for_consumers(1, timeout=30)
        for seq in range(1, FRAMES + 1):
            buf = producer.acquire(timeout=30)  # waits until the consumer released one
            with buf.cpu_access(read=False):
                producer.mapping(buf)[:] = bytes([seq]) * SIZE
            with timeline.fence(seq) as fence:
                producer.submit(buf, fence, meta=f"frame {seq} of {FRAMES}".encode())
            timeline.signal(seq)  # e.g. when a GPU finishes; here, right away
    child.join(30)  # closing the producer ended the stream
    assert child.exitcode == 0
    print(f"producer: {FRAMES} frames through 2 buffers on the {pydmabuf.backend} backend")
