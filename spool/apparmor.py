"""Check that msmtp's AppArmor profile lets msmtp open fnm_spool's files.

Part of ``fnm_spool check``. The profile and its local override are read as
text: only the file rules at the profile's own nesting level count, and
included abstractions are not followed.
"""

import os
import re
from pathlib import Path

from .errors import EX_UNAVAILABLE
from .settings import Settings

APPARMOR_FS = Path("/sys/kernel/security/apparmor")
APPARMOR_DIR = Path("/etc/apparmor.d")
MSMTP_PROFILE = "usr.bin.msmtp"


def _check_apparmor(settings: Settings, apparmor_fs: Path, apparmor_dir: Path):
    """Check that an enforced msmtp profile lets msmtp use fnm_spool's files.

    Only the profile's own rules and its local override are read: a file
    granted by an included abstraction is reported as missing, which errs
    on the safe side.
    """
    # spool.check imports this module, so its record type is imported here.
    from .check import ERROR, OK, WARNING, Check

    listing = apparmor_fs / "profiles"
    try:
        profiles = listing.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [Check(OK, "AppArmor", "not enabled")]
    except OSError as error:
        message = (
            f"cannot read {listing}: {error.strerror}; run fnm_spool check as "
            "root to check msmtp's AppArmor profile"
        )
        return [Check(WARNING, "AppArmor", message)]

    names = _enforced_msmtp_profiles(profiles)
    if not names:
        return [Check(OK, "AppArmor", "no msmtp profile in enforce mode")]
    subject = f"AppArmor profile {names[0]}"
    profile = apparmor_dir / MSMTP_PROFILE
    local = apparmor_dir / "local" / MSMTP_PROFILE
    try:
        main_text = profile.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        message = f"enforced, but {profile} cannot be read: {error.strerror}"
        return [Check(WARNING, subject, message)]
    try:
        local_text = local.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        local_text = ""
    rules = _profile_rules(main_text, depth=1) + _profile_rules(local_text, depth=0)

    missing = []
    for path, access in _needed_access(settings):
        if not _granted(rules, os.path.realpath(path), access):
            missing.append(f"{_apparmor_path(os.path.realpath(path))} {access},")
    if not missing:
        return [Check(OK, subject, "grants msmtp its config, log and CA files")]
    lines = [
        f"does not grant msmtp the files that fnm_spool needs; add to {local}:",
        *("    " + line for line in missing),
    ]
    if f"local/{MSMTP_PROFILE}" not in main_text:
        lines.append(f"and the line #include <local/{MSMTP_PROFILE}> to {profile},")
    lines.append(f"then run: apparmor_parser -r {profile}")
    return [Check(ERROR, subject, "\n".join(lines), EX_UNAVAILABLE)]


def _enforced_msmtp_profiles(profiles: str) -> list[str]:
    """Return the enforced msmtp profiles from securityfs' ``profiles`` list.

    Each line reads ``NAME (MODE)``; child profiles (``NAME//CHILD``) are
    left out because their rules do not cover msmtp itself.
    """
    names = []
    for line in profiles.splitlines():
        match = re.fullmatch(r"(.+) \((\w+)\)", line.strip())
        if match is None or match.group(2) != "enforce":
            continue
        name = match.group(1)
        if "msmtp" in name and "//" not in name:
            names.append(name)
    return names


# A file rule: qualifiers, a path, permission letters, an optional exec
# target, a comma. The rarer permissions-first form is not recognised.
_FILE_RULE = re.compile(
    r"(?P<qualifiers>(?:(?:audit|owner|allow|deny|file)\s+)*)"
    r'(?P<path>"[^"]+"|[/@]\S*)\s+(?P<permissions>[a-zA-Z]+)'
    r"(?:\s*->\s*\S+)?\s*,"
)


def _profile_rules(text: str, depth: int) -> list[tuple[bool, re.Pattern, str]]:
    """Return ``(deny, path regex, permissions)`` for the file rules at ``depth``.

    ``depth`` is the block nesting of the profile's own rules: 1 in the
    profile file, 0 in its local override. Rules of child profiles and hats
    nested deeper are skipped.
    """
    rules = []
    level = 0
    for raw_line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw_line).strip()
        if line.startswith("}"):
            level -= 1
            continue
        if line.endswith("{"):
            level += 1
            continue
        match = _FILE_RULE.fullmatch(line)
        if match is None or level != depth:
            continue
        deny = "deny" in match.group("qualifiers").split()
        pattern = _glob_regex(match.group("path").strip('"'))
        rules.append((deny, pattern, match.group("permissions")))
    return rules


def _glob_regex(glob: str) -> re.Pattern:
    """Convert an AppArmor path glob to a regular expression.

    ``**`` matches across directories, ``*`` and ``?`` within one, and
    ``{a,b}`` and ``[...]`` as in AppArmor. ``@{HOME}`` stands for
    ``/home/*`` or ``/root``; other variables match nothing, so a rule that
    uses them never counts as granting access.
    """
    parts = []
    index = 0
    braces = 0
    while index < len(glob):
        char = glob[index]
        if glob.startswith("**", index):
            parts.append(".*")
            index += 2
            continue
        if glob.startswith("@{", index):
            end = glob.find("}", index)
            end = len(glob) - 1 if end < 0 else end
            name = glob[index + 2 : end]
            parts.append("(?:/home/[^/]+|/root)" if name == "HOME" else "(?!)")
            index = end + 1
            continue
        if char == "[":
            end = glob.find("]", index + 1)
            if end > 0:
                parts.append(glob[index : end + 1])
                index = end + 1
                continue
        if char == "{":
            braces += 1
            parts.append("(?:")
        elif char == "}" and braces:
            braces -= 1
            parts.append(")")
        elif char == "," and braces:
            parts.append("|")
        elif char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(char))
        index += 1
    try:
        return re.compile("".join(parts).replace("//", "/"))
    except re.error:
        return re.compile("(?!)")


def _needed_access(settings: Settings) -> list[tuple[str, str]]:
    """Return the files msmtp opens for fnm_spool and the access each needs.

    msmtp 1.8.23 locks its log file (fcntl) before writing, hence ``k``.
    """
    needed = [(settings.msmtp_config, "r")]
    if settings.email_log:
        needed.append((settings.email_log, "wk"))
    if settings.tls_trust_file and settings.tls_trust_file != "system":
        needed.append((settings.tls_trust_file, "r"))
    return needed


def _granted(rules: list, path: str, access: str) -> bool:
    """Tell whether the rules allow every letter of ``access`` on ``path``."""
    for letter in access:
        # AppArmor's append permission also lets msmtp open its log.
        letters = "wa" if letter == "w" else letter
        allowed = denied = False
        for deny, pattern, permissions in rules:
            if pattern.fullmatch(path) and any(c in permissions for c in letters):
                if deny:
                    denied = True
                else:
                    allowed = True
        if denied or not allowed:
            return False
    return True


def _apparmor_path(path: str) -> str:
    return f'"{path}"' if any(char.isspace() for char in path) else path
