"""Every public name has a docstring: the classes and functions in ``pydmabuf.__all__``
and their public methods and properties (what ``help()`` and an API reference show)."""

from __future__ import annotations

import inspect

import pydmabuf


def _undocumented(names: list[str], namespace: object) -> list[str]:
    missing = []
    for name in names:
        obj = getattr(namespace, name, None)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for key, value in vars(obj).items():
                f = value.fget if isinstance(value, property) else value
                public = not key.startswith("_") and (callable(f) or isinstance(value, property))
                if public and not (getattr(f, "__doc__", None) or "").strip():
                    missing.append(f"{name}.{key}")
    return missing


def test_every_public_name_has_a_docstring() -> None:
    assert _undocumented(list(pydmabuf.__all__), pydmabuf) == []


def test_the_check_can_fail() -> None:
    class Probe:
        """Documented."""

        def method(self) -> None:
            pass

        @property
        def value(self) -> int:
            return 1

    def function() -> None:
        pass

    class Namespace:
        pass

    Namespace.Probe = Probe  # type: ignore[attr-defined]
    Namespace.function = function  # type: ignore[attr-defined]
    assert _undocumented(["Probe", "function"], Namespace) == ["Probe.method", "Probe.value", "function"]
