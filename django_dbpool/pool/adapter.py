"""The small driver interface the pool needs; the Django backends implement it per driver."""

from __future__ import annotations

from typing import Protocol, TypeVar

__all__ = ["ConnectionAdapter"]

_C_contra = TypeVar("_C_contra", contravariant=True)


class ConnectionAdapter(Protocol[_C_contra]):
    """What the pool asks of a driver connection.

    The pool calls these methods without holding its lock, from the thread that acquires or
    releases the connection or from the pool's housekeeping thread; never concurrently for
    one connection. Any exception raised counts as "this connection is unusable" and the pool
    closes and replaces it; the exception is logged, never propagated to the caller.
    """

    def is_alive(self, conn: _C_contra) -> bool:
        """Probe the connection with the cheapest round trip the driver offers.

        Called only for connections idle longer than ``VALIDATE_AFTER`` (or suspected dead)
        and by the keepalive. Return False, or raise, if the connection is dead.
        """
        ...

    def needs_reset(self, conn: _C_contra) -> bool:
        """Whether the connection is inside a transaction or in an error state.

        Called on every release, so it must not do I/O: read the driver's local state
        (psycopg: ``conn.info.transaction_status``). When False, release costs no round trip.
        """
        ...

    def reset(self, conn: _C_contra) -> None:
        """Roll back and restore the session to how a fresh checkout expects it.

        Called only when :meth:`needs_reset` returned True, and on connections reclaimed from
        a thread that exited. Raise if the connection cannot be brought back.
        """
        ...

    def close(self, conn: _C_contra) -> None:
        """Close the connection. Exceptions are logged and ignored."""
        ...

    def interrupt(self, conn: _C_contra) -> None:
        """Cut the connection off while another thread may be inside the driver with it.

        Called by ``close(force=True)`` for a connection still checked out by a live thread.
        Must not close the driver object or take any lock the holder may hold: shut the
        socket down (and, where the protocol has one, send a cancel request), so that the
        holder's I/O fails with the driver's own connection-lost error and the server ends
        the session. Must be harmless on a connection that was closed meanwhile. Exceptions
        are logged and ignored.
        """
        ...
