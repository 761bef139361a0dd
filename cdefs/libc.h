/* The libc entry points the ops layer calls (not a kernel header). */
int ioctl(int fd, unsigned long request, ...);
long syscall(long number, ...);
int fstatfs(int fd, void *buf);
