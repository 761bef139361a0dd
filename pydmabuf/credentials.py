"""Who is on the other end of a Unix socket (SO_PEERCRED), and may they be?

An abstract socket ("@name") has no file permissions: any local user can connect to
it, or bind it first. A path socket is only as private as its directory. So a
program that shares buffers checks the peer's credentials, which the kernel records
at ``connect()``/``listen()`` time and no peer can forge. ``check_peer`` is the
check the channel uses; plain ``send``/``recv`` users call it on their sockets.
"""

from __future__ import annotations

import errno as E
import os
import socket
import struct
from collections.abc import Iterable
from typing import NamedTuple

from .errors import PermissionDeniedError, closed, error, invalid

__all__ = ["PeerCredentials", "check_peer", "peer_credentials"]

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class PeerCredentials(NamedTuple):
    """The peer process's pid, effective uid and gid when it connected (or listened)."""

    pid: int
    uid: int
    gid: int


PeerCredentials.pid.__doc__ = "The peer's process id (at connect or listen time)."
PeerCredentials.uid.__doc__ = "The peer's effective user id."
PeerCredentials.gid.__doc__ = "The peer's effective group id."


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The credentials the kernel recorded for the peer of a connected AF_UNIX socket."""
    if not isinstance(sock, socket.socket):
        raise invalid(f"peer_credentials() needs a socket, got {type(sock).__name__}")
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError as exc:
        if sock.fileno() < 0:
            raise closed("socket") from None
        raise error(exc.errno or E.ENOTCONN, "SO_PEERCRED", "the socket must be a connected AF_UNIX socket") from None
    return PeerCredentials(*_UCRED.unpack(raw))


def id_set(values: Iterable[int] | None, what: str) -> frozenset[int]:
    """``allow_uids``/``allow_gids`` checked: ints >= 0 (InvalidArgumentError otherwise)."""
    if values is None:
        return frozenset()
    out = set()
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise invalid(f"{what} must hold ints >= 0, got {v!r}")
        out.add(v)
    return frozenset(out)


def check_peer(
    sock: socket.socket,
    *,
    allow_uids: Iterable[int] | None = None,
    allow_gids: Iterable[int] | None = None,
    allow_root: bool = False,
) -> PeerCredentials:
    """The peer's credentials if it may talk to us, else PermissionDeniedError.

    Admitted: a peer running as our own effective uid, any uid in ``allow_uids``,
    any primary gid in ``allow_gids``, and root when ``allow_root`` (a consumer
    trusts a root producer, a root camera daemon for example).
    """
    creds = peer_credentials(sock)
    uids = id_set(allow_uids, "allow_uids") | {os.geteuid()}
    if allow_root:
        uids |= {0}
    if creds.uid in uids or creds.gid in id_set(allow_gids, "allow_gids"):
        return creds
    raise PermissionDeniedError(
        E.EACCES,
        f"peer pid {creds.pid} runs as uid {creds.uid} gid {creds.gid}, which may not connect "
        f"(allowed uids {sorted(uids)}, gids {sorted(id_set(allow_gids, 'allow_gids'))}; "
        "pass allow_uids= or allow_gids= to admit it)",
    )
