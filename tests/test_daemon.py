"""The ``fnm_spool run`` daemon as a real subprocess, against the real msmtp.

Each test starts its own daemons on a spool under tmp_path, talks to them
only through files and signals, and kills on teardown only the processes
it started. Waits are bounded, so a daemon that hangs fails the test.
"""

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from smtpd import NO_TLS, SMTPServer

import pytest

from spool import __version__
from spool import settings as settings_module
from spool.spooldir import Spool, State

ROOT = Path(__file__).resolve().parent.parent
MSMTP = shutil.which("msmtp")
# A pass that only inotify can start must come well within this bound.
WAKE_SECONDS = 5
# With this scan interval, every pass in a test is started by inotify or a
# signal, never by the periodic scan.
NO_SCAN = 3600


def ban(number: int) -> bytes:
    """Return a ban for 203.0.113.N as JSON."""
    return json.dumps(
        {
            "ip": f"203.0.113.{number}",
            "action": "ban",
            "attack_details": {"attack_type": "udp_flood", "total_incoming_pps": 9},
        }
    ).encode()


class RunningDaemon:
    """One ``fnm_spool run`` subprocess whose log (stderr) goes to a file."""

    def __init__(self, config: Path, log_path: Path):
        self.log_path = log_path
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "fnm_spool.py"), "-c", str(config), "run"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10) -> None:
        """Wait until the log contains ``text``; fail with the log otherwise."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"daemon exited ({self.process.returncode}) before logging "
                    f"{text!r}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {text!r} in the log within {timeout} s:\n{self.log()}"
                )
            time.sleep(0.05)

    def send_signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float = 15) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Stop the daemon if it still runs: SIGTERM, then SIGKILL."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def start_daemon(tmp_path):
    """Return a function that starts a daemon; each is stopped at teardown."""
    started: list[RunningDaemon] = []

    def start(config: Path) -> RunningDaemon:
        daemon = RunningDaemon(config, tmp_path / f"daemon-{len(started)}.log")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def spool_of(config: Path) -> Spool:
    return Spool(settings_module.load(config, required=True).spool_dir)


def fnm_spool(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "fnm_spool.py"), "-c", str(config), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )


def wait_until(condition: Callable[[], bool], description: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{description}: not within {timeout} s")
        time.sleep(0.05)


def sent_count(spool: Spool) -> int:
    return spool.count(State.SENT)


def slow_msmtp(tmp_path: Path, seconds: float) -> tuple[Path, Path]:
    """Write an msmtp wrapper that marks its start, sleeps, then runs msmtp.

    Returns the wrapper and the marker file that it creates when it starts.
    """
    marker = tmp_path / "msmtp-started"
    wrapper = tmp_path / "slow-msmtp"
    wrapper.write_text(
        f"#!/bin/sh\ntouch '{marker}'\nsleep {seconds}\nexec '{MSMTP}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper, marker


def gated_msmtp(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Write an msmtp wrapper that marks its start and waits for a gate file.

    Returns the wrapper, the marker file it creates when it starts and the
    gate file that lets it run msmtp. It waits 30 s at most.
    """
    marker = tmp_path / "msmtp-started"
    gate = tmp_path / "msmtp-gate"
    wrapper = tmp_path / "gated-msmtp"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"touch '{marker}'\n"
        "tries=0\n"
        f"while [ ! -e '{gate}' ] && [ $tries -lt 600 ]; do\n"
        "    sleep 0.05\n"
        "    tries=$((tries + 1))\n"
        "done\n"
        f"exec '{MSMTP}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper, marker, gate


def test_events_queued_before_start_sent(make_settings_file, smtp_server, start_daemon):
    config = make_settings_file(scan_interval=NO_SCAN)
    spool = spool_of(config)
    for number in (1, 2, 3):
        spool.enqueue(ban(number))

    start_daemon(config)

    assert len(smtp_server.wait_for(3)) == 3
    wait_until(lambda: sent_count(spool) == 3, "3 events in sent/", 10)
    assert spool.count(State.INCOMING) == 0


def test_start_logged_with_version_pid_spool(
    make_settings_file, smtp_server, start_daemon
):
    config = make_settings_file()
    daemon = start_daemon(config)

    daemon.wait_for_log(
        f"fnm_spool {__version__} started, PID {daemon.pid}, "
        f"spool {spool_of(config).root}"
    )


def test_enqueue_while_running_wakes_daemon(
    make_settings_file, smtp_server, start_daemon
):
    config = make_settings_file(scan_interval=NO_SCAN)
    spool = spool_of(config)
    spool.enqueue(ban(1))
    daemon = start_daemon(config)
    smtp_server.wait_for(1)
    wait_until(lambda: sent_count(spool) == 1, "the first event in sent/", 10)
    # Let the daemon go back to waiting for inotify.
    time.sleep(0.3)

    spool.enqueue(ban(2))

    messages = smtp_server.wait_for(2, timeout=WAKE_SECONDS)
    assert messages[1].parsed["Subject"] == "FastNetMon blocked host 203.0.113.2"
    assert daemon.process.poll() is None


@pytest.mark.parametrize("how", ["removed", "moved"])
def test_recreated_incoming_still_watched(
    make_settings_file, smtp_server, start_daemon, how
):
    config = make_settings_file(scan_interval=NO_SCAN)
    spool = spool_of(config)
    incoming = spool.dir(State.INCOMING)
    spool.enqueue(ban(1))
    daemon = start_daemon(config)
    smtp_server.wait_for(1)
    wait_until(lambda: sent_count(spool) == 1, "the first event in sent/", 10)

    if how == "removed":
        shutil.rmtree(incoming)
    else:
        incoming.rename(spool.root / "incoming.old")
    incoming.mkdir(exist_ok=True)
    daemon.wait_for_log("incoming/ was removed or moved; recreating and rewatching")
    spool.enqueue(ban(2))

    assert len(smtp_server.wait_for(2, timeout=WAKE_SECONDS)) == 2
    assert daemon.process.poll() is None


def test_incoming_removed_during_delivery(
    make_settings_file, smtp_server, start_daemon, tmp_path
):
    """incoming/ vanishes while msmtp runs; the daemon recreates it and goes on."""
    wrapper, marker = slow_msmtp(tmp_path, 1)
    config = make_settings_file(scan_interval=NO_SCAN, msmtp_path=wrapper)
    spool = spool_of(config)
    spool.enqueue(ban(1))
    daemon = start_daemon(config)
    wait_until(marker.exists, "msmtp started", 10)

    shutil.rmtree(spool.dir(State.INCOMING))

    daemon.wait_for_log("incoming/ was removed or moved; recreating and rewatching")
    wait_until(spool.dir(State.INCOMING).is_dir, "incoming/ recreated", 10)
    spool.enqueue(ban(2))
    assert len(smtp_server.wait_for(2, timeout=WAKE_SECONDS + 2)) == 2
    assert daemon.process.poll() is None


def test_cp_style_writer_sent_whole(make_settings_file, smtp_server, start_daemon):
    """A writer that creates its file in incoming/ and writes it in two parts.

    Another event arrives during the pause, so the daemon makes a pass while
    the file is half written. The file must wait for the grace, then be sent
    whole, once.
    """
    config = make_settings_file(scan_interval=NO_SCAN, incoming_grace_seconds=3)
    spool = spool_of(config)
    daemon = start_daemon(config)
    daemon.wait_for_log("started")
    whole = json.dumps(
        {"ip": "203.0.113.9", "action": "ban", "note": "the second part"}
    ).encode()
    half = len(whole) // 2

    with open(spool.dir(State.INCOMING) / "copied.json", "wb") as writer:
        writer.write(whole[:half])
        writer.flush()
        spool.enqueue(ban(1))
        smtp_server.wait_for(1, timeout=WAKE_SECONDS)
        time.sleep(0.5)
        writer.write(whole[half:])

    messages = smtp_server.wait_for(2, timeout=WAKE_SECONDS + 3)
    copied = [m for m in messages if m.parsed["Subject"].endswith("203.0.113.9")]
    assert len(copied) == 1
    assert "the second part" in copied[0].parsed.get_body().get_content()
    assert spool.count(State.FAILED) == 0
    time.sleep(0.5)
    assert len(smtp_server.messages) == 2


def test_sigterm_finishes_message_in_flight(
    make_settings_file, smtp_server, start_daemon, tmp_path
):
    wrapper, marker = slow_msmtp(tmp_path, 2)
    config = make_settings_file(msmtp_path=wrapper)
    spool = spool_of(config)
    event_id = spool.enqueue(ban(1))
    daemon = start_daemon(config)
    wait_until(marker.exists, "msmtp started", 10)

    daemon.send_signal(signal.SIGTERM)

    assert daemon.wait() == 0
    assert len(smtp_server.messages) == 1
    assert sorted(spool.names(State.SENT)) == [f"{event_id}.json"]
    assert spool.count(State.ACTIVE) == 0
    assert (
        f"fnm_spool {__version__} stopped (SIGTERM), PID {daemon.pid}" in daemon.log()
    )


def test_sighup_rereads_settings(make_settings_file, smtp_server, start_daemon):
    config = make_settings_file(scan_interval=NO_SCAN)
    spool = spool_of(config)
    spool.enqueue(ban(1))
    daemon = start_daemon(config)
    smtp_server.wait_for(1)
    changed = fnm_spool(
        config, "set", "main", "email_subject_blackhole_block", "Reloaded {{ ip }}"
    )
    assert changed.returncode == 0, changed.stderr

    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log("SIGHUP: settings reloaded")
    spool.enqueue(ban(2))

    messages = smtp_server.wait_for(2, timeout=WAKE_SECONDS)
    assert messages[0].parsed["Subject"] == "FastNetMon blocked host 203.0.113.1"
    assert messages[1].parsed["Subject"] == "Reloaded 203.0.113.2"


def test_sighup_keeps_settings_when_invalid(
    make_settings_file, smtp_server, start_daemon
):
    config = make_settings_file(scan_interval=NO_SCAN)
    spool = spool_of(config)
    daemon = start_daemon(config)
    daemon.wait_for_log("started")
    with config.open("a", encoding="utf-8") as stream:
        stream.write("email_subject_blackhole_block = Ban {{ ip\n")

    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log("SIGHUP: settings not reloaded, keeping the old ones")
    spool.enqueue(ban(1))

    (message,) = smtp_server.wait_for(1, timeout=WAKE_SECONDS)
    assert message.parsed["Subject"] == "FastNetMon blocked host 203.0.113.1"
    assert "email_subject_blackhole_block" in daemon.log()


def test_sighup_keeps_spool_dir(
    make_settings_file, smtp_server, start_daemon, tmp_path
):
    """A new spool_dir waits for a restart, even one that cannot be created."""
    config = make_settings_file(scan_interval=NO_SCAN)
    spool = spool_of(config)
    daemon = start_daemon(config)
    daemon.wait_for_log("started")
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file where a directory would have to be\n")
    moved = fnm_spool(config, "set", "main", "spool_dir", str(blocker / "spool"))
    assert moved.returncode == 0, moved.stderr

    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log(f"SIGHUP: spool_dir {blocker / 'spool'} takes effect when")
    daemon.wait_for_log("SIGHUP: settings reloaded")
    spool.enqueue(ban(1))

    assert len(smtp_server.wait_for(1, timeout=WAKE_SECONDS)) == 1
    assert daemon.process.poll() is None


def test_second_daemon_names_first_pid(make_settings_file, smtp_server, start_daemon):
    config = make_settings_file()
    first = start_daemon(config)
    first.wait_for_log("started")

    second = start_daemon(config)

    assert second.wait(timeout=15) == 75
    assert f"(PID {first.pid}) already processes" in second.log()
    assert first.process.poll() is None


def test_missing_msmtp_reported_once(make_settings_file, smtp_server, start_daemon):
    missing = "/nonexistent/bin/msmtp"
    config = make_settings_file(scan_interval=NO_SCAN, msmtp_path=missing)
    spool = spool_of(config)
    spool.enqueue(ban(1))
    daemon = start_daemon(config)
    daemon.wait_for_log(f"msmtp not found or not executable: {missing!r}")

    spool.enqueue(ban(2))
    # The new event wakes the daemon for a pass that must not repeat the error.
    time.sleep(1)

    assert daemon.log().count("msmtp not found") == 1
    assert spool.count(State.INCOMING) == 2
    assert smtp_server.messages == []

    fixed = fnm_spool(config, "set", "main", "msmtp_path", MSMTP)
    assert fixed.returncode == 0, fixed.stderr
    daemon.send_signal(signal.SIGHUP)

    assert len(smtp_server.wait_for(2, timeout=WAKE_SECONDS)) == 2
    daemon.wait_for_log("msmtp is usable again; resuming delivery")
    assert daemon.log().count("msmtp not found") == 1


def test_unreadable_msmtp_config_reported_once(
    make_settings_file, smtp_server, start_daemon, tmp_path
):
    """msmtp_config becomes unreadable while the daemon runs.

    File modes do not stop root, who runs this suite. A regular file takes
    the place of msmtp_config's directory instead, and reading msmtp_config
    fails with ENOTDIR. SIGHUP after the file is removed writes it anew.
    """
    config = make_settings_file(scan_interval=NO_SCAN)
    msmtp_dir = Path(settings_module.load(config).msmtp_config).parent
    spool = spool_of(config)
    spool.enqueue(ban(1))
    daemon = start_daemon(config)
    smtp_server.wait_for(1)
    wait_until(lambda: sent_count(spool) == 1, "the first event in sent/", 10)

    shutil.rmtree(msmtp_dir)
    msmtp_dir.write_text("a file where msmtp_config's directory was\n")
    spool.enqueue(ban(2))
    daemon.wait_for_log("cannot read msmtp_config")
    spool.enqueue(ban(3))
    time.sleep(1)

    assert daemon.log().count("cannot read msmtp_config") == 1
    assert spool.count(State.INCOMING) == 2
    assert len(smtp_server.messages) == 1

    msmtp_dir.unlink()
    daemon.send_signal(signal.SIGHUP)

    assert len(smtp_server.wait_for(3, timeout=WAKE_SECONDS)) == 3
    daemon.wait_for_log("msmtp is usable again; resuming delivery")


def test_msmtp_config_unusable_at_start(make_settings_file, smtp_server, start_daemon):
    """The daemon starts although msmtp_config cannot be written or read.

    As in the test above, a regular file takes the place of its directory.
    """
    config = make_settings_file(scan_interval=NO_SCAN)
    msmtp_dir = Path(settings_module.load(config).msmtp_config).parent
    msmtp_dir.write_text("a file where msmtp_config's directory should be\n")
    spool = spool_of(config)
    spool.enqueue(ban(1))

    daemon = start_daemon(config)
    daemon.wait_for_log("cannot read msmtp_config")
    spool.enqueue(ban(2))
    time.sleep(1)

    assert daemon.log().count("cannot read msmtp_config") == 1
    assert spool.count(State.INCOMING) == 2
    assert smtp_server.messages == []

    msmtp_dir.unlink()
    daemon.send_signal(signal.SIGHUP)

    assert len(smtp_server.wait_for(2, timeout=WAKE_SECONDS)) == 2
    daemon.wait_for_log("msmtp is usable again; resuming delivery")


def test_inotify_overflow_rescans(
    make_settings_file, smtp_server, start_daemon, tmp_path
):
    """A real IN_Q_OVERFLOW, without changing any sysctl.

    While the daemon waits for msmtp, held back by a gate file, it reads no
    inotify events. More writes into incoming/ than
    fs.inotify.max_queued_events (read, not changed) then overflow its
    queue. The writes use names that the processor ignores. The event
    enqueued last loses its own wake-up in the overflow and must still be
    sent, found by the rescan.
    """
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"fs.inotify.max_queued_events is {limit}, too many to flood")
    wrapper, marker, gate = gated_msmtp(tmp_path)
    config = make_settings_file(msmtp_path=wrapper, scan_interval=NO_SCAN)
    spool = spool_of(config)
    spool.enqueue(ban(1))
    daemon = start_daemon(config)
    wait_until(marker.exists, "msmtp started", 10)

    incoming = spool.dir(State.INCOMING)
    for number in range(limit + 100):
        (incoming / f".flood-{number}").touch()
    spool.enqueue(ban(2))
    gate.touch()

    daemon.wait_for_log("inotify queue overflowed; rescanning incoming/", 20)
    assert len(smtp_server.wait_for(2, timeout=15)) == 2
    assert daemon.process.poll() is None


def test_burst_of_2000_events_all_sent(make_settings_file, start_daemon, tmp_path):
    """2000 events dropped at once are all sent, one message each.

    The digest and rate limits are set high, so each event gets its own
    message, and the SMTP server runs without TLS to keep the test short.
    This covers a burst of wake-ups. The overflow itself is covered by
    test_inotify_overflow_rescans.
    """
    count = 2000
    with SMTPServer(tls=NO_TLS, auth=False) as server:
        config = make_settings_file(
            email_notifications_host=server.host,
            email_notifications_port=server.port,
            email_notifications_tls="off",
            email_notifications_auth="off",
            digest_threshold=100_000,
            max_messages_per_minute=100_000,
            max_parallel=8,
        )
        spool = spool_of(config)
        daemon = start_daemon(config)
        daemon.wait_for_log("started")

        for number in range(count):
            spool.enqueue(ban(number % 250 + 1))

        assert len(server.wait_for(count, timeout=300)) == count
        wait_until(lambda: sent_count(spool) == count, "every event in sent/", 30)
        assert spool.count(State.FAILED) == 0
        assert "digest" not in daemon.log()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait() == 0
