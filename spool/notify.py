"""The ``fnm_spool notify`` command: one FastNetMon notify-script call to one event.

FastNetMon runs its ``notify_script_path`` in one of two forms:

* Community (1.2.4): ``IP DIRECTION PPS ACTION``. For ``ban`` and
  ``attack_details`` a plain-text report arrives on stdin, and FastNetMon
  closes the pipe once the report is written. For ``unban`` stdin is
  FastNetMon's own, which may be a pipe that never closes, so it is not read.
* Advanced: ``ACTION [IP]`` with a JSON event on stdin.

FastNetMon starts one process per call, so this module imports nothing heavy
(no Jinja2, no ``email`` package, no dateutil).
"""

import ipaddress
import json
import logging
import re
import sys
from pathlib import Path

from .errors import EX_CANTCREAT, EventError, SpoolError, UsageError
from .events import validate_event
from .report import parse_community_report

log = logging.getLogger(__name__)

DEFAULT_REPORT_LIMIT = 1024 * 1024
COMMUNITY_ACTIONS = ("ban", "attack_details", "unban")
# The names that get_direction_name() prints in FastNetMon 1.2.4.
DIRECTIONS = ("incoming", "outgoing", "internal", "other", "unknown")
COMMUNITY_SOURCE = "fastnetmon-community"
ADVANCED_SOURCE = "fastnetmon-advanced"
CALL_FORMS = (
    "expected FastNetMon Community's 'IP DIRECTION PPS ACTION' (ACTION: "
    "ban, attack_details or unban) or FastNetMon Advanced's 'ACTION [IP]' "
    "or no arguments, with a JSON event on stdin"
)

_SOURCE_NAME = "notify"
# Keys kept when an event must be cut to fit max_event_bytes.
_SUMMARY_KEYS = ("ip", "action", "alert_scope", "hostgroup_name", "source")
_READ_CHUNK = 64 * 1024
_ACTION_WORD = re.compile(r"^[a-z][a-z0-9_]*$")


def event_from_call(argv: list[str], stdin, limit: int = DEFAULT_REPORT_LIMIT) -> dict:
    """Build the event of one notify-script call and validate it.

    ``argv`` contains the arguments after the command name, in Community's
    ``IP DIRECTION PPS ACTION`` or Advanced's ``ACTION [IP]`` form, or
    none at all (Advanced's JSON-only call). ``stdin``
    is a binary stream (a text stream's ``buffer`` is used, and None reads
    as empty). It is read to EOF except for a Community ``unban``, where it
    is not touched. At most ``limit`` bytes are kept and the rest is read and
    discarded, so FastNetMon never blocks writing. A cut report sets
    ``report_truncated`` and ``report_bytes`` (the full size), and a failed
    read sets ``report_read_error``.

    Community events have ``ip``, ``action``, ``alert_scope`` ("host"),
    ``attack_details``, ``packet_dump``, ``flows``, ``unparsed_lines`` and
    ``source`` ("fastnetmon-community"). Advanced events are the JSON
    document, whose own fields win, with ``action`` and ``ip`` filled from
    ``argv`` where missing and ``source`` ("fastnetmon-advanced") if absent.
    When a report cannot be parsed, the event keeps the text in
    ``report_text`` and the reason in ``parse_error``.

    Raises :class:`UsageError` for arguments in neither form and
    :class:`EventError` when no valid event can be built.
    """
    argv = list(argv)
    if len(argv) == 4:
        ip, direction, pps, action = _check_community_call(argv)
        return _community_event(ip, direction, pps, action, stdin, limit)
    if not argv:
        # Advanced's hostgroup script and its newer per-host calls pass no
        # arguments: everything is in the JSON document.
        return _advanced_event(None, None, stdin, limit)
    if len(argv) in (1, 2):
        action, ip = _check_advanced_call(argv)
        return _advanced_event(action, ip, stdin, limit)
    raise _usage_error(argv, f"{len(argv)} arguments")


def _check_community_call(argv: list[str]) -> tuple[str, str, int, str]:
    ip, direction, pps, action = argv
    if action not in COMMUNITY_ACTIONS:
        raise _usage_error(argv, f"unknown action {action[:100]!r}")
    if not _is_ip_address(ip):
        raise _usage_error(argv, f"{ip[:100]!r} is not an IPv4 or IPv6 address")
    if direction not in DIRECTIONS:
        raise _usage_error(
            argv,
            f"unknown direction {direction[:100]!r} (expected one of "
            f"{', '.join(DIRECTIONS)})",
        )
    if not pps.isascii() or not pps.isdigit():
        raise _usage_error(argv, f"PPS {pps[:100]!r} is not a whole number")
    return ip, direction, int(pps), action


def _check_advanced_call(argv: list[str]) -> tuple[str, str | None]:
    action = argv[0]
    ip = argv[1] if len(argv) == 2 and argv[1] else None
    if not _ACTION_WORD.match(action):
        raise _usage_error(argv, f"{action[:100]!r} is not an action name")
    if ip is not None and not _is_ip_address(ip) and not _is_network(ip):
        raise _usage_error(argv, f"{ip[:100]!r} is not an IPv4 or IPv6 address")
    return action, ip


def _usage_error(argv: list[str], reason: str) -> UsageError:
    shown = " ".join(repr(argument[:100]) for argument in argv[:8])
    if len(argv) > 8:
        shown += " ..."
    return UsageError(f"invalid notify arguments [{shown}]: {reason}; {CALL_FORMS}")


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _community_event(
    ip: str, direction: str, pps: int, action: str, stdin, limit: int
) -> dict:
    event = {"ip": ip, "action": action, "alert_scope": "host"}
    if action == "unban":
        parsed = parse_community_report("")
    else:
        data = _read_to_eof(stdin, limit, event)
        parsed = _parse_report_safely(data.decode("utf-8", errors="replace"), event)

    details = parsed["attack_details"]
    details.setdefault("attack_direction", direction)
    # The PPS argument is the attack_power that the report prints as "Initial
    # attack power". An unban or a manual ban has no report to carry it.
    details.setdefault("initial_attack_power", pps)
    details.setdefault("protocol_version", f"IPv{ipaddress.ip_address(ip).version}")
    event.update(
        attack_details=details,
        packet_dump=parsed["packet_dump"],
        flows=parsed["flows"],
        unparsed_lines=parsed["unparsed_lines"],
        source=COMMUNITY_SOURCE,
    )
    return validate_event(event, _SOURCE_NAME)


def _parse_report_safely(text: str, event: dict) -> dict:
    try:
        return parse_community_report(text)
    except Exception as error:
        # A parser bug must not lose the alert: the report is mailed as text.
        log.exception(
            "parsing the report for %s failed, keeping it as text", event["ip"]
        )
        event["report_text"] = text
        event["parse_error"] = f"{type(error).__name__}: {error}"
        return parse_community_report("")


def _read_to_eof(stream, limit: int, event: dict) -> bytes:
    """Read ``stream`` to EOF and return its first ``limit`` bytes.

    Records ``report_truncated`` and ``report_bytes`` in ``event`` when
    bytes were discarded, and ``report_read_error`` when reading failed.
    """
    if stream is None:
        return b""
    stream = getattr(stream, "buffer", stream)
    kept = bytearray()
    total = 0
    try:
        while chunk := stream.read(_READ_CHUNK):
            if isinstance(chunk, str):
                chunk = chunk.encode("utf-8", errors="surrogateescape")
            total += len(chunk)
            kept += chunk[: max(0, limit - len(kept))]
    except OSError as error:
        log.warning(
            "reading the report from stdin failed after %d bytes: %s", total, error
        )
        event["report_read_error"] = str(error)

    if total > len(kept):
        log.warning("report of %d bytes cut to its first %d bytes", total, len(kept))
        event["report_truncated"] = True
        event["report_bytes"] = total
    return bytes(kept)


def _advanced_event(action: str | None, ip: str | None, stdin, limit: int) -> dict:
    notes: dict = {}
    data = _read_to_eof(stdin, limit, notes)
    try:
        if notes.get("report_truncated"):
            raise EventError(f"JSON event longer than {limit} bytes")
        document = _decode_json(data)
        _fill_from_arguments(document, action, ip)
        document.update(notes)
        return validate_event(document, _SOURCE_NAME)
    except EventError as error:
        return _fallback_event(action, ip, data, notes, error)


def _decode_json(data: bytes) -> dict:
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise EventError(f"JSON event is not UTF-8 (offset {error.start})") from None
    except json.JSONDecodeError as error:
        raise EventError(
            f"invalid JSON event at line {error.lineno} column {error.colno}: "
            f"{error.msg}"
        ) from None
    except RecursionError:
        raise EventError("JSON event nested too deeply") from None
    if not isinstance(document, dict):
        raise EventError(f"JSON event is a {type(document).__name__}, not an object")
    return document


def _fill_from_arguments(document: dict, action: str, ip: str | None) -> None:
    for key, value in (("action", action), ("ip", ip)):
        if value is None:
            continue
        if document.get(key) in (None, ""):
            document[key] = value
        elif document[key] != value:
            log.warning(
                "%s %r in the arguments differs from %r in the JSON event; "
                "using the JSON event's",
                key,
                value,
                document[key],
            )
    document.setdefault("source", ADVANCED_SOURCE)


def _fallback_event(
    action: str | None, ip: str | None, data: bytes, notes: dict, error: EventError
) -> dict:
    """Build an event from the arguments alone, keeping stdin as text.

    A call without arguments has nothing to build from, so its input is
    mailed as an event of action ``unreadable_notify_input`` with the
    generic template: the NOC still sees that FastNetMon reported something.
    """
    if action is None:
        event = {
            "action": "unreadable_notify_input",
            "alert_scope": "hostgroup",
            "hostgroup_name": "unknown",
        }
    else:
        event = {"ip": ip, "action": action, "alert_scope": "host"}
    if ip is None:
        event.pop("ip", None)
    event.update(
        source=ADVANCED_SOURCE,
        report_text=data.decode("utf-8", errors="replace"),
        parse_error=str(error),
        **notes,
    )
    try:
        validate_event(event, _SOURCE_NAME)
    except EventError:
        raise EventError(
            f"{error}; the arguments name no IP address, so no event can be built "
            "from them alone"
        ) from None
    log.warning(
        "%s; enqueueing the %s event for %s with stdin as text", error, action, ip
    )
    return event


def main(argv: list[str], stdin, settings) -> int:
    """Run ``fnm_spool notify ARG...``: build one event and enqueue it.

    ``settings`` supplies ``spool_dir`` and ``max_event_bytes``. A
    Community report is cut to a quarter of ``max_event_bytes`` and an
    Advanced JSON document to ``max_event_bytes``; an event still larger is
    reduced to its summary with the reason in ``event_reduced``. Arguments
    in neither form are still enqueued, as an ``unrecognised_notify_call``
    event that the generic template mails, and the status is then 64.
    Returns 0 once the event is enqueued, else the error's sysexits.h
    status (73 when the spool cannot be written) after printing one line to
    stderr.
    """
    # Imported here so that parsing alone does not load the spool code.
    from .spooldir import Spool

    # Flow lines are kept both as text and as fields, so the flow section of
    # 1.2.4's ban report takes about 3.1 times its size as JSON. A report cut
    # to a quarter of the limit therefore fits in all but odd cases.
    limit = settings.max_event_bytes
    if len(argv) == 4:
        limit = max(1, settings.max_event_bytes // 4)
    status = 0
    try:
        try:
            event = event_from_call(argv, stdin, limit=limit)
        except UsageError as error:
            print(f"fnm_spool notify: {error}; enqueued as is", file=sys.stderr)
            event = _unrecognised_call(argv, str(error))
            status = error.exit_status
        raw = _encode_event(event, settings.max_event_bytes)
        event_id = Spool(Path(settings.spool_dir)).enqueue(raw)
    except SpoolError as error:
        print(f"fnm_spool notify: {error}", file=sys.stderr)
        return error.exit_status
    except OSError as error:
        print(
            f"fnm_spool notify: cannot enqueue the event in {settings.spool_dir}: "
            f"{error}",
            file=sys.stderr,
        )
        return EX_CANTCREAT

    target = event.get("ip") or event.get("hostgroup_name") or "no host"
    log.info("enqueued %s event %s for %s", event["action"], event_id, target)
    if event.get("unparsed_lines"):
        log.warning(
            "event %s: %d report lines not recognised, kept in unparsed_lines",
            event_id,
            len(event["unparsed_lines"]),
        )
    return status


def _unrecognised_call(argv: list[str], reason: str) -> dict:
    """Build the event of a call in neither form, without reading stdin.

    Standard input is left alone because the call may be an unban, whose
    stdin is FastNetMon's own and may never close.
    """
    return {
        "action": "unrecognised_notify_call",
        "alert_scope": "hostgroup",
        "hostgroup_name": "unknown",
        "arguments": [argument[:200] for argument in argv[:16]],
        "parse_error": reason,
        "source": "fastnetmon",
    }


def _encode_event(event: dict, max_bytes: int) -> bytes:
    """Encode ``event`` as JSON of at most ``max_bytes`` where possible.

    The processor rejects larger events, so an event over the limit (a cut
    report full of escaped control characters, say) is reduced to its
    summary: scope, host, action and short ``attack_details`` values.
    """
    raw = json.dumps(event).encode("ascii")
    if len(raw) <= max_bytes:
        return raw

    log.warning(
        "event for %s is %d bytes, over max_event_bytes (%d); keeping its summary",
        event.get("ip"),
        len(raw),
        max_bytes,
    )
    summary = {key: event[key] for key in _SUMMARY_KEYS if key in event}
    details = event.get("attack_details") or {}
    summary["attack_details"] = {
        key: value
        for key, value in details.items()
        if isinstance(value, int | float)
        or (isinstance(value, str) and len(value) < 200)
    }
    summary["event_reduced"] = (
        f"the event was {len(raw)} bytes, over max_event_bytes ({max_bytes}), "
        "so only its summary was kept"
    )
    raw = json.dumps(summary).encode("ascii")
    if len(raw) > max_bytes:
        summary["attack_details"] = {}
        raw = json.dumps(summary).encode("ascii")
    return raw
