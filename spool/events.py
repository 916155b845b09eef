"""FastNetMon events: identifiers, parsing and validation.

An event is a JSON object in the shape of FastNetMon's JSON callbacks. This
module imports nothing heavy because ``fnm_spool notify`` runs it for every
ban FastNetMon reports.
"""

import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import secrets

from .errors import EventError

KNOWN_ACTIONS = (
    "ban",
    "unban",
    "attack_details",
    "attack_status",
    "partial_block",
    "partial_unblock",
)
SCOPES = ("host", "hostgroup", "network")

# Spool names that fnm_spool wrote itself: UTC time to the microsecond, then
# the writer's PID and a random part, so that names sort by enqueue time.
EVENT_ID_PATTERN = re.compile(r"^(\d{8}T\d{6}\.\d{6})Z-\d+-[0-9a-f]{8}$")

# A \uD800-\uDFFF escape may be half of a pair or a lone surrogate, which
# no encoder accepts when the message is built.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")

# Counters whose value must be a number; other keys may hold anything.
_COUNTER_SUFFIXES = ("_traffic", "_traffic_bits", "_pps", "_flows", "_power")


def new_event_id(now: dt.datetime | None = None) -> str:
    """Return a unique spool name for an event enqueued at ``now`` (UTC)."""
    now = now or dt.datetime.now(dt.UTC)
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S.%f")
    return f"{stamp}Z-{os.getpid()}-{secrets.token_hex(4)}"


def is_event_id(name: str) -> bool:
    """Tell whether ``name`` is a spool name made by :func:`new_event_id`."""
    return EVENT_ID_PATTERN.match(name) is not None


def event_time(event_id: str) -> dt.datetime | None:
    """Return the enqueue time encoded in ``event_id``, or None if it has none."""
    match = EVENT_ID_PATTERN.match(event_id)
    if match is None:
        return None
    stamp = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S.%f")
    return stamp.replace(tzinfo=dt.UTC)


def message_id(event_id: str, raw: bytes, domain: str) -> str:
    """Return the Message-ID of the message for one event.

    It depends only on the spool name and the event's bytes, so a message
    resent after a crash carries the same Message-ID as the first copy.
    """
    digest = hashlib.sha256(event_id.encode() + b"\0" + raw).hexdigest()[:16]
    return f"<{event_id}.{digest}@{domain}>"


def parse_event(raw: bytes, source: str = "<stdin>") -> dict:
    """Decode and validate one JSON event.

    ``source`` names the file or stream in error messages. Raises
    :class:`EventError` with a message that names the problem.
    """
    if not raw.strip():
        raise EventError(f"{source}: empty file, expected a JSON object", source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise EventError(
            f"{source}: not UTF-8 text (invalid byte at offset {error.start}); "
            "events must be JSON encoded as UTF-8",
            source,
        ) from None
    try:
        # NaN and Infinity are not JSON; Python accepts them, so they are kept
        # as the strings they were, and shown as given like any odd counter.
        document = json.loads(text, parse_constant=str)
        if _ESCAPED_SURROGATE.search(text):
            document = _replace_lone_surrogates(document)
    except RecursionError:
        raise EventError(f"{source}: JSON nested too deeply", source) from None
    except json.JSONDecodeError as error:
        raise EventError(
            f"{source}: invalid JSON at line {error.lineno} column {error.colno}: "
            f"{error.msg}",
            source,
        ) from None
    except ValueError as error:
        # Python refuses to convert integers of more than
        # sys.get_int_max_str_digits() digits (4300 by default).
        reason = str(error).split(";")[0]
        raise EventError(f"{source}: invalid JSON: {reason}", source) from None
    return validate_event(document, source)


def _replace_lone_surrogates(value: object) -> object:
    """Return ``value`` with each lone surrogate replaced by U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_replace_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            _replace_lone_surrogates(key): _replace_lone_surrogates(item)
            for key, item in value.items()
        }
    return value


def validate_event(document: object, source: str = "<stdin>") -> dict:
    """Check the shape of a decoded event and return it.

    Raises :class:`EventError` for a document that cannot be mailed: not an
    object, no action, a host-scope event without a valid IP. Unknown actions
    and counters of the wrong type are accepted, because an alert mailer
    mails what it can rather than lose an alert.
    """
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise EventError(
            f"{source}: expected a JSON object, got a JSON {_json_kind(kind)}", source
        )

    action = document.get("action")
    if not isinstance(action, str) or not action.strip():
        raise EventError(
            f"{source}: missing or invalid 'action' ({action!r}); "
            f"expected one of {', '.join(KNOWN_ACTIONS)}",
            source,
        )

    # FastNetMon Advanced may send an empty scope for host alerts, and newer
    # releases add scopes; an unknown scope is mailed rather than rejected.
    scope = document.get("alert_scope") or "host"
    if not isinstance(scope, str):
        raise EventError(
            f"{source}: alert_scope must be a string, got {scope!r}; expected "
            f"one of {', '.join(SCOPES)}",
            source,
        )

    ip = document.get("ip")
    if scope == "host" and (ip is None or ip == ""):
        raise EventError(f"{source}: host-scope event without 'ip'", source)
    if ip not in (None, ""):
        _check_ip(ip, scope, source)

    for key in ("attack_details",):
        if key in document and not isinstance(document[key], dict):
            raise EventError(f"{source}: '{key}' must be a JSON object", source)
    for key in ("packet_dump", "packet_dump_detailed", "flow_spec_rules"):
        if key in document and not isinstance(document[key], list):
            raise EventError(f"{source}: '{key}' must be a JSON array", source)
    return document


def wrong_counters(event: dict) -> list[str]:
    """List the ``attack_details`` counters whose value is not a number."""
    details = event.get("attack_details") or {}
    return sorted(
        key
        for key, value in details.items()
        if key.endswith(_COUNTER_SUFFIXES)
        and (isinstance(value, bool) or not isinstance(value, int | float))
    )


def attack_key(event: dict) -> str:
    """Return the key that ties the events of one attack together.

    FastNetMon Advanced sends an ``attack_uuid``; Community does not, so its
    events are tied by scope and host.
    """
    details = event.get("attack_details") or {}
    uuid = details.get("attack_uuid")
    if isinstance(uuid, str) and uuid:
        return "uuid-" + re.sub(r"[^0-9A-Za-z-]", "_", uuid)[:64]
    scope = event.get("alert_scope", "host")
    target = event.get("ip") or event.get("hostgroup_name") or "unknown"
    return f"{scope}-" + re.sub(r"[^0-9A-Za-z.-]", "_", str(target))[:64]


def _check_ip(ip: object, scope: str, source: str) -> None:
    if not isinstance(ip, str):
        raise EventError(f"{source}: 'ip' must be a string, got {ip!r}", source)
    try:
        # ipaddress accepts any text after '%' as an IPv6 scope id, line
        # breaks included, which would reach the subject and the log.
        if not (ip.isascii() and ip.isprintable()) or " " in ip:
            raise ValueError(ip)
        if scope == "network" or "/" in ip:
            ipaddress.ip_network(ip, strict=False)
        else:
            ipaddress.ip_address(ip)
    except ValueError:
        raise EventError(
            f"{source}: 'ip' is not an IPv4 or IPv6 address: {ip[:100]!r}", source
        ) from None


def _json_kind(python_type: str) -> str:
    return {
        "list": "array",
        "str": "string",
        "int": "number",
        "float": "number",
        "bool": "boolean",
        "NoneType": "null",
    }.get(python_type, python_type)
