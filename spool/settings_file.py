"""Read the settings file, and rewrite one key in it keeping every other line.

:func:`write_atomic` replaces a file so that readers see the old or the new
version. ``fnm_spool set`` and ``delete`` use it for the settings file, and
:mod:`spool.msmtpconf` for msmtp.conf.
"""

import configparser
import contextlib
import logging
import os
import re
import tempfile
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

SECTION = "main"

NEW_FILE_HEADER = (
    "# fnm_spool settings. Change them with `fnm_spool set main KEY VALUE`;\n"
    "# `fnm_spool show main` lists every key.\n"
)


# Reading the file.


def _read_text(path: Path) -> str | None:
    """Return the file's text, or None when it does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(
            f"cannot read settings file {path}: {error.strerror}. Check that it"
            " is a file that this user may read.",
            path=path,
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (invalid byte at offset {error.start});"
            " save the file as UTF-8.",
            path=path,
        ) from None


def _parse_ini(path: Path, text: str) -> dict[str, str]:
    """Return the raw values of ``[main]`` in file order, unknown keys included.

    configparser's own messages quote whole lines, which may contain the
    password, so the errors raised here name line numbers only.
    """
    parser = configparser.ConfigParser(interpolation=None, empty_lines_in_values=False)
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as error:
        raise ConfigError(
            f"{path}, line {error.lineno}: a setting comes before the section"
            " header; put [main] on the first line.",
            path=path,
        ) from None
    except configparser.DuplicateOptionError as error:
        raise ConfigError(
            f"{path}, line {error.lineno}: {error.option} is set twice;"
            " delete one of the lines.",
            key=error.option,
            path=path,
        ) from None
    except configparser.DuplicateSectionError as error:
        raise ConfigError(
            f"{path}, line {error.lineno}: section [{error.section}] appears"
            " twice; merge the two.",
            path=path,
        ) from None
    except configparser.ParsingError as error:
        numbers = ", ".join(str(number) for number, _ in error.errors)
        raise ConfigError(
            f"{path}: cannot parse line {numbers}; each setting must read KEY = VALUE.",
            path=path,
        ) from None

    sections = [name for name in parser.sections() if name != SECTION]
    if parser.defaults():
        sections.append(parser.default_section)
    if sections:
        raise ConfigError(
            f"{path}: unknown section [{sections[0]}]; fnm_spool reads only"
            f" [{SECTION}]. Move its settings to [{SECTION}] or delete it.",
            path=path,
        )
    if not parser.has_section(SECTION):
        return {}
    return {name: parser.get(SECTION, name) for name in parser.options(SECTION)}


# Changing the file.


def _find_key(lines: list[str], key: str) -> tuple[int | None, int | None, int]:
    """Locate ``key`` in [main] the way configparser reads it.

    Returns the index of its first line and the index after its continuation
    lines (None, None when absent), and the index after the last line that
    belongs to [main] (0 when the file has no [main]).
    """
    section = None
    start = end = None
    main_end = 0
    value_indent = None
    for index, line in enumerate(lines):
        stripped = line.strip()
        # With empty_lines_in_values=False a blank or comment line ends a value.
        if not stripped or stripped[0] in "#;":
            value_indent = None
            continue
        indent = len(line) - len(line.lstrip())
        if value_indent is not None and indent > value_indent:
            if end == index:
                end = index + 1
            if section == SECTION:
                main_end = index + 1
            continue

        header = re.match(r"\[(.+)\]", stripped)
        if header:
            section = header.group(1)
            value_indent = None
            if section == SECTION:
                main_end = index + 1
            continue
        value_indent = indent
        if section != SECTION:
            continue
        main_end = index + 1
        name = re.split(r"\s*[=:]", stripped, maxsplit=1)[0].lower()
        if name == key and start is None:
            start, end = index, index + 1
    return start, end, main_end


def _edit_text(text: str, key: str, value: str | None) -> str:
    """Return ``text`` with ``key`` set to ``value`` or removed (None).

    Comments, blank lines and the other keys stay as they are. A new key goes
    after the last line of [main]. A missing [main] is added at the end.
    """
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    new = [] if value is None else [f"{key} = {value}\n"]
    start, end, main_end = _find_key(lines, key)

    if start is not None:
        lines[start:end] = new
    elif value is not None and main_end:
        lines[main_end:main_end] = new
    elif value is not None:
        header = NEW_FILE_HEADER if not text.strip() else "\n"
        lines += [header, f"[{SECTION}]\n", *new]
    return "".join(lines)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: os.PathLike | str, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or new file.

    Creates the parent directories. The temporary file in the same directory
    is created with mode 0600 by tempfile.mkstemp() and gets ``mode`` and the
    old file's owner before the data is written. When the process may not
    keep the owner, the new file belongs to the process and a warning is
    logged. The file and the directory are fsynced. Raises OSError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None

    fd, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as file:
            if old is not None:
                _keep_owner(file.fileno(), old, path)
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _keep_owner(fd: int, old: os.stat_result, path: Path) -> None:
    new = os.fstat(fd)
    if (new.st_uid, new.st_gid) == (old.st_uid, old.st_gid):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError:
        log.warning(
            "%s: cannot keep owner %d:%d, the new file belongs to %d:%d",
            path,
            old.st_uid,
            old.st_gid,
            new.st_uid,
            new.st_gid,
        )
