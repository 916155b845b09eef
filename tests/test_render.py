"""Tests of spool.render: messages rendered with the real Jinja2 templates."""

import copy
import datetime as dt
import email
import email.policy
import email.utils
import json
import logging
import random
import socket
from pathlib import Path

import pytest

from spool.errors import ConfigError, UsageError
from spool.events import message_id
from spool.render import (
    Renderer,
    ThreadRef,
    builtin_template_dir,
    format_duration,
    format_flow_spec_rule,
    human,
    mbits,
    number,
)
from spool.settings import Settings

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "advanced-json"
EVENT_ID = "20250314T092107.412337Z-4242-0a1b2c3d"
QUEUED_AT = dt.datetime(2025, 3, 14, 9, 21, 7, tzinfo=dt.UTC)
NOW = dt.datetime(2025, 3, 14, 9, 21, 9, tzinfo=dt.UTC)
SENDER = "FastNetMon <fnm@example.com>"
RECIPIENTS = ("noc@example.com", "oncall@example.org")
HOST = "203.0.113.10"


def make_settings(**changes) -> Settings:
    settings = Settings(
        email_notifications_from=SENDER,
        email_notifications_recipients=RECIPIENTS,
        timezone="UTC",
    )
    return settings.with_overrides(**changes)


def load_fixture(name: str) -> tuple[dict, bytes]:
    raw = (FIXTURES / f"{name}.json").read_bytes()
    return json.loads(raw), raw


def community_event() -> dict:
    """Return a ban in the shape that notify builds from a Community report."""
    return {
        "ip": HOST,
        "action": "ban",
        "attack_details": {
            "attack_type": "udp_flood",
            "attack_direction": "incoming",
            "attack_protocol": "udp",
            "initial_attack_power": 1648,
            "peak_attack_power": 1648,
            "total_incoming_pps": 1648,
            "total_outgoing_pps": 0,
            "total_incoming_traffic": 786432,
            "total_outgoing_traffic": 0,
            "total_incoming_flows": 10,
            "total_outgoing_flows": 0,
            "average_incoming_pps": 1648,
            "average_incoming_traffic": 786432,
            "incoming_udp_pps": 1648,
            "incoming_udp_traffic": 786432,
        },
        "packet_dump": [],
        "flows": {
            "incoming": {
                "tcp_flows": 0,
                "udp_flows": 2,
                "lines": [
                    "203.0.113.10:53 < 198.51.100.2:28298 128000 bytes 250 packets",
                    "203.0.113.10:123 < 198.51.100.1:23679 128000 bytes 250 packets",
                ],
                "connections": [
                    {"local": "203.0.113.10:53", "remote": "198.51.100.2:28298"},
                    {"local": "203.0.113.10:123", "remote": "198.51.100.1:23679"},
                ],
                "cropped": False,
            }
        },
        "unparsed_lines": ["Average packet size for incoming traffic: 512.1 bytes"],
        "report_text": "IP: 203.0.113.10\nAttack type: udp_flood\n",
    }


def render(event: dict, settings: Settings | None = None, **options) -> bytes:
    renderer = Renderer(settings or make_settings())
    raw = options.pop("raw", json.dumps(event).encode())
    options.setdefault("queued_at", QUEUED_AT)
    options.setdefault("now", NOW)
    return renderer.render_event(event, EVENT_ID, raw, **options)


def parse(message: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(message, policy=email.policy.default)


def body_of(message: bytes) -> str:
    return parse(message).get_content()


@pytest.mark.parametrize(
    ("fixture", "action", "subject"),
    [
        ("ban", "ban", "FastNetMon blocked host 203.0.113.10"),
        ("unban", "unban", "FastNetMon unblocked host 203.0.113.10"),
        (
            "partial_block",
            "partial_block",
            "FastNetMon partially blocked traffic for host 203.0.113.10",
        ),
        (
            "partial_block",
            "partial_unblock",
            "FastNetMon removed partial block for host 203.0.113.10",
        ),
        ("ban", "attack_details", "FastNetMon attack details for host 203.0.113.10"),
        ("ban", "attack_status", "FastNetMon attack status for host 203.0.113.10"),
    ],
)
def test_fixture_event_message(fixture, action, subject):
    event, raw = load_fixture(fixture)
    event["action"] = action
    renderer = Renderer(make_settings())
    first = renderer.render_event(event, EVENT_ID, raw, queued_at=QUEUED_AT)
    second = renderer.render_event(event, EVENT_ID, raw, queued_at=QUEUED_AT)
    message = parse(first)

    assert message["Subject"] == subject
    assert message["From"] == SENDER
    assert message["To"] == ", ".join(RECIPIENTS)
    assert message["Message-ID"] == message_id(EVENT_ID, raw, "example.com")
    assert parse(second)["Message-ID"] == message["Message-ID"]
    assert email.utils.parsedate_to_datetime(message["Date"]) is not None
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message["X-FastNetMon-Event"] == EVENT_ID
    assert message["X-Mailer"].startswith("fnm_spool ")
    assert b"\r" not in first

    lines = message.get_content().splitlines()
    assert lines[0] == f"Host:      {HOST}"
    assert lines[1] == f"Action:    {action}"
    head = "\n".join(lines[:12])
    assert "Incoming:  412,345 pps, 1,543.82 Mbit/s" in head
    assert "Outgoing:  1,830 pps, 3.22 Mbit/s" in head
    assert "Time:      2025-03-14 09:21:07 UTC" in head


def test_message_reproducible_with_now():
    event, raw = load_fixture("ban")

    assert render(event, raw=raw) == render(event, raw=raw)


def test_community_event_message():
    message = render(community_event())
    lines = body_of(message).splitlines()
    head = "\n".join(lines[:12])

    assert parse(message)["Subject"] == f"FastNetMon blocked host {HOST}"
    assert lines[0] == f"Host:      {HOST}"
    assert "Direction: incoming" in head
    assert "Attack:    udp_flood" in head
    assert "Protocol:  udp" in head
    assert "Incoming:  1,648 pps, 6.29 Mbit/s" in head
    assert "Power:     initial 1,648 pps, peak 1,648 pps" in head
    flows = lines.index("Flows")
    assert lines[flows + 1] == "incoming: tcp_flows 0, udp_flows 2, cropped false"
    assert lines[flows + 2] == (
        "203.0.113.10:53 < 198.51.100.2:28298 128000 bytes 250 packets"
    )
    # The connections repeat the lines field by field.
    assert "198.51.100.2:28298" not in "\n".join(lines[flows + 4 :])
    assert lines[-1] == "Attack type: udp_flood"
    unparsed = lines.index("Average packet size for incoming traffic: 512.1 bytes")
    assert unparsed > lines.index(
        "203.0.113.10:123 < 198.51.100.1:23679 128000 bytes 250 packets"
    )


def test_packet_dump_hidden_when_disabled():
    event, raw = load_fixture("ban")
    dump_line = event["packet_dump"][0]
    settings = make_settings(email_notifications_add_simple_packet_dump=False)

    default_body = body_of(render(event, raw=raw))
    hidden = body_of(render(event, settings, raw=raw))
    community = body_of(render(community_event(), settings))

    assert dump_line in default_body
    assert "Packet dump" in default_body
    assert dump_line not in hidden
    assert "Packet dump" not in hidden
    assert "198.51.100.2:28298" not in community
    assert "Report from FastNetMon" not in community
    assert "Average packet size for incoming traffic: 512.1 bytes" in community


def test_flow_spec_rules_one_per_line():
    event, raw = load_fixture("partial_block")

    lines = body_of(render(event, raw=raw)).splitlines()

    start = lines.index("BGP Flow Spec rules")
    assert lines[start + 1 : start + 4] == [
        "203.0.113.10/32 udp sport 123 len 468 -> discard",
        "192.0.2.0/24 > 203.0.113.10/32 udp frag is-fragment -> rate-limit 1024",
        "203.0.113.10/32 tcp dport 443 flags syn -> rate-limit 2048",
    ]
    # A partial block is about its rules, so they come before the counters.
    assert start < lines.index("Traffic")


def test_flow_spec_rules_hidden_by_setting():
    event, raw = load_fixture("partial_block")
    settings = make_settings(email_notifications_hide_flow_spec_rules=True)

    body = body_of(render(event, settings, raw=raw))

    assert "BGP Flow Spec rules" not in body
    assert "-> discard" not in body


def test_flow_spec_rule_unknown_fields_kept():
    rule = {
        "destination_prefix": "2001:db8::1/128",
        "protocols": ["udp", "tcp"],
        "ttl": 7,
        "action_type": "redirect",
        "action": {"target": "65000:1"},
    }

    text = format_flow_spec_rule(rule)

    assert text == "2001:db8::1/128 udp,tcp ttl 7 -> redirect target 65000:1"
    assert format_flow_spec_rule("any text") == "any text"


def test_subject_setting_with_fields():
    event, raw = load_fixture("ban")
    settings = make_settings(
        email_subject_blackhole_block=(
            "DDoS on {{ ip }} ({{ details.attack_severity }}, {{ alert_scope }})"
        )
    )

    message = parse(render(event, settings, raw=raw))

    assert message["Subject"] == "DDoS on 203.0.113.10 (middle, host)"


def test_non_ascii_subject_rfc2047():
    event, raw = load_fixture("ban")
    subject = "Атака на {{ ip }} ⚠ Überlast"
    settings = make_settings(email_subject_blackhole_block=subject)

    message = render(event, settings, raw=raw)

    subject_line = next(
        line for line in message.splitlines() if line.startswith(b"Subject:")
    )
    assert subject_line.isascii()
    assert b"=?utf-8?" in subject_line
    assert parse(message)["Subject"] == "Атака на 203.0.113.10 ⚠ Überlast"


def test_long_non_ascii_subjects_keep_spaces():
    event, raw = load_fixture("ban")
    words = ["Атака", "на", HOST, "⚠", "Überlast", "web_servers", "日本語", "x"]
    choices = random.Random(1)
    settings = make_settings(email_subject_blackhole_block="{{ hostgroup_name }}")
    renderer = Renderer(settings)
    for case in range(300):
        count = choices.randint(3, 40)
        subject = " ".join(choices.choice(words) for _ in range(count))[:190].strip()
        event["hostgroup_name"] = subject

        message = renderer.render_event(event, EVENT_ID, raw, queued_at=QUEUED_AT)

        assert parse(message)["Subject"] == subject, case
        lines = message.split(b"\n")
        start = next(i for i, line in enumerate(lines) if line.startswith(b"Subject:"))
        end = next(i for i, line in enumerate(lines) if line.startswith(b"Date:"))
        assert max(len(line) for line in lines[start:end]) <= 78, case


def test_control_characters_never_make_headers():
    event, raw = load_fixture("ban")
    event["ip"] = "203.0.113.10\r\nBcc: evil@example.net"
    event["hostgroup_name"] = "web\nX-Injected: 1"
    event["attack_details"]["attack_type"] = "udp\r\n\r\nforged body"
    settings = make_settings(
        email_subject_blackhole_block=(
            "{{ ip }} {{ hostgroup_name }} {{ details.attack_type }}"
        )
    )

    message_bytes = render(event, settings, raw=raw)
    message = parse(message_bytes)

    keys = {key.lower() for key in message.keys()}
    assert "bcc" not in keys
    assert "x-injected" not in keys
    for key, value in message.items():
        assert "\r" not in value, key
        assert "\n" not in value, key
    assert message["Subject"] == (
        "203.0.113.10 Bcc: evil@example.net web X-Injected: 1 udp forged body"
    )
    lines = message_bytes.splitlines()
    assert not any(line.startswith((b"Bcc:", b"X-Injected:")) for line in lines)
    body = message.get_content()
    assert "Host:      203.0.113.10\\x0d\\x0aBcc: evil@example.net" in body
    assert "Attack:    udp\\x0d\\x0a\\x0d\\x0aforged body" in body


def test_jinja_syntax_in_data_literal():
    event, raw = load_fixture("ban")
    event["attack_details"]["attack_type"] = "{{ 7*7 }}"
    event["packet_dump"] = ["{% for x in range(3) %}loop{% endfor %}"]
    settings = make_settings(
        email_subject_blackhole_block="{{ ip }} {{ details.attack_type }}"
    )

    message = parse(render(event, settings, raw=raw))
    body = message.get_content()

    assert message["Subject"] == "203.0.113.10 {{ 7*7 }}"
    assert "Attack:    {{ 7*7 }}" in body
    assert "{% for x in range(3) %}loop{% endfor %}" in body
    assert "49" not in message["Subject"]
    assert "looploop" not in body


def test_long_line_within_998_octets():
    event, raw = load_fixture("ban")
    long_line = "198.51.100.23:123 > 203.0.113.10 " + "x" * 5000 + " é"
    event["packet_dump"] = [long_line]

    message = render(event, raw=raw)

    assert max(len(line) for line in message.split(b"\n")) <= 998
    assert parse(message)["Content-Transfer-Encoding"] == "quoted-printable"
    assert long_line in body_of(message).splitlines()


def test_short_ascii_lines_stay_7bit():
    event, raw = load_fixture("ban")

    message = render(event, raw=raw)

    assert parse(message)["Content-Transfer-Encoding"] == "7bit"


def test_subject_capped_at_200_characters():
    event, raw = load_fixture("ban")
    event["hostgroup_name"] = "g" * 500
    settings = make_settings(email_subject_blackhole_block="{{ hostgroup_name }}")

    subject = parse(render(event, settings, raw=raw))["Subject"]

    assert len(subject) == 200
    assert subject.endswith("...")


def test_template_dir_override(tmp_path):
    (tmp_path / "ban.j2").write_text(
        "Custom ban of {{ v.host }} in {{ v.direction }}{{ event.no.such_key }}\n"
    )
    event, raw = load_fixture("ban")
    settings = make_settings(template_dir=str(tmp_path))

    ban_body = body_of(render(event, settings, raw=raw))
    unban, unban_raw = load_fixture("unban")
    unban_body = body_of(render(unban, settings, raw=unban_raw))

    assert ban_body == "Custom ban of 203.0.113.10 in incoming\n"
    assert unban_body.startswith(f"Host:      {HOST}\n")


def test_template_dir_macros_override(tmp_path):
    macros = (builtin_template_dir() / "_macros.j2").read_text()
    macros = macros.replace("Host:      {{ v.host }}", "Target host: {{ v.host }}")
    (tmp_path / "_macros.j2").write_text(macros)
    event, raw = load_fixture("ban")

    body = body_of(render(event, make_settings(template_dir=str(tmp_path)), raw=raw))

    assert body.startswith(f"Target host: {HOST}\n")


def test_template_dir_failure_uses_builtin(tmp_path, caplog):
    (tmp_path / "ban.j2").write_text("{{ v.host + 1 }}\n")
    event, raw = load_fixture("ban")
    settings = make_settings(template_dir=str(tmp_path))

    with caplog.at_level(logging.WARNING, logger="spool.render"):
        body = body_of(render(event, settings, raw=raw))

    assert body.startswith(f"Host:      {HOST}\n")
    assert "ban.j2" in caplog.text
    assert EVENT_ID in caplog.text


def test_template_dir_syntax_error_raises(tmp_path):
    (tmp_path / "unban.j2").write_text("{% if %}\n")

    with pytest.raises(ConfigError) as raised:
        Renderer(make_settings(template_dir=str(tmp_path)))

    assert raised.value.key == "template_dir"
    assert "unban.j2" in str(raised.value)


def test_template_dir_missing_raises(tmp_path):
    with pytest.raises(ConfigError) as raised:
        Renderer(make_settings(template_dir=str(tmp_path / "missing")))

    assert raised.value.key == "template_dir"


def test_unknown_action_generic_warning(caplog):
    event, raw = load_fixture("ban")
    event["action"] = "quarantine"

    with caplog.at_level(logging.WARNING, logger="spool.render"):
        message = parse(render(event, raw=raw))

    assert message["Subject"] == "FastNetMon quarantine for host 203.0.113.10"
    assert message.get_content().startswith(
        f"Host:      {HOST}\nAction:    quarantine\n"
    )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "quarantine" in warnings[0].getMessage()
    assert EVENT_ID in warnings[0].getMessage()


def test_digest_lists_every_event():
    template, _ = load_fixture("ban")
    items = []
    for index in range(250):
        event = copy.deepcopy(template)
        event["ip"] = f"198.51.{index // 100}.{index % 100}"
        event["action"] = "unban" if index % 25 == 0 else "ban"
        event["attack_details"]["total_incoming_pps"] = 1000 + index
        queued_at = QUEUED_AT.replace(hour=14, minute=2, second=0)
        items.append(
            (f"event-{index}", event, queued_at + dt.timedelta(seconds=index // 4))
        )
    renderer = Renderer(make_settings())

    message = parse(renderer.render_digest(items, digest_id="digest-1", now=NOW))
    lines = message.get_content().splitlines()

    assert (
        message["Subject"] == "FastNetMon: 250 events (240 bans, 10 unbans) 14:02-14:03"
    )
    assert message["Message-ID"] == "<digest-1@example.com>"
    assert message["To"] == ", ".join(RECIPIENTS)
    rows = [line for line in lines if line.startswith("14:0")]
    assert len(rows) == 250
    for index, row in enumerate(rows):
        assert f" 198.51.{index // 100}.{index % 100} " in row
    assert rows[0].split() == [
        "14:02:00",
        "198.51.0.0",
        "unban",
        "incoming",
        "1,000",
        "1,543.82",
        "-",
    ]
    assert (
        lines[0] == "250 events from 2025-03-14 14:02:00 UTC to 2025-03-14 14:03:02 UTC"
    )
    largest = [line for line in lines if line.startswith("== Largest")]
    assert largest == [
        "== Largest 1 of 250 by pps: host 198.51.2.49 ==",
        "== Largest 2 of 250 by pps: host 198.51.2.48 ==",
        "== Largest 3 of 250 by pps: host 198.51.2.47 ==",
    ]
    assert "Event:     event-249" in lines


def test_digest_subject_spans_minutes():
    ban, _ = load_fixture("ban")
    unban, _ = load_fixture("unban")
    items = [
        ("a", ban, QUEUED_AT.replace(hour=14, minute=2)),
        ("b", unban, QUEUED_AT.replace(hour=14, minute=3)),
        (
            "c",
            {"ip": HOST, "action": "frobnicate"},
            QUEUED_AT.replace(hour=14, minute=3),
        ),
    ]

    message = Renderer(make_settings()).render_digest(items, digest_id="d", now=NOW)

    assert parse(message)["Subject"] == (
        "FastNetMon: 3 events (1 ban, 1 unban, 1 other) 14:02-14:03"
    )


def test_unban_thread_blocked_duration():
    event, raw = load_fixture("unban")
    ban_id = "<20250314T091755.000000Z-4242-00000000.0123456789abcdef@example.com>"
    thread = ThreadRef(ban_id, QUEUED_AT - dt.timedelta(minutes=3, seconds=12))

    message = parse(render(event, raw=raw, thread=thread))

    assert message["In-Reply-To"] == ban_id
    assert message["References"] == ban_id
    assert "Blocked for 3 min 12 s" in message.get_content().splitlines()[:4]


def test_ban_without_thread_has_no_reply_headers():
    event, raw = load_fixture("ban")

    message = parse(render(event, raw=raw))

    assert message["In-Reply-To"] is None
    assert message["References"] is None


def test_ban_folds_attack_details():
    ban = community_event()
    ban["flows"] = {}
    details = community_event()
    details["action"] = "attack_details"
    details["attack_details"]["total_incoming_pps"] = 2000
    details["packet_dump"] = [
        "2026-12-04 14:59:00.114954948 198.51.100.1:6690 > 203.0.113.10:11211 "
        "protocol: udp frag: 0  packets: 250 size: 128000 bytes ttl: 0 sample ratio: 1"
    ]

    lines = body_of(render(ban, details=details)).splitlines()

    start = lines.index("== Attack details ==")
    assert lines[start + 1] == "Incoming:  2,000 pps, 6.29 Mbit/s"
    assert details["packet_dump"][0] in lines[start:]


def test_timezone_changes_time_shown():
    event, raw = load_fixture("ban")

    utc = body_of(render(event, make_settings(timezone="UTC"), raw=raw))
    tokyo = body_of(render(event, make_settings(timezone="Asia/Tokyo"), raw=raw))

    assert "Time:      2025-03-14 09:21:07 UTC" in utc.splitlines()
    assert "Time:      2025-03-14 18:21:07 JST" in tokyo.splitlines()


def test_unknown_timezone_raises():
    with pytest.raises(ConfigError) as raised:
        Renderer(make_settings(timezone="Mars/Olympus_Mons"))

    assert raised.value.key == "timezone"


def test_wrong_counter_types_shown_as_given():
    event, raw = load_fixture("ban")
    details = event["attack_details"]
    details["total_incoming_pps"] = "a lot"
    details["total_incoming_traffic"] = [1, 2]
    details["incoming_udp_pps"] = None
    details["total_outgoing_pps"] = float("nan")

    body = body_of(render(event, raw=raw))

    assert "Incoming:  a lot, [1, 2]" in body.splitlines()
    assert "Outgoing:  nan, 3.22 Mbit/s" in body.splitlines()


def test_subject_failure_uses_builtin(caplog):
    event, raw = load_fixture("ban")
    broken = {
        "type": "{{ ip + 1 }}",
        "security": "{{ ip.__class__() }}",
        "division": "{{ 1 / 0 }}",
    }
    for subject in broken.values():
        settings = make_settings(email_subject_blackhole_block=subject)
        caplog.clear()

        with caplog.at_level(logging.WARNING, logger="spool.render"):
            message = parse(render(event, settings, raw=raw))

        assert message["Subject"] == "FastNetMon blocked host 203.0.113.10"
        assert "email_subject_blackhole_block" in caplog.text


def test_subject_syntax_error_raises():
    with pytest.raises(ConfigError) as raised:
        Renderer(make_settings(email_subject_blackhole_unblock="{{ ip "))

    assert raised.value.key == "email_subject_blackhole_unblock"


def test_hostgroup_scope_subject():
    event = {
        "action": "ban",
        "alert_scope": "hostgroup",
        "hostgroup_name": "web_servers",
        "hostgroup_networks": ["203.0.113.0/24", "2001:db8::/64"],
        "attack_details": {"total_incoming_pps": 10},
    }

    ban = parse(render(event))
    event["action"] = "attack_status"
    status = parse(render(event))

    assert ban["Subject"] == "FastNetMon blocked host web_servers"
    assert status["Subject"] == "FastNetMon attack status for hostgroup web_servers"
    lines = ban.get_content().splitlines()
    assert lines[0] == "Hostgroup: web_servers"
    assert "Network:   203.0.113.0/24, 2001:db8::/64" in lines


def test_message_id_domain_without_sender():
    event, raw = load_fixture("ban")
    settings = make_settings(email_notifications_from="")

    message = parse(render(event, settings, raw=raw))

    assert message["From"] is None
    assert message["Message-ID"] == message_id(EVENT_ID, raw, socket.gethostname())


def test_test_email_lists_settings():
    settings = make_settings(
        email_notifications_host="127.0.0.1",
        email_notifications_port=2525,
        email_notifications_auth_method="plain",
        email_notifications_username="fnm",
        email_notifications_password="s3cret-password",
    )

    message_bytes = Renderer(settings).render_test(["ops@example.net"], now=NOW)
    message = parse(message_bytes)
    lines = message.get_content().splitlines()

    assert message["Subject"] == "FastNetMon test e-mail from fnm_spool"
    assert message["To"] == "ops@example.net"
    assert message["From"] == SENDER
    assert message["Message-ID"].endswith("@example.com>")
    assert f"Sent by:   {socket.gethostname()}" not in lines
    assert any(line.startswith("Sent by:   ") for line in lines)
    assert "Relay:     127.0.0.1 port 2525" in lines
    assert "TLS:       on" in lines
    assert "Auth:      plain" in lines
    assert "Username:  fnm" in lines
    assert b"s3cret-password" not in message_bytes


def test_test_email_default_recipients():
    message = parse(Renderer(make_settings()).render_test([]))

    assert message["To"] == ", ".join(RECIPIENTS)


def test_test_email_without_recipients_raises():
    renderer = Renderer(make_settings(email_notifications_recipients=()))

    with pytest.raises(UsageError):
        renderer.render_test([])


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (1_200_000, "pps", "1.2 Mpps"),
        (412_345, "pps", "412.35 kpps"),
        (830, "pps", "830 pps"),
        (0, "bit/s", "0 bit/s"),
        (1_543_819_680, "bit/s", "1.54 Gbit/s"),
        ("many", "pps", "many"),
        (None, "pps", "-"),
    ],
)
def test_human_units(value, unit, text):
    assert human(value, unit) == text


def test_mbits():
    assert mbits(192_980_000) == "192.98 Mbit/s"
    assert mbits(786_432 * 8) == "6.29 Mbit/s"
    assert mbits(1_543_819_680) == "1,543.82 Mbit/s"
    assert mbits("fast") == "fast"
    assert mbits(None) == "-"


@pytest.mark.parametrize(
    ("value", "text"),
    [(412_345, "412,345 pps"), (1648.5, "1,648.5 pps"), (0, "0 pps"), ("x", "x")],
)
def test_number_in_full(value, text):
    assert number(value, "pps") == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (12, "12 s"), (192, "3 min 12 s"), (7205, "2 h"), (90061, "1 d 1 h")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_builtin_templates_found():
    directory = builtin_template_dir()

    for name in ("ban.j2", "generic.j2", "digest.j2", "test.j2", "_macros.j2"):
        assert (directory / name).is_file(), name
