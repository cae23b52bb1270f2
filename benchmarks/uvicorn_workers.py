"""uvicorn workers for the ASGI benchmarks, each with a listening socket of its own.

``uvicorn --workers N`` shares one listening socket, and a worker's event loop accepts every
connection waiting when it wakes: wrk's keep-alive connections, opened all at once, nearly
all land on one worker, which then serves the run alone (and a pool of N per worker is one
pool). Here each worker is ``uvicorn --fd`` on a socket of its own, all bound to one port with
``SO_REUSEPORT``, so that the kernel spreads the connections over the workers.

    python benchmarks/uvicorn_workers.py PORT WORKERS -- UVICORN_ARGS...

The workers are this process's children (the benchmarks read their CPU time). SIGTERM is
passed on to them; when one exits, or the process that started this one, or after
:data:`MAX_LIFETIME`, the workers are stopped and this process exits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

#: How long the workers get to stop after SIGTERM before they are killed.
STOP_TIMEOUT = 30
#: No benchmark serves for longer: a launcher left behind stops by itself.
MAX_LIFETIME = 3 * 3600


def listening_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for worker in workers:
        try:
            worker.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def main(argv: list[str]) -> int:
    parent = os.getppid()
    deadline = time.monotonic() + MAX_LIFETIME
    port, count = int(argv[1]), int(argv[2])
    uvicorn_args = argv[argv.index("--") + 1 :]
    sockets = [listening_socket(port) for _ in range(count)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *uvicorn_args, "--fd", str(sock.fileno())],
            pass_fds=(sock.fileno(),),
        )
        for sock in sockets
    ]
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # Polled, so that the signal handler never waits on a child itself.
    while (
        not stopping
        and all(worker.poll() is None for worker in workers)
        and os.getppid() == parent
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    stop(workers)
    return 0 if stopping else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
