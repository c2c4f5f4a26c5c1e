"""The shard's client socket: an nng Rep0 socket in raw mode, read from the event loop through nng's descriptor.

In raw mode each request arrives with its routing header and the reply carries that header back, so one loop
can hold any number of requests at once without an nng context (and an nng aio, and a thread hand-off) per
request. Receiving never blocks; a reply is handed to nng at once, bounded by the socket's send timeout.
"""

import pynng
from pynng._nng import ffi, lib
from pynng.exceptions import check_err


class Replier:
    def __init__(self, address: str, send_timeout_ms: int) -> None:
        self.socket = pynng.Rep0(opener=lib.nng_rep0_open_raw, send_timeout=send_timeout_ms)
        self.socket.listen(address)
        self.receive_fd = self.socket.recv_fd
        self._received = ffi.new("nng_msg **")
        self._reply = ffi.new("nng_msg **")

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
        """Send `body` to the request that came with `header`; False if nng did not take it in time."""
        check_err(lib.nng_msg_alloc(self._reply, 0))
        message = self._reply[0]
        error = lib.nng_msg_append(message, body, len(body)) or lib.nng_msg_header_append(message, header, len(header))
        if not error:
            error = lib.nng_sendmsg(self.socket.socket, message, 0)
        if error:  # not taken: the message is still ours to free
            lib.nng_msg_free(message)
            return False
        return True

    def close(self) -> None:
        self.socket.close()
