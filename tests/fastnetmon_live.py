"""Run the real FastNetMon 1.2.4 on loopback and feed it NetFlow v5 floods.

The live tests use this module to start Debian's ``/usr/sbin/fastnetmon``
with settings that keep it on 127.0.0.1, send it NetFlow v5 datagrams that
describe a UDP flood, and stop it again. Nothing here sends traffic to any
address but 127.0.0.1.

FastNetMon 1.2.4 behaviour that the helpers work around:

- SIGINT makes it abort with a core dump when ``enable_api = off``, because
  its handler shuts down an API server that was never started. The runner
  stops it with SIGTERM.
- It runs the notify script through ``sh -c`` without quoting, and only
  when the script exists at start-up. Paths written into its settings must
  not contain spaces or shell metacharacters.
- Its settings parser splits each line at ``=`` and drops lines with more
  than one, so no value may contain ``=``.
"""

import contextlib
import dataclasses
import ipaddress
import os
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

FASTNETMON = Path("/usr/sbin/fastnetmon")
SHIPPED_SETTINGS = Path("/etc/fastnetmon.conf")

# A short known environment, like the one systemd gives the service.
FASTNETMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

TEST_NETWORK = "203.0.113.0/24"
FLOOD_TARGET = "203.0.113.10"
FLOOD_SOURCES = tuple(f"198.51.100.{host}" for host in range(1, 6))
# DNS, NTP, SSDP and memcached: the usual UDP amplification ports.
FLOOD_PORTS = (53, 123, 1900, 11211)

NETFLOW_V5_VERSION = 5
NETFLOW_V5_MAX_RECORDS = 30  # FastNetMon 1.2.4 rejects larger counts (NF5_MAXFLOWS)
# Header: version, count, sys_uptime (ms), unix_secs, unix_nsecs,
# flow_sequence, engine_type, engine_id, sampling_interval.
NETFLOW_V5_HEADER = struct.Struct("!HHIIIIBBH")
# Record: srcaddr, dstaddr, nexthop, input, output, dPkts, dOctets, first,
# last (both sys_uptime in ms), srcport, dstport, pad1, tcp_flags, prot, tos,
# src_as, dst_as, src_mask, dst_mask, pad2.
NETFLOW_V5_RECORD = struct.Struct("!4s4s4sHHIIIIHHBBBBHHBBH")
IPPROTO_UDP = 17

# Characters that pass unchanged through FastNetMon's settings parser and its
# unquoted ``sh -c`` call of the notify script.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9/._+-]+$")


class FastNetMonError(RuntimeError):
    """FastNetMon failed to start or to stop; the message ends with its log."""


@dataclasses.dataclass(frozen=True)
class FlowRecord:
    """One NetFlow v5 flow record; ``first`` and ``last`` are sys_uptime ms."""

    src: str
    dst: str
    packets: int
    octets: int
    first: int
    last: int
    src_port: int = 0
    dst_port: int = 0
    protocol: int = IPPROTO_UDP
    tcp_flags: int = 0
    tos: int = 0
    nexthop: str = "0.0.0.0"
    input_interface: int = 0
    output_interface: int = 0
    src_as: int = 0
    dst_as: int = 0
    src_mask: int = 0
    dst_mask: int = 0


def build_netflow_v5(
    records: Sequence[FlowRecord],
    sys_uptime_ms: int,
    unix_secs: int,
    sequence: int,
    unix_nsecs: int = 0,
    sampling_interval: int = 0,
) -> bytes:
    """Encode one NetFlow v5 datagram: a 24-byte header and 48-byte records.

    ``sequence`` is the flow_sequence field, the count of flows the exporter
    sent before this datagram. A ``sampling_interval`` of 0 means unsampled.
    Raises ValueError for no records or more than 30, and struct.error for a
    field out of range.
    """
    if not records:
        raise ValueError("a NetFlow v5 datagram needs at least one record")
    if len(records) > NETFLOW_V5_MAX_RECORDS:
        raise ValueError(
            f"{len(records)} records do not fit in one NetFlow v5 datagram,"
            f" the maximum is {NETFLOW_V5_MAX_RECORDS}"
        )

    header = NETFLOW_V5_HEADER.pack(
        NETFLOW_V5_VERSION,
        len(records),
        sys_uptime_ms,
        unix_secs,
        unix_nsecs,
        sequence,
        0,
        0,
        sampling_interval,
    )
    return header + b"".join(_pack_record(record) for record in records)


def _pack_record(record: FlowRecord) -> bytes:
    return NETFLOW_V5_RECORD.pack(
        ipaddress.IPv4Address(record.src).packed,
        ipaddress.IPv4Address(record.dst).packed,
        ipaddress.IPv4Address(record.nexthop).packed,
        record.input_interface,
        record.output_interface,
        record.packets,
        record.octets,
        record.first,
        record.last,
        record.src_port,
        record.dst_port,
        0,
        record.tcp_flags,
        record.protocol,
        record.tos,
        record.src_as,
        record.dst_as,
        record.src_mask,
        record.dst_mask,
        0,
    )


def flood_records(
    uptime_ms: int,
    target: str = FLOOD_TARGET,
    sources: Sequence[str] = FLOOD_SOURCES,
    ports: Sequence[int] = FLOOD_PORTS,
    pps: int = 5000,
    packet_size: int = 512,
) -> list[FlowRecord]:
    """Describe one second of a UDP flood that ended at ``uptime_ms``.

    One record per source and destination port, from a random source port,
    together ``pps`` packets of ``packet_size`` bytes.
    """
    pairs = [(source, port) for source in sources for port in ports]
    share, remainder = divmod(pps, len(pairs))
    records = []
    for index, (source, port) in enumerate(pairs):
        packets = share + (1 if index < remainder else 0)
        record = FlowRecord(
            src=source,
            dst=target,
            packets=packets,
            octets=packets * packet_size,
            first=max(uptime_ms - 1000, 0),
            last=uptime_ms,
            src_port=random.randint(1024, 65535),
            dst_port=port,
        )
        records.append(record)
    return records


@dataclasses.dataclass
class FloodReport:
    """What :func:`send_flood` sent; times are ``time.monotonic()`` seconds."""

    started: float | None = None
    stopped: float | None = None
    datagrams: int = 0
    records: int = 0


def send_flood(
    port: int,
    seconds: float,
    target: str = FLOOD_TARGET,
    sources: Sequence[str] = FLOOD_SOURCES,
    pps: int = 5000,
    stop: threading.Event | None = None,
    report: FloodReport | None = None,
) -> FloodReport:
    """Send NetFlow v5 describing a UDP flood to 127.0.0.1:``port``.

    Every second for ``seconds`` seconds, the exporter sends the flows of the
    past second: ``pps`` packets from each of ``sources`` to ``target`` on
    the ports in FLOOD_PORTS, split into datagrams of at most 30 records.
    The exporter claims to have booted a minute before the flood. Setting
    ``stop`` ends the flood early. ``report``, when given, is filled in as
    the flood runs, so another thread can read it.
    """
    report = report if report is not None else FloodReport()
    stop = stop or threading.Event()
    started = time.monotonic()
    boot = started - 60
    sequence = 0
    report.started = started

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        tick = 0
        while tick < seconds and not stop.is_set():
            uptime_ms = int((time.monotonic() - boot) * 1000)
            records = flood_records(uptime_ms, target, sources, pps=pps)
            now_ns = time.time_ns()
            for offset in range(0, len(records), NETFLOW_V5_MAX_RECORDS):
                chunk = records[offset : offset + NETFLOW_V5_MAX_RECORDS]
                datagram = build_netflow_v5(
                    chunk,
                    sys_uptime_ms=uptime_ms,
                    unix_secs=now_ns // 1_000_000_000,
                    sequence=sequence,
                    unix_nsecs=now_ns % 1_000_000_000,
                )
                sock.sendto(datagram, ("127.0.0.1", port))
                sequence += len(chunk)
                report.datagrams += 1
                report.records += len(chunk)

            # Keep a one-second rhythm however long sending took.
            tick += 1
            stop.wait(max(started + tick - time.monotonic(), 0))

    report.stopped = time.monotonic()
    return report


@contextlib.contextmanager
def background_flood(port: int, seconds: float, **options) -> Iterator[FloodReport]:
    """Run :func:`send_flood` in a thread; stop and join it on exit.

    Yields the FloodReport that the thread fills in. ``options`` go to
    send_flood.
    """
    stop = threading.Event()
    report = FloodReport()
    thread = threading.Thread(
        target=send_flood,
        kwargs=dict(options, port=port, seconds=seconds, stop=stop, report=report),
        name="netflow-flood",
        daemon=True,
    )
    thread.start()
    try:
        yield report
    finally:
        stop.set()
        thread.join(timeout=5)


def free_udp_port() -> int:
    """Return a UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fastnetmon_overrides(
    workdir: Path, notify_script: Path, netflow_port: int
) -> dict[str, str]:
    """Return the settings that differ from the shipped /etc/fastnetmon.conf.

    Everything that could reach the network is switched off explicitly, even
    where the shipped file already has it off, so that a changed package
    default cannot slip through.
    """
    return {
        # The shipped file reports usage to the vendor every hour, the first
        # time 30 seconds after start.
        "disable_usage_report": "on",
        "enable_api": "off",
        "logging_local_syslog_logging": "off",
        "logging_remote_syslog_logging": "off",
        "netflow": "on",
        "netflow_host": "127.0.0.1",
        "netflow_port": str(netflow_port),
        "sflow": "off",
        "sflow_host": "127.0.0.1",
        "pcap": "off",
        "mirror_afpacket": "off",
        "mirror_afxdp": "off",
        "mirror_netmap": "off",
        "interfaces": "lo",
        "monitor_local_ip_addresses": "off",
        "monitor_openvz_vps_ip_addresses": "off",
        "networks_list_path": str(workdir / "networks_list"),
        "white_list_path": str(workdir / "networks_whitelist"),
        "ban_for_pps": "on",
        "ban_for_bandwidth": "off",
        "ban_for_flows": "off",
        "threshold_pps": "1000",
        "ban_time": "20",
        "unban_only_if_attack_finished": "on",
        "notify_script_path": str(notify_script),
        "collect_attack_pcap_dumps": "off",
        "pid_path": str(workdir / "fastnetmon.pid"),
        "cli_stats_file_path": str(workdir / "fastnetmon.dat"),
        "cli_stats_ipv6_file_path": str(workdir / "fastnetmon_ipv6.dat"),
        # Exporters and BGP daemons: each would open a connection.
        "graphite": "off",
        "influxdb": "off",
        "prometheus": "off",
        "redis_enabled": "off",
        "mongodb_enabled": "off",
        "kafka_traffic_export": "off",
        "exabgp": "off",
        "gobgp": "off",
    }


def write_fastnetmon_settings(
    path: Path, overrides: dict[str, str], shipped: Path = SHIPPED_SETTINGS
) -> None:
    """Write a copy of ``shipped`` with the keys in ``overrides`` replaced.

    Keys missing from the shipped file are appended at its end. Raises
    ValueError for a value that FastNetMon would misread.
    """
    for key, value in overrides.items():
        if "=" in value or "#" in value or not value.strip():
            raise ValueError(f"invalid FastNetMon setting {key} = {value!r}")

    lines = []
    seen = set()
    for line in shipped.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in overrides:
            line = f"{key} = {overrides[key]}"
            seen.add(key)
        lines.append(line)

    missing = [key for key in overrides if key not in seen]
    if missing:
        lines.append("")
        lines.append("# Set by the fnm_spool live tests")
        lines.extend(f"{key} = {overrides[key]}" for key in missing)
    path.write_text("\n".join(lines) + "\n")


@dataclasses.dataclass
class FastNetMonProcess:
    """A FastNetMon started by :func:`start_fastnetmon`."""

    process: subprocess.Popen
    settings_path: Path
    log_path: Path
    output_path: Path
    netflow_port: int

    def log_text(self) -> str:
        """Return FastNetMon's log file and its stdout and stderr."""
        parts = []
        for path in (self.log_path, self.output_path):
            with contextlib.suppress(FileNotFoundError):
                text = path.read_text(errors="replace")
                parts.append(f"--- {path}\n{text}")
        return "\n".join(parts)

    def stop(self, timeout: float = 10) -> int:
        """Stop FastNetMon with SIGTERM and return its Popen return code.

        Notify scripts that it started and that still run are sent SIGTERM
        too. Raises FastNetMonError, after SIGKILL, if it ignores SIGTERM.
        """
        status = self.process.poll()
        if status is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                status = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise FastNetMonError(
                    f"FastNetMon (PID {self.process.pid}) ignored SIGTERM for"
                    f" {timeout} s and was killed\n{self.log_text()}"
                ) from None

        # The notify scripts run in FastNetMon's process group, which
        # start_fastnetmon made a new session.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        return status


def _check_path(path: Path) -> None:
    if not _SAFE_PATH.match(str(path)):
        raise ValueError(
            f"path {str(path)!r} contains characters that FastNetMon would"
            " misread; use only letters, digits and / . _ + -"
        )


def udp_port_bound(port: int, pid: int) -> bool:
    """Tell whether process ``pid`` listens on UDP 127.0.0.1:``port`` (ss)."""
    output = subprocess.run(
        ["ss", "-Hlunp"], capture_output=True, text=True, check=True
    ).stdout
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3] == f"127.0.0.1:{port}":
            if f"pid={pid}," in line:
                return True
    return False


def start_fastnetmon(
    workdir: Path,
    notify_script: Path,
    netflow_port: int | None = None,
    startup_timeout: float = 20,
) -> FastNetMonProcess:
    """Start FastNetMon on loopback and wait until its NetFlow port is bound.

    Writes its settings, network list, empty white list, log and PID file
    under ``workdir``. ``notify_script`` must exist and be executable.
    ``netflow_port`` of None picks a free UDP port. Raises FastNetMonError,
    with the log, if FastNetMon exits or does not bind the port within
    ``startup_timeout`` seconds. The caller must call ``stop()``.
    """
    workdir = Path(workdir).resolve()
    notify_script = Path(notify_script).resolve()
    for path in (workdir, notify_script):
        _check_path(path)
    if not os.access(notify_script, os.X_OK):
        raise ValueError(f"notify script {notify_script} is not executable")
    netflow_port = netflow_port or free_udp_port()

    (workdir / "networks_list").write_text(TEST_NETWORK + "\n")
    (workdir / "networks_whitelist").write_text("")
    settings_path = workdir / "fastnetmon.conf"
    overrides = fastnetmon_overrides(workdir, notify_script, netflow_port)
    write_fastnetmon_settings(settings_path, overrides)

    log_path = workdir / "fastnetmon.log"
    output_path = workdir / "fastnetmon.out"
    argv = [
        str(FASTNETMON),
        "--configuration_file",
        str(settings_path),
        "--log_file",
        str(log_path),
    ]
    environment = {"PATH": FASTNETMON_PATH, "LANG": "C.UTF-8", "HOME": str(workdir)}
    with open(output_path, "wb") as output:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=workdir,
            start_new_session=True,
        )
    fastnetmon = FastNetMonProcess(
        process, settings_path, log_path, output_path, netflow_port
    )

    try:
        _wait_for_netflow_port(fastnetmon, startup_timeout)
    except BaseException:
        fastnetmon.stop()
        raise
    return fastnetmon


def _wait_for_netflow_port(fastnetmon: FastNetMonProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not udp_port_bound(fastnetmon.netflow_port, fastnetmon.process.pid):
        status = fastnetmon.process.poll()
        if status is not None:
            raise FastNetMonError(
                f"FastNetMon exited with status {status} before binding UDP"
                f" 127.0.0.1:{fastnetmon.netflow_port}\n{fastnetmon.log_text()}"
            )
        if time.monotonic() > deadline:
            raise FastNetMonError(
                f"FastNetMon did not bind UDP 127.0.0.1:{fastnetmon.netflow_port}"
                f" within {timeout} s\n{fastnetmon.log_text()}"
            )
        time.sleep(0.1)


def ensure_fastnetmon_installed() -> None:
    """Install Debian's fastnetmon package unless /usr/sbin/fastnetmon exists.

    Needs root and the Debian archive. On a host running systemd the
    service unit is masked first and stays masked, because the package
    would otherwise start it with the shipped settings, which report usage
    to the vendor. A FastNetMon that the installation started anyway is
    stopped. Raises FastNetMonError when installation is impossible or
    fails.
    """
    # NOTE: no test runs the installation below, since the tests run where the
    # package is installed. Whether systemctl stops a masked unit is assumed.
    if FASTNETMON.exists():
        return
    if os.geteuid() != 0:
        raise FastNetMonError(
            f"{FASTNETMON} is missing and installing the fastnetmon package"
            " needs root; run: apt-get install fastnetmon"
        )

    systemd = Path("/run/systemd/system").is_dir()
    before = set(_fastnetmon_pids())
    if systemd:
        _run(["systemctl", "mask", "fastnetmon.service"])
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "update", "-qq"], environment)
    _run(["apt-get", "install", "-y", "fastnetmon"], environment)

    if systemd:
        _run(["systemctl", "stop", "fastnetmon.service"])
    for pid in set(_fastnetmon_pids()) - before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not FASTNETMON.exists():
        raise FastNetMonError(f"installing fastnetmon did not create {FASTNETMON}")


def _fastnetmon_pids() -> list[int]:
    result = subprocess.run(
        ["pgrep", "-x", "fastnetmon"], capture_output=True, text=True
    )
    return [int(pid) for pid in result.stdout.split()]


def _run(argv: list[str], environment: dict[str, str] | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        raise FastNetMonError(
            f"{' '.join(argv)} failed with status {result.returncode}:"
            f" {result.stderr.strip()}"
        )
