"""All or nothing per command: what a command changed in commerce state, kept until it ends so that one which raises
is undone whole (the ledger undoes its own part: ledger.py `begin_command` / `undo_command`).

State is tracked where it is kept, not in the handlers that change it:
- a `TrackedDict` remembers, for each key written in the command, the value it had before (or that it had none), and
  where each key it removed stood; it saves the first state of every value it hands out (`[]`, `get`, `setdefault`):
  a record's fields, a list's length;
- a `Schedule` logs its pops and sweeps (its pushes undo themselves), a `TrackedDeque` its appends and pops from the
  left (a window of times is never copied whole);
- an `EventLog` is cut back to its length when the command began.
So records are changed only once taken from a tracked dict in the command, their list fields are replaced rather than
changed in place (a record's fields are saved shallowly), and lists held in tracked dicts are only appended to.
Outside a command (restore, reads) tracking costs one flag test.
"""

import collections
import heapq
from itertools import islice

import msgspec

from engine.check import InvariantBroken, check

MIN_SWEEP_ENTRIES = 1024  # below this many entries a sweep is not worth its walk
MISSING = object()  # a key that had no value before the command



class Changes:
    """The undo log of the command being applied; empty between commands."""

    def __init__(self) -> None:
        self.active = False
        self.dicts: list = []  # the tracked dicts (and listings) written in this command
        self.values: dict[int, tuple[object, object]] = {}  # id(value) -> (value, its state when first handed out)
        self.heap_log: list[tuple["Schedule", bool, object]] = []  # (schedule, swept?, entry or heap), in order
        self.deque_log: list[tuple["TrackedDeque", bool, object]] = []  # (deque, appended?, item), in order
        self.event_logs: list["EventLog"] = []
        self.event_lengths: list[int] = []

    def dict(self, ordered: bool = True, ranked: bool = False) -> "TrackedDict":
        return TrackedDict(self, ordered, ranked)

    def schedule(self) -> "Schedule":
        return Schedule(self)

    def deque(self, items=()) -> "TrackedDeque":
        return TrackedDeque(self, items)

    def event_log(self) -> "EventLog":
        log = EventLog()
        self.event_logs.append(log)
        return log

    def begin(self) -> None:
        if self.active:
            raise InvariantBroken("a command began inside another")
        self.active = True
        self.event_lengths = [len(log) for log in self.event_logs]

    def commit(self) -> None:
        """The command applied whole: forget its undo log."""
        if self.dicts:
            for tracked in self.dicts:
                tracked.forget()
            self.dicts.clear()
        if self.values:
            self.values.clear()
        if self.heap_log:
            self.heap_log.clear()
        if self.deque_log:
            self.deque_log.clear()
        self.active = False

    def undo(self) -> None:
        """Put back every tracked thing as it was when the command began."""
        for schedule, swept, item in reversed(self.heap_log):
            schedule.undo(swept, item)
        for tracked, appended, item in reversed(self.deque_log):
            if appended:
                collections.deque.pop(tracked)
            else:
                collections.deque.appendleft(tracked, item)
        for tracked in self.dicts:
            tracked.undo()
        for value, state in self.values.values():
            _restore(value, state)
        for log, length in zip(self.event_logs, self.event_lengths):
            del log[length:]
        self.commit()

    def save(self, value) -> None:
        """Keep `value`'s state as it is now (not kept yet in this command)."""
        state = _state(value)
        if state is not None:  # kept with its value, so no other object takes its id meanwhile
            self.values[id(value)] = (value, state)


def _state(value):
    if isinstance(value, msgspec.Struct):
        return msgspec.structs.astuple(value)
    if type(value) is list:
        return len(value)
    return None  # immutable (str, int, bytes, tuple), or tracked by its own log (TrackedDeque)


def _restore(value, state) -> None:
    if isinstance(value, msgspec.Struct):
        for name, field in zip(value.__struct_fields__, state):
            setattr(value, name, field)
    elif type(value) is list:
        del value[state:]


class TrackedDict(dict):
    """A dict whose writes, handed-out values and order of keys a command can undo.

    Its order is state (snapshots list it, pruning reads it), so keys removed in a command go back where they were:
    found at once when first (the oldest, as pruning removes them) or by rank (`ranked`, for a dict whose keys move to
    its end in every command); else by a scan, fine for removals as rare as an operator's. `ordered=False`: the
    order is not state (an index that restore rebuilds), and removed keys go back at the end.
    """

    __slots__ = ("changes", "first_values", "removals", "ordered", "ranks", "next_rank")

    def __init__(self, changes: Changes, ordered: bool = True, ranked: bool = False) -> None:
        super().__init__()
        self.changes = changes
        self.first_values: dict | None = None  # key -> its value before the command (MISSING: none)
        # Keys added (key, MISSING, -1) and removed (key, value, index or rank) in this command, in order.
        self.removals: list[tuple] = []
        self.ordered = ordered
        self.ranks: dict | None = {} if ranked else None  # key -> a number that grows with each key added
        self.next_rank = 0

    def _touch(self, key) -> None:
        first = self.first_values
        if first is None:
            if not self.changes.active:
                return
            first = self.first_values = {}
            self.changes.dicts.append(self)
        if key not in first:
            first[key] = dict.get(self, key, MISSING)

    def _writing(self, key) -> None:
        """`key` is about to be written: its value before the command kept (once), and its addition if it is new.
        One call, as every write of a command takes it."""
        first = self.first_values
        if first is None and self.changes.active:
            first = self.first_values = {}
            self.changes.dicts.append(self)
        present = dict.__contains__(self, key)
        if first is not None and key not in first:
            first[key] = dict.__getitem__(self, key) if present else MISSING
        if not present:
            if self.ranks is not None:
                self.ranks[key] = self.next_rank
                self.next_rank += 1
            if first is not None:
                self.removals.append((key, MISSING, -1))

    def _removing(self, key) -> None:
        """`key` (present) is about to be removed."""
        if self.ranks is not None:
            place = self.ranks.pop(key)
        elif not self.ordered:
            place = -1
        elif key == next(iter(self)):
            place = 0
        else:
            place = list(dict.keys(self)).index(key)
        if self.first_values is not None:
            self.removals.append((key, dict.__getitem__(self, key), place))

    def _hand_out(self, value):
        changes = self.changes
        if changes.active and id(value) not in changes.values:  # a value handed out again is kept already
            changes.save(value)
        return value

    def __getitem__(self, key):
        return self._hand_out(dict.__getitem__(self, key))

    def get(self, key, default=None):
        value = dict.get(self, key, MISSING)
        return default if value is MISSING else self._hand_out(value)

    def setdefault(self, key, default=None):
        self._writing(key)
        return self._hand_out(dict.setdefault(self, key, default))

    def __setitem__(self, key, value) -> None:
        self._writing(key)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key) -> None:
        self._touch(key)
        self._removing(key)
        dict.__delitem__(self, key)

    def pop(self, key, *default):
        self._touch(key)
        if dict.__contains__(self, key):
            self._removing(key)
        return dict.pop(self, key, *default)

    def first_items(self, count: int) -> list[tuple]:
        """Up to `count` (key, value) pairs from the front, for reading only (values not handed out)."""
        return list(islice(dict.items(self), count))

    def take_first(self, count: int) -> list[tuple]:
        """Remove the first `count` keys (all, if fewer) and answer their (key, value) pairs, oldest first: one walk
        from the front. Finding the first key anew for each would walk past every key removed before it, whose
        slots a dict keeps until it grows: a queue popped one key at a time costs the queue's length per key."""
        taken = self.first_items(count)
        for key, value in taken:
            self._touch(key)
            place = self.ranks.pop(key) if self.ranks is not None else 0 if self.ordered else -1
            if self.first_values is not None:
                self.removals.append((key, value, place))
            dict.__delitem__(self, key)
        return taken

    def undo(self) -> None:
        """Back to the state and order of keys the command found."""
        removed = [change for change in self.removals if change[1] is not MISSING]
        if removed and self.ordered and self.ranks is None:
            self._reorder()
        if self.ranks is not None:
            for key, value, place in reversed(self.removals):
                if value is MISSING:
                    del self.ranks[key]
                else:
                    self.ranks[key] = place
        for key, value in self.first_values.items():
            if value is MISSING:
                dict.pop(self, key, None)
            else:
                dict.__setitem__(self, key, value)
        if removed and self.ranks is not None:
            items = sorted(dict.items(self), key=lambda item: self.ranks[item[0]])
            dict.clear(self)
            dict.update(self, items)
        self.forget()

    def _reorder(self) -> None:
        """Replay the command's additions and removals backwards on a list of the items: the keys' old order."""
        items = list(dict.items(self))
        for key, value, place in reversed(self.removals):
            if value is MISSING:
                index = next(i for i in range(len(items) - 1, -1, -1) if items[i][0] == key)
                del items[index]
            else:
                items.insert(place, (key, value))
        dict.clear(self)
        dict.update(self, items)

    def forget(self) -> None:
        self.first_values = None
        self.removals = []

    def load(self, items) -> None:
        """Fill from (key, value) pairs at restore, outside any command."""
        check(not self.changes.active, "a tracked dict loaded inside a command")
        for key, value in items:
            self[key] = value

    def _untracked(self, *args, **kwargs):
        raise TypeError("a tracked dict changes only through [], get, setdefault, del and pop")

    update = popitem = clear = __ior__ = _untracked


def peek(tracked: TrackedDict, key):
    """The value at `key` (None if absent) for reading only: not handed out, so no undo state is kept for it."""
    return dict.get(tracked, key)


def append_to(tracked: TrackedDict, key, value) -> None:
    """`value` at the end of the list `tracked` holds at `key`, made if absent: appended, as a command may."""
    values = tracked.get(key)
    if values is None:
        tracked[key] = [value]
    else:
        values.append(value)


class Schedule:
    """Keys due at an instant of engine time, earliest first (order expiries, payment deadlines, deposit windows,
    remembered signatures): a command can undo it without a scan.

    A key has at most one time (`times`, the state). Setting a key anew or dropping it leaves its old heap entry
    behind, stale: skipped when it comes up, and swept out when the heap has doubled since the last sweep, so the heap
    holds at most about twice the live keys and nothing scans or re-heapifies per change. An undone command pushes
    back what it popped and puts back the heap a sweep replaced; the entries it pushed need no undo, since `times`
    (a tracked dict) no longer names them.
    """

    __slots__ = ("changes", "times", "heap", "sweep_at")

    def __init__(self, changes: Changes) -> None:
        self.changes = changes
        self.times: dict = changes.dict(ordered=False)  # key -> its time; the order is not state
        self.heap: list[tuple] = []  # (time, key), live and stale
        self.sweep_at = MIN_SWEEP_ENTRIES

    def __len__(self) -> int:
        return len(self.times)

    def __contains__(self, key) -> bool:
        return key in self.times

    def set(self, key, time: int) -> None:
        """`key` is due at `time` (instead of when it was due before, if it was)."""
        self.times[key] = time
        heapq.heappush(self.heap, (time, key))
        if len(self.heap) >= self.sweep_at:
            self._sweep()

    def drop(self, key) -> None:
        """`key` is due no more."""
        self.times.pop(key, None)

    def next_time(self) -> int | None:
        """The earliest time in the heap: a stale entry's may come first, never later than a live one."""
        return self.heap[0][0] if self.heap else None

    def pop_due(self, timestamp: int) -> list:
        """The keys due by `timestamp`, earliest first (ties by key), no longer scheduled."""
        heap, times = self.heap, self.times
        logging = self.changes.active
        due = []
        while heap and heap[0][0] <= timestamp:
            entry = heapq.heappop(heap)
            if logging:
                self.changes.heap_log.append((self, False, entry))
            time, key = entry
            if times.get(key) == time:
                del times[key]
                due.append(key)
        return due

    def entries(self) -> list[tuple]:
        """The live (time, key) entries, sorted: what a snapshot keeps."""
        return sorted((time, key) for key, time in self.times.items())

    def load(self, entries) -> None:
        """Fill from (time, key) entries at restore, outside any command; a key listed twice keeps its latest."""
        check(not self.changes.active, "a schedule loaded inside a command")
        for time, key in entries:
            self.times[key] = time
        self._rebuild()

    def undo(self, swept: bool, item) -> None:
        """Undo one logged step: a pop (`item`, the entry) or a sweep (`item`, the heap as it was)."""
        if swept:
            self.heap = item
        else:
            heapq.heappush(self.heap, item)

    def _sweep(self) -> None:
        if self.changes.active:
            self.changes.heap_log.append((self, True, self.heap))
        self._rebuild()

    def _rebuild(self) -> None:
        """The heap of the live entries alone."""
        self.heap = [(time, key) for key, time in self.times.items()]
        heapq.heapify(self.heap)
        self.sweep_at = max(MIN_SWEEP_ENTRIES, 2 * len(self.heap))


class TrackedDeque(collections.deque):
    """A deque used as a queue (append on the right, pop on the left) whose changes a command can undo from a log of
    them: the cost of undo tracking is that of the changes, not of the deque's length."""

    __slots__ = ("changes",)

    def __init__(self, changes: Changes, items=()) -> None:
        super().__init__(items)
        self.changes = changes

    def append(self, item) -> None:
        collections.deque.append(self, item)
        if self.changes.active:
            self.changes.deque_log.append((self, True, item))

    def popleft(self):
        item = collections.deque.popleft(self)
        if self.changes.active:
            self.changes.deque_log.append((self, False, item))
        return item

    def _untracked(self, *args, **kwargs):
        raise TypeError("a tracked deque changes only through append and popleft")

    appendleft = pop = extend = extendleft = insert = remove = rotate = clear = _untracked
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _untracked


class EventLog(list):
    """Events of the batch being applied: a command only appends, so undoing it cuts the log back."""

    __slots__ = ()


def untracked_containers(root, skip: tuple[type, ...] = ()) -> list[str]:
    """Where `root` (commerce state) keeps a dict, list, set or deque that a command could change without trace,
    looking into every engine object it holds but those of a `skip` type (state undone its own way)."""
    found = []
    seen = set()
    stack = collections.deque([("commerce", root)])
    while stack:
        path, obj = stack.popleft()  # breadth first: each place is named by its shortest path
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        for name, value in _attributes(obj):
            where = f"{path}.{name}"
            if isinstance(value, (TrackedDict, Schedule, TrackedDeque, EventLog, Changes)):
                continue
            if isinstance(value, (dict, list, set, collections.deque)):
                found.append(where)
            elif type(value).__module__.startswith("engine.") and not isinstance(value, skip):
                stack.append((where, value))
    return found


def _attributes(obj) -> list[tuple[str, object]]:
    names = list(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        names += [name for name in getattr(cls, "__slots__", ()) if hasattr(obj, name)]
    return [(name, getattr(obj, name)) for name in names]
