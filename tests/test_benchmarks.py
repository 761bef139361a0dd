"""The hot-path benchmarks still run (tiny counts; no timing is asserted here: speed
targets live in the benchmarks' own reports, see docs/benchmarks.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
ROWS = ("cpu_access", "export_sync_file", "signaled", "from_fd")


def _run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_bench_overhead_reports_every_row() -> None:
    out = _run("bench_overhead.py", "-n", "200", "--rounds", "1")
    for row in ROWS:
        assert any(line.startswith(row) for line in out.splitlines()), out
    assert "thin obj" in out
    _both_paths(out)


def _both_paths(out: str) -> None:
    """A compiled install reports the pure path (measured in a PYDMABUF_PURE=1 process)
    and the compiled one; a pure install has no compiled column."""
    import pydmabuf

    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in ROWS]
    header = next(line.split() for line in out.splitlines() if line.startswith("operation"))
    # a row has one number per column; the header's "thin obj" is two words
    pure_at, comp_at = header.index("pure") - 1, header.index("compiled") - 1
    for row in rows:
        assert row[pure_at] != "nan", out
        assert (row[comp_at] != "nan") == pydmabuf.compiled, out


def test_bench_ioctl_reports_every_row_on_a_real_kernel() -> None:
    if not os.path.exists("/dev/dma_heap/system"):  # a machine without heaps: it says where to run
        refused = subprocess.run([sys.executable, str(BENCH / "bench_ioctl.py"), "-n", "50"],
                                 capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 2 and "--vm" in refused.stderr
        return
    out = _run("bench_ioctl.py", "-n", "50", "--rounds", "1")
    for row in (*ROWS, "allocate", "udmabuf_from_memfd"):
        assert any(line.startswith(row) for line in out.splitlines()), out
    assert "worst pure path against the thin object API" in out
    _both_paths(out)


def test_bench_import_reports_every_row() -> None:
    out = _run("bench_import.py", "--runs", "1", "--top", "3")
    for row in ("python -c pass", "import fcntl, struct", "import json", "import pydmabuf", "pydmabuf --help",
                "pydmabuf info"):
        assert any(line.startswith(row) for line in out.splitlines()), out
    assert "importtime" in out
