/* pydmabuf's optional compiled path: the hot ioctls and syscalls as plain C calls.
 *
 * cffi's API mode compiles this into pydmabuf.uapi._fastops when a C compiler is
 * present at install (hatch_build.py, tools/build_fastops.py); without one, the pure
 * path (fcntl.ioctl with packed structs) runs instead, with the same behaviour.
 *
 * Each function fills the kernel's struct, issues the call, retries EINTR (and
 * EAGAIN where the kernel uses it for "try again"), and reports failure the cheapest
 * way Python can test: -1 with errno set (cffi saves it for ffi.errno), or 0 for the
 * truth-valued ones. They raise nothing: the Python caller sends a failure through
 * the ops layer's checked call, which raises the library's typed error with its hint.
 * Request numbers come from Python (pydmabuf.uapi.ffi computes them from cdefs/),
 * so the tests that check them against the kernel headers cover this file too.
 */
#ifndef _GNU_SOURCE  /* statx; Python.h, which cffi includes first, defines it already */
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

/* The kernel's structs, from the declarations the ABI layer uses (one source). */
#include "dma-buf.h"
#include "dma-heap.h"
#include "udmabuf.h"

#define RETRY(call) do { r = (call); } while (r < 0 && (errno == EINTR || errno == EAGAIN))

/* DMA_BUF_IOCTL_SYNC: 1 on success, 0 on failure (errno set). True on success like
 * fcntl.ioctl's result on the pure path, so one truth test serves both. */
static int pdb_sync(int fd, unsigned long request, uint64_t flags)
{
    struct dma_buf_sync arg = { .flags = flags };
    int r;
    RETRY(ioctl(fd, request, &arg));
    return r >= 0;
}

/* DMA_BUF_IOCTL_EXPORT_SYNC_FILE: the new fd, or -1 (errno set). An ioctl that
 * returns the new fd as its result instead (the native benchmark's stand-in,
 * NS_GET_USERNS) is read the same way; EXPORT itself returns 0. */
static int pdb_export_sync_file(int fd, unsigned long request, uint32_t flags)
{
    struct dma_buf_export_sync_file arg = { .flags = flags, .fd = -1 };
    int r;
    RETRY(ioctl(fd, request, &arg));
    if (r < 0)
        return -1;
    return r > 0 ? r : arg.fd;
}

/* DMA_HEAP_IOCTL_ALLOC: the new buffer fd, or -1 (errno set). The arguments that stay
 * the same come first, so functools.partial(pdb_heap_alloc, request, fd_flags) is the
 * whole allocation call, with no Python frame. */
static int pdb_heap_alloc(unsigned long request, uint32_t fd_flags, int heap_fd, uint64_t len)
{
    struct dma_heap_allocation_data arg = { .len = len, .fd = 0, .fd_flags = fd_flags, .heap_flags = 0 };
    int r;
    RETRY(ioctl(heap_fd, request, &arg));
    return r < 0 ? -1 : (int)arg.fd;
}

/* UDMABUF_CREATE on one memfd range: the new buffer fd (the ioctl's result), or -1
 * (errno set). The same-every-time arguments first, for functools.partial. */
static int pdb_udmabuf_create(int dev, unsigned long request, uint32_t flags, int memfd,
                              uint64_t offset, uint64_t size)
{
    struct udmabuf_create arg = { .memfd = (uint32_t)memfd, .flags = flags, .offset = offset, .size = size };
    int r;
    RETRY(ioctl(dev, request, &arg));
    return r;
}

/* statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC): what the kernel has cached, so no
 * file system's server (FUSE) is asked. Fills out[0..2] with st_mode, st_size and
 * st_dev (glibc's makedev, as os.fstat encodes it); 0, or -1 (errno set). */
static int pdb_cached_stat(int fd, int64_t *out)
{
    struct statx st;
    int r;
    if (fd < 0) {  /* AT_FDCWD with AT_EMPTY_PATH would describe the working directory */
        errno = EBADF;
        return -1;
    }
    RETRY(statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_MODE | STATX_SIZE, &st));
    if (r < 0)
        return -1;
    out[0] = st.stx_mode;
    out[1] = (int64_t)st.stx_size;
    out[2] = (int64_t)makedev(st.stx_dev_major, st.stx_dev_minor);
    return 0;
}

/* from_fd's common case in one call: the size of ``fd`` if it is an anonymous-inode
 * file (no file type bits, as every dma-buf) on the file system ``dev``; -2 if it is
 * something else (the caller classifies it); -1 if statx failed (errno set). */
static int64_t pdb_size_on(int fd, uint64_t dev)
{
    int64_t st[3];
    if (pdb_cached_stat(fd, st) < 0)
        return -1;
    if ((st[0] & S_IFMT) != 0 || (uint64_t)st[2] != dev)
        return -2;
    return st[1];
}
