"""Fixtures shared by the test suite: a CA, a real SMTP server, a settings file."""

import configparser
import sys
from pathlib import Path

import pytest

# The tests and the demo import the helper module beside this file as
# ``smtpd``. On Python 3.11 it shadows the deprecated standard module of that
# name, which nothing here uses.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from smtpd import AUTH_WITHOUT_TLS_WARNING, LoopbackCA, SMTPServer  # noqa: E402

SENDER = "fnm@example.com"
RECIPIENTS = ("noc@example.com", "oncall@example.org")


def pytest_configure(config):
    # pytest resets warning filters for each test, so the filter that the
    # smtpd module installs at import is repeated here for the same reason.
    config.addinivalue_line(
        "filterwarnings", f"ignore:{AUTH_WITHOUT_TLS_WARNING}:UserWarning"
    )


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory) -> LoopbackCA:
    """A CA made for this test session and a certificate for 127.0.0.1."""
    return LoopbackCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def smtp_server(tls_ca):
    """An SMTP server on 127.0.0.1 that requires STARTTLS, then AUTH.

    The username is ``fnm`` and the password a random token
    (``smtp_server.password``). See :class:`smtpd.SMTPServer` for the fault
    injection methods.
    """
    with SMTPServer(ca=tls_ca) as server:
        yield server


@pytest.fixture
def make_settings_file(tmp_path, smtp_server):
    """Return a function that writes a settings file for ``smtp_server``.

    Keyword arguments override or add ``[main]`` keys, and a value of None
    removes the key. The function returns the path of the file,
    ``tmp_path/fnm_spool.conf``. The spool, msmtp config and e-mail log all
    live under ``tmp_path``, and only the log directory exists beforehand,
    as ``/var/log/fastnetmon`` does on a host running FastNetMon.
    """

    def write(**overrides) -> Path:
        values = {
            "email_notifications_enabled": "on",
            "email_notifications_tls": "on",
            "email_notifications_auth": "on",
            "email_notifications_host": smtp_server.host,
            "email_notifications_port": str(smtp_server.port),
            "email_notifications_from": SENDER,
            "email_notifications_username": smtp_server.username,
            "email_notifications_password": smtp_server.password,
            "email_notifications_recipients": ",".join(RECIPIENTS),
            "spool_dir": str(tmp_path / "spool"),
            "msmtp_config": str(tmp_path / "etc" / "msmtp.conf"),
            "email_log": str(tmp_path / "log" / "email.log"),
            "tls_trust_file": str(smtp_server.ca_file),
            "msmtp_timeout": "10",
            "group_wait": "0",
            "incoming_grace_seconds": "1",
        }
        for key, value in overrides.items():
            if value is None:
                values.pop(key, None)
            else:
                values[key] = str(value)

        (tmp_path / "log").mkdir(exist_ok=True)
        parser = configparser.ConfigParser(interpolation=None)
        parser["main"] = values
        path = tmp_path / "fnm_spool.conf"
        with path.open("w", encoding="utf-8") as file:
            parser.write(file)
        # The file contains the SMTP password, as a real one would.
        path.chmod(0o600)
        return path

    return write


@pytest.fixture
def settings_file(make_settings_file) -> Path:
    """A settings file that sends to ``smtp_server`` (see make_settings_file)."""
    return make_settings_file()
