"""Exceptions of fnm_spool, each carrying the sysexits.h status to exit with."""

import os

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSFILE = 72
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class SpoolError(Exception):
    """Base class; ``exit_status`` is the status the command line exits with."""

    exit_status = EX_SOFTWARE


class UsageError(SpoolError, ValueError):
    """A command-line argument is invalid."""

    exit_status = EX_USAGE


class ConfigError(SpoolError, ValueError):
    """A setting is invalid or the settings file cannot be used.

    ``key`` names the setting when one is to blame, ``path`` the file.
    """

    exit_status = EX_CONFIG

    def __init__(
        self, message: str, key: str | None = None, path: os.PathLike | None = None
    ):
        super().__init__(message)
        self.key = key
        self.path = path


class EventError(SpoolError, ValueError):
    """An event cannot be parsed or is not a valid FastNetMon event.

    ``path`` is the spool file when the event came from one.
    """

    exit_status = EX_DATAERR

    def __init__(self, message: str, path: os.PathLike | str | None = None):
        super().__init__(message)
        self.path = path


class SpoolBusyError(SpoolError, RuntimeError):
    """Another daemon already processes this spool directory."""

    exit_status = EX_TEMPFAIL


class TransportUnavailableError(SpoolError, OSError):
    """msmtp cannot be run at all: missing, not executable, unreadable config.

    Events stay queued while this lasts; it is not the event's fault.
    """

    exit_status = EX_UNAVAILABLE
