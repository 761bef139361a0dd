"""The generated format table and the interop constants against the C headers installed
on this machine, through a C compiler (as tests/test_abi.py does for the ioctls).

Every fourcc, named modifier and vendor of pydmabuf/uapi/drm_formats.py must equal the
installed drm_fourcc.h's value. The table comes from a newer kernel than most installed
libdrm copies, so names the installed header lacks are guarded with #ifdef, counted, and
reported by a skip; every name the installed header has must be in the table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import load_script

from pydmabuf import interop
from pydmabuf.uapi import drm_formats as _drm_formats

ROOT = Path(__file__).resolve().parent.parent
HEADER_DIRS = [d for d in ("/usr/include/libdrm", "/usr/include/drm") if Path(d, "drm_fourcc.h").is_file()]
EGL_HEADER = Path("/usr/include/EGL/eglext.h")


def _compiler() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        if os.environ.get("CI"):
            pytest.fail("no C compiler: the format table must be checked against drm_fourcc.h in CI")
        pytest.skip("no C compiler (install gcc) to check the format table against drm_fourcc.h")
    if not HEADER_DIRS:
        if os.environ.get("CI"):
            pytest.fail("no drm_fourcc.h: CI installs libdrm-dev")
        pytest.skip("no drm_fourcc.h (install libdrm-dev)")
    return cc


def _facts() -> list[tuple[str, str, int]]:
    """(key, C expression, value in the table)."""
    facts = [(f"format.{name}", f"DRM_FORMAT_{name}", code) for name, code, *_ in _drm_formats.FORMATS]
    facts += [(f"modifier.{name}", name, value) for name, value in _drm_formats.MODIFIERS]
    facts += [(f"vendor.{name}", f"DRM_FORMAT_MOD_VENDOR_{name}", value) for name, value in _drm_formats.VENDORS]
    return facts


def _interop_facts() -> list[tuple[str, str, int]]:
    facts = [("drm_mode.DRM_MODE_FB_MODIFIERS", "DRM_MODE_FB_MODIFIERS", interop.DRM_MODE_FB_MODIFIERS)]
    if EGL_HEADER.is_file():
        names = {"EGL_NONE": interop.EGL_NONE, "EGL_WIDTH": interop.EGL_WIDTH, "EGL_HEIGHT": interop.EGL_HEIGHT,
                 "EGL_LINUX_DMA_BUF_EXT": interop.EGL_LINUX_DMA_BUF_EXT,
                 "EGL_LINUX_DRM_FOURCC_EXT": interop.EGL_LINUX_DRM_FOURCC_EXT}
        for plane in range(4):
            names[f"EGL_DMA_BUF_PLANE{plane}_FD_EXT"] = interop.EGL_DMA_BUF_PLANE_FD_EXT[plane]
            names[f"EGL_DMA_BUF_PLANE{plane}_OFFSET_EXT"] = interop.EGL_DMA_BUF_PLANE_OFFSET_EXT[plane]
            names[f"EGL_DMA_BUF_PLANE{plane}_PITCH_EXT"] = interop.EGL_DMA_BUF_PLANE_PITCH_EXT[plane]
            names[f"EGL_DMA_BUF_PLANE{plane}_MODIFIER_LO_EXT"] = interop.EGL_DMA_BUF_PLANE_MODIFIER_LO_EXT[plane]
            names[f"EGL_DMA_BUF_PLANE{plane}_MODIFIER_HI_EXT"] = interop.EGL_DMA_BUF_PLANE_MODIFIER_HI_EXT[plane]
        facts += [(f"egl.{name}", name, value) for name, value in names.items()]
    return facts


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    cc = _compiler()
    lines = ["#include <stdio.h>", "#include <stdint.h>", "#include <drm_fourcc.h>", "#include <drm_mode.h>"]
    if EGL_HEADER.is_file():
        lines += ["#include <EGL/egl.h>", "#include <EGL/eglext.h>"]
    lines.append("int main(void) {")
    for key, expr, _ in _facts() + _interop_facts():
        # Guarded: an older header lacks newer names; what it has must match.
        lines += [f"#ifdef {expr}", f'    printf("{key} %llu\\n", (unsigned long long)({expr}));', "#endif"]
    lines += ["    return 0;", "}"]
    work = tmp_path_factory.mktemp("drm_fourcc")
    (work / "check.c").write_text("\n".join(lines) + "\n")
    flags = [f"-I{d}" for d in HEADER_DIRS]
    subprocess.run([cc, "-Wall", "-Werror", *flags, "-o", str(work / "check"), str(work / "check.c")],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(work / "check")], check=True, capture_output=True, text=True).stdout
    return {key: int(value) for key, value in (line.split() for line in out.splitlines())}


def test_every_code_and_modifier_matches_the_installed_header(compiled: dict[str, int]) -> None:
    facts = _facts()
    wrong = [(key, value, compiled[key]) for key, _, value in facts if key in compiled and compiled[key] != value]
    assert not wrong, f"table disagrees with drm_fourcc.h (key, table, header): {wrong}"
    checked = sum(key in compiled for key, _, _ in facts)
    assert checked >= 150, f"only {checked} of {len(facts)} checked"  # 162 of 181 with libdrm 2.4.114


def test_interop_constants_match_headers(compiled: dict[str, int]) -> None:
    facts = _interop_facts()
    wrong = [(key, value, compiled.get(key)) for key, _, value in facts if compiled.get(key) != value]
    assert not wrong, f"interop constants disagree with the headers (key, ours, header): {wrong}"


def test_table_covers_the_installed_header() -> None:
    if not HEADER_DIRS:
        pytest.skip("no drm_fourcc.h (install libdrm-dev)")
    gen = load_script(ROOT / "tools" / "gen_drm_formats.py", "gen_drm_formats")
    macros = gen.parse_defines(Path(HEADER_DIRS[0], "drm_fourcc.h").read_text())
    formats = {name[len("DRM_FORMAT_"):] for name in macros
               if name.startswith("DRM_FORMAT_") and gen.uses(name, "fourcc_code", macros)}
    modifiers = {name for name in macros if name.startswith(("DRM_FORMAT_MOD_", "I915_FORMAT_MOD_"))
                 and gen.constant(name, macros) is not None and gen.uses(name, "fourcc_mod_code", macros)}
    assert formats - {name for name, *_ in _drm_formats.FORMATS} == set()
    assert modifiers - {name for name, _ in _drm_formats.MODIFIERS} == set()


def test_names_the_installed_header_lacks(compiled: dict[str, int]) -> None:
    missing = [expr for key, expr, _ in _facts() if key not in compiled]
    if missing:
        pytest.skip(f"the installed drm_fourcc.h lacks {len(missing)} of {len(_facts())} names of the table "
                    f"(Linux {_drm_formats.KERNEL_VERSION}), not checked by C: {', '.join(missing)}")
