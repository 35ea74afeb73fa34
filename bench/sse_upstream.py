#!/usr/bin/env python3
"""A tiny TLS upstream that streams Server-Sent Events, like an LLM API.

GET /sse?delay=MS&n=N&gap=MS -> 200 text/event-stream, chunked; the head is sent at
once, the first event after `delay` ms, then N-1 more events `gap` ms apart.
HTTP/1.1 keep-alive. Loopback only; used by bench/scenarios.py."""
import argparse
import asyncio
import ssl
from urllib.parse import parse_qs, urlsplit


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split(" ")
            if len(parts) < 2:
                return
            length = 0
            for h in head.split(b"\r\n")[1:]:
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            url = urlsplit(parts[1])
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path != "/sse":
                body = b"not found\n"
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                continue
            delay = float(q.get("delay", "0")) / 1000
            gap = float(q.get("gap", "20")) / 1000
            n = int(q.get("n", "2"))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
            await writer.drain()
            for i in range(n):
                await asyncio.sleep(delay if i == 0 else gap)
                ev = b'data: {"token":%d,"text":"hello"}\n\n' % i
                writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8446)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    a = ap.parse_args()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["http/1.1"])
    srv = await asyncio.start_server(handle, "127.0.0.1", a.port, ssl=ctx, backlog=512)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
