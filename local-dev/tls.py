"""Serve one function over HTTPS on the local stack: `python -m dropgate_local.tls --certfile ... --keyfile ...`.

functions-framework's command line has no TLS options, but its gunicorn server takes any
gunicorn setting: this builds the same app its CLI builds and hands gunicorn `certfile`
and `keyfile`. In a cluster TLS ends at Knative's ingress instead (docs/operations.md).
"""

from __future__ import annotations

import argparse

from functions_framework import create_app
from functions_framework._http import create_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dropgate_local.tls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="functions/<name>/main.py")
    parser.add_argument("--target", default="handle")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile", required=True, help="PEM certificate (chain)")
    parser.add_argument("--keyfile", required=True, help="PEM private key")
    args = parser.parse_args(argv)
    app = create_app(args.target, args.source, "http")
    create_server(app, False, certfile=args.certfile, keyfile=args.keyfile).run(args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
