"""The test SMTP server against the real msmtp, and msmtp's exit statuses.

The transport classifies deliveries by msmtp's exit status, so these tests
pin down what msmtp 1.8.23 (Debian 12) returns for each fault the server
can inject. Each test writes a msmtp config by hand and pipes a message to
``msmtp -t -a default --file=CONFIG``, as the transport does.
"""

import configparser
import shutil
import subprocess
import time
from pathlib import Path
from smtpd import IMPLICIT_TLS, NO_TLS, LoopbackCA, SMTPServer

import pytest

# sysexits.h
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77

MESSAGE = (
    b"From: fnm@example.com\n"
    b"To: noc@example.com\n"
    b"Subject: FastNetMon blocked host 203.0.113.10\n"
    b"\n"
    b"Attack type: udp_flood\n"
    b".a line that starts with a dot\n"
)


@pytest.fixture(scope="module")
def msmtp() -> str:
    path = shutil.which("msmtp")
    if path is None:
        pytest.fail("msmtp not found in PATH: install Debian's msmtp (make deps)")
    return path


def write_msmtp_config(directory: Path, server: SMTPServer, **changes) -> Path:
    """Write a msmtp config for ``server`` and return its path.

    ``changes`` replace or add lines, and a value of None removes a line.
    """
    lines = {
        "host": server.host,
        "port": server.port,
        "from": "fnm@example.com",
        "tls": "on",
        "tls_starttls": "on",
        "tls_trust_file": server.ca_file,
        "auth": "on",
        "user": server.username,
        "password": server.password,
        "timeout": 10,
    }
    lines.update(changes)
    text = "defaults\naccount default\n"
    text += "".join(f"{key} {value}\n" for key, value in lines.items() if value)
    path = directory / "msmtp.conf"
    path.write_text(text)
    # The file contains a password, so only its owner may read it.
    path.chmod(0o600)
    return path


def send(msmtp: str, config: Path, message: bytes = MESSAGE):
    """Pipe ``message`` to msmtp as the transport does and return the result."""
    return subprocess.run(
        [msmtp, "-t", "-a", "default", f"--file={config}"],
        input=message,
        capture_output=True,
        timeout=60,
    )


def test_msmtp_delivers_over_starttls_with_auth(msmtp, smtp_server, tmp_path):
    result = send(msmtp, write_msmtp_config(tmp_path, smtp_server))

    assert result.returncode == 0, result.stderr
    [received] = smtp_server.wait_for(1)
    assert received.sender == "fnm@example.com"
    assert received.recipients == ("noc@example.com",)
    assert received.login == "fnm"
    assert received.tls is True
    assert received.parsed["Subject"] == "FastNetMon blocked host 203.0.113.10"
    assert received.raw.endswith(b"\r\n.a line that starts with a dot\r\n")


@pytest.mark.parametrize("method", ["plain", "login"])
def test_msmtp_auth_method_reaches_server(msmtp, smtp_server, tmp_path, method):
    config = write_msmtp_config(tmp_path, smtp_server, auth=method)

    result = send(msmtp, config)

    assert result.returncode == 0, result.stderr
    [received] = smtp_server.wait_for(1)
    assert received.auth_mechanism == method.upper()


def test_msmtp_connects_by_name_localhost(msmtp, smtp_server, tmp_path):
    config = write_msmtp_config(tmp_path, smtp_server, host="localhost")

    result = send(msmtp, config)

    assert result.returncode == 0, result.stderr
    assert len(smtp_server.wait_for(1)) == 1


@pytest.mark.parametrize(
    ("code", "status"),
    [(550, EX_DATAERR), (451, EX_UNAVAILABLE)],
)
def test_msmtp_status_for_rejected_rcpt(msmtp, smtp_server, tmp_path, code, status):
    smtp_server.fail_rcpt("noc@example.com", code)

    result = send(msmtp, write_msmtp_config(tmp_path, smtp_server))

    # msmtp 1.8.23 exits 69, not 75, for a 4xx reply to RCPT. Only the reply
    # code in its stderr distinguishes a temporary rejection from a permanent.
    assert result.returncode == status
    assert b"recipient address noc@example.com not accepted" in result.stderr
    assert f"server message: {code} ".encode() in result.stderr
    assert smtp_server.messages == []


def test_msmtp_sends_nothing_when_one_rcpt_fails(msmtp, smtp_server, tmp_path):
    smtp_server.fail_rcpt("oncall@example.org", 550)
    message = MESSAGE.replace(
        b"To: noc@example.com", b"To: noc@example.com, oncall@example.org"
    )

    result = send(msmtp, write_msmtp_config(tmp_path, smtp_server), message)

    assert result.returncode == EX_DATAERR
    assert b"oncall@example.org not accepted" in result.stderr
    assert smtp_server.messages == []


def test_fail_rcpt_undone_by_accept_rcpt(msmtp, smtp_server, tmp_path):
    config = write_msmtp_config(tmp_path, smtp_server)
    smtp_server.fail_rcpt("NOC@example.com", 451, "4.2.1 try later")
    assert send(msmtp, config).returncode == EX_UNAVAILABLE

    smtp_server.accept_rcpt("noc@example.com")

    result = send(msmtp, config)
    assert result.returncode == 0, result.stderr
    assert len(smtp_server.wait_for(1)) == 1


@pytest.mark.parametrize("code", [554, 452])
def test_msmtp_status_for_rejected_data(msmtp, smtp_server, tmp_path, code):
    smtp_server.fail_data(code)

    result = send(msmtp, write_msmtp_config(tmp_path, smtp_server))

    assert result.returncode == EX_UNAVAILABLE
    assert b"the server did not accept the mail" in result.stderr
    assert f"server message: {code} ".encode() in result.stderr
    assert smtp_server.messages == []


def test_msmtp_status_for_wrong_password(msmtp, smtp_server, tmp_path):
    config = write_msmtp_config(tmp_path, smtp_server, password="not-the-password")

    result = send(msmtp, config)

    assert result.returncode == EX_NOPERM
    assert b"authentication failed" in result.stderr
    assert b"535 " in result.stderr
    assert b"not-the-password" not in result.stderr
    assert smtp_server.messages == []


def test_reject_auth_rejects_right_password(msmtp, smtp_server, tmp_path):
    config = write_msmtp_config(tmp_path, smtp_server)
    smtp_server.reject_auth()
    assert send(msmtp, config).returncode == EX_NOPERM

    smtp_server.reject_auth(False)

    result = send(msmtp, config)
    assert result.returncode == 0, result.stderr


def test_server_requires_auth(msmtp, smtp_server, tmp_path):
    config = write_msmtp_config(tmp_path, smtp_server, auth="off", password=None)

    result = send(msmtp, config)

    assert result.returncode == EX_DATAERR
    assert b"530 5.7.0 Authentication required" in result.stderr
    assert smtp_server.messages == []


def test_server_requires_starttls_before_auth(msmtp, smtp_server, tmp_path):
    config = write_msmtp_config(
        tmp_path, smtp_server, tls="off", tls_starttls=None, tls_trust_file=None
    )

    result = send(msmtp, config)

    assert result.returncode == EX_UNAVAILABLE
    assert b"the server does not support authentication" in result.stderr
    assert smtp_server.messages == []


def test_msmtp_status_for_untrusted_certificate(msmtp, smtp_server, tmp_path):
    other_ca = LoopbackCA(tmp_path)
    config = write_msmtp_config(tmp_path, smtp_server, tls_trust_file=other_ca.ca_file)

    result = send(msmtp, config)

    assert result.returncode == EX_UNAVAILABLE
    assert b"TLS certificate verification failed" in result.stderr
    assert smtp_server.messages == []


def test_msmtp_status_for_connection_refused(msmtp, smtp_server, tmp_path):
    config = write_msmtp_config(tmp_path, smtp_server)
    smtp_server.stop()

    result = send(msmtp, config)

    assert result.returncode == EX_TEMPFAIL
    assert b"Connection refused" in result.stderr


def test_msmtp_times_out_on_stalled_server(msmtp, smtp_server, tmp_path):
    config = write_msmtp_config(tmp_path, smtp_server, timeout=2)
    smtp_server.stall()

    started = time.monotonic()
    result = send(msmtp, config)
    elapsed = time.monotonic() - started

    assert result.returncode == EX_IOERR
    assert b"the operation timed out" in result.stderr
    assert 1.5 < elapsed < 10


def test_resume_after_stall_serves_again(msmtp, smtp_server, tmp_path):
    config = write_msmtp_config(tmp_path, smtp_server, timeout=2)
    smtp_server.stall()
    assert send(msmtp, config).returncode == EX_IOERR

    smtp_server.resume()

    result = send(msmtp, config)
    assert result.returncode == 0, result.stderr
    assert len(smtp_server.wait_for(1)) == 1


def test_restart_keeps_port_and_delivers(msmtp, smtp_server, tmp_path):
    config = write_msmtp_config(tmp_path, smtp_server)
    port = smtp_server.port
    smtp_server.stop()
    assert send(msmtp, config).returncode == EX_TEMPFAIL

    smtp_server.start()

    assert smtp_server.port == port
    result = send(msmtp, config)
    assert result.returncode == 0, result.stderr
    assert len(smtp_server.wait_for(1)) == 1


def test_implicit_tls_server_delivers(msmtp, tls_ca, tmp_path):
    with SMTPServer(ca=tls_ca, tls=IMPLICIT_TLS) as server:
        config = write_msmtp_config(tmp_path, server, tls_starttls="off")

        result = send(msmtp, config)

        assert result.returncode == 0, result.stderr
        [received] = server.wait_for(1)
        assert received.tls is True
        assert received.login == "fnm"


def test_plain_server_without_auth_delivers(msmtp, tmp_path):
    with SMTPServer(tls=NO_TLS, auth=False) as server:
        config = write_msmtp_config(
            tmp_path,
            server,
            tls="off",
            tls_starttls=None,
            tls_trust_file=None,
            auth="off",
            user=None,
            password=None,
        )

        result = send(msmtp, config)

        assert result.returncode == 0, result.stderr
        [received] = server.wait_for(1)
        assert received.tls is False
        assert received.login is None
        assert received.auth_mechanism is None


def test_wait_for_reports_count_on_timeout(smtp_server):
    with pytest.raises(AssertionError, match="expected 1 messages .* received 0"):
        smtp_server.wait_for(1, timeout=0.2)


def test_clear_forgets_messages(msmtp, smtp_server, tmp_path):
    assert send(msmtp, write_msmtp_config(tmp_path, smtp_server)).returncode == 0
    smtp_server.wait_for(1)

    smtp_server.clear()

    assert smtp_server.messages == []


def test_settings_file_points_at_server(settings_file, smtp_server, tmp_path):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(settings_file)
    main = parser["main"]

    assert main["email_notifications_host"] == "127.0.0.1"
    assert main.getint("email_notifications_port") == smtp_server.port
    assert main["email_notifications_password"] == smtp_server.password
    assert main["tls_trust_file"] == str(smtp_server.ca_file)
    assert main["spool_dir"] == str(tmp_path / "spool")
    assert settings_file.stat().st_mode & 0o077 == 0
