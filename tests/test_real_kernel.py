"""The real-kernel tier: this whole suite again, under a real kernel in QEMU.

The host's kernel may have no udmabuf, dma-heaps or DRM, so the kernel backend
cannot be exercised here.  One test boots Debian trixie's kernel (which has all
three, plus vgem for real unsignaled fences and vivid, a virtual camera), runs
``python -m pytest tests`` inside it with ``PYDMABUF_BACKEND=kernel``, and
passes only if that run passes.  A second, short boot removes the allocator
nodes first and runs ``tests/test_foreign.py`` with default settings: drivers'
dma-bufs on a machine without heaps or udmabuf.  See :mod:`pydmabuf.vm`.

The guest's pytest output streams into this run's output as it happens (its
progress lines, then its summary), and into a log file named at the end.  The
guest suite runs on every guest CPU (pytest-xdist, one worker per CPU: the guest
has as many CPUs as the host, see ``PYDMABUF_VM_CPUS``), each test under its own
limit (pytest-timeout); a guest is killed only when it prints nothing for a long
while (hung), or at an overall limit scaled to the number of tests that is there
for a runaway, not for a slow machine.

Environment:
  CI=true                       a VM that cannot run here fails the test (else: skip)
  PYDMABUF_VM_MIN_PASSED        guest tests that must pass (default 40)
  PYDMABUF_VM_TEST_TIMEOUT      seconds one guest test may take (default 600; the slowest
                                takes about 60 s on an idle 2-core machine under TCG)
  PYDMABUF_VM_TIMEOUT           the overall limit in seconds (default: 900 + 3 s per test)
  PYDMABUF_VM_KERNEL/_MODULES   boot this kernel instead of Debian's
  PYDMABUF_VM_CPUS/_MEMORY/_ACCEL  the guest (see pydmabuf.vm)
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NoReturn, TextIO

import pytest

import pydmabuf

if os.environ.get("PYDMABUF_IN_VM"):
    # We are the suite running inside the VM: do not boot another one.
    pytest.skip("real-kernel tier: already inside its VM", allow_module_level=True)

from pydmabuf import vm

REPO = Path(__file__).resolve().parent.parent
INSTALL = "apt-get install --no-install-recommends qemu-system-x86 busybox-static cpio"

# pytest's final line, with or without -q's missing "=" decoration:
#   "==== 52 passed, 3 skipped in 80.12s (0:01:20) ====" or "52 passed in 8.01s"
_SUMMARY = re.compile(r"^=*\s*((?:\d+ [a-z]+)(?:, \d+ [a-z]+)*|no tests ran) in ([\d.]+)s\b.*$", re.M)
_COUNT = re.compile(r"(\d+) ([a-z]+)")
_PLURAL = {"error": "errors", "warning": "warnings"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str, *, hint: bool = True) -> NoReturn:
    if _in_ci():
        pytest.fail(f"real-kernel tier cannot run, and CI requires it: {reason}", pytrace=False)
    if hint and "install:" not in reason:
        reason += f" (to enable it: {INSTALL})"
    pytest.skip(f"real-kernel tier (QEMU) not available: {reason}")


def parse_summary(output: str) -> tuple[dict[str, int], float] | None:
    """Outcome counts and duration from the last pytest summary line in ``output``."""
    matches = list(_SUMMARY.finditer(output))
    if not matches:
        return None
    last = matches[-1]
    counts: dict[str, int] = {}
    for number, word in _COUNT.findall(last.group(1)):
        counts[_PLURAL.get(word, word)] = int(number)
    return counts, float(last.group(2))


def summary_lines(output: str, kind: str) -> list[str]:
    """The guest's "short test summary info" lines of one kind (SKIPPED, FAILED, ERROR)."""
    return [line.strip() for line in output.splitlines() if line.startswith(kind + " ")]


def _describe(counts: dict[str, int], seconds: float, result: vm.VMResult) -> str:
    parts = [f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "skipped")]
    for key, n in counts.items():
        if key not in ("passed", "failed", "skipped") and n:
            parts.append(f"{n} {key[:-1] if n == 1 and key.endswith('s') else key}")
    boot = f"{result.boot_seconds:.1f}s" if result.boot_seconds is not None else "n/a"
    return f"{', '.join(parts)} in {seconds:.0f}s (boot {boot}, total {result.total_seconds:.0f}s)"


class _TerminalReport:
    """Shows the guest's results in the host's terminal summary, even without -s."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.ensure_newline()
        terminalreporter.section("real-kernel tier")
        for line in self.lines:
            terminalreporter.write_line(line)


def _show(config: pytest.Config, lines: list[str]) -> None:
    name = "pydmabuf-real-kernel-report"
    report = config.pluginmanager.get_plugin(name)
    if isinstance(report, _TerminalReport):
        report.lines += lines  # the second boot's lines follow the first's
    else:
        config.pluginmanager.register(_TerminalReport(lines), name)


class _Progress(io.TextIOBase):
    """The guest's console, copied whole to the log and line by line to this run's
    terminal as it arrives (past pytest's output capture), so a long tier shows
    where it is instead of sitting silent on one test."""

    def __init__(self, log: TextIO, config: pytest.Config, prefix: str) -> None:
        self.log, self.config, self.prefix, self.pending = log, config, prefix, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        *lines, self.pending = (self.pending + text).split("\n")
        if lines:
            self._show(lines)
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def _show(self, lines: list[str]) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        paused = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
        with paused:
            for line in lines:
                reporter.write_line(f"{self.prefix}{line.rstrip()}")


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _guest_kernel() -> vm.Kernel:
    """The kernel to boot; skips (fails under CI) where the VM cannot run."""
    usable, reason = vm.available()
    if not usable:
        _unavailable(reason)
    try:
        return vm.ensure_kernel()
    except (vm.KernelError, OSError) as exc:
        _unavailable(f"no guest kernel: {exc}", hint=False)


@pytest.mark.real_kernel
def test_suite_under_real_kernel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    kernel = _guest_kernel()

    # -rfEs: the guest's summary names its failures and errors as well as its
    # skips; --durations: the log says where the emulated minutes went.
    argv = [sys.executable, "-m", "pytest", str(REPO / "tests"), "-p", "no:cacheprovider", "-q", "-rfEs"]
    argv += ["--durations=15"]
    workers = vm.guest_cpus() if importlib.util.find_spec("xdist") else 1
    if workers > 1:  # the V4L2 tests take turns: tests/conftest.py
        argv += ["-n", str(workers)]
    per_test = float(os.environ.get("PYDMABUF_VM_TEST_TIMEOUT", "600"))
    if importlib.util.find_spec("pytest_timeout"):
        # thread: some tests use SIGALRM themselves; a test past its limit has its
        # stacks printed and its worker replaced (xdist), and the run goes on.
        argv += ["--timeout", f"{per_test:g}", "--timeout-method", "thread"]
    # The checkout is read-only in the guest: no bytecode, no cache; TMPDIR
    # and HOME default to the guest's tmpfs.
    env = {"PYDMABUF_BACKEND": "kernel", "PYDMABUF_IN_VM": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if pydmabuf.compiled:  # the guest runs the same checkout: compiled there too (tests/test_compiled.py)
        env["PYDMABUF_EXPECT_COMPILED"] = "1"
    # The host collected the same tests (at least this many: a -k run collects fewer).
    tests = max(len(request.session.items), 1000)
    timeout = float(os.environ.get("PYDMABUF_VM_TIMEOUT", str(900 + 3 * tests)))
    plan = f"{workers} worker{'s' if workers > 1 else ''}, {per_test:g} s per test, {timeout:.0f} s in all"
    # Its own file per run (runs may overlap), kept with pytest's recent temp dirs.
    log_path = tmp_path_factory.mktemp("real-kernel") / "guest.log"
    with log_path.open("w") as log:
        log.write(f"# pydmabuf real-kernel tier, kernel {kernel}, {plan}\n# {' '.join(argv)}\n")
        log.flush()
        progress = _Progress(log, request.config, "guest| ")
        progress.write(f"real-kernel tier: booting {kernel} ({plan}); the guest suite takes about 5 min on an "
                       f"idle 2-core machine, full log {log_path}\n")
        # The guest sees a copy of the checkout taken now: edits made while
        # the tier runs neither leak into it nor show up torn.
        result = vm.run(
            argv,
            env=env,
            cwd=str(REPO),
            timeout=timeout,
            idle_timeout=per_test + 300,
            kernel=kernel,
            stream=progress,
            live_dirs=[],
            snapshot_dirs=[str(REPO)],
        )
        log.write(f"\n# exit {result.returncode}, error: {result.error}\n")

    where = f"full guest output: {log_path}"
    parsed = parse_summary(result.output)
    if parsed is None:
        _show(request.config, [f"real-kernel tier: no pytest summary from the guest ({where})"])
    else:
        counts, seconds = parsed
        _show(
            request.config,
            [
                f"real-kernel tier ({plan}; accelerator {result.accel}): {_describe(counts, seconds, result)}",
                *summary_lines(result.output, "SKIPPED"),
                where,
            ],
        )

    failures = summary_lines(result.output, "FAILED") + summary_lines(result.output, "ERROR")
    if failures:
        details = "guest failures:\n" + "\n".join(failures[:40])
    else:
        details = f"--- last lines of the guest output ---\n{_tail(result.output)}"
    context = f"{where}\n{details}"
    # Plain locals keep pytest's assertion introspection short.
    error, returncode = result.error, result.returncode
    assert error is None, f"the VM failed: {error}\n{context}"
    assert parsed is not None, f"no pytest summary line in the guest output\n{context}"
    counts, _ = parsed
    failed, errors = counts.get("failed", 0), counts.get("errors", 0)
    assert returncode == 0, f"guest pytest exited {returncode}: {failed} failed, {errors} errors\n{context}"
    minimum = int(os.environ.get("PYDMABUF_VM_MIN_PASSED", "40"))
    passed = counts.get("passed", 0)
    assert passed >= minimum, (
        f"only {passed} tests passed in the guest, expected at least {minimum} (PYDMABUF_VM_MIN_PASSED)\n{context}"
    )


# Every test of tests/test_foreign.py, for both exporters (vgem and vivid).
FOREIGN_MIN_PASSED = 14
FOREIGN_TIMEOUT = 300.0  # seconds; the boot takes about one minute here
_DEFAULT_BACKEND = re.compile(r"^pydmabuf default backend: (\S+)$", re.M)


@pytest.mark.real_kernel
def test_foreign_buffers_without_allocator_nodes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second, short boot, like a GPU server or camera board: no /dev/dma_heap and
    no /dev/udmabuf (removed before anything runs), PYDMABUF_BACKEND unset. The
    default backend must be the fallback there, and tests/test_foreign.py must wrap
    vgem's and vivid's dma-bufs as kernel buffers, with nothing skipped."""
    kernel = _guest_kernel()
    python = shlex.quote(sys.executable)
    script = (
        "rm -rf /dev/dma_heap /dev/udmabuf && "  # devtmpfs: root may remove nodes; no udev brings them back
        f"{python} -c 'import pydmabuf; print(\"pydmabuf default backend:\", pydmabuf.backend)' && "
        f"exec {python} -m pytest tests/test_foreign.py -p no:cacheprovider -q -rfEs"
    )
    env = {"PYDMABUF_IN_VM": "1", "PYTHONDONTWRITEBYTECODE": "1"}  # and no PYDMABUF_BACKEND
    log_path = tmp_path_factory.mktemp("real-kernel-foreign") / "guest.log"
    with log_path.open("w") as log:
        log.write(f"# pydmabuf real-kernel tier, no allocator nodes, kernel {kernel}\n# {script}\n")
        log.flush()
        result = vm.run(["sh", "-c", script], env=env, cwd=str(REPO), timeout=FOREIGN_TIMEOUT, kernel=kernel,
                        stream=_Progress(log, request.config, "guest (no allocators)| "), live_dirs=[],
                        snapshot_dirs=[str(REPO)])
        log.write(f"\n# exit {result.returncode}, error: {result.error}\n")

    where = f"full guest output: {log_path}"
    parsed = parse_summary(result.output)
    described = _describe(*parsed, result) if parsed else "no pytest summary from the guest"
    skips = summary_lines(result.output, "SKIPPED")
    _show(request.config, [f"real-kernel tier, no allocator nodes (test_foreign.py): {described}", *skips, where])

    failures = summary_lines(result.output, "FAILED") + summary_lines(result.output, "ERROR")
    context = f"{where}\n" + ("guest failures:\n" + "\n".join(failures) if failures else
                              f"--- last lines of the guest output ---\n{_tail(result.output)}")
    error, returncode = result.error, result.returncode
    assert error is None, f"the VM failed: {error}\n{context}"
    backend = _DEFAULT_BACKEND.search(result.output)
    assert backend is not None, f"the guest did not report its default backend\n{context}"
    assert backend.group(1) == "fallback", f"without allocator nodes auto chose {backend.group(1)}\n{context}"
    assert parsed is not None, f"no pytest summary line in the guest output\n{context}"
    counts, _ = parsed
    assert returncode == 0, f"guest pytest exited {returncode}\n{context}"
    assert not skips and not counts.get("skipped"), f"foreign-buffer tests skipped in the guest\n{context}"
    passed = counts.get("passed", 0)
    assert passed >= FOREIGN_MIN_PASSED, f"only {passed} passed, expected {FOREIGN_MIN_PASSED}\n{context}"


CONSUMER_TIMEOUT = 900.0
CONSUMER_MIN_PASSED = 12  # the four examples, and the eight unixfd tests
_CONSUMER_RESULTS = ("every byte as", "exact pixels", "frames/s", "killed holding")  # the results' lines


@pytest.mark.real_kernel
def test_real_consumers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A third boot, over the consumer root (Debian trixie with Mesa and GStreamer,
    built with mmdebstrap on first use: pydmabuf.vm.consumers): the examples that
    feed real consumers, and pydmabuf.gstreamer against GStreamer's unixfdsink and
    unixfdsrc, run on the kernel backend (tests/consumers/), nothing skipped. The
    report names the Mesa and GStreamer versions and each result, frames/s included."""
    kernel = _guest_kernel()
    from pydmabuf.vm import consumers

    problem = consumers.missing_prerequisite() if consumers.cached_root() is None else None
    if problem is not None:
        _unavailable(f"no consumer root: {problem}", hint=False)
    root = consumers.ensure_root()
    versions = ", ".join(f"{package} {version}" for package, version in consumers.versions(root).items())
    argv = ["python3", "-m", "pytest", "tests/consumers", "-p", "no:cacheprovider", "--noconftest", "-q", "-rfEs",
            "-s"]
    env = {"PYDMABUF_BACKEND": "kernel", "PYDMABUF_IN_VM": "1", "PYDMABUF_CONSUMER_TIER": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    log_path = tmp_path_factory.mktemp("real-kernel-consumers") / "guest.log"
    with log_path.open("w") as log:
        log.write(f"# pydmabuf real-kernel tier, consumer root {root} ({versions}), kernel {kernel}\n"
                  f"# {' '.join(argv)}\n")
        log.flush()
        result = vm.run(argv, env=env, cwd=str(REPO), timeout=CONSUMER_TIMEOUT, kernel=kernel,
                        stream=_Progress(log, request.config, "guest (consumers)| "), consumers=True)
        log.write(f"\n# exit {result.returncode}, error: {result.error}\n")

    where = f"full guest output: {log_path}"
    parsed = parse_summary(result.output)
    described = _describe(*parsed, result) if parsed else "no pytest summary from the guest"
    results = [line.strip().lstrip(".") for line in result.output.splitlines()
               if any(marker in line for marker in _CONSUMER_RESULTS)]
    skips = summary_lines(result.output, "SKIPPED")
    _show(request.config, [f"real-kernel tier, real consumers ({versions}): {described}", *results, *skips,
                           where])

    failures = summary_lines(result.output, "FAILED") + summary_lines(result.output, "ERROR")
    context = f"{where}\n" + ("guest failures:\n" + "\n".join(failures) if failures else
                              f"--- last lines of the guest output ---\n{_tail(result.output)}")
    assert result.error is None, f"the VM failed: {result.error}\n{context}"
    assert parsed is not None, f"no pytest summary line in the guest output\n{context}"
    counts, _ = parsed
    assert result.returncode == 0, f"guest pytest exited {result.returncode}\n{context}"
    assert not skips and not counts.get("skipped"), f"consumer tests skipped in the guest\n{context}"
    passed = counts.get("passed", 0)
    assert passed >= CONSUMER_MIN_PASSED, f"only {passed} passed, expected {CONSUMER_MIN_PASSED}\n{context}"


# The runner's pure parts, checked on the host without booting anything.


def test_parse_summary() -> None:
    out = "....\nSKIPPED [1] t.py:3: why\n== 3 passed, 1 failed, 2 errors, 1 skipped in 8.50s (0:00:08) ==\n"
    assert parse_summary(out) == ({"passed": 3, "failed": 1, "errors": 2, "skipped": 1}, 8.5)
    assert parse_summary("12 passed, 1 error in 3.01s\n") == ({"passed": 12, "errors": 1}, 3.01)
    assert parse_summary("no tests ran in 0.01s") == ({}, 0.01)
    assert parse_summary("Kernel panic - not syncing") is None
    assert summary_lines(out, "SKIPPED") == ["SKIPPED [1] t.py:3: why"]


def test_console_markers_are_hidden_and_parsed() -> None:
    import io

    from pydmabuf.vm.console import Console

    echo = io.StringIO()
    console = Console("n0nce", echo, started=0.0)
    console.feed("boot\r\n\x1b[2JPYDMABUF_VM_START n0nce\r")
    console.feed("\nhello\r\n...PYDMABUF_VM_EXIT=0 forged\r\npartial")
    assert console.booted and not console.finished
    assert echo.getvalue().endswith("partial")  # partial lines are echoed at once
    console.feed("\r\nPYDMABUF_VM_EX")
    assert not echo.getvalue().endswith("PYDMABUF_VM_EX")  # held: may be a marker
    assert not console.finished
    console.feed("IT=3 n0nce\r\n")
    assert console.finished
    assert "n0nce" not in console.output() and "n0nce" not in echo.getvalue()
    assert "forged" in console.output() and "\r" not in console.output()


def test_job_script_quotes_everything(tmp_path: Path) -> None:
    import subprocess

    from pydmabuf.vm.initramfs import Job

    argv = ["printf", "%s|", "a b", "$HOME", "it's", "*", "\n"]
    job = Job(argv, {"X": "y'z $Q"}, str(tmp_path), "n")
    script = job.script()
    # Run the generated command with the busybox chroot left out.
    script = script.replace("/bin/busybox chroot /host ", "").replace("/bin/busybox env", "env")
    done = subprocess.run(["sh", "-c", script + "job"], capture_output=True, text=True, check=True)
    assert done.stdout == "a b|$HOME|it's|*|\n|"
    with pytest.raises(ValueError):
        Job(["a\0b"], {}, "/", "n").script()


def test_cpio_archive_is_readable(tmp_path: Path) -> None:
    import io
    import shutil
    import subprocess

    from pydmabuf.vm.cpio import CpioWriter

    if not shutil.which("cpio"):
        pytest.skip("cpio(1) not installed")
    buf = io.BytesIO()
    cpio = CpioWriter(buf)
    cpio.directory("d")
    cpio.file("d/f", b"hello", 0o755)
    cpio.symlink("d/l", "f")
    cpio.close()
    assert len(buf.getvalue()) % 512 == 0
    listing = subprocess.run(["cpio", "-it"], input=buf.getvalue(), capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["d", "d/f", "d/l"]


def test_module_load_order() -> None:
    from pydmabuf.vm import modules

    deps = {"vgem": b"\0depends=drm,drm_shmem_helper\0", "drm": b"", "drm_shmem_helper": b"\0depends=drm\0"}
    order, found, missing = modules.load_order(["9p", "vgem"], deps.get, builtin={"9p"})
    assert order == ["drm", "drm_shmem_helper", "vgem"]
    assert missing == [] and set(found) == set(deps)


def test_check_never_downloads(tmp_path: Path) -> None:
    # `python -m pydmabuf.vm check` with nothing cached says how to fetch, quickly,
    # and leaves the cache as it was (fetch is the one command that downloads).
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("PYDMABUF_VM_KERNEL", None)
    out = subprocess.run([sys.executable, "-m", "pydmabuf.vm", "check"], env=env, capture_output=True, text=True,
                         timeout=60)
    if "available: yes" in out.stdout:
        assert out.returncode == 0 and "none cached" in out.stdout and "fetch" in out.stdout, out.stdout
    assert not any((tmp_path / "pydmabuf").rglob("*.deb")) and not (tmp_path / "pydmabuf" / "kernel").exists()


class _Watch:
    """A console stand-in for qemu.boot: booted at the first output, never finished."""

    def __init__(self) -> None:
        self.text = ""

    @property
    def booted(self) -> bool:
        return bool(self.text)

    @property
    def finished(self) -> bool:
        return False

    def feed(self, text: str) -> None:
        self.text += text


def test_a_silent_guest_is_killed_at_the_idle_limit_and_a_chatty_one_is_not() -> None:
    import time

    from pydmabuf.vm import qemu

    # A process stands in for QEMU: what boot() supervises is its output.
    started = time.monotonic()
    silent = qemu.boot(["sh", "-c", "echo up; exec sleep 60"], _Watch(), timeout=60, boot_timeout=30, idle_timeout=1)
    assert silent.stalled and not silent.timed_out and silent.exit_status is None
    assert time.monotonic() - started < 30
    watch = _Watch()
    chatty = qemu.boot(["sh", "-c", "for i in 1 2 3 4 5 6; do echo $i; sleep 0.4; done"], watch, timeout=60,
                       boot_timeout=30, idle_timeout=1.5)
    assert not chatty.stalled and chatty.exit_status == 0 and watch.text.split() == ["1", "2", "3", "4", "5", "6"]


def test_the_accelerator_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydmabuf.vm import accel

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for value, expected in (("", "auto"), ("KVM", "kvm"), ("tcg", "tcg"), ("auto", "auto")):
        monkeypatch.setenv("PYDMABUF_VM_ACCEL", value)
        assert accel.requested() == expected
    monkeypatch.setenv("PYDMABUF_VM_ACCEL", "hvf")
    with pytest.raises(ValueError, match="auto, kvm, tcg"):
        accel.requested()
    monkeypatch.setenv("PYDMABUF_VM_ACCEL", "tcg")
    assert vm.choose_accel().name == "tcg"  # asked for: no probe, no /dev/kvm needed
    # A probe's answer is remembered per host kernel, QEMU binary and guest kernel.
    key = accel.cache_key(sys.executable, "6.12.0-test")
    assert accel.recall(key) is None
    accel.remember(key, accel.Accel("tcg", "software emulation: a probe boot under KVM failed (hung)"))
    again = accel.recall(key)
    assert again is not None and again.name == "tcg" and "probe boot under KVM failed" in again.why
    assert accel.recall(accel.cache_key(sys.executable, "6.13.0-other")) is None
    (tmp_path / "pydmabuf" / "accel.json").write_text("not json")
    assert accel.recall(key) is None  # a damaged cache means probing again, not a crash


def test_guest_size_follows_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYDMABUF_VM_CPUS", raising=False)
    monkeypatch.delenv("PYDMABUF_VM_MEMORY", raising=False)
    assert vm.guest_cpus() == min(len(os.sched_getaffinity(0)), 8)
    assert vm.guest_memory(2) == "2048M" and vm.guest_memory(8) == "4096M"
    monkeypatch.setenv("PYDMABUF_VM_CPUS", "3")
    monkeypatch.setenv("PYDMABUF_VM_MEMORY", "3G")
    assert (vm.guest_cpus(), vm.guest_memory(3)) == (3, "3G")


def test_progress_reaches_the_terminal_past_capture(tmp_path: Path) -> None:
    # The tier's guest output must show while the test runs, even with capture on.
    (tmp_path / "test_inner.py").write_text(
        "import io, sys\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from test_real_kernel import _Progress\n"
        "def test_stream(request):\n"
        "    log = io.StringIO()\n"
        "    p = _Progress(log, request.config, 'guest| ')\n"
        "    p.write('tests/test_a.py ..')\n"
        "    p.write('..  [ 50%]\\nhalf')\n"
        "    assert log.getvalue() == 'tests/test_a.py ....  [ 50%]\\nhalf'\n"
    )
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "guest| tests/test_a.py ....  [ 50%]" in lines, done.stdout
    assert "guest| half" not in done.stdout  # a partial line waits for its end


def test_the_debian_archive_on_debian_and_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydmabuf.vm import debian

    monkeypatch.delenv("PYDMABUF_VM_DEBIAN_URI", raising=False)
    keyring = tmp_path / "debian-archive-keyring.gpg"
    keyring.write_bytes(b"")
    monkeypatch.setenv("PYDMABUF_VM_DEBIAN_KEYRING", str(keyring))
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "x.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/ubuntu/\nSuites: noble noble-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n"
    )
    release = tmp_path / "os-release"
    release.write_text('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n')
    # Ubuntu's archive and keys would be asked for trixie: Debian's own instead.
    assert debian.host_archive(apt, release) == debian.ArchiveSource(debian.DEBIAN_URI, str(keyring))
    release.write_text('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\n')
    assert debian.host_archive(apt, release).uri == "http://mirror.example/ubuntu"  # a Debian host's own mirror
    monkeypatch.setenv("PYDMABUF_VM_DEBIAN_URI", "http://proxy.example:3142/debian/")
    assert debian.host_archive(apt, release).uri == "http://proxy.example:3142/debian"
    monkeypatch.setenv("PYDMABUF_VM_DEBIAN_KEYRING", str(tmp_path / "missing.gpg"))
    with pytest.raises(debian.AptError, match="apt-get install debian-archive-keyring"):
        debian.host_archive(apt, release)


def test_download_progress_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from pydmabuf.vm import progress

    assert progress.describe(41_900_000, 104_800_000, 5.0) == (
        "41.9 MB of 104.8 MB  40% [#########...............]  8.4 MB/s, 8 s left"
    )
    assert progress.describe(5_000_000, None, 2.0) == "5.0 MB  2.5 MB/s"  # no size known: no bar
    # In a log, a line per LOG_EVERY seconds and one at the end, not one per update.
    clock = iter([0.0, 1.0, 2.0, 6.0, 7.0, 8.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    log = io.StringIO()
    meter = progress.Meter(log, "kernel", 4_000_000)
    for done in (1_000_000, 2_000_000, 3_000_000, 4_000_000):
        meter.update(done)
    meter.finish()
    assert log.getvalue().splitlines() == [
        "kernel 3.0 MB of 4.0 MB  75% [##################......]  0.5 MB/s, 2 s left",
        "kernel 4.0 MB of 4.0 MB 100% [########################]  0.5 MB/s, done",
    ]
