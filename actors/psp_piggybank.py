"""The piggybank card acquirer (actors/simulators/piggybank.py) behind the connector interface.

    authorize   POST /v1/authorizations (Idempotency-Key: the payment id) → 202 {"psp_reference"}; the verdict
                follows in a signed callback; 402 is a decline
    status      GET /v1/authorizations?merchant_id=&payment_id= → the authorization, 404 when unknown
    capture     POST /v1/captures {"psp_reference", "amount"}
    void        POST /v1/voids {"psp_reference"}; refused as already captured, a refund of it all instead
    refund      POST /v1/refunds {"psp_reference", "amount", "refund_id"}

A capture, void or refund names the authorization by the reference the gateway recorded from piggybank's
callback; without one (a void before the callback came, a lost callback) the connector first finds it by
(merchant id, payment id), which is how piggybank keys authorizations. Repeats are harmless there: the same
capture again is ok, voiding twice is ok, a refund_id counts once.
"""

from typing import Annotated

import msgspec

from actors.connector_wire import Authorization
from actors.psp import (
    CANCELLED,
    UNKNOWN,
    CaptureRequest,
    Declined,
    Failed,
    HttpConnector,
    PaymentStatusQuery,
    RefundRequest,
    StatusAnswer,
    StatusQuery,
    Verdict,
    VoidRequest,
)


ALREADY_CAPTURED = "already_captured"  # piggybank's refusal to void what it has captured


class AuthorizationView(msgspec.Struct):
    """What piggybank shows of an authorization (the fields the gateway uses), bounded like a callback."""

    psp_reference: Annotated[str, msgspec.Meta(max_length=64)]
    status: Annotated[str, msgspec.Meta(max_length=32)]
    voided: bool = False
    failure_code: Annotated[str, msgspec.Meta(max_length=64)] = ""
    failure_message: Annotated[str, msgspec.Meta(max_length=500)] = ""
    action_url: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class PiggybankConnector(HttpConnector):
    name = "piggybank"

    async def authorize(self, request: Authorization) -> Verdict:
        card = request.card
        body = {"payment_id": request.payment_id, "merchant_id": request.merchant_id, "amount": request.amount,
                "currency": request.currency, "capture": request.capture,
                "card": {"number": card.number, "exp_month": card.exp_month, "exp_year": card.exp_year,
                         "cvc": card.cvc}}
        # A retry whose first answer was lost is a 202 again under the same reference, and no second callback.
        answer = await self.call("POST", "/v1/authorizations", body, idempotency_key=request.payment_id)
        del body, card
        return self.verdict(answer)

    async def status(self, query: StatusQuery) -> StatusAnswer | Failed:
        if type(query) is not PaymentStatusQuery:
            return await super().status(query)
        answer = await self.call("GET", "/v1/authorizations",
                                 params={"merchant_id": query.merchant_id, "payment_id": query.payment_id})
        view = self.view(answer, AuthorizationView)
        if not isinstance(view, AuthorizationView):
            return view
        return StatusAnswer(status=CANCELLED if view.voided else view.status, psp_reference=view.psp_reference,
                            failure_code=view.failure_code, failure_message=view.failure_message,
                            action_url=view.action_url)

    async def capture(self, request: CaptureRequest) -> Verdict:
        return await self._change(request, "/v1/captures", {"amount": request.amount})

    async def void(self, request: VoidRequest) -> Verdict:
        reference = await self._reference(request)
        if not isinstance(reference, str):
            return reference
        verdict = await self._post("/v1/voids", reference, {})
        if type(verdict) is Declined and verdict.code == ALREADY_CAPTURED:
            # Captured with its authorization (automatic capture) when the gateway had given up on it: all goes back.
            return await self._post("/v1/refunds", reference, {"refund_id": f"{request.payment_id}.reversal"})
        return verdict

    async def refund(self, request: RefundRequest) -> Verdict:
        return await self._change(request, "/v1/refunds", {"amount": request.amount, "refund_id": request.refund_id})

    async def _change(self, request: CaptureRequest | RefundRequest, path: str, fields: dict) -> Verdict:
        reference = await self._reference(request)
        return await self._post(path, reference, fields) if isinstance(reference, str) else reference

    async def _reference(self, request: CaptureRequest | VoidRequest | RefundRequest) -> str | Verdict:
        """The authorization's reference: the one the gateway has, else piggybank's answer for the payment."""
        if request.psp_reference:
            return request.psp_reference
        # the authorization's answer has not reached the gateway: piggybank knows it
        found = await self.status(PaymentStatusQuery(merchant_id=request.merchant_id, payment_id=request.payment_id))
        if isinstance(found, Failed):
            return found
        if found.status == UNKNOWN:
            return Declined("unknown_payment", "piggybank has no authorization for this payment")
        return found.psp_reference

    async def _post(self, path: str, reference: str, fields: dict) -> Verdict:
        return self.verdict(await self.call("POST", path, {"psp_reference": reference, **fields}))
