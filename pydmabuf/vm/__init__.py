"""Run commands under a real Linux kernel that has the dma-buf uAPI.

The host's kernel may lack udmabuf, dma-heaps and DRM; this package boots a
stock Debian kernel that has them under QEMU (KVM where a short probe boot
shows it works, else software emulation: :mod:`pydmabuf.vm.accel`), with the
host's root filesystem shared read-only, and runs one command in it:
typically this project's own test suite.

Standard library only, and independent of the rest of :mod:`pydmabuf`, so it
works before (or without) the bindings being built.  Modules: ``kernel``
(which kernel, fetched how), ``initramfs`` and ``cpio`` (the guest's /init),
``shares`` (how host directories appear), ``accel`` (KVM or TCG), ``qemu``
(the process), ``console`` (its output), ``runner`` (all of it for one command).

    ok, why = pydmabuf.vm.available()
    result = pydmabuf.vm.run([sys.executable, "-c", "import os; print(os.uname())"])
    print(result.returncode, result.boot_seconds, result.output)

From a shell (the guest cannot write to the host, hence no pytest cache)::

    python -m pydmabuf.vm run --snapshot . -- python3 -m pytest -p no:cacheprovider tests
    python -m pydmabuf.vm check --boot   # can it run here? which devices?
    python -m pydmabuf.vm fetch          # download or refresh Debian's kernel
"""

from __future__ import annotations

from .host import available
from .kernel import Kernel, KernelError, ensure_kernel
from .runner import VMError, VMResult, choose_accel, guest_cpus, guest_memory, run

__all__ = [
    "Kernel",
    "KernelError",
    "VMError",
    "VMResult",
    "available",
    "choose_accel",
    "ensure_kernel",
    "guest_cpus",
    "guest_memory",
    "run",
]
