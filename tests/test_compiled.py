"""The optional compiled path (``pydmabuf.uapi._fastops`` and ``_fdcore``, csrc/) and the pure
path behave the same: this suite runs compiled where the module was built, and
``test_suite_on_the_pure_path`` reruns it with ``PYDMABUF_PURE=1`` (the whole host
suite natively; in the real-kernel VM, the modules whose calls the compiled path
replaces). tests/test_packaging.py builds both wheels."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pydmabuf
from pydmabuf.uapi import fast

ROOT = Path(__file__).resolve().parent.parent
IN_VM = bool(os.environ.get("PYDMABUF_IN_VM"))
PURE = bool(os.environ.get("PYDMABUF_PURE"))
# In the VM, where the whole suite takes minutes, the pure rerun covers the modules
# whose kernel calls the compiled path replaces (SYNC, EXPORT, ALLOC, UDMABUF_CREATE,
# the signaled poll and from_fd's statx) and what races them.
PURE_IN_VM = ("test_buffer.py", "test_syncfile.py", "test_heap.py", "test_udmabuf.py", "test_implicit.py",
              "test_classify.py", "test_races.py", "test_pool.py")


def _build_tool() -> object:
    spec = importlib.util.spec_from_file_location("build_fastops", ROOT / "tools" / "build_fastops.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compiled_says_which_path_runs() -> None:
    assert pydmabuf.compiled is fast.compiled
    assert pydmabuf.compiled == (fast.lib is not None)
    if PURE:
        assert not pydmabuf.compiled


def test_pure_env_forces_the_pure_path() -> None:
    code = "import pydmabuf, pydmabuf.uapi.ops as o; print(pydmabuf.compiled, o._flib is None)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYDMABUF_PURE": "1"},
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == ["False", "True"]


EXPECT_COMPILED = os.environ.get("CI", "").lower() in ("1", "true", "yes") or bool(
    os.environ.get("PYDMABUF_EXPECT_COMPILED"))


@pytest.mark.skipif(not EXPECT_COMPILED or PURE, reason="outside CI a pure install (no C compiler) is legitimate")
def test_ci_runs_compiled() -> None:
    # .ci/run installs gcc, so the editable install built the compiled path, and the
    # real-kernel tier runs that checkout (PYDMABUF_EXPECT_COMPILED, from
    # tests/test_real_kernel.py): neither may quietly run pure.
    assert pydmabuf.compiled, "installed without the compiled path; see hatch_build.py's warning"


@pytest.mark.skipif(not fast.compiled, reason="pure install: no compiled module to check")
def test_built_module_matches_its_source() -> None:
    # An editable install keeps the module built from the C of its day: after editing
    # csrc/fastops.c (or the cdefs it includes), rerun tools/build_fastops.py.
    tool = _build_tool()
    built = fast.ffi.string(fast.lib.pdb_source_hash()).decode()
    assert built == tool.source_hash(), "stale pydmabuf/uapi/_fastops: rerun python tools/build_fastops.py"  # type: ignore[attr-defined]
    from pydmabuf.uapi import _fdcore

    assert tool.fdcore_hash() == _fdcore.SOURCE_HASH, "stale pydmabuf/uapi/_fdcore: rerun python tools/build_fastops.py"  # type: ignore[attr-defined]


@pytest.mark.skipif(not fast.compiled, reason="pure install: no compiled base type")
def test_fd_holders_stand_on_the_compiled_base() -> None:
    import weakref

    from pydmabuf._fd import FdHolder

    assert FdHolder.__mro__[1] is fast.FdBase
    assert "close" not in vars(FdHolder) and "__del__" not in vars(FdHolder)  # the C base's own run
    buf = pydmabuf.Heap("system").allocate(4096)
    ref = weakref.ref(buf)
    fd = buf.fileno()
    assert not buf.closed and vars(pydmabuf.SyncFile)["signaled"] is fast.readable
    del buf  # the C finalizer closes the number
    assert ref() is None
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.skipif(not fast.compiled, reason="pure install: no compiled module")
def test_compiled_calls_fail_with_errno_not_exceptions() -> None:
    # The C side reports failure by value with errno set; the ops layer raises.
    lib, ffi = fast.lib, fast.ffi
    assert lib.pdb_sync(-1, 0, 1) == 0 and ffi.errno == 9  # EBADF
    assert lib.pdb_export_sync_file(-1, 0, 1) == -1 and ffi.errno == 9
    assert lib.pdb_heap_alloc(0, 0, -1, 4096) == -1 and ffi.errno == 9
    assert lib.pdb_udmabuf_create(-1, 0, 0, 0, 0, 4096) == -1 and ffi.errno == 9
    out = ffi.new("int64_t[3]")
    assert lib.pdb_cached_stat(-1, out) == -1 and ffi.errno == 9
    assert lib.pdb_cached_stat(-100, out) == -1  # AT_FDCWD is refused, not the working directory
    assert lib.pdb_size_on(-1, 0) == -1


@pytest.mark.skipif(not fast.compiled, reason="pure install: no compiled module")
def test_compiled_stat_agrees_with_os_fstat(tmp_path: Path) -> None:
    from pydmabuf.uapi import ops

    memfd = os.memfd_create("x")
    os.ftruncate(memfd, 8192)
    for fd in (memfd, os.eventfd(0), os.open(tmp_path, os.O_RDONLY)):  # shm, anon inode, a directory
        try:
            st = os.fstat(fd)
            assert ops._cached_stat_compiled(fd) == (st.st_mode, st.st_size, st.st_dev)
            assert ops._cached_stat_pure(fd) == (st.st_mode, st.st_size, st.st_dev)
            size_on = fast.lib.pdb_size_on(fd, st.st_dev)
            assert size_on == (st.st_size if not st.st_mode & 0o170000 else -2)
            assert fast.lib.pdb_size_on(fd, st.st_dev + 1) == -2
        finally:
            os.close(fd)
    with pytest.raises(OverflowError):
        ops._cached_stat_compiled(2**31)
    with pytest.raises(OSError) as info:
        ops._cached_stat_compiled(-1)
    assert info.value.errno == 9


@pytest.mark.skipif(not fast.compiled, reason="pure install: nothing to compare with the pure path")
@pytest.mark.skipif(PURE, reason="this is the pure rerun")
def test_suite_on_the_pure_path() -> None:
    files = [str(ROOT / "tests" / name) for name in PURE_IN_VM] if IN_VM else [str(ROOT / "tests")]
    argv = [sys.executable, "-m", "pytest", *files, "-p", "no:cacheprovider", "-q", "-x",
            "-m", "not real_kernel", "-o", "addopts=", "--deselect",
            "tests/test_compiled.py::test_suite_on_the_pure_path"]
    result = subprocess.run(argv, env={**os.environ, "PYDMABUF_PURE": "1"}, cwd=ROOT,
                            capture_output=True, text=True, timeout=3600)
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
    assert result.returncode == 0, f"the pure path fails where the compiled one passes:\n{tail}"
    assert " passed" in tail, tail


@pytest.mark.skipif(not fast.compiled, reason="pure install: no compiled factory")
def test_holder_factory_makes_what_the_pure_constructor_makes() -> None:
    from pydmabuf.backends import get_backend
    from pydmabuf.buffer import Buffer, _new_buffer_pure, new_buffer

    backend = get_backend()
    fds = [os.memfd_create("f") for _ in range(2)]
    made, pure = new_buffer(fds[0], 4096, backend), _new_buffer_pure(fds[1], 4096, backend)
    for buf, fd in zip((made, pure), fds, strict=True):
        assert type(buf) is Buffer and buf.fileno() == fd and buf._cell == [fd]
        assert (buf.size, buf._offset, buf._access, buf._backend) == (4096, 0, None, backend)
        buf.close()
    assert new_buffer(os.memfd_create("g"), 8192, backend, 4096)._offset == 4096  # closed by its finalizer
    make = fast.holder_factory(Buffer, ("_size", "_backend"), ())
    for bad in ((), ("3",), (3, 1), (3, 1, backend, "extra")):
        with pytest.raises(TypeError):
            make(*bad)
    with pytest.raises(TypeError):
        fast.holder_factory(int, (), ())  # not an fd holder
    with pytest.raises(TypeError):
        fast.holder_factory(Buffer, ("size",), ())  # a property, not a slot
    with pytest.raises(ValueError):
        fast.holder_factory(Buffer, ("_size",), (1, 2))
