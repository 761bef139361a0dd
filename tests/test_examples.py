"""Docs are examples that run: every examples/*.py and every ```python block of the
README and of the documentation pages (docs/**/*.md) is executed here, on the active
backend. A block that should not run (a fragment of a larger program, a shell session)
is fenced without the ``python`` tag."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TIMELINE_MISSING

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
NEEDS_TIMELINE = {"fence_wait.py", "async_fences.py", "share.py"}


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs(example: Path, tmp_path: Path) -> None:
    if example.name in NEEDS_TIMELINE and TIMELINE_MISSING:
        pytest.skip(TIMELINE_MISSING)
    result = _run([str(example)], tmp_path)
    assert result.returncode == 0, f"{example.name} failed:\n{result.stdout}\n{result.stderr}"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def readme_blocks() -> list[str]:
    return python_blocks(ROOT / "README.md")


DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))
DOC_BLOCKS = [(page, index) for page in DOC_PAGES for index in range(len(python_blocks(page)))]


def test_readme_has_examples() -> None:
    assert len(readme_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_example_runs(index: int, tmp_path: Path) -> None:
    code = readme_blocks()[index]
    if "Timeline" in code and TIMELINE_MISSING:
        pytest.skip(TIMELINE_MISSING)
    result = _run(["-c", code], tmp_path)
    assert result.returncode == 0, f"README block {index} failed:\n{code}\n{result.stderr}"


def test_docs_have_examples() -> None:
    pages_with_code = {page.name for page, _index in DOC_BLOCKS}
    assert {"tutorial.md", "recipes.md"} <= pages_with_code


@pytest.mark.parametrize(("page", "index"), DOC_BLOCKS,
                         ids=[f"{page.relative_to(ROOT / 'docs')}-{index}" for page, index in DOC_BLOCKS])
def test_docs_example_runs(page: Path, index: int, tmp_path: Path) -> None:
    code = python_blocks(page)[index]
    if "Timeline" in code and TIMELINE_MISSING:
        pytest.skip(TIMELINE_MISSING)
    result = _run(["-c", code], tmp_path)
    assert result.returncode == 0, f"{page.name} block {index} failed:\n{code}\n{result.stderr}"
