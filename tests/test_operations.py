"""Tests of the operator commands: status, list, replay and render."""

import datetime as dt
import email
import email.policy
import fcntl
import json
import logging
import os

import pytest

from spool import history, operations
from spool.errors import EventError, SpoolBusyError, UsageError
from spool.settings import Settings
from spool.spooldir import Spool, State
from spool.threads import ThreadIndex
from spool.transport import Delivery

T0 = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
BAN = {"action": "ban", "ip": "192.0.2.10", "attack_details": {"attack_type": "syn"}}
UNBAN = {"action": "unban", "ip": "192.0.2.10"}


@pytest.fixture
def spool(tmp_path) -> Spool:
    return Spool(tmp_path / "spool")


def enqueue(spool: Spool, event: dict, seconds: float = 0) -> str:
    return spool.enqueue(json.dumps(event).encode(), T0 + dt.timedelta(seconds=seconds))


def epoch(seconds: float) -> float:
    return (T0 + dt.timedelta(seconds=seconds)).timestamp()


def fail(spool: Spool, event_id: str, reason: str = "rejected", attempts=()) -> None:
    """Claim an event from incoming/ and fail it as the processor would."""
    claim = spool.claim(State.INCOMING, event_id + ".json")
    record = {"queued_at": T0.isoformat(), "attempts": list(attempts)}
    text = history.reason_text(claim, reason, None, record, epoch(600), "")
    spool.finish_failed(claim, text)


def attempt_record(error: str) -> dict:
    result = Delivery("temporary", 75, f"msmtp: {error}", 0.5)
    return history.attempt(epoch(30), result, "")


def defer(spool: Spool, event_id: str, errors: list[str]) -> None:
    claim = spool.claim(State.INCOMING, event_id + ".json")
    record = {
        "queued_at": T0.isoformat(),
        "attempts": [attempt_record(error) for error in errors],
    }
    spool.defer(claim, record, epoch(900))


def rows_by_id(spool: Spool, state: State | None = None) -> dict:
    return {row["id"]: row for row in operations.list_events(spool, state)}


# Status


def test_status_counts_and_oldest_age(spool):
    first = enqueue(spool, BAN, 0)
    enqueue(spool, BAN, 60)
    deferred = enqueue(spool, BAN, 120)
    failed = enqueue(spool, BAN, 180)
    sent = enqueue(spool, UNBAN, 240)
    defer(spool, deferred, ["connection refused"])
    fail(spool, failed)
    # Moved by hand, as an operator might, with its message beside it.
    os.rename(spool.path(State.INCOMING, sent), spool.path(State.SENT, sent))
    spool.path(State.SENT, sent, ".eml").write_bytes(b"Subject: x\n\nbody\n")
    claimed = spool.claim(State.INCOMING, first + ".json")

    rows = {row["state"]: row for row in operations.status(spool, epoch(3600))}

    assert [row["state"] for row in operations.status(spool, epoch(0))] == [
        "incoming",
        "active",
        "deferred",
        "sent",
        "failed",
        "tmp",
    ]
    assert rows["incoming"]["events"] == 1
    assert rows["incoming"]["oldest_age_seconds"] == pytest.approx(3540)
    assert rows["active"]["events"] == 1
    assert rows["active"]["oldest_age_seconds"] == pytest.approx(3600)
    assert rows["deferred"]["events"] == 1
    assert rows["deferred"]["oldest_age_seconds"] == pytest.approx(3480)
    assert rows["failed"]["events"] == 1
    assert rows["sent"]["events"] == 1
    assert rows["sent"]["oldest_age_seconds"] == pytest.approx(3360)
    assert rows["tmp"]["events"] == 0
    assert rows["tmp"]["oldest_age_seconds"] is None
    claimed.lock.release()


def test_status_mtime_of_foreign_names(spool):
    copied = spool.dir(State.INCOMING) / "copied-by-hand.json"
    copied.write_text(json.dumps(BAN))
    os.utime(copied, (epoch(100), epoch(100)))
    leftover = spool.dir(State.TMP) / ".half-written.tmp"
    leftover.write_bytes(b"{")
    os.utime(leftover, (epoch(0), epoch(0)))
    # Writers' temporary files in incoming/ are not events yet.
    (spool.dir(State.INCOMING) / ".copy.tmp").write_bytes(b"{")

    rows = {row["state"]: row for row in operations.status(spool, epoch(400))}

    assert rows["incoming"]["events"] == 1
    assert rows["incoming"]["oldest_age_seconds"] == pytest.approx(300)
    assert rows["tmp"]["events"] == 1
    assert rows["tmp"]["oldest_age_seconds"] == pytest.approx(400)
    assert rows["failed"]["oldest_age_seconds"] is None


def test_status_counts_no_companion_files(spool):
    event_id = enqueue(spool, BAN)
    fail(spool, event_id)
    defer(spool, enqueue(spool, BAN, 1), ["timed out"])

    rows = {row["state"]: row for row in operations.status(spool, epoch(10))}

    assert rows["failed"]["events"] == 1
    assert rows["deferred"]["events"] == 1


def test_status_age_never_negative(spool):
    enqueue(spool, BAN, 600)

    rows = {row["state"]: row for row in operations.status(spool, epoch(0))}

    assert rows["incoming"]["oldest_age_seconds"] == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (5.9, "5 s"),
        (59, "59 s"),
        (180, "3 min"),
        (3599, "59 min"),
        (7200, "2 h"),
        (7500, "2 h 5 min"),
        (3 * 86400, "3 d"),
        (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"),
    ],
)
def test_format_age(seconds, text):
    assert operations.format_age(seconds) == text


def test_format_status_aligns_columns():
    rows = [
        {"state": "incoming", "events": 12345, "oldest_age_seconds": 5},
        {"state": "tmp", "events": 0, "oldest_age_seconds": None},
    ]

    lines = operations.format_status(rows).splitlines()

    assert lines == [
        "state     events  oldest",
        "incoming   12345  5 s",
        "tmp            0  -",
    ]


# Listing


def test_list_rows_for_each_state(spool):
    waiting = enqueue(spool, BAN, 0)
    active = enqueue(spool, UNBAN, 1)
    deferred = enqueue(spool, BAN, 2)
    failed = enqueue(spool, BAN, 3)
    sent = enqueue(spool, {"action": "attack_details", "ip": "2001:db8::1"}, 4)
    defer(spool, deferred, ["cannot connect", "connection refused"])
    fail(
        spool,
        failed,
        "msmtp exit status 77: authentication failed",
        [attempt_record("auth failed")] * 3,
    )
    claim = spool.claim(State.INCOMING, sent + ".json")
    spool.finish_sent(claim, b"Message-ID: <x@example.com>\n\nbody\n")
    claimed = spool.claim(State.INCOMING, active + ".json")

    rows = rows_by_id(spool)

    assert set(rows) == {waiting, active, deferred, sent, failed}
    assert rows[waiting]["state"] == "incoming"
    assert rows[waiting]["time"] == T0
    assert rows[waiting]["action"] == "ban"
    assert rows[waiting]["ip"] == "192.0.2.10"
    assert rows[waiting]["attempts"] is None
    assert rows[waiting]["error"] is None
    assert rows[active]["state"] == "active"
    assert rows[active]["action"] == "unban"
    assert rows[deferred]["state"] == "deferred"
    assert rows[deferred]["attempts"] == 2
    assert "connection refused" in rows[deferred]["error"]
    assert rows[failed]["state"] == "failed"
    assert rows[failed]["attempts"] == 3
    assert rows[failed]["error"] == "msmtp exit status 77: authentication failed"
    assert rows[sent]["state"] == "sent"
    assert rows[sent]["ip"] == "2001:db8::1"
    assert rows[sent]["digest"] is None
    claimed.lock.release()


def test_list_one_state_only(spool):
    enqueue(spool, BAN, 0)
    failed = enqueue(spool, BAN, 1)
    fail(spool, failed)

    rows = list(operations.list_events(spool, State.FAILED))

    assert [row["id"] for row in rows] == [failed]


def test_list_rejects_tmp(spool):
    with pytest.raises(UsageError, match="tmp/"):
        list(operations.list_events(spool, State.TMP))


def test_list_digest_of_sent_events(spool):
    by_header = enqueue(spool, BAN, 0)
    by_message_id = enqueue(spool, BAN, 1)
    digest_message = (
        b"Message-ID: <digest-20240501T120000.000000Z-1-0a0b0c0d@example.com>\n"
        b"X-FastNetMon-Digest: digest-20240501T120000.000000Z-1-0a0b0c0d\n\nrows\n"
    )
    old_style = b"Message-ID: <digest-20240501T120100.000000Z-1-00000001@host>\n\n.\n"
    spool.finish_sent(spool.claim(State.INCOMING, by_header + ".json"), digest_message)
    spool.finish_sent(spool.claim(State.INCOMING, by_message_id + ".json"), old_style)

    rows = rows_by_id(spool, State.SENT)

    assert rows[by_header]["digest"] == "digest-20240501T120000.000000Z-1-0a0b0c0d"
    assert rows[by_message_id]["digest"] == "digest-20240501T120100.000000Z-1-00000001"
    assert "digest digest-20240501T120000" in operations.format_list(rows.values())


def test_list_tolerates_unreadable_events(spool, tmp_path):
    invalid = spool.dir(State.INCOMING) / "truncated.json"
    invalid.write_bytes(b'{"action": "ban", "ip": "192.0.2.7", ')
    no_ip = enqueue(spool, {"action": "ban"}, 1)
    os.mkfifo(spool.dir(State.INCOMING) / "pipe.json")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(BAN))
    linked = spool.path(State.FAILED, "20240501T120000.000000Z-1-0000abcd")
    linked.symlink_to(outside)

    rows = rows_by_id(spool)

    assert rows["truncated.json"]["action"] == "ban"
    assert rows["truncated.json"]["ip"] == "192.0.2.7"
    assert "invalid JSON" in rows["truncated.json"]["error"]
    assert rows[no_ip]["ip"] == "?"
    assert "without 'ip'" in rows[no_ip]["error"]
    assert rows["pipe.json"]["action"] == "?"
    assert "FIFO" in rows["pipe.json"]["error"]
    symlink_row = rows["20240501T120000.000000Z-1-0000abcd"]
    assert symlink_row["action"] == "?"
    assert "symbolic link" in symlink_row["error"]


def test_list_large_event_reads_start(spool):
    dump = ["x" * 100] * 2000
    early = enqueue(spool, {"action": "ban", "ip": "192.0.2.1", "packet_dump": dump})
    late = enqueue(spool, {"packet_dump": dump, "action": "ban", "ip": "192.0.2.2"}, 1)
    assert spool.path(State.INCOMING, early).stat().st_size > 64 * 1024

    rows = rows_by_id(spool)

    assert rows[early]["action"] == "ban"
    assert rows[early]["ip"] == "192.0.2.1"
    assert rows[early]["error"] is None
    assert rows[late]["action"] == "?"


def test_list_hostgroup_event_ip(spool):
    event_id = enqueue(spool, {"action": "ban", "alert_scope": "hostgroup"})

    rows = rows_by_id(spool)

    assert rows[event_id]["ip"] == "-"


def test_format_list_one_line_per_event(spool):
    enqueue(spool, BAN, 0)
    enqueue(spool, {"action": "attack\nstatus", "ip": "192.0.2.9"}, 1)

    lines = operations.format_list(operations.list_events(spool)).splitlines()
    ban = [line for line in lines if " ban " in line]
    escaped = [line for line in lines if "attack\\nstatus" in line]

    assert len(lines) == 3
    assert lines[0].split()[:4] == ["time", "(UTC)", "state", "id"]
    assert len(ban) == 1
    assert ban[0].startswith("2024-05-01 12:00:00  incoming  ")
    assert len(escaped) == 1


# Replay


def test_replay_one_event(spool, caplog):
    event_id = enqueue(spool, BAN)
    other = enqueue(spool, BAN, 1)
    fail(spool, event_id, "expired after 1 attempt")
    fail(spool, other)
    # An attempt history left behind resets on replay.
    spool.path(State.DEFERRED, event_id, ".attempts").write_text('{"attempts": [{}]}')
    caplog.set_level(logging.INFO, logger="spool.operations")

    replayed = operations.replay(spool, [event_id])

    assert replayed == [event_id]
    assert spool.path(State.INCOMING, event_id).exists()
    assert not spool.path(State.FAILED, event_id).exists()
    assert not spool.path(State.FAILED, event_id, ".reason").exists()
    assert not spool.path(State.DEFERRED, event_id, ".attempts").exists()
    assert spool.path(State.FAILED, other).exists()
    assert f"replayed {event_id} to incoming/" in caplog.text
    assert "expired after 1 attempt" in caplog.text


def test_replayed_event_claimable_again(spool):
    event_id = enqueue(spool, BAN)
    defer(spool, event_id, ["timed out", "timed out"])
    spool.finish_failed(spool.claim(State.DEFERRED, event_id + ".json"), "expired")
    spool.path(State.DEFERRED, event_id, ".attempts").write_text(
        json.dumps({"attempts": [attempt_record("timed out")]})
    )

    operations.replay(spool, [event_id + ".json"])
    claim = spool.claim(State.INCOMING, event_id + ".json")

    assert claim is not None
    assert claim.event_id == event_id
    assert spool.load_history(event_id) == {"attempts": []}
    claim.lock.release()


def test_replay_all(spool, caplog):
    first = enqueue(spool, BAN, 0)
    second = enqueue(spool, UNBAN, 1)
    fail(spool, first)
    fail(spool, second)
    fifo = spool.path(State.FAILED, "20240501T120500.000000Z-1-0000fifo")
    os.mkfifo(fifo)

    replayed = operations.replay(spool, None)

    assert sorted(replayed) == sorted([first, second])
    assert spool.count(State.INCOMING) == 2
    assert spool.count(State.FAILED) == 1
    assert fifo.exists()
    assert "FIFO, not a regular file" in caplog.text


def test_replay_all_with_nothing_failed(spool):
    assert operations.replay(spool, None) == []


def test_replay_unknown_id(spool):
    known = enqueue(spool, BAN)
    fail(spool, known)

    with pytest.raises(UsageError) as raised:
        operations.replay(spool, [known, "20240501T000000.000000Z-1-deadbeef"])

    assert "20240501T000000.000000Z-1-deadbeef" in str(raised.value)
    assert "fnm_spool list failed" in str(raised.value)
    assert spool.path(State.FAILED, known).exists()


@pytest.mark.parametrize("given", ["../incoming/x", ".hidden", ""])
def test_replay_invalid_id(spool, given):
    with pytest.raises(UsageError, match="invalid event id"):
        operations.replay(spool, [given])


def test_replay_rejects_symlink(spool, tmp_path):
    outside = tmp_path / "event.json"
    outside.write_text(json.dumps(BAN))
    event_id = "20240501T120000.000000Z-1-0000abcd"
    spool.path(State.FAILED, event_id).symlink_to(outside)

    with pytest.raises(UsageError, match="symbolic link"):
        operations.replay(spool, [event_id])

    assert spool.path(State.FAILED, event_id).is_symlink()


def test_replay_waits_for_busy_lock(spool):
    busy = enqueue(spool, BAN)
    fail(spool, busy)
    # An open file description of its own conflicts with filelock's flock,
    # as another fnm_spool process holding the claim lock would.
    lock_path = spool.lock_for(busy).lock_file
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(SpoolBusyError, match=busy):
            operations.replay(spool, [busy])
    finally:
        os.close(fd)

    assert spool.path(State.FAILED, busy).exists()
    assert operations.replay(spool, [busy]) == [busy]


def test_replay_name_taken_in_incoming(spool):
    event_id = enqueue(spool, BAN)
    fail(spool, event_id)
    spool.path(State.INCOMING, event_id).write_text(json.dumps(UNBAN))

    with pytest.raises(SpoolBusyError):
        operations.replay(spool, [event_id])

    assert spool.path(State.FAILED, event_id).exists()
    assert json.loads(spool.path(State.INCOMING, event_id).read_text()) == UNBAN


# Render


@pytest.fixture
def renderer_module():
    try:
        import spool.render as render
    except ImportError as error:
        pytest.skip(f"spool.render cannot be imported yet: {error}")
    return render


@pytest.fixture
def settings(spool) -> Settings:
    return Settings(
        email_notifications_from="fnm@example.com",
        email_notifications_recipients=("noc@example.com",),
        spool_dir=str(spool.root),
        timezone="UTC",
    )


def parse(message: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(message, policy=email.policy.default)


def test_render_event_by_id(renderer_module, spool, settings):
    event_id = enqueue(spool, BAN)

    message = parse(operations.render_event(settings, spool, event_id))

    assert "192.0.2.10" in message["Subject"]
    assert message["To"] == "noc@example.com"
    assert message["Message-ID"].startswith(f"<{event_id}.")
    assert message["X-FastNetMon-Event"] == event_id
    assert message.get_content_type() == "text/plain"
    assert "192.0.2.10" in message.get_content()


def test_render_event_in_any_state(renderer_module, spool, settings):
    event_id = enqueue(spool, BAN)
    fail(spool, event_id)

    message = parse(operations.render_event(settings, spool, event_id + ".json"))

    assert message["X-FastNetMon-Event"] == event_id


def test_render_event_from_path(renderer_module, spool, settings, tmp_path):
    path = tmp_path / "event.json"
    path.write_text(json.dumps(BAN))

    message = parse(operations.render_event(settings, spool, str(path)))

    assert "192.0.2.10" in message["Subject"]
    assert message["Message-ID"]


def test_render_unban_joins_ban_thread(renderer_module, spool, settings):
    ban_id = enqueue(spool, BAN, 0)
    ban_message = operations.render_event(settings, spool, ban_id)
    ThreadIndex(spool.root / "threads").record_sent(BAN, ban_message, T0)
    unban_id = enqueue(spool, UNBAN, 192)

    message = parse(operations.render_event(settings, spool, unban_id))

    assert message["In-Reply-To"] == parse(ban_message)["Message-ID"]
    assert "3 min" in message.get_content()


def test_render_unknown_event(spool, settings):
    with pytest.raises(UsageError, match="20240501T000000.000000Z-1-deadbeef"):
        operations.render_event(settings, spool, "20240501T000000.000000Z-1-deadbeef")


def test_render_rejects_symlink_and_large_file(spool, settings, tmp_path):
    target = tmp_path / "event.json"
    target.write_text(json.dumps(BAN))
    link = tmp_path / "link.json"
    link.symlink_to(target)
    small = settings.with_overrides(max_event_bytes=10)

    with pytest.raises(EventError, match="symbolic link"):
        operations.render_event(settings, spool, str(link))
    with pytest.raises(EventError, match="max_event_bytes"):
        operations.render_event(small, spool, str(target))


def test_render_invalid_event(spool, settings):
    path = spool.dir(State.INCOMING) / "broken.json"
    path.write_bytes(b"[1, 2]")

    with pytest.raises(EventError, match="expected a JSON object"):
        operations.render_event(settings, spool, "broken.json")
