"""The real-kernel tier: this whole suite again, under a real kernel in QEMU.

The host's kernel may have no udmabuf, dma-heaps or DRM, so the kernel backend
cannot be exercised here.  One test boots Debian trixie's kernel (which has all
three, plus vgem for real unsignaled fences and vivid, a virtual camera), runs
``python -m pytest tests`` inside it with ``PYDMABUF_BACKEND=kernel``, and
passes only if that run passes.  A second, short boot removes the allocator
nodes first and runs ``tests/test_foreign.py`` with default settings: drivers'
dma-bufs on a machine without heaps or udmabuf.  See :mod:`pydmabuf.vm`.

Environment:
  CI=true                  a VM that cannot run here fails the test (else: skip)
  PYDMABUF_VM_MIN_PASSED   guest tests that must pass (default 40)
  PYDMABUF_VM_TIMEOUT      seconds before the guest is killed (default 2400: the guest suite
                           takes 7-9 min under TCG on an idle 2-core machine; the limit is
                           there for a hung guest, so it leaves room for a loaded machine)
  PYDMABUF_VM_KERNEL/_MODULES  boot this kernel instead of Debian's
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

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
    # The checkout is read-only in the guest: no bytecode, no cache; TMPDIR
    # and HOME default to the guest's tmpfs.
    env = {"PYDMABUF_BACKEND": "kernel", "PYDMABUF_IN_VM": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if pydmabuf.compiled:  # the guest runs the same checkout: compiled there too (tests/test_compiled.py)
        env["PYDMABUF_EXPECT_COMPILED"] = "1"
    timeout = float(os.environ.get("PYDMABUF_VM_TIMEOUT", "2400"))
    # Its own file per run (runs may overlap), kept with pytest's recent temp dirs.
    log_path = tmp_path_factory.mktemp("real-kernel") / "guest.log"
    with log_path.open("w") as log:
        log.write(f"# pydmabuf real-kernel tier, kernel {kernel}\n# {' '.join(argv)}\n")
        log.flush()
        # The guest sees a copy of the checkout taken now: edits made while
        # the tier runs neither leak into it nor show up torn.
        result = vm.run(
            argv,
            env=env,
            cwd=str(REPO),
            timeout=timeout,
            kernel=kernel,
            stream=log,
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
                f"real-kernel tier: {_describe(counts, seconds, result)}",
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
                        stream=log, live_dirs=[], snapshot_dirs=[str(REPO)])
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
        result = vm.run(argv, env=env, cwd=str(REPO), timeout=CONSUMER_TIMEOUT, kernel=kernel, stream=log,
                        consumers=True)
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
