"""The examples that feed real consumers (GStreamer, Mesa's EGL and Vulkan), run against them.

They need the consumer root's userland (``pydmabuf.vm.consumers``: GStreamer 1.26,
Mesa 25, PyGObject), so they run in the real-kernel tier's consumer boot
(tests/test_real_kernel.py::test_real_consumers sets PYDMABUF_CONSUMER_TIER) and are
skipped elsewhere with that reason; each example also runs, and says it has nothing
to do, in tests/test_examples.py. There ``--require`` turns a missing consumer into
a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
# each example -> what its output says when every pixel matched
CONSUMER_EXAMPLES = {
    "egl_import.py": "every byte as GL cleared it",
    "gstreamer_appsrc.py": "every byte as drawn",
    "gstreamer_v4l2src.py": "every byte as GStreamer mapped",
    "vulkan_import.py": "vkCmdCopyImageToBuffer gives every byte as drawn",
}

pytestmark = pytest.mark.skipif(not os.environ.get("PYDMABUF_CONSUMER_TIER"),
                                reason="needs the consumer root: the real-kernel tier's consumer boot runs it")


@pytest.mark.parametrize("example", sorted(CONSUMER_EXAMPLES))
def test_example_against_the_real_consumer(example: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / example), "--require"], capture_output=True,
                            text=True, timeout=600)
    print(result.stdout)  # each example's result lines land in the tier's log
    assert result.returncode == 0, f"{example} failed:\n{result.stdout}\n{result.stderr}"
    assert CONSUMER_EXAMPLES[example] in result.stdout
