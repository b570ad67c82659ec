"""The cursor, read in a thread: a consumer's iteration blocks (it follows the log), the publisher is asyncio.

The thread turns each record into its NATS message at once (a record's value
may be a view into the reader's buffer; the message owns a copy) and hands
them over through a bounded queue, so a slow cluster holds the reader back
instead of filling memory. ``take`` (run in an executor) returns a batch.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, NamedTuple, Optional

from ..position import Position
from ..record import Record
from .mapping import Message, to_message


class Item(NamedTuple):
    position: Position
    message: Message


_END = object()


class Feed:
    def __init__(self, cursor: Iterable[tuple[Record, Position]], log_id: str, maxsize: int = 4096) -> None:
        self._cursor = cursor
        self._log_id = log_id
        self._q: queue.Queue[Any] = queue.Queue(maxsize)
        self._closing = threading.Event()
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="nori-ship-feed", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._closing.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for record, position in self._cursor:
                if not self._put(Item(position, to_message(record, position, self._log_id))):
                    return
        except BaseException as exc:  # handed to the publisher, which raises it
            self.error = exc
        finally:
            self._put(_END)

    def take(self, most: int, timeout: float) -> Optional[list[Item]]:
        """Up to ``most`` items, waiting at most ``timeout`` for the first; None once the cursor ended."""
        try:
            first = self._q.get(timeout=timeout)
        except queue.Empty:
            return []
        if first is _END:
            return None
        batch = [first]
        while len(batch) < most:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                self._q.put_nowait(_END)  # seen again by the next take (room: we just took one)
                break
            batch.append(item)
        return batch

    def close(self, join_timeout: float = 5.0) -> None:
        """Stop handing over records (the cursor itself is closed by its owner, which ends the thread's wait)."""
        self._closing.set()
        self._thread.join(join_timeout)
