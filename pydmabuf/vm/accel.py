"""Which accelerator boots the guest: KVM where it works, else TCG (software).

KVM is about ten times faster, but "/dev/kvm exists" does not mean it works: on
some hosts (nested virtualisation, a hypervisor that hides CPU features) the
guest kernel crashes early or hangs. So ``auto`` (the default) asks once, with a
short boot under KVM, and remembers the answer per host kernel, QEMU binary and
guest kernel; a failed or slow probe means TCG, and the result says why.

``PYDMABUF_VM_ACCEL`` = ``auto`` (default), ``kvm`` (no probe; fails where KVM
does) or ``tcg``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from .cache import cache_dir

__all__ = ["CHOICES", "Accel", "cache_key", "kvm_problem", "recall", "remember", "requested", "without_probe"]

CHOICES = ("auto", "kvm", "tcg")
_CACHE_FILE = "accel.json"


@dataclass(frozen=True)
class Accel:
    """The accelerator a guest runs under, and why that one."""

    name: str  # "kvm" or "tcg"
    why: str

    def __str__(self) -> str:
        return f"{self.name} ({self.why})"


def requested() -> str:
    """``PYDMABUF_VM_ACCEL``, checked: one of :data:`CHOICES`."""
    value = os.environ.get("PYDMABUF_VM_ACCEL", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"PYDMABUF_VM_ACCEL={value!r}: use one of {', '.join(CHOICES)}")
    return value


def kvm_problem() -> str | None:
    """Why KVM cannot even be tried here, or None if /dev/kvm opens read-write."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return "no /dev/kvm"
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror} (add yourself to the kvm group?)"
    os.close(fd)
    return None


def cache_key(qemu: str, guest_release: str) -> str:
    """What a probe's answer depends on: the host kernel, the QEMU binary, the guest kernel."""
    real = os.path.realpath(qemu)
    try:
        stamp = int(os.stat(real).st_mtime)
    except OSError:
        stamp = 0
    return f"{os.uname().release}|{real}@{stamp}|{guest_release}"


def without_probe(key: Callable[[], str | None]) -> Accel | None:
    """The choice where no probe boot is needed: asked for by ``PYDMABUF_VM_ACCEL``,
    TCG where /dev/kvm cannot be opened, or the remembered answer of an earlier probe
    for ``key()`` (called only then: finding the guest kernel may cost). None: only a
    probe can tell. ValueError for a bad ``PYDMABUF_VM_ACCEL``."""
    wanted = requested()
    if wanted != "auto":
        return Accel(wanted, f"PYDMABUF_VM_ACCEL={wanted}")
    problem = kvm_problem()
    if problem is not None:
        return Accel("tcg", f"software emulation: {problem}")
    probe_key = key()
    return recall(probe_key) if probe_key is not None else None


def _load() -> dict[str, dict[str, object]]:
    try:
        data = json.loads((cache_dir() / _CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recall(key: str) -> Accel | None:
    """The remembered answer of an earlier probe for ``key``, if any."""
    entry = _load().get(key)
    if not isinstance(entry, dict) or entry.get("name") not in ("kvm", "tcg"):
        return None
    return Accel(str(entry["name"]), f"{entry.get('why', '')}; remembered from an earlier probe")


def remember(key: str, accel: Accel) -> None:
    """Keep a probe's answer (best effort: a read-only cache just means probing again)."""
    data = _load()
    data[key] = {"name": accel.name, "why": accel.why}
    path = cache_dir() / _CACHE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
