#!/usr/bin/env python3
"""Hold N idle keep-alive TLS connections open against one server (for `make bench-load`).

Each connection completes a TLS handshake for NAME, sends one HTTP/1.1 request with
keep-alive and reads its whole response, then idles. When all are open the script prints
`ready N` on stdout and waits until its stdin closes (or it gets SIGTERM), then closes them.
The caller measures the server's memory between `ready` and the close: what an idle client
costs it, the usual state of most connections at a busy front door.

usage: idle-conns.py HOST PORT NAME COUNT [CAFILE]
(no CAFILE: the certificate is not verified; only memory is measured here)
"""

import asyncio
import resource
import ssl
import sys


async def open_one(host, port, name, ctx, sem):
    async with sem:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=name)
        writer.write(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value.strip())
        if length:
            await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected response: {head[:40]!r}")
        return writer


async def main():
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    host, port, name, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 64:
        if hard != resource.RLIM_INFINITY and hard < count + 64:
            sys.exit(f"COUNT {count}: needs {count + 64} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, hard))
    ctx = ssl.create_default_context(cafile=sys.argv[5] if len(sys.argv) == 6 else None)
    if len(sys.argv) == 5:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    # A few handshakes at a time: the point is the idle state, not a connection storm.
    sem = asyncio.Semaphore(32)
    writers = await asyncio.gather(*(open_one(host, port, name, ctx, sem) for _ in range(count)))
    print(f"ready {len(writers)}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for w in writers:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
