"""The service's front door: a pure ASGI middleware that decides, before the app runs, whether a request
is let in.

In order, each from the request line and headers alone until the body step:

1. **Probes bypass everything**: ``/healthz``, ``/readyz``, ``/metrics`` and the API docs skip the
   limits below, so liveness and readiness are answered even under overload.
2. **Authentication**: ``POST /events`` needs ``X-API-Key`` equal to the write key; with a read key
   configured, the read endpoints need the read key (or the write key). Keys are compared as bytes in
   constant time (:func:`hmac.compare_digest`), before a single body byte is read. 401 otherwise
   (503 for writes while no write key is configured).
3. **Per-key rate limit** (optional): a token bucket per API key (per client address without one);
   429 with ``Retry-After`` when empty.
4. **Body size**: a declared ``Content-Length`` over the limit is refused at once; otherwise the bytes
   are counted as they arrive, whatever the transfer encoding (chunked included), and the request is
   refused with 413 as soon as the count passes the limit. Refusals close the connection.
5. **Admission**: at most ``max_concurrency`` requests are processed at once; up to ``max_queue``
   more wait, in order; beyond that, 503 with ``Retry-After`` straight away. A request waits at most
   until its deadline (``request_deadline_s`` after arrival), then gets 503; a request whose client
   disconnects while it waits is dropped without being processed. Once admitted, a request runs to
   completion (a slate takes milliseconds; cutting one short would only waste the work done).

It also records every request's status and latency per route (refusals included).
"""
from __future__ import annotations

import asyncio
import collections
import hmac
import math
import time
from collections.abc import Awaitable, Callable

from vistaste.serving.errors import error_bytes

PROBES = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class Admission:
    """A concurrency limit with a bounded FIFO queue (one per worker process, on its event loop)."""

    def __init__(self, concurrency: int, queue: int):
        if concurrency <= 0 or queue < 0:
            raise ValueError(f"concurrency must be > 0 and queue >= 0, got {concurrency} and {queue}")
        self.concurrency, self.queue = concurrency, queue
        self.running = 0
        self._waiting: collections.deque[asyncio.Future] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def enter(self, timeout: float, gone: Callable[[], Awaitable[object]]) -> str:
        """Wait for a slot: "ok" (call :meth:`leave` when done), "full" (queue full), "timeout" or "gone"
        (``gone()`` returned first: the client disconnected)."""
        if self.running < self.concurrency and not self._waiting:
            self.running += 1
            return "ok"
        if len(self._waiting) >= self.queue:
            return "full"
        if timeout <= 0:
            return "timeout"
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        watcher = asyncio.ensure_future(gone())
        try:
            done, _ = await asyncio.wait({turn, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (server shutting down): give back a slot we may have been handed
            self._abandon(turn)
            raise
        finally:
            watcher.cancel()
        if watcher in done or not turn.done():
            self._abandon(turn)
            return "gone" if watcher in done else "timeout"
        return "ok"

    def _abandon(self, turn: asyncio.Future) -> None:
        if turn.done() and not turn.cancelled():  # the slot was handed to us: pass it on
            self.leave()
        else:
            turn.cancel()
            try:
                self._waiting.remove(turn)
            except ValueError:
                pass

    def leave(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes straight to the next in line
                return
        self.running -= 1


class TokenBuckets:
    """Per-key token buckets: ``rate`` tokens/s, at most ``burst`` stored. Keys idle long enough to be
    full again are forgotten, so memory stays bounded by the keys active in the last ``burst/rate`` s."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[bytes, tuple[float, float]] = {}

    def take(self, key: bytes) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = self.clock()
        if len(self._buckets) > 10_000:
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < self.burst / self.rate}
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


def _key_matches(given: bytes | None, *expected: bytes | None) -> bool:
    if given is None:
        return False
    # Every configured key is compared (constant time each), whichever matches.
    return sum(hmac.compare_digest(given, key) for key in expected if key is not None) > 0


class Guard:
    """Pure ASGI middleware: see the module docstring. ``settings`` is the service's Settings;
    ``metrics`` has ``requests``/``latency``/``refused`` (vistaste.serving.metrics.Metrics)."""

    def __init__(self, app, settings, metrics, endpoint_of: Callable[[dict], str]):
        self.app, self.settings, self.metrics, self.endpoint_of = app, settings, metrics, endpoint_of
        self.admission = Admission(settings.max_concurrency, settings.max_queue)
        self.buckets = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst) if settings.rate_limit_per_s else None
        self.write_key = settings.api_key.get_secret_value().encode("utf-8") if settings.api_key else None
        self.read_key = settings.read_api_key.get_secret_value().encode("utf-8") if settings.read_api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500, "reason": None}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if scope["path"] in PROBES:
                await self.app(scope, receive, send_and_record)
            else:
                await self._guarded(scope, receive, send_and_record, started, status)
        finally:
            endpoint = self.endpoint_of(scope)
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            if status["reason"]:
                self.metrics.refused.labels(status["reason"]).inc()

    async def _refuse(self, send, status: dict, code: int, detail: str, kind: str, retry_after: float | None = None, close: bool = False):
        body = error_bytes(code, detail, kind)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry_after is not None:
            headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
        if close:  # the request body was not read: the connection cannot be reused
            headers.append((b"connection", b"close"))
        status["reason"] = kind
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _guarded(self, scope, receive, send, started: float, status: dict):
        settings = self.settings
        headers = scope["headers"]
        given_key = next((value for name, value in headers if name == b"x-api-key"), None)
        has_body = scope["method"] not in ("GET", "HEAD", "OPTIONS", "DELETE")
        path = scope["path"]

        # 2. Authentication, on headers only.
        if path == "/events" and scope["method"] == "POST":
            if self.write_key is None:
                return await self._refuse(send, status, 503, "writes are disabled: configure VISTASTE_API_KEY", "writes_disabled",
                                          close=has_body)
            if not _key_matches(given_key, self.write_key):
                return await self._refuse(send, status, 401, "missing or wrong X-API-Key", "unauthorized", close=has_body)
        elif self.read_key is not None and path.startswith("/recommendations"):
            if not _key_matches(given_key, self.read_key, self.write_key):
                return await self._refuse(send, status, 401, "missing or wrong X-API-Key (reads need a key on this server)", "unauthorized",
                                          close=has_body)

        # 3. Per-key rate limit.
        if self.buckets is not None:
            client = scope.get("client")
            key = b"key:" + given_key if given_key is not None else b"addr:" + str(client[0] if client else "").encode()
            wait = self.buckets.take(key)
            if wait > 0:
                return await self._refuse(send, status, 429, f"rate limit: at most {settings.rate_limit_per_s:g} requests/s "
                                          f"(burst {settings.rate_limit_burst}) per key", "rate_limited", retry_after=wait, close=has_body)

        # 4. Body size, declared and then counted while streaming.
        limit = settings.max_body_bytes
        declared = next((value for name, value in headers if name == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit():
                return await self._refuse(send, status, 400, "Content-Length must be a non-negative integer", "bad_request", close=True)
            if int(declared) > limit:
                detail = f"body is {int(declared)} bytes; the limit is {limit}"
                return await self._refuse(send, status, 413, detail, "too_large", close=True)
        chunks, size, disconnected = [], 0, False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await self._refuse(send, status, 413, f"body is over the limit of {limit} bytes", "too_large", close=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if disconnected:
            status["code"], status["reason"] = 499, "client_gone"  # nginx's code for "client closed the request"
            return

        # 5. Admission: a slot, a place in the queue, or 503.
        deadline = started + settings.request_deadline_s
        outcome = await self.admission.enter(deadline - time.perf_counter(), receive)
        if outcome == "gone":
            status["code"], status["reason"] = 499, "client_gone"
            return
        if outcome == "full":
            return await self._refuse(send, status, 503, f"overloaded: {self.admission.running} requests running and "
                                      f"{self.admission.waiting} waiting; retry later", "overloaded", retry_after=settings.retry_after_s)
        if outcome == "timeout":
            return await self._refuse(send, status, 503, f"deadline of {settings.request_deadline_s:g} s passed while waiting "
                                      "for a slot; retry later", "deadline", retry_after=settings.retry_after_s)
        try:
            body = b"".join(chunks)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        finally:
            self.admission.leave()
