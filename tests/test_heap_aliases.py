"""Heap aliases: ``Heap("cma")`` opens whichever node this kernel gives the CMA heap.

On the kernel (the VM, as root) the nodes are real: a node made with mknod under a
CMA name, with the major/minor of /dev/dma_heap/system, *is* a heap of that name.
On the fallback, whose only heap is "system", "cma" is NotFoundError listing what was
tried and what exists. The precedence rules themselves are checked on both backends
with a backend whose heap list the test chooses."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator

import pytest
from _procs import fork, join
from conftest import BACKEND

import pydmabuf
from pydmabuf.backends.fallback import FallbackBackend
from pydmabuf.errors import error
from pydmabuf.heap import HEAP_ALIASES

CMA_NAMES = HEAP_ALIASES["cma"]
HEAP_DIR = "/dev/dma_heap"


class ChosenHeaps(FallbackBackend):
    """The fallback's memfd buffers behind a heap list the test chooses; names in
    ``refused`` exist but answer EACCES, as a root-only node does."""

    def __init__(self, names: list[str], refused: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.names = names
        self.refused = refused
        self.opened: list[str] = []

    def heaps(self) -> list[str]:
        return sorted(self.names)

    def open_heap(self, name: str) -> int:
        self.opened.append(name)
        if name in self.refused:
            raise error(errno.EACCES, f"opening {name}", "a test node")
        if name not in self.names:
            raise error(errno.ENOENT, f"no heap {name!r}")
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


# --- the rules, on any backend ------------------------------------------------------

def test_the_fixed_name_comes_first_and_every_known_spelling_is_tried() -> None:
    assert CMA_NAMES[:4] == ("default_cma_region", "linux,cma", "reserved", "default-pool")
    assert "cma" in CMA_NAMES  # Android's libdmabufheap and Rockchip BSP kernels


@pytest.mark.parametrize("name", CMA_NAMES)
def test_cma_opens_any_single_spelling(name: str) -> None:
    with pydmabuf.Heap("cma", backend=ChosenHeaps(["system", name])) as heap:
        assert heap.name == name
        assert name in repr(heap)
        with heap.allocate(4096, name="frame") as buf:
            assert buf.size == 4096


def test_the_617_name_wins_over_its_legacy_duplicate() -> None:
    backend = ChosenHeaps(["system", "reserved", "linux,cma", "default_cma_region"])
    with pydmabuf.Heap("cma", backend=backend) as heap:
        assert heap.name == "default_cma_region"
    assert backend.opened == ["default_cma_region"]


def test_legacy_names_keep_their_order() -> None:
    with pydmabuf.Heap("cma", backend=ChosenHeaps(["default-pool", "reserved", "linux,cma"])) as heap:
        assert heap.name == "linux,cma"


def test_a_node_this_user_cannot_open_is_passed_over() -> None:
    # udev rules often cover only the legacy name: the fixed one stays root-only.
    backend = ChosenHeaps(["default_cma_region", "linux,cma"], refused=("default_cma_region",))
    with pydmabuf.Heap("cma", backend=backend) as heap:
        assert heap.name == "linux,cma"


def test_when_every_node_refuses_the_first_refusal_is_the_error() -> None:
    backend = ChosenHeaps(["default_cma_region", "reserved"], refused=("default_cma_region", "reserved"))
    with pytest.raises(pydmabuf.PermissionDeniedError) as exc:
        pydmabuf.Heap("cma", backend=backend)
    assert "default_cma_region" in str(exc.value)


def test_no_cma_node_lists_every_name_tried_and_what_exists() -> None:
    backend = ChosenHeaps(["system", "protected,secure-video"])
    with pytest.raises(pydmabuf.NotFoundError) as exc:
        pydmabuf.Heap("cma", backend=backend)
    err = exc.value
    assert isinstance(err, FileNotFoundError) and isinstance(err, pydmabuf.Error)
    assert err.errno == errno.ENOENT
    for name in CMA_NAMES:
        assert name in str(err)
    assert "available: protected,secure-video, system" in str(err)
    assert backend.opened == list(CMA_NAMES)


def test_exact_names_are_not_aliased() -> None:
    backend = ChosenHeaps(["linux,cma", "default_cma_region"])
    with pydmabuf.Heap("linux,cma", backend=backend) as heap:
        assert heap.name == "linux,cma"
    assert backend.opened == ["linux,cma"]


# --- the active backend -------------------------------------------------------------

def _cma_nodes() -> list[str]:
    return [n for n in CMA_NAMES if os.path.exists(os.path.join(HEAP_DIR, n))]


def test_cma_without_a_cma_node_says_what_exists() -> None:
    # Documented: the fallback's only heap is "system", and "cma" never silently maps to
    # it; a kernel without a CMA node says the same, naming the heaps it has.
    if BACKEND == "kernel" and _cma_nodes():  # a kernel with one opens it
        with pydmabuf.Heap("cma") as heap:
            assert heap.name in _cma_nodes()
        return
    with pytest.raises(pydmabuf.NotFoundError) as exc:
        pydmabuf.Heap("cma")
    assert f"available: {', '.join(pydmabuf.heaps())}" in str(exc.value)
    assert "default_cma_region" in str(exc.value)
    if BACKEND == "fallback":
        assert "available: system" in str(exc.value)


# --- real nodes on the kernel (the VM runs the suite as root) -------------------------

@pytest.fixture
def make_node() -> Iterator[Callable[..., str]]:
    system = os.path.join(HEAP_DIR, "system")
    if BACKEND != "kernel" or not os.path.exists(system):
        pytest.skip("needs the kernel backend with /dev/dma_heap/system")
    if os.geteuid() != 0:
        pytest.skip("mknod in /dev/dma_heap needs root (the VM runs as root)")
    if _cma_nodes():
        pytest.skip(f"this kernel already has a CMA heap: {_cma_nodes()}")
    rdev = os.stat(system).st_rdev
    made: list[str] = []

    def make(name: str, mode: int = 0o600) -> str:
        path = os.path.join(HEAP_DIR, name)
        os.mknod(path, stat.S_IFCHR | mode, rdev)
        os.chmod(path, mode)
        made.append(path)
        return path

    try:
        yield make
    finally:
        for path in made:
            os.unlink(path)


def test_mknod_node_under_a_cma_name_is_a_real_heap(make_node: Callable[..., str]) -> None:
    make_node("linux,cma")
    assert "linux,cma" in pydmabuf.heaps()
    with pydmabuf.Heap("cma") as heap:
        assert heap.name == "linux,cma"
        with heap.allocate(8192, name="cma-frame") as buf, buf.map() as m:
            assert buf.name == "cma-frame"
            assert buf.info().exporter == "system"  # the node's driver: the system heap
            with buf.cpu_access():
                m[:4] = b"cma!"
                assert m[:4] == b"cma!"


def test_mknod_fixed_name_wins_over_legacy_node(make_node: Callable[..., str]) -> None:
    make_node("reserved")
    make_node("default_cma_region")
    with pydmabuf.Heap("cma") as heap, heap.allocate(4096) as buf:
        assert heap.name == "default_cma_region"
        assert buf.size == 4096


def test_mknod_unreadable_fixed_node_passed_over_for_a_group_node(make_node: Callable[..., str]) -> None:
    make_node("default_cma_region", 0o600)
    make_node("linux,cma", 0o666)

    def child() -> int:
        os.setgid(65534)
        os.setuid(65534)  # nobody: root-only nodes refuse it
        with pydmabuf.Heap("cma") as heap, heap.allocate(4096):
            return 0 if heap.name == "linux,cma" else 3

    assert join(fork(child)) == 0


def test_mknod_only_unreadable_nodes_is_permission_error(make_node: Callable[..., str]) -> None:
    make_node("default_cma_region", 0o600)

    def child() -> int:
        os.setgid(65534)
        os.setuid(65534)
        try:
            pydmabuf.Heap("cma")
        except pydmabuf.PermissionDeniedError as exc:
            return 0 if "default_cma_region" in str(exc) else 4
        return 3

    assert join(fork(child)) == 0
