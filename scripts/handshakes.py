#!/usr/bin/env python3
"""Full TLS handshakes against one server, as fast as T threads go (for `make bench-load`).

Each connection goes to HOST:PORT (no name resolution), sends one of the NAMES as SNI, completes
a full handshake (no session is ever offered: the client asks for no tickets and never passes a
saved session, so the server runs its whole certificate selection every time), then closes
without sending anything (or, with --request, after one HTTP/1.1 `Connection: close` request
and its response). The certificate is not verified: only the server's work is measured.

NAMES is one name, or a pattern where `{}` stands for 0 … COUNT-1 (`k{}.bench.localhost` with
--count 10000); the threads take the names round-robin.

  handshakes.py [options] HOST PORT NAMES
    --count N     names the pattern expands to (1)
    --threads T   connections in flight at once (4)
    --duration S  run for S seconds (10)
    --warm        instead: one handshake per name, each name once, with progress on stderr
                  (for an on-demand edge, this issues and caches every name's certificate)
    --request     send one request per connection and read the answer

Prints one line on stdout: `handshakes N seconds S errors E` (the first error's text goes to
stderr).
"""

import argparse
import itertools
import socket
import ssl
import sys
import threading
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("names")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warm", action="store_true")
    p.add_argument("--request", action="store_true")
    a = p.parse_args()
    if a.count < 1 or a.threads < 1 or a.duration <= 0:
        p.error("--count and --threads must be at least 1, --duration above 0")
    if a.count > 1 and "{}" not in a.names:
        p.error("--count above 1 needs a pattern with {} in NAMES")
    return a


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # No tickets asked for (TLS 1.2); sessions are never passed back, so no resumption either way.
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def handshake(ctx, host, port, name, request):
    with socket.create_connection((host, port), timeout=30) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            if request:
                tls.sendall(
                    f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode()
                )
                answer = b""
                while True:
                    chunk = tls.recv(16384)
                    if not chunk:
                        break
                    answer += chunk
                if not answer.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected response: {answer[:40]!r}")


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.done = 0
        self.errors = 0
        self.first_error = None

    def add(self, error=None):
        with self.lock:
            if error is None:
                self.done += 1
            else:
                self.errors += 1
                if self.first_error is None:
                    self.first_error = error


def main():
    a = parse_args()
    names = [a.names.replace("{}", str(i)) for i in range(a.count)] if a.count > 1 else [a.names]
    ctx = client_context()
    tally = Tally()
    turn = itertools.count()  # next() on it is atomic under the GIL
    start = time.monotonic()
    deadline = start + a.duration

    def worker():
        while True:
            i = next(turn)
            if a.warm:
                if i >= len(names):
                    return
            elif time.monotonic() >= deadline:
                return
            try:
                handshake(ctx, a.host, a.port, names[i % len(names)], a.request)
                tally.add()
            except (OSError, ssl.SSLError, RuntimeError) as e:
                tally.add(f"{names[i % len(names)]}: {e}")
                if not a.warm:
                    time.sleep(0.01)  # a refusing server must not turn this into a busy loop

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.threads)]
    for t in threads:
        t.start()
    step = max(1, len(names) // 20)
    shown = 0
    for t in threads:
        while t.is_alive():
            t.join(1.0)
            total = tally.done + tally.errors
            if a.warm and total - shown >= step:
                shown = total
                rate = total / (time.monotonic() - start)
                print(
                    f"warm: {total}/{len(names)} names ({tally.errors} errors, {rate:.0f}/s)",
                    file=sys.stderr,
                    flush=True,
                )
    seconds = time.monotonic() - start
    if tally.first_error:
        print(f"first error: {tally.first_error}", file=sys.stderr)
    print(f"handshakes {tally.done} seconds {seconds:.2f} errors {tally.errors}", flush=True)


if __name__ == "__main__":
    main()
