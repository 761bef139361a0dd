"""Run commands under a real Linux kernel that has the dma-buf uAPI.

The host's kernel may lack udmabuf, dma-heaps and DRM; this package boots a
stock Debian kernel that has them under QEMU (software emulation, no KVM
needed), with the host's root filesystem shared read-only, and runs one
command in it: typically this project's own test suite.

Standard library only, and independent of the rest of :mod:`pydmabuf`, so it
works before (or without) the bindings being built.

    ok, why = pydmabuf.vm.available()
    result = pydmabuf.vm.run([sys.executable, "-c", "import os; print(os.uname())"])
    print(result.returncode, result.boot_seconds, result.output)

From a shell: ``python -m pydmabuf.vm run -- python3 -m pytest tests``.
"""

from __future__ import annotations

from .host import available
from .kernel import Kernel, KernelError, ensure_kernel
from .runner import VMError, VMResult, run

__all__ = ["Kernel", "KernelError", "VMError", "VMResult", "available", "ensure_kernel", "run"]
