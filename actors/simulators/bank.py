"""bank: a simulated bank for QR / bank-transfer payments and merchant pay-outs, a real HTTP program the gateway
reaches over loopback.

`POST /v1/transfers` plays a customer who pays by bank transfer quoting a reference (the order id, in full or in
the compact form its QR code prints): the bank answers 202 and then tells the gateway in a signed `transfer_received`
callback; a transfer the gateway does not take (it quotes nothing of the gateway's, or in the wrong currency) is
returned to the payer, as `GET /v1/transfers/{bank_reference}` then shows.
`POST /v1/refunds` is the gateway giving a credited transfer's money (or part of it) back to its payer: 202, once per
refund_id, never more than the transfer brought; the transfer then shows `amount_refunded`, and `refunded` once all
of it went back. `GET /v1/refunds/{refund_id}` shows one.
`POST /v1/payouts` is the gateway sending a merchant's money out: 202, then a signed `payout` callback, paid —
except an amount whose last two digits are 13 (13, 1013, 25013, ...), which fails with `account_closed`.

Callbacks go to --callback-url, signed with the secret in --secret-file (see actors.simulators.callbacks). Everything is
bounded: request bodies, records (oldest evicted), queued callbacks and their retries; state is in memory only.

    python -m actors.simulators.bank --host 127.0.0.1 --port P --callback-url URL --secret-file PATH
"""

import dataclasses
import logging
import secrets
import sys
import time

import orjson
from aiohttp import web

from actors.simulators import simhttp
from actors.simulators.callbacks import Outbox
from actors.simulators.simhttp import error

log = logging.getLogger("paygate.simulators.bank")

FAILING_CENTS = 13
ACCOUNT_CLOSED = ("account_closed", "The destination account is closed.")
# What the gateway answers for a transfer it took; any other answer (no order quoted, the wrong currency) leaves
# the money with the bank, which returns it to the payer.
TAKEN = ("ok", "duplicate", "exists")


def bank_reference() -> str:
    return "bk_" + secrets.token_hex(12)


@dataclasses.dataclass(slots=True)
class Transfer:
    bank_reference: str
    reference: str
    amount: int
    currency: str
    received_at: float = dataclasses.field(default_factory=time.time)
    status: str = "received"  # then credited (the gateway took it) or returned (to the payer); refunded (all of it
    # given back by the gateway)
    return_reason: str = ""
    amount_refunded: int = 0

    def view(self) -> dict:
        return {"kind": "transfer_received", "reference": self.reference, "amount": self.amount,
                "currency": self.currency, "bank_reference": self.bank_reference}

    def settle(self, answer: bytes) -> None:
        """The gateway's answer to the callback decides where the money goes."""
        try:
            outcome = orjson.loads(answer).get("outcome", "")
        except (ValueError, AttributeError):
            outcome = "unreadable answer"
        if outcome in TAKEN:
            # a refund may have come first (the gateway took the money before this answer reached the bank)
            self.status = "refunded" if self.amount_refunded == self.amount else "credited"
        else:
            self.status, self.return_reason = "returned", outcome
            log.info("transfer %s returned to the payer: %s", self.bank_reference, outcome)


@dataclasses.dataclass(slots=True)
class Payout:
    payout_id: str
    merchant_id: str
    amount: int
    currency: str
    bank_reference: str
    paid: bool
    failure_code: str = ""
    failure_message: str = ""

    def view(self) -> dict:
        view = {"kind": "payout", "payout_id": self.payout_id, "merchant_id": self.merchant_id, "paid": self.paid,
                "amount": self.amount, "currency": self.currency, "bank_reference": self.bank_reference}
        if not self.paid:
            view["failure_code"], view["failure_message"] = self.failure_code, self.failure_message
        return view


class Bank:
    def __init__(self, outbox: Outbox, max_records: int) -> None:
        self.outbox = outbox
        self.transfers = simhttp.BoundedStore(max_records)
        self.payouts = simhttp.BoundedStore(max_records)
        self.refunds = simhttp.BoundedStore(max_records)

    def routes(self) -> list:
        return [
            web.get("/healthz", self.healthz),
            web.post("/v1/transfers", self.transfer),
            web.get("/v1/transfers/{bank_reference}", self.transfer_status),
            web.post("/v1/payouts", self.payout),
            web.get("/v1/payouts/{payout_id}", self.payout_status),
            web.post("/v1/refunds", self.refund),
            web.get("/v1/refunds/{refund_id}", self.refund_status),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        return simhttp.json_response({"status": "ok", "service": "bank", "transfers": len(self.transfers),
                                      "payouts": len(self.payouts), "callbacks": self.outbox.stats()})

    async def transfer(self, request: web.Request) -> web.Response:
        """A customer's incoming transfer quoting `reference`; every call is a new transfer."""
        body = await simhttp.json_body(request)
        record = Transfer(bank_reference=bank_reference(), reference=simhttp.text_id(body, "reference"),
                          amount=simhttp.amount(body), currency=simhttp.currency(body))
        self.outbox.send(record.view(), on_answer=record.settle)  # OutboxFull (503) before anything is stored
        self.transfers.put(record.bank_reference, record)
        log.info("transfer %s received: %d %s quoting %s", record.bank_reference, record.amount, record.currency,
                 record.reference)
        return simhttp.json_response({"bank_reference": record.bank_reference, "status": "received"}, status=202)

    async def transfer_status(self, request: web.Request) -> web.Response:
        record = self.transfers.get(request.match_info["bank_reference"])
        if record is None:
            return error(404, "unknown_reference", "no such bank_reference")
        return simhttp.json_response({**record.view(), "status": record.status, "return_reason": record.return_reason,
                                      "amount_refunded": record.amount_refunded})

    async def refund(self, request: web.Request) -> web.Response:
        """Gives `amount` of a credited transfer back to its payer; the same refund_id again answers the same."""
        body = await simhttp.json_body(request)
        refund = {"refund_id": simhttp.text_id(body, "refund_id"),
                  "bank_reference": simhttp.text_id(body, "bank_reference"), "amount": simhttp.amount(body),
                  "currency": simhttp.currency(body)}
        existing = self.refunds.get(refund["refund_id"])
        if existing is not None:
            if existing != refund:
                return error(409, "refund_id_reused", "refund_id was already used with other details")
            return simhttp.json_response({**refund, "status": "sent"}, status=202)
        transfer = self.transfers.get(refund["bank_reference"])
        if transfer is None or transfer.status == "returned":
            return error(404, "unknown_reference", "no transfer the gateway took has this bank_reference")
        if refund["currency"] != transfer.currency:
            return error(400, "currency_mismatch", "the transfer came in another currency", "currency")
        if transfer.amount_refunded + refund["amount"] > transfer.amount:
            return error(409, "amount_too_large", "more than the transfer brought", "amount")
        transfer.amount_refunded += refund["amount"]
        if transfer.amount_refunded == transfer.amount and transfer.status == "credited":
            transfer.status = "refunded"
        self.refunds.put(refund["refund_id"], refund)
        log.info("refund %s: %d %s back to the payer of %s", refund["refund_id"], refund["amount"],
                 refund["currency"], refund["bank_reference"])
        return simhttp.json_response({**refund, "status": "sent"}, status=202)

    async def refund_status(self, request: web.Request) -> web.Response:
        refund = self.refunds.get(request.match_info["refund_id"])
        if refund is None:
            return error(404, "unknown_refund", "no such refund_id")
        return simhttp.json_response({**refund, "status": "sent"})

    async def payout(self, request: web.Request) -> web.Response:
        """Pays `amount` out to the merchant; the same payout_id again answers the same and sends nothing new."""
        body = await simhttp.json_body(request)
        payout_id = simhttp.text_id(body, "payout_id")
        merchant_id = simhttp.text_id(body, "merchant_id")
        amount, currency = simhttp.amount(body), simhttp.currency(body)
        existing = self.payouts.get(payout_id)
        if existing is not None:
            if (existing.merchant_id, existing.amount, existing.currency) != (merchant_id, amount, currency):
                return error(409, "payout_id_reused", "payout_id was already used with other details")
            return simhttp.json_response({"bank_reference": existing.bank_reference, "status": "pending"}, status=202)
        record = Payout(payout_id=payout_id, merchant_id=merchant_id, amount=amount, currency=currency,
                        bank_reference=bank_reference(), paid=amount % 100 != FAILING_CENTS)
        if not record.paid:
            record.failure_code, record.failure_message = ACCOUNT_CLOSED
        self.outbox.send(record.view())
        self.payouts.put(payout_id, record)
        log.info("payout %s for %s: %d %s -> %s", payout_id, merchant_id, amount, currency,
                 "paid" if record.paid else record.failure_code)
        return simhttp.json_response({"bank_reference": record.bank_reference, "status": "pending"}, status=202)

    async def payout_status(self, request: web.Request) -> web.Response:
        record = self.payouts.get(request.match_info["payout_id"])
        if record is None:
            return error(404, "unknown_payout", "no such payout_id")
        return simhttp.json_response(record.view())


def build(options) -> web.Application:
    outbox = simhttp.outbox_from(options)
    app = simhttp.application(options, outbox)
    app.add_routes(Bank(outbox, options.max_records).routes())
    return app


def main(argv: list[str] | None = None) -> None:
    parser = simhttp.parser("python -m actors.simulators.bank", "A simulated bank: transfers in, pay-outs (see the docstring).")
    options = parser.parse_args(argv)
    simhttp.run(build(options), options, "bank")


if __name__ == "__main__":
    main(sys.argv[1:])
