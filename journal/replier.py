"""The shard's client socket: an nng Rep0 socket read from the event loop, one nng context per request held.

Every context is made after the socket's receive timeout is set to zero and its send timeout to `reply_timeout_ms`,
and takes both (pynng's public API only: Socket, Context, recv_fd). So a receive never waits: the loop takes
requests while the socket's receive descriptor says some wait, and a context with none answers at once. A reply
leaves at once too, unless the client's connection is still sending the reply before it: our clients send one
request at a time on a connection and wait for its answer, so that lasts only until nng notices the last one left,
and `reply_timeout_ms` bounds it whatever a client does. No nng thread ever calls back into Python.

A send still waits for nng's threads to finish it: tens of microseconds on an idle machine, about half a millisecond
on a loaded one. Sending from a thread of our own instead was measured no faster: that thread waits for the GIL
while the loop applies a batch.
"""

import pynng


class Replier:
    def __init__(self, address: str, reply_timeout_ms: int) -> None:
        self.socket = pynng.Rep0(recv_timeout=0, send_timeout=reply_timeout_ms)
        self.socket.listen(address)
        self.receive_fd = self.socket.recv_fd
        # Contexts with no request: as many are made as requests are held at once (the intake bounds those).
        self.idle: list[pynng.Context] = []
        self.contexts: list[pynng.Context] = []

    def receive(self) -> tuple[pynng.Context, bytes] | None:
        """The next request with the context to answer it by, or None when none waits."""
        context = self.idle.pop() if self.idle else self._new_context()
        try:
            message = context.recv()
        except pynng.NNGException:  # Timeout: none waits (or the socket closed)
            self.idle.append(context)
            return None
        return context, message

    def reply(self, context: pynng.Context, body: bytes) -> bool:
        """Answer the request `context` holds; False if nng did not take the reply in time."""
        try:
            context.send(body)
        except pynng.NNGException:
            return False
        finally:
            self.idle.append(context)
        return True

    def drop(self, context: pynng.Context) -> None:
        """Leave the request `context` holds unanswered (not one of ours): its next receive forgets it."""
        self.idle.append(context)

    def _new_context(self) -> pynng.Context:
        context = self.socket.new_context()
        self.contexts.append(context)
        return context

    def close(self) -> None:
        # Contexts before their socket: nng refuses to close a context of a closed socket.
        for context in self.contexts:
            context.close()
        self.socket.close()
