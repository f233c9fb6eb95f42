"""The local broker: where the storage adapter sends its CloudEvents (its K_SINK).

For now it only records what arrives (one JSON line per event in its log) and
answers 202, the way a Knative Broker ingress accepts an event. Routing by the
Trigger and PingSource objects in manifests/ arrives with the events work;
until then no function receives events locally (README says so).

    python -m dropgate_local.router --port 8780
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _BrokerIngress(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self._answer(200 if self.path == "/healthz" else 404, {"status": "ok"} if self.path == "/healthz" else
                     {"error": "not_found", "detail": self.path})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        attributes = {k[3:]: v for k, v in self.headers.items() if k.lower().startswith("ce-")}
        print(json.dumps({"time": time.time(), "received": attributes, "bytes": len(body)}), flush=True)
        self._answer(202, {"status": "accepted"})

    def _answer(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dropgate_local.router")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), _BrokerIngress)
    print(f"local broker (recording only) on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
