"""Per-IP order windows: at most so many orders from one client IP in a sliding window of engine time."""

from engine.changes import Changes, TrackedDeque
from engine.records import AdmitOrderIp, CreateOrder, Outcome
from engine.types import NANOSECONDS_PER_SECOND


class IpWindows:
    def __init__(self, changes: Changes) -> None:
        self.changes = changes
        # client IP -> times of its recent admitted orders; the address admitted longest ago first
        self.times_by_ip: dict[str, TrackedDeque] = changes.dict(ranked=True)  # an address moves to the end

    def admit_order_ip(self, command: AdmitOrderIp, timestamp: int) -> Outcome:
        retry_after_s = self.admit(command, timestamp)
        return Outcome("rate_limited", retry_after_s=retry_after_s) if retry_after_s else Outcome()

    def admit(self, command: CreateOrder | AdmitOrderIp, timestamp: int) -> int:
        """A sliding window per client IP, in engine time: 0 if admitted (always, without a limit), else seconds
        until a slot frees."""
        if command.ip_limit <= 0:
            return 0
        windows = self.times_by_ip
        times = windows.get(command.client_ip) or self.changes.deque()
        window_ns = command.ip_window_s * NANOSECONDS_PER_SECOND
        horizon = timestamp - window_ns
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) >= command.ip_limit:
            return max(1, -(-(times[0] + window_ns - timestamp) // NANOSECONDS_PER_SECOND))
        times.append(timestamp)
        windows.pop(command.client_ip, None)
        windows[command.client_ip] = times  # last: addresses stay in the order of their newest admission
        self._forget_idle_ips(horizon)
        return 0

    def _forget_idle_ips(self, horizon: int) -> None:
        """Forget up to two addresses whose newest admission left the window: each admission adds at most one, so
        the windows kept are about as many as the addresses that ordered within the window."""
        windows = self.times_by_ip
        for _ in range(2):
            oldest = next(iter(windows), None)
            if oldest is None or (windows[oldest] and windows[oldest][-1] > horizon):
                return
            del windows[oldest]

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field."""
        return {"order_times_by_ip": [(ip, list(times)) for ip, times in self.times_by_ip.items()]}

    def restore(self, snapshot) -> None:
        """Fill from the engine's snapshot."""
        self.times_by_ip.load((ip, self.changes.deque(times)) for ip, times in snapshot.order_times_by_ip)
