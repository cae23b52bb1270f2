"""Noticing, without a round trip, that the server ended an idle connection's session; and
cutting a connection's socket off from under a thread that may be inside the driver.

Each physical connection the pool opens gets a duplicate of its driver's socket (closed
with the connection). ``dbpool_closed_by_server()`` reads the socket's TCP state through
it (anything but ESTABLISHED: the server sent FIN or RST) or, where that is not available,
polls it for something to read; ``shutdown_socket()`` shuts it down. A forked child closes
its inherited duplicates, which would otherwise keep the parent's sessions open after the
parent closes them.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import weakref
from typing import Any

__all__ = ["after_fork_in_child", "shutdown_socket", "stop_watching", "watch_for_server_close"]

# Linux's TCP_INFO socket option, whose first byte is the TCP state (include/net/tcp_states.h).
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None
_ESTABLISHED = b"\x01"

# The duplicates watch_for_server_close() holds, weakly: a forked child closes its copies, or
# they would keep the parent's sessions open after the parent closes them (a socket shuts
# down only when its last descriptor closes). The child never uses inherited connections.
_watch_sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def after_fork_in_child() -> None:
    """In a forked child (``lifecycle``): close the duplicates inherited from the parent."""
    for sock in list(_watch_sockets):
        sock.close()
    _watch_sockets.clear()


def watch_for_server_close(connection: Any) -> None:
    """Give a new connection ``dbpool_closed_by_server()``, a local check run at every
    checkout, with no round trip: true once the server has ended the session (killed,
    shutting down, idle timeout: an error message, then end of file) while the connection sat
    idle. ``VALIDATE_AFTER``'s probe catches only connections idle for a while; under load the
    next request would get the dead connection and fail."""
    # A duplicate of the driver's socket (closed with the connection, see stop_watching),
    # which shutdown_socket() also uses. On TCP the check reads the socket's TCP state
    # through it, a call that keeps the GIL: a zero-timeout poll() releases and retakes it,
    # and with a gunicorn worker's threads queued for the GIL that handed the CPU to another
    # thread at most checkouts. Elsewhere (a Unix socket, or not Linux) it polls for
    # something to read: an idle session has nothing to read unless the server wrote unasked.
    fd = connection.fileno()
    sock = _duplicate(fd)
    if sock is not None:
        connection.dbpool_socket = sock
        connection.dbpool_unwatch = sock.close
        _watch_sockets.add(sock)
        if _TCP_INFO is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            getsockopt, tcp, tcp_info = sock.getsockopt, socket.IPPROTO_TCP, _TCP_INFO

            def closed_by_server() -> bool:
                # The first byte of struct tcp_info is the connection's state.
                return getsockopt(tcp, tcp_info, 1) != _ESTABLISHED

            connection.dbpool_closed_by_server = closed_by_server
            return
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    poll_now = poll.poll
    connection.dbpool_closed_by_server = lambda: bool(poll_now(0))


def _duplicate(fd: int) -> socket.socket | None:
    # A socket object over a duplicate of fd, or None. Never the fd itself: a socket object
    # closes its fd when collected.
    try:
        duplicate = os.dup(fd)
    except OSError:  # out of file descriptors, say: the poll needs none
        return None
    try:
        return socket.socket(fileno=duplicate)
    except OSError:
        os.close(duplicate)
        return None


def stop_watching(connection: Any) -> None:
    """Release what :func:`watch_for_server_close` holds for ``connection``: a duplicate
    of its socket, which would keep the session open after the driver closes its own. For
    the pool adapters' ``close``."""
    unwatch = getattr(connection, "dbpool_unwatch", None)
    if unwatch is not None:
        unwatch()


def shutdown_socket(connection: Any) -> None:
    """Shut down ``connection``'s socket in both directions, for the pool adapters'
    ``interrupt``: a thread inside the driver with it gets the driver's own connection-lost
    error, and the server sees the session end. Takes no lock and never closes the driver
    object. Through the duplicate socket :func:`watch_for_server_close` keeps, so a
    descriptor number reused after the driver closed its own is never touched; a no-op once
    the connection is closed."""
    sock = getattr(connection, "dbpool_socket", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):  # closed meanwhile, or already shut down
        sock.shutdown(socket.SHUT_RDWR)
