"""What the pool keeps per connection (slots, with their holders' locations) and per waiting
caller (waiters)."""

from __future__ import annotations

import linecache
import random
import threading
from types import CodeType, FrameType
from typing import Generic, TypeVar

C = TypeVar("C")

#: Where a connection was acquired: frames as (code, bytecode offset), innermost first. The
#: offset (``f_lasti``) is free to read; the line number is worked out only for a warning.
Stack = tuple[tuple[CodeType, int], ...]
#: Who holds a checked-out connection: thread, caller code and offset, holder_info, stack.
Holder = tuple[threading.Thread, CodeType, int, str | None, Stack | None]

_STACK_LIMIT = 40


class Slot(Generic[C]):
    """One physical connection and its bookkeeping; mutated only under the pool lock."""

    __slots__ = (
        "acquired_at",
        "conn",
        "created",
        "cut_off",
        "expires",
        "holder",
        "last_ok",
        "last_used",
        "leak_warned",
        "shared",
    )

    def __init__(self, conn: C, created: float, lifetime: float) -> None:
        self.conn = conn
        self.created = created
        # Jitter (up to 2.5 %) spreads the retirement of connections opened together.
        self.expires = created + lifetime * (1.0 - 0.025 * random.random())
        # last_used orders the idle list and drives MAX_IDLE; last_ok (last release or
        # successful probe) drives VALIDATE_AFTER. A keepalive probe refreshes only last_ok,
        # so probed connections still age out through MAX_IDLE.
        self.last_used = created
        self.last_ok = created
        self.acquired_at = 0.0
        self.holder: Holder | None = None
        self.leak_warned = False
        # The holder of a checkout that Pool.share() exempted from orphan reclaim. Compared
        # by identity with ``holder``, so it lapses at the next checkout on its own.
        self.shared: Holder | None = None
        # Set when close(force=True) shut the socket under a live holder: the connection
        # closes when released, and is not interrupted again.
        self.cut_off = False

    def fresh(self, now: float, validate_after: float) -> bool:
        """The freshness rule: handed out without a probe, because it was returned or probed
        less than ``validate_after`` seconds ago and has not reached its lifetime.
        ``Pool.acquire``'s fast path has it written out (no call on the hot path)."""
        return now - self.last_ok < validate_after and now < self.expires


def orphaned(slot: Slot[C]) -> bool:
    """Whether a checked-out slot's holder thread has exited without releasing it, and the
    slot is not shared with other threads (see ``Pool.share``)."""
    holder = slot.holder
    return holder is not None and slot.shared is not holder and not holder[0].is_alive()


class Waiter(Generic[C]):
    """A queued caller. ``wakeup`` is a lock created held; :meth:`wake` releases it, so each
    waiter sleeps on its own primitive and a wake-up rouses exactly one thread.

    A waiter is woken either served (``slot`` or ``error`` set) or nudged (neither set: a
    connection went idle and the waiter should try for it). ``woken`` is true from the wake
    until the waiter, under the pool lock, has looked at what it was woken for. ``passed``
    counts the connections that went idle for it while it was the oldest waiter (see
    ``pool.MAX_PASSES``).
    """

    __slots__ = ("error", "holder", "passed", "since", "slot", "wakeup", "woken")

    def __init__(self, holder: Holder, since: float) -> None:
        # Looked up through the module at call time so gevent's monkey-patching applies.
        self.wakeup = threading.Lock()
        self.wakeup.acquire()
        self.holder = holder
        self.since = since
        self.slot: Slot[C] | None = None
        self.error: BaseException | None = None
        self.woken = False
        self.passed = 0

    def wake(self) -> None:
        """Rouse the waiter (pool lock held); a second wake before it looks is a no-op."""
        if not self.woken:
            self.woken = True
            self.wakeup.release()


def capture_stack(frame: FrameType | None) -> Stack:
    """Cheap stack capture: code objects and offsets only, formatted on demand."""
    frames: list[tuple[CodeType, int]] = []
    while frame is not None and len(frames) < _STACK_LIMIT:
        frames.append((frame.f_code, frame.f_lasti))
        frame = frame.f_back
    return tuple(frames)


def format_holder(holder: Holder) -> str:
    """Thread, tag and acquisition place (full stack when captured), for log messages."""
    thread, code, offset, info, stack = holder
    text = f"thread {thread.name!r}"
    if info:
        text += f" [{info}]"
    if stack:
        lines = [_frame_line(c, n) for c, n in reversed(stack)]
        return text + ", acquired at (most recent call last):\n" + "\n".join(lines)
    return text + ", acquired at:\n" + _frame_line(code, offset)


def _frame_line(code: CodeType, offset: int) -> str:
    line = _line_number(code, offset)
    text = f'  File "{code.co_filename}", line {line}, in {code.co_name}'
    source = linecache.getline(code.co_filename, line).strip()
    return f"{text}\n    {source}" if source else text


def _line_number(code: CodeType, offset: int) -> int:
    for start, end, line in code.co_lines():
        if start <= offset < end and line is not None:
            return line
    return code.co_firstlineno
