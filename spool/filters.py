"""Format event values for message bodies: the templates' Jinja2 filters.

:class:`spool.render.Renderer` registers these functions as the filters
``human``, ``number``, ``mbits``, ``duration``, ``timestamp``,
``traffic_table``, ``digest_table`` and ``flow_spec_rule``, and
:func:`display` as the finalize function that prints every ``{{ }}``.
"""

import datetime as dt
import json
import math
import re

import jinja2
import markupsafe

_BODY_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_FLOW_SPEC_MATCHES = (
    ("protocols", ""),
    ("source_ports", "sport"),
    ("destination_ports", "dport"),
    ("packet_lengths", "len"),
    ("fragmentation_flags", "frag"),
    ("tcp_flags", "flags"),
)


def display(value: object) -> str:
    """Format a value for a message body the way JSON spells it.

    Control characters print as ``\\xNN`` (``\\uNNNN`` above 0xff) so that
    data can neither add lines nor send terminal escapes. Tabs stay, and so
    does text marked safe: it is template output, not data.
    """
    if isinstance(value, markupsafe.Markup):
        return value
    return _BODY_UNSAFE.sub(_escape_character, _json_text(value))


def human(value: object, unit: str) -> str:
    """Format a rate with an SI prefix: ``human(1200000, "pps")`` is "1.2 Mpps".

    Values that are not numbers are returned as given; None is "-".
    """
    if value is None or isinstance(value, jinja2.Undefined):
        return "-"
    if not _is_number(value):
        return display(value)
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{_decimal(value / factor)} {prefix}{unit}"
    return f"{_decimal(value)} {unit}"


def number(value: object, unit: str = "") -> str:
    """Format a number in full: ``number(412345, "pps")`` is "412,345 pps".

    Values that are not numbers are returned as given; None is "-".
    """
    if value is None or isinstance(value, jinja2.Undefined):
        return "-"
    if not _is_number(value):
        return display(value)
    return f"{_decimal(value, grouped=True)} {unit}".rstrip()


def mbits(bits: object) -> str:
    """Format bits per second in Mbit/s: ``mbits(192980000)`` is "192.98 Mbit/s"."""
    if _is_number(bits):
        bits = bits / 1e6
    return number(bits, "Mbit/s")


def format_duration(seconds: object) -> str:
    """Format seconds in its two largest units, such as "3 min 12 s"."""
    if not _is_number(seconds) or seconds < 0:
        return display(seconds)
    remainder = round(seconds)
    parts = []
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        count, remainder = divmod(remainder, size)
        if count or parts:
            parts.append((count, unit))
    # "2 h 0 min" is shown as "2 h".
    parts = [part for part in parts[:2] if part[0]]
    return " ".join(f"{count} {unit}" for count, unit in parts) or "0 s"


def format_time(moment: object, pattern: str = "%Y-%m-%d %H:%M:%S %Z") -> str:
    """Format a datetime with a strftime pattern; other values as given."""
    if isinstance(moment, dt.datetime):
        return moment.strftime(pattern)
    return display(moment)


def format_flow_spec_rule(rule: object) -> str:
    """Format one BGP Flow Spec rule on one line.

    Example: ``203.0.113.10/32 udp sport 123 len 468 -> discard``. A source
    prefix comes first as ``SOURCE > DESTINATION``. Fields not known here
    follow as ``name value``, so none is lost.
    """
    if not isinstance(rule, dict):
        return display(rule)
    rule = dict(rule)
    source = rule.pop("source_prefix", None)
    destination = rule.pop("destination_prefix", None) or "any"
    parts = [display(source), ">", display(destination)] if source else []
    parts = parts or [display(destination)]

    for key, label in _FLOW_SPEC_MATCHES:
        if key in rule:
            values = rule.pop(key)
            if isinstance(values, list):
                text = ",".join(display(value) for value in values)
            else:
                text = display(values)
            parts.append(f"{label} {text}".strip())
    action_type = rule.pop("action_type", None)
    action = rule.pop("action", None)
    parts += [f"{key} {display(value)}" for key, value in rule.items()]

    parts += ["->", display(action_type) if action_type else "(no action)"]
    if isinstance(action, dict):
        for key, value in action.items():
            parts.append(display(value) if key == "rate" else f"{key} {display(value)}")
    elif action not in (None, "", {}):
        parts.append(display(action))
    return " ".join(parts)


def traffic_table(rows: list[dict]) -> list[str]:
    """Lay out the traffic rows of :func:`event_view` as fixed-width lines."""
    cells = [["", "in pps", "in bit/s", "out pps", "out bit/s"]]
    for row in rows:
        cells.append(
            [
                row["label"],
                human(row["pps_in"], "pps"),
                human(row["bits_in"], "bit/s"),
                human(row["pps_out"], "pps"),
                human(row["bits_out"], "bit/s"),
            ]
        )
    return _columns(cells, "lrrrr")


def digest_table(views: list[dict]) -> list[str]:
    """Lay out one row per event: time, host, action, direction, rates, type."""
    cells = [["time", "host", "action", "direction", "pps", "Mbit/s", "attack"]]
    for view in views:
        bits = view["bits"]
        cells.append(
            [
                format_time(view["time"], "%H:%M:%S"),
                display(view["host"]),
                display(view["action"]),
                display(view["direction"]),
                number(view["pps"]),
                number(bits / 1e6 if _is_number(bits) else bits),
                display(view["attack_type"]) or "-",
            ]
        )
    return _columns(cells, "lllllrl")


def _columns(rows: list[list[str]], align: str) -> list[str]:
    widths = [max(len(row[index]) for row in rows) for index in range(len(align))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if side == "l" else cell.rjust(width)
            for cell, width, side in zip(row, widths, align, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _is_number(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        # An integer beyond the float range, which JSON allows, is shown as
        # given rather than formatted.
        return False


def _decimal(value: float, grouped: bool = False) -> str:
    """Format with at most two decimals and no trailing zeros."""
    text = f"{value:,.2f}" if grouped else f"{value:.2f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _json_text(value: object) -> str:
    """Spell None, booleans, lists and objects as JSON; other values with str()."""
    if isinstance(value, jinja2.Undefined) or value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        try:
            return json.dumps(value, ensure_ascii=False, default=str)
        except RecursionError:
            # An event may nest almost as deep as the recursion limit, which
            # leaves json.dumps() too little room when a template calls it.
            return "(nested too deeply to show; see the event file)"
    return str(value)


def _escape_character(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
