"""Tests of ``fnm_spool notify``: FastNetMon's notify-script calls to events."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spool import notify
from spool.errors import EX_USAGE, EventError, UsageError
from spool.events import parse_event, validate_event
from spool.notify import event_from_call, main, parse_community_report
from spool.settings import Settings

REPOSITORY = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CAPTURES = FIXTURES / "fastnetmon-1.2.4"
ADVANCED = FIXTURES / "advanced-json"


def capture(name: str) -> tuple[list[str], bytes]:
    """Return the arguments and stdin bytes of one recorded FastNetMon call."""
    fields = (CAPTURES / f"{name}.argv").read_bytes().split(b"\0")
    if fields[-1] == b"":
        fields.pop()
    return [field.decode() for field in fields], (
        CAPTURES / f"{name}.stdin"
    ).read_bytes()


def event_of(name: str) -> dict:
    argv, data = capture(name)
    return event_from_call(argv, io.BytesIO(data))


class UnreadableStdin:
    """A stdin that fails the test as soon as anything reads it."""

    def read(self, *args):
        raise AssertionError("stdin was read")

    readinto = readline = read

    @property
    def buffer(self):
        raise AssertionError("stdin was accessed")


HEADER_ONLY = capture("1-ban")[1].decode().split("Incoming\n")[0]


# Real captures of FastNetMon 1.2.4


def test_ban_capture_event_fields():
    event = event_of("1-ban")

    assert event["ip"] == "203.0.113.10"
    assert event["action"] == "ban"
    assert event["alert_scope"] == "host"
    assert event["source"] == "fastnetmon-community"
    assert event["unparsed_lines"] == []
    assert "report_text" not in event
    assert "report_truncated" not in event
    assert validate_event(event) is event


def test_ban_capture_attack_details():
    details = event_of("1-ban")["attack_details"]

    assert details["reported_ip"] == "203.0.113.10"
    assert details["attack_direction"] == "incoming"
    assert details["attack_type"] == "udp_flood"
    assert details["attack_protocol"] == "udp"
    assert details["initial_attack_power"] == 1648
    assert details["peak_attack_power"] == 1648
    assert details["total_incoming_pps"] == 1648
    assert details["incoming_udp_pps"] == 1648
    assert details["total_incoming_flows"] == 10
    assert details["average_incoming_flows"] == 10
    assert details["protocol_version"] == "IPv4"


def test_ban_capture_traffic_from_mbps():
    details = event_of("1-ban")["attack_details"]

    # 6 mbps is 6 * 10**6 bits/s, i.e. 750,000 bytes/s.
    assert details["total_incoming_traffic"] == 750_000
    assert details["total_incoming_traffic_bits"] == 6_000_000
    assert details["average_incoming_traffic"] == 750_000
    assert details["average_incoming_traffic_bits"] == 6_000_000
    assert details["incoming_udp_traffic"] == 750_000
    assert details["total_outgoing_traffic"] == 0
    assert details["total_outgoing_traffic_bits"] == 0
    assert details["incoming_ip_fragmented_traffic"] == 0
    assert details["incoming_syn_tcp_pps"] == 0
    assert details["average_incoming_packet_size"] == 512.1
    assert details["average_outgoing_packet_size"] == 0.0


def test_ban_capture_keys_follow_advanced_naming():
    details = event_of("1-ban")["attack_details"]
    advanced = json.loads((ADVANCED / "ban.json").read_bytes())["attack_details"]

    counters = [key for key in advanced if key.endswith(("_traffic", "_pps", "_flows"))]
    assert counters
    for key in counters:
        assert key in details, key
        assert isinstance(details[key], int), key


def test_ban_capture_flows():
    flows = event_of("1-ban")["flows"]

    assert list(flows) == ["incoming"]
    incoming = flows["incoming"]
    assert incoming["udp_flows"] == 20
    assert incoming["tcp_flows"] == 0
    assert incoming["cropped"] is False
    assert len(incoming["lines"]) == 20
    assert len(incoming["connections"]) == 20
    assert incoming["lines"][0] == (
        "203.0.113.10:53 < 198.51.100.2:28298 128000 bytes 250 packets"
    )
    assert incoming["connections"][0] == {
        "local": "203.0.113.10:53",
        "marker": "<",
        "remote": "198.51.100.2:28298",
        "bytes": 128000,
        "packets": 250,
        "protocol": "udp",
    }
    assert incoming["connections"][-1]["remote"] == "198.51.100.1:62573"


def test_ban_capture_has_no_packet_dump():
    assert event_of("1-ban")["packet_dump"] == []


def test_attack_details_capture_packet_dump():
    event = event_of("2-attack_details")

    assert event["action"] == "attack_details"
    assert event["flows"] == {}
    assert event["unparsed_lines"] == []
    assert len(event["packet_dump"]) == 20
    assert event["packet_dump"][0] == (
        "2026-12-04 14:59:00.114954948 198.51.100.1:6690 > 203.0.113.10:11211 "
        "protocol: udp frag: 0  packets: 250 size: 128000 bytes ttl: 0 "
        "sample ratio: 1"
    )
    assert all(line == line.rstrip() for line in event["packet_dump"])


def test_attack_details_capture_figures():
    details = event_of("2-attack_details")["attack_details"]

    assert details["attack_type"] == "udp_flood"
    assert details["total_incoming_traffic"] == 750_000
    assert details["total_incoming_pps"] == 1648
    assert details["average_incoming_packet_size"] == 512.1


def test_unban_capture_does_not_read_stdin():
    argv, _ = capture("3-unban")

    event = event_from_call(argv, UnreadableStdin())

    assert event["action"] == "unban"
    assert event["ip"] == "203.0.113.10"
    assert event["attack_details"] == {
        "attack_direction": "incoming",
        "initial_attack_power": 1648,
        "protocol_version": "IPv4",
    }
    assert event["packet_dump"] == []
    assert event["flows"] == {}


def test_unban_with_open_pipe_returns():
    # FastNetMon started from a pipeline hands its own stdin, a pipe that
    # never closes, to the unban call.
    code = (
        "import json, sys\n"
        "from spool.notify import event_from_call\n"
        "print(json.dumps(event_from_call(sys.argv[1:], sys.stdin.buffer)))\n"
    )
    argv, _ = capture("3-unban")
    process = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=REPOSITORY,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        status = process.wait(timeout=30)
    finally:
        process.kill()
        process.stdin.close()
        output = process.stdout.read()
        errors = process.stderr.read()
        process.stdout.close()
        process.stderr.close()

    assert status == 0, errors
    assert json.loads(output)["action"] == "unban"


# Reports built from the real ones


def test_manual_ban_with_empty_stdin():
    event = event_from_call(["203.0.113.7", "other", "0", "ban"], io.BytesIO(b""))

    assert event["ip"] == "203.0.113.7"
    assert event["action"] == "ban"
    assert event["attack_details"] == {
        "attack_direction": "other",
        "initial_attack_power": 0,
        "protocol_version": "IPv4",
    }
    assert event["packet_dump"] == []
    assert event["flows"] == {}
    assert event["unparsed_lines"] == []


def test_manual_ban_without_stdin():
    event = event_from_call(["203.0.113.7", "other", "0", "ban"], None)

    assert event["attack_details"]["initial_attack_power"] == 0


def test_manual_ban_report_marks_source():
    # 1.2.4 appends "manually triggered attack" to the report of an API ban.
    report = HEADER_ONLY + "manually triggered attack"

    event = event_from_call(
        ["203.0.113.7", "other", "0", "ban"], io.BytesIO(report.encode())
    )

    assert event["attack_details"]["attack_detection_source"] == "manual"
    assert event["unparsed_lines"] == []


def test_ipv6_ban_keeps_argument_ip():
    # 1.2.4 prints "IP: 0.0.0.0" and no flows for an IPv6 ban.
    report = HEADER_ONLY.replace("IP: 203.0.113.10", "IP: 0.0.0.0")
    argv = ["2001:db8::10", "incoming", "1648", "ban"]

    event = event_from_call(argv, io.BytesIO(report.encode()))

    assert event["ip"] == "2001:db8::10"
    assert event["attack_details"]["reported_ip"] == "0.0.0.0"
    assert event["attack_details"]["protocol_version"] == "IPv6"
    assert event["attack_details"]["total_incoming_traffic"] == 750_000
    assert event["flows"] == {}
    assert validate_event(event) is event


def test_unknown_lines_kept():
    report = HEADER_ONLY + "something new in a later release\n+++\n"

    parsed = parse_community_report(report)

    assert parsed["unparsed_lines"] == ["something new in a later release", "+++"]
    assert parsed["attack_details"]["attack_type"] == "udp_flood"


def test_unknown_header_becomes_key():
    parsed = parse_community_report("Incoming dropped pps: 12 packets per second\n")

    assert parsed["attack_details"] == {"incoming_dropped_pps": 12}
    assert parsed["unparsed_lines"] == []


def test_garbage_numbers_kept_as_strings():
    report = (
        "Total incoming traffic: lots mbps\n"
        "Total incoming pps: 12x packets per second\n"
        "Average packet size for incoming traffic: nan bytes\n"
        "Peak attack power: \n"
        "Incoming\n"
        "UDP flows: many\n"
        "203.0.113.10:53 < 198.51.100.2:28298 12e3 bytes ? packets\n"
    )

    parsed = parse_community_report(report)
    details = parsed["attack_details"]

    assert details["total_incoming_traffic"] == "lots mbps"
    assert "total_incoming_traffic_bits" not in details
    assert details["total_incoming_pps"] == "12x packets per second"
    assert details["average_incoming_packet_size"] == "nan bytes"
    assert details["peak_attack_power"] == ""
    assert parsed["flows"]["incoming"]["udp_flows"] == "many"
    connection = parsed["flows"]["incoming"]["connections"][0]
    assert connection["bytes"] == "12e3"
    assert connection["packets"] == "?"


def test_fractional_mbps_converted():
    parsed = parse_community_report("Incoming tcp traffic: 2.5 mbps\n")

    assert parsed["attack_details"]["incoming_tcp_traffic"] == 312_500
    assert parsed["attack_details"]["incoming_tcp_traffic_bits"] == 2_500_000


def test_outgoing_and_cropped_flows():
    report = (
        "Incoming\n\n"
        "TCP flows: 3\n"
        "203.0.113.10:443 < 198.51.100.9:5000 60 bytes 1 packets\n"
        "Flows have cropped due to very long list.\n"
        "\n"
        "Outgoing\n\n"
        "UDP flows: 1\n"
        "203.0.113.10:5353 > 198.51.100.9:53 300 bytes 3 packets\n"
    )

    flows = parse_community_report(report)["flows"]

    assert flows["incoming"]["tcp_flows"] == 3
    assert flows["incoming"]["cropped"] is True
    assert flows["incoming"]["connections"][0]["protocol"] == "tcp"
    assert flows["incoming"]["lines"][-1] == "Flows have cropped due to very long list."
    assert flows["outgoing"]["udp_flows"] == 1
    assert flows["outgoing"]["cropped"] is False
    assert flows["outgoing"]["connections"] == [
        {
            "local": "203.0.113.10:5353",
            "marker": ">",
            "remote": "198.51.100.9:53",
            "bytes": 300,
            "packets": 3,
            "protocol": "udp",
        }
    ]


def test_flow_line_without_heading():
    line = "203.0.113.10:5353 > 198.51.100.9:53 300 bytes 3 packets"

    flows = parse_community_report(line)["flows"]

    assert flows["outgoing"]["lines"] == [line]
    assert "protocol" not in flows["outgoing"]["connections"][0]


def test_crlf_and_binary_report():
    report = HEADER_ONLY.replace("\n", "\r\n").encode() + b"\xff\xfe junk\r\n"

    event = event_from_call(
        ["203.0.113.10", "incoming", "1648", "ban"], io.BytesIO(report)
    )

    assert event["attack_details"]["total_incoming_pps"] == 1648
    assert event["unparsed_lines"] == ["\ufffd\ufffd junk"]


def test_long_report_truncated_and_drained():
    argv, data = capture("1-ban")
    stdin = io.BytesIO(data * 1000)

    event = event_from_call(argv, stdin, limit=1000)

    assert stdin.read() == b""
    assert event["report_truncated"] is True
    assert event["report_bytes"] == len(data) * 1000
    assert event["attack_details"]["attack_type"] == "udp_flood"


def test_text_stdin_uses_buffer():
    argv, data = capture("1-ban")
    stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")

    event = event_from_call(argv, stdin)

    assert len(event["flows"]["incoming"]["connections"]) == 20


def test_read_error_keeps_partial_report():
    class FailingStdin(io.RawIOBase):
        def __init__(self):
            self.chunks = [HEADER_ONLY.encode()]

        def read(self, size=-1):
            if self.chunks:
                return self.chunks.pop()
            raise OSError(5, "Input/output error")

    event = event_from_call(["203.0.113.10", "incoming", "1648", "ban"], FailingStdin())

    assert event["report_read_error"] == "[Errno 5] Input/output error"
    assert event["attack_details"]["attack_type"] == "udp_flood"


def test_parser_failure_keeps_report_text(monkeypatch):
    argv, data = capture("1-ban")
    original = notify.parse_community_report

    def failing_parser(text):
        if text:
            raise RuntimeError("injected fault")
        return original(text)

    monkeypatch.setattr(notify, "parse_community_report", failing_parser)

    event = event_from_call(argv, io.BytesIO(data))

    assert event["report_text"] == data.decode()
    assert event["parse_error"] == "RuntimeError: injected fault"
    assert event["attack_details"]["initial_attack_power"] == 1648
    assert validate_event(event) is event


# FastNetMon Advanced's JSON form


@pytest.mark.parametrize("name", ["ban", "partial_block", "unban"])
def test_advanced_fixture(name):
    data = (ADVANCED / f"{name}.json").read_bytes()
    document = json.loads(data)

    event = event_from_call([document["action"], document["ip"]], io.BytesIO(data))

    assert event.pop("source") == "fastnetmon-advanced"
    assert event == document


def test_advanced_json_wins_over_arguments(caplog):
    data = (ADVANCED / "ban.json").read_bytes()

    event = event_from_call(["unban", "192.0.2.99"], io.BytesIO(data))

    assert event["action"] == "ban"
    assert event["ip"] == "203.0.113.10"
    assert "differs" in caplog.text


def test_advanced_arguments_fill_gaps():
    document = json.loads((ADVANCED / "unban.json").read_bytes())
    del document["ip"], document["action"]

    event = event_from_call(
        ["unban", "203.0.113.10"], io.BytesIO(json.dumps(document).encode())
    )

    assert event["action"] == "unban"
    assert event["ip"] == "203.0.113.10"


def test_advanced_keeps_own_source():
    data = json.dumps({"action": "ban", "ip": "203.0.113.10", "source": "lab"})

    event = event_from_call(["ban"], io.BytesIO(data.encode()))

    assert event["source"] == "lab"


def test_advanced_hostgroup_without_ip():
    document = {
        "action": "ban",
        "alert_scope": "hostgroup",
        "hostgroup_name": "web_servers",
        "attack_details": {"total_incoming_pps": 5},
    }

    event = event_from_call(["ban"], io.BytesIO(json.dumps(document).encode()))

    assert "ip" not in event
    assert event["hostgroup_name"] == "web_servers"
    assert event["attack_details"] == {"total_incoming_pps": 5}


def test_advanced_empty_ip_argument_ignored():
    data = (ADVANCED / "ban.json").read_bytes()

    event = event_from_call(["ban", ""], io.BytesIO(data))

    assert event["ip"] == "203.0.113.10"


def test_advanced_invalid_json_keeps_text():
    event = event_from_call(["ban", "203.0.113.10"], io.BytesIO(b'{"action": "ban",'))

    assert event["action"] == "ban"
    assert event["ip"] == "203.0.113.10"
    assert event["report_text"] == '{"action": "ban",'
    assert event["parse_error"].startswith("invalid JSON event at line 1")
    assert validate_event(event) is event


def test_advanced_invalid_event_keeps_text():
    data = json.dumps({"action": "ban", "ip": "not-an-ip"})

    event = event_from_call(["ban", "203.0.113.10"], io.BytesIO(data.encode()))

    assert event["report_text"] == data
    assert event["ip"] == "203.0.113.10"
    assert "not an IPv4 or IPv6 address" in event["parse_error"]


def test_advanced_unknown_scope_accepted():
    data = json.dumps({"action": "ban", "ip": "203.0.113.10", "alert_scope": "x"})

    event = event_from_call(["ban", "203.0.113.10"], io.BytesIO(data.encode()))

    assert event["alert_scope"] == "x"
    assert "parse_error" not in event


@pytest.mark.parametrize("name", ["ban", "partial_block", "unban"])
def test_advanced_without_arguments(name):
    data = (ADVANCED / f"{name}.json").read_bytes()

    event = event_from_call([], io.BytesIO(data))

    assert event["action"] == name
    assert event["ip"] == "203.0.113.10"
    assert "parse_error" not in event


def test_no_arguments_unreadable_input_still_mailed():
    event = event_from_call([], io.BytesIO(b"{not json"))

    assert event["action"] == "unreadable_notify_input"
    assert event["report_text"] == "{not json"
    assert validate_event(event) is event


def test_advanced_truncated_json_keeps_text():
    data = (ADVANCED / "ban.json").read_bytes()

    event = event_from_call(["ban", "203.0.113.10"], io.BytesIO(data), limit=100)

    assert event["report_truncated"] is True
    assert event["report_bytes"] == len(data)
    assert event["report_text"] == data[:100].decode()
    assert event["parse_error"] == "JSON event longer than 100 bytes"


@pytest.mark.parametrize(
    "data", [b"", b"[1, 2]", b"\xff\xfe", b"[" * 100_000], ids=repr
)
def test_advanced_bad_json_without_ip_raises(data):
    with pytest.raises(EventError) as caught:
        event_from_call(["ban"], io.BytesIO(data))

    assert "no IP address" in str(caught.value)


# Arguments in neither form


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["203.0.113.10", "incoming", "1648"], "3 arguments"),
        (["a", "b", "c", "d", "e"], "5 arguments"),
        (["203.0.113.10", "incoming", "1648", "block"], "unknown action 'block'"),
        (["203.0.113.999", "incoming", "1648", "ban"], "not an IPv4 or IPv6"),
        (["203.0.113.10", "sideways", "1648", "ban"], "unknown direction"),
        (["203.0.113.10", "incoming", "-5", "ban"], "PPS '-5' is not a whole"),
        (["203.0.113.10", "incoming", "1.5", "unban"], "PPS '1.5'"),
        (["203.0.113.10"], "'203.0.113.10' is not an action name"),
        (["203.0.113.10", "ban"], "is not an action name"),
        (["ban", "host.example"], "'host.example' is not an IPv4 or IPv6"),
    ],
)
def test_bad_arguments_rejected(argv, reason):
    with pytest.raises(UsageError) as caught:
        event_from_call(argv, UnreadableStdin())

    message = str(caught.value)
    assert reason in message
    assert "IP DIRECTION PPS ACTION" in message
    assert "ACTION [IP]" in message
    for argument in argv:
        assert repr(argument) in message
    assert caught.value.exit_status == EX_USAGE


# Command entry point and module weight


def test_import_loads_no_heavy_modules():
    code = (
        "import sys\n"
        "import spool.notify\n"
        "heavy = [name for name in ('jinja2', 'email', 'dateutil', 'filelock') "
        "if name in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert result.stdout.strip() == ""


def settings_for(tmp_path: Path, **changes) -> Settings:
    return Settings(spool_dir=str(tmp_path / "spool"), **changes)


def incoming_events(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool" / "incoming").glob("*.json"))


def test_main_enqueues_capture(tmp_path):
    argv, data = capture("1-ban")

    status = main(argv, io.BytesIO(data), settings_for(tmp_path))

    assert status == 0
    [path] = incoming_events(tmp_path)
    event = parse_event(path.read_bytes(), str(path))
    assert event == event_of("1-ban")


def test_main_unban_does_not_read_stdin(tmp_path):
    argv, _ = capture("3-unban")

    status = main(argv, UnreadableStdin(), settings_for(tmp_path))

    assert status == 0
    [path] = incoming_events(tmp_path)
    assert json.loads(path.read_bytes())["action"] == "unban"


def test_main_bad_arguments_still_enqueued(tmp_path, capsys):
    status = main(["203.0.113.10", "ban"], UnreadableStdin(), settings_for(tmp_path))

    assert status == EX_USAGE
    error_lines = capsys.readouterr().err.splitlines()
    assert len(error_lines) == 1
    assert error_lines[0].startswith("fnm_spool notify: invalid notify arguments")
    [path] = incoming_events(tmp_path)
    event = json.loads(path.read_bytes())
    assert event["action"] == "unrecognised_notify_call"
    assert event["arguments"] == ["203.0.113.10", "ban"]
    assert validate_event(event) == event


def test_main_advanced_json_gets_whole_limit(tmp_path):
    document = json.loads((ADVANCED / "ban.json").read_bytes())
    document["packet_dump"] = ["x" * 100] * 3000
    data = json.dumps(document).encode()
    settings = settings_for(tmp_path)
    assert settings.max_event_bytes // 4 < len(data) < settings.max_event_bytes

    status = main(["ban", "203.0.113.10"], io.BytesIO(data), settings)

    assert status == 0
    [path] = incoming_events(tmp_path)
    assert len(json.loads(path.read_bytes())["packet_dump"]) == 3000


def test_main_invalid_json_still_enqueued(tmp_path):
    status = main(
        ["ban", "203.0.113.10"], io.BytesIO(b"not json"), settings_for(tmp_path)
    )

    assert status == 0
    [path] = incoming_events(tmp_path)
    event = json.loads(path.read_bytes())
    assert event["report_text"] == "not json"


def test_main_oversized_event_reduced(tmp_path):
    # Control characters are escaped as \u0001, six bytes each in JSON.
    # The report is cut to a quarter of max_event_bytes, 1000 bytes here.
    report = "\x01" * 600 + "\n" + HEADER_ONLY
    settings = settings_for(tmp_path, max_event_bytes=4000)
    argv = ["203.0.113.10", "incoming", "1648", "ban"]

    status = main(argv, io.BytesIO(report.encode()), settings)

    assert status == 0
    [path] = incoming_events(tmp_path)
    assert path.stat().st_size <= 4000
    event = json.loads(path.read_bytes())
    assert "over max_event_bytes (4000)" in event["event_reduced"]
    assert event["ip"] == "203.0.113.10"
    assert event["attack_details"]["attack_type"] == "udp_flood"
    assert "unparsed_lines" not in event


def test_main_unwritable_spool(tmp_path, capsys):
    blocker = tmp_path / "spool"
    blocker.write_text("a file where the spool directory should be")
    argv, data = capture("1-ban")

    status = main(argv, io.BytesIO(data), settings_for(tmp_path))

    assert status == 73
    error = capsys.readouterr().err
    assert error.startswith("fnm_spool notify: ")
    assert str(blocker) in error


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_main_read_only_spool(tmp_path, capsys):
    argv, data = capture("1-ban")
    settings = settings_for(tmp_path)
    assert main(argv, io.BytesIO(data), settings) == 0
    (tmp_path / "spool" / "tmp").chmod(0o500)

    try:
        status = main(argv, io.BytesIO(data), settings)
    finally:
        (tmp_path / "spool" / "tmp").chmod(0o750)

    assert status == 73
    assert "cannot enqueue" in capsys.readouterr().err
