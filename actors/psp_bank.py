"""The simulated bank (actors/simulators/bank.py) behind the connector interface: payouts and their status, refunds
of the transfers it credited; no card operations.

    payout   POST /v1/payouts {"payout_id", "merchant_id", "amount", "currency"} → 202 {"bank_reference"}; the
             result follows in a signed callback; the same payout_id again is answered again, paid once
    status   GET /v1/payouts/{payout_id} → {"paid", "failure_code", "bank_reference"}, 404 when unknown
    refund   POST /v1/refunds {"refund_id", "bank_reference", "amount", "currency"} → 202; a credited transfer's money
             back to its payer, once per refund_id
"""

import urllib.parse
from typing import Annotated

import msgspec

from actors.psp import (
    FAILED,
    PAID,
    Failed,
    HttpConnector,
    PayoutRequest,
    PayoutStatusQuery,
    RefundRequest,
    StatusAnswer,
    StatusQuery,
    Verdict,
)


class PayoutReply(msgspec.Struct):
    psp_reference: Annotated[str, msgspec.Meta(max_length=64)] = msgspec.field(default="", name="bank_reference")


class PayoutView(msgspec.Struct):
    paid: bool
    bank_reference: Annotated[str, msgspec.Meta(max_length=64)] = ""
    failure_code: Annotated[str, msgspec.Meta(max_length=64)] = ""
    failure_message: Annotated[str, msgspec.Meta(max_length=500)] = ""


class BankConnector(HttpConnector):
    name = "bank"

    async def payout(self, request: PayoutRequest) -> Verdict:
        body = {"payout_id": request.payout_id, "merchant_id": request.merchant_id, "amount": request.amount,
                "currency": request.currency}
        return self.verdict(await self.call("POST", "/v1/payouts", body, idempotency_key=request.payout_id),
                            PayoutReply)

    async def refund(self, request: RefundRequest) -> Verdict:
        """The payment's money back to the payer of the transfer that brought it (its psp_reference)."""
        body = {"refund_id": request.refund_id, "bank_reference": request.psp_reference, "amount": request.amount,
                "currency": request.currency}
        return self.verdict(await self.call("POST", "/v1/refunds", body, idempotency_key=request.refund_id))

    async def status(self, query: StatusQuery) -> StatusAnswer | Failed:
        if type(query) is not PayoutStatusQuery:
            return await super().status(query)
        answer = await self.call("GET", f"/v1/payouts/{urllib.parse.quote(query.payout_id, safe='')}")
        view = self.view(answer, PayoutView)
        if not isinstance(view, PayoutView):
            return view
        return StatusAnswer(status=PAID if view.paid else FAILED, psp_reference=view.bank_reference,
                            failure_code=view.failure_code, failure_message=view.failure_message)
