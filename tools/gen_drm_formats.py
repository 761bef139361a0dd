#!/usr/bin/env python3
"""Generate pydmabuf/uapi/drm_formats.py from a Linux kernel source tree.

    python tools/gen_drm_formats.py /path/to/linux [--label TEXT] [-o FILE] [--check]

Reads two files of the tree, the way python-evdev generates its codes from the input
headers:

- ``include/uapi/drm/drm_fourcc.h``: every ``DRM_FORMAT_*`` fourcc code (by expanding
  ``fourcc_code()``), the modifier vendors, and every named modifier
  (``DRM_FORMAT_MOD_*``, ``I915_FORMAT_MOD_*``) that is a constant; the macros are
  expanded by the small C preprocessor below, so values built from other macros
  (``fourcc_mod_code``, ``DRM_FORMAT_MOD_ARM_CODE``, the NVIDIA and Broadcom families)
  come out as the compiler computes them.
- ``drivers/gpu/drm/drm_fourcc.c``: the ``drm_format_info`` table inside
  ``__drm_format_info()``: number of planes, bytes per block (``cpp`` or
  ``char_per_block``), block width and height, and subsampling (``hsub``/``vsub``),
  plus ``is_yuv``, ``has_alpha`` and ``is_color_indexed``. Entries under
  ``#ifdef __BIG_ENDIAN`` are left out (they are DRM_FORMAT_BIG_ENDIAN variants).

A few fourccs of the header have no drm_format_info entry (R16, RG88, ...). Where such a
format is single-plane and its header comment starts with a bit range ``[N:0]``, the
pixel size is (N+1)/8 bytes and the entry is flagged FROM_HEADER; any other format
without an entry gets no planes (no linear layout can be computed for it).

The version recorded in the output comes from the tree's Makefile (``--label`` adds
text, e.g. the distribution package it came from). ``--check`` fails when the
existing output differs from what the tree generates.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path
from typing import NamedTuple

HEADER = "include/uapi/drm/drm_fourcc.h"
INFO_C = "drivers/gpu/drm/drm_fourcc.c"
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "pydmabuf" / "uapi" / "drm_formats.py"

# Flag bits stored per format (mirrored as constants in the generated module).
IS_YUV, HAS_ALPHA, COLOR_INDEXED, FROM_HEADER = 1, 2, 4, 8
MASK64 = (1 << 64) - 1


# --- a small C preprocessor: enough for drm_fourcc.h's #defines ----------------------
class Macro(NamedTuple):
    params: tuple[str, ...] | None  # None: object-like
    body: tuple[str, ...]
    comment: str  # the /* ... */ on the #define line, for layouts read from comments


_TOKEN = re.compile(
    r"\s*(?:([A-Za-z_]\w*)|(0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*)|('(?:\\.|[^'\\])')"
    r"|(##|<<|>>|==|!=|<=|>=|&&|\|\||[-+*/%&|^~()!,<>=?:#]))"
)


def tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"cannot tokenize {text[pos:pos + 40]!r}")
        tokens.append(next(group for group in match.groups() if group is not None))
        pos = match.end()
    return tokens


def parse_defines(source: str) -> dict[str, Macro]:
    """Every #define of ``source``, in order (dicts keep insertion order)."""
    macros: dict[str, Macro] = {}
    source = source.replace("\\\n", " ")
    for line in source.splitlines():
        match = re.match(r"\s*#\s*define\s+([A-Za-z_]\w*)(\(([^)]*)\))?(.*)", line)
        if match is None:
            continue
        name, has_params, params, rest = match.groups()
        comments = re.findall(r"/\*(.*?)\*/", rest)
        body = re.sub(r"/\*.*?\*/", " ", rest)
        body = body.split("/*", 1)[0].split("//", 1)[0]  # a comment running past the line
        macros[name] = Macro(
            tuple(p.strip() for p in params.split(",") if p.strip()) if has_params else None,
            tuple(tokenize(body)),
            " ".join(c.strip() for c in comments),
        )
    return macros


def _arguments(tokens: list[str], start: int) -> tuple[list[list[str]], int]:
    """The arguments of a macro call whose "(" is at ``start``; and the index after ")"."""
    args: list[list[str]] = [[]]
    depth = 0
    for index in range(start, len(tokens)):
        token = tokens[index]
        if token == "(":
            depth += 1
            if depth == 1:
                continue
        elif token == ")":
            depth -= 1
            if depth == 0:
                return ([] if args == [[]] else args), index + 1
        elif token == "," and depth == 1:
            args.append([])
            continue
        args[-1].append(token)
    raise ValueError("unbalanced parentheses in a macro call")


def expand(tokens: list[str], macros: dict[str, Macro], hidden: frozenset[str] = frozenset()) -> list[str]:
    out: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        macro = macros.get(token)
        if macro is None or token in hidden:
            out.append(token)
            index += 1
        elif macro.params is None:
            out += expand(list(macro.body), macros, hidden | {token})
            index += 1
        elif index + 1 < len(tokens) and tokens[index + 1] == "(":
            args, index = _arguments(tokens, index + 1)
            if len(args) != len(macro.params):
                raise ValueError(f"{token} takes {len(macro.params)} arguments, got {len(args)}")
            out += expand(_substitute(macro, args, macros, hidden), macros, hidden | {token})
        else:
            out.append(token)
            index += 1
    return out


def _substitute(macro: Macro, args: list[list[str]], macros: dict[str, Macro],
                hidden: frozenset[str]) -> list[str]:
    assert macro.params is not None
    body = list(macro.body)
    result: list[str] = []
    for position, token in enumerate(body):
        if token in macro.params:
            arg = args[macro.params.index(token)]
            pasted = (position > 0 and body[position - 1] == "##") or (
                position + 1 < len(body) and body[position + 1] == "##")
            # C: an operand of ## is substituted unexpanded, any other argument expanded.
            result += arg if pasted else expand(arg, macros, hidden)
        else:
            result.append(token)
    while "##" in result:
        at = result.index("##")
        result[at - 1:at + 2] = [result[at - 1] + result[at + 1]]
    return result


_CASTS = {"__u32", "__u64", "int"}
_OPERATORS = {"<<", ">>", "|", "&", "^", "~", "+", "-", "*", "(", ")"}


def evaluate(tokens: list[str]) -> int | None:
    """The value of a fully expanded constant expression; None if it has names left
    (a parametric macro) or operators this header never uses in constants."""
    python: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "(" and index + 2 < len(tokens) and tokens[index + 1] in _CASTS and tokens[index + 2] == ")":
            index += 3  # a cast: every value here fits the type it is cast to
            continue
        if token[0].isdigit():
            python.append(str(int(token.rstrip("uUlL"), 0)))
        elif token[0] == "'":
            char = token[1:-1].encode().decode("unicode_escape")
            python.append(str(ord(char)))
        elif token in _OPERATORS:
            python.append(token)
        else:
            return None
        index += 1
    if not python:
        return None
    value = eval(" ".join(python), {"__builtins__": {}})  # digits and operators only
    return int(value) & MASK64


def constant(name: str, macros: dict[str, Macro]) -> int | None:
    macro = macros[name]
    if macro.params is not None:
        return None
    return evaluate(expand([name], macros))


def uses(name: str, helper: str, macros: dict[str, Macro]) -> bool:
    """Whether ``name`` is built with the function-like macro ``helper``."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in macros:
            continue
        seen.add(current)
        body = macros[current].body
        if helper in body:
            return True
        todo += [t for t in body if t in macros]
    return False


# --- drm_format_info ------------------------------------------------------------------
class Info(NamedTuple):
    planes: tuple[tuple[int, int, int], ...]  # (bytes per block, block width, block height)
    hsub: int
    vsub: int
    flags: int


def _table_source(info_c: str) -> str:
    start = info_c.index("__drm_format_info(")
    start = info_c.index("formats[] = {", start) + len("formats[] = {")
    end = info_c.index("};", start)
    table = info_c[start:end]
    # DRM_FORMAT_BIG_ENDIAN variants (only on big-endian hosts) are not separate formats here.
    return re.sub(r"#ifdef __BIG_ENDIAN.*?#endif", "", table, flags=re.S)


def _entries(table: str) -> list[str]:
    entries, depth, start = [], 0, 0
    for index, char in enumerate(table):
        if char == "{":
            depth += 1
            if depth == 1:
                start = index + 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                entries.append(table[start:index])
    return entries


def _numbers(value: str) -> list[int]:
    return [int(v, 0) for v in value.strip("{} \t\n").split(",") if v.strip()]


def parse_format_info(info_c: str) -> dict[str, Info]:
    result: dict[str, Info] = {}
    for entry in _entries(_table_source(info_c)):
        fields: dict[str, str] = {key: value.strip() for key, value in
                                  re.findall(r"\.(\w+)\s*=\s*(\{[^}]*\}|[^,{}]+)", entry)}
        name = fields["format"]
        if not re.fullmatch(r"DRM_FORMAT_\w+", name):
            raise ValueError(f"unexpected format entry {name!r}")
        count = int(fields["num_planes"], 0)
        block_w = _numbers(fields.get("block_w", "{}"))
        block_h = _numbers(fields.get("block_h", "{}"))
        # cpp and char_per_block are one union in struct drm_format_info.
        per_block = _numbers(fields.get("char_per_block") or fields.get("cpp", "{}"))
        planes = []
        for plane in range(count):
            size = per_block[plane] if plane < len(per_block) else 0
            width = block_w[plane] if plane < len(block_w) and block_w[plane] else 1
            height = block_h[plane] if plane < len(block_h) and block_h[plane] else 1
            planes.append((size, width, height))
        flags = sum(bit for key, bit in (("is_yuv", IS_YUV), ("has_alpha", HAS_ALPHA),
                                          ("is_color_indexed", COLOR_INDEXED))
                    if fields.get(key) == "true")
        result[name] = Info(tuple(planes), int(fields["hsub"], 0), int(fields["vsub"], 0), flags)
    return result


def layout_from_comment(comment: str) -> Info | None:
    """A single-plane pixel size from a header comment such as "[15:0] R little endian"."""
    match = re.match(r"\[(\d+):0\]", comment)
    if match is None or (int(match.group(1)) + 1) % 8:
        return None
    flags = FROM_HEADER | (HAS_ALPHA if re.search(r"\bA\b", comment) else 0)
    if re.search(r"\b(Y|Cb|Cr)\b", comment):
        flags |= IS_YUV
    return Info((((int(match.group(1)) + 1) // 8, 1, 1),), 1, 1, flags)


# --- the generated module -------------------------------------------------------------
def kernel_version(tree: Path) -> str:
    makefile = (tree / "Makefile").read_text()
    parts = {key: re.search(rf"^{key}[ \t]*=[ \t]*(\S*)", makefile, re.M) for key in
             ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION")}
    values = {key: (m.group(1) if m else "") for key, m in parts.items()}
    return f"{values['VERSION']}.{values['PATCHLEVEL']}.{values['SUBLEVEL']}{values['EXTRAVERSION']}"


def generate(tree: Path, label: str | None) -> str:
    header_text = (tree / HEADER).read_text()
    info_text = (tree / INFO_C).read_text()
    macros = parse_defines(header_text)
    info = parse_format_info(info_text)
    version = kernel_version(tree)

    formats: list[tuple[str, int, Info]] = []
    derived: list[str] = []
    missing: list[str] = []
    for name in macros:
        if not name.startswith("DRM_FORMAT_") or not uses(name, "fourcc_code", macros):
            continue
        code = constant(name, macros)
        if code is None:
            continue
        entry = info.get(name)
        if entry is None:
            entry = layout_from_comment(macros[name].comment)
            (derived if entry else missing).append(name)
        formats.append((name[len("DRM_FORMAT_"):], code, entry or Info((), 1, 1, 0)))
    unknown = sorted(set(info) - {f"DRM_FORMAT_{name}" for name, _, _ in formats})
    if unknown:
        raise SystemExit(f"drm_format_info has formats the header lacks: {unknown}")

    vendors = [(name[len("DRM_FORMAT_MOD_VENDOR_"):], constant(name, macros)) for name in macros
               if name.startswith("DRM_FORMAT_MOD_VENDOR_")]
    modifiers: list[tuple[str, int]] = []
    aliases: list[tuple[str, int]] = []
    for name in macros:
        if not name.startswith(("DRM_FORMAT_MOD_", "I915_FORMAT_MOD_")):
            continue
        if name.startswith(("DRM_FORMAT_MOD_VENDOR_", "DRM_FORMAT_MOD_ARM_TYPE_")):
            continue  # fields of a modifier, not modifiers
        value = constant(name, macros)
        if value is not None:
            # "#define A B" with B another modifier: A is an alias, listed after the names.
            body = macros[name].body
            alias = len(body) == 1 and body[0].startswith(("DRM_FORMAT_MOD_", "I915_FORMAT_MOD_"))
            (aliases if alias else modifiers).append((name, value))
    modifiers += aliases

    source = f"Linux {version}" + (f" ({label})" if label else "")
    digests = {path: hashlib.sha256((tree / path).read_bytes()).hexdigest()[:16] for path in (HEADER, INFO_C)}
    lines = [
        f"# Generated by tools/gen_drm_formats.py from {source}: do not edit.",
        f"#   {HEADER} (sha256 {digests[HEADER]}...): codes, names, vendors, modifiers",
        f"#   {INFO_C} (sha256 {digests[INFO_C]}...): drm_format_info planes, blocks, subsampling",
        "# Regenerate: python tools/gen_drm_formats.py /path/to/linux --label '...'",
        '"""DRM pixel formats and format modifiers as the kernel defines them (generated)."""',
        "",
        f"KERNEL_VERSION = {version!r}",
        f"SOURCE = {source!r}",
        "",
        "# Flag bits of each format.",
        f"IS_YUV, HAS_ALPHA, COLOR_INDEXED, FROM_HEADER = {IS_YUV}, {HAS_ALPHA}, {COLOR_INDEXED}, {FROM_HEADER}",
        "",
        "# (name without DRM_FORMAT_, fourcc, planes, hsub, vsub, flags); each plane is",
        "# (bytes per block, block width, block height); hsub/vsub apply to planes 1..n.",
        "# No planes: drm_format_info has no entry and the header comment gives no size.",
        "# 0 bytes per block: a layout that exists only with a non-linear modifier.",
        "# FROM_HEADER: no drm_format_info entry; the pixel size is the header comment's [N:0].",
        "FORMATS: tuple[tuple[str, int, tuple[tuple[int, int, int], ...], int, int, int], ...] = (",
    ]
    for name, code, entry in formats:
        planes = "(" + "".join(f"({b}, {w}, {h}), " for b, w, h in entry.planes).rstrip(" ") + ")"
        lines.append(f"    ({name!r}, 0x{code:08x}, {planes}, {entry.hsub}, {entry.vsub}, {entry.flags}),")
    lines += [")", "", "# DRM_FORMAT_MOD_VENDOR_*: the top 8 bits of a modifier.",
              "VENDORS: tuple[tuple[str, int], ...] = ("]
    lines += [f"    ({name!r}, 0x{value:02x})," for name, value in vendors]
    lines += [")", "", "# Named modifiers in header order, then aliases (#define A B); the first name of a value wins.",
              "MODIFIERS: tuple[tuple[str, int], ...] = ("]
    lines += [f"    ({name!r}, 0x{value:016x})," for name, value in modifiers]
    lines += [")", ""]
    report = (f"{len(formats)} formats ({len(info)} from drm_format_info, {len(derived)} from header "
              f"comments: {', '.join(derived) or '-'}; {len(missing)} without layout: "
              f"{', '.join(missing) or '-'}), {len(vendors)} vendors, {len(modifiers)} modifiers")
    print(report, file=sys.stderr)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree", type=Path, help="a Linux source tree (needs the two files and Makefile)")
    parser.add_argument("--label", help="where the tree came from, recorded in the output")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if the output is not up to date")
    args = parser.parse_args(argv)
    text = generate(args.tree, args.label)
    if args.check:
        if args.output.read_text() != text:
            print(f"{args.output} is out of date; rerun without --check", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
