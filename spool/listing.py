"""``fnm_spool list``: one row per event, read cheaply from the spool.

Listing streams the directories with ``os.scandir``, reads at most
:data:`LIST_READ_BYTES` of any event, reason or message file and never
follows a symbolic link, so it stays cheap on a spool that a storm has
filled. The file helpers at the end also serve :mod:`spool.operations`.
"""

import contextlib
import datetime as dt
import email.parser
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import EventError, UsageError
from .events import event_time, is_event_id, parse_event
from .spooldir import (
    ATTEMPTS_SUFFIX,
    EVENT_SUFFIX,
    MESSAGE_SUFFIX,
    REASON_SUFFIX,
    Spool,
    State,
    _file_kind,
)

# States in the order a message moves through them. tmp/ contains no events.
EVENT_STATES = (
    State.INCOMING,
    State.ACTIVE,
    State.DEFERRED,
    State.SENT,
    State.FAILED,
)
LIST_READ_BYTES = 64 * 1024
# The attempt history holds up to 4000 characters of stderr per attempt, so
# it may outgrow LIST_READ_BYTES after a day of retries.
HISTORY_READ_BYTES = 4 * 1024 * 1024
UNKNOWN = "?"

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_REASON_LINE = re.compile(r"^reason: (.*)$", re.M)
_ATTEMPTS_LINE = re.compile(r"^attempts: (\d+)", re.M)


def list_events(spool: Spool, state: State | None = None) -> Iterator[dict]:
    """Yield one row per event in ``state``, or in every event state if None.

    Rows come in directory order, not time order, so that a large spool is
    listed without holding its names in memory.

    Each row is a dict with these keys:

    * ``id``: the event id, or the name of a file copied into ``incoming/``
      by hand.
    * ``state``: the directory name.
    * ``time``: the enqueue time as an aware UTC datetime, or the file's
      modification time for a name that fnm_spool did not make.
    * ``action`` and ``ip``: ``"?"`` when the event cannot be read.
    * ``attempts``: the number of delivery attempts, or None.
    * ``error``: why the event cannot be read or parsed, else the last
      attempt's error or the reason it failed, else None.
    * ``digest``: for a sent event that went out in a digest, the digest id.

    Raises :class:`UsageError` for ``State.TMP``, which holds no events.
    """
    if state is State.TMP:
        raise UsageError(
            "tmp/ contains files being written, not events; list one of "
            + ", ".join(item.value for item in EVENT_STATES)
        )
    for listed in (state,) if state is not None else EVENT_STATES:
        for name in spool.names(listed):
            row = _event_row(spool, listed, name)
            if row is not None:
                yield row


def _event_row(spool: Spool, state: State, name: str) -> dict | None:
    event_id = _event_id(name)
    path = spool.dir(state) / name
    try:
        mtime = os.lstat(path).st_mtime
    except FileNotFoundError:
        # Claimed or finished since the directory was read.
        return None
    queued = event_time(event_id) or dt.datetime.fromtimestamp(mtime, dt.UTC)
    fields, error = _peek_event(path, f"{state.value}/{name}")
    row = {
        # A file copied into incoming/ by hand keeps its name until a claim
        # gives it an id, so the listing shows the name.
        "id": event_id if is_event_id(event_id) else name,
        "state": state.value,
        "time": queued,
        "action": _field(fields, "action"),
        "ip": _field(fields, "ip"),
        "attempts": None,
        "error": error,
        "digest": None,
    }
    if state is State.FAILED:
        _add_reason(row, spool.path(state, event_id, REASON_SUFFIX))
    else:
        _add_history(row, spool.path(State.DEFERRED, event_id, ATTEMPTS_SUFFIX))
    if state is State.SENT:
        row["digest"] = _digest_id(spool.path(state, event_id, MESSAGE_SUFFIX))
    return row


def _field(fields: dict, key: str) -> str:
    value = fields.get(key)
    if value is not None and value != "":
        return str(value)
    # Hostgroup and network events have no host; "?" means "could not read".
    if key == "ip" and fields.get("alert_scope") in ("hostgroup", "network"):
        return "-"
    return UNKNOWN


def _peek_event(path: Path, source: str) -> tuple[dict, str | None]:
    """Return the top-level fields of an event and why it is unusable, if so.

    An event longer than :data:`LIST_READ_BYTES` is not read whole: the
    fields before the cut are decoded and the rest is left unchecked.
    """
    try:
        data, size = _read_prefix(path, LIST_READ_BYTES)
    except OSError as error:
        return {}, f"{source}: cannot read: {error.strerror}"
    except EventError as error:
        return {}, str(error)
    if size > LIST_READ_BYTES:
        return _leading_fields(data.decode("utf-8", "replace")), None
    try:
        return parse_event(data, source), None
    except EventError as error:
        fields = _leading_fields(data.decode("utf-8", "replace"))
        return fields, str(error)


def _leading_fields(text: str) -> dict:
    """Decode the top-level members of a JSON object up to the first cut one."""
    fields = {}
    position = _WHITESPACE.match(text).end()
    if not text.startswith("{", position):
        return fields
    position += 1
    with contextlib.suppress(ValueError):
        while True:
            position = _WHITESPACE.match(text, position).end()
            key, position = _DECODER.raw_decode(text, position)
            position = _WHITESPACE.match(text, position).end()
            if not isinstance(key, str) or not text.startswith(":", position):
                break
            position = _WHITESPACE.match(text, position + 1).end()
            value, position = _DECODER.raw_decode(text, position)
            fields[key] = value
            position = _WHITESPACE.match(text, position).end()
            if not text.startswith(",", position):
                break
            position += 1
    return fields


def _add_history(row: dict, path: Path) -> None:
    try:
        data, size = _read_prefix(path, HISTORY_READ_BYTES)
    except FileNotFoundError:
        return
    except (OSError, EventError) as error:
        row["error"] = row["error"] or f"attempt history unreadable: {error}"
        return
    try:
        attempts = json.loads(data)["attempts"]
        row["attempts"] = len(attempts)
        last_error = attempts[-1].get("error") if attempts else None
    except (ValueError, KeyError, TypeError, AttributeError):
        row["error"] = row["error"] or f"attempt history invalid ({size} bytes)"
        return
    row["error"] = row["error"] or last_error


def _add_reason(row: dict, path: Path) -> None:
    try:
        data, _ = _read_prefix(path, LIST_READ_BYTES)
    except FileNotFoundError:
        return
    except (OSError, EventError) as error:
        row["error"] = row["error"] or f"reason file unreadable: {error}"
        return
    text = data.decode("utf-8", "replace")
    attempts = _ATTEMPTS_LINE.search(text)
    if attempts:
        row["attempts"] = int(attempts.group(1))
    reason = _REASON_LINE.search(text)
    row["error"] = row["error"] or (reason.group(1) if reason else None)


def _digest_id(path: Path) -> str | None:
    """Return the digest id of a sent message, or None for a single event's."""
    try:
        data, _ = _read_prefix(path, LIST_READ_BYTES)
    except (OSError, EventError):
        return None
    headers = email.parser.BytesHeaderParser().parsebytes(data)
    digest = headers.get("X-FastNetMon-Digest")
    if digest:
        return str(digest).strip()
    message_id = str(headers.get("Message-ID", "")).strip()
    if message_id.startswith("<digest-"):
        return message_id[1:].split("@", 1)[0].rstrip(">")
    return None


def format_list(rows: Iterable[dict]) -> str:
    """Format :func:`list_events` rows, one line per event."""
    return "".join(line + "\n" for line in list_lines(rows))


def list_lines(rows: Iterable[dict]) -> Iterator[str]:
    """Yield a header and one line per row without holding all rows.

    Columns have fixed minimum widths rather than widths measured over all
    rows, so a long value shifts the rest of its own line only.
    """
    yield _list_line("time (UTC)", "state", "id", "action", "ip", "tries", "note")
    for row in rows:
        attempts = row["attempts"]
        if row["digest"]:
            note = f"digest {row['digest']}"
        else:
            note = row["error"] or ""
        yield _list_line(
            row["time"].astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            row["state"],
            row["id"],
            row["action"],
            row["ip"],
            "-" if attempts is None else str(attempts),
            note,
        )


def _list_line(time, state, event_id, action, ip, attempts, note) -> str:
    columns = [
        f"{time:<19}",
        f"{state:<8}",
        f"{_printable(event_id):<39}",
        f"{_printable(action):<15}",
        f"{_printable(ip):<15}",
        f"{attempts:>5}",
        _printable(note),
    ]
    return "  ".join(columns).rstrip()


def _printable(text: str) -> str:
    """Escape control characters so event data cannot break the listing."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


# Files


def _event_id(name: str) -> str:
    return name[: -len(EVENT_SUFFIX)] if name.endswith(EVENT_SUFFIX) else name


def _read_prefix(path: Path, limit: int) -> tuple[bytes, int]:
    """Read at most ``limit`` bytes of a regular file; return them and its size.

    Raises :class:`EventError` for a symbolic link or any file that is not
    regular, and :class:`OSError` when the file cannot be opened.
    """
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise EventError(f"{path}: a {_file_kind(mode)}, not a regular file", path)
    # O_NOFOLLOW and the second check close the race with a rename between
    # lstat and open; O_NONBLOCK keeps a FIFO swapped in from blocking.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(fd, "rb", closefd=True) as stream:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _file_kind(info.st_mode)
            raise EventError(f"{path}: a {kind}, not a regular file", path)
        return stream.read(limit), info.st_size
