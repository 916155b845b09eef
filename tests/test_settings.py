"""Tests of spool.settings against real files in tmp_path."""

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from spool import settings
from spool.errors import EX_CONFIG, EX_USAGE, ConfigError, UsageError
from spool.settings import (
    DEFAULT_CONFIG,
    KEYS,
    Settings,
    config_path,
    delete_value,
    load,
    parse_bool,
    set_value,
    show_values,
)

SECRET = "s3cret-Pa55"
PORT = "email_notifications_port"
RECIPIENTS = "email_notifications_recipients"
PASSWORD = "email_notifications_password"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), mode_of(path)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A settings file with a few keys, a comment and mode 0640."""
    path = tmp_path / "fnm_spool.conf"
    path.write_text(
        "# operator's comment\n"
        "[main]\n"
        "email_notifications_host = smtp.example.com\n"
        "email_notifications_port = 587\n"
    )
    path.chmod(0o640)
    return path


# The table and the dataclass


def test_table_matches_dataclass_fields():
    fields = [field.name for field in dataclasses.fields(Settings)]
    assert list(KEYS) == fields


def test_table_descriptions_one_line():
    for key in KEYS.values():
        assert key.description
        assert "\n" not in key.description


def test_defaults_pass_own_parsers():
    for name, key in KEYS.items():
        text = settings.format_value(name, getattr(Settings(), name))
        assert key.parse(text) == getattr(Settings(), name), name


def test_repr_hides_password():
    assert SECRET not in repr(Settings(email_notifications_password=SECRET))


# config_path


def test_config_path_explicit(monkeypatch):
    monkeypatch.setenv("FNM_SPOOL_CONFIG", "/from/env.conf")
    assert config_path("/given.conf") == (Path("/given.conf"), True)


def test_config_path_environment(monkeypatch):
    monkeypatch.setenv("FNM_SPOOL_CONFIG", "/from/env.conf")
    assert config_path(None) == (Path("/from/env.conf"), True)


def test_config_path_default(monkeypatch):
    monkeypatch.delenv("FNM_SPOOL_CONFIG", raising=False)
    assert config_path(None) == (Path(DEFAULT_CONFIG), False)


def test_config_path_empty_environment(monkeypatch):
    monkeypatch.setenv("FNM_SPOOL_CONFIG", "")
    assert config_path(None) == (Path(DEFAULT_CONFIG), False)


def test_config_path_empty_explicit():
    with pytest.raises(UsageError):
        config_path("")


def test_environment_path_loads(tmp_path, monkeypatch):
    path = tmp_path / "env.conf"
    set_value(path, PORT, "2525")
    monkeypatch.setenv("FNM_SPOOL_CONFIG", str(path))
    chosen, explicit = config_path(None)
    assert explicit
    assert load(chosen, required=explicit).email_notifications_port == 2525


# load


def test_load_missing_gives_defaults(tmp_path):
    assert load(tmp_path / "absent.conf") == Settings()


def test_load_missing_required(tmp_path):
    path = tmp_path / "absent.conf"
    with pytest.raises(ConfigError) as caught:
        load(path, required=True)
    message = str(caught.value)
    assert str(path) in message
    assert "fnm_spool set main KEY VALUE" in message
    assert caught.value.exit_status == EX_CONFIG
    assert caught.value.path == path


def test_load_reads_values(config):
    loaded = load(config)
    assert loaded.email_notifications_host == "smtp.example.com"
    assert loaded.email_notifications_port == 587
    assert loaded.spool_dir == Settings().spool_dir


def test_load_unreadable_directory(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert "cannot read" in str(caught.value)


def test_load_not_utf8(tmp_path):
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[main]\nemail_notifications_username = J\xf6rg\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert "UTF-8" in str(caught.value)


def test_load_unknown_key(config):
    with config.open("a") as file:
        file.write("email_notifications_prot = 25\n")
    with pytest.raises(ConfigError) as caught:
        load(config)
    message = str(caught.value)
    assert str(config) in message
    assert "'email_notifications_prot'" in message
    assert "email_notifications_port" in message
    assert "fnm_spool delete main email_notifications_prot" in message
    assert caught.value.key == "email_notifications_prot"


def test_load_invalid_value(config):
    config.write_text("[main]\nemail_notifications_port = 99999\n")
    with pytest.raises(ConfigError) as caught:
        load(config)
    message = str(caught.value)
    assert str(config) in message
    assert "email_notifications_port" in message
    assert "'99999'" in message
    assert "1 to 65535" in message
    assert "fnm_spool set main email_notifications_port VALUE" in message
    assert caught.value.key == PORT


def test_load_missing_section_header(tmp_path):
    path = tmp_path / "flat.conf"
    path.write_text("email_notifications_port = 25\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert "line 1" in str(caught.value)
    assert "[main]" in str(caught.value)


def test_load_unparsable_line(config):
    with config.open("a") as file:
        file.write("just some words\n")
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert "line 5" in str(caught.value)
    assert "KEY = VALUE" in str(caught.value)


def test_load_duplicate_key(config):
    with config.open("a") as file:
        file.write("email_notifications_port = 25\n")
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert "email_notifications_port is set twice" in str(caught.value)


def test_load_unknown_section(config):
    with config.open("a") as file:
        file.write("[mian]\nspool_dir = /tmp\n")
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert "[mian]" in str(caught.value)


def test_load_retry_min_above_max(config):
    with config.open("a") as file:
        file.write("retry_min_seconds = 700\n")
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert "retry_min_seconds (700)" in str(caught.value)
    assert "retry_max_seconds (600)" in str(caught.value)


def test_load_keys_case_insensitive(tmp_path):
    path = tmp_path / "upper.conf"
    path.write_text("[main]\nEmail_Notifications_Port = 2525\n")
    assert load(path).email_notifications_port == 2525


def test_load_recipients_continuation(tmp_path):
    path = tmp_path / "list.conf"
    path.write_text(f"[main]\n{RECIPIENTS} = a@example.com,\n    b@example.net\n")
    assert load(path).email_notifications_recipients == (
        "a@example.com",
        "b@example.net",
    )


def test_load_recipients_duplicate(tmp_path):
    path = tmp_path / "list.conf"
    path.write_text(f"[main]\n{RECIPIENTS} = a@example.com, a@EXAMPLE.com\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert "listed twice" in str(caught.value)
    assert f"fnm_spool delete main {RECIPIENTS}" in str(caught.value)


def test_load_defaults_without_jinja2(tmp_path):
    path = tmp_path / "plain.conf"
    set_value(path, PORT, "2525")
    code = (
        "import sys\n"
        "from spool.settings import load\n"
        f"load({str(path)!r})\n"
        "print('jinja2' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "False"


# Booleans

BOOLEAN_CASES = [
    ("enable", True),
    ("disable", False),
    ("true", True),
    ("false", False),
    ("on", True),
    ("off", False),
    ("yes", True),
    ("no", False),
]


@pytest.mark.parametrize(("word", "expected"), BOOLEAN_CASES)
def test_parse_bool_spellings(word, expected):
    assert parse_bool(word) is expected
    assert parse_bool(word.upper()) is expected
    assert parse_bool(word.capitalize()) is expected
    assert parse_bool(f" {word} ") is expected


@pytest.mark.parametrize(("word", "expected"), BOOLEAN_CASES)
def test_set_bool_spellings(tmp_path, word, expected):
    path = tmp_path / "bool.conf"
    result = set_value(path, "email_notifications_enabled", word.upper())
    assert result.email_notifications_enabled is expected
    assert load(path).email_notifications_enabled is expected
    stored = "true" if expected else "false"
    assert f"email_notifications_enabled = {stored}\n" in path.read_text()


@pytest.mark.parametrize("word", ["maybe", "1", "0", "", "enabled", "y"])
def test_parse_bool_rejects(word):
    with pytest.raises(ValueError) as caught:
        parse_bool(word)
    for spelling in ("enable", "disable", "true", "false", "on", "off", "yes", "no"):
        assert spelling in str(caught.value)


def test_set_bool_invalid_names_value(tmp_path):
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "b.conf", "email_notifications_tls", "maybe")
    message = str(caught.value)
    assert "'maybe'" in message
    assert "email_notifications_tls" in message
    assert "enable, disable, true, false, on, off, yes, no" in message
    assert caught.value.exit_status == EX_USAGE


# Numbers


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (PORT, "0"),
        (PORT, "65536"),
        (PORT, "-1"),
        (PORT, "abc"),
        (PORT, "1.5"),
        (PORT, ""),
        ("msmtp_timeout", "0"),
        ("msmtp_timeout", "3601"),
        ("max_parallel", "0"),
        ("max_parallel", "65"),
        ("max_event_bytes", "1023"),
        ("retry_min_seconds", "0"),
        ("max_queue_lifetime", "0"),
        ("scan_interval", "0"),
        ("digest_threshold", "0"),
        ("max_messages_per_minute", "0"),
        ("incoming_grace_seconds", "-1"),
        ("group_wait", "-1"),
        ("group_wait", "nan"),
        ("group_wait", "inf"),
        ("group_wait", "soon"),
    ],
)
def test_number_out_of_range(tmp_path, key, value):
    path = tmp_path / "n.conf"
    with pytest.raises(UsageError) as caught:
        set_value(path, key, value)
    assert repr(value) in str(caught.value)
    assert key in str(caught.value)
    assert not path.exists()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (PORT, "1", 1),
        (PORT, "65535", 65535),
        (PORT, " 465 ", 465),
        ("msmtp_timeout", "3600", 3600),
        ("max_parallel", "64", 64),
        ("max_event_bytes", "1024", 1024),
        ("incoming_grace_seconds", "0", 0),
        ("group_wait", "0", 0.0),
        ("group_wait", "2.5", 2.5),
    ],
)
def test_number_in_range(tmp_path, key, value, expected):
    path = tmp_path / "n.conf"
    assert getattr(set_value(path, key, value), key) == expected
    assert getattr(load(path), key) == expected


def test_group_wait_shown(tmp_path):
    loaded = set_value(tmp_path / "g.conf", "group_wait", "2.5")
    assert show_values(loaded, "group_wait") == [("group_wait", "2.5")]
    assert show_values(Settings(), "group_wait") == [("group_wait", "5")]


def test_retry_min_above_max_rejected(config):
    before = snapshot(config)
    with pytest.raises(UsageError) as caught:
        set_value(config, "retry_min_seconds", "700")
    assert "raise retry_max_seconds first" in str(caught.value)
    assert snapshot(config) == before


def test_retry_max_below_min_rejected(config):
    with pytest.raises(UsageError) as caught:
        set_value(config, "retry_max_seconds", "10")
    assert "lower retry_min_seconds first" in str(caught.value)


def test_retry_max_then_min(config):
    set_value(config, "retry_max_seconds", "1000")
    assert set_value(config, "retry_min_seconds", "700").retry_min_seconds == 700


# Addresses

BAD_ADDRESSES = [
    "noc example.com",
    "noc@example.com,ops@example.com",
    '"noc"@example.com',
    "noc@exa\r\nmple.com",
    "noc.example.com",
    "@example.com",
    "noc@",
    "<noc@example.com>",
    "Noc <noc@example.com>",
    "noc@example.com (NOC)",
    "noc@@example.com",
    "noc..ops@example.com",
    "noc@example..com",
    "nöc@example.com",
    "noc\t@example.com",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_sender_invalid(tmp_path, address):
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "a.conf", "email_notifications_from", address)
    assert repr(address.strip()) in str(caught.value) or repr(address) in str(
        caught.value
    )
    assert "email_notifications_from" in str(caught.value)


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_recipient_invalid(tmp_path, address):
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "a.conf", RECIPIENTS, address)
    assert repr(address.strip()) in str(caught.value) or repr(address) in str(
        caught.value
    )


def test_recipient_comma_hint(tmp_path):
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "a.conf", RECIPIENTS, "a@example.com,b@example.com")
    assert "contains ','" in str(caught.value)


@pytest.mark.parametrize(
    "address", ["noc@example.com", "noc+ddos@mail.example.org", "root@localhost"]
)
def test_sender_valid(tmp_path, address):
    path = tmp_path / "a.conf"
    assert set_value(
        path, "email_notifications_from", address
    ).email_notifications_from == (address)


def test_sender_empty_allowed(config):
    set_value(config, "email_notifications_from", "noc@example.com")
    assert (
        set_value(config, "email_notifications_from", "").email_notifications_from == ""
    )


# Recipients


def test_recipients_add(tmp_path):
    path = tmp_path / "r.conf"
    set_value(path, RECIPIENTS, "noc@example.com")
    result = set_value(path, RECIPIENTS, "ops@example.net")
    assert result.email_notifications_recipients == (
        "noc@example.com",
        "ops@example.net",
    )
    assert f"{RECIPIENTS} = noc@example.com, ops@example.net\n" in path.read_text()


def test_recipients_duplicate_domain_case(tmp_path):
    path = tmp_path / "r.conf"
    set_value(path, RECIPIENTS, "noc@example.com")
    before = snapshot(path)
    with pytest.raises(UsageError) as caught:
        set_value(path, RECIPIENTS, "noc@EXAMPLE.COM")
    assert "already" in str(caught.value)
    assert "'noc@EXAMPLE.COM'" in str(caught.value)
    assert snapshot(path) == before


def test_recipients_local_part_case_differs(tmp_path):
    path = tmp_path / "r.conf"
    set_value(path, RECIPIENTS, "noc@example.com")
    result = set_value(path, RECIPIENTS, "NOC@example.com")
    assert len(result.email_notifications_recipients) == 2


def test_recipients_remove_one(tmp_path):
    path = tmp_path / "r.conf"
    set_value(path, RECIPIENTS, "noc@example.com")
    set_value(path, RECIPIENTS, "ops@example.net")
    result = delete_value(path, RECIPIENTS, "ops@EXAMPLE.net")
    assert result.email_notifications_recipients == ("noc@example.com",)
    assert load(path).email_notifications_recipients == ("noc@example.com",)


def test_recipients_remove_absent(tmp_path):
    path = tmp_path / "r.conf"
    set_value(path, RECIPIENTS, "noc@example.com")
    before = snapshot(path)
    with pytest.raises(UsageError) as caught:
        delete_value(path, RECIPIENTS, "ops@example.net")
    assert "'ops@example.net'" in str(caught.value)
    assert "noc@example.com" in str(caught.value)
    assert snapshot(path) == before


def test_recipients_remove_from_missing_file(tmp_path):
    path = tmp_path / "absent.conf"
    with pytest.raises(UsageError):
        delete_value(path, RECIPIENTS, "noc@example.com")
    assert not path.exists()


def test_recipients_clear(tmp_path):
    path = tmp_path / "r.conf"
    set_value(path, RECIPIENTS, "noc@example.com")
    set_value(path, RECIPIENTS, "ops@example.net")
    assert delete_value(path, RECIPIENTS).email_notifications_recipients == ()
    assert RECIPIENTS not in path.read_text()


def test_recipients_shown_comma_separated(tmp_path):
    path = tmp_path / "r.conf"
    set_value(path, RECIPIENTS, "noc@example.com")
    loaded = set_value(path, RECIPIENTS, "ops@example.net")
    assert show_values(loaded, RECIPIENTS) == [
        (RECIPIENTS, "noc@example.com, ops@example.net")
    ]


# Other strings


@pytest.mark.parametrize("method", settings.AUTH_METHODS)
def test_auth_method_valid(tmp_path, method):
    path = tmp_path / "m.conf"
    key = "email_notifications_auth_method"
    assert getattr(set_value(path, key, method.upper()), key) == method


def test_auth_method_invalid(tmp_path):
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "m.conf", "email_notifications_auth_method", "oauth")
    assert "'oauth'" in str(caught.value)
    assert "scram-sha-1" in str(caught.value)


@pytest.mark.parametrize(
    "host",
    ["smtp.example.com", "localhost", "mail-1.example.org.", "192.0.2.25", "::1"],
)
def test_host_valid(tmp_path, host):
    path = tmp_path / "h.conf"
    assert set_value(path, "email_notifications_host", host).email_notifications_host
    assert load(path).email_notifications_host == host


@pytest.mark.parametrize(
    "host",
    [
        "smtp example.com",
        'smtp"example.com',
        "smtp\nexample.com",
        "-smtp.example.com",
        "smtp..example.com",
        "[::1]",
        "smtp.exämple.com",
        "a" * 64 + ".example.com",
    ],
)
def test_host_invalid(tmp_path, host):
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "h.conf", "email_notifications_host", host)
    assert repr(host) in str(caught.value)


def test_timezone_valid(tmp_path):
    path = tmp_path / "t.conf"
    assert set_value(path, "timezone", "Europe/Berlin").timezone == "Europe/Berlin"
    assert set_value(path, "timezone", "").timezone == ""


def test_timezone_invalid(tmp_path):
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "t.conf", "timezone", "Mars/Olympus_Mons")
    assert "'Mars/Olympus_Mons'" in str(caught.value)
    assert "Europe/Berlin" in str(caught.value)


def test_subject_valid(tmp_path):
    path = tmp_path / "s.conf"
    subject = "DDoS on {{ ip }} ({{ attack_details.attack_direction | default('?') }})"
    key = "email_subject_blackhole_block"
    assert getattr(set_value(path, key, subject), key) == subject
    assert getattr(load(path), key) == subject


@pytest.mark.parametrize(
    "subject", ["Blocked {{ ip }", "{% if ip %}open", "Blocked\n{{ ip }}", "  "]
)
def test_subject_invalid(tmp_path, subject):
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "s.conf", "email_subject_partial_block", subject)
    assert "email_subject_partial_block" in str(caught.value)


def test_subject_syntax_error_names_value(tmp_path):
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "s.conf", "email_subject_blackhole_unblock", "{{ ip }")
    assert "'{{ ip }'" in str(caught.value)
    assert "Jinja2" in str(caught.value)


def test_subject_invalid_in_file(tmp_path):
    path = tmp_path / "s.conf"
    path.write_text("[main]\nemail_subject_blackhole_block = {{ ip\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert "'{{ ip'" in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("spool_dir", "relative/spool"),
        ("spool_dir", ""),
        ("msmtp_config", "msmtp.conf"),
        ("email_log", "logs/email.log"),
        ("log_file", "fnm.log"),
        ("template_dir", "templates"),
        ("tls_trust_file", "ca.pem"),
        ("tls_trust_file", ""),
        ("msmtp_path", "bin/msmtp"),
        ("msmtp_path", ""),
    ],
)
def test_path_invalid(tmp_path, key, value):
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "p.conf", key, value)
    assert repr(value) in str(caught.value)
    assert "absolute path" in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("email_log", ""),
        ("log_file", ""),
        ("tls_trust_file", "system"),
        ("tls_trust_file", "/etc/ssl/certs/relay-ca.pem"),
        ("msmtp_path", "msmtp"),
        ("msmtp_path", "/usr/bin/msmtp"),
    ],
)
def test_path_valid(tmp_path, key, value):
    assert getattr(set_value(tmp_path / "p.conf", key, value), key) == value


# Values that reach msmtp.conf


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("email_notifications_username", 'fnm"user'),
        ("email_notifications_username", "fnm\ruser"),
        ("email_notifications_username", "fnm\nuser"),
        ("email_notifications_username", "fnm\0user"),
        ("email_log", '/var/log/"email".log'),
        ("tls_trust_file", "/etc/ssl/ca\n.pem"),
        ("msmtp_config", "/etc/fastnetmon/ms\0mtp.conf"),
        ("msmtp_path", '/usr/bin/"msmtp"'),
    ],
)
def test_msmtp_unsafe_characters(tmp_path, key, value):
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "u.conf", key, value)
    message = str(caught.value)
    assert repr(value) in message
    assert (
        "double quotes" in message or "line break" in message or "U+0000" in (message)
    )


def test_msmtp_line_limit_username(tmp_path):
    path = tmp_path / "u.conf"
    key = "email_notifications_username"
    # 'user "' + value + '"' is 7 bytes more than the value: 499 in all.
    assert set_value(path, key, "u" * 492).email_notifications_username
    with pytest.raises(UsageError) as caught:
        set_value(path, key, "u" * 493)
    assert "500 bytes" in str(caught.value)
    assert "at most 499" in str(caught.value)


def test_msmtp_line_limit_counts_bytes(tmp_path):
    # 247 two-byte characters are 494 bytes: under 499 characters but over
    # 499 bytes once the command and quotes are added.
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "u.conf", "email_notifications_username", "é" * 247)
    assert "501 bytes" in str(caught.value)


def test_msmtp_line_limit_log_path(tmp_path):
    long_path = "/var/log/" + "x" * 500
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "u.conf", "email_log", long_path)
    assert "too long" in str(caught.value)


# Password


@pytest.mark.parametrize(
    "password",
    [
        f'{SECRET}"',
        f"{SECRET}\r",
        f"{SECRET}\nx",
        f"{SECRET}\0",
        f" {SECRET}",
        f"{SECRET} ",
        SECRET * 50,
    ],
    ids=["quote", "cr", "lf", "nul", "leading space", "trailing space", "too long"],
)
def test_password_invalid_not_shown(tmp_path, password):
    path = tmp_path / "p.conf"
    with pytest.raises(UsageError) as caught:
        set_value(path, PASSWORD, password)
    assert SECRET not in str(caught.value)
    assert PASSWORD in str(caught.value)
    assert not path.exists()


def test_password_special_characters_kept(tmp_path):
    path = tmp_path / "p.conf"
    password = "p #x; \\y\\\\ é€ %(z)s = 1"
    assert set_value(path, PASSWORD, password).email_notifications_password == (
        password
    )
    assert load(path).email_notifications_password == password


def test_password_mode_0600(config):
    assert mode_of(config) == 0o640
    set_value(config, PASSWORD, SECRET)
    assert mode_of(config) == 0o600


def test_password_new_file_mode_0600(tmp_path):
    path = tmp_path / "new" / "fnm_spool.conf"
    set_value(path, PASSWORD, SECRET)
    assert mode_of(path) == 0o600


def test_password_deleted_keeps_0600(config):
    set_value(config, PASSWORD, SECRET)
    delete_value(config, PASSWORD)
    assert SECRET not in config.read_text()
    assert mode_of(config) == 0o600


def test_mode_kept_without_password(config):
    set_value(config, PORT, "25")
    assert mode_of(config) == 0o640


def test_new_file_mode_without_password(tmp_path):
    path = tmp_path / "plain.conf"
    set_value(path, PORT, "25")
    assert mode_of(path) == 0o644


def test_password_not_logged(tmp_path, caplog):
    caplog.set_level("DEBUG")
    path = tmp_path / "p.conf"
    set_value(path, PASSWORD, SECRET)
    delete_value(path, PASSWORD)
    assert caplog.records
    assert SECRET not in caplog.text


def test_show_masks_password(tmp_path):
    loaded = set_value(tmp_path / "p.conf", PASSWORD, SECRET)
    shown = dict(show_values(loaded))
    assert shown[PASSWORD] == "********"
    assert SECRET not in str(show_values(loaded))
    assert show_values(loaded, PASSWORD) == [(PASSWORD, "********")]


def test_show_unset_password_empty():
    assert show_values(Settings(), PASSWORD) == [(PASSWORD, "")]


def test_password_absent_from_file_errors(tmp_path):
    """Every error about a file that holds the password leaves it out."""
    line = f"{PASSWORD} = {SECRET}\n"
    broken_files = [
        line,
        f"[main]\n{line}{line}",
        f"[main]\n{line}   {SECRET}\n",
        f"[main]\n{line}{SECRET}\n",
        f"[main]\n{line}email_notifications_prot = 25\n",
        f"[main]\n{line}email_notifications_port = 0\n",
        f'[main]\n{PASSWORD} = {SECRET}"\n',
        f"[main]\n{PASSWORD} = {SECRET * 50}\n",
        f"[other]\n{line}",
    ]
    path = tmp_path / "secret.conf"
    for text in broken_files:
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load(path)
        assert SECRET not in str(caught.value), text
        for action in (
            lambda: set_value(path, PORT, "25"),
            lambda: set_value(path, PASSWORD, "x"),
            lambda: delete_value(path, PORT),
        ):
            try:
                action()
            except (ConfigError, UsageError) as error:
                assert SECRET not in str(error), text
                assert SECRET not in repr(error), text


# Unknown keys


def test_set_unknown_key_suggests(tmp_path):
    path = tmp_path / "k.conf"
    with pytest.raises(UsageError) as caught:
        set_value(path, "emial_notifications_port", "25")
    assert "'emial_notifications_port'" in str(caught.value)
    assert "email_notifications_port" in str(caught.value)
    assert not path.exists()


def test_set_unknown_key_substring(tmp_path):
    with pytest.raises(UsageError) as caught:
        set_value(tmp_path / "k.conf", "recipients", "noc@example.com")
    assert RECIPIENTS in str(caught.value)


def test_show_unknown_key():
    with pytest.raises(UsageError) as caught:
        show_values(Settings(), "spooldir")
    assert "spool_dir" in str(caught.value)


def test_delete_unknown_key_absent(config):
    with pytest.raises(UsageError) as caught:
        delete_value(config, "email_notification_host")
    assert "email_notifications_host" in str(caught.value)


def test_delete_unknown_key_present(config):
    with config.open("a") as file:
        file.write("email_notifications_prot = 25\n")
    delete_value(config, "email_notifications_prot")
    assert "email_notifications_prot" not in config.read_text()
    assert load(config).email_notifications_host == "smtp.example.com"


# Writing


def test_set_rejected_leaves_file(config):
    before = snapshot(config)
    for key, value in [
        (PORT, "0"),
        ("email_notifications_enabled", "maybe"),
        ("nonexistent_key", "1"),
        ("email_notifications_host", "bad host"),
        (PASSWORD, 'a"b'),
    ]:
        with pytest.raises(UsageError):
            set_value(config, key, value)
        assert snapshot(config) == before
    assert sorted(os.listdir(config.parent)) == [config.name]


def test_set_keeps_comments_and_order(config):
    set_value(config, PORT, "465")
    set_value(config, "email_notifications_tls", "on")
    assert config.read_text() == (
        "# operator's comment\n"
        "[main]\n"
        "email_notifications_host = smtp.example.com\n"
        "email_notifications_port = 465\n"
        "email_notifications_tls = true\n"
    )


def test_set_replaces_continuation_lines(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text(
        f"[main]\n{RECIPIENTS} = a@example.com,\n    b@example.com\n"
        "# after\nspool_dir = /srv/spool\n"
    )
    set_value(path, RECIPIENTS, "c@example.com")
    assert path.read_text() == (
        f"[main]\n{RECIPIENTS} = a@example.com, b@example.com, c@example.com\n"
        "# after\nspool_dir = /srv/spool\n"
    )


def test_set_inserts_after_last_key(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text("[main]\nspool_dir = /srv/spool\n\n# trailing comment\n")
    set_value(path, PORT, "25")
    assert path.read_text() == (
        f"[main]\nspool_dir = /srv/spool\n{PORT} = 25\n\n# trailing comment\n"
    )


def test_set_file_without_final_newline(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text("[main]\nspool_dir = /srv/spool")
    set_value(path, PORT, "25")
    assert path.read_text() == f"[main]\nspool_dir = /srv/spool\n{PORT} = 25\n"


def test_set_creates_file_and_directories(tmp_path):
    path = tmp_path / "etc" / "fastnetmon" / "fnm_spool.conf"
    set_value(path, PORT, "2525")
    text = path.read_text()
    assert "[main]\n" in text
    assert f"{PORT} = 2525\n" in text
    assert "fnm_spool set main KEY VALUE" in text
    assert load(path, required=True).email_notifications_port == 2525


def test_set_keeps_default_value_line(tmp_path):
    path = tmp_path / "d.conf"
    set_value(path, PORT, "587")
    assert f"{PORT} = 587\n" in path.read_text()


def test_set_through_symlink(config, tmp_path):
    link = tmp_path / "link.conf"
    link.symlink_to(config)
    set_value(link, PORT, "25")
    assert link.is_symlink()
    assert load(config).email_notifications_port == 25


def test_set_fixes_invalid_value(tmp_path):
    path = tmp_path / "fix.conf"
    path.write_text(f"[main]\n{PORT} = zero\n")
    assert set_value(path, PORT, "25").email_notifications_port == 25


def test_set_blocked_by_other_invalid(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text(f"[main]\n{PORT} = zero\n")
    before = snapshot(path)
    with pytest.raises(ConfigError) as caught:
        set_value(path, "spool_dir", "/srv/spool")
    assert "'zero'" in str(caught.value)
    assert snapshot(path) == before


def test_set_parent_not_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as caught:
        set_value(blocker / "fnm_spool.conf", PORT, "25")
    assert str(blocker / "fnm_spool.conf") in str(caught.value)
    assert blocker.read_text() == ""


def test_delete_resets_default(config):
    result = delete_value(config, PORT)
    assert result.email_notifications_port == 587
    assert PORT not in config.read_text()
    assert "# operator's comment\n" in config.read_text()


def test_delete_absent_key_untouched(config):
    before = snapshot(config)
    stamp = config.stat().st_mtime_ns
    assert delete_value(config, "spool_dir") == load(config)
    assert snapshot(config) == before
    assert config.stat().st_mtime_ns == stamp


def test_delete_value_for_plain_key(config):
    with pytest.raises(UsageError) as caught:
        delete_value(config, PORT, "587")
    assert RECIPIENTS in str(caught.value)


def test_delete_missing_file(tmp_path):
    path = tmp_path / "absent.conf"
    assert delete_value(path, PORT) == Settings()
    assert not path.exists()


def test_write_atomic_no_leftovers(tmp_path):
    path = tmp_path / "out.bin"
    settings.write_atomic(path, b"first", 0o600)
    settings.write_atomic(path, b"second", 0o644)
    assert path.read_bytes() == b"second"
    assert mode_of(path) == 0o644
    assert os.listdir(tmp_path) == ["out.bin"]


# show


def test_show_all_keys_in_order():
    shown = show_values(Settings())
    assert [key for key, _ in shown] == list(KEYS)
    assert dict(shown)["email_notifications_enabled"] == "false"
    assert dict(shown)[PORT] == "587"
    assert dict(shown)[RECIPIENTS] == ""


def test_show_one_key_case_insensitive():
    assert show_values(Settings(), "Spool_Dir") == [
        ("spool_dir", "/var/spool/fastnetmon")
    ]
