/* C baseline for bench_share.py: SCM_RIGHTS fd passing between two processes.
 *
 *   fdpass rtt N            ping-pong one buffer fd N times; prints us per round trip
 *   fdpass channel N SIZE   pool of 4 buffers; producer sends fd+seq, consumer mmaps
 *                           read-only, reads the first and last byte, munmaps, closes,
 *                           sends the seq back; prints frames per second
 * Each also prints the CPU time of both processes per item, in us.
 *
 * Buffers come from /dev/dma_heap/system when it exists, else memfds (what the
 * pydmabuf fallback uses), so C and Python pass the same kind of fd.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/dma-heap.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define POOL 4

static void die(const char *what) { perror(what); exit(1); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU seconds of this process plus its waited-for children. */
static double cpu(void) {
    struct rusage self, kids;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &kids);
    return self.ru_utime.tv_sec + self.ru_stime.tv_sec + kids.ru_utime.tv_sec + kids.ru_stime.tv_sec +
           (self.ru_utime.tv_usec + self.ru_stime.tv_usec + kids.ru_utime.tv_usec + kids.ru_stime.tv_usec) / 1e6;
}

static int alloc_buffer(size_t size) {
    int heap = open("/dev/dma_heap/system", O_RDONLY | O_CLOEXEC);
    if (heap >= 0) {
        struct dma_heap_allocation_data d = {.len = size, .fd_flags = O_RDWR | O_CLOEXEC};
        if (ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &d) < 0) die("DMA_HEAP_IOCTL_ALLOC");
        close(heap);
        return d.fd;
    }
    int fd = memfd_create("fdpass", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, size) < 0) die("memfd");
    return fd;
}

static void send_fd(int sock, int fd, uint64_t seq) {
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = &seq, .iov_len = sizeof seq};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                         .msg_controllen = sizeof cbuf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(sock, &msg, MSG_NOSIGNAL) != sizeof seq) die("sendmsg");
}

static int recv_fd(int sock, uint64_t *seq) {
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = seq, .iov_len = sizeof *seq};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                         .msg_controllen = sizeof cbuf};
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n <= 0) return -1;
    if (msg.msg_flags & MSG_CTRUNC) { fprintf(stderr, "MSG_CTRUNC\n"); exit(1); }
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS) { fprintf(stderr, "no fd\n"); exit(1); }
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

static int rtt(long n) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
    int buf = alloc_buffer(4096);
    pid_t pid = fork();
    if (pid == 0) {  /* echo: receive, send it back, close */
        close(sv[0]);
        uint64_t seq;
        int fd;
        while ((fd = recv_fd(sv[1], &seq)) >= 0) {
            send_fd(sv[1], fd, seq);
            close(fd);
        }
        _exit(0);
    }
    close(sv[1]);
    double t0 = now(), c0 = cpu();
    for (long i = 0; i < n; i++) {
        uint64_t seq;
        send_fd(sv[0], buf, i);
        close(recv_fd(sv[0], &seq));
    }
    double dt = now() - t0;
    close(sv[0]);
    waitpid(pid, NULL, 0);
    printf("%.3f %.3f\n", dt / n * 1e6, (cpu() - c0) / n * 1e6);
    return 0;
}

static int channel(long n, size_t size) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
    int pool[POOL];
    for (int i = 0; i < POOL; i++) pool[i] = alloc_buffer(size);
    pid_t pid = fork();
    if (pid == 0) {  /* consumer */
        close(sv[0]);
        uint64_t seq;
        int fd;
        volatile unsigned char sink = 0;
        while ((fd = recv_fd(sv[1], &seq)) >= 0) {
            unsigned char *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
            if (m == MAP_FAILED) die("mmap");
            sink ^= m[0] ^ m[size - 1];
            munmap(m, size);
            close(fd);
            if (send(sv[1], &seq, sizeof seq, MSG_NOSIGNAL) != sizeof seq) die("send release");
        }
        _exit(0);
    }
    close(sv[1]);
    int free_list[POOL], nfree = POOL;
    for (int i = 0; i < POOL; i++) free_list[i] = i;
    double t0 = now(), c0 = cpu();
    for (long seq = 0; seq < n; seq++) {
        while (nfree == 0) {
            uint64_t back;
            if (recv(sv[0], &back, sizeof back, 0) != sizeof back) die("recv release");
            free_list[nfree++] = (int)(back % POOL);
        }
        int slot = free_list[--nfree];
        /* seq -> slot: keep it simple by sending seq*POOL+slot */
        send_fd(sv[0], pool[slot], (uint64_t)seq * POOL + slot);
    }
    for (int outstanding = POOL - nfree; outstanding > 0; outstanding--) {
        uint64_t back;
        if (recv(sv[0], &back, sizeof back, 0) != sizeof back) die("recv release");
    }
    double dt = now() - t0;
    close(sv[0]);
    waitpid(pid, NULL, 0);
    printf("%.1f %.3f\n", n / dt, (cpu() - c0) / n * 1e6);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "rtt")) return rtt(atol(argv[2]));
    if (argc >= 4 && !strcmp(argv[1], "channel")) return channel(atol(argv[2]), strtoul(argv[3], NULL, 0));
    fprintf(stderr, "usage: fdpass rtt N | fdpass channel N SIZE\n");
    return 2;
}
