"""Allocate a buffer, map it, write it under CPU-access brackets and read it back.

Runs on the kernel backend (a real dma-heap or udmabuf) and on the fallback.
"""

import pydmabuf

print(f"backend: {pydmabuf.backend}, heaps: {pydmabuf.heaps()}")

if "system" in pydmabuf.heaps():
    with pydmabuf.Heap("system") as heap:
        buf = heap.allocate(1 << 20, name="example-frame")
else:  # e.g. Debian arm64: no dma-heaps, but udmabuf
    buf = pydmabuf.udmabuf(1 << 20, name="example-frame")

with buf, buf.map() as mapping:
    print(buf)  # fd, size and name
    with buf.cpu_access(read=False, write=True):
        mapping[:13] = b"hello dma-buf"
    with buf.cpu_access(read=True, write=False):
        assert mapping[:13] == b"hello dma-buf"
    buf.set_name("example-renamed")
    info = buf.info()
    print(f"exporter={info.exporter} name={info.name} size={info.size} inode={info.inode}")
print("ok")
