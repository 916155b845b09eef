"""Bad input in the spool: each entry ends in failed/ with a reason, or is sent.

The processor runs in this process with a FakeClock, against the real msmtp
and the SMTP server on loopback. Each case drops one bad entry into
incoming/ beside a good event and checks where the entry ended, the reason
or message, the log, and that the good event was still delivered.
"""

import contextlib
import dataclasses
import email
import email.message
import email.policy
import errno
import json
import logging
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from clock import FakeClock
from conftest import RECIPIENTS

from spool import settings as settings_module
from spool.filters import display
from spool.processor import Processor
from spool.render import Renderer
from spool.spooldir import REASON_SUFFIX, State

ROOT = Path(__file__).resolve().parent.parent
GOOD_IP = "198.51.100.7"
SECRET = "symlink-target-secret-5f2c9e"
# The sparse file is this large but takes no disk space.
HUGE_BYTES = 8 << 30
MAX_EVENT_BYTES = settings_module.DEFAULTS.max_event_bytes
ATTACKER = "attacker@example.net"


def event_bytes(**changes) -> bytes:
    """Return a valid ban as JSON, with keys replaced (None removes one)."""
    event = {
        "ip": "203.0.113.10",
        "action": "ban",
        "alert_scope": "host",
        "attack_details": {
            "attack_type": "udp_flood",
            "attack_direction": "incoming",
            "total_incoming_pps": 412345,
            "total_incoming_traffic": 192977460,
        },
    }
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return json.dumps(event).encode()


def details(**changes) -> dict:
    """Return attack_details of a valid ban with keys replaced."""
    return {**json.loads(event_bytes())["attack_details"], **changes}


GOOD_EVENT = event_bytes(ip=GOOD_IP)


@dataclasses.dataclass
class Scene:
    """Where a case puts its entry, and the tools it may need."""

    incoming: Path
    outside: Path
    monkeypatch: pytest.MonkeyPatch


@dataclasses.dataclass
class Outcome:
    """What a case left behind, for its extra checks."""

    reason: str | None
    message: email.message.EmailMessage | None
    raw: bytes | None
    recipients: tuple[str, ...]
    seconds: float
    bytes_read: int


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad entry: how to make it, where it must end, what must be logged.

    ``reason`` is text of the reason file for ``failed``, ``log`` text of a
    log line (default: ``reason``), ``check`` extra checks on the outcome.
    """

    id: str
    make: Callable[[Scene], str]
    outcome: str = "failed"
    reason: str = ""
    log: str = ""
    check: Callable[[Outcome], None] | None = None


def file_with(data: bytes, name: str | bytes = "bad.json") -> Callable[[Scene], str]:
    def make(scene: Scene) -> str:
        path = os.path.join(os.fsencode(scene.incoming), os.fsencode(name))
        with open(path, "wb") as stream:
            stream.write(data)
        return os.fsdecode(name)

    return make


def huge_sparse_file(scene: Scene) -> str:
    path = scene.incoming / "huge.json"
    with open(path, "wb") as stream:
        stream.write(b'{"action": "ban", "ip": "203.0.113.10", "pad": "')
    os.truncate(path, HUGE_BYTES)
    return path.name


def symlink_outside(scene: Scene) -> str:
    target = scene.outside / "secret.json"
    target.write_text(json.dumps({"action": "ban", "ip": "203.0.113.10", "x": SECRET}))
    (scene.incoming / "link.json").symlink_to(target)
    return "link.json"


def fifo(scene: Scene) -> str:
    os.mkfifo(scene.incoming / "pipe.json")
    return "pipe.json"


def directory(scene: Scene) -> str:
    (scene.incoming / "dir.json").mkdir()
    (scene.incoming / "dir.json" / "inner.json").write_bytes(GOOD_EVENT)
    return "dir.json"


def char_device(scene: Scene) -> str:
    """Make /dev/zero's twin, or a symbolic link to it without CAP_MKNOD."""
    path = scene.incoming / "zero.json"
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        path.symlink_to("/dev/zero")
    return path.name


def unix_socket(scene: Scene) -> str:
    """Bind a Unix socket by a relative name, which keeps under sun_path's limit."""
    scene.monkeypatch.chdir(scene.incoming)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("socket.json")
    return "socket.json"


def unreadable(scene: Scene) -> str:
    """Fail open(2) on this one file with EACCES, which root would not get."""
    path = scene.incoming / "unreadable.json"
    path.write_bytes(event_bytes())
    inode = os.stat(path).st_ino
    real_open = os.open

    def open_with_eacces(file, flags, *args, **kwargs):
        try:
            target = os.stat(file, follow_symlinks=False).st_ino
        except OSError:
            target = None
        if target == inode:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), file)
        return real_open(file, flags, *args, **kwargs)

    scene.monkeypatch.setattr(os, "open", open_with_eacces)
    return path.name


def check_huge_not_read(outcome: Outcome) -> None:
    assert outcome.seconds < 5
    assert outcome.bytes_read < 64 << 20


def check_no_secret(outcome: Outcome) -> None:
    assert SECRET not in (outcome.reason or "")


def check_deep_nesting_shown(outcome: Outcome) -> None:
    body = outcome.message.get_body().get_content()
    assert "innermost line" in body
    assert "innermost flow" in body


def check_huge_integer_as_given(outcome: Outcome) -> None:
    body = outcome.message.get_body().get_content()
    assert "1" + "0" * 400 in body.replace("=\n", "")


def check_generic(outcome: Outcome) -> None:
    assert outcome.message["Subject"] == "FastNetMon reroute for host 203.0.113.10"
    assert "Action:    reroute" in outcome.message.get_body().get_content()


def check_counters_as_given(outcome: Outcome) -> None:
    body = outcome.message.get_body().get_content()
    assert "lots" in body
    assert "[1, 2]" in body


def check_jinja_literal(outcome: Outcome) -> None:
    subject = outcome.message["Subject"]
    body = outcome.message.get_body().get_content()
    assert subject == "FastNetMon blocked host {{ 7*7 }}"
    assert "Hostgroup: {{ 7*7 }}" in body
    assert "Attack:    {% raw %}{{ 7*7 }}" in body
    assert "{{ config }}" in body


def check_no_injected_header(outcome: Outcome) -> None:
    message = outcome.message
    assert "\r" not in message["Subject"]
    assert "\n" not in message["Subject"]
    assert message["Bcc"] is None
    header_lines = outcome.raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert not [line for line in header_lines if line.lower().startswith(b"bcc")]
    assert sorted(outcome.recipients) == sorted(RECIPIENTS)
    body = message.get_body().get_content()
    assert not [line for line in body.splitlines() if line.startswith("Bcc")]


def check_subject(expected: str) -> Callable[[Outcome], None]:
    def check(outcome: Outcome) -> None:
        check_no_injected_header(outcome)
        assert outcome.message["Subject"] == expected

    return check


def check_attack_type_escaped(outcome: Outcome) -> None:
    check_no_injected_header(outcome)
    body = outcome.message.get_body().get_content()
    assert f"Attack:    udp\\x0d\\x0aBcc: {ATTACKER}" in body


CASES = [
    Case("empty", file_with(b""), reason="empty file, expected a JSON object"),
    Case("truncated", file_with(event_bytes()[:40]), reason="invalid JSON at line 1"),
    Case(
        "not-utf8",
        file_with(b'{"action": "ban", "ip": "203.0.113.10", "x": "\xff"}'),
        reason="not UTF-8 text (invalid byte at offset 46)",
    ),
    Case(
        "binary-garbage",
        file_with(b"\x89PNG\r\n\x1a\n" + random.Random(7).randbytes(4096)),
        reason="not UTF-8 text",
    ),
    Case(
        "huge-sparse",
        huge_sparse_file,
        reason=f"{HUGE_BYTES} bytes, over max_event_bytes ({MAX_EVENT_BYTES})",
        check=check_huge_not_read,
    ),
    Case(
        "json-array",
        file_with(b"[1, 2]"),
        reason="expected a JSON object, got a JSON array",
    ),
    Case(
        "json-string",
        file_with(b'"ban"'),
        reason="expected a JSON object, got a JSON string",
    ),
    Case(
        "json-number",
        file_with(b"42"),
        reason="expected a JSON object, got a JSON number",
    ),
    Case(
        "host-without-ip",
        file_with(event_bytes(ip=None)),
        reason="host-scope event without 'ip'",
    ),
    Case(
        "ip-not-ip",
        file_with(event_bytes(ip="not-an-ip")),
        reason="'ip' is not an IPv4 or IPv6 address: 'not-an-ip'",
    ),
    Case(
        "unknown-action",
        file_with(event_bytes(action="reroute")),
        outcome="sent",
        log="unknown action 'reroute', rendered with the generic template",
        check=check_generic,
    ),
    Case(
        "counters-wrong-type",
        file_with(
            event_bytes(
                attack_details=details(
                    total_incoming_pps="lots",
                    total_incoming_traffic=[1, 2],
                    incoming_udp_pps=True,
                )
            )
        ),
        outcome="sent",
        log=(
            "counters that are not numbers, shown as given: incoming_udp_pps, "
            "total_incoming_pps, total_incoming_traffic"
        ),
        check=check_counters_as_given,
    ),
    Case(
        "integer-over-python-digit-limit",
        file_with(
            b'{"action": "ban", "ip": "203.0.113.10", "attack_details": '
            b'{"total_incoming_pps": 1' + b"0" * 5000 + b"}}"
        ),
        reason="invalid JSON: Exceeds the limit (4300 digits)",
    ),
    Case(
        "integer-too-large-for-float",
        file_with(
            b'{"action": "ban", "ip": "203.0.113.10", "attack_details": '
            b'{"total_incoming_pps": 1' + b"0" * 400 + b"}}"
        ),
        outcome="sent",
        log="sent ",
        check=check_huge_integer_as_given,
    ),
    Case(
        "counter-name-with-crlf",
        file_with(event_bytes(attack_details=details(**{"x\r\nforged_pps": "x"}))),
        outcome="sent",
        log="counters that are not numbers, shown as given: 'x\\r\\nforged_pps'",
    ),
    Case(
        "deep-nesting",
        file_with(b"[" * 100_000),
        reason="JSON nested too deeply",
    ),
    Case(
        "deep-nesting-in-object",
        file_with(b'{"action": "ban", "ip": "203.0.113.10", "x": ' + b"[" * 100_000),
        reason="JSON nested too deeply",
    ),
    Case(
        "deep-nesting-that-parses",
        file_with(
            b'{"action": "ban", "ip": "203.0.113.10", "packet_dump": '
            + b"[" * 900
            + b'"innermost line"'
            + b"]" * 900
            + b', "flows": {"incoming": '
            + b'{"a": ' * 400
            + b'"innermost flow"'
            + b"}" * 401
            + b"}"
        ),
        outcome="sent",
        log="sent ",
        check=check_deep_nesting_shown,
    ),
    Case(
        "symlink-outside",
        symlink_outside,
        reason="a symbolic link, not a regular file; rejected",
        check=check_no_secret,
    ),
    Case("fifo", fifo, reason="a FIFO, not a regular file; rejected"),
    Case("directory", directory, reason="a directory, not a regular file; rejected"),
    Case("unix-socket", unix_socket, reason="a socket, not a regular file; rejected"),
    Case(
        "char-device",
        char_device,
        reason="not a regular file; rejected",
    ),
    Case(
        "name-with-spaces",
        file_with(event_bytes(), "ban from fastnetmon.json"),
        outcome="sent",
        log="claimed incoming/'ban from fastnetmon.json' as ",
    ),
    Case(
        "name-with-newline",
        file_with(event_bytes(), "ban\nfrom fastnetmon.json"),
        outcome="sent",
        log="claimed incoming/'ban\\nfrom fastnetmon.json' as ",
    ),
    Case(
        "name-non-ascii",
        file_with(event_bytes(), "événement ☃.json"),
        outcome="sent",
        log="claimed incoming/'événement ☃.json' as ",
    ),
    Case(
        "name-not-utf8",
        file_with(event_bytes(), b"caf\xe9.json"),
        outcome="sent",
        log="claimed incoming/'caf\\udce9.json' as ",
    ),
    Case(
        "name-with-newline-bad-json",
        file_with(b"{", "bad\r\nname.json"),
        reason="incoming/'bad\\r\\nname.json': invalid JSON",
    ),
    Case(
        "ip-with-crlf",
        file_with(event_bytes(ip=f"203.0.113.10\r\nBcc: {ATTACKER}")),
        reason="'ip' is not an IPv4 or IPv6 address: '203.0.113.10\\r\\nBcc: ",
    ),
    Case(
        "ip-scope-id-with-crlf",
        file_with(event_bytes(ip=f"fe80::1%eth0\r\nBcc: {ATTACKER}")),
        reason="'ip' is not an IPv4 or IPv6 address: 'fe80::1%eth0\\r\\nBcc: ",
    ),
    Case(
        "hostgroup-name-with-crlf",
        file_with(
            event_bytes(
                ip=None,
                alert_scope="hostgroup",
                hostgroup_name=f"web\r\nBcc: {ATTACKER}",
            )
        ),
        outcome="sent",
        log="sent ",
        check=check_subject(f"FastNetMon blocked host web Bcc: {ATTACKER}"),
    ),
    Case(
        "attack-type-with-crlf",
        file_with(
            event_bytes(attack_details=details(attack_type=f"udp\r\nBcc: {ATTACKER}"))
        ),
        outcome="sent",
        log="sent ",
        check=check_attack_type_escaped,
    ),
    Case(
        "action-with-crlf",
        file_with(event_bytes(action=f"ban\r\nBcc: {ATTACKER}")),
        outcome="sent",
        log="rendered with the generic template",
        check=check_subject(f"FastNetMon ban Bcc: {ATTACKER} for host 203.0.113.10"),
    ),
    Case(
        "jinja-syntax-in-data",
        file_with(
            event_bytes(
                ip=None,
                alert_scope="hostgroup",
                hostgroup_name="{{ 7*7 }}",
                note="{{ config }}",
                attack_details=details(attack_type="{% raw %}{{ 7*7 }}"),
            )
        ),
        outcome="sent",
        log="sent ",
        check=check_jinja_literal,
    ),
    Case(
        "unreadable",
        unreadable,
        reason="incoming/'unreadable.json': cannot read: Permission denied",
    ),
]


def load(config: Path):
    return settings_module.load(config, required=True)


def fnm_spool(config: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the command line as a user would."""
    return subprocess.run(
        [sys.executable, str(ROOT / "fnm_spool.py"), "-c", str(config), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )


def age(path: os.PathLike | bytes, seconds: float = 60) -> None:
    """Move a file's modification time ``seconds`` back (forward if negative)."""
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


def bytes_read_so_far() -> int:
    """Return the bytes this process got from read(2) and similar calls."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("/proc/self/io has no rchar line")


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in the main thread when the block takes too long."""

    def expire(number, frame):
        raise TimeoutError(f"the processor was still busy after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def names(processor: Processor, state: State) -> list[str]:
    return sorted(processor.spool.names(state))


def spool_log_lines(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("spool")
    ]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_judged(
    case, make_settings_file, smtp_server, tmp_path, monkeypatch, caplog
):
    """A bad entry ends in failed/ with a reason or is sent; the good one is sent.

    The unreadable case injects EACCES by replacing os.open for that one
    file, because this suite runs as root and file modes do not stop root.
    The character device is made with mknod, or is a symbolic link to
    /dev/zero where mknod is not permitted.
    """
    caplog.set_level(logging.INFO)
    config = make_settings_file()
    processor = Processor(load(config), clock=FakeClock())
    spool = processor.spool
    good_id = spool.enqueue(GOOD_EVENT)
    outside = tmp_path / "outside"
    outside.mkdir()
    scene = Scene(spool.dir(State.INCOMING), outside, monkeypatch)
    name = case.make(scene)
    age(os.path.join(os.fsencode(scene.incoming), os.fsencode(name)))

    started, read_before = time.monotonic(), bytes_read_so_far()
    with time_limit(30):
        processor.run_once()
    seconds = time.monotonic() - started
    bytes_read = bytes_read_so_far() - read_before
    monkeypatch.undo()

    expected_messages = 2 if case.outcome == "sent" else 1
    messages = smtp_server.wait_for(expected_messages)
    assert len(messages) == expected_messages
    events = {m.parsed["X-FastNetMon-Event"]: m for m in messages}
    assert good_id in events
    assert names(processor, State.INCOMING) == []
    assert names(processor, State.ACTIVE) == []
    assert names(processor, State.DEFERRED) == []
    sent = names(processor, State.SENT)
    failed = names(processor, State.FAILED)
    assert f"{good_id}.json" in sent

    reason = message = raw = None
    recipients: tuple[str, ...] = ()
    if case.outcome == "failed":
        assert len(sent) == 1
        assert len(failed) == 1
        bad_id = failed[0].removesuffix(".json")
        reason = spool.path(State.FAILED, bad_id, REASON_SUFFIX).read_text()
        assert case.reason in reason
        assert f"original name: {name!r} (from incoming/)" in reason
    else:
        assert failed == []
        assert len(sent) == 2
        (bad_id,) = set(events) - {good_id}
        received = events[bad_id]
        message, raw, recipients = received.parsed, received.raw, received.rcpt_tos

    log_lines = spool_log_lines(caplog)
    expected_log = case.log or case.reason
    assert [line for line in log_lines if expected_log in line], log_lines
    assert [line for line in log_lines if bad_id in line]
    assert [line for line in log_lines if "\n" in line or "\r" in line] == []
    for received in messages:
        assert SECRET.encode() not in received.raw
    assert SECRET not in caplog.text
    if case.check is not None:
        case.check(Outcome(reason, message, raw, recipients, seconds, bytes_read))


@pytest.mark.parametrize(
    "name", ["plain.json", "a regular file.json", "max_event_bytes.json"]
)
def test_unparsable_file_waits_out_grace(make_settings_file, smtp_server, name):
    """A file that does not parse yet is kept for incoming_grace_seconds.

    The names contain words of other rejection reasons, which must not
    change the rule.
    """
    config = make_settings_file(incoming_grace_seconds=30)
    clock = FakeClock()
    processor = Processor(load(config), clock=clock)
    path = processor.spool.dir(State.INCOMING) / name
    path.write_bytes(event_bytes()[:40])

    processor.run_once()
    assert names(processor, State.INCOMING) == [name]
    assert names(processor, State.FAILED) == []

    clock.advance(31)
    processor.run_once()
    assert names(processor, State.INCOMING) == []
    (failed,) = names(processor, State.FAILED)
    reason_path = processor.spool.path(
        State.FAILED, failed.removesuffix(".json"), REASON_SUFFIX
    )
    assert "invalid JSON" in reason_path.read_text()
    assert smtp_server.messages == []


def test_aged_unparsable_file_fails_at_once(make_settings_file, smtp_server):
    config = make_settings_file(incoming_grace_seconds=30)
    processor = Processor(load(config), clock=FakeClock())
    path = processor.spool.dir(State.INCOMING) / "old.json"
    path.write_bytes(b"{")
    age(path, 31)

    processor.run_once()

    assert names(processor, State.INCOMING) == []
    assert len(names(processor, State.FAILED)) == 1


def test_zero_grace_fails_at_once(make_settings_file, smtp_server):
    config = make_settings_file(incoming_grace_seconds=0)
    processor = Processor(load(config), clock=FakeClock())
    (processor.spool.dir(State.INCOMING) / "new.json").write_bytes(b"{")

    processor.run_once()

    assert names(processor, State.INCOMING) == []
    assert len(names(processor, State.FAILED)) == 1


def test_half_written_file_never_read_half(make_settings_file, smtp_server):
    """A cp-style writer: created in incoming/, written in two parts with a pause."""
    config = make_settings_file(incoming_grace_seconds=5)
    clock = FakeClock()
    processor = Processor(load(config), clock=clock)
    path = processor.spool.dir(State.INCOMING) / "copied.json"
    whole = event_bytes(note="written in the second part")
    half = len(whole) // 2

    with open(path, "wb") as writer:
        writer.write(whole[:half])
        writer.flush()
        processor.run_once()
        assert names(processor, State.INCOMING) == ["copied.json"]
        assert names(processor, State.FAILED) == []
        assert names(processor, State.SENT) == []

        time.sleep(0.2)
        clock.advance(1)
        writer.write(whole[half:])

    processor.run_once()
    assert smtp_server.messages == []
    clock.advance(5)
    processor.run_once()

    (message,) = smtp_server.wait_for(1)
    assert "written in the second part" in message.parsed.get_body().get_content()
    (sent,) = names(processor, State.SENT)
    assert (processor.spool.dir(State.SENT) / sent).read_bytes() == whole
    assert names(processor, State.FAILED) == []


def test_enospc_moving_to_sent_keeps_claim(
    settings_file, smtp_server, monkeypatch, caplog
):
    """ENOSPC on the move to sent/ leaves the event claimed in active/.

    The error is injected by replacing os.rename for targets in sent/. The
    message is not sent again, by this processor nor by a cron run beside
    it, and the event is finished once the disk has space again.
    """
    processor = Processor(load(settings_file), clock=FakeClock())
    spool = processor.spool
    event_id = spool.enqueue(event_bytes())
    sent_dir = os.fspath(spool.dir(State.SENT))
    real_rename = os.rename

    def rename_enospc(source, target, *args, **kwargs):
        if os.path.dirname(os.fspath(target)) == sent_dir:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target)
        return real_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename_enospc)
    processor.run_once()

    assert len(smtp_server.wait_for(1)) == 1
    assert names(processor, State.ACTIVE) == [f"{event_id}.json"]
    assert names(processor, State.SENT) == []
    assert f"{event_id} stays in active/: cannot move it: No space left" in (
        caplog.text
    )

    processor.run_once()
    cron = fnm_spool(settings_file, "run", "--once")
    assert cron.returncode == 0, cron.stderr
    assert names(processor, State.ACTIVE) == [f"{event_id}.json"]
    assert names(processor, State.INCOMING) == []
    assert len(smtp_server.messages) == 1

    monkeypatch.undo()
    processor.run_once()

    assert names(processor, State.ACTIVE) == []
    assert names(processor, State.SENT) == [f"{event_id}.json"]
    assert spool.path(State.SENT, event_id, ".eml").exists()
    assert len(smtp_server.messages) == 1


def test_set_rejects_subject_not_compiling(settings_file):
    before = settings_file.read_bytes()

    done = fnm_spool(
        settings_file, "set", "main", "email_subject_blackhole_block", "Ban {{ ip"
    )

    assert done.returncode in (64, 78)
    assert b"email_subject_blackhole_block" in done.stderr
    assert b"not a valid Jinja2 template" in done.stderr
    assert settings_file.read_bytes() == before


def test_check_reports_subject_written_by_hand(settings_file):
    with settings_file.open("a", encoding="utf-8") as stream:
        stream.write("email_subject_blackhole_block = Ban {{ ip\n")

    done = fnm_spool(settings_file, "check")

    assert done.returncode == 78
    assert b"email_subject_blackhole_block" in done.stdout
    assert b"not a valid Jinja2 template" in done.stdout


def test_future_mtime_waits_only_grace(make_settings_file, smtp_server):
    """A file dated a day ahead (a writer's skewed clock) waits only the grace."""
    config = make_settings_file(incoming_grace_seconds=30)
    clock = FakeClock()
    processor = Processor(load(config), clock=clock)
    path = processor.spool.dir(State.INCOMING) / "future.json"
    path.write_bytes(b"{")
    age(path, -86400)

    processor.run_once()
    assert names(processor, State.INCOMING) == ["future.json"]

    clock.advance(31)
    processor.run_once()
    assert names(processor, State.INCOMING) == []
    assert len(names(processor, State.FAILED)) == 1


def test_deepest_value_shown_as_placeholder():
    """A value nested to the recursion limit prints a note, not an error.

    JSON this deep fails to parse here, so the value is built in Python.
    """
    value: list = []
    for _ in range(sys.getrecursionlimit()):
        value = [value]

    assert display(value) == "(nested too deeply to show; see the event file)"
    assert display({"packet": value}) == (
        "(nested too deeply to show; see the event file)"
    )


FULL_DISK_DRIVER = '''\
"""Run the processor on a spool that is a full tmpfs; print the states.

Usage: driver.py ROOT CONFIG SPOOL_DIR. Runs in a private mount namespace,
so the tmpfs is gone when this process exits. Exits 77 when tmpfs cannot
be mounted.
"""

import json
import logging
import os
import subprocess
import sys

root, config, spool_dir = sys.argv[1:4]
sys.path.insert(0, root)

from spool import settings as settings_module  # noqa: E402
from spool.processor import Processor  # noqa: E402
from spool.spooldir import State  # noqa: E402

mount = ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", spool_dir]
if subprocess.run(mount, capture_output=True).returncode != 0:
    sys.exit(77)
logging.basicConfig(level=logging.INFO)
processor = Processor(settings_module.load(config, required=True))
spool = processor.spool
for number in (1, 2, 3):
    event = {"ip": f"203.0.113.{number}", "action": "ban"}
    spool.enqueue(json.dumps(event).encode())


def report(stage):
    states = {state.value: sorted(spool.names(state)) for state in State}
    states["sent_files"] = sorted(os.listdir(spool.dir(State.SENT)))
    print(json.dumps({"stage": stage, **states}), flush=True)


filler = os.path.join(spool_dir, "filler")
fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, bytes(4096))
except OSError:
    pass
os.close(fd)

processor.run_once()
report("full")
processor.run_once()
report("still full")
cron = [sys.executable, os.path.join(root, "fnm_spool.py"), "-c", config]
done = subprocess.run(cron + ["run", "--once"], capture_output=True)
print(json.dumps({"stage": "cron", "returncode": done.returncode}), flush=True)
report("after cron")
os.unlink(filler)
processor.run_once()
report("space again")
'''


def test_full_disk_keeps_claims_until_space(settings_file, smtp_server, tmp_path):
    """A real full disk: the spool is a 512 KiB tmpfs, filled up.

    The tmpfs is mounted in a private mount namespace (unshare -m), so it
    is invisible outside the test's process tree. msmtp delivers, but no
    file can be written. The events must stay claimed in active/, not be
    sent again by the next pass or by a cron run beside it, and be moved
    to sent/ with their messages once there is space again.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    driver = tmp_path / "driver.py"
    driver.write_text(FULL_DISK_DRIVER)
    spool_dir = load(settings_file).spool_dir
    os.makedirs(spool_dir)

    done = subprocess.run(
        [unshare, "-m", "--propagation", "private", sys.executable, str(driver)]
        + [str(ROOT), str(settings_file), spool_dir],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode == 77 or "unshare failed" in done.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    stages = {}
    for line in done.stdout.splitlines():
        record = json.loads(line)
        stages[record.pop("stage")] = record

    assert len(smtp_server.wait_for(3)) == 3
    claimed = stages["full"]["active"]
    assert len(claimed) == 3
    assert stages["full"]["sent"] == []
    assert stages["still full"]["active"] == claimed
    assert stages["cron"]["returncode"] == 0
    assert stages["after cron"]["active"] == claimed
    assert stages["after cron"]["incoming"] == []
    assert stages["space again"]["active"] == []
    assert stages["space again"]["sent"] == claimed
    messages = [name.replace(".json", ".eml") for name in claimed]
    assert set(messages) <= set(stages["space again"]["sent_files"])
    assert "stays in active/: cannot move it: No space left on device" in (done.stderr)
    assert "Traceback" not in done.stderr
    assert len(smtp_server.messages) == 3


def test_digest_with_huge_integer_sent(make_settings_file, smtp_server):
    """One event that the digest cannot format must not hold back the others."""
    config = make_settings_file(digest_threshold=1)
    processor = Processor(load(config), clock=FakeClock())
    spool = processor.spool
    for number in (1, 2, 3):
        spool.enqueue(event_bytes(ip=f"203.0.113.{number}"))
    huge = {"total_incoming_pps": 10**400}
    spool.enqueue(event_bytes(ip="203.0.113.4", attack_details=details(**huge)))

    with time_limit(30):
        processor.run_once()

    (digest,) = smtp_server.wait_for(1)
    assert digest.parsed["X-FastNetMon-Digest"]
    assert len(names(processor, State.SENT)) == 4
    assert names(processor, State.INCOMING) == []


def test_digest_failure_fails_only_culprit(
    make_settings_file, smtp_server, monkeypatch
):
    """A digest that cannot be rendered fails only the event that breaks it.

    The fault is injected by wrapping Renderer.render_digest to raise for one
    marked event, because no known event breaks the built-in digest.
    """
    real_render_digest = Renderer.render_digest

    def render_digest(self, items, **kwargs):
        if any(event.get("ip") == "203.0.113.66" for _, event, _ in items):
            raise ValueError("injected digest failure")
        return real_render_digest(self, items, **kwargs)

    monkeypatch.setattr(Renderer, "render_digest", render_digest)
    config = make_settings_file(digest_threshold=1)
    processor = Processor(load(config), clock=FakeClock())
    spool = processor.spool
    for number in (1, 2, 3):
        spool.enqueue(event_bytes(ip=f"203.0.113.{number}"))
    culprit = spool.enqueue(event_bytes(ip="203.0.113.66"))

    with time_limit(30):
        processor.run_once()

    (digest,) = smtp_server.wait_for(1)
    assert digest.parsed["X-FastNetMon-Digest"]
    assert len(names(processor, State.SENT)) == 3
    assert names(processor, State.FAILED) == [f"{culprit}.json"]
    assert names(processor, State.INCOMING) == []
    reason = spool.path(State.FAILED, culprit, REASON_SUFFIX).read_text()
    assert "ValueError('injected digest failure')" in reason


def test_digest_failure_waits_a_window(make_settings_file, smtp_server, monkeypatch):
    """A digest that fails as a whole, but not row by row, waits a window.

    The fault is injected by wrapping Renderer.render_digest to raise for
    more than one event. Retrying at once would spin without end.
    """
    real_render_digest = Renderer.render_digest

    def render_digest(self, items, **kwargs):
        if len(items) > 1:
            raise ValueError("injected digest failure")
        return real_render_digest(self, items, **kwargs)

    monkeypatch.setattr(Renderer, "render_digest", render_digest)
    config = make_settings_file(digest_threshold=1, digest_window=60)
    clock = FakeClock()
    processor = Processor(load(config), clock=clock)
    for number in (1, 2, 3):
        processor.spool.enqueue(event_bytes(ip=f"203.0.113.{number}"))

    with time_limit(30):
        processor.run_once()

    assert smtp_server.messages == []
    assert len(names(processor, State.INCOMING)) == 3
    assert names(processor, State.FAILED) == []
    assert names(processor, State.ACTIVE) == []

    monkeypatch.undo()
    clock.advance(61)
    with time_limit(30):
        processor.run_once()

    assert len(smtp_server.wait_for(1)) == 1
    assert len(names(processor, State.SENT)) == 3
