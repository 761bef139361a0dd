"""The wheel's optional compiled path (hatchling build hook).

With a working C compiler, the wheel gets ``pydmabuf.uapi._fastops`` (cffi API mode)
and ``pydmabuf._fdcore`` (``tools/build_fastops.py``) and becomes platform-specific; without one, or with
``PYDMABUF_PURE=1`` set, the build prints why and the wheel stays pure Python,
which runs everywhere with the same behaviour. An editable install builds the
module into the source tree, where the package imports it from.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CompiledPathHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "pydmabuf-compiled"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        if os.environ.get("PYDMABUF_PURE"):
            self.app.display_info("pydmabuf: PYDMABUF_PURE is set: building the pure-Python wheel")
            return
        root = Path(self.root)
        spec = importlib.util.spec_from_file_location("_pydmabuf_build_fastops", root / "tools" / "build_fastops.py")
        assert spec is not None and spec.loader is not None
        tool = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = tool
        spec.loader.exec_module(tool)
        editable = version == "editable"
        # Scratch space outside the output directory (`python -m build -o DIR` would
        # otherwise keep it beside the wheel), removed once the wheel is written.
        self._scratch = None if editable else tempfile.mkdtemp(prefix="pydmabuf-compiled-")
        base = root if self._scratch is None else Path(self._scratch)
        try:
            built = tool.build(base / "pydmabuf" / "uapi")
        except Exception as exc:  # no compiler, no headers: the pure path it is
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.app.display_warning(f"pydmabuf: no compiled path ({first}); the pure-Python path will run")
            return
        self.app.display_info(f"pydmabuf: compiled path built: {', '.join(path.name for path in built)}")
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if not editable:
            for path in built:
                build_data["force_include"][str(path)] = path.relative_to(base).as_posix()

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        scratch = getattr(self, "_scratch", None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
