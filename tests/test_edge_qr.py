"""edge.qr_api: the references QR codes carry, and what a transfer quoting one (or the id itself) pays."""

import pytest

from edge.qr_api import object_of, payload_for
from engine.emvco import parse_payload
from engine.records import Merchant, Order, Payment

HEX = "0123456789abcdef01234567"  # 24 hex, as the gateway's ids have


@pytest.mark.parametrize("kind, prefix, mark", [("order", "ord_", "O"), ("payment", "pay_", "P"),
                                                ("merchant", "mer_", "M"), ("sub_account", "sub_", "S")])
def test_the_compact_reference_and_the_id_itself_name_the_same_object(kind, prefix, mark):
    assert object_of(mark + HEX) == object_of(prefix + HEX) == (kind, prefix + HEX)


@pytest.mark.parametrize("reference", [
    "", "O", "ord_", "ord", "o" + HEX, "O" + HEX.upper(), "ord_" + HEX.upper(), "O" + HEX + "8", "ord_" + HEX + "8",
    "X" + HEX, "tok_" + HEX, "ord_O" + HEX[1:], "ord-" + HEX, " ord_" + HEX, "bk_" + HEX,
])
def test_a_reference_that_names_nothing_of_the_gateway_is_none(reference):
    assert object_of(reference) is None


def test_a_dynamic_code_quotes_its_order_compactly_and_both_forms_pay_it():
    merchant = Merchant(id="mer_" + HEX, name="Shop", email="")
    order = Order(id="ord_" + HEX, merchant_id=merchant.id, name="", amount=120000, currency="vnd")
    quoted = parse_payload(payload_for(merchant, order))["62"]
    assert quoted["01"] == quoted["08"] == "O" + HEX  # within tag 62's 25 characters, where the id's 28 are not
    assert object_of(quoted["01"]) == object_of(order.id) == ("order", order.id)


def test_a_payment_without_an_order_gets_a_dynamic_code_quoting_the_payment():
    merchant = Merchant(id="mer_" + HEX, name="Shop", email="")
    payment = Payment(id="pay_" + HEX, merchant_id=merchant.id, amount=2550, currency="usd", method="qr")
    tags = parse_payload(payload_for(merchant, payment))
    assert (tags["01"], tags["53"], tags["54"], tags["62"]["01"]) == ("12", "840", "25.50", "P" + HEX)
    assert object_of(tags["62"]["01"]) == object_of(payment.id) == ("payment", payment.id)
