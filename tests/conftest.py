"""Shared fixtures. The suite runs on the default backend: the fallback natively,
the kernel inside the real-kernel VM (PYDMABUF_BACKEND=kernel)."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import pydmabuf

BACKEND = pydmabuf.backend
IN_VM = bool(os.environ.get("PYDMABUF_IN_VM"))
# Inside the real-kernel VM: no nested VM, and no package index to build wheels with.
collect_ignore = ["test_real_kernel.py", "test_packaging.py"] if IN_VM else []


def load_script(path: Path, name: str) -> ModuleType:
    """A script that is not a package module (an example, a benchmark, a generator),
    imported from its file. It stays registered in sys.modules under ``name``:
    dataclasses and NamedTuples look their module up there."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _timeline_reason() -> str | None:
    try:
        pydmabuf.Timeline().close()
    except pydmabuf.UnsupportedError as exc:
        return f"no fence source on this {BACKEND} backend: {exc}"
    return None


TIMELINE_MISSING = _timeline_reason()


def _open_long_lived_fds() -> None:
    """The kernel backend keeps /dev/udmabuf open once used: open it before the first
    test so the per-test fd count sees only what a test leaks."""
    with contextlib.suppress(OSError):
        pydmabuf.udmabuf(4096).close()


_open_long_lived_fds()

kernel_only = pytest.mark.skipif(BACKEND != "kernel", reason="needs the kernel backend (real ioctls)")
fallback_only = pytest.mark.skipif(BACKEND != "fallback", reason="tests the fallback emulation itself")
needs_timeline = pytest.mark.skipif(TIMELINE_MISSING is not None, reason=TIMELINE_MISSING or "")


def _has_heap() -> bool:
    return "system" in pydmabuf.heaps()


needs_heap = pytest.mark.skipif(not _has_heap(), reason=f"no 'system' dma-heap on the {BACKEND} backend")


@pytest.fixture(autouse=True)
def no_fd_leak(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test must leave the process's fd count as it found it.

    The fallback's merge reactor closes its private fds from a thread right after
    a merge signals, so a short grace period is allowed; a real leak never settles.
    """
    if request.node.get_closest_marker("real_kernel"):
        yield
        return
    gc.collect()
    # What is alive now is older than this test: frozen, it is left out of every later
    # collection, which then walks only what tests made since. Full collections of the
    # whole session's objects were a third of the host suite's time (and more under
    # the real-kernel tier's emulation); the test's own garbage is still collected.
    gc.freeze()
    before = open_fds()
    yield
    deadline = time.monotonic() + 2.0
    while True:
        gc.collect()
        after = open_fds()
        if after == before or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert after == before, f"fd leak: {before} fds before the test, {after} after"


@pytest.fixture
def heap() -> Iterator[pydmabuf.Heap]:
    if not _has_heap():
        pytest.skip(f"no 'system' dma-heap on the {BACKEND} backend")
    with pydmabuf.Heap("system") as h:
        yield h


@pytest.fixture
def timeline() -> Iterator[pydmabuf.Timeline]:
    if TIMELINE_MISSING:
        pytest.skip(TIMELINE_MISSING)
    with pydmabuf.Timeline() as tl:
        yield tl


# vivid's capture nodes have one buffer queue each (a second streamer gets EBUSY), so
# the tests that stream from them take turns when the real-kernel tier runs the guest
# suite on several pytest-xdist workers: an flock, not xdist's groups (xdist 3.8's
# loadgroup cannot rename the test ids of pytest 9 and silently does nothing there).
_V4L2_FILES = ("tests/test_v4l2_capture.py", "tests/test_foreign.py")
_V4L2_EXAMPLES = ("[v4l2_capture.py]", "[gstreamer_v4l2src.py]")


def uses_v4l2(nodeid: str) -> bool:
    return nodeid.split("::", 1)[0].endswith(_V4L2_FILES) or nodeid.endswith(_V4L2_EXAMPLES)


@pytest.fixture(autouse=True)
def _v4l2_devices_one_test_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    if not uses_v4l2(request.node.nodeid):
        yield
        return
    with open(os.path.join(tempfile.gettempdir(), "pydmabuf-tests-v4l2.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
