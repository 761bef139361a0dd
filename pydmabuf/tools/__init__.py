"""Layer 4, programs built on the library: the ``pydmabuf`` command line (``cli``,
``ps``), buffer accounting across processes (``accounting``), the feature probes behind
``pydmabuf info`` (``features``) and the end-to-end ``demo``. Nothing below imports
these.
"""
