"""Settings: FastNetMon's e-mail options and fnm_spool's own, in one INI file.

The file has one section, ``[main]``, whose keys are the fields of
:class:`Settings`. Values are validated when the file is loaded and when
``fnm_spool set`` or ``delete`` changes them. The keys and their parsers are
in :mod:`spool.settings_keys`, and reading and rewriting the file is in
:mod:`spool.settings_file`. This module imports the names that other modules
and the tests use from there.
"""

import dataclasses
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, UsageError
from .settings_file import SECTION, _edit_text, _parse_ini, _read_text, write_atomic
from .settings_keys import AUTH_METHODS as AUTH_METHODS
from .settings_keys import (
    KEYS,
    PASSWORD_KEY,
    RECIPIENTS_KEY,
    _parse_address,
    _parse_recipients,
    _same_address,
)
from .settings_keys import check_msmtp_value as check_msmtp_value
from .settings_keys import parse_bool as parse_bool

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/fastnetmon/fnm_spool.conf"
CONFIG_ENV = "FNM_SPOOL_CONFIG"
PASSWORD_MASK = "********"


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


def load_for_notify(path: os.PathLike | str) -> Settings:
    """Return settings good enough to enqueue, even from a broken file.

    ``fnm_spool notify`` only needs ``spool_dir`` and ``max_event_bytes``,
    and FastNetMon ignores its exit status, so a typo elsewhere in the file
    must not drop alerts. Each of the two keys is taken from the file when
    it is valid there, else its default.
    """
    path = Path(path)
    try:
        raw = _parse_ini(path, _read_text(path) or "")
    except (ConfigError, OSError):
        raw = {}
    kept = {}
    for key in ("spool_dir", "max_event_bytes"):
        if key in raw:
            try:
                kept[key] = _build(path, {key: raw[key]}, blame=key).__dict__[key]
            except ConfigError:
                pass
    return Settings(**kept)


# Changing the file.


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
