"""Parsing ``/proc/<pid>/fdinfo/<fd>`` for dma-buf fds.

Every separator is a TAB. A buffer name is stored verbatim and may contain newlines,
so ``name:`` (always the last dma-buf line) takes everything up to the end.
"""

from __future__ import annotations


def parse(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    head, sep, name = text.partition("\nname:\t")
    for line in head.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    if sep:
        fields["name"] = name[:-1] if name.endswith("\n") else name
    elif text.startswith("name:\t"):  # defensive: name on the first line
        fields["name"] = text[6:].rstrip("\n")
    return fields


def read(fd: int | str, pid: int | str = "self") -> dict[str, str]:
    with open(f"/proc/{pid}/fdinfo/{fd}", encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read())
