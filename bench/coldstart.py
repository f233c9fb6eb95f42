"""Cold start: each function from process start to its first successful answer, against a
hello-world functions-framework function started the same way in the same run."""

from __future__ import annotations

import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dropgate_local.processes import ChildProcess, free_port
from dropgate_local.stack import FUNCTIONS, HOST, SOURCE_DIR, LocalStack

HELLO_WORLD = '''import functions_framework


@functions_framework.http
def handle(request):
    return "hello"
'''


def _first_answer(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
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
    import os

    env = {**os.environ, **stack.function_env(), "PYTHONUNBUFFERED": "1"}
    hello = stack.data_dir / "hello" / "main.py"
    hello.parent.mkdir(parents=True, exist_ok=True)
    hello.write_text(HELLO_WORLD)
    baseline = statistics.median(_cold_start(stack, hello, env, "/", "hello-cold") for _ in range(rounds))
    rows = []
    for name in FUNCTIONS:
        source = SOURCE_DIR / "functions" / name / "main.py"
        seconds = statistics.median(_cold_start(stack, source, env, "/healthz", f"{name}-cold") for _ in range(rounds))
        rows.append({"name": f"cold start: {name} (first 200 on /healthz)", "dropgate": f"{seconds * 1000:.0f} ms",
                     "baseline": f"{baseline * 1000:.0f} ms (hello world)", "ratio": baseline / seconds})
    return rows
