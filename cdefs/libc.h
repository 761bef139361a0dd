/* The libc entry points the ops layer calls (not a kernel header). */
int ioctl(int fd, unsigned long request, ...);
long syscall(long number, ...);
int fstatfs(int fd, void *buf);
long recv(int sockfd, void *buf, size_t len, int flags);
long send(int sockfd, const void *buf, size_t len, int flags);
int statx(int dirfd, const char *pathname, int flags, unsigned int mask, void *statxbuf);
