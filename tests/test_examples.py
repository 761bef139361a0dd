"""Docs are examples that run: every examples/*.py and every ```python block of the
README is executed here, on the active backend."""

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


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_examples() -> None:
    assert len(readme_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_example_runs(index: int, tmp_path: Path) -> None:
    code = readme_blocks()[index]
    if "Timeline" in code and TIMELINE_MISSING:
        pytest.skip(TIMELINE_MISSING)
    result = _run(["-c", code], tmp_path)
    assert result.returncode == 0, f"README block {index} failed:\n{code}\n{result.stderr}"
