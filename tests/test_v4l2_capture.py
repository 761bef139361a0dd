"""examples/v4l2_capture.py: a real camera path, run against vivid.

The real-kernel VM loads vivid twice (``n_devs=2 multiplanar=1,2``: one instance on
the single-planar API, one on the multi-planar API). Against each, the example
streams into pydmabuf-allocated frames queued as V4L2_MEMORY_DMABUF, and into the
driver's V4L2_MEMORY_MMAP buffers exported with VIDIOC_EXPBUF and wrapped as Frames;
a consumer process receives every frame through the channel, checks rows against the
producer's checksums and finds vivid's colour bars. Where no V4L2 capture device
exists (natively, usually) those runs skip; the layout arithmetic and the choice
between allocate_frame and the driver's own layout are tested everywhere.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_VM, load_script

import pydmabuf
from pydmabuf.frame import Plane

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "v4l2_capture.py"
FRAMES = 3  # each run: enough to cycle the queue, little enough for an emulated machine
NO_DEVICE = ("no V4L2 capture device here (the real-kernel tier loads vivid with a single- "
             "and a multi-planar instance)")


example = load_script(EXAMPLE, "v4l2_capture_example")


def capture_nodes() -> dict[str, str]:
    """The first streaming capture node of each API: {"single": path, "multi": path}."""
    found: dict[str, str] = {}
    for path in sorted(glob.glob("/dev/video[0-9]*"), key=lambda p: int(re.sub(r"\D", "", p))):
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            kind = example.capture_type(fd)
        finally:
            os.close(fd)
        if kind is not None:
            found.setdefault("multi" if kind[0] == example.CAPTURE_MPLANE else "single", path)
    return found


NODES = capture_nodes()


def _node(api: str) -> str:
    if api not in NODES:
        if IN_VM:  # the VM loads vivid with both instances: a missing one is a bug
            pytest.fail(f"no {api}-planar V4L2 capture node in the VM: is vivid loaded with "
                        f"n_devs=2 multiplanar=1,2? (found {NODES})")
        pytest.skip(f"no {api}-planar capture node: {NO_DEVICE}")
    return NODES[api]


def _run(*args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **env_vars)
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, env=env,
                          timeout=300)


# --- against a device (vivid in the VM) ----------------------------------------------

CASES: dict[str, tuple[str, str, tuple[str, ...], dict[str, str], str]] = {
    # id: (API, memory, extra arguments, environment, what the producer must say)
    "single-dmabuf": ("single", "dmabuf", (), {}, "allocate_frame(pitch_align="),
    # Only memfds to allocate (a machine without dma-heap or udmabuf): the example
    # says so and streams from the driver's MMAP buffers, exported, instead.
    "single-mmap": ("single", "dmabuf", (), {"PYDMABUF_PROVIDERS": "fallback"},
                    "no real dma-bufs to allocate here"),
    # Rows padded to a pitch allocate_frame does not lay out, so the frames are the
    # driver's sizeimage described with its pitches (allocate_frame in one buffer per
    # plane is tested below, without a device).
    "multi-dmabuf": ("multi", "dmabuf", ("--bytesperline", "1000"), {}, "the driver's sizeimage"),
    "multi-mmap": ("multi", "mmap", (), {}, "exported with VIDIOC_EXPBUF"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_frames_reach_the_consumer_intact(case: str) -> None:
    api, memory, extra, env, made = CASES[case]
    device = _node(api)
    result = _run(device, "--memory", memory, "--frames", str(FRAMES), *extra, **env)
    out = result.stdout
    assert result.returncode == 0, f"{case} failed:\n{out}\n{result.stderr}"
    assert f"{api}-planar API" in out
    assert made in out, out
    if case.endswith("dmabuf"):
        assert "queued as V4L2_MEMORY_DMABUF" in out, out
    else:
        assert "V4L2_MEMORY_MMAP buffers exported with VIDIOC_EXPBUF as Frames" in out, out
    frames = [line for line in out.splitlines() if line.startswith("consumer: frame ")]
    assert len(frames) == FRAMES, out
    for line in frames:
        # the consumer's own rows equal the producer's checksums, and the picture is
        # vivid's colour bars (luma falling bar by bar)
        assert " rows match, bar luma " in line, line
        if api == "multi":  # NV12M: luma and chroma in a dma-buf each
            assert "NV12 in 2 dma-buf(s)" in line, line
    assert f"consumer: {FRAMES} frames checked" in out, out
    if extra:
        assert "pitches 1000/" in out, out


def test_without_a_device_the_example_says_so(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    if not NODES:  # the command as a user runs it
        result = _run()
        assert result.returncode == 0, result.stderr
        assert "no V4L2 capture device" in result.stdout
        return
    # A machine with capture nodes: the example's search, shown none.
    monkeypatch.setattr(example.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(sys, "argv", ["v4l2_capture.py"])
    assert example.main() == 0
    assert "no V4L2 capture device" in capsys.readouterr().out


# --- layouts, everywhere ---------------------------------------------------------------

def _negotiated(fourcc: str, width: int, height: int, buffers: list[tuple[int, int]]) -> Any:
    code = int.from_bytes(fourcc.encode(), "little")
    return example.Negotiated(width, height, code, buffers)


@pytest.mark.parametrize(("fourcc", "buffers", "sizes", "planes"), [
    ("NV12", [(640, 345600)], [345600], [Plane(0, 0, 640), Plane(0, 230400, 640)]),
    ("NV12", [(1024, 552960)], [552960], [Plane(0, 0, 1024), Plane(0, 368640, 1024)]),
    ("YU12", [(640, 345600)], [345600],
     [Plane(0, 0, 640), Plane(0, 230400, 320), Plane(0, 288000, 320)]),
    ("YUYV", [(1280, 460800)], [460800], [Plane(0, 0, 1280)]),
    ("NM12", [(640, 230400), (640, 115200)], [230400, 115200], [Plane(0, 0, 640), Plane(1, 0, 640)]),
])
def test_layout_follows_the_driver(fourcc: str, buffers: list[tuple[int, int]], sizes: list[int],
                                   planes: list[Plane]) -> None:
    granted = _negotiated(fourcc, 640, 360, buffers)
    assert granted.layout() == (sizes, planes)


def test_odd_height_chroma_rows_round_up() -> None:
    granted = _negotiated("NV12", 642, 479, [(642, 642 * 479 + 642 * 240)])
    sizes, planes = granted.layout()
    assert planes == [Plane(0, 0, 642), Plane(0, 642 * 479, 642)]
    assert sizes == [642 * 479 + 642 * 240]


@pytest.mark.parametrize(("fourcc", "buffers", "way"), [
    ("NV12", [(640, 345600)], "allocate_frame(pitch_align=128)"),
    ("NM12", [(640, 230400), (640, 115200)], "allocate_frame(pitch_align=128)"),
    ("NV12", [(1000, 540000)], "the driver's sizeimage"),  # no alignment makes pitch 1000
    ("YUYV", [(1280, 460800 + 4096)], "the driver's sizeimage"),  # sizeimage with slack
])
def test_allocated_frames_have_the_drivers_layout(fourcc: str, buffers: list[tuple[int, int]], way: str) -> None:
    granted = _negotiated(fourcc, 640, 360, buffers)
    sizes, planes = granted.layout()
    frames, how = example.allocate_frames(granted, 2)
    try:
        assert how.startswith(way), how
        assert len(frames) == 2
        for frame in frames:
            assert frame.planes == tuple(planes)
            assert [obj.size >= size for obj, size in zip(frame.objects, sizes, strict=True)] == [True] * len(sizes)
            assert frame.format.name == example.V4L2_TO_DRM[granted.pixelformat][0]
            assert all(obj.backend == pydmabuf.backend for obj in frame.objects)
    finally:
        for frame in frames:
            frame.close()


def test_colour_bar_check() -> None:
    assert example.looks_like_colour_bars([179, 160, 130, 111, 83, 64, 34, 16])
    assert not example.looks_like_colour_bars([0] * 8)
    assert not example.looks_like_colour_bars([179, 160, 130, 130, 83, 64, 34, 16])
    assert not example.looks_like_colour_bars([60, 55, 50, 45, 40, 35, 30, 25])
