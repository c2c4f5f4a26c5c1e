"""The wire between the edge and a payment connector: authorizations in memory, one nng message per batch.

No Ray here: the edge imports this, and an edge worker must not carry a Ray runtime.
The card number and CVC live only in these objects, between the request and the provider.
"""

import time

import msgspec
import pynng

from journal.auth import MessageKey

SEND_TIMEOUT_MS = 100


class CardData(msgspec.Struct, array_like=True):
    """A card in clear, on its way to the acquirer: never shown, logged, pickled or stored."""

    number: str
    exp_month: int
    exp_year: int
    cvc: str

    def __repr__(self) -> str:
        return "CardData(<redacted>)"

    def __rich_repr__(self):
        yield "number", "<redacted>"

    def __reduce__(self):
        raise TypeError("card data stays in memory: it is not pickled (nor sent through Ray)")


class Authorization(msgspec.Struct, array_like=True):
    payment_id: str
    merchant_id: str
    amount: int
    currency: str
    capture: bool
    card: CardData


class AuthorizationBatch(msgspec.Struct, array_like=True):
    items: list[Authorization]


batch_encoder = msgspec.msgpack.Encoder()
batch_decoder = msgspec.msgpack.Decoder(AuthorizationBatch)


class ConnectorClient:
    """The edge's side: one nng push socket to a connector; sends never wait.

    `send` answers False at once when no connector is connected or it cannot take more right now, so the caller
    can answer 503 instead of waiting. nng dials in the background and reconnects by itself; a fresh client is
    connected a few milliseconds after it is made (`wait_connected`).
    """

    def __init__(self, address: str, key: MessageKey, send_timeout_ms: int = SEND_TIMEOUT_MS) -> None:
        self.address = address
        self.key = key  # the data folder's: the connector drops a batch without its proof
        self._socket = pynng.Push0(send_timeout=send_timeout_ms)
        self._socket.dial(address, block=False)

    @property
    def connected(self) -> bool:
        return bool(self._socket.pipes)

    def wait_connected(self, timeout_s: float = 1.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.connected:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def send(self, batch: AuthorizationBatch) -> bool:
        """Hand the batch to the connector: True once nng has taken it, False if it could not (nothing was sent)."""
        if not batch.items:
            return True
        # A push socket with no peer would hold the message and wait for one: refuse instead.
        if not self._socket.pipes:
            return False
        try:
            self._socket.send(self.key.seal(batch_encoder.encode(batch)), block=False)
        except pynng.NNGException:  # TryAgain: the connector is not taking more; Closed
            return False
        return True

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> "ConnectorClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
