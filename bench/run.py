"""Benchmark fnm_spool against msmtpq and a shell loop of msmtp, on loopback.

Usage: python3 bench/run.py [--quick] [--only NAME ...] [--keep]

Starts the test suite's SMTP server on 127.0.0.1, runs the measurements,
writes every figure with its command, the machine and the versions to
bench/results/latest.json, and prints a summary. Without --quick the run
took 58 minutes on 2 cores, most of it two 100,000-event runs. --quick
uses fewer events and skips the STARTTLS round and the storm.
BENCHMARKS.md explains each figure.
"""

import argparse
import compileall
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import footprint
import latency
import report
import throughput
from harness import REPOSITORY, TimedServer, probe_reply_seconds, start_server

RESULTS = REPOSITORY / "bench" / "results" / "latest.json"
# Events per measurement; --quick runs fewer and skips the slow ones.
FULL = {
    "notify_runs": 30,
    "overhead_events": 1000,
    "throughput_events": 1000,
    "tls_events": 1000,
    "latency_singles": 100,
    "latency_interval": 0.2,
    "latency_burst": 200,
    "memory_sizes": [10, 1000, 10_000, 100_000],
    "storm_events": 10_000,
    "storm_spread_seconds": 10.0,
}
QUICK = {
    **FULL,
    "overhead_events": 200,
    "throughput_events": 200,
    "tls_events": 0,
    "latency_singles": 30,
    "latency_burst": 50,
    "memory_sizes": [10, 1000, 10_000],
    "storm_events": 0,
}
MEASUREMENTS = (
    "notify",
    "overhead",
    "throughput",
    "throughput_tls",
    "latency",
    "memory",
    "storm",
)


def main() -> int:
    options = _parse_arguments()
    plan = QUICK if options.quick else FULL
    logging.basicConfig(level=logging.WARNING, format="bench: %(name)s: %(message)s")
    # aiosmtpd logs every session at INFO, and warns about its own API.
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    root = Path(tempfile.mkdtemp(prefix="fnm_spool-bench-"))
    _compile_bytecode()
    started = time.time()
    results = {
        "command": " ".join(["python3", "bench/run.py", *sys.argv[1:]]),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "plan": plan,
        "machine": report.machine(),
        "load_average_at_start": os.getloadavg(),
        "versions": report.versions(),
        "errors": {},
    }
    try:
        _run_all(options.only or MEASUREMENTS, plan, root, results)
    finally:
        if options.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    results["seconds"] = round(time.time() - started, 1)
    results["load_average_at_end"] = os.getloadavg()
    results["targets"] = report.targets(results)
    _write(options.output, results)
    print(report.summary(results))
    print(f"\nwrote {options.output}")
    return 1 if results["errors"] or not _deliveries_complete(results) else 0


def _compile_bytecode() -> None:
    """Write the checkout's bytecode caches, as pip does when it installs.

    With PYTHONDONTWRITEBYTECODE set, every child would compile the
    modules that have no cache again, about 20 ms per ``fnm_spool notify``.
    The children inherit this process's environment.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    compileall.compile_file(REPOSITORY / "fnm_spool.py", quiet=1)
    compileall.compile_dir(REPOSITORY / "spool", quiet=1)


def _parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer events; skip the STARTTLS round and the storm (a few minutes)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=MEASUREMENTS,
        help="run only these measurements",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory"
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"default: {RESULTS}"
    )
    return parser.parse_args()


def _run_all(names, plan: dict, root: Path, results: dict) -> None:
    server = start_server(root, tls=False)
    try:
        results["server"] = _describe(server)
        for name in MEASUREMENTS:
            if name not in names or _skipped(name, plan):
                continue
            print(f"running {name} ...", flush=True)
            directory = root / name
            directory.mkdir()
            started = time.perf_counter()
            try:
                results[name] = _measure(name, plan, directory, server)
            except Exception as error:  # noqa: BLE001 - report it, run the rest
                traceback.print_exc()
                results["errors"][name] = repr(error)
                continue
            seconds = time.perf_counter() - started
            results[name]["measurement_seconds"] = round(seconds, 1)
    finally:
        server.close()


def _skipped(name: str, plan: dict) -> bool:
    sizes = {"throughput_tls": plan["tls_events"], "storm": plan["storm_events"]}
    return sizes.get(name, 1) == 0


def _measure(name: str, plan: dict, root: Path, server: TimedServer) -> dict:
    if name == "notify":
        return footprint.measure_notify(root, plan["notify_runs"])
    if name == "overhead":
        return throughput.measure_overhead(root, server, plan["overhead_events"])
    if name == "throughput":
        return throughput.measure_throughput(root, server, plan["throughput_events"])
    if name == "throughput_tls":
        tls_server = start_server(root, tls=True)
        try:
            figures = throughput.measure_throughput(
                root, tls_server, plan["tls_events"]
            )
            figures["server"] = _describe(tls_server)
            return figures
        finally:
            tls_server.close()
    if name == "latency":
        return latency.measure_latency(
            root,
            server,
            plan["latency_singles"],
            plan["latency_interval"],
            plan["latency_burst"],
        )
    if name == "memory":
        return footprint.measure_memory(root, server, plan["memory_sizes"])
    if name == "storm":
        return latency.measure_storm(
            root, server, plan["storm_events"], plan["storm_spread_seconds"]
        )
    raise ValueError(f"unknown measurement {name!r}")


def _describe(server: TimedServer) -> dict:
    return {
        "host": server.host,
        "tls": server.tls,
        "auth": server.auth,
        "ehlo_reply_seconds_median": round(probe_reply_seconds(server), 4),
    }


def _deliveries_complete(results: dict) -> bool:
    """Tell whether every contender delivered every message it was given."""
    for name in ("throughput", "throughput_tls"):
        figures = results.get(name)
        if figures and not all(
            figures[contender]["all_delivered"]
            for contender in ("fnm_spool", "msmtpq", "msmtp_loop")
        ):
            return False
    return True


def _write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main())
