"""DLPack export of a Mapping: numpy shares its memory, read-only mappings give
read-only arrays, the consumer keeps the mapping alive, the deleter releases it
exactly once, and nothing leaks (fds, exports, references), on the active backend."""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

import pydmabuf
from pydmabuf import dlpack
from pydmabuf.buffer import Mapping

np = pytest.importorskip("numpy", minversion="2.1", reason="numpy >= 2.1 speaks DLPack 1.x (max_version)")
PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(autouse=True)
def no_export_outlives_its_test() -> Iterator[None]:
    yield
    gc.collect()
    dlpack.collect()
    assert dlpack.pending() == 0, "an export outlived its test"


@pytest.fixture
def buf(heap: pydmabuf.Heap) -> Iterator[pydmabuf.Buffer]:
    with heap.allocate(2 * PAGE, name="dlpack") as b:
        yield b


# --- sharing -------------------------------------------------------------------------

def test_numpy_shares_the_mapping(buf: pydmabuf.Buffer) -> None:
    with buf.map() as m:
        arr = np.from_dlpack(m)
        assert arr.shape == (2 * PAGE,) and arr.dtype == np.uint8
        assert arr.flags.writeable and arr.flags.c_contiguous
        with buf.cpu_access():
            arr[:5] = np.frombuffer(b"numpy", np.uint8)
            assert m[:5] == b"numpy"  # no copy: one memory
            m[PAGE:PAGE + 3] = b"map"
            assert bytes(arr[PAGE:PAGE + 3]) == b"map"
        del arr


def test_device_is_cpu(buf: pydmabuf.Buffer) -> None:
    with buf.map() as m:
        assert m.__dlpack_device__() == (1, 0)  # kDLCPU
        assert np.from_dlpack(m, device="cpu").size == 2 * PAGE


def test_read_only_mapping_gives_a_read_only_array(buf: pydmabuf.Buffer) -> None:
    with buf.map() as w, buf.cpu_access():
        w[:3] = b"abc"
    with buf.map(write=False) as m:
        arr = np.from_dlpack(m)
        assert not arr.flags.writeable
        assert bytes(arr[:3]) == b"abc"
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1
        del arr


def _managed(capsule: object, name: bytes) -> Any:
    from pydmabuf.uapi import dlpack_abi as abi

    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.argtypes, get.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_void_p
    kind = abi.DLManagedTensorVersioned if name == abi.VERSIONED_NAME else abi.DLManagedTensor
    return kind.from_address(get(capsule, name))


def test_versioned_capsule_fields(buf: pydmabuf.Buffer) -> None:
    with buf.map(write=False) as m:
        capsule = m.__dlpack__(max_version=(1, 2), dl_device=None, copy=None)  # as numpy calls
        assert "dltensor_versioned" in repr(capsule)
        managed = _managed(capsule, b"dltensor_versioned")
        assert (managed.version.major, managed.version.minor) == (1, 1)
        assert managed.flags == 1  # DLPACK_FLAG_BITMASK_READ_ONLY
        tensor = managed.dl_tensor
        assert (tensor.device.device_type, tensor.device.device_id) == (1, 0)
        assert (tensor.ndim, tensor.shape[0], tensor.byte_offset) == (1, 2 * PAGE, 0)
        assert (tensor.dtype.code, tensor.dtype.bits, tensor.dtype.lanes) == (1, 8, 1)
        assert not tensor.strides  # NULL: compact
        del capsule, managed, tensor


def test_legacy_capsule_when_no_max_version(buf: pydmabuf.Buffer) -> None:
    with buf.map() as m:
        capsule = m.__dlpack__()
        assert "dltensor" in repr(capsule) and "versioned" not in repr(capsule)
        assert _managed(capsule, b"dltensor").dl_tensor.shape[0] == 2 * PAGE
        del capsule
        assert m.__dlpack__(max_version=(0, 8)) is not None  # a pre-1.0 consumer: legacy too


def test_legacy_consumer_cannot_get_a_read_only_mapping(buf: pydmabuf.Buffer) -> None:
    with buf.map(write=False) as m:
        rc = sys.getrefcount(m)
        with pytest.raises(BufferError, match="read-only"):
            m.__dlpack__()
        assert sys.getrefcount(m) == rc  # nothing held


class LegacyConsumerView:
    """What an old producer looks like to numpy: __dlpack__ without max_version."""

    def __init__(self, mapping: Mapping) -> None:
        self.mapping = mapping

    def __dlpack__(self, stream: object = None) -> object:
        return dlpack.dlpack(self.mapping, stream=stream)

    def __dlpack_device__(self) -> tuple[int, int]:
        return dlpack.dlpack_device(self.mapping)


def test_numpy_through_the_legacy_capsule(buf: pydmabuf.Buffer) -> None:
    with buf.map() as m:
        arr = np.from_dlpack(LegacyConsumerView(m))
        with buf.cpu_access():
            m[:2] = b"ok"
            assert bytes(arr[:2]) == b"ok"
        del arr


def test_copy_true_is_a_private_writable_copy(buf: pydmabuf.Buffer) -> None:
    with buf.map(write=False) as m:
        arr = np.from_dlpack(m, copy=True)
        assert arr.flags.writeable
        arr[:4] = 9
        assert m[:4] == bytes(4)
        capsule = m.__dlpack__(max_version=(1, 0), copy=True)
        assert _managed(capsule, b"dltensor_versioned").flags == 2  # IS_COPIED, not read-only
        del arr, capsule


# --- lifetime ------------------------------------------------------------------------

def test_consumer_keeps_the_mapping_alive(buf: pydmabuf.Buffer) -> None:
    m = buf.map()
    arr = np.from_dlpack(m)
    with pytest.raises(BufferError):
        m.close()  # the export holds the mapping
    buf.close()  # the buffer's fd may go: the mapping has its own
    arr[:2] = 7
    assert bytes(arr[:2]) == b"\x07\x07"
    del arr
    m.close()  # the consumer is done: close works
    assert m.closed


def test_mapping_dropped_while_the_array_lives(buf: pydmabuf.Buffer) -> None:
    m = buf.map()
    arr = np.from_dlpack(m)
    del m  # the export keeps the mapping (and its fd) until the array goes
    gc.collect()
    arr[-1] = 5
    assert arr[-1] == 5
    del arr
    gc.collect()  # the export is collected after a collection: the mapping and its fd go


def test_with_block_exit_after_the_array_goes(buf: pydmabuf.Buffer) -> None:
    with buf.map() as m:
        arr = np.from_dlpack(m)
        total = int(arr.sum())
        del arr
    assert m.closed and total == 0


def test_deleter_runs_once_even_if_called_twice(buf: pydmabuf.Buffer) -> None:
    for versioned in (True, False):
        with buf.map() as m:
            rc = sys.getrefcount(m)
            capsule = dlpack.dlpack(m, max_version=(1, 0) if versioned else None)
            name = b"dltensor_versioned" if versioned else b"dltensor"
            managed = _managed(capsule, name)
            deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(managed.deleter)
            ctypes.pythonapi.PyCapsule_SetName(ctypes.py_object(capsule), b"used_" + name)  # consumed
            address = ctypes.addressof(managed)
            deleter(address)
            deleter(address)  # a buggy consumer: still released once
            del capsule, managed
            dlpack.collect()
            assert dlpack.pending() == 0
            assert sys.getrefcount(m) == rc  # exactly one reference was taken and dropped


def test_unconsumed_capsule_is_released(buf: pydmabuf.Buffer) -> None:
    with buf.map() as m:
        rc = sys.getrefcount(m)
        capsules = [m.__dlpack__(max_version=(1, 0)), m.__dlpack__()]
        assert dlpack.pending() == 2
        with pytest.raises(BufferError):
            m.close()
        del capsules
        assert dlpack.collect() == 2
        assert sys.getrefcount(m) == rc


def test_many_arrays_leak_nothing(buf: pydmabuf.Buffer) -> None:
    with buf.map() as m:
        rc = sys.getrefcount(m)
        for i in range(200):
            arr = np.from_dlpack(m)
            arr[i % arr.size] = 1
            view = arr[::2]  # views share the base: the export lives while any does
            del arr
            assert view.size == PAGE
            del view
        gc.collect()
        assert dlpack.pending() == 0
        assert sys.getrefcount(m) == rc


def test_an_exception_through_the_deleter_survives(buf: pydmabuf.Buffer) -> None:
    # numpy frees the temporary array while the IndexError propagates: the deleter
    # (plain C for DLPack >= 1.0 consumers) must leave the exception alone.
    with buf.map() as m:
        for _ in range(3):
            with pytest.raises(IndexError):
                np.from_dlpack(m)[10**9]
        dlpack.collect()
        assert dlpack.pending() == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_legacy_deleter_with_an_exception_in_flight_still_releases(buf: pydmabuf.Buffer) -> None:
    # A Python (ctypes) deleter cannot keep an in-flight exception: CPython reports it
    # as unraisable and the consumer's caller gets SystemError. It must not leak.
    with buf.map() as m:
        rc = sys.getrefcount(m)
        with pytest.raises((IndexError, SystemError)):
            np.from_dlpack(LegacyConsumerView(m))[10**9]
        dlpack.collect()
        assert dlpack.pending() == 0
        assert sys.getrefcount(m) == rc


# --- arguments -------------------------------------------------------------------------

def test_arguments(buf: pydmabuf.Buffer) -> None:
    with buf.map() as m:
        with pytest.raises(pydmabuf.InvalidArgumentError, match="stream"):
            m.__dlpack__(stream=1)
        with pytest.raises(BufferError, match="kDLCPU"):
            m.__dlpack__(max_version=(1, 0), dl_device=(2, 0))
        capsule = m.__dlpack__(max_version=(1, 0), dl_device=(1, 0), copy=False)
        for bad in ({"max_version": 1}, {"max_version": (1,)}, {"max_version": (1.0, 0)},
                    {"dl_device": 1}, {"dl_device": (1, 0, 0)}, {"copy": "yes"}):
            with pytest.raises(TypeError):
                m.__dlpack__(**bad)
        del capsule
    with pytest.raises(pydmabuf.ClosedError):
        m.__dlpack__()
    with pytest.raises(pydmabuf.ClosedError):
        m.__dlpack_device__()


def test_numpy_copy_false_never_copies(buf: pydmabuf.Buffer) -> None:
    with buf.map() as m:
        arr = np.from_dlpack(m, copy=False)
        arr[0] = 42
        assert m[0] == 42
        del arr


def test_torch_shares_the_mapping(buf: pydmabuf.Buffer) -> None:
    torch = pytest.importorskip("torch", reason="torch is optional and not installed here")
    with buf.map() as m:
        t = torch.from_dlpack(m)
        assert t.shape == (2 * PAGE,) and t.dtype == torch.uint8
        t[:3] = 1
        assert m[:3] == b"\x01\x01\x01"
        del t


# --- read-only mappings and consumers that ignore DLPack's read-only flag ---------------

def test_read_only_refused_to_a_consumer_that_calls_as_torch_does(buf: pydmabuf.Buffer) -> None:
    # torch.from_dlpack, torch.asarray and torch.tensor pass max_version alone (and
    # dl_device= or copy= only when their caller gave device= or copy=): a versioned
    # capsule, whose READ_ONLY flag torch ignores. Without torch, call as it does.
    with buf.map(write=False) as m:
        rc = sys.getrefcount(m)
        for kwargs in ({"max_version": (1, 0)}, {"max_version": (1, 0), "dl_device": (1, 0)},
                       {"max_version": (1, 0), "copy": False}, {"max_version": (1, 0), "copy": None}):
            with pytest.raises(BufferError, match=r"read-only.*write=True.*copy=True"):
                m.__dlpack__(**kwargs)
            assert sys.getrefcount(m) == rc and dlpack.pending() == 0  # nothing held
        with pytest.raises(BufferError, match="max_version"):
            m.__dlpack__()  # legacy: cannot carry the flag at all
    with buf.map() as w:  # a writable mapping goes to anyone
        del_capsule = w.__dlpack__(max_version=(1, 0))
        del del_capsule


def _from_torch_code(code: str, **names: object) -> Any:
    """Run ``code`` as if it were torch's own (its module name is torch.utils.dlpack)."""
    scope: dict[str, Any] = {"__name__": "torch.utils.dlpack", **names}
    exec(compile(textwrap.dedent(code), "<torch/utils/dlpack.py>", "exec"), scope)
    return scope.get("result")


class ForwardingView:
    """A wrapper whose __dlpack__ fills in every keyword before forwarding."""

    def __init__(self, mapping: Mapping) -> None:
        self.mapping = mapping

    def __dlpack__(self, stream: object = None, max_version: tuple[int, int] | None = None,
                   dl_device: tuple[int, int] | None = None, copy: bool | None = None) -> object:
        return self.mapping.__dlpack__(stream=stream, max_version=max_version, dl_device=dl_device, copy=copy)


def test_read_only_refused_to_torch_code_even_in_the_full_form(buf: pydmabuf.Buffer) -> None:
    # torch.from_dlpack(m, device="cpu", copy=False) passes all three keywords; its
    # module gives it away, also through a wrapper that forwards every keyword.
    with buf.map(write=False) as m:
        for target in (m, ForwardingView(m)):
            with pytest.raises(BufferError, match="torch ignores DLPack's read-only flag"):
                _from_torch_code("result = target.__dlpack__(max_version=(1, 0), dl_device=(1, 0), copy=False)",
                                 target=target)
        # The same call from anywhere else is numpy's form: read-only goes out, flagged.
        capsule = ForwardingView(m).__dlpack__(max_version=(1, 0))
        assert _managed(capsule, b"dltensor_versioned").flags == 1  # READ_ONLY
        del capsule


def test_read_only_copy_true_goes_to_any_consumer(buf: pydmabuf.Buffer) -> None:
    with buf.map(write=False) as m:
        for kwargs in ({"max_version": (1, 0), "copy": True}, {"copy": True}):
            capsule = _from_torch_code("result = m.__dlpack__(**kwargs)", m=m, kwargs=kwargs)
            if "max_version" in kwargs:
                assert _managed(capsule, b"dltensor_versioned").flags == 2  # IS_COPIED, writable
            del capsule
        dlpack.collect()
        assert dlpack.pending() == 0


def test_numpy_still_gets_a_read_only_array_through_a_wrapper(buf: pydmabuf.Buffer) -> None:
    with buf.map(write=False) as m:
        arr = np.from_dlpack(ForwardingView(m))
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr.flags.writeable = True  # numpy keeps it read-only
        del arr


TORCH_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash here leaves no core file
import torch, pydmabuf

with pydmabuf.Heap("system") as heap, heap.allocate(4096) as buf:
    with buf.map() as w:
        w[:2] = b"ab"
    with buf.map(write=False) as m:
        for name, call in [("from_dlpack", lambda: torch.from_dlpack(m)),
                           ("from_dlpack(device=cpu, copy=False)",
                            lambda: torch.from_dlpack(m, device="cpu", copy=False)),
                           ("from_dlpack(copy=False)", lambda: torch.from_dlpack(m, copy=False))]:
            try:
                t = call()
            except BufferError as exc:
                print("refused", name, "write=True" in str(exc), flush=True)
                continue
            print("GOT A TENSOR", name, flush=True)
            t[0] = 1  # SIGSEGV if torch made it writable over PROT_READ memory
            del t
        t = torch.from_dlpack(m, copy=True)
        t[0] = 9  # a private copy
        print("copy", bytes(m[:2]) == b"ab" and int(t[0]) == 9 and int(t[1]) == ord("b"), flush=True)
        del t
"""


def _run_child(code: str) -> subprocess.CompletedProcess[str]:
    if os.environ.get("PYDMABUF_IN_VM"):
        pytest.skip("importing torch under the VM's emulation takes minutes; the native run checks torch")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_torch_never_gets_a_read_only_mapping() -> None:
    pytest.importorskip("torch", reason="torch is optional and not installed here")
    done = _run_child(TORCH_CHILD)  # a child: a wrong answer here is a SIGSEGV
    assert done.returncode == 0, f"child exit {done.returncode}:\n{done.stdout}{done.stderr}"
    lines = done.stdout.splitlines()
    assert lines == ["refused from_dlpack True", "refused from_dlpack(device=cpu, copy=False) True",
                     "refused from_dlpack(copy=False) True", "copy True"], done.stdout + done.stderr


TORCH_IGNORES_THE_FLAG = """
import resource
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
import torch, pydmabuf

with pydmabuf.Heap("system") as heap, heap.allocate(4096) as buf, buf.map(write=False) as m:
    capsule = m.__dlpack__(max_version=(1, 0), dl_device=None, copy=None)  # READ_ONLY set
    t = torch.from_dlpack(capsule)
    print("tensor", flush=True)
    t[0] = 1
    print("wrote", flush=True)
"""


def test_torch_is_known_to_ignore_the_read_only_flag() -> None:
    # Why torch is in IGNORES_READ_ONLY: handed a versioned READ_ONLY capsule, it makes a
    # writable tensor, and the write kills the process. If this starts failing, the
    # installed torch honours the flag: the list may then name the versions that don't.
    torch = pytest.importorskip("torch", reason="torch is optional and not installed here")
    done = _run_child(TORCH_IGNORES_THE_FLAG)
    assert "torch" in dlpack.IGNORES_READ_ONLY
    assert done.stdout.startswith("tensor") and done.returncode == -11, (
        f"torch {torch.__version__} (exit {done.returncode}): {done.stdout}{done.stderr}")
