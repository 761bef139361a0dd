"""How host directories appear in the guest.

The whole host root is one read-only 9p export mounted with ``cache=loose``:
several times faster than no cache for Python's stat-heavy imports, but the
guest then trusts what it cached, so it never sees later changes and a file
the host rewrites mid-run can read back torn (NUL bytes where the old, longer
version ended).  Directories that may change during a run get a second mount
on top:

* live: the directory itself, uncached; always current, slower to import from.
* snapshot: a copy taken when the run starts, cached; fast and consistent,
  the state the caller asked to test.  For small trees such as a checkout.

Inside either, virtualenvs and ``.git`` (big, import-heavy, not edited by
hand) stay on the cached root mount: they are bind-mounted aside before the
overlay and moved back on top of it.
"""

from __future__ import annotations

import compileall
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Snapshots are copied at every run: refuse trees big enough to make that slow.
SNAPSHOT_LIMIT = 256 * 1024 * 1024

_OPTIONS = "ro,trans=virtio,version=9p2000.L,msize=512000"


@dataclass(frozen=True)
class Share:
    tag: str  # 9p mount tag
    source: str  # host directory QEMU exports
    target: str  # where it appears in the guest (a host path)
    cached: bool


@dataclass(frozen=True)
class Layout:
    shares: tuple[Share, ...] = ()
    kept: tuple[str, ...] = ()  # directories inside shares that stay on the root mount

    def mount_script(self) -> str:
        """Shell lines for the guest's /init, run with the host root at /host."""
        q = shlex.quote
        lines = []
        for i, path in enumerate(self.kept):
            lines.append(f"must mkdir -p /keep/{i}; must mount --bind {q('/host' + path)} /keep/{i}")
        for share in self.shares:
            options = f"{_OPTIONS},cache={'loose' if share.cached else 'none'}"
            lines.append(f"must mount -t 9p -o {options} {q(share.tag)} {q('/host' + share.target)}")
        for i, path in enumerate(self.kept):
            lines.append(f"must mount --move /keep/{i} {q('/host' + path)}")
        return "".join(f"{line}\n" for line in lines)


class SnapshotTooLarge(RuntimeError):
    pass


def _kept(directory: str, depth: int = 2) -> list[str]:
    """Subdirectories of ``directory`` to leave on the cached root mount.

    Only the top ``depth`` levels are searched: that is where virtualenvs
    (``.venv``, ``.tox/py311``) live, and a live directory may be huge.
    """
    kept: list[str] = []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return kept
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        if entry.name == ".git" or os.path.exists(os.path.join(entry.path, "pyvenv.cfg")):
            kept.append(entry.path)
        elif depth > 1:
            kept += _kept(entry.path, depth - 1)
    return kept


def _copy(source: str, dest: str, skip: list[str]) -> None:
    total = 0

    def copy(src: str, dst: str) -> None:
        nonlocal total
        total += os.lstat(src).st_size
        if total > SNAPSHOT_LIMIT:
            raise SnapshotTooLarge(f"{source} is over {SNAPSHOT_LIMIT >> 20} MiB: share it live instead")
        shutil.copy2(src, dst)

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if os.path.join(directory, n) in skip}

    shutil.copytree(source, dest, symlinks=True, ignore=ignore, copy_function=copy)
    for path in skip:  # mount points for the kept directories
        os.makedirs(os.path.join(dest, os.path.relpath(path, source)), exist_ok=True)
    # Byte-compile here, natively, what the guest would otherwise compile
    # under emulation in every process (its view is read-only, so it never
    # caches).  copy2 kept the sources' mtimes, so these .pyc files are valid.
    compileall.compile_dir(dest, quiet=2)


def plan(live: Sequence[str], snapshot: Sequence[str], workdir: Path, targets: Mapping[str, str] | None = None,
         keep: bool = True) -> Layout:
    """Copy the ``snapshot`` trees into ``workdir`` and describe all mounts. ``targets``
    puts a directory somewhere else in the guest (another root file system, where the
    host's path does not exist); ``keep=False`` leaves nothing on the root mount (the
    virtualenvs and ``.git`` inside are the host's, useless on another root)."""
    shares: list[Share] = []
    kept: list[str] = []
    seen: set[str] = set()
    for cached, directories in ((True, snapshot), (False, live)):
        for directory in directories:
            directory = os.path.realpath(directory)
            if directory == "/" or directory in seen or not os.path.isdir(directory):
                continue
            seen.add(directory)
            inside = _kept(directory)
            tag = f"share{len(shares)}"
            source = directory
            if cached:
                source = str(workdir / tag)
                _copy(directory, source, inside)
            shares.append(Share(tag, source, (targets or {}).get(directory, directory), cached))
            if keep:
                kept += inside
    return Layout(tuple(shares), tuple(kept))
