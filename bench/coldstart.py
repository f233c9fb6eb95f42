"""Cold start: each function from process start to its first successful answer, against a
hello-world functions-framework function started the same way, in the same rounds.

Every function of functions/ (FUNCTIONS: presign, storage_events, scan, metadata, expire,
reconcile) and the hello world are started once per round; the order runs forwards in even rounds
and backwards in odd ones (ABBA), so no function always starts first on a quiet machine or last on
a busy one. The ratio is the function's time over the hello world's of the same round ("× time":
above 1 means slower), the way the issue states the target (≤ 1.5×).
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dropgate_local.processes import ChildProcess, free_port
from dropgate_local.stack import FUNCTIONS, HOST, SOURCE_DIR, LocalStack

from bench import stats

HELLO = "hello world"
HELLO_WORLD = '''import functions_framework


@functions_framework.http
def handle(request):
    return "hello"
'''


def _first_answer(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.01)
    raise TimeoutError(url)


def _cold_start(stack: LocalStack, source: Path, env: dict[str, str], path: str, label: str) -> float:
    port = free_port()
    argv = [sys.executable, "-m", "functions_framework", "--source", str(source), "--target", "handle",
            "--host", HOST, "--port", str(port)]
    start = time.monotonic()
    child = ChildProcess(label, argv, stack.logs_dir / f"{label}.log", env=env).start()
    try:
        _first_answer(f"http://{HOST}:{port}{path}", start + 60)
        return time.monotonic() - start
    finally:
        child.stop()


def measure(stack: LocalStack, *, rounds: int) -> list[dict]:
    """Needs the stack's dependencies running (a function's first 200 on /healthz means they answer too)."""
    env = {**os.environ, **stack.function_env(), "PYTHONUNBUFFERED": "1"}
    hello = stack.data_dir / "hello" / "main.py"
    hello.parent.mkdir(parents=True, exist_ok=True)
    hello.write_text(HELLO_WORLD)
    starts = {HELLO: (hello, "/")} | {
        name: (SOURCE_DIR / "functions" / name / "main.py", "/healthz") for name in FUNCTIONS}
    seconds: dict[str, list[float]] = {name: [] for name in starts}
    for round_number in range(rounds):
        order = list(starts) if round_number % 2 == 0 else list(reversed(starts))
        for name in order:
            source, path = starts[name]
            # Each function with its manifests' event identity, as stack.start_function configures it.
            own = env if name == HELLO else {**env, **stack.identity_env(name)}
            seconds[name].append(_cold_start(stack, source, own, path, f"{name}-cold".replace(" ", "-")))
    return [_row(name, seconds[name], seconds[HELLO]) for name in FUNCTIONS]


def _row(name: str, ours: list[float], hello: list[float]) -> dict:
    ratios = stats.paired_ratios(ours, hello)
    return stats.row(f"cold start: {name} (process start -> first 200 on /healthz)",
                     stats.show([s * 1000 for s in ours], unit=" ms"),
                     stats.show([s * 1000 for s in hello], unit=" ms") + " (hello world)",
                     ratios=ratios, kind="time", target="≤ 1.5× time",
                     met=stats.at_most(stats.median(ratios), 1.5), values={"seconds": ours, "hello_seconds": hello})
