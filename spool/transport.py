"""Hand messages to msmtp exactly as FastNetMon Advanced does.

The command is ``MSMTP -t -a default --file=MSMTP_CONFIG`` with the message
on standard input: recipients come from the To header, everything else from
the generated configuration file, so no secret is ever on the command line.
"""

import dataclasses
import logging
import os
import re
import shutil
import subprocess
import time

from . import errors
from .errors import TransportUnavailableError

log = logging.getLogger(__name__)

# msmtp 1.8.23 exit statuses (sysexits.h) that mean "try again later":
# EX_TEMPFAIL, EX_NOHOST (DNS), EX_IOERR (connection broke), EX_PROTOCOL.
TEMPORARY_STATUSES = {75, 68, 74, 76}
# EX_UNAVAILABLE is both "connection refused" and "the server said no"; the
# SMTP reply code in msmtp's stderr tells which.
_REPLY_CODE = re.compile(
    r"(?:server message|smtp reply|status):?\s*([245])\d\d\b", re.I
)
_TRANSIENT_WORDS = (
    "cannot connect",
    "connection refused",
    "network is unreachable",
    "timed out",
    "timeout",
    "no route to host",
    "cannot locate host",
    "temporary",
)


@dataclasses.dataclass(frozen=True)
class Delivery:
    """The outcome of one msmtp run.

    ``outcome`` is ``"sent"``, ``"temporary"`` or ``"permanent"``;
    ``exit_status`` is None when msmtp was killed at the timeout.
    """

    outcome: str
    exit_status: int | None
    stderr: str
    seconds: float


def msmtp_argv(msmtp_path: str, msmtp_config: str) -> list[str]:
    """Return the exact argument list msmtp is run with."""
    return [msmtp_path, "-t", "-a", "default", f"--file={msmtp_config}"]


def check_available(msmtp_path: str, msmtp_config: str) -> str:
    """Return the resolved msmtp path, or raise if msmtp cannot run at all.

    Raises :class:`TransportUnavailableError` naming what is missing.
    """
    resolved = shutil.which(msmtp_path)
    if resolved is None:
        raise TransportUnavailableError(
            f"msmtp not found or not executable: {msmtp_path!r}; install it "
            "(apt-get install msmtp) or set msmtp_path"
        )
    if not os.access(msmtp_config, os.R_OK):
        raise TransportUnavailableError(
            f"cannot read msmtp_config {msmtp_config!r}; check that it exists and "
            "that fnm_spool's user may read it"
        )
    return resolved


def send(
    message: bytes, msmtp_path: str, msmtp_config: str, timeout: float
) -> Delivery:
    """Run msmtp once with ``message`` on its standard input.

    msmtp is killed after ``timeout`` seconds, which counts as a temporary
    failure. Raises :class:`TransportUnavailableError` when msmtp cannot be
    started at all.
    """
    argv = msmtp_argv(msmtp_path, msmtp_config)
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as error:
        raise TransportUnavailableError(
            f"cannot run msmtp {msmtp_path!r}: {error.strerror}; install it "
            "(apt-get install msmtp) or set msmtp_path"
        ) from None

    try:
        _, stderr_bytes = process.communicate(message, timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr_bytes = process.communicate()
        stderr = stderr_bytes.decode("utf-8", "replace").strip()
        note = f"msmtp killed after msmtp_timeout ({timeout:g} s)"
        return Delivery("temporary", None, f"{note}\n{stderr}".strip(), _since(started))

    stderr = stderr_bytes.decode("utf-8", "replace").strip()
    status = process.returncode
    return Delivery(classify(status, stderr), status, stderr, _since(started))


def classify(status: int, stderr: str) -> str:
    """Tell ``"sent"``, ``"temporary"`` or ``"permanent"`` from msmtp's result."""
    if status == errors.EX_OK:
        return "sent"
    if status in TEMPORARY_STATUSES:
        return "temporary"
    if status < 0:
        # Killed by a signal from outside: the message may not have left.
        return "temporary"
    if status == errors.EX_UNAVAILABLE:
        codes = _REPLY_CODE.findall(stderr)
        if codes:
            return "temporary" if codes[-1] == "4" else "permanent"
        lowered = stderr.lower()
        if any(word in lowered for word in _TRANSIENT_WORDS):
            return "temporary"
    return "permanent"


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


_HINTS = (
    (
        "authentication",
        "check email_notifications_username, "
        "email_notifications_password and email_notifications_auth_method",
    ),
    (
        "certificate",
        "the server's certificate is not trusted: set tls_trust_file to "
        "the CA file that signed it, or as a last resort enable "
        "email_notifications_disable_certificate_checks",
    ),
    (
        "starttls",
        "check email_notifications_tls and email_notifications_port "
        "(465 means TLS from the first byte, 587 means STARTTLS)",
    ),
    ("tls", "check email_notifications_tls and email_notifications_port"),
    (
        "cannot connect",
        "check email_notifications_host and email_notifications_port, "
        "and that the SMTP server is up and reachable from this host",
    ),
    ("cannot locate host", "check email_notifications_host and this host's DNS"),
    (
        "timed out",
        "the server did not answer within msmtp_timeout; check the network "
        "path to email_notifications_host",
    ),
    (
        "recipient",
        "the server rejected a recipient; check email_notifications_recipients",
    ),
    ("sender", "the server rejected the sender; check email_notifications_from"),
)


def explain(result: Delivery) -> str:
    """Return msmtp's error and the likely fix, for a person at a terminal."""
    stderr = result.stderr or "no output from msmtp"
    lowered = stderr.lower()
    hints = [hint for needle, hint in _HINTS if needle in lowered]
    hint = hints[0] if hints else "see the msmtp log (email_log) for the dialogue"
    if result.exit_status is None:
        status = "killed at msmtp_timeout"
    else:
        status = f"exit status {result.exit_status}"
    return f"msmtp {status}: {stderr}\nlikely fix: {hint}"
