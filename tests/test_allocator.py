"""Allocator: the provider chain (CMA heap, system heap, udmabuf by default), its
fall-through on missing and refusing providers, the one error when all fail, and
PYDMABUF_PROVIDERS. Real allocations run on the active backend; the chain's logic
also runs against a backend whose heaps the test chooses (and makes fail)."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator

import pytest
from conftest import BACKEND

import pydmabuf
from pydmabuf.allocator import DEFAULT_PROVIDERS, ENV_VAR, Allocator, parse_providers
from pydmabuf.backends.fallback import FallbackBackend
from pydmabuf.errors import CMA_HINT, error

PAGE = os.sysconf("SC_PAGE_SIZE")


class ChosenHeaps(FallbackBackend):
    """Fallback buffers behind chosen heap names; ``exhausted`` heaps answer ENOMEM
    to every allocation, ``refused`` ones EACCES on open."""

    def __init__(self, names: list[str], exhausted: tuple[str, ...] = (), refused: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.names = names
        self.exhausted = exhausted
        self.refused = refused
        self.opened: list[str] = []
        self.allocations: list[str] = []

    def heaps(self) -> list[str]:
        return sorted(self.names)

    def open_heap(self, name: str) -> int:
        self.opened.append(name)
        if name in self.refused:
            raise error(errno.EACCES, f"opening /dev/dma_heap/{name}", "root-only")
        if name not in self.names:
            raise error(errno.ENOENT, f"no dma-heap {name!r}")
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def allocate(self, heap_fd: int, heap_name: str, size: int) -> int:
        self.allocations.append(heap_name)
        if heap_name in self.exhausted:
            raise error(errno.ENOMEM, f"DMA_HEAP_IOCTL_ALLOC on {heap_name}", CMA_HINT)
        return super().allocate(heap_fd, heap_name, size)


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


# --- the chain on the active backend -------------------------------------------------

def test_default_chain_is_libcameras() -> None:
    assert DEFAULT_PROVIDERS == ("cma", "system", "udmabuf")
    with Allocator() as alloc:
        assert alloc.providers == DEFAULT_PROVIDERS
        assert alloc.backend == BACKEND
        assert "cma,system,udmabuf" in repr(alloc)


def _cma_present() -> bool:
    from pydmabuf.heap import HEAP_ALIASES

    return any(n in pydmabuf.heaps() for n in HEAP_ALIASES["cma"])


@pytest.mark.parametrize("size", [1, PAGE, 3 * PAGE + 1])
def test_default_chain_allocates_real_buffers(size: int) -> None:
    with Allocator() as alloc, alloc.allocate(size, name="chained") as buf, buf.map() as m:
        assert buf.size == -(-size // PAGE) * PAGE
        assert buf.backend == BACKEND
        assert buf.name == "chained"
        if not _cma_present():  # the fallback and the VM: the system heap serves
            assert alloc.last_provider == "system"
        with buf.cpu_access():
            assert bytes(m) == bytes(buf.size)


def test_udmabuf_provider() -> None:
    with Allocator(["udmabuf"]) as alloc, alloc.allocate(2 * PAGE, name="u") as buf:
        assert alloc.last_provider == "udmabuf"
        assert buf.size == 2 * PAGE and buf.name == "u"
        assert buf.backend == BACKEND  # a real udmabuf in the VM, the emulation natively


def test_fallback_provider_is_memfds_on_any_backend() -> None:
    with Allocator(["fallback"]) as alloc, alloc.allocate(PAGE) as buf:
        assert alloc.last_provider == "fallback"
        assert buf.backend == "fallback"
        assert buf.info().exporter == "pydmabuf-fallback"


def test_missing_heap_falls_through_to_the_next() -> None:
    with Allocator(["no-such-heap", "system"]) as alloc, alloc.allocate(PAGE) as buf:
        assert alloc.last_provider == "system"
        assert buf.size == PAGE


def test_every_provider_missing_is_one_not_found_error() -> None:
    with Allocator(["no-such-heap", "cma"]) as alloc, pytest.raises(pydmabuf.NotFoundError) as exc:
        alloc.allocate(PAGE)
    err = exc.value
    assert err.errno == errno.ENOENT and isinstance(err, FileNotFoundError)
    assert f"could allocate {PAGE} bytes" in str(err)
    assert "no-such-heap:" in str(err) and "cma:" in str(err) and "default_cma_region" in str(err)
    assert set(err.answers) == {"no-such-heap", "cma"}  # type: ignore[attr-defined]


def test_environment_sets_the_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, " udmabuf , system ")
    with Allocator() as alloc, alloc.allocate(PAGE) as buf:
        assert alloc.providers == ("udmabuf", "system")
        assert alloc.last_provider == "udmabuf"
        assert buf.size == PAGE
    with Allocator(["system"]) as alloc:  # code that names its providers is not overridden
        assert alloc.providers == ("system",)


def test_empty_environment_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "  ")
    with Allocator() as alloc:
        assert alloc.providers == DEFAULT_PROVIDERS


@pytest.mark.parametrize("bad", [",,", " , ", "system,a/b", "..", "x\0y"])
def test_bad_environment_is_invalid(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    if "\0" in bad:
        with pytest.raises(pydmabuf.InvalidArgumentError):
            parse_providers(bad)
        return
    monkeypatch.setenv(ENV_VAR, bad)
    with pytest.raises(pydmabuf.InvalidArgumentError) as exc:
        Allocator()
    assert ENV_VAR in str(exc.value)


# --- provider lists -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "existing", "expected"), [
    ("system", [], ("system",)),
    ("linux,cma,system", [], ("linux,cma", "system")),  # a known spelling keeps its comma
    ("system,linux,cma", [], ("system", "linux,cma")),
    ("protected,secure-video,udmabuf", ["protected,secure-video"], ("protected,secure-video", "udmabuf")),
    ("protected,secure-video", [], ("protected", "secure-video")),  # no such node: two names
    ("cma,,system,", [], ("cma", "system")),
])
def test_parse_providers(text: str, existing: list[str], expected: tuple[str, ...]) -> None:
    assert parse_providers(text, existing) == expected


def test_string_providers_parse_like_the_environment() -> None:
    with Allocator("linux,cma, udmabuf", backend=ChosenHeaps([])) as alloc:
        assert alloc.providers == ("linux,cma", "udmabuf")


def test_duplicates_keep_the_first() -> None:
    with Allocator(["system", "udmabuf", "system"]) as alloc:
        assert alloc.providers == ("system", "udmabuf")


@pytest.mark.parametrize(("providers", "exc"), [
    ([], pydmabuf.InvalidArgumentError),
    ([""], pydmabuf.InvalidArgumentError),
    (["a/b"], pydmabuf.InvalidArgumentError),
    ([1], TypeError),
    ([b"system"], TypeError),
])
def test_bad_provider_lists(providers: list[object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        Allocator(providers)  # type: ignore[arg-type]


@pytest.mark.parametrize(("size", "name", "exc"), [
    (0, None, pydmabuf.InvalidArgumentError),
    (-1, None, pydmabuf.InvalidArgumentError),
    (1.5, None, pydmabuf.InvalidArgumentError),
    (PAGE, "x" * 32, pydmabuf.InvalidArgumentError),
    (PAGE, 7, TypeError),
])
def test_bad_arguments_fail_before_any_provider(size: object, name: object, exc: type[Exception]) -> None:
    backend = ChosenHeaps(["system"])
    with Allocator(["system"], backend=backend) as alloc, pytest.raises(exc):
        alloc.allocate(size, name=name)  # type: ignore[arg-type]
    assert backend.opened == []


# --- fall-through logic, with chosen and failing heaps ------------------------------------

def test_exhausted_cma_falls_through_and_is_asked_again() -> None:
    backend = ChosenHeaps(["linux,cma", "system"], exhausted=("linux,cma",))
    with Allocator(backend=backend) as alloc:
        for _ in range(2):
            with alloc.allocate(PAGE) as buf:
                assert buf.size == PAGE
            assert alloc.last_provider == "system"
        # CMA may have room again later: asked each time; its heap opened once.
        assert backend.allocations == ["linux,cma", "system", "linux,cma", "system"]
        assert backend.opened.count("linux,cma") == 1


def test_cma_alias_serves_when_present() -> None:
    backend = ChosenHeaps(["reserved", "system"])
    with Allocator(backend=backend) as alloc, alloc.allocate(PAGE, name="c") as buf:
        assert alloc.last_provider == "reserved"
        assert buf.name == "c"


def test_missing_provider_is_not_looked_for_again() -> None:
    backend = ChosenHeaps(["system"])
    with Allocator(["cma", "system"], backend=backend) as alloc:
        for _ in range(3):
            alloc.allocate(PAGE).close()
        assert backend.opened.count("default_cma_region") == 1
        assert backend.opened.count("system") == 1


def test_permission_refusal_falls_through_and_is_retried() -> None:
    backend = ChosenHeaps(["default_cma_region", "system"], refused=("default_cma_region",))
    with Allocator(backend=backend) as alloc:
        alloc.allocate(PAGE).close()
        alloc.allocate(PAGE).close()
        assert alloc.last_provider == "system"
        assert backend.opened.count("default_cma_region") == 2  # a udev rule may fix it meanwhile


def test_all_failing_is_one_error_of_the_first_refusal() -> None:
    backend = ChosenHeaps(["linux,cma", "system"], exhausted=("linux,cma", "system"))
    with Allocator(["cma", "nope", "system"], backend=backend) as alloc, \
            pytest.raises(pydmabuf.OutOfMemoryError) as exc:
        alloc.allocate(PAGE)
    err = exc.value
    assert err.errno == errno.ENOMEM and isinstance(err, MemoryError)
    text = str(err)
    assert text.index("cma:") < text.index("nope:") < text.index("system:")
    assert "contiguous (CMA) memory is exhausted" in text
    answers = err.answers  # type: ignore[attr-defined]
    assert list(answers) == ["cma", "nope", "system"]
    assert isinstance(answers["nope"], pydmabuf.NotFoundError)
    assert isinstance(answers["system"], pydmabuf.OutOfMemoryError)


def test_permission_refusal_then_missing_is_a_permission_error() -> None:
    backend = ChosenHeaps(["system"], refused=("system",))
    with Allocator(["system", "cma"], backend=backend) as alloc, \
            pytest.raises(pydmabuf.PermissionDeniedError) as exc:
        alloc.allocate(PAGE)
    assert "root-only" in str(exc.value)


def test_oversized_request_fails_on_every_provider() -> None:
    with Allocator(["system", "fallback"]) as alloc, pytest.raises(pydmabuf.OutOfMemoryError) as exc:
        alloc.allocate(1 << 50)
    assert "system:" in str(exc.value) and "fallback:" in str(exc.value)


# --- lifetime and threads -------------------------------------------------------------------

def test_close_keeps_buffers_and_refuses_new_ones() -> None:
    alloc = Allocator(["system"])
    buf = alloc.allocate(PAGE)
    alloc.close()
    alloc.close()
    assert alloc.closed
    with pytest.raises(pydmabuf.ClosedError):
        alloc.allocate(PAGE)
    with pytest.raises(pydmabuf.ClosedError), alloc:
        pass
    assert buf.size == PAGE and not buf.closed
    buf.close()


def test_threads_share_one_allocator() -> None:
    out: list[pydmabuf.Buffer] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            buf = alloc.allocate(PAGE)
            with lock:
                out.append(buf)

    with Allocator() as alloc:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(out) == 80 and len({b.fileno() for b in out}) == 80
    for b in out:
        b.close()


# --- a real CMA node on the kernel ------------------------------------------------------------

@pytest.fixture
def cma_node() -> Iterator[str]:
    system = "/dev/dma_heap/system"
    if BACKEND != "kernel" or not os.path.exists(system) or os.geteuid() != 0:
        pytest.skip("needs the kernel backend, /dev/dma_heap/system and root (the VM)")
    if _cma_present():
        pytest.skip("this kernel has a CMA heap already")
    path = "/dev/dma_heap/reserved"
    os.mknod(path, stat.S_IFCHR | 0o600, os.stat(system).st_rdev)
    try:
        yield path
    finally:
        os.unlink(path)


def test_default_chain_prefers_a_cma_node(cma_node: str) -> None:
    with Allocator() as alloc, alloc.allocate(PAGE) as buf:
        assert alloc.last_provider == "reserved"
        assert buf.info().exporter == "system"  # mknod'ed onto the system heap's device
