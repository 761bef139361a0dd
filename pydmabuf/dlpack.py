"""DLPack export of CPU mappings: ``numpy.from_dlpack(mapping)`` and
``torch.from_dlpack(mapping)`` share a Mapping's memory without copying.

The tensor is one-dimensional uint8 on ``kDLCPU`` (DLPack has no dma-buf device: a
mapping *is* CPU memory), ``len(mapping)`` bytes. A consumer that passes
``max_version`` (DLPack >= 1.0: numpy >= 2.1, torch >= 2.4) gets a
``DLManagedTensorVersioned``; one that passes none gets the legacy ``DLManagedTensor``.

A read-only mapping (``buf.map(write=False)``) is mapped PROT_READ: a consumer that
writes to it kills the process with SIGSEGV. So it goes out only to a consumer known
to honour DLPack's read-only flag, in a versioned capsule with
DLPACK_FLAG_BITMASK_READ_ONLY set; any other gets BufferError (map the buffer with
``write=True``, or ask for a copy). How the consumer is known, since ``__dlpack__``
is not told who calls it:

- it asks for DLPack >= 1.0 (the legacy capsule has no flags at all), and
- it calls in the array API's full form, ``dl_device`` and ``copy`` given as well as
  ``max_version``, as numpy >= 2.1 does on every ``from_dlpack`` (and numpy makes the
  array read-only, and refuses to make it writeable again). torch passes
  ``max_version`` alone unless its caller gave ``device=`` and ``copy=``
  (``torch.from_dlpack``, and ``torch.asarray``/``torch.tensor`` of DLPack-only
  objects), and
- the code that called, past any ``__dlpack__`` methods that forward to the mapping,
  is not in a package known to ignore the flag (``IGNORES_READ_ONLY``: torch, which
  up to 2.13 at least makes a writable tensor of a read-only capsule; that catches
  ``torch.from_dlpack(m, device="cpu", copy=False)``).

That is a fingerprint, not a proof: a consumer written in C that calls in the full
form and ignores the flag would pass (none is known); a wrapper that calls
``__dlpack__`` by hand must give all three keywords. ``copy=True`` always works: it
exports a private writable copy (flagged IS_COPIED), the same for every consumer.
(``torch.asarray(mapping)`` and ``torch.frombuffer(mapping)`` take the buffer
protocol instead, whose read-only flag torch also ignores, with a warning: nothing
here can stop that.)

The consumer keeps the mapping alive: the export holds the mapping's buffer (its
``close()`` raises BufferError) until the consumer's deleter has run and the export
is collected -- by the next export, the next garbage collection, ``collect()``, or
``Mapping.close``. numpy and torch are optional: nothing here imports them, and
ctypes is imported on the first export only.
"""

from __future__ import annotations

import mmap
from types import FrameType

from .errors import closed, invalid

# typing (with re) is ~5 ms of import that annotations alone don't need: mypy reads
# this name as typing.TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KDLCPU = 1  # DLDeviceType.kDLCPU
_CPU = (KDLCPU, 0)

#: Top-level packages whose DLPack import ignores DLPACK_FLAG_BITMASK_READ_ONLY: a
#: read-only capsule becomes a writable tensor, and a write to it is SIGSEGV.
#: torch: 2.4 (its first DLPack 1.x) to 2.13.0 at least (tests/test_dlpack.py checks
#: the installed one in a child process).
IGNORES_READ_ONLY = frozenset({"torch"})

COPY_HINT = ("map the buffer with write=True, or take a copy: from_dlpack(mapping, copy=True) "
             "(numpy, torch), numpy.array(mapping), bytes(mapping)")


class _NotGiven:
    """The default of a keyword the consumer did not pass (numpy passes them all)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<not given>"


NOT_GIVEN: Any = _NotGiven()
_OURS = frozenset({__name__, f"{__package__}.uapi.dlpack_abi"})


def dlpack_device(mapping: mmap.mmap) -> tuple[int, int]:
    """``__dlpack_device__``: (kDLCPU, 0)."""
    if mapping.closed:
        raise closed("Mapping")
    return _CPU


def dlpack(mapping: mmap.mmap, *, stream: object = None, max_version: tuple[int, int] | None = None,
           dl_device: tuple[int, int] | None = NOT_GIVEN, copy: bool | None = NOT_GIVEN) -> Any:
    """``__dlpack__``: a capsule with a 1-D uint8 tensor over ``mapping``.

    ``stream`` must be None (CPU memory has no streams). ``max_version``: the
    consumer's highest DLPack version; None gets the legacy capsule. ``dl_device``:
    None or (kDLCPU, 0), else BufferError. ``copy=True`` exports a private copy
    (flagged IS_COPIED, writable); None and False share the mapping's memory. A
    read-only mapping goes only to a consumer known to honour read-only (see the
    module's notes), else BufferError.
    """
    full_form = dl_device is not NOT_GIVEN and copy is not NOT_GIVEN
    if dl_device is NOT_GIVEN:
        dl_device = None
    if copy is NOT_GIVEN:
        copy = None
    if stream is not None:
        raise invalid(f"stream must be None for CPU memory (kDLCPU), got {stream!r}")
    versioned = _versioned(max_version)
    if dl_device is not None and _device(dl_device) != _CPU:
        raise BufferError(f"a Mapping is CPU memory: it can only be exported to kDLCPU {_CPU}, "
                          f"not {tuple(dl_device)}")
    if copy is not None and not isinstance(copy, bool):
        raise TypeError(f"copy must be True, False or None, got {type(copy).__name__}")
    if mapping.closed:
        raise closed("Mapping")
    from .uapi import dlpack_abi as _dlpack_abi

    if copy:
        return _dlpack_abi.export(bytearray(mapping), versioned, True, None)
    return _dlpack_abi.export(mapping, versioned, False, lambda: _read_only_refusal(versioned, full_form))


def _read_only_refusal(versioned: bool, full_form: bool) -> str | None:
    """Why a read-only mapping may not go to this consumer, or None if it may."""
    if not versioned:
        return ("this mapping is read-only, and a DLPack consumer that passes no max_version "
                f"(DLPack < 1.0) cannot be told so: {COPY_HINT}")
    import inspect  # only read-only exports look at their caller

    package = _calling_package(inspect.currentframe())
    if package in IGNORES_READ_ONLY:
        return (f"this mapping is read-only, and {package} ignores DLPack's read-only flag: its "
                f"tensor would be writable, and a write would kill the process (SIGSEGV): {COPY_HINT}")
    if not full_form:
        return ("this mapping is read-only, and this DLPack consumer is not known to honour "
                "DLPack's read-only flag (it did not call __dlpack__ with dl_device= and copy= as "
                "numpy does; torch makes a writable tensor of it, and a write kills the process "
                f"with SIGSEGV): {COPY_HINT}")
    return None


def _calling_package(frame: FrameType | None) -> str:
    """The top-level package of the code that asked for the export: the first frame
    outside this module and the export's (``Mapping.__dlpack__`` is ``dlpack`` itself),
    past any ``__dlpack__`` methods that forward to the mapping (wrapper classes)."""
    while frame is not None and frame.f_globals.get("__name__") in _OURS:
        frame = frame.f_back
    while frame is not None and frame.f_code.co_name == "__dlpack__":
        frame = frame.f_back
    if frame is None:
        return ""
    return str(frame.f_globals.get("__name__", "")).partition(".")[0]


def collect() -> int:
    """Release what consumers are done with now rather than at the next export or
    garbage collection (``Mapping.close`` does this); returns how many exports went."""
    import sys

    abi = sys.modules.get(f"{__package__}.uapi.dlpack_abi")
    return 0 if abi is None else int(abi.collect())


def pending() -> int:
    """Exports not yet released (the consumer still holds them, or they wait for
    ``collect()``)."""
    import sys

    abi = sys.modules.get(f"{__package__}.uapi.dlpack_abi")
    return 0 if abi is None else len(abi.live)


def _versioned(max_version: object) -> bool:
    if max_version is None:
        return False
    if (not isinstance(max_version, tuple) or len(max_version) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in max_version)):
        raise TypeError(f"max_version must be a (major, minor) tuple of ints, got {max_version!r}")
    return bool(max_version[0] >= 1)


def _device(dl_device: object) -> tuple[int, int]:
    if isinstance(dl_device, (tuple, list)) and len(dl_device) == 2:
        try:
            return int(dl_device[0]), int(dl_device[1])
        except (TypeError, ValueError):
            pass
    raise TypeError(f"dl_device must be a (device_type, device_id) pair, got {dl_device!r}")
