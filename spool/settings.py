"""Settings: FastNetMon's e-mail options and fnm_spool's own, in one INI file.

The file has one section, ``[main]``, whose keys are the fields of
:class:`Settings`. Values are validated when the file is loaded and when
``fnm_spool set`` or ``delete`` changes them. This module imports Jinja2,
dateutil and the e-mail header parser only inside the checks that need them,
because ``fnm_spool notify`` loads the settings for every event.
"""

import configparser
import contextlib
import dataclasses
import ipaddress
import logging
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, UsageError

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/fastnetmon/fnm_spool.conf"
CONFIG_ENV = "FNM_SPOOL_CONFIG"
SECTION = "main"
PASSWORD_KEY = "email_notifications_password"
RECIPIENTS_KEY = "email_notifications_recipients"
PASSWORD_MASK = "********"

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

NEW_FILE_HEADER = (
    "# fnm_spool settings. Change them with `fnm_spool set main KEY VALUE`;\n"
    "# `fnm_spool show main` lists every key.\n"
)


@dataclass(frozen=True)
class Settings:
    """The ``[main]`` section; each field is named exactly as its key."""

    email_notifications_enabled: bool = False
    email_notifications_tls: bool = True
    email_notifications_auth: bool = True
    email_notifications_auth_method: str = ""
    email_notifications_port: int = 587
    email_notifications_host: str = ""
    email_notifications_from: str = ""
    email_notifications_username: str = ""
    # Left out of repr() so that a logged or printed Settings shows no secret.
    email_notifications_password: str = dataclasses.field(default="", repr=False)
    email_notifications_recipients: tuple[str, ...] = ()
    email_notifications_disable_certificate_checks: bool = False
    email_notifications_add_simple_packet_dump: bool = True
    email_notifications_hide_flow_spec_rules: bool = False
    email_subject_blackhole_block: str = "FastNetMon blocked host {{ ip }}"
    email_subject_blackhole_unblock: str = "FastNetMon unblocked host {{ ip }}"
    email_subject_partial_block: str = (
        "FastNetMon partially blocked traffic for host {{ ip }}"
    )

    spool_dir: str = "/var/spool/fastnetmon"
    msmtp_path: str = "msmtp"
    msmtp_config: str = "/etc/fastnetmon/msmtp.conf"
    email_log: str = "/var/log/fastnetmon/email.log"
    msmtp_timeout: int = 60
    tls_trust_file: str = "system"
    log_file: str = ""
    timezone: str = ""
    template_dir: str = ""
    retry_min_seconds: int = 30
    retry_max_seconds: int = 600
    max_queue_lifetime: int = 86400
    max_event_bytes: int = 1048576
    incoming_grace_seconds: int = 10
    scan_interval: int = 60
    group_wait: float = 5
    digest_threshold: int = 10
    digest_window: int = 60
    max_messages_per_minute: int = 30
    max_parallel: int = 4

    def with_overrides(self, **changes) -> "Settings":
        """Return a copy with some fields replaced (values already typed)."""
        return dataclasses.replace(self, **changes)


DEFAULTS = Settings()


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


def _parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a number of seconds of at least 0, such as 2.5")
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


def _template(default: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = _text()(text)
        if not text:
            raise ValueError("empty, but a subject must not be empty")
        # The default compiles. Skipping it keeps Jinja2 out of
        # `fnm_spool notify`, which loads the settings for every event.
        if text == default:
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
    default = getattr(DEFAULTS, name)
    return Key(
        name,
        "template",
        _template(default),
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


def format_value(key: str, value: object) -> str:
    """Format a typed value as the settings file stores it (no masking)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def show_values(settings: Settings, key: str | None = None) -> list[tuple[str, str]]:
    """Return (key, text) for every setting in table order, or for ``key`` only.

    A password that is set shows as ``********``. Raises UsageError naming
    close matches when ``key`` is unknown.
    """
    names = list(KEYS) if key is None else [_known_key(key)]
    shown = []
    for name in names:
        value = getattr(settings, name)
        if name == PASSWORD_KEY:
            shown.append((name, PASSWORD_MASK if value else ""))
        else:
            shown.append((name, format_value(name, value)))
    return shown


# Errors. A message names the file, the key, the value and the fix, except
# that the password's value is never shown.


def _quote_value(key: str, text: str) -> str:
    return "(not shown)" if key == PASSWORD_KEY else repr(text)


def _fix_hint(key: str) -> str:
    if key == RECIPIENTS_KEY:
        return (
            f"Clear the list with `fnm_spool delete main {key}` and add each"
            f" address with `fnm_spool set main {key} ADDRESS`."
        )
    return (
        f"Change it with `fnm_spool set main {key} VALUE`, or delete the line"
        " to use the default."
    )


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, KEYS, n=3, cutoff=0.6)
    if not close:
        close = [name for name in KEYS if key and key in name][:3]
    if not close:
        return "`fnm_spool show main` lists every setting."
    if len(close) > 1:
        close[-2:] = [f"{close[-2]} or {close[-1]}"]
    return f"Did you mean {', '.join(close)}?"


def _known_key(key: str) -> str:
    name = key.strip().lower()
    if name not in KEYS:
        raise UsageError(f"unknown setting {key!r}. {_suggest(name)}")
    return name


def _invalid(key: str, text: str, reason: str, path: Path, blame: str | None):
    """Return the error for one invalid value.

    It is a UsageError when ``key`` is ``blame``, the key that the command
    line changes, and otherwise a ConfigError about the file.
    """
    message = f"invalid value {_quote_value(key, text)} for {key}: {reason}"
    if key == blame:
        return UsageError(message)
    return ConfigError(f"{path}: {message}. {_fix_hint(key)}", key=key, path=path)


# Reading the file.


def config_path(explicit: str | None) -> tuple[Path, bool]:
    """Choose the settings file: ``-c`` value, then $FNM_SPOOL_CONFIG, then default.

    Returns the path and whether it was chosen explicitly (by ``-c`` or the
    environment). An empty environment variable counts as unset.
    """
    if explicit is not None:
        if not explicit.strip():
            raise UsageError("the path given with -c/--config is empty")
        return Path(explicit), True
    from_environment = os.environ.get(CONFIG_ENV, "")
    if from_environment.strip():
        return Path(from_environment), True
    return Path(DEFAULT_CONFIG), False


def _read_text(path: Path) -> str | None:
    """Return the file's text, or None when it does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(
            f"cannot read settings file {path}: {error.strerror}. Check that it"
            " is a file that this user may read.",
            path=path,
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (invalid byte at offset {error.start});"
            " save the file as UTF-8.",
            path=path,
        ) from None


def _parse_ini(path: Path, text: str) -> dict[str, str]:
    """Return the raw values of ``[main]`` in file order, unknown keys included.

    configparser's own messages quote whole lines, which may contain the
    password, so the errors raised here name line numbers only.
    """
    parser = configparser.ConfigParser(interpolation=None, empty_lines_in_values=False)
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as error:
        raise ConfigError(
            f"{path}, line {error.lineno}: a setting comes before the section"
            " header; put [main] on the first line.",
            path=path,
        ) from None
    except configparser.DuplicateOptionError as error:
        raise ConfigError(
            f"{path}, line {error.lineno}: {error.option} is set twice;"
            " delete one of the lines.",
            key=error.option,
            path=path,
        ) from None
    except configparser.DuplicateSectionError as error:
        raise ConfigError(
            f"{path}, line {error.lineno}: section [{error.section}] appears"
            " twice; merge the two.",
            path=path,
        ) from None
    except configparser.ParsingError as error:
        numbers = ", ".join(str(number) for number, _ in error.errors)
        raise ConfigError(
            f"{path}: cannot parse line {numbers}; each setting must read KEY = VALUE.",
            path=path,
        ) from None

    sections = [name for name in parser.sections() if name != SECTION]
    if parser.defaults():
        sections.append(parser.default_section)
    if sections:
        raise ConfigError(
            f"{path}: unknown section [{sections[0]}]; fnm_spool reads only"
            f" [{SECTION}]. Move its settings to [{SECTION}] or delete it.",
            path=path,
        )
    if not parser.has_section(SECTION):
        return {}
    return {name: parser.get(SECTION, name) for name in parser.options(SECTION)}


def _check_known(path: Path, raw: dict[str, str]) -> None:
    for name in raw:
        if name not in KEYS:
            raise ConfigError(
                f"{path}: unknown setting {name!r} in [{SECTION}]. {_suggest(name)}"
                f" Fix the name or delete it with `fnm_spool delete main {name}`.",
                key=name,
                path=path,
            )


def _build(path: Path, raw: dict[str, str], blame: str | None = None) -> Settings:
    """Parse raw values into Settings and check the values against each other."""
    values = {}
    for name, text in raw.items():
        try:
            values[name] = KEYS[name].parse(text)
        except ValueError as error:
            raise _invalid(name, text, str(error), path, blame) from None
    settings = Settings(**values)

    low, high = settings.retry_min_seconds, settings.retry_max_seconds
    if low > high:
        reason = f"retry_min_seconds ({low}) is greater than retry_max_seconds ({high})"
        if blame == "retry_min_seconds":
            raise UsageError(f"{reason}; raise retry_max_seconds first")
        if blame == "retry_max_seconds":
            raise UsageError(f"{reason}; lower retry_min_seconds first")
        raise ConfigError(
            f"{path}: {reason}. Change one of them with"
            " `fnm_spool set main KEY VALUE`.",
            key="retry_min_seconds",
            path=path,
        )
    return settings


def load(path: os.PathLike | str, required: bool = False) -> Settings:
    """Read and validate the settings file.

    A missing file gives the defaults, unless ``required`` is true. Raises
    ConfigError for a missing required file, an unreadable file, a syntax
    error, an unknown key or an invalid value. The message names the file,
    the key, the value (never the password's) and the fix.
    """
    path = Path(path)
    text = _read_text(path)
    if text is None:
        if required:
            raise ConfigError(
                f"settings file {path} not found; create it with"
                " `fnm_spool set main KEY VALUE`.",
                path=path,
            )
        return Settings()
    raw = _parse_ini(path, text)
    _check_known(path, raw)
    return _build(path, raw)


# Changing the file.


def _find_key(lines: list[str], key: str) -> tuple[int | None, int | None, int]:
    """Locate ``key`` in [main] the way configparser reads it.

    Returns the index of its first line and the index after its continuation
    lines (None, None when absent), and the index after the last line that
    belongs to [main] (0 when the file has no [main]).
    """
    section = None
    start = end = None
    main_end = 0
    value_indent = None
    for index, line in enumerate(lines):
        stripped = line.strip()
        # With empty_lines_in_values=False a blank or comment line ends a value.
        if not stripped or stripped[0] in "#;":
            value_indent = None
            continue
        indent = len(line) - len(line.lstrip())
        if value_indent is not None and indent > value_indent:
            if end == index:
                end = index + 1
            if section == SECTION:
                main_end = index + 1
            continue

        header = re.match(r"\[(.+)\]", stripped)
        if header:
            section = header.group(1)
            value_indent = None
            if section == SECTION:
                main_end = index + 1
            continue
        value_indent = indent
        if section != SECTION:
            continue
        main_end = index + 1
        name = re.split(r"\s*[=:]", stripped, maxsplit=1)[0].lower()
        if name == key and start is None:
            start, end = index, index + 1
    return start, end, main_end


def _edit_text(text: str, key: str, value: str | None) -> str:
    """Return ``text`` with ``key`` set to ``value`` or removed (None).

    Comments, blank lines and the other keys stay as they are. A new key goes
    after the last line of [main]. A missing [main] is added at the end.
    """
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    new = [] if value is None else [f"{key} = {value}\n"]
    start, end, main_end = _find_key(lines, key)

    if start is not None:
        lines[start:end] = new
    elif value is not None and main_end:
        lines[main_end:main_end] = new
    elif value is not None:
        header = NEW_FILE_HEADER if not text.strip() else "\n"
        lines += [header, f"[{SECTION}]\n", *new]
    return "".join(lines)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: os.PathLike | str, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or new file.

    Creates the parent directories. The temporary file in the same directory
    is created with mode 0600 by tempfile.mkstemp() and gets ``mode`` and the
    old file's owner before the data is written. When the process may not
    keep the owner, the new file belongs to the process and a warning is
    logged. The file and the directory are fsynced. Raises OSError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None

    fd, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as file:
            if old is not None:
                _keep_owner(file.fileno(), old, path)
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _keep_owner(fd: int, old: os.stat_result, path: Path) -> None:
    new = os.fstat(fd)
    if (new.st_uid, new.st_gid) == (old.st_uid, old.st_gid):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError:
        log.warning(
            "%s: cannot keep owner %d:%d, the new file belongs to %d:%d",
            path,
            old.st_uid,
            old.st_gid,
            new.st_uid,
            new.st_gid,
        )


def _save(path: Path, text: str, key: str, raw: dict[str, str], settings) -> None:
    """Write ``raw[key]`` (or its removal) into the file, keeping other lines."""
    new_text = _edit_text(text, key, raw.get(key))
    # The line editor mirrors configparser's rules; reading the result back
    # proves that no other value changed.
    if _parse_ini(path, new_text) != raw:
        raise ConfigError(
            f"{path}: cannot change {key} without changing other lines; edit"
            " the file by hand.",
            key=key,
            path=path,
        )

    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o644
    if settings.email_notifications_password:
        mode = 0o600
    try:
        write_atomic(path, new_text.encode(), mode)
    except OSError as error:
        raise ConfigError(
            f"cannot write settings file {path}: {error.strerror}. Run the"
            " command as a user who may write it.",
            path=path,
        ) from None
    log.info("%s: %s %s", path, "set" if key in raw else "deleted", key)


def _add_recipient(path: Path, current: str, address: str) -> str:
    try:
        recipients = _parse_recipients(current)
    except ValueError as error:
        raise _invalid(RECIPIENTS_KEY, current, str(error), path, None) from None
    try:
        new = _parse_address(address)
    except ValueError as error:
        raise _invalid(
            RECIPIENTS_KEY, address, str(error), path, RECIPIENTS_KEY
        ) from None
    if any(_same_address(new, known) for known in recipients):
        raise UsageError(f"{new!r} is already in {RECIPIENTS_KEY}")
    return format_value(RECIPIENTS_KEY, (*recipients, new))


def _remove_recipient(path: Path, current: str, address: str) -> str:
    try:
        recipients = _parse_recipients(current)
    except ValueError as error:
        raise _invalid(RECIPIENTS_KEY, current, str(error), path, None) from None
    address = address.strip()
    remaining = tuple(item for item in recipients if not _same_address(item, address))
    if len(remaining) == len(recipients):
        listed = ", ".join(recipients) if recipients else "none"
        raise UsageError(
            f"{address!r} is not in {RECIPIENTS_KEY}; the recipients are: {listed}"
        )
    return format_value(RECIPIENTS_KEY, remaining)


def set_value(path: os.PathLike | str, key: str, value: str) -> Settings:
    """Validate one value and write it to the settings file; return the result.

    For email_notifications_recipients the value is one address, which is
    added to the list. The file is created with its parent directories when
    missing, replaced atomically, and gets mode 0600 when it contains a password.
    Raises UsageError for an unknown key, an invalid value or a duplicate
    recipient, and ConfigError when the file cannot be read or written or
    another of its values is invalid. On error the file is unchanged.
    """
    key = _known_key(key)
    path = Path(os.path.realpath(path))
    text = _read_text(path) or ""
    raw = _parse_ini(path, text)
    _check_known(path, raw)

    if key == RECIPIENTS_KEY:
        raw[key] = _add_recipient(path, raw.get(key, ""), value)
    else:
        try:
            typed = KEYS[key].parse(value)
        except ValueError as error:
            raise _invalid(key, value, str(error), path, key) from None
        raw[key] = format_value(key, typed)

    settings = _build(path, raw, blame=key)
    _save(path, text, key, raw, settings)
    return settings


def delete_value(
    path: os.PathLike | str, key: str, value: str | None = None
) -> Settings:
    """Reset ``key`` to its default by deleting its line; return the result.

    With ``value``, only email_notifications_recipients is accepted, and that
    one address is removed from the list. A key that the file does not
    contain leaves the file untouched. An unknown key that the file contains
    is deleted, so a misspelt line can be removed. Raises UsageError for an
    unknown key, a value for another key or an absent recipient, and
    ConfigError when the file cannot be read or written or is invalid. On
    error the file is unchanged.
    """
    name = key.strip().lower()
    path = Path(os.path.realpath(path))
    text = _read_text(path)
    raw = _parse_ini(path, text or "")
    if name not in raw:
        name = _known_key(name)
    if value is not None and name != RECIPIENTS_KEY:
        raise UsageError(
            f"{name} takes no VALUE to delete; only {RECIPIENTS_KEY} removes"
            " one address"
        )

    if value is not None:
        raw[name] = _remove_recipient(path, raw.get(name, ""), value)
    elif name in raw:
        del raw[name]
    else:
        return load(path)

    _check_known(path, raw)
    settings = _build(path, raw, blame=name)
    _save(path, text or "", name, raw, settings)
    return settings
