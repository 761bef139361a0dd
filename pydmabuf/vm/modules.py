"""Kernel modules: naming, dependencies and decompression.

busybox's insmod neither resolves dependencies nor reads compressed modules,
so the host works out the load order (from each module's own ``depends=``
modinfo field, which exists even where ``depmod`` was never run) and hands
the guest plain ``.ko`` files.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

# What the guest needs: the 9p client to reach the host's root, vgem (with the
# DRM core it sits on) as the source of real, unsignaled fences and of PRIME
# exports, and vivid (a virtual V4L2 camera; videodev, videobuf2 and the rest
# come from its depends=) for VIDIOC_EXPBUF exports: dma-bufs from drivers,
# which must work with no dma-heap or udmabuf.
REQUIRED = ("netfs", "9pnet", "9pnet_virtio", "9p")
OPTIONAL = ("drm", "drm_kms_helper", "drm_shmem_helper", "vgem", "vivid")
WANTED = REQUIRED + OPTIONAL

# insmod arguments per module (busybox insmod passes them on as the kernel's
# "name=value" module parameters; arrays are comma-separated). Two vivid
# instances: the first single-planar (V4L2_BUF_TYPE_VIDEO_CAPTURE, what
# tests/test_foreign.py streams from), the second multi-planar
# (V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE), so examples/v4l2_capture.py is tested
# on both APIs. Each instance keeps vivid's other defaults (its webcam input,
# 640x360, the 75% colour bar pattern).
PARAMETERS: Mapping[str, tuple[str, ...]] = {
    "vivid": ("n_devs=2", "multiplanar=1,2"),
}


def parameters(name: str) -> tuple[str, ...]:
    """The insmod arguments for module ``name`` (none for most)."""
    return PARAMETERS.get(name, ())

_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def module_name(filename: str) -> str:
    """``9pnet_virtio.ko.xz`` -> ``9pnet_virtio``; the kernel treats - and _ alike."""
    base = filename.rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def is_module(filename: str) -> bool:
    return filename.endswith(_SUFFIXES)


def decompress(data: bytes, filename: str) -> bytes:
    if filename.endswith(".xz"):
        return lzma.decompress(data)
    if filename.endswith(".gz"):
        return gzip.decompress(data)
    if filename.endswith(".zst"):
        # No zstd in the 3.11 standard library; the CLI is common where it is used.
        if not shutil.which("zstd"):
            raise RuntimeError(f"{filename} is zstd-compressed and zstd(1) is not installed")
        return subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True).stdout
    return data


def dependencies(ko: bytes) -> list[str]:
    """Module names from the ``depends=`` entry of a .ko's .modinfo section."""
    marker = b"\0depends="
    start = ko.find(marker)
    if start < 0:
        return []
    start += len(marker)
    value = ko[start : ko.index(b"\0", start)].decode()
    return [d.replace("-", "_") for d in value.split(",") if d]


def builtin_names(text: str) -> set[str]:
    """Names listed in a ``modules.builtin`` file."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def load_order(
    wanted: Iterable[str],
    read: Callable[[str], bytes | None],
    builtin: set[str],
) -> tuple[list[str], dict[str, bytes], list[str]]:
    """Resolve ``wanted`` plus dependencies into an insmod order.

    ``read(name)`` returns the decompressed module or None if the tree has no
    such file.  Returns (order, modules by name, names neither found nor
    built in).
    """
    found: dict[str, bytes] = {}
    deps: dict[str, list[str]] = {}
    missing: list[str] = []
    pending = list(wanted)
    while pending:
        name = pending.pop(0)
        if name in found or name in builtin or name in missing:
            continue
        data = read(name)
        if data is None:
            missing.append(name)
            continue
        found[name] = data
        deps[name] = dependencies(data)
        pending.extend(deps[name])
    return _topological(list(wanted), deps), found, missing


def _topological(preferred: list[str], deps: Mapping[str, list[str]]) -> list[str]:
    # Depth-first, visiting names in the caller's order, so a module always
    # follows everything it depends on and otherwise keeps its requested slot.
    order: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in order or name not in deps or name in stack:
            return
        for dep in deps[name]:
            visit(dep, (*stack, name))
        order.append(name)

    for name in preferred + sorted(deps):
        visit(name, ())
    return order


def index_tree(root: Path) -> dict[str, Path]:
    """Map module name -> file for every module under a ``/lib/modules/<ver>`` tree."""
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*.ko*")):
        if is_module(path.name):
            index.setdefault(module_name(path.name), path)
    return index
