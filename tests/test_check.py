"""Tests of ``fnm_spool check`` against real files, Jinja2 and msmtp."""

import configparser
import shutil
from pathlib import Path

import pytest

from spool import check
from spool.check import Check, exit_status, format_checks, run_checks
from spool.errors import EX_CANTCREAT, EX_CONFIG, EX_UNAVAILABLE
from spool.msmtpconf import write_msmtp_config
from spool.settings import load
from spool.spooldir import Spool

MSMTP = shutil.which("msmtp")
DEBIAN_PROFILE = Path("/etc/apparmor.d/usr.bin.msmtp")
PROFILE = """\
# A profile shaped like Debian's, written for these tests.
#include <tunables/global>

profile msmtp /usr/bin/msmtp flags=(attach_disconnected) {
  #include <abstractions/base>

  /usr/bin/msmtp          mr,
  /etc/msmtprc            r,
  owner @{HOME}/.msmtp*   r,
  /var/log/msmtp          wk,

  profile helpers {
    /** rwk,
  }

  #include <local/usr.bin.msmtp>
}
"""


def write_settings(tmp_path: Path, **overrides) -> Path:
    """Write a complete settings file under ``tmp_path`` and its msmtp config.

    Keyword arguments replace keys; None removes one. The spool and the
    log directory exist, as after an installation.
    """
    values = {
        "email_notifications_enabled": "on",
        "email_notifications_host": "127.0.0.1",
        "email_notifications_port": "2525",
        "email_notifications_from": "fnm@example.com",
        "email_notifications_username": "fnm",
        "email_notifications_password": "s3cret-for-tests",
        "email_notifications_recipients": "noc@example.com",
        "spool_dir": str(tmp_path / "spool"),
        "msmtp_path": MSMTP or "msmtp",
        "msmtp_config": str(tmp_path / "etc" / "msmtp.conf"),
        "email_log": str(tmp_path / "log" / "email.log"),
    }
    for key, value in overrides.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = str(value)
    parser = configparser.ConfigParser(interpolation=None)
    parser["main"] = values
    path = tmp_path / "fnm_spool.conf"
    with path.open("w", encoding="utf-8") as stream:
        parser.write(stream)
    path.chmod(0o600)

    (tmp_path / "log").mkdir(exist_ok=True)
    Spool(tmp_path / "spool")
    write_msmtp_config(load(path))
    return path


def checks_of(tmp_path: Path, path: Path, explicit: bool = True) -> list[Check]:
    return run_checks(
        path,
        explicit,
        apparmor_fs=tmp_path / "securityfs",
        apparmor_dir=tmp_path / "apparmor.d",
    )


def by_status(checks: list[Check], status: str) -> list[Check]:
    return [item for item in checks if item.status == status]


def find(checks: list[Check], subject_start: str) -> list[Check]:
    return [item for item in checks if item.subject.startswith(subject_start)]


needs_msmtp = pytest.mark.skipif(MSMTP is None, reason="msmtp is not installed")


@needs_msmtp
def test_check_good_config(tmp_path):
    path = write_settings(tmp_path)

    checks = checks_of(tmp_path, path)

    assert by_status(checks, "error") == []
    assert by_status(checks, "warning") == []
    assert exit_status(checks) == 0
    version = find(checks, "msmtp_path")[0]
    assert version.status == "ok"
    assert version.message.startswith("msmtp version ")
    assert MSMTP in version.message
    assert find(checks, "AppArmor")[0].message == "not enabled"


@needs_msmtp
def test_check_missing_host(tmp_path):
    path = write_settings(tmp_path, email_notifications_host=None)

    checks = checks_of(tmp_path, path)

    errors = by_status(checks, "error")
    assert [item.subject for item in errors] == ["email_notifications_host"]
    assert f"fnm_spool -c {path} set main email_notifications_host HOST" in (
        errors[0].message
    )
    assert exit_status(checks) == EX_CONFIG


@needs_msmtp
def test_check_missing_recipients_and_sender(tmp_path):
    path = write_settings(
        tmp_path,
        email_notifications_recipients=None,
        email_notifications_from=None,
    )

    errors = by_status(checks_of(tmp_path, path), "error")

    assert {item.subject for item in errors} == {
        "email_notifications_from",
        "email_notifications_recipients",
    }


def test_check_bad_subject(tmp_path):
    path = tmp_path / "fnm_spool.conf"
    path.write_text("[main]\nemail_subject_blackhole_block = Blocked {{ ip \n")

    checks = checks_of(tmp_path, path)

    assert len(checks) == 1
    assert checks[0].status == "error"
    assert "email_subject_blackhole_block" in checks[0].message
    assert exit_status(checks) == EX_CONFIG


@needs_msmtp
def test_check_bad_subject_override(tmp_path):
    path = write_settings(tmp_path)
    settings = load(path).with_overrides(email_subject_partial_block="{% if %}")

    checks = check._check_templates(settings)

    assert [item.subject for item in checks] == ["email_subject_partial_block"]
    assert checks[0].status == "error"
    assert "invalid Jinja2 template" in checks[0].message


@needs_msmtp
def test_check_template_dir(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "ban.j2").write_text("Host {{ v.ip }}\n{% for x in %}\n")
    (templates / "unban.j2").write_text("Host {{ v.ip }} is free\n")
    path = write_settings(tmp_path, template_dir=templates)

    checks = checks_of(tmp_path, path)

    errors = by_status(checks, "error")
    assert [item.subject for item in errors] == [str(templates / "ban.j2")]
    assert errors[0].message.startswith("line 2: ")
    assert exit_status(checks) == EX_CONFIG


@needs_msmtp
def test_check_password_file_mode_0644(tmp_path):
    path = write_settings(tmp_path)
    path.chmod(0o644)

    checks = checks_of(tmp_path, path)

    warnings = by_status(checks, "warning")
    assert len(warnings) == 1
    assert "mode 0644" in warnings[0].message
    assert f"chmod 600 {path}" in warnings[0].message
    assert exit_status(checks) == 0


@needs_msmtp
def test_check_mode_0644_without_password(tmp_path):
    path = write_settings(tmp_path, email_notifications_password=None)
    path.chmod(0o644)

    assert by_status(checks_of(tmp_path, path), "warning") == []


@needs_msmtp
def test_check_notifications_disabled(tmp_path):
    path = write_settings(tmp_path, email_notifications_enabled="off")

    checks = checks_of(tmp_path, path)

    warnings = find(checks, "email_notifications_enabled")
    assert warnings[0].status == "warning"
    assert "email_notifications_enabled enable" in warnings[0].message
    assert exit_status(checks) == 0


def test_check_missing_msmtp(tmp_path):
    path = write_settings(tmp_path, msmtp_path=tmp_path / "no" / "msmtp")

    checks = checks_of(tmp_path, path)

    errors = by_status(checks, "error")
    assert [item.subject for item in errors] == [f"msmtp_path {tmp_path}/no/msmtp"]
    assert "apt-get install msmtp" in errors[0].message
    assert exit_status(checks) == EX_UNAVAILABLE


@needs_msmtp
def test_check_msmtp_config_missing_and_stale(tmp_path):
    path = write_settings(tmp_path)
    config = tmp_path / "etc" / "msmtp.conf"
    config.write_text(config.read_text().replace("port 2525", "port 25"))
    config.chmod(0o644)

    stale = find(checks_of(tmp_path, path), "msmtp_config")
    config.unlink()
    missing = find(checks_of(tmp_path, path), "msmtp_config")

    assert [item.status for item in stale] == ["warning", "warning"]
    assert "mode 0644" in stale[0].message
    assert "out of date" in stale[1].message
    assert [item.status for item in missing] == ["error"]
    assert "fnm_spool run --once" in missing[0].message
    assert missing[0].exit_status == EX_UNAVAILABLE


def test_check_settings_file_missing(tmp_path):
    path = tmp_path / "absent.conf"

    explicit = checks_of(tmp_path, path, explicit=True)
    implicit = checks_of(tmp_path, path, explicit=False)

    assert [item.status for item in explicit] == ["error"]
    assert exit_status(explicit) == EX_CONFIG
    assert implicit[0].status == "warning"
    assert "defaults" in implicit[0].message
    assert exit_status(implicit) == EX_CONFIG


@needs_msmtp
def test_check_email_log_directory_missing(tmp_path):
    path = write_settings(tmp_path, email_log=tmp_path / "nolog" / "email.log")
    # Writing msmtp.conf creates the log's directory; here it was removed later.
    if (tmp_path / "nolog").exists():
        (tmp_path / "nolog").rmdir()

    checks = checks_of(tmp_path, path)

    errors = by_status(checks, "error")
    assert [item.subject for item in errors] == [
        f"email_log {tmp_path}/nolog/email.log"
    ]
    assert exit_status(checks) == EX_CANTCREAT


@needs_msmtp
def test_check_spool_not_created_yet(tmp_path):
    path = write_settings(tmp_path, spool_dir=tmp_path / "new" / "spool")

    spool_checks = find(checks_of(tmp_path, path), "spool_dir")

    assert [item.status for item in spool_checks] == ["warning"]
    assert "fnm_spool run creates them" in spool_checks[0].message


@needs_msmtp
def test_check_spool_state_dir_missing(tmp_path):
    path = write_settings(tmp_path)
    (tmp_path / "spool" / "deferred").rmdir()

    spool_checks = find(checks_of(tmp_path, path), "spool_dir")

    assert [item.status for item in spool_checks] == ["warning"]
    assert spool_checks[0].message.startswith("deferred/ missing")


# AppArmor


def write_apparmor(tmp_path: Path, profiles: str, local: str | None = None) -> None:
    (tmp_path / "securityfs").mkdir(exist_ok=True)
    (tmp_path / "securityfs" / "profiles").write_text(profiles)
    (tmp_path / "apparmor.d" / "local").mkdir(parents=True, exist_ok=True)
    (tmp_path / "apparmor.d" / "usr.bin.msmtp").write_text(PROFILE)
    if local is not None:
        (tmp_path / "apparmor.d" / "local" / "usr.bin.msmtp").write_text(local)


ENFORCED = "/usr/bin/man (enforce)\nmsmtp (enforce)\nmsmtp//helpers (enforce)\n"


@needs_msmtp
def test_apparmor_profile_lacking_rules(tmp_path):
    path = write_settings(tmp_path)
    write_apparmor(tmp_path, ENFORCED, local="")

    checks = checks_of(tmp_path, path)

    errors = by_status(checks, "error")
    assert [item.subject for item in errors] == ["AppArmor profile msmtp"]
    message = errors[0].message
    assert f"{tmp_path}/apparmor.d/local/usr.bin.msmtp" in message
    assert f"    {tmp_path}/etc/msmtp.conf r," in message
    assert f"    {tmp_path}/log/email.log wk," in message
    assert f"apparmor_parser -r {tmp_path}/apparmor.d/usr.bin.msmtp" in message
    assert "disable" not in message
    assert exit_status(checks) == EX_UNAVAILABLE


@needs_msmtp
def test_apparmor_profile_with_rules(tmp_path):
    path = write_settings(tmp_path)
    local = f"# fnm_spool\n{tmp_path}/etc/*.conf r,\nowner {tmp_path}/log/** wk,\n"
    write_apparmor(tmp_path, ENFORCED, local=local)

    checks = checks_of(tmp_path, path)

    apparmor = find(checks, "AppArmor")
    assert [item.status for item in apparmor] == ["ok"]
    assert exit_status(checks) == 0


@needs_msmtp
def test_apparmor_deny_rule_wins(tmp_path):
    path = write_settings(tmp_path)
    local = (
        f"{tmp_path}/etc/msmtp.conf r,\n{tmp_path}/log/email.log wk,\n"
        f"deny {tmp_path}/log/** w,\n"
    )
    write_apparmor(tmp_path, ENFORCED, local=local)

    errors = by_status(checks_of(tmp_path, path), "error")

    assert len(errors) == 1
    assert "email.log wk," in errors[0].message
    assert "msmtp.conf r," not in errors[0].message


@needs_msmtp
def test_apparmor_ignores_child_profile(tmp_path):
    path = write_settings(tmp_path)
    # PROFILE grants /** rwk only to its child profile "helpers".
    write_apparmor(tmp_path, ENFORCED)

    errors = by_status(checks_of(tmp_path, path), "error")

    assert [item.subject for item in errors] == ["AppArmor profile msmtp"]


@needs_msmtp
def test_apparmor_complain_mode_is_not_checked(tmp_path):
    path = write_settings(tmp_path)
    write_apparmor(tmp_path, "msmtp (complain)\n", local="")

    apparmor = find(checks_of(tmp_path, path), "AppArmor")

    assert [item.status for item in apparmor] == ["ok"]
    assert apparmor[0].message == "no msmtp profile in enforce mode"


@needs_msmtp
@pytest.mark.skipif(not DEBIAN_PROFILE.exists(), reason="no Debian msmtp profile")
def test_apparmor_debian_profile(tmp_path):
    path = write_settings(tmp_path)
    write_apparmor(tmp_path, ENFORCED, local="")
    profile = tmp_path / "apparmor.d" / "usr.bin.msmtp"
    profile.write_text(DEBIAN_PROFILE.read_text())

    before = by_status(checks_of(tmp_path, path), "error")
    fix_lines = [
        line.strip()
        for line in before[0].message.splitlines()
        if line.startswith("    ")
    ]
    (tmp_path / "apparmor.d" / "local" / "usr.bin.msmtp").write_text(
        "\n".join(fix_lines) + "\n"
    )
    after = by_status(checks_of(tmp_path, path), "error")

    assert [item.subject for item in before] == ["AppArmor profile msmtp"]
    assert len(fix_lines) == 2
    assert after == []


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("/etc/msmtprc", "/etc/msmtprc", True),
        ("/var/log/**", "/var/log/fastnetmon/email.log", True),
        ("/var/log/*", "/var/log/fastnetmon/email.log", False),
        ("/var/log/*/email.log", "/var/log/fastnetmon/email.log", True),
        ("/{,usr/}bin/msmtp", "/usr/bin/msmtp", True),
        ("/{,usr/}bin/msmtp", "/bin/msmtp", True),
        ("/etc/fastnetmon/msmtp.con?", "/etc/fastnetmon/msmtp.conf", True),
        ("/dev/pts/[0-9]*", "/dev/pts/3", True),
        ("@{HOME}/.msmtp*", "/home/fnm/.msmtprc", True),
        ("@{HOME}/.msmtp*", "/etc/fastnetmon/.msmtprc", False),
        ("@{PROC}/@{pid}/loginuid", "/proc/1/loginuid", False),
    ],
)
def test_apparmor_glob(glob, path, matches):
    assert bool(check._glob_regex(glob).fullmatch(path)) is matches


# Output


def test_exit_status_priority():
    config = Check("error", "email_notifications_host", "missing", EX_CONFIG)
    msmtp = Check("error", "msmtp_path msmtp", "not found", EX_UNAVAILABLE)
    spool = Check("error", "spool_dir /x", "not writable", EX_CANTCREAT)
    warning = Check("warning", "email_notifications_enabled", "off")

    assert exit_status([]) == 0
    assert exit_status([warning]) == 0
    assert exit_status([spool, msmtp]) == EX_UNAVAILABLE
    assert exit_status([spool, msmtp, config]) == EX_CONFIG
    assert exit_status([spool, warning]) == EX_CANTCREAT


def test_format_checks():
    checks = [
        Check("ok", "templates", "subjects and templates compile"),
        Check("error", "AppArmor profile msmtp", "denies\n    /x r,\nthen run", 69),
        Check("warning", "email_notifications_enabled", "off"),
    ]

    assert format_checks(checks).splitlines() == [
        "ok       templates: subjects and templates compile",
        "error    AppArmor profile msmtp: denies",
        "             /x r,",
        "         then run",
        "warning  email_notifications_enabled: off",
        "1 error(s), 1 warning(s)",
    ]
