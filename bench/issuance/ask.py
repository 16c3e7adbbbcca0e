#!/usr/bin/env python3
"""Caddy's `on_demand_tls { ask URL }` endpoint for `make bench-issuance`.

GET /check?domain=NAME answers 200 when NAME (lowercased, one trailing dot stripped) is a line
of the names file, else 404 -- the shape of a Rails app's allow-list action. Each request is
logged to stderr with a timestamp, so the run can count how often Caddy asked.

Usage: ask.py PORT NAMES_FILE   (binds 127.0.0.1 only; standard library only)
"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def main() -> None:
    port = int(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f:
        allowed = {line.strip().lower().rstrip(".") for line in f if line.strip()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = urlsplit(self.path)
            domain = parse_qs(url.query).get("domain", [""])[0].lower().rstrip(".")
            status = 200 if url.path == "/check" and domain in allowed else 404
            body = b"ok\n" if status == 200 else b"no\n"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            sys.stderr.write(f"{time.time():.6f} ask {domain} {status}\n")

        def log_message(self, *args) -> None:  # the line above is the log
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
