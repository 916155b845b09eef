"""One e-mail thread per attack: the ban's Message-ID, by attack.

When a ban (or a partial block) is sent, its Message-ID and time are stored
under ``threads/`` keyed by :func:`spool.events.attack_key`. Attack details,
unbans and partial unblocks sent later carry In-Reply-To and References to
it, and the unban says how long the host was blocked.
"""

import contextlib
import datetime as dt
import email.parser
import json
import logging
import os
from pathlib import Path

from .events import attack_key

log = logging.getLogger(__name__)

THREAD_STARTS = ("ban", "partial_block")
THREAD_ENDS = ("unban", "partial_unblock")
# Records of attacks whose unban never came are dropped after this long.
MAX_THREAD_AGE = 30 * 86400


class ThreadIndex:
    """The ``threads/`` directory of a spool."""

    def __init__(self, directory: Path):
        self.directory = directory

    def lookup(self, event: dict):
        """Return the ThreadRef for a later message of an attack, or None."""
        path = self.directory / (attack_key(event) + ".json")
        try:
            with open(path, encoding="utf-8") as stream:
                record = json.load(stream)
            banned_at = dt.datetime.fromisoformat(record["banned_at"])
            message_id = record["message_id"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("%s: unreadable thread record (%s); ignored", path, error)
            return None
        from .render import ThreadRef

        return ThreadRef(message_id=message_id, banned_at=banned_at)

    def record_sent(self, event: dict, message: bytes, queued_at: dt.datetime) -> None:
        """Update the index after a message for ``event`` went out."""
        action = event.get("action")
        path = self.directory / (attack_key(event) + ".json")
        if action in THREAD_ENDS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        if action not in THREAD_STARTS:
            return
        # Only the header block is parsed: a digest's body can be megabytes,
        # and a storm records one thread per ban from the same message.
        end = message.find(b"\n\n")
        block = message if end < 0 else message[: end + 1]
        headers = email.parser.BytesHeaderParser().parsebytes(block)
        record = {
            "message_id": str(headers.get("Message-ID", "")).strip(),
            "banned_at": queued_at.isoformat(),
            "ip": event.get("ip"),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as stream:
                json.dump(record, stream)
            os.replace(temporary, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def expire(self, now: float, max_age: float = MAX_THREAD_AGE) -> None:
        """Remove records of attacks older than ``max_age`` seconds."""
        with os.scandir(self.directory) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat().st_mtime > max_age:
                        os.unlink(entry.path)
