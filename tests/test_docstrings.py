"""Every public name has a docstring (what ``help()`` and the API reference show).

The modules are the ones the API reference documents. A module's public names are its
``__all__`` where it has one, else every name not starting with ``_`` that the module
itself defines. Each module needs a docstring; each public class and function too,
and so does every public member of a class: methods, properties, classmethods and
staticmethods, slots (documented as ``__slots__ = {"name": "doc"}``), named-tuple fields
(``Cls.field.__doc__ = ...``: the generated "Alias for field number N" says nothing) and
what a C base type defines. Members inherited from the library's own private bases
count, as ``help()`` shows them on the public class; the standard library's do not.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from typing import NamedTuple

import pytest

MODULES = (
    "pydmabuf",
    "pydmabuf.channel",
    "pydmabuf.aio",
    "pydmabuf.formats",
    "pydmabuf.frame",
    "pydmabuf.interop",
    "pydmabuf.cuda",
    "pydmabuf.dlpack",
    "pydmabuf.gstreamer",
    "pydmabuf.share",
    "pydmabuf.credentials",
    "pydmabuf.waiting",
    "pydmabuf.timeline",
    "pydmabuf.pool",
    "pydmabuf.allocator",
    "pydmabuf.errors",
    "pydmabuf.info",
    "pydmabuf.buffer",
    "pydmabuf.syncfile",
    "pydmabuf.heap",
    "pydmabuf.udmabuf",
    "pydmabuf.vm",
    "pydmabuf.vm.accel",
)

# What collections.namedtuple writes on a field that nobody documented.
_PLACEHOLDER = re.compile(r"Alias for field number \d+")
_NOT_A_MEMBER = object()


def _documented(doc: object) -> bool:
    return isinstance(doc, str) and bool(doc.strip()) and not _PLACEHOLDER.fullmatch(doc.strip())


def _public_names(module: types.ModuleType) -> list[str]:
    """``__all__``, or the names the module defines itself (``pydmabuf`` loads some of
    its ``__all__`` lazily: ``getattr`` in the caller imports them)."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__
    ]


def _member_doc(owner: type, name: str, value: object) -> object:
    """The docstring of class attribute ``name`` (``value`` from ``vars(owner)``), or
    None where it is not a member that takes one (plain data: a default, a constant)."""
    if isinstance(value, (classmethod, staticmethod)):
        return value.__func__.__doc__
    if isinstance(value, types.MemberDescriptorType):  # a slot: __slots__ = {"name": "doc"}
        slots = vars(owner).get("__slots__")
        return slots.get(name) if isinstance(slots, dict) else None
    if (
        isinstance(value, property)
        or inspect.isclass(value)
        or inspect.isroutine(value)
        or inspect.isdatadescriptor(value)
        or inspect.ismethoddescriptor(value)
    ):
        return value.__doc__
    return _NOT_A_MEMBER


def _own(base: type) -> bool:
    return base.__module__ == "pydmabuf" or base.__module__.startswith("pydmabuf.")


def _undocumented_members(cls: type) -> list[str]:
    """Public members of ``cls``, its own and those of the library's bases (the first
    definition along the MRO is the one that counts), that lack a docstring."""
    missing = []
    seen: set[str] = set()
    for base in cls.__mro__:
        for key, value in vars(base).items():
            if key.startswith("_") or key in seen:
                continue
            seen.add(key)
            if not _own(base):
                continue
            doc = _member_doc(base, key, value)
            if doc is not _NOT_A_MEMBER and not _documented(doc):
                missing.append(f"{cls.__name__}.{key}")
    return missing


def _undocumented(names: list[str], namespace: object) -> list[str]:
    """The names (and ``Class.member``) among ``names`` in ``namespace`` that lack a
    docstring; constants and other plain values are not checked."""
    missing = []
    for name in names:
        obj = getattr(namespace, name)
        if inspect.ismodule(obj):
            if not _documented(obj.__doc__):
                missing.append(name)
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if not _documented(obj.__doc__):
            missing.append(name)
        if inspect.isclass(obj):
            missing += _undocumented_members(obj)
    return missing


def _undocumented_in(module: types.ModuleType) -> list[str]:
    missing = [] if _documented(module.__doc__) else ["(module docstring)"]
    return missing + _undocumented(_public_names(module), module)


@pytest.mark.parametrize("name", MODULES)
def test_every_public_name_has_a_docstring(name: str) -> None:
    module = importlib.import_module(name)
    assert _undocumented_in(module) == []


def test_the_check_covers_what_it_should() -> None:
    # pydmabuf's lazy names resolve; a module without __all__ lists what it defines.
    assert "Frame" in _public_names(importlib.import_module("pydmabuf"))
    buffer_names = _public_names(importlib.import_module("pydmabuf.buffer"))
    assert "Buffer" in buffer_names
    assert "SyncFile" not in buffer_names  # imported there, documented where it is defined
    members = {key for base in importlib.import_module("pydmabuf").SyncFile.__mro__ if _own(base) for key in vars(base)}
    assert {"from_fd", "merge_all", "signaled", "detach", "fileno"} <= members


def test_the_check_can_fail() -> None:
    class Base:
        """Documented."""

        __slots__ = ()

        def inherited(self) -> None:
            pass

    class Probe(Base):
        """Documented."""

        __slots__ = ("slot", "_private_slot")
        constant = 3  # plain data: not checked

        def method(self) -> None:
            pass

        def _private(self) -> None:
            pass

        @property
        def value(self) -> int:
            return 1

        @classmethod
        def make(cls) -> None:
            pass

        @staticmethod
        def helper() -> None:
            pass

    class Documented(Base):
        """Documented."""

        __slots__ = {"slot": "A documented slot."}

        @classmethod
        def make(cls) -> None:
            """Documented."""

    class Pair(NamedTuple):
        """Documented."""

        first: int
        second: int

    Pair.first.__doc__ = "Documented."

    def function() -> None:
        pass

    module = types.ModuleType("pydmabuf.probe")  # no docstring
    module.Probe = Probe  # type: ignore[attr-defined]
    module.Documented = Documented  # type: ignore[attr-defined]
    module.Pair = Pair  # type: ignore[attr-defined]
    module.function = function  # type: ignore[attr-defined]
    module.imported = inspect.getdoc  # type: ignore[attr-defined]  # defined elsewhere: not this module's
    module._private = function  # type: ignore[attr-defined]
    for obj in (Base, Probe, Documented, Pair, function):
        obj.__module__ = "pydmabuf.probe"  # the library's bases count, the standard library's do not

    assert _undocumented_in(module) == [
        "(module docstring)",
        "Probe.method",
        "Probe.value",
        "Probe.make",
        "Probe.helper",
        "Probe.slot",
        "Probe.inherited",
        "Documented.inherited",
        "Pair.second",
        "function",
    ]
    module.__all__ = ["function", "Documented"]  # type: ignore[attr-defined]
    module.__doc__ = "Documented."
    assert _undocumented_in(module) == ["function", "Documented.inherited"]
