"""`vistaste serve`: the HTTP service (FastAPI).

GET /recommendations/{user_id}?k=  POST /recommendations (anonymous history)  POST /events (API key)
GET /healthz (liveness)  GET /readyz (readiness)  GET /metrics (Prometheus). The model loads in the
lifespan; a background task swaps in a new version when ``current`` changes (the old one keeps
serving until the new one is fully loaded, so no request fails during the swap; see
vistaste.serving.lifecycle). In front of the app, vistaste.serving.limits authenticates, rate-limits,
caps body sizes while streaming and bounds the work in flight. Domain errors map to HTTP statuses in
one place, and every error body is the JSON-safe ErrorBody (vistaste.serving.errors). The request and
response models, and the errors each route documents, are in vistaste.serving.schemas.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path as FilePath

import pandas as pd
from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException
from threadpoolctl import threadpool_limits

from vistaste.data.trends import TrendSetting
from vistaste.serving.errors import error_content, validation_errors
from vistaste.serving.feedback import EventStore, open_store
from vistaste.serving.lifecycle import ModelLoadError, load_version, resolve_target, watch_current
from vistaste.serving.limits import Guard
from vistaste.serving.metrics import Metrics
from vistaste.serving.recommender import Recommender, SlateTooLarge, UnknownItems
from vistaste.serving.rerank import Method
from vistaste.serving.schemas import (
    ERRORS,
    METHOD_DESCRIPTION,
    NOT_FOUND,
    UNAUTHORIZED,
    EventBatch,
    Health,
    Readiness,
    RecommendRequest,
    SlateItem,
    SlateResponse,
    Stored,
)
from vistaste.serving.settings import Settings, get_settings

log = logging.getLogger("vistaste.serving")
TREND_REFRESH_S = 10.0  # trend scores are recomputed for the whole catalog at most this often, not per request


class LimitExceeded(ValueError):
    """A request over a configured limit; the message says the value and the rule."""


class IndexNotReady(RuntimeError):
    pass


def public_image_path(path, dataset_dir: str | None) -> str | None:
    """A catalog image path as the API may show it: relative to the dataset directory, or None.

    Relative paths that stay inside the dataset pass through; absolute ones are made relative to
    ``dataset_dir`` when they lie inside it; anything else (outside, or no dataset directory known)
    is withheld rather than revealing where files live on the server.
    """
    if not isinstance(path, str) or not path:
        return None
    candidate = FilePath(path)
    if candidate.is_absolute():
        if not dataset_dir:
            return None
        try:
            candidate = candidate.relative_to(FilePath(dataset_dir))
        except ValueError:
            return None
    if candidate.is_absolute() or ".." in candidate.parts:
        return None
    return candidate.as_posix()


class State:
    """What the app holds while running (set up in the lifespan)."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.recommender: Recommender | None = None
        self.store: EventStore | None = None
        self.metrics = metrics
        self._trend_cache: tuple[float, Recommender, TrendSetting, dict[str, float]] | None = None

    def trend_setting(self, recommender: Recommender) -> TrendSetting:
        """The model's trend boost (chosen on validation in training), with any setting given explicitly."""
        chosen = recommender.trend
        return dataclasses.replace(chosen, weight=chosen.weight if self.settings.trend_weight is None else self.settings.trend_weight,
                                   half_life_hours=self.settings.trend_half_life_hours or chosen.half_life_hours)

    def trend_scores(self, setting: TrendSetting) -> dict[str, float]:
        """Trend score per item over the whole catalog (the export's recent clicks plus live ones), recomputed
        at most every ``TREND_REFRESH_S`` seconds, not per request."""
        now = time.monotonic()
        recommender = self.recommender
        cache = self._trend_cache
        if cache is None or now - cache[0] > TREND_REFRESH_S or cache[1] is not recommender or cache[2] != setting:
            wall = pd.Timestamp.now(tz="UTC")
            live = self.store.clicks_since(wall - setting.memory())
            scores = recommender.trend_scores(wall, live, setting)
            self._trend_cache = cache = (now, recommender, setting, {item: score for item, score in scores.items() if score > 0})
        return cache[3]



def _endpoint_of(scope: dict) -> str:
    """The route template a request matched, for metric labels (refusals included: they never reach the router)."""
    route = scope.get("route")
    if route is not None:
        return route.path
    path = scope.get("path", "")
    if path in ("/events", "/recommendations"):
        return path
    if path.startswith("/recommendations/"):
        return "/recommendations/{user_id}"
    return "unmatched"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for ``settings`` (default: the environment's, validated here, at start-up, so the limits the
    routes declare are fixed per app): the lifespan, the Guard in front, the error handlers, the routes."""
    settings = settings or get_settings()
    app = FastAPI(title="vistaste", version="0.1.0", lifespan=lifespan,
                  description="Personalised visual discovery. Every error answers the ErrorBody JSON model.")
    app.state.settings, app.state.metrics = settings, Metrics()
    app.add_middleware(Guard, settings=settings, metrics=app.state.metrics, endpoint_of=_endpoint_of)
    app.add_middleware(_OneLineStartupFailure)
    for exception, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(exception, handler)
    _add_routes(app, settings)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Open the feedback store, load the current model (none yet: 503s until one is exported; one that
    cannot load: refuse to start, in one line), and watch ``current`` for new versions."""
    settings, metrics = app.state.settings, app.state.metrics
    state = State(settings, metrics)
    app.state.vistaste = state
    # Parallelism comes from worker processes (`serve --workers`): cap each one's BLAS pool, for good.
    threadpool_limits(limits=settings.blas_threads, user_api="blas")
    state.store = open_store(settings.feedback_db)
    try:
        target = resolve_target(settings.models_dir)
        state.recommender = await asyncio.to_thread(load_version, target, settings.seen_policy())
        metrics.serving(state.recommender.version)
    except FileNotFoundError as exc:
        log.warning("no model yet (%s); /recommendations answers 503 until one is exported", exc)
    except ModelLoadError as exc:
        # Refuse to start, in one line: the Guard hands this text to the server instead of a traceback.
        app.state.startup_refused = f"vistaste: refusing to start: {exc}"
        state.store.close()
        raise
    watcher = asyncio.create_task(watch_current(state))
    yield
    watcher.cancel()
    state.store.close()


# ---------------------------------------------------------------------------------------------- errors
def _error(status: int, detail: str, kind: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse(error_content(status, detail, kind, **extra), status_code=status, headers=headers)


async def _invalid(request: Request, exc: RequestValidationError):
    detail, items = validation_errors(exc.errors())
    return _error(422, detail, "validation", errors=items)


async def _http_error(request: Request, exc: StarletteHTTPException):
    return _error(exc.status_code, str(exc.detail), "bad_request" if exc.status_code == 400 else "http", headers=exc.headers)


async def _unknown_items(request: Request, exc: UnknownItems):
    return _error(422, str(exc), "unknown_items", unknown_items=[str(i) for i in exc.items[:50]])


async def _over_limit(request: Request, exc: ValueError):
    return _error(422, str(exc), "limit")


async def _not_ready(request: Request, exc: IndexNotReady):
    retry = max(1, round(request.app.state.settings.reload_interval_s))
    return _error(503, str(exc), "not_ready", headers={"Retry-After": str(retry)})


# Domain errors -> HTTP statuses, in one place; every body is the ErrorBody model.
ERROR_HANDLERS = {RequestValidationError: _invalid, StarletteHTTPException: _http_error, UnknownItems: _unknown_items,
                  LimitExceeded: _over_limit, SlateTooLarge: _over_limit, IndexNotReady: _not_ready}


# ---------------------------------------------------------------------------------------------- slates
def state_of(request: Request) -> State:
    return request.app.state.vistaste


def ready(state: State) -> Recommender:
    if state.recommender is None:
        raise IndexNotReady("no model loaded yet: run `vistaste export`")
    return state.recommender


def check_limits(settings: Settings, k: int, history_length: int = 0) -> None:
    if k > settings.max_k:
        raise LimitExceeded(f"k must be <= {settings.max_k}, got {k}")
    if history_length > settings.max_history:
        raise LimitExceeded(f"history must have <= {settings.max_history} items, got {history_length}")


def slate_response(state: State, recommender: Recommender, user_id: str, k: int, history: list[str] | None, method,
                   trade_off) -> SlateResponse:
    """One slate as the API answers it: live clicks join the stored history, the model's trend boost and
    the re-ranker apply, image paths are made public (never a server path)."""
    settings = state.settings
    live = state.store.user_events(user_id, limit=settings.max_history) if user_id else []
    clicked = [item for item, event, _ in live if event in ("click", "save") and item in recommender.row]
    if history is None and clicked:  # live history: clicks since the export count right away
        history = (recommender.stored_history(user_id) + clicked)[-settings.max_history:]
    trend = state.trend_setting(recommender)
    trends = state.trend_scores(trend) if trend.weight > 0 else {}
    slate = recommender.recommend(user_id, k, history=history, live_events=live, trend_scores=trends,
                                  method=method or settings.diversity,
                                  trade_off=settings.trade_off if trade_off is None else trade_off, trend_weight=trend.weight,
                                  trend_slots=trend.slots,
                                  n_candidates=max(settings.candidates, k))
    if slate.fallback:
        state.metrics.fallbacks.labels(slate.fallback).inc()
    dataset_dir = (recommender.card.get("data") or {}).get("dataset_dir")
    items = []
    for item in slate.items.to_dict(orient="records"):
        image_path = public_image_path(recommender.image_paths.get(item["item_id"]), dataset_dir)
        image_url = f"{settings.image_base_url.rstrip('/')}/{image_path}" if settings.image_base_url and image_path else None
        items.append(SlateItem(**{**item, "image_path": image_path, "image_url": image_url}))
    return SlateResponse(user_id=user_id, version=slate.version, fallback=slate.fallback, history_length=slate.history_length,
                         request_id=uuid.uuid4().hex, items=items)


# ---------------------------------------------------------------------------------------------- routes
def _add_routes(app: FastAPI, settings: Settings) -> None:
    """The routes, with what ``settings`` fixes in them: the k limit and whether reads need a key."""
    api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The write key (POST /events); the read key when configured.")
    read_security = [Security(api_key)] if settings.read_api_key is not None else []
    read_errors = {**ERRORS, **(UNAUTHORIZED if settings.read_api_key is not None else {})}

    # Plain `def`: FastAPI runs these in its thread pool, so the event loop stays free to answer probes,
    # refusals and disconnects while a slate is computed; the Guard bounds how many run at once.
    @app.get("/recommendations/{user_id}", response_model=SlateResponse, responses={**read_errors, **NOT_FOUND}, dependencies=read_security)
    def recommendations(user_id: str = Path(..., min_length=1, max_length=200), k: int = Query(20, gt=0, le=settings.max_k),
                        method: Method | None = Query(None, description=METHOD_DESCRIPTION),
                        trade_off: float | None = Query(None, ge=0, le=1, allow_inf_nan=False),
                        state: State = Depends(state_of)):
        check_limits(state.settings, k)
        return slate_response(state, ready(state), user_id, k, None, method, trade_off)

    @app.post("/recommendations", response_model=SlateResponse, responses=read_errors, dependencies=read_security)
    def recommendations_for_history(body: RecommendRequest, state: State = Depends(state_of)):
        check_limits(state.settings, body.k, len(body.history))
        return slate_response(state, ready(state), body.user_id or "", body.k, list(body.history), body.method, body.trade_off)

    # The key is checked by the Guard before the body is read; the dependency documents it.
    @app.post("/events", response_model=Stored, responses={**ERRORS, **UNAUTHORIZED}, dependencies=[Security(api_key)])
    def events(body: EventBatch, state: State = Depends(state_of)):
        if len(body.events) > state.settings.max_events:
            raise LimitExceeded(f"a batch must have <= {state.settings.max_events} events, got {len(body.events)}")
        if state.recommender is not None:
            state.recommender.check_items([e.item_id for e in body.events])
        now = datetime.now(timezone.utc)
        # Committed before we answer.
        stored = state.store.record([{**e.model_dump(), "timestamp": e.timestamp or now} for e in body.events])
        for e in body.events:
            state.metrics.events.labels(e.event).inc()
        return Stored(stored=stored)

    @app.get("/healthz", response_model=Health)
    async def healthz(state: State = Depends(state_of)):
        """Liveness: the process answers (never queued behind requests)."""
        recommender = state.recommender
        return Health(status="ok" if recommender else "no-model", version=recommender.version if recommender else None,
                      items=len(recommender.item_ids) if recommender else 0)

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "Not ready: no model loaded."}})
    async def readyz(state: State = Depends(state_of)):
        """Readiness: a model is loaded and the feedback store is open (never queued behind requests)."""
        recommender = state.recommender
        try:
            current = resolve_target(state.settings.models_dir).name
        except (FileNotFoundError, ModelLoadError):
            current = None
        if recommender is None or state.store is None:
            return JSONResponse(Readiness(ready=False, current=current, detail="no model loaded yet").model_dump(), status_code=503)
        return Readiness(ready=True, version=recommender.version, current=current)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}}})
    def metrics_endpoint(state: State = Depends(state_of)):
        counts = state.store.counts()
        impressions = counts.get("impression", 0)
        state.metrics.ctr.set(counts.get("click", 0) / impressions if impressions else 0.0)
        return PlainTextResponse(state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


class _OneLineStartupFailure:
    """Start-up refused with a known reason: hand the server that one line instead of Starlette's traceback
    (uvicorn then logs it and exits; with --workers the parent stops too)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def send_reason(message):
            reason = getattr(scope["app"].state, "startup_refused", None)
            if message["type"] == "lifespan.startup.failed" and reason:
                message = {**message, "message": reason}
            await send(message)

        await self.app(scope, receive, send_reason)
