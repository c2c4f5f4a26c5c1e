"""The risk table: what the risk actor publishes and each edge worker checks locally, and the keys it names payers by.

A payment is known to the risk rules by up to four attributes (its card's fingerprint, the payer's IP address, the
customer, the email); each becomes a key "<scope>|<kind>:<value>", where the scope is a merchant id (velocity counts
and that merchant's own block entries) or empty (block entries that hold at every merchant). The table maps the keys
a payment must not use now to a reason and an expiry, so the edge's check is a few dict lookups.

Light on purpose (msgspec and engine records only): the edge imports it without Ray.
"""

import hashlib
from typing import Literal

import msgspec

from engine.records import Payment

# The routing key of the shard that keeps the block list (a merchant id never looks like it).
BLOCKLIST_OWNER = "blocklist"
RiskKind = Literal["card_fingerprint", "ip", "customer", "email"]
TABLE_FILE = "table.msgpack"


def risk_key(kind: str, value: str, merchant_id: str = "") -> str:
    """The key of an attribute at one merchant, or everywhere (merchant_id ""); emails ignore case."""
    return f"{merchant_id}|{kind}:{value.lower() if kind == 'email' else value}"


def risk_attributes(payment: Payment) -> list[tuple[str, str]]:
    """The (kind, value) pairs a payment is known by, those it has."""
    pairs = (("card_fingerprint", payment.card.fingerprint if payment.card else ""), ("ip", payment.customer_ip),
             ("customer", payment.customer_id), ("email", payment.customer_email))
    return [(kind, value) for kind, value in pairs if value]


def blocklist_id(kind: str, value: str, merchant_id: str = "") -> str:
    """The same entry always has the same id, so adding it twice is seen as a duplicate."""
    return "blk_" + hashlib.blake2b(risk_key(kind, value, merchant_id).encode(), digest_size=12).hexdigest()


class Flag(msgspec.Struct, array_like=True, frozen=True):
    reason: str
    expires_at: int = 0  # nanoseconds since the epoch; 0: until it leaves the block list


class RiskTable(msgspec.Struct, array_like=True, kw_only=True):
    version: int
    published_at: int
    # risk key -> why a payment with it is refused, and until when
    flags: dict[str, Flag]
    # merchant tier -> currency -> the largest amount a payment may have (a currency not listed has no limit)
    amount_limits: dict[str, dict[str, int]]

    def refusal(self, merchant_id: str, attributes: list[tuple[str, str]], now: int,
                uncounted: tuple[str, ...] = ()) -> str:
        """Why a payment with these attributes is refused at this merchant now ('' if it is not). Attempt counts
        (flags that expire) on the `uncounted` kinds are ignored; the block list's flags never are."""
        flags = self.flags
        for kind, value in attributes:
            for scope in ("", merchant_id):
                flag = flags.get(risk_key(kind, value, scope))
                if flag is None or (flag.expires_at and (flag.expires_at <= now or kind in uncounted)):
                    continue
                return flag.reason
        return ""

    def tier_limits(self, tier: str) -> dict[str, int]:
        """The largest amount a payment of this tier may have, by currency (a currency not named has no limit)."""
        return self.amount_limits.get(tier, {})

    def payer_scopes(self) -> frozenset[str]:
        """The scopes (merchant ids, "" for everywhere) with a flag on a customer or an email: only a payment there
        needs its order's customer and email to be checked."""
        return frozenset(key.partition("|")[0] for key in self.flags
                         if key.partition("|")[2].startswith(("customer:", "email:")))


table_encoder = msgspec.msgpack.Encoder()
table_decoder = msgspec.msgpack.Decoder(RiskTable)
