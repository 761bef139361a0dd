"""The fd-owning base class shared by Heap, Buffer and SyncFile.

Ownership rules (after trio's ``_FdHolder``): the object owns exactly one fd; ``close``
marks it closed (``_fd = -1``) *before* anything else, so no new operation can start;
every method of a closed object raises :class:`~pydmabuf.errors.ClosedError` without
touching the old number; the finalizer only closes.

Threads (after Go's fdMutex): an operation *holds* the fd for its duration, and
``close()`` from another thread releases the number only once the last hold is
released, so an operation can never act on a file that reused the number. The
protocol needs no lock, only operations CPython makes atomic:

- hold: append self to ``_held``, *then* read ``_fd`` (so a close that sets ``_fd`` to
  -1 afterwards sees the hold);
- release: remove self from ``_held``; if the object is closed meanwhile, finish;
- close: set ``_fd`` to -1, then finish unless a hold is outstanding;
- finish: pop the number out of the one-element ``_cell`` list, so exactly one of the
  racing closers and releasers calls ``os.close``.

``detach()`` hands the number out, so it must be sure no operation uses it: it marks
the object *detaching* (``_fd`` = -2: new holds back off as from a closed object)
under a hold of its own, and then either no other hold is outstanding (the number is
handed out) or one is (the mark is undone and detach refuses with EBUSY). Its own
hold keeps a racing release or close() from closing the number meanwhile; a close()
that finds the object detaching waits for the decision.

Long waits that are not threads (an asyncio waiter) hold nothing while they sleep:
they keep a close hook that is *busy* (``busy = True``). close() runs it before it
decides, so the hook can take a hold (``hold_append``) for the waiter and give it
back once the loop has stopped watching the number; detach() refuses while one is there.
"""

from __future__ import annotations

import contextlib
import errno as E
import os
import sys
import threading
from collections.abc import Callable
from types import TracebackType

from .errors import closed, error, invalid
from .uapi import fast as _fast
from .uapi.ops import dup_cloexec

# typing (with re) is ~5 ms of import that annotations alone don't need: the names it
# gives are defined for mypy only (it reads this name as typing.TYPE_CHECKING), with
# placeholders at run time where other modules import them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol, TypeVar

    _Self = TypeVar("_Self", bound="FdHolder")

# Objects with an operation in flight, once per hold. Usually empty; a hold is a list
# append and remove, which the GIL (or the list's own lock) makes atomic.
_held: list[FdHolder] = []
hold_append = _held.append
hold_remove = _held.remove

# Hooks that close() runs before closing, for the (rare) objects an asyncio waiter is
# watching or a backend keeps state for. Kept outside the objects so creation costs
# nothing and close() pays one global truth test while there are none. Keyed by id(),
# not the object, so a hook never keeps its object alive: the finalizer runs them too.
_close_hooks: dict[int, list[Callable[[], None]]] = {}

DETACHING = -2  # _fd while detach() decides (see the module docstring)
# Serialises detach() with itself and with a close() that meets a detaching object.
_detach_lock = threading.Lock()


def hold(holder: FdHolder) -> int:
    """Start an operation on ``holder``: its fd, which stays open until ``release``;
    ClosedError if it is closed. Other modules' objects use these functions (the fd
    and the cell are this module's business)."""
    hold_append(holder)
    fd = holder._fd
    if fd < 0:
        release(holder)
        raise closed(holder._kind)
    return fd


def release(holder: FdHolder) -> None:
    """End an operation that ``hold`` started; the last one out of a closed object
    closes its number."""
    hold_remove(holder)
    if holder._fd < 0:
        finish(holder)


def finish(holder: FdHolder) -> None:
    """Close a closed holder's number unless an operation still holds it (then the
    last release does); for callers that inline ``release`` as ``hold_remove``."""
    if holder in _held:
        return
    try:
        fd = holder._cell.pop()
    except IndexError:
        return  # someone else closed the number (or it was detached)
    os.close(fd)


# The compiled path's base type (csrc/fdcore.c) does close(), fileno(), closed and the
# finalizer in C, by this module's protocol and on its state (setup() below); the pure
# versions here are the reference, and run where it was not built.
if TYPE_CHECKING:
    _Base = object
else:
    _Base = object if _fast.FdBase is None else _fast.FdBase


class FdHolder(_Base):
    # The C base has the fd, the cell and weak references as its own fields.
    __slots__ = ("_fd", "_cell", "__weakref__") if _fast.FdBase is None else ()
    _fd: int
    _cell: list[int]
    _kind = "fd"

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._cell = [fd]

    def fileno(self) -> int:
        """The fd number (for poll/select/asyncio); raises if closed. The number is
        only valid while this object is open: don't use it across a close()."""
        fd = self._fd
        if fd < 0:
            raise closed(self._kind)
        return fd

    @property
    def closed(self) -> bool:
        """True once ``close()`` or ``detach()`` has run (never raises)."""
        return self._fd < 0

    # --- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        """Close the fd; calling it again does nothing. If another thread is inside an
        operation on this object, the number is released when that operation ends."""
        if self._fd >= 0:
            self._fd = -1
            if _close_hooks:
                _run_close_hooks(self)
            if _held and self in _held:
                return  # the last release finishes
            try:  # _finish, inlined: close() is on every object's path
                fd = self._cell.pop()
            except IndexError:
                return
            os.close(fd)
        elif self._fd == DETACHING:  # detach() in another thread decides: then close
            with _detach_lock:
                pass
            self.close()

    def detach(self) -> int:
        """Give up ownership: return the fd and leave this object closed.

        Refused with :class:`~pydmabuf.errors.BusyError` (EBUSY), while an
        operation in another thread is inside this object (a ``cpu_access`` bracket,
        a ``wait``) or a coroutine awaits it: the caller would get a number that the
        operation still uses, and whatever the caller does with it (close it, send it)
        would pull the file from under the operation. The object then stays open and
        usable; detach again once the operation is done. (``close()`` needs no such
        rule: it leaves the number to the last operation out.) An operation that
        starts in another thread while detach decides fails with ClosedError."""
        with _detach_lock:
            # A hold of our own: a close() meanwhile leaves the number to our release.
            fd = hold(self)
            try:
                if self._fd < 0:
                    raise closed(self._kind)
                self._fd = DETACHING  # from here on, no operation can start
                if _held.count(self) > 1 or (_close_hooks and _awaited(self)):
                    if self._fd == DETACHING:  # not closed meanwhile: it stays open
                        self._fd = fd
                    raise error(E.EBUSY, f"detach() of a {self._kind}",
                                "another thread is inside an operation on it, or a coroutine "
                                "awaits it; detach once that is done")
                if self._fd != DETACHING:  # a close() came first: it keeps the number
                    raise closed(self._kind)
                self._fd = -1
                if _close_hooks:  # the file lives on elsewhere: nothing to tear down, and an
                    _close_hooks.pop(id(self), None)  # entry must not outlive its id
                try:
                    return self._cell.pop()
                except IndexError:
                    raise closed(self._kind) from None
            finally:
                release(self)  # closes the number only if a close() came and it is still here

    def __enter__(self: _Self) -> _Self:
        self.fileno()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # No hold can be outstanding: _held would keep the object alive. Every object
        # runs this when it goes, closed or not, so the closed case comes first and
        # cheap (a slot read, not getattr).
        try:
            cell = self._cell
        except AttributeError:  # __init__ never ran
            return
        if not cell:
            if _close_hooks:
                _close_hooks.pop(id(self), None)
            return
        self._fd = -1
        try:
            if _close_hooks:  # e.g. a backend's state for this buffer (no waiter: we're dead)
                _run_close_hooks(self)
            os.close(cell.pop())
        except Exception:
            pass


def _close_detaching(holder: FdHolder) -> None:
    """close() of an object that detach() in another thread is deciding on: wait for the
    decision, then close (the C base's close() calls this, as the pure one does inline)."""
    with _detach_lock:
        pass
    holder.close()


if _fast.FdBase is not None:
    for _name in ("close", "fileno", "closed", "__del__"):  # the C base's own run
        delattr(FdHolder, _name)
    del _name


def add_close_hook(holder: FdHolder, hook: Callable[[], None]) -> None:
    """Run ``hook`` when ``holder`` is closed or finalized (before its fd is closed);
    a hook equal to one already there is not added twice. Hooks must not raise."""
    hooks = _close_hooks.setdefault(id(holder), [])
    if hook not in hooks:
        hooks.append(hook)


def remove_close_hook(holder: FdHolder, hook: Callable[[], None]) -> None:
    hooks = _close_hooks.get(id(holder))
    if hooks is not None:
        with contextlib.suppress(ValueError):
            hooks.remove(hook)
        if not hooks:
            _close_hooks.pop(id(holder), None)


def _run_close_hooks(holder: FdHolder) -> None:
    for hook in _close_hooks.pop(id(holder), ()):
        hook()


def _awaited(holder: FdHolder) -> bool:
    """Whether a busy close hook (an asyncio waiter) watches ``holder``'s number."""
    return any(getattr(hook, "busy", False) for hook in _close_hooks.get(id(holder), ()))


__all__ = [
    "FdHolder",
    "FdLike",
    "HasFileno",
    "add_close_hook",
    "as_fd",
    "dup_cloexec",
    "finish",
    "for_multiprocessing",
    "hold",
    "hold_append",
    "hold_remove",
    "not_picklable",
    "pickled_fd",
    "reduce_or_refuse",
    "release",
    "remove_close_hook",
    "unpickled_fd",
]


FD_MAX = 2**31 - 1


if TYPE_CHECKING:
    class HasFileno(Protocol):
        def fileno(self) -> int: ...

    FdLike = int | HasFileno  # what from_fd and friends accept: an fd or anything with fileno()
else:
    HasFileno = FdLike = object  # for annotations only (see TYPE_CHECKING above)


def as_fd(obj: object) -> int:
    """Accept an int fd or anything with ``fileno()`` (the linuxpy convention)."""
    if isinstance(obj, int) and not isinstance(obj, bool):
        fd = obj
    else:
        fileno = getattr(obj, "fileno", None)
        if fileno is None:
            raise invalid(f"expected an fd or an object with fileno(), got {type(obj).__name__}")
        fd = fileno()
        if not isinstance(fd, int) or isinstance(fd, bool):
            raise invalid(f"fileno() returned {type(fd).__name__}, not an int")
    if not 0 <= fd <= FD_MAX:
        raise invalid(f"invalid fd {fd}")
    return fd


# --- pickling for multiprocessing -----------------------------------------------------
# Only multiprocessing may pickle an fd-owning object: its pickler, ``ForkingPickler``,
# is what Process arguments (spawn, forkserver), Queue, SimpleQueue, Pipe/Connection,
# Pool, managers and concurrent.futures.ProcessPoolExecutor all use, and it sends the
# fd through ``multiprocessing.reduction.DupFd``: while a child is being started it
# rides along with the process; otherwise the sending process's resource sharer (one
# thread, started once) hands a duplicate to the first process that unpickles it. So
# such a pickle is meant to be loaded once, by another process, while the sender lives,
# as with sockets in multiprocessing.
#
# How only ForkingPickler gets there: the classes register their reducer with
# ``ForkingPickler.register`` (its own dispatch table, which the pickler consults before
# ``__reduce_ex__``), and their ``__reduce__`` refuses. Any other pickler (``pickle``,
# ``copy``, cloudpickle) reaches ``__reduce__`` and gets the TypeError, before any fd
# is duplicated: a plain ``pickle.dumps`` used to pin a duplicate in the resource
# sharer for the life of the process, one per call. (Checking the caller's stack, or
# ``get_spawning_popen()``, would miss Queue and Pool, which pickle outside any spawn.)
# The dispatch table is keyed by exact type: a subclass registers itself the same way.
#
# Registering needs multiprocessing.reduction, ~3 ms of import that most programs
# never use. So it happens at once only where that module is already loaded; else the
# first ForkingPickler that meets one of our objects has no entry for it and reaches
# ``__reduce__``, which recognises it (its Python caller, the frame that called the C
# pickler, is multiprocessing.reduction's ``dumps`` or ``dump``: every multiprocessing
# path pickles through those two), registers every class, and reduces this object.

_MP_REDUCTION = "multiprocessing.reduction"
_mp_reducers: dict[type, Callable[..., tuple[object, ...]]] = {}


if TYPE_CHECKING:
    class DupFdLike(Protocol):
        def detach(self) -> int: ...
else:
    DupFdLike = object  # for annotations only


def for_multiprocessing(cls: type, reduce: Callable[..., tuple[object, ...]]) -> None:
    """Let multiprocessing's pickler, and only it, pickle ``cls`` with ``reduce``
    (give ``cls`` a ``__reduce__`` that returns :func:`reduce_or_refuse`)."""
    _mp_reducers[cls] = reduce
    if _MP_REDUCTION in sys.modules:
        _register_reducers()


def _register_reducers() -> None:
    from multiprocessing.reduction import ForkingPickler

    for cls, reduce in _mp_reducers.items():
        ForkingPickler.register(cls, reduce)  # type: ignore[arg-type]  # typeshed: a union of reduce tuples


def reduce_or_refuse(obj: object) -> tuple[object, ...]:
    """What ``__reduce__`` of a class registered with :func:`for_multiprocessing`
    returns: its reduction for multiprocessing's pickler met before registration (see
    above), else the TypeError of :func:`not_picklable`."""
    reduce = _mp_reducers.get(type(obj))
    if reduce is not None:
        try:  # 0: here, 1: __reduce__, 2: whoever called the (C) pickler
            caller = sys._getframe(2).f_globals.get("__name__")
        except ValueError:
            caller = None
        if caller == _MP_REDUCTION:
            _register_reducers()  # from now on the dispatch table has them
            return reduce(obj)
    raise not_picklable(obj)


def not_picklable(obj: object) -> TypeError:
    """The error for pickling ``obj`` outside multiprocessing (raise it)."""
    kind = type(obj).__name__
    dup = " (dup() gives a second one in this process)" if isinstance(obj, FdHolder) else ""
    return TypeError(
        f"cannot pickle {kind!r} object outside multiprocessing: a {kind} holds fds, which only "
        "multiprocessing's pickler (Process arguments, Queue, Pipe, Pool) duplicates into the "
        "process that loads it; to hand one to another process otherwise, use pydmabuf.send() "
        f"on a Unix socket{dup}")


def pickled_fd(holder: FdHolder) -> DupFdLike:
    """A ``DupFd`` for ``holder``'s file, taken under a hold (a close() in another
    thread can't swap the file under the dup). For the reducers registered with
    :func:`for_multiprocessing` only."""
    from multiprocessing import reduction

    fd = hold(holder)
    try:
        return reduction.DupFd(fd)
    finally:
        release(holder)


def unpickled_fd(dupfd: DupFdLike) -> int:
    """The fd a ``DupFd`` brings, made close-on-exec like every fd we own."""
    fd = dupfd.detach()
    os.set_inheritable(fd, False)
    return fd



if _fast.FdBase is not None:  # the C base works on this module's state
    _fast.fdcore_setup(_held, _close_hooks, _run_close_hooks, _close_detaching, closed)
