"""Parse the plain-text attack report of FastNetMon Community 1.2.4.

FastNetMon Community writes the report to the notify script's stdin for
``ban`` and ``attack_details``. It has header lines such as
``Attack type: udp_flood``, a packet dump, and the connection-tracking flows
of each direction. :func:`parse_community_report` maps them to FastNetMon
Advanced's JSON names. ``fnm_spool notify`` runs once per event, so this
module imports only ``re``.
"""

import re

# Report lines whose value is text, and the attack_details key of each.
_TEXT_LABELS = {
    "ip": "reported_ip",
    "attack type": "attack_type",
    "attack direction": "attack_direction",
    "attack protocol": "attack_protocol",
}
_HEADER = re.compile(r"^([A-Za-z][A-Za-z ]*): ?(.*)$")
_PACKET_SIZE_LABEL = re.compile(r"^average packet size for (\w+) traffic$")
_QUANTITY = re.compile(
    r"^([-+]?\d+(?:\.\d+)?)(?: (mbps|packets per second|flows per second|bytes))?$"
)
_NUMBER = re.compile(r"^[-+]?\d+(?:\.\d+)?$")
_FLOW_COUNT = re.compile(r"^(TCP|UDP) flows: (.*)$")
_FLOW = re.compile(r"^(\S+) ([<>]) (\S+) (\S+) bytes (\S+) packets$")
_PACKET = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ > \S+ protocol: ")
# Lines that FastNetMon 1.2.4 prints verbatim.
_FLOWS_CROPPED = "Flows have cropped due to very long list."
_MANUAL_BAN = "manually triggered attack"


def parse_community_report(text: str) -> dict:
    """Parse the plain-text report that FastNetMon Community 1.2.4 writes to stdin.

    Returns ``{"attack_details": {...}, "packet_dump": [...], "flows": {...},
    "unparsed_lines": [...]}``. Header lines become ``attack_details`` keys in
    FastNetMon Advanced's JSON naming: ``*_traffic`` in bytes/s with
    ``*_traffic_bits`` in bits/s, ``*_pps``, ``*_flows``, ``*_attack_power``
    in packets/s, ``average_incoming_packet_size`` in bytes, and ``IP:`` as
    ``reported_ip``. ``flows`` maps ``incoming``/``outgoing`` to
    ``{"tcp_flows", "udp_flows", "lines", "connections", "cropped"}``.
    Lines that match nothing go to ``unparsed_lines`` and values that are not
    numbers stay strings, so no input raises.

    NOTE: FastNetMon prints traffic as whole megabits per second rounded
    down, so the byte and bit rates here are lower bounds: "6 mbps" means at
    least 6,000,000 and less than 7,000,000 bits/s.
    """
    parser = _ReportParser()
    for line in text.splitlines():
        parser.feed(line.rstrip())
    return {
        "attack_details": parser.attack_details,
        "packet_dump": parser.packet_dump,
        "flows": parser.flows,
        "unparsed_lines": parser.unparsed_lines,
    }


class _ReportParser:
    """State of one report: the connection-tracking section being read."""

    def __init__(self) -> None:
        self.attack_details: dict = {}
        self.packet_dump: list[str] = []
        self.flows: dict[str, dict] = {}
        self.unparsed_lines: list[str] = []
        self._direction: str | None = None
        self._protocol: str | None = None

    def feed(self, line: str) -> None:
        if not line:
            return
        if line in ("Incoming", "Outgoing"):
            self._direction = line.lower()
            self._protocol = None
            self._section(self._direction)
        elif _PACKET.match(line):
            self.packet_dump.append(line)
        elif line == _MANUAL_BAN:
            # 1.2.4 appends this line to the report of a ban requested through
            # its API. Advanced names that detection source "manual".
            self.attack_details["attack_detection_source"] = "manual"
        elif self._feed_flow_line(line):
            pass
        elif header := _HEADER.match(line):
            _add_header(self.attack_details, header.group(1), header.group(2))
        else:
            self.unparsed_lines.append(line)

    def _feed_flow_line(self, line: str) -> bool:
        count = _FLOW_COUNT.match(line)
        if count and self._direction:
            self._protocol = count.group(1).lower()
            section = self._section(self._direction)
            section[f"{self._protocol}_flows"] = _number_or_text(count.group(2))
            return True

        if flow := _FLOW.match(line):
            # Without a section heading, the marker gives the direction.
            marker = flow.group(2)
            direction = self._direction or ("incoming" if marker == "<" else "outgoing")
            section = self._section(direction)
            section["lines"].append(line)
            section["connections"].append(_connection(flow, self._protocol))
            return True

        if line == _FLOWS_CROPPED and self._direction:
            section = self._section(self._direction)
            section["lines"].append(line)
            section["cropped"] = True
            return True
        return False

    def _section(self, direction: str) -> dict:
        # FastNetMon prints a protocol's count only when it has flows, so an
        # absent count is 0.
        return self.flows.setdefault(
            direction,
            {
                "tcp_flows": 0,
                "udp_flows": 0,
                "lines": [],
                "connections": [],
                "cropped": False,
            },
        )


def _connection(flow: re.Match, protocol: str | None) -> dict:
    connection = {
        "local": flow.group(1),
        "marker": flow.group(2),
        "remote": flow.group(3),
        "bytes": _number_or_text(flow.group(4)),
        "packets": _number_or_text(flow.group(5)),
    }
    if protocol:
        connection["protocol"] = protocol
    return connection


def _add_header(details: dict, label: str, value: str) -> None:
    name = label.strip().lower()
    if name in _TEXT_LABELS:
        details[_TEXT_LABELS[name]] = value
        return

    size_label = _PACKET_SIZE_LABEL.match(name)
    if size_label:
        key = f"average_{size_label.group(1)}_packet_size"
    else:
        key = name.replace(" ", "_")

    quantity = _QUANTITY.match(value)
    if quantity is None:
        details[key] = value
    elif quantity.group(2) == "mbps":
        bits = _megabits_to_bits(_number_or_text(quantity.group(1)))
        details[key] = _integral(bits / 8)
        details[f"{key}_bits"] = bits
    else:
        details[key] = _number_or_text(quantity.group(1))


def _megabits_to_bits(megabits: int | float) -> int:
    # FastNetMon 1.2.4 prints uint64_t(bytes_per_second / 1000 / 1000 * 8)
    # (convert_speed_to_mbps), so one "mbps" is 10**6 bits/s.
    return round(megabits * 1_000_000)


def _integral(number: float) -> int | float:
    return int(number) if number.is_integer() else number


def _number_or_text(text: str) -> int | float | str:
    if not _NUMBER.match(text):
        return text
    if "." in text:
        return float(text)
    return int(text)
