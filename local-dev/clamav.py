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

The body signatures are in ClamAV's `.ndb` format (name:target:offset:hex);
clamd reports them with the `.UNOFFICIAL` suffix it gives every local database.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
from pathlib import Path

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

# The 64 bytes of x86 code at offset 0x40 of clam.exe (ClamAV's harmless test
# program): stable across every packer and container in clamav-testfiles.
CLAMAV_TEST_PROGRAM_CODE = bytes.fromhex(
    "bb7110400033c050508bf3535350b02940300466ac79f9ba3100780dad50ff66"
    "700e1fbe3100e9e5ffb409cd21b44ccd21")
# MD5 and size of clam.exe itself, as a hash signature (.hdb: md5:size:name).
CLAMAV_TEST_PROGRAM_MD5 = ("aa15bcf478d165efd2065190eb473bcb", 544)

OFFLINE_DATABASE = "dropgate-local"


def offline_signatures() -> dict[str, str]:
    """File name → contents of the generated database."""
    ndb = (f"Dropgate.Test.EICAR:0:*:{EICAR.hex()}\n"
           f"Dropgate.Test.ClamAV-Test-File:0:*:{CLAMAV_TEST_PROGRAM_CODE.hex()}\n")
    md5, size = CLAMAV_TEST_PROGRAM_MD5
    hdb = f"{md5}:{size}:Dropgate.Test.ClamAV-Test-File.MD5\n"
    return {f"{OFFLINE_DATABASE}.ndb": ndb, f"{OFFLINE_DATABASE}.hdb": hdb}


def write_offline_database(db_dir: Path) -> list[Path]:
    db_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, contents in offline_signatures().items():
        path = db_dir / name
        if not path.exists() or path.read_text() != contents:
            path.write_text(contents)
        written.append(path)
    return written


def write_clamd_conf(conf_path: Path, *, db_dir: Path, host: str, port: int, pid_file: Path, temp_dir: Path,
                     log_file: Path | None = None, stream_max_length_mb: int = 1100) -> Path:
    """A clamd.conf for a foreground clamd on TCP only.

    StreamMaxLength must exceed the largest upload (1 GiB by default), otherwise
    clamd ends INSTREAM with "INSTREAM size limit exceeded" and scan reports
    `failed`; the scan tests lower it on purpose to provoke exactly that.
    """
    lines = [
        "Foreground yes",
        f"DatabaseDirectory {db_dir}",
        f"TCPSocket {port}",
        f"TCPAddr {host}",
        f"PidFile {pid_file}",
        f"TemporaryDirectory {temp_dir}",
        f"StreamMaxLength {stream_max_length_mb}M",
        # Archives inside a 1 GB upload may legitimately hold more than the defaults.
        "MaxScanSize 2000M",
        "MaxFileSize 1100M",
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
