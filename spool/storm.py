"""Alert storms: when to send one digest instead of one message per event.

During a carpet-bombing attack FastNetMon bans hundreds of hosts a minute.
Above ``digest_threshold`` waiting or recently arrived events, or once
``max_messages_per_minute`` is spent, events wait and go out together, at
most one digest per ``digest_window``. The state is kept in ``rate.json`` in
the spool root so that cron runs and the daemon share one budget.
"""

import collections
import contextlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RATE_PERIOD = 60.0


class RateState:
    """Send times of the last minute, arrivals and the last digest time.

    Several processors may update the file at once; the last writer wins,
    so the budget can be overspent by the messages of one concurrent pass.
    """

    def __init__(self, path: Path):
        self.path = path
        self.sends: collections.deque[float] = collections.deque()
        self.arrivals: collections.deque[float] = collections.deque()
        self.last_digest: float | None = None
        self.load()

    def load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as stream:
                data = json.load(stream)
            self.sends = collections.deque(sorted(float(t) for t in data["sends"]))
            last = data.get("last_digest")
            self.last_digest = float(last) if last is not None else None
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning(
                "%s: unreadable rate state (%s); starting anew", self.path, error
            )

    def save(self) -> None:
        while self.sends and self.sends[0] <= self.sends[-1] - RATE_PERIOD:
            self.sends.popleft()
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = {"sends": list(self.sends), "last_digest": self.last_digest}
        try:
            with open(temporary, "w", encoding="utf-8") as stream:
                json.dump(data, stream)
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def record_send(self, now: float, digest: bool = False, save: bool = True) -> None:
        """Count one message; with ``save`` false the caller saves later."""
        self.sends.append(now)
        if digest:
            self.last_digest = now
        if save:
            self.save()

    def record_arrivals(self, now: float, count: int) -> None:
        self.arrivals.extend([now] * count)

    def budget(self, now: float, max_per_minute: int) -> int:
        """Return how many messages may still go out in the current minute."""
        while self.sends and self.sends[0] <= now - RATE_PERIOD:
            self.sends.popleft()
        return max(0, max_per_minute - len(self.sends))

    def recent_arrivals(self, now: float, window: float) -> int:
        while self.arrivals and self.arrivals[0] <= now - window:
            self.arrivals.popleft()
        return len(self.arrivals)

    def next_digest_time(self, window: float) -> float:
        return 0.0 if self.last_digest is None else self.last_digest + window

    def next_budget_time(self, now: float) -> float:
        return self.sends[0] + RATE_PERIOD if self.sends else now


def in_storm(waiting: int, arrivals: int, threshold: int) -> bool:
    """Tell whether events should wait for a digest.

    ``waiting`` counts events queued now and ``arrivals`` those claimed in
    the last digest window.
    """
    return waiting > threshold or arrivals > threshold
