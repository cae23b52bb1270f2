"""Network partitions on loopback for fault tests: nftables rules that drop packets.

``dropped_link(server_port)`` drops every packet to and from a loopback TCP port (with
``client_port``, those of one connection only) until the block ends or ``limit`` seconds have
passed, whichever comes first. Both ends' kernels then see silence, as in a real partition:
nothing is acknowledged, so TCP's own timeouts (``TCP_USER_TIMEOUT``, keepalive) can notice.
A userspace proxy that stops relaying (``tools/tcpproxy.py``'s black hole) cannot stand in
for this, since its kernel still acknowledges every byte.

The rules live in an nftables table of their own, ``inet dbpool_test_<pid>_<n>``, deleted on
exit whatever happens; tables that a killed run left behind (their pid no longer runs) are
deleted before new ones are made. They match loopback traffic only.

Needs root (CAP_NET_ADMIN) and Debian's ``nftables`` (``python tools/dbservers.py ensure``
installs it): without them a test that partitions fails, it never skips.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tools.dbservers import nft_binary

__all__ = ["Partition", "dropped_link"]

TABLE_PREFIX = "dbpool_test_"
_TABLE = re.compile(rf"^table inet ({TABLE_PREFIX}(\d+)_\d+)$", re.MULTILINE)
_numbers = itertools.count(1)


def _nft(*args: str, rules: str | None = None) -> str:
    nft = nft_binary()
    if nft is None:
        raise RuntimeError(
            "nft not found: network partition tests need nftables. Run "
            "`python tools/dbservers.py ensure` (as root), or apt-get install nftables."
        )
    result = subprocess.run(
        [nft, *args],
        input=rules,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"nft {' '.join(args)} failed ({result.returncode}); partitions need root "
            f"(CAP_NET_ADMIN):\n{result.stderr.strip()}"
        )
    return result.stdout


def _delete_abandoned_tables() -> None:
    # A run killed inside dropped_link() could not delete its table; its rules would drop
    # the packets of whatever later uses that port.
    for match in _TABLE.finditer(_nft("list", "tables")):
        table, pid = match.group(1), int(match.group(2))
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            _nft("delete", "table", "inet", table)


class Partition:
    """The rules for one partition: :meth:`start` puts them in place, :meth:`heal` removes
    them (idempotent; also before a start, and from any thread)."""

    def __init__(self, server_port: int, client_port: int | None = None) -> None:
        self.table = f"{TABLE_PREFIX}{os.getpid()}_{next(_numbers)}"
        to_client = f" tcp dport {client_port}" if client_port is not None else ""
        from_client = f" tcp sport {client_port}" if client_port is not None else ""
        # Loopback packets pass the input hook once, on the receiving side: dropping them
        # there leaves both senders none the wiser (a drop on output fails the send at once).
        self.rules = (
            f"table inet {self.table} {{\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f'    iifname "lo" ip daddr 127.0.0.1 tcp dport {server_port}{from_client} drop\n'
            f'    iifname "lo" ip saddr 127.0.0.1 tcp sport {server_port}{to_client} drop\n'
            "  }\n"
            "}\n"
        )
        #: ``time.monotonic()`` when the rules took effect, and when they were removed.
        self.started: float | None = None
        self.healed: float | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def start(self, limit: float) -> None:
        """Drop the packets from now until :meth:`heal`, or ``limit`` seconds at most: a
        bound, so that what waits for the network ends even when nothing else would."""
        with self._lock:
            if self.started is not None:
                raise RuntimeError("a Partition starts once")
            _delete_abandoned_tables()
            _nft("-f", "-", rules=self.rules)
            self.started = time.monotonic()
            self._timer = threading.Timer(limit, self.heal)
            self._timer.daemon = True
            self._timer.start()

    def heal(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if self.started is not None and self.healed is None:
                _nft("delete", "table", "inet", self.table)
                self.healed = time.monotonic()


@contextmanager
def dropped_link(
    server_port: int, client_port: int | None = None, *, limit: float
) -> Iterator[Partition]:
    """Drop the packets between ``127.0.0.1:server_port`` and its clients (only the client
    at ``client_port`` if given), both ways, until the block ends or ``limit`` seconds pass."""
    partition = Partition(server_port, client_port)
    partition.start(limit)
    try:
        yield partition
    finally:
        partition.heal()
