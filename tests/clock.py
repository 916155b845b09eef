"""A clock that tests move by hand, passed into the processor."""

import datetime as dt
import time


class FakeClock:
    """Epoch seconds that start at the real time and move only on advance()."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def datetime(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now, dt.UTC)
