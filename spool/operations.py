"""Operator commands on the spool: status, replay and render.

Each function returns data and leaves printing to the command line. The
``fnm_spool list`` functions live in :mod:`spool.listing` and are imported
here, so callers can still use ``operations.list_events``.
"""

import contextlib
import datetime as dt
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import filelock

from .errors import EventError, SpoolBusyError, UsageError
from .events import event_time, is_event_id, new_event_id, parse_event
from .listing import (
    _REASON_LINE,
    EVENT_STATES,
    LIST_READ_BYTES,
    _event_id,
    _read_prefix,
)
from .listing import format_list as format_list
from .listing import list_events as list_events
from .listing import list_lines as list_lines
from .settings import Settings
from .spooldir import (
    ATTEMPTS_SUFFIX,
    REASON_SUFFIX,
    Spool,
    State,
    _file_kind,
    fsync_dir,
)
from .threads import ThreadIndex

log = logging.getLogger(__name__)


# Status


def status(spool: Spool, now: float) -> list[dict]:
    """Count the events of each state and measure the age of the oldest.

    Returns one dict per state, ``incoming`` to ``failed`` and then ``tmp``:
    ``{"state": str, "events": int, "oldest_age_seconds": float | None}``.
    An event's age runs from its enqueue time, which is encoded in its id,
    or from its modification time for a name fnm_spool did not make. For
    ``tmp/``, ``events`` counts every file, writers' leftovers included.
    Each directory is read in one streaming pass.
    """
    rows = []
    for state in EVENT_STATES:
        count, oldest = _count_events(spool, state)
        rows.append(_status_row(state, count, oldest, now))
    count, oldest = _count_files(spool.dir(State.TMP))
    rows.append(_status_row(State.TMP, count, oldest, now))
    return rows


def _status_row(state: State, count: int, oldest: float | None, now: float) -> dict:
    age = None if oldest is None else max(0.0, now - oldest)
    return {"state": state.value, "events": count, "oldest_age_seconds": age}


def _count_events(spool: Spool, state: State) -> tuple[int, float | None]:
    count = 0
    oldest = None
    directory = spool.dir(state)
    for name in spool.names(state):
        count += 1
        queued = _queued_epoch(directory, name)
        if queued is not None and (oldest is None or queued < oldest):
            oldest = queued
    return count, oldest


def _count_files(directory: Path) -> tuple[int, float | None]:
    count = 0
    oldest = None
    with os.scandir(directory) as entries:
        for entry in entries:
            count += 1
            with contextlib.suppress(FileNotFoundError):
                mtime = entry.stat(follow_symlinks=False).st_mtime
                if oldest is None or mtime < oldest:
                    oldest = mtime
    return count, oldest


def _queued_epoch(directory: Path, name: str) -> float | None:
    """Return the enqueue time of an event, or None if it vanished meanwhile."""
    queued = event_time(_event_id(name))
    if queued is not None:
        return queued.timestamp()
    try:
        return os.lstat(directory / name).st_mtime
    except FileNotFoundError:
        return None


def format_status(rows: Iterable[dict]) -> str:
    """Format :func:`status` rows as an aligned table with readable ages."""
    lines = [("state", "events", "oldest")]
    for row in rows:
        age = row["oldest_age_seconds"]
        shown = "-" if age is None else format_age(age)
        lines.append((row["state"], str(row["events"]), shown))
    state_width = max(len(line[0]) for line in lines)
    count_width = max(len(line[1]) for line in lines)
    text = [
        f"{state:<{state_width}}  {count:>{count_width}}  {age}"
        for state, count, age in lines
    ]
    return "\n".join(text) + "\n"


def format_age(seconds: float) -> str:
    """Format a duration as ``5 s``, ``3 min``, ``2 h 5 min`` or ``3 d 4 h``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(seconds // 3600, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


# Replay


def replay(spool: Spool, ids: list[str] | None) -> list[str]:
    """Move failed events back to ``incoming/`` with their attempts reset.

    ``ids`` None replays every event in ``failed/``. A file there that is
    not a regular file would fail again, so it is left in place with a
    warning. Each replayed event loses its reason file and its attempt
    history. Returns the ids replayed, in order.

    Raises :class:`UsageError` before moving anything when a given id is
    invalid, not in ``failed/`` or not a regular file. Raises
    :class:`SpoolBusyError` after moving the others when some event's lock
    was busy or its name was taken in ``incoming/``; a second run retries.
    """
    if ids is None:
        wanted = [_event_id(name) for name in spool.names(State.FAILED)]
        wanted = [event_id for event_id in wanted if _replayable(spool, event_id)]
    else:
        wanted = [_check_failed_id(spool, event_id) for event_id in ids]

    replayed = []
    skipped = []
    for event_id in dict.fromkeys(wanted):
        if _replay_one(spool, event_id):
            replayed.append(event_id)
        else:
            skipped.append(event_id)
    if replayed:
        fsync_dir(spool.dir(State.INCOMING))
        fsync_dir(spool.dir(State.FAILED))
    if skipped:
        raise SpoolBusyError(
            f"not replayed: {', '.join(skipped)}. Another fnm_spool process "
            "holds their lock, or incoming/ already contains their name; run "
            "the replay again"
        )
    return replayed


def _check_failed_id(spool: Spool, given: str) -> str:
    event_id = _event_id(given)
    if not event_id or "/" in event_id or event_id.startswith("."):
        raise UsageError(f"invalid event id {given!r}; see: fnm_spool list failed")
    path = spool.path(State.FAILED, event_id)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise UsageError(
            f"event {given!r} not found in {spool.dir(State.FAILED)}; see: "
            "fnm_spool list failed"
        ) from None
    if not stat.S_ISREG(mode):
        raise UsageError(_not_regular_message(path, mode))
    return event_id


def _replayable(spool: Spool, event_id: str) -> bool:
    path = spool.path(State.FAILED, event_id)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISREG(mode):
        return True
    log.warning("%s; not replayed", _not_regular_message(path, mode))
    return False


def _not_regular_message(path: Path, mode: int) -> str:
    return (
        f"{path} is a {_file_kind(mode)}, not a regular file, and would fail "
        "again; inspect it and remove it by hand"
    )


def _replay_one(spool: Spool, event_id: str) -> bool:
    """Move one failed event to ``incoming/`` under its claim lock."""
    lock = spool.lock_for(event_id)
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        log.warning("lock of %s is busy; not replayed", event_id)
        return False
    try:
        source = spool.path(State.FAILED, event_id)
        target = spool.path(State.INCOMING, event_id)
        if target.exists() or target.is_symlink():
            log.warning("%s already exists; %s not replayed", target, event_id)
            return False
        reason = _reason_summary(spool.path(State.FAILED, event_id, REASON_SUFFIX))

        # The history goes first: an event must never reach incoming/ with
        # the attempts of its earlier life.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spool.path(State.DEFERRED, event_id, ATTEMPTS_SUFFIX))
        os.rename(source, target)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spool.path(State.FAILED, event_id, REASON_SUFFIX))
        log.info("replayed %s to incoming/ (it had failed: %s)", event_id, reason)
        return True
    finally:
        lock.release()


def _reason_summary(path: Path) -> str:
    try:
        data, _ = _read_prefix(path, LIST_READ_BYTES)
    except (OSError, EventError):
        return "no readable reason file"
    text = data.decode("utf-8", "replace")
    match = _REASON_LINE.search(text)
    if match:
        return match.group(1)
    lines = text.strip().splitlines()
    return lines[0] if lines else "empty reason file"


# Render


def render_event(settings: Settings, spool: Spool, event_ref: str) -> bytes:
    """Render the exact message that msmtp would get for one event.

    ``event_ref`` is an event id in any state directory, a file name in
    ``incoming/``, or the path of a JSON file. The file is read without following a
    symbolic link and only up to ``settings.max_event_bytes``. A message
    other than a ban's joins its attack's thread, as the processor's would.

    Raises :class:`UsageError` when ``event_ref`` is found nowhere and
    :class:`EventError` when the file is not a valid event.
    """
    path, event_id = _find_event(spool, event_ref)
    data, size = _read_prefix(path, settings.max_event_bytes)
    if size > settings.max_event_bytes:
        raise EventError(
            f"{path}: {size} bytes, over max_event_bytes "
            f"({settings.max_event_bytes}); raise max_event_bytes or shorten "
            "the event",
            str(path),
        )
    event = parse_event(data, str(path))

    queued_at = event_time(event_id)
    if queued_at is None:
        queued_at = dt.datetime.fromtimestamp(os.lstat(path).st_mtime, dt.UTC)
    thread = None
    if event.get("action") != "ban":
        thread = ThreadIndex(spool.root / "threads").lookup(event)

    from .render import Renderer

    return Renderer(settings).render_event(
        event, event_id, data, queued_at=queued_at, thread=thread
    )


def _find_event(spool: Spool, event_ref: str) -> tuple[Path, str]:
    """Return the path of an event and the id its message would carry."""
    if "/" not in event_ref and event_ref not in ("", ".", ".."):
        event_id = _event_id(event_ref)
        candidates = [spool.path(state, event_id) for state in EVENT_STATES]
        # A file copied into incoming/ by hand may have any name.
        candidates.append(spool.dir(State.INCOMING) / event_ref)
        for path in candidates:
            if path.exists() or path.is_symlink():
                return path, _message_event_id(path)

    path = Path(event_ref)
    if path.exists() or path.is_symlink():
        return path, _message_event_id(path)
    raise UsageError(
        f"event {event_ref!r} not found: give an event id from fnm_spool list, "
        "or the path of a JSON event file"
    )


def _message_event_id(path: Path) -> str:
    """Return the id of the event at ``path``, or the new id a claim would give."""
    stem = _event_id(path.name)
    return stem if is_event_id(stem) else new_event_id()
