"""Fork safety: a child process forgets the pools' inherited connections and starts afresh.

An inherited connection shares its socket with the parent. Using it from the child corrupts
both sessions; closing it (or letting the driver's finalizer run when it is garbage
collected) sends a terminate message that ends the parent's session. So the child keeps every
inherited connection referenced here, forever, and never touches it again.
"""

from __future__ import annotations

import os
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
    """Called in the child: hold on to inherited connections so they are never finalized."""
    for conn in conns:
        _inherited.append(conn)
        _inherited_ids.add(id(conn))  # ids stay unique: the objects never die


def is_inherited(conn: object) -> bool:
    return id(conn) in _inherited_ids


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
