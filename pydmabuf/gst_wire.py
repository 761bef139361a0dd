"""GStreamer's unixfd wire protocol (``unixfdsink`` / ``unixfdsrc``, GStreamer >= 1.24).

The protocol pydmabuf.gstreamer speaks to GStreamer's elements, as plain bytes in and
out (gst-plugins-bad's ``gst/unixfd/gstunixfd.h``; unchanged from 1.24.0 to 1.26):

- A SOCK_STREAM Unix socket; the sink listens, sources connect. Every message is an
  8-byte header ``(u32 type, u32 payload_size)`` in host byte order, then the payload.
- ``NEW_BUFFER`` (sink -> source): 56 bytes of ``id, pts, dts, duration, offset,
  offset_end`` (u64 each), ``flags`` (u32), memory ``type`` (u8: 0 fd/memfd, 1 dma-buf),
  ``n_memory`` (u8), ``n_meta`` (u16); then per memory ``(u64 size, u64 offset)``; then
  ``n_meta`` serialized metas (``gst_meta_serialize``). One fd per memory rides on the
  header's sendmsg (SCM_RIGHTS).
- ``RELEASE_BUFFER`` (source -> sink): the u64 id; the sink holds the buffer until then.
- ``CAPS`` (sink -> source): ``gst_caps_to_string()`` with its NUL; sent on connect
  and on every caps event.
- ``EOS`` (sink -> source): no payload.
- Timestamps are absolute CLOCK_MONOTONIC nanoseconds; ``GST_CLOCK_TIME_NONE`` is 2**64-1.

A serialized meta is ``u32 total_size, u32 name_len`` (little-endian), the name, a NUL,
``u8 version``, then the meta's own bytes. Only ``GstVideoMeta`` (version 0) matters
here: ``i32 flags, i32 format, u32 width, u32 height, u32 n_planes``, then
``u64 offset[n]``, ``i32 stride[n]``, ``u32`` padding top/bottom/left/right,
``u32 stride_align[n]``, all little-endian. Plane offsets count from the start of the
buffer's memories laid end to end.

Everything here parses hostile bytes: a malformed message is a ProtocolError, never an
IndexError or struct.error.
"""

from __future__ import annotations

import errno as E
import re
import struct
from typing import NamedTuple

from .share import ProtocolError

NEW_BUFFER, RELEASE_BUFFER, CAPS, EOS = 0, 1, 2, 3
MEMORY_FD, MEMORY_DMABUF = 0, 1
CLOCK_TIME_NONE = (1 << 64) - 1
MAX_MEMORIES = 16  # a GstBuffer holds at most 16 memories
MAX_CAPS = 64 * 1024  # a caps string longer than this is refused
MAX_PAYLOAD = 56 + 16 * 255 + 64 * 1024  # NEW_BUFFER with every memory and generous metas

HEADER = struct.Struct("=II")
NEW_BUFFER_HEAD = struct.Struct("=QQQQQQIBBH")  # 56 bytes
MEMORY = struct.Struct("=QQ")
RELEASE = struct.Struct("=Q")
_META_HEAD = struct.Struct("<II")
_VIDEO_META_HEAD = struct.Struct("<iiIII")
VIDEO_META_NAME = b"GstVideoMeta"


def protocol_error(what: str) -> ProtocolError:
    return ProtocolError(E.EPROTO, f"GStreamer unixfd protocol: {what}")


class Memory(NamedTuple):
    size: int
    offset: int


class VideoMeta(NamedTuple):
    """GstVideoMeta's layout fields: GStreamer's format number, size, and per plane
    the offset (into the memories laid end to end) and stride."""

    format: int
    width: int
    height: int
    offsets: tuple[int, ...]
    strides: tuple[int, ...]


class NewBuffer(NamedTuple):
    id: int
    pts: int
    dts: int
    duration: int
    offset: int
    offset_end: int
    flags: int
    memory_type: int
    memories: tuple[Memory, ...]
    video_meta: VideoMeta | None


def header(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload))


def caps_message(caps: str) -> bytes:
    payload = caps.encode() + b"\0"
    return header(CAPS, payload) + payload


def release_message(buffer_id: int) -> bytes:
    return header(RELEASE_BUFFER, RELEASE.pack(buffer_id)) + RELEASE.pack(buffer_id)


def eos_message() -> bytes:
    return HEADER.pack(EOS, 0)


def parse_caps(payload: bytes) -> str:
    if not payload or payload[-1:] != b"\0" or len(payload) > MAX_CAPS:
        raise protocol_error("a CAPS message is a NUL-terminated string")
    try:
        return payload[:-1].decode()
    except UnicodeDecodeError:
        raise protocol_error("a CAPS string that is not UTF-8") from None


def parse_release(payload: bytes) -> int:
    if len(payload) != RELEASE.size:
        raise protocol_error(f"a RELEASE_BUFFER payload is 8 bytes, got {len(payload)}")
    buffer_id: int = RELEASE.unpack(payload)[0]
    return buffer_id


def new_buffer_payload(buffer_id: int, pts: int, duration: int, memory_type: int, memories: list[Memory],
                       video_meta: VideoMeta | None, *, dts: int = CLOCK_TIME_NONE, offset: int = 0,
                       offset_end: int = 0, flags: int = 0) -> bytes:
    metas = [serialize_video_meta(video_meta)] if video_meta is not None else []
    head = NEW_BUFFER_HEAD.pack(buffer_id, pts, dts, duration, offset, offset_end, flags, memory_type,
                                len(memories), len(metas))
    return head + b"".join(MEMORY.pack(m.size, m.offset) for m in memories) + b"".join(metas)


def parse_new_buffer(payload: bytes) -> NewBuffer:
    if len(payload) < NEW_BUFFER_HEAD.size:
        raise protocol_error(f"a NEW_BUFFER payload of {len(payload)} bytes (at least 56)")
    buffer_id, pts, dts, duration, offset, offset_end, flags, memory_type, n_memory, n_meta = \
        NEW_BUFFER_HEAD.unpack_from(payload)
    if memory_type not in (MEMORY_FD, MEMORY_DMABUF):
        raise protocol_error(f"memory type {memory_type} (0: fd, 1: dma-buf)")
    if n_memory > MAX_MEMORIES:
        raise protocol_error(f"{n_memory} memories in one buffer (GStreamer's limit is 16)")
    end = NEW_BUFFER_HEAD.size + MEMORY.size * n_memory
    if len(payload) < end:
        raise protocol_error(f"a NEW_BUFFER of {n_memory} memories needs {end} bytes, got {len(payload)}")
    memories = tuple(Memory(*MEMORY.unpack_from(payload, NEW_BUFFER_HEAD.size + MEMORY.size * i))
                     for i in range(n_memory))
    video_meta = None
    position = end
    for _ in range(n_meta):
        name, version, body, position = _next_meta(payload, position)
        if name == VIDEO_META_NAME and version == 0 and video_meta is None:
            video_meta = parse_video_meta(body)
        # other metas (audio, reference timestamps, custom) are skipped, as GStreamer skips unknown ones
    return NewBuffer(buffer_id, pts, dts, duration, offset, offset_end, flags, memory_type, memories, video_meta)


def _next_meta(payload: bytes, position: int) -> tuple[bytes, int, bytes, int]:
    if len(payload) - position < _META_HEAD.size:
        raise protocol_error("a truncated meta header")
    total, name_len = _META_HEAD.unpack_from(payload, position)
    body_start = position + _META_HEAD.size + name_len + 2  # the name, its NUL, the version byte
    if total < body_start - position or position + total > len(payload):
        raise protocol_error(f"a meta of {total} bytes does not fit the message")
    name_end = position + _META_HEAD.size + name_len
    if payload[name_end] != 0:
        raise protocol_error("a meta name without its NUL")
    return payload[position + _META_HEAD.size:name_end], payload[name_end + 1], \
        payload[body_start:position + total], position + total


def parse_video_meta(body: bytes) -> VideoMeta:
    if len(body) < _VIDEO_META_HEAD.size:
        raise protocol_error("a truncated GstVideoMeta")
    _flags, fmt, width, height, n_planes = _VIDEO_META_HEAD.unpack_from(body)
    if not 1 <= n_planes <= 4 or len(body) < _VIDEO_META_HEAD.size + 16 * n_planes + 16:
        raise protocol_error(f"a GstVideoMeta of {n_planes} planes in {len(body)} bytes")
    offsets = struct.unpack_from(f"<{n_planes}Q", body, _VIDEO_META_HEAD.size)
    strides = struct.unpack_from(f"<{n_planes}i", body, _VIDEO_META_HEAD.size + 8 * n_planes)
    if any(stride <= 0 for stride in strides):
        raise protocol_error(f"GstVideoMeta strides {strides}: pydmabuf takes positive strides only")
    return VideoMeta(fmt, width, height, offsets, strides)


def serialize_video_meta(meta: VideoMeta) -> bytes:
    n = len(meta.offsets)
    body = (_VIDEO_META_HEAD.pack(0, meta.format, meta.width, meta.height, n)
            + struct.pack(f"<{n}Q", *meta.offsets) + struct.pack(f"<{n}i", *meta.strides)
            + struct.pack("<4I", 0, 0, 0, 0) + struct.pack(f"<{n}I", *(0 for _ in range(n))))
    head = _META_HEAD.pack(_META_HEAD.size + len(VIDEO_META_NAME) + 2 + len(body), len(VIDEO_META_NAME))
    return head + VIDEO_META_NAME + b"\0\0" + body  # the name's NUL, version 0


# --- caps ------------------------------------------------------------------------------
_FIELD = re.compile(r"\s*([A-Za-z][\w-]*)\s*=\s*(?:\((\w+)\))?\s*(\"(?:[^\"\\]|\\.)*\"|[^,;]*)\s*(?:,|$)")


def parse_video_caps(caps: str) -> dict[str, str] | None:
    """The fields of a fixed ``video/x-raw`` caps string (``format``, ``width``,
    ``height``, ``drm-format``...), or None for any other media type. Values keep
    their text (quotes removed)."""
    head, _, rest = caps.partition(",")
    media = head.split("(")[0].strip()
    if media != "video/x-raw" or ";" in caps:
        return None
    fields = {}
    for match in _FIELD.finditer(rest):
        value = match.group(3).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        fields[match.group(1)] = value
    return fields
