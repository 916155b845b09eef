"""Render FastNetMon events as plain-text e-mail messages with Jinja2.

Bodies come from the ``*.j2`` files of the ``templates/`` directory; a file of
the same name in the ``template_dir`` setting overrides one of them. Subjects
are short templates from the settings, rendered in a Jinja2 sandbox. Event
data reaches every template as values and is never compiled, so Jinja2
syntax inside an event appears literally in the message.

Body templates receive:

- ``event``: the event object as decoded from JSON.
- ``details``: its ``attack_details`` object (``{}`` when absent).
- ``v``: the figures that the built-in templates show, see :func:`event_view`.
- ``details_event``: for a ban, the view of the attack_details event folded
  into the message, else None.
- ``blocked_for``: for an unban that replies to its ban message, the seconds
  the host was blocked, else None.
- ``show_packet_dump``, ``show_flow_spec``: the settings that hide sections.

Filters: ``number(value, unit)``, ``human(value, unit)``, ``mbits``,
``duration``, ``timestamp``, ``traffic_table``, ``digest_table``,
``flow_spec_rule``. Each ``{{ }}``
prints at most one line, because control characters print as ``\\xNN``,
line feeds included, unless the value is marked ``|safe``. The built-in
templates mark only the output of their own macros that way. A missing key,
even several levels deep, prints as empty text.
"""

import collections
import dataclasses
import datetime as dt
import email.header
import email.policy
import email.utils
import getpass
import importlib.resources
import json
import logging
import math
import os
import re
import socket
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from pathlib import Path

import jinja2
import jinja2.sandbox
import markupsafe
from dateutil import tz

from . import __version__
from .errors import ConfigError, UsageError
from .events import KNOWN_ACTIONS, message_id
from .settings import Settings

log = logging.getLogger(__name__)

TEMPLATE_NAMES = tuple(f"{action}.j2" for action in KNOWN_ACTIONS) + (
    "generic.j2",
    "digest.j2",
    "test.j2",
)
SUBJECT_SETTINGS = {
    "ban": "email_subject_blackhole_block",
    "unban": "email_subject_blackhole_unblock",
    "partial_block": "email_subject_partial_block",
}
# ``target`` is "host 192.0.2.1", "hostgroup NAME" or "network PREFIX".
BUILTIN_SUBJECTS = {
    "ban": "FastNetMon blocked {{ target }}",
    "unban": "FastNetMon unblocked {{ target }}",
    "partial_block": "FastNetMon partially blocked traffic for {{ target }}",
    "partial_unblock": "FastNetMon removed partial block for {{ target }}",
    "attack_details": "FastNetMon attack details for {{ target }}",
    "attack_status": "FastNetMon attack status for {{ target }}",
    "generic": "FastNetMon {{ action }} for {{ target }}",
}
TEST_SUBJECT = "FastNetMon test e-mail from fnm_spool"
MAX_SUBJECT_CHARS = 200
# RFC 5322 section 2.1.1: a line is at most 998 octets without its CRLF.
MAX_LINE_OCTETS = 998
# msmtp reads the message with LF line ends and sends CRLF itself. Headers
# stored with set_raw() are written unchanged instead of refolded.
POLICY = email.policy.default.clone(linesep="\n", refold_source="none")

# Errors that a template can raise on unexpected data or a bad expression.
TEMPLATE_FAILURES = (
    jinja2.TemplateError,
    TypeError,
    ValueError,
    ArithmeticError,
    LookupError,
    AttributeError,
)
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_BODY_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_DOMAIN = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?)+$")

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
_FLOW_SPEC_MATCHES = (
    ("protocols", ""),
    ("source_ports", "sport"),
    ("destination_ports", "dport"),
    ("packet_lengths", "len"),
    ("fragmentation_flags", "frag"),
    ("tcp_flags", "flags"),
)
_DIGEST_LABELS = {
    "ban": ("ban", "bans"),
    "unban": ("unban", "unbans"),
    "partial_block": ("partial block", "partial blocks"),
    "partial_unblock": ("partial unblock", "partial unblocks"),
    "attack_details": ("attack details", "attack details"),
    "attack_status": ("attack status", "attack statuses"),
}


@dataclasses.dataclass(frozen=True)
class ThreadRef:
    """The earlier message that a new one replies to, such as an unban's ban.

    ``banned_at`` is when the ban was enqueued. With it, an unban message
    states how long the host was blocked.
    """

    message_id: str
    banned_at: dt.datetime | None = None


class Renderer:
    """Render events, digests and the test e-mail as RFC 5322 messages.

    The constructor compiles every template once. It raises
    :class:`ConfigError` for a ``template_dir`` that is not a directory or
    contains a template with a syntax error, for an unknown ``timezone`` and
    for a subject setting that does not compile. A template from ``template_dir``
    that fails while rendering is replaced by the built-in one, with a
    WARNING.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._tz = _time_zone(settings.timezone)
        self._domain = _sender_domain(settings.email_notifications_from)

        builtin_loader = jinja2.FileSystemLoader(str(builtin_template_dir()))
        self._builtin_templates = None
        if settings.template_dir:
            if not os.path.isdir(settings.template_dir):
                raise ConfigError(
                    f"template_dir {settings.template_dir!r} is not a directory. "
                    "Create it or set template_dir to an empty value.",
                    key="template_dir",
                )
            loader = jinja2.ChoiceLoader(
                [jinja2.FileSystemLoader(settings.template_dir), builtin_loader]
            )
            self._templates = _compile_templates(self._environment(loader))
            self._builtin_templates = _compile_templates(
                self._environment(builtin_loader)
            )
        else:
            self._templates = _compile_templates(self._environment(builtin_loader))

        self._subject_env = jinja2.sandbox.SandboxedEnvironment(
            undefined=jinja2.ChainableUndefined, finalize=_json_text
        )
        self._builtin_subjects = {
            name: self._subject_env.from_string(source)
            for name, source in BUILTIN_SUBJECTS.items()
        }
        self._subjects = dict(self._builtin_subjects)
        for action, key in SUBJECT_SETTINGS.items():
            self._subjects[action] = self._compile_subject(key)

    def render_event(
        self,
        event: dict,
        event_id: str,
        raw: bytes,
        *,
        queued_at: dt.datetime,
        details: dict | None = None,
        thread: ThreadRef | None = None,
        now: dt.datetime | None = None,
    ) -> bytes:
        """Return the message for one event, with LF line ends.

        ``raw`` is the event file's content; with ``event_id`` it makes the
        Message-ID, so the same event always gets the same one. ``queued_at``
        is the event's time in the body (naive means UTC). ``details`` is an
        attack_details event folded into a ban message. ``thread`` makes the
        message a reply. ``now`` sets the Date header (default: now).
        """
        action = event.get("action")
        if action in KNOWN_ACTIONS:
            template_name = f"{action}.j2"
        else:
            template_name = "generic.j2"
            log.warning(
                "event %s: unknown action %r, rendered with the generic template",
                event_id,
                action,
            )

        blocked_for = None
        if action == "unban" and thread is not None and thread.banned_at:
            seconds = (_aware(queued_at) - _aware(thread.banned_at)).total_seconds()
            blocked_for = seconds if seconds >= 0 else None
        context = {
            "event": event,
            "details": _attack_details(event),
            "v": event_view(event, queued_at, self._tz),
            "details_event": None,
            "blocked_for": blocked_for,
            **self._section_flags(),
        }
        if details is not None:
            context["details_event"] = event_view(details, queued_at, self._tz)
        body = self._render_body(template_name, context, f"event {event_id}")

        headers = [("X-FastNetMon-Event", event_id)]
        if thread is not None:
            headers += [("In-Reply-To", thread.message_id)]
            headers += [("References", thread.message_id)]
        return self._message(
            subject=self._render_subject(event, event_id),
            body=body,
            message_id=message_id(event_id, raw, self._domain),
            headers=headers,
            now=now,
        )

    def render_digest(
        self,
        items: Sequence[tuple[str, dict, dt.datetime]],
        *,
        digest_id: str,
        now: dt.datetime,
        largest: int = 3,
    ) -> bytes:
        """Return one message that sums up many events.

        ``items`` are (event_id, event, queued_at). The body has a table with
        one row per event in the given order, then the full details of the
        ``largest`` events by packets per second in the attack's direction.
        """
        views = []
        for event_id, event, queued_at in items:
            view = event_view(event, queued_at, self._tz)
            view["event_id"] = event_id
            views.append(view)
        biggest = sorted(views, key=_pps_sort_key, reverse=True)[: max(largest, 0)]
        context = {
            "events": views,
            "largest": biggest,
            "first": min((view["time"] for view in views), default=None),
            "last": max((view["time"] for view in views), default=None),
            **self._section_flags(),
        }
        body = self._render_body("digest.j2", context, f"digest {digest_id}")
        return self._message(
            subject=_subject_text(_digest_subject(views)),
            body=body,
            message_id=f"<{digest_id}@{self._domain}>",
            headers=[("X-FastNetMon-Digest", digest_id)],
            now=now,
        )

    def render_test(
        self, recipients: Iterable[str] = (), *, now: dt.datetime | None = None
    ) -> bytes:
        """Return the test e-mail, sent to ``recipients`` or else the settings' ones.

        Raises :class:`UsageError` when both are empty. The body names the
        sending host and user and the relay settings, never the password.
        """
        recipients = tuple(recipients) or self._settings.email_notifications_recipients
        if not recipients:
            raise UsageError(
                "no recipients for the test e-mail: pass --to=ADDRESS or set "
                "email_notifications_recipients"
            )
        settings = self._settings
        now = _aware(now) if now else dt.datetime.now(dt.UTC)
        context = {
            "sender_host": socket.gethostname(),
            "sender_user": _user_name(),
            "version": __version__,
            "time": now.astimezone(self._tz),
            "recipients": recipients,
            "relay": {
                "host": settings.email_notifications_host,
                "port": settings.email_notifications_port,
                "tls": settings.email_notifications_tls,
                "certificate_checks": (
                    not settings.email_notifications_disable_certificate_checks
                ),
                "tls_trust_file": settings.tls_trust_file,
                "auth": settings.email_notifications_auth,
                "auth_method": settings.email_notifications_auth_method,
                "username": settings.email_notifications_username,
                "from": settings.email_notifications_from,
                "msmtp_config": settings.msmtp_config,
            },
        }
        body = self._render_body("test.j2", context, "test e-mail")
        return self._message(
            subject=TEST_SUBJECT,
            body=body,
            message_id=email.utils.make_msgid("test", domain=self._domain),
            headers=[],
            now=now,
            recipients=recipients,
        )

    def _section_flags(self) -> dict:
        settings = self._settings
        return {
            "show_packet_dump": settings.email_notifications_add_simple_packet_dump,
            "show_flow_spec": not settings.email_notifications_hide_flow_spec_rules,
        }

    def _environment(self, loader: jinja2.BaseLoader) -> jinja2.Environment:
        environment = jinja2.Environment(
            loader=loader,
            autoescape=False,
            undefined=jinja2.ChainableUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
            finalize=display,
        )
        environment.filters.update(
            human=human,
            number=number,
            mbits=mbits,
            duration=format_duration,
            timestamp=format_time,
            traffic_table=traffic_table,
            digest_table=digest_table,
            flow_spec_rule=format_flow_spec_rule,
        )
        return environment

    def _compile_subject(self, key: str) -> jinja2.Template:
        source = getattr(self._settings, key)
        try:
            return self._subject_env.from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise ConfigError(
                f"{key}: invalid Jinja2 template {source!r} ({error.message}). "
                "Write fields as {{ ip }}.",
                key=key,
            ) from None

    def _render_subject(self, event: dict, event_id: str) -> str:
        action = event.get("action")
        name = action if action in BUILTIN_SUBJECTS else "generic"
        context = {**event, **_target_names(event)}
        try:
            text = self._subjects[name].render(context)
        except TEMPLATE_FAILURES as error:
            log.warning(
                "event %s: subject setting %s failed (%s: %s), "
                "using the built-in subject",
                event_id,
                SUBJECT_SETTINGS.get(name, name),
                type(error).__name__,
                error,
            )
            text = self._builtin_subjects[name].render(context)
        return _subject_text(text)

    def _render_body(self, name: str, context: dict, label: str) -> str:
        try:
            return self._templates[name].render(context)
        except TEMPLATE_FAILURES as error:
            if self._builtin_templates is None:
                raise
            log.warning(
                "%s: template %s from %s failed (%s: %s), using the built-in template",
                label,
                name,
                self._settings.template_dir,
                type(error).__name__,
                error,
            )
            return self._builtin_templates[name].render(context)

    def _message(
        self,
        *,
        subject: str,
        body: str,
        message_id: str,
        headers: list[tuple[str, str]],
        now: dt.datetime | None,
        recipients: Sequence[str] | None = None,
    ) -> bytes:
        settings = self._settings
        recipients = recipients or settings.email_notifications_recipients
        message = EmailMessage(policy=POLICY)
        if settings.email_notifications_from:
            message["From"] = _header_text(settings.email_notifications_from)
        if recipients:
            message["To"] = _header_text(", ".join(recipients))
        _set_subject(message, subject)
        message["Date"] = email.utils.format_datetime(
            (_aware(now) if now else dt.datetime.now(dt.UTC)).astimezone(self._tz)
        )
        _set_unfolded(message, "Message-ID", message_id)
        for name, value in headers:
            _set_unfolded(message, name, value)
        # RFC 3834: keeps vacation responders from replying to an alert.
        message["Auto-Submitted"] = "auto-generated"
        message["X-Mailer"] = f"fnm_spool {__version__}"
        message.set_content(body, charset="utf-8", cte=_transfer_encoding(body))
        return message.as_bytes()


def builtin_template_dir() -> Path:
    """Return the directory of the built-in templates.

    Installed, they are the package ``spool.templates``; in a source tree
    they are ``templates/`` beside ``spool/``.
    """
    try:
        marker = importlib.resources.files("spool.templates").joinpath("ban.j2")
    except ModuleNotFoundError:
        marker = None
    # A zipped install has no directory that FileSystemLoader could read.
    if isinstance(marker, Path) and marker.is_file():
        return marker.parent
    return Path(__file__).resolve().parent.parent / "templates"


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


def _compile_templates(environment: jinja2.Environment) -> dict:
    templates = {}
    for name in TEMPLATE_NAMES:
        try:
            templates[name] = environment.get_template(name)
        except jinja2.TemplateSyntaxError as error:
            raise ConfigError(
                f"template {error.filename or name} line {error.lineno}: "
                f"{error.message}",
                key="template_dir",
                path=error.filename,
            ) from None
    return templates


def _time_zone(name: str) -> dt.tzinfo:
    if not name:
        return tz.tzlocal()
    zone = tz.gettz(name)
    if zone is None:
        raise ConfigError(
            f"timezone {name!r} is not a known time zone. Use a name such as "
            "Europe/Berlin or UTC, or an empty value for the system's.",
            key="timezone",
        )
    return zone


def _sender_domain(sender: str) -> str:
    """Return the domain of the From address, else this host's name.

    The host name comes from gethostname() because a DNS lookup could stall
    rendering while the network is down.
    """
    address = email.utils.parseaddr(sender)[1]
    domain = address.rpartition("@")[2] if "@" in address else ""
    for candidate in (domain, socket.gethostname()):
        if _DOMAIN.match(candidate or ""):
            return candidate.rstrip(".")
    return "localhost"


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


def _header_text(text: str) -> str:
    """Replace control characters, CR and LF included, by single spaces."""
    return " ".join(_HEADER_UNSAFE.sub(" ", str(text)).split())


def _subject_text(text: str) -> str:
    """Make a subject safe for its header and cut it to 200 characters."""
    text = _header_text(text)
    if len(text) > MAX_SUBJECT_CHARS:
        text = text[: MAX_SUBJECT_CHARS - 3] + "..."
    return text


def _set_subject(message: EmailMessage, subject: str) -> None:
    if subject.isascii():
        message["Subject"] = subject
        return
    # The folding of email.policy in CPython 3.11 can drop the space between
    # two encoded words (CPython gh-144156); the older Header class keeps it.
    encoded = email.header.Header(subject, "utf-8", header_name="Subject")
    message.set_raw("Subject", encoded.encode(linesep="\n"))


def _set_unfolded(message: EmailMessage, name: str, value: str) -> None:
    """Set a header on one line when it fits, as message ids should be.

    Python's parser keeps the leading space of a Message-ID folded onto a
    continuation line, so a folded id would not compare equal once read back.
    """
    value = _header_text(value)
    if value.isascii() and len(name) + 2 + len(value) <= MAX_LINE_OCTETS:
        message.set_raw(name, value)
    else:
        message[name] = value


def _transfer_encoding(body: str) -> str:
    """Choose 7bit for short ASCII lines, else quoted-printable.

    Left to choose, the email package encodes every body with a line over
    78 characters, as every packet dump has, and may pick base64.
    Quoted-printable keeps non-ASCII text readable and needs no 8BITMIME.
    """
    data = body.encode("utf-8")
    if data.isascii() and all(
        len(line) <= MAX_LINE_OCTETS for line in data.splitlines()
    ):
        return "7bit"
    return "quoted-printable"


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


def _lines(value: object, indent: str = "") -> list[str]:
    """Flatten text, lists and objects into single-line strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [indent + line for line in value.splitlines()]
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, list | dict):
                lines.append(f"{indent}{display(key)}:")
                lines += _lines(item, indent + "  ")
            else:
                lines.append(f"{indent}{display(key)}: {display(item)}")
        return lines
    if isinstance(value, list):
        return [line for item in value for line in _lines(item, indent)]
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
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


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
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _escape_character(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        # No login name and no passwd entry, as in some containers.
        return f"uid {os.getuid()}"
