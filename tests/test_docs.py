"""The documentation builds, warnings as errors, and the README is fit for a package index.

``docs/`` is a Sphinx site (MyST Markdown pages, autodoc for the API reference). The
build runs here as CI runs it: ``python -m sphinx -W --keep-going -b html docs OUT``,
so a docstring that is not valid reStructuredText, a broken cross-reference or a link
to a heading that does not exist fails the suite. Without Sphinx the build is skipped
with the command that installs it, except under ``CI=true``, where it fails: CI never
silently skips. (The pages' ```python blocks are run by test_examples.py.)
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pydmabuf

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
IN_VM = bool(os.environ.get("PYDMABUF_IN_VM"))
INSTALL = "pip install -e '.[docs]'"

# Every module the API reference documents: one page each under docs/api/.
API_MODULES = [
    "pydmabuf", "pydmabuf.buffer", "pydmabuf.heap", "pydmabuf.udmabuf", "pydmabuf.allocator", "pydmabuf.pool",
    "pydmabuf.info", "pydmabuf.syncfile", "pydmabuf.timeline", "pydmabuf.waiting", "pydmabuf.aio",
    "pydmabuf.share", "pydmabuf.credentials", "pydmabuf.channel", "pydmabuf.gstreamer", "pydmabuf.formats",
    "pydmabuf.frame", "pydmabuf.interop", "pydmabuf.dlpack", "pydmabuf.cuda", "pydmabuf.errors",
    "pydmabuf.accounting", "pydmabuf.vm",
]


def _missing_docs_tools() -> str | None:
    missing = [name for name in ("sphinx", "myst_parser") if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: {INSTALL} to build the documentation"
    return None


@pytest.mark.skipif(IN_VM, reason="the documentation is built on the host, not in the real-kernel guest")
def test_docs_build_without_warnings(tmp_path: Path) -> None:
    reason = _missing_docs_tools()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI builds the documentation: {reason}")
        pytest.skip(reason)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d",
         str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    took = time.monotonic() - start
    assert result.returncode == 0, f"sphinx -W failed:\n{result.stdout}\n{result.stderr}"
    html = tmp_path / "html"
    for page in ("index", "tutorial", "recipes", "security", "backends", "real-kernel-tier", "cli",
                 "benchmarks", "layout", "api/index", "api/pydmabuf"):
        assert (html / f"{page}.html").is_file(), page
    api = (html / "api" / "pydmabuf.buffer.html").read_text()
    assert 'id="pydmabuf.buffer.Buffer.cpu_access"' in api, "autodoc documented Buffer's methods"
    print(f"docs built in {took:.1f} s")


def test_api_reference_covers_every_module() -> None:
    pages = {p.stem for p in (DOCS / "api").glob("*.md")}
    assert {m for m in API_MODULES} <= pages, sorted(set(API_MODULES) - pages)
    toc = (DOCS / "api" / "index.md").read_text()
    for module in API_MODULES:
        assert f"\n{module}\n" in toc, f"{module} is not in the API reference's table of contents"


def test_api_reference_lists_every_public_name() -> None:
    """The top-level page names each of ``pydmabuf.__all__`` (documented once, where
    it is defined, and cross-referenced from there)."""
    page = (DOCS / "api" / "pydmabuf.md").read_text()
    listed = set(re.findall(r"`pydmabuf\.(\w+)`", page)) | set(re.findall(r"py:data:: (\w+)", page))
    listed |= {m.group(1) for m in re.finditer(r"autofunction:: pydmabuf\.(\w+)", page)}
    assert sorted(set(pydmabuf.__all__) - listed) == []


def _links(markdown: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)  # not inside code blocks
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_readme_links_work_on_a_package_index() -> None:
    """The README is the package's long description: no in-page anchors (an index page
    has none of the headings they pointed to), and every relative link names a file or
    directory of the repository (which the sdist carries too)."""
    for link in _links(README.read_text()):
        assert not link.startswith("#"), f"in-page anchor {link!r} in README.md"
        if re.match(r"[a-z]+:", link):
            continue
        target = link.split("#", 1)[0]
        assert (ROOT / target).exists(), f"README.md links to {link!r}, which does not exist"


def test_readme_keeps_the_two_commands() -> None:
    text = README.read_text()
    assert "pip install pydmabuf" in text
    assert "python -m pip install . && python -m pydmabuf demo" in text
    assert "python -m pip install -e '.[test,docs]' && python -m pytest" in text
    assert "pydmabuf.backend" in text


def test_readme_is_short() -> None:
    """The depth lives in docs/: the README says what, how to install, three snippets."""
    assert len(README.read_text().encode()) < 12_000
