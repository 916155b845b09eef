"""Alert storms: digests, the rate limit and the digest window, clock passed in."""

import email
import email.policy
import json
import os
from pathlib import Path

import pytest
from clock import FakeClock

from spool import settings as settings_module
from spool import storm
from spool.processor import Processor
from spool.spooldir import Spool, State

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "advanced-json"


def ban(number: int) -> bytes:
    event = json.loads((FIXTURES / "ban.json").read_bytes())
    event["ip"] = f"203.0.113.{number % 250 + 1}"
    event["attack_details"]["attack_uuid"] = f"uuid-{number}"
    event["attack_details"]["total_incoming_pps"] = 1000 + number
    return json.dumps(event).encode()


@pytest.fixture
def make_processor(make_settings_file):
    def build(clock, **overrides):
        config = make_settings_file(**overrides)
        return Processor(settings_module.load(config, required=True), clock=clock)

    return build


def enqueue_bans(processor: Processor, count: int, start: int = 0) -> None:
    spool = Spool(processor.settings.spool_dir)
    for number in range(start, start + count):
        spool.enqueue(ban(number))


def sent_count(processor: Processor) -> int:
    return processor.spool.count(State.SENT)


def test_below_threshold_one_message_each(make_processor, smtp_server):
    processor = make_processor(FakeClock())
    enqueue_bans(processor, 5)

    processor.run_once()

    assert len(smtp_server.wait_for(5)) == 5
    assert sent_count(processor) == 5


def test_storm_sends_one_digest(make_processor, smtp_server):
    processor = make_processor(FakeClock())
    enqueue_bans(processor, 300)

    processor.run_once()

    messages = smtp_server.wait_for(1)
    assert len(messages) == 1
    digest = messages[0].parsed
    assert digest["X-FastNetMon-Digest"]
    body = digest.get_body().get_content()
    assert "203.0.113.1 " in body or "203.0.113.1\t" in body or "203.0.113.1" in body
    assert sent_count(processor) == 300
    assert processor.spool.count(State.INCOMING) == 0


def test_digest_linked_beside_every_event(make_processor, smtp_server):
    processor = make_processor(FakeClock())
    enqueue_bans(processor, 40)

    processor.run_once()

    spool = processor.spool
    messages = [
        spool.path(State.SENT, name[:-5], ".eml") for name in spool.names(State.SENT)
    ]
    assert len(messages) == 40
    inodes = {os.stat(path).st_ino for path in messages}
    assert len(inodes) == 1
    stored = email.message_from_bytes(
        messages[0].read_bytes(), policy=email.policy.default
    )
    received = smtp_server.wait_for(1)[0].parsed
    assert stored["Message-ID"] == received["Message-ID"]


def test_next_digest_waits_for_window(make_processor, smtp_server):
    clock = FakeClock()
    processor = make_processor(clock, digest_window=60)
    enqueue_bans(processor, 50)
    processor.run_once()
    assert len(smtp_server.wait_for(1)) == 1

    clock.advance(10)
    enqueue_bans(processor, 30, start=50)
    processor.run_once()
    assert len(smtp_server.messages) == 1
    assert processor.spool.count(State.INCOMING) == 30

    clock.advance(51)
    processor.run_once()

    assert len(smtp_server.wait_for(2)) == 2
    assert sent_count(processor) == 80


def test_storm_ends_back_to_single_messages(make_processor, smtp_server):
    clock = FakeClock()
    processor = make_processor(clock, digest_window=60)
    enqueue_bans(processor, 50)
    processor.run_once()

    clock.advance(61)
    enqueue_bans(processor, 2, start=100)
    processor.run_once()

    messages = smtp_server.wait_for(3)
    assert [bool(m.parsed["X-FastNetMon-Digest"]) for m in messages] == [
        True,
        False,
        False,
    ]


def test_rate_limit_excess_waits_for_digest(make_processor, smtp_server):
    clock = FakeClock()
    processor = make_processor(clock, max_messages_per_minute=3, digest_threshold=10)
    enqueue_bans(processor, 5)

    processor.run_once()
    assert len(smtp_server.wait_for(3)) == 3
    assert processor.spool.count(State.INCOMING) == 2

    clock.advance(61)
    processor.run_once()

    messages = smtp_server.wait_for(4)
    assert len(messages) == 4
    assert messages[-1].parsed["X-FastNetMon-Digest"]
    assert sent_count(processor) == 5


def test_rate_limit_shared_through_spool(make_processor, smtp_server):
    clock = FakeClock()
    first = make_processor(clock, max_messages_per_minute=2, digest_threshold=10)
    enqueue_bans(first, 2)
    first.run_once()
    second = Processor(first.settings, clock=clock)
    enqueue_bans(second, 1, start=10)

    second.run_once()

    assert len(smtp_server.wait_for(2)) == 2
    assert second.spool.count(State.INCOMING) == 1


def test_storm_digest_deferred_when_server_down(make_processor, smtp_server):
    clock = FakeClock()
    processor = make_processor(clock)
    enqueue_bans(processor, 30)
    smtp_server.stop()

    processor.run_once()

    assert processor.spool.count(State.DEFERRED) == 30
    assert processor.spool.count(State.ACTIVE) == 0


@pytest.mark.parametrize(
    ("waiting", "arrivals", "expected"),
    [(0, 0, False), (10, 0, False), (11, 0, True), (0, 11, True), (3, 8, False)],
)
def test_in_storm_threshold(waiting, arrivals, expected):
    assert storm.in_storm(waiting, arrivals, 10) is expected


def test_rate_state_budget_frees_after_a_minute(tmp_path):
    rate = storm.RateState(tmp_path / "rate.json")
    for second in range(3):
        rate.record_send(1000.0 + second)

    assert rate.budget(1010.0, 3) == 0
    assert rate.budget(1060.5, 3) == 1
    assert rate.budget(1061.5, 3) == 2
    assert storm.RateState(tmp_path / "rate.json").budget(1010.0, 3) == 0
