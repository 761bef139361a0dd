"""ABI conformance: every struct size, field offset and ioctl number cffi uses must
match what a C compiler sees in the kernel headers installed on this machine.

cffi's ABI mode trusts our declarations blindly (a wrong layout corrupts memory
silently), so this test compiles C. Items the host headers lack (the 6.1 headers
have no SYNC_IOC_SET_DEADLINE; sw_sync has no uapi header; vgem_drm.h ships with
the kernel, not libdrm) are checked against the values in docs/uapi.md, which were
compiled against the 6.12 headers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_script

from pydmabuf.uapi import ffi as _ffi
from pydmabuf.uapi import v4l2 as _v4l2
from pydmabuf.uapi.ffi import ffi

ROOT = Path(__file__).resolve().parent.parent

# The module holding each header's declarations and ioctl numbers: the V4L2 ones are
# in pydmabuf.uapi.v4l2 (loaded only on demand), the rest in pydmabuf.uapi.ffi.
def _module(header: str) -> ModuleType:
    return _v4l2 if header == "linux/videodev2.h" else _ffi


# header -> (structs, ioctl macros) it must define
HEADERS: dict[str, tuple[list[str], list[str]]] = {
    "linux/dma-buf.h": (
        ["dma_buf_sync", "dma_buf_export_sync_file", "dma_buf_import_sync_file"],
        ["DMA_BUF_IOCTL_SYNC", "DMA_BUF_SET_NAME_B", "DMA_BUF_IOCTL_EXPORT_SYNC_FILE",
         "DMA_BUF_IOCTL_IMPORT_SYNC_FILE"],
    ),
    "linux/dma-heap.h": (["dma_heap_allocation_data"], ["DMA_HEAP_IOCTL_ALLOC"]),
    "linux/udmabuf.h": (
        ["udmabuf_create", "udmabuf_create_item", "udmabuf_create_list"],
        ["UDMABUF_CREATE", "UDMABUF_CREATE_LIST"],
    ),
    "linux/sync_file.h": (
        ["sync_merge_data", "sync_fence_info", "sync_file_info"],
        ["SYNC_IOC_MERGE", "SYNC_IOC_FILE_INFO"],
    ),
    "drm.h": (
        ["drm_version", "drm_gem_close", "drm_prime_handle", "drm_mode_create_dumb"],
        ["DRM_IOCTL_VERSION", "DRM_IOCTL_GEM_CLOSE", "DRM_IOCTL_PRIME_HANDLE_TO_FD",
         "DRM_IOCTL_MODE_CREATE_DUMB"],
    ),
    "linux/videodev2.h": (
        ["timeval", "v4l2_capability", "v4l2_fmtdesc", "v4l2_rect", "v4l2_window", "v4l2_pix_format",
         "v4l2_plane_pix_format", "v4l2_pix_format_mplane", "v4l2_format", "v4l2_requestbuffers",
         "v4l2_timecode", "v4l2_plane", "v4l2_buffer", "v4l2_exportbuffer"],
        ["VIDIOC_QUERYCAP", "VIDIOC_ENUM_FMT", "VIDIOC_G_FMT", "VIDIOC_S_FMT", "VIDIOC_TRY_FMT",
         "VIDIOC_REQBUFS", "VIDIOC_QUERYBUF", "VIDIOC_QBUF", "VIDIOC_DQBUF", "VIDIOC_EXPBUF",
         "VIDIOC_STREAMON", "VIDIOC_STREAMOFF"],
    ),
}
CONSTANTS = {
    "linux/dma-buf.h": ["DMA_BUF_SYNC_READ", "DMA_BUF_SYNC_WRITE", "DMA_BUF_SYNC_RW", "DMA_BUF_SYNC_START",
                        "DMA_BUF_SYNC_END", "DMA_BUF_SYNC_VALID_FLAGS_MASK", "DMA_BUF_NAME_LEN"],
    "linux/dma-heap.h": ["DMA_HEAP_VALID_FD_FLAGS", "DMA_HEAP_VALID_HEAP_FLAGS"],
    "linux/udmabuf.h": ["UDMABUF_FLAGS_CLOEXEC"],
    "drm.h": ["DRM_CLOEXEC", "DRM_RDWR"],
    "linux/videodev2.h": [
        "VIDEO_MAX_PLANES", "V4L2_FIELD_ANY", "V4L2_FIELD_NONE", "V4L2_BUF_TYPE_VIDEO_CAPTURE",
        "V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE", "V4L2_MEMORY_MMAP", "V4L2_MEMORY_DMABUF",
        "V4L2_CAP_VIDEO_CAPTURE", "V4L2_CAP_VIDEO_CAPTURE_MPLANE", "V4L2_CAP_STREAMING",
        "V4L2_CAP_DEVICE_CAPS", "V4L2_BUF_FLAG_ERROR", "V4L2_PIX_FMT_YUYV", "V4L2_PIX_FMT_UYVY",
        "V4L2_PIX_FMT_NV12", "V4L2_PIX_FMT_NV21", "V4L2_PIX_FMT_NV12M", "V4L2_PIX_FMT_NV21M",
        "V4L2_PIX_FMT_YUV420", "V4L2_PIX_FMT_YVU420", "V4L2_PIX_FMT_YUV420M"],
}
# Present only in newer headers: checked when the host has them, else from docs/uapi.md.
OPTIONAL = {
    "linux/sync_file.h": ("sync_set_deadline", "SYNC_IOC_SET_DEADLINE"),
}
# docs/uapi.md §2 (compiled against 6.12 headers): name -> (ioctl number, struct, size)
DOCUMENTED = {
    "SYNC_IOC_SET_DEADLINE": (0x40103E05, "sync_set_deadline", 16),
    "SW_SYNC_IOC_CREATE_FENCE": (0xC0285700, "sw_sync_create_fence_data", 40),
    "SW_SYNC_IOC_INC": (0x40045701, None, 4),
    "DRM_IOCTL_VGEM_FENCE_ATTACH": (0xC0106441, "drm_vgem_fence_attach", 16),
    "DRM_IOCTL_VGEM_FENCE_SIGNAL": (0x40086442, "drm_vgem_fence_signal", 8),
}


def _include_dirs() -> list[str]:
    return [d for d in ("/usr/include/libdrm", "/usr/include/drm") if os.path.isdir(d)]


def _header_exists(header: str) -> bool:
    roots = ["/usr/include", *_include_dirs()]
    return any((Path(root) / header).is_file() for root in roots)


def _field_offsets(ctype: object, prefix: str = "", base: int = 0) -> list[tuple[str, int]]:
    """(C member designator, offset) of every field, into named nested structs and
    unions too (``fmt.pix_mp.num_planes``, ``m.fd``); anonymous unions' members are
    listed by cffi as the struct's own, as C11 names them."""
    found: list[tuple[str, int]] = []
    for name, field in ctype.fields:  # type: ignore[attr-defined]
        path, offset = prefix + name, base + field.offset
        found.append((path, offset))
        if field.type.kind in ("struct", "union") and field.type.fields is not None:
            found += _field_offsets(field.type, path + ".", offset)
    return found


def _c_program(headers: list[str]) -> tuple[str, list[tuple[str, int]]]:
    """C source printing one `key value` line per checked fact, and the Python side."""
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <fcntl.h>"]
    lines += [f"#include <{h}>" for h in headers]
    if "drm.h" in headers:
        lines.append("#include <drm_mode.h>")
    lines.append("int main(void) {")
    expected: list[tuple[str, int]] = []

    def emit(key: str, c_expr: str, value: int) -> None:
        lines.append(f'    printf("{key} %llu\\n", (unsigned long long)({c_expr}));')
        expected.append((key, value))

    for header in headers:
        structs, ioctls = HEADERS[header]
        module = _module(header)
        for struct in structs:
            ctype = module.ffi.typeof(f"struct {struct}")
            emit(f"sizeof.{struct}", f"sizeof(struct {struct})", module.ffi.sizeof(ctype))
            for path, offset in _field_offsets(ctype):
                emit(f"offsetof.{struct}.{path}", f"offsetof(struct {struct}, {path})", offset)
        for name in ioctls:
            emit(f"ioctl.{name}", name, getattr(module, name))
        for name in CONSTANTS.get(header, []):
            emit(f"const.{name}", name, getattr(module.lib, name))
        if header in OPTIONAL:
            struct, macro = OPTIONAL[header]
            lines.append(f"#ifdef {macro}")
            emit(f"ioctl.{macro}", macro, getattr(module, macro))
            emit(f"sizeof.{struct}", f"sizeof(struct {struct})", module.ffi.sizeof(f"struct {struct}"))
            lines.append("#endif")
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n", expected


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, int], list[tuple[str, int]], list[str]]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        if os.environ.get("CI"):
            pytest.fail("no C compiler: the ABI conformance test must run in CI")
        pytest.skip("no C compiler (install gcc) to check the ABI against kernel headers")
    headers = [h for h in HEADERS if _header_exists(h)]
    missing = [h for h in ("linux/dma-buf.h", "linux/dma-heap.h", "linux/udmabuf.h", "linux/sync_file.h")
               if h not in headers]
    assert not missing, f"kernel uapi headers missing: {missing} (install linux-libc-dev)"
    source, expected = _c_program(headers)
    work = tmp_path_factory.mktemp("abi")
    (work / "abi.c").write_text(source)
    flags = [f"-I{d}" for d in _include_dirs()]
    subprocess.run([cc, "-Wall", "-Werror", *flags, "-o", str(work / "abi"), str(work / "abi.c")],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(work / "abi")], check=True, capture_output=True, text=True).stdout
    seen = {key: int(value) for key, value in (line.split() for line in out.splitlines())}
    return seen, expected, headers


def test_layouts_and_ioctl_numbers_match_c(compiled: tuple[dict[str, int], list[tuple[str, int]], list[str]]) -> None:
    seen, expected, _headers = compiled
    wrong = [(key, value, seen.get(key)) for key, value in expected if key in seen and seen[key] != value]
    assert not wrong, f"cffi disagrees with the C compiler (key, cffi, C): {wrong}"
    unchecked = [key for key, _ in expected if key not in seen and "SET_DEADLINE" not in key
                 and "sync_set_deadline" not in key]
    assert not unchecked, f"facts the C program did not print: {unchecked}"
    assert len(seen) >= 60, f"only {len(seen)} facts checked"


def test_core_headers_fully_checked(compiled: tuple[dict[str, int], list[tuple[str, int]], list[str]]) -> None:
    _seen, _expected, headers = compiled
    for header in ("linux/dma-buf.h", "linux/dma-heap.h", "linux/udmabuf.h", "linux/sync_file.h"):
        assert header in headers
    if os.environ.get("CI"):
        assert "drm.h" in headers, "CI installs libdrm-dev so the DRM structs are checked too"


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_items_missing_from_host_headers_match_reference(name: str) -> None:
    number, struct, size = DOCUMENTED[name]
    assert getattr(_ffi, name) == number
    assert (number >> 16) & 0x3FFF == size
    if struct is not None:
        assert ffi.sizeof(f"struct {struct}") == size


def test_documented_vgem_offsets() -> None:
    assert ffi.offsetof("struct drm_vgem_fence_attach", "out_fence") == 8
    assert ffi.offsetof("struct sw_sync_create_fence_data", "fence") == 36
    assert ffi.offsetof("struct sync_set_deadline", "pad") == 8


def test_every_number_is_checked() -> None:
    """Each ioctl number the core or the V4L2 module defines is on a list above."""
    listed = {name for _, ioctls in HEADERS.values() for name in ioctls} | set(DOCUMENTED)
    listed |= {macro for _, macro in OPTIONAL.values()}
    assert (set(_ffi.IOCTLS) | set(_v4l2.IOCTLS)) - listed == set()
    assert set(_v4l2.IOCTLS) == set(HEADERS["linux/videodev2.h"][1])


# --- the generated out-of-line modules (tools/gen_cffi.py) ----------------------------
def _generator() -> ModuleType:
    return load_script(ROOT / "tools" / "gen_cffi.py", "gen_cffi")


def test_generated_modules_match_cdefs() -> None:
    """pydmabuf/uapi/_cdefs*.py are what tools/gen_cffi.py makes of cdefs/ now."""
    assert _generator().main(["--check"]) == 0, "cdefs/ changed: rerun tools/gen_cffi.py and commit its output"


def test_generator_reads_every_cdefs_file() -> None:
    gen = _generator()
    on_disk = sorted(p.name for p in (ROOT / "cdefs").glob("*.h"))
    assert sorted(gen.cdef_files()) == on_disk
    assert sorted(_ffi.CDEF_FILES) == on_disk  # what the wheel carries (tests/test_packaging.py)


def test_the_generated_check_can_fail(tmp_path: Path) -> None:
    gen = _generator()
    cdefs = tmp_path / "cdefs"
    cdefs.mkdir()
    for name in gen.cdef_files():
        (cdefs / name).write_text((ROOT / "cdefs" / name).read_text())
    out = tmp_path / "out"
    out.mkdir()
    assert gen.main(["--cdefs", str(cdefs), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["_cdefs.py", "_cdefs_v4l2.py"]
    assert gen.main(["--cdefs", str(cdefs), "-o", str(out), "--check"]) == 0
    with (cdefs / "dma-buf.h").open("a") as f:
        f.write("#define DMA_BUF_TEST_ONLY 1\n")
    assert gen.main(["--cdefs", str(cdefs), "-o", str(out), "--check"]) == 1
    assert gen.main(["--cdefs", str(cdefs), "-o", str(ROOT / "pydmabuf" / "uapi"), "--check"]) == 1


def test_v4l2_is_apart_and_shares_the_core_types() -> None:
    with pytest.raises(ffi.error):
        ffi.typeof("struct v4l2_buffer")  # not in the core module: loaded only with pydmabuf.uapi.v4l2
    assert not [name for name in _ffi.IOCTLS if name.startswith("VIDIOC_")]
    assert _v4l2.ffi.typeof("struct dma_buf_sync") is ffi.typeof("struct dma_buf_sync")
    assert _v4l2.ioctl is _ffi.lib.ioctl
