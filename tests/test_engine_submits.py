"""Exactly-once Submits in the engine: a Submit id seen within the window answers its first results, applies nothing.

Commands are built fresh for every use (the engine takes ownership of what it is given): a re-sent Submit is the
same bytes decoded again, never the same objects.
"""

import msgspec
import pytest

import engine.submits
from engine import Account, Batch, BatchResult, CreateAccounts, CreateTransfers, Engine, Transfer, TransferCode
from engine.batch import applied_commands, applied_outcomes, without_ledger_items
from engine.check import InvariantBroken
from engine.queries import GetMerchant, LookupAccounts
from engine.records import CreateMerchant, Merchant, UpdateMerchant
from engine.submits import SUBMIT_ID_REUSED, SUBMIT_KEPT_NS, SUBMIT_WINDOW_NS, SubmitSpan
from engine.types import NANOSECONDS_PER_SECOND as S
from ledger_helpers import ENGINES

pytestmark = pytest.mark.usefixtures("verify_every_engine")

T0 = 1_700_000_000 * S
batch_encoder = msgspec.msgpack.Encoder()
batch_decoder = msgspec.msgpack.Decoder(Batch)


def submit_id(number: int) -> bytes:
    return b"\x07" * 8 + number.to_bytes(8, "big")


def transfer_to_b(transfer_id: str, amount: int = 5) -> CreateTransfers:
    return CreateTransfers([Transfer(transfer_id, "a", "b", amount, "usd")])


def create_merchant(mid: str) -> CreateMerchant:
    return CreateMerchant(Merchant(id=mid, name=f"Shop {mid}", email=f"{mid}@example.com"))


class Sender:
    """An engine fed batches of Submits; each batch is kept encoded, as the journal keeps it, for replay."""

    def __init__(self, engine: Engine | None = None, now: int = T0) -> None:
        self.engine = engine or Engine()
        self.now = now
        self.journal: list[bytes] = []
        ENGINES.append(self.engine)

    def send(self, *submits: tuple[bytes, list], at: int | None = None) -> BatchResult:
        """One batch of `submits` ((id, commands) each) at `at`, else one second after the last."""
        self.now = self.now + S if at is None else at
        commands = [command for _, each in submits for command in each]
        spans = [SubmitSpan(submit_id, len(each)) for submit_id, each in submits]
        encoded = batch_encoder.encode(Batch(self.engine.sequence + 1, self.now, commands, spans))
        self.journal.append(encoded)
        return self.engine.apply(batch_decoder.decode(encoded))

    def balance_of_b(self) -> int:
        (account,) = self.engine.query(LookupAccounts(["b"])).accounts
        return account.credits_posted


@pytest.fixture
def sender() -> Sender:
    sender = Sender()
    sender.send((submit_id(0), [CreateAccounts([Account("a", "usd"), Account("b", "usd")])]))
    return sender


def test_a_resent_submit_answers_its_first_results_and_applies_nothing(sender):
    first = sender.send((submit_id(1), [transfer_to_b("t1"), create_merchant("m1")]))
    assert first.results[0] == [0] and first.results[1].code == "ok" and first.duplicates == []
    before = sender.engine.state_hash()
    again = sender.send((submit_id(1), [transfer_to_b("t1"), create_merchant("m1")]))
    # Without the id these would answer `exists` twice: a 409 for commands that succeeded.
    assert again.results == first.results
    assert again.duplicates == [0, 1]
    assert again.events == []
    assert sender.engine.state_hash() == before
    assert sender.balance_of_b() == 5


def test_a_resent_submit_answers_what_it_answered_then_not_what_its_record_is_now(sender):
    first = msgspec.msgpack.encode(sender.send((submit_id(1), [create_merchant("m1")])).results)
    sender.send((submit_id(2), [UpdateMerchant(merchant_id="m1", webhook_url="https://example.com/hooks")]))
    again = sender.send((submit_id(1), [create_merchant("m1")]))
    assert msgspec.msgpack.encode(again.results) == first
    assert sender.engine.query(GetMerchant(merchant_id="m1")).record.webhook_url == "https://example.com/hooks"


def test_a_copy_in_the_same_batch_gets_the_first_copys_results(sender):
    """A retry that arrives while the first copy still waits in the shard lands in the same batch, or the next."""
    result = sender.send((submit_id(1), [transfer_to_b("t1", 7)]), (submit_id(1), [transfer_to_b("t1", 7)]),
                         (submit_id(2), [transfer_to_b("t2", 1)]))
    assert result.results == [[0], [0], [0]]
    assert result.duplicates == [1]
    assert sender.balance_of_b() == 8


def test_submits_without_an_id_are_never_taken_for_copies(sender):
    result = sender.send((b"", [transfer_to_b("t1")]), (b"", [transfer_to_b("t1")]))
    assert result.results == [[0], [TransferCode.exists]]
    assert result.duplicates == []


def test_an_id_reused_for_a_different_submit_is_refused_whole(sender):
    sender.send((submit_id(1), [transfer_to_b("t1")]))
    before = sender.engine.state_hash()
    result = sender.send((submit_id(1), [transfer_to_b("t2"), transfer_to_b("t3")]))
    assert [outcome.code for outcome in result.results] == [SUBMIT_ID_REUSED] * 2
    assert sender.engine.state_hash() == before


def test_the_window_forgets_by_engine_time(sender):
    sender.send((submit_id(1), [transfer_to_b("t1")]))
    again = sender.send((submit_id(1), [transfer_to_b("t1")]), at=sender.now + SUBMIT_WINDOW_NS - 1)
    assert again.duplicates == [0]
    late = sender.send((submit_id(1), [transfer_to_b("t1")]), at=sender.now + 2)
    assert late.duplicates == [] and late.results == [[TransferCode.exists]]
    assert sender.balance_of_b() == 5


def test_the_window_keeps_at_most_max_submits_oldest_first(sender, monkeypatch):
    monkeypatch.setattr(engine.submits, "MAX_SUBMITS", 3)
    for number in range(1, 5):
        sender.send((submit_id(number), [transfer_to_b(f"t{number}")]), at=sender.now + SUBMIT_KEPT_NS)
    assert sender.send((submit_id(1), [transfer_to_b("t1")]), at=sender.now + SUBMIT_KEPT_NS).duplicates == []
    assert sender.send((submit_id(4), [transfer_to_b("t4")])).duplicates == [0]
    assert len(sender.engine.submits.records) == 3


def test_the_window_keeps_at_most_its_result_bytes(sender, monkeypatch):
    monkeypatch.setattr(engine.submits, "MAX_SUBMIT_RESULT_BYTES", 3 * engine.submits.CODE_BYTES)
    sender.send((submit_id(1), [transfer_to_b("t1")]))
    sender.send((submit_id(2), [CreateTransfers([Transfer(f"u{n}", "a", "b", 1, "usd") for n in range(3)])]),
                at=sender.now + SUBMIT_KEPT_NS)
    assert [record.submit_id for record in sender.engine.submits.records] == [submit_id(2)]
    assert sender.engine.submits.result_bytes == 3 * engine.submits.CODE_BYTES


def test_a_full_window_forgets_no_record_a_sender_may_still_resend_and_says_it_has_no_room(sender, monkeypatch):
    """Past its bounds the window forgets only records older than SUBMIT_KEPT_NS; until one is, it has no room (the
    shard answers new Submits busy) and every record younger still answers its copies."""
    monkeypatch.setattr(engine.submits, "MAX_SUBMITS", 3)
    window = sender.engine.submits
    for number in range(1, 5):  # the first batch's Submit (id 0) is the oldest of five
        sender.send((submit_id(number), [transfer_to_b(f"t{number}")]))
    assert len(window.records) == 5 and not window.has_room(sender.now)
    assert all(sender.send((submit_id(number), [transfer_to_b(f"t{number}")])).duplicates == [0]
               for number in range(1, 5))
    assert sender.balance_of_b() == 4 * 5
    oldest_goes = window.records[0].created_at + SUBMIT_KEPT_NS
    assert not window.has_room(oldest_goes - 1) and window.has_room(oldest_goes)
    sender.send((submit_id(5), [transfer_to_b("t5")]), at=oldest_goes)  # only the oldest may go, and goes
    assert [record.submit_id for record in window.records] == [submit_id(n) for n in range(1, 6)]
    sender.send((submit_id(6), [transfer_to_b("t6")]), at=oldest_goes + 10 * S)
    assert [record.submit_id for record in window.records] == [submit_id(n) for n in (4, 5, 6)]


def test_the_window_survives_snapshot_and_restore(sender):
    first = sender.send((submit_id(1), [transfer_to_b("t1"), create_merchant("m1")]))
    restored = Sender(Engine.restore(sender.engine.snapshot()), sender.now)
    assert restored.engine.state_hash() == sender.engine.state_hash()
    for each in (sender, restored):
        again = each.send((submit_id(1), [transfer_to_b("t1"), create_merchant("m1")]))
        assert again.results == first.results and again.duplicates == [0, 1]
        each.send((submit_id(2), [transfer_to_b("t2")]), at=each.now + SUBMIT_WINDOW_NS)  # forgets id 1
    assert restored.engine.state_hash() == sender.engine.state_hash()
    assert len(restored.engine.submits.records) == 1


def test_the_window_is_in_the_state_hash(sender):
    other = Sender(Engine.restore(sender.engine.snapshot()), sender.now)
    sender.send((submit_id(1), [transfer_to_b("t1")]))
    other.send((submit_id(2), [transfer_to_b("t1")]))
    assert other.engine.state_hash() != sender.engine.state_hash()


def test_replay_answers_and_ends_as_the_live_engine(sender):
    live = [sender.send((submit_id(1), [transfer_to_b("t1")]), (submit_id(1), [transfer_to_b("t1")])),
            sender.send((submit_id(2), [create_merchant("m1")]), (submit_id(1), [transfer_to_b("t1")])),
            sender.send((submit_id(2), [create_merchant("m1")]), at=sender.now + SUBMIT_WINDOW_NS),
            sender.send((submit_id(3), [transfer_to_b("t3")]))]
    replica = Engine()
    ENGINES.append(replica)
    replayed = [replica.apply(batch_decoder.decode(encoded)) for encoded in sender.journal]
    assert replayed[1:] == live
    assert replica.state_hash() == sender.engine.state_hash()


def test_batches_journaled_before_submit_ids_still_decode_and_apply():
    old = msgspec.msgpack.encode([1, T0, [CreateAccounts([Account("a", "usd")])]])
    batch = batch_decoder.decode(old)
    assert batch.submits == []
    result = Engine().apply(batch)
    assert result.results == [[0]] and result.duplicates == []
    stored = msgspec.msgpack.encode([1, [[0]], []])
    assert msgspec.msgpack.decode(stored, type=BatchResult).duplicates == []


def test_submits_that_do_not_cover_the_commands_change_nothing(sender):
    before = sender.engine.state_hash()
    batch = Batch(sender.engine.sequence + 1, sender.now + S, [transfer_to_b("t1")], [SubmitSpan(submit_id(1), 2)])
    with pytest.raises(InvariantBroken):
        sender.engine.apply(batch)
    assert sender.engine.state_hash() == before


def test_readers_of_committed_batches_see_only_the_commands_applied(sender):
    commands = [transfer_to_b("t1"), transfer_to_b("t1"), transfer_to_b("t2")]
    result = sender.send((submit_id(1), commands[:1]), (submit_id(1), commands[1:2]), (submit_id(2), commands[2:]))
    assert [command for command, _ in applied_commands(commands, result)] == [commands[0], commands[2]]


def test_readers_of_commerce_commands_get_them_decoded_from_the_journaled_batch_and_nothing_else(sender):
    merchant, update = create_merchant("m2"), UpdateMerchant(merchant_id="m2", tier="premium")
    first = [transfer_to_b("t1"), merchant]
    result = sender.send((submit_id(1), first), (submit_id(1), first), (submit_id(2), [update, transfer_to_b("t2")]))
    timestamp, outcomes = applied_outcomes(sender.journal[-1], result)
    assert timestamp == sender.now
    assert [command for command, _ in outcomes] == [merchant, update]  # no transfers, no re-sent copy
    assert [outcome.code for _, outcome in outcomes] == ["ok", "ok"]
    # The same from the batch as read without its ledger items (ReadEntries.with_ledger_items=False)
    stripped = without_ledger_items(sender.journal[-1])
    assert applied_outcomes(stripped, result) == (timestamp, outcomes) and len(stripped) < len(sender.journal[-1])
