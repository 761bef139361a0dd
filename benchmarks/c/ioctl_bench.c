/* C baseline for benchmarks/bench_ioctl.py: the same ioctls, as cheap as C makes them.
 * Usage: ioctl_bench HEAP_PATH ITERATIONS; prints "name ns_per_op" lines. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/udmabuf.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int alloc(int heap) {
    struct dma_heap_allocation_data data;
    memset(&data, 0, sizeof data);
    data.len = 4096;
    data.fd_flags = O_RDWR | O_CLOEXEC;
    if (ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &data) < 0) { perror("alloc"); exit(1); }
    return data.fd;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int heap = open(argv[1], O_RDONLY | O_CLOEXEC);
    long n = atol(argv[2]);
    if (heap < 0) { perror("open heap"); return 1; }
    int buf = alloc(heap);
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        struct dma_buf_sync s = { DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW };
        if (ioctl(buf, DMA_BUF_IOCTL_SYNC, &s) < 0) { perror("sync"); return 1; }
        s.flags = DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW;
        if (ioctl(buf, DMA_BUF_IOCTL_SYNC, &s) < 0) { perror("sync"); return 1; }
    }
    printf("cpu_access %.1f\n", (now_ns() - t0) / n);
    t0 = now_ns();
    for (long i = 0; i < n; i++) close(alloc(heap));
    printf("allocate %.1f\n", (now_ns() - t0) / n);
    t0 = now_ns();
    for (long i = 0; i < n; i++) {
        struct dma_buf_export_sync_file e = { DMA_BUF_SYNC_RW, -1 };
        if (ioctl(buf, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &e) < 0) { perror("export"); return 1; }
        close(e.fd);
    }
    printf("export_sync_file %.1f\n", (now_ns() - t0) / n);
    struct dma_buf_export_sync_file e = { DMA_BUF_SYNC_RW, -1 };
    if (ioctl(buf, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &e) < 0) { perror("export"); return 1; }
    struct pollfd p = { e.fd, POLLIN, 0 };
    t0 = now_ns();
    for (long i = 0; i < n; i++) poll(&p, 1, 0);
    printf("signaled %.1f\n", (now_ns() - t0) / n);
    t0 = now_ns();
    for (long i = 0; i < n; i++) {
        struct stat st;
        int d = fcntl(buf, F_DUPFD_CLOEXEC, 0);
        fstat(d, &st);
        close(d);
    }
    printf("from_fd %.1f\n", (now_ns() - t0) / n);
    int memfd = memfd_create("bench", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    int dev = open("/dev/udmabuf", O_RDWR | O_CLOEXEC);
    if (memfd >= 0 && dev >= 0 && ftruncate(memfd, 4096) == 0 && fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK) == 0) {
        struct udmabuf_create c = { (unsigned)memfd, UDMABUF_FLAGS_CLOEXEC, 0, 4096 };
        t0 = now_ns();
        for (long i = 0; i < n; i++) {
            int fd = ioctl(dev, UDMABUF_CREATE, &c);
            if (fd < 0) { perror("udmabuf"); return 1; }
            close(fd);
        }
        printf("udmabuf_from_memfd %.1f\n", (now_ns() - t0) / n);
    }
    return 0;
}
