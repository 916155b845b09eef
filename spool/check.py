"""``fnm_spool check``: validate settings, msmtp, permissions and AppArmor.

Each check returns :class:`Check` records whose message states what is wrong
and how to fix it. :func:`exit_status` turns the records into a sysexits.h
status: 0 when nothing is an error, else the status of the most basic kind
of error found, in this order:

* 78 (EX_CONFIG): the settings file, a setting, a subject, a template or
  the time zone is invalid or missing.
* 69 (EX_UNAVAILABLE): msmtp cannot run as configured, because the binary
  or msmtp_config is missing or unreadable, or AppArmor denies a file.
* 73 (EX_CANTCREAT): the spool directory or the e-mail log's directory is
  missing, not writable or split over file systems.

Warnings (notifications disabled, loose file modes, an out-of-date
msmtp_config) never change the status.
"""

import dataclasses
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

from .apparmor import APPARMOR_DIR, APPARMOR_FS, _check_apparmor
from .apparmor import _glob_regex as _glob_regex  # tests call check._glob_regex
from .errors import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_OK,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
    ConfigError,
)
from .settings import DEFAULT_CONFIG, Settings, load
from .spooldir import State

OK = "ok"
WARNING = "warning"
ERROR = "error"

VERSION_TIMEOUT = 10
SUBJECT_KEYS = (
    "email_subject_blackhole_block",
    "email_subject_blackhole_unblock",
    "email_subject_partial_block",
)
# Exit statuses from the most basic kind of error to the least.
_PRIORITY = (EX_CONFIG, EX_UNAVAILABLE, EX_CANTCREAT)


@dataclasses.dataclass(frozen=True)
class Check:
    """The result of one check.

    ``status`` is ``"ok"``, ``"warning"`` or ``"error"``; ``subject`` names
    the setting, file or program checked; ``message`` states what was found
    and, unless the status is ok, the fix. ``exit_status`` is the sysexits.h
    status that an error of this check exits with.
    """

    status: str
    subject: str
    message: str
    exit_status: int = EX_OK


def run_checks(
    settings_path: Path,
    explicit: bool,
    *,
    apparmor_fs: Path = APPARMOR_FS,
    apparmor_dir: Path = APPARMOR_DIR,
) -> list[Check]:
    """Run every check for the settings at ``settings_path``.

    ``explicit`` is true when ``-c`` or the environment chose the file,
    which makes a missing file an error. When the settings do not load,
    only that error is returned, because every later check reads them.
    ``apparmor_fs`` is where securityfs shows AppArmor and ``apparmor_dir``
    where the profiles are.
    """
    checks, settings = _check_settings_file(Path(settings_path), explicit)
    if settings is None:
        return checks
    fix = _SetCommand(Path(settings_path))
    checks += _check_values(settings, fix)
    checks += _check_templates(settings)
    checks += _check_msmtp(settings)
    checks += _check_msmtp_config(settings)
    checks += _check_email_log(settings)
    checks += _check_spool(settings)
    checks += _check_apparmor(settings, apparmor_fs, apparmor_dir)
    return checks


def exit_status(checks: list[Check]) -> int:
    """Return 0 without errors, else the status of the most basic error kind."""
    statuses = {check.exit_status for check in checks if check.status == ERROR}
    for status in _PRIORITY:
        if status in statuses:
            return status
    if not statuses:
        return EX_OK
    # An error that names no status of its own is a bug in this module.
    return max(statuses) or EX_SOFTWARE


def format_checks(checks: list[Check]) -> str:
    """Format checks one per line, the status first, and a closing count."""
    lines = []
    for check in checks:
        first, *rest = check.message.splitlines() or [""]
        lines.append(f"{check.status:<7}  {check.subject}: {first}")
        lines.extend(f"{'':9}{line}" for line in rest)
    errors = sum(check.status == ERROR for check in checks)
    warnings = sum(check.status == WARNING for check in checks)
    lines.append(f"{errors} error(s), {warnings} warning(s)")
    return "\n".join(lines) + "\n"


class _SetCommand:
    """Build the ``fnm_spool set`` command that fixes one setting."""

    def __init__(self, settings_path: Path):
        self.config = ""
        if str(settings_path) != DEFAULT_CONFIG:
            self.config = f" -c {shlex.quote(str(settings_path))}"

    def __call__(self, key: str, value: str) -> str:
        return f"fnm_spool{self.config} set main {key} {value}"


# Settings


def _check_settings_file(
    path: Path, explicit: bool
) -> tuple[list[Check], Settings | None]:
    subject = f"settings file {path}"
    try:
        settings = load(path, required=explicit)
    except ConfigError as error:
        return [Check(ERROR, subject, str(error), EX_CONFIG)], None

    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        create = _SetCommand(path)("KEY", "VALUE")
        message = f"not found, so the defaults are in use; create it with {create}"
        return [Check(WARNING, subject, message)], settings

    checks = [Check(OK, subject, "valid")]
    if settings.email_notifications_password and mode & 0o077:
        checks.append(
            Check(
                WARNING,
                subject,
                f"mode {mode:04o} lets other users read the SMTP password; "
                f"fix: chmod 600 {shlex.quote(str(path))}",
            )
        )
    return checks, settings


def _check_values(settings: Settings, fix: _SetCommand) -> list[Check]:
    checks = []
    if not settings.email_notifications_enabled:
        checks.append(
            Check(
                WARNING,
                "email_notifications_enabled",
                "off: events stay queued and no e-mail is sent; enable it with "
                + fix("email_notifications_enabled", "enable"),
            )
        )
    required = (
        ("email_notifications_host", "HOST", "SMTP server"),
        ("email_notifications_from", "ADDRESS", "sender address"),
        ("email_notifications_recipients", "ADDRESS", "recipient"),
    )
    for key, placeholder, what in required:
        if not getattr(settings, key):
            checks.append(
                Check(
                    ERROR,
                    key,
                    f"missing: no {what} is set; fix: {fix(key, placeholder)}",
                    EX_CONFIG,
                )
            )
    if settings.email_notifications_auth and not settings.email_notifications_username:
        checks.append(
            Check(
                WARNING,
                "email_notifications_username",
                "empty while email_notifications_auth is on; set it with "
                + fix("email_notifications_username", "NAME")
                + ", or turn off authentication with "
                + fix("email_notifications_auth", "disable"),
            )
        )
    if not checks:
        checks.append(
            Check(OK, "e-mail settings", "enabled, with server and addresses")
        )
    return checks


def _check_templates(settings: Settings) -> list[Check]:
    """Compile the subjects and templates, then build the renderer itself."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import SandboxedEnvironment

    checks = []
    environment = SandboxedEnvironment()
    for key in SUBJECT_KEYS:
        try:
            environment.from_string(getattr(settings, key))
        except TemplateSyntaxError as error:
            message = f"invalid Jinja2 template: {error.message}"
            checks.append(Check(ERROR, key, message, EX_CONFIG))

    if settings.template_dir:
        checks += _check_template_dir(Path(settings.template_dir))
    if settings.timezone:
        from dateutil import tz

        if tz.gettz(settings.timezone) is None:
            message = (
                f"unknown time zone {settings.timezone!r}; use a name such as "
                "Europe/Berlin or UTC, or an empty value for the system's"
            )
            checks.append(Check(ERROR, "timezone", message, EX_CONFIG))
    if checks:
        return checks

    # The renderer also checks what parsing alone cannot, such as a filter
    # name that does not exist.
    from .render import Renderer

    try:
        Renderer(settings)
    except ConfigError as error:
        return [Check(ERROR, error.key or "templates", str(error), EX_CONFIG)]
    return [Check(OK, "templates", "subjects and templates compile")]


def _check_template_dir(directory: Path) -> list[Check]:
    import jinja2

    subject = f"template_dir {directory}"
    if not directory.is_dir():
        message = "not a directory; create it or set template_dir to an empty value"
        return [Check(ERROR, subject, message, EX_CONFIG)]

    checks = []
    environment = jinja2.Environment()
    for path in sorted(directory.glob("*.j2")):
        try:
            environment.parse(path.read_text(encoding="utf-8"), path.name, str(path))
        except jinja2.TemplateSyntaxError as error:
            message = f"line {error.lineno}: {error.message}"
            checks.append(Check(ERROR, str(path), message, EX_CONFIG))
        except (OSError, UnicodeDecodeError) as error:
            message = f"cannot read: {error}"
            checks.append(Check(ERROR, str(path), message, EX_CONFIG))
    return checks


# msmtp


def _check_msmtp(settings: Settings) -> list[Check]:
    subject = f"msmtp_path {settings.msmtp_path}"
    resolved = shutil.which(settings.msmtp_path)
    if resolved is None:
        message = (
            "not found or not executable; install msmtp (apt-get install msmtp) "
            "or set msmtp_path to its location"
        )
        return [Check(ERROR, subject, message, EX_UNAVAILABLE)]
    try:
        result = subprocess.run(
            [resolved, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=VERSION_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        message = f"{resolved} --version failed: {error}"
        return [Check(ERROR, subject, message, EX_UNAVAILABLE)]
    output = result.stdout.decode("utf-8", "replace").strip()
    if result.returncode != 0 or not output:
        message = f"{resolved} --version exited with status {result.returncode}"
        return [Check(ERROR, subject, message, EX_UNAVAILABLE)]
    return [Check(OK, subject, f"{output.splitlines()[0]} at {resolved}")]


def _check_msmtp_config(settings: Settings) -> list[Check]:
    path = Path(settings.msmtp_config)
    subject = f"msmtp_config {path}"
    regenerate = "run fnm_spool run --once, or any fnm_spool set, to generate it"
    try:
        info = os.stat(path)
        data = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [Check(ERROR, subject, f"missing; {regenerate}", EX_UNAVAILABLE)]
    except (OSError, UnicodeDecodeError) as error:
        message = f"cannot read: {error}; check its owner and mode"
        return [Check(ERROR, subject, message, EX_UNAVAILABLE)]

    checks = []
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o600:
        reason = ""
        if settings.email_notifications_password:
            reason = " because it contains the SMTP password"
        message = (
            f"mode {mode:04o}, expected 0600{reason}; fnm_spool run --once "
            f"rewrites it, or run: chmod 600 {shlex.quote(str(path))}"
        )
        checks.append(Check(WARNING, subject, message))
    from .msmtpconf import render_msmtp_config

    try:
        expected = render_msmtp_config(settings)
    except ConfigError as error:
        return checks + [Check(ERROR, subject, str(error), EX_CONFIG)]
    if data != expected:
        message = (
            "out of date with the settings; run any fnm_spool set or "
            "fnm_spool run to regenerate it"
        )
        checks.append(Check(WARNING, subject, message))
    if not checks:
        checks.append(Check(OK, subject, "up to date, mode 0600"))
    return checks


# Files and directories


def _check_email_log(settings: Settings) -> list[Check]:
    if not settings.email_log:
        return [Check(OK, "email_log", "empty, so msmtp keeps no log")]
    path = Path(settings.email_log)
    subject = f"email_log {path}"
    directory = path.parent
    if not directory.is_dir():
        message = (
            f"directory {directory} is missing; create it with "
            f"mkdir -p {shlex.quote(str(directory))} for the user that runs "
            "fnm_spool"
        )
        return [Check(ERROR, subject, message, EX_CANTCREAT)]
    if path.exists():
        writable = os.access(path, os.W_OK)
    else:
        writable = os.access(directory, os.W_OK | os.X_OK)
    if not writable:
        message = (
            "not writable by this user; give the user that runs fnm_spool "
            "write access to it"
        )
        return [Check(ERROR, subject, message, EX_CANTCREAT)]
    return [Check(OK, subject, "writable")]


def _check_spool(settings: Settings) -> list[Check]:
    """Check that the spool's directories exist, share one filesystem and are writable.

    Missing directories are created by the next ``fnm_spool run`` or
    ``notify``, which needs write access to the nearest existing parent.
    NOTE: os.access tests the permissions of the user running the check, so
    run it as the user that runs fnm_spool.
    """
    root = Path(settings.spool_dir)
    subject = f"spool_dir {root}"
    names = [state.value for state in State] + ["locks", "threads"]
    missing = [name for name in names if not (root / name).is_dir()]
    if missing:
        return [_missing_spool_check(subject, root, missing)]

    checks = []
    root_device = os.stat(root).st_dev
    for state in State:
        directory = root / state.value
        if os.stat(directory).st_dev != root_device:
            message = (
                f"{state.value}/ is on another file system than {root}, so "
                "events cannot be renamed into it; keep the whole spool on one"
            )
            checks.append(Check(ERROR, subject, message, EX_CANTCREAT))
    for name in ["."] + names:
        if not os.access(root / name, os.W_OK | os.X_OK):
            message = (
                f"{name}/ is not writable by this user; give the user that "
                "runs fnm_spool write access to it"
            )
            checks.append(Check(ERROR, subject, message, EX_CANTCREAT))
    if not checks:
        checks.append(Check(OK, subject, "complete, on one file system, writable"))
    return checks


def _missing_spool_check(subject: str, root: Path, missing: list[str]) -> Check:
    parent = root if root.is_dir() else root.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    shown = ", ".join(name + "/" for name in missing)
    if os.access(parent, os.W_OK | os.X_OK):
        message = f"{shown} missing; fnm_spool run creates them"
        return Check(WARNING, subject, message)
    message = (
        f"{shown} missing and {parent} is not writable by this user; create "
        f"them with mkdir -p for the user that runs fnm_spool"
    )
    return Check(ERROR, subject, message, EX_CANTCREAT)
