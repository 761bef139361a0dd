"""Buffer-holding child processes for test_accounting.py (run as a script).

Roles:
  sender SOCK    allocate "shared" (3 pages), pass its fd over socket fd SOCK, keep it
  receiver SOCK  receive that fd and map it with Buffer.map() (fd + mmap's own dup)
  mapper         "mapped" (2 pages): Buffer.map(), then close the Buffer (only the
                 mmap's dup stays); "maponly" (1 page): libc mmap, every fd closed
  nobody         allocate "nobody" (1 page) as root, drop to uid/gid 65534, then
                 print snapshot().as_dict() and the output of `pydmabuf ps --json`
  nobody-info    drop to uid/gid 65534 and print the result of `pydmabuf info --json`
Each prints one line ("ready" or JSON) and waits for stdin to close.
"""

from __future__ import annotations

import contextlib
import ctypes
import gettext  # noqa: F401 - argparse imports these lazily; the stdlib is unreadable after the drop
import io
import json
import locale  # noqa: F401
import mmap
import os
import shutil  # noqa: F401
import socket
import sys

import pydmabuf
from pydmabuf.tools import accounting, cli, features  # noqa: F401 - now: unreadable after the drop

PAGE = mmap.PAGESIZE
NOBODY = 65534


def _libc_map(fd: int, size: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    return int(addr)


def _drop_privileges() -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, as for a process nobody started


def _run_cli(argv: list[str]) -> dict[str, object]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main(role: str, arg: str | None) -> None:
    keep: list[object] = []
    if role == "sender":
        with pydmabuf.Heap() as heap:
            buf = heap.allocate(3 * PAGE, name="shared")
        socket.send_fds(socket.socket(fileno=int(arg or "")), [b"x"], [buf.fileno()])
        keep.append(buf)
    elif role == "receiver":
        sock = socket.socket(fileno=int(arg or ""))
        _msg, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
        buf = pydmabuf.Buffer.from_fd(fds[0])
        keep += [buf, buf.map()]
    elif role == "mapper":
        with pydmabuf.Heap() as heap:
            mapped = heap.allocate(2 * PAGE, name="mapped")
            only = heap.allocate(PAGE, name="maponly")
        keep.append(mapped.map())
        mapped.close()
        _libc_map(only.fileno(), PAGE)
        only.close()
    elif role == "nobody":
        with pydmabuf.Heap() as heap:
            keep.append(heap.allocate(PAGE, name="nobody"))
        _drop_privileges()
        result = {"pid": os.getpid(), "snapshot": accounting.snapshot().as_dict(),
                  "cli": _run_cli(["ps", "--json"])}
        print(json.dumps(result), flush=True)
        sys.stdin.read()
        return
    elif role == "nobody-info":
        _drop_privileges()
        print(json.dumps(_run_cli(["info", "--json"])), flush=True)
        return
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
