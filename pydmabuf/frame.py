"""Frame: an image on dma-bufs as cameras, displays and encoders exchange it.

A frame is width, height, a DRM format, one modifier and 1-4 planes, each an
(object index, offset, pitch) into 1-4 Buffers (several planes may share a buffer).
``allocate_frame`` lays out and allocates linear frames; ``Frame`` wraps buffers from
anywhere (a camera's or GPU's export) after checking the layout. A frame maps its
planes as numpy-ready views and hands out the arguments of EGL, Wayland, KMS, V4L2
and GStreamer (see :mod:`pydmabuf.interop`).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from . import interop
from ._fd import for_multiprocessing, reduce_or_refuse
from .buffer import Buffer, Mapping
from .errors import ClosedError, InvalidIndexError, check_index, closed, invalid
from .formats import LINEAR, MOD_INVALID, Format, PlaneFormat, as_format, check_modifier, describe_modifier
from .uapi.wait import deadline

MAX_PLANES = 4
#: Row pitch alignment of allocate_frame, in bytes. 256 satisfies the strictest common
#: linear-layout rule (AMD GPUs need 256-byte pitches for linear textures and scanout,
#: NVIDIA's pitch-linear surfaces too; Intel display needs 64, Arm Mali and most camera
#: ISPs and codecs 16-128), so one allocation imports on any of them. Pass
#: ``pitch_align=1`` for a tightly packed layout, or what your device documents.
DEFAULT_PITCH_ALIGN = 256
_U32 = 0xFFFFFFFF
_DIMENSION_MAX = 0x7FFFFFFF  # EGL, Wayland and V4L2 carry sizes as int32/u32


class Plane(NamedTuple):
    """Where one plane's pixels are: ``objects[object_index]`` from byte ``offset``,
    rows ``pitch`` bytes apart."""

    object_index: int
    offset: int
    pitch: int


Plane.object_index.__doc__ = "Which of the frame's objects (buffers) holds the plane: an index into ``objects``."
Plane.offset.__doc__ = "Where the plane's first row starts in that object, in bytes."
Plane.pitch.__doc__ = "The distance in bytes from the start of one row to the next (stride)."


class BufferAllocator(Protocol):
    """What allocate_frame takes as ``allocator``: a Heap, or anything that allocates
    Buffers the same way."""

    def allocate(self, size: int, *, name: str | None = None) -> Buffer:
        """A new zeroed Buffer of at least ``size`` bytes, named ``name`` where one is given;
        raises the library's errors (:class:`~pydmabuf.errors.OutOfMemoryError`, ...) as
        :meth:`pydmabuf.Heap.allocate` does."""


class PlaneView:
    """One plane's pixels inside a CPU mapping: ``rows`` rows of ``row_bytes`` bytes,
    ``pitch`` bytes apart (nothing is copied).

    ``numpy.asarray(view)`` is a ``(rows, row_bytes)`` uint8 array on the mapping with
    strides ``(pitch, 1)`` (numpy reads ``__array_interface__``; this module never
    imports numpy). Reinterpret as needed, e.g. ``.view(numpy.uint16)`` for P010 or
    ``.reshape(rows, -1, 2)`` for NV12's interleaved CbCr. ``row(i)`` is one row as a
    memoryview. ``release()`` (or leaving ``with view:``) drops the view's hold on the
    mapping; arrays made from it keep the mapping alive until they go.
    """

    __slots__ = {
        "_data": "The memoryview of the plane's bytes in the mapping.",
        "rows": "How many rows the plane has.",
        "row_bytes": "The bytes of pixels in one row (without the padding up to ``pitch``).",
        "pitch": "The distance in bytes from the start of one row to the next (stride).",
    }

    def __init__(self, data: memoryview, rows: int, row_bytes: int, pitch: int) -> None:
        self._data = data
        self.rows = rows
        self.row_bytes = row_bytes
        self.pitch = pitch

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, row_bytes)``: the shape of ``numpy.asarray(view)``."""
        return (self.rows, self.row_bytes)

    @property
    def strides(self) -> tuple[int, int]:
        """``(pitch, 1)`` in bytes: the strides of ``numpy.asarray(view)``."""
        return (self.pitch, 1)

    @property
    def readonly(self) -> bool:
        """Whether writes are refused (a view made with ``write=False``); ValueError once released."""
        return self._data.readonly

    @property
    def data(self) -> memoryview:
        """The plane's bytes from its first row's start to its last row's end."""
        return self._data

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return {"version": 3, "shape": (self.rows, self.row_bytes), "typestr": "|u1",
                "strides": (self.pitch, 1), "data": self._data}

    def row(self, index: int) -> memoryview:
        """Row ``index`` (0 <= index < rows; InvalidIndexError, an IndexError, otherwise)."""
        index = check_index(index, "a row index")
        if not 0 <= index < self.rows:
            raise InvalidIndexError(errno.EINVAL, f"row {index} of a plane with {self.rows} rows "
                                    f"(rows are 0..{self.rows - 1})")
        start = index * self.pitch
        return self._data[start:start + self.row_bytes]

    def tobytes(self) -> bytes:
        """The rows without their padding."""
        return b"".join(self.row(i) for i in range(self.rows))

    def release(self) -> None:
        """Drop the view's hold on the mapping (arrays made from it keep it). Idempotent."""
        self._data.release()

    def __enter__(self) -> PlaneView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if _released(self._data) else ("read-only" if self._data.readonly else "writable")
        return f"<PlaneView {self.rows}x{self.row_bytes} bytes pitch={self.pitch} {state}>"


def _released(view: memoryview) -> bool:
    try:
        view.readonly  # noqa: B018 - raises ValueError once released
    except ValueError:
        return True
    return False


def _check_int(value: object, what: str, low: int, high: int) -> int:
    """An int (or integer with ``__index__``, e.g. numpy's) in low..high, else
    InvalidArgumentError (also for a non-integer, as this module always did)."""
    if type(value) is not int:
        try:
            value = check_index(value, what)
        except TypeError:
            raise invalid(f"{what} must be an int in {low}..{high}, got {value!r}") from None
    if not low <= value <= high:
        raise invalid(f"{what} must be an int in {low}..{high}, got {value!r}")
    return value


def _checked_plane(plane: object, count: int) -> Plane:
    if not isinstance(plane, tuple) or len(plane) != 3:
        raise invalid(f"a plane is pydmabuf.Plane(object_index, offset, pitch), got {plane!r}")
    index, offset, pitch = plane
    return Plane(_check_int(index, "Plane.object_index", 0, count - 1),
                 _check_int(offset, "Plane.offset", 0, _U32), _check_int(pitch, "Plane.pitch", 1, _U32))


def _is_linear(modifier: int) -> bool:
    """Whether plane sizes follow from the format alone. MOD_INVALID counts: it is the
    layout the driver implies, which the kernel's ADDFB2 checks the same way."""
    return modifier in (LINEAR, MOD_INVALID)


class Frame:
    """A multi-plane image on 1-4 Buffers.

    ``Frame(width, height, format, objects, planes, *, modifier=LINEAR, own=True)``:
    ``format`` is a Format, its name or fourcc; ``objects`` are Buffers; ``planes`` are
    ``Plane(object_index, offset, pitch)``. Checked (``InvalidArgumentError``, a
    ValueError): every index exists and every object is used; for LINEAR and MOD_INVALID
    the plane count is the format's and every plane fits in its object (the kernel's
    ADDFB2 rule: ``offset + (rows - 1) * pitch + min_pitch <= size``); for other
    modifiers (tiled, compressed, with auxiliary planes) only that offsets lie inside
    their objects. When the check fails nothing is closed.

    The frame owns its objects and closes them in ``close()`` unless ``own=False``. It is
    a context manager; after ``close()`` every method raises ``ClosedError``. Like the
    channel's Producer, a frame is for one thread at a time (its buffers are thread-safe).
    """

    __slots__ = ("_width", "_height", "_format", "_modifier", "_objects", "_planes", "_own",
                 "_closed", "_maps")

    def __init__(self, width: int, height: int, format: Format | str | int, objects: Sequence[Buffer],
                 planes: Sequence[Plane | tuple[int, int, int]], *, modifier: int = LINEAR,
                 own: bool = True) -> None:
        self._closed = True  # until checked: close() of a half-made frame does nothing
        self._maps: dict[tuple[int, bool], Mapping] = {}
        self._own = bool(own)
        self._width = _check_int(width, "width", 1, _DIMENSION_MAX)
        self._height = _check_int(height, "height", 1, _DIMENSION_MAX)
        self._format = as_format(format)
        self._modifier = check_modifier(modifier)
        self._objects = self._checked_objects(objects)
        self._planes = self._checked_planes(planes)
        self._closed = False

    @staticmethod
    def _checked_objects(objects: Sequence[Buffer]) -> tuple[Buffer, ...]:
        if isinstance(objects, Buffer) or not isinstance(objects, Sequence):
            raise invalid("objects is a sequence of 1-4 pydmabuf.Buffer")
        result = tuple(objects)
        if not 1 <= len(result) <= MAX_PLANES:
            raise invalid(f"a frame has 1-{MAX_PLANES} objects, got {len(result)}")
        for index, obj in enumerate(result):
            if not isinstance(obj, Buffer):
                raise invalid(f"objects[{index}] is a {type(obj).__name__}, not a pydmabuf.Buffer")
            if obj.closed:
                raise ClosedError(errno.EBADF, f"objects[{index}] is a closed Buffer")
        return result

    def _checked_planes(self, planes: Sequence[Plane | tuple[int, int, int]]) -> tuple[Plane, ...]:
        if not isinstance(planes, Sequence) or isinstance(planes, (str, bytes)):
            raise invalid("planes is a sequence of 1-4 pydmabuf.Plane")
        result = tuple(_checked_plane(p, len(self._objects)) for p in planes)
        fmt = self._format
        if not 1 <= len(result) <= MAX_PLANES:
            raise invalid(f"a frame has 1-{MAX_PLANES} planes, got {len(result)}")
        unused = set(range(len(self._objects))) - {p.object_index for p in result}
        if unused:
            raise invalid(f"objects {sorted(unused)} are not used by any plane")
        if not _is_linear(self._modifier):
            for index, plane in enumerate(result):
                if plane.offset >= self._objects[plane.object_index].size:
                    raise invalid(f"plane {index}: offset {plane.offset} is past the end of "
                                  f"objects[{plane.object_index}] ({self._objects[plane.object_index].size} bytes)")
            return result
        if not fmt.linear:
            raise invalid(f"{fmt.name} has no linear layout (it exists only with a vendor modifier): "
                          "pass the frame's modifier")
        if len(result) != fmt.num_planes:
            raise invalid(f"{fmt.name} has {fmt.num_planes} plane(s), got {len(result)}")
        for index, (plane, layout) in enumerate(zip(result, fmt.planes, strict=True)):
            rows, row_bytes = layout.height(self._height), layout.min_pitch(self._width)
            if plane.pitch < row_bytes:
                raise invalid(f"plane {index}: pitch {plane.pitch} < {row_bytes} bytes, the least a row of "
                              f"{self._width} {fmt.name} pixels takes")
            end = plane.offset + (rows - 1) * plane.pitch + row_bytes
            size = self._objects[plane.object_index].size
            if end > size:
                raise invalid(f"plane {index} ({rows} rows, pitch {plane.pitch}, offset {plane.offset}) ends at "
                              f"byte {end}, past objects[{plane.object_index}] ({size} bytes)")
        return result

    # --- facts ---------------------------------------------------------------------
    @property
    def width(self) -> int:
        """The image width in pixels."""
        return self._width

    @property
    def height(self) -> int:
        """The image height in pixels."""
        return self._height

    @property
    def format(self) -> Format:
        """The DRM pixel format."""
        return self._format

    @property
    def modifier(self) -> int:
        """The DRM format modifier (a u64; LINEAR by default, MOD_INVALID for an implied layout)."""
        return self._modifier

    @property
    def objects(self) -> tuple[Buffer, ...]:
        """The 1-4 Buffers that the planes' ``object_index`` refers to."""
        return self._objects

    @property
    def planes(self) -> tuple[Plane, ...]:
        """One ``Plane(object_index, offset, pitch)`` per plane; offsets and pitches in bytes."""
        return self._planes

    @property
    def own(self) -> bool:
        """Whether ``close()`` closes the objects too."""
        return self._own

    @property
    def closed(self) -> bool:
        """True once ``close()`` has run; methods then raise ClosedError (these facts stay readable)."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise closed("Frame")

    def _linear_layout(self, index: int) -> PlaneFormat:
        if not _is_linear(self._modifier):
            raise invalid(f"the layout of modifier {describe_modifier(self._modifier)} is not linear: "
                          "map frame.objects[i] and detile with the vendor's rules")
        return self._format.planes[index]

    def plane_extent(self, index: int) -> tuple[int, int]:
        """(rows, bytes per row without padding) of plane ``index`` of a linear frame;
        an index that is not a plane's is InvalidIndexError (an IndexError too)."""
        self._check_open()
        index = check_index(index, "a plane index")
        if not 0 <= index < len(self._planes):
            raise InvalidIndexError(errno.EINVAL, f"plane {index} of a frame with {len(self._planes)} "
                                    f"planes (planes are 0..{len(self._planes) - 1})")
        layout = self._linear_layout(index)
        return layout.height(self._height), layout.min_pitch(self._width)

    # --- CPU access ----------------------------------------------------------------
    def plane_view(self, index: int, *, write: bool = True) -> PlaneView:
        """Plane ``index`` as a :class:`PlaneView` on a mapping of its object (each object
        is mapped once per direction and unmapped at ``close()``). Bracket the access
        with ``frame.cpu_access()``. Linear layouts (LINEAR, MOD_INVALID) only."""
        rows, row_bytes = self.plane_extent(index)
        plane = self._planes[check_index(index, "a plane index")]
        key = (plane.object_index, bool(write))
        mapping = self._maps.get(key)
        if mapping is None:
            mapping = self._maps[key] = self._objects[plane.object_index].map(write=bool(write))
        span = (rows - 1) * plane.pitch + row_bytes
        return PlaneView(memoryview(mapping)[plane.offset:plane.offset + span], rows, row_bytes, plane.pitch)

    def plane_views(self, *, write: bool = True) -> list[PlaneView]:
        """``plane_view(i, write=write)`` for every plane, in order (linear layouts only;
        ClosedError once closed)."""
        return [self.plane_view(i, write=write) for i in range(len(self._planes))]

    @contextmanager
    def cpu_access(self, read: bool = True, write: bool = True, timeout: float | None = None) -> Iterator[Frame]:
        """``Buffer.cpu_access`` on every object of the frame at once; ``timeout`` bounds
        the whole entry (TimeoutError)."""
        self._check_open()
        until = deadline(timeout, "Frame.cpu_access")
        with ExitStack() as stack:
            seen: set[int] = set()
            for obj in self._objects:
                if id(obj) in seen:
                    continue
                seen.add(id(obj))
                left = None if until is None else max(0.0, until - time.monotonic())
                stack.enter_context(obj.cpu_access(read, write, left))
            yield self

    # --- argument forms ------------------------------------------------------------
    def _plane_args(self) -> list[interop.PlaneArgs]:
        self._check_open()
        return [interop.PlaneArgs(self._objects[p.object_index].fileno(), p.offset, p.pitch) for p in self._planes]

    def egl_attributes(self, *, terminate: bool = False) -> list[int]:
        """The ``EGL_LINUX_DMA_BUF_EXT`` attribute list for ``eglCreateImageKHR``
        (see :func:`pydmabuf.interop.egl_attributes`); without the final EGL_NONE
        unless ``terminate=True``. The fds stay the frame's: EGL dups what it keeps."""
        return interop.egl_attributes(self._width, self._height, self._format.fourcc, self._modifier,
                                      self._plane_args(), terminate=terminate)

    def wayland_planes(self) -> list[tuple[int, int, int, int, int, int]]:
        """``(fd, plane_idx, offset, stride, modifier_hi, modifier_lo)`` per plane for
        ``zwp_linux_buffer_params_v1.add``; then ``create(width, height, fourcc, flags)``."""
        return interop.wayland_planes(self._modifier, self._plane_args())

    def kms_framebuffer(self, handles: Sequence[int]) -> interop.KmsFramebuffer:
        """``drmModeAddFB2WithModifiers`` arguments, given the GEM handle of each object
        (``handles[i]`` for ``objects[i]``, from ``drmPrimeFDToHandle`` on the KMS device)."""
        self._check_open()
        if isinstance(handles, (str, bytes)) or not isinstance(handles, Sequence) \
                or len(handles) != len(self._objects):
            raise invalid(f"kms_framebuffer() needs one GEM handle per object ({len(self._objects)})")
        checked = [_check_int(h, "a GEM handle", 1, _U32) for h in handles]
        return interop.kms_framebuffer(
            self._width, self._height, self._format.fourcc, self._modifier,
            [(p.pitch, p.offset) for p in self._planes], [checked[p.object_index] for p in self._planes])

    def v4l2_planes(self, *, contiguous: bool = False) -> list[interop.V4l2Plane]:
        """``struct v4l2_plane`` fields for the V4L2 multi-planar API with
        ``V4L2_MEMORY_DMABUF``: one per plane (the ``...M`` formats such as NV12M), or with
        ``contiguous=True`` one for the whole image in one object (NV12, YUV420 queued
        through the multi-planar API). V4L2 has no modifiers: linear layouts only."""
        ends = [p.offset + self.plane_extent(i)[0] * p.pitch for i, p in enumerate(self._planes)]
        if not contiguous:
            return interop.v4l2_planes([(self._objects[p.object_index].fileno(), self._objects[p.object_index].size,
                                         p.offset, end) for p, end in zip(self._planes, ends, strict=True)])
        if any(p.object_index != 0 for p in self._planes):
            raise invalid("contiguous=True needs every plane in objects[0]; this frame has one object per plane")
        obj = self._objects[0]
        return interop.v4l2_planes([(obj.fileno(), obj.size, min(p.offset for p in self._planes), max(ends))])

    def gst_caps(self, *, framerate: tuple[int, int] | None = None) -> str:
        """The GStreamer caps string ``video/x-raw(memory:DMABuf), format=DMA_DRM,
        drm-format=NV12[:0x<modifier>], width, height`` (GStreamer >= 1.24)."""
        self._check_open()
        return interop.gst_caps(self._width, self._height, self._format.fourcc_string, self._modifier, framerate)

    def __reduce__(self) -> tuple[object, ...]:
        # Only multiprocessing pickles a Frame (_reduce_frame, registered below; see the
        # pickling notes in pydmabuf._fd).
        return reduce_or_refuse(self)

    # --- lifetime ------------------------------------------------------------------
    def close(self) -> None:
        """Unmap, then close the objects if the frame owns them. Idempotent. A mapping
        that a live view or numpy array still uses stays until that goes."""
        if self._closed:
            return
        self._closed = True
        maps, self._maps = self._maps, {}
        for mapping in maps.values():
            # One still exported to a view or array unmaps (and closes its fd) with the last of them.
            with suppress(BufferError):
                mapping.close()
        if self._own:
            for obj in self._objects:
                obj.close()

    def __enter__(self) -> Frame:
        self._check_open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        planes = ", ".join(f"({p.object_index}, {p.offset}, {p.pitch})" for p in self._planes)
        state = " closed" if self._closed else ""
        return (f"<Frame {self._width}x{self._height} {self._format.name} "
                f"{describe_modifier(self._modifier)} objects={len(self._objects)} planes=[{planes}]{state}>")


def _reduce_frame(frame: Frame) -> tuple[object, ...]:
    """multiprocessing's reducer: each buffer travels as a dup of its fd (Buffer's
    reducer), the descriptor as values; the receiver checks it again and owns the copies."""
    frame._check_open()
    return _rebuild_frame, (frame._width, frame._height, frame._format.fourcc, frame._modifier,
                            frame._objects, tuple(tuple(p) for p in frame._planes))


for_multiprocessing(Frame, _reduce_frame)


def _rebuild_frame(width: int, height: int, fourcc: int, modifier: int, objects: tuple[Buffer, ...],
                   planes: tuple[tuple[int, int, int], ...]) -> Frame:
    try:
        return Frame(width, height, fourcc, objects, planes, modifier=modifier)
    except BaseException:
        for obj in objects:
            obj.close()
        raise


# --- allocation ------------------------------------------------------------------------
def plane_layout(width: int, height: int, format: Format | str | int, *,
                 pitch_align: int = DEFAULT_PITCH_ALIGN) -> list[tuple[int, int]]:
    """(pitch, size) of each plane of a linear ``format`` image: pitches are the least
    row size rounded up to ``pitch_align``; size is pitch times the plane's rows
    (chroma planes round odd sizes up: 641x479 NV12 has 240 rows of 321 CbCr pairs)."""
    fmt = as_format(format)
    width = _check_int(width, "width", 1, _DIMENSION_MAX)
    height = _check_int(height, "height", 1, _DIMENSION_MAX)
    align = _check_int(pitch_align, "pitch_align", 1, 1 << 20)
    if not fmt.linear:
        raise invalid(f"{fmt.name} has no linear layout: allocate it tiled with the GPU driver (GBM, Vulkan) "
                      "and wrap the export in Frame(..., modifier=...)")
    layout = []
    for plane in fmt.planes:
        pitch = -(-plane.min_pitch(width) // align) * align
        if pitch > _U32:
            raise invalid(f"a {width}-pixel-wide {fmt.name} row does not fit a 32-bit pitch")
        layout.append((pitch, pitch * plane.height(height)))
    return layout


def allocate_frame(width: int, height: int, format: Format | str | int, *, modifier: int = LINEAR,
                   separate_planes: bool = False, allocator: BufferAllocator | None = None,
                   name: str | None = None, pitch_align: int | None = None) -> Frame:
    """A new zeroed linear frame: pitches from :func:`plane_layout` (aligned to
    ``pitch_align``, default :data:`DEFAULT_PITCH_ALIGN` = 256 bytes), all planes in one
    buffer (each plane's offset aligned the same way) or, with ``separate_planes=True``,
    one buffer per plane at offset 0. Buffers come from ``allocator.allocate(size,
    name=name)`` (a Heap, or anything with that method); by default from the "system"
    heap of the active backend. ``modifier`` is LINEAR or MOD_INVALID (a linear buffer
    that consumers may treat as implicitly laid out)."""
    fmt = as_format(format)
    modifier = check_modifier(modifier)
    if not _is_linear(modifier):
        raise invalid(f"allocate_frame lays out linear buffers only, not {describe_modifier(modifier)}: "
                      "allocate tiled images with the GPU driver (GBM, Vulkan) and wrap them in Frame()")
    align = DEFAULT_PITCH_ALIGN if pitch_align is None else pitch_align
    layout = plane_layout(width, height, fmt, pitch_align=align)
    if allocator is not None and not callable(getattr(allocator, "allocate", None)):
        raise invalid(f"allocator must have allocate(size, *, name=None), got {type(allocator).__name__}")
    if separate_planes:
        sizes = [size for _, size in layout]
        planes = [Plane(i, 0, pitch) for i, (pitch, _) in enumerate(layout)]
    else:
        planes, offset = [], 0
        for pitch, size in layout:
            offset = -(-offset // align) * align
            planes.append(Plane(0, offset, pitch))
            offset += size
        sizes = [offset]
    buffers = _allocate(sizes, allocator, name)
    try:
        return Frame(width, height, fmt, buffers, planes, modifier=modifier)
    except BaseException:
        for buf in buffers:
            buf.close()
        raise


def _allocate(sizes: list[int], allocator: BufferAllocator | None, name: str | None) -> list[Buffer]:
    if allocator is None:
        from .heap import Heap

        with Heap("system") as heap:
            return _allocate(sizes, heap, name)
    buffers: list[Buffer] = []
    try:
        for size in sizes:
            buf = allocator.allocate(size) if name is None else allocator.allocate(size, name=name)
            if not isinstance(buf, Buffer):
                raise invalid(f"allocator.allocate() returned a {type(buf).__name__}, not a pydmabuf.Buffer")
            buffers.append(buf)
            if buf.size < size:
                raise invalid(f"allocator.allocate({size}) returned a {buf.size}-byte buffer")
    except BaseException:
        for buf in buffers:
            buf.close()
        raise
    return buffers
