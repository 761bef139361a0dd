"""pydmabuf.formats: DRM fourcc formats and modifiers, against drm_fourcc.h's numbers,
and the generator's C-macro expansion on a small synthetic kernel tree."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_script

import pydmabuf
from pydmabuf import formats
from pydmabuf.formats import (
    LINEAR,
    MOD_INVALID,
    Format,
    PlaneFormat,
    describe_modifier,
    modifier_name,
    modifier_value,
    modifier_vendor,
)

ROOT = Path(__file__).resolve().parent.parent


def fourcc(code: str) -> int:
    """drm_fourcc.h's fourcc_code(a, b, c, d)."""
    a, b, c, d = (ord(ch) for ch in code)
    return a | b << 8 | c << 16 | d << 24


# (name, four characters, planes as (bytes per block, block w, block h, hsub, vsub))
# from drm_fourcc.h and drm_format_info (Linux 6.12).
KNOWN = [
    ("NV12", "NV12", [(1, 1, 1, 1, 1), (2, 1, 1, 2, 2)]),
    ("NV16", "NV16", [(1, 1, 1, 1, 1), (2, 1, 1, 2, 1)]),
    ("YUV420", "YU12", [(1, 1, 1, 1, 1), (1, 1, 1, 2, 2), (1, 1, 1, 2, 2)]),
    ("YVU410", "YVU9", [(1, 1, 1, 1, 1), (1, 1, 1, 4, 4), (1, 1, 1, 4, 4)]),
    ("XRGB8888", "XR24", [(4, 1, 1, 1, 1)]),
    ("RGB888", "RG24", [(3, 1, 1, 1, 1)]),
    ("RGB565", "RG16", [(2, 1, 1, 1, 1)]),
    ("YUYV", "YUYV", [(2, 1, 1, 1, 1)]),
    ("P010", "P010", [(2, 1, 1, 1, 1), (4, 1, 1, 2, 2)]),
    ("NV15", "NV15", [(5, 4, 1, 1, 1), (5, 2, 1, 2, 2)]),
    ("P030", "P030", [(4, 3, 1, 1, 1), (8, 3, 1, 2, 2)]),
    ("C1", "C1  ", [(1, 8, 1, 1, 1)]),
    ("Y0L0", "Y0L0", [(8, 2, 2, 1, 1)]),
    ("Q410", "Q410", [(2, 1, 1, 1, 1)] * 3),
    ("RGB565_A8", "R5A8", [(2, 1, 1, 1, 1), (1, 1, 1, 1, 1)]),
    ("ABGR16161616F", "AB4H", [(8, 1, 1, 1, 1)]),
]


def test_known_formats_match_drm_fourcc_h() -> None:
    # One test, not one per format: the suite's per-test fd check costs more than these.
    for name, chars, planes in KNOWN:
        fmt = Format.from_name(name)
        assert (fmt.name, fmt.fourcc, fmt.fourcc_string) == (name, fourcc(chars), chars)
        assert [tuple(p) for p in fmt.planes] == planes, name
        assert fmt.num_planes == len(planes) and fmt.linear


def test_lookup_by_code_and_name_gives_one_object() -> None:
    nv12 = Format.from_name("NV12")
    assert Format(0x3231564E) is nv12
    assert Format(nv12) is nv12
    assert Format.from_name("DRM_FORMAT_NV12") is nv12
    assert nv12 == Format(fourcc("NV12")) and hash(nv12) == hash(Format(fourcc("NV12")))
    assert nv12 != Format.from_name("NV21") and nv12 != "NV12"
    assert pickle.loads(pickle.dumps(nv12)) is nv12
    assert str(nv12) == "NV12"
    assert repr(nv12) == "<Format NV12 0x3231564e 'NV12' planes=2>"
    with pytest.raises(AttributeError):
        nv12._fourcc = 0


def test_every_format_round_trips() -> None:
    everything = Format.all()
    assert len(everything) == len({f.fourcc for f in everything}) == len({f.name for f in everything})
    assert len(everything) >= 120
    for fmt in everything:
        assert Format(fmt.fourcc) is fmt
        assert Format.from_name(fmt.name) is fmt
        assert fmt.fourcc == int.from_bytes(fmt.fourcc_string.encode("latin-1"), "little")
        assert 1 <= fmt.num_planes <= 4
        assert all(p.block_width >= 1 and p.block_height >= 1 for p in fmt.planes)
        assert fmt.planes[0].hsub == fmt.planes[0].vsub == 1  # subsampling is for planes 1..n


def test_formats_without_linear_layout() -> None:
    # drm_format_info lists these with cpp 0: they only exist with a vendor modifier.
    assert sorted(f.name for f in Format.all() if not f.linear) == ["VUY101010", "YUV420_10BIT", "YUV420_8BIT"]


def test_layouts_read_from_header_comments() -> None:
    derived = {f.name: f.planes[0].bytes_per_block for f in Format.all() if f.layout_from_header}
    assert derived == {"R16": 2, "RG88": 2, "GR88": 2, "RG1616": 4, "GR1616": 4, "AVUY8888": 4, "XVUY8888": 4}
    assert Format.from_name("AVUY8888").has_alpha and Format.from_name("AVUY8888").is_yuv
    assert not Format.from_name("R16").has_alpha


def test_flags() -> None:
    assert Format.from_name("NV12").is_yuv and not Format.from_name("NV12").has_alpha
    assert Format.from_name("ARGB8888").has_alpha and not Format.from_name("ARGB8888").is_yuv
    assert Format.from_name("C8").is_color_indexed and not Format.from_name("R8").is_color_indexed


def test_plane_sizes_use_ceil_division() -> None:
    nv12 = Format.from_name("NV12")
    luma, chroma = nv12.planes
    assert (luma.width(641), luma.height(479), luma.min_pitch(641)) == (641, 479, 641)
    assert (chroma.width(641), chroma.height(479), chroma.min_pitch(641)) == (321, 240, 642)
    nv15 = Format.from_name("NV15")  # 4 pixels in 5 bytes; CbCr pairs 2 in 5
    assert [p.min_pitch(641) for p in nv15.planes] == [802, 803]
    assert Format.from_name("C1").planes[0].min_pitch(641) == 81
    assert Format.from_name("YUV410").planes[1].height(479) == 120
    y0l0 = Format.from_name("Y0L0").planes[0]  # kernel: 2x2 blocks of 8 bytes, pitch per pixel row
    assert y0l0.min_pitch(64) == 128
    assert PlaneFormat(3, 1, 1, 1, 1).min_pitch(5) == 15


def test_unknown_name_or_fourcc_is_value_error() -> None:
    for name in ("NV13", "", "DRM_FORMAT_", "XR25"):  # (any case and fourcc strings: test_format_names.py)
        with pytest.raises(pydmabuf.InvalidArgumentError, match="unknown DRM format name"):
            Format.from_name(name)
    for code in (0, 1, fourcc("AAAA"), -1, 1 << 32, 0x3231564E | 1 << 31):
        with pytest.raises(ValueError, match="unknown DRM fourcc"):
            Format(code)


def test_wrong_types() -> None:
    with pytest.raises(TypeError, match="from_name"):
        Format("NV12")  # type: ignore[arg-type]
    for bad in (None, 1.5, True, b"NV12"):
        with pytest.raises(TypeError):
            Format(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Format.from_name(0x3231564E)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        formats.as_format(2.0)
    assert formats.as_format("NV12") is formats.as_format(0x3231564E) is Format.from_name("NV12")


def test_modifier_constants() -> None:
    assert LINEAR == 0
    assert MOD_INVALID == (1 << 56) - 1 == 0x00FFFFFFFFFFFFFF  # fourcc_mod_code(NONE, DRM_FORMAT_RESERVED)
    assert modifier_name(LINEAR) == "DRM_FORMAT_MOD_LINEAR"
    assert modifier_name(MOD_INVALID) == "DRM_FORMAT_MOD_INVALID"


# fourcc_mod_code(vendor, val) = vendor << 56 | val, with the vendor ids of drm_fourcc.h
NAMED = {
    "I915_FORMAT_MOD_X_TILED": 0x01 << 56 | 1,
    "I915_FORMAT_MOD_Y_TILED": 0x01 << 56 | 2,
    "I915_FORMAT_MOD_4_TILED": 0x01 << 56 | 9,
    "DRM_FORMAT_MOD_SAMSUNG_64_32_TILE": 0x04 << 56 | 1,
    "DRM_FORMAT_MOD_QCOM_COMPRESSED": 0x05 << 56 | 1,
    "DRM_FORMAT_MOD_VIVANTE_SUPER_TILED": 0x06 << 56 | 2,
    "DRM_FORMAT_MOD_NVIDIA_TEGRA_TILED": 0x03 << 56 | 1,
    # DRM_FORMAT_MOD_NVIDIA_BLOCK_LINEAR_2D(0, 0, 0, 0, v) = 0x10 | v
    "DRM_FORMAT_MOD_NVIDIA_16BX2_BLOCK_FOUR_GOB": 0x03 << 56 | 0x12,
    "DRM_FORMAT_MOD_BROADCOM_VC4_T_TILED": 0x07 << 56 | 1,
    "DRM_FORMAT_MOD_BROADCOM_SAND128": 0x07 << 56 | 4,  # SAND128_COL_HEIGHT(0)
    "DRM_FORMAT_MOD_ARM_16X16_BLOCK_U_INTERLEAVED": 0x08 << 56 | 1 << 52 | 1,  # ARM_CODE(MISC, 1)
    "DRM_FORMAT_MOD_ALLWINNER_TILED": 0x09 << 56 | 1,
}


def test_named_modifiers() -> None:
    for name, value in NAMED.items():
        assert modifier_value(name) == value, name
        assert modifier_name(value) == name
        assert formats.MODIFIERS[name] == value


def test_modifier_names_both_ways() -> None:
    assert len(formats.MODIFIERS) >= 40
    for name, value in formats.MODIFIERS.items():
        assert modifier_value(name) == value
        assert modifier_value(modifier_name(value)) == value
    # aliases: the deprecated DRM_FORMAT_MOD_NONE and GENERIC_16_16_TILE (#define A B)
    assert modifier_value("DRM_FORMAT_MOD_NONE") == 0 and modifier_name(0) == "DRM_FORMAT_MOD_LINEAR"
    assert modifier_value("DRM_FORMAT_MOD_GENERIC_16_16_TILE") == modifier_value("DRM_FORMAT_MOD_SAMSUNG_16_16_TILE")
    assert modifier_name(0x04 << 56 | 2) == "DRM_FORMAT_MOD_SAMSUNG_16_16_TILE"
    assert modifier_value("LINEAR") == 0 and modifier_value("INVALID") == MOD_INVALID


def test_vendors() -> None:
    assert formats.VENDORS["INTEL"] == 1 and formats.VENDORS["AMD"] == 2 and formats.VENDORS["ARM"] == 8
    assert modifier_vendor(LINEAR) == "NONE"
    assert modifier_vendor(modifier_value("I915_FORMAT_MOD_X_TILED")) == "INTEL"
    amd = 0x02 << 56 | 0x12345  # AMD modifiers are all parametric: no names
    assert modifier_vendor(amd) == "AMD"
    assert describe_modifier(amd) == "AMD:0x0200000000012345"
    assert describe_modifier(0x7F << 56) == "vendor 0x7f:0x7f00000000000000"
    assert describe_modifier(0) == "DRM_FORMAT_MOD_LINEAR"
    with pytest.raises(ValueError, match="unknown vendor"):
        modifier_vendor(0x7F << 56)


def test_modifier_errors() -> None:
    with pytest.raises(ValueError, match="no name"):
        modifier_name(0x02 << 56 | 0x12345)
    with pytest.raises(ValueError, match="unknown modifier name"):
        modifier_value("I915_FORMAT_MOD_Z_TILED")
    with pytest.raises(TypeError):
        modifier_value(0)  # type: ignore[arg-type]
    for bad in (-1, 1 << 64, True, 1.0, "0", None):
        with pytest.raises(pydmabuf.InvalidArgumentError):
            formats.check_modifier(bad)
        with pytest.raises(pydmabuf.InvalidArgumentError):
            describe_modifier(bad)  # type: ignore[arg-type]


def test_kernel_version_recorded() -> None:
    text = (ROOT / "pydmabuf" / "uapi" / "drm_formats.py").read_text()
    assert text.startswith("# Generated by tools/gen_drm_formats.py from Linux ")
    assert formats.KERNEL_VERSION.count(".") == 2
    assert f"Linux {formats.KERNEL_VERSION}" in text.splitlines()[0]


# --- the generator, on a synthetic tree -----------------------------------------------
def _generator() -> ModuleType:
    return load_script(ROOT / "tools" / "gen_drm_formats.py", "gen_drm_formats")


FAKE_HEADER = r"""
#define fourcc_code(a, b, c, d) ((__u32)(a) | ((__u32)(b) << 8) | \
                 ((__u32)(c) << 16) | ((__u32)(d) << 24))
#define DRM_FORMAT_BIG_ENDIAN (1U<<31)
#define DRM_FORMAT_INVALID    0
#define DRM_FORMAT_R8        fourcc_code('R', '8', ' ', ' ') /* [7:0] R */
#define DRM_FORMAT_RG88        fourcc_code('R', 'G', '8', '8') /* [15:0] R:G 8:8 little endian */
#define DRM_FORMAT_ODD        fourcc_code('O', 'D', 'D', ' ') /* no size given */
#define DRM_FORMAT_NV12        fourcc_code('N', 'V', '1', '2') /* 2x2 subsampled Cr:Cb plane */
#define DRM_FORMAT_MOD_VENDOR_NONE    0
#define DRM_FORMAT_MOD_VENDOR_ARM     0x08
#define DRM_FORMAT_RESERVED          ((1ULL << 56) - 1)
#define fourcc_mod_code(vendor, val) \
    ((((__u64)DRM_FORMAT_MOD_VENDOR_## vendor) << 56) | ((val) & 0x00ffffffffffffffULL))
#define DRM_FORMAT_MOD_INVALID    fourcc_mod_code(NONE, DRM_FORMAT_RESERVED)
#define DRM_FORMAT_MOD_ALIAS DRM_FORMAT_MOD_LINEAR
#define DRM_FORMAT_MOD_LINEAR    fourcc_mod_code(NONE, 0)
#define DRM_FORMAT_MOD_ARM_CODE(__type, __val) \
    fourcc_mod_code(ARM, ((__u64)(__type) << 52) | ((__val) & 0x000fffffffffffffULL))
#define DRM_FORMAT_MOD_ARM_TYPE_MISC 0x01
#define DRM_FORMAT_MOD_ARM_AFBC(__afbc_mode) DRM_FORMAT_MOD_ARM_CODE(0, __afbc_mode)
#define DRM_FORMAT_MOD_ARM_BLOCK \
    DRM_FORMAT_MOD_ARM_CODE(DRM_FORMAT_MOD_ARM_TYPE_MISC, 1ULL)
"""

FAKE_INFO_C = r"""
const struct drm_format_info *__drm_format_info(u32 format)
{
    static const struct drm_format_info formats[] = {
        { .format = DRM_FORMAT_R8,        .depth = 8,  .num_planes = 1, .cpp = { 1, 0, 0 }, .hsub = 1, .vsub = 1 },
#ifdef __BIG_ENDIAN
        { .format = DRM_FORMAT_R8 | DRM_FORMAT_BIG_ENDIAN, .depth = 8, .num_planes = 1, .cpp = { 1, 0, 0 } },
#endif
        { .format = DRM_FORMAT_NV12, .depth = 0, .num_planes = 2,
          .cpp = { 1, 2, 0 }, .hsub = 2, .vsub = 2, .is_yuv = true },
    };
    return NULL;
}
"""


def test_generator_expands_the_header_macros(tmp_path: Path) -> None:
    gen = _generator()
    (tmp_path / "include/uapi/drm").mkdir(parents=True)
    (tmp_path / "drivers/gpu/drm").mkdir(parents=True)
    (tmp_path / "include/uapi/drm/drm_fourcc.h").write_text(FAKE_HEADER)
    (tmp_path / "drivers/gpu/drm/drm_fourcc.c").write_text(FAKE_INFO_C)
    (tmp_path / "Makefile").write_text("VERSION = 9\nPATCHLEVEL = 8\nSUBLEVEL = 7\nEXTRAVERSION =\nNAME = x\n")
    out = tmp_path / "table.py"
    assert gen.main([str(tmp_path), "--label", "test tree", "-o", str(out)]) == 0
    text = out.read_text()
    assert text.splitlines()[0] == "# Generated by tools/gen_drm_formats.py from Linux 9.8.7 (test tree): do not edit."
    table: dict[str, object] = {}
    exec(compile(text, str(out), "exec"), table)
    assert table["KERNEL_VERSION"] == "9.8.7"
    assert table["FORMATS"] == (
        ("R8", fourcc("R8  "), ((1, 1, 1),), 1, 1, 0),
        ("RG88", fourcc("RG88"), ((2, 1, 1),), 1, 1, gen.FROM_HEADER),
        ("ODD", fourcc("ODD "), (), 1, 1, 0),
        ("NV12", fourcc("NV12"), ((1, 1, 1), (2, 1, 1)), 2, 2, gen.IS_YUV),
    )
    assert table["VENDORS"] == (("NONE", 0), ("ARM", 8))
    assert table["MODIFIERS"] == (
        ("DRM_FORMAT_MOD_INVALID", (1 << 56) - 1),
        ("DRM_FORMAT_MOD_LINEAR", 0),
        ("DRM_FORMAT_MOD_ARM_BLOCK", 8 << 56 | 1 << 52 | 1),
        ("DRM_FORMAT_MOD_ALIAS", 0),  # an alias comes after the names
    )
    assert gen.main([str(tmp_path), "--label", "test tree", "-o", str(out), "--check"]) == 0
    out.write_text(text + "# edited\n")
    assert gen.main([str(tmp_path), "--label", "test tree", "-o", str(out), "--check"]) == 1


def test_generator_preprocessor_pieces() -> None:
    gen = _generator()
    macros = gen.parse_defines("#define PASTE(a, b) a ## b\n#define XY 5\n#define F(x) (x + 1)\n")
    assert gen.evaluate(gen.expand(gen.tokenize("PASTE(X, Y)"), macros)) == 5
    assert gen.evaluate(gen.expand(gen.tokenize("F(F(1)) << 2"), macros)) == 12
    assert gen.evaluate(gen.expand(gen.tokenize("F(unknown)"), macros)) is None
    assert gen.evaluate(gen.tokenize("~0ULL")) == (1 << 64) - 1
    assert gen.evaluate(gen.tokenize("'\\0' | (__u32)'A'")) == 65
