"""Live tests against the real FastNetMon 1.2.4 from Debian, on loopback.

FastNetMon collects NetFlow v5 on 127.0.0.1 and watches 203.0.113.0/24 with a
threshold of 1,000 pps and a ban time of 20 s. A flood of 5,000 pps of UDP
to 203.0.113.10, described in one datagram per second, makes it call its
notify script three times: ban, attack_details and unban. Each test takes
about 30 s and prints the times it measured.

Run with ``python -m pytest -m live tests/test_live_fastnetmon.py -s``. The
tests of the NetFlow encoder and the FastNetMon settings are not marked live
and need no FastNetMon process.
"""

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastnetmon_live import (
    FLOOD_PORTS,
    FLOOD_TARGET,
    SHIPPED_SETTINGS,
    FastNetMonProcess,
    FlowRecord,
    background_flood,
    build_netflow_v5,
    ensure_fastnetmon_installed,
    fastnetmon_overrides,
    flood_records,
    start_fastnetmon,
    write_fastnetmon_settings,
)

FNM_SPOOL = Path(sys.executable).parent / "fnm_spool"

# FastNetMon calls attack_details once 20 flow records of the host arrived
# after the ban, so the flood must outlast the ban. It must also end well
# before the ban time is over, so that the unban comes at the first check.
FLOOD_SECONDS = 8
THRESHOLD_PPS = 1000
FLOOD_PPS = 5000
BAN_TIME = 20
# ban_details_records_count in the shipped /etc/fastnetmon.conf.
DETAILS_RECORDS = 20

# Upper bounds of each wait, in seconds, together under two minutes. The
# unban must come within UNBAN_TIMEOUT of the flood's start. FastNetMon 1.2.4
# checks for unbans every ban_time / 2 seconds counted from its own start, so
# the unban comes 20 to 30 s after the ban.
BAN_TIMEOUT = 15
DETAILS_TIMEOUT = 10
UNBAN_TIMEOUT = 45
MAIL_TIMEOUT = 30
POLL_INTERVAL = 0.1
DAEMON_LOG = "fnm_spool-run.log"

# Lines of FastNetMon 1.2.4's log at each call of the notify script.
CALL_LOG_LINES = {
    "ban": f"Call script for ban client: {FLOOD_TARGET}",
    "attack_details": (
        f"Call script for notify about attack details for: {FLOOD_TARGET}"
    ),
    "unban": f"Call script for unban client: {FLOOD_TARGET}",
}
# The pps argument of the ban call, as FastNetMon logs it.
BAN_POWER_LINE = re.compile(
    rf"Attack with direction: (\w+) IP: {re.escape(FLOOD_TARGET)} Power: (\d+)$",
    re.MULTILINE,
)
# FastNetMon logs the wait status of each ban and attack_details call, so 256
# is exit status 1. It logs nothing for unban calls.
NOTIFY_STATUS_LINE = re.compile(r"Subprocess exit code: (\d+)$", re.MULTILINE)
# A line of the packet dump that only the attack_details report contains,
# for example "2026-12-04 14:59:00.114954948 198.51.100.1:6690 >
# 203.0.113.10:11211 protocol: udp frag: 0 ...".
PORTS_PATTERN = "|".join(str(port) for port in FLOOD_PORTS)
PACKET_DUMP_LINE = re.compile(
    rf"198\.51\.100\.[1-5]:\d+ > {re.escape(FLOOD_TARGET)}:({PORTS_PATTERN})"
    r" protocol: udp"
)

CAPTURE_SCRIPT = """\
#!/bin/sh
# Record one FastNetMon notify call: IP DIRECTION PPS ACTION.
name={calls}/$(date +%s.%N)-$$-$4
case $4 in
ban | attack_details) cat >"$name.stdin" ;;
esac
printf '%s\\0' "$@" >"$name.argv.tmp"
mv "$name.argv.tmp" "$name.argv"
"""


class Timeline:
    """Seconds since the flood started at which each thing was first seen.

    Create it just before the flood starts.
    """

    def __init__(self) -> None:
        self.origin = time.monotonic()
        self.seen: dict[str, float] = {}

    def mark(self, name: str, when: float | None = None) -> None:
        when = time.monotonic() if when is None else when
        self.seen.setdefault(name, round(when - self.origin, 2))

    def remaining(self, until: float) -> float:
        """Return the seconds left until ``until`` seconds after the start."""
        return max(self.origin + until - time.monotonic(), 0)

    def report(self, path: Path) -> None:
        """Print the times and write them to ``path`` as JSON."""
        text = json.dumps(self.seen, indent=2)
        path.write_text(text + "\n")
        print(f"\nFastNetMon timings, seconds since the flood started:\n{text}")


def wait_until(
    condition: Callable[[], object],
    timeout: float,
    failure: str,
    context: Callable[[], str],
):
    """Poll ``condition`` until it returns a true value, and return that value.

    Raises AssertionError with ``failure`` and ``context()`` when ``timeout``
    seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{failure} within {timeout} s\n{context()}")
        time.sleep(POLL_INTERVAL)


def watch_calls(fastnetmon: FastNetMonProcess, timeline: Timeline) -> None:
    """Mark each notify call that FastNetMon's log shows by now."""
    log = fastnetmon.log_path.read_text(errors="replace")
    for action, line in CALL_LOG_LINES.items():
        if line in log:
            timeline.mark(action)


def notify_statuses(fastnetmon: FastNetMonProcess) -> list[int]:
    """Return the wait status of each ban and attack_details call so far."""
    log = fastnetmon.log_path.read_text(errors="replace")
    return [int(status) for status in NOTIFY_STATUS_LINE.findall(log)]


def ban_power(fastnetmon: FastNetMonProcess) -> tuple[str, int]:
    """Return the direction and pps that FastNetMon logged for the ban."""
    log = fastnetmon.log_path.read_text(errors="replace")
    match = BAN_POWER_LINE.search(log)
    assert match, f"no ban of {FLOOD_TARGET} in the log\n{fastnetmon.log_text()}"
    return match.group(1), int(match.group(2))


@pytest.fixture(scope="module")
def fastnetmon_installed():
    ensure_fastnetmon_installed()


@pytest.fixture
def run_fastnetmon(tmp_path, fastnetmon_installed):
    """Return a function that starts FastNetMon; all are stopped at teardown."""
    started: list[FastNetMonProcess] = []

    def start(notify_script: Path) -> FastNetMonProcess:
        workdir = tmp_path / "fastnetmon"
        workdir.mkdir()
        fastnetmon = start_fastnetmon(workdir, notify_script)
        started.append(fastnetmon)
        return fastnetmon

    yield start
    for fastnetmon in started:
        fastnetmon.stop()


@pytest.fixture
def spool_daemon(tmp_path):
    """Return a function that starts ``fnm_spool run``; stopped at teardown."""
    started: list[subprocess.Popen] = []
    log_path = tmp_path / DAEMON_LOG

    def start(settings: Path) -> subprocess.Popen:
        if not FNM_SPOOL.exists():
            pytest.fail(
                f"fnm_spool console script not found at {FNM_SPOOL}: install"
                " the project into this Python with pip install -e ."
            )
        with open(log_path, "wb") as output:
            daemon = subprocess.Popen(
                [str(FNM_SPOOL), "-c", str(settings), "run"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def read_calls(calls: Path, action: str) -> list[tuple[list[str], bytes | None]]:
    """Return argv and stdin of each captured call of ``action``."""
    result = []
    for argv_path in sorted(calls.glob(f"*-{action}.argv")):
        argv = argv_path.read_bytes().decode().split("\0")[:-1]
        stdin_path = argv_path.with_suffix(".stdin")
        stdin = stdin_path.read_bytes() if stdin_path.exists() else None
        result.append((argv, stdin))
    return result


def test_netflow_v5_header_and_record_layout():
    record = FlowRecord(
        src="198.51.100.1",
        dst="203.0.113.10",
        packets=250,
        octets=128000,
        first=59000,
        last=60000,
        src_port=40000,
        dst_port=11211,
    )
    datagram = build_netflow_v5(
        [record, record], sys_uptime_ms=60000, unix_secs=1700000000, sequence=7
    )

    assert len(datagram) == 24 + 2 * 48
    # Header offsets of the Cisco NetFlow v5 export format.
    assert datagram[0:2] == (5).to_bytes(2, "big")
    assert datagram[2:4] == (2).to_bytes(2, "big")
    assert datagram[4:8] == (60000).to_bytes(4, "big")
    assert datagram[8:12] == (1700000000).to_bytes(4, "big")
    assert datagram[16:20] == (7).to_bytes(4, "big")
    assert datagram[22:24] == b"\0\0"

    first_record = datagram[24:72]
    assert first_record[0:4] == bytes([198, 51, 100, 1])
    assert first_record[4:8] == bytes([203, 0, 113, 10])
    assert first_record[16:20] == (250).to_bytes(4, "big")
    assert first_record[20:24] == (128000).to_bytes(4, "big")
    assert first_record[24:28] == (59000).to_bytes(4, "big")
    assert first_record[28:32] == (60000).to_bytes(4, "big")
    assert first_record[32:34] == (40000).to_bytes(2, "big")
    assert first_record[34:36] == (11211).to_bytes(2, "big")
    assert first_record[38] == 17
    assert datagram[72:120] == first_record


@pytest.mark.parametrize("count", [0, 31])
def test_netflow_v5_record_count_rejected(count):
    record = FlowRecord("198.51.100.1", "203.0.113.10", 1, 64, 0, 0)
    with pytest.raises(ValueError):
        build_netflow_v5([record] * count, 0, 0, 0)


def test_flood_records_describe_pps():
    records = flood_records(uptime_ms=61000, pps=5003)

    assert len(records) == 5 * len(FLOOD_PORTS)
    assert sum(record.packets for record in records) == 5003
    assert {record.dst_port for record in records} == set(FLOOD_PORTS)
    assert {record.dst for record in records} == {FLOOD_TARGET}
    assert all(record.first == 60000 for record in records)
    assert all(record.last == 61000 for record in records)
    assert all(record.octets == record.packets * 512 for record in records)


@pytest.mark.skipif(not SHIPPED_SETTINGS.exists(), reason="fastnetmon not installed")
def test_fastnetmon_settings_stay_on_loopback(tmp_path):
    overrides = fastnetmon_overrides(tmp_path, tmp_path / "notify", 40000)
    path = tmp_path / "fastnetmon.conf"
    write_fastnetmon_settings(path, overrides)

    # Parsed as FastNetMon 1.2.4 does: the last "key = value" line wins.
    settings = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split("=")
        if len(parts) == 2 and not line.lstrip().startswith("#"):
            settings[parts[0].strip()] = parts[1].strip()
    for key, value in overrides.items():
        assert settings[key] == value, key
    assert settings["disable_usage_report"] == "on"
    assert settings["enable_api"] == "off"
    assert settings["netflow_host"] == "127.0.0.1"
    assert settings["sflow_host"] == "127.0.0.1"
    assert settings["prometheus"] == "off"
    assert settings["logging_remote_syslog_logging"] == "off"


@pytest.mark.live
def test_fastnetmon_calls_notify_script(tmp_path, run_fastnetmon):
    calls = tmp_path / "calls"
    calls.mkdir()
    script = tmp_path / "capture-notify"
    script.write_text(CAPTURE_SCRIPT.format(calls=shlex.quote(str(calls))))
    script.chmod(0o755)
    fastnetmon = run_fastnetmon(script)

    def seen(action: str) -> Callable[[], bool]:
        return lambda: any(calls.glob(f"*-{action}.argv"))

    timeline = Timeline()
    with background_flood(fastnetmon.netflow_port, FLOOD_SECONDS) as flood:
        wait_until(seen("ban"), BAN_TIMEOUT, "no ban call", fastnetmon.log_text)
        timeline.mark("ban")
        wait_until(
            seen("attack_details"),
            DETAILS_TIMEOUT,
            "no attack_details call",
            fastnetmon.log_text,
        )
        timeline.mark("attack_details")
        wait_until(
            lambda: flood.stopped,
            FLOOD_SECONDS + 5,
            "the flood did not end",
            fastnetmon.log_text,
        )
        timeline.mark("flood_stopped", flood.stopped)
    wait_until(
        seen("unban"),
        timeline.remaining(UNBAN_TIMEOUT),
        "no unban call",
        fastnetmon.log_text,
    )
    timeline.mark("unban")
    timeline.report(tmp_path / "timings.json")
    direction, logged_pps = ban_power(fastnetmon)

    bans = read_calls(calls, "ban")
    details = read_calls(calls, "attack_details")
    unbans = read_calls(calls, "unban")
    assert len(bans) == 1
    assert len(details) == 1
    assert len(unbans) == 1

    ban_argv, ban_stdin = bans[0]
    assert ban_argv[0] == FLOOD_TARGET
    assert ban_argv[1] == "incoming"
    assert ban_argv[3] == "ban"
    pps = int(ban_argv[2])
    # The pps argument is a moving average, so it lags behind the flood.
    assert THRESHOLD_PPS < pps <= FLOOD_PPS
    assert direction == "incoming"
    assert logged_pps == pps

    ban_report = ban_stdin.decode()
    assert f"IP: {FLOOD_TARGET}\n" in ban_report
    assert "Attack direction: incoming\n" in ban_report
    assert "Attack protocol: udp\n" in ban_report
    assert f"Initial attack power: {pps} packets per second\n" in ban_report
    assert f"Total incoming pps: {pps} packets per second\n" in ban_report
    assert "< 198.51.100." in ban_report
    assert not PACKET_DUMP_LINE.search(ban_report)

    details_argv, details_stdin = details[0]
    assert details_argv == [FLOOD_TARGET, "incoming", str(pps), "attack_details"]
    details_report = details_stdin.decode()
    assert f"IP: {FLOOD_TARGET}\n" in details_report
    assert f"Initial attack power: {pps} packets per second\n" in details_report
    assert len(PACKET_DUMP_LINE.findall(details_report)) == DETAILS_RECORDS

    unban_argv, unban_stdin = unbans[0]
    # unban repeats the pps of the ban, and its stdin was not read.
    assert unban_argv == [FLOOD_TARGET, "incoming", str(pps), "unban"]
    assert unban_stdin is None

    assert fastnetmon.process.poll() is None, fastnetmon.log_text()
    assert notify_statuses(fastnetmon) == [0, 0]
    assert timeline.seen["attack_details"] - timeline.seen["ban"] < 3
    assert timeline.seen["unban"] - timeline.seen["ban"] > BAN_TIME


def write_notify_wrapper(path: Path, settings: Path) -> Path:
    """Write the notify script FastNetMon runs: ``fnm_spool -c FILE notify``."""
    command = shlex.join([str(FNM_SPOOL), "-c", str(settings), "notify"])
    path.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    path.chmod(0o755)
    return path


def plain_body(message) -> str:
    return message.parsed.get_body(("plain",)).get_content()


@pytest.mark.live
def test_live_ban_details_unban_mailed(
    tmp_path, smtp_server, make_settings_file, run_fastnetmon, spool_daemon
):
    # The product's own group_wait, not the suite's 0, so that a ban waits
    # for its attack_details as it would in production.
    settings = make_settings_file(group_wait=None)
    wrapper = write_notify_wrapper(tmp_path / "notify", settings)
    daemon = spool_daemon(settings)
    daemon_log = tmp_path / DAEMON_LOG
    fastnetmon = run_fastnetmon(wrapper)
    arrivals: list[float] = []

    def context() -> str:
        daemon_output = daemon_log.read_text(errors="replace")
        return (
            f"{fastnetmon.log_text()}\n--- fnm_spool run\n{daemon_output}"
            f"\n--- messages arrived at {arrivals} s"
        )

    def poll(timeline: Timeline) -> None:
        # Stop waiting as soon as a part has failed; the mail will not come.
        status = daemon.poll()
        assert status is None, f"fnm_spool run exited with {status}\n{context()}"
        statuses = notify_statuses(fastnetmon)
        assert not any(statuses), f"notify wait statuses {statuses}\n{context()}"
        watch_calls(fastnetmon, timeline)
        for _ in smtp_server.messages[len(arrivals) :]:
            arrivals.append(round(time.monotonic() - timeline.origin, 2))

    def called(action: str, timeline: Timeline) -> Callable[[], bool]:
        def check() -> bool:
            poll(timeline)
            return action in timeline.seen

        return check

    def mailed(count: int, timeline: Timeline) -> Callable[[], bool]:
        def check() -> bool:
            poll(timeline)
            return len(arrivals) >= count

        return check

    timeline = Timeline()
    with background_flood(fastnetmon.netflow_port, FLOOD_SECONDS) as flood:
        wait_until(called("ban", timeline), BAN_TIMEOUT, "no ban call", context)
        wait_until(
            called("attack_details", timeline),
            DETAILS_TIMEOUT,
            "no attack_details call",
            context,
        )
        wait_until(mailed(1, timeline), MAIL_TIMEOUT, "no ban message", context)
        wait_until(
            lambda: flood.stopped, FLOOD_SECONDS + 5, "the flood did not end", context
        )
        timeline.mark("flood_stopped", flood.stopped)
    wait_until(
        called("unban", timeline),
        timeline.remaining(UNBAN_TIMEOUT),
        "no unban call",
        context,
    )
    before_unban = len(arrivals)
    wait_until(
        mailed(before_unban + 1, timeline),
        MAIL_TIMEOUT,
        "no unban message",
        context,
    )
    for index, arrival in enumerate(arrivals):
        timeline.seen[f"message_{index + 1}"] = arrival
    timeline.report(tmp_path / "timings.json")
    assert fastnetmon.process.poll() is None, fastnetmon.log_text()
    direction, pps = ban_power(fastnetmon)

    messages = smtp_server.messages
    for index, message in enumerate(messages):
        (tmp_path / f"message-{index + 1}.eml").write_bytes(message.raw)
    ban, *others = messages[:before_unban]
    unban = messages[before_unban]
    assert len(messages) == before_unban + 1, context()

    ban_body = plain_body(ban)
    assert FLOOD_TARGET in ban.parsed["Subject"]
    assert direction == "incoming"
    assert "incoming" in ban_body.lower()
    assert re.search(rf"\b({pps}|{pps:,})\b", ban_body), ban_body
    assert ban.parsed["In-Reply-To"] is None
    ban_id = ban.parsed["Message-ID"]
    assert ban_id

    # The attack_details report is either folded into the ban message or
    # mailed on its own in the same thread, before the unban.
    details_folded = PACKET_DUMP_LINE.search(ban_body) is not None
    details_separate = [m for m in others if PACKET_DUMP_LINE.search(plain_body(m))]
    assert details_folded or details_separate, context()
    if details_folded:
        assert not details_separate
    assert len(others) == len(details_separate)

    for reply in [*others, unban]:
        assert reply.parsed["In-Reply-To"] == ban_id
        assert ban_id in reply.parsed["References"].split()
    assert FLOOD_TARGET in unban.parsed["Subject"]
    message_ids = [message.parsed["Message-ID"] for message in messages]
    assert len(set(message_ids)) == len(message_ids)

    failed = tmp_path / "spool" / "failed"
    assert not failed.exists() or not any(failed.iterdir())
