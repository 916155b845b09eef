"""The processor: claims events, renders them and hands them to msmtp.

One pass claims what is due in ``incoming/`` and ``deferred/``, holds a ban
for ``group_wait`` seconds so that its attack details can join it, sends one
message per event (or one digest during a storm) through up to
``max_parallel`` msmtp processes, and moves every claimed event to
``sent/``, ``deferred/`` or ``failed/``. The clock is passed in so that
retries and lifetimes are tested without sleeping.
"""

import concurrent.futures
import dataclasses
import datetime as dt
import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from . import events, history, msmtpconf, storm, threads, transport
from .errors import ConfigError, EventError, TransportUnavailableError
from .settings import Settings
from .spooldir import Claim, Spool, State

log = logging.getLogger(__name__)

BATCH = 256
# A digest carries at most this many events and the rest wait for the next
# one, which bounds a storm's memory: a process that enqueued and digested
# 5,000 or 30,000 Advanced ban events peaked at 62 MB RSS (Python 3.11.7).
DIGEST_MAX_EVENTS = 5_000
# Event fields a digest row shows; during a storm the rest is dropped.
_DIGEST_EVENT_KEYS = ("ip", "action", "alert_scope", "hostgroup_name")
_DIGEST_DETAIL_KEYS = (
    "attack_type",
    "attack_protocol",
    "attack_direction",
    "attack_detection_threshold_direction",
    "attack_severity",
    "total_incoming_pps",
    "total_outgoing_pps",
    "total_incoming_traffic",
    "total_outgoing_traffic",
    "total_incoming_traffic_bits",
    "total_outgoing_traffic_bits",
)


@dataclasses.dataclass
class Job:
    """A claimed and parsed event on its way to msmtp."""

    claim: Claim
    raw: bytes
    event: dict
    queued_at: dt.datetime
    history: dict
    details: "Job | None" = None

    @property
    def event_id(self) -> str:
        return self.claim.event_id

    @property
    def action(self) -> str:
        return self.event["action"]


@dataclasses.dataclass
class _Unfinished:
    """A delivered or judged event whose final move failed (disk full)."""

    claim: Claim
    finish: Callable[[], None]


class Processor:
    """Processes one spool directory with one set of settings."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        send: Callable[..., transport.Delivery] = transport.send,
    ):
        self.clock = clock
        self.send = send
        self.stop_requested = False
        self.held: dict[str, Job] = {}
        self.unfinished: list[_Unfinished] = []
        self.grace: dict[str, float] = {}
        self._renderer = None
        self._unavailable_reported = False
        self._disabled_reported = False
        self.rate_limited = False
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """Apply (new) settings; templates are compiled again on first use."""
        self.settings = settings
        try:
            msmtpconf.write_msmtp_config(settings)
        except ConfigError as error:
            log.error("%s; delivery waits until msmtp_config is usable", error)
        self.spool = Spool(settings.spool_dir)
        self.rate = storm.RateState(self.spool.root / "rate.json")
        self.threads = threads.ThreadIndex(self.spool.root / "threads")
        self._renderer = None

    @property
    def renderer(self):
        if self._renderer is None:
            from .render import Renderer

            self._renderer = Renderer(self.settings)
        return self._renderer

    # Passes

    def start(self) -> None:
        """Recover crashed claims and remove stale temporary files."""
        self.spool.recover()
        self.spool.remove_stale_tmp(self.clock())
        self.threads.expire(self.clock())

    def run_once(self) -> None:
        """Process until nothing is due now, waiting out held bans."""
        while not self.stop_requested:
            wake_at = self.process_pass()
            if wake_at is None:
                break
            delay = wake_at - self.clock()
            if delay <= 0:
                continue
            if not self.held:
                break
            time.sleep(min(delay, 1.0))
        self.release_all()

    def process_pass(self) -> float | None:
        """Claim and deliver what is due; return when to look again, or None."""
        now = self.clock()
        self.retry_unfinished()
        if not self._ready_to_send():
            return now + self.settings.scan_interval

        settings = self.settings
        budget = self.rate.budget(now, settings.max_messages_per_minute)
        waiting = max(0, self.spool.count(State.INCOMING) - len(self.grace))
        waiting += len(self.held)
        arrivals = self.rate.recent_arrivals(now, settings.digest_window)
        if self.rate_limited or storm.in_storm(
            waiting, arrivals, settings.digest_threshold
        ):
            return self.storm_pass(now)
        if budget < 1:
            return self.rate.next_budget_time(now)

        jobs = self.claim_due(now, min(BATCH, budget))
        if not jobs and not self.held:
            return self._next_wake(now)
        self.deliver_jobs(self._group(jobs, now), now)
        if self.stop_requested:
            return None
        # Events beyond the rate limit wait for the next digest.
        if waiting > budget:
            self.rate_limited = True
        return now if jobs else self._next_wake(self.clock())

    def _ready_to_send(self) -> bool:
        settings = self.settings
        if not settings.email_notifications_enabled:
            if not self._disabled_reported:
                log.warning(
                    "email_notifications_enabled is off: %d events stay queued in "
                    "%s; enable it with: fnm_spool set main "
                    "email_notifications_enabled enable",
                    self.spool.count(State.INCOMING),
                    self.spool.dir(State.INCOMING),
                )
                self._disabled_reported = True
            return False
        try:
            transport.check_available(settings.msmtp_path, settings.msmtp_config)
        except TransportUnavailableError as error:
            if not self._unavailable_reported:
                log.error("%s; events stay queued", error)
                self._unavailable_reported = True
            return False
        if self._unavailable_reported:
            log.info("msmtp is usable again; resuming delivery")
        self._unavailable_reported = False
        self._disabled_reported = False
        return True

    def _next_wake(self, now: float) -> float | None:
        times = [
            job.queued_at.timestamp() + self.settings.group_wait
            for job in self.held.values()
        ]
        times += self.grace.values()
        deferred = self.spool.next_deferred_time()
        if deferred is not None:
            times.append(deferred)
        if self.rate.last_digest is not None and self.spool.count(State.INCOMING):
            times.append(self.rate.next_digest_time(self.settings.digest_window))
        if not times:
            return None
        # A due event whose lock is busy must not turn the loop into a spin.
        return max(min(times), now + 0.05)

    # Claiming

    def claim_due(self, now: float, limit: int) -> list[Job]:
        """Claim up to ``limit`` events from ``incoming/`` and due ``deferred/``."""
        jobs = []
        names = [
            name
            for name in self.spool.oldest(State.INCOMING, limit + len(self.grace))
            if self.grace.get(name, 0) <= now
        ][:limit]
        for name in names:
            job = self.load(State.INCOMING, name, now)
            if job is not None:
                jobs.append(job)
        self.rate.record_arrivals(now, len(jobs))

        for name in self.spool.due_deferred(now, limit - len(jobs)):
            job = self.load(State.DEFERRED, name, now)
            if job is not None:
                jobs.append(job)
        return jobs

    def load(self, state: State, name: str, now: float) -> Job | None:
        """Claim, read and parse one event; a bad one goes to ``failed/``."""
        claim = self.spool.claim(state, name)
        if claim is None:
            return None
        grace_end = self.grace.pop(name, None)
        try:
            raw = self.spool.read(claim, self.settings.max_event_bytes)
        except EventError as error:
            # Not a regular file, or too large: waiting cannot change either.
            self._reject(claim, error, now, may_wait=False)
            return None
        except OSError as error:
            reason = f"{state.value}/{name!r}: cannot read: {error.strerror}"
            self._finish(claim, lambda: self._fail(claim, reason, None, {}))
            return None
        try:
            event = events.parse_event(raw, f"{state.value}/{name!r}")
        except EventError as error:
            self._reject(claim, error, now, may_wait=True, grace_end=grace_end)
            return None

        wrong = events.wrong_counters(event)
        if wrong:
            log.warning(
                "%s: counters that are not numbers, shown as given: %s",
                claim.event_id,
                ", ".join(_loggable(key) for key in wrong),
            )
        queued_at = events.event_time(claim.event_id) or dt.datetime.fromtimestamp(
            now, dt.UTC
        )
        job_history = self.spool.load_history(claim.event_id)
        return Job(claim, raw, event, queued_at, job_history)

    def _reject(
        self,
        claim: Claim,
        error: EventError,
        now: float,
        may_wait: bool,
        grace_end: float | None = None,
    ) -> None:
        # A writer that copies straight into incoming/ may not have finished:
        # an unparsable file gets incoming_grace_seconds from its last write.
        # A future modification time (skewed clock, touch -d) counts from the
        # first attempt, whose grace_end is passed in, so it cannot extend it.
        if may_wait and claim.source is State.INCOMING:
            try:
                written = self.spool.mtime(claim)
            except OSError:
                written = 0.0
            if written <= now or grace_end is None:
                grace_end = min(written, now) + self.settings.incoming_grace_seconds
            if now < grace_end:
                self.spool.requeue(claim)
                self.grace[claim.original_name] = grace_end
                log.debug("%r does not parse yet; retrying", claim.original_name)
                return
        reason = f"{error}"
        self._finish(claim, lambda: self._fail(claim, reason, None, {}))

    # Grouping a ban with its attack details

    def _group(self, jobs: list[Job], now: float) -> list[Job]:
        """Return the jobs to send now; young bans wait in ``self.held``."""
        ready = []
        for job in jobs:
            if job.action == "ban" and self._young(job, now):
                key = events.attack_key(job.event)
                # A repeated ban of the same attack must not strand the first.
                if key in self.held:
                    ready.append(self.held.pop(key))
                self.held[key] = job
            else:
                ready.append(job)

        for job in list(ready):
            ban = self.held.get(events.attack_key(job.event))
            if job.action == "attack_details" and ban is not None and not ban.details:
                ban.details = job
                ready.remove(job)

        for key, ban in list(self.held.items()):
            if ban.details is not None or not self._young(ban, now):
                ready.append(self.held.pop(key))
        return ready

    def _young(self, job: Job, now: float) -> bool:
        if self.settings.group_wait <= 0 or job.claim.source is State.DEFERRED:
            return False
        return now < job.queued_at.timestamp() + self.settings.group_wait

    # Delivery

    def deliver_jobs(self, jobs: list[Job], now: float) -> None:
        """Send each job's message, up to ``max_parallel`` at once.

        Bans and partial blocks go first, so that later messages of the same
        attack in this pass find the thread they reply to.
        """
        starts = [job for job in jobs if job.action in threads.THREAD_STARTS]
        others = [job for job in jobs if job.action not in threads.THREAD_STARTS]
        for group in (starts, others):
            if group:
                self._deliver_group(group)

    def _deliver_group(self, jobs: list[Job]) -> None:
        # A job goes to msmtp only when a worker is free, so at most
        # max_parallel messages are between msmtp and their final move. That
        # bounds what a crash resends. A stop request waits for those runs
        # only, and the jobs not yet started go back to their queue.
        workers = max(1, self.settings.max_parallel)
        waiting = list(reversed(jobs))
        pending = {}
        # One fsync per directory and one save of rate.json per group: per
        # event they cost more than rendering (about 2.5 ms together).
        with (
            self.spool.batched_sync(),
            concurrent.futures.ThreadPoolExecutor(workers) as pool,
        ):
            while waiting or pending:
                while waiting and len(pending) < workers and not self.stop_requested:
                    job = waiting.pop()
                    message = self._render(job)
                    if message is not None:
                        future = pool.submit(self._send, message)
                        pending[future] = (job, message)
                if not pending:
                    break

                done, _ = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    job, message = pending.pop(future)
                    self._record(job, message, future.result(), self.clock())
        self._save_rate()
        for job in reversed(waiting):
            self._return(job)

    def _save_rate(self) -> None:
        try:
            self.rate.save()
        except OSError as error:
            log.warning(
                "cannot save %s: %s; the rate limit counts these sends in memory",
                self.rate.path,
                error.strerror,
            )

    def _render(self, job: Job) -> bytes | None:
        thread = None
        if job.action != "ban":
            thread = self.threads.lookup(job.event)
        try:
            return self.renderer.render_event(
                job.event,
                job.event_id,
                job.raw,
                queued_at=job.queued_at,
                details=job.details.event if job.details else None,
                thread=thread,
            )
        except Exception as error:  # noqa: BLE001 - a template bug must not stop the daemon
            reason = f"{job.event_id}: cannot render the message: {error!r}"
            log.error(
                "%s; fix the template, then: fnm_spool replay %s", reason, job.event_id
            )
            for part in self._parts(job):
                self._finish(
                    part.claim,
                    lambda p=part: self._fail(p.claim, reason, None, p.history),
                )
            return None

    def _send(self, message: bytes) -> transport.Delivery | TransportUnavailableError:
        settings = self.settings
        try:
            return self.send(
                message,
                settings.msmtp_path,
                settings.msmtp_config,
                settings.msmtp_timeout,
            )
        except TransportUnavailableError as error:
            return error

    def _record(self, job: Job, message: bytes, result, now: float) -> None:
        if isinstance(result, TransportUnavailableError):
            log.error("%s; %s stays queued", result, job.event_id)
            for part in self._parts(job):
                self._return(part)
            return

        self._count_send(now, save=False)
        for part in self._parts(job):
            self._conclude(part, result, now, message)
        if result.outcome == "sent":
            self._save_thread(job, message)

    # The two records below only shape later messages. Failing to save them
    # (a full disk) must not stop the events of this pass from being moved,
    # or a restart would send their messages again.

    def _count_send(self, now: float, digest: bool = False, save: bool = True) -> None:
        try:
            self.rate.record_send(now, digest=digest, save=save)
        except OSError as error:
            log.warning(
                "cannot save %s: %s; the rate limit counts this send in memory",
                self.rate.path,
                error.strerror,
            )

    def _save_thread(self, job: Job, message: bytes) -> None:
        try:
            self.threads.record_sent(job.event, message, job.queued_at)
        except OSError as error:
            log.warning(
                "%s: cannot save its thread record: %s; later messages of this "
                "attack start a new thread",
                job.event_id,
                error.strerror,
            )

    def _conclude(
        self,
        job: Job,
        result: transport.Delivery,
        now: float,
        message: bytes | Path,
        level: int = logging.INFO,
    ) -> None:
        claim = job.claim
        attempt = history.attempt(
            now, result, self.settings.email_notifications_password
        )
        if result.outcome == "sent":
            log.log(
                level,
                "sent %s (%s %s) to %s in %.3f s",
                claim.event_id,
                _loggable(job.action),
                job.event.get("ip", "-"),
                ", ".join(self.settings.email_notifications_recipients),
                result.seconds,
            )
            self._finish(claim, lambda: self.spool.finish_sent(claim, message))
            return

        job.history.setdefault("queued_at", job.queued_at.isoformat())
        job.history["attempts"].append(attempt)
        if result.outcome == "permanent":
            self._finish(
                claim, lambda: self._fail(claim, attempt["error"], result, job.history)
            )
            return
        self._defer(job, result, now)

    def _defer(self, job: Job, result: transport.Delivery, now: float) -> None:
        claim = job.claim
        age = now - job.queued_at.timestamp()
        attempts = len(job.history["attempts"])
        if age >= self.settings.max_queue_lifetime:
            reason = (
                f"expired: still failing after {attempts} attempts over "
                f"{age:.0f} s (max_queue_lifetime {self.settings.max_queue_lifetime} s)"
            )
            self._finish(claim, lambda: self._fail(claim, reason, result, job.history))
            return
        delay = history.backoff(
            attempts, self.settings.retry_min_seconds, self.settings.retry_max_seconds
        )
        next_attempt = min(
            now + delay, job.queued_at.timestamp() + self.settings.max_queue_lifetime
        )
        job.history["next_attempt"] = history.iso(next_attempt)
        log.warning(
            "deferred %s after attempt %d: %s; next attempt at %s",
            claim.event_id,
            attempts,
            job.history["attempts"][-1]["error"],
            job.history["next_attempt"],
        )
        self._finish(claim, lambda: self.spool.defer(claim, job.history, next_attempt))

    def _fail(self, claim: Claim, reason: str, result, job_history: dict) -> None:
        text = history.reason_text(
            claim,
            reason,
            result,
            job_history,
            self.clock(),
            self.settings.email_notifications_password,
        )
        log.error("failed %s: %s", claim.event_id, reason.splitlines()[0])
        self.spool.finish_failed(claim, text)

    def _finish(self, claim: Claim, finish: Callable[[], None]) -> None:
        try:
            finish()
        except OSError as error:
            # Typically ENOSPC: the event stays claimed in active/ and the
            # move is retried on the next pass, without sending again.
            log.error(
                "%s stays in active/: cannot move it: %s",
                claim.event_id,
                os.strerror(error.errno or errno.EIO),
            )
            self.unfinished.append(_Unfinished(claim, finish))

    def retry_unfinished(self) -> None:
        pending, self.unfinished = self.unfinished, []
        for item in pending:
            self._finish(item.claim, item.finish)

    def _parts(self, job: Job) -> list[Job]:
        return [job, job.details] if job.details else [job]

    def _return(self, job: Job) -> None:
        for part in self._parts(job):
            if part.claim.source is State.DEFERRED:
                self.spool.release_to_deferred(part.claim)
            else:
                self.spool.requeue(part.claim)

    def release_all(self) -> None:
        """Return held bans to their queue (at shutdown)."""
        for key in list(self.held):
            self._return(self.held.pop(key))

    # Storms

    def storm_pass(self, now: float) -> float | None:
        """Send everything waiting as one digest, at most one per window."""
        due = self.rate.next_digest_time(self.settings.digest_window)
        if (
            now < due
            or self.rate.budget(now, self.settings.max_messages_per_minute) < 1
        ):
            return max(due, self.rate.next_budget_time(now))

        jobs = list(self.held.values())
        self.held.clear()
        for job in list(jobs):
            if job.details is not None:
                jobs.append(job.details)
                job.details = None
        while len(jobs) < DIGEST_MAX_EVENTS and not self.stop_requested:
            limit = min(BATCH * 4, DIGEST_MAX_EVENTS - len(jobs))
            batch = self.claim_due(now, limit)
            if not batch:
                break
            jobs.extend(_slim(job) for job in batch)
        self.rate_limited = False
        if not jobs:
            return self._next_wake(now)
        self._send_digest(jobs, now)
        return now

    def _send_digest(self, jobs: list[Job], now: float) -> None:
        digest_id = "digest-" + events.new_event_id()
        try:
            message = self._render_digest(jobs, digest_id, now)
        except Exception as error:  # noqa: BLE001 - the events must not be stranded
            log.error(
                "cannot render a digest of %d events: %r; failing the events "
                "that break it",
                len(jobs),
                error,
            )
            jobs = self._drop_unrenderable(jobs, now)
            if not jobs:
                return
            try:
                message = self._render_digest(jobs, digest_id, now)
            except Exception as error:  # noqa: BLE001 - as above
                log.error(
                    "cannot render a digest of %d events: %r; they stay queued "
                    "until the next digest window",
                    len(jobs),
                    error,
                )
                for job in jobs:
                    self._return(job)
                # Retrying at once would fail the same way, in a busy loop.
                self.rate.last_digest = now
                return

        result = self._send(message)
        if isinstance(result, TransportUnavailableError):
            log.error("%s; %d events stay queued", result, len(jobs))
            for job in jobs:
                self._return(job)
            return

        self._count_send(self.clock(), digest=True)
        log.info("digest %s with %d events: %s", digest_id, len(jobs), result.outcome)
        first = jobs[0]
        with self.spool.batched_sync():
            self._conclude(first, result, now, message, logging.DEBUG)
            stored = self.spool.path(State.SENT, first.event_id, ".eml")
            carried = stored if stored.exists() else message
            for job in jobs[1:]:
                self._conclude(job, result, now, carried, logging.DEBUG)
        if result.outcome == "sent":
            for job in jobs:
                if job.action in ("ban", "partial_block"):
                    self._save_thread(job, message)

    def _render_digest(self, jobs: list[Job], digest_id: str, now: float) -> bytes:
        items = [(job.event_id, job.event, job.queued_at) for job in jobs]
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        return self.renderer.render_digest(items, digest_id=digest_id, now=moment)

    def _drop_unrenderable(self, jobs: list[Job], now: float) -> list[Job]:
        """Fail the jobs whose digest row cannot be rendered; return the rest."""
        kept = []
        for job in jobs:
            try:
                self._render_digest([job], "digest-check", now)
            except Exception as error:  # noqa: BLE001 - fail this event alone
                reason = f"{job.event_id}: cannot render its digest row: {error!r}"
                self._finish(
                    job.claim,
                    lambda j=job, r=reason: self._fail(j.claim, r, None, j.history),
                )
            else:
                kept.append(job)
        return kept


def _loggable(text: str) -> str:
    """Return event text for a log line: as is if printable, else its repr().

    An action or a counter name is only checked to be a string, so it may
    contain a line break that would otherwise forge a second log line.
    """
    return text if text.isprintable() else repr(text)


def _slim(job: Job) -> Job:
    """Keep only what a digest row shows, so a storm fits in little memory.

    The largest events of a digest are therefore shown with these figures
    only, without their packet dumps.
    """
    event = job.event
    details = event.get("attack_details") or {}
    slim_event = {key: event[key] for key in _DIGEST_EVENT_KEYS if key in event}
    slim_event["attack_details"] = {
        key: details[key] for key in _DIGEST_DETAIL_KEYS if key in details
    }
    return dataclasses.replace(job, event=slim_event, raw=b"")
