"""Who may call the edge and how often: per-key token buckets by merchant tier, sliding windows for rare actions
(such as logins), growing delays after failed logins per account, the client's address behind trusted proxies,
and IP allowlists.

SlidingWindow holds state in this process only and keeps at most `max_keys` keys, dropping the least recently
used; SharedTokenBuckets and LoginLockouts share theirs with the other worker processes of the machine.
"""

import collections
import fcntl
import functools
import hashlib
import ipaddress
import mmap
import os
import pathlib
import struct

from journal.auth import create_file_once

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TIERS: dict[str, tuple[float, float]] = {"basic": (60, 100), "standard": (300, 500), "premium": (1000, 2000)}
# times near 1.7e9 s are only exact to ~0.24 µs, so a client who waited exactly the advised time may be a hair short
TOLERANCE_S = 1e-6


def _take(tokens: float, updated: float, now_s: float, rate: float, burst: float, cost: float) -> tuple[float, float, float]:
    """A bucket refilled to now, less `cost` if it holds it: (tokens, updated, seconds to wait or 0.0).

    Times are wall-clock seconds. When the clock runs backwards (set back, or a file kept from another clock), the
    bucket keeps its tokens and counts from now: a time in the future would otherwise refuse the key until the
    clock caught up, for days perhaps. Re-living the interval can only refill up to the burst once.
    """
    updated = min(updated, now_s)
    tokens = min(burst, tokens + (now_s - updated) * rate)
    wait = (cost - tokens) / rate
    admitted = wait <= TOLERANCE_S
    if admitted:
        tokens -= cost
    return tokens, now_s, 0.0 if admitted else wait


class SharedSlots:
    """A small file of fixed slots, one per key hash, that every edge worker of a machine maps and changes under a
    byte-range lock per slot. A key whose slot another key holds starts that slot afresh: a rare collision forgets
    a key's state, which the users of this class make generous, never stricter."""

    SLOT: struct.Struct

    def __init__(self, path: pathlib.Path, slots: int, hash_key: bytes = b"") -> None:
        self._slots = slots
        self._hash_key = hash_key  # a secret one keeps anyone from picking keys that share a slot with another's
        size = slots * self.SLOT.size
        self._descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._descriptor).st_size < size:
            os.ftruncate(self._descriptor, size)
        self._map = mmap.mmap(self._descriptor, size)

    def _slot(self, key: str) -> tuple[int, int]:
        """The key's hash and its slot's offset in the map, the slot locked against the other workers: the caller
        unlocks it (`_unlock`) in a `finally` (a context manager here would cost the hot path a generator)."""
        key_hash = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, key=self._hash_key).digest(),
                                  "little") or 1
        offset = (key_hash % self._slots) * self.SLOT.size
        fcntl.lockf(self._descriptor, fcntl.LOCK_EX, self.SLOT.size, offset)
        return key_hash, offset

    def _unlock(self, offset: int) -> None:
        fcntl.lockf(self._descriptor, fcntl.LOCK_UN, self.SLOT.size, offset)

    def close(self) -> None:
        self._map.close()
        os.close(self._descriptor)


class SharedTokenBuckets(SharedSlots):
    """One token bucket per key, refilled at its tier's rate per minute up to its burst, shared by every edge
    worker of a machine through one small file that outlives reboots (so its times are wall-clock: `time.time()`).

    A merchant's limit is the tier's, however many worker processes its requests land on.
    """

    SLOT = struct.Struct("<Qdd")  # key hash, tokens, updated

    def __init__(self, path: pathlib.Path, tiers: dict[str, tuple[float, float]] = TIERS, slots: int = 1 << 16) -> None:
        if "basic" not in tiers:
            raise ValueError("the tiers need a 'basic' tier for keys of unknown tier")
        self._tiers = tiers
        super().__init__(path, slots)

    def take(self, key: str, tier: str, now_s: float, cost: float = 1.0) -> float:
        per_minute, burst = self._tiers.get(tier, self._tiers["basic"])
        if cost > burst:
            raise ValueError(f"a cost of {cost} can never fit a bucket of {burst}")
        key_hash, offset = self._slot(key)
        try:
            stored_hash, tokens, updated = self.SLOT.unpack_from(self._map, offset)
            if stored_hash != key_hash:
                tokens, updated = burst, now_s
            tokens, updated, wait = _take(tokens, updated, now_s, per_minute / 60, burst, cost)
            self.SLOT.pack_into(self._map, offset, key_hash, tokens, updated)
        finally:
            self._unlock(offset)
        return wait


LOGIN_FREE_FAILURES = 5  # failed logins in a row before any delay
LOGIN_MAX_DELAY_S = 900.0
LOGIN_FORGET_S = 86_400.0  # a day without a failure starts the count afresh
SLOT_HASH_KEY_BYTES = 32


def slot_hash_key(path: pathlib.Path) -> bytes:
    """The secret key of a slot file's hashes, made once beside it (`<name>.key`)."""
    key_file = path.with_suffix(".key")
    create_file_once(key_file, os.urandom(SLOT_HASH_KEY_BYTES))
    return key_file.read_bytes()


def lockout_delay_s(failures: int) -> float:
    """How long an account waits after this many failed logins in a row: nothing for the first few, then 1 s,
    doubling up to LOGIN_MAX_DELAY_S."""
    if failures < LOGIN_FREE_FAILURES:
        return 0.0
    return min(LOGIN_MAX_DELAY_S, 2.0 ** min(failures - LOGIN_FREE_FAILURES, 32))


class LoginLockouts(SharedSlots):
    """Failed logins in a row per account, shared by every edge worker of a machine through one small file, so an
    account's delay grows however many workers the attempts are spread over, and survives a restart. Times are
    wall-clock; a clock set back never makes a wait longer than the delay itself."""

    SLOT = struct.Struct("<Qqd")  # key hash, failures in a row, last failure

    def __init__(self, path: pathlib.Path, slots: int = 1 << 16) -> None:
        # Keyed: with public slot hashes, an attacker could fail logins on an email sharing the victim's slot and so
        # keep resetting the victim's count.
        super().__init__(path, slots, hash_key=slot_hash_key(path))

    def wait_s(self, account: str, now_s: float) -> float:
        """Seconds until the account may try again (0.0: now)."""
        key_hash, offset = self._slot(account)
        try:
            stored_hash, failures, last_failure = self.SLOT.unpack_from(self._map, offset)
        finally:
            self._unlock(offset)
        if stored_hash != key_hash or now_s - last_failure >= LOGIN_FORGET_S:
            return 0.0
        delay = lockout_delay_s(failures)
        return max(0.0, min(delay, last_failure + delay - now_s))

    def failed(self, account: str, now_s: float) -> None:
        key_hash, offset = self._slot(account)
        try:
            stored_hash, failures, last_failure = self.SLOT.unpack_from(self._map, offset)
            if stored_hash != key_hash or now_s - last_failure >= LOGIN_FORGET_S:
                failures = 0
            self.SLOT.pack_into(self._map, offset, key_hash, failures + 1, now_s)
        finally:
            self._unlock(offset)

    def succeeded(self, account: str) -> None:
        key_hash, offset = self._slot(account)
        try:
            if self.SLOT.unpack_from(self._map, offset)[0] == key_hash:
                self.SLOT.pack_into(self._map, offset, 0, 0, 0.0)
        finally:
            self._unlock(offset)


class SlidingWindow:
    """At most `limit` admitted hits per key in any `window_s` seconds."""

    def __init__(self, limit: int, window_s: float, max_keys: int = 100_000) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a sliding window needs a limit of at least 1 and a positive length")
        self._limit = limit
        self._window_s = window_s
        self._max_keys = max_keys
        self._hits: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def hit(self, key: str, now_s: float) -> float:
        """0.0 when the hit is admitted (and counted), else the seconds until the oldest hit leaves the window."""
        hits = self._hits.pop(key, None) or collections.deque()
        while hits and hits[0] + self._window_s <= now_s:
            hits.popleft()
        admitted = len(hits) < self._limit
        if admitted:
            hits.append(now_s)
        self._hits[key] = hits
        _evict(self._hits, self._max_keys)
        return 0.0 if admitted else hits[0] + self._window_s - now_s


def _evict(entries: collections.OrderedDict, max_keys: int) -> None:
    while len(entries) > max_keys:
        entries.popitem(last=False)


@functools.lru_cache(maxsize=4096)  # every request parses its peer's address: the same few, mostly
def _ip(text: str | None) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except (ValueError, TypeError):
        return None
    # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d, which IPv4 networks would otherwise not contain
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _forwarded_ip(entry: str) -> IPAddress | None:
    """An X-Forwarded-For entry's address, allowing the `a.b.c.d:port` and `[v6]:port` forms some proxies write."""
    entry = entry.strip()
    if entry.startswith("[") and "]" in entry:
        return _ip(entry[1:entry.index("]")])
    if entry.count(":") == 1:
        return _ip(entry.split(":")[0])
    return _ip(entry)


@functools.lru_cache(maxsize=64)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """The parsed networks of a configured list, malformed entries left out."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except (ValueError, TypeError, AttributeError):
            continue
    return tuple(networks)


def malformed_networks(entries: list[str]) -> list[str]:
    """The entries that are neither an address nor a network."""
    return [entry for entry in entries if not _networks((entry,))]


def _inside(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in networks)


def client_ip(peer: str | None, forwarded_for: str | None, trusted_proxies: list[str]) -> str:
    """The TCP peer, or, when the peer is a trusted proxy, the nearest untrusted address in X-Forwarded-For."""
    address = _ip(peer)
    if address is None:
        return peer if isinstance(peer, str) else ""
    trusted = _networks(tuple(trusted_proxies or ()))
    if not _inside(address, trusted) or not isinstance(forwarded_for, str):
        return _text(address)
    # walk from the right: each trusted proxy appended the address it saw; anything further left is the client's word
    for entry in reversed(forwarded_for.split(",")):
        forwarded = _forwarded_ip(entry)
        if forwarded is None:
            continue
        address = forwarded
        if not _inside(address, trusted):
            break
    return _text(address)


@functools.lru_cache(maxsize=4096)
def _text(address: IPAddress) -> str:
    return str(address)


def ip_allowed(ip: str, allowlist: list[str]) -> bool:
    """True when the allowlist is empty or holds `ip` (as an address or within a network)."""
    if not allowlist:
        return True
    address = _ip(ip)
    return address is not None and _inside(address, _networks(tuple(allowlist)))
