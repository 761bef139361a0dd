"""The optional compiled path, built at install where a C compiler was present
(``tools/build_fastops.py``) and used unless ``PYDMABUF_PURE`` is set:

- ``lib`` (and its ``ffi``): ``pydmabuf.uapi._fastops``, the hot ioctls and syscalls as
  C functions (``csrc/fastops.c``), else None: the ops layer's pure calls (fcntl.ioctl
  with packed structs) run;
- ``FdBase``: ``pydmabuf.uapi._fdcore.FdBase``, the fd-owning base type with close,
  fileno, closed, the finalizer and the POLLIN check in C (``csrc/fdcore.c``), and
  ``holder_factory``, which makes and fills holders in C; else None:
  ``pydmabuf._fd.FdHolder`` is pure Python.

Both or neither: ``compiled`` says which. Only these leaves differ: the modules above
choose once, at import, and run the same code either way, so the one test suite
checks both paths (CI runs it both ways).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _load() -> tuple[Any, Any, Any, Any, Any]:
    if os.environ.get("PYDMABUF_PURE"):
        return None, None, None, None, None
    try:
        from ._fastops import ffi as built_ffi  # built at install where a C compiler was present
        from ._fastops import lib as built_lib
        from ._fdcore import FdBase as built_base
        from ._fdcore import factory as built_factory
        from ._fdcore import setup as built_setup
    except ImportError:  # not built, or built for another Python
        return None, None, None, None, None
    return built_lib, built_ffi, built_base, built_setup, built_factory


# fdcore_setup: hands pydmabuf._fd's shared state to FdBase (pydmabuf._fd calls it).
# holder_factory(cls, names, defaults) -> make(fd, *values): a holder made and filled
# in one C call (what new_buffer and new_sync_file are on this path).
lib, ffi, FdBase, fdcore_setup, holder_factory = _load()
# FdBase's non-blocking POLLIN check, a getter in C: SyncFile.signaled on this path.
readable: Any = None if FdBase is None else vars(FdBase)["_readable"]
compiled: bool = lib is not None
