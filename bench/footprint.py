"""Peak memory of ``run --once`` by spool size, and the cost of ``notify``.

FastNetMon starts ``fnm_spool notify`` once per event, so its wall time is
mostly the interpreter's start and the imports; ``-X importtime`` shows
which imports count.
"""

import configparser
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    NO_DIGEST,
    REPOSITORY,
    STDIN_ONLY_SCRIPT,
    TimedServer,
    count_files,
    fill_incoming,
    fnm_spool,
    run_child,
    shell_command,
    spool_counts,
    write_script,
    write_settings,
)

CAPTURES = REPOSITORY / "tests" / "fixtures" / "fastnetmon-1.2.4"
# Modes of the memory runs: every event its own message, or storm settings
# at their defaults so that a digest is built. group_wait is 0 in both, so
# that run --once does not wait for attack details that never come.
# A run still going after this many seconds is killed; its peak so far counts.
MEMORY_RUN_TIMEOUT = 1800
MEMORY_MODES = {
    "messages": {**NO_DIGEST},
    "digest": {"group_wait": 0},
}


def measure_memory(root: Path, server: TimedServer, sizes: list[int]) -> dict:
    """Run ``run --once`` over spools of each size, in each mode.

    The transport is a script that only reads the message, so the runs
    measure fnm_spool, not SMTP. Each spool is removed after its run.
    """
    script = write_script(root / "bin" / "msmtp-stdin-only", STDIN_ONLY_SCRIPT)
    results = {"transport_script": STDIN_ONLY_SCRIPT, "runs": []}
    for mode, overrides in MEMORY_MODES.items():
        for size in sizes:
            directory = root / f"{mode}-{size}"
            config = write_settings(directory, server, msmtp_path=script, **overrides)
            started = time.perf_counter()
            fill_incoming(directory / "spool", size)
            filled = time.perf_counter() - started

            run = run_child(
                fnm_spool(config, "run", "--once"),
                log_path=directory / "run.log",
                timeout=MEMORY_RUN_TIMEOUT,
            )
            sent = directory / "spool" / "sent"
            messages = len({entry.stat().st_ino for entry in sent.glob("*.eml")})
            results["runs"].append(
                {
                    "mode": mode,
                    "events": size,
                    "command": run.command,
                    "exit_status": run.exit_status,
                    "timed_out": run.timed_out,
                    "seconds": round(run.seconds, 2),
                    "max_rss_mb": round(run.max_rss_mb, 1),
                    "messages_handed_to_transport": messages,
                    "spool_after": spool_counts(directory / "spool"),
                    "fill_seconds": round(filled, 1),
                    "error": run.stderr_tail,
                }
            )
            shutil.rmtree(directory)
    return results


def measure_notify(root: Path, runs: int) -> dict:
    """Time ``fnm_spool notify`` with FastNetMon 1.2.4's captured ban call.

    The interpreter's own start (``python -c pass``) is timed the same way,
    and ``-X importtime`` lists the imports that cost the most.
    """
    config = _notify_settings(root)
    arguments = (CAPTURES / "1-ban.argv").read_bytes().split(b"\0")[:-1]
    argv = fnm_spool(config, "notify", *map(os.fsdecode, arguments))
    stdin_path = CAPTURES / "1-ban.stdin"

    notify_runs = [
        run_child(argv, stdin_path=stdin_path, log_path=root / "notify.log")
        for _ in range(runs)
    ]
    baseline = [run_child([sys.executable, "-c", "pass"]) for _ in range(runs)]
    failures = [run.exit_status for run in notify_runs if run.exit_status]
    seconds = [run.seconds for run in notify_runs]
    baseline_seconds = [run.seconds for run in baseline]
    return {
        "command": notify_runs[0].command,
        "runs": runs,
        "failed_runs": len(failures),
        "events_enqueued": count_files(root / "spool" / "incoming"),
        "median_ms": round(statistics.median(seconds) * 1000, 1),
        "min_ms": round(min(seconds) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
        "max_rss_mb": round(max(run.max_rss_mb for run in notify_runs), 1),
        "python_startup_command": baseline[0].command,
        "python_startup_median_ms": round(
            statistics.median(baseline_seconds) * 1000, 1
        ),
        "importtime": _import_times(argv, stdin_path),
    }


def _notify_settings(root: Path) -> Path:
    # notify reads only spool_dir and max_event_bytes; no server is involved.
    parser = configparser.ConfigParser(interpolation=None)
    parser["main"] = {
        "spool_dir": str(root / "spool"),
        "msmtp_config": str(root / "etc" / "msmtp.conf"),
    }
    path = root / "fnm_spool.conf"
    root.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as stream:
        parser.write(stream)
    return path


def _import_times(argv: list[str], stdin_path: Path, top: int = 12) -> dict:
    """Run once with ``-X importtime`` and return the costliest imports.

    ``by_cumulative`` lists modules imported directly by the program (not by
    another module), with their imports included; ``by_self`` lists any
    module by its own time. Times are microseconds, inflated by the
    measurement itself.
    """
    traced = [argv[0], "-X", "importtime", *argv[1:]]
    with open(stdin_path, "rb") as stdin:
        result = subprocess.run(traced, stdin=stdin, capture_output=True, timeout=60)
    rows = []
    for line in result.stderr.decode("utf-8", "replace").splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|")
        # One space follows the bar, then two more per level of nesting.
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((int(own), int(cumulative), depth, name.strip()))

    top_level = [row for row in rows if row[2] == 0]
    by_cumulative = sorted(top_level, key=lambda row: row[1], reverse=True)[:top]
    by_self = sorted(rows, key=lambda row: row[0], reverse=True)[:top]
    return {
        "command": shell_command(traced, stdin_path=stdin_path),
        "total_us": sum(row[1] for row in top_level),
        "by_cumulative": [{"module": r[3], "us": r[1]} for r in by_cumulative],
        "by_self": [{"module": r[3], "us": r[0]} for r in by_self],
    }
