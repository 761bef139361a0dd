"""Hand GPU memory to another process as a dma-buf.

This process allocates 2 MiB on the GPU, fills it, exports the allocation with
pydmabuf.cuda (cuMemGetHandleForAddressRange) and passes the dma-buf over a Unix
socket; the other process receives a pydmabuf.Buffer it can name, poll, or import
into another device (an RDMA NIC with ibv_reg_dmabuf_mr, Vulkan, V4L2). The CPU
cannot map it: nv_dmabuf refuses mmap. Where there is no CUDA driver, no GPU, or a
GPU that cannot export dma-bufs, it says why and exits 0.
"""

import ctypes
import multiprocessing
import socket

import pydmabuf
from pydmabuf import cuda

SIZE = 2 << 20


def receiver(sock: socket.socket) -> None:
    (buf,) = pydmabuf.recv(sock)  # the fd arrives over SCM_RIGHTS
    with buf:
        info = buf.info()
        print(f"receiver: a {buf.size}-byte dma-buf from {info.exporter!r} named {buf.name!r}")
        try:
            buf.map()
        except pydmabuf.UnsupportedError as exc:
            print(f"receiver: not CPU-mappable, as expected: {exc}")
        # ...hand buf.fileno() to an importer here (ibv_reg_dmabuf_mr, vkAllocateMemory...)
    sock.send(b"done")


def main() -> None:
    try:
        cuda.check(0)
    except pydmabuf.UnsupportedError as exc:
        print(f"cuda_share: nothing to do here: {exc}")
        return

    # What a CUDA program gets from cudaMalloc (or torch/cupy arrays, which export_region
    # also takes): here 2 MiB straight from the driver API, filled with 0x5A.
    cu = ctypes.CDLL("libcuda.so.1")
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    for call, args in (("cuDeviceGet", (ctypes.byref(dev), 0)),
                       ("cuDevicePrimaryCtxRetain", (ctypes.byref(ctx), dev)), ("cuCtxPushCurrent_v2", (ctx,)),
                       ("cuMemAlloc_v2", (ctypes.byref(ptr), ctypes.c_size_t(SIZE))),
                       ("cuMemsetD8_v2", (ptr, ctypes.c_ubyte(0x5A), ctypes.c_size_t(SIZE)))):
        if getattr(cu, call)(*args) != 0:
            raise RuntimeError(f"{call} failed")
    try:
        region = cuda.export_region(ptr.value + 4096, 1024)  # an object inside the allocation
        print(f"sender: exported the {region.buffer.size}-byte allocation; the object is at offset "
              f"{region.offset} ({region.size} bytes)")
        with region.buffer as buf:
            buf.set_name("gpu-frame")
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with mine, theirs:
                child = multiprocessing.get_context("spawn").Process(target=receiver, args=(theirs,))
                child.start()
                pydmabuf.send(mine, buf)
                assert mine.recv(16) == b"done"
                child.join(60)
                assert child.exitcode == 0
    finally:
        cu.cuMemFree_v2(ptr)
        cu.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
        cu.cuDevicePrimaryCtxRelease_v2(dev)
    print("sender: done")


if __name__ == "__main__":
    main()
