"""Keeping each shard served while serve runs: a shard whose process dies is started again from its journal.

One `ShardSupervisor` per shard, ticked from serve's main loop; a tick only looks (process exit codes, the role
each process wrote into its folder, a status request to a process that is starting) and never waits on a shard
for long, so one shard's trouble never holds up another's supervision. What a shard is doing is one of
`SupervisionState`, and `ShardSupervisor._enter` is the one place it changes:

    serving ──a process died──▶ backing_off ──its pause is over──▶ starting ──every process answers──▶ serving
    serving ──the primary died, its replica may promote itself──▶ awaiting_promotion ──promoted──▶ serving
    starting ──a process died or did not answer in time──▶ backing_off
    backing_off ──no try left in the window──▶ given_up (that shard only; the others go on)

Starting the shard again reads the roles from the data (journal/processes.py shard_roles): after a promotion the
promoted folder leads and the old primary's folder follows it and catches up, unless it wrote entries the new
primary lacks; then it is left alone, with what to do in the log, and the shard serves without a replica.
"""

import logging
import pathlib
import time
from typing import Literal

from journal.processes import (DivergedFollower, ShardPlan, ShardProcess, read_head, refuse_diverged,
                               running_role)
from journal.store import CorruptionError

log = logging.getLogger("paygate.serve")

SupervisionState = Literal["serving", "awaiting_promotion", "backing_off", "starting", "given_up"]
# What a back-off ends in: the dead processes started again as they were (a replica beside its serving primary),
# or the whole shard started afresh from its folders (roles by the data).
Restart = Literal["in_place", "afresh"]
TRANSITIONS: dict[SupervisionState, set[SupervisionState]] = {
    "serving": {"awaiting_promotion", "backing_off", "given_up"},
    "awaiting_promotion": {"serving", "backing_off", "given_up"},
    "backing_off": {"starting", "backing_off", "given_up"},
    "starting": {"serving", "backing_off", "given_up"},
    "given_up": set(),
}
MAX_RESTARTS = 5  # within RESTART_WINDOW_S: a shard that keeps dying has a fault to look at, not to hide
RESTART_WINDOW_S = 120.0
FIRST_PAUSE_S = 0.25  # before the first start again; each further one waits twice as long
MAX_PAUSE_S = 8.0
START_TIMEOUT_S = 120.0  # recovery replays the journal after the last snapshot: a start still silent after this is stuck
READY_POLL_MS = 200  # one status request per starting process and tick
PROMOTION_GRACE_S = 2.0  # past the replica's own --auto-promote-ms, before the shard is started afresh instead
STOP_TIMEOUT_S = 10.0
# What reading a folder's journal head may raise: the start then counts as failed.
HEAD_READ_ERRORS = (CorruptionError, TimeoutError, ChildProcessError, OSError)


class RestartBudget:
    """At most `MAX_RESTARTS` starts within `RESTART_WINDOW_S`, each after a pause twice the one before."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def pause_s(self, now: float) -> float | None:
        """The pause before the next start, which it counts; None when none is left in the window."""
        self.starts = [moment for moment in self.starts if now - moment < RESTART_WINDOW_S]
        if len(self.starts) >= MAX_RESTARTS:
            return None
        pause_s = min(FIRST_PAUSE_S * 2 ** len(self.starts), MAX_PAUSE_S)
        self.starts.append(now + pause_s)
        return pause_s

    def reset(self) -> None:
        self.starts.clear()


class ShardSupervisor:
    """One shard's processes: started again when one dies, each time after a longer pause, within a budget."""

    def __init__(self, shard: int, plan: ShardPlan, replica: bool, processes: list[ShardProcess]) -> None:
        self.shard = shard
        self.plan = plan
        self.with_replica = replica  # turned off for good (until serve restarts) when the replica cannot follow
        self.processes = processes  # the leader first
        self.state: SupervisionState = "serving"
        self.restart: Restart = "afresh"
        self.due = 0.0  # when the back-off or the wait for a promotion ends, or a start times out (monotonic)
        self.budget = RestartBudget()

    def _enter(self, state: SupervisionState, due: float = 0.0) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"shard {self.shard}: no way from {self.state} to {state}")
        self.state = state
        self.due = due

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.state == "serving":
            self._check_serving(now)
        elif self.state == "awaiting_promotion":
            self._check_promotion(now)
        elif self.state == "backing_off" and now >= self.due:
            self._start(now)
        elif self.state == "starting":
            self._check_starting(now)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    # Watching

    def _check_serving(self, now: float) -> None:
        roles = {process: process.role() if process.alive() else "" for process in self.processes}
        gone = [process for process in self.processes if roles[process] in ("", "fenced")]
        if not gone:
            return
        leaders = [process for process in self.processes if roles[process] == "primary"]
        for process in gone:
            if not process.alive():
                log.warning("shard %d: the process on %s (%s) stopped (%s)", self.shard, process.config.data,
                            running_role(pathlib.Path(process.config.data)) or "starting", process.how_it_ended())
        if leaders:
            self._after_loss(now, leaders[0], gone)
        elif any(roles[process] == "replica" and process.config.auto_promote_ms for process in self.processes):
            promote_s = max(process.config.auto_promote_ms for process in self.processes) / 1000
            self._enter("awaiting_promotion", now + promote_s + PROMOTION_GRACE_S)
        else:
            self._back_off(now, "afresh")

    def _after_loss(self, now: float, leader: ShardProcess, gone: list[ShardProcess]) -> None:
        """A primary serves: start a dead replica again; after a promotion, the old primary follows the new one."""
        if all(running_role(pathlib.Path(process.config.data)) == "replica" for process in gone):
            self._back_off(now, "in_place")
            return
        try:
            self._refuse_diverged(leader, gone)
        except DivergedFollower as refusal:
            log.error("shard %d: %s Until then it serves without a replica.", self.shard, refusal)
            self._serve_alone(leader)
            return
        except HEAD_READ_ERRORS as error:
            log.error("shard %d: %s; it serves without a replica", self.shard, error)
            self._serve_alone(leader)
            return
        self._back_off(now, "afresh")

    def _refuse_diverged(self, leader: ShardProcess, gone: list[ShardProcess]) -> None:
        leader_head = read_head(pathlib.Path(leader.config.data), readonly=True)
        for process in gone:
            refuse_diverged(leader_head, read_head(pathlib.Path(process.config.data), readonly=True), readonly=True)

    def _serve_alone(self, leader: ShardProcess) -> None:
        for process in self.processes:
            if process is not leader:
                process.stop(STOP_TIMEOUT_S)
        self.processes = [leader]
        self.with_replica = False

    def _check_promotion(self, now: float) -> None:
        leaders = [process for process in self.processes if process.alive() and process.role() == "primary"]
        if leaders:
            self._enter("serving")
            self._after_loss(now, leaders[0], [process for process in self.processes if process is not leaders[0]])
        elif now >= self.due or not any(process.alive() for process in self.processes):
            log.warning("shard %d: no replica took over", self.shard)
            self._back_off(now, "afresh")

    def _check_starting(self, now: float) -> None:
        failed = [process for process in self.processes if not process.alive()]
        for process in failed:
            log.warning("shard %d: %s", self.shard, process.start_failure())
        if not failed and all(process.ready(READY_POLL_MS) for process in self.processes):
            log.warning("shard %d: serving again (%s)", self.shard,
                        ", ".join(f"{process.config.role} on {process.config.data}" for process in self.processes))
            self._enter("serving")
        elif failed or now >= self.due:
            if not failed:
                log.warning("shard %d: not ready %g s after its start; starting it again", self.shard,
                            START_TIMEOUT_S)
            self._back_off(now, self.restart)

    # Starting again

    def _back_off(self, now: float, restart: Restart) -> None:
        pause_s = self.budget.pause_s(now)
        if pause_s is None and restart == "in_place" and self.with_replica:
            log.error("shard %d: its replica stopped %d times in %g s; the shard goes on without one (until serve "
                      "is restarted)", self.shard, MAX_RESTARTS, RESTART_WINDOW_S)
            # A primary that waits for a replica's acknowledgements would wait for ever: it starts again alone.
            self.with_replica = False
            self.budget.reset()
            restart, pause_s = "afresh", self.budget.pause_s(now)
        if pause_s is None:
            self._give_up()
            return
        self.restart = restart
        what = ("the process on " + " and ".join(process.config.data for process in self.processes
                                                  if not process.alive())) if restart == "in_place" else "it"
        log.warning("shard %d: starting %s again in %g s (%d of %d tries in %g s)", self.shard, what, pause_s,
                    len(self.budget.starts), MAX_RESTARTS, RESTART_WINDOW_S)
        self._enter("backing_off", now + pause_s)

    def _give_up(self) -> None:
        self.stop()
        log.error("shard %d: gave up after %d starts in %g s; its requests answer 503 shard_unavailable until serve "
                  "is restarted (the shard's log lines above say why it stopped)", self.shard, MAX_RESTARTS,
                  RESTART_WINDOW_S)
        self._enter("given_up")

    def _start(self, now: float) -> None:
        try:
            if self.restart == "in_place":
                for process in self.processes:
                    if not process.alive():
                        process.start()
            else:
                self._start_shard()
        except OSError as error:  # no process could be made (memory, process limits): a later try may
            log.error("shard %d: cannot start a process: %s", self.shard, error)
            self._back_off(now, self.restart)
            return
        if self.processes:
            self._enter("starting", now + START_TIMEOUT_S)

    def _start_shard(self) -> None:
        """Stop what is left of the shard and start it from its folders, as serve's start does."""
        self.stop()
        self.processes = []
        try:
            configs = self._configs()
        except HEAD_READ_ERRORS as error:
            log.error("shard %d: %s", self.shard, error)
            self._back_off(time.monotonic(), "afresh")
            return
        for config in configs:
            if config is not None:  # each joins as it starts, so that a failed start leaves none unstopped
                self.processes.insert(0, ShardProcess(config).start())  # the leader ends up first

    def _configs(self) -> list:
        try:
            primary, replica = self.plan.configs(self.shard, self.with_replica)
        except DivergedFollower as refusal:
            log.error("shard %d: %s Until then it serves without a replica.", self.shard, refusal)
            self.with_replica = False
            primary, replica = self.plan.configs(self.shard, False)
        return [replica, primary]  # the replica listens before its primary dials it
