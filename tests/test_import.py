"""What ``import pydmabuf`` loads: the declarations pre-parsed (no pycparser), and none
of what only some programs need (V4L2, the accounting scan, the channel, asyncio, ...).

Not a timing test (times depend on the machine): each check looks at ``sys.modules``
of a fresh interpreter, so it fails exactly when an eager import comes back.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Loaded by `import pydmabuf` never: the parser (parsing cdefs/ at import cost most of
# the import), the V4L2 declarations, the tools' and the optional parts' dependencies.
NEVER = (
    "pycparser",
    "cffi.cparser",
    "cffi.api",  # the full cffi: the out-of-line modules need only _cffi_backend
    "pydmabuf.uapi._cdefs_v4l2",
    "pydmabuf.uapi.v4l2",
    "psutil",
    "ctypes",
    "asyncio",
    "logging",
    "pydmabuf.channel",
    "pydmabuf.share",
    "pydmabuf.frame",
    "pydmabuf.formats",
    "pydmabuf.uapi.drm_formats",
    "pydmabuf.aio",
    "pydmabuf.cuda",
    "pydmabuf.tools.accounting",
    "pydmabuf.vm",  # the QEMU tooling ships in the wheel as a sub-package, imported only when asked for
    "multiprocessing",  # pickling support registers when multiprocessing first pickles one
    "dataclasses",  # and with it inspect, ast, dis: ~9 ms for the info records
    "inspect",
    "typing",  # annotations need it only under TYPE_CHECKING; with it comes re (~5 ms)
    "re",
)


def _loaded(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    # sys only: json would import re, one of the modules looked for
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.splitlines()[-1].split())


def test_import_pydmabuf_loads_only_the_core() -> None:
    loaded = _loaded("import pydmabuf")
    assert {"pydmabuf.uapi._cdefs", "pydmabuf.uapi.ffi", "pydmabuf.buffer", "_cffi_backend"} <= loaded
    assert not loaded & set(NEVER), f"imported by `import pydmabuf`: {sorted(loaded & set(NEVER))}"


def test_the_check_can_fail() -> None:
    loaded = _loaded("import pydmabuf\nfrom pydmabuf.uapi import v4l2\nimport pydmabuf.tools.ps\n"
                     "pydmabuf.Producer")
    assert {"pydmabuf.uapi._cdefs_v4l2", "pydmabuf.channel", "logging"} <= loaded
    assert "pycparser" not in loaded  # V4L2 too is pre-parsed
    assert "psutil" not in loaded  # not a dependency at all: the ps tool reads /proc itself


# public name -> the module that defines it (the name itself for a module)
LAZY = {"Producer": "channel", "Frame": "frame", "Format": "formats", "send": "share", "Timeline": "timeline",
        "FenceSet": "waiting", "check_peer": "credentials", "LINEAR": "formats", "share": "share",
        "frame": "frame", "interop": "interop", "channel": "channel"}


@pytest.mark.parametrize("name", sorted(LAZY))
def test_lazy_names_resolve_to_the_module_objects(name: str) -> None:
    import importlib

    import pydmabuf

    value = getattr(pydmabuf, name)
    assert name in dir(pydmabuf)
    assert name in pydmabuf.__all__ or name in ("share", "frame")  # submodules, as before
    module = importlib.import_module(f"pydmabuf.{LAZY[name]}")
    assert value is (module if name == LAZY[name] else getattr(module, name))
    assert pydmabuf.__dict__[name] is value  # cached: the next read is a plain attribute


def test_star_import_gives_every_public_name() -> None:
    loaded = _loaded("from pydmabuf import *\nassert Producer and Frame and udmabuf and Heap")
    assert "pydmabuf.channel" in loaded


def test_udmabuf_stays_the_function() -> None:
    """pydmabuf.udmabuf is the function although pydmabuf/udmabuf.py is a module of the
    same name, also after something imports that module."""
    loaded = _loaded("import pydmabuf, pydmabuf.udmabuf, pydmabuf.channel\n"
                     "assert callable(pydmabuf.udmabuf) and not isinstance(pydmabuf.udmabuf, type(pydmabuf))")
    assert "pydmabuf.udmabuf" in loaded


@pytest.mark.parametrize("argv", [["--help"], ["info"]])
def test_the_cli_loads_no_tool_it_does_not_run(argv: list[str]) -> None:
    loaded = _loaded(f"import contextlib, io\nfrom pydmabuf.tools import cli\n"
                     f"with contextlib.redirect_stdout(io.StringIO()):\n"
                     f"    try:\n        cli.main({argv!r})\n    except SystemExit:\n        pass")
    assert not loaded & {"psutil", "pydmabuf.tools.accounting", "pydmabuf.channel", "pycparser",
                         "pydmabuf.uapi.v4l2"}, sorted(loaded)


# multiprocessing imported after pydmabuf: the first ForkingPickler that meets a Buffer
# registers the reducers (see pydmabuf._fd), a Queue carries it to a child, and plain
# pickle still refuses.
_LATE_MP = """
import pickle, sys
import pydmabuf

def child(q, out):
    buf = q.get(timeout=30)
    with buf.map() as m:
        out.put(bytes(m[:5]))
    buf.close()

if __name__ == "__main__":
    assert "multiprocessing" not in sys.modules
    import multiprocessing as mp
    from multiprocessing.reduction import ForkingPickler

    with pydmabuf.udmabuf(4096) as buf:
        with buf.map() as m:
            m[:5] = b"hello"
        ctx = mp.get_context("spawn")
        q, out = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=child, args=(q, out))
        p.start()
        q.put(buf)
        assert out.get(timeout=60) == b"hello"
        p.join(60)
        assert p.exitcode == 0
        try:
            pickle.dumps(buf)
        except TypeError:
            pass
        else:
            raise AssertionError("plain pickle of a Buffer was allowed")
        pickle.loads(ForkingPickler.dumps(buf)).close()  # registered now: the dispatch table
    print("ok")
"""


def test_multiprocessing_imported_later_still_pickles(tmp_path: object) -> None:
    from pathlib import Path

    script = Path(str(tmp_path)) / "late_mp.py"
    script.write_text(_LATE_MP)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
