"""An HTTP relay that records every request it passes to a function, with its size.

The browser tests put one in front of presign (the page's /config.json points at it),
so a test can say exactly what reached the function while a file was uploaded: each
request's method, path and body length, and every byte that arrived. One request per
connection (`Connection: close` both ways) keeps the accounting exact.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

from dropgate_local.processes import free_port

_HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class RelayedRequest:
    method: str
    path: str
    body_bytes: int
    total_bytes: int  # request line, headers and body, as they arrived


class RecordingRelay:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = free_port(host)
        self.requests: list[RelayedRequest] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RecordingRelay:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.host, self.port))
        server.listen(64)
        server.settimeout(0.5)
        self._server = server
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()

    def snapshot(self) -> list[RelayedRequest]:
        with self._lock:
            return list(self.requests)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client:
            client.settimeout(60)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
                if len(head) > _HEAD_LIMIT:
                    return
            head, _, body = head.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            headers = [line for line in lines[1:] if line]
            length = next((int(line.split(":", 1)[1]) for line in headers
                           if line.lower().startswith("content-length:")), 0)
            while len(body) < length:
                chunk = client.recv(min(65536, length - len(body)))
                if not chunk:
                    break
                body += chunk
            arrived = len(head) + 4 + len(body)
            with self._lock:
                self.requests.append(RelayedRequest(method, path, len(body), arrived))
            kept = [line for line in headers if not line.lower().startswith(("connection:", "keep-alive:"))]
            forwarded = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1") + body
            try:
                upstream = socket.create_connection((self.host, self.upstream_port), timeout=60)
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            with upstream:
                upstream.sendall(forwarded)
                while True:
                    chunk = upstream.recv(65536)
                    if not chunk:
                        break
                    client.sendall(chunk)
