"""The settings' keys: one :class:`Key` per field of Settings, with its parser.

Each parser turns the text from the command line or the settings file into
the typed value. This module imports Jinja2, dateutil and the e-mail header
parser only inside the parsers that need them, because ``fnm_spool notify``
loads the settings for every event.
"""

import contextlib
import ipaddress
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

PASSWORD_KEY = "email_notifications_password"
RECIPIENTS_KEY = "email_notifications_recipients"

BOOLEAN_WORDS = {
    "enable": True,
    "disable": False,
    "true": True,
    "false": False,
    "on": True,
    "off": False,
    "yes": True,
    "no": False,
}
AUTH_METHODS = (
    "login",
    "plain",
    "scram-sha-1",
    "cram-md5",
    "gssapi",
    "external",
    "digest-md5",
    "ntlm",
)

# msmtp 1.8.23 reads its configuration with fgets() into a 501-byte buffer,
# so a line may hold at most 499 bytes before its line break.
MSMTP_MAX_LINE_BYTES = 499


# Value parsers: each takes the text from the command line or the file and
# returns the typed value, or raises ValueError whose message is the reason.
# A reason never quotes the whole value (only the bad item of a recipient
# list), so a rejected password never reaches a message.


def parse_bool(text: str) -> bool:
    """Parse a boolean written as enable/disable, true/false, on/off or yes/no.

    Case and surrounding whitespace are ignored. Raises ValueError otherwise.
    """
    value = BOOLEAN_WORDS.get(text.strip().lower())
    if value is None:
        raise ValueError("expected one of " + ", ".join(BOOLEAN_WORDS))
    return value


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    if maximum is None:
        expected = f"expected a whole number of at least {minimum}"
    else:
        expected = f"expected a whole number from {minimum} to {maximum}"

    def parse(text: str) -> int:
        text = text.strip()
        if not re.fullmatch(r"[0-9]+", text):
            raise ValueError(expected)
        value = int(text)
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(expected)
        return value

    return parse


# A ban held longer than this would delay the alert more than the details
# are worth, and would block each cron run as long.
MAX_GROUP_WAIT = 300


def _parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= MAX_GROUP_WAIT:
        raise ValueError(
            f"expected a number of seconds from 0 to {MAX_GROUP_WAIT}, such as 2.5"
        )
    return value


def _check_characters(text: str) -> None:
    for char in text:
        if char in "\r\n":
            raise ValueError("contains a line break, but a value must be one line")
        if (ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F:
            raise ValueError(f"contains the control character U+{ord(char):04X}")


def check_msmtp_value(command: str, text: str) -> None:
    """Raise ValueError unless ``command "text"`` is a safe line of msmtp.conf.

    msmtp encloses a value in double quotes and has no escape character, so
    a value must not contain '"'. It has no inline comments, so '#' is safe.
    The reason in the ValueError never quotes the value.
    """
    _check_characters(text)
    if '"' in text:
        raise ValueError(
            "contains '\"', which msmtp.conf cannot hold because msmtp encloses"
            " values in double quotes and has no escape character"
        )
    length = len(f'{command} "{text}"'.encode())
    if length > MSMTP_MAX_LINE_BYTES:
        raise ValueError(
            f"too long: its msmtp.conf line would be {length} bytes, but msmtp"
            f" reads at most {MSMTP_MAX_LINE_BYTES} bytes per line"
        )


def _text(msmtp_command: str | None = None) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = text.strip()
        if msmtp_command is None:
            _check_characters(text)
        else:
            check_msmtp_value(msmtp_command, text)
        return text

    return parse


def _parse_password(text: str) -> str:
    # configparser strips the whitespace around a value when it reads the
    # file, so such a password would silently change on the next load.
    if text != text.strip():
        raise ValueError(
            "starts or ends with whitespace, which the settings file cannot keep"
        )
    check_msmtp_value("password", text)
    return text


def _path(
    msmtp_command: str | None = None, required: bool = False, keyword: str = ""
) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = _text(msmtp_command)(text)
        if text == keyword and keyword:
            return text
        if not text and not required:
            return text
        if not os.path.isabs(text):
            choices = f"{keyword!r} or " if keyword else ""
            empty = "empty or " if not required else ""
            raise ValueError(f"expected {empty}{choices}an absolute path")
        return text

    return parse


def _parse_command(text: str) -> str:
    text = _text("msmtp_path")(text)
    if not text or ("/" in text and not os.path.isabs(text)):
        raise ValueError(
            "expected a command name found on PATH, such as msmtp, or an absolute path"
        )
    return text


def _parse_host(text: str) -> str:
    text = _text("host")(text)
    if not text:
        return text
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(text))
    if not text.isascii():
        raise ValueError(
            "not ASCII; write an internationalized domain name in its xn-- form"
        )
    labels = text.removesuffix(".").split(".")
    for label in labels:
        if not re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label):
            raise ValueError(
                "expected a host name such as smtp.example.com or an IP address"
            )
    if len(text) > 253:
        raise ValueError("longer than the 253 characters a host name may have")
    return text


def _parse_address(text: str) -> str:
    from email.errors import HeaderParseError
    from email.headerregistry import Address
    from email.utils import parseaddr

    text = text.strip()
    expected = "expected one e-mail address such as noc@example.com"
    if not text:
        raise ValueError(expected)
    _check_characters(text)
    if "," in text:
        raise ValueError(f"contains ','; {expected}")
    for char in ' \t"<>()':
        if char in text:
            raise ValueError(f"contains {char!r}; {expected}")
    if not text.isascii():
        raise ValueError(
            "not ASCII; write an internationalized domain name in its xn-- form"
        )

    try:
        address = Address(addr_spec=text)
    except (ValueError, IndexError, HeaderParseError):
        address = None
    if (
        address is None
        or not address.username
        or not address.domain
        or address.addr_spec != text
        or parseaddr(text) != ("", text)
    ):
        raise ValueError(expected)
    return text


def _parse_sender(text: str) -> str:
    address = _parse_address(text) if text.strip() else ""
    check_msmtp_value("from", address)
    return address


def _same_address(first: str, second: str) -> bool:
    """Compare addresses: the local part exactly, the domain ignoring case."""
    first_local, _, first_domain = first.rpartition("@")
    second_local, _, second_domain = second.rpartition("@")
    return first_local == second_local and first_domain.lower() == (
        second_domain.lower()
    )


def _parse_recipients(text: str) -> tuple[str, ...]:
    recipients: list[str] = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            address = _parse_address(item)
        except ValueError as error:
            raise ValueError(f"recipient {item.strip()!r}: {error}") from None
        if any(_same_address(address, known) for known in recipients):
            raise ValueError(f"recipient {address!r} is listed twice")
        recipients.append(address)
    return tuple(recipients)


def _parse_auth_method(text: str) -> str:
    text = text.strip().lower()
    if text and text not in AUTH_METHODS:
        raise ValueError(
            "expected empty (msmtp chooses) or one of " + ", ".join(AUTH_METHODS)
        )
    return text


def _parse_timezone(text: str) -> str:
    text = _text()(text)
    if not text:
        return text
    from dateutil import tz

    if tz.gettz(text) is None:
        raise ValueError(
            "unknown time zone; use a name such as"
            " Europe/Berlin or UTC, or empty for the system's time zone"
        )
    return text


def _template(name: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        # spool.settings imports this module, so DEFAULTS is imported at parse time.
        from .settings import DEFAULTS

        text = _text()(text)
        if not text:
            raise ValueError("empty, but a subject must not be empty")
        # The default compiles. Skipping it keeps Jinja2 out of
        # `fnm_spool notify`, which loads the settings for every event.
        if text == getattr(DEFAULTS, name):
            return text
        from jinja2 import TemplateSyntaxError
        from jinja2.sandbox import SandboxedEnvironment

        try:
            SandboxedEnvironment().from_string(text)
        except TemplateSyntaxError as error:
            raise ValueError(f"not a valid Jinja2 template: {error.message}") from None
        return text

    return parse


@dataclass(frozen=True)
class Key:
    """One setting: its name, a type name, its parser and a one-line description."""

    name: str
    kind: str
    parse: Callable[[str], object]
    description: str


def _subject(name: str, action: str) -> Key:
    return Key(
        name,
        "template",
        _template(name),
        f"Subject of {action} messages, a Jinja2 template of the event's fields",
    )


# fmt: off
# One key per entry: name, type name, parser, description.
_KEY_LIST = [
    Key("email_notifications_enabled", "boolean", parse_bool,
        "send e-mail for FastNetMon events"),
    Key("email_notifications_tls", "boolean", parse_bool,
        "use TLS: STARTTLS, or TLS from the start on port 465"),
    Key("email_notifications_auth", "boolean", parse_bool,
        "log in to the SMTP server with the username and password"),
    Key("email_notifications_auth_method", "auth method", _parse_auth_method,
        "SMTP authentication method; empty lets msmtp choose"),
    Key("email_notifications_port", "integer", _integer(1, 65535),
        "SMTP server port, 1 to 65535"),
    Key("email_notifications_host", "host", _parse_host,
        "SMTP server host name or IP address"),
    Key("email_notifications_from", "address", _parse_sender,
        "sender address of the messages"),
    Key("email_notifications_username", "text", _text("user"), "SMTP username"),
    Key(PASSWORD_KEY, "password", _parse_password,
        "SMTP password; the settings file and msmtp.conf get mode 0600"),
    Key(RECIPIENTS_KEY, "address list", _parse_recipients,
        "recipient addresses; `set` adds one, `delete ... ADDRESS` removes one"),
    Key("email_notifications_disable_certificate_checks", "boolean", parse_bool,
        "do not verify the SMTP server's TLS certificate"),
    Key("email_notifications_add_simple_packet_dump", "boolean", parse_bool,
        "include FastNetMon's packet dump in the messages"),
    Key("email_notifications_hide_flow_spec_rules", "boolean", parse_bool,
        "leave BGP Flow Spec rules out of partial block messages"),
    _subject("email_subject_blackhole_block", "ban"),
    _subject("email_subject_blackhole_unblock", "unban"),
    _subject("email_subject_partial_block", "partial block"),
    Key("spool_dir", "path", _path(required=True), "spool directory of the events"),
    Key("msmtp_path", "command", _parse_command,
        "msmtp program: a name found on PATH or an absolute path"),
    Key("msmtp_config", "path", _path("msmtp_config", required=True),
        "msmtp configuration file that fnm_spool writes"),
    Key("email_log", "path", _path("logfile"), "msmtp's log file; empty for none"),
    Key("msmtp_timeout", "seconds", _integer(1, 3600),
        "msmtp's network timeout in seconds, 1 to 3600"),
    Key("tls_trust_file", "path",
        _path("tls_trust_file", required=True, keyword="system"),
        "CA certificates that verify the server: system, or a PEM file"),
    Key("log_file", "path", _path(), "fnm_spool's own log file; empty for stderr"),
    Key("timezone", "time zone", _parse_timezone,
        "time zone of message dates, such as Europe/Berlin; empty for the system's"),
    Key("template_dir", "path", _path(),
        "directory whose *.j2 files replace the built-in templates; empty for none"),
    Key("retry_min_seconds", "seconds", _integer(1),
        "delay before the first retry of a failed delivery, in seconds"),
    Key("retry_max_seconds", "seconds", _integer(1),
        "maximum delay between retries, in seconds"),
    Key("max_queue_lifetime", "seconds", _integer(1),
        "seconds after which an undelivered event fails"),
    Key("max_event_bytes", "bytes", _integer(1024),
        "maximum size of one event in bytes, at least 1024"),
    Key("incoming_grace_seconds", "seconds", _integer(0),
        "seconds an unparsable file in incoming/ is retried before it fails"),
    Key("scan_interval", "seconds", _integer(1),
        "seconds between the daemon's periodic rescans of the spool"),
    Key("group_wait", "seconds", _parse_seconds,
        "seconds a ban waits for its attack_details before it is sent"),
    Key("digest_threshold", "count", _integer(1),
        "events waiting, or arrived in digest_window, above which a digest is sent"),
    Key("digest_window", "seconds", _integer(1),
        "window in seconds over which digest_threshold counts events"),
    Key("max_messages_per_minute", "count", _integer(1),
        "maximum number of messages sent per minute"),
    Key("max_parallel", "count", _integer(1, 64),
        "maximum number of msmtp processes at once, 1 to 64"),
]
# fmt: on
KEYS: dict[str, Key] = {key.name: key for key in _KEY_LIST}
