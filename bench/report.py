"""The machine, the versions, the targets and the printed summary of a run."""

import importlib.metadata
import os
import platform
import subprocess
import sys

from harness import MSMTP, REPOSITORY

import spool


def machine() -> dict:
    """Describe the CPU, cores, memory and kernel of this machine."""
    model = ""
    memory_kb = 0
    with open("/proc/cpuinfo", encoding="utf-8") as stream:
        for line in stream:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as stream:
        for line in stream:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "filesystem_of_tmp": _filesystem("/tmp"),
    }


def _filesystem(path: str) -> str:
    result = subprocess.run(
        ["df", "--output=fstype", path], capture_output=True, text=True
    )
    lines = result.stdout.split()
    return lines[-1] if result.returncode == 0 and lines else "unknown"


def versions() -> dict:
    """Return the versions of everything the figures depend on."""
    msmtp = subprocess.run([MSMTP, "--version"], capture_output=True, text=True)
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "msmtp": msmtp.stdout.splitlines()[0] if msmtp.stdout else "not found",
        "fnm_spool": spool.__version__,
        "jinja2": importlib.metadata.version("jinja2"),
        "aiosmtpd": importlib.metadata.version("aiosmtpd"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_uncommitted_changes": bool(_git("status", "--porcelain")),
    }


def _git(*arguments: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(REPOSITORY), *arguments], capture_output=True, text=True
    )
    return result.stdout.strip()


def targets(results: dict) -> list[dict]:
    """Compare the figures with their targets; skipped measurements are left out."""
    rows = []

    def add(figure: str, value, unit: str, target: str, met: bool) -> None:
        rows.append(
            {"figure": figure, "value": value, "unit": unit, "target": target,
             "met": met}
        )  # fmt: skip

    if "throughput" in results:
        ratio = results["throughput"]["ratio_fnm_spool_to_msmtpq"]
        add("throughput fnm_spool / msmtpq", ratio, "x", ">= 3", ratio >= 3)
    if "overhead" in results:
        own = results["overhead"]["python_noop"].get("ms_per_event")
        add("own cost per event", own, "ms", "<= 1", own is not None and own <= 1)
    if "latency" in results:
        p99 = results["latency"]["singles"]["handoff_ms"].get("p99")
        add(
            "single event hand-off p99",
            p99,
            "ms",
            "<= 50",
            p99 is not None and p99 <= 50,
        )
    if "memory" in results:
        rows += _memory_targets(results["memory"]["runs"])
    if "notify" in results:
        median = results["notify"]["median_ms"]
        add("notify wall time, median", median, "ms", "<= 80", median <= 80)
    if "storm" in results:
        storm = results["storm"]
        max_messages = storm["max_messages_in_any_window"]
        add(
            "storm: messages per digest window",
            max_messages,
            "max",
            "<= 1",
            max_messages <= 1,
        )
        sent = storm["spool_after"]["sent"]
        add("storm: events in sent/", sent, "events", f"= {storm['events']}",
            sent == storm["events"])  # fmt: skip
    return rows


def _memory_targets(runs: list[dict]) -> list[dict]:
    """Peak memory must stay under 60 MB, and flat: the largest spool may
    take at most 25 % more than the smallest."""
    rows = []
    for mode in sorted({run["mode"] for run in runs}):
        mode_runs = sorted(
            (run for run in runs if run["mode"] == mode), key=lambda r: r["events"]
        )
        peak = max(run["max_rss_mb"] for run in mode_runs)
        growth = mode_runs[-1]["max_rss_mb"] / mode_runs[0]["max_rss_mb"]
        sizes = f"{mode_runs[0]['events']}..{mode_runs[-1]['events']} events"
        rows.append(
            {"figure": f"peak RSS, {mode}, {sizes}", "value": peak, "unit": "MB",
             "target": "<= 60", "met": peak <= 60}
        )  # fmt: skip
        rows.append(
            {"figure": f"peak RSS growth, {mode}, {sizes}",
             "value": round(growth, 2), "unit": "x", "target": "<= 1.25",
             "met": growth <= 1.25}
        )  # fmt: skip
    return rows


def summary(results: dict) -> str:
    """Return the figures and targets as text for the terminal."""
    lines = []
    throughput = results.get("throughput")
    for name in ("throughput", "throughput_tls"):
        figures = results.get(name)
        if not figures:
            continue
        lines.append(f"{name} ({figures['messages']} messages):")
        for contender in ("fnm_spool", "msmtpq", "msmtp_loop"):
            entry = figures[contender]
            lines.append(
                f"  {contender:10} {entry['messages_per_second']:8.1f} messages/s"
                f"  {entry['seconds']:7.1f} s  delivered {entry['delivered_distinct']}"
            )
    if throughput:
        lines.append("")
    lines.append(f"{'figure':52} {'value':>10}  {'target':>8}  result")
    for row in results["targets"]:
        value = "-" if row["value"] is None else f"{row['value']} {row['unit']}"
        verdict = "met" if row["met"] else "MISSED"
        lines.append(f"{row['figure']:52} {value:>10}  {row['target']:>8}  {verdict}")
    for name, error in results.get("errors", {}).items():
        lines.append(f"{name}: FAILED: {error}")
    return "\n".join(lines)
