"""Crash safety: SIGKILL at every spool step, random kills, an SMTP outage.

A launcher script runs fnm_spool's command line and sends SIGKILL to its own
process at the Nth call of os.rename, os.link, os.replace, os.fsync,
os.unlink or subprocess.Popen. The sweeps try N = 1, 2, 3, ... until a run
finishes without reaching N, then check where each event ended after a
normal ``run --once``, and which messages the SMTP server received.
"""

import collections
import dataclasses
import email
import email.policy
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clock import FakeClock

from spool import settings as settings_module
from spool.processor import Processor
from spool.spooldir import ATTEMPTS_SUFFIX, MESSAGE_SUFFIX, Spool, State

ROOT = Path(__file__).resolve().parent.parent
# Every event gets its own message: no digest, no rate limit, no held bans.
ONE_MESSAGE_PER_EVENT = {
    "digest_threshold": 100000,
    "max_messages_per_minute": 100000,
    "group_wait": 0,
}
# A sweep that counts fewer steps than this has not wrapped the calls.
MIN_STEPS_PER_EVENT = 5
# An upper bound on the steps of one run, so that a broken sweep ends.
MAX_STEPS = 200
# Fewer msmtp runs at once than events in a sweep, so that a processor that
# hands more messages to msmtp than it has workers is caught.
SWEEP_PARALLEL = 2
RANDOM_KILLS = 10
EVENT_STATES = (
    State.INCOMING,
    State.ACTIVE,
    State.DEFERRED,
    State.SENT,
    State.FAILED,
)

LAUNCHER = '''\
"""Run fnm_spool's command line and SIGKILL it at the Nth spool step.

Usage: launcher.py ROOT KILL_AT TRACE ARG...

The steps are calls of os.rename, os.link, os.replace, os.fsync, os.unlink
and subprocess.Popen, from any thread, counted from 1. Step KILL_AT is never
made: the process sends SIGKILL to itself instead. KILL_AT 0 kills nowhere.
TRACE gets "call N NAME ARGS" before a step, "done N NAME ARGS" after it,
"spawned PID" for each process started and "send PID EVENT" when a message
is written to msmtp's standard input.
"""

import os
import re
import signal
import subprocess
import sys
import threading

root, kill_at, trace_path, *command = sys.argv[1:]
kill_at = int(kill_at)
sys.path.insert(0, root)

import fnm_spool  # noqa: E402

trace = os.open(trace_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
counter = threading.Lock()
steps = 0


def note(text):
    os.write(trace, (text + "\\n").encode())


def describe(args):
    return " ".join(
        os.fspath(arg) if isinstance(arg, str | os.PathLike) else repr(arg)
        for arg in args
    )


def count(name, args):
    global steps
    # The lock orders the trace as the steps are counted.
    with counter:
        steps += 1
        if steps == kill_at:
            note(f"kill {steps} {name} {describe(args)}")
            os.kill(os.getpid(), signal.SIGKILL)
        note(f"call {steps} {name} {describe(args)}")
        return steps


def trace_sends(process):
    communicate = process.communicate

    def traced(input=None, timeout=None):
        found = re.search(rb"^X-FastNetMon-Event: *(\\S+)", input or b"", re.M)
        event_id = found.group(1).decode() if found else "-"
        note(f"send {process.pid} {event_id}")
        return communicate(input, timeout)

    process.communicate = traced
    return process


def wrap(owner, name):
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        number = count(name, args)
        result = real(*args, **kwargs)
        note(f"done {number} {name} {describe(args)}")
        if name == "Popen":
            note(f"spawned {result.pid}")
            result = trace_sends(result)
        return result

    setattr(owner, name, wrapper)


for function in ("rename", "link", "replace", "fsync", "unlink"):
    wrap(os, function)
wrap(subprocess, "Popen")
sys.exit(fnm_spool.main(command))
'''

WRITER = '''\
"""Enqueue COUNT bans into SPOOL over SECONDS and print each event id.

Usage: writer.py ROOT SPOOL COUNT SECONDS
"""

import json
import sys
import time

root, spool_dir, count, seconds = sys.argv[1:]
sys.path.insert(0, root)

from spool.spooldir import Spool  # noqa: E402

spool = Spool(spool_dir)
count, seconds = int(count), float(seconds)
started = time.monotonic()
for number in range(count):
    ip = f"10.{number // 65536}.{number // 256 % 256}.{number % 256}"
    event_id = spool.enqueue(json.dumps({"ip": ip, "action": "ban"}).encode())
    print(event_id, flush=True)
    delay = started + seconds * (number + 1) / count - time.monotonic()
    if delay > 0:
        time.sleep(delay)
'''


def ban(number: int) -> bytes:
    return json.dumps({"ip": f"203.0.113.{number}", "action": "ban"}).encode()


@dataclasses.dataclass
class Trace:
    """What a launcher run did before it was killed."""

    killed_at: str
    sends: dict[str, list[int]]
    moved_to_sent: set[str]
    spawned: list[int]

    @classmethod
    def read(cls, path: Path) -> "Trace":
        killed_at = ""
        sends = collections.defaultdict(list)
        moved_to_sent = set()
        spawned = []
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines:
            word, _, rest = line.partition(" ")
            if word == "kill":
                killed_at = rest
            elif word == "spawned":
                spawned.append(int(rest))
            elif word == "send":
                pid, event_id = rest.split()
                sends[event_id].append(int(pid))
            elif word == "done" and " rename " in line:
                target = Path(line.split()[-1])
                if target.parent.name == "sent" and target.suffix == ".json":
                    moved_to_sent.add(target.stem)
        return cls(killed_at, dict(sends), moved_to_sent, spawned)

    @property
    def in_flight(self) -> set[str]:
        """Events handed to msmtp whose move to ``sent/`` did not finish."""
        return set(self.sends) - self.moved_to_sent


class Launcher:
    """Runs fnm_spool's command line through the launcher script."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.script = directory / "launcher.py"
        self.script.write_text(LAUNCHER)

    def run_killed(self, kill_at: int, *args: str) -> tuple[int, Trace]:
        """Run the command line with SIGKILL at step ``kill_at``.

        Returns the exit status (-9 when killed) and the trace, after every
        msmtp that the run started has exited.
        """
        trace_path = self.directory / f"trace-{kill_at}"
        trace_path.unlink(missing_ok=True)
        done = subprocess.run(
            [sys.executable, str(self.script), str(ROOT), str(kill_at)]
            + [str(trace_path), *args],
            capture_output=True,
            timeout=60,
        )
        if done.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(
                f"launcher exited with {done.returncode}: {done.stderr.decode()}"
            )
        trace = Trace.read(trace_path)
        # msmtp runs in its own session, so it outlives the killed processor
        # and may still deliver. Copies are counted after it exits.
        wait_exited(trace.spawned, timeout=30)
        return done.returncode, trace


def fnm_spool(config: Path, *args: str, timeout: float = 60):
    """Run the command line as cron would, and return the finished process."""
    return subprocess.run(
        [sys.executable, str(ROOT / "fnm_spool.py"), "-c", str(config), *args],
        input=b"",
        capture_output=True,
        timeout=timeout,
    )


def run_once(config: Path) -> None:
    done = fnm_spool(config, "run", "--once")
    assert done.returncode == 0, done.stderr.decode()


def wait_exited(pids: list[int], timeout: float) -> None:
    """Wait until no process in ``pids`` runs (zombies count as exited)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _running(pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"process {pid} still runs after {timeout} s")
            time.sleep(0.02)


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return status.rpartition(")")[2].split()[0] != "Z"


def closed_port() -> int:
    """Return a loopback port that nothing listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_daemon(config: Path, log_path: Path) -> subprocess.Popen:
    """Start ``fnm_spool run``, its log appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "fnm_spool.py"), "-c", str(config), "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def start_writer(
    directory: Path, spool: Spool, count: int, seconds: float
) -> tuple[subprocess.Popen, Path]:
    """Start a writer of ``count`` bans and return it with the file of their ids."""
    script = directory / "writer.py"
    script.write_text(WRITER)
    ids = directory / "writer-ids"
    with open(ids, "wb") as output:
        writer = subprocess.Popen(
            [sys.executable, str(script), str(ROOT), str(spool.root)]
            + [str(count), str(seconds)],
            stdin=subprocess.DEVNULL,
            stdout=output,
        )
    return writer, ids


def wait_until(condition, timeout: float, description: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {description}"
            )
        time.sleep(0.05)


def drained(spool: Spool, total: int) -> bool:
    """Tell whether all ``total`` events are finished and nothing waits."""
    return (
        spool.count(State.INCOMING) == 0
        and spool.count(State.ACTIVE) == 0
        and spool.count(State.DEFERRED) == 0
        and spool.count(State.SENT) + spool.count(State.FAILED) >= total
    )


def settled_messages(server, quiet: float = 1.0, timeout: float = 20) -> list:
    """Return the messages once none arrived for ``quiet`` seconds.

    A killed processor leaves its msmtp running, and that copy may arrive
    after the spool is drained.
    """
    deadline = time.monotonic() + timeout
    count, since = len(server.messages), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"messages still arrive after {timeout} s")
        time.sleep(0.1)
        if len(server.messages) != count:
            count, since = len(server.messages), time.monotonic()
    return server.messages


def states_of(spool: Spool, event_id: str) -> list[str]:
    return [
        state.value for state in EVENT_STATES if spool.path(state, event_id).exists()
    ]


def copies_by_event(messages) -> dict[str, list]:
    copies = collections.defaultdict(list)
    for message in messages:
        copies[str(message.parsed["X-FastNetMon-Event"])].append(message)
    return copies


def stored_message_id(spool: Spool, event_id: str) -> str:
    raw = spool.path(State.SENT, event_id, MESSAGE_SUFFIX).read_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    return str(parsed["Message-ID"])


def check_one_state_each(spool: Spool, event_ids: list[str], step: str) -> None:
    for event_id in event_ids:
        where = states_of(spool, event_id)
        assert len(where) == 1, f"{step}: {event_id} in {where}"


def check_delivered(
    spool: Spool, event_ids: list[str], messages, in_flight: set[str], step: str
) -> None:
    """Check that each event was sent once, or twice if it was in flight."""
    for event_id in event_ids:
        assert states_of(spool, event_id) == ["sent"], f"{step}: {event_id}"
    assert os.listdir(spool.dir(State.ACTIVE)) == [], step
    assert os.listdir(spool.dir(State.DEFERRED)) == [], step

    copies = copies_by_event(messages)
    assert set(copies) == set(event_ids), step
    for event_id in event_ids:
        received = copies[event_id]
        assert len(received) <= 2, f"{step}: {event_id} received {len(received)}"
        if len(received) == 2:
            assert event_id in in_flight, f"{step}: {event_id} sent twice"
        message_ids = {str(copy.parsed["Message-ID"]) for copy in received}
        assert message_ids == {stored_message_id(spool, event_id)}, step


@pytest.fixture
def launcher(tmp_path) -> Launcher:
    return Launcher(tmp_path)


@pytest.fixture
def configs(tmp_path, make_settings_file) -> dict[str, Path]:
    """Settings for the SMTP server ("up") and for a closed port ("down")."""
    spool_dir = tmp_path / "spool"
    up = tmp_path / "up.conf"
    shutil.copy(
        make_settings_file(
            spool_dir=spool_dir, max_parallel=SWEEP_PARALLEL, **ONE_MESSAGE_PER_EVENT
        ),
        up,
    )
    down = tmp_path / "down.conf"
    shutil.copy(
        make_settings_file(
            spool_dir=spool_dir,
            email_notifications_port=closed_port(),
            msmtp_config=tmp_path / "etc" / "msmtp-down.conf",
            max_parallel=SWEEP_PARALLEL,
            **ONE_MESSAGE_PER_EVENT,
        ),
        down,
    )
    return {"up": up, "down": down}


@pytest.fixture
def processes():
    """A list of started processes; each one still running is killed at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_kill_at_each_delivery_step(launcher, configs, smtp_server, tmp_path):
    # One due event in deferred/ and two new ones in incoming/ cover both
    # claim paths. A retry also removes the event's attempt history.
    spool_dir = tmp_path / "spool"
    template = tmp_path / "template"
    spool = Spool(spool_dir)
    # Write msmtp.conf now, so that every run below takes the same steps.
    run_once(configs["up"])
    retried = spool.enqueue(ban(1))
    run_once(configs["down"])
    assert states_of(spool, retried) == ["deferred"]
    fresh = [spool.enqueue(ban(number)) for number in (2, 3)]
    event_ids = [retried, *fresh]
    shutil.copytree(spool_dir, template, symlinks=True)

    resent = 0
    for kill_at in range(1, MAX_STEPS + 1):
        shutil.rmtree(spool_dir)
        shutil.copytree(template, spool_dir, symlinks=True)
        due = time.time() - 1
        os.utime(spool.path(State.DEFERRED, retried, ATTEMPTS_SUFFIX), (due, due))
        smtp_server.clear()

        status, trace = launcher.run_killed(
            kill_at, "-c", str(configs["up"]), "run", "--once"
        )
        if status == 0:
            break
        step = f"killed at {trace.killed_at}"
        check_one_state_each(spool, event_ids, step)
        assert len(trace.in_flight) <= SWEEP_PARALLEL, step

        run_once(configs["up"])
        check_delivered(spool, event_ids, smtp_server.messages, trace.in_flight, step)
        resent += len(smtp_server.messages) - len(event_ids)
    else:
        pytest.fail(f"the run was still killed at step {MAX_STEPS}")

    assert kill_at > MIN_STEPS_PER_EVENT * len(event_ids)
    # A kill after msmtp returned and before the move to sent/ resends.
    assert resent > 0
    check_delivered(spool, event_ids, smtp_server.messages, set(), "no kill")


def test_kill_at_each_deferral_step(launcher, configs, smtp_server, tmp_path):
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    # Write msmtp.conf now, so that every run below takes the same steps.
    run_once(configs["down"])

    for kill_at in range(1, MAX_STEPS + 1):
        shutil.rmtree(spool_dir)
        spool.create()
        event_ids = [spool.enqueue(ban(number)) for number in (1, 2)]
        smtp_server.clear()

        status, trace = launcher.run_killed(
            kill_at, "-c", str(configs["down"]), "run", "--once"
        )
        if status == 0:
            break
        step = f"killed at {trace.killed_at}"
        check_one_state_each(spool, event_ids, step)

        run_once(configs["down"])
        for event_id in event_ids:
            assert states_of(spool, event_id) == ["deferred"], step
            attempts = spool.path(State.DEFERRED, event_id, ATTEMPTS_SUFFIX)
            history = json.loads(attempts.read_text())
            assert 1 <= len(history["attempts"]) <= 2, step
            due = time.time() - 1
            os.utime(attempts, (due, due))

        run_once(configs["up"])
        check_delivered(spool, event_ids, smtp_server.messages, set(), step)
    else:
        pytest.fail(f"the run was still killed at step {MAX_STEPS}")

    assert kill_at > MIN_STEPS_PER_EVENT * len(event_ids)
    for event_id in event_ids:
        assert states_of(spool, event_id) == ["deferred"]


def test_kill_at_each_enqueue_step(launcher, configs, smtp_server, tmp_path):
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    source = tmp_path / "event.json"
    source.write_bytes(ban(1))
    day_ago = time.time() - 86400 - 60

    for kill_at in range(1, MAX_STEPS + 1):
        shutil.rmtree(spool_dir, ignore_errors=True)
        spool.create()
        smtp_server.clear()

        status, trace = launcher.run_killed(
            kill_at, "-c", str(configs["up"]), "enqueue", str(source)
        )
        step = f"killed at {trace.killed_at}" if status else "no kill"
        incoming = sorted(spool.names(State.INCOMING))
        assert len(incoming) <= 1, step
        for name in incoming:
            assert (spool.dir(State.INCOMING) / name).read_bytes() == ban(1), step
        if status == 0:
            assert len(incoming) == 1, step
            assert os.listdir(spool.dir(State.TMP)) == [], step
            break

        # The killed writer's leftovers are made a day old. A young file
        # is a writer at work now, and it must stay.
        leftovers = os.listdir(spool.dir(State.TMP))
        for name in leftovers:
            os.utime(spool.dir(State.TMP) / name, (day_ago, day_ago))
        (spool.dir(State.TMP) / ".young.tmp").write_bytes(b"{")
        run_once(configs["up"])
        assert os.listdir(spool.dir(State.TMP)) == [".young.tmp"], step
        assert len(smtp_server.messages) == len(incoming), step
        assert spool.count(State.SENT) == len(incoming), step
    else:
        pytest.fail(f"enqueue was still killed at step {MAX_STEPS}")

    assert kill_at > 2


def test_outage_deferred_then_delivered(make_settings_file, smtp_server, tmp_path):
    config = make_settings_file(
        retry_min_seconds=30, retry_max_seconds=600, **ONE_MESSAGE_PER_EVENT
    )
    settings = settings_module.load(config, required=True)
    spool = Spool(settings.spool_dir)
    event_ids = [spool.enqueue(ban(number)) for number in (1, 2, 3)]
    smtp_server.stop()

    run_once(config)

    for event_id in event_ids:
        assert states_of(spool, event_id) == ["deferred"]
    clock = FakeClock()
    processor = Processor(settings, clock=clock)
    processor.start()
    clock.advance(31)
    processor.run_once()
    for event_id in event_ids:
        assert states_of(spool, event_id) == ["deferred"]
        history = spool.load_history(event_id)
        assert len(history["attempts"]) == 2
    assert smtp_server.messages == []

    # The second attempt waits twice retry_min_seconds.
    smtp_server.start()
    clock.advance(31)
    processor.run_once()
    assert smtp_server.messages == []
    clock.advance(30)
    processor.run_once()

    check_delivered(spool, event_ids, smtp_server.wait_for(3), set(), "outage")
    assert len(smtp_server.messages) == 3


@pytest.mark.parametrize(
    ("max_parallel", "event_count"), [(4, 240), (1, 40)], ids=["parallel", "serial"]
)
def test_random_kills_lose_nothing(
    max_parallel, event_count, make_settings_file, smtp_server, tmp_path, processes
):
    # Each kill may resend the messages between msmtp and their move to
    # sent/, and the processor keeps at most max_parallel of them.
    config = make_settings_file(max_parallel=max_parallel, **ONE_MESSAGE_PER_EVENT)
    settings = settings_module.load(config, required=True)
    spool = Spool(settings.spool_dir)
    seed = int(os.environ.get("FNM_SPOOL_TEST_SEED") or time.time_ns() % 2**32)
    print(f"random kills: seed {seed} (set FNM_SPOOL_TEST_SEED to repeat)")
    rng = random.Random(seed)

    writer, ids_file = start_writer(tmp_path, spool, event_count, 3.0)
    processes.append(writer)
    daemon = start_daemon(config, tmp_path / "daemon.log")
    processes.append(daemon)
    for _ in range(RANDOM_KILLS):
        time.sleep(rng.uniform(0.1, 0.7))
        daemon.kill()
        daemon.wait(timeout=10)
        daemon = start_daemon(config, tmp_path / "daemon.log")
        processes.append(daemon)
    assert writer.wait(timeout=30) == 0
    event_ids = ids_file.read_text().split()
    assert len(event_ids) == event_count
    wait_until(lambda: drained(spool, len(event_ids)), 90, "a drained spool")
    messages = settled_messages(smtp_server)

    copies = copies_by_event(messages)
    duplicates = sum(len(copies[event_id]) - 1 for event_id in copies)
    figures = {
        "seed": seed,
        "events": len(event_ids),
        "kills": RANDOM_KILLS,
        "messages": len(messages),
        "duplicates": duplicates,
        "max_parallel": settings.max_parallel,
    }
    print("random kills:", json.dumps(figures))
    (tmp_path / "random-kills.json").write_text(json.dumps(figures, indent=1))

    lost = [event_id for event_id in event_ids if event_id not in copies]
    assert lost == []
    assert set(copies) == set(event_ids)
    for event_id in event_ids:
        assert states_of(spool, event_id) == ["sent"]
        message_ids = {str(copy.parsed["Message-ID"]) for copy in copies[event_id]}
        assert message_ids == {stored_message_id(spool, event_id)}
    assert duplicates <= RANDOM_KILLS * max_parallel

    daemon.terminate()
    assert daemon.wait(timeout=15) == 0


def test_stop_returns_unsent_claims(
    make_settings_file, smtp_server, tmp_path, processes
):
    config = make_settings_file(**ONE_MESSAGE_PER_EVENT)
    settings = settings_module.load(config, required=True)
    spool = Spool(settings.spool_dir)
    event_ids = [spool.enqueue(ban(number)) for number in range(1, 61)]
    daemon = start_daemon(config, tmp_path / "daemon.log")
    processes.append(daemon)

    smtp_server.wait_for(1, timeout=30)
    daemon.send_signal(signal.SIGTERM)

    assert daemon.wait(timeout=30) == 0
    assert spool.count(State.ACTIVE) == 0
    sent_before_stop = spool.count(State.SENT)
    # The msmtp runs under way at SIGTERM finish, at most max_parallel of
    # them, and as many may have started before the signal arrived. The
    # other claimed events go back to incoming/ unsent.
    assert sent_before_stop <= 2 * settings.max_parallel
    assert spool.count(State.INCOMING) == len(event_ids) - sent_before_stop
    run_once(config)
    messages = smtp_server.wait_for(len(event_ids), timeout=30)
    check_delivered(spool, event_ids, messages, set(), "after SIGTERM")
    assert len(messages) == len(event_ids)


def test_recover_drops_finished_attempts(tmp_path):
    # A crash after the final move and before the history's removal leaves
    # these files. The history of an event still deferred must stay.
    spool = Spool(tmp_path / "spool")
    histories = {}
    for state in (State.SENT, State.FAILED, State.DEFERRED):
        event_id = spool.enqueue(ban(1))
        os.rename(spool.path(State.INCOMING, event_id), spool.path(state, event_id))
        history = spool.path(State.DEFERRED, event_id, ATTEMPTS_SUFFIX)
        history.write_text('{"attempts": []}')
        histories[state] = history

    assert spool.recover() == []

    assert not histories[State.SENT].exists()
    assert not histories[State.FAILED].exists()
    assert histories[State.DEFERRED].exists()
    assert spool.next_deferred_time() == histories[State.DEFERRED].stat().st_mtime
