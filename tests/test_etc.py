"""The files in etc/: example settings, systemd unit, cron entry, notify wrapper."""

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from spool import settings as settings_module

ETC = Path(__file__).resolve().parent.parent / "etc"
EXAMPLE = ETC / "fnm_spool.conf.example"
KEYS = [field.name for field in dataclasses.fields(settings_module.Settings)]


def test_example_settings_load_as_defaults():
    loaded = settings_module.load(EXAMPLE, required=True)

    assert loaded == settings_module.DEFAULTS


@pytest.mark.parametrize("key", KEYS)
def test_example_settings_list_key(key):
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    prefix = "# " if key == settings_module.PASSWORD_KEY else ""
    matches = [
        number
        for number, line in enumerate(lines)
        if re.fullmatch(rf"{prefix}{key} =( .*)?", line)
    ]

    assert len(matches) == 1
    comment = lines[matches[0] - 1]
    assert comment.startswith("# ")
    assert not comment.startswith(f"# {key}")


def test_example_settings_password_commented_out():
    text = EXAMPLE.read_text(encoding="utf-8")

    assert re.search(r"^email_notifications_password", text, re.M) is None


def test_service_unit_verifies(tmp_path):
    """systemd-analyze checks the unit, with ExecStart pointed at /bin/true.

    The real ExecStart, /usr/local/bin/fnm_spool, is not installed here.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (ETC / "fnm_spool.service").read_text(encoding="utf-8")
    assert "ExecStart=/usr/local/bin/fnm_spool run\n" in text
    unit = tmp_path / "fnm_spool.service"
    unit.write_text(text.replace("/usr/local/bin/fnm_spool run", "/bin/true"))

    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_cron_entry_runs_once_as_root():
    lines = (ETC / "fnm_spool.cron").read_text(encoding="utf-8").splitlines()
    entries = [line for line in lines if line and not line.startswith("#")]

    assert entries == ["* * * * * root /usr/local/bin/fnm_spool run --once"]


def test_notify_wrapper_passes_arguments(tmp_path):
    record = tmp_path / "argv"
    fake = tmp_path / "fnm_spool"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{record}'\n")
    fake.chmod(0o755)
    text = (ETC / "fastnetmon_notify.sh").read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    wrapper = tmp_path / "fastnetmon_notify.sh"
    wrapper.write_text(text.replace("/usr/local/bin/fnm_spool", str(fake)))
    wrapper.chmod(0o755)

    done = subprocess.run(
        [str(wrapper), "203.0.113.10", "incoming", "1648", "ban"],
        stdin=subprocess.DEVNULL,
        timeout=10,
    )

    assert done.returncode == 0
    assert record.read_text().splitlines() == [
        "notify",
        "203.0.113.10",
        "incoming",
        "1648",
        "ban",
    ]
    assert (ETC / "fastnetmon_notify.sh").stat().st_mode & 0o111
