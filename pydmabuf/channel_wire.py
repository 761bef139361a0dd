"""The channel's own wire protocol: what a Producer and its Consumers say to each
other over their SOCK_SEQPACKET connection, on top of :mod:`pydmabuf.share`.

Kept apart from :mod:`pydmabuf.channel` so that the messages are written down in one
place (and another protocol, such as GStreamer's unixfd, can sit beside this one).

producer -> consumer, each one :func:`pydmabuf.share.send` message (SEQPACKET keeps
the boundaries):

=============  =========================  ===========================================
objects        data                       meaning
=============  =========================  ===========================================
item [fence]   ``b"F" + seq:u64`` + meta  a frame: a Buffer or a Frame, and the fence
                                          that signals when its contents are ready
(none)         ``b"E"``                   end of stream: the producer closed
(none)         ``b"X"``                   refused: this consumer's uid/gid is not
                                          admitted (sent instead of any frame)
(none)         ``b"K"``                   evicted: disconnected for falling behind
=============  =========================  ===========================================

consumer -> producer, plain ``send`` (no fds), one message each:

- ``b"R" + seq:u64`` (:data:`RELEASE_SIZE` bytes): frame ``seq`` is released. Only a
  frame the consumer holds counts; a release of any other seq is ignored.
- ``b"B"``: goodbye, a clean disconnect (whatever it still holds is released).
- anything else is invalid and disconnects the consumer.

Integers are little endian. A consumer can owe at most as many releases as frames it
holds, so a producer that reads ``held + 1`` messages (releases and a goodbye) has read
everything a well-behaved consumer can have sent; more waiting than that is a flood.
"""

from __future__ import annotations

import struct

from .share import MAX_DATA

__all__ = ["END", "EVICTED", "FRAME", "FRAME_HEADER", "GOODBYE", "GOODBYE_BYTE", "MAX_META", "READ_SIZE",
           "REFUSED", "RELEASE", "RELEASE_BYTE", "RELEASE_SIZE", "SEQ", "frame_data", "release"]

FRAME, END, REFUSED, EVICTED = b"F", b"E", b"X", b"K"  # producer -> consumer
RELEASE, GOODBYE = b"R", b"B"  # consumer -> producer
RELEASE_BYTE, GOODBYE_BYTE = RELEASE[0], GOODBYE[0]  # what a received buffer's first byte is compared to
FRAME_HEADER = struct.Struct("<cQ")  # b"F" or b"R", then the frame's seq
SEQ = struct.Struct("<Q")  # the seq alone, read at offset 1
RELEASE_SIZE = FRAME_HEADER.size
MAX_META = MAX_DATA - FRAME_HEADER.size
# What a producer reads a consumer message into: room for every valid one, and a longer
# (invalid) one shows up as longer than RELEASE_SIZE however SEQPACKET truncates it.
READ_SIZE = 64

_pack_header = FRAME_HEADER.pack


def frame_data(seq: int, meta: bytes = b"") -> bytes:
    """The data of frame ``seq``'s message: header, then the caller's ``meta``."""
    data = _pack_header(FRAME, seq)
    return data + meta if meta else data


def release(seq: int) -> bytes:
    """A consumer's release of frame ``seq``."""
    return _pack_header(RELEASE, seq)
