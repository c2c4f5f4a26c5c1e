"""The risk actor's computation without Ray: sliding windows, the state fed by a real engine's committed batches, the
table it publishes and the edge's check of it, saving and restoring, and the rules file."""

import asyncio
import contextlib
import time

import pytest

from actors.risk import (
    BUCKETS,
    TIER_MULTIPLES,
    RiskRules,
    RiskState,
    Velocity,
    VelocityLimit,
    load_rules,
    state_decoder,
    state_encoder,
    worth_decoding,
)
from actors.risk_table import TABLE_FILE, Flag, RiskTable, blocklist_id, risk_key, table_decoder, table_encoder
from edge import risk as edge_risk
from edge.errors import ApiError
from edge.risk import LocalTable
from engine.currencies import CURRENCY_EXPONENTS
from engine import Batch, Engine
from engine.batch import applied_outcomes
from engine.records import (
    AddToBlocklist,
    BlocklistEntry,
    CardDetails,
    CreateCustomer,
    CreateDeposit,
    CreateMerchant,
    CreatePayment,
    Customer,
    Deposit,
    Idempotent,
    Merchant,
    Payment,
    RemoveFromBlocklist,
)
from engine.types import NANOSECONDS_PER_SECOND as S
from journal.recovery import batch_encoder
from journal.store import write_atomically

T0 = 1_700_000_000 * S
WINDOW_S = 600
BUCKET = WINDOW_S * S // BUCKETS
RULES = RiskRules(velocity={"card_fingerprint": VelocityLimit(3, WINDOW_S), "ip": VelocityLimit(5, WINDOW_S)},
                  amount_limits={"basic": {"usd": 5000}})


# Windows


def window(attempts: int = 3, max_keys: int = 100) -> Velocity:
    return Velocity("card_fingerprint", VelocityLimit(attempts, WINDOW_S), max_keys)


def test_a_key_is_flagged_at_its_limit_until_enough_attempts_leave_the_window():
    velocity = window()
    start = (T0 // BUCKET) * BUCKET  # the start of a bucket
    assert not velocity.hit("k", start) and not velocity.hit("k", start + BUCKET)
    assert velocity.over == {}
    assert velocity.hit("k", start + 2 * BUCKET)  # the third: the next one would be one too many
    # below the limit again once the first attempt's bucket leaves the window
    assert velocity.over == {"k": start + BUCKETS * BUCKET}
    assert velocity.hit("k", start + 2 * BUCKET + 1)  # four now: the first two buckets must leave
    assert velocity.over == {"k": start + (1 + BUCKETS) * BUCKET}
    assert "at most 3 payment attempts in 600 s for this card" == velocity.reason


def test_old_attempts_leave_the_window():
    velocity = window()
    velocity.hit("k", T0)
    velocity.hit("k", T0 + 1)
    later = T0 + WINDOW_S * S + BUCKET  # both are out of the window now
    assert not velocity.hit("k", later) and velocity.over == {}
    assert velocity.counts["k"] == [[later // BUCKET, 1]]


def test_flags_expire_and_idle_keys_are_forgotten():
    velocity = window(attempts=1)
    velocity.hit("old", T0)
    velocity.hit("new", T0 + WINDOW_S * S)
    assert set(velocity.over) == {"old", "new"}
    assert velocity.expire(T0 + WINDOW_S * S + BUCKET) and set(velocity.over) == {"new"}
    assert not velocity.expire(T0 + WINDOW_S * S + BUCKET)
    velocity.forget_idle(T0 + WINDOW_S * S + BUCKET)
    assert list(velocity.counts) == ["new"]


def test_keys_are_bounded_and_the_least_recently_seen_go_first():
    velocity = window(attempts=1, max_keys=2)
    for key in ("a", "b", "a", "c"):
        velocity.hit(key, T0)
    assert list(velocity.counts) == ["a", "c"] and set(velocity.over) == {"a", "c"}


# The state, fed by a real engine


class Shard:
    """An engine and a risk state that reads its committed batches, as the actor does."""

    def __init__(self, rules: RiskRules = RULES) -> None:
        self.engine = Engine()
        self.state = RiskState(rules)
        self.now = T0
        self.payments = 0
        self.run(CreateMerchant(Merchant(id="m1", name="One", email="one@example.com")),
                 CreateMerchant(Merchant(id="m2", name="Two", email="two@example.com")))

    def run(self, *commands):
        self.now += S
        batch = Batch(self.engine.sequence + 1, self.now, list(commands))
        result = self.engine.apply(batch)
        if worth_decoding(result):  # fed as the actor feeds it: the batch as journaled
            self.state.apply(*applied_outcomes(batch_encoder.encode(batch), result))
        return result.results

    def pay(self, merchant_id: str = "m1", fingerprint: str = "fp-a", ip: str = "", key: str = ""):
        self.payments += 1
        payment = Payment(id=f"p{self.payments}", merchant_id=merchant_id, amount=100, currency="usd",
                          card=CardDetails("visa", "4242", 12, 2031, fingerprint), customer_ip=ip)
        command = CreatePayment(payment=payment)
        return self.run(Idempotent(merchant_id=merchant_id, key=key, request_hash="h", command=command) if key
                        else command)[0]

    def table(self):
        return self.state.table(1, self.now)


def test_attempts_are_counted_per_merchant_and_the_table_refuses_past_the_limit():
    shard = Shard()
    for _ in range(3):
        assert shard.table().refusal("m1", [("card_fingerprint", "fp-a")], shard.now) == ""
        shard.pay("m1", ip="192.0.2.1")
    table = shard.table()
    reason = table.refusal("m1", [("card_fingerprint", "fp-a")], shard.now)
    assert reason == "at most 3 payment attempts in 600 s for this card"
    assert table.refusal("m2", [("card_fingerprint", "fp-a")], shard.now) == ""  # another merchant
    assert table.refusal("m1", [("card_fingerprint", "fp-b"), ("ip", "192.0.2.2")], shard.now) == ""
    assert table.refusal("m1", [("ip", "192.0.2.1")], shard.now) == ""  # 3 of the 5 an address may make
    expires_at = table.flags[risk_key("card_fingerprint", "fp-a", "m1")].expires_at
    assert table.refusal("m1", [("card_fingerprint", "fp-a")], expires_at) == ""  # ran out
    assert table.tier_limits("basic")["usd"] == 5000 and table.tier_limits("basic")["vnd"] == 25_000_000
    assert table.tier_limits("premium") == RiskRules().amount_limits["premium"]


def test_replays_and_refused_commands_are_not_attempts():
    shard = Shard()
    shard.pay(key="same")
    replay = shard.pay(key="same")
    assert replay.replayed
    assert shard.pay("m404").code == "merchant_not_found"
    assert shard.state.velocities["card_fingerprint"].counts == {
        risk_key("card_fingerprint", "fp-a", "m1"): [[shard.now // BUCKET, 1]]}


def test_card_deposits_are_attempts_too():
    """A wallet top-up by card tries the card as a payment does: it counts towards the same limits."""
    shard = Shard()
    shard.run(CreateCustomer(Customer(id="cus_1", merchant_id="m1", email="c@example.com")))
    for index in range(3):
        payment = Payment(id=f"pay_d{index}", merchant_id="m1", amount=0, currency="", method="card",
                          card=CardDetails("visa", "4242", 12, 2031, "fp-a"))
        deposit = Deposit(id=f"dep_{index}", merchant_id="m1", customer_id="cus_1", amount=100, currency="usd",
                          method="card", payment_id=payment.id)
        assert shard.run(CreateDeposit(deposit=deposit, payment=CreatePayment(payment=payment)))[0].code == "ok"
    reason = shard.table().refusal("m1", [("card_fingerprint", "fp-a")], shard.now)
    assert reason == "at most 3 payment attempts in 600 s for this card"


def test_block_list_changes_reach_the_table_and_outlast_counts():
    shard = Shard()
    for _ in range(3):
        shard.pay("m1")
    card = BlocklistEntry(id=blocklist_id("card_fingerprint", "fp-a"), kind="card_fingerprint", value="fp-a",
                          reason="stolen")
    customer = BlocklistEntry(id=blocklist_id("customer", "c-1", "m2"), kind="customer", value="c-1",
                              merchant_id="m2")
    shard.state.changed = False
    shard.run(AddToBlocklist(card), AddToBlocklist(customer))
    assert shard.state.changed
    table = shard.table()
    far_future = shard.now + 10**6 * S
    assert table.refusal("m1", [("card_fingerprint", "fp-a")], far_future) == "card on the block list: stolen"
    assert table.refusal("m2", [("card_fingerprint", "fp-a")], far_future) == "card on the block list: stolen"
    assert table.refusal("m2", [("customer", "c-1")], far_future) == "customer on the block list"
    assert table.refusal("m1", [("customer", "c-1")], far_future) == ""  # another merchant's customer
    shard.run(RemoveFromBlocklist(card.id))
    assert table.refusal("m2", [("card_fingerprint", "fp-a")], shard.now) == "card on the block list: stolen"
    assert shard.table().refusal("m2", [("card_fingerprint", "fp-a")], shard.now) == ""


def test_emails_are_matched_whatever_their_case():
    shard = Shard()
    entry = BlocklistEntry(id=blocklist_id("email", "ann@example.com"), kind="email", value="ann@example.com")
    shard.run(AddToBlocklist(entry))
    assert shard.table().refusal("m1", [("email", "Ann@Example.COM")], shard.now) == "email address on the block list"
    assert blocklist_id("email", "ANN@example.com") == entry.id


def test_saved_state_restores_the_same_table(tmp_path):
    shard = Shard()
    for ip in ("192.0.2.1",) * 5 + ("192.0.2.2",):
        shard.pay("m1", fingerprint=f"fp-{ip}", ip=ip)
    shard.run(AddToBlocklist(BlocklistEntry(id="blk_1", kind="ip", value="198.51.100.1")))
    saved = state_decoder.decode(state_encoder.encode(shard.state.saved([shard.engine.sequence], 7, shard.now)))
    assert (saved.cursors, saved.version) == ([shard.engine.sequence], 7)
    restored = RiskState(RULES)
    restored.restore(saved, shard.now)
    assert restored.table(1, shard.now) == shard.table()
    assert restored.velocities["ip"].counts == shard.state.velocities["ip"].counts
    # counts kept in buckets of another size are not misread
    other = RiskState(RiskRules(velocity={"ip": VelocityLimit(5, 2 * WINDOW_S)}))
    other.restore(saved, shard.now)
    assert other.velocities["ip"].counts == {} and other.blocklist == shard.state.blocklist


def test_the_table_file_is_replaced_whole(tmp_path):
    shard = Shard()
    for _ in range(3):
        shard.pay("m1")
    path = tmp_path / TABLE_FILE
    write_atomically(path, table_encoder.encode(shard.table()))
    write_atomically(path, table_encoder.encode(shard.table()))
    assert table_decoder.decode(path.read_bytes()) == shard.table()
    assert [item.name for item in tmp_path.iterdir()] == [TABLE_FILE]
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_edge_worker_keeps_its_last_good_table(tmp_path):
    path = tmp_path / TABLE_FILE
    local = LocalTable(str(path))
    local.reload()
    assert local.table is None  # nothing published: nothing refused
    shard = Shard()
    write_atomically(path, table_encoder.encode(shard.state.table(1, shard.now)))
    local.reload()
    assert local.table.version == 1
    write_atomically(path, b"not a table")
    local.reload()
    assert local.table.version == 1
    write_atomically(path, table_encoder.encode(shard.state.table(2, shard.now)))
    local.reload()
    assert local.table.version == 2


# The rules file


def test_rules_file_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text('{"velocity": {"card_fingerprint": {"attempts": 2, "window_s": 60}}, "max_keys": 10}')
    rules = load_rules(str(path))
    assert rules.velocity == {"card_fingerprint": VelocityLimit(2, 60)} and rules.max_keys == 10
    assert rules.amount_limits["premium"]["usd"] == 25 * rules.amount_limits["basic"]["usd"]
    assert load_rules(None) == RiskRules()
    assert RiskRules().velocity["ip"] == VelocityLimit(20, 600)


@pytest.mark.parametrize("text", ['{"velocity": {"phone": {"attempts": 1, "window_s": 60}}}',
                                  '{"velocity": {"ip": {"attempts": 0, "window_s": 60}}}',
                                  '{"amount_limits": {"basic": {"USD": 1}}}',
                                  '{"amount_limits": {"basic": {"usd\\n": 1}}}',
                                  '{"test_cards": ["4242424242424242\\n"]}', '{"unknown": 1}', "not json"])
def test_a_bad_rules_file_ends_the_command_clearly(tmp_path, text):
    path = tmp_path / "rules.json"
    path.write_text(text)
    with pytest.raises(SystemExit, match="--risk-rules"):
        load_rules(str(path))


def test_only_merchants_with_a_customer_or_email_flag_need_an_order_read():
    flags = {risk_key("card_fingerprint", "fp", "m1"): Flag("card"), risk_key("customer", "cus_1", "m2"): Flag("c"),
             risk_key("ip", "192.0.2.1"): Flag("ip")}
    table = RiskTable(version=1, published_at=0, flags=flags, amount_limits={})
    assert table.payer_scopes() == {"m2"}
    flags[risk_key("email", "ann@example.com")] = Flag("email everywhere")
    assert table.payer_scopes() == {"m2", ""}


# Failing closed, every currency, test cards as configuration


def test_every_accepted_currency_has_a_limit_in_every_tier_scaled_by_its_minor_unit():
    limits = RiskRules().amount_limits
    for tier, multiple in TIER_MULTIPLES.items():
        assert limits[tier].keys() == CURRENCY_EXPONENTS.keys()
        assert limits[tier]["usd"] == 1000 * 100 * multiple
    assert (limits["basic"]["jpy"], limits["basic"]["vnd"], limits["basic"]["gbp"]) == (150_000, 25_000_000, 80_000)


def test_a_rules_file_naming_one_currency_keeps_the_others_limited(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text('{"amount_limits": {"basic": {"usd": 5000}, "gold": {"eur": 7}}}')
    limits = load_rules(str(path)).amount_limits
    assert limits["basic"]["usd"] == 5000
    assert limits["basic"]["krw"] == RiskRules().amount_limits["basic"]["krw"] == 1_400_000
    assert limits["premium"] == RiskRules().amount_limits["premium"]
    assert limits["gold"] == {"eur": 7}


def test_test_cards_are_configuration_matching_the_simulated_acquirers_list(tmp_path):
    from actors.simulators.piggybank import TEST_CARDS

    assert set(RiskRules().test_cards) == TEST_CARDS
    path = tmp_path / "rules.json"
    path.write_text('{"test_cards": []}')
    assert load_rules(str(path)).test_cards == []
    path.write_text('{"test_cards": ["4242 4242"]}')
    with pytest.raises(SystemExit, match="--risk-rules"):
        load_rules(str(path))


def test_with_no_table_a_payment_waits_a_bounded_time_then_is_risk_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(edge_risk, "TABLE_WAIT_S", 0.3)
    local = LocalTable(str(tmp_path / TABLE_FILE))

    async def check():
        started = time.monotonic()
        with pytest.raises(ApiError) as refused:
            await edge_risk._loaded_table(local)
        return refused.value, time.monotonic() - started

    error, waited_s = asyncio.run(check())
    assert (error.status, error.code, error.headers["Retry-After"]) == (503, "risk_unavailable", "2")
    assert 0.3 <= waited_s < 1.0


def test_a_payment_waiting_for_the_table_goes_on_once_it_is_published(tmp_path):
    path = tmp_path / TABLE_FILE
    local = LocalTable(str(path))
    app = {"risk": local}

    async def check():
        watching = edge_risk.watch_table(app)
        await watching.__anext__()
        waiting = asyncio.ensure_future(edge_risk._loaded_table(local))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        shard = Shard()
        write_atomically(path, table_encoder.encode(shard.state.table(7, shard.now)))
        table = await asyncio.wait_for(waiting, 2)
        with contextlib.suppress(StopAsyncIteration):
            await watching.__anext__()
        return table

    assert asyncio.run(check()).version == 7
