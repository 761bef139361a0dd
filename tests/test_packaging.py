"""The built wheels: with a C compiler, a platform wheel carrying the compiled path
(``pydmabuf/uapi/_fastops*.so`` and ``_fdcore*.so``); without one (``CC=/bin/false``), a pure wheel that
installs anywhere and runs the pure path. Either way the C declarations cffi reads
travel with it. Host only: building needs the package index."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pydmabuf
from pydmabuf.uapi.ffi import CDEF_FILES

ROOT = Path(__file__).resolve().parent.parent


def _wheel(out: Path, env: dict[str, str]) -> Path:
    base = {k: v for k, v in os.environ.items() if k != "PYDMABUF_PURE"}  # the build reads it too
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600, env={**base, **env},
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("pydmabuf-*.whl")
    return wheel


def _installed_path(wheel: Path, target: Path) -> str:
    """Install ``wheel`` alone into ``target`` and say which path its import runs."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = "import pydmabuf; print(pydmabuf.__file__, pydmabuf.compiled)"
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("PYDMABUF_PURE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=target, capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out[0].startswith(str(target)), out  # the installed copy, not the source tree
    return out[1]


def _common(names: set[str], wheel: Path | None = None) -> None:
    missing = [f for f in CDEF_FILES if f"pydmabuf/cdefs/{f}" not in names]
    assert not missing, f"cdefs missing from the wheel: {missing}"
    assert "pydmabuf/py.typed" in names
    assert not [n for n in names if n.endswith(".c")]
    info = f"pydmabuf-{pydmabuf.__version__}.dist-info"  # the version has one source, _version.py
    assert f"{info}/licenses/LICENSE" in names, "MIT's notice must travel with every copy"
    if wheel is not None:
        metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
        assert "License-Expression: MIT" in metadata and f"Version: {pydmabuf.__version__}" in metadata
        assert "Requires-Dist: psutil" not in metadata  # cffi is the one run-time dependency


def test_wheel_without_a_compiler_is_pure(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w", {"CC": "/bin/false"})
    assert wheel.name.endswith("-py3-none-any.whl"), f"not a pure wheel: {wheel.name}"
    names = set(zipfile.ZipFile(wheel).namelist())
    _common(names, wheel)
    assert not [n for n in names if n.endswith(".so")]  # a stale build in the tree never ships
    assert _installed_path(wheel, tmp_path / "site") == "False"


def test_wheel_with_a_compiler_carries_the_compiled_path(tmp_path: Path) -> None:
    if subprocess.run(["sh", "-c", "command -v ${CC:-cc}"], capture_output=True).returncode != 0:
        pytest.skip("no C compiler here")
    wheel = _wheel(tmp_path / "w", {})
    assert "-py3-none-any" not in wheel.name, f"a compiler was present, yet the wheel is pure: {wheel.name}"
    names = set(zipfile.ZipFile(wheel).namelist())
    _common(names)
    built = sorted(n.split(".")[0] for n in names if n.endswith(".so"))
    assert built == ["pydmabuf/uapi/_fastops", "pydmabuf/uapi/_fdcore"], built
    assert _installed_path(wheel, tmp_path / "site") == "True"


def test_pure_env_builds_the_pure_wheel(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "w", {"PYDMABUF_PURE": "1"})
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
