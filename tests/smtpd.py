"""A real SMTP server on loopback for the tests and the demo.

:class:`SMTPServer` runs aiosmtpd in a thread on 127.0.0.1, on a port the
kernel chooses, with a certificate made at run time by :class:`LoopbackCA`.
By default it offers STARTTLS and requires it before AUTH, and it requires
AUTH PLAIN or LOGIN with the username and password it was given. It stores
every message it accepts and can inject the faults that the transport must
classify: rejected recipients (5xx or 4xx), a rejected password, a server
that accepts connections and never replies, and a server that goes away and
comes back on the same port.
"""

import asyncio
import email
import email.message
import email.policy
import logging
import secrets
import socket
import ssl
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

log = logging.getLogger(__name__)

# aiosmtpd warns at every connection when AUTH is required without STARTTLS.
# That is intended here. The "off" mode has no TLS on purpose, and in the
# "implicit" mode the whole session is TLS, which aiosmtpd 1.4 does not count.
AUTH_WITHOUT_TLS_WARNING = "Requiring AUTH while not requiring TLS"
warnings.filterwarnings(
    "ignore",
    message=AUTH_WITHOUT_TLS_WARNING,
    category=UserWarning,
    module="aiosmtpd",
)

STARTTLS = "starttls"
IMPLICIT_TLS = "implicit"
NO_TLS = "off"
TLS_MODES = (STARTTLS, IMPLICIT_TLS, NO_TLS)


class LoopbackCA:
    """A certificate authority made at run time, and one server certificate.

    The server certificate is valid for ``localhost``, ``127.0.0.1`` and
    ``::1``.
    ``ca_file`` is the CA certificate in PEM, the file a client names as
    msmtp's ``tls_trust_file``.
    """

    def __init__(self, directory: Path):
        self.ca = trustme.CA()
        self.ca_file = Path(directory) / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._server_cert = self.ca.issue_cert("localhost", "127.0.0.1", "::1")

    def server_context(self) -> ssl.SSLContext:
        """Return a server-side context that presents the server certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_cert.configure_cert(context)
        return context


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as the server accepted it at the end of DATA.

    ``raw`` contains the bytes after dot-unstuffing, with the CRLF line endings
    of the SMTP session. ``login`` and ``auth_mechanism`` (``"PLAIN"`` or
    ``"LOGIN"``) are None when the client did not authenticate. ``tls``
    tells whether the session was encrypted when the message arrived.
    """

    sender: str
    recipients: tuple[str, ...]
    raw: bytes
    parsed: email.message.EmailMessage
    login: str | None
    auth_mechanism: str | None
    tls: bool

    @property
    def mail_from(self) -> str:
        """The envelope sender, under aiosmtpd's ``Envelope`` name."""
        return self.sender

    @property
    def rcpt_tos(self) -> tuple[str, ...]:
        """The envelope recipients, under aiosmtpd's ``Envelope`` name."""
        return self.recipients


@dataclass(frozen=True)
class _Credentials:
    """What a successful AUTH leaves in the aiosmtpd session."""

    login: str
    mechanism: str


class _Handler:
    """aiosmtpd hooks: fault injection at RCPT and DATA, storage of messages."""

    def __init__(self, server: "SMTPServer"):
        self._server = server

    async def handle_RCPT(
        self,
        smtp: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._server._rcpt_replies.get(address.lower())
        if reply is not None:
            log.info("RCPT %s rejected: %s", address, reply)
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, smtp: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self._server._data_reply is not None:
            log.info("DATA rejected: %s", self._server._data_reply)
            return self._server._data_reply

        raw = bytes(envelope.original_content)
        credentials = session.auth_data if session.authenticated else None
        message = ReceivedMessage(
            sender=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            raw=raw,
            parsed=email.message_from_bytes(raw, policy=email.policy.default),
            login=credentials.login if credentials else None,
            auth_mechanism=credentials.mechanism if credentials else None,
            tls=session.ssl is not None or self._server.tls == IMPLICIT_TLS,
        )
        self._server._store(message)
        return "250 2.0.0 OK queued"


class _SilentProtocol(asyncio.Protocol):
    """A connection that is accepted and never gets a reply, not even 220."""

    def __init__(self, transports: set[asyncio.BaseTransport]):
        self._transports = transports
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transports.discard(self._transport)


class _Controller(Controller):
    """A Controller that binds its own socket, so that port 0 works.

    aiosmtpd 1.4 passes the port straight to ``loop.create_server`` and then
    connects to that same number to check that the server is up, which fails
    for port 0. Binding first lets the kernel choose a free port and lets
    this controller record it before that check.
    """

    def __init__(self, server: "SMTPServer", **kwargs):
        super().__init__(_Handler(server), **kwargs)
        self._owner = server

    def _create_server(self):
        family = socket.AF_INET6 if ":" in self.hostname else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        # Connections of a stopped server linger in TIME_WAIT, so without
        # this option a restart on the same port fails with "address in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.hostname, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        return self.loop.create_server(
            self._factory_invoker, sock=sock, ssl=self.ssl_context
        )

    def factory(self):
        if self._owner._stalled:
            return _SilentProtocol(self._owner._silent_transports)
        return super().factory()


class SMTPServer:
    """An aiosmtpd server on loopback with authentication and fault injection.

    ``tls`` is ``"starttls"`` (STARTTLS offered and required before any
    other command but EHLO, HELO, NOOP, QUIT), ``"implicit"`` (TLS from the
    first byte, as on port 465) or ``"off"``. ``ca`` is required unless
    ``tls`` is ``"off"``. With ``auth`` true, MAIL, RCPT and DATA need a
    successful AUTH PLAIN or LOGIN with ``username`` and ``password``. The
    password is a random token when none is given. ``port`` 0 lets the
    kernel choose, and the chosen port is kept across :meth:`stop` and
    :meth:`start`.

    Use it as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        *,
        ca: LoopbackCA | None = None,
        tls: str = STARTTLS,
        auth: bool = True,
        username: str = "fnm",
        password: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        if tls not in TLS_MODES:
            raise ValueError(f"invalid tls mode {tls!r}: use one of {TLS_MODES}")
        if tls != NO_TLS and ca is None:
            raise ValueError(f"tls mode {tls!r} needs a LoopbackCA")
        self.ca = ca
        self.tls = tls
        self.auth = auth
        self.username = username
        self.password = password if password is not None else secrets.token_hex(8)
        self.host = host
        self.port = port

        self._messages: list[ReceivedMessage] = []
        self._received = threading.Condition()
        self._rcpt_replies: dict[str, str] = {}
        self._data_reply: str | None = None
        self._reject_auth = False
        self._stalled = False
        self._silent_transports: set[asyncio.BaseTransport] = set()
        self._controller: _Controller | None = None

    @property
    def ca_file(self) -> Path | None:
        """The PEM file of the CA that signed the server certificate."""
        return self.ca.ca_file if self.ca is not None else None

    @property
    def running(self) -> bool:
        """Whether the server listens now."""
        return self._controller is not None

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A copy of the messages received so far, oldest first."""
        with self._received:
            return list(self._messages)

    def __enter__(self) -> "SMTPServer":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        """Listen on ``host`` and ``port``, which stays the same after a stop."""
        if self._controller is not None:
            return
        controller = _Controller(self, **self._controller_options())
        controller.start()
        self.port = controller.port
        self._controller = controller
        log.info(
            "SMTP server listens on %s:%s (tls %s)", self.host, self.port, self.tls
        )

    def stop(self) -> None:
        """Stop listening and drop every open connection, if running."""
        controller = self._controller
        if controller is None:
            return
        controller.loop.call_soon_threadsafe(self._close_silent_connections)
        controller.stop()
        self._controller = None
        log.info("SMTP server on %s:%s stopped", self.host, self.port)

    def close(self) -> None:
        """Stop the server for good; the same as :meth:`stop`."""
        self.stop()

    def wait_for(self, count: int, timeout: float = 10) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages arrived and return all of them.

        Raises AssertionError naming the count reached when ``timeout``
        seconds pass first.
        """
        deadline = time.monotonic() + timeout
        with self._received:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} messages within {timeout} s, "
                        f"received {len(self._messages)}"
                    )
                self._received.wait(remaining)
            return list(self._messages)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._received:
            self._messages.clear()

    def fail_rcpt(self, address: str, code: int = 550, text: str = "") -> None:
        """Reply ``code text`` to ``RCPT TO:<address>`` (compared case-blind).

        ``text`` defaults to an enhanced status code of the same class and a
        neutral phrase. Use :meth:`accept_rcpt` to undo.
        """
        if not 400 <= code <= 599:
            raise ValueError(f"invalid SMTP reply code {code}: use 400..599")
        if not text:
            text = _default_reply_text(code, "mailbox unavailable")
        self._rcpt_replies[address.lower()] = f"{code} {text}"

    def accept_rcpt(self, address: str) -> None:
        """Accept ``address`` again after :meth:`fail_rcpt`."""
        self._rcpt_replies.pop(address.lower(), None)

    def fail_data(self, code: int | None, text: str = "") -> None:
        """Reply ``code text`` at the end of DATA, or accept again if None."""
        if code is None:
            self._data_reply = None
            return
        if not 400 <= code <= 599:
            raise ValueError(f"invalid SMTP reply code {code}: use 400..599")
        if not text:
            text = _default_reply_text(code, "message rejected")
        self._data_reply = f"{code} {text}"

    def reject_auth(self, enabled: bool = True) -> None:
        """Reject every AUTH with 535, even with the right password."""
        self._reject_auth = enabled

    def stall(self, enabled: bool = True) -> None:
        """Accept new connections and never reply to them, not even with 220.

        ``stall(False)`` serves new connections again and closes the stalled
        ones. Connections opened before the call are served as usual.
        """
        self._stalled = enabled
        if not enabled and self._controller is not None:
            loop = self._controller.loop
            loop.call_soon_threadsafe(self._close_silent_connections)

    def resume(self) -> None:
        """Undo :meth:`stall`."""
        self.stall(False)

    def _controller_options(self) -> dict:
        options = {
            "hostname": self.host,
            "port": self.port,
            "server_hostname": "localhost",
            "ident": "fnm_spool test SMTP server",
            "auth_required": self.auth,
            "authenticator": self._authenticate,
            # aiosmtpd counts only STARTTLS as TLS, so with implicit TLS it
            # would hide AUTH unless this check is off.
            "auth_require_tls": self.tls == STARTTLS,
        }
        if self.tls == STARTTLS:
            options["tls_context"] = self.ca.server_context()
            options["require_starttls"] = True
        elif self.tls == IMPLICIT_TLS:
            options["ssl_context"] = self.ca.server_context()
        return options

    def _authenticate(self, smtp, session, envelope, mechanism, auth_data):
        accepted = (
            not self._reject_auth
            and secrets.compare_digest(auth_data.login, self.username.encode())
            and secrets.compare_digest(auth_data.password, self.password.encode())
        )
        if not accepted:
            log.info("AUTH %s rejected", mechanism)
            # handled=False makes aiosmtpd send its own 535 reply.
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        credentials = _Credentials(login=login, mechanism=mechanism)
        return AuthResult(success=True, auth_data=credentials)

    def _store(self, message: ReceivedMessage) -> None:
        with self._received:
            self._messages.append(message)
            self._received.notify_all()
        log.info(
            "received message from %s to %s",
            message.sender,
            ", ".join(message.recipients),
        )

    def _close_silent_connections(self) -> None:
        for transport in list(self._silent_transports):
            transport.close()


def _default_reply_text(code: int, phrase: str) -> str:
    """Return an RFC 3463 enhanced status code and ``phrase`` for ``code``."""
    # The phrase avoids words such as "temporary", so that a client can only
    # classify the reply by its code.
    return f"{code // 100}.0.0 {phrase} (injected by the test server)"
