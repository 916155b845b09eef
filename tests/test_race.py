"""Concurrent processors on one spool: a daemon and cron runs send each event once."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_crash import (
    ONE_MESSAGE_PER_EVENT,
    ROOT,
    copies_by_event,
    drained,
    fnm_spool,
    settled_messages,
    start_daemon,
    start_writer,
    states_of,
    stored_message_id,
    wait_until,
)

from spool import settings as settings_module
from spool.errors import EX_TEMPFAIL
from spool.spooldir import LOCK_BUCKETS, Spool, State

RACE_EVENTS = 300
ONCE_RUNNERS = 3
DAEMON_LOCK_FILES = {"daemon.lock", "daemon.pid"}
CLAIM_LOCK_FILES = {f"claim-{bucket:02d}.lock" for bucket in range(LOCK_BUCKETS)}


@pytest.fixture
def processes():
    """A list of started processes; each one still running is killed at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def start_once(config: Path, log_path: Path) -> subprocess.Popen:
    """Start ``fnm_spool run --once`` as cron would, its log appended to a file."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "fnm_spool.py"), "-c", str(config)]
            + ["run", "--once"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def daemon_pid(spool: Spool) -> int | None:
    try:
        return int((spool.root / "locks" / "daemon.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def count_sent(log_path: Path) -> int:
    """Count the "sent" lines in a processor's log."""
    return sum(" INFO sent " in line for line in log_path.read_text().splitlines())


def start_running_daemon(config: Path, spool: Spool, log_path: Path):
    daemon = start_daemon(config, log_path)
    wait_until(lambda: daemon_pid(spool) == daemon.pid, 15, "the daemon's PID file")
    return daemon


def test_daemon_and_cron_runs_send_once(
    make_settings_file, smtp_server, tmp_path, processes
):
    # The daemon looks for crashed claims every second while run --once
    # processes claim events. Neither may take an event the other claimed.
    config = make_settings_file(scan_interval=1, **ONE_MESSAGE_PER_EVENT)
    spool = Spool(settings_module.load(config, required=True).spool_dir)
    daemon = start_running_daemon(config, spool, tmp_path / "daemon.log")
    processes.append(daemon)
    writer, ids_file = start_writer(tmp_path, spool, RACE_EVENTS, 3.0)
    processes.append(writer)

    runners: list[subprocess.Popen] = []
    once_runs = 0
    lock_files: set[str] = set()
    incoming_lock_files: set[str] = set()
    deadline = time.monotonic() + 90
    while writer.poll() is None or not drained(spool, RACE_EVENTS):
        assert time.monotonic() < deadline, "timed out waiting for a drained spool"
        for runner in [runner for runner in runners if runner.poll() is not None]:
            assert runner.returncode == 0, f"run --once exited {runner.returncode}"
            runners.remove(runner)
        while len(runners) < ONCE_RUNNERS:
            runner = start_once(config, tmp_path / "once.log")
            processes.append(runner)
            runners.append(runner)
            once_runs += 1
        lock_files |= set(os.listdir(spool.root / "locks"))
        incoming_lock_files |= {
            name
            for name in os.listdir(spool.dir(State.INCOMING))
            if name.endswith(".lock")
        }
        time.sleep(0.05)
    for runner in runners:
        assert runner.wait(timeout=30) == 0
    assert writer.returncode == 0
    messages = settled_messages(smtp_server)

    event_ids = ids_file.read_text().split()
    copies = copies_by_event(messages)
    duplicates = sum(len(received) - 1 for received in copies.values())
    figures = {
        "events": len(event_ids),
        "once_runs": once_runs,
        "sent_by_daemon": count_sent(tmp_path / "daemon.log"),
        "sent_by_once_runs": count_sent(tmp_path / "once.log"),
        "messages": len(messages),
        "duplicates": duplicates,
    }
    print("daemon and cron runs:", json.dumps(figures))
    (tmp_path / "race.json").write_text(json.dumps(figures, indent=1))

    assert len(event_ids) == RACE_EVENTS
    assert set(copies) == set(event_ids)
    assert duplicates == 0
    for event_id in event_ids:
        assert states_of(spool, event_id) == ["sent"]
        assert str(copies[event_id][0].parsed["Message-ID"]) == stored_message_id(
            spool, event_id
        )
    assert lock_files <= CLAIM_LOCK_FILES | DAEMON_LOCK_FILES
    assert len(lock_files) <= LOCK_BUCKETS + len(DAEMON_LOCK_FILES)
    assert incoming_lock_files == set()
    # The daemon and the run --once processes must both have sent events.
    assert figures["sent_by_daemon"] > 0
    assert figures["sent_by_once_runs"] > 0
    assert figures["sent_by_daemon"] + figures["sent_by_once_runs"] == RACE_EVENTS

    daemon.terminate()
    assert daemon.wait(timeout=15) == 0


def test_second_daemon_names_first(make_settings_file, tmp_path, processes):
    config = make_settings_file(**ONE_MESSAGE_PER_EVENT)
    spool = Spool(settings_module.load(config, required=True).spool_dir)
    daemon = start_running_daemon(config, spool, tmp_path / "daemon.log")
    processes.append(daemon)

    started = time.monotonic()
    second = fnm_spool(config, "run", timeout=30)

    assert time.monotonic() - started < 10
    assert second.returncode == EX_TEMPFAIL
    assert f"PID {daemon.pid}" in second.stderr.decode()
    assert daemon.poll() is None
    assert daemon_pid(spool) == daemon.pid
    daemon.terminate()
    assert daemon.wait(timeout=15) == 0
