"""The DLPack C structures and the CPython calls that export memory through them
(ctypes). Imported on the first ``__dlpack__`` call only: ctypes costs an import.

Layouts from dlpack.h (v1.x): DLManagedTensorVersioned (version, manager_ctx,
deleter, flags, dl_tensor) and the legacy DLManagedTensor (dl_tensor, manager_ctx,
deleter). Each export is one ctypes allocation (a "box") that starts with the managed
tensor, so the pointer a consumer hands to the deleter is the key of that export; the
box also holds the shape and the Py_buffer that keeps the source exported (a Mapping
then refuses ``close()``) until the export is released.

Why the deleter is not simply a Python (ctypes) callback: a consumer may call it
while a Python exception is propagating (numpy frees a temporary array inside a
failing expression, e.g. ``np.from_dlpack(m)[10**9]``), and no Python callback can
run without destroying that exception (CPython turns it into "SystemError: error
return without exception set"); a consumer may also call it from a thread without
the GIL. So the versioned deleter is plain C: CPython's ``PyBuffer_Release`` reading
the managed tensor as a Py_buffer whose ``obj`` (the same offset as ``manager_ctx``
on 64-bit builds) is ``None`` -- it clears ``manager_ctx`` and touches nothing else
(None has no buffer procs and is immortal since 3.12) -- and the real release of the
source happens in Python at the next safe point: ``collect()``, run by every export,
after every garbage collection, and by ``Mapping.close``. Legacy (unversioned)
capsules, whose first field cannot be read that way, and 32-bit builds use a ctypes
callback that releases first, so nothing leaks even when an exception is in flight
(which is then printed as unraisable and replaced by a SystemError).

Capsules get no destructor: ``live`` keeps a reference to each, and ``collect()``
releases an export whose capsule was never consumed (still under its first name) and
is referenced by nobody else.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_int32,
    c_int64,
    c_ssize_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
    py_object,
)


class DLDevice(Structure):
    _fields_ = [("device_type", c_int32), ("device_id", c_int32)]


class DLDataType(Structure):
    _fields_ = [("code", c_uint8), ("bits", c_uint8), ("lanes", c_uint16)]


class DLTensor(Structure):
    _fields_ = [
        ("data", c_void_p),
        ("device", DLDevice),
        ("ndim", c_int32),
        ("dtype", DLDataType),
        ("shape", POINTER(c_int64)),
        ("strides", POINTER(c_int64)),
        ("byte_offset", c_uint64),
    ]


class DLPackVersion(Structure):
    _fields_ = [("major", c_uint32), ("minor", c_uint32)]


class DLManagedTensorVersioned(Structure):
    _fields_ = [
        ("version", DLPackVersion),
        ("manager_ctx", c_void_p),
        ("deleter", c_void_p),  # void (*)(DLManagedTensorVersioned *)
        ("flags", c_uint64),
        ("dl_tensor", DLTensor),
    ]


class DLManagedTensor(Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", c_void_p), ("deleter", c_void_p)]


class PyBuffer(Structure):
    """CPython's Py_buffer (stable layout since 3.3)."""

    _fields_ = [
        ("buf", c_void_p),
        ("obj", c_void_p),
        ("len", c_ssize_t),
        ("itemsize", c_ssize_t),
        ("readonly", c_int),
        ("ndim", c_int),
        ("format", c_char_p),
        ("shape", c_void_p),
        ("strides", c_void_p),
        ("suboffsets", c_void_p),
        ("internal", c_void_p),
    ]


class VersionedBox(Structure):
    _fields_ = [("managed", DLManagedTensorVersioned), ("shape", c_int64), ("view", PyBuffer)]


class LegacyBox(Structure):
    _fields_ = [("managed", DLManagedTensor), ("shape", c_int64), ("view", PyBuffer)]


_api = ctypes.pythonapi  # PyDLL: the GIL stays held and a set Python error is raised

get_buffer = _api.PyObject_GetBuffer
get_buffer.argtypes = [py_object, POINTER(PyBuffer), c_int]
get_buffer.restype = c_int

release_buffer = _api.PyBuffer_Release
release_buffer.argtypes = [c_void_p]
release_buffer.restype = None

capsule_new = _api.PyCapsule_New
capsule_new.argtypes = [c_void_p, c_char_p, c_void_p]
capsule_new.restype = py_object

capsule_is_valid = _api.PyCapsule_IsValid
capsule_is_valid.argtypes = [py_object, c_char_p]
capsule_is_valid.restype = c_int

raise_in_flight = _api.PyErr_Occurred  # a no-op whose call re-raises a pending error
raise_in_flight.argtypes = []
raise_in_flight.restype = c_void_p

incref = _api.Py_IncRef
incref.argtypes = [py_object]
incref.restype = None

decref = _api.Py_DecRef
decref.argtypes = [py_object]
decref.restype = None

KDLCPU = 1
KDLUINT = 1
FLAG_READ_ONLY = 1 << 0  # DLPACK_FLAG_BITMASK_READ_ONLY
FLAG_IS_COPIED = 1 << 1  # DLPACK_FLAG_BITMASK_IS_COPIED
VERSION = (1, 1)  # the dlpack.h these layouts follow (1.1 changed no structure of 1.0)
VERSIONED_NAME = b"dltensor_versioned"
LEGACY_NAME = b"dltensor"

_VIEW = {VersionedBox: VersionedBox.view.offset, LegacyBox: LegacyBox.view.offset}
_SHAPE = {VersionedBox: VersionedBox.shape.offset, LegacyBox: LegacyBox.shape.offset}
# The plain-C deleter reads the managed tensor as a Py_buffer: only where manager_ctx
# sits where Py_buffer.obj does (64-bit builds).
_C_DELETER_OK = DLManagedTensorVersioned.manager_ctx.offset == PyBuffer.obj.offset
_RELEASE_ADDRESS: int = ctypes.cast(release_buffer, c_void_p).value or 0


class _Export:
    """One export not yet released: its box and the capsule it went out in."""

    __slots__ = ("box", "capsule", "c_deleter")

    def __init__(self, box: VersionedBox | LegacyBox, capsule: object, c_deleter: bool) -> None:
        self.box = box
        self.capsule = capsule
        self.c_deleter = c_deleter

    def deleted(self) -> bool:
        """The consumer ran the deleter (the view, or manager_ctx for the C one, is cleared)."""
        if self.c_deleter:
            return self.box.managed.manager_ctx is None
        return self.box.view.obj is None

    def references(self) -> int:
        """The capsule's reference count as seen from here (always measured this way,
        so that _ALONE, measured the same way, is the count when only we hold it)."""
        return sys.getrefcount(self.capsule)

    def abandoned(self, name: bytes) -> bool:
        """Never consumed, and nobody but us holds the capsule."""
        return bool(capsule_is_valid(self.capsule, name)) and self.references() <= _ALONE


def _alone() -> int:
    probe = _Export(VersionedBox(), object(), False)
    return probe.references()


_ALONE = _alone()  # how the interpreter counts a capsule only our _Export holds


# Every export not yet released, by the address the consumer's deleter receives.
live: dict[int, _Export] = {}
_collecting = threading.Lock()


def collect() -> int:
    """Release the source buffers of exports whose deleter ran or whose capsule was
    dropped unconsumed; returns how many. Safe to call any time, from any thread."""
    if not live or not _collecting.acquire(blocking=False):
        return 0
    released = 0
    try:
        for address, export in list(live.items()):
            name = VERSIONED_NAME if isinstance(export.box, VersionedBox) else LEGACY_NAME
            if export.deleted():
                owns_none = False
            elif export.abandoned(name):
                owns_none = export.c_deleter  # the reference the deleter would have dropped
            else:
                continue
            del live[address]
            release_buffer(address + _VIEW[type(export.box)])  # no-op if already released
            if owns_none:
                export.box.managed.manager_ctx = None
                decref(None)
            released += 1
    finally:
        _collecting.release()
    return released


def _after_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and live:
        collect()


gc.callbacks.append(_after_gc)


_Deleter = CFUNCTYPE(None, c_void_p)


def _python_deleter(view_offset: int) -> tuple[object, int]:
    """A ctypes deleter (and its address) for boxes whose view is at ``view_offset``."""

    def delete(address: int | None) -> None:
        # A consumer may call this while an exception propagates; every ctypes call
        # would re-raise it midway. Take it first (the no-op call raises it here),
        # release, then hand it back: ctypes prints it as unraisable, and the consumer
        # reports a SystemError instead -- the most a Python callback can do.
        try:
            raise_in_flight()
        except BaseException as exc:
            in_flight: BaseException | None = exc
        else:
            in_flight = None
        release_buffer((address or 0) + view_offset)
        live.pop(address or 0, None)
        if in_flight is not None:
            raise in_flight

    callback = _Deleter(delete)
    return callback, ctypes.cast(callback, c_void_p).value or 0


_PYTHON_DELETERS = {box: _python_deleter(offset) for box, offset in _VIEW.items()}


def export(source: object, versioned: bool, copied: bool,
           read_only_refusal: Callable[[], str | None] | None) -> object:
    """A capsule holding a 1-D uint8 CPU tensor over ``source``'s buffer. For a
    read-only source, ``read_only_refusal()`` says why this consumer may not have it
    (BufferError, with nothing held), or None; a legacy consumer never may (it cannot
    be told: the legacy capsule has no flags)."""
    collect()
    box: VersionedBox | LegacyBox = VersionedBox() if versioned else LegacyBox()
    address = ctypes.addressof(box)
    view_address = address + _VIEW[type(box)]
    get_buffer(source, ctypes.cast(view_address, POINTER(PyBuffer)), 0)  # PyBUF_SIMPLE
    view = box.view
    readonly = bool(view.readonly)
    if readonly:
        try:
            refusal = read_only_refusal() if read_only_refusal is not None else None
            if refusal is None and not versioned:
                refusal = "a read-only buffer cannot go out in a legacy (unversioned) DLPack capsule"
        except BaseException:
            release_buffer(view_address)
            raise
        if refusal is not None:
            release_buffer(view_address)
            raise BufferError(refusal)
    tensor = box.managed.dl_tensor
    tensor.data = view.buf
    tensor.device.device_type = KDLCPU
    tensor.device.device_id = 0
    tensor.ndim = 1
    tensor.dtype.code = KDLUINT
    tensor.dtype.bits = 8
    tensor.dtype.lanes = 1
    box.shape = view.len
    tensor.shape = ctypes.cast(address + _SHAPE[type(box)], POINTER(c_int64))
    tensor.strides = None  # compact
    tensor.byte_offset = 0
    c_deleter = versioned and _C_DELETER_OK
    if isinstance(box, VersionedBox):
        box.managed.version.major, box.managed.version.minor = VERSION
        box.managed.flags = (FLAG_READ_ONLY if readonly else 0) | (FLAG_IS_COPIED if copied else 0)
    if c_deleter:
        incref(None)  # what PyBuffer_Release will drop
        box.managed.manager_ctx = id(None)
        box.managed.deleter = _RELEASE_ADDRESS
    else:
        box.managed.manager_ctx = None
        box.managed.deleter = _PYTHON_DELETERS[type(box)][1]
    try:
        capsule = capsule_new(address, VERSIONED_NAME if versioned else LEGACY_NAME, None)
    except BaseException:
        release_buffer(view_address)
        if c_deleter:
            decref(None)
        raise
    live[address] = _Export(box, capsule, c_deleter)
    return capsule
