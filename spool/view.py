"""Collect what the built-in templates show of one event: :func:`event_view`.

The view names the target, picks the attack_details figures of each
direction, and flattens the packet dump, the flows and the Flow Spec rules
into single-line strings. :mod:`spool.render` passes it to the templates
as ``v``, and builds a digest's subject and its list of largest events from
these views.
"""

import collections
import datetime as dt

from .filters import _is_number, display, format_flow_spec_rule, format_time

_HEADLINE_KEYS = frozenset(
    (
        "attack_type attack_direction attack_protocol protocol_version "
        "attack_severity attack_detection_threshold attack_detection_source "
        "attack_detection_threshold_direction host_group parent_host_group "
        "host_network initial_attack_power peak_attack_power"
    ).split()
)
# Event keys that a section of the body shows; others go to "Other fields".
_SHOWN_EVENT_KEYS = frozenset(
    (
        "ip action alert_scope hostgroup_name parent_hostgroup_name "
        "hostgroup_networks attack_details packet_dump packet_dump_detailed "
        "flow_spec_rules flows unparsed_lines report_text"
    ).split()
)
# Levels of nesting that _lines() flattens; deeper values print as JSON.
_MAX_LINES_DEPTH = 32
# Rows of the traffic table: label and key stem, {} standing for the direction.
_TRAFFIC_ROWS = (
    ("total", "total_{}"),
    ("average", "average_{}"),
    ("fragments", "{}_ip_fragmented"),
    ("tcp", "{}_tcp"),
    ("tcp syn", "{}_syn_tcp"),
    ("udp", "{}_udp"),
    ("icmp", "{}_icmp"),
)
_DIGEST_LABELS = {
    "ban": ("ban", "bans"),
    "unban": ("unban", "unbans"),
    "partial_block": ("partial block", "partial blocks"),
    "partial_unblock": ("partial unblock", "partial unblocks"),
    "attack_details": ("attack details", "attack details"),
    "attack_status": ("attack status", "attack statuses"),
}


def event_view(event: dict, queued_at: dt.datetime, zone: dt.tzinfo) -> dict:
    """Collect what the built-in templates show of one event.

    Counters keep their JSON values, numbers or not. ``pps`` and ``bits``
    are for the attack's direction, ``*_in`` and ``*_out`` for each
    direction, and bits are bits per second. Lists contain single-line
    strings, one per line of output. ``time`` is ``queued_at`` in ``zone``.
    """
    details = _attack_details(event)
    direction = (
        details.get("attack_direction")
        or details.get("attack_detection_threshold_direction")
        or "incoming"
    )
    if direction not in ("incoming", "outgoing"):
        direction_key = "incoming"
    else:
        direction_key = direction
    names = _target_names(event)
    view = {
        "action": event.get("action"),
        "scope": event.get("alert_scope", "host"),
        "host": names["ip"],
        "target": names["target"],
        "hostgroup": details.get("host_group") or event.get("hostgroup_name"),
        "parent_hostgroup": (
            details.get("parent_host_group") or event.get("parent_hostgroup_name")
        ),
        "network": _joined(
            details.get("host_network") or event.get("hostgroup_networks")
        ),
        "direction": direction,
        "attack_type": details.get("attack_type"),
        "protocol": details.get("attack_protocol"),
        "protocol_version": details.get("protocol_version"),
        "severity": details.get("attack_severity"),
        "threshold": details.get("attack_detection_threshold"),
        "threshold_direction": details.get("attack_detection_threshold_direction"),
        "detection_source": details.get("attack_detection_source"),
        "initial_power": details.get("initial_attack_power"),
        "peak_power": details.get("peak_attack_power"),
        "pps": details.get(f"total_{direction_key}_pps"),
        "bits": _bits(details, f"total_{direction_key}"),
        "pps_in": details.get("total_incoming_pps"),
        "pps_out": details.get("total_outgoing_pps"),
        "bits_in": _bits(details, "total_incoming"),
        "bits_out": _bits(details, "total_outgoing"),
        "flows_in": details.get("total_incoming_flows"),
        "flows_out": details.get("total_outgoing_flows"),
        "average_flows_in": details.get("average_incoming_flows"),
        "average_flows_out": details.get("average_outgoing_flows"),
        "time": _aware(queued_at).astimezone(zone),
    }
    view["traffic"], traffic_keys = _traffic_rows(details)
    view["other_fields"] = [
        (key, value)
        for key, value in list(details.items()) + list(event.items())
        if key not in traffic_keys
        and key not in _HEADLINE_KEYS
        and key not in _SHOWN_EVENT_KEYS
        and value not in ("", None, [], {})
    ]
    view["packet_dump"] = _lines(event.get("packet_dump"))
    view["flows"] = _flow_lines(event.get("flows"))
    view["flow_spec"] = [
        format_flow_spec_rule(rule) for rule in _as_list(event.get("flow_spec_rules"))
    ]
    view["unparsed_lines"] = _lines(event.get("unparsed_lines"))
    view["report_text"] = _lines(event.get("report_text"))
    return view


def _target_names(event: dict) -> dict:
    """Return ``ip``, ``target``, ``action`` and ``details`` for templates.

    A hostgroup-scope event has no ``ip``, so its hostgroup name (or its
    networks) is used instead and subjects written as ``{{ ip }}`` still
    name what was hit.
    """
    scope = event.get("alert_scope") or "host"
    ip = event.get("ip")
    if scope == "hostgroup" and not ip:
        name = event.get("hostgroup_name") or "(unnamed)"
    elif not ip:
        name = event.get("hostgroup_name") or event.get("hostgroup_networks")
        name = name or "(unknown)"
    else:
        name = ip
    return {
        "ip": _joined(name),
        "target": f"{scope if scope in ('hostgroup', 'network') else 'host'} {name}",
        "action": event.get("action"),
        "details": _attack_details(event),
    }


def _digest_subject(views: list[dict]) -> str:
    counts = collections.Counter(view["action"] for view in views)
    parts = []
    for action, (singular, plural) in _DIGEST_LABELS.items():
        if counts.get(action):
            count = counts.pop(action)
            parts.append(f"{count} {singular if count == 1 else plural}")
    if counts:
        parts.append(f"{sum(counts.values())} other")

    total = len(views)
    subject = f"FastNetMon: {total} event{'' if total == 1 else 's'}"
    if parts:
        subject += f" ({', '.join(parts)})"
    if views:
        first = format_time(min(view["time"] for view in views), "%H:%M")
        last = format_time(max(view["time"] for view in views), "%H:%M")
        subject += f" {first}" if first == last else f" {first}-{last}"
    return subject


def _traffic_rows(details: dict) -> tuple[list[dict], set[str]]:
    """Return the rows of the traffic table and the keys that they show."""
    # The flows lines of the templates show these four.
    traffic_keys = {
        f"{stem}_{direction}_flows"
        for stem in ("total", "average")
        for direction in ("incoming", "outgoing")
    }
    rows = []
    for label, stem in _TRAFFIC_ROWS:
        row = {"label": label}
        for direction, suffix in (("incoming", "in"), ("outgoing", "out")):
            key = stem.format(direction)
            row[f"pps_{suffix}"] = details.get(f"{key}_pps")
            row[f"bits_{suffix}"] = _bits(details, key)
            traffic_keys.update((f"{key}_pps", f"{key}_traffic", f"{key}_traffic_bits"))
        if any(value is not None for value in list(row.values())[1:]):
            rows.append(row)
    return rows, traffic_keys


def _bits(details: dict, stem: str) -> object:
    """Return bits per second from ``STEM_traffic_bits`` or ``STEM_traffic``."""
    bits = details.get(f"{stem}_traffic_bits")
    octets = details.get(f"{stem}_traffic")
    if _is_number(bits):
        return bits
    if _is_number(octets):
        return octets * 8
    return bits if bits is not None else octets


def _flow_lines(flows: object) -> list[str]:
    """Format Community's flows: per direction, a line of counts, then the flows.

    ``connections`` repeats ``lines`` field by field, so it is shown only
    when ``lines`` is missing.
    """
    if not isinstance(flows, dict):
        return _lines(flows)
    lines = []
    for direction, section in flows.items():
        if not isinstance(section, dict):
            lines += _lines({direction: section})
            continue
        section = dict(section)
        flow_lines = section.pop("lines", None)
        if flow_lines:
            section.pop("connections", None)
        nested = {k: v for k, v in section.items() if isinstance(v, list | dict)}
        counts = [
            f"{key} {display(value)}"
            for key, value in section.items()
            if key not in nested
        ]
        lines.append(f"{display(direction)}: {', '.join(counts)}".rstrip())
        lines += _lines(flow_lines)
        lines += _lines(nested, "  ")
    return lines


def _lines(value: object, indent: str = "", depth: int = 0) -> list[str]:
    """Flatten text, lists and objects into single-line strings.

    A value nested deeper than ``_MAX_LINES_DEPTH`` levels is shown as one
    line of JSON, because recursing as deep as valid JSON may nest would
    exceed Python's recursion limit and lose the message.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [indent + line for line in value.splitlines()]
    if depth >= _MAX_LINES_DEPTH:
        return [indent + display(value)]
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, list | dict):
                lines.append(f"{indent}{display(key)}:")
                lines += _lines(item, indent + "  ", depth + 1)
            else:
                lines.append(f"{indent}{display(key)}: {display(item)}")
        return lines
    if isinstance(value, list):
        return [line for item in value for line in _lines(item, indent, depth + 1)]
    return [indent + display(value)]


def _joined(value: object) -> object:
    """Join a list into one comma-separated string. Return other values as given."""
    if isinstance(value, list):
        return ", ".join(display(item) for item in value)
    return value


def _as_list(value: object) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _attack_details(event: dict) -> dict:
    details = event.get("attack_details")
    return details if isinstance(details, dict) else {}


def _pps_sort_key(view: dict) -> float:
    return view["pps"] if _is_number(view["pps"]) else -1.0


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
