"""The spool directory: a rename protocol over one local filesystem.

Writers create events in ``tmp/``, fsync them and rename them into
``incoming/``. A processor claims an event by renaming it into ``active/``
while it holds the event's lock, and finishes it by renaming it into
``sent/``, ``deferred/`` or ``failed/``. A file is never modified after its
final rename; companions (the message, the reason, the attempt history) are
written first under ``tmp/`` and renamed beside the event.

Locks are a fixed set of files in ``locks/``: an event's lock is chosen by a
hash of its name, so lock files never pile up and never wake the watcher of
``incoming/``. A processor holds the lock from claim to finish; a lock that
can be taken at once therefore guards no live claim, which is how events left
in ``active/`` by a crash are told from events being delivered.
"""

import contextlib
import dataclasses
import datetime as dt
import enum
import errno
import heapq
import json
import logging
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import EventError
from .events import is_event_id, new_event_id

if TYPE_CHECKING:
    import filelock

log = logging.getLogger(__name__)

EVENT_SUFFIX = ".json"
MESSAGE_SUFFIX = ".eml"
REASON_SUFFIX = ".reason"
ATTEMPTS_SUFFIX = ".attempts"
LOCK_BUCKETS = 64
TMP_MAX_AGE = 86400


class State(enum.Enum):
    """Spool states; each value is the name of the state's directory."""

    TMP = "tmp"
    INCOMING = "incoming"
    ACTIVE = "active"
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"


@dataclasses.dataclass
class Claim:
    """An event renamed into ``active/`` by this process, its lock held."""

    event_id: str
    source: State
    original_name: str
    lock: "filelock.BaseFileLock"

    @property
    def name(self) -> str:
        return self.event_id + EVENT_SUFFIX


def is_ignored(name: str) -> bool:
    """Tell whether a name in ``incoming/`` belongs to a writer still at work."""
    return name.startswith(".") or name.endswith(".tmp")


class Spool:
    """One spool directory tree rooted at ``root``."""

    def __init__(self, root: os.PathLike | str, create: bool = True):
        self.root = Path(root)
        self._unsynced: set[Path] | None = None
        if create:
            self.create()

    @contextlib.contextmanager
    def batched_sync(self):
        """Fsync each directory touched by moves in the block once, at its end.

        A digest moves thousands of events to ``sent/``; one fsync per move
        would dominate. A process killed inside the block loses nothing,
        because renames reach the filesystem at once; only a power loss
        before the final fsync can bring an event back, to be sent again.
        """
        self._unsynced = set()
        try:
            yield
        finally:
            pending, self._unsynced = self._unsynced, None
            for path in pending:
                fsync_dir(path)

    def _sync(self, path: Path) -> None:
        if self._unsynced is None:
            fsync_dir(path)
        else:
            self._unsynced.add(path)

    def create(self) -> None:
        """Create the state directories, ``locks/`` and ``threads/`` if missing."""
        for state in State:
            self.dir(state).mkdir(mode=0o750, parents=True, exist_ok=True)
        (self.root / "locks").mkdir(mode=0o750, exist_ok=True)
        (self.root / "threads").mkdir(mode=0o750, exist_ok=True)

    def dir(self, state: State) -> Path:
        return self.root / state.value

    def path(self, state: State, event_id: str, suffix: str = EVENT_SUFFIX) -> Path:
        return self.dir(state) / (event_id + suffix)

    # Writing

    def enqueue(self, raw: bytes, now: dt.datetime | None = None) -> str:
        """Write one event durably into ``incoming/`` and return its id.

        The bytes are written under ``tmp/``, fsynced, renamed into
        ``incoming/`` and the directory fsynced, so a crash leaves either no
        event or a complete one.
        """
        event_id = new_event_id(now)
        target = self.path(State.INCOMING, event_id)
        self.write_file(target, raw)
        log.debug("enqueued %s (%d bytes)", event_id, len(raw))
        return event_id

    def write_file(self, target: Path, data: bytes, mode: int = 0o640) -> None:
        """Write ``data`` to ``target`` atomically through ``tmp/``."""
        temporary = self.dir(State.TMP) / f".{target.name}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with open(fd, "wb", closefd=True) as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.rename(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        self._sync(target.parent)

    # Reading the tree

    def names(self, state: State) -> Iterator[str]:
        """Yield the event names in one state directory, in directory order.

        In ``incoming/`` every name is a candidate except a writer's
        temporary file; elsewhere only ``*.json`` names are events.
        """
        with os.scandir(self.dir(state)) as entries:
            for entry in entries:
                name = entry.name
                if state is State.INCOMING:
                    if not is_ignored(name):
                        yield name
                elif name.endswith(EVENT_SUFFIX) and not name.startswith("."):
                    yield name

    def oldest(self, state: State, limit: int) -> list[str]:
        """Return up to ``limit`` names of ``state``, oldest first.

        Names made by fnm_spool sort by enqueue time; other names sort after
        them. Only ``limit`` names are held, however large the directory.
        """
        return heapq.nsmallest(limit, self.names(state), key=_age_key)

    def count(self, state: State) -> int:
        return sum(1 for _ in self.names(state))

    # Claims

    def lock_for(self, event_id: str) -> "filelock.BaseFileLock":
        bucket = zlib.crc32(event_id.encode()) % LOCK_BUCKETS
        path = self.root / "locks" / f"claim-{bucket:02d}.lock"
        # Imported here: enqueue, which FastNetMon's notify runs for every
        # ban, takes no lock and should not pay for loading filelock.
        import filelock

        return filelock.FileLock(path, is_singleton=True, thread_local=False)

    def claim(self, state: State, name: str) -> Claim | None:
        """Claim one event by renaming it into ``active/`` under its lock.

        A name in ``incoming/`` that fnm_spool did not make gets a new id.
        Returns None when the event is gone (another processor claimed it) or
        its lock is busy, in which case the event is left for a later pass.
        """
        stem = name[: -len(EVENT_SUFFIX)] if name.endswith(EVENT_SUFFIX) else name
        event_id = stem if is_event_id(stem) else new_event_id()
        lock = self.lock_for(event_id)
        try:
            lock.acquire(blocking=False)
        except _timeout():
            return None

        target = self.path(State.ACTIVE, event_id)
        try:
            if target.exists():
                raise FileExistsError(errno.EEXIST, "already claimed", str(target))
            os.rename(self.dir(state) / name, target)
        except (FileNotFoundError, FileExistsError):
            lock.release()
            return None
        if event_id != stem:
            log.info("claimed %s/%r as %s", state.value, name, event_id)
        return Claim(event_id, state, name, lock)

    def read(self, claim: Claim, max_bytes: int) -> bytes:
        """Read a claimed event without following symbolic links.

        Raises :class:`EventError` for anything but a regular file and for a
        file larger than ``max_bytes``, which is never read whole.
        """
        path = self.path(State.ACTIVE, claim.event_id)
        where = f"{claim.source.value}/{claim.original_name!r}"
        kind = _file_kind(os.lstat(path).st_mode)
        if kind != "regular file":
            raise EventError(f"{where}: a {kind}, not a regular file; rejected", where)

        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with open(fd, "rb", closefd=True) as stream:
            size = os.fstat(fd).st_size
            if size > max_bytes:
                raise EventError(
                    f"{where}: {size} bytes, over max_event_bytes ({max_bytes}); "
                    "raise max_event_bytes or shorten the event",
                    where,
                )
            data = stream.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise EventError(
                f"{where}: grew past max_event_bytes ({max_bytes}) while read", where
            )
        return data

    def mtime(self, claim: Claim) -> float:
        return os.lstat(self.path(State.ACTIVE, claim.event_id)).st_mtime

    # Finishing claims

    def finish_sent(self, claim: Claim, message: bytes | Path) -> None:
        """Move a delivered event to ``sent/`` beside its message.

        ``message`` is the exact bytes handed to msmtp, or the path of a
        message already in ``sent/`` (a digest) to hard-link to.
        """
        target = self.path(State.SENT, claim.event_id, MESSAGE_SUFFIX)
        if isinstance(message, Path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            os.link(message, target)
        else:
            self.write_file(target, message)
        self._move(claim, State.SENT)
        self._drop_attempts(claim.event_id)

    def finish_failed(self, claim: Claim, reason: str) -> None:
        """Move an event to ``failed/`` with a reason file beside it."""
        reason_path = self.path(State.FAILED, claim.event_id, REASON_SUFFIX)
        self.write_file(reason_path, reason.encode("utf-8", "replace"))
        self._move(claim, State.FAILED)
        self._drop_attempts(claim.event_id)

    def defer(self, claim: Claim, history: dict, next_attempt: float) -> None:
        """Move an event to ``deferred/`` until ``next_attempt`` (epoch seconds).

        The attempt history is stored as ``deferred/ID.attempts``; its
        modification time is the next attempt time, so finding due events
        needs a stat per event and no read.
        """
        path = self.path(State.DEFERRED, claim.event_id, ATTEMPTS_SUFFIX)
        temporary = self.dir(State.TMP) / f".{path.name}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump(history, stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        os.utime(temporary, (next_attempt, next_attempt))
        os.rename(temporary, path)
        self._move(claim, State.DEFERRED)

    def requeue(self, claim: Claim) -> None:
        """Put a claimed event back into ``incoming/`` under its original name."""
        name = claim.original_name
        if (
            claim.source is not State.INCOMING
            or (self.dir(State.INCOMING) / name).exists()
        ):
            name = claim.name
        os.rename(
            self.path(State.ACTIVE, claim.event_id), self.dir(State.INCOMING) / name
        )
        fsync_dir(self.dir(State.INCOMING))
        claim.lock.release()

    def release_to_deferred(self, claim: Claim) -> None:
        """Return an event claimed from ``deferred/`` unchanged."""
        self._move(claim, State.DEFERRED)

    def _move(self, claim: Claim, state: State) -> None:
        os.rename(
            self.path(State.ACTIVE, claim.event_id), self.path(state, claim.event_id)
        )
        self._sync(self.dir(state))
        claim.lock.release()

    def _drop_attempts(self, event_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(State.DEFERRED, event_id, ATTEMPTS_SUFFIX))

    # History

    def load_history(self, event_id: str) -> dict:
        """Return the attempt history of an event, empty if it has none."""
        path = self.path(State.DEFERRED, event_id, ATTEMPTS_SUFFIX)
        try:
            with open(path, encoding="utf-8") as stream:
                history = json.load(stream)
        except FileNotFoundError:
            return {"attempts": []}
        except (OSError, ValueError) as error:
            log.warning(
                "%s: unreadable attempt history (%s); starting anew", path, error
            )
            return {"attempts": []}
        if not isinstance(history, dict) or not isinstance(
            history.get("attempts"), list
        ):
            return {"attempts": []}
        return history

    def due_deferred(self, now: float, limit: int) -> list[str]:
        """Return up to ``limit`` deferred event names whose next attempt is due."""
        due = []
        with os.scandir(self.dir(State.DEFERRED)) as entries:
            for entry in entries:
                if not entry.name.endswith(ATTEMPTS_SUFFIX):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime <= now:
                        due.append(entry.name[: -len(ATTEMPTS_SUFFIX)] + EVENT_SUFFIX)
        due = [name for name in heapq.nsmallest(limit, due, key=_age_key)]
        return [name for name in due if (self.dir(State.DEFERRED) / name).exists()]

    def next_deferred_time(self) -> float | None:
        """Return the earliest next attempt time in ``deferred/``, if any."""
        earliest = None
        with os.scandir(self.dir(State.DEFERRED)) as entries:
            for entry in entries:
                if entry.name.endswith(ATTEMPTS_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        mtime = entry.stat(follow_symlinks=False).st_mtime
                        if earliest is None or mtime < earliest:
                            earliest = mtime
        return earliest

    # Recovery and housekeeping

    @contextlib.contextmanager
    def _idle_lock(self, event_id: str):
        """Take an event's lock unless a live claim has it; yield whether taken."""
        lock = self.lock_for(event_id)
        if lock.is_locked:
            yield False
            return
        try:
            lock.acquire(blocking=False)
        except _timeout():
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def recover(self) -> list[str]:
        """Return events left in ``active/`` by a dead process to their queue.

        An event whose lock is held belongs to a live processor and is left
        alone. Events claimed from ``deferred/`` go back there with their
        history; the others go back to ``incoming/``.
        """
        recovered = []
        for name in list(self.names(State.ACTIVE)):
            event_id = name[: -len(EVENT_SUFFIX)]
            with self._idle_lock(event_id) as taken:
                if not taken:
                    continue
                source = self.path(State.ACTIVE, event_id)
                if not source.exists() and not source.is_symlink():
                    continue
                state = State.INCOMING
                if self.path(State.DEFERRED, event_id, ATTEMPTS_SUFFIX).exists():
                    state = State.DEFERRED
                os.rename(source, self.path(state, event_id))
                fsync_dir(self.dir(state))
                recovered.append(event_id)
                log.warning(
                    "recovered %s from active/ to %s/: its processor died",
                    event_id,
                    state.value,
                )
        self.remove_finished_attempts()
        return recovered

    def remove_finished_attempts(self) -> int:
        """Remove attempt histories of events already in ``sent/`` or ``failed/``.

        A crash between an event's final move and the removal of its history
        leaves ``deferred/ID.attempts`` behind. Its modification time stays
        due, so a daemon would wake every 50 ms for it. Each history is
        removed under its event's lock, so that a replay cannot move the
        event between the check and the removal. Returns how many were removed.
        """
        stale = []
        with os.scandir(self.dir(State.DEFERRED)) as entries:
            for entry in entries:
                if entry.name.endswith(ATTEMPTS_SUFFIX):
                    event_id = entry.name[: -len(ATTEMPTS_SUFFIX)]
                    if self._finished_state(event_id) is not None:
                        stale.append(event_id)

        removed = 0
        for event_id in stale:
            with self._idle_lock(event_id) as taken:
                if not taken:
                    continue
                state = self._finished_state(event_id)
                if state is not None:
                    self._drop_attempts(event_id)
                    removed += 1
                    log.warning(
                        "removed the attempt history of %s, an event already in %s/",
                        event_id,
                        state.value,
                    )
        return removed

    def _finished_state(self, event_id: str) -> State | None:
        if self.path(State.DEFERRED, event_id).exists():
            return None
        for state in (State.SENT, State.FAILED):
            if self.path(state, event_id).exists():
                return state
        return None

    def remove_stale_tmp(self, now: float, max_age: float = TMP_MAX_AGE) -> int:
        """Remove writers' leftovers in ``tmp/`` older than ``max_age`` seconds."""
        removed = 0
        with os.scandir(self.dir(State.TMP)) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                        os.unlink(entry.path)
                        removed += 1
                        log.warning("removed stale tmp/%s", entry.name)
        return removed


def fsync_dir(path: Path) -> None:
    """Make the directory entries of ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _age_key(name: str) -> tuple[int, str]:
    stem = name[: -len(EVENT_SUFFIX)] if name.endswith(EVENT_SUFFIX) else name
    return (0, stem) if is_event_id(stem) else (1, name)


def _file_kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _timeout() -> type[Exception]:
    import filelock

    return filelock.Timeout
