"""A consumer userland for the guest: Debian trixie with Mesa and GStreamer.

The real-kernel tier normally boots over this machine's root, whose Mesa and
GStreamer may be too old to consume dma-bufs the way current ones do (GStreamer's
``unixfdsink``/``unixfdsrc`` need 1.24; explicit-modifier imports need a recent
Mesa). ``ensure_root()`` builds, once, a Debian root file system with ``mmdebstrap``
from the host's own Debian archive (the one the kernel comes from): Mesa EGL/GLES
and Vulkan (llvmpipe, lavapipe), GStreamer base/good/bad with PyGObject, numpy,
pytest, cffi. It is cached under ``~/.cache/pydmabuf/consumers`` and rebuilt only
when the package list (or the suite) changes.

``pydmabuf.vm.run(..., consumers=True)`` boots the same kernel with that root
instead of the host's. The checkout the command runs from appears at ``/src`` (a
snapshot), and ``PYTHONPATH=/src`` makes ``import pydmabuf`` the checkout's, on the
root's own Python (pure path: a compiled module built for the host's Python does not
load there). ``python -m pydmabuf.vm run --consumers -- CMD`` does the same from the
command line, for anyone's own code.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import debian
from .cache import cache_dir
from .kernel import SUITE

# What the consumers need; their dependencies come with them.
PACKAGES = (
    "python3", "python3-venv", "python3-cffi", "python3-numpy", "python3-pytest", "python3-psutil",
    "python3-gi", "gir1.2-gstreamer-1.0", "gir1.2-gst-plugins-base-1.0", "gir1.2-gst-plugins-bad-1.0",
    "gstreamer1.0-tools", "gstreamer1.0-plugins-base", "gstreamer1.0-plugins-good", "gstreamer1.0-plugins-bad",
    "libegl1", "libegl-mesa0", "libgles2", "libgl1-mesa-dri", "mesa-vulkan-drivers", "libvulkan1",
)  # fmt: skip
# From PyPI, into a venv in the root (/opt/pydmabuf-venv, with the system's packages
# visible): what Debian does not package. Downloaded by this machine's pip, installed
# offline in the root.
PYPI = ("vulkan==1.3.275.1",)  # the cffi binding of libvulkan, for examples/vulkan_import.py
VENV = "/opt/pydmabuf-venv"
# Packages whose versions the tier reports.
REPORTED = ("libegl-mesa0", "mesa-vulkan-drivers", "gstreamer1.0-plugins-bad", "python3")
MOUNT_POINT = "/src"  # where the checkout appears in the guest
# GStreamer's plugin registry, made once at build time: a scan under emulation takes
# long, and the guest's home is a fresh tmpfs at every boot.
GST_REGISTRY = "/var/cache/pydmabuf-gst-registry.bin"
# What every command in the consumer root gets (run() adds it; the caller's env wins).
ENVIRONMENT = {
    "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",  # python3: the venv's
    "GST_REGISTRY_1_0": GST_REGISTRY,
    "GST_REGISTRY_UPDATE": "no",
    "LIBGL_ALWAYS_SOFTWARE": "1",  # llvmpipe: Mesa's kms_swrast on vgem's node crashes when sampling
}
BUILD_STEPS = 3  # bump when ensure_root() builds differently: the cache key changes
MARKER = "pydmabuf-consumers.json"  # written last: its presence means the root is complete


class ConsumerRootError(RuntimeError):
    """The consumer root cannot be built here (no mmdebstrap, no archive, not root)."""


def root_dir() -> Path:
    """Where the root for this suite and package list lives (it may not exist yet)."""
    key = hashlib.sha256(" ".join((SUITE, str(BUILD_STEPS), *PACKAGES, *PYPI)).encode()).hexdigest()[:12]
    return cache_dir() / "consumers" / f"{SUITE}-{key}"


def cached_root() -> Path | None:
    """The built root, or None."""
    root = root_dir()
    return root if (root / MARKER).is_file() else None


def versions(root: Path) -> dict[str, str]:
    """The reported packages' versions in ``root`` (package -> version)."""
    data: dict[str, str] = json.loads((root / MARKER).read_text())["versions"]
    return data


def missing_prerequisite() -> str | None:
    """What the host lacks to build the root, or None."""
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (sudo apt-get install --no-install-recommends mmdebstrap)"
    if os.geteuid() != 0:
        return "building the consumer root needs root (mmdebstrap --mode=root)"
    return None


def _install_pypi(root: Path) -> None:
    """PYPI into a venv in ``root``: downloaded here (this machine's pip and index),
    installed in the root with no network."""
    wheels = root / "tmp" / "pydmabuf-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(wheels), *PYPI],
        ["chroot", str(root), "python3", "-m", "venv", "--system-site-packages", VENV],
        ["chroot", str(root), "sh", "-c", f"{VENV}/bin/pip install -q --no-index --no-deps /tmp/pydmabuf-wheels/*.whl"],
    ]
    try:
        for argv in steps:
            result = subprocess.run(argv, capture_output=True, text=True)
            if result.returncode != 0:
                output = (result.stdout + result.stderr).strip()[-800:]
                raise ConsumerRootError(f"{' '.join(argv[:6])} failed: {output}")
    finally:
        shutil.rmtree(wheels, ignore_errors=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs starting at once build once
        yield


def ensure_root() -> Path:
    """The consumer root, built first if it is not cached (about a minute with a
    fast archive: ~300 MB of packages, ~1 GB unpacked)."""
    found = cached_root()
    if found is not None:
        return found
    problem = missing_prerequisite()
    if problem is not None:
        raise ConsumerRootError(problem)
    root = root_dir()
    with _locked(root.parent / ".lock"):
        if (root / MARKER).is_file():
            return root
        archive = debian.host_archive()
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        print(f"pydmabuf.vm: building the consumer root (Debian {SUITE}, Mesa, GStreamer) from {archive.uri} ...",
              file=sys.stderr, flush=True)
        argv = ["mmdebstrap", "--mode=root", "--variant=essential", "--format=directory",
                f"--keyring={archive.keyring}", f"--include={','.join(PACKAGES)}",
                SUITE, str(partial), archive.uri]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise ConsumerRootError(f"mmdebstrap failed ({result.returncode}):\n{tail}")
        (partial / MOUNT_POINT.lstrip("/")).mkdir(exist_ok=True)
        _install_pypi(partial)
        registry = subprocess.run(["chroot", str(partial), "env", f"GST_REGISTRY_1_0={GST_REGISTRY}",
                                   "gst-inspect-1.0", "--version"], capture_output=True, text=True)
        if registry.returncode != 0 or not (partial / GST_REGISTRY.lstrip("/")).is_file():
            shutil.rmtree(partial, ignore_errors=True)
            raise ConsumerRootError(f"GStreamer's plugin registry was not made: {registry.stderr.strip()[-500:]}")
        found_versions = {}
        for package in REPORTED:
            query = subprocess.run(["dpkg-query", f"--admindir={partial}/var/lib/dpkg", "-W", "-f=${Version}",
                                    package], capture_output=True, text=True)
            found_versions[package] = query.stdout.strip() or "?"
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
        (root / MARKER).write_text(json.dumps({"suite": SUITE, "packages": PACKAGES, "versions": found_versions}))
    return root
