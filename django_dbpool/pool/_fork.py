"""Fork safety: a child process forgets the pools' inherited connections and starts afresh.

An inherited connection shares its socket with the parent. Using it from the child corrupts
both sessions; closing it (or letting the driver's finalizer run when it is garbage
collected) sends a terminate message that ends the parent's session. So the child keeps every
inherited connection referenced here, forever, and never touches it again; and, since the
references cannot outlive the interpreter (mysqlclient's finalizer sends COM_QUIT when a
child exits normally, as a recycled gunicorn worker does), the child's copy of the
connection's socket is pointed at /dev/null: whatever the child might still send on it goes
nowhere, and the parent's socket stays open (closing one copy of a descriptor never shuts a
socket down).
"""

from __future__ import annotations

import os
import stat
import weakref
from collections.abc import Iterable
from typing import Protocol


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_pools: weakref.WeakSet[_ForkAware] = weakref.WeakSet()
_inherited: list[object] = []
_inherited_ids: set[int] = set()


def register(pool: _ForkAware) -> None:
    _pools.add(pool)


def keep_forever(conns: Iterable[object]) -> None:
    """Called in the child: hold on to inherited connections so they are never finalized,
    and cut them off from the socket they share with the parent."""
    for conn in conns:
        _inherited.append(conn)
        _inherited_ids.add(id(conn))  # ids stay unique: the objects never die
        _detach(conn)


def _detach(conn: object) -> None:
    # Connections that are file-like (fileno(): psycopg, mysqlclient) get /dev/null in place
    # of their socket in this process; the driver object is left as it is.
    fileno = getattr(conn, "fileno", None)
    if fileno is None:
        return
    try:
        fd = fileno()
    except Exception:
        return  # closed or lost already: no socket left to share
    if not isinstance(fd, int) or fd < 0:
        return
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return  # not the connection's socket any more (closed as the parent forked)
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, fd, inheritable=False)
        finally:
            os.close(devnull)
    except OSError:
        pass


def is_inherited(conn: object) -> bool:
    return id(conn) in _inherited_ids


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
