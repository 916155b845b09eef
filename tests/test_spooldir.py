"""The spool directory's rename protocol, on real files and real locks."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from spool.errors import EventError
from spool.events import event_time, is_event_id
from spool.spooldir import LOCK_BUCKETS, Spool, State

EVENT = b'{"ip": "203.0.113.10", "action": "ban"}'


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool")


def test_enqueue_lands_complete_in_incoming(spool):
    event_id = spool.enqueue(EVENT)

    assert is_event_id(event_id)
    assert (spool.dir(State.INCOMING) / f"{event_id}.json").read_bytes() == EVENT
    assert os.listdir(spool.dir(State.TMP)) == []


def test_enqueue_names_sort_by_time(spool):
    ids = [spool.enqueue(EVENT) for _ in range(20)]

    assert sorted(ids) == ids
    assert spool.oldest(State.INCOMING, 3) == [f"{i}.json" for i in ids[:3]]
    assert event_time(ids[0]) is not None


def test_names_skip_writers_temporaries(spool):
    incoming = spool.dir(State.INCOMING)
    for name in (".hidden", "half.tmp", "plain.json", "with space"):
        (incoming / name).write_bytes(EVENT)

    assert sorted(spool.names(State.INCOMING)) == ["plain.json", "with space"]


def test_claim_moves_to_active_once(spool):
    event_id = spool.enqueue(EVENT)
    name = f"{event_id}.json"

    first = spool.claim(State.INCOMING, name)
    second = spool.claim(State.INCOMING, name)

    assert first is not None and first.event_id == event_id
    assert second is None
    assert spool.path(State.ACTIVE, event_id).exists()


def test_claim_gives_foreign_names_an_id(spool):
    (spool.dir(State.INCOMING) / "odd name\nwith newline").write_bytes(EVENT)

    claim = spool.claim(State.INCOMING, "odd name\nwith newline")

    assert claim is not None
    assert is_event_id(claim.event_id)
    assert claim.original_name == "odd name\nwith newline"
    assert spool.read(claim, 1024) == EVENT


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_read_rejects_non_regular_files(spool, tmp_path, kind):
    target = tmp_path / "secret"
    target.write_bytes(EVENT)
    path = spool.dir(State.INCOMING) / "x.json"
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    claim = spool.claim(State.INCOMING, "x.json")

    with pytest.raises(EventError, match="not a regular file"):
        spool.read(claim, 1024)


def test_read_rejects_oversized_file(spool):
    (spool.dir(State.INCOMING) / "big.json").write_bytes(b" " * 5000)
    claim = spool.claim(State.INCOMING, "big.json")

    with pytest.raises(EventError, match="over max_event_bytes"):
        spool.read(claim, 4096)


def test_finish_sent_keeps_message_beside_event(spool):
    claim = spool.claim(State.INCOMING, f"{spool.enqueue(EVENT)}.json")

    spool.finish_sent(claim, b"Subject: x\n\nbody\n")

    assert spool.path(State.SENT, claim.event_id).read_bytes() == EVENT
    message = spool.path(State.SENT, claim.event_id, ".eml").read_bytes()
    assert message == b"Subject: x\n\nbody\n"
    assert not claim.lock.is_locked


def test_defer_sets_next_attempt_as_mtime(spool):
    claim = spool.claim(State.INCOMING, f"{spool.enqueue(EVENT)}.json")
    later = time.time() + 300

    spool.defer(claim, {"attempts": [{"error": "x"}]}, later)

    assert spool.due_deferred(time.time(), 10) == []
    assert spool.due_deferred(later + 1, 10) == [f"{claim.event_id}.json"]
    assert spool.load_history(claim.event_id)["attempts"] == [{"error": "x"}]


def test_recover_returns_orphans_to_queue(spool):
    incoming_id = spool.enqueue(EVENT)
    os.rename(
        spool.path(State.INCOMING, incoming_id), spool.path(State.ACTIVE, incoming_id)
    )

    assert spool.recover() == [incoming_id]
    assert spool.path(State.INCOMING, incoming_id).exists()


def test_recover_returns_deferred_orphan_to_deferred(spool):
    claim = spool.claim(State.INCOMING, f"{spool.enqueue(EVENT)}.json")
    spool.defer(claim, {"attempts": []}, time.time())
    again = spool.claim(State.DEFERRED, f"{claim.event_id}.json")
    again.lock.release()

    assert spool.recover() == [claim.event_id]
    assert spool.path(State.DEFERRED, claim.event_id).exists()


def test_recover_leaves_claims_of_live_process(spool, tmp_path):
    event_id = spool.enqueue(EVENT)
    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import pathlib, time
                from spool.spooldir import Spool, State
                spool = Spool({str(spool.root)!r})
                claim = spool.claim(State.INCOMING, {event_id + ".json"!r})
                pathlib.Path({str(ready)!r}).write_text("x")
                time.sleep(30)
                """
            ),
        ],
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists()

        assert spool.recover() == []
        assert spool.path(State.ACTIVE, event_id).exists()
    finally:
        holder.kill()
        holder.wait()

    assert spool.recover() == [event_id]


def test_lock_files_stay_bounded(spool):
    for _ in range(300):
        claim = spool.claim(State.INCOMING, f"{spool.enqueue(EVENT)}.json")
        spool.finish_sent(claim, b"m")

    locks = os.listdir(spool.root / "locks")
    assert len(locks) <= LOCK_BUCKETS


def test_remove_stale_tmp_only_old_files(spool):
    old = spool.dir(State.TMP) / "old"
    new = spool.dir(State.TMP) / "new"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))

    assert spool.remove_stale_tmp(time.time()) == 1
    assert not old.exists()
    assert new.exists()
