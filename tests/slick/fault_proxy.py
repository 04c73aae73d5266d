"""A fault-injecting HTTP proxy for the served-audit tests (127.0.0.1 only, bounded).

It relays requests to a real server and, on a fixed schedule, answers some of them itself
instead: HTTP 429 (with ``Retry-After: 0``), 500, 503, a stall longer than the client's
timeout, a dropped connection (closed without an answer), and the real answer cut short,
either with its original ``Content-Length`` (the connection ends mid-body) or with the
length of the shortened body (valid HTTP, broken JSON). Every connection is ``close``d after
one exchange. Faults stop after ``budget`` of them, so any client with enough retries ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

FAULTS = ("429", "500", "503", "stall", "drop", "truncate", "truncate-json")


class FaultProxy:
    """``with FaultProxy(upstream_port, stall_s=...) as proxy:`` -> ``proxy.url`` (``http://127.0.0.1:PORT/v1``).

    Request number i (in arrival order) gets fault ``FAULTS[(i // every) % len(FAULTS)]`` when
    ``i % every == 0`` and fewer than ``budget`` faults were injected; ``injected`` counts them.
    """

    def __init__(self, upstream_port: int, *, every: int = 4, budget: int = 28, stall_s: float = 4.0):
        self.upstream_port, self.every, self.budget, self.stall_s = upstream_port, every, budget, stall_s
        self.injected: Counter[str] = Counter()
        self.relayed = 0
        self._count = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(self._loop)  # stalled exchanges: cancel them, then close the loop
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def _next_fault(self, path: bytes) -> str | None:
        if not path.startswith(b"/v1/completions"):
            return None  # faults on the completions endpoint, where the audit's work is
        i, self._count = self._count, self._count + 1
        if i % self.every or sum(self.injected.values()) >= self.budget:
            return None
        fault = FAULTS[(i // self.every) % len(FAULTS)]
        self.injected[fault] += 1
        return fault

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader)
            if request is None:
                return
            fault = self._next_fault(request.split(b" ", 2)[1])
            if fault in ("429", "500", "503"):
                body = b'{"error": {"message": "injected fault", "code": %s}}' % fault.encode()
                extra = b"Retry-After: 0\r\n" if fault == "429" else b""
                writer.write(b"HTTP/1.1 %s Injected\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (fault.encode(), extra, len(body), body))
            elif fault == "stall":
                await asyncio.sleep(self.stall_s)
            elif fault == "drop":
                pass
            else:
                response = await self._relay(request)
                if fault is not None:
                    head, _, body = response.partition(b"\r\n\r\n")
                    cut = body[: len(body) // 2]
                    if fault == "truncate-json":
                        head = b"\r\n".join(line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-length"))
                        head += b"\r\nContent-Length: %d" % len(cut)
                    response = head + b"\r\n\r\n" + cut
                writer.write(response)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _relay(self, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            writer.write(request)
            await writer.drain()
            response = await reader.read()  # the upstream closes after one answer (Connection: close)
        finally:
            writer.close()
        self.relayed += 1
        return response


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One HTTP/1.1 request with ``Connection: close`` in place of the client's own connection header."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    lines = [line for line in head[:-4].split(b"\r\n") if not line.lower().startswith((b"connection:", b"keep-alive:"))]
    length = next((int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:")), 0)
    body = await reader.readexactly(length) if length else b""
    return b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + body
