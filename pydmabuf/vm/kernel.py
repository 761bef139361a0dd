"""The guest kernel: a user-supplied one, or Debian trixie's, fetched and cached.

Debian trixie's ``linux-image-amd64`` (6.12) is the default because it builds
udmabuf, the system dma-heap and sync_file in, and vgem and vivid as modules;
the host's own kernel has none of these. Only the modules the guest loads are
extracted from the package; an entry extracted before a module joined the list
is extracted again (see ``_with_wanted_modules``).
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import debian, modules
from .cache import cache_dir

SUITE = os.environ.get("PYDMABUF_VM_DEBIAN_SUITE", "trixie")
METAPACKAGE = "linux-image-amd64"
_ORDER_FILE = "modules.order"  # written last: its presence marks a complete cache entry
_WANTED_FILE = "modules.wanted"  # the names this entry was extracted for (modules.WANTED then)


class KernelError(RuntimeError):
    """No usable guest kernel could be found or fetched."""


@dataclass(frozen=True)
class Kernel:
    release: str  # the guest's ``uname -r``
    vmlinuz: Path
    modules: tuple[Path, ...]  # in insmod order; may be compressed
    origin: str  # human-readable: where this kernel came from

    def __str__(self) -> str:
        return f"{self.release} ({self.origin})"


def ensure_kernel(
    kernel: str | os.PathLike[str] | None = None,
    modules_dir: str | os.PathLike[str] | None = None,
    *,
    refresh: bool = False,
) -> Kernel:
    """Return the kernel to boot, downloading Debian's if nothing else is set.

    Precedence: arguments, then ``PYDMABUF_VM_KERNEL``/``PYDMABUF_VM_MODULES``,
    then the newest cached Debian kernel, then a fresh download.  ``refresh``
    asks apt whether a newer Debian kernel exists even when one is cached.
    """
    kernel = kernel or os.environ.get("PYDMABUF_VM_KERNEL") or None
    modules_dir = modules_dir or os.environ.get("PYDMABUF_VM_MODULES") or None
    if kernel:
        return user_kernel(Path(kernel), Path(modules_dir) if modules_dir else None)
    if modules_dir:
        raise KernelError("PYDMABUF_VM_MODULES (--modules) needs PYDMABUF_VM_KERNEL (--kernel) too")
    if not refresh:
        cached = cached_kernel()
        if cached is not None:
            return _with_wanted_modules(cached)
    return fetch_debian_kernel()


def _with_wanted_modules(cached: Kernel) -> Kernel:
    """``cached``, or, if it was extracted before some module joined modules.WANTED,
    the kernel extracted again (the .deb is not kept: it is downloaded once more).
    Offline, the cached kernel is used as it is: what needs the new module skips."""
    lacking = _unextracted(cached.vmlinuz.parent)
    if not lacking:
        return cached
    print(f"pydmabuf.vm: the cached kernel was extracted without {', '.join(lacking)}: fetching it again",
          file=sys.stderr)
    try:
        return fetch_debian_kernel()
    except KernelError as exc:
        print(f"pydmabuf.vm: note: {exc}; booting the cached kernel without {', '.join(lacking)}",
              file=sys.stderr)
        return cached


def _unextracted(entry: Path) -> list[str]:
    """Modules wanted now that a cache entry was extracted without looking for."""
    recorded = entry / _WANTED_FILE
    # Entries from before the record existed: the modules they load were all that was looked for.
    looked_for = set((recorded if recorded.is_file() else entry / _ORDER_FILE).read_text().split())
    return [name for name in modules.WANTED if name not in looked_for]


def kernel_release(vmlinuz: Path) -> str | None:
    """The release string embedded in an x86 bzImage header, if there is one."""
    try:
        with vmlinuz.open("rb") as f:
            header = f.read(0x210)
            if header[0x202:0x206] != b"HdrS":
                return None
            (offset,) = struct.unpack_from("<H", header, 0x20E)
            f.seek(offset + 0x200)
            raw = f.read(256)
    except OSError:
        return None
    text = raw.split(b"\0", 1)[0].decode(errors="replace")
    return text.split()[0] if text else None


def user_kernel(vmlinuz: Path, modules_dir: Path | None) -> Kernel:
    if not vmlinuz.is_file():
        raise KernelError(f"kernel image {vmlinuz} does not exist")
    release = kernel_release(vmlinuz)
    if modules_dir is None and release and Path("/lib/modules", release).is_dir():
        modules_dir = Path("/lib/modules", release)
    if modules_dir is None:
        # Nothing to load: fine if 9p is built in, and the guest says so if not.
        return Kernel(release or "unknown", vmlinuz, (), f"{vmlinuz}, no modules")
    if not modules_dir.is_dir():
        raise KernelError(f"module directory {modules_dir} does not exist")
    index = modules.index_tree(modules_dir)
    builtin_file = modules_dir / "modules.builtin"
    builtin = modules.builtin_names(builtin_file.read_text()) if builtin_file.exists() else set()

    def read(name: str) -> bytes | None:
        path = index.get(name)
        return modules.decompress(path.read_bytes(), path.name) if path else None

    order, _, missing = modules.load_order(modules.WANTED, read, builtin)
    _check_missing(missing, know_builtins=builtin_file.exists(), where=str(modules_dir))
    return Kernel(
        release or modules_dir.name,
        vmlinuz,
        tuple(index[name] for name in order),
        f"{vmlinuz} with modules from {modules_dir}",
    )


def _check_missing(missing: list[str], *, know_builtins: bool, where: str) -> None:
    # Without modules.builtin a missing name may simply be built in; the guest
    # then reports a failed 9p mount loudly if it was not.
    required = [m for m in missing if m in modules.REQUIRED]
    if required and know_builtins:
        raise KernelError(f"modules {', '.join(required)} are neither in {where} nor built in")
    optional = [m for m in missing if m not in modules.REQUIRED]
    if optional:
        print(f"pydmabuf.vm: note: no module {', '.join(optional)} in {where}", file=sys.stderr)


def _kernels_dir() -> Path:
    return cache_dir() / "kernel"


def cached_kernel(release: str | None = None) -> Kernel | None:
    """A complete cached Debian kernel: ``release``, or else the newest fetched."""
    root = _kernels_dir()
    if release is not None:
        entries = [root / release]
    else:
        entries = sorted(root.glob("*/" + _ORDER_FILE), key=lambda p: p.stat().st_mtime, reverse=True)
        entries = [p.parent for p in entries]
    for entry in entries:
        order_file = entry / _ORDER_FILE
        if not order_file.is_file():
            continue
        names = order_file.read_text().split()
        return Kernel(
            entry.name,
            entry / "vmlinuz",
            tuple(entry / "modules" / f"{name}.ko" for name in names),
            f"Debian {SUITE} {METAPACKAGE}, cached in {entry}",
        )
    return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two test runs starting at once must not download into the same place.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch_debian_kernel() -> Kernel:
    """Ask apt for the current Debian kernel and cache it unless already cached."""
    try:
        return _fetch_debian_kernel()
    except debian.AptError as exc:
        raise KernelError(f"could not fetch Debian {SUITE}'s kernel: {exc}") from exc


def _fetch_debian_kernel() -> Kernel:
    with _locked(_kernels_dir() / ".lock"):
        apt = debian.PrivateApt(cache_dir() / "apt" / SUITE, debian.host_archive(), SUITE)
        print(f"pydmabuf.vm: asking apt for Debian {SUITE} {METAPACKAGE} ...", file=sys.stderr)
        apt.update()
        images = [d for d in apt.depends(METAPACKAGE) if d.startswith("linux-image-")]
        if not images:
            raise KernelError(f"apt found no linux-image dependency of {METAPACKAGE} in {SUITE}")
        package = images[0]
        release = package.removeprefix("linux-image-")
        cached = cached_kernel(release)
        if cached is not None and not _unextracted(_kernels_dir() / release):
            return cached
        print(f"pydmabuf.vm: downloading {package} (about 100 MB) ...", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=_kernels_dir(), prefix=".fetch-") as tmp:
            deb = apt.download(package, Path(tmp), progress=sys.stderr)
            staging = Path(tmp) / release
            _unpack(deb, staging)
            target = _kernels_dir() / release
            if target.exists():
                # An incomplete attempt or an outdated extraction: moved aside (and
                # deleted with tmp) rather than deleted in place, so that a run
                # starting meanwhile finds the old entry or the new one, hardly neither.
                target.rename(Path(tmp) / "replaced")
            staging.rename(target)
        result = cached_kernel(release)
        assert result is not None
        print(f"pydmabuf.vm: cached kernel {release} in {target}", file=sys.stderr)
        return result


@dataclass
class _DebContents:
    vmlinuz: bytes | None = None
    builtin: str | None = None
    modules: dict[str, bytes] | None = None  # name -> decompressed module
    module_names: set[str] | None = None  # every module the package ships


def _read_deb(deb: Path, wanted: set[str]) -> _DebContents:
    """Stream the package's data archive once, keeping only what we need."""
    found = _DebContents(modules={}, module_names=set())
    assert found.modules is not None and found.module_names is not None
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name
                if name.startswith("./boot/vmlinuz-"):
                    found.vmlinuz = _read_member(tar, member)
                elif "/lib/modules/" in name and name.endswith("/modules.builtin"):
                    found.builtin = _read_member(tar, member).decode()
                elif "/lib/modules/" in name and modules.is_module(name):
                    module = modules.module_name(name)
                    found.module_names.add(module)
                    if module in wanted:
                        found.modules[module] = modules.decompress(_read_member(tar, member), name)
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise KernelError(f"dpkg-deb --fsys-tarfile {deb} failed ({proc.returncode})")
    return found


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    assert f is not None
    return f.read()


def _unpack(deb: Path, dest: Path) -> None:
    wanted = set(modules.WANTED)
    while True:
        contents = _read_deb(deb, wanted)
        assert contents.modules is not None and contents.module_names is not None
        if contents.vmlinuz is None:
            raise KernelError(f"{deb.name} contains no /boot/vmlinuz-*")
        builtin = modules.builtin_names(contents.builtin or "")
        order, found, missing = modules.load_order(modules.WANTED, contents.modules.get, builtin)
        # A dependency we did not know to keep on this pass: read the package again.
        more = {m for m in missing if m in contents.module_names} - wanted
        if not more:
            break
        wanted |= more
    _check_missing(missing, know_builtins=contents.builtin is not None, where=deb.name)
    (dest / "modules").mkdir(parents=True)
    (dest / "vmlinuz").write_bytes(contents.vmlinuz)
    for name in order:
        (dest / "modules" / f"{name}.ko").write_bytes(found[name])
    (dest / _WANTED_FILE).write_text("\n".join(modules.WANTED) + "\n")
    (dest / _ORDER_FILE).write_text("\n".join(order) + "\n")
