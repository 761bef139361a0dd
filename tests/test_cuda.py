"""pydmabuf.cuda: GPU memory exported as dma-bufs.

Everywhere: argument handling (pointers, __cuda_array_interface__, data_ptr()), the
error without a driver, that importing the module loads nothing, and the export
logic against a stand-in driver. With a CUDA driver and a GPU that can export
dma-bufs: real exports (skipped elsewhere, with the reason)."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from _procs import fork, join

import pydmabuf
from pydmabuf import cuda
from pydmabuf.uapi import cuda_driver as _cuda_driver
from pydmabuf.uapi.memfd import F_SEAL_GROW, F_SEAL_SHRINK, sealed_memfd

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB2 = 2 << 20


# --- argument handling, without a driver ------------------------------------------------

class ArrayInterface:
    def __init__(self, **interface: Any) -> None:
        self.__cuda_array_interface__ = {"version": 3, "strides": None, "data": (0x7000_0000, False),
                                         **interface}


def test_a_bare_pointer() -> None:
    assert cuda.device_pointer(0x7F00_0000_1000) == (0x7F00_0000_1000, None)
    assert cuda.device_pointer(0x7F00_0000_1000, 4096) == (0x7F00_0000_1000, 4096)


@pytest.mark.parametrize(("args", "exc"), [
    ((0,), pydmabuf.InvalidArgumentError),
    ((-1,), pydmabuf.InvalidArgumentError),
    ((2**64,), pydmabuf.InvalidArgumentError),
    ((0x1000, 0), pydmabuf.InvalidArgumentError),
    ((2**64 - 4096, 8192), pydmabuf.InvalidArgumentError),
    ((0x1000, 1.5), TypeError),
    ((True,), TypeError),
    (("0x1000",), TypeError),
    ((None,), TypeError),
    ((b"\0" * 8,), TypeError),
])
def test_bad_pointers(args: tuple[Any, ...], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        cuda.device_pointer(*args)


@pytest.mark.parametrize(("interface", "expected"), [
    ({"shape": (4, 5), "typestr": "<f4"}, (0x7000_0000, 80)),
    ({"shape": (3,), "typestr": "|u1"}, (0x7000_0000, 3)),
    ({"shape": (2, 3), "typestr": "<f8", "strides": (24, 8)}, (0x7000_0000, 48)),  # C order
    ({"shape": (2, 3), "typestr": "<f8", "strides": (8, 16)}, (0x7000_0000, 48)),  # F order
    ({"shape": (4,), "typestr": "<i4", "strides": (16,)}, (0x7000_0000, 52)),  # every 4th
    ({"shape": (4,), "typestr": "<i4", "strides": (-4,)}, (0x7000_0000 - 12, 16)),  # reversed
])
def test_cuda_array_interface(interface: dict[str, Any], expected: tuple[int, int]) -> None:
    assert cuda.device_pointer(ArrayInterface(**interface)) == expected


@pytest.mark.parametrize("interface", [
    {"shape": (0, 4), "typestr": "<f4"},  # empty
    {"shape": (4,), "typestr": "<f4", "mask": object()},
    {"shape": (4,), "typestr": "<f4", "data": (0, False)},
    {"shape": (4,), "typestr": "<f4", "data": None},
    {"shape": (4,), "typestr": "float32"},
    {"shape": (4,), "typestr": "<f4", "strides": (4, 4)},
    {"shape": [4], "typestr": "<f4"},
])
def test_bad_array_interfaces(interface: dict[str, Any]) -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError):
        cuda.device_pointer(ArrayInterface(**interface))


class TensorLike:
    """data_ptr() and either nbytes or numel()*element_size(), as PyTorch has."""

    def __init__(self, ptr: int, nbytes: int | None = None) -> None:
        self.ptr = ptr
        if nbytes is not None:
            self.nbytes = nbytes

    def data_ptr(self) -> int:
        return self.ptr

    def numel(self) -> int:
        return 10

    def element_size(self) -> int:
        return 2


class GradTensor(TensorLike):
    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")


def test_data_ptr_objects() -> None:
    assert cuda.device_pointer(TensorLike(0x9000, 64)) == (0x9000, 64)
    assert cuda.device_pointer(TensorLike(0x9000)) == (0x9000, 20)
    assert cuda.device_pointer(GradTensor(0x9000, 8)) == (0x9000, 8)  # falls back to data_ptr()
    with pytest.raises(pydmabuf.InvalidArgumentError):
        cuda.device_pointer(TensorLike(0, 64))  # an empty tensor has no memory


def test_objects_carry_their_own_size() -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError, match="bare pointer"):
        cuda.device_pointer(TensorLike(0x9000, 64), 32)


@pytest.mark.parametrize("device", [-1, 1.0, "0", True])
def test_bad_devices(device: Any) -> None:
    with pytest.raises((TypeError, pydmabuf.InvalidArgumentError)):
        cuda.available(device)
    with pytest.raises((TypeError, pydmabuf.InvalidArgumentError)):
        cuda.check(device)


def test_importing_loads_nothing() -> None:
    code = ("import sys, pydmabuf.cuda; "
            "assert 'pydmabuf.uapi.cuda_driver' not in sys.modules, 'the driver module was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- without a driver ---------------------------------------------------------------------

@pytest.fixture
def no_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cuda_driver, "LIBRARY", "libcuda-not-here.so.1")
    monkeypatch.setattr(cuda, "_loaded", None)


def test_without_a_driver_everything_says_why(no_driver: None) -> None:
    assert cuda.available() is False
    with pytest.raises(pydmabuf.UnsupportedError) as exc:
        cuda.check()
    assert "no CUDA driver" in str(exc.value) and "libcuda-not-here.so.1" in str(exc.value)
    assert isinstance(exc.value, pydmabuf.Error)
    for call in (lambda: cuda.export(0x7000_0000, MIB2), lambda: cuda.export_region(ArrayInterface(
            shape=(4,), typestr="<f4"))):
        with pytest.raises(pydmabuf.UnsupportedError, match="no CUDA driver"):
            call()
    with pytest.raises(TypeError):  # arguments are still checked first
        cuda.export("not a pointer")


def test_a_driver_that_cannot_start_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    def cannot_start(lib: object) -> None:
        raise pydmabuf.Error(errno.EIO, "cuInit: CUDA_ERROR_UNKNOWN")

    monkeypatch.setattr(_cuda_driver.ctypes, "CDLL", lambda name: object())
    monkeypatch.setattr(_cuda_driver, "Driver", cannot_start)
    monkeypatch.setattr(cuda, "_loaded", None)
    assert cuda.available() is False
    with pytest.raises(pydmabuf.UnsupportedError, match="cannot start: cuInit: CUDA_ERROR_UNKNOWN"):
        cuda.check()


@pytest.mark.parametrize(("code", "exc"), [
    (1, pydmabuf.InvalidArgumentError),  # CUDA_ERROR_INVALID_VALUE
    (2, pydmabuf.OutOfMemoryError),
    (100, pydmabuf.UnsupportedError),  # CUDA_ERROR_NO_DEVICE
    (800, pydmabuf.PermissionDeniedError),
    (801, pydmabuf.UnsupportedError),  # CUDA_ERROR_NOT_SUPPORTED
    (999, pydmabuf.Error),
])
def test_cuda_results_map_to_library_errors(code: int, exc: type[pydmabuf.Error]) -> None:
    driver = _cuda_driver.Driver.__new__(_cuda_driver.Driver)
    driver.lib = type("NoNames", (), {"cuGetErrorName": staticmethod(lambda code, out: 1)})()  # type: ignore[assignment]
    driver.check(0, "fine")
    with pytest.raises(exc) as raised:
        driver.check(code, "cuSomething", "the hint")
    assert f"cuSomething: CUresult {code} (the hint)" in str(raised.value)


# --- the export logic, against a stand-in driver --------------------------------------------

class StandInLib:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> int:
            self.calls.append(name)
            return 0
        return call


class StandInDriver:
    """Answers like a driver with one 2 MiB device allocation at ``base``, exporting
    a sealed memfd (a fallback buffer) for the dma-buf."""

    def __init__(self, base: int = 0x7F00_0020_0000, size: int = MIB2, dma_buf: int = 1,
                 memory_type: int = 2, context: int | None = 0xC0) -> None:
        self.base, self.size, self.dma_buf = base, size, dma_buf
        self.memory_type, self.context = memory_type, context
        self.lib = StandInLib()
        self.exported: list[tuple[int, int]] = []

    def check(self, code: int, what: str, hint: str | None = None) -> None:
        assert code == 0

    def device(self, ordinal: int) -> int:
        return ordinal

    def attribute(self, attribute: int, device: int) -> int:
        assert attribute == 124
        return self.dma_buf

    def pointer_int(self, attribute: int, ptr: int, what: str) -> int:
        if not self.base <= ptr < self.base + self.size:
            raise pydmabuf.InvalidArgumentError(errno.EINVAL, f"{what}: CUDA_ERROR_INVALID_VALUE")
        return self.memory_type if attribute == _cuda_driver.CU_POINTER_ATTRIBUTE_MEMORY_TYPE else 0

    def pointer_context(self, ptr: int) -> int | None:
        return self.context

    def address_range(self, ptr: int) -> tuple[int, int]:
        return self.base, self.size

    def dma_buf_fd(self, base: int, size: int) -> int:
        self.exported.append((base, size))
        return sealed_memfd("stand-in nv_dmabuf", size, F_SEAL_SHRINK | F_SEAL_GROW)


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInDriver]:
    stand_in = StandInDriver()
    monkeypatch.setattr(cuda, "_loaded", stand_in)
    yield stand_in


def test_export_is_the_whole_allocation_with_the_objects_offset(driver: StandInDriver) -> None:
    tensor = ArrayInterface(shape=(256,), typestr="<f4", data=(driver.base + 3 * PAGE + 16, False))
    region = cuda.export_region(tensor)
    with region.buffer as buf:
        assert (region.offset, region.size) == (3 * PAGE + 16, 1024)
        assert buf.size == MIB2 and not buf.closed
        assert driver.exported == [(driver.base, MIB2)]
        assert buf.fileno() > 2 and os.get_inheritable(buf.fileno()) is False
    assert driver.lib.calls == ["cuCtxPushCurrent_v2", "cuCtxPopCurrent_v2"]


def test_export_of_a_pointer_to_the_end(driver: StandInDriver) -> None:
    region = cuda.export_region(driver.base + PAGE)
    with region.buffer:
        assert (region.offset, region.size) == (PAGE, MIB2 - PAGE)
    with cuda.export(driver.base) as buf:
        assert buf.size == MIB2


def test_export_past_the_allocation_closes_the_fd(driver: StandInDriver) -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError, match="runs past"):
        cuda.export(driver.base + PAGE, MIB2)


def test_host_memory_is_refused(driver: StandInDriver) -> None:
    driver.memory_type = 1  # CU_MEMORYTYPE_HOST
    with pytest.raises(pydmabuf.InvalidArgumentError, match="not CUDA device memory"):
        cuda.export(driver.base)
    assert driver.exported == []


def test_unknown_memory_is_an_argument_error(driver: StandInDriver) -> None:
    with pytest.raises(pydmabuf.InvalidArgumentError):
        cuda.export(0x1000)


def test_attribute_zero_is_unsupported(driver: StandInDriver) -> None:
    driver.dma_buf = 0
    assert cuda.available() is False
    with pytest.raises(pydmabuf.UnsupportedError, match="DMA_BUF_SUPPORTED is 0"):
        cuda.export(driver.base)
    assert driver.exported == []


def test_memory_without_a_context_uses_the_primary_one(driver: StandInDriver) -> None:
    driver.context = None  # e.g. cuMemCreate/cuMemMap allocations
    with cuda.export(driver.base):
        pass
    assert driver.lib.calls == ["cuDevicePrimaryCtxRetain", "cuCtxPushCurrent_v2", "cuCtxPopCurrent_v2",
                                "cuDevicePrimaryCtxRelease_v2"]


def test_unaligned_allocation_is_refused(driver: StandInDriver) -> None:
    driver.base += 256
    with pytest.raises(pydmabuf.UnsupportedError, match="page-aligned"):
        cuda.export(driver.base)


def test_available_with_a_capable_gpu(driver: StandInDriver) -> None:
    assert cuda.available() is True
    cuda.check(0)


# --- a real GPU -------------------------------------------------------------------------------

def _gpu_reason() -> str | None:
    try:
        cuda.check(0)
    except pydmabuf.UnsupportedError as exc:
        return f"no CUDA GPU that exports dma-bufs here: {exc}"
    return None


GPU_MISSING = _gpu_reason()
needs_gpu = pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")


@pytest.fixture
def device_memory() -> Iterator[int]:
    import ctypes

    drv = cuda._driver()
    lib = drv.lib
    ctx = ctypes.c_void_p()
    drv.check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), drv.device(0)), "retain")
    drv.check(lib.cuCtxPushCurrent_v2(ctx), "push")
    ptr = _cuda_driver.CUdeviceptr()
    drv.check(lib.cuMemAlloc_v2(ctypes.byref(ptr), MIB2), "cuMemAlloc")
    drv.check(lib.cuMemsetD8_v2(ptr, 0x5A, MIB2), "cuMemsetD8")
    try:
        yield ptr.value
    finally:
        lib.cuMemFree_v2(ptr)
        lib.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
        lib.cuDevicePrimaryCtxRelease_v2(drv.device(0))


@needs_gpu
def test_gpu_memory_exports_a_real_dma_buf(device_memory: int) -> None:
    region = cuda.export_region(device_memory + PAGE, PAGE)
    with region.buffer as buf:
        assert (region.offset, region.size) == (PAGE, PAGE)
        assert buf.backend == "kernel" and buf.size == MIB2
        assert buf.info().exporter == "nv_dmabuf"
        buf.set_name("gpu-frame")
        assert buf.name == "gpu-frame"
        with pytest.raises(pydmabuf.UnsupportedError, match="nv_dmabuf"):
            buf.map()


@needs_gpu
def test_gpu_dma_buf_goes_to_another_process(device_memory: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, cuda.export(device_memory) as buf:
        def child() -> int:
            (got,) = pydmabuf.recv(b)
            with got:
                return 0 if got.size == MIB2 and got.info().exporter == "nv_dmabuf" else 3

        pid = fork(child)
        pydmabuf.send(a, buf)
        assert join(pid, timeout=60) == 0


@needs_gpu
def test_gpu_array_objects() -> None:
    torch = pytest.importorskip("torch", reason="torch is optional and not installed here")
    t = torch.zeros(1000, dtype=torch.float32, device="cuda")
    region = cuda.export_region(t)
    with region.buffer as buf:
        assert region.size == 4000 and buf.size >= region.offset + region.size
