"""edge.limits: token buckets per tier, the sliding window, the client's address behind proxies, IP allowlists."""

import stat

import pytest

from edge.limits import (
    LOGIN_FREE_FAILURES,
    LOGIN_MAX_DELAY_S,
    TIERS,
    LoginLockouts,
    SharedTokenBuckets,
    SlidingWindow,
    client_ip,
    ip_allowed,
    lockout_delay_s,
)

T0 = 1_700_000_000.0


# --- token buckets -------------------------------------------------------------------------------------------------

@pytest.fixture
def buckets(tmp_path):
    shared = SharedTokenBuckets(tmp_path / "buckets")
    yield shared
    shared.close()


def take_until_refused(buckets: SharedTokenBuckets, key: str, tier: str, now: float) -> tuple[int, float]:
    """How many requests at `now` were admitted, and the wait given to the first refused one."""
    admitted = 0
    while (wait := buckets.take(key, tier, now)) == 0.0:
        admitted += 1
    return admitted, wait


@pytest.mark.parametrize("tier", TIERS)
def test_burst_then_refill_at_the_tier_rate(buckets, tier):
    per_minute, burst = TIERS[tier]
    admitted, wait = take_until_refused(buckets, "mer_a", tier, T0)
    assert admitted == burst
    assert wait == pytest.approx(60 / per_minute)

    assert buckets.take("mer_a", tier, T0 + wait) == 0.0
    assert buckets.take("mer_a", tier, T0 + wait) > 0
    assert take_until_refused(buckets, "mer_a", tier, T0 + wait + 30)[0] == pytest.approx(per_minute / 2, abs=1)


def test_bucket_refills_only_up_to_the_burst(buckets):
    take_until_refused(buckets, "mer_a", "basic", T0)
    assert take_until_refused(buckets, "mer_a", "basic", T0 + 86_400)[0] == 100


def test_retry_after_counts_the_missing_tokens(buckets):
    take_until_refused(buckets, "mer_a", "basic", T0)
    assert buckets.take("mer_a", "basic", T0 + 0.25) == pytest.approx(0.75)
    assert buckets.take("mer_a", "basic", T0 + 0.25, cost=5) == pytest.approx(4.75)
    assert buckets.take("mer_a", "basic", T0 + 5) == 0.0


def test_unknown_tier_is_basic(buckets):
    assert take_until_refused(buckets, "mer_a", "platinum", T0) == take_until_refused(buckets, "mer_b", "basic", T0)


def test_keys_have_separate_buckets(buckets):
    take_until_refused(buckets, "mer_a", "basic", T0)
    assert buckets.take("mer_b", "basic", T0) == 0.0


def test_cost_larger_than_the_burst_is_a_programming_error(buckets):
    with pytest.raises(ValueError):
        buckets.take("mer_a", "basic", T0, cost=101)


def test_clock_stepping_back_neither_refills_nor_blocks(buckets):
    take_until_refused(buckets, "mer_a", "basic", T0)
    assert buckets.take("mer_a", "basic", T0 - 10) == pytest.approx(1.0)  # the tokens kept, no refill for the step
    assert buckets.take("mer_a", "basic", T0 - 9) == 0.0  # counting from the new time, not waiting for T0


DAY_S = 86_400.0


def test_a_bucket_file_from_before_a_reboot_never_throttles_for_days(tmp_path):
    """State written at a later time than the clock now says (a clock set back by days, or a file kept from a
    monotonic clock that restarted at zero) costs at most the normal wait for the tokens missing."""
    before = SharedTokenBuckets(tmp_path / "buckets")
    take_until_refused(before, "mer_a", "basic", T0 + 3 * DAY_S)
    before.close()
    after = SharedTokenBuckets(tmp_path / "buckets")
    try:
        wait = after.take("mer_a", "basic", T0)
        assert wait == pytest.approx(1.0)
        assert after.take("mer_a", "basic", T0 + wait) == 0.0
    finally:
        after.close()


def test_a_clock_jumping_forward_refills_only_up_to_the_burst(tmp_path):
    before = SharedTokenBuckets(tmp_path / "buckets")
    take_until_refused(before, "mer_a", "basic", 5_000.0)  # a monotonic time, as files once held
    before.close()
    after = SharedTokenBuckets(tmp_path / "buckets")
    try:
        assert take_until_refused(after, "mer_a", "basic", T0)[0] == 100
    finally:
        after.close()


def test_custom_tiers_need_a_basic_tier(tmp_path):
    with pytest.raises(ValueError):
        SharedTokenBuckets(tmp_path / "buckets", tiers={"gold": (10, 10)})


# --- sliding window ------------------------------------------------------------------------------------------------

def test_eleventh_hit_in_ten_minutes_waits_for_the_first_to_expire():
    window = SlidingWindow(limit=10, window_s=600)
    for second in range(10):
        assert window.hit("login:alice", T0 + 30 * second) == 0.0
    assert window.hit("login:alice", T0 + 300) == pytest.approx(300)
    assert window.hit("login:alice", T0 + 599) == pytest.approx(1)
    assert window.hit("login:alice", T0 + 600) == 0.0
    assert window.hit("login:alice", T0 + 601) == pytest.approx(29)


def test_refused_hits_are_not_counted():
    window = SlidingWindow(limit=2, window_s=60)
    window.hit("k", T0)
    window.hit("k", T0 + 1)
    for second in range(2, 60):
        assert window.hit("k", T0 + second) > 0
    assert window.hit("k", T0 + 60) == 0.0


def test_waiting_exactly_the_advised_time_is_enough():
    window = SlidingWindow(limit=1, window_s=0.3)
    window.hit("k", T0 + 0.1)
    wait = window.hit("k", T0 + 0.2)
    assert window.hit("k", T0 + 0.2 + wait) == 0.0


def test_window_keys_are_separate_and_bounded():
    window = SlidingWindow(limit=1, window_s=60, max_keys=2)
    for key in ("a", "b", "c"):
        assert window.hit(key, T0) == 0.0
    assert len(window._hits) == 2
    assert window.hit("a", T0) == 0.0  # dropped as least recently used
    assert window.hit("c", T0) > 0


@pytest.mark.parametrize("limit, window_s", [(0, 60), (1, 0), (1, -1)])
def test_window_needs_a_limit_and_a_length(limit, window_s):
    with pytest.raises(ValueError):
        SlidingWindow(limit, window_s)


# --- client_ip -----------------------------------------------------------------------------------------------------

PROXIES = ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]


@pytest.mark.parametrize("peer, forwarded_for, trusted, expected", [
    ("203.0.113.9", None, [], "203.0.113.9"),
    ("203.0.113.9", "198.51.100.1", [], "203.0.113.9"),
    ("203.0.113.9", "198.51.100.1", PROXIES, "203.0.113.9"),  # untrusted peer: its X-Forwarded-For is its own claim
    ("10.1.2.3", "198.51.100.1", PROXIES, "198.51.100.1"),
    ("10.1.2.3", "1.1.1.1, 198.51.100.1", PROXIES, "198.51.100.1"),  # the left entry was supplied by the client
    ("10.1.2.3", "1.1.1.1, 198.51.100.1, 192.168.1.7", PROXIES, "198.51.100.1"),  # two proxies deep
    ("10.1.2.3", "198.51.100.1, 10.9.9.9, 192.168.1.7", PROXIES, "198.51.100.1"),
    ("10.1.2.3", "198.51.100.1, garbage, , 10.9.9.9", PROXIES, "198.51.100.1"),
    ("10.1.2.3", "198.51.100.1:4711", PROXIES, "198.51.100.1"),
    ("10.1.2.3", "[2001:db8::1]:4711", PROXIES, "2001:db8::1"),
    ("10.1.2.3", "10.2.2.2, 10.3.3.3", PROXIES, "10.2.2.2"),  # all trusted: the furthest one
    ("10.1.2.3", None, PROXIES, "10.1.2.3"),
    ("10.1.2.3", "", PROXIES, "10.1.2.3"),
    ("10.1.2.3", "unknown, ,;", PROXIES, "10.1.2.3"),
    ("fd00::5", "2001:db8::1", PROXIES, "2001:db8::1"),
    ("fd00::5", "2001:DB8:0:0:0:0:0:1", PROXIES, "2001:db8::1"),
    ("2001:db8::9", "198.51.100.1", PROXIES, "2001:db8::9"),
    ("::ffff:10.1.2.3", "198.51.100.1", PROXIES, "198.51.100.1"),  # an IPv4 proxy seen by a dual-stack socket
    ("::ffff:203.0.113.9", None, [], "203.0.113.9"),
    ("10.1.2.3", "198.51.100.1", ["not a network", "10.0.0.0/8"], "198.51.100.1"),
    ("10.1.2.3", "198.51.100.1", ["not a network"], "10.1.2.3"),
    ("10.1.2.3", "x" * 100_000 + ", 198.51.100.1", PROXIES, "198.51.100.1"),
    ("10.1.2.3", "١٩٨.٥١.١٠٠.١, 🙂", PROXIES, "10.1.2.3"),
    (None, "198.51.100.1", PROXIES, ""),
    ("", "198.51.100.1", PROXIES, ""),
])
def test_client_ip(peer, forwarded_for, trusted, expected):
    assert client_ip(peer, forwarded_for, trusted) == expected


# --- ip_allowed ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ip, allowlist, expected", [
    ("203.0.113.9", [], True),
    ("garbage", [], True),
    ("203.0.113.9", ["203.0.113.9"], True),
    ("203.0.113.10", ["203.0.113.9"], False),
    ("203.0.113.200", ["203.0.113.0/24"], True),
    ("203.0.114.1", ["203.0.113.0/24"], False),
    ("203.0.113.200", ["203.0.113.7/24"], True),  # host bits set: read as the network
    ("203.0.113.9", ["198.51.100.0/24", "203.0.113.9"], True),
    ("::ffff:203.0.113.9", ["203.0.113.0/24"], True),
    ("2001:db8::42", ["2001:db8::/32"], True),
    ("2001:db9::42", ["2001:db8::/32"], False),
    ("2001:db8::42", ["203.0.113.0/24"], False),
    ("203.0.113.9", ["not an ip", "203.0.113.9/40"], False),
    ("", ["203.0.113.0/24"], False),
    ("203.0.113.9 ", ["203.0.113.0/24"], False),
    ("203.0.113.9/32", ["203.0.113.0/24"], False),
    ("x" * 10_000, ["203.0.113.0/24"], False),
    ("١.٢.٣.٤", ["0.0.0.0/0"], False),
    (None, ["0.0.0.0/0"], False),
])
def test_ip_allowed(ip, allowlist, expected):
    assert ip_allowed(ip, allowlist) is expected


def test_shared_buckets_give_one_limit_across_worker_processes(tmp_path):
    """Two workers (two instances on one file) share each merchant's bucket: basic allows a burst of 100 in all."""
    first, second = SharedTokenBuckets(tmp_path / "buckets"), SharedTokenBuckets(tmp_path / "buckets")
    try:
        admitted = sum(buckets.take("mer_a", "basic", 1000.0) == 0.0 for _ in range(60) for buckets in (first, second))
        assert admitted == 100
        assert first.take("mer_b", "basic", 1000.0) == 0.0  # another merchant has its own bucket
        assert second.take("mer_a", "basic", 1001.0) == 0.0  # one token a second comes back
        assert first.take("mer_a", "basic", 1001.0) > 0.0
    finally:
        first.close()
        second.close()


def test_a_shared_slot_taken_by_another_key_starts_afresh(tmp_path):
    buckets = SharedTokenBuckets(tmp_path / "buckets", slots=1)
    try:
        assert all(buckets.take("mer_a", "basic", 0.0) == 0.0 for _ in range(100))
        assert buckets.take("mer_a", "basic", 0.0) > 0.0
        assert buckets.take("mer_b", "basic", 0.0) == 0.0  # a collision is generous, never stricter
    finally:
        buckets.close()


# --- login lockouts ------------------------------------------------------------------------------------------------

def fail(lockouts: LoginLockouts, account: str, times: int, now: float) -> None:
    for _ in range(times):
        lockouts.failed(account, now)


def test_failed_logins_delay_the_account_more_each_time_and_a_success_clears_them(tmp_path):
    lockouts = LoginLockouts(tmp_path / "lockouts")
    try:
        fail(lockouts, "ann@example.com", LOGIN_FREE_FAILURES - 1, T0)
        assert lockouts.wait_s("ann@example.com", T0) == 0.0  # the first few cost nothing
        delays = []
        for attempt in range(6):
            lockouts.failed("ann@example.com", T0)
            delays.append(lockouts.wait_s("ann@example.com", T0))
        assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
        assert lockouts.wait_s("ann@example.com", T0 + 30) == pytest.approx(2.0)
        assert lockouts.wait_s("bob@example.com", T0) == 0.0  # per account
        lockouts.succeeded("ann@example.com")
        assert lockouts.wait_s("ann@example.com", T0) == 0.0
        assert lockout_delay_s(10_000) == LOGIN_MAX_DELAY_S
    finally:
        lockouts.close()


def test_lockouts_are_shared_by_workers_and_outlive_a_restart(tmp_path):
    first, second = LoginLockouts(tmp_path / "lockouts"), LoginLockouts(tmp_path / "lockouts")
    for attempt in range(LOGIN_FREE_FAILURES + 2):
        (first if attempt % 2 else second).failed("ann@example.com", T0)
    first.close()
    second.close()
    again = LoginLockouts(tmp_path / "lockouts")
    try:
        assert again.wait_s("ann@example.com", T0) == 4.0
    finally:
        again.close()


def test_a_clock_set_back_never_lengthens_a_lockout_and_a_quiet_day_forgets_it(tmp_path):
    lockouts = LoginLockouts(tmp_path / "lockouts")
    try:
        fail(lockouts, "ann@example.com", LOGIN_FREE_FAILURES + 3, T0)
        assert lockouts.wait_s("ann@example.com", T0 - 3 * DAY_S) == 8.0
        assert lockouts.wait_s("ann@example.com", T0 + DAY_S) == 0.0
        lockouts.failed("ann@example.com", T0 + DAY_S)
        assert lockouts.wait_s("ann@example.com", T0 + DAY_S) == 0.0  # counting afresh from one
    finally:
        lockouts.close()


def test_login_lockout_slots_are_placed_by_a_secret_of_the_data_folder(tmp_path):
    """Without the folder's key nobody can pick an email that shares a victim's slot (and so reset its count)."""
    places = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        lockouts = LoginLockouts(tmp_path / folder / "login_lockouts.bin")
        key_hash, offset = lockouts._slot("victim@example.com")
        lockouts._unlock(offset)
        places.append(key_hash)
        lockouts.close()
        assert stat.S_IMODE((tmp_path / folder / "login_lockouts.key").stat().st_mode) == 0o600
    assert places[0] != places[1]
