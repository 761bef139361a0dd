"""DRM pixel formats (fourcc codes) and format modifiers.

``Format`` is one fourcc of the kernel's ``drm_fourcc.h`` with the plane layout of the
kernel's ``drm_format_info`` table (generated into :mod:`pydmabuf.uapi.drm_formats` by
``tools/gen_drm_formats.py``; ``KERNEL_VERSION`` says from which kernel). There is one
object per code: ``Format(0x3231564E) is Format.from_name("NV12")``.

Modifiers are plain ints (the kernel's u64), with the names the header gives them:
``modifier_name(0) == "DRM_FORMAT_MOD_LINEAR"`` and back with ``modifier_value``.
Parametric families (AMD, ARM AFBC/AFRC, NVIDIA block-linear, Broadcom SAND column
heights, Amlogic) have no single name; ``describe_modifier`` names their vendor.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from .errors import invalid
from .uapi import drm_formats as _table

KERNEL_VERSION = _table.KERNEL_VERSION
_U64 = (1 << 64) - 1

#: every named modifier of the header (aliases included), name -> value
MODIFIERS: Mapping[str, int] = MappingProxyType(dict(_table.MODIFIERS))
#: modifier vendor name (``DRM_FORMAT_MOD_VENDOR_<name>``) -> the modifier's top 8 bits
VENDORS: Mapping[str, int] = MappingProxyType(dict(_table.VENDORS))
_MODIFIER_NAMES: dict[int, str] = {}
for _name, _value in _table.MODIFIERS:
    _MODIFIER_NAMES.setdefault(_value, _name)  # the table lists canonical names first
_VENDOR_NAMES = {value: name for name, value in _table.VENDORS}

LINEAR: int = MODIFIERS["DRM_FORMAT_MOD_LINEAR"]  # 0: plain rows of pixels
#: DRM_FORMAT_MOD_INVALID: "no explicit modifier": the layout is what the driver
#: implies (EGL without modifier attributes, ADDFB2 without DRM_MODE_FB_MODIFIERS).
MOD_INVALID: int = MODIFIERS["DRM_FORMAT_MOD_INVALID"]


def check_modifier(modifier: object) -> int:
    """A modifier argument: an int in 0..2**64-1, else InvalidArgumentError."""
    if isinstance(modifier, int) and not isinstance(modifier, bool) and 0 <= modifier <= _U64:
        return int(modifier)
    raise invalid(f"a modifier is an int in 0..2**64-1, got {modifier!r}")


def modifier_name(modifier: int) -> str:
    """The header's name of ``modifier`` (the first one where it has aliases), e.g.
    ``"I915_FORMAT_MOD_X_TILED"``. ValueError for a value the header does not name."""
    value = check_modifier(modifier)
    name = _MODIFIER_NAMES.get(value)
    if name is None:
        raise invalid(f"modifier 0x{value:016x} has no name in drm_fourcc.h "
                      f"({describe_modifier(value)}); see describe_modifier()")
    return name


def modifier_value(name: str) -> int:
    """The value of a named modifier: the header's name (``"DRM_FORMAT_MOD_LINEAR"``,
    ``"I915_FORMAT_MOD_Y_TILED"``) or a ``DRM_FORMAT_MOD_`` name without that prefix
    (``"LINEAR"``). InvalidArgumentError (a ValueError) for an unknown name, TypeError
    for a name that is not a str."""
    if not isinstance(name, str):
        raise TypeError(f"a modifier name must be a str, got {type(name).__name__}")
    for candidate in (name, "DRM_FORMAT_MOD_" + name):
        if candidate in MODIFIERS:
            return MODIFIERS[candidate]
    raise invalid(f"unknown modifier name {name!r} (drm_fourcc.h of Linux {KERNEL_VERSION} "
                  "names these: pydmabuf.formats.MODIFIERS)")


def modifier_vendor(modifier: int) -> str:
    """The vendor of a modifier, e.g. ``"NONE"`` for LINEAR, ``"AMD"``; ValueError when the
    top 8 bits are no vendor of the header."""
    value = check_modifier(modifier)
    vendor = _VENDOR_NAMES.get(value >> 56)
    if vendor is None:
        raise invalid(f"modifier 0x{value:016x}: unknown vendor 0x{value >> 56:02x}")
    return vendor


def describe_modifier(modifier: int) -> str:
    """A name for any modifier: the header's name, else ``VENDOR:0x...`` (never raises
    for a valid value)."""
    value = check_modifier(modifier)
    name = _MODIFIER_NAMES.get(value)
    if name is not None:
        return name
    vendor = _VENDOR_NAMES.get(value >> 56, f"vendor 0x{value >> 56:02x}")
    return f"{vendor}:0x{value:016x}"


class PlaneFormat(NamedTuple):
    """How one plane of a format stores pixels, as the kernel's drm_format_info does.

    A block of ``block_width`` x ``block_height`` pixels takes ``bytes_per_block`` bytes
    (1x1 for most formats; 0 bytes: the plane only exists with a non-linear modifier).
    The plane covers ``ceil(width / hsub)`` x ``ceil(height / vsub)`` pixels of the image.
    """

    bytes_per_block: int
    block_width: int
    block_height: int
    hsub: int
    vsub: int

    def width(self, width: int) -> int:
        """The plane's width in pixels for an image ``width`` pixels wide."""
        return -(-width // self.hsub)

    def height(self, height: int) -> int:
        """The plane's height in pixels (rows of the plane) for an image ``height`` high."""
        return -(-height // self.vsub)

    def min_pitch(self, width: int) -> int:
        """The fewest bytes a row of this plane takes (drm_format_info_min_pitch)."""
        return -(-(self.width(width) * self.bytes_per_block) // (self.block_width * self.block_height))


PlaneFormat.bytes_per_block.__doc__ = "Bytes per block of pixels (0: the plane exists only with a non-linear modifier)."
PlaneFormat.block_width.__doc__ = "A block's width in pixels (1 for most formats)."
PlaneFormat.block_height.__doc__ = "A block's height in pixels (1 for most formats)."
PlaneFormat.hsub.__doc__ = "Horizontal subsampling: the plane is ``ceil(width / hsub)`` pixels wide."
PlaneFormat.vsub.__doc__ = "Vertical subsampling: the plane is ``ceil(height / vsub)`` pixels high."


class Format:
    """A DRM fourcc pixel format. ``Format(code)`` and ``Format.from_name(name)`` return
    the one object for that code; an unknown code or name is ``InvalidArgumentError``
    (a ``ValueError``)."""

    __slots__ = ("_fourcc", "_name", "_planes", "_flags")
    _fourcc: int
    _name: str
    _planes: tuple[PlaneFormat, ...]
    _flags: int

    def __new__(cls, fourcc: int | Format) -> Format:
        if isinstance(fourcc, Format):
            return fourcc
        if not isinstance(fourcc, int) or isinstance(fourcc, bool):
            hint = "; use Format.from_name() for names" if isinstance(fourcc, str) else ""
            raise TypeError(f"Format() takes a fourcc code (int), got {type(fourcc).__name__}{hint}")
        found = _BY_CODE.get(fourcc)
        if found is None:
            shown = f"0x{fourcc:08x}" if fourcc >= 0 else str(fourcc)
            if 0 <= fourcc <= 0xFFFFFFFF and _fourcc_chars(fourcc).isprintable():
                shown += f" ({_fourcc_chars(fourcc)!r})"
            raise invalid(f"unknown DRM fourcc {shown}: not in drm_fourcc.h of Linux {KERNEL_VERSION} "
                          "(Format.from_name() takes names like 'NV12')")
        return found

    @classmethod
    def _make(cls, name: str, fourcc: int, planes: tuple[tuple[int, int, int], ...],
              hsub: int, vsub: int, flags: int) -> Format:
        self = object.__new__(cls)
        self._fourcc = fourcc
        self._name = name
        # drm_format_info's hsub/vsub subsample every plane but the first.
        self._planes = tuple(PlaneFormat(size, bw, bh, 1 if i == 0 else hsub, 1 if i == 0 else vsub)
                             for i, (size, bw, bh) in enumerate(planes))
        self._flags = flags
        return self

    @classmethod
    def from_name(cls, name: str) -> Format:
        """The format a name the user types stands for, in this order:

        - drm_fourcc.h's name, without or with ``DRM_FORMAT_``: ``"NV12"``, ``"XRGB8888"``,
          ``"DRM_FORMAT_P010"``;
        - the fourcc's characters, as ``fourcc_string`` prints them and GStreamer's
          ``drm-format`` and kernel logs use: ``"XR24"``, ``"R8"`` (trailing spaces optional);
        - GStreamer's format name: ``"I420"``, ``"BGRx"`` (its byte-order RGB names differ
          from DRM's: ``BGRx`` is XRGB8888);
        - V4L2's pixel format name, without or with ``V4L2_PIX_FMT_``: ``"YUV420M"``,
          ``"V4L2_PIX_FMT_XBGR32"`` (see :func:`v4l2_format` for buffers per frame).

        Case does not matter unless it must (GStreamer's ``xRGB`` and ``RGBx`` differ in
        more than case, so they never clash). A miss raises InvalidArgumentError naming
        the nearest known names."""
        if not isinstance(name, str):
            raise TypeError(f"a format name must be a str, got {type(name).__name__}")
        found = _BY_NAME.get(name[len("DRM_FORMAT_"):] if name.startswith("DRM_FORMAT_") else name)
        if found is None:
            found = _by_any_name(name)
        return found

    @staticmethod
    def all() -> tuple[Format, ...]:
        """Every format of the table, in header order."""
        return _ALL

    # --- facts ---------------------------------------------------------------------
    @property
    def fourcc(self) -> int:
        """The fourcc code (a u32, e.g. 0x3231564E for NV12)."""
        return self._fourcc

    @property
    def name(self) -> str:
        """The drm_fourcc.h name without ``DRM_FORMAT_`` (``"NV12"``)."""
        return self._name

    @property
    def fourcc_string(self) -> str:
        """The four characters of the code (``"XR24"`` for XRGB8888, ``"R8  "`` for R8):
        what GStreamer's ``drm-format`` and kernel logs print."""
        return _fourcc_chars(self._fourcc)

    @property
    def planes(self) -> tuple[PlaneFormat, ...]:
        """How each plane stores pixels, in plane order (see :class:`PlaneFormat`)."""
        return self._planes

    @property
    def num_planes(self) -> int:
        """The number of planes, ``len(planes)``, as drm_format_info counts them."""
        return len(self._planes)

    @property
    def linear(self) -> bool:
        """Whether plane sizes can be computed without a modifier (False for formats
        such as YUV420_8BIT that only exist tiled or compressed)."""
        return bool(self._planes) and all(p.bytes_per_block for p in self._planes)

    @property
    def is_yuv(self) -> bool:
        """Whether the pixels are YCbCr (drm_format_info's ``is_yuv``)."""
        return bool(self._flags & _table.IS_YUV)

    @property
    def has_alpha(self) -> bool:
        """Whether the format has an alpha channel (drm_format_info's ``has_alpha``)."""
        return bool(self._flags & _table.HAS_ALPHA)

    @property
    def is_color_indexed(self) -> bool:
        """Whether pixels are palette indices (C1, C2, C4, C8; drm_format_info's ``is_color_indexed``)."""
        return bool(self._flags & _table.COLOR_INDEXED)

    @property
    def layout_from_header(self) -> bool:
        """True where drm_format_info has no entry and the pixel size was read from the
        header's comment (R16, RG88, GR88, RG1616, GR1616, AVUY8888, XVUY8888)."""
        return bool(self._flags & _table.FROM_HEADER)

    # --- value semantics -----------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Format) and other._fourcc == self._fourcc

    def __hash__(self) -> int:
        return hash(self._fourcc)

    def __reduce__(self) -> tuple[object, ...]:
        return (Format, (self._fourcc,))

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "_flags"):
            raise AttributeError("Format objects are immutable")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"<Format {self._name} 0x{self._fourcc:08x} {self.fourcc_string!r} planes={len(self._planes)}>"

    def __str__(self) -> str:
        return self._name


# Every name from_name knows beyond the exact DRM names, built on first use (the
# GStreamer and V4L2 tables are not on the import path): the name folded to upper case
# -> its format, or a str explaining why that folded name is refused. GStreamer's RGB
# names count only in their exact case: they name bytes in memory, DRM's name a
# little-endian word, so "XRGB" (DRM's XRGB8888? GStreamer's xRGB, DRM's BGRX8888?)
# must not pick one silently.
_ANY_NAME: dict[str, Format | str] = {}
_GST_EXACT: dict[str, Format] = {}


def _names() -> dict[str, Format | str]:
    if _ANY_NAME:
        return _ANY_NAME
    from .uapi.format_names import GSTREAMER, V4L2

    table: dict[str, Format | str] = {}

    def add(key: str, fmt: Format) -> None:
        key = key.upper()
        old = table.setdefault(key, fmt)
        if old is not fmt:  # two formats fold to one name: only the exact spelling counts
            table[key] = f"{key!r} names more than one format in some case"

    for fmt in _ALL:  # DRM names and fourcc strings first: they win over other APIs' names
        add(fmt.name, fmt)
        add("DRM_FORMAT_" + fmt.name, fmt)
        add(fmt.fourcc_string.rstrip(" "), fmt)
    for gst, drm in GSTREAMER.items():
        fmt = _BY_NAME[drm]
        if fmt.is_yuv:
            table.setdefault(gst.upper(), fmt)
        else:
            _GST_EXACT[gst] = fmt
            table.setdefault(gst.upper(), f"GStreamer's {gst!r} is DRM's {drm} (GStreamer names RGB formats by "
                                          "bytes in memory, DRM by a little-endian word): give GStreamer's "
                                          "name in its exact case, or the DRM name")
    for v4l2, (_code, drm, _buffers) in V4L2.items():
        table.setdefault(v4l2.upper(), _BY_NAME[drm])
        table.setdefault("V4L2_PIX_FMT_" + v4l2.upper(), _BY_NAME[drm])
    _ANY_NAME.update(table)
    return _ANY_NAME


def _by_any_name(name: str) -> Format:
    """from_name's slow half: fourcc strings, other APIs' names, any case; a miss names
    the nearest ones."""
    exact = _BY_CODE.get(int.from_bytes(name.ljust(4).encode("latin-1"), "little")) \
        if len(name) <= 4 and name.isascii() and name.isprintable() else None
    if exact is not None:  # the fourcc string as printed, case and all ("XR24", "R8")
        return exact
    key = name.strip().upper()
    names = _names()
    gst = _GST_EXACT.get(name.strip())
    if gst is not None:
        return gst
    found = names.get(key)
    if isinstance(found, Format):
        return found
    if found is not None:
        raise invalid(f"format name {name!r} is ambiguous: {found}")
    import difflib  # only on a miss

    near = difflib.get_close_matches(key, list(names), n=4, cutoff=0.6)
    hint = f"; nearest: {', '.join(near)}" if near else ""
    raise invalid(f"unknown DRM format name {name!r}{hint} (drm_fourcc.h of Linux {KERNEL_VERSION}, fourcc "
                  "strings like 'XR24', GStreamer's like 'BGRx' and V4L2's like 'NV12M' are known: "
                  "Format.all() lists the formats)")


def v4l2_format(pixelformat: int | str) -> tuple[Format, int]:
    """(the DRM format, buffers per frame) of a V4L2 pixel format, given as its code
    (``v4l2_format.pixelformat``) or name (``"NV12M"`` or ``"V4L2_PIX_FMT_NV12M"``):
    ``(NV12, 2)`` for NV12M, whose planes come in a buffer each; ``(NV12, 1)`` for NV12.
    InvalidArgumentError for a V4L2 format with no DRM equivalent here."""
    from .uapi.format_names import V4L2

    if isinstance(pixelformat, str):
        key = pixelformat.upper()
        key = key[len("V4L2_PIX_FMT_"):] if key.startswith("V4L2_PIX_FMT_") else key
        entry = V4L2.get(key)
        if entry is None:
            raise invalid(f"no DRM format for V4L2 pixel format {pixelformat!r} "
                          f"(known: {', '.join(sorted(V4L2))})")
        return _BY_NAME[entry[1]], entry[2]
    if isinstance(pixelformat, int) and not isinstance(pixelformat, bool):
        for code, drm, buffers in V4L2.values():
            if int.from_bytes(code.encode("latin-1"), "little") == pixelformat:
                return _BY_NAME[drm], buffers
        chars = pixelformat.to_bytes(4, "little").decode("latin-1") if 0 <= pixelformat < 1 << 32 else "?"
        raise invalid(f"no DRM format for V4L2 pixel format 0x{pixelformat:08x} ({chars!r})")
    raise TypeError(f"a V4L2 pixel format is its code (int) or name (str), got {type(pixelformat).__name__}")


def _fourcc_chars(code: int) -> str:
    return code.to_bytes(4, "little").decode("latin-1")


def as_format(value: object) -> Format:
    """A format argument: a Format, its name, or its fourcc code."""
    if isinstance(value, Format):
        return value
    if isinstance(value, str):
        return Format.from_name(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return Format(value)
    raise TypeError(f"a format is a pydmabuf.Format, its name or its fourcc, got {type(value).__name__}")


_ALL: tuple[Format, ...] = tuple(Format._make(*row) for row in _table.FORMATS)
_BY_CODE: dict[int, Format] = {f.fourcc: f for f in _ALL}
_BY_NAME: dict[str, Format] = {f.name: f for f in _ALL}
