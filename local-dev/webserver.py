"""The local stack's web server: the uploader page (local-dev/web/dist) and its /config.json.

The page is static: `npm ci && npm run build` in local-dev/web (local-dev/bootstrap.sh does it)
bundles Uppy and the page into dist/. This server only hands those files out and tells
the page where presign and the dev sign-in are. File bytes never come here: the browser
PUTs them to storage with the URLs presign signs.

It also reverse-proxies `/dropgate/*` to presign, as the ingress of manifests/components/same-origin does in
production: Uppy's Companion mode (companion.html) sends no Authorization header, so presign must be
on the page's own origin, where the token cookie goes along (docs/uploader.md, "Companion mode").

    python -m dropgate_local.webserver --port 8786 --presign-url http://127.0.0.1:8781 \\
        --dev-token-url http://127.0.0.1:8779/dev-oidc/token --s3-url http://127.0.0.1:8806
"""

from __future__ import annotations

import argparse
import http.client
import json
import mimetypes
import posixpath
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dropgate_local.processes import serve_until_interrupted

WEB_DIR = Path(__file__).resolve().parent / "web"
DIST_DIR = WEB_DIR / "dist"
# Uppy 5, unchanged, in Companion mode (local-dev/web-uppy5): the compatibility page, at /uppy5/.
UPPY5_PATH = "/uppy5/"
UPPY5_DIST_DIR = WEB_DIR.parent / "web-uppy5" / "dist"

# presign under the page's origin: the path of manifests/components/same-origin's ingress.
COMPANION_PATH = "/dropgate"
# Hop-by-hop headers (RFC 9110 section 7.6.1) and Host are the proxy's own, never forwarded.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade", "host"})
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".map": "application/json", ".txt": "text/plain; charset=utf-8",
          ".json": "application/json"}


class BundleMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class PageConfig:
    """What the page reads from /config.json."""

    presign_url: str
    s3_url: str
    dev_token_url: str | None = None
    parallel_requests: int = 6

    def document(self) -> dict[str, object]:
        return {"presign_url": self.presign_url, "dev_token_url": self.dev_token_url,
                "parallel_requests": self.parallel_requests, "companion_endpoint": COMPANION_PATH}

    def content_security_policy(self) -> str:
        # What an app embedding the uploader must allow too: its API, storage, and (locally) the dev sign-in.
        connect = " ".join(dict.fromkeys(filter(None, ["'self'", _origin(self.presign_url), _origin(self.s3_url),
                                                       _origin(self.dev_token_url)])))
        return (f"default-src 'self'; connect-src {connect}; img-src 'self' data: blob:; "
                "style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'")


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def check_bundle(root: Path = DIST_DIR, uppy5: Path = UPPY5_DIST_DIR) -> None:
    for folder, script in ((root, "main.js"), (uppy5, "page.js")):
        if not (folder / "index.html").is_file() or not (folder / script).is_file():
            raise BundleMissing(f"the uploader page is not built in {folder}: run `bash local-dev/bootstrap.sh` "
                                f"(or `npm ci && npm run build` in {folder.parent})")


def make_server(config: PageConfig, host: str, port: int, root: Path = DIST_DIR) -> ThreadingHTTPServer:
    check_bundle(root)
    root = root.resolve()
    uppy5 = UPPY5_DIST_DIR.resolve()
    config_body = json.dumps(config.document()).encode()
    csp = config.content_security_policy()

    class Handler(BaseHTTPRequestHandler):
        server_version = "dropgate-web"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(send_body=False)

        def do_POST(self) -> None:  # noqa: N802
            self._proxy_or(405)

        def do_PUT(self) -> None:  # noqa: N802
            self._proxy_or(405)

        def do_DELETE(self) -> None:  # noqa: N802
            self._proxy_or(405)

        def _proxy_or(self, status: int) -> None:
            if not self._is_proxied():
                return self._send(status, b"method not allowed\n", "text/plain; charset=utf-8", True)
            return self._proxy()

        def _is_proxied(self) -> bool:
            path = urlsplit(self.path).path
            return path == COMPANION_PATH or path.startswith(f"{COMPANION_PATH}/")

        def _proxy(self) -> None:
            """Forward the request to presign with the prefix taken off, and its answer back, as is."""
            upstream = urlsplit(config.presign_url)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            try:
                connection.request(self.command, self.path[len(COMPANION_PATH):] or "/", body=body, headers=headers)
                answer = connection.getresponse()
                content = answer.read()
            except OSError as exc:
                return self._send(502, f"presign unreachable: {exc}\n".encode(), "text/plain; charset=utf-8", True)
            finally:
                connection.close()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)
            return None

        def _answer(self, *, send_body: bool) -> None:
            if self._is_proxied():
                return self._proxy()
            path = unquote(urlsplit(self.path).path)
            if path == "/config.json":
                return self._send(200, config_body, "application/json", send_body)
            if path == "/healthz":
                return self._send(200, b'{"status":"ok"}', "application/json", send_body)
            file = self._resolve(path)
            if file is None:
                return self._send(404, b"not found\n", "text/plain; charset=utf-8", send_body)
            content_type = _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            return self._send(200, file.read_bytes(), content_type, send_body)

        def _resolve(self, path: str) -> Path | None:
            folder = root
            if path.startswith(UPPY5_PATH) or path == UPPY5_PATH.rstrip("/"):
                folder, path = uppy5, path[len(UPPY5_PATH) - 1:]
            clean = posixpath.normpath(path).lstrip("/")
            if clean in ("", "."):
                clean = "index.html"
            if clean.startswith("."):
                return None
            candidate = (folder / clean).resolve()
            if folder not in candidate.parents or not candidate.is_file():
                return None
            return candidate

        def _send(self, status: int, body: bytes, content_type: str, send_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            # The bundle changes with every build and is small: always revalidate.
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Content-Security-Policy", csp)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dropgate_local.webserver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--presign-url", required=True, help="presign's URL as the browser reaches it")
    parser.add_argument("--s3-url", required=True, help="storage's public endpoint (for the page's CSP)")
    parser.add_argument("--dev-token-url", help="the dev OIDC token endpoint (local development only)")
    parser.add_argument("--parallel-requests", type=int, default=6)
    parser.add_argument("--root", type=Path, default=DIST_DIR, help="the built page")
    args = parser.parse_args(argv)
    config = PageConfig(presign_url=args.presign_url, s3_url=args.s3_url, dev_token_url=args.dev_token_url,
                        parallel_requests=args.parallel_requests)
    server = make_server(config, args.host, args.port, args.root)
    return serve_until_interrupted(server)


if __name__ == "__main__":
    raise SystemExit(main())
