"""fnm_spool: a spool directory and e-mail notifier for FastNetMon events."""

__version__ = "0.1.0"
