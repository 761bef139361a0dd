"""Download one Debian package through a private apt configuration.

On a Debian host, apt already knows a reachable Debian archive (a mirror, a
proxy or a snapshot).  We reuse that URI with another suite, but keep every
piece of apt state (lists, cache, sources) in our own directory, so the host's
package database is never touched.  Any other host (Ubuntu, Mint, ...) has its
own distribution's archive and keys there, which do not serve Debian's suites:
it gets Debian's own archive (:data:`DEBIAN_URI`) checked with Debian's keyring
(the ``debian-archive-keyring`` package, which Ubuntu has too).

``PYDMABUF_VM_DEBIAN_URI`` (a mirror, a proxy) and ``PYDMABUF_VM_DEBIAN_KEYRING``
override both choices.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .progress import Meter

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEBIAN_URI = "http://deb.debian.org/debian"
_APT_ETC = Path("/etc/apt")
_OS_RELEASE = Path("/etc/os-release")


class AptError(RuntimeError):
    """apt could not be configured or failed to fetch something."""


@dataclass(frozen=True)
class ArchiveSource:
    uri: str
    keyring: str


def host_distribution(os_release: Path = _OS_RELEASE) -> str:
    """The host's distribution ID from os-release (``debian``, ``ubuntu``, ...), or ``""``."""
    try:
        text = os_release.read_text()
    except OSError:
        return ""
    match = re.search(r"^ID=\"?([^\"\n]*)\"?$", text, re.M)
    return match.group(1).strip().lower() if match else ""


def _keyring(path: str) -> str:
    if not os.path.exists(path):
        raise AptError(
            f"no Debian archive keyring at {path}: install it (apt-get install debian-archive-keyring; "
            "the package exists on Ubuntu too) or point PYDMABUF_VM_DEBIAN_KEYRING at one"
        )
    return path


def host_archive(apt_etc: Path = _APT_ETC, os_release: Path = _OS_RELEASE) -> ArchiveSource:
    """The Debian archive to fetch from, and the keyring that checks it.

    ``PYDMABUF_VM_DEBIAN_URI`` (with ``PYDMABUF_VM_DEBIAN_KEYRING``, default
    Debian's keyring), else on a Debian host the main archive its apt is configured
    with, else Debian's own archive (:data:`DEBIAN_URI`) with Debian's keyring.
    """
    keyring = os.environ.get("PYDMABUF_VM_DEBIAN_KEYRING")
    override = os.environ.get("PYDMABUF_VM_DEBIAN_URI")
    if override:
        return ArchiveSource(override.rstrip("/"), _keyring(keyring or DEFAULT_KEYRING))
    if host_distribution(os_release) != "debian":
        # Another distribution's archive and keys would be asked for Debian's suites.
        return ArchiveSource(DEBIAN_URI, _keyring(keyring or DEFAULT_KEYRING))
    candidates: list[Path] = [apt_etc / "sources.list.d" / "debian.sources", apt_etc / "sources.list"]
    parts = apt_etc / "sources.list.d"
    if parts.is_dir():
        candidates += sorted(p for p in parts.iterdir() if p.suffix in (".sources", ".list"))
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        parse = _parse_deb822 if path.suffix == ".sources" else _parse_one_line
        for uri, suites, signed_by in parse(text):
            if _is_main_archive(uri, suites):
                return ArchiveSource(uri.rstrip("/"), keyring or signed_by or DEFAULT_KEYRING)
    raise AptError(f"no Debian archive URI found in {apt_etc}/sources.list{{,.d/*}}; set PYDMABUF_VM_DEBIAN_URI")


def _is_main_archive(uri: str, suites: list[str]) -> bool:
    # Security and updates archives only carry a subset of packages; we want
    # the archive that serves plain release suites such as "bookworm".
    return uri.startswith(("http://", "https://", "file:/")) and any("-" not in s and "/" not in s for s in suites)


def _parse_deb822(text: str) -> list[tuple[str, list[str], str | None]]:
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
            continue
        keyring = fields.get("signed-by")
        if keyring and not keyring.startswith("/"):
            keyring = None  # inline key block: fall back to the default keyring
        for uri in fields.get("uris", "").split():
            found.append((uri, fields.get("suites", "").split(), keyring))
    return found


def _parse_one_line(text: str) -> list[tuple[str, list[str], str | None]]:
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        keyring = None
        if words and words[0].startswith("["):
            opts = []
            while words:
                word = words.pop(0)
                opts.append(word)
                if word.endswith("]"):
                    break
            match = re.search(r"signed-by=([^\s\]]+)", " ".join(opts))
            keyring = match.group(1) if match else None
        if len(words) >= 2:
            found.append((words[0], [words[1]], keyring))
    return found


class PrivateApt:
    """apt-get/apt-cache bound to a sources list and state under ``root``."""

    def __init__(self, root: Path, source: ArchiveSource, suite: str) -> None:
        self.root = root
        for sub in ("lists/partial", "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("sources.list.d", "preferences.d"):
            (root / sub).mkdir(exist_ok=True)  # empty: shadows the host's
        sources = root / "sources.list"
        sources.write_text(f"deb [signed-by={source.keyring}] {source.uri} {suite} main\n")
        self._options = [
            f"-oDir::Etc::sourcelist={sources}",
            f"-oDir::Etc::sourceparts={root / 'sources.list.d'}",
            f"-oDir::State::Lists={root / 'lists'}",
            f"-oDir::Cache={root / 'cache'}",
            # Host pinning is written for the host's suites, not ours.
            f"-oDir::Etc::preferences={root / 'preferences'}",
            f"-oDir::Etc::preferencesparts={root / 'preferences.d'}",
            "-oAcquire::Languages=none",
        ]
        self._last_update = ""
        if os.geteuid() == 0:
            # apt's _apt sandbox user cannot write into a private root-owned tree.
            self._options.append("-oAPT::Sandbox::User=root")

    def _command(self, tool: str, *args: str) -> list[str]:
        return [tool, *self._options, *args]

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        cmd = self._command(tool, *args)
        try:
            done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            raise AptError(f"{tool} not found: fetching the kernel needs apt") from exc
        if done.returncode != 0:
            what = shlex.join([tool, *args])  # without our -o options: readable
            raise AptError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done

    def update(self) -> None:
        # apt-get update exits 0 even when every download failed; -q=2 keeps
        # only the warnings and errors, which we pass on if nothing was found.
        self._last_update = self._run("apt-get", "-q=2", "update").stderr

    def depends(self, package: str) -> list[str]:
        try:
            out = self._run("apt-cache", "depends", package).stdout
        except AptError as exc:
            raise AptError(f"{exc}\n(apt-get update said: {self._last_update.strip() or 'nothing'})") from None
        return re.findall(r"^\s*\|?Depends:\s*(\S+)", out, re.MULTILINE)

    def download(self, package: str, dest: Path, progress: TextIO | None = None) -> Path:
        """Download ``package``'s .deb into ``dest`` and return its path; with
        ``progress``, report bytes, rate and time left there as it arrives."""
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("*.deb"))
        if progress is None:
            self._run("apt-get", "-q", "download", package, cwd=dest)
        else:
            self._download_showing(package, dest, progress)
        new = sorted(set(dest.glob("*.deb")) - before) or sorted(dest.glob(f"{package}_*.deb"))
        if not new:
            raise AptError(f"apt-get download {package} produced no .deb in {dest}")
        return new[-1]

    def _download_showing(self, package: str, dest: Path, stream: TextIO) -> None:
        # apt's own progress only shows on a terminal, and we capture its output; it
        # writes the .deb under its final name as it arrives, and --print-uris says
        # that name and the size: watch the file grow.
        uris = self._run("apt-get", "-q", "download", "--print-uris", package, cwd=dest).stdout.split()
        name, total = (uris[1], int(uris[2])) if len(uris) >= 3 and uris[2].isdigit() else (None, None)
        cmd = self._command("apt-get", "-q", "download", package)
        meter = Meter(stream, f"pydmabuf.vm: {package}", total)
        with tempfile.TemporaryFile("w+") as errors:
            proc = subprocess.Popen(cmd, cwd=dest, stdout=subprocess.DEVNULL, stderr=errors, text=True)
            try:
                while True:
                    try:
                        proc.wait(timeout=0.5)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    with contextlib.suppress(OSError):
                        meter.update((dest / name).stat().st_size if name else 0)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if proc.returncode != 0:
                errors.seek(0)
                raise AptError(f"apt-get download {package} failed ({proc.returncode}): {errors.read()[-2000:]}")
        with contextlib.suppress(OSError):
            meter.update((dest / name).stat().st_size if name else 0)
        meter.finish()
