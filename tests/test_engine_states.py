"""Statuses are types: each object's moves are one table, and any other move is refused by the always-on check."""

from typing import get_args

import msgspec
import pytest

from engine.check import InvariantBroken
from engine.records import Order, Payment, Payout, Refund
from engine.states import ORDER_TRANSITIONS, PAYMENT_TRANSITIONS, PAYOUT_TRANSITIONS, REFUND_TRANSITIONS, transition

RECORDS = {
    Order: (ORDER_TRANSITIONS, dict(id="o1", merchant_id="m1", name="Order", amount=1, currency="USD")),
    Payment: (PAYMENT_TRANSITIONS, dict(id="p1", merchant_id="m1", amount=1, currency="USD")),
    Refund: (REFUND_TRANSITIONS, dict(id="r1", merchant_id="m1", payment_id="p1", amount=1)),
    Payout: (PAYOUT_TRANSITIONS, dict(id="po1", merchant_id="m1", amount=1, currency="USD")),
}


@pytest.mark.parametrize("kind", RECORDS, ids=lambda kind: kind.__name__)
def test_every_move_of_the_table_is_taken_and_every_other_is_refused(kind):
    table, fields = RECORDS[kind]
    statuses = get_args(next(field.type for field in msgspec.structs.fields(kind) if field.name == "status"))
    assert set(table) == set(statuses)
    for start in statuses:
        for end in statuses:
            record = kind(**fields, status=start)
            if end in table[start]:
                transition(record, end)
                assert record.status == end
            else:
                with pytest.raises(InvariantBroken):
                    transition(record, end)
                assert record.status == start


def test_a_status_outside_the_type_is_refused_at_decode():
    encoded = msgspec.msgpack.encode(Payment(id="p1", merchant_id="m1", amount=1, currency="USD"))
    wrong = encoded.replace(b"processing", b"canceledxx")
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(wrong, type=Payment)
