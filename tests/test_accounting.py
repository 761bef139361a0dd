"""pydmabuf.tools.accounting: snapshot() of who holds which buffer, and leaks()."""

from __future__ import annotations

import gc
import json
import mmap
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BACKEND

import pydmabuf
from pydmabuf.tools import accounting
from pydmabuf.tools.accounting import BufferUsage, Holder, Snapshot

PAGE = mmap.PAGESIZE
CHILD = str(Path(__file__).with_name("accounting_child.py"))
# What snapshot() reports as the exporter of a heap buffer on this backend.
HEAP_EXPORTER = "system" if BACKEND == "kernel" else accounting.FALLBACK_EXPORTER
ROOT = os.geteuid() == 0


def _spawn(role: str, *, sock: socket.socket | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, CHILD, role]
    fds: tuple[int, ...] = ()
    if sock is not None:
        args.append(str(sock.fileno()))
        fds = (sock.fileno(),)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, pass_fds=fds, env=env)


def _ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"child exited with {proc.wait()}"
    return line


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=120)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def three() -> Iterator[tuple[int, int, int]]:
    """sender and receiver share "shared" by fd passing; mapper only maps "mapped"
    (through Buffer.map, whose mmap keeps a dup fd) and "maponly" (libc mmap, no fd)."""
    if "system" not in pydmabuf.heaps():
        pytest.skip(f"no 'system' dma-heap on the {BACKEND} backend")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        procs = [_spawn("sender", sock=a), _spawn("receiver", sock=b), _spawn("mapper")]
    try:
        for proc in procs:
            assert _ready(proc) == "ready\n"
        yield procs[0].pid, procs[1].pid, procs[2].pid
    finally:
        _stop(procs)


def _by_name(snap: Snapshot, pids: tuple[int, ...]) -> dict[str | None, BufferUsage]:
    mine = snap.filter(pids=pids)
    return {b.name: b for b in mine.buffers}


def test_three_processes_sizes_names_holders(three: tuple[int, int, int]) -> None:
    sender, receiver, mapper = three
    bufs = _by_name(accounting.snapshot(), three)
    assert set(bufs) == {"shared", "mapped", "maponly"}

    shared = bufs["shared"]
    assert (shared.size, shared.exporter) == (3 * PAGE, HEAP_EXPORTER)
    # receiver: its own fd plus the dup held by its Buffer.map() mmap, and one mapping
    assert shared.holders == [Holder(sender, 1, 0), Holder(receiver, 2, 1)]

    mapped = bufs["mapped"]
    assert (mapped.size, mapped.exporter) == (2 * PAGE, HEAP_EXPORTER)
    assert mapped.holders == [Holder(mapper, 1, 1)]  # the Buffer is closed: only mmap's dup

    only = bufs["maponly"]
    assert only.holders == [Holder(mapper, 0, 1)]
    assert only.size == PAGE  # the mapped extent, or the file's size through map_files
    assert only.inode > 0


def test_three_processes_pss(three: tuple[int, int, int]) -> None:
    sender, receiver, mapper = three
    procs = {p.pid: p for p in accounting.snapshot().filter(pids=three).processes}
    assert set(procs) == set(three)
    share = 3 * PAGE // 2
    assert (procs[sender].buffers, procs[sender].size, procs[sender].pss) == (1, 3 * PAGE, share)
    assert (procs[receiver].buffers, procs[receiver].size, procs[receiver].pss) == (1, 3 * PAGE, share)
    assert (procs[mapper].buffers, procs[mapper].size, procs[mapper].pss) == (2, 3 * PAGE, 3 * PAGE)
    assert procs[sender].name.startswith("python")
    assert procs[mapper].cmdline == (sys.executable, CHILD, "mapper")


def test_ps_json_matches(three: tuple[int, int, int]) -> None:
    sender, receiver, mapper = three
    pids = [arg for pid in three for arg in ("--pid", str(pid))]
    out = subprocess.run(
        [sys.executable, "-m", "pydmabuf", "ps", "--json", *pids], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {"buffers", "processes"} <= set(data)
    bufs = {b["name"]: b for b in data["buffers"]}
    assert set(bufs) == {"shared", "mapped", "maponly"}
    assert bufs["shared"]["size"] == 3 * PAGE
    assert bufs["shared"]["exporter"] == HEAP_EXPORTER
    assert bufs["shared"]["holders"] == [{"pid": sender, "fds": 1, "maps": 0}, {"pid": receiver, "fds": 2, "maps": 1}]
    assert bufs["mapped"]["holders"] == [{"pid": mapper, "fds": 1, "maps": 1}]
    assert bufs["maponly"]["holders"] == [{"pid": mapper, "fds": 0, "maps": 1}]
    assert isinstance(bufs["shared"]["inode"], int)
    procs = {p["pid"]: p for p in data["processes"]}
    assert procs[mapper] == {
        "pid": mapper,
        "name": procs[mapper]["name"],
        "buffers": 2,
        "size": 3 * PAGE,
        "pss": 3 * PAGE,
        "cmdline": [sys.executable, CHILD, "mapper"],  # the arguments as the process got them
    }
    assert procs[sender]["pss"] == procs[receiver]["pss"] == 3 * PAGE // 2
    # largest PSS first
    assert data["processes"][0]["pid"] == mapper


def test_ps_filters(three: tuple[int, int, int]) -> None:
    sender, _receiver, mapper = three
    snap = accounting.snapshot()
    only_sender = snap.filter(pids=[sender])
    assert [p.pid for p in only_sender.processes] == [sender]
    shared = next(b for b in only_sender.buffers if b.name == "shared")
    assert len(shared.holders) == 2  # holders stay whole: they explain the PSS
    named = snap.filter(name="map*", pids=three)
    assert sorted(b.name or "" for b in named.buffers) == ["maponly", "mapped"]
    assert [p.pid for p in named.processes] == [mapper]
    assert snap.filter(exporter="no-such-exporter").buffers == []


def test_snapshot_sees_own_buffer_with_newline_name(heap: pydmabuf.Heap) -> None:
    with heap.allocate(PAGE, name="two\nlines") as buf:
        inode = buf.info().inode
        with buf.map() as m:
            mine = accounting.snapshot().filter(pids=[os.getpid()])
            found = [b for b in mine.buffers if b.inode == inode]
            assert len(found) == 1
            assert found[0].name == "two\nlines"
            assert found[0].holders == [Holder(os.getpid(), 2, 1)]
            m[0] = 1


def test_snapshot_sees_udmabuf() -> None:
    try:
        buf = pydmabuf.udmabuf(2 * PAGE, name="udma")
    except pydmabuf.UnsupportedError as exc:
        pytest.skip(f"no udmabuf on the {BACKEND} backend: {exc}")
    with buf:
        mine = accounting.snapshot().filter(pids=[os.getpid()], name="udma")
        [found] = mine.buffers
        assert (found.inode, found.size) == (buf.info().inode, 2 * PAGE)
        assert found.exporter == ("udmabuf" if BACKEND == "kernel" else accounting.FALLBACK_EXPORTER)
        assert found.holders == [Holder(os.getpid(), 1, 0)]


def test_snapshot_counts_processes() -> None:
    snap = accounting.snapshot()
    assert snap.scanned >= 1
    assert 0 <= snap.unreadable <= snap.scanned
    assert snap.unreadable == len(snap.unreadable_processes)


def test_filter_keeps_command_lines_and_unreadable(heap: pydmabuf.Heap) -> None:
    with heap.allocate(PAGE, name="filter-me"):
        snap = accounting.snapshot()
    mine = snap.filter(pids=[os.getpid()])
    [me] = mine.processes
    assert me.cmdline == accounting._cmdline(os.getpid()) != ()
    assert [p.cmdline for p in snap.processes if p.pid == os.getpid()] == [me.cmdline]
    # the filter selects buffers, not what could not be read: that stays for the warning
    assert (mine.unreadable, mine.unreadable_processes) == (snap.unreadable, snap.unreadable_processes)


def test_unprivileged_gets_partial_report(heap: pydmabuf.Heap) -> None:
    if not ROOT:
        pytest.skip("needs root to start a child that drops to uid 65534")
    with heap.allocate(PAGE, name="root-only"):
        proc = _spawn("nobody")
        try:
            report = json.loads(_ready(proc))
        finally:
            _stop([proc])
    snap, cli = report["snapshot"], report["cli"]
    names = {b["name"] for b in snap["buffers"]}
    assert "nobody" in names  # its own buffer, through its own /proc entries
    assert "root-only" not in names  # our process is root's: unreadable to uid 65534
    assert snap["unreadable"] == len(snap["unreadable_processes"]) >= 1
    # named: our process by pid and name (comm stays readable when fds and maps are not)
    assert {"pid": os.getpid(), "name": accounting._process_name(os.getpid())} in snap["unreadable_processes"]
    assert cli["code"] == 0
    ps = json.loads(cli["stdout"])
    assert ps["unreadable"] >= 1
    assert "could not be read" in cli["stderr"]


# --- leaks -------------------------------------------------------------------------


def test_no_leaks_with_live_objects_and_mappings(heap: pydmabuf.Heap) -> None:
    gc.collect()
    assert accounting.leaks() == []
    with heap.allocate(PAGE) as a, heap.allocate(PAGE) as b:
        ma = a.map()
        mb = b.map(write=False)  # read-only mmaps are recognised too
        b.close()  # the mapping keeps its dup: owned by a live mmap, not a leak
        assert accounting.leaks() == []
        ma.close()
        mb.close()
    assert accounting.leaks() == []


def test_leak_detected(heap: pydmabuf.Heap) -> None:
    buf = heap.allocate(2 * PAGE, name="leaky")
    inode = buf.info().inode
    fd = buf.detach()  # nobody owns this fd now
    try:
        found = accounting.leaks()
        assert [(leak.fd, leak.inode, leak.size, leak.name) for leak in found] == [(fd, inode, 2 * PAGE, "leaky")]
        assert found[0].exporter == HEAP_EXPORTER
    finally:
        os.close(fd)
    assert accounting.leaks() == []


def test_leak_next_to_a_mapping(heap: pydmabuf.Heap) -> None:
    with heap.allocate(PAGE) as buf, buf.map() as _m:
        extra = os.dup(buf.fileno())
        try:
            assert [leak.inode for leak in accounting.leaks()] == [buf.info().inode]
        finally:
            os.close(extra)
        assert accounting.leaks() == []


def test_leaks_ignores_other_fds() -> None:
    r, w = os.pipe()
    try:
        assert accounting.leaks() == []
    finally:
        os.close(r)
        os.close(w)


def test_processes_and_their_names_come_from_proc(tmp_path: Path) -> None:
    # ps/top read /proc themselves (no psutil): pids, existence, and names as ps shows
    # them, with the kernel's 15-character cut undone from the command line.
    assert os.getpid() in accounting.pids() and accounting.pid_exists(os.getpid())
    assert not accounting.pid_exists(0) and not accounting.pid_exists(2**22 + 7)
    long_name = tmp_path / "a-program-name-longer-than-15"
    long_name.symlink_to(sys.executable)
    child = subprocess.Popen([str(long_name), "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while accounting._process_name(child.pid) != long_name.name:
            assert time.monotonic() < deadline, accounting._process_name(child.pid)
            time.sleep(0.02)
        # and the command line, as separate arguments (spaces inside one stay inside it)
        assert accounting._cmdline(child.pid) == (str(long_name), "-c", "import time; time.sleep(30)")
    finally:
        child.kill()
        child.wait()
    assert accounting._process_name(2**22 + 7) == "?"
    assert accounting._cmdline(2**22 + 7) == ()
