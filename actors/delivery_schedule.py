"""The notifier's schedule in memory: which deliveries to attempt when, in order per object, bounded everywhere.

A lane is (destination, ordering key): one destination (a merchant's webhook, whatever its URL now; an IPN URL; a
mailbox) and one object (an order, a payment...). Only a lane's first delivery may go; the next waits until that
one is settled, delivered or dead, and its outcome is recorded, so events about one object reach a destination in
the order they happened. Lanes go side by side, at most `max_in_flight_per_endpoint` attempts at once to one
endpoint (a host, or the mail server) and `max_in_flight` in all. The schedule holds at most `max_jobs` deliveries: the durable list is the engine's, so what does not fit is
loaded later (actors/notifier.py).

No I/O, no clock: times come in as arguments (nanoseconds).
"""

import collections
import heapq
import itertools
import urllib.parse

import msgspec

from engine.records import Merchant

# A job waits for its time, is blocked (due, its endpoint's slots all taken), is being sent, or is sent and waits
# for its outcome to be recorded.
WAITING, BLOCKED, SENDING, RECORDING = "waiting", "blocked", "sending", "recording"
MAIL_ENDPOINT = "smtp"
WEBHOOK_LANE = "webhook of "  # then a merchant id: no URL or mailbox reads so
# A job's key: (shard, delivery id). Delivery ids come from a shard's own sequence: two shards make the same ones.
JobKey = tuple[int, str]


class Job(msgspec.Struct, kw_only=True):
    """One pending delivery and what it takes to attempt it."""

    delivery_id: str
    shard: int
    channel: str  # "webhook" | "ipn" | "email"
    target: str  # a URL, or an e-mail address
    ordering_key: str  # the object the event is about
    attempts: int  # made so far, ever
    queued_after_attempts: int  # attempts made before it was last queued: its retry schedule starts after them
    next_attempt_at: int  # engine nanoseconds
    created_at: int  # when the command that made it was committed (engine nanoseconds)
    payload: bytes  # the event's body, or the whole e-mail message
    merchant: Merchant
    state: str = WAITING
    stale: bool = False  # its target may have changed in the engine: read again before the next attempt
    slot: str = ""  # the endpoint whose in-flight slot it holds while sent (its target may change meanwhile)

    @property
    def key(self) -> JobKey:
        return self.shard, self.delivery_id

    @property
    def lane(self) -> tuple[str, str]:
        # A merchant's webhook is one destination whatever its URL: a new URL takes the events in the order they were.
        return (WEBHOOK_LANE + self.merchant.id if self.channel == "webhook" else self.target), self.ordering_key

    @property
    def endpoint(self) -> str:
        if self.channel == "email":
            return MAIL_ENDPOINT
        parts = urllib.parse.urlsplit(self.target)
        return f"{parts.scheme}://{parts.netloc.lower()}"


class Schedule:
    def __init__(self, max_jobs: int = 20_000, max_in_flight: int = 256, max_in_flight_per_endpoint: int = 8) -> None:
        self.max_jobs = max_jobs
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_endpoint = max_in_flight_per_endpoint
        self.jobs: dict[JobKey, Job] = {}
        self.lanes: dict[tuple[str, str], collections.deque[JobKey]] = {}
        self.due_order: list[tuple[int, int, tuple[str, str]]] = []  # (due, tie, lane), a heap; stale entries skipped
        self.in_flight: dict[str, int] = {}  # endpoint -> attempts under way
        self.blocked: dict[str, collections.deque[tuple[str, str]]] = {}  # endpoint -> lanes due, waiting for a slot
        self.in_flight_total = 0
        self._tie = itertools.count()

    def __len__(self) -> int:
        return len(self.jobs)

    def __contains__(self, key: JobKey) -> bool:
        return key in self.jobs

    def full(self) -> bool:
        return len(self.jobs) >= self.max_jobs

    def add(self, job: Job) -> bool:
        """Queue a delivery at the end of its lane; False when it is known already or there is no room."""
        if job.key in self.jobs or self.full():
            return False
        job.state = WAITING
        self.jobs[job.key] = job
        lane = self.lanes.setdefault(job.lane, collections.deque())
        lane.append(job.key)
        if len(lane) == 1:
            self._push(job)
        return True

    def next_due(self) -> int | None:
        """The earliest time a lane's first delivery is due, if any lane waits on time (not on a free slot)."""
        while self.due_order and not self._current(self.due_order[0]):
            heapq.heappop(self.due_order)
        return self.due_order[0][0] if self.due_order else None

    def take_due(self, now: int) -> list[Job]:
        """The lanes' first deliveries due by `now` that a slot is free for, marked as being sent."""
        taken = []
        while self.due_order and self.due_order[0][0] <= now and self.in_flight_total < self.max_in_flight:
            entry = heapq.heappop(self.due_order)
            if not self._current(entry):
                continue
            job = self.jobs[self.lanes[entry[2]][0]]
            if self.in_flight.get(job.endpoint, 0) >= self.max_in_flight_per_endpoint:
                self.blocked.setdefault(job.endpoint, collections.deque()).append(job.lane)
                job.state = BLOCKED  # out of the heap: a freed slot of its endpoint brings it back
                continue
            taken.append(self._start(job))
        return taken

    def sent(self, job: Job) -> None:
        """The attempt is over: its endpoint's slot is free again; the lane waits for the outcome to be recorded."""
        job.state = RECORDING
        self._release(job.slot)

    def settle(self, key: JobKey, outcome: str, next_attempt_at: int = 0) -> None:
        """A recorded outcome: delivered or dead ends the delivery and lets its lane go on; retry waits again."""
        job = self.jobs.get(key)
        if job is None:
            return
        if outcome == "retry":
            job.attempts += 1
            job.next_attempt_at = next_attempt_at
            job.state = WAITING
            self._push(job)
        else:
            self.drop(key)

    def retry_unrecorded(self, key: JobKey) -> None:
        """An attempt whose outcome could not be recorded: attempted again as if it had not happened."""
        job = self.jobs.get(key)
        if job is not None and job.state == RECORDING:
            job.state = WAITING
            self._push(job)

    def later(self, key: JobKey, at: int) -> None:
        """An attempt taken but not made (where it goes is not known now): its slot is free and it waits until `at`."""
        job = self.jobs.get(key)
        if job is not None and job.state == SENDING:
            self._release(job.slot)
            job.state = WAITING
            job.next_attempt_at = at
            self._push(job)

    def drop(self, key: JobKey) -> None:
        """Forget a delivery (settled, or found no longer pending); its lane's next one becomes due."""
        job = self.jobs.pop(key, None)
        if job is None:
            return
        if job.state == SENDING:
            self._release(job.slot)
        lane = self.lanes[job.lane]
        was_first = lane[0] == key
        lane.remove(key)
        if not lane:
            del self.lanes[job.lane]
        elif was_first:
            self._push(self.jobs[lane[0]])

    def _start(self, job: Job) -> Job:
        job.state = SENDING
        job.slot = job.endpoint
        self.in_flight[job.slot] = self.in_flight.get(job.slot, 0) + 1
        self.in_flight_total += 1
        return job

    def _release(self, endpoint: str) -> None:
        self.in_flight_total -= 1
        left = self.in_flight[endpoint] - 1
        if left:
            self.in_flight[endpoint] = left
        else:
            del self.in_flight[endpoint]
        waiting = self.blocked.get(endpoint)
        while waiting:
            lane = waiting.popleft()
            if lane in self.lanes and (first := self.jobs[self.lanes[lane][0]]).state == BLOCKED:
                first.state = WAITING
                self._push(first)  # due already: taken at the next look
                break
        if waiting is not None and not waiting:
            del self.blocked[endpoint]

    def _push(self, job: Job) -> None:
        if len(self.due_order) >= 4 * self.max_jobs:  # mostly stale entries (settled, dropped): keep the current
            self.due_order = [entry for entry in self.due_order if self._current(entry)]
            heapq.heapify(self.due_order)
        heapq.heappush(self.due_order, (job.next_attempt_at, next(self._tie), job.lane))

    def _current(self, entry: tuple[int, int, tuple[str, str]]) -> bool:
        """Whether a heap entry still names a lane whose first delivery waits for that time."""
        due, _, lane = entry
        queued = self.lanes.get(lane)
        if not queued:
            return False
        first = self.jobs[queued[0]]
        return first.state == WAITING and due == first.next_attempt_at
