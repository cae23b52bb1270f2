"""A small TCP proxy on loopback for fault tests and benchmarks.

It sits between the application and a database server and can

- add latency with jitter to every chunk, each way (``jitter(0.001, 0.0005)``: 1 ms +- 0.5 ms),
  keeping the byte order of each direction;
- black-hole the link (``blackhole()``): sockets stay open, nothing is forwarded and new
  connections are accepted but not connected onward, until ``heal()`` delivers what was held,
  as a partition that heals before TCP gives up would;
- reset every connection at once (``reset_all()``);
- swallow the next connections (``swallow(n)``): accept them and never answer nor connect
  them onward, as a hung server or a load balancer with a dead backend would; each is
  recorded in ``swallowed`` with the moment the client gave up on it.

It runs an asyncio loop in a daemon thread of the calling process; ``connections`` counts
connections accepted, so a benchmark can tell how many connects went through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["Swallowed", "TcpProxy", "tcp_proxy"]

_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


@dataclass(eq=False)
class Swallowed:
    """A connection the proxy accepted and never answered (see ``TcpProxy.swallow``)."""

    #: ``time.monotonic()`` at accept, and when the client closed it or the proxy stopped
    #: (None: still open).
    accepted: float
    closed: float | None = None


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; see the module docstring."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.connections = 0
        self.swallowed: list[Swallowed] = []
        self._swallow = 0
        self._delay = (0.0, 0.0)
        self._open = threading.Event()
        self._open.set()
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._healed: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="tcpproxy")

    # Control, from any thread.

    def start(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def jitter(self, mean: float, spread: float) -> None:
        """Delay each chunk by ``mean`` +- ``spread`` seconds (uniform), each way."""
        if spread > mean:
            raise ValueError("spread must not exceed mean: a chunk cannot arrive before it is sent")
        self._delay = (mean, spread)

    def blackhole(self) -> None:
        self._call(self._set_open, False)

    def heal(self) -> None:
        self._call(self._set_open, True)

    def swallow(self, count: int) -> None:
        """Accept the next ``count`` connections and never answer them nor connect them
        onward; what their clients send is read and dropped. Later ones are proxied."""
        self._call(self._set_swallow, count)

    def reset_all(self) -> None:
        """Abort every proxied connection (the peers see a reset)."""
        self._call(self._reset_all)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def _call(self, function: object, *args: object) -> None:
        async def run() -> None:
            function(*args)  # type: ignore[operator]

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # Inside the loop.

    async def _start(self) -> None:
        self._healed = asyncio.Event()
        self._healed.set()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        # Let them finish cancelling before the loop stops: a task still pending when the
        # loop closes is reported as destroyed.
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def _set_open(self, value: bool) -> None:
        assert self._healed is not None
        if value:
            self._healed.set()
        else:
            self._healed.clear()

    def _set_swallow(self, count: int) -> None:
        self._swallow = count

    def _reset_all(self) -> None:
        for link in list(self._links):
            for writer in link.writers:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # SO_LINGER 0: close() sends a reset instead of a FIN. A socket already
                    # reset by its peer may refuse the option.
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                writer.transport.abort()
        self._links.clear()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        # A handler that ends cancelled (the proxy stopping with links open) makes Python
        # 3.11's asyncio log a traceback per link: end normally instead.
        with contextlib.suppress(asyncio.CancelledError):
            await self._link(client_reader, client_writer)

    async def _link(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        assert self._healed is not None
        self.connections += 1
        link = _Link([client_writer])
        self._links.add(link)
        if self._swallow > 0:
            self._swallow -= 1
            await self._hold(client_reader, link)
            return
        try:
            await self._healed.wait()
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            self._links.discard(link)
            return
        link.writers.append(server_writer)
        pipes = [
            asyncio.ensure_future(self._pipe(client_reader, server_writer)),
            asyncio.ensure_future(self._pipe(server_reader, client_writer)),
        ]
        # One direction may end at end of file while the other goes on (a half-close); a
        # reset on either side ends both, or the other would wait for its peer forever.
        await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        for writer in link.writers:
            writer.transport.abort()
        self._links.discard(link)

    async def _hold(self, client_reader: asyncio.StreamReader, link: _Link) -> None:
        # A swallowed connection: read until the client closes it (or the proxy stops,
        # which aborts it), answering nothing.
        record = Swallowed(time.monotonic())
        self.swallowed.append(record)
        with contextlib.suppress(OSError):
            while await client_reader.read(_CHUNK):
                pass
        record.closed = time.monotonic()
        for writer in link.writers:
            writer.transport.abort()
        self._links.discard(link)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._healed is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                await self._healed.wait()  # type: ignore[union-attr]
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        last_due = 0.0
        try:
            while True:
                data = await reader.read(_CHUNK)
                mean, spread = self._delay
                delay = random.uniform(mean - spread, mean + spread) if mean else 0.0
                # Never before the previous chunk of this direction: bytes stay in order.
                last_due = max(last_due, loop.time() + delay)
                queue.put_nowait((last_due, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()


@contextmanager
def tcp_proxy(target_host: str, target_port: int) -> Iterator[TcpProxy]:
    """A started :class:`TcpProxy` to ``target``, stopped on exit."""
    proxy = TcpProxy(target_host, target_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
