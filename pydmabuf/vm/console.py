"""The guest's serial console as the host sees it.

The guest's /init tags its own lines (command started, exit status, setup
failure) with a per-run nonce that the guest command never sees, so nothing
the command prints can be mistaken for them.  Those lines are parsed here
and kept out of the output shown to the caller.
"""

from __future__ import annotations

import time
from typing import TextIO

MARKER = "PYDMABUF_VM_"


class Console:
    """Collects console text, echoes it without our marker lines, spots markers."""

    def __init__(self, nonce: str, stream: TextIO | None, started: float) -> None:
        self.nonce = nonce
        self.stream = stream
        self.started = started
        self.boot_seconds: float | None = None
        self.finished = False
        self._raw: list[str] = []
        self._line = ""  # the current, unfinished line
        self._echoed = 0  # how much of it has already been echoed
        self._cr = False  # a chunk ended in "\r", maybe half of "\r\n"

    @property
    def booted(self) -> bool:
        return self.boot_seconds is not None

    def feed(self, text: str) -> None:
        if self._cr:
            text = "\r" + text
        self._cr = text.endswith("\r")
        if self._cr:
            text = text[:-1]
        text = text.replace("\r\n", "\n")  # the serial console's line endings
        self._raw.append(text)
        *lines, self._line = (self._line + text).split("\n")
        out = []
        for line in lines:
            if self._is_marker(line):
                self._on_marker(line)
                if self._echoed:
                    out.append("\n")
            else:
                out.append(line[self._echoed :] + "\n")
            self._echoed = 0
        # Echo a partial line at once (pytest's progress dots), holding back
        # only what may still grow into one of our marker lines.
        pending = self._line[self._echoed :]
        cut = pending.find(MARKER)
        if cut < 0:
            cut = len(pending)
            for n in range(min(len(MARKER) - 1, len(pending)), 0, -1):
                if pending.endswith(MARKER[:n]):
                    cut -= n
                    break
        out.append(pending[:cut])
        self._echoed += cut
        if self.stream is not None and any(out):
            self.stream.write("".join(out))
            self.stream.flush()

    def _is_marker(self, line: str) -> bool:
        return MARKER in line and self.nonce in line

    def _on_marker(self, line: str) -> None:
        if MARKER + "START" in line and self.boot_seconds is None:
            self.boot_seconds = time.monotonic() - self.started
        elif MARKER + "EXIT=" in line or MARKER + "ERROR" in line:
            self.finished = True

    @property
    def text(self) -> str:
        return "".join(self._raw)

    def output(self) -> str:
        """The console text with our marker lines removed."""
        lines = self.text.split("\n")
        return "\n".join(line for line in lines if not self._is_marker(line))
