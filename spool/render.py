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

import dataclasses
import datetime as dt
import email.utils
import getpass
import heapq
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from email.message import EmailMessage

import jinja2
import jinja2.sandbox
from dateutil import tz

from . import __version__
from .errors import ConfigError, UsageError
from .events import KNOWN_ACTIONS, message_id
from .filters import (
    _json_text,
    digest_table,
    display,
    format_duration,
    format_flow_spec_rule,
    format_time,
    human,
    mbits,
    number,
    traffic_table,
)
from .mime import (
    POLICY,
    _header_text,
    _sender_domain,
    _set_subject,
    _set_unfolded,
    _subject_text,
    _transfer_encoding,
)
from .settings import Settings
from .template_files import _compile_templates, builtin_template_dir
from .view import (
    _attack_details,
    _aware,
    _digest_subject,
    _pps_sort_key,
    _target_names,
    event_view,
)

log = logging.getLogger(__name__)

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
# Errors that a template can raise on unexpected data or a bad expression.
TEMPLATE_FAILURES = (
    jinja2.TemplateError,
    TypeError,
    ValueError,
    ArithmeticError,
    LookupError,
    AttributeError,
)


# Fields of each event that the digest table and subject read.
_DIGEST_ROW_KEYS = (
    "event_id",
    "time",
    "host",
    "target",
    "action",
    "direction",
    "pps",
    "bits",
    "attack_type",
)


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
        # A storm's digest can carry tens of thousands of events: keep a
        # small row per event and full views only for the largest few.
        views = []
        top: list[tuple] = []
        for position, (event_id, event, queued_at) in enumerate(items):
            view = event_view(event, queued_at, self._tz)
            view["event_id"] = event_id
            views.append({key: view[key] for key in _DIGEST_ROW_KEYS})
            if largest > 0:
                entry = (_pps_sort_key(view), -position, view)
                if len(top) < largest:
                    heapq.heappush(top, entry)
                else:
                    heapq.heappushpop(top, entry)
        biggest = [entry[2] for entry in sorted(top, reverse=True)]
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
        if not text.strip():
            # A typo such as {{ details.attack_typ }} renders as nothing, and
            # an alert without a subject is easy to miss on a phone.
            log.warning(
                "event %s: subject setting %s rendered empty, using the built-in "
                "subject",
                event_id,
                SUBJECT_SETTINGS.get(name, name),
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


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        # No login name and no passwd entry, as in some containers.
        return f"uid {os.getuid()}"
