"""The optional compiled path: ``lib`` is ``pydmabuf.uapi._fastops`` when it was built
at install (a C compiler was present; see ``csrc/fastops.c``) and ``PYDMABUF_PURE`` is
not set, else None and the pure path (fcntl.ioctl with packed structs) runs.

Only the leaf calls differ: the ops layer and the hot paths choose between the C
function and the pure call once, at import, and everything above them is the same
code either way, so the one test suite checks both (CI runs it both ways).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _load() -> tuple[Any, Any]:
    if os.environ.get("PYDMABUF_PURE"):
        return None, None
    try:
        from ._fastops import ffi as built_ffi  # built at install where a C compiler was present
        from ._fastops import lib as built_lib
    except ImportError:  # not built, or built for another Python
        return None, None
    return built_lib, built_ffi


lib, ffi = _load()
compiled: bool = lib is not None
