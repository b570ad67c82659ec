"""The cursor, read in a thread: a consumer's iteration blocks (it follows the log), the publisher is asyncio.

The thread turns each record into its NATS message at once (a record's value
may be a view into the reader's buffer; the message owns a copy) and appends
it to a deque; the loop takes whole batches from it (``take``). A hop between
threads costs far more than a record, so nothing crosses per record: the
loop is woken (``call_soon_threadsafe``) only when it waits on an empty feed,
and the thread, stopped at ``maxsize`` items, only when the loop has taken
the feed down to half of that. So a slow cluster holds the reader back
instead of filling memory.

Handing over relies on deque appends and pops being atomic and on each side
publishing its state before it checks the other's (the thread appends, then
looks for a waiting loop; the loop registers as waiting, then looks again).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Iterable, NamedTuple, Optional

from ..position import Position
from ..record import Record
from .mapping import Message, to_message


class Item(NamedTuple):
    position: Position
    message: Message


_YIELD_EVERY = 64  # records the thread converts before it lets the loop have the GIL


class Feed:
    def __init__(
        self,
        cursor: Iterable[tuple[Record, Position]],
        log_id: str,
        loop: asyncio.AbstractEventLoop,
        maxsize: int = 4096,
    ) -> None:
        self._cursor = cursor
        self._log_id = log_id
        self._loop = loop
        self._maxsize = maxsize
        self._items: deque[Item] = deque()
        self._ended = False  # the thread appends nothing more
        self._waiter: Optional[asyncio.Future[None]] = None  # the loop, waiting for items
        self._room = threading.Event()  # set by the loop when the feed is below half full
        self._closing = threading.Event()
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="nori-ship-feed", daemon=True)
        self._thread.start()

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        items, log_id, maxsize = self._items, self._log_id, self._maxsize
        count = 0
        try:
            for record, position in self._cursor:
                items.append(Item(position, to_message(record, position, log_id)))
                if self._waiter is not None:
                    self._wake()
                count += 1
                if len(items) >= maxsize and not self._wait_room():
                    return
                if count % _YIELD_EVERY == 0:
                    time.sleep(0)  # the loop may be waiting for the GIL with acks to read
        except BaseException as exc:  # handed to the publisher, which raises it
            self.error = exc
        finally:
            self._ended = True
            self._wake()

    def _wait_room(self) -> bool:
        """Block until the loop took the feed below half full (False when closing)."""
        self._room.clear()
        while len(self._items) >= self._maxsize // 2:
            if self._closing.is_set():
                return False
            self._room.wait(0.1)
            self._room.clear()
        return not self._closing.is_set()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(_release, waiter)
            except RuntimeError:  # the loop closed: nobody is waiting any more
                pass

    # -- the loop -----------------------------------------------------------------------

    async def take(self, most: int, timeout: float) -> Optional[list[Item]]:
        """Up to ``most`` items, waiting at most ``timeout`` for the first; None once the cursor ended."""
        items = self._items
        if not items and not self._ended:
            waiter = self._loop.create_future()
            self._waiter = waiter
            if not items and not self._ended:  # looked again after registering (see the module docstring)
                handle = self._loop.call_later(timeout, _release, waiter)
                await waiter
                handle.cancel()
            self._waiter = None
        if not items:
            return None if self._ended else []
        n = min(most, len(items))
        batch = [items.popleft() for _ in range(n)]
        if len(items) < self._maxsize // 2 and not self._room.is_set():
            self._room.set()
        return batch

    def close(self, join_timeout: float = 5.0) -> None:
        """Stop handing over records (the cursor itself is closed by its owner, which ends the thread's wait)."""
        self._closing.set()
        self._room.set()
        self._thread.join(join_timeout)


def _release(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)
