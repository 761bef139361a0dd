"""The `pydmabuf` command line: ps, top, info; help, exit codes, errors."""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import json
import mmap
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _procs import fork, join
from conftest import BACKEND

import pydmabuf
from pydmabuf.tools import accounting, cli, demo, features
from pydmabuf.tools import ps as ps_tool
from pydmabuf.tools.ps import human, parse_size, printable

PAGE = mmap.PAGESIZE
CHILD = str(Path(__file__).with_name("accounting_child.py"))


def run(*args: str, timeout: float = 300, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a new process, its output into pipes; ``columns`` sets $COLUMNS (by
    default unset, as it may be in the environment that runs the tests)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "pydmabuf", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,  # no terminal to take keys from, whatever runs the tests
    )


def own_cmdline() -> list[str]:
    with open("/proc/self/cmdline", "rb") as f:
        return [arg.decode("utf-8", "replace") for arg in f.read().split(b"\0")[:-1]]


def shown(cmdline: list[str]) -> str:
    """A command line as the ps table shows it: the program's file name, then the arguments."""
    return " ".join([os.path.basename(cmdline[0]), *cmdline[1:]])


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
    for option in ("--buffers", "--pid", "--name", "--exporter", "--sort", "--json", "--csv"):
        assert option in ps_help.stdout
    top_help = run("top", "--help").stdout
    for text in ("--sort", "--delay", "--iterations", "N >= 1", "q quits", "P pss", "n name"):
        assert text in top_help
    demo_help = run("demo", "--help").stdout
    assert "1M" in demo_help and "powers of 1024" in demo_help


@pytest.mark.parametrize(
    "args", [["ps", "--json", "--csv"], ["ps", "--pid", "x"], ["nosuch"], ["top", "--delay", "0", "-n", "1"]]
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    out = run(*args)
    assert out.returncode == 2, out
    assert out.stdout == ""
    assert "pydmabuf" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["top", "-n", "0"], "argument -n/--iterations: must be at least 1, got 0 (leave -n out"),
        (["top", "-n", "-3"], "must be at least 1, got -3"),
        (["top", "-d", "nan", "-n", "1"], "argument -d/--delay: must be a number of seconds > 0, got 'nan'"),
        (["top", "-d", "inf", "-n", "1"], "must be a number of seconds > 0, got 'inf'"),
        (["ps", "--sort", "colour"], "argument --sort: invalid choice: 'colour'"),
        (["demo", "--size", "1MB"], "argument --size: ambiguous size '1MB'"),
        (["demo", "--size", "0"], "argument --size: must be at least 1 byte, got '0'"),
        (["demo", "--size", "lots"], "argument --size: not a size: 'lots'"),
        (["demo", "--size", "1.1"], "argument --size: not a whole number of bytes: '1.1' is 1.1 bytes"),
        (["demo", "--frames", "0"], "argument --frames: must be at least 1, got 0"),
        (["demo", "--buffers", "two"], "argument --buffers: not a whole number: 'two'"),
    ],
)
def test_bad_values_are_usage_errors_that_say_why(args: list[str], message: str) -> None:
    out = run(*args, timeout=60)
    assert out.returncode == 2, out
    assert out.stdout == ""
    assert "usage: pydmabuf" in out.stderr and message in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("4096B", 4096),
        ("64K", 64 << 10),
        ("64k", 64 << 10),
        ("64KiB", 64 << 10),
        ("1M", 1 << 20),
        ("1m", 1 << 20),
        ("1MiB", 1 << 20),
        (" 1 mib ", 1 << 20),
        ("1.5K", 1536),
        ("0.5M", 512 << 10),
        ("2G", 2 << 30),
        ("2GiB", 2 << 30),
        ("1T", 1 << 40),
        ("0", 0),
    ],
)
def test_parse_size_reads_suffixes_as_powers_of_1024(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a size"),
        ("M", "not a size"),
        ("-1M", "not a size"),
        ("1e6", "not a size"),
        ("\u00b2", "not a size"),  # str.isdigit() says yes
        ("1MB", "ambiguous size '1MB'"),
        ("1kb", "write 1K or 1KiB"),
        ("1Q", "unknown unit 'Q'"),
        ("1.1", "not a whole number of bytes"),
        ("0.1K", "not a whole number of bytes: '0.1K' is 102.4 bytes"),
    ],
)
def test_parse_size_refuses_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_size(text)


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
    assert lines[0].split() == ["PID", "BUFS", "SIZE", "PSS", "COMMAND"]
    row = lines[1].split(maxsplit=6)
    assert row[0] == str(os.getpid())
    assert row[1:6] == ["1", "12.0", "KiB", "12.0", "KiB"]  # human units in tables
    assert row[6] == shown(own_cmdline())  # the whole command line into a pipe
    assert any(line.startswith("total") for line in lines)
    assert out.stderr == ""  # with -p, other users' processes are not worth a warning


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
        {
            "pid": str(os.getpid()),
            "name": rows[0]["name"],
            "buffers": "1",
            "size": str(3 * PAGE),
            "pss": str(3 * PAGE),
            "cmdline": " ".join(own_cmdline()),
        }
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
    assert set(data) == {"buffers", "processes", "exporters", "unreadable", "scanned", "unreadable_processes"}
    assert len(data["unreadable_processes"]) == data["unreadable"]
    for denied in data["unreadable_processes"]:
        assert set(denied) == {"pid", "name"}
    [buf] = [b for b in data["buffers"] if any(h["pid"] == os.getpid() for h in b["holders"])]
    assert set(buf) == {"inode", "size", "exporter", "name", "holders"}
    assert buf["name"] == "cli\ntest" and buf["size"] == 3 * PAGE
    assert buf["holders"] == [{"pid": os.getpid(), "fds": 1, "maps": 0}]
    [proc] = [p for p in data["processes"] if p["pid"] == os.getpid()]
    assert set(proc) == {"pid", "name", "buffers", "size", "pss", "cmdline"}
    assert proc["cmdline"] == own_cmdline()  # the exact arguments, not joined
    exporter = buf["exporter"]
    assert any(e["exporter"] == exporter and e["size"] >= 3 * PAGE for e in data["exporters"])
    none = json.loads(run("ps", "--json", "--exporter", "no-such-exporter").stdout)
    assert none["buffers"] == [] and none["processes"] == []


@pytest.fixture
def mapper() -> Iterator[int]:
    """accounting_child.py's mapper: a process with a known command line holding two
    buffers (2 pages mapped through Buffer.map(), 1 page mapped with libc mmap)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen(
        [sys.executable, CHILD, "mapper"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n", f"child exited with {proc.wait()}"
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
        proc.stdout.close()


MAPPER_COMMAND = f"{os.path.basename(sys.executable)} {CHILD} mapper"


def test_ps_shows_the_command_line_trimmed_to_fit(mapper: int) -> None:
    wide = run("ps", "-p", str(mapper))
    assert wide.returncode == 0, wide.stderr
    [row] = [line for line in wide.stdout.splitlines() if line.split()[:1] == [str(mapper)]]
    assert row.split(maxsplit=6)[1:] == ["2", "12.0", "KiB", "12.0", "KiB", MAPPER_COMMAND]
    assert len(row) > 60  # else the narrow case below shows nothing
    narrow = run("ps", "-p", str(mapper), columns=60)  # a 60-column terminal
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert lines[1] == row[:60]  # the command line cut to fit, the numbers whole
    assert all(len(line) <= 60 for line in lines)
    # JSON and CSV are for programs: never cut
    [proc] = json.loads(run("ps", "--json", "-p", str(mapper), columns=60).stdout)["processes"]
    assert proc["cmdline"] == [sys.executable, CHILD, "mapper"]
    [csv_row] = csv.DictReader(io.StringIO(run("ps", "--csv", "-p", str(mapper), columns=60).stdout))
    assert csv_row["cmdline"] == f"{sys.executable} {CHILD} mapper"


def test_ps_sort_keys(heap: pydmabuf.Heap, mapper: int) -> None:
    me = os.getpid()
    choose = ["-p", str(me), "-p", str(mapper)]

    def pids(*sort: str) -> list[int]:
        out = run("ps", "--csv", *choose, *sort)
        assert out.returncode == 0, out.stderr
        return [int(row["pid"]) for row in csv.DictReader(io.StringIO(out.stdout))]

    def names(*sort: str) -> list[str]:
        out = run("ps", "--csv", "--buffers", *choose, *sort)
        assert out.returncode == 0, out.stderr
        return [row["name"] for row in csv.DictReader(io.StringIO(out.stdout))]

    with heap.allocate(4 * PAGE, name="sort-test"):  # 1 buffer of 4 pages here; the mapper: 2 of 3 pages
        assert pids() == pids("--sort", "pss") == [me, mapper]
        assert pids("--sort", "size") == [me, mapper]
        assert pids("--sort", "count") == [mapper, me]
        assert pids("--sort", "pid") == sorted([me, mapper])
        assert pids("--sort", "name") == [
            pid for _, pid in sorted([(shown(own_cmdline()), me), (MAPPER_COMMAND, mapper)])
        ]
        assert names() == names("--sort", "size") == ["sort-test", "mapped", "maponly"]
        assert names("--sort", "name") == sorted(["mapped", "maponly", "sort-test"])
        top = run("top", "-n", "1", "--sort", "count", *choose)
        assert top.returncode == 0, top.stderr
        head = top.stdout.splitlines()[0]
        assert f": 3 buffers, {human(7 * PAGE)}, 2 processes" in head and head.endswith("; sorted by count"), head
        rows = [line.split()[0] for line in top.stdout.splitlines() if line.split()[:1] in ([str(me)], [str(mapper)])]
        assert rows == [str(mapper), str(me)]


# --- top -----------------------------------------------------------------------------


def test_top_iterations(named: pydmabuf.Buffer) -> None:
    out = run("top", "-n", "2", "-d", "0.05", "--pid", str(os.getpid()))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("pydmabuf top - ") == 2
    assert out.stdout.count(f"\n{os.getpid():>8} ") == 2
    # one of each, in the singular; no key help without a terminal on stdin
    heads = [line for line in out.stdout.splitlines() if line.startswith("pydmabuf top - ")]
    for head in heads:  # ", N unreadable" may come between: other users' processes, or pid 1 in a container
        assert f": 1 buffer, {human(3 * PAGE)}, 1 process" in head and head.endswith("; sorted by pss"), head
    assert "keys:" not in out.stdout


def test_top_stops_on_interrupt() -> None:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pydmabuf", "top", "-d", "0.2"],
        stdin=subprocess.DEVNULL,
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
    assert data["backend_heaps"] == pydmabuf.heaps()  # what the library offers, not only /dev/dma_heap
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
    # info and pydmabuf.heaps() agree: the fallback's 'system' is listed, not "none"
    [line] = [line for line in out.stdout.splitlines() if line.startswith("heaps:")]
    assert line.startswith(f"heaps:    {', '.join(pydmabuf.heaps()) or 'none'} ("), line
    assert f"{BACKEND} backend" in line


@pytest.mark.parametrize(
    ("backend", "nodes", "offered", "line"),
    [
        (
            "fallback",
            [],
            ["system"],
            "system (emulated by the fallback backend with memfds; no /dev/dma_heap in this kernel: "
            "CONFIG_DMABUF_HEAPS off)",
        ),
        ("fallback", ["system"], ["system"], "system (emulated by the fallback backend with memfds)"),
        (
            "kernel",
            ["linux,cma", "system"],
            ["linux,cma", "system"],
            "linux,cma, system (from the kernel backend: /dev/dma_heap)",
        ),
        ("kernel", [], [], "none (kernel backend; no /dev/dma_heap in this kernel: CONFIG_DMABUF_HEAPS off)"),
        ("unusable ([Errno 22] PYDMABUF_BACKEND='x')", [], [], "unknown (no usable backend: see the backend line)"),
    ],
)
def test_info_heaps_line_says_which_backend(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    backend: str,
    nodes: list[str],
    offered: list[str],
    line: str,
) -> None:
    """The heaps line on each backend, from made-up probe results: this machine shows one."""
    report = features.Report(
        backend=backend,
        compiled=False,
        kernel="6.9.0",
        machine="x86_64",
        heaps=[features.Device(n, f"/dev/dma_heap/{n}", True) for n in nodes],
        backend_heaps=offered,
    )
    monkeypatch.setattr(features, "probe", lambda: report)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"\nheaps:    {line}\n" in out, out
    for node in nodes:  # each node's access, as before
        assert f"\nheap:     {node}: usable\n" in out


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


# --- what a user without root sees -----------------------------------------------------

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to fork a child that drops to uid 65534")


def as_nobody(*argvs: list[str], name_all: bool = False) -> list[dict[str, Any]]:
    """Run ``cli.main(argv)`` for each argv in a forked child that dropped to uid and gid
    65534, as accounting_child.py's nobody roles do: forked, not started, because this
    interpreter's files need not be readable by nobody. "SELF" in an argv is the child's
    pid. Each run's exit code, stdout and stderr. ``name_all``: ps names every unreadable
    process, not the first few."""
    r, w = os.pipe()

    def child() -> int:
        os.close(r)
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        # PR_SET_DUMPABLE: its own /proc entries readable, as for a process nobody started
        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)
        if name_all:
            ps_tool._NAMED = sys.maxsize
        results = []
        for argv in argvs:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main([str(os.getpid()) if arg == "SELF" else arg for arg in argv])
            results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
        with os.fdopen(w, "w") as f:
            json.dump(results, f)
        return 0

    pid = fork(child)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()  # before join: a full pipe would block the child
    assert join(pid, timeout=120) == 0
    results: list[dict[str, Any]] = json.loads(data)
    return results


@needs_root
def test_ps_names_the_processes_it_could_not_read() -> None:
    me, name = os.getpid(), accounting._process_name(os.getpid())
    listing, text = as_nobody(["ps", "--json"], ["ps"])
    [everyone] = as_nobody(["ps"], name_all=True)
    data = json.loads(listing["stdout"])
    assert {"pid": me, "name": name} in data["unreadable_processes"]  # root's test process, by pid and name
    assert data["unreadable"] == len(data["unreadable_processes"]) >= 1
    pids = [u["pid"] for u in data["unreadable_processes"]]
    assert pids == sorted(pids)
    found = re.fullmatch(
        r"pydmabuf ps: (\d+) of (\d+) processes could not be read \(permission denied on /proc/PID/fd\); "
        r"their buffers are missing \(run as root to see them\): (.+)\n",
        text["stderr"],
    )
    assert text["code"] == 0 and found, text["stderr"]
    count, named = int(found[1]), found[3]
    assert 1 <= count <= int(found[2])
    if count > 10:  # the first ten by pid, then how many more
        named, more = named.split(" and ")
        assert more == f"{count - 10} more (--json lists them all)"
    assert len(re.findall(r"\d+ \([^)]*\)", named)) == min(count, 10)
    assert everyone["code"] == 0
    assert f"{me} ({name})" in everyone["stderr"]


@needs_root
def test_ps_of_a_process_it_cannot_read_fails() -> None:
    me, name = os.getpid(), accounting._process_name(os.getpid())
    ps, top, ps_json, own = as_nobody(
        ["ps", "-p", str(me)], ["top", "-n", "1", "-p", str(me)], ["ps", "--json", "-p", str(me)], ["ps", "-p", "SELF"]
    )
    for command, result in (("ps", ps), ("top", top), ("ps", ps_json)):
        assert result["code"] == 1, result
        assert result["stdout"] == ""  # not an empty table, which would say it holds nothing
        assert result["stderr"] == (
            f"pydmabuf {command}: cannot read process {me} ({name}): permission denied on /proc/{me}/fd; "
            "run as root to see its buffers\n"
        )
    # its own process it can read; with -p, the processes it was not asked about go unmentioned
    assert own["code"] == 0 and own["stderr"] == "", own
    assert own["stdout"].startswith(f"{'PID':>8} ")


# --- demo ------------------------------------------------------------------------------


def test_demo_takes_size_suffixes_and_says_when_it_rounds() -> None:
    out = run("demo", "--frames", "2", "--buffers", "1", "--size", "1.5K", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"producer: --size 1536 rounded up to {PAGE} bytes ({human(PAGE)}): whole {PAGE}-byte pages\n" in out.stdout
    assert f"1 x {PAGE} bytes" in out.stdout
    exact = run("demo", "--frames", "2", "--buffers", "1", "--size", f"{2 * PAGE // 1024}k", timeout=120)
    assert exact.returncode == 0, exact.stdout + exact.stderr
    assert "rounded" not in exact.stdout
    assert f"1 x {2 * PAGE} bytes" in exact.stdout


def test_demo_rounding_names_the_allocator_beyond_pages() -> None:
    assert demo._rounding(PAGE, PAGE, "fallback memfds") is None
    assert demo._rounding(PAGE + 1, 2 * PAGE, "fallback memfds") == (
        f"--size {PAGE + 1} rounded up to {2 * PAGE} bytes ({human(2 * PAGE)}): whole {PAGE}-byte pages"
    )
    # a CMA heap may align beyond pages: then it is the heap's doing, not the page size's
    assert demo._rounding(PAGE, 16 * PAGE, "the 'linux,cma' dma-heap") == (
        f"--size {PAGE} rounded up to {16 * PAGE} bytes ({human(16 * PAGE)}): as the 'linux,cma' dma-heap allocates"
    )
