"""Delivery attempts: back-off, the attempt record and the reason file."""

import datetime as dt
import socket

from . import __version__
from .spooldir import Claim

_STATUS_NAMES = {
    64: "EX_USAGE",
    65: "EX_DATAERR",
    68: "EX_NOHOST",
    69: "EX_UNAVAILABLE",
    70: "EX_SOFTWARE",
    74: "EX_IOERR",
    75: "EX_TEMPFAIL",
    76: "EX_PROTOCOL",
    77: "EX_NOPERM",
    78: "EX_CONFIG",
}


def backoff(attempts: int, minimum: float, maximum: float) -> float:
    """Return the seconds to wait after ``attempts`` failed attempts.

    The delay starts at ``minimum`` and doubles per attempt up to ``maximum``.
    """
    return float(min(maximum, minimum * 2 ** max(0, attempts - 1)))


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def status_text(status: int | None) -> str:
    if status is None:
        return "none (killed at msmtp_timeout)"
    name = _STATUS_NAMES.get(status)
    return f"{status} ({name})" if name else str(status)


def scrub(text: str, password: str) -> str:
    """Remove the SMTP password from text that may end up in a file or log."""
    return text.replace(password, "********") if password else text


def summarize(stderr: str) -> str:
    """Return the lines of msmtp's stderr that say why, on one line.

    msmtp ends every failure with "could not send mail (account ...)"; the
    cause and the server's reply come before it.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    telling = [line for line in lines if "could not send mail" not in line]
    chosen = telling[:2] or lines[-1:]
    return "; ".join(chosen)[:500] if chosen else "no output from msmtp"


def attempt(now: float, result, password: str) -> dict:
    """Return the record of one delivery attempt for the history file."""
    stderr = scrub(result.stderr, password)
    return {
        "time": iso(now),
        "exit_status": result.exit_status,
        "outcome": result.outcome,
        "seconds": result.seconds,
        "error": f"msmtp exit status {status_text(result.exit_status)}: "
        f"{summarize(stderr)}",
        "stderr": stderr[-4000:],
    }


def reason_text(
    claim: Claim, reason: str, result, history: dict, now: float, password: str
) -> str:
    """Return the text of ``failed/ID.reason``: what failed, why and how to replay."""
    lines = [
        f"event: {claim.event_id}",
        f"original name: {claim.original_name!r} (from {claim.source.value}/)",
        f"failed at: {iso(now)} on {socket.gethostname()} by fnm_spool {__version__}",
        f"reason: {scrub(reason, password)}",
    ]
    if result is not None:
        lines.append(f"msmtp exit status: {status_text(result.exit_status)}")
        lines.append("msmtp stderr:")
        stderr = scrub(result.stderr, password) or "(empty)"
        lines.extend("    " + line for line in stderr.splitlines())
    attempts = history.get("attempts", [])
    if attempts:
        lines.append(
            f"attempts: {len(attempts)}, first queued {history.get('queued_at')}"
        )
        for number, item in enumerate(attempts, 1):
            lines.append(f"  {number}. {item.get('time')} {item.get('error')}")
    lines.append(f"replay after fixing the cause: fnm_spool replay {claim.event_id}")
    return "\n".join(lines) + "\n"
