"""What a benchmark report must say besides its figures: the machine, every version that shapes a
figure, the command that produced it, and how to read the table (issue 21).

The versions are asked of the running servers where they can answer (clamd's VERSION, PostgreSQL's
server_version, `weed version`), not assumed from the packages installed.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import clamd
import psycopg
from dropgate_local.stack import HOST, LocalStack

from bench import sizing, stats

LEGEND = [
    ("Every figure: median (min–max, n = rounds). Ratios are per round (dropgate and its baseline run back to "
    "back, in ABBA order) and then summarised the same way."),
    ("Ratio: plain = speed (above 1, dropgate is faster); \"× time\" = dropgate's time over the baseline's "
    "(above 1, dropgate is slower). Met is judged on the median unless the row says otherwise; n/a = not "
    "measured under the target's conditions (e.g. --quick's 40 users or smaller files) or no target."),
]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"{os.cpu_count()} cores ({cpu}), {memory} GiB RAM, {platform.system()} {platform.release()}; "
            f"load average at start {load} (client and every server share these cores)")


def command(argv: list[str]) -> str:
    return shlex.join([os.path.relpath(sys.executable), "-m", "bench.run", *argv])


def clamd_database(stack: LocalStack) -> dict[str, Any]:
    """clamd's VERSION answer and the signatures its database holds (the CVD/CUD headers' counts)."""
    version = clamd.ClamdNetworkSocket(HOST, stack.ports.clamd, timeout=30).version()
    files = {}
    for path in sorted((stack.data_dir / "clamav" / "db").glob("*")):
        header = path.read_bytes()[:512].decode("ascii", "replace").split(":")
        if path.suffix in (".cvd", ".cld", ".cud") and header[0] == "ClamAV-VDB" and header[3].isdigit():
            files[path.name] = int(header[3])  # ClamAV-VDB:time:version:signatures:...
        elif path.suffix in (".ndb", ".hdb", ".hsb", ".ldb", ".yar"):
            files[path.name] = sum(1 for line in path.read_text(errors="replace").splitlines() if line.strip())
    offline = all(name.startswith("daily.") for name in files)
    return {"version": version, "signatures": sum(files.values()), "files": files,
            "database": "the local stack's generated offline database (local-dev/clamav.py), not ClamAV's"
            if offline else "ClamAV's official databases (freshclam)"}


def versions(stack: LocalStack) -> dict[str, Any]:
    """Asked of the running stack: needs PostgreSQL, storage and clamd started."""
    with psycopg.connect(stack.database_url) as conn:
        postgres = conn.execute("SHOW server_version").fetchone()[0]
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    weed_version = subprocess.run([weed, "version"], check=False, capture_output=True, text=True, timeout=30).stdout
    return {"python": platform.python_version(), "boto3": importlib.metadata.version("boto3"),
            "botocore": importlib.metadata.version("botocore"),
            "functions-framework": importlib.metadata.version("functions-framework"),
            "seaweedfs": weed_version.strip().splitlines()[0] if weed_version.strip() else "unknown",
            "postgresql": postgres, "clamd": clamd_database(stack)}


def _quick_note(settings: dict) -> list[str]:
    if not settings.get("quick"):
        return []
    return [(f"- **Quick run**: {settings['rounds']} rounds ({settings['load_rounds']} for the uploads at once, "
             f"{settings['spread_rounds']} for the spread arrivals) "
            f"where a full run takes 5, {settings['users']} users instead of 400, 25 MiB scans and a 50 MiB verdict "
            "instead of 1 GiB: indicative figures, and targets stated for heavier conditions read n/a.")]


def markdown(report: dict) -> str:
    found = report["versions"]
    database = found.get("clamd", {})
    lines = [f"dropgate benchmarks, {report['date']}", "", f"- machine: {report['machine']}",
             f"- command: `{report['command']}` (took {report['seconds']} s)",
             f"- settings: {report['settings']}",
             (f"- versions: Python {found.get('python')}, boto3 {found.get('boto3')}, SeaweedFS "
             f"`{found.get('seaweedfs')}`, PostgreSQL {found.get('postgresql')}, clamd `{database.get('version')}` "
             f"with {database.get('signatures')} signatures ({database.get('database')})"),
             *(f"- {line}" for line in LEGEND), *_quick_note(report["settings"]), "",
             "| measurement | dropgate | baseline (same run) | ratio | target | met |",
             "| --- | --- | --- | --- | --- | --- |"]
    for item in report["rows"]:
        lines.append(f"| {item['name']} | {item['dropgate']} | {item['baseline']} | {stats.ratio_cell(item)} | "
                     f"{item.get('target') or ''} | {stats.met_cell(item.get('met')) if item.get('target') else ''} |")
    if report.get("sizing"):
        lines += ["", *sizing.markdown(report["sizing"])]
    return "\n".join(lines) + "\n"
