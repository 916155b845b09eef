"""Delivery throughput, and the cost per event that is fnm_spool's own.

Three contenders deliver the same messages to the same server through the
same msmtp with the same msmtp.conf:

* ``fnm_spool run --once`` over a spool of queued events (it renders each
  message, hands it to msmtp, up to ``max_parallel`` at once, and moves the
  event to ``sent/``);
* Debian's msmtpq: the messages are queued while the server is down, then
  the queue is flushed with ``msmtp-queue -r``;
* a shell loop running ``msmtp -t`` once per message file.

The shell loop and msmtpq send the messages that fnm_spool rendered.
"""

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from harness import (
    NO_DIGEST,
    STDIN_ONLY_SCRIPT,
    ChildRun,
    TimedServer,
    count_files,
    distinct_message_ids,
    fill_incoming,
    fnm_spool,
    run_child,
    spool_counts,
    write_script,
    write_settings,
)

MSMTPQ_DIR = Path("/usr/libexec/msmtp/msmtpq")
NOOP_TRANSPORT = Path(__file__).resolve().parent / "noop_transport.py"


def measure_throughput(root: Path, server: TimedServer, count: int) -> dict:
    """Deliver ``count`` messages with each contender and return the figures."""
    fnm = _run_fnm_spool(root / "fnm_spool", server, count)
    messages = root / "messages"
    messages.mkdir()
    for path in (root / "fnm_spool" / "spool" / "sent").glob("*.eml"):
        shutil.copy(path, messages)
    msmtp_config = root / "fnm_spool" / "etc" / "msmtp.conf"

    loop = _run_shell_loop(root / "loop", server, messages, msmtp_config, count)
    msmtpq = _run_msmtpq(root / "msmtpq", server, messages, msmtp_config, count)
    shutil.rmtree(messages)
    return {
        "messages": count,
        "fnm_spool": fnm,
        "msmtp_loop": loop,
        "msmtpq": msmtpq,
        "ratio_fnm_spool_to_msmtpq": _ratio(fnm, msmtpq),
        "ratio_fnm_spool_to_msmtp_loop": _ratio(fnm, loop),
    }


def _run_fnm_spool(root: Path, server: TimedServer, count: int) -> dict:
    config = write_settings(root, server, **NO_DIGEST)
    fill_incoming(root / "spool", count)
    server.clear()
    run = run_child(fnm_spool(config, "run", "--once"), log_path=root / "run.log")
    figures = _delivery_figures(run, server, count)
    figures["spool_after"] = spool_counts(root / "spool")
    return figures


def _run_shell_loop(
    root: Path, server: TimedServer, messages: Path, msmtp_config: Path, count: int
) -> dict:
    root.mkdir()
    script = (
        f"for f in {shlex.quote(str(messages))}/*.eml; do "
        f'msmtp -t -a default --file={shlex.quote(str(msmtp_config))} < "$f"; done'
    )
    server.clear()
    run = run_child(["/bin/sh", "-c", script], log_path=root / "run.log")
    return _delivery_figures(run, server, count)


def _run_msmtpq(
    root: Path, server: TimedServer, messages: Path, msmtp_config: Path, count: int
) -> dict:
    """Queue every message while the server is down, then flush the queue.

    msmtpq sends at once when it can, so the server is stopped while the
    messages are queued: msmtp's connection is refused and msmtpq keeps each
    message. EMAIL_CONN_TEST=x turns off msmtpq's own connection test, which
    would ping a host on the Internet.
    """
    root.mkdir()
    queue = root / "queue"
    variables = {
        "MSMTPQ_Q": str(queue),
        "MSMTPQ_LOG": str(root / "msmtpq.log"),
        "EMAIL_CONN_TEST": "x",
    }
    env = {**os.environ, **variables, "PATH": f"{MSMTPQ_DIR}:{os.environ['PATH']}"}
    shown_variables = {key: shlex.quote(value) for key, value in variables.items()}
    shown_variables["PATH"] = f'{MSMTPQ_DIR}:"$PATH"'
    script = (
        f"for f in {shlex.quote(str(messages))}/*.eml; do "
        f'msmtpq --file={shlex.quote(str(msmtp_config))} -t -a default < "$f"; done'
    )

    server.stop()
    try:
        queued = run_child(
            ["/bin/sh", "-c", script],
            env=env,
            shown_env=shown_variables,
            log_path=root / "queue.log",
        )
    finally:
        server.start()
    in_queue = count_files(queue, ".mail")

    server.clear()
    flush = run_child(
        ["msmtp-queue", "-r"],
        env=env,
        shown_env=shown_variables,
        log_path=root / "flush.log",
    )
    figures = _delivery_figures(flush, server, count)
    figures["queue"] = {
        "command": queued.command,
        "seconds": round(queued.seconds, 3),
        "exit_status": queued.exit_status,
        "messages_queued": in_queue,
    }
    figures["left_in_queue"] = count_files(queue, ".mail")
    figures["queue_and_flush_messages_per_second"] = round(
        count / (queued.seconds + flush.seconds), 2
    )
    return figures


def _delivery_figures(run: ChildRun, server: TimedServer, count: int) -> dict:
    delivered = distinct_message_ids(server)
    return {
        "command": run.command,
        "exit_status": run.exit_status,
        "seconds": round(run.seconds, 3),
        "messages_per_second": round(count / run.seconds, 2),
        "received": len(server.messages),
        "delivered_distinct": delivered,
        "all_delivered": delivered == count,
        "error": run.stderr_tail,
    }


def _ratio(first: dict, second: dict) -> float:
    return round(first["messages_per_second"] / second["messages_per_second"], 2)


def measure_overhead(root: Path, server: TimedServer, count: int) -> dict:
    """Split the time per event into fnm_spool's own cost and msmtp's start.

    ``stdin_only``: ``run --once`` with msmtp_path replaced by a script that
    reads the message and exits 0, so each event costs a process start but
    no SMTP. ``python_noop``: the processor with a transport function that
    sends nothing, timed inside the process, so neither the interpreter's
    start nor any child process is counted. ``startup``: ``run --once`` over
    an empty spool.
    """
    script = write_script(root / "bin" / "msmtp-stdin-only", STDIN_ONLY_SCRIPT)
    results = {"messages": count, "transport_script": STDIN_ONLY_SCRIPT}

    stdin_only = root / "stdin-only"
    config = write_settings(stdin_only, server, msmtp_path=script, **NO_DIGEST)
    fill_incoming(stdin_only / "spool", count)
    run = run_child(fnm_spool(config, "run", "--once"), log_path=stdin_only / "run.log")
    results["stdin_only"] = _per_event(run, count, stdin_only / "spool")

    empty = root / "empty"
    config = write_settings(empty, server, msmtp_path=script, **NO_DIGEST)
    run = run_child(fnm_spool(config, "run", "--once"), log_path=empty / "run.log")
    results["startup"] = {"command": run.command, "seconds": round(run.seconds, 3)}

    noop = root / "python-noop"
    config = write_settings(noop, server, **NO_DIGEST)
    fill_incoming(noop / "spool", count)
    results["python_noop"] = _noop_pass(noop, config, count)
    return results


def _per_event(run: ChildRun, count: int, spool_dir: Path) -> dict:
    return {
        "command": run.command,
        "exit_status": run.exit_status,
        "seconds": round(run.seconds, 3),
        "ms_per_event": round(run.seconds / count * 1000, 3),
        "spool_after": spool_counts(spool_dir),
    }


def _noop_pass(root: Path, config: Path, count: int) -> dict:
    output = root / "noop.json"
    argv = [sys.executable, str(NOOP_TRANSPORT), str(config), str(output)]
    run = run_child(argv, log_path=root / "run.log")
    figures = {"command": run.command, "exit_status": run.exit_status}
    if run.exit_status == 0:
        timed = json.loads(output.read_text())
        figures.update(timed)
        figures["ms_per_event"] = round(timed["seconds"] / count * 1000, 3)
        figures["cpu_ms_per_event"] = round(timed["cpu_seconds"] / count * 1000, 3)
        figures["breakdown_ms_per_event"] = {
            step: round(seconds / count * 1000, 3)
            for step, seconds in timed["breakdown_seconds"].items()
        }
    else:
        figures["error"] = run.stderr_tail
    figures["spool_after"] = spool_counts(root / "spool")
    return figures
