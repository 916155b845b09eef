"""The command line's safety nets: broken settings, pipes, limits."""

import json
import subprocess
import sys
from pathlib import Path

from spool.history import summarize

ROOT = Path(__file__).resolve().parent.parent
COMMUNITY = Path(__file__).resolve().parent / "fixtures" / "fastnetmon-1.2.4"


def fnm_spool(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "fnm_spool.py"), *args],
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def test_notify_enqueues_despite_broken_settings(tmp_path):
    spool = tmp_path / "spool"
    config = tmp_path / "fnm_spool.conf"
    config.write_text(
        f"[main]\nspool_dir = {spool}\nbogus_key = 1\nemail_notifications_port = 0\n"
    )
    stdin = (COMMUNITY / "1-ban.stdin").read_bytes()

    done = fnm_spool("-c", str(config), "notify", "203.0.113.10", "incoming",
                     "1648", "ban", stdin=stdin)  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert b"bogus_key" in done.stderr
    assert b"anyway" in done.stderr
    [event] = (spool / "incoming").glob("*.json")
    assert json.loads(event.read_bytes())["ip"] == "203.0.113.10"


def test_notify_malformed_call_still_enqueued(tmp_path):
    spool = tmp_path / "spool"
    config = tmp_path / "fnm_spool.conf"
    config.write_text(f"[main]\nspool_dir = {spool}\n")

    done = fnm_spool("-c", str(config), "notify", "203.0.113.10", "incoming", "1648")

    assert done.returncode == 64
    [event] = (spool / "incoming").glob("*.json")
    assert json.loads(event.read_bytes())["action"] == "unrecognised_notify_call"


def test_list_into_closed_pipe_exits_quietly(tmp_path):
    spool = tmp_path / "spool"
    config = tmp_path / "fnm_spool.conf"
    config.write_text(f"[main]\nspool_dir = {spool}\n")
    for number in range(2000):
        (spool / "incoming").mkdir(parents=True, exist_ok=True)
        (spool / "incoming" / f"e{number}.json").write_text("{}")

    done = subprocess.run(
        f"{sys.executable} {ROOT / 'fnm_spool.py'} -c {config} list | head -1",
        shell=True,
        capture_output=True,
        timeout=60,
    )

    assert b"Traceback" not in done.stderr
    assert b"BrokenPipe" not in done.stderr


def test_set_rejects_huge_group_wait(tmp_path):
    config = tmp_path / "fnm_spool.conf"

    done = fnm_spool("-c", str(config), "set", "main", "group_wait", "1e308")

    assert done.returncode == 64
    assert b"from 0 to 300" in done.stderr
    assert not config.exists()


def test_set_without_host_writes_no_msmtp_config(tmp_path):
    config = tmp_path / "fnm_spool.conf"
    msmtp_config = tmp_path / "etc" / "msmtp.conf"
    fnm_spool("-c", str(config), "set", "main", "msmtp_config", str(msmtp_config))

    fnm_spool("-c", str(config), "set", "main", "spool_dir", str(tmp_path / "s"))
    assert not msmtp_config.exists()

    fnm_spool("-c", str(config), "set", "main", "email_notifications_host", "mx.test")
    assert msmtp_config.exists()


def test_summary_names_cause_not_closing_line():
    stderr = (
        "msmtp: recipient address noc@example.com not accepted by the server\n"
        "msmtp: server message: 550 5.1.1 mailbox unavailable\n"
        "msmtp: could not send mail (account default from /etc/msmtp.conf)\n"
    )

    summary = summarize(stderr)

    assert "noc@example.com" in summary
    assert "550" in summary
    assert "could not send mail" not in summary
