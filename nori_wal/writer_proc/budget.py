"""How many bytes of requests the writer may hold, and the ZeroMQ settings that enforce it (pure).

The writer holds a request's bytes from the moment ZeroMQ reads them off the
connection until the group they joined is written. Two places hold them:

- **The loop** (``loop.WriterServer._receive_group``): it stops taking
  requests into a group once the group holds ``max_pending_bytes`` and writes
  it (the bytes are then the page cache's, not the writer's), so it holds at
  most ``max_pending_bytes`` plus the one request that crossed the line.
- **ZeroMQ, per connection**: its receive queue (``RCVHWM``) counts messages,
  not bytes, and while that queue is full the connection's engine keeps one
  more decoded message and reads nothing further (back-pressure: the kernel
  buffer fills, then the sender blocks; nothing is dropped). So one
  connection holds at most ``(rcvhwm + 1) * max_message_bytes``; a message
  over ``max_message_bytes`` (``ZMQ_MAXMSGSIZE``) closes its connection before
  its bytes are stored.

``rcvhwm`` is the largest queue whose worst case fits ``max_connection_bytes``
(at least 1). The total is ``loop_bound + connections * connection_bound``:
bounded per connection, and in total by who may connect (owner-only socket,
CURVE keys). A deeper queue pipelines small requests better and costs a
``max_message_bytes`` of worst case per connection per message.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import protocol as P

MIB = 1024 * 1024
DEFAULT_MAX_PENDING_BYTES = 32 * MIB  # the loop writes a group once it holds this many bytes
DEFAULT_MAX_CONNECTION_BYTES = 3 * P.MAX_MESSAGE_BYTES  # ZeroMQ queues 2 requests per connection (+1 decoded)


@dataclass(frozen=True)
class MemoryBudget:
    """The writer's byte caps; ``rcvhwm`` and the worst cases follow from them."""

    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    max_connection_bytes: int = DEFAULT_MAX_CONNECTION_BYTES
    max_message_bytes: int = P.MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive, got {self.max_message_bytes}")
        if self.max_pending_bytes < 1:
            raise ValueError(f"max_pending_bytes must be positive, got {self.max_pending_bytes}")
        if self.max_connection_bytes < 2 * self.max_message_bytes:
            raise ValueError(
                f"max_connection_bytes must be at least {2 * self.max_message_bytes} (two requests of "
                f"{self.max_message_bytes} bytes: ZeroMQ queues one and holds one more), "
                f"got {self.max_connection_bytes}"
            )

    @property
    def rcvhwm(self) -> int:
        """ZeroMQ's receive queue per connection, in messages: (rcvhwm + 1) messages fit the cap."""
        return max(1, self.max_connection_bytes // self.max_message_bytes - 1)

    @property
    def connection_bound(self) -> int:
        """The most bytes ZeroMQ holds for one connection (<= max_connection_bytes)."""
        return (self.rcvhwm + 1) * self.max_message_bytes

    @property
    def loop_bound(self) -> int:
        """The most request bytes the loop holds: a full group and the request that filled it."""
        return self.max_pending_bytes + self.max_message_bytes

    def worst_case(self, connections: int) -> int:
        """The most request bytes the writer holds with this many connections."""
        return self.loop_bound + connections * self.connection_bound


__all__ = ["DEFAULT_MAX_CONNECTION_BYTES", "DEFAULT_MAX_PENDING_BYTES", "MemoryBudget"]
