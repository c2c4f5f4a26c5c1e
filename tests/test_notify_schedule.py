"""The notifier's schedule (actors/delivery_schedule.py): in order per (destination, object), side by side across
objects, bounded in flight per endpoint and in all, and bounded in size; checked on examples and on random runs."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.delivery_schedule import Job, Schedule
from engine.records import Merchant

MERCHANT = Merchant(id="mer_a", name="A", email="a@example.com", client_id="cli_mer_a")
S = 1_000_000_000


def job(delivery_id: str, target: str = "http://shop.example/hook", key: str = "ord_1", due: int = 0,
        channel: str = "webhook") -> Job:
    return Job(delivery_id=delivery_id, shard=0, channel=channel, target=target, ordering_key=key, attempts=0,
               queued_after_attempts=0, next_attempt_at=due, created_at=0, payload=b"{}", merchant=MERCHANT)


def ids(jobs: list[Job]) -> list[str]:
    return [item.delivery_id for item in jobs]


def finish(schedule: Schedule, taken: list[Job], outcome: str = "delivered", next_attempt_at: int = 0) -> None:
    for item in taken:
        schedule.sent(item)
        schedule.settle(item.key, outcome, next_attempt_at)


def test_one_object_goes_in_order_others_side_by_side():
    schedule = Schedule()
    for item in (job("a1"), job("a2"), job("b1", key="ord_2"), job("a3")):
        assert schedule.add(item)
    taken = schedule.take_due(0)
    assert ids(taken) == ["a1", "b1"]
    assert schedule.take_due(10 * S) == []  # a2 waits while a1 is unsettled
    schedule.sent(taken[0])
    assert schedule.take_due(10 * S) == []  # ...and until its outcome is recorded
    schedule.settle((0, "a1"), "delivered")
    assert ids(schedule.take_due(0)) == ["a2"]


def test_a_retry_holds_its_object_back_until_it_is_delivered_or_dead():
    schedule = Schedule()
    schedule.add(job("a1"))
    schedule.add(job("a2"))
    finish(schedule, schedule.take_due(0), "retry", next_attempt_at=5 * S)
    assert schedule.jobs[0, "a1"].attempts == 1
    assert schedule.take_due(5 * S - 1) == [] and schedule.next_due() == 5 * S
    finish(schedule, schedule.take_due(5 * S), "dead")
    assert ids(schedule.take_due(5 * S)) == ["a2"]
    assert (0, "a1") not in schedule and len(schedule) == 1


def test_an_unrecorded_attempt_goes_again():
    schedule = Schedule()
    schedule.add(job("a1"))
    taken = schedule.take_due(0)
    schedule.sent(taken[0])
    schedule.retry_unrecorded((0, "a1"))
    assert ids(schedule.take_due(0)) == ["a1"]


def test_in_flight_is_bounded_per_endpoint_and_in_all():
    schedule = Schedule(max_in_flight=5, max_in_flight_per_endpoint=2)
    for number in range(4):
        schedule.add(job(f"x{number}", target="http://x.example/hook", key=f"ord_{number}"))
        schedule.add(job(f"y{number}", target="https://y.example:8443/h", key=f"ord_{number}", channel="ipn"))
        schedule.add(job(f"m{number}", target=f"c{number}@example.com", key=f"ord_{number}", channel="email"))
    taken = schedule.take_due(0)
    assert sorted(item.endpoint for item in taken) == ["http://x.example"] * 2 + ["https://y.example:8443"] * 2 + \
        ["smtp"]
    assert schedule.take_due(0) == []
    finish(schedule, taken[:1])
    again = schedule.take_due(0)
    assert len(again) == 1 and again[0].endpoint in (taken[0].endpoint, "smtp")


def test_a_merchants_webhook_is_one_lane_whatever_its_url():
    """Deliveries made for the old URL and for the new one go in the order they were made; the slot an attempt holds is
    its endpoint's at the start, whatever its target becomes."""
    schedule = Schedule(max_in_flight_per_endpoint=1)
    old, new = job("a1", target="http://old.example/hook"), job("a2", target="http://new.example/hook")
    schedule.add(old)
    schedule.add(new)
    [taken] = schedule.take_due(0)
    assert taken is old
    taken.target = "http://new.example/hook"  # read again before its attempt: the merchant's webhook moved
    schedule.sent(taken)
    assert schedule.in_flight == {} and schedule.take_due(0) == []
    schedule.settle(old.key, "delivered")
    assert ids(schedule.take_due(0)) == ["a2"]


def test_an_attempt_taken_but_not_made_waits_and_frees_its_slot():
    schedule = Schedule(max_in_flight_per_endpoint=1)
    schedule.add(job("a1"))
    schedule.add(job("b1", key="ord_2"))
    [taken] = schedule.take_due(0)
    schedule.later(taken.key, 5 * S)
    assert schedule.in_flight == {} and ids(schedule.take_due(0)) == ["b1"]
    assert schedule.next_due() == 5 * S and schedule.jobs[taken.key].attempts == 0


def test_the_schedule_is_bounded():
    schedule = Schedule(max_jobs=2)
    assert schedule.add(job("a1")) and schedule.add(job("a2"))
    assert not schedule.add(job("a3")) and not schedule.add(job("a1"))
    assert schedule.full()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 4), st.integers(1, 6))
def test_random_runs_keep_order_and_bounds(seed, per_endpoint, in_all):
    rng = random.Random(seed)
    schedule = Schedule(max_jobs=40, max_in_flight=in_all, max_in_flight_per_endpoint=per_endpoint)
    queued: dict[tuple[str, str], list[str]] = {}
    started: dict[tuple[str, str], list[str]] = {}
    in_flight: list[Job] = []
    recording: list[Job] = []
    now = 0
    for step in range(300):
        action = rng.random()
        if action < 0.35:
            item = job(f"d{step}", target=f"http://h{rng.randrange(3)}.example/", key=f"o{rng.randrange(4)}",
                       due=now + rng.randrange(3) * S)
            if schedule.add(item):
                queued.setdefault(item.lane, []).append(item.delivery_id)
        elif action < 0.6:
            for item in schedule.take_due(now):
                lane = started.setdefault(item.lane, [])
                if not lane or lane[-1] != item.delivery_id:
                    lane.append(item.delivery_id)
                in_flight.append(item)
        elif action < 0.75 and in_flight:
            item = in_flight.pop(rng.randrange(len(in_flight)))
            schedule.sent(item)
            recording.append(item)
        elif action < 0.9 and recording:
            item = recording.pop(rng.randrange(len(recording)))
            outcome = rng.choice(["delivered", "retry", "dead"])
            schedule.settle(item.key, outcome, now + rng.randrange(3) * S)
        else:
            now += S
        per = {}
        for item in in_flight:
            per[item.endpoint] = per.get(item.endpoint, 0) + 1
            assert sum(other.lane == item.lane for other in in_flight + recording) == 1
        assert all(count <= per_endpoint for count in per.values()) and len(in_flight) <= in_all
        assert len(schedule) <= 40
    for lane, order in started.items():
        assert order == queued[lane][:len(order)]  # every lane started in the order it was queued


def test_the_same_delivery_id_on_two_shards_is_two_deliveries():
    """Ids are made from a shard's own sequence: another shard makes the same ones for its own deliveries."""
    schedule = Schedule()
    mine, theirs = job("whd_1", key="ord_1"), job("whd_1", key="ord_2")
    theirs.shard = 1
    assert schedule.add(mine) and schedule.add(theirs)
    assert (0, "whd_1") in schedule and (1, "whd_1") in schedule
    taken = schedule.take_due(0)
    assert sorted(item.shard for item in taken) == [0, 1]
    for item in taken:
        schedule.sent(item)
    schedule.settle((1, "whd_1"), "delivered")
    assert (0, "whd_1") in schedule and (1, "whd_1") not in schedule
