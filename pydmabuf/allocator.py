"""Allocator: buffers from the first provider in a chain that can make them.

A provider is a heap name or alias (``"cma"``, ``"system"``, ``"linux,cma"``...),
``"udmabuf"`` (memfd pages through /dev/udmabuf) or ``"fallback"`` (the fallback
backend's sealed memfds, for a kernel with nothing else). The default chain is
libcamera's: the CMA heap, the system heap, udmabuf. On the fallback backend the CMA
alias never exists, so the chain starts at its "system" heap (memfds).

``PYDMABUF_PROVIDERS`` (comma-separated, e.g. ``system`` or ``cma,udmabuf``) replaces
the default chain wherever code passes ``providers=None``, so a deployment can pin a
provider without code changes. Heap names may contain a comma themselves
(``linux,cma``): two neighbouring items are read as one name when together they name a
heap that exists, or a known CMA spelling.
"""

from __future__ import annotations

import errno as E
import os
import threading
from collections.abc import Iterable
from types import TracebackType

from .backends import Backend, get_backend
from .buffer import Buffer, encode_name
from .errors import ClosedError, Error, NotFoundError, UnsupportedError, check_name, closed, invalid
from .heap import HEAP_ALIASES, NAME_MAX, Heap, check_size
from .udmabuf import udmabuf

ENV_VAR = "PYDMABUF_PROVIDERS"
UDMABUF = "udmabuf"
FALLBACK = "fallback"
DEFAULT_PROVIDERS: tuple[str, ...] = ("cma", "system", UDMABUF)
# Heap names with a comma that a provider list may spell without any node existing.
_COMMA_NAMES = frozenset(n for names in HEAP_ALIASES.values() for n in names if "," in n)


def parse_providers(text: str, existing: Iterable[str] = (), *, what: str = ENV_VAR) -> tuple[str, ...]:
    """Provider names from a comma-separated list; ``existing`` heap names (and known
    spellings like ``linux,cma``) rejoin the items their own commas split."""
    check_name(text, what)
    known = _COMMA_NAMES.union(existing)
    items = [item.strip() for item in text.split(",")]
    out: list[str] = []
    i = 0
    while i < len(items):
        name = items[i]
        i += 1
        while i < len(items) and f"{name},{items[i]}" in known:
            name = f"{name},{items[i]}"
            i += 1
        if name:  # "system," and ",,": empty items are nothing to try
            out.append(name)
    if not out:
        raise invalid(f"{what}={text!r} names no provider (e.g. {','.join(DEFAULT_PROVIDERS)})")
    return tuple(_check_provider(p, what) for p in out)


def _check_provider(name: object, what: str) -> str:
    name = check_name(name, "provider")
    if not name or "/" in name or "\0" in name or name in (".", "..") or len(name.encode()) > NAME_MAX:
        raise invalid(f"{what}: invalid provider {name!r}: a heap name (a file name in "
                      f"/dev/dma_heap), {UDMABUF!r} or {FALLBACK!r}")
    return name


class Allocator:
    """Allocates from the first provider that can: one that is missing (no such heap,
    no /dev/udmabuf) or refuses (ENOMEM from an exhausted CMA area, EACCES) passes to
    the next; when every one fails, one error says what each answered.

    Heaps are opened on first use and kept open until ``close()``. A provider found
    missing is skipped for the rest of this Allocator's life (make a new one to look
    again); a refusal is asked again next time. Safe to use from several threads.
    """

    def __init__(self, providers: Iterable[str] | str | None = None, *,
                 backend: str | Backend | None = None) -> None:
        self._backend = get_backend(backend)
        if providers is None:
            text = os.environ.get(ENV_VAR, "").strip()
            providers = (parse_providers(text, self._backend.heaps()) if text else DEFAULT_PROVIDERS)
        elif isinstance(providers, str):
            providers = parse_providers(providers, self._backend.heaps(), what="providers")
        else:
            providers = tuple(_check_provider(p, "providers") for p in providers)
            if not providers:
                raise invalid("providers names no provider")
        self._providers: tuple[str, ...] = tuple(dict.fromkeys(providers))  # first of duplicates
        self._heaps: dict[str, Heap] = {}
        self._missing: dict[str, Error] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.last_provider: str | None = None
        """What served the latest allocation: a heap's node name, "udmabuf" or "fallback"."""

    @property
    def providers(self) -> tuple[str, ...]:
        """The provider names in the order tried, duplicates removed."""
        return self._providers

    @property
    def backend(self) -> str:
        """The backend's name, ``"kernel"`` or ``"fallback"`` (the ``"fallback"`` provider
        allocates on the fallback backend whatever this says)."""
        return self._backend.name

    @property
    def closed(self) -> bool:
        """True once ``close()`` has run; ``allocate`` then raises ClosedError."""
        return self._closed

    def allocate(self, size: int, *, name: str | None = None) -> Buffer:
        """A new zeroed buffer of ``size`` bytes (rounded up to pages) from the first
        provider that can make it. Bad arguments raise at once, before any provider."""
        check_size(size)
        if name is not None:
            encode_name(name)
        if self._closed:
            raise closed("Allocator")
        answers: dict[str, Error] = {}
        for provider in self._providers:
            missing = self._missing.get(provider)
            if missing is not None:
                answers[provider] = missing
                continue
            try:
                buf, source = self._allocate_from(provider, size, name)
            except ClosedError:
                raise closed("Allocator") from None  # closed by another thread meanwhile
            except Error as exc:
                answers[provider] = exc
                if _is_missing(exc):
                    self._missing[provider] = exc
                continue
            self.last_provider = source
            return buf
        raise _all_failed(size, answers)

    def _allocate_from(self, provider: str, size: int, name: str | None) -> tuple[Buffer, str]:
        if provider == UDMABUF:
            return udmabuf(size, name=name, backend=self._backend), UDMABUF
        heap = self._heaps.get(provider)
        if heap is None:
            heap = self._open(provider)
        return heap.allocate(size, name=name), (FALLBACK if provider == FALLBACK else heap.name)

    def _open(self, provider: str) -> Heap:
        with self._lock:
            if self._closed:
                raise closed("Allocator")
            heap = self._heaps.get(provider)
            if heap is None:
                if provider == FALLBACK:
                    heap = Heap("system", backend="fallback")
                else:
                    heap = Heap(provider, backend=self._backend)
                self._heaps[provider] = heap
            return heap

    def close(self) -> None:
        """Close the heaps this allocator opened; buffers it made stay valid."""
        with self._lock:
            self._closed = True
            heaps, self._heaps = self._heaps, {}
        for heap in heaps.values():
            heap.close()

    def __enter__(self) -> Allocator:
        if self._closed:
            raise closed("Allocator")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Allocator {','.join(self._providers)} backend={self._backend.name}{state}>"


def _is_missing(exc: Error) -> bool:
    """The provider does not exist here (as opposed to refusing this request)."""
    return isinstance(exc, (NotFoundError, UnsupportedError))


def _all_failed(size: int, answers: dict[str, Error]) -> Error:
    """One error for the whole chain: the kind of the first provider that exists but
    refused (ENOMEM, EACCES...), else NotFoundError; ``.answers`` maps each provider
    to its own exception."""
    refusals = [exc for exc in answers.values() if not _is_missing(exc)]
    first = refusals[0] if refusals else next(iter(answers.values()))
    code = (first.errno or E.EIO) if refusals else E.ENOENT
    cls = type(first) if refusals else NotFoundError
    detail = "; ".join(f"{provider}: {exc.strerror or exc}" for provider, exc in answers.items())
    err = cls(code, f"Allocator: no provider could allocate {size} bytes ({detail})")
    err.answers = answers  # type: ignore[attr-defined]
    return err
