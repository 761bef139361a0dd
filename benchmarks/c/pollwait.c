/* C baseline for bench_wait.py: wakeup latency of poll() and epoll_wait() over n
 * eventfds, one of which a forked child signals per round (it writes its
 * CLOCK_MONOTONIC time, as the fallback backend's fences do), plus the cost of one
 * call when a fence is already signaled.
 *
 * usage: pollwait MODE N ROUNDS DELAY_US     MODE: poll | epoll
 * prints: MODE N median_wakeup_ns p90_wakeup_ns call_ns
 */
#define _GNU_SOURCE
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what) { perror(what); exit(1); }

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: %s poll|epoll N ROUNDS DELAY_US\n", argv[0]); return 2; }
    int use_epoll = strcmp(argv[1], "epoll") == 0;
    int n = atoi(argv[2]), rounds = atoi(argv[3]), delay_us = atoi(argv[4]);
    int *fds = calloc(n + rounds, sizeof(int));
    struct pollfd *pfd = calloc(n, sizeof(struct pollfd));
    uint64_t *lat = calloc(rounds, sizeof(uint64_t));
    /* fds[0..n-2] never signal; fds[n-1+r] is round r's fence. */
    for (int i = 0; i < n - 1 + rounds; i++)
        if ((fds[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) die("eventfd");
    int go[2];
    if (pipe(go) < 0) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        char c;
        for (int r = 0; r < rounds; r++) {
            if (read(go[0], &c, 1) != 1) _exit(1);
            usleep(delay_us);
            uint64_t t = now_ns();
            if (write(fds[n - 1 + r], &t, 8) != 8) _exit(1);
        }
        _exit(0);
    }
    int ep = -1;
    struct epoll_event ev, *out = calloc(n, sizeof(struct epoll_event));
    if (use_epoll) {
        if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0) die("epoll_create1");
        for (int i = 0; i < n - 1; i++) {
            ev.events = EPOLLIN; ev.data.fd = fds[i];
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) die("epoll_ctl");
        }
    }
    for (int i = 0; i < n - 1; i++) { pfd[i].fd = fds[i]; pfd[i].events = POLLIN; }
    for (int r = 0; r < rounds; r++) {
        int active = fds[n - 1 + r];
        pfd[n - 1].fd = active; pfd[n - 1].events = POLLIN; pfd[n - 1].revents = 0;
        if (use_epoll) {
            ev.events = EPOLLIN; ev.data.fd = active;
            if (epoll_ctl(ep, EPOLL_CTL_ADD, active, &ev) < 0) die("epoll_ctl");
        }
        if (write(go[1], "g", 1) != 1) die("write");
        int got = 0;
        while (!got) {
            int k = use_epoll ? epoll_wait(ep, out, n, -1) : poll(pfd, n, -1);
            if (k < 0) die("wait");
            if (use_epoll) { for (int j = 0; j < k; j++) got |= out[j].data.fd == active; }
            else got = pfd[n - 1].revents & POLLIN;
        }
        uint64_t t_ret = now_ns(), t_sig;
        if (read(active, &t_sig, 8) != 8) die("read");
        lat[r] = t_ret - t_sig;
        if (use_epoll && epoll_ctl(ep, EPOLL_CTL_DEL, active, NULL) < 0) die("epoll_ctl");
    }
    waitpid(pid, NULL, 0);
    /* One call with an already-signaled fence: the per-call cost, no sleeping. */
    uint64_t one = 1;
    if (write(fds[n - 1], &one, 8) != 8) die("write");
    pfd[n - 1].fd = fds[n - 1];
    if (use_epoll) {
        ev.events = EPOLLIN; ev.data.fd = fds[n - 1];
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[n - 1], &ev);
    }
    int calls = 2000;
    uint64_t t0 = now_ns();
    for (int i = 0; i < calls; i++)
        if ((use_epoll ? epoll_wait(ep, out, n, 0) : poll(pfd, n, 0)) != 1) die("call");
    uint64_t call_ns = (now_ns() - t0) / calls;
    qsort(lat, rounds, sizeof(uint64_t), cmp_u64);
    printf("%s %d %llu %llu %llu\n", argv[1], n, (unsigned long long)lat[rounds / 2],
           (unsigned long long)lat[rounds * 9 / 10], (unsigned long long)call_ns);
    return 0;
}
