"""Result codes of the engine, one table per command, in order of precedence.

The engine checks a command in exactly the order its table lists the codes and
answers the first that applies, so the same input always gets the same code.
A code's number is its position in the table; `ok` is always 0. Names are the
public, stable strings the API returns.
"""

from engine.check import check

ACCOUNT_CODES = (
    "ok",
    "linked_event_failed",
    "linked_event_chain_open",
    "id_must_not_be_empty",
    "id_too_long",
    "reserved_flag",
    "flags_are_mutually_exclusive",
    "currency_must_not_be_empty",
    "code_out_of_range",
    "balances_must_be_zero",
    "timestamp_must_be_zero",
    "exists_with_different_flags",
    "exists_with_different_currency",
    "exists_with_different_code",
    "exists",
    # The command raised (a bug) and was undone whole: nothing of it applied.
    "internal_error",
)

TRANSFER_CODES = (
    "ok",
    "linked_event_failed",
    "linked_event_chain_open",
    # The transfer's own fields, checked before any state is read.
    "id_must_not_be_empty",
    "id_too_long",
    "reserved_flag",
    "flags_are_mutually_exclusive",
    "debit_account_id_must_not_be_empty",
    "credit_account_id_must_not_be_empty",
    "accounts_must_be_different",
    "pending_id_must_be_empty",
    "pending_id_must_not_be_empty",
    "pending_id_must_be_different",
    "timeout_reserved_for_pending_transfer",
    "timeout_must_not_be_negative",
    "closing_transfer_must_be_pending",
    "amount_must_not_be_negative",
    "amount_must_not_be_zero",
    "amount_exceeds_maximum",
    "currency_must_not_be_empty",
    "code_out_of_range",
    "timestamp_must_be_zero",
    # An id is used at most once, ever.
    "exists_with_different_flags",
    "exists_with_different_pending_id",
    "exists_with_different_timeout",
    "exists_with_different_debit_account_id",
    "exists_with_different_credit_account_id",
    "exists_with_different_amount",
    "exists_with_different_currency",
    "exists_with_different_code",
    "exists",
    "id_already_failed",
    # State: accounts, the pending transfer, limits.
    "debit_account_not_found",
    "credit_account_not_found",
    "accounts_must_have_the_same_currency",
    "transfer_must_have_the_same_currency_as_accounts",
    "pending_transfer_not_found",
    "pending_transfer_not_pending",
    "pending_transfer_has_different_debit_account_id",
    "pending_transfer_has_different_credit_account_id",
    "pending_transfer_has_different_currency",
    "exceeds_pending_transfer_amount",
    "pending_transfer_has_different_amount",
    "pending_transfer_already_posted",
    "pending_transfer_already_voided",
    "pending_transfer_expired",
    "debit_account_already_closed",
    "credit_account_already_closed",
    "overflows_debits_pending",
    "overflows_credits_pending",
    "overflows_debits_posted",
    "overflows_credits_posted",
    "overflows_debits",
    "overflows_credits",
    "overflows_timeout",
    "exceeds_credits",
    "exceeds_debits",
    # The command raised (a bug) and was undone whole: nothing of it applied.
    "internal_error",
)

# Failures that depend on the ledger's state rather than on the transfer's own
# fields: the id is spent, so a retry answers `id_already_failed` instead of
# succeeding later with a different outcome (for a day of engine time, and among
# the million ids spent last: engine/ledger.py FAILED_ID_RETENTION_NS).
TRANSIENT_TRANSFER_CODES = frozenset(
    {
        "debit_account_not_found",
        "credit_account_not_found",
        "pending_transfer_not_found",
        "exceeds_credits",
        "exceeds_debits",
        "debit_account_already_closed",
        "credit_account_already_closed",
        "overflows_debits_pending",
        "overflows_credits_pending",
        "overflows_debits_posted",
        "overflows_credits_posted",
        "overflows_debits",
        "overflows_credits",
        "overflows_timeout",
        # The pending transfer's amount is state too: in a chain, a balancing hold made just before may be
        # larger on a retry, so a post or void that did not fit must not get a second chance under its id.
        "exceeds_pending_transfer_amount",
        "pending_transfer_has_different_amount",
    }
)


class _Codes:
    """Attribute access to a code table: `TransferCode.exceeds_credits == 56`."""

    def __init__(self, names: tuple[str, ...]) -> None:
        check(len(set(names)) == len(names), "duplicate result code")
        check(names[0] == "ok", "code 0 is ok")
        self.names = names
        for number, name in enumerate(names):
            setattr(self, name, number)

    def name(self, number: int) -> str:
        return self.names[number]


AccountCode = _Codes(ACCOUNT_CODES)
TransferCode = _Codes(TRANSFER_CODES)
TRANSIENT_TRANSFER_NUMBERS = frozenset(TRANSFER_CODES.index(name) for name in TRANSIENT_TRANSFER_CODES)


def transfer_outcome(code: int) -> str:
    """A ledger code as a commerce outcome: a refused debit limit is a lack of funds."""
    return {0: "ok", TransferCode.exceeds_credits: "insufficient_funds"}.get(code) or TransferCode.name(code)
