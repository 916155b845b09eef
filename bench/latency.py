"""The daemon under load: hand-off latency, and an alert storm.

Both measurements run ``fnm_spool run`` as a daemon and drop events into its
spool with ``Spool.enqueue``, the call that ``fnm_spool notify`` makes.
"""

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from harness import (
    MSMTP,
    NO_DIGEST,
    TimedServer,
    ban_event,
    count_files,
    fnm_spool,
    percentile,
    shell_command,
    spool_counts,
    wait_until,
    write_script,
    write_settings,
)

from spool.spooldir import Spool

# msmtp_path for the latency runs: it notes the time it was started and the
# event of the message, then delivers the message with the real msmtp.
HANDOFF_SCRIPT = """#!/bin/bash
started=$EPOCHREALTIME
message=$(mktemp)
trap 'rm -f "$message"' EXIT
cat >"$message"
event=$(sed -n -e '/^$/q' -e 's/^X-FastNetMon-Event: //p' "$message")
echo "$started $event" >>{log}
{msmtp} "$@" <"$message"
"""


class Daemon:
    """``fnm_spool run`` in the background, stopped with SIGTERM on exit."""

    def __init__(self, config: Path, root: Path):
        self.argv = fnm_spool(config, "run")
        self.command = shell_command(self.argv)
        self.log = root / "log" / "fnm_spool.log"
        self.output = root / "daemon.out"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Daemon":
        with open(self.output, "ab") as output:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_until(self._started, timeout=30):
            self.__exit__()
            raise RuntimeError(f"the daemon did not start; see {self.output}")
        return self

    def _started(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the daemon exited early; see {self.output}")
        return self.log.exists() and " started, PID " in self.log.read_text()

    def __exit__(self, *exc_info) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def measure_latency(
    root: Path, server: TimedServer, singles: int, interval: float, burst: int
) -> dict:
    """Drop ``singles`` events one per ``interval`` seconds, then ``burst`` at once.

    Latency is measured from the start of ``Spool.enqueue`` to the moment
    the msmtp_path program starts (hand-off) and to the end of DATA at the
    server (arrival), so it includes the writer's fsyncs. The hand-off is
    also measured from the return of ``Spool.enqueue``; the daemon may start
    before that, because inotify reports the rename, which precedes the
    directory fsync. One event before the measured ones compiles the
    templates in the daemon and is not counted.
    """
    handoff_log = root / "handoff.log"
    script = HANDOFF_SCRIPT.format(log=handoff_log, msmtp=MSMTP)
    wrapper = write_script(root / "bin" / "msmtp-handoff", script)
    config = write_settings(root, server, msmtp_path=wrapper, **NO_DIGEST)
    spool = Spool(root / "spool")
    server.clear()

    with Daemon(config, root) as daemon:
        spool.enqueue(ban_event(0))
        server.wait_for(1, timeout=30)
        single_drops = _drop_paced(spool, range(1, singles + 1), interval)
        server.wait_for(1 + singles, timeout=60)
        events = [
            ban_event(number) for number in range(singles + 1, singles + burst + 1)
        ]
        burst_drops = [_drop(spool, raw) for raw in events]
        server.wait_for(1 + singles + burst, timeout=120)

    handoffs = _read_handoffs(handoff_log)
    arrivals = _arrivals_by_event(server)
    return {
        "command": daemon.command,
        "msmtp_path": str(wrapper),
        "msmtp_path_script": script,
        "singles": _latencies(single_drops, handoffs, arrivals),
        "singles_interval_seconds": interval,
        "burst": _latencies(burst_drops, handoffs, arrivals),
        "spool_after": spool_counts(root / "spool"),
    }


def _drop(spool: Spool, raw: bytes) -> tuple[str, float, float]:
    started = time.time()
    event_id = spool.enqueue(raw)
    return event_id, started, time.time()


def _drop_paced(spool: Spool, numbers: range, interval: float) -> list:
    drops = []
    start = time.monotonic()
    for index, number in enumerate(numbers):
        raw = ban_event(number)
        delay = start + index * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        drops.append(_drop(spool, raw))
    return drops


def _read_handoffs(path: Path) -> dict[str, float]:
    handoffs = {}
    for line in path.read_text().splitlines():
        stamp, _, event_id = line.partition(" ")
        handoffs[event_id] = float(stamp.replace(",", "."))
    return handoffs


def _arrivals_by_event(server: TimedServer) -> dict[str, float]:
    arrivals = {}
    for arrived, message in server.arrivals:
        event_id = message.parsed["X-FastNetMon-Event"]
        if event_id is not None:
            arrivals[str(event_id)] = arrived
    return arrivals


def _latencies(drops: list, handoffs: dict, arrivals: dict) -> dict:
    handoff_ms = [
        (handoffs[event_id] - started) * 1000
        for event_id, started, _ in drops
        if event_id in handoffs
    ]
    arrival_ms = [
        (arrivals[event_id] - started) * 1000
        for event_id, started, _ in drops
        if event_id in arrivals
    ]
    after_enqueue_ms = [
        (handoffs[event_id] - ended) * 1000
        for event_id, _, ended in drops
        if event_id in handoffs
    ]
    enqueue_ms = [(ended - started) * 1000 for _, started, ended in drops]
    last_arrival = max(arrivals.get(event_id, 0.0) for event_id, _, _ in drops)
    return {
        "events": len(drops),
        "handed_off": len(handoff_ms),
        "arrived": len(arrival_ms),
        "handoff_ms": _summary(handoff_ms),
        "arrival_ms": _summary(arrival_ms),
        "handoff_after_enqueue_returned_ms": _summary(after_enqueue_ms),
        "enqueue_ms_p50": round(percentile(enqueue_ms, 0.5), 2),
        "last_arrival_after_first_drop_seconds": round(last_arrival - drops[0][1], 3),
    }


def _summary(values: list[float]) -> dict:
    if not values:
        return {}
    return {
        name: round(percentile(values, fraction), 2)
        for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1))
    }


def measure_storm(root: Path, server: TimedServer, count: int, spread: float) -> dict:
    """Drop ``count`` bans within ``spread`` seconds into a daemon with default
    storm settings, and wait until every event is in ``sent/``.

    The settings leave digest_threshold, digest_window, group_wait and
    max_messages_per_minute at their defaults.
    """
    config = write_settings(root, server)
    spool = Spool(root / "spool")
    events = [ban_event(number) for number in range(count)]
    sent = root / "spool" / "sent"
    window = 60.0
    server.clear()

    with Daemon(config, root) as daemon:
        start = time.monotonic()
        started = time.time()
        for index, raw in enumerate(events):
            delay = start + index * spread / count - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            spool.enqueue(raw)
        dropped_seconds = time.time() - started
        all_sent = wait_until(
            lambda: count_files(sent) >= count, timeout=4 * window, interval=0.5
        )
        finished = time.time() - started

    messages = _storm_messages(server, sent, started)
    times = [message["arrival_seconds"] for message in messages]
    windows = Counter(int((t - times[0]) // window) for t in times) if times else {}
    return {
        "command": daemon.command,
        "events": count,
        "dropped_in_seconds": round(dropped_seconds, 2),
        "all_sent": all_sent,
        "all_sent_after_seconds": round(finished, 1),
        "spool_after": spool_counts(root / "spool"),
        "messages": messages,
        "messages_per_window": [windows[index] for index in sorted(windows)],
        "max_messages_in_any_window": _max_in_window(times, window),
        "digest_window_seconds": window,
    }


def _storm_messages(server: TimedServer, sent: Path, started: float) -> list[dict]:
    """List the messages received: arrival time, kind and number of events.

    A digest is stored once and hard-linked beside each of its events in
    ``sent/``, so the events of a message are the links to its inode.
    """
    links: dict[int, list[Path]] = {}
    for path in sent.glob("*.eml"):
        links.setdefault(path.stat().st_ino, []).append(path)
    events_by_message_id = {
        _message_id(paths[0]): len(paths) for paths in links.values()
    }

    messages = []
    for arrived, message in server.arrivals:
        message_id = str(message.parsed["Message-ID"]).strip()
        kind = "digest" if message.parsed["X-FastNetMon-Digest"] else "single"
        messages.append(
            {
                "arrival_seconds": round(arrived - started, 3),
                "kind": kind,
                "events": events_by_message_id.get(message_id, 0),
            }
        )
    return messages


def _message_id(path: Path) -> str:
    with open(path, "rb") as stream:
        headers = stream.read(8192).decode("utf-8", "replace").split("\n\n", 1)[0]
    for line in headers.splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "message-id":
            return value.strip()
    return ""


def _max_in_window(times: list[float], window: float) -> int:
    """Return the most messages that arrived within any ``window`` seconds."""
    max_count = 0
    for index, first in enumerate(times):
        inside = sum(1 for later in times[index:] if later < first + window)
        max_count = max(max_count, inside)
    return max_count
