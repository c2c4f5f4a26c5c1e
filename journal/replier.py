"""The shard's client socket: an nng Rep0 socket in raw mode, read from the event loop through nng's descriptor.

In raw mode each request arrives with its routing header and the reply carries that header back, so one loop
can hold any number of requests at once without an nng context (and a thread calling back into Python) per
request. Receiving never blocks, and neither does replying (journal/sending.py).
"""

import pynng
from pynng._nng import ffi, lib
from pynng.exceptions import check_err

from journal.sending import Sender


class Replier:
    def __init__(self, address: str, reply_timeout_ms: int, max_replies_in_flight: int) -> None:
        self.socket = pynng.Rep0(opener=lib.nng_rep0_open_raw)
        self.socket.listen(address)
        self.receive_fd = self.socket.recv_fd
        self.sender = Sender(self.socket, reply_timeout_ms, max_replies_in_flight)
        self._received = ffi.new("nng_msg **")

    def receive(self) -> tuple[bytes, bytes] | None:
        """The next request as (header, body), or None when none waits."""
        error = lib.nng_recvmsg(self.socket.socket, self._received, lib.NNG_FLAG_NONBLOCK)
        if error == lib.NNG_EAGAIN:
            return None
        check_err(error)
        message = self._received[0]
        try:
            header = ffi.unpack(ffi.cast("char *", lib.nng_msg_header(message)), lib.nng_msg_header_len(message))
            body = ffi.unpack(ffi.cast("char *", lib.nng_msg_body(message)), lib.nng_msg_len(message))
        finally:
            lib.nng_msg_free(message)
        return header, body

    def reply(self, header: bytes, body: bytes) -> bool:
        """Start sending `body` to the request that came with `header`; False if too many replies are under way."""
        return self.sender.send(body, header)

    def close(self) -> None:
        self.sender.close(finish=True)  # the last replies still leave
        self.socket.close()
