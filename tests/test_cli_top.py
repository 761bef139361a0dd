"""`pydmabuf top` and its stdin: keys from a terminal (q quits at once, letters change
the order, the terminal's settings come back); no keys, and no hang, where stdin is
closed, not a terminal, or a terminal that another job has in the foreground."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator

import pytest
from _procs import fork, join

import pydmabuf

PAGE = os.sysconf("SC_PAGESIZE")
TOP = [sys.executable, "-m", "pydmabuf", "top"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("COLUMNS", None)
    return env


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """(master, slave) of a new pseudo-terminal. The slave stays open here after the child
    exits, so that its settings can be read back."""
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


def _read_until(master: int, want: bytes, seen: bytearray, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while want not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {want!r} within {timeout} s in {bytes(seen)!r}"
        ready, _, _ = select.select([master], [], [], left)
        if ready:
            seen += os.read(master, 65536)


def _drain(master: int, seen: bytearray) -> None:
    while select.select([master], [], [], 0)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: nobody holds the slave any more
            return
        if not chunk:
            return
        seen += chunk


def _on_controlling_terminal(slave: int, argv: list[str], env: dict[str, str], background: bool = False) -> int:
    """Fork a child whose controlling terminal is ``slave`` (a new session, as a login
    shell has) and exec ``argv`` there, with stdin, stdout and stderr on the terminal:
    in the terminal's foreground process group, or with ``background`` in a group of its
    own, as a shell runs ``cmd &``. The pid of the child (in the background case, of the
    session leader, whose exit status is that of the command)."""

    def leader() -> int:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if not background:
            os.execve(argv[0], argv, env)
        job = os.fork()
        if job == 0:
            try:
                os.setpgid(0, 0)  # not the terminal's foreground group: SIGTTOU if it touched the terminal
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        return join(job, timeout=60)

    return fork(leader)


def test_keys_sort_and_q_quits_at_once(terminal: tuple[int, int], heap: pydmabuf.Heap) -> None:
    master, slave = terminal
    before = termios.tcgetattr(slave)
    seen = bytearray()
    with heap.allocate(PAGE, name="top-keys"):
        # -d 60: only q can end it within the join below
        pid = _on_controlling_terminal(slave, [*TOP, "-d", "60", "-p", str(os.getpid())], _env())
        try:
            _read_until(master, b"keys: q quit; sort by P pss, s size, c count, p pid, n name", seen)
            assert b"; sorted by pss" in seen
            assert termios.tcgetattr(slave)[3] & (termios.ECHO | termios.ICANON) == 0  # cbreak, no echo
            os.write(master, b"x")  # no command: ignored
            os.write(master, b"n")
            _read_until(master, b"; sorted by name", seen)  # redrawn at once, not after 60 s
            os.write(master, b"q")
            assert join(pid, timeout=30) == 0
        except BaseException:
            os.kill(pid, signal.SIGKILL)  # not left running for 60 s after a failure
            join(pid)
            raise
    _drain(master, seen)
    assert b"Traceback" not in seen
    assert termios.tcgetattr(slave) == before  # echo and line editing back, as the shell had them


def test_q_on_a_terminal_that_is_not_the_controlling_one(terminal: tuple[int, int]) -> None:
    master, slave = terminal
    proc = subprocess.Popen([*TOP, "-d", "60"], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"pydmabuf top - ")
        assert proc.stdout.readline().startswith(b"keys: q quit")
        os.write(master, b"q")
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err


def test_a_background_job_reads_no_keys_and_does_not_stop(terminal: tuple[int, int]) -> None:
    master, slave = terminal
    seen = bytearray()
    pid = _on_controlling_terminal(slave, [*TOP, "-n", "2", "-d", "0.05"], _env(), background=True)
    deadline = time.monotonic() + 60
    while True:  # drain the terminal while waiting: a full one would block the writer
        _drain(master, seen)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            # the job, orphaned by this, gets SIGHUP and SIGCONT from the kernel: nothing is left
            os.kill(pid, signal.SIGKILL)
            join(pid)
            pytest.fail(f"top did not finish (stopped by SIGTTOU?): {bytes(seen)!r}")
        time.sleep(0.02)
    _drain(master, seen)
    assert os.waitstatus_to_exitcode(status) == 0, bytes(seen)
    assert seen.count(b"pydmabuf top - ") == 2
    assert b"keys:" not in seen


@pytest.mark.parametrize("stdin", ["closed", "devnull"])
def test_no_terminal_on_stdin_just_refreshes(stdin: str) -> None:
    command = [*TOP, "-n", "2", "-d", "0.05"]
    if stdin == "closed":  # as under a CI runner with no stdin at all: sys.stdin is None
        command = ["sh", "-c", 'exec "$@" <&-', "sh", *command]
    out = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, env=_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("pydmabuf top - ") == 2
    assert "keys:" not in out.stdout
    assert out.stderr == ""
