"""Header and body encoding of the rendered messages.

Header values lose their control characters, subjects are cut to
:data:`MAX_SUBJECT_CHARS` characters, a Message-ID stays on one line where it
fits, and bodies are 7bit or quoted-printable, so no server needs 8BITMIME.
"""

import email.header
import email.policy
import email.utils
import re
import socket
from email.message import EmailMessage

MAX_SUBJECT_CHARS = 200
# RFC 5322 section 2.1.1: a line is at most 998 octets without its CRLF.
MAX_LINE_OCTETS = 998
# msmtp reads the message with LF line ends and sends CRLF itself. Headers
# stored with set_raw() are written unchanged instead of refolded.
POLICY = email.policy.default.clone(linesep="\n", refold_source="none")
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_DOMAIN = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?)+$")


def _sender_domain(sender: str) -> str:
    """Return the domain of the From address, else this host's name.

    The host name comes from gethostname() because a DNS lookup could stall
    rendering while the network is down.
    """
    address = email.utils.parseaddr(sender)[1]
    domain = address.rpartition("@")[2] if "@" in address else ""
    for candidate in (domain, socket.gethostname()):
        if _DOMAIN.match(candidate or ""):
            return candidate.rstrip(".")
    return "localhost"


def _header_text(text: str) -> str:
    """Replace control characters, CR and LF included, by single spaces."""
    return " ".join(_HEADER_UNSAFE.sub(" ", str(text)).split())


def _subject_text(text: str) -> str:
    """Make a subject safe for its header and cut it to 200 characters."""
    text = _header_text(text)
    if len(text) > MAX_SUBJECT_CHARS:
        text = text[: MAX_SUBJECT_CHARS - 3] + "..."
    return text


def _set_subject(message: EmailMessage, subject: str) -> None:
    if subject.isascii():
        message["Subject"] = subject
        return
    # The folding of email.policy in CPython 3.11 can drop the space between
    # two encoded words (CPython gh-144156); the older Header class keeps it.
    encoded = email.header.Header(subject, "utf-8", header_name="Subject")
    message.set_raw("Subject", encoded.encode(linesep="\n"))


def _set_unfolded(message: EmailMessage, name: str, value: str) -> None:
    """Set a header on one line when it fits, as message ids should be.

    Python's parser keeps the leading space of a Message-ID folded onto a
    continuation line, so a folded id would not compare equal once read back.
    """
    value = _header_text(value)
    if value.isascii() and len(name) + 2 + len(value) <= MAX_LINE_OCTETS:
        message.set_raw(name, value)
    else:
        message[name] = value


def _transfer_encoding(body: str) -> str:
    """Choose 7bit for short ASCII lines, else quoted-printable.

    Left to choose, the email package encodes every body with a line over
    78 characters, as every packet dump has, and may pick base64.
    Quoted-printable keeps non-ASCII text readable and needs no 8BITMIME.
    """
    data = body.encode("utf-8")
    if data.isascii() and all(
        len(line) <= MAX_LINE_OCTETS for line in data.splitlines()
    ):
        return "7bit"
    return "quoted-printable"
