"""An async client of OpenAI-compatible ``/v1/completions`` servers, spread over replicas.

Built on ``httpx``. Per server at most ``concurrency`` requests are in flight; a request goes
to the server its ``route`` picks (requests of one few-shot prefix meet that server's prefix
cache) and, after a failure, to the next one. A request is retried on HTTP 429 and 5xx,
timeouts (``request_timeout`` bounds the whole request, including a server that stalls
mid-body), dropped connections and bodies that are not the JSON a completion should be
(truncated). The wait before retry r is drawn uniformly from
``[0, min(30 s, retry_backoff * 2^r)]`` ("full jitter"), at least a 429's ``Retry-After``;
after ``max_retries`` retries the request fails with a :class:`KnowtuneError` naming the server
and the last error. Other 4xx answers are not retried: they say the request itself is wrong.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from knowtune.errors import KnowtuneError
from knowtune.serving.config import ServedSettings, host_of

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_BACKOFF_CAP = 30.0
_MISSING = frozenset({404, 405, 501})  # an optional endpoint (llama.cpp's /props, /tokenize) the server lacks


@dataclass(frozen=True)
class CompletionRequest:
    """One ``/v1/completions`` request: ``n`` completions of ``prompt`` (text).

    ``temperature`` 0 is greedy. ``seed`` seeds the server's sampler (vLLM and llama.cpp give
    completion i of a request seed + i). ``top_k`` and ``min_p`` go as extra body fields, as vLLM
    and llama.cpp take them. ``prompt_tokens``, when given, is checked against the server's
    ``usage.prompt_tokens``: a server that tokenizes the prompt differently is an error.
    """

    prompt: str
    max_tokens: int
    stop: str | tuple[str, ...] | list[str]
    n: int = 1
    temperature: float = 0.0
    top_k: int | None = None
    seed: int | None = None
    route: int = 0
    prompt_tokens: int | None = None
    chat: bool = False
    """Ask ``/v1/chat/completions`` with ``prompt`` as the one user message (the server applies its chat template)."""

    def body(self, model: str) -> dict[str, Any]:
        text = {"messages": [{"role": "user", "content": self.prompt}]} if self.chat else {"prompt": self.prompt}
        body: dict[str, Any] = {"model": model, **text, "max_tokens": self.max_tokens, "stop": [self.stop] if isinstance(self.stop, str) else list(self.stop),
                                "n": self.n, "temperature": self.temperature, "top_p": 1.0, "stream": False}
        if self.temperature > 0:
            body.update(min_p=0.0, typical_p=1.0, repeat_penalty=1.0)  # llama.cpp's other samplers off (vLLM's are off by default)
            if self.top_k is not None:
                body["top_k"] = self.top_k
        if self.seed is not None:
            body["seed"] = self.seed
        return body


@dataclass(frozen=True)
class ServerInfo:
    """What the servers say about themselves: the model name, hosts, and llama.cpp's slot count."""

    model: str
    hosts: tuple[str, ...]
    slots: int | None


class RetryableError(Exception):
    """A failure worth another try (429, 5xx, timeout, dropped connection, malformed body)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass
class _Server:
    base: str  # the OpenAI base URL, ending in /v1
    root: str  # scheme://host:port, where llama.cpp's /props and /tokenize live
    host: str
    http: httpx.AsyncClient | None = None
    slots: asyncio.Semaphore | None = None


def split_base_url(url: str) -> tuple[str, str]:
    """(OpenAI base URL, server root): ``http://h:8080`` and ``http://h:8080/v1`` both give ``(http://h:8080/v1, http://h:8080)``."""
    parts = urlsplit(url.rstrip("/"))
    root = f"{parts.scheme}://{parts.netloc}"
    return (root + (parts.path or "/v1")), root


@dataclass
class CompletionsClient:
    """Completions and tokenization on the servers of ``settings`` (see the module doc)."""

    settings: ServedSettings
    log: Callable[[str], None] | None = None
    retries: Counter = field(default_factory=Counter)  # retry reason -> count, over the client's life
    info: ServerInfo | None = None

    def __post_init__(self):
        self.settings.check_served()
        self._servers = [_Server(*split_base_url(u), host=host_of(u)) for u in self.settings.base_url]
        self._headers = {"Authorization": f"Bearer {key}"} if (key := self.settings.api_key()) else {}

    # -- sync entry points (each runs one event loop) -------------------------------------------

    def connect(self) -> ServerInfo:
        """Ask every server for its model (``/v1/models``) and slots (``/props``, llama.cpp only)."""
        self.info = asyncio.run(self._session(self._connect()))
        return self.info

    def complete(self, requests: Sequence[CompletionRequest]) -> list[list[str]]:
        """The completion texts of each request, in the server's choice order (stop string excluded)."""
        if not requests:
            return []
        model = self._model()

        async def run():
            return await asyncio.gather(*(self._complete_one(r, model) for r in requests))

        return asyncio.run(self._session(run()))

    def tokenize(self, texts: Sequence[str], *, add_special: bool) -> list[list[int]] | None:
        """Token ids of ``texts`` by the first server's ``/tokenize`` (llama.cpp, vLLM); None if it has none."""
        model = self._model()

        async def run():
            server = self._servers[0]
            body = lambda t: {"content": t, "prompt": t, "model": model, "add_special": add_special, "add_special_tokens": add_special}
            first = await self._call(server, "POST", "/tokenize", body(texts[0]), optional=True)
            if first is None:
                return None
            rest = await asyncio.gather(*(self._call(server, "POST", "/tokenize", body(t)) for t in texts[1:]))
            return [list(map(int, r["tokens"])) for r in (first, *rest)]

        return asyncio.run(self._session(run())) if texts else []

    # -- async internals -------------------------------------------------------------------------

    async def _session(self, work):
        """Open one pooled connection set per server for ``work``, then close them."""
        timeout = httpx.Timeout(self.settings.request_timeout)
        limits = httpx.Limits(max_connections=self.settings.concurrency, max_keepalive_connections=self.settings.concurrency)
        for server in self._servers:
            server.http = httpx.AsyncClient(timeout=timeout, limits=limits, headers=self._headers)
            server.slots = asyncio.Semaphore(self.settings.concurrency)
        try:
            return await work
        finally:
            for server in self._servers:
                await server.http.aclose()
                server.http = server.slots = None

    async def _connect(self) -> ServerInfo:
        listed = await asyncio.gather(*(self._call(s, "GET", "/v1/models") for s in self._servers))
        names = [[m.get("id") for m in (data.get("data") or []) if isinstance(m, dict)] for data in listed]
        wanted = self.settings.served_model
        for server, models in zip(self._servers, names):
            if wanted is not None and wanted not in models:
                raise KnowtuneError(f"{server.base}: serves {models}, not {wanted!r}", fix="pass the --served-model name the server lists at /v1/models")
            if wanted is None and len(models) != 1:
                raise KnowtuneError(f"{server.base}: serves {len(models)} models {models[:5]}", fix="name one with --served-model")
        model = wanted or names[0][0]
        if any(models[0] != model for models in names if wanted is None):
            raise KnowtuneError(f"the servers serve different models: {dict(zip([s.host for s in self._servers], names))}",
                                fix="point every --base-url at a replica of the same model, or name it with --served-model")
        props = await asyncio.gather(*(self._call(s, "GET", "/props", optional=True) for s in self._servers))
        slots = [p.get("total_slots") for p in props if isinstance(p, dict) and isinstance(p.get("total_slots"), int)]
        return ServerInfo(model=model, hosts=tuple(s.host for s in self._servers), slots=min(slots) if slots else None)

    def _model(self) -> str:
        if self.info is None:
            self.connect()
        return self.info.model

    async def _complete_one(self, request: CompletionRequest, model: str) -> list[str]:
        """One request's completions; retries go to the next server (replicas are interchangeable)."""
        first = request.route % len(self._servers)
        order = self._servers[first:] + self._servers[:first]
        return await self._with_retries(order, lambda server: self._completion(server, request, model))

    async def _completion(self, server: _Server, request: CompletionRequest, model: str) -> list[str]:
        data = await self._post_once(server, "POST", server.base + ("/chat/completions" if request.chat else "/completions"), request.body(model))
        choices = data.get("choices") if isinstance(data, dict) else None
        if isinstance(choices, list) and request.chat:
            choices = [{"index": c.get("index", 0), "text": (c.get("message") or {}).get("content")} if isinstance(c, dict) else c for c in choices]
        if not isinstance(choices, list) or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in choices):
            raise RetryableError("a response without completion choices (truncated?)")
        if len(choices) != request.n:
            raise KnowtuneError(f"{server.base}: asked for n={request.n} completions, got {len(choices)}",
                                fix="pass --samples-per-request 1 for a server that returns one completion per request")
        expected, counted = request.prompt_tokens, (data.get("usage") or {}).get("prompt_tokens")
        if expected is not None and isinstance(counted, int) and counted != expected:
            raise KnowtuneError(
                f"{server.base}: the server counts {counted} prompt tokens where the local tokenizer has {expected}: it tokenizes prompts differently",
                fix="serve the model with the tokenizer of --model (for llama.cpp: a GGUF from `knowtune models export-gguf`), or pass the served model's tokenizer as --model")
        return [c["text"] for c in sorted(choices, key=lambda c: c.get("index", 0))]

    async def _call(self, server: _Server, method: str, path: str, body: dict | None = None, *, optional: bool = False):
        """One JSON call to ``server`` (``path`` from its root, or from its base if it starts with ``/v1``),
        with retries; ``optional``: None where the server has no such endpoint."""
        url = (server.base + path[3:]) if path.startswith("/v1/") else server.root + path
        return await self._with_retries([server], lambda s: self._post_once(s, method, url, body, optional=optional))

    async def _with_retries(self, servers: list[_Server], attempt: Callable[[_Server], Any]):
        """Run ``attempt(server)`` until it succeeds, going round ``servers`` and backing off on retryable errors."""
        last: RetryableError | None = None
        for tries in range(self.settings.max_retries + 1):
            server = servers[tries % len(servers)]
            try:
                async with server.slots:
                    return await asyncio.wait_for(attempt(server), self.settings.request_timeout)
            except asyncio.TimeoutError:
                last = RetryableError(f"timeout: no complete answer within {self.settings.request_timeout:g} s")
            except (httpx.TimeoutException, httpx.TransportError, httpx.DecodingError) as error:
                last = RetryableError(f"{type(error).__name__}: {error}")
            except RetryableError as error:
                last = error
            self.retries[str(last).split(":")[0].split(" (")[0]] += 1
            if tries < self.settings.max_retries:
                ceiling = min(_BACKOFF_CAP, self.settings.retry_backoff * 2 ** tries)
                await asyncio.sleep(max(random.uniform(0, ceiling), min(last.retry_after or 0.0, _BACKOFF_CAP)))
        raise KnowtuneError(f"{server.base}: gave up after {self.settings.max_retries + 1} attempts; last error: {last}",
                            fix="check that the servers are up and not overloaded (lower --concurrency), or raise --max-retries / --request-timeout")

    async def _post_once(self, server: _Server, method: str, url: str, body: dict | None = None, *, optional: bool = False):
        response = await server.http.request(method, url, json=body)
        if optional and response.status_code in _MISSING:
            return None
        if response.status_code in RETRY_STATUS:
            raise RetryableError(f"HTTP {response.status_code}", _retry_after(response))
        if response.status_code >= 400:
            raise KnowtuneError(f"{url}: HTTP {response.status_code}: {response.text[:300]}",
                                fix="check --base-url, --served-model and --api-key-env; the server's message above says what it refused")
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):
            raise RetryableError(f"a body that is not JSON ({len(response.content)} bytes, truncated?)") from None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
