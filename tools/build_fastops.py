#!/usr/bin/env python3
"""Build pydmabuf's optional compiled path, ``pydmabuf.uapi._fastops``.

    python tools/build_fastops.py [-o DIR]     # default: into the source tree

cffi's API mode compiles ``csrc/fastops.c`` (the hot ioctls and syscalls as plain C
calls; the kernel's structs come from ``cdefs/``, the one source of declarations)
into an extension module. The install runs this through ``hatch_build.py``; a
developer with an editable install reruns it after editing ``csrc/fastops.c``
(tests/test_compiled.py fails while the built module is older than its source).
Without a C compiler the build fails cleanly and pydmabuf runs its pure path.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "csrc" / "fastops.c"
CDEFS = ROOT / "cdefs"
MODULE = "pydmabuf.uapi._fastops"
TREE_TARGET = ROOT / "pydmabuf" / "uapi"

# What Python sees of csrc/fastops.c (cffi checks these against the C at compile time).
DECLARATIONS = """
int pdb_sync(int fd, unsigned long request, uint64_t flags);
int pdb_export_sync_file(int fd, unsigned long request, uint32_t flags);
int pdb_heap_alloc(int heap_fd, unsigned long request, uint64_t len, uint32_t fd_flags);
int pdb_udmabuf_create(int dev, unsigned long request, int memfd, uint32_t flags, uint64_t offset, uint64_t size);
int pdb_poll_now(int fd, int events);
int pdb_cached_stat(int fd, int64_t *out);
int64_t pdb_size_on(int fd, uint64_t dev);
const char *pdb_source_hash(void);
"""


def source_hash(source: Path = SOURCE, cdefs: Path = CDEFS) -> str:
    """What the built module reports as ``pdb_source_hash()``: its C source, its
    declarations and the cdefs it includes, so a stale build is recognised."""
    digest = hashlib.sha256(DECLARATIONS.encode())
    for path in (source, cdefs / "dma-buf.h", cdefs / "dma-heap.h", cdefs / "udmabuf.h"):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def builder(source: Path = SOURCE, cdefs: Path = CDEFS) -> Any:
    from cffi import FFI  # build time only

    ffi = FFI()
    ffi.cdef(DECLARATIONS)
    code = source.read_text() + (
        f'\nstatic const char *pdb_source_hash(void) {{ return "{source_hash(source, cdefs)}"; }}\n')
    ffi.set_source(MODULE, code, include_dirs=[str(cdefs)], extra_compile_args=["-O2"])
    return ffi


def build(output: Path) -> Path:
    """Compile the module into ``output`` (a folder); the path of the built file.
    Raises (cffi's VerificationError, a CompileError, OSError) when it cannot."""
    with tempfile.TemporaryDirectory(prefix="pydmabuf-fastops-") as tmp:
        built = Path(builder().compile(tmpdir=tmp, verbose=False))
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        target = output / f"_fastops{suffix}"
        output.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=TREE_TARGET, help="folder for the module")
    args = parser.parse_args(argv)
    print(build(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
