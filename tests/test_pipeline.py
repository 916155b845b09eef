"""Events from the spool to the SMTP server, through the real msmtp."""

import email
import email.policy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from clock import FakeClock

from spool import settings as settings_module
from spool import transport
from spool.processor import Processor
from spool.spooldir import Spool, State

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ADVANCED = FIXTURES / "advanced-json"
COMMUNITY = FIXTURES / "fastnetmon-1.2.4"


def fnm_spool(config: Path, *args: str, stdin: bytes | None = None, timeout=60):
    """Run the command line as a user would, and return the finished process."""
    return subprocess.run(
        [sys.executable, str(ROOT / "fnm_spool.py"), "-c", str(config), *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=timeout,
    )


def load(config: Path):
    return settings_module.load(config, required=True)


def states(config: Path) -> dict[str, list[str]]:
    spool = Spool(load(config).spool_dir)
    return {state.value: sorted(spool.names(state)) for state in State}


def test_json_events_delivered_with_subjects(settings_file, smtp_server):
    for name in ("ban", "partial_block", "unban"):
        done = fnm_spool(settings_file, "enqueue", str(ADVANCED / f"{name}.json"))
        assert done.returncode == 0, done.stderr

    done = fnm_spool(settings_file, "run", "--once")

    assert done.returncode == 0, done.stderr
    messages = smtp_server.wait_for(3)
    subjects = sorted(m.parsed["Subject"] for m in messages)
    assert subjects == [
        "FastNetMon blocked host 203.0.113.10",
        "FastNetMon partially blocked traffic for host 203.0.113.10",
        "FastNetMon unblocked host 203.0.113.10",
    ]
    for message in messages:
        assert sorted(message.rcpt_tos) == ["noc@example.com", "oncall@example.org"]
        assert message.mail_from == "fnm@example.com"
    sent = states(settings_file)["sent"]
    assert len(sent) == 3
    spool = Spool(load(settings_file).spool_dir)
    for name in sent:
        assert spool.path(State.SENT, name[:-5], ".eml").exists()


def test_community_calls_delivered(settings_file, smtp_server):
    for call in ("1-ban", "2-attack_details", "3-unban"):
        argv = (COMMUNITY / f"{call}.argv").read_bytes().split(b"\0")[:-1]
        stdin = (COMMUNITY / f"{call}.stdin").read_bytes()
        done = fnm_spool(
            settings_file, "notify", *[a.decode() for a in argv], stdin=stdin
        )
        assert done.returncode == 0, done.stderr

    done = fnm_spool(settings_file, "run", "--once")

    assert done.returncode == 0, done.stderr
    messages = smtp_server.wait_for(3)
    by_subject = {m.parsed["Subject"]: m.parsed for m in messages}
    ban = by_subject["FastNetMon blocked host 203.0.113.10"]
    unban = by_subject["FastNetMon unblocked host 203.0.113.10"]
    body = ban.get_body().get_content()
    assert "1648" in body or "1,648" in body
    assert "incoming" in body
    assert unban["In-Reply-To"] == ban["Message-ID"]
    assert len(states(settings_file)["sent"]) == 3


def test_msmtp_called_with_exact_arguments(make_settings_file, smtp_server, tmp_path):
    record = tmp_path / "argv"
    wrapper = tmp_path / "msmtp-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" > {record}\n"
        f'exec {shutil.which("msmtp")} "$@"\n'
    )
    wrapper.chmod(0o755)
    config = make_settings_file(msmtp_path=wrapper)
    fnm_spool(config, "enqueue", str(ADVANCED / "ban.json"))

    done = fnm_spool(config, "run", "--once")

    assert done.returncode == 0, done.stderr
    msmtp_config = load(config).msmtp_config
    assert record.read_text().splitlines() == [
        "-t",
        "-a",
        "default",
        f"--file={msmtp_config}",
    ]
    assert transport.msmtp_argv("msmtp", msmtp_config)[1:] == [
        "-t",
        "-a",
        "default",
        f"--file={msmtp_config}",
    ]
    assert smtp_server.wait_for(1)


def test_msmtp_config_generated_private(settings_file, smtp_server):
    fnm_spool(settings_file, "run", "--once")

    path = Path(load(settings_file).msmtp_config)
    assert path.stat().st_mode & 0o777 == 0o600
    assert "account default" in path.read_text()


def test_disabled_certificate_checks_deliver(make_settings_file, smtp_server):
    config = make_settings_file(
        tls_trust_file="system", email_notifications_disable_certificate_checks="on"
    )
    fnm_spool(config, "enqueue", str(ADVANCED / "ban.json"))

    done = fnm_spool(config, "run", "--once")

    assert done.returncode == 0, done.stderr
    assert smtp_server.wait_for(1)
    assert len(states(config)["sent"]) == 1


def test_untrusted_certificate_fails(make_settings_file, smtp_server):
    config = make_settings_file(tls_trust_file="system")
    fnm_spool(config, "enqueue", str(ADVANCED / "ban.json"))

    fnm_spool(config, "run", "--once")

    assert smtp_server.messages == []
    assert states(config)["sent"] == []


def test_rejected_recipient_goes_to_failed(settings_file, smtp_server):
    smtp_server.fail_rcpt("noc@example.com", 550, "5.1.1 mailbox unavailable")
    fnm_spool(settings_file, "enqueue", str(ADVANCED / "ban.json"))

    fnm_spool(settings_file, "run", "--once")

    failed = states(settings_file)["failed"]
    assert len(failed) == 1
    spool = Spool(load(settings_file).spool_dir)
    reason = spool.path(State.FAILED, failed[0][:-5], ".reason").read_text()
    assert "550" in reason
    assert "msmtp exit status" in reason
    assert smtp_server.password not in reason


def test_refused_connection_goes_to_deferred(settings_file, smtp_server):
    smtp_server.stop()
    fnm_spool(settings_file, "enqueue", str(ADVANCED / "ban.json"))

    fnm_spool(settings_file, "run", "--once")

    assert len(states(settings_file)["deferred"]) == 1
    assert states(settings_file)["failed"] == []


def test_temporary_reply_goes_to_deferred(settings_file, smtp_server):
    smtp_server.fail_rcpt("noc@example.com", 451, "4.3.0 try again later")
    fnm_spool(settings_file, "enqueue", str(ADVANCED / "ban.json"))

    fnm_spool(settings_file, "run", "--once")

    assert len(states(settings_file)["deferred"]) == 1


def test_malformed_event_fails_others_delivered(settings_file, smtp_server):
    spool = Spool(load(settings_file).spool_dir)
    fnm_spool(settings_file, "enqueue", str(ADVANCED / "ban.json"))
    broken = spool.dir(State.INCOMING) / "broken.json"
    broken.write_bytes(b'{"ip": "203.0.113.10", "action": ')
    old = os.stat(broken).st_mtime - 60
    os.utime(broken, (old, old))
    fnm_spool(settings_file, "enqueue", str(ADVANCED / "unban.json"))

    done = fnm_spool(settings_file, "run", "--once")

    assert done.returncode == 0, done.stderr
    assert len(smtp_server.wait_for(2)) == 2
    result = states(settings_file)
    assert len(result["sent"]) == 2
    assert len(result["failed"]) == 1
    reason = spool.path(State.FAILED, result["failed"][0][:-5], ".reason").read_text()
    assert "invalid JSON" in reason
    assert "'broken.json'" in reason


def test_disabled_notifications_leave_events_queued(make_settings_file, smtp_server):
    config = make_settings_file(email_notifications_enabled="off")
    fnm_spool(config, "enqueue", str(ADVANCED / "ban.json"))

    done = fnm_spool(config, "run", "--once")

    assert done.returncode == 0
    assert b"email_notifications_enabled is off" in done.stderr
    assert len(states(config)["incoming"]) == 1
    assert smtp_server.messages == []


def test_test_email_reaches_both_recipients(settings_file, smtp_server):
    done = fnm_spool(settings_file, "test")

    assert done.returncode == 0, done.stderr
    message = smtp_server.wait_for(1)[0]
    assert sorted(message.rcpt_tos) == ["noc@example.com", "oncall@example.org"]
    assert b"noc@example.com" in done.stdout


def test_test_email_wrong_password_explains(make_settings_file, smtp_server):
    smtp_server.reject_auth()
    config = make_settings_file()

    done = fnm_spool(config, "test")

    assert done.returncode != 0
    assert b"likely fix" in done.stderr
    assert smtp_server.password.encode() not in done.stderr


def test_retry_until_server_returns(settings_file, smtp_server):
    clock = FakeClock()
    processor = Processor(load(settings_file), clock=clock)
    Spool(processor.settings.spool_dir).enqueue((ADVANCED / "ban.json").read_bytes())
    smtp_server.stop()

    processor.process_pass()
    assert len(states(settings_file)["deferred"]) == 1
    clock.advance(10)
    processor.process_pass()
    assert len(states(settings_file)["deferred"]) == 1

    smtp_server.start()
    clock.advance(processor.settings.retry_min_seconds)
    processor.process_pass()

    assert len(states(settings_file)["sent"]) == 1
    assert len(smtp_server.wait_for(1)) == 1


def test_lifetime_expiry_lists_attempts(make_settings_file, smtp_server):
    config = make_settings_file(
        max_queue_lifetime=100, retry_min_seconds=30, retry_max_seconds=60
    )
    clock = FakeClock()
    processor = Processor(load(config), clock=clock)
    spool = Spool(processor.settings.spool_dir)
    spool.enqueue((ADVANCED / "ban.json").read_bytes(), now=clock.datetime())
    smtp_server.stop()

    for _ in range(6):
        processor.process_pass()
        clock.advance(60)

    result = states(config)
    assert result["deferred"] == []
    assert len(result["failed"]) == 1
    reason = spool.path(State.FAILED, result["failed"][0][:-5], ".reason").read_text()
    assert "expired" in reason
    assert "attempts: " in reason
    assert reason.count("msmtp exit status") >= 3


def test_sent_message_matches_what_msmtp_got(settings_file, smtp_server):
    fnm_spool(settings_file, "enqueue", str(ADVANCED / "ban.json"))
    fnm_spool(settings_file, "run", "--once")

    received = smtp_server.wait_for(1)[0]
    spool = Spool(load(settings_file).spool_dir)
    name = states(settings_file)["sent"][0][:-5]
    stored = email.message_from_bytes(
        spool.path(State.SENT, name, ".eml").read_bytes(), policy=email.policy.default
    )
    assert stored["Message-ID"] == received.parsed["Message-ID"]
    assert json.loads(spool.path(State.SENT, name).read_bytes())["action"] == "ban"


def test_repeated_ban_does_not_strand_first(make_settings_file, smtp_server):
    clock = FakeClock()
    processor = Processor(load(make_settings_file(group_wait=5)), clock=clock)
    spool = Spool(processor.settings.spool_dir)
    ban = b'{"ip": "203.0.113.180", "action": "ban"}'
    spool.enqueue(ban, now=clock.datetime())
    processor.process_pass()
    clock.advance(1)
    spool.enqueue(ban, now=clock.datetime())

    processor.process_pass()
    assert len(smtp_server.wait_for(1)) == 1
    clock.advance(6)
    processor.process_pass()

    assert len(smtp_server.wait_for(2)) == 2
    assert Spool(processor.settings.spool_dir).count(State.ACTIVE) == 0
    assert Spool(processor.settings.spool_dir).count(State.SENT) == 2


def test_lone_surrogate_and_nan_delivered(settings_file, smtp_server):
    event = (
        rb'{"ip": "203.0.113.26", "action": "\ud800ban", "attack_details": '
        rb'{"total_incoming_pps": NaN, "attack_type": "x\udfffy"}}'
    )
    spool = Spool(load(settings_file).spool_dir)
    spool.enqueue(event)

    done = fnm_spool(settings_file, "run", "--once")

    assert done.returncode == 0, done.stderr
    body = smtp_server.wait_for(1)[0].parsed.get_body().get_content()
    assert "NaN" in body
    assert "x\ufffdy" in body
    assert len(states(settings_file)["sent"]) == 1


def test_empty_subject_falls_back(make_settings_file, smtp_server):
    config = make_settings_file(
        email_subject_blackhole_block="{{ details.attack_typ }}"
    )
    fnm_spool(config, "enqueue", str(ADVANCED / "ban.json"))

    fnm_spool(config, "run", "--once")

    subject = smtp_server.wait_for(1)[0].parsed["Subject"]
    assert subject == "FastNetMon blocked host 203.0.113.10"


def test_settings_made_with_set_deliver(tmp_path, smtp_server):
    config = tmp_path / "made-with-set.conf"
    (tmp_path / "log").mkdir(exist_ok=True)
    commands = [
        ("spool_dir", tmp_path / "spool"),
        ("msmtp_config", tmp_path / "etc" / "msmtp.conf"),
        ("email_log", tmp_path / "log" / "email.log"),
        ("tls_trust_file", smtp_server.ca_file),
        ("email_notifications_enabled", "enable"),
        ("email_notifications_tls", "enable"),
        ("email_notifications_auth", "enable"),
        ("email_notifications_host", smtp_server.host),
        ("email_notifications_port", smtp_server.port),
        ("email_notifications_from", "fnm@example.com"),
        ("email_notifications_username", smtp_server.username),
        ("email_notifications_password", smtp_server.password),
        ("email_notifications_recipients", "noc@example.com"),
        ("email_notifications_recipients", "oncall@example.org"),
        ("group_wait", "0"),
    ]
    for key, value in commands:
        done = fnm_spool(config, "set", "main", key, str(value))
        assert done.returncode == 0, done.stderr
        assert smtp_server.password.encode() not in done.stdout

    tested = fnm_spool(config, "test")
    alias = fnm_spool(config, "set", "email_test")

    assert tested.returncode == 0, tested.stderr
    assert alias.returncode == 0, alias.stderr
    for message in smtp_server.wait_for(2):
        assert sorted(message.rcpt_tos) == ["noc@example.com", "oncall@example.org"]
        assert message.tls
        assert message.login == smtp_server.username

    for call in ("1-ban", "2-attack_details", "3-unban"):
        argv = (COMMUNITY / f"{call}.argv").read_bytes().split(b"\0")[:-1]
        stdin = (COMMUNITY / f"{call}.stdin").read_bytes()
        done = fnm_spool(config, "notify", *[a.decode() for a in argv], stdin=stdin)
        assert done.returncode == 0, done.stderr
    done = fnm_spool(config, "enqueue", str(ADVANCED / "partial_block.json"))
    assert done.returncode == 0, done.stderr
    done = fnm_spool(config, "run", "--once")

    assert done.returncode == 0, done.stderr
    subjects = sorted(m.parsed["Subject"] for m in smtp_server.wait_for(6)[2:])
    assert subjects == [
        "FastNetMon attack details for host 203.0.113.10",
        "FastNetMon blocked host 203.0.113.10",
        "FastNetMon partially blocked traffic for host 203.0.113.10",
        "FastNetMon unblocked host 203.0.113.10",
    ]
    assert len(states(config)["sent"]) == 4
