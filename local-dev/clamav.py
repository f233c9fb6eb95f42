"""clamd for the local stack: configuration, and signatures when freshclam cannot reach the mirrors.

clamd refuses to start without a signature database, and this workplace has no
route to ClamAV's mirrors. So the local stack first tries freshclam (the
production path, a short timeout), and otherwise writes a small database of its
own that really detects:

    Dropgate.Test.EICAR              the EICAR test string anywhere in a scanned file
    Dropgate.Test.ClamAV-Test-File   the code of ClamAV's own test program, so every
                                     sample of Debian's clamav-testfiles (packed,
                                     archived, mailed, embedded) is found after clamd
                                     unpacks it

The body signatures are in ClamAV's `.ndb` format (name:target:offset:hex).
They are packed, as ClamAV's own databases are, into a versioned `daily.cud`
(an unsigned CVD, built by `sigtool --build --unsigned`): clamd then reports a
database version in its `VERSION` reply ("ClamAV 1.4.6/1/..."), which the scan
records on every verdict and the rescan compares (docs/scan.md, "Rescans").
clamd reports the signatures with the `.UNOFFICIAL` suffix it gives unsigned
databases. A test adds a signature and bumps the version to prove a rescan.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from shared.platform.settings import ClamdSettings, Settings

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

# The 64 bytes of x86 code at offset 0x40 of clam.exe (ClamAV's harmless test
# program): stable across every packer and container in clamav-testfiles.
CLAMAV_TEST_PROGRAM_CODE = bytes.fromhex(
    "bb7110400033c050508bf3535350b02940300466ac79f9ba3100780dad50ff66"
    "700e1fbe3100e9e5ffb409cd21b44ccd21")
# MD5 and size of clam.exe itself, as a hash signature (.hdb: md5:size:name).
CLAMAV_TEST_PROGRAM_MD5 = ("aa15bcf478d165efd2065190eb473bcb", 544)

OFFLINE_DATABASE = "daily"  # clamd takes the database version from the daily database
OFFLINE_VERSION = 1
# Files of the plain (pre-CVD) offline database earlier versions of the stack wrote.
_LEGACY_FILES = ("dropgate-local.ndb", "dropgate-local.hdb")


def offline_signatures(extra_body_signatures: Mapping[str, bytes] | None = None) -> dict[str, str]:
    """File name → contents of the generated database; `extra_body_signatures` maps name → bytes to detect."""
    ndb = (f"Dropgate.Test.EICAR:0:*:{EICAR.hex()}\n"
           f"Dropgate.Test.ClamAV-Test-File:0:*:{CLAMAV_TEST_PROGRAM_CODE.hex()}\n")
    for name, body in (extra_body_signatures or {}).items():
        ndb += f"{name}:0:*:{body.hex()}\n"
    md5, size = CLAMAV_TEST_PROGRAM_MD5
    hdb = f"{md5}:{size}:Dropgate.Test.ClamAV-Test-File.MD5\n"
    return {f"{OFFLINE_DATABASE}.ndb": ndb, f"{OFFLINE_DATABASE}.hdb": hdb}


def write_offline_database(db_dir: Path, *, version: int = OFFLINE_VERSION,
                           extra_body_signatures: Mapping[str, bytes] | None = None) -> Path:
    """Build `daily.cud` of the given version into db_dir (kept when it is already that version)."""
    db_dir.mkdir(parents=True, exist_ok=True)
    for name in _LEGACY_FILES:
        (db_dir / name).unlink(missing_ok=True)
    target = db_dir / f"{OFFLINE_DATABASE}.cud"
    if not extra_body_signatures and database_version(target) == version:
        return target
    sigtool = shutil.which("sigtool")
    if sigtool is None:
        raise FileNotFoundError("sigtool not found: install Debian's clamav (local-dev/bootstrap.sh does)")
    with tempfile.TemporaryDirectory() as work:
        build = Path(work)
        for name, contents in offline_signatures(extra_body_signatures).items():
            (build / name).write_text(contents)
        (build / "COPYING").write_text("dropgate local test signatures; no copyright claimed\n")
        (build / "empty").mkdir()
        # sigtool asks for the builder's name on standard input; --datadir points at an empty folder so
        # it takes --cvd-version as given instead of "current version + 1".
        subprocess.run([sigtool, f"--build={OFFLINE_DATABASE}.cvd", "--unsigned", f"--cvd-version={version}",
                        "--no-cdiff", f"--datadir={build / 'empty'}"], cwd=build, input=b"dropgate\n",
                       capture_output=True, timeout=60, check=True)
        built = build / f"{OFFLINE_DATABASE}.cvd"
        partial = target.with_suffix(".tmp")
        shutil.copyfile(built, partial)
        partial.replace(target)  # clamd's reload never sees a half-written file
    return target


def database_version(path: Path) -> int | None:
    """The version field of a CVD/CUD header ("ClamAV-VDB:time:version:sigs:..."), None if absent."""
    try:
        header = path.read_bytes()[:512].decode("ascii", "replace").split(":")
    except FileNotFoundError:
        return None
    return int(header[2]) if len(header) > 2 and header[0] == "ClamAV-VDB" and header[2].isdigit() else None


def default_limits() -> ClamdSettings:
    return Settings.from_env(["clamd"], {}).clamd


def write_clamd_conf(conf_path: Path, *, db_dir: Path, host: str, port: int, pid_file: Path, temp_dir: Path,
                     log_file: Path | None = None, limits: ClamdSettings | None = None) -> Path:
    """A clamd.conf for a foreground clamd on TCP only, with the limits and alerts production uses.

    The limits come from ClamdSettings (their one home); the scan tests pass smaller ones on
    purpose to provoke exactly the "not fully scanned" answers.
    """
    scan_options = (limits or default_limits()).clamd_conf()
    lines = [
        "Foreground yes",
        f"DatabaseDirectory {db_dir}",
        f"TCPSocket {port}",
        f"TCPAddr {host}",
        f"PidFile {pid_file}",
        f"TemporaryDirectory {temp_dir}",
        *(f"{option} {value}" for option, value in scan_options.items()),
        "MaxThreads 4",
        "ReadTimeout 120",
        "CommandReadTimeout 30",
        "SelfCheck 0",
        "LogTime yes",
        "LogVerbose no",
    ]
    if log_file is not None:
        lines.append(f"LogFile {log_file}")
    else:
        # Foreground clamd logs to stderr, which the stack already captures into logs/clamd.log.
        lines.append("LogSyslog no")
    conf_path.parent.mkdir(parents=True, exist_ok=True)
    conf_path.write_text("\n".join(lines) + "\n")
    return conf_path


def clamd_binary() -> str:
    found = shutil.which("clamd") or ("/usr/sbin/clamd" if Path("/usr/sbin/clamd").exists() else None)
    if found is None:
        raise FileNotFoundError("clamd not found: install Debian's clamav-daemon (local-dev/bootstrap.sh does)")
    return found


def clamd_command(conf_path: Path) -> list[str]:
    return [clamd_binary(), "--foreground", f"--config-file={conf_path}"]


def try_freshclam(db_dir: Path, timeout: float = 20) -> bool:
    """Fetch the real signatures; False when the mirrors are unreachable (no network) or freshclam is missing."""
    freshclam = shutil.which("freshclam")
    if freshclam is None:
        return False
    conf = db_dir.parent / "freshclam.conf"
    # DatabaseOwner: run as whoever runs the stack, so freshclam does not switch to the clamav user.
    conf.write_text(f"DatabaseDirectory {db_dir}\nDatabaseOwner {getpass.getuser()}\n"
                    "DatabaseMirror database.clamav.net\nConnectTimeout 10\nReceiveTimeout 10\nForeground yes\n")
    try:
        result = subprocess.run([freshclam, f"--config-file={conf}", f"--datadir={db_dir}", "--stdout", "--no-dns"],
                                capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False
    has_signatures = any(db_dir.glob("*.cvd")) or any(db_dir.glob("*.cld"))
    return result.returncode == 0 and has_signatures
