"""The checkout's local check that the server has ended an idle session, on plain sockets:
TCP (the state the kernel keeps), a Unix socket (poll), and the duplicate socket the TCP
check holds, which must never keep a session open after the connection is closed, in this
process or in a forked child."""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Iterator

import pytest

from django_dbpool.backends.watch import stop_watching, watch_for_server_close

# Long enough for any loaded machine; waits end as soon as the event happens.
EVENT_LIMIT = 10.0


class DriverConnection:
    """Stands in for a driver connection: a socket, fileno(), and room for attributes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def watched() -> Iterator[tuple[DriverConnection, socket.socket]]:
    """A connection over loopback TCP with the checkout check set up, and the server's end."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with client, server:
        conn = DriverConnection(client)
        watch_for_server_close(conn)
        try:
            yield conn, server
        finally:
            stop_watching(conn)


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], EVENT_LIMIT)[0])


def sees_end_of_file(sock: socket.socket) -> bool:
    """True once ``sock``'s peer has shut the connection down; False if it is still open."""
    return readable(sock) and sock.recv(1) == b""


def test_tcp_check_reads_the_connection_state(
    watched: tuple[DriverConnection, socket.socket],
) -> None:
    conn, server = watched
    assert conn.dbpool_closed_by_server() is False
    # Unread bytes alone do not count: the session is over only when the server has closed
    # its end.
    server.sendall(b"N")
    assert readable(conn.sock)
    assert conn.dbpool_closed_by_server() is False
    assert conn.sock.recv(1) == b"N"
    server.close()
    assert sees_end_of_file(conn.sock)
    assert conn.dbpool_closed_by_server() is True


def test_tcp_check_sees_a_reset(watched: tuple[DriverConnection, socket.socket]) -> None:
    conn, server = watched
    # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()
    assert readable(conn.sock)
    assert conn.dbpool_closed_by_server() is True


def test_unix_socket_check_polls() -> None:
    client, server = socket.socketpair(socket.AF_UNIX)
    with client, server:
        conn = DriverConnection(client)
        watch_for_server_close(conn)
        try:
            assert conn.dbpool_closed_by_server() is False
            server.close()
            assert conn.dbpool_closed_by_server() is True
        finally:
            stop_watching(conn)


def test_a_closed_connection_ends_the_session_once_the_watch_stops(
    watched: tuple[DriverConnection, socket.socket],
) -> None:
    conn, server = watched
    conn.close()
    # The duplicate still holds the socket: the server sees nothing yet.
    server.setblocking(False)
    with pytest.raises(BlockingIOError):
        server.recv(1)
    server.setblocking(True)
    stop_watching(conn)
    assert sees_end_of_file(server)


def test_a_forked_child_does_not_keep_the_parents_session_open(
    watched: tuple[DriverConnection, socket.socket],
) -> None:
    conn, server = watched
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            # The pool's fork handling points the child's copy of the driver's socket at
            # /dev/null; this stands in for it. The watch's duplicate is the backend's.
            os.close(conn.fileno())
            os.read(release_r, 1)  # alive until the parent has looked
        finally:
            os._exit(0)
    os.close(release_r)
    try:
        conn.close()
        stop_watching(conn)
        assert sees_end_of_file(server), "the child's copy kept the session open"
    finally:
        os.write(release_w, b"x")
        os.close(release_w)
        os.waitpid(pid, 0)
