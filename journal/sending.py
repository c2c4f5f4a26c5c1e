"""Handing requests to nng without waiting, through pynng's public API only.

A message goes at once when nng can take it: a non-blocking send, which never waits for nng's threads. One it cannot
take yet (a Req0 socket whose connection is not up, or has not yet finished sending the last request) waits here,
`max_in_flight` of them at most, each `timeout_ms` at most, and goes in order once the socket's send descriptor says
nng can take one: the event loop watches the descriptor meanwhile, and nothing is watched while nothing waits. A
message whose time runs out is dropped and counted. Req0 raises that descriptor only while a connection can send,
so the loop never spins on it.
"""

import asyncio
import collections
import time

import pynng


class Sender:
    def __init__(self, socket: pynng.Socket, timeout_ms: int, max_in_flight: int,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        """`loop`: the event loop that sends what waits as soon as nng can take it; without one, what waits goes at
        the next `send`."""
        self.socket = socket
        self.timeout_s = timeout_ms / 1000
        self.max_in_flight = max_in_flight
        self.loop = loop
        self.waiting: collections.deque[tuple[float, bytes]] = collections.deque()  # (deadline, message), in order
        self.failed = 0  # messages dropped: their time ran out, or nng refused them
        self.watching = False

    def send(self, message: bytes) -> bool:
        """Send now or once nng can take it; False, sending nothing, if `max_in_flight` messages are waiting."""
        self.flush()
        if len(self.waiting) >= self.max_in_flight:
            return False
        self.waiting.append((time.monotonic() + self.timeout_s, message))
        self.flush()
        return True

    def flush(self) -> None:
        """Send what waits, in order, while nng takes it; drop what waited too long."""
        waiting = self.waiting
        now = time.monotonic()
        while waiting:
            deadline, message = waiting[0]
            if deadline > now:
                try:
                    self.socket.send(message, block=False)
                except pynng.TryAgain:
                    break
                except pynng.NNGException:  # the socket is closed: nothing will ever go
                    self.failed += 1
            else:
                self.failed += 1
            waiting.popleft()
        self._watch(bool(waiting))

    def _watch(self, wanted: bool) -> None:
        if self.loop is None or wanted == self.watching or self.loop.is_closed():
            return
        if wanted:
            self.loop.add_reader(self.socket.send_fd, self.flush)
        else:
            self.loop.remove_reader(self.socket.send_fd)
        self.watching = wanted

    def close(self) -> None:
        """Stop watching; what still waits is dropped and counted."""
        self.failed += len(self.waiting)
        self.waiting.clear()
        self._watch(False)
