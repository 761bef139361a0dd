#!/usr/bin/env python3
"""Build pydmabuf's optional compiled path: ``pydmabuf.uapi._fastops`` and ``pydmabuf.uapi._fdcore``.

    python tools/build_fastops.py [-o DIR]     # default: into the source tree

- ``csrc/fastops.c``: the hot ioctls and syscalls as plain C calls, compiled by cffi's
  API mode (the kernel's structs come from ``cdefs/``, the one source of declarations).
- ``csrc/fdcore.c``: the fd-owning base type (close, fileno, closed, the finalizer and
  the POLLIN check) in C, a plain CPython extension built with setuptools.

The install runs this through ``hatch_build.py``; a developer with an editable
install reruns it after editing either file (tests/test_compiled.py fails while a
built module is older than its source). Without a C compiler the build fails
cleanly and pydmabuf runs its pure path.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "csrc" / "fastops.c"
FDCORE_SOURCE = ROOT / "csrc" / "fdcore.c"
CDEFS = ROOT / "cdefs"
MODULE = "pydmabuf.uapi._fastops"
TREE_TARGET = ROOT / "pydmabuf" / "uapi"

# What Python sees of csrc/fastops.c (cffi checks these against the C at compile time).
DECLARATIONS = """
int pdb_sync(int fd, unsigned long request, uint64_t flags);
int pdb_export_sync_file(int fd, unsigned long request, uint32_t flags);
int pdb_heap_alloc(unsigned long request, uint32_t fd_flags, int heap_fd, uint64_t len);
int pdb_udmabuf_create(int dev, unsigned long request, uint32_t flags, int memfd, uint64_t offset, uint64_t size);
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


def fdcore_hash(source: Path = FDCORE_SOURCE) -> str:
    """What the built ``_fdcore`` reports as ``SOURCE_HASH``."""
    return hashlib.sha256(source.read_bytes()).hexdigest()[:16]


def build_fastops(output: Path) -> Path:
    """Compile ``_fastops`` into ``output`` (a folder); the path of the built file.
    Raises (cffi's VerificationError, a CompileError, OSError) when it cannot."""
    with tempfile.TemporaryDirectory(prefix="pydmabuf-fastops-") as tmp:
        built = Path(builder().compile(tmpdir=tmp, verbose=False))
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        target = output / f"_fastops{suffix}"
        _install(built, target)
    return target


def _install(built: Path, target: Path) -> None:
    """Copy ``built`` to ``target`` as a new file: a running process that has the old
    one mapped keeps it intact (copying over it in place could crash that process)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(built, partial)
    os.replace(partial, target)


def build_fdcore(output: Path, source: Path = FDCORE_SOURCE) -> Path:
    """Compile ``_fdcore`` into ``output`` (a folder); the path of the built file."""
    from setuptools import Distribution, Extension  # build time only

    with tempfile.TemporaryDirectory(prefix="pydmabuf-fdcore-") as tmp:
        ext = Extension("pydmabuf.uapi._fdcore", [str(source)], extra_compile_args=["-O2"],
                        define_macros=[("SOURCE_HASH", f'"{fdcore_hash(source)}"')])
        dist = Distribution({"name": "pydmabuf-fdcore", "ext_modules": [ext]})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = str(Path(tmp) / "lib")  # type: ignore[attr-defined]
        cmd.build_temp = str(Path(tmp) / "temp")  # type: ignore[attr-defined]
        cmd.ensure_finalized()
        cmd.run()
        (built,) = (Path(tmp) / "lib").rglob("_fdcore*")
        target = output / built.name
        _install(built, target)
    return target


def build(output: Path) -> list[Path]:
    """Both modules into ``output`` (pydmabuf/uapi). Raises when either cannot be
    built: the pure path runs then."""
    return [build_fastops(output), build_fdcore(output)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=TREE_TARGET, help="folder for _fastops (pydmabuf/uapi)")
    args = parser.parse_args(argv)
    for path in build(args.output):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
