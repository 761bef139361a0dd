"""The `pydmabuf` command line: ps, top, info; help, exit codes, errors."""

from __future__ import annotations

import csv
import io
import json
import mmap
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BACKEND

import pydmabuf
from pydmabuf.tools.ps import human, printable

PAGE = mmap.PAGESIZE
CHILD = str(Path(__file__).with_name("accounting_child.py"))


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-m", "pydmabuf", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


# --- general -----------------------------------------------------------------------


def test_no_command_is_a_usage_error() -> None:
    out = run()
    assert out.returncode == 2
    assert out.stdout == ""
    assert "usage: pydmabuf" in out.stderr and "a command is required" in out.stderr


def test_help_and_version() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in ("info", "ps", "top", "exit status"):
        assert command in out.stdout
    assert run("--version").stdout.strip() == f"pydmabuf {pydmabuf.__version__}"
    ps_help = run("ps", "--help")
    assert ps_help.returncode == 0
    for option in ("--buffers", "--pid", "--name", "--exporter", "--json", "--csv"):
        assert option in ps_help.stdout


@pytest.mark.parametrize(
    "args", [["ps", "--json", "--csv"], ["ps", "--pid", "x"], ["nosuch"], ["top", "--delay", "0", "-n", "1"]]
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    out = run(*args)
    assert out.returncode == 2, out
    assert out.stdout == ""
    assert "pydmabuf" in out.stderr


def test_missing_pid_exits_1() -> None:
    out = run("ps", "--pid", "999999999")
    assert out.returncode == 1
    assert out.stderr.strip() == "pydmabuf ps: no such process: 999999999"


def test_human_units() -> None:
    assert human(0) == "0 B"
    assert human(1023) == "1023 B"
    assert human(1536) == "1.5 KiB"
    assert human(12 << 20) == "12.0 MiB"
    assert human(3 << 40) == "3.0 TiB"
    assert printable("a\nb\t") == "a\\nb\\t"
    assert printable(None) == "-"


# --- ps ------------------------------------------------------------------------------


@pytest.fixture
def named(heap: pydmabuf.Heap) -> Iterator[pydmabuf.Buffer]:
    buf = heap.allocate(3 * PAGE, name="cli\ntest")
    yield buf
    buf.close()


def test_ps_table(named: pydmabuf.Buffer) -> None:
    out = run("ps", "--pid", str(os.getpid()))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["PID", "COMMAND", "BUFS", "SIZE", "PSS"]
    row = lines[1].split()
    assert row[0] == str(os.getpid())
    assert row[2:] == ["1", "12.0", "KiB", "12.0", "KiB"]  # human units in tables
    assert any(line.startswith("total") for line in lines)


def test_ps_buffers_view_escapes_names(named: pydmabuf.Buffer) -> None:
    out = run("ps", "--buffers", "--pid", str(os.getpid()))
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if "cli\\ntest" in line]
    assert len(rows) == 1  # one line despite the newline in the name
    assert f"{os.getpid()}(1/0)" in rows[0]
    assert str(named.info().inode) in rows[0]


def test_ps_csv_in_bytes(named: pydmabuf.Buffer) -> None:
    out = run("ps", "--csv", "--pid", str(os.getpid()))
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert rows == [
        {"pid": str(os.getpid()), "name": rows[0]["name"], "buffers": "1", "size": str(3 * PAGE), "pss": str(3 * PAGE)}
    ]
    out = run("ps", "--csv", "--buffers", "--name", "cli*")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    mine = [r for r in rows if r["pid"] == str(os.getpid())]
    assert mine == [
        {
            "inode": str(named.info().inode),
            "size": str(3 * PAGE),
            "exporter": mine[0]["exporter"],
            "name": "cli\ntest",
            "pid": str(os.getpid()),
            "fds": "1",
            "maps": "0",
        }
    ]


def test_ps_json_schema(named: pydmabuf.Buffer) -> None:
    out = run("ps", "--json", "--name", "cli?test")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {"buffers", "processes", "exporters", "unreadable", "scanned"}
    [buf] = [b for b in data["buffers"] if any(h["pid"] == os.getpid() for h in b["holders"])]
    assert set(buf) == {"inode", "size", "exporter", "name", "holders"}
    assert buf["name"] == "cli\ntest" and buf["size"] == 3 * PAGE
    assert buf["holders"] == [{"pid": os.getpid(), "fds": 1, "maps": 0}]
    [proc] = [p for p in data["processes"] if p["pid"] == os.getpid()]
    assert set(proc) == {"pid", "name", "buffers", "size", "pss"}
    exporter = buf["exporter"]
    assert any(e["exporter"] == exporter and e["size"] >= 3 * PAGE for e in data["exporters"])
    none = json.loads(run("ps", "--json", "--exporter", "no-such-exporter").stdout)
    assert none["buffers"] == [] and none["processes"] == []


# --- top -----------------------------------------------------------------------------


def test_top_iterations(named: pydmabuf.Buffer) -> None:
    out = run("top", "-n", "2", "-d", "0.05", "--pid", str(os.getpid()))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("pydmabuf top - ") == 2
    assert out.stdout.count(f"\n{os.getpid():>8} ") == 2


def test_top_stops_on_interrupt() -> None:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pydmabuf", "top", "-d", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert proc.stdout.readline().startswith("pydmabuf top - ")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# --- info ----------------------------------------------------------------------------

FEATURES = {"export_sync_file", "import_sync_file", "set_deadline", "sw_sync", "vgem"}


def test_info_json() -> None:
    out = run("info", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["backend"] == BACKEND
    assert data["compiled"] is pydmabuf.compiled
    assert data["kernel"] == os.uname().release
    assert {f["name"] for f in data["features"]} == FEATURES
    for feature in data["features"]:
        assert feature["supported"] in (True, False, None)
        assert feature["detail"]
    devices = [*data["heaps"], *([data["udmabuf"]] if data["udmabuf"] else [])]
    for device in devices:
        assert set(device) == {"name", "path", "usable", "problem", "fix"}
        assert device["usable"] or device["problem"]
    heaps = {h["name"]: h for h in data["heaps"]}
    if BACKEND == "kernel" and os.geteuid() == 0 and "system" in heaps:
        assert heaps["system"]["usable"] is True
        assert data["udmabuf"] is not None
        assert data["udmabuf_size_limit_mb"] > 0 and data["udmabuf_list_limit"] > 0
        # root can allocate, so the sync_file ioctls were really tried (6.0+ kernels have them)
        probed = {f["name"]: f["supported"] for f in data["features"]}
        assert probed["export_sync_file"] is True
        assert probed["import_sync_file"] is True


def test_info_text() -> None:
    out = run("info")
    assert out.returncode == 0, out.stderr
    for label in ("backend:", "path:", "kernel:", "udmabuf:", "feature:"):
        assert label in out.stdout
    for name in FEATURES:
        assert name in out.stdout
    assert ("path:     compiled" in out.stdout) is pydmabuf.compiled


def test_info_unprivileged_suggests_fixes() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to start a child that drops to uid 65534")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run(
        [sys.executable, CHILD, "nobody-info"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["code"] == 0
    data = json.loads(result["stdout"])
    for device in [*data["heaps"], data["udmabuf"]]:
        if device is None or device["usable"]:
            continue
        assert "Permission denied" in device["problem"]
        assert device["fix"], device  # every permission problem comes with its fix
    if not any(h["usable"] for h in data["heaps"]) and data["heaps"]:
        probed = {f["name"]: f for f in data["features"]}
        assert probed["export_sync_file"]["supported"] is None
        assert probed["export_sync_file"]["fix"]
