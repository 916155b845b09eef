"""The ``fnm_spool run`` daemon: inotify wake-ups around processor passes.

inotify is only a wake-up signal. Every pass scans ``incoming/`` itself, so
a queue overflow, a missed event or a recreated directory costs a rescan,
never an alert. Signal handlers only set flags; the loop acts on them.
"""

import contextlib
import logging
import os
import select
import signal
from collections.abc import Callable

import filelock
import inotify_simple

from . import __version__
from .errors import SpoolBusyError
from .processor import Processor
from .spooldir import State

log = logging.getLogger(__name__)

_WATCH_FLAGS = (
    inotify_simple.flags.MOVED_TO
    | inotify_simple.flags.CLOSE_WRITE
    | inotify_simple.flags.DELETE_SELF
    | inotify_simple.flags.MOVE_SELF
)


class Daemon:
    """Runs a :class:`Processor` until SIGTERM or SIGINT.

    ``reload`` returns fresh settings on SIGHUP.
    """

    def __init__(self, processor: Processor, reload: Callable[[], object]):
        self.processor = processor
        self.reload = reload
        self.signal_received: int | None = None
        self.reload_requested = False

    def run(self) -> None:
        """Hold the daemon lock and process the spool until SIGTERM or SIGINT."""
        spool = self.processor.spool
        lock = filelock.FileLock(
            spool.root / "locks" / "daemon.lock", is_singleton=True
        )
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            raise SpoolBusyError(
                f"another fnm_spool run daemon (PID {_read_pid(spool.root)}) already "
                f"processes {spool.root}; stop it first or use run --once"
            ) from None
        try:
            (spool.root / "locks" / "daemon.pid").write_text(f"{os.getpid()}\n")
            self._serve()
        finally:
            lock.release()

    def _serve(self) -> None:
        spool = self.processor.spool
        log.info(
            "fnm_spool %s started, PID %d, spool %s",
            __version__,
            os.getpid(),
            spool.root,
        )
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous = self._install_signals(wake_write)
        inotify = inotify_simple.INotify()
        try:
            self._watch(inotify)
            self.processor.start()
            self._loop(inotify, wake_read)
        finally:
            self.processor.release_all()
            signal.set_wakeup_fd(-1)
            for number, handler in previous.items():
                signal.signal(number, handler)
            for fd in (wake_read, wake_write):
                os.close(fd)
            inotify.close()
            reason = (
                signal.Signals(self.signal_received).name
                if self.signal_received
                else "error"
            )
            log.info(
                "fnm_spool %s stopped (%s), PID %d", __version__, reason, os.getpid()
            )

    def _loop(self, inotify: inotify_simple.INotify, wake_read: int) -> None:
        processor = self.processor
        next_scan = processor.clock() + processor.settings.scan_interval
        poller = select.poll()
        poller.register(inotify.fileno(), select.POLLIN)
        poller.register(wake_read, select.POLLIN)
        while self.signal_received is None:
            wake_at = processor.process_pass()
            if self.signal_received is not None:
                break
            now = processor.clock()
            deadline = next_scan if wake_at is None else min(wake_at, next_scan)
            timeout_ms = max(0, int((deadline - now) * 1000))
            if poller.poll(timeout_ms):
                self._drain(inotify, wake_read)
            if self.reload_requested:
                self._reload()
            if processor.clock() >= next_scan:
                processor.spool.recover()
                next_scan = processor.clock() + processor.settings.scan_interval

    def _drain(self, inotify: inotify_simple.INotify, wake_read: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(wake_read, 512)
        for event in inotify.read(timeout=0):
            if event.mask & inotify_simple.flags.Q_OVERFLOW:
                log.warning("inotify queue overflowed; rescanning incoming/")
            if event.mask & (
                inotify_simple.flags.DELETE_SELF
                | inotify_simple.flags.MOVE_SELF
                | inotify_simple.flags.IGNORED
            ):
                log.warning("incoming/ was removed or moved; recreating and rewatching")
                self.processor.spool.create()
                self._watch(inotify)

    def _watch(self, inotify: inotify_simple.INotify) -> None:
        inotify.add_watch(self.processor.spool.dir(State.INCOMING), _WATCH_FLAGS)

    def _reload(self) -> None:
        self.reload_requested = False
        try:
            settings = self.reload()
        except Exception as error:  # noqa: BLE001 - keep running on old settings
            log.error("SIGHUP: settings not reloaded, keeping the old ones: %s", error)
            return

        # The daemon lock and the inotify watch belong to the spool that the
        # daemon started with, so a new spool_dir waits for a restart.
        current = self.processor.settings.spool_dir
        if settings.spool_dir != current:
            log.warning(
                "SIGHUP: spool_dir %s takes effect when the daemon restarts; "
                "until then it processes %s",
                settings.spool_dir,
                current,
            )
            settings = settings.with_overrides(spool_dir=current)
        self.processor.configure(settings)
        log.info("SIGHUP: settings reloaded")

    def _install_signals(self, wake_write: int) -> dict:
        def stop(number, frame):
            self.signal_received = number
            self.processor.stop_requested = True

        def hangup(number, frame):
            self.reload_requested = True

        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        previous = {}
        for number, handler in (
            (signal.SIGTERM, stop),
            (signal.SIGINT, stop),
            (signal.SIGHUP, hangup),
        ):
            previous[number] = signal.signal(number, handler)
        return previous


def _read_pid(root) -> str:
    try:
        return (root / "locks" / "daemon.pid").read_text().strip() or "unknown"
    except OSError:
        return "unknown"
