"""Sphinx configuration for pydmabuf's documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (what
``tests/test_docs.py`` runs, warnings as errors). Needs ``pip install -e '.[docs]'``.

The pages are Markdown (MyST), so README-style prose and tables move over unchanged;
the API reference comes from the docstrings through autodoc. Nothing here touches the
network: intersphinx uses local inventories only (Debian's ``python3-doc``), and a
mapping whose inventory is missing is left out.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's pydmabuf, installed or not
# The pure path: its classes are Python all the way down, so the reference reads the same
# whether or not this checkout built the compiled modules (whose FdBase is a C type).
os.environ["PYDMABUF_PURE"] = "1"

from pydmabuf import __version__  # noqa: E402

project = "pydmabuf"
author = "The pydmabuf developers"
copyright = "The pydmabuf developers"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# MyST: anchors for headings down to ###, so [text](page.md#a-heading) links work as on
# a forge (a link to a heading that does not exist is a warning, so an error here).
# Autodoc directives go in {eval-rst} blocks: docstrings are reStructuredText.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

# The pages' ```python blocks are run by tests/test_examples.py; bare ``` blocks are
# fragments (highlighted as Python where they parse) and are not.
highlight_language = "default"  # Python where a block parses as Python, else plain

# autodoc: import on whatever backend this machine has (the fallback, without devices).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    # close(), fileno(), closed, detach() of the fd-owning base, but not what the
    # builtins bring (mmap's methods, OSError's errno and strerror, tuple's count).
    "inherited-members": "object, BaseException, OSError, mmap, tuple, dict, int, str",
}
add_module_names = False
python_use_unqualified_type_names = True


def _public_bases(app: object, name: str, obj: object, options: object, bases: list[type]) -> None:
    """"Bases:" lists public classes only: not the private fd-owning base (``_fd.FdHolder``)."""
    bases[:] = [b for b in bases if not any(part.startswith("_") for part in b.__module__.split("."))
                or b.__module__ == "builtins"]


# Module constants the API pages document by hand (``py:data`` with a description):
# automodule leaves them out, so they are described once even after a ``#:`` comment
# appears in the source (and not again in every module that imports them).
HAND_DOCUMENTED_DATA = frozenset({
    "LINEAR", "KERNEL_VERSION", "HEAP_ALIASES", "MESSAGE_REST_TIMEOUT", "MAX_OBJECTS", "MAX_DATA",
    "SLOW_CONSUMER_POLICIES", "DEFAULT_PROVIDERS", "ENV_VAR",
})


def _skip_hand_documented(app: object, what: str, name: str, obj: object, skip: bool, options: object) -> bool | None:
    if what == "module" and name in HAND_DOCUMENTED_DATA:
        return True
    return None


def setup(app: object) -> None:
    app.connect("autodoc-process-bases", _public_bases)  # type: ignore[attr-defined]
    app.connect("autodoc-skip-member", _skip_hand_documented)  # type: ignore[attr-defined]


def _local_inventory(patterns: list[str]) -> str | None:
    for pattern in patterns:
        for found in sorted(glob.glob(pattern), reverse=True):
            if os.path.isfile(found):
                return found
    return None


# intersphinx offline: a local objects.inv or no mapping at all (never a download).
# Debian's python3-doc ships Python's inventory; no Debian package ships numpy's
# (python-numpy-doc is not in bookworm), so numpy is not mapped.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
_python_inv = _local_inventory([
    "/usr/share/doc/python3/html/objects.inv",
    f"/usr/share/doc/python{sys.version_info.major}.{sys.version_info.minor}/html/objects.inv",
    "/usr/share/doc/python3*/html/objects.inv",
])
if _python_inv is not None:
    intersphinx_mapping["python"] = ("https://docs.python.org/3", _python_inv)
intersphinx_timeout = 1

html_theme = "alabaster"
html_title = f"pydmabuf {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "The Linux dma-buf uAPI from Python",
    "fixed_sidebar": True,
}
