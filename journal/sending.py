"""Handing messages to nng without waiting for them to leave.

A blocking nng send returns only once nng's own threads have taken the message, and on a busy machine those
threads wait their turn for a core: the event loop would stall for milliseconds. A `Sender` gives each message
an nng aio with no completion callback (so no thread ever calls back into Python) and moves on; an aio is
reused once nng is done with it, and the message of a send that failed is freed then.
"""

from pynng._nng import ffi, lib
from pynng.exceptions import check_err


class Sender:
    def __init__(self, socket, timeout_ms: int, max_in_flight: int) -> None:
        self.socket = socket  # a pynng socket
        self.timeout_ms = timeout_ms
        self.max_in_flight = max_in_flight
        self.idle: list = []
        self.busy: list = []
        self.failed = 0  # sends nng gave up on (timed out, or the peer went away)
        self._pointer = ffi.new("nng_aio **")
        self._message = ffi.new("nng_msg **")

    def send(self, body: bytes, header: bytes = b"") -> bool:
        """Start sending; False, sending nothing, if `max_in_flight` sends are still under way."""
        aio = self._aio()
        if aio is None:
            return False
        check_err(lib.nng_msg_alloc(self._message, 0))
        message = self._message[0]
        error = lib.nng_msg_append(message, body, len(body))
        if not error and header:
            error = lib.nng_msg_header_append(message, header, len(header))
        if error:
            lib.nng_msg_free(message)
            self.idle.append(aio)
            check_err(error)
        lib.nng_aio_set_timeout(aio, self.timeout_ms)
        lib.nng_aio_set_msg(aio, message)
        lib.nng_send_aio(self.socket.socket, aio)
        self.busy.append(aio)
        return True

    def _aio(self):
        if not self.idle:
            self._reap()
        if self.idle:
            return self.idle.pop()
        if len(self.busy) >= self.max_in_flight:
            return None
        check_err(lib.nng_aio_alloc(self._pointer, ffi.NULL, ffi.NULL))
        return self._pointer[0]

    def _reap(self) -> None:
        still = []
        for aio in self.busy:
            if lib.nng_aio_busy(aio):
                still.append(aio)
                continue
            self._settle(aio)
            self.idle.append(aio)
        self.busy = still

    def _settle(self, aio) -> None:
        if lib.nng_aio_result(aio) != 0:  # not sent: the message is still ours
            self.failed += 1
            message = lib.nng_aio_get_msg(aio)
            if message != ffi.NULL:
                lib.nng_msg_free(message)
            lib.nng_aio_set_msg(aio, ffi.NULL)

    def close(self, finish: bool = False) -> None:
        """Free everything; what is under way is stopped, or with `finish` let run to its end (its timeout)."""
        for aio in self.busy:
            (lib.nng_aio_wait if finish else lib.nng_aio_stop)(aio)
            self._settle(aio)
        for aio in self.busy + self.idle:
            lib.nng_aio_free(aio)
        self.busy, self.idle = [], []
