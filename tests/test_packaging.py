"""The built wheel is pure Python (no C compiler needed to install) and carries the
C declarations cffi reads. Host only: building needs the package index."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from pydmabuf.uapi.ffi import CDEF_FILES

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_is_pure_and_contains_cdefs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("pydmabuf-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl"), f"not a pure wheel: {wheel.name}"
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in CDEF_FILES if f"pydmabuf/cdefs/{f}" not in names]
    assert not missing, f"cdefs missing from the wheel: {missing}"
    assert "pydmabuf/py.typed" in names
    assert not [n for n in names if n.endswith((".so", ".c"))]
