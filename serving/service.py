"""`vistaste serve`: the HTTP service (FastAPI).

GET /recommendations/{user_id}?k=  POST /recommendations (anonymous history)  POST /events (API key)
GET /healthz  GET /metrics (Prometheus). The model loads in the lifespan; a background task swaps in a
new version when ``current`` changes (the old one keeps serving until the new one is fully loaded, so
no request fails during the swap). Domain errors map to HTTP statuses in one place.
"""
from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Literal

import pandas as pd
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field
from threadpoolctl import threadpool_limits

from vistaste.serving.export import current_version_dir
from vistaste.serving.feedback import FeedbackStore
from vistaste.serving.recommender import Recommender, SlateTooLarge, UnknownItems
from vistaste.data.trends import TrendTracker
from vistaste.serving.settings import Settings, get_settings


class LimitExceeded(ValueError):
    """A request over a configured limit; the message says the value and the rule."""


class IndexNotReady(RuntimeError):
    pass


class RecommendRequest(BaseModel):
    user_id: str | None = Field(None, max_length=200, description="Optional; anonymous when absent.")
    history: list[str] = Field(default_factory=list, description="Recently clicked item ids, oldest first.")
    k: int = Field(20, gt=0)
    method: Literal["dpp", "mmr", "none"] | None = None
    trade_off: float | None = Field(None, ge=0.0, le=1.0)


class Event(BaseModel):
    user_id: str = Field(..., min_length=1, max_length=200)
    item_id: str = Field(..., min_length=1, max_length=200)
    event: Literal["impression", "click", "save"]
    timestamp: datetime | None = None
    position: int | None = Field(None, ge=0)
    request_id: str | None = Field(None, max_length=100)


class EventBatch(BaseModel):
    events: list[Event] = Field(..., min_length=1)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("vistaste_requests_total", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("vistaste_request_latency_seconds", "Request latency", ["endpoint"], registry=self.registry,
                                 buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0))
        self.events = Counter("vistaste_events_total", "Feedback events stored", ["event"], registry=self.registry)
        self.ctr = Gauge("vistaste_ctr", "Clicks / impressions over all stored feedback", registry=self.registry)
        self.fallbacks = Counter("vistaste_fallback_total", "Non-personalised responses", ["reason"], registry=self.registry)
        self.reloads = Counter("vistaste_model_reloads_total", "Model versions swapped in", registry=self.registry)


class State:
    """What the app holds while running (set up in the lifespan)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.recommender: Recommender | None = None
        self.store: FeedbackStore | None = None
        self.metrics = Metrics()
        self._trend_cache: tuple[float, Recommender, dict[str, float]] | None = None

    def trend_scores(self) -> dict[str, float]:
        """Trend score per item, recomputed for the whole catalog at most every 10 s (not per request)."""
        now = time.monotonic()
        recommender = self.recommender
        if self._trend_cache is None or now - self._trend_cache[0] > 10 or self._trend_cache[1] is not recommender:
            since = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=self.settings.trend_half_life_hours * 4)
            tracker = TrendTracker(self.settings.trend_half_life_hours).fit(self.store.clicks_since(since), pd.Timestamp.now(tz="UTC"), recommender.item_tags)
            scores = {item: score for item, score in tracker.scores(recommender.item_ids, recommender.item_tags).items() if score > 0}
            self._trend_cache = (now, recommender, scores)
        return self._trend_cache[2]


async def _watch_current(app: FastAPI) -> None:
    state: State = app.state.vistaste
    while True:
        await asyncio.sleep(state.settings.reload_interval_s)
        try:
            target = current_version_dir(state.settings.models_dir)
            if state.recommender is None or target != state.recommender.version_dir:
                fresh = await asyncio.to_thread(Recommender, target, state.settings.seen_policy())
                state.recommender = fresh  # one reference swap: in-flight requests keep the old object
                state.metrics.reloads.inc()
        except Exception as exc:  # a bad new version must not take the service down; keep serving the old one
            print(f"vistaste: reload failed, still serving version {getattr(state.recommender, 'version', None)}: {exc}")


class LimitsAndMetrics:
    """Pure ASGI middleware (cheaper than ``@app.middleware``): refuses oversized bodies by their
    Content-Length and records request counts and latency per route."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state: State = scope["app"].state.vistaste
        started = time.perf_counter()
        status = {"code": 500}
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and int(length) > state.settings.max_body_bytes:
            response = JSONResponse({"detail": f"body is {int(length)} bytes; the limit is {state.settings.max_body_bytes}"}, status_code=413)
            await response(scope, receive, send)
            status["code"] = 413
        else:
            async def send_and_record(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            await self.app(scope, receive, send_and_record)
        route = scope.get("route")
        endpoint = route.path if route is not None else "unmatched"
        state.metrics.requests.labels(endpoint, str(status["code"])).inc()
        state.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = State(settings or get_settings())
        app.state.vistaste = state
        # Parallelism comes from worker processes (`serve --workers`): cap each one's BLAS pool, for good.
        threadpool_limits(limits=state.settings.blas_threads, user_api="blas")
        state.store = FeedbackStore(state.settings.feedback_db)
        try:
            state.recommender = await asyncio.to_thread(Recommender, state.settings.models_dir, state.settings.seen_policy())
        except FileNotFoundError as exc:
            print(f"vistaste: no model yet ({exc}); /recommendations answers 503 until one is exported")
        watcher = asyncio.create_task(_watch_current(app))
        yield
        watcher.cancel()
        state.store.close()

    app = FastAPI(title="vistaste", version="0.1.0", lifespan=lifespan)

    def state_of(request: Request) -> State:
        return request.app.state.vistaste

    def ready(state: State) -> Recommender:
        if state.recommender is None:
            raise IndexNotReady("no model loaded yet: run `vistaste export`")
        return state.recommender

    app.add_middleware(LimitsAndMetrics)

    @app.exception_handler(UnknownItems)
    async def unknown_items(request: Request, exc: UnknownItems):
        return JSONResponse({"detail": str(exc), "unknown_items": exc.items[:50]}, status_code=422)

    @app.exception_handler(LimitExceeded)
    @app.exception_handler(SlateTooLarge)
    async def over_limit(request: Request, exc: ValueError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(IndexNotReady)
    async def not_ready(request: Request, exc: IndexNotReady):
        return JSONResponse({"detail": str(exc)}, status_code=503)

    def check_limits(state: State, k: int, history_length: int = 0) -> None:
        if k > state.settings.max_k:
            raise LimitExceeded(f"k must be <= {state.settings.max_k}, got {k}")
        if history_length > state.settings.max_history:
            raise LimitExceeded(f"history must have <= {state.settings.max_history} items, got {history_length}")

    def slate_response(state: State, recommender: Recommender, user_id: str, k: int, history: list[str] | None, method, trade_off) -> dict:
        settings = state.settings
        live = state.store.user_events(user_id, limit=settings.max_history) if user_id else []
        clicked = [item for item, event, _ in live if event in ("click", "save") and item in recommender.row]
        if history is None and clicked:  # live history: clicks since the export count right away
            history = (recommender.stored_history(user_id) + clicked)[-settings.max_history:]
        trends = state.trend_scores() if settings.trend_weight > 0 else None
        slate = recommender.recommend(user_id, k, history=history, live_events=live, trend_scores=trends, method=method or settings.diversity,
                                      trade_off=settings.trade_off if trade_off is None else trade_off, trend_weight=settings.trend_weight,
                                      n_candidates=max(settings.candidates, k))
        if slate.fallback:
            state.metrics.fallbacks.labels(slate.fallback).inc()
        items = slate.items.to_dict(orient="records")
        for item in items:
            item["image_path"] = recommender.image_paths.get(item["item_id"])
            if item["diversity_gain"] != item["diversity_gain"]:  # NaN is not valid JSON
                item["diversity_gain"] = None
        return {"user_id": user_id, "version": slate.version, "fallback": slate.fallback, "history_length": slate.history_length,
                "request_id": uuid.uuid4().hex, "items": items}

    # async: a slate takes a few ms of CPU; running it on the loop skips the thread-pool hop, and
    # parallelism comes from worker processes (`vistaste serve --workers`).
    @app.get("/recommendations/{user_id}")
    async def recommendations(user_id: str = Path(..., min_length=1, max_length=200), k: int = Query(20, gt=0),
                        method: Literal["dpp", "mmr", "none"] | None = None, trade_off: float | None = Query(None, ge=0, le=1),
                        state: State = Depends(state_of)):
        check_limits(state, k)
        return slate_response(state, ready(state), user_id, k, None, method, trade_off)

    @app.post("/recommendations")
    async def recommendations_for_history(body: RecommendRequest, state: State = Depends(state_of)):
        check_limits(state, body.k, len(body.history))
        return slate_response(state, ready(state), body.user_id or "", body.k, list(body.history), body.method, body.trade_off)

    @app.post("/events")
    def events(body: EventBatch, x_api_key: str | None = Header(None), state: State = Depends(state_of)):
        expected = state.settings.api_key
        if expected is None:
            raise HTTPException(503, "writes are disabled: configure VISTASTE_API_KEY")
        if x_api_key is None or not secrets.compare_digest(x_api_key, expected.get_secret_value()):
            raise HTTPException(401, "missing or wrong X-API-Key")
        if len(body.events) > state.settings.max_events:
            raise LimitExceeded(f"a batch must have <= {state.settings.max_events} events, got {len(body.events)}")
        if state.recommender is not None:
            state.recommender.check_items([e.item_id for e in body.events])
        now = datetime.now(timezone.utc)
        stored = state.store.record([{**e.model_dump(), "timestamp": e.timestamp or now} for e in body.events])  # committed before we answer
        for e in body.events:
            state.metrics.events.labels(e.event).inc()
        return {"stored": stored}

    @app.get("/healthz")
    def healthz(state: State = Depends(state_of)):
        recommender = state.recommender
        return {"status": "ok" if recommender else "no-model", "version": recommender.version if recommender else None,
                "items": len(recommender.item_ids) if recommender else 0}

    @app.get("/metrics")
    def metrics(state: State = Depends(state_of)):
        counts = state.store.counts()
        impressions = counts.get("impression", 0)
        state.metrics.ctr.set(counts.get("click", 0) / impressions if impressions else 0.0)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
