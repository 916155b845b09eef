"""Deliver FastNetMon's recorded notify calls end to end, on loopback.

The demo does what an operator and FastNetMon 1.2.4 do on a real host:

1. starts an SMTP server on 127.0.0.1 that requires STARTTLS and AUTH, with
   a CA and a certificate made for this run;
2. writes a settings file with ``fnm_spool -c FILE set main KEY VALUE``, one
   call per setting, as a FastNetMon user does with ``fcli``;
3. replays FastNetMon's captured calls through ``fnm_spool notify``: the
   arguments and standard input recorded from FastNetMon 1.2.4, and for
   ``unban`` a standard input that stays open and is never written, as when
   FastNetMon runs from a pipeline;
4. runs ``fnm_spool run --once`` and prints each message that the server
   received, then ``fnm_spool status`` and a summary of the spool.

It exits 1 when a command fails, when an event ends anywhere but in
``sent/``, or when no message arrives. Run it with ``make demo``, which
installs the ``fnm_spool`` command into ``.venv`` first.
"""

import argparse
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY / "tests"))

from smtpd import LoopbackCA, SMTPServer  # noqa: E402

FIXTURES = REPOSITORY / "tests" / "fixtures" / "fastnetmon-1.2.4"
SENDER = "fnm@example.com"
RECIPIENTS = ("noc@example.com", "oncall@example.org")
# How long one fnm_spool command may take before the demo gives up on it.
COMMAND_TIMEOUT = 120
SPOOL_STATES = ("incoming", "active", "deferred", "sent", "failed")


class DemoError(Exception):
    """A failed step of the demo, with a message naming the step and the cause."""


class FnmSpool:
    """The installed ``fnm_spool`` command with one settings file."""

    def __init__(self, config: Path):
        self.command = Path(sys.executable).parent / "fnm_spool"
        if not self.command.exists():
            raise DemoError(
                f"{self.command} not found: install the package into this "
                "Python's environment first (make venv)"
            )
        self.config = config

    def run(self, *arguments, secret: str = "", stdin: bytes | None = None) -> None:
        """Run ``fnm_spool -c CONFIG ARGUMENTS``, printing the command first.

        ``stdin`` is written to the command's standard input; None gives
        it /dev/null. ``secret`` is masked in what is printed. Raises
        DemoError when the command fails or times out.
        """
        words = ["-c", str(self.config), *(str(argument) for argument in arguments)]
        command_line = "fnm_spool " + shlex.join(words)
        if secret:
            command_line = command_line.replace(secret, "********")
        print("$", command_line, flush=True)
        if stdin is None:
            stdin_options = {"stdin": subprocess.DEVNULL}
        else:
            stdin_options = {"input": stdin}
        try:
            result = subprocess.run(
                [self.command, *words], timeout=COMMAND_TIMEOUT, **stdin_options
            )
        except subprocess.TimeoutExpired:
            raise DemoError(
                f"{command_line} timed out after {COMMAND_TIMEOUT} s"
            ) from None
        if result.returncode != 0:
            raise DemoError(
                f"{command_line} failed with exit status {result.returncode}"
            )

    def run_with_open_stdin(self, *arguments) -> None:
        """Run ``fnm_spool -c CONFIG ARGUMENTS`` with a stdin that never ends.

        FastNetMon 1.2.4 gives unban no data but its own standard input,
        which never reaches end of file when FastNetMon was started from a
        pipeline. A command that reads it fails here with a timeout.
        """
        words = ["-c", str(self.config), *(str(argument) for argument in arguments)]
        command_line = "fnm_spool " + shlex.join(words)
        print("$", command_line, "(stdin open, never written)", flush=True)
        with subprocess.Popen([self.command, *words], stdin=subprocess.PIPE) as process:
            try:
                status = process.wait(timeout=COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                raise DemoError(
                    f"{command_line} still runs after {COMMAND_TIMEOUT} s: "
                    "it waits for standard input"
                ) from None
            finally:
                process.stdin.close()
        if status != 0:
            raise DemoError(f"{command_line} failed with exit status {status}")


def write_settings(fnm_spool: FnmSpool, server: SMTPServer, root: Path) -> None:
    """Write the settings file through ``fnm_spool set main``."""
    # The paths go first: every set regenerates msmtp.conf, which would
    # otherwise be written to the default /etc/fastnetmon/msmtp.conf.
    settings = [
        ("msmtp_config", root / "etc" / "msmtp.conf"),
        ("email_log", root / "log" / "email.log"),
        ("spool_dir", root / "spool"),
        ("email_notifications_host", server.host),
        ("email_notifications_port", server.port),
        ("email_notifications_tls", "enable"),
        ("email_notifications_auth", "enable"),
        ("email_notifications_from", SENDER),
        ("email_notifications_username", server.username),
        ("email_notifications_password", server.password),
        *(("email_notifications_recipients", address) for address in RECIPIENTS),
        ("tls_trust_file", server.ca_file),
        ("msmtp_timeout", 10),
        ("email_notifications_enabled", "enable"),
    ]
    # msmtp writes its log there, and on a FastNetMon host the directory exists.
    (root / "log").mkdir()
    for key, value in settings:
        fnm_spool.run("set", "main", key, value, secret=server.password)


def replay_calls(fnm_spool: FnmSpool) -> int:
    """Feed each captured call to ``fnm_spool notify`` and return the count."""
    calls = sorted(
        FIXTURES.glob("*.argv"), key=lambda path: int(path.stem.split("-")[0])
    )
    if not calls:
        raise DemoError(f"no captured calls (*.argv) in {FIXTURES}")

    for argv_file in calls:
        # The capture is argv[1..] with a NUL after each argument.
        arguments = [
            os.fsdecode(argument)
            for argument in argv_file.read_bytes().split(b"\0")[:-1]
        ]
        if arguments[-1] == "unban":
            fnm_spool.run_with_open_stdin("notify", *arguments)
        else:
            stdin = argv_file.with_suffix(".stdin").read_bytes()
            fnm_spool.run("notify", *arguments, stdin=stdin)
    return len(calls)


def print_messages(server: SMTPServer) -> None:
    """Print the envelope, headers and body of every message received."""
    for number, message in enumerate(server.messages, start=1):
        print(f"\n===== message {number} of {len(server.messages)} =====")
        print(f"envelope sender: {message.sender}")
        print(f"envelope recipients: {', '.join(message.recipients)}")
        print(f"TLS: {message.tls}, AUTH {message.auth_mechanism} as {message.login}")
        print("-----")
        print(message.raw.decode("utf-8", "replace").replace("\r\n", "\n"), end="")
    print("===== end of messages =====\n")


def count_events(spool_dir: Path) -> dict[str, int]:
    """Count the event files (``*.json``) in each spool directory."""
    return {
        state: len(list((spool_dir / state).glob("*.json"))) for state in SPOOL_STATES
    }


def print_failures(spool_dir: Path) -> None:
    for reason in sorted((spool_dir / "failed").glob("*.reason")):
        print(f"--- {reason.name}")
        print(reason.read_text(errors="replace"))


def run_demo(root: Path) -> int:
    fnm_spool = FnmSpool(root / "fnm_spool.conf")
    ca = LoopbackCA(root)

    failures = []
    with SMTPServer(ca=ca) as server:
        print(f"SMTP server on {server.host}:{server.port}: STARTTLS and AUTH required")
        write_settings(fnm_spool, server, root)
        calls = replay_calls(fnm_spool)
        # Show what arrived and what the spool contains even when the run fails.
        for step in (["run", "--once"], ["status"]):
            try:
                fnm_spool.run(*step)
            except DemoError as error:
                failures.append(str(error))
        print_messages(server)
        received = len(server.messages)

    counts = count_events(root / "spool")
    print(
        f"\nsummary: {calls} FastNetMon calls, {received} messages received; events "
        + ", ".join(f"{state} {count}" for state, count in counts.items())
    )
    if counts["failed"]:
        print_failures(root / "spool")
    unsent = sum(count for state, count in counts.items() if state != "sent")
    if unsent or not counts["sent"]:
        failures.append("not every event ended in sent/")
    if not received:
        failures.append("the SMTP server received no message")
    if failures:
        print("demo failed: " + "; ".join(failures))
        return 1
    print("demo passed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (settings, spool, logs) and print its path",
    )
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="demo: %(name)s: %(message)s")
    # aiosmtpd warns about its own deprecated API at every AUTH.
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    root = Path(tempfile.mkdtemp(prefix="fnm_spool-demo-"))
    try:
        return run_demo(root)
    except DemoError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    finally:
        if options.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
