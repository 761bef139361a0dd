"""DLPack export of CPU mappings: ``numpy.from_dlpack(mapping)`` and
``torch.from_dlpack(mapping)`` share a Mapping's memory without copying.

The tensor is one-dimensional uint8 on ``kDLCPU`` (DLPack has no dma-buf device: a
mapping *is* CPU memory), ``len(mapping)`` bytes. A consumer that passes
``max_version`` (DLPack >= 1.0: numpy >= 2.1, torch >= 2.4) gets a
``DLManagedTensorVersioned`` whose READ_ONLY flag is set for a read-only mapping
(``buf.map(write=False)``), so numpy's array is not writeable. One that passes none
gets the legacy ``DLManagedTensor``, which cannot say read-only: a read-only mapping
then raises BufferError, as numpy does for its own read-only arrays.

The consumer keeps the mapping alive: the export holds the mapping's buffer (its
``close()`` raises BufferError) until the consumer's deleter has run and the export
is collected -- by the next export, the next garbage collection, ``collect()``, or
``Mapping.close``. numpy and torch are optional: nothing here imports them, and
ctypes is imported on the first export only.
"""

from __future__ import annotations

import mmap
from typing import Any

from .errors import closed, invalid

KDLCPU = 1  # DLDeviceType.kDLCPU
_CPU = (KDLCPU, 0)


def dlpack_device(mapping: mmap.mmap) -> tuple[int, int]:
    """``__dlpack_device__``: (kDLCPU, 0)."""
    if mapping.closed:
        raise closed("Mapping")
    return _CPU


def dlpack(mapping: mmap.mmap, *, stream: object = None, max_version: tuple[int, int] | None = None,
           dl_device: tuple[int, int] | None = None, copy: bool | None = None) -> Any:
    """``__dlpack__``: a capsule with a 1-D uint8 tensor over ``mapping``.

    ``stream`` must be None (CPU memory has no streams). ``max_version``: the
    consumer's highest DLPack version; None gets the legacy capsule. ``dl_device``:
    None or (kDLCPU, 0), else BufferError. ``copy=True`` exports a private copy
    (flagged IS_COPIED, writable); None and False share the mapping's memory.
    """
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

    source = bytearray(mapping) if copy else mapping
    return _dlpack_abi.export(source, versioned, bool(copy))


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
