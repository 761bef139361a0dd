"""Layer 1, the kernel's interface: C declarations (``ffi``, read from ``cdefs/``), one
function per ioctl or syscall on plain int fds (``ops``, the hot ones in their
``fcntl.ioctl`` form), what an fd is (``fdkind``), fdinfo parsing, memfds, pidfds and
bounded waits on one fd (``wait``), plus generated tables (``drm_formats``) and the
foreign ABIs the library speaks (``dlpack_abi``, ``cuda_driver``).

Nothing here owns an fd or knows about backends or public objects; everything raises
:mod:`pydmabuf.errors` exceptions. Layers above: ``pydmabuf.backends`` (kernel or
fallback semantics on fds), the public objects (``pydmabuf.Buffer`` and friends),
``pydmabuf.tools`` (CLI, accounting, demo).
"""
