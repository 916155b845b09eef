"""Time one ``run --once`` pass whose transport sends nothing.

Usage: noop_transport.py CONFIG OUTPUT

The processor runs as ``fnm_spool run --once`` runs it, logging to the
settings' ``log_file``, but with a transport function that returns "sent"
without starting msmtp. Only ``Processor.start()`` and ``run_once()`` are
timed, so the figure is fnm_spool's own cost: claiming, parsing, rendering,
writing the message to ``sent/`` and the renames and fsyncs of the spool.

A few methods on the path are wrapped with timers to show where the time
goes. A method that no longer exists is left out of the breakdown. The
steps nest (rendering runs inside delivery, for example), so their times do
not add up to the total. Writes ``{"events_sent", "seconds", "cpu_seconds",
"breakdown_seconds"}`` as JSON to OUTPUT.
"""

import collections
import functools
import importlib
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spool import settings  # noqa: E402
from spool.processor import Processor  # noqa: E402
from spool.spooldir import State  # noqa: E402
from spool.transport import Delivery  # noqa: E402

# (module, class, method) of the steps in the breakdown.
STEPS = (
    ("spool.spooldir", "Spool", "claim"),
    ("spool.spooldir", "Spool", "read"),
    ("spool.events", None, "parse_event"),
    ("spool.render", "Renderer", "render_event"),
    ("spool.spooldir", "Spool", "finish_sent"),
    ("spool.storm", "RateState", "record_send"),
    ("spool.threads", "ThreadIndex", "record_sent"),
)


def send_nothing(message: bytes, msmtp_path: str, msmtp_config: str, timeout: float):
    """Accept a message as msmtp would, without sending it."""
    return Delivery("sent", 0, "", 0.0)


def wrap_steps(totals: collections.Counter) -> None:
    """Add the time spent in each step of STEPS to ``totals``, by step name."""
    for module_name, class_name, name in STEPS:
        owner = importlib.import_module(module_name)
        if class_name is not None:
            owner = getattr(owner, class_name, None)
        function = getattr(owner, name, None)
        if function is None:
            continue
        label = f"{class_name or module_name}.{name}"
        setattr(owner, name, _timed(function, label, totals))


def _timed(function, label: str, totals: collections.Counter):
    @functools.wraps(function)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - started

    return timed


def main(config: str, output: str) -> int:
    current = settings.load(config, required=True)
    logging.basicConfig(
        filename=current.log_file or None,
        level=logging.INFO,
        format="%(asctime)s fnm_spool[%(process)d] %(levelname)s %(message)s",
    )
    totals = collections.Counter()
    wrap_steps(totals)
    processor = Processor(current, send=send_nothing)

    started = time.perf_counter()
    cpu_started = time.process_time()
    processor.start()
    processor.run_once()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started

    result = {
        "events_sent": processor.spool.count(State.SENT),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "breakdown_seconds": {k: round(v, 3) for k, v in totals.most_common()},
    }
    Path(output).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
