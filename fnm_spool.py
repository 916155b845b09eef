"""fnm_spool: FastNetMon's e-mail notifier, a spool directory delivered by msmtp.

Usage:
  fnm_spool [options] run [--once]
  fnm_spool [options] enqueue [FILE...]
  fnm_spool [options] notify [ARG...]
  fnm_spool [options] test [--to=ADDRESS]...
  fnm_spool [options] set email_test
  fnm_spool [options] set main KEY VALUE
  fnm_spool [options] delete main KEY [VALUE]
  fnm_spool [options] show main [KEY]
  fnm_spool [options] status
  fnm_spool [options] list [STATE]
  fnm_spool [options] render EVENT
  fnm_spool [options] replay (--all | ID...)
  fnm_spool [options] check
  fnm_spool (-h | --help | --version)

Commands:
  run             process the spool as a daemon; --once: one pass, for cron
  enqueue         validate JSON events (files, or standard input) and enqueue them
  notify          FastNetMon's notify script: IP DIRECTION PPS ACTION, or
                  ACTION IP, or no arguments, with JSON on stdin
  test            send a test e-mail (to the recipients, or to each --to address)
  set email_test  the same as test, in fcli's words
  set main        change a setting; for email_notifications_recipients, add one
  delete main     reset a setting to its default, or remove one recipient
  show main       print the settings, the password masked
  status          events and the age of the oldest per spool directory
  list            one line per event, in STATE (incoming, active, deferred,
                  sent, failed) or in all
  render          print the exact message msmtp would get for EVENT (an id or
                  a JSON file)
  replay          move failed events back to incoming/, attempts reset
  check           validate settings, msmtp, permissions and AppArmor

Options:
  -c FILE, --config=FILE  settings file; default: $FNM_SPOOL_CONFIG, else
                          /etc/fastnetmon/fnm_spool.conf
  -v, --verbose           log debug lines too
  -h, --help              show this help
  --version               print the version
"""

import logging
import os
import signal
import sys
from pathlib import Path

from spool import __version__
from spool.errors import EX_OK, EX_SOFTWARE, SpoolError

log = logging.getLogger("fnm_spool")


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit status (sysexits.h)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        # FastNetMon runs notify for every ban: skip docopt on that path.
        fast = _notify_arguments(argv)
        if fast is not None:
            return cmd_notify(*fast)

        from docopt import docopt

        args = docopt(__doc__, argv=argv, version=f"fnm_spool {__version__}")
        _setup_logging(args["--verbose"])
        return _dispatch(args)
    except SpoolError as error:
        print(f"fnm_spool: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `fnm_spool list | head`: the reader left, which is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_OK


def _dispatch(args: dict) -> int:
    config = args["--config"]
    if args["run"]:
        return cmd_run(config, args["--once"])
    if args["enqueue"]:
        return cmd_enqueue(config, args["FILE"])
    if args["notify"]:
        return cmd_notify(config, args["ARG"])
    if args["test"] or args["email_test"]:
        return cmd_test(config, args["--to"])
    if args["set"]:
        return cmd_set(config, args["KEY"], args["VALUE"])
    if args["delete"]:
        return cmd_delete(config, args["KEY"], args["VALUE"])
    if args["show"]:
        return cmd_show(config, args["KEY"])
    if args["status"]:
        return cmd_status(config)
    if args["list"]:
        return cmd_list(config, args["STATE"])
    if args["render"]:
        return cmd_render(config, args["EVENT"])
    if args["replay"]:
        return cmd_replay(config, None if args["--all"] else args["ID"])
    if args["check"]:
        return cmd_check(config)
    return EX_SOFTWARE


def _notify_arguments(argv: list[str]) -> tuple[str | None, list[str]] | None:
    """Return (config, ARGs) when argv is a notify call, else None."""
    config = None
    rest = list(argv)
    while rest and rest[0] != "notify":
        option = rest.pop(0)
        if option in ("-c", "--config") and rest:
            config = rest.pop(0)
        elif option.startswith("--config="):
            config = option.split("=", 1)[1]
        elif option.startswith("-c") and len(option) > 2:
            config = option[2:]
        else:
            return None
    if not rest:
        return None
    return config, rest[1:]


def _setup_logging(verbose: bool, log_file: str = "") -> None:
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s fnm_spool[%(process)d] %(levelname)s %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _load(config: str | None, required: bool = False):
    from spool import settings

    path, explicit = settings.config_path(config)
    return path, settings.load(path, required=required or explicit)


# Commands


def cmd_run(config: str | None, once: bool) -> int:
    """Process the spool: one pass for cron, or the daemon."""
    from spool.processor import Processor

    _, current = _load(config)
    if current.log_file:
        _setup_logging(logging.getLogger().level == logging.DEBUG, current.log_file)
    # The processor writes msmtp.conf from the settings, now and on SIGHUP.
    processor = Processor(current)
    if once:
        log.info("fnm_spool %s run --once, spool %s", __version__, current.spool_dir)

        def stop(number, frame):
            log.info(
                "%s: stopping after the current message", signal.Signals(number).name
            )
            processor.stop_requested = True

        signal.signal(signal.SIGTERM, stop)
        processor.start()
        processor.run_once()
        return EX_OK

    from spool.daemon import Daemon

    def reload():
        return _load(config)[1]

    Daemon(processor, reload).run()
    return EX_OK


def cmd_enqueue(config: str | None, files: list[str]) -> int:
    """Validate JSON events and enqueue each atomically."""
    from spool.events import parse_event
    from spool.spooldir import Spool

    _, current = _load(config)
    spool = Spool(current.spool_dir)
    sources = files or ["-"]
    blobs = []
    for source in sources:
        raw = _read_input(source, current.max_event_bytes)
        parse_event(raw, source)
        blobs.append((source, raw))
    for source, raw in blobs:
        event_id = spool.enqueue(raw)
        print(f"{source}: enqueued as {event_id}")
    return EX_OK


def _read_input(source: str, max_bytes: int) -> bytes:
    from spool.errors import EventError, UsageError

    try:
        if source == "-":
            raw = sys.stdin.buffer.read(max_bytes + 1)
        else:
            with open(source, "rb") as stream:
                raw = stream.read(max_bytes + 1)
    except OSError as error:
        raise UsageError(f"cannot read {source}: {error.strerror}") from None
    if len(raw) > max_bytes:
        raise EventError(f"{source}: larger than max_event_bytes ({max_bytes})", source)
    return raw


def cmd_notify(config: str | None, arguments: list[str]) -> int:
    """Turn one FastNetMon notify call into an event and enqueue it."""
    from spool import notify, settings

    path, explicit = settings.config_path(config)
    try:
        current = settings.load(path, required=explicit)
    except SpoolError as error:
        # FastNetMon ignores the exit status: a broken settings file must
        # not drop the alert, so it is enqueued with what can be read.
        current = settings.load_for_notify(path)
        print(
            f"fnm_spool notify: {error}; enqueueing into {current.spool_dir} "
            "anyway, fix the settings file for delivery",
            file=sys.stderr,
        )
    return notify.main(arguments, sys.stdin, current)


def cmd_test(config: str | None, addresses: list[str]) -> int:
    """Send a test e-mail through the same msmtp path as alerts."""
    from spool import msmtpconf, transport
    from spool.errors import EX_UNAVAILABLE, UsageError
    from spool.render import Renderer

    _, current = _load(config, required=True)
    recipients = list(addresses) or list(current.email_notifications_recipients)
    if not recipients:
        raise UsageError(
            "no recipients: add one with fnm_spool set main "
            "email_notifications_recipients ADDRESS, or pass --to=ADDRESS"
        )
    msmtpconf.write_msmtp_config(current)
    transport.check_available(current.msmtp_path, current.msmtp_config)
    message = Renderer(current).render_test(recipients)
    result = transport.send(
        message, current.msmtp_path, current.msmtp_config, current.msmtp_timeout
    )
    if result.outcome == "sent":
        print(f"test e-mail sent to {', '.join(recipients)} in {result.seconds:.2f} s")
        return EX_OK
    print(f"test e-mail failed: {transport.explain(result)}", file=sys.stderr)
    return result.exit_status or EX_UNAVAILABLE


def cmd_set(config: str | None, key: str, value: str) -> int:
    """Change one setting and regenerate msmtp.conf."""
    from spool import msmtpconf, settings

    path, _ = settings.config_path(config)
    current = settings.set_value(path, key, value)
    _regenerate(msmtpconf, current)
    for name, shown in settings.show_values(current, key.lower()):
        print(f"{name} = {shown}")
    return EX_OK


def cmd_delete(config: str | None, key: str, value: str | None) -> int:
    """Reset a setting, or remove one recipient, and regenerate msmtp.conf."""
    from spool import msmtpconf, settings

    path, _ = settings.config_path(config)
    current = settings.delete_value(path, key, value)
    _regenerate(msmtpconf, current)
    for name, shown in settings.show_values(current, key.lower()):
        print(f"{name} = {shown}")
    return EX_OK


def _regenerate(msmtpconf, current) -> None:
    from spool.errors import ConfigError

    # Until a host is set the file would be useless, and writing it to the
    # default /etc path surprises someone still choosing msmtp_config.
    if not current.email_notifications_host:
        return
    try:
        msmtpconf.write_msmtp_config(current)
    except ConfigError as error:
        print(
            f"fnm_spool: setting saved, but msmtp_config was not written: {error}; "
            "fnm_spool run writes it before sending",
            file=sys.stderr,
        )


def cmd_show(config: str | None, key: str | None) -> int:
    """Print the settings, or one, with the password masked."""
    from spool import settings

    _, current = _load(config)
    for name, shown in settings.show_values(current, key):
        print(f"{name} = {shown}")
    return EX_OK


def cmd_status(config: str | None) -> int:
    """Print events and the oldest age per spool directory."""
    import time

    from spool import operations
    from spool.spooldir import Spool

    _, current = _load(config)
    rows = operations.status(Spool(current.spool_dir), time.time())
    print(operations.format_status(rows))
    return EX_OK


def cmd_list(config: str | None, state_name: str | None) -> int:
    """Print one line per event."""
    from spool import operations
    from spool.errors import UsageError
    from spool.spooldir import Spool, State

    _, current = _load(config)
    state = None
    if state_name:
        try:
            state = State(state_name)
        except ValueError:
            names = ", ".join(s.value for s in State if s is not State.TMP)
            raise UsageError(
                f"unknown state {state_name!r}; use one of {names}"
            ) from None
    text = operations.format_list(
        operations.list_events(Spool(current.spool_dir), state)
    )
    if text:
        print(text)
    return EX_OK


def cmd_render(config: str | None, event: str) -> int:
    """Print the exact bytes msmtp would get for one event."""
    from spool import operations
    from spool.spooldir import Spool

    _, current = _load(config)
    message = operations.render_event(current, Spool(current.spool_dir), event)
    sys.stdout.buffer.write(message)
    return EX_OK


def cmd_replay(config: str | None, ids: list[str] | None) -> int:
    """Move failed events back to incoming/."""
    from spool import operations
    from spool.spooldir import Spool

    _, current = _load(config)
    replayed = operations.replay(Spool(current.spool_dir), ids)
    for event_id in replayed:
        print(f"replayed {event_id}")
    if not replayed:
        print("no failed events to replay")
    return EX_OK


def cmd_check(config: str | None) -> int:
    """Validate settings, msmtp, permissions and AppArmor; print the findings."""
    from spool import check, settings

    path, explicit = settings.config_path(config)
    checks = check.run_checks(Path(path), explicit)
    print(check.format_checks(checks))
    return check.exit_status(checks)


if __name__ == "__main__":
    sys.exit(main())
