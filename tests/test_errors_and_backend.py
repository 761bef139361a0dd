from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys

import pytest

import pydmabuf
from pydmabuf import errors


@pytest.mark.parametrize(
    "code,builtin",
    [(errno.EACCES, PermissionError), (errno.EPERM, PermissionError), (errno.ENOENT, FileNotFoundError),
     (errno.ETIMEDOUT, TimeoutError), (errno.EINVAL, ValueError), (errno.ENOMEM, MemoryError),
     (errno.ESRCH, ProcessLookupError)],
)
def test_errors_are_oserrors_with_errno_and_builtin_subclass(code: int, builtin: type) -> None:
    exc = errors.error(code, "DMA_HEAP_IOCTL_ALLOC", "a hint")
    assert isinstance(exc, pydmabuf.Error)
    assert isinstance(exc, OSError)
    assert isinstance(exc, builtin)
    assert exc.errno == code
    assert "a hint" in str(exc) and "DMA_HEAP_IOCTL_ALLOC" in str(exc)


def test_enotty_is_unsupported() -> None:
    exc = errors.error(errno.ENOTTY, "SYNC_IOC_SET_DEADLINE")
    assert isinstance(exc, pydmabuf.UnsupportedError)


def test_unknown_errno_is_base_error() -> None:
    exc = errors.error(errno.EXDEV, "x")
    assert type(exc) is pydmabuf.Error and exc.errno == errno.EXDEV


def test_errors_pickle() -> None:
    exc = errors.error(errno.EACCES, "open", "hint")
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc) and again.errno == errno.EACCES


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "PYDMABUF_BACKEND"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=60)


def test_backend_env_fallback_forced() -> None:
    out = _python("import pydmabuf; print(pydmabuf.backend)", PYDMABUF_BACKEND="fallback")
    assert out.stdout.strip() == "fallback", out.stderr


def test_backend_env_auto_matches_devices() -> None:
    has_devices = os.path.isdir("/dev/dma_heap") or os.path.exists("/dev/udmabuf")
    out = _python("import pydmabuf; print(pydmabuf.backend)", PYDMABUF_BACKEND="auto")
    assert out.stdout.strip() == ("kernel" if has_devices else "fallback"), out.stderr


def test_backend_env_invalid_is_clear() -> None:
    out = _python("import pydmabuf; print(pydmabuf.backend)", PYDMABUF_BACKEND="gpu")
    assert out.returncode != 0
    assert "PYDMABUF_BACKEND" in out.stderr and "auto, kernel or fallback" in out.stderr


# Selection logic only: where the machine has devices, pretend it has none.
_NO_DEVICES = (
    "import pydmabuf.backends.kernel as k; k.HEAP_DIR = '/nonexistent/dma_heap'; "
    "k.UDMABUF_DEV = '/nonexistent/udmabuf'; import pydmabuf; "
)


def test_kernel_requested_without_dma_buf_never_falls_back() -> None:
    no_dma_buf = _NO_DEVICES + "k.has_dma_buf = lambda: False; "
    out = _python(no_dma_buf + "print(pydmabuf.backend)", PYDMABUF_BACKEND="kernel")
    assert out.returncode != 0
    assert "UnsupportedError" in out.stderr and "CONFIG_DMA_SHARED_BUFFER" in out.stderr
    out = _python(no_dma_buf + "pydmabuf.Heap()", PYDMABUF_BACKEND="kernel")
    assert out.returncode != 0 and "PYDMABUF_BACKEND=kernel" in out.stderr
    out = _python(no_dma_buf + "print(pydmabuf.backend)", PYDMABUF_BACKEND="auto")
    assert out.stdout.strip() == "fallback", out.stderr


def test_kernel_requested_without_allocators_is_valid_where_dma_buf_exists() -> None:
    # A GPU server or arm64 board: dma-buf, but no heap and no udmabuf. The kernel backend
    # is valid (drivers' exports work); allocating says what exists.
    dma_buf_only = _NO_DEVICES + "k.has_dma_buf = lambda: True; print(pydmabuf.backend); "
    out = _python(dma_buf_only + "pydmabuf.Heap('system')", PYDMABUF_BACKEND="kernel")
    assert out.stdout.strip() == "kernel", out.stderr
    # "this kernel can't" is UnsupportedError, as udmabuf() and Timeline() say it
    assert "UnsupportedError" in out.stderr and "no dma-heaps" in out.stderr, out.stderr
    out = _python(dma_buf_only + "pydmabuf.udmabuf(4096)", PYDMABUF_BACKEND="kernel")
    assert "UnsupportedError" in out.stderr and "/nonexistent/udmabuf" in out.stderr


def test_enotsupp_and_enotty_are_typed_with_hints() -> None:
    exc = errors.error(524, "mmap", errors.unmappable_hint("nv_dmabuf"))
    assert isinstance(exc, pydmabuf.UnsupportedError) and exc.errno == 524
    assert "ENOTSUPP" in str(exc) and "CUDA" in str(exc)
    assert isinstance(errors.error(errno.EOPNOTSUPP, "mmap"), pydmabuf.UnsupportedError)
    from pydmabuf.uapi import ops as _ops

    exc = _ops.fail("DMA_BUF_IOCTL_EXPORT_SYNC_FILE", code=errno.ENOTTY)
    assert isinstance(exc, pydmabuf.UnsupportedError) and "Linux 6.0" in str(exc)


def test_explicit_backend_argument() -> None:
    with pydmabuf.Heap("system", backend="fallback") as heap, heap.allocate(4096) as buf:
        assert buf.backend == "fallback" and heap.backend == "fallback"
        assert buf.info().exporter == "pydmabuf-fallback"
    with pytest.raises(pydmabuf.InvalidArgumentError):
        pydmabuf.get_backend("nope")


def test_fallback_buffer_not_accepted_by_kernel_backend() -> None:
    with pydmabuf.Heap("system", backend="fallback") as heap, heap.allocate(4096) as buf:
        with pytest.raises(pydmabuf.InvalidArgumentError) as exc:
            pydmabuf.Buffer.from_fd(buf.fileno(), own=False, backend="kernel")
        assert "not a dma-buf" in str(exc.value)


def test_buffer_and_syncfile_reject_each_other() -> None:
    with pydmabuf.Heap("system", backend="fallback") as heap, heap.allocate(4096) as buf:
        with pytest.raises(pydmabuf.InvalidArgumentError):
            pydmabuf.SyncFile.from_fd(buf.fileno(), own=False, backend="fallback")
        with pydmabuf.Timeline(backend="fallback") as tl, tl.fence(1) as fence, \
                pytest.raises(pydmabuf.InvalidArgumentError):
            pydmabuf.Buffer.from_fd(fence.fileno(), own=False, backend="fallback")


def test_emfile_and_enfile_are_typed_and_name_the_limit() -> None:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    exc = errors.error(errno.EMFILE, "Heap.allocate")
    assert isinstance(exc, errors.TooManyOpenFilesError) and exc.errno == errno.EMFILE
    limit = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    assert f"may have {limit} open fds (RLIMIT_NOFILE" in str(exc)
    assert isinstance(errors.error(errno.ENFILE, "x"), errors.TooManyOpenFilesError)
    assert "a hint" in str(errors.error(errno.EMFILE, "x", "a hint"))  # a given hint stands


def _use_up_fds(limit: int) -> list[int]:
    """Lower this process's fd limit to ``limit`` and open fds until none is left."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    taken = []
    try:
        while True:
            taken.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        pass
    return taken


def _out_of_fds() -> int:
    """In a forked child: make what the calls need, lower the fd limit to 64, use up
    every fd, then each call must raise TooManyOpenFilesError naming the limit. The exit
    status says which did not (10 + its index), and the captured output why."""
    import traceback

    from conftest import TIMELINE_MISSING

    heap = pydmabuf.Heap("system") if "system" in pydmabuf.heaps() else None
    timeline = None if TIMELINE_MISSING else pydmabuf.Timeline()  # made here: a Timeline is its maker's
    buf = heap.allocate(4096) if heap else pydmabuf.udmabuf(4096)
    calls: dict[str, object] = {"Buffer.map": buf.map, "udmabuf": lambda: pydmabuf.udmabuf(4096),
                                "BufferPool": lambda: pydmabuf.BufferPool(4096, 2)}
    if heap is not None:
        calls.update({"Heap.allocate": lambda: heap.allocate(4096), "Heap()": lambda: pydmabuf.Heap("system")})
    calls.update({"Buffer.dup": buf.dup, "Buffer.export_sync_file": buf.export_sync_file,
                  "Buffer.from_fd(own=False)": lambda: pydmabuf.Buffer.from_fd(buf, own=False)})
    if timeline is not None:
        fence, other = timeline.fence(2), timeline.fence(3)
        calls.update({"Timeline.fence": lambda: timeline.fence(1), "SyncFile.dup": fence.dup,
                      "SyncFile.merge": lambda: fence.merge(other),
                      "SyncFile.from_fd(own=False)": lambda: pydmabuf.SyncFile.from_fd(fence, own=False)})
    _use_up_fds(64)  # the fds stay open (the child exits)
    for status, (name, call) in enumerate(calls.items(), start=10):
        try:
            result = call()  # type: ignore[operator]
        except errors.TooManyOpenFilesError as exc:
            if "may have 64 open fds (RLIMIT_NOFILE" not in str(exc) or exc.errno != errno.EMFILE:
                print(name, "message:", exc)
                return status
            continue
        except BaseException:
            print(name, "raised:")
            traceback.print_exc()
            return status
        print(name, "succeeded:", result)
        return status
    return 0


def test_out_of_fds_is_a_library_error_that_names_the_limit() -> None:
    from _procs import fork, join

    status = join(fork(_out_of_fds), timeout=60)
    assert status == 0, f"exit status {status}: see the captured output"


def _classify_after_running_out() -> int:
    """In a fresh child (nothing classified yet): a buffer fd met for the first time
    while no fd is left is TooManyOpenFilesError, not "not a buffer", and once an fd
    is free the same fd is taken (the first sight was not remembered as a refusal)."""

    buf = pydmabuf.udmabuf(4096)  # the default backend's kind: a memfd or a dma-buf
    fd = buf.detach()
    taken = _use_up_fds(64)
    try:
        pydmabuf.Buffer.from_fd(fd).close()
    except errors.TooManyOpenFilesError:
        pass
    except errors.Error as exc:
        print("first sight without fds:", repr(exc))
        return 10
    else:  # a kind known without an fd (a dma-buf device seen before): fine too
        print("classified without a spare fd")
        return 0
    os.close(taken.pop())
    try:
        pydmabuf.Buffer.from_fd(fd).close()
    except errors.Error as exc:
        print("after an fd was freed:", repr(exc))
        return 11
    return 0


def test_running_out_of_fds_while_classifying_is_passing() -> None:
    from _procs import fork, join

    status = join(fork(_classify_after_running_out), timeout=60)
    assert status == 0, f"exit status {status}: see the captured output"
