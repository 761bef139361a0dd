"""A hypothesis fuzz of every public entry point's arguments.

Contract (docs/objects.md, "Arguments"): bad arguments raise only documented exceptions, the
same on both backends: a ``pydmabuf.Error`` (``InvalidArgumentError`` and
``ClosedError`` are ``ValueError`` s too) or ``TypeError``; ``BufferError`` from
``Mapping.__dlpack__``; mmap's own sequence errors from indexing a Mapping; and
whatever a hostile argument's own ``__index__`` or ``fileno()`` raises, unchanged (as
Python's ``operator.index`` lets it through). Anything else (``AttributeError``,
``OverflowError``, ``IndexError``, ``struct.error``, a raw ``OSError``...) fails the
example at once, and so does a change in the process's fd count after an example;
``test_every_exception_seen_is_documented`` (last) also rejects a bare ValueError
or a documented type from the wrong entry point, and prints what each raised.
Whatever succeeds is closed again.

Hostile values reach every entry point through ``junk`` and ``ints``: huge and
negative ints, NaN, wrong types, numpy integers, and objects whose ``__index__`` or
``fileno()`` raises, returns junk, or returns a different value each call.

Waits never block here: arbitrary timeouts go only to objects that are ready (an
idle buffer, a signaled fence); an object that is busy gets ``bounded(timeout)``,
which keeps invalid timeouts invalid and turns every valid one into 0.

Deterministic and bounded for CI: ``derandomize=True``, no example database, a fixed
example count per entry point (``EXAMPLES``). Run with ``-s`` for a table of what each
entry point raised.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import math
import os
import pickle
import socket
import stat
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import BACKEND, open_fds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pydmabuf
from pydmabuf import channel, credentials

PAGE = 4096


class HostileError(Exception):
    """What a hostile argument's ``__index__`` or ``fileno()`` raises: it must come out
    of the library unchanged, never swallowed or turned into something else."""


# What attempt() lets by (bare ValueError included: test_every_exception_seen_is_documented
# then says where it came from), plus EXTRA_DOCUMENTED for the entry.
ALLOWED = (pydmabuf.Error, TypeError, ValueError, HostileError)
# Examples per entry point; PYDMABUF_FUZZ_EXAMPLES=N fuzzes longer (still deterministic).
# Under the VM's emulation every example costs ~10x: fewer there, still every entry point
# on the kernel backend (the full count runs natively on every CI run).
EXAMPLES = int(os.environ.get("PYDMABUF_FUZZ_EXAMPLES", "40" if os.environ.get("PYDMABUF_IN_VM") else "120"))

fuzz = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    # The suite's autouse fd-leak check wraps all of a test's examples on purpose;
    # each example also checks the fd count itself.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- strategies ------------------------------------------------------------------

WEIRD_INTS = [-1, 0, 1, 7, 4095, 4096, 4097, -4096, 2**31 - 1, 2**31, 2**31 + 5, 2**32, 2**63 - 1,
              2**63, 2**64, -2**31, -2**63, -2**64, 10**30, 2**1024, -2**1024]
WEIRD_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 0.5, 1e-300, 5e-324, 1e300, -1e300,
                2147484.0, 2147483.648, 9.3e18, 1.8e19, -1.0]


class RaisingIndex:
    """An integer whose ``__index__`` raises."""

    def __index__(self) -> int:
        raise HostileError("__index__ refuses")

    def __repr__(self) -> str:
        return "RaisingIndex()"


class LyingIndex:
    """An integer whose ``__index__`` returns ``values`` in turn: junk, or a different
    number each call (the library must take it once and use what it got)."""

    def __init__(self, *values: object) -> None:
        self.values = values
        self.calls = 0

    def __index__(self) -> int:
        value = self.values[self.calls % len(self.values)]
        self.calls += 1
        return value  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"LyingIndex{self.values!r}"


class RaisingFileno:
    def fileno(self) -> int:
        raise HostileError("fileno() refuses")

    def __repr__(self) -> str:
        return "RaisingFileno()"


try:
    import numpy as _np

    NUMPY_INTS: list[object] = [_np.int64(PAGE), _np.int64(-1), _np.uint64(2**64 - 1), _np.int32(3), _np.uint8(1),
                                _np.float64(4096.0), _np.bool_(True)]
except ImportError:  # numpy is optional
    NUMPY_INTS = []
HOSTILE_INTS = [RaisingIndex(), LyingIndex(PAGE), LyingIndex(3), LyingIndex(-1), LyingIndex(2**31), LyingIndex(2**64),
                LyingIndex("3"), LyingIndex(PAGE, -1, 2**64), LyingIndex(1, 2**31), *NUMPY_INTS]
ints = st.one_of(st.sampled_from(WEIRD_INTS), st.integers(), st.sampled_from(HOSTILE_INTS))
floats = st.one_of(st.sampled_from(WEIRD_FLOATS), st.floats())
junk_objects = st.sampled_from([object(), [], (), {}, set(), b"x", bytearray(b"y"), "\ud800", "\0",
                                "a" * 300, Ellipsis, type, print, RaisingFileno(), *HOSTILE_INTS])
junk = st.one_of(st.none(), st.booleans(), ints, floats, st.text(max_size=40), st.binary(max_size=40),
                 junk_objects)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = junk) -> st.SearchStrategy[Any]:
    """``good`` three times in four, else ``bad``: enough valid arguments to get past
    the first check and reach the later ones. (``one_of`` would flatten the
    alternatives inside both into one list and pick among those instead.)"""
    return st.integers(0, 3).flatmap(lambda pick: bad if pick == 0 else good)


timeouts = mostly(st.one_of(st.none(), st.sampled_from([0, 0.0, 1, 1e-9, math.inf, 1e300, 2147484.0, 2**64]),
                            st.floats(min_value=0)), st.one_of(ints, floats, junk))
flags = mostly(st.booleans())  # read=/write=/own=: truthiness, or a TypeError
names = mostly(st.one_of(st.text(max_size=40), st.sampled_from(["", "x" * 31, "x" * 32, "é" * 16, "a\0b",
                                                                "\ud800", "\udcff", "a/b", "..", "\n"])))
backends = mostly(st.one_of(st.none(), st.sampled_from([BACKEND, "kernel", "fallback"])),
                  st.one_of(st.sampled_from(["", "auto", "KERNEL"]), junk))
# fd numbers that cannot be open here (nr_open caps fds below 2**20): nothing of the
# test's can be taken over by a fuzzed number.
impossible_fds = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**20),
                           st.sampled_from([-1, 2**31 - 1, 2**31, 2**31 + 5, 2**32, 2**63, 2**64]))
sizes = mostly(st.one_of(st.integers(-2**70, 2**20), st.sampled_from([PAGE, 2**31 + 5, 2**63 - 1, 2**63, 2**64,
                                                                     10**30, 2**1024])))
offsets = mostly(st.one_of(st.sampled_from([0, PAGE, 2 * PAGE, -PAGE, 1, 2**63 - PAGE, 2**63, 2**64]),
                           st.integers(-2**70, 2**70)))
# The kinds of file a fuzzed fd argument may be; made fresh for each example.
FILE_KINDS = ["buffer", "fence", "pipe", "devnull", "memfd", "sealed_memfd", "closed"]
fd_args = mostly(st.tuples(st.sampled_from(FILE_KINDS), st.booleans()),
                 st.one_of(impossible_fds, junk, st.tuples(st.just("fileno"), st.one_of(impossible_fds, junk))))


class Fileno:
    """An object whose fileno() returns whatever it was given."""

    def __init__(self, value: object) -> None:
        self.value = value

    def fileno(self) -> object:
        return self.value


def bounded(timeout: object) -> object:
    """A timeout that cannot block: a valid one (None, any number >= 0, numpy's and
    anything else float() takes too) becomes 0, an invalid one stays as it is."""
    if timeout is None:
        return 0
    if isinstance(timeout, (bool, str, bytes, bytearray)):
        return timeout
    try:
        if float(timeout) >= 0:  # type: ignore[arg-type]
            return 0
    except Exception:
        pass  # not a number: invalid as it is
    return timeout


# --- bookkeeping -----------------------------------------------------------------

OUTCOMES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
SEEN: dict[str, set[type[BaseException]]] = collections.defaultdict(set)  # entry -> exception types


def attempt(entry: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or None if it raised a documented exception; any other
    exception propagates and fails the example."""
    try:
        result = fn(*args, **kwargs)
    except ALLOWED + EXTRA_DOCUMENTED.get(entry, ()) as exc:
        record(entry, exc)
        return None
    OUTCOMES[entry]["ok"] += 1
    return result


def record(entry: str, exc: BaseException) -> None:
    OUTCOMES[entry][type(exc).__name__] += 1
    SEEN[entry].add(type(exc))


# Entry points with documented exceptions beyond the library's, TypeError and HostileError:
# a Mapping is an mmap.mmap, whose own rules stand for bad indices and values (m[10**9],
# m[0] = 300, write_byte(-1)); only closed, read-only and exported mappings are the
# library's business.
MMAP_ARGUMENTS = (IndexError, ValueError, OverflowError)
EXTRA_DOCUMENTED: dict[str, tuple[type[BaseException], ...]] = {
    "Mapping.__dlpack__": (BufferError,),
    "Mapping[i]": MMAP_ARGUMENTS,
    "Mapping[i] = v": MMAP_ARGUMENTS,
    "Mapping.write_byte": MMAP_ARGUMENTS,
}


def documented(entry: str, exc_type: type[BaseException]) -> bool:
    if issubclass(exc_type, pydmabuf.Error) or exc_type in (TypeError, HostileError):
        return True
    return exc_type in EXTRA_DOCUMENTED.get(entry, ())


def close_all(*objs: Any) -> None:
    for obj in objs:
        if isinstance(obj, (list, tuple)):
            close_all(*obj)
        elif hasattr(obj, "close"):
            obj.close()


@contextlib.contextmanager
def same_fd_count() -> Iterator[None]:
    before = open_fds()
    yield
    assert open_fds() == before, "the example changed the process's fd count"


@pytest.fixture(scope="module", autouse=True)
def outcome_table() -> Iterator[None]:
    yield
    print(f"\nfuzz on {BACKEND}: examples per entry point and what they raised")
    for entry, counts in sorted(OUTCOMES.items()):
        detail = ", ".join(f"{k} {v}" for k, v in counts.most_common())
        print(f"  {entry:34} {sum(counts.values()):5}  {detail}")


class Pool:
    """Objects shared by the examples: ready ones take any timeout, busy ones only
    bounded ones. Nothing here is ever handed over to be owned by the library."""

    def __init__(self) -> None:
        self.heap = pydmabuf.Heap("system")
        self.timeline = pydmabuf.Timeline()
        self.timeline.signal(1)
        self.signaled = self.timeline.fence(1)
        self.pending = self.timeline.fence(2**31 - 1)  # signaled by close() at the end
        self.idle = self.heap.allocate(PAGE)
        self.busy = self.heap.allocate(PAGE)
        self.busy.import_sync_file(self.pending)
        self.closed_buffer = self.heap.allocate(PAGE)
        self.closed_buffer.close()
        self.closed_fence = self.timeline.fence(1)
        self.closed_fence.close()
        self.closed_heap = pydmabuf.Heap("system")
        self.closed_heap.close()
        # A frame whose mappings are made once here (the frame keeps them), and a view.
        self.frame = pydmabuf.allocate_frame(16, 16, "NV12", allocator=self.heap)
        for write in (True, False):
            for view in self.frame.plane_views(write=write):
                view.release()
        self.view = self.frame.plane_view(1)
        self.by_name: dict[str, object] = {
            "signaled": self.signaled, "pending": self.pending, "idle": self.idle,
            "busy": self.busy, "closed_buffer": self.closed_buffer,
            "closed_fence": self.closed_fence, "heap": self.heap, "closed_heap": self.closed_heap,
        }

    def close(self) -> None:
        self.view.release()
        close_all(self.frame, self.idle, self.busy, self.signaled, self.pending, self.heap, self.timeline)


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    p = Pool()
    yield p
    p.close()


POOL_NAMES = ["signaled", "pending", "idle", "busy", "closed_buffer", "closed_fence", "heap", "closed_heap"]
READY = {"signaled", "idle", "closed_buffer", "closed_fence", "heap", "closed_heap"}
pool_or_junk = mostly(st.sampled_from(POOL_NAMES).map(lambda n: ("pool", n)))
waitables = mostly(st.lists(pool_or_junk, max_size=5))


def resolve(pool: Pool, arg: object) -> object:
    if isinstance(arg, tuple) and len(arg) == 2 and arg[0] == "pool":
        return pool.by_name[arg[1]]
    return arg


def may_block(pool: Pool, objs: list[object]) -> bool:
    return any(obj is pool.busy or obj is pool.pending for obj in objs)


def make_file(pool: Pool, kind: str) -> int:
    if kind == "buffer":
        return os.dup(pool.idle.fileno())
    if kind == "fence":
        return os.dup(pool.signaled.fileno())
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return r
    if kind == "devnull":
        return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    if kind in ("memfd", "sealed_memfd"):
        fd = os.memfd_create("fuzz", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 4 * PAGE)
        if kind == "sealed_memfd":
            import fcntl

            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        return fd
    assert kind == "closed"
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)
    return fd


def fd_value(pool: Pool, arg: object, made: list[int]) -> object:
    """The fuzzed fd argument; fds made for it are appended to ``made``."""
    if isinstance(arg, tuple) and len(arg) == 2 and arg[0] in FILE_KINDS:
        kind, wrap = arg
        fd = make_file(pool, kind)
        if kind != "closed":
            made.append(fd)
        return Fileno(fd) if wrap else fd
    if isinstance(arg, tuple) and len(arg) == 2 and arg[0] == "fileno":
        return Fileno(arg[1])  # fileno() returns junk
    return arg


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError as exc:
            raise AssertionError(f"fd {fd} passed to the library was closed by it: {exc}") from None


# --- heaps and allocation ------------------------------------------------------------

@fuzz
@given(name=names, backend=backends)
def test_heap(name: object, backend: object) -> None:
    with same_fd_count():
        close_all(attempt("Heap()", pydmabuf.Heap, name, backend=backend))


@fuzz
@given(heap=st.sampled_from(["heap", "closed_heap"]), size=sizes, name=st.one_of(st.none(), names))
def test_heap_allocate(pool: Pool, heap: str, size: object, name: object) -> None:
    target = pool.by_name[heap]
    assert isinstance(target, pydmabuf.Heap)
    with same_fd_count():
        close_all(attempt("Heap.allocate", target.allocate, size, name=name))


@fuzz
@given(size=sizes, name=st.one_of(st.none(), names), backend=backends)
def test_udmabuf(size: object, name: object, backend: object) -> None:
    with same_fd_count():
        close_all(attempt("udmabuf", pydmabuf.udmabuf, size, name=name, backend=backend))


@fuzz
@given(memfd=mostly(st.sampled_from([("sealed_memfd", False), ("sealed_memfd", True)]), fd_args),
       offset=mostly(st.sampled_from([0, PAGE, 2 * PAGE, 3 * PAGE, 4 * PAGE, 1]), offsets),
       size=mostly(st.sampled_from([None, PAGE, 2 * PAGE, 4 * PAGE, 5 * PAGE, 0, 1]), st.one_of(sizes, offsets)),
       backend=backends)
def test_udmabuf_from_memfd(pool: Pool, memfd: object, offset: object, size: object, backend: object) -> None:
    with same_fd_count():
        made: list[int] = []
        arg = fd_value(pool, memfd, made)
        close_all(attempt("udmabuf_from_memfd", pydmabuf.udmabuf_from_memfd, arg, offset, size,
                          backend=backend))
        close_fds(made)


ranges = mostly(st.lists(mostly(st.tuples(fd_args, offsets, st.one_of(sizes, offsets)),
                                st.one_of(st.tuples(fd_args, offsets), junk)), max_size=4))


@fuzz
@given(items=ranges, backend=backends)
def test_udmabuf_from_ranges(pool: Pool, items: object, backend: object) -> None:
    with same_fd_count():
        made: list[int] = []
        if isinstance(items, list):
            items = [(fd_value(pool, r[0], made), *r[1:]) if isinstance(r, tuple) else r for r in items]
        close_all(attempt("udmabuf_from_ranges", pydmabuf.udmabuf_from_ranges, items, backend=backend))
        close_fds(made)


# --- wrapping fds -------------------------------------------------------------------

@fuzz
@given(fd=fd_args, own=flags, backend=backends)
def test_buffer_from_fd(pool: Pool, fd: object, own: object, backend: object) -> None:
    with same_fd_count():
        made: list[int] = []
        arg = fd_value(pool, fd, made)
        buf = attempt("Buffer.from_fd", pydmabuf.Buffer.from_fd, arg, own=own, backend=backend)
        if buf is not None:
            if own:
                made.clear()  # the buffer owns it now
            buf.close()
        close_fds(made)


@fuzz
@given(fd=fd_args, own=flags, backend=backends)
def test_sync_file_from_fd(pool: Pool, fd: object, own: object, backend: object) -> None:
    with same_fd_count():
        made: list[int] = []
        arg = fd_value(pool, fd, made)
        fence = attempt("SyncFile.from_fd", pydmabuf.SyncFile.from_fd, arg, own=own, backend=backend)
        if fence is not None:
            if own:
                made.clear()
            fence.close()
        close_fds(made)


# --- buffer methods -----------------------------------------------------------------

buffers = st.sampled_from(["idle", "busy", "closed_buffer"])


def buffer_and_timeout(pool: Pool, which: str, timeout: object) -> tuple[pydmabuf.Buffer, object]:
    buf = pool.by_name[which]
    assert isinstance(buf, pydmabuf.Buffer)
    return buf, bounded(timeout) if may_block(pool, [buf]) else timeout


@fuzz
@given(name=names)
def test_set_name(name: object) -> None:
    with pydmabuf.Heap("system") as heap, heap.allocate(PAGE) as buf, same_fd_count():
        attempt("Buffer.set_name", buf.set_name, name)
        attempt("Buffer.name", lambda: buf.name)


@fuzz
@given(which=buffers, read=flags, write=flags, timeout=timeouts)
def test_cpu_access(pool: Pool, which: str, read: object, write: object, timeout: object) -> None:
    buf, timeout = buffer_and_timeout(pool, which, timeout)
    with same_fd_count():
        access = attempt("Buffer.cpu_access", buf.cpu_access, read, write, timeout)
        if access is not None:
            def bracket() -> None:
                with access:
                    pass

            attempt("Buffer.cpu_access (with)", bracket)


@fuzz
@given(which=buffers, write=flags, timeout=timeouts)
def test_wait(pool: Pool, which: str, write: object, timeout: object) -> None:
    buf, timeout = buffer_and_timeout(pool, which, timeout)
    with same_fd_count():
        attempt("Buffer.wait", buf.wait, write=write, timeout=timeout)


@fuzz
@given(which=buffers, read=flags, write=flags)
def test_export_sync_file(pool: Pool, which: str, read: object, write: object) -> None:
    buf = pool.by_name[which]
    assert isinstance(buf, pydmabuf.Buffer)
    with same_fd_count():
        close_all(attempt("Buffer.export_sync_file", buf.export_sync_file, read=read, write=write))


@fuzz
@given(which=st.sampled_from(["idle", "closed_buffer"]), fence=pool_or_junk, write=flags)
def test_import_sync_file(pool: Pool, which: str, fence: object, write: object) -> None:
    buf = pool.by_name[which]
    assert isinstance(buf, pydmabuf.Buffer)
    fence = resolve(pool, fence)
    if fence is pool.pending:
        fence = pool.signaled  # a pending fence would make the shared idle buffer busy
    with same_fd_count():
        attempt("Buffer.import_sync_file", buf.import_sync_file, fence, write=write)


# --- fences -------------------------------------------------------------------------

fences = st.sampled_from(["signaled", "pending", "closed_fence"])


@fuzz
@given(which=fences, timeout=timeouts)
def test_sync_file_wait(pool: Pool, which: str, timeout: object) -> None:
    fence = pool.by_name[which]
    assert isinstance(fence, pydmabuf.SyncFile)
    if may_block(pool, [fence]):
        timeout = bounded(timeout)
    with same_fd_count():
        attempt("SyncFile.wait", fence.wait, timeout)
        attempt("SyncFile.signaled", lambda: fence.signaled)
        attempt("SyncFile.info", fence.info)


@fuzz
@given(which=st.sampled_from(["signaled", "closed_fence"]), other=pool_or_junk, name=names)
def test_merge(pool: Pool, which: str, other: object, name: object) -> None:
    fence = pool.by_name[which]
    assert isinstance(fence, pydmabuf.SyncFile)
    with same_fd_count():
        close_all(attempt("SyncFile.merge", fence.merge, resolve(pool, other), name=name))


@fuzz
@given(items=waitables, name=names)
def test_merge_all(pool: Pool, items: object, name: object) -> None:
    if isinstance(items, list):
        items = [resolve(pool, i) for i in items]
        # Two different pending inputs would start the fallback's merge thread, whose
        # fds outlive the example; one pending input is merged as a dup.
        if sum(i is pool.pending for i in items) > 1:
            items = [i for i in items if i is not pool.pending] + [pool.pending]
    with same_fd_count():
        close_all(attempt("SyncFile.merge_all", pydmabuf.SyncFile.merge_all, items, name=name))


@fuzz
@given(which=fences, deadline_ns=mostly(st.integers(-2**70, 2**70), st.one_of(ints, junk)))
def test_set_deadline(pool: Pool, which: str, deadline_ns: object) -> None:
    fence = pool.by_name[which]
    assert isinstance(fence, pydmabuf.SyncFile)
    with same_fd_count():
        attempt("SyncFile.set_deadline", fence.set_deadline, deadline_ns)


points = mostly(st.one_of(st.integers(-3, 8), st.sampled_from([2**31 - 1, 2**31, 2**31 + 5, 2**63, 2**64])))


@settings(fuzz, max_examples=EXAMPLES // 2)
@given(backend=backends, fence_at=points, signal_at=st.one_of(st.none(), points))
def test_timeline(backend: object, fence_at: object, signal_at: object) -> None:
    with same_fd_count():
        timeline = attempt("Timeline()", pydmabuf.Timeline, backend=backend)
        if timeline is None:
            return
        with timeline:
            fence = attempt("Timeline.fence", timeline.fence, fence_at)
            attempt("Timeline.signal", timeline.signal, signal_at)
            close_all(fence)


# --- waiting on many ----------------------------------------------------------------



def waitable_list(pool: Pool, items: object, timeout: object) -> tuple[object, object]:
    if isinstance(items, list):
        items = [resolve(pool, i) for i in items]
        if may_block(pool, items):
            timeout = bounded(timeout)
    else:
        timeout = bounded(timeout)  # junk iterables: never risk a blocking wait
    return items, timeout


@fuzz
@given(items=waitables, timeout=timeouts, write=flags)
def test_wait_any(pool: Pool, items: object, timeout: object, write: object) -> None:
    items, timeout = waitable_list(pool, items, timeout)
    with same_fd_count():
        attempt("wait_any", pydmabuf.wait_any, items, timeout, write=write)


@fuzz
@given(items=waitables, timeout=timeouts, write=flags)
def test_wait_all(pool: Pool, items: object, timeout: object, write: object) -> None:
    items, timeout = waitable_list(pool, items, timeout)
    with same_fd_count():
        attempt("wait_all", pydmabuf.wait_all, items, timeout, write=write)


@fuzz
@given(items=waitables, timeout=timeouts, write=flags, every=st.booleans())
def test_fence_set(pool: Pool, items: object, timeout: object, write: object, every: bool) -> None:
    items, timeout = waitable_list(pool, items, timeout)
    with same_fd_count():
        fence_set = attempt("FenceSet()", pydmabuf.FenceSet, items, write=write)
        if fence_set is not None:
            with fence_set:
                if every:
                    attempt("FenceSet.wait_all", fence_set.wait_all, timeout)
                else:
                    attempt("FenceSet.wait_any", fence_set.wait_any, timeout)


# --- sharing ------------------------------------------------------------------------

SOCKETS = ["seqpacket", "stream", "dgram", "tcp", "closed", "listening"]
sockets = mostly(st.sampled_from(SOCKETS))
id_lists = mostly(st.one_of(st.none(), st.lists(st.integers(-2, 70000), max_size=3)),
                  st.one_of(st.lists(ints, max_size=3), junk))


@contextlib.contextmanager
def socket_arg(kind: object) -> Iterator[tuple[object, socket.socket | None]]:
    """(the socket argument, its connected peer or None); all closed afterwards."""
    if kind not in SOCKETS:
        yield kind, None
        return
    made: list[socket.socket] = []
    peer = None
    if kind in ("seqpacket", "stream", "dgram"):
        kinds = {"seqpacket": socket.SOCK_SEQPACKET, "stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM}
        sock, peer = socket.socketpair(socket.AF_UNIX, kinds[str(kind)])
        made += [sock, peer]
    elif kind == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        made.append(sock)
    elif kind == "listening":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind("")  # autobind: an abstract address
        sock.listen(1)
        made.append(sock)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.close()
    try:
        yield sock, peer
    finally:
        for s in made:
            s.close()


send_objects = st.lists(mostly(st.sampled_from(["idle", "idle", "signaled", "closed_buffer", "closed_fence",
                                                "heap"]).map(lambda n: ("pool", n))), max_size=4)
payloads = mostly(st.one_of(st.binary(max_size=64), st.sampled_from([b"x" * 4096, b"x" * 4097, bytearray(b"ab"),
                                                                     memoryview(b"cd")])))


@fuzz
@given(sock=sockets, objects=send_objects, data=payloads)
def test_send(pool: Pool, sock: object, objects: list[object], data: object) -> None:
    objs = [resolve(pool, o) for o in objects]
    with same_fd_count(), socket_arg(sock) as (arg, _peer):
        # Fds in flight are dropped by the kernel when both ends close.
        attempt("send", pydmabuf.send, arg, *objs, data=data)


@fuzz
@given(sock=sockets, queued=st.booleans(), timeout=timeouts, verify=flags)
def test_recv(pool: Pool, sock: object, queued: bool, timeout: object, verify: object) -> None:
    with same_fd_count(), socket_arg(sock) as (arg, peer):
        if peer is not None and queued:
            pydmabuf.send(peer, pool.idle, pool.signaled, data=b"meta")
        else:
            timeout = bounded(timeout)  # nothing will arrive
        close_all(attempt("recv", pydmabuf.recv, arg, timeout=timeout, verify=verify))


@fuzz
@given(sock=sockets, allow_uids=id_lists, allow_gids=id_lists, allow_root=flags)
def test_check_peer(sock: object, allow_uids: object, allow_gids: object, allow_root: object) -> None:
    with same_fd_count(), socket_arg(sock) as (arg, _peer):
        attempt("credentials.check_peer", credentials.check_peer, arg, allow_uids=allow_uids,
                allow_gids=allow_gids, allow_root=allow_root)


# --- the channel's constructors (arguments only) ------------------------------------

_SOCKET_DIR = tempfile.mkdtemp(prefix="pydmabuf-fuzz-")
_ABSTRACT = f"@pydmabuf-fuzz-{os.getpid()}-"
channel_paths = mostly(
    st.one_of(st.text(max_size=20).map(lambda t: _ABSTRACT + t),
              st.text(max_size=20).map(lambda t: os.path.join(_SOCKET_DIR, t)),
              st.sampled_from(["", "@", "a\0b", "@" + "x" * 200, os.path.join(_SOCKET_DIR, "x" * 200),
                               os.path.join(_SOCKET_DIR, "missing", "sock")])),
    st.one_of(st.none(), ints, floats, st.binary(max_size=10), junk_objects))


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def _optional(fn: Callable[..., Any], **kwargs: object) -> dict[str, object]:
    """The keyword arguments ``fn`` takes, out of ``kwargs`` (the channel is growing)."""
    accepted = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in accepted}


# Producer() has many arguments: each example spoils at most one of them with junk,
# so that the others get past their checks.
PRODUCER_ARGS = {
    "path": st.text(max_size=20).map(lambda t: _ABSTRACT + t) | channel_paths,
    "size": st.one_of(st.integers(-PAGE, 4 * PAGE), st.sampled_from([2**31 + 5, 2**63, 2**64])),
    # No large valid count: it would allocate until fds run out (one past the fd limit
    # is refused up front).
    "count": st.one_of(st.integers(-1, 3), st.sampled_from([2**31, 2**64, RaisingIndex(), LyingIndex(2),
                                                           LyingIndex(2**31), LyingIndex(2, 2**31), *NUMPY_INTS[3:5]])),
    "heap": st.sampled_from([None, ("pool", "heap"), ("pool", "closed_heap")]),
    "buffers": st.sampled_from([None, 0, 1, 2]),
    "allow_uids": id_lists,
    "allow_gids": id_lists,
    "max_pending": st.one_of(st.none(), st.integers(-2, 4)),
}


@settings(fuzz, max_examples=EXAMPLES // 2)
@given(args=st.fixed_dictionaries(PRODUCER_ARGS),
       spoil=st.one_of(st.none(), st.tuples(st.sampled_from(sorted(PRODUCER_ARGS)), junk)))
def test_producer(pool: Pool, args: dict[str, Any], spoil: tuple[str, object] | None) -> None:
    if spoil is not None:
        args[spoil[0]] = spoil[1]
    with same_fd_count():
        own: list[pydmabuf.Buffer] = []
        buffers = args.pop("buffers")
        if type(buffers) is int and 0 <= buffers <= 2:
            own = [pool.heap.allocate(PAGE) for _ in range(buffers)]
            buffers = own
        args["heap"] = resolve(pool, args["heap"])
        path = args.pop("path")
        extra = _optional(channel.Producer.__init__, **args)
        producer = attempt("channel.Producer()", channel.Producer, path, buffers=buffers, **extra)
        close_all(producer, own)
        if isinstance(path, str) and path.startswith(_SOCKET_DIR) and _is_socket(path):
            os.unlink(path)


@settings(fuzz, max_examples=EXAMPLES // 2)
@given(path=channel_paths, timeout=timeouts, allow_uids=id_lists)
def test_consumer_connect(path: object, timeout: object, allow_uids: object) -> None:
    # Nobody listens at these paths: a valid timeout would retry for that long.
    extra = _optional(channel.Consumer.connect, allow_uids=allow_uids)
    with same_fd_count():
        close_all(attempt("channel.Consumer.connect", channel.Consumer.connect, path,
                          timeout=bounded(timeout), **extra))


@settings(fuzz, max_examples=EXAMPLES // 2)
@given(sock=sockets)
def test_consumer_init(sock: object) -> None:
    with same_fd_count(), socket_arg(sock) as (arg, _peer):
        close_all(attempt("channel.Consumer()", channel.Consumer, arg))


# --- mappings: indexing, writes, close, DLPack ------------------------------------------

MAPPINGS = ["writable", "read-only", "closed", "closed read-only"]
indices = st.one_of(ints, st.builds(slice, ints, st.one_of(st.none(), ints), st.one_of(st.none(), ints)),
                    st.builds(slice, st.none(), st.one_of(st.none(), ints)), junk)
byte_values = st.one_of(st.integers(-2, 300), st.binary(max_size=8), st.sampled_from([b"\0" * PAGE]), junk)


@contextlib.contextmanager
def a_mapping(pool: Pool, kind: str) -> Iterator[pydmabuf.Mapping]:
    m = pool.idle.map(write=kind == "writable" or kind == "closed")
    try:
        if kind.startswith("closed"):
            m.close()
        yield m
    finally:
        m.close()


@fuzz
@given(kind=st.sampled_from(MAPPINGS), index=indices, value=byte_values)
def test_mapping_indexing(pool: Pool, kind: str, index: object, value: object) -> None:
    with same_fd_count(), a_mapping(pool, kind) as m:
        attempt("Mapping[i]", lambda: m[index])  # type: ignore[index]
        if kind == "writable" and isinstance(value, bytes) and len(value) == PAGE:
            value = b"\0"  # never overwrite the whole shared buffer with something else
        attempt("Mapping[i] = v", m.__setitem__, index, value)
        attempt("Mapping.write", m.write, value)
        attempt("Mapping.write_byte", m.write_byte, value)
        attempt("len(Mapping)", len, m)
        attempt("Mapping.resize", m.resize, index)
        attempt("Mapping.close", m.close)


EXPORTS = ["memoryview", "numpy.frombuffer", "dlpack"]


@settings(fuzz, max_examples=EXAMPLES // 2)
@given(export=st.sampled_from(EXPORTS), write=st.booleans())
def test_mapping_close_under_an_export(pool: Pool, export: str, write: bool) -> None:
    from pydmabuf import dlpack

    with same_fd_count():
        m = pool.idle.map(write=write)
        if export == "memoryview":
            user: Any = memoryview(m)
        elif export == "numpy.frombuffer":
            np = pytest.importorskip("numpy")
            user = np.frombuffer(m, np.uint8)
        else:
            user = m.__dlpack__(max_version=(1, 0), dl_device=None, copy=None)
        try:
            m.close()
        except pydmabuf.errors.MappingInUseError as exc:
            assert "del array" in str(exc)
            record("Mapping.close (exported)", exc)
        assert not m.closed, "closed under a live export"
        if isinstance(user, memoryview):
            user.release()
        del user
        dlpack.collect()
        m.close()
        assert m.closed


# torch.from_dlpack's own call, compiled as torch's code (the module name says so)
_AS_TORCH = compile(textwrap.dedent("""
    result = target.__dlpack__(**kwargs)
"""), "<torch/utils/dlpack.py>", "exec")
versions = mostly(st.one_of(st.none(), st.tuples(st.integers(-1, 3), st.integers(-1, 3))),
                  st.one_of(junk, st.tuples(ints, ints), st.lists(ints, max_size=3)))
devices = mostly(st.one_of(st.none(), st.sampled_from([(1, 0), (2, 0), (1, 1), [1, 0], (13, 0)])),
                 st.one_of(junk, st.tuples(ints, ints)))
copies = mostly(st.one_of(st.none(), st.booleans()))
streams = mostly(st.none(), st.one_of(ints, junk))


@fuzz
@given(kind=st.sampled_from(MAPPINGS), stream=streams, max_version=versions, dl_device=devices, copy=copies,
       given_keys=st.sets(st.sampled_from(["stream", "max_version", "dl_device", "copy"])), as_torch=st.booleans())
def test_dlpack(pool: Pool, kind: str, stream: object, max_version: object, dl_device: object, copy: object,
                given_keys: set[str], as_torch: bool) -> None:
    from pydmabuf import dlpack
    from pydmabuf.uapi import dlpack_abi

    kwargs = {k: v for k, v in (("stream", stream), ("max_version", max_version), ("dl_device", dl_device),
                                ("copy", copy)) if k in given_keys}
    with same_fd_count(), a_mapping(pool, kind) as m:
        def export() -> object:
            if as_torch:
                scope: dict[str, Any] = {"__name__": "torch.utils.dlpack", "target": m, "kwargs": kwargs}
                exec(_AS_TORCH, scope)
                return scope["result"]
            return m.__dlpack__(**kwargs)

        capsule = attempt("Mapping.__dlpack__", export)
        attempt("Mapping.__dlpack_device__", m.__dlpack_device__)
        if capsule is not None and kind == "read-only" and copy is not True:
            # A read-only mapping goes out only flagged, to numpy's form of call, never to torch.
            assert "dl_device" in kwargs and "copy" in kwargs and not as_torch
            assert dlpack_abi.capsule_is_valid(capsule, dlpack_abi.VERSIONED_NAME)
        del capsule
        dlpack.collect()
        assert dlpack.pending() == 0


# --- frames: plane and row indices ------------------------------------------------------

@fuzz
@given(index=mostly(st.integers(-3, 3), ints), row=mostly(st.integers(-2, 9), ints), write=flags)
def test_frame_indices(pool: Pool, index: object, row: object, write: object) -> None:
    with same_fd_count():
        view = attempt("Frame.plane_view", pool.frame.plane_view, index, write=write)
        if view is not None:
            view.release()
        attempt("Frame.plane_extent", pool.frame.plane_extent, index)
        attempt("PlaneView.row", pool.view.row, row)


# --- pools and pickling -----------------------------------------------------------------

pool_counts = mostly(st.integers(-2, 3), st.one_of(st.sampled_from([2**31, 2**63, 2**64, 10**30]), junk))
pool_sizes = mostly(st.one_of(st.integers(-PAGE, 4 * PAGE), st.sampled_from([2**63, 2**64, 10**30])),
                    st.one_of(st.sampled_from(HOSTILE_INTS), junk))


@settings(fuzz, max_examples=EXAMPLES // 2)
@given(size=pool_sizes, count=pool_counts, name=st.one_of(st.none(), names))
def test_buffer_pool(size: object, count: object, name: object) -> None:
    from pydmabuf.pool import BufferPool

    with same_fd_count():
        close_all(attempt("BufferPool()", BufferPool, size, count, name=name))


PICKLED = ["idle", "busy", "closed_buffer", "signaled", "pending", "closed_fence", "heap", "frame"]


@settings(fuzz, max_examples=EXAMPLES // 2)
@given(which=st.sampled_from(PICKLED), protocol=st.integers(0, pickle.HIGHEST_PROTOCOL), nested=st.booleans())
def test_pickle_outside_multiprocessing(pool: Pool, which: str, protocol: int, nested: bool) -> None:
    obj: object = pool.frame if which == "frame" else pool.by_name[which]
    threads = threading.active_count()
    with same_fd_count():
        with pytest.raises(TypeError, match="pickle"):
            pickle.dumps([obj] if nested else obj, protocol)
        attempt("pickle.dumps", pickle.dumps, obj, protocol)
    assert threading.active_count() == threads  # no resource sharer started


# --- a channel's delivery -----------------------------------------------------------------

@pytest.fixture(scope="module")
def deliveries(pool: Pool) -> Iterator[list[Any]]:
    """Two received deliveries, one without a fence and one with a signaled one."""
    path = f"{_ABSTRACT}delivery"
    producer = channel.Producer(path, size=PAGE, count=2)
    connected: list[channel.Consumer] = []
    thread = threading.Thread(target=lambda: connected.append(channel.Consumer.connect(path, timeout=20)))
    thread.start()
    producer.wait_for_consumers(1, timeout=20)
    thread.join(20)
    consumer = connected[0]
    producer.submit(producer.acquire(5))
    with pool.timeline.fence(1) as fence:  # signaled already
        producer.submit(producer.acquire(5), fence)
    got = [consumer.receive(timeout=20), consumer.receive(timeout=20)]
    yield got
    for delivery in got:
        delivery.release()
    consumer.close()
    producer.close()


@fuzz
@given(which=st.sampled_from([0, 1]), timeout=timeouts)
def test_delivery_wait(deliveries: list[Any], which: int, timeout: object) -> None:
    with same_fd_count():  # nothing here can block: no fence, or a signaled one
        attempt("Delivery.wait", deliveries[which].wait, timeout)


# --- what was seen ------------------------------------------------------------------------

def test_every_exception_seen_is_documented() -> None:
    """Last in the module: every exception type any entry point raised above is one it
    documents (library errors, TypeError, the hostile argument's own, and the few
    builtins noted in EXTRA_DOCUMENTED). Run with -s for the counts."""
    seen = collections.Counter(cls.__name__ for classes in SEEN.values() for cls in classes)
    print(f"\nexception types seen on {BACKEND} (entry points raising each): "
          + ", ".join(f"{name} {n}" for name, n in seen.most_common()))
    undocumented = sorted(f"{entry}: {cls.__module__}.{cls.__qualname__}"
                          for entry, classes in SEEN.items() for cls in classes if not documented(entry, cls))
    assert not undocumented, "undocumented exceptions:\n  " + "\n  ".join(undocumented)
