"""The shard's client socket: an nng Rep0 socket read from the event loop, one nng context per request held.

Every context is made after the socket's receive timeout is set to zero and its send timeout to `reply_timeout_ms`,
and takes both (pynng's public API only: Socket, Context, recv_fd). So a receive never waits: the loop takes
requests while the socket's receive descriptor says some wait, and a context with none answers at once.

Replies leave from a thread of their own. A context's send waits for nng's threads to finish it (a hand-off that
costs tens of microseconds on an idle machine and about half a millisecond on a busy one), and the loop must not
wait: it would stall every request behind it. A send waits longer only while the client's connection is still
sending the reply before it; `reply_timeout_ms` bounds that, whatever a client does (and one slow client delays the
replies queued behind its own). Past MAX_QUEUED_REPLIES waiting for the thread, the loop sends itself, so the
contexts out at once stay bounded. A context goes back to the idle ones only once its reply has gone. No nng thread
ever calls back into Python.
"""

import logging
import queue
import threading

import pynng

log = logging.getLogger("paygate.shard")
MAX_QUEUED_REPLIES = 1024


class Replier:
    def __init__(self, address: str, reply_timeout_ms: int) -> None:
        self.reply_timeout_ms = reply_timeout_ms
        self.socket = pynng.Rep0(recv_timeout=0, send_timeout=reply_timeout_ms)
        self.socket.listen(address)
        self.receive_fd = self.socket.recv_fd
        # Contexts with no request: as many are made as requests are held at once (the intake bounds those) plus
        # replies waiting for the thread (bounded here). The loop pops, the thread appends: each is atomic.
        self.idle: list[pynng.Context] = []
        self.contexts: list[pynng.Context] = []
        self.outbox: queue.SimpleQueue[tuple[pynng.Context, bytes] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._send_queued, name="replies", daemon=True)
        self.thread.start()

    def receive(self) -> tuple[pynng.Context, bytes] | None:
        """The next request with the context to answer it by, or None when none waits."""
        context = self.idle.pop() if self.idle else self._new_context()
        try:
            message = context.recv()
        except pynng.NNGException:  # Timeout: none waits (or the socket closed)
            self.idle.append(context)
            return None
        return context, message

    def reply(self, context: pynng.Context, body: bytes) -> None:
        """Answer the request `context` holds: queued for the thread, or sent now if too many wait for it."""
        if self.outbox.qsize() < MAX_QUEUED_REPLIES:
            self.outbox.put((context, body))
        else:
            self._send(context, body)

    def _send_queued(self) -> None:
        while (queued := self.outbox.get()) is not None:
            self._send(*queued)

    def _send(self, context: pynng.Context, body: bytes) -> None:
        try:
            context.send(body)
        except pynng.NNGException:  # a client that stopped reading (it will ask again), or the socket closed
            log.warning("a reply of %d bytes dropped: its client took none within %d ms", len(body),
                        self.reply_timeout_ms)
        finally:
            self.idle.append(context)

    def drop(self, context: pynng.Context) -> None:
        """Leave the request `context` holds unanswered (not one of ours): its next receive forgets it."""
        self.idle.append(context)

    def _new_context(self) -> pynng.Context:
        context = self.socket.new_context()
        self.contexts.append(context)
        return context

    def close(self) -> None:
        """Send the replies queued, then close. Clients read their replies at once; should some not, those still
        queued after one reply timeout are dropped, and the reply under way ends within its own."""
        timeout_s = self.reply_timeout_ms / 1000
        self.outbox.put(None)
        self.thread.join(timeout=timeout_s)
        if self.thread.is_alive():
            log.warning("closing the client socket: %d replies dropped, their clients slow to take them",
                        self._drop_queued())
            self.outbox.put(None)
            self.thread.join(timeout=2 * timeout_s)
        # Contexts before their socket: nng refuses to close a context of a closed socket.
        for context in self.contexts:
            context.close()
        self.socket.close()

    def _drop_queued(self) -> int:
        dropped = 0
        while True:
            try:
                dropped += self.outbox.get_nowait() is not None
            except queue.Empty:
                return dropped
