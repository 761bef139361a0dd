"""Download one Debian package through a private apt configuration.

The host's apt already knows a reachable Debian archive (a mirror, a proxy or
a snapshot).  We reuse that URI with another suite, but keep every piece of
apt state (lists, cache, sources) in our own directory, so the host's package
database is never touched and no mirror host is hard-coded here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_APT_ETC = Path("/etc/apt")


class AptError(RuntimeError):
    """apt could not be configured or failed to fetch something."""


@dataclass(frozen=True)
class ArchiveSource:
    uri: str
    keyring: str


def host_archive() -> ArchiveSource:
    """The main Debian archive the host's apt is configured with.

    ``PYDMABUF_VM_DEBIAN_URI`` overrides it (with the default keyring).
    """
    override = os.environ.get("PYDMABUF_VM_DEBIAN_URI")
    if override:
        return ArchiveSource(override, DEFAULT_KEYRING)
    candidates: list[Path] = [_APT_ETC / "sources.list.d" / "debian.sources", _APT_ETC / "sources.list"]
    parts = _APT_ETC / "sources.list.d"
    if parts.is_dir():
        candidates += sorted(p for p in parts.iterdir() if p.suffix in (".sources", ".list"))
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        parse = _parse_deb822 if path.suffix == ".sources" else _parse_one_line
        for uri, suites, keyring in parse(text):
            if _is_main_archive(uri, suites):
                return ArchiveSource(uri.rstrip("/"), keyring or DEFAULT_KEYRING)
    raise AptError("no Debian archive URI found in /etc/apt/sources.list{,.d/*}; set PYDMABUF_VM_DEBIAN_URI")


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

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [tool, *self._options, *args]
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

    def download(self, package: str, dest: Path) -> Path:
        """Download ``package``'s .deb into ``dest`` and return its path."""
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("*.deb"))
        self._run("apt-get", "-q", "download", package, cwd=dest)
        new = sorted(set(dest.glob("*.deb")) - before) or sorted(dest.glob(f"{package}_*.deb"))
        if not new:
            raise AptError(f"apt-get download {package} produced no .deb in {dest}")
        return new[-1]
