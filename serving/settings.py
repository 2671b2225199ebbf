"""Deployment settings for `vistaste serve`: one validated object, read from VISTASTE_* variables."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vistaste.serving.feedback import FEEDBACK_DB_DEFAULT, is_postgres_url
from vistaste.serving.rerank import DEFAULT_METHOD, Method
from vistaste.towers.config import CANDIDATES

MODELS_DIR = Path("models")  # the export root `vistaste export` writes and `serve` / `recommend` read by default


class Settings(BaseSettings):
    """Every field reads VISTASTE_<NAME>. With several worker processes, set PROMETHEUS_MULTIPROC_DIR too (an empty
    directory, emptied before each start) so /metrics sums all workers (vistaste.serving.metrics)."""

    model_config = SettingsConfigDict(env_prefix="VISTASTE_", env_file=None)

    models_dir: Path = Field(MODELS_DIR, description="Export root holding <version>/ directories and the 'current' pointer.")
    feedback_db: Path | str = Field(FEEDBACK_DB_DEFAULT, description="Where impressions and clicks are stored: a SQLite file path "
                                    "(one machine; WAL lets its worker processes share it), or a postgresql:// URL for one store "
                                    "shared by several replicas (needs the 'postgres' extra; vistaste.serving.feedback.open_store).")
    api_key: SecretStr | None = Field(None, description="Required in X-API-Key for POST /events; writes are refused while unset.")
    max_k: int = Field(500, gt=0)
    max_history: int = Field(500, gt=0)
    max_events: int = Field(1000, gt=0)
    max_body_bytes: int = Field(1_000_000, gt=0, description="Request bodies over this many bytes get 413, counted as they arrive "
                                "(chunked bodies included).")
    candidates: int = Field(CANDIDATES, gt=0, description="Candidates per request handed to the re-ranker (unseen ANN candidates "
                            "for known users and explicit histories, popular items for unknown users).")
    diversity: Method = Field(DEFAULT_METHOD,
                              description="Re-ranking: 'adaptive' (default: a window DPP whose diversity per user rises as they leave "
                              "slates early, read from their logged impressions; +7.5% clicks per user in the simulated 28-day A/B "
                              "with bored users, no cost without; docs/diversity.md), DPP, MMR or none.")
    trade_off: float | None = Field(None, ge=0.0, le=1.0, description="None: the method's measured default.")
    trend_weight: float | None = Field(None, ge=0.0, description="How much recent click velocity lifts candidates "
                                       "(relevance += weight * trend). None: the weight chosen on validation when the model was "
                                       "trained (its model card); 0: no trend boost.")
    trend_half_life_hours: float | None = Field(None, gt=0, description="Half-life of click velocity; None: the model's (model card).")
    seen: str = Field("consumed", pattern="^(consumed|recent)$", description="Seen-item policy (vistaste.data.seen): 'consumed' hides "
                      "everything the user clicked or saved before; 'recent' only what was consumed or shown within seen_window_hours.")
    seen_window_hours: float = Field(24.0 * 7, ge=0, description="'recent' policy: consumed or shown this recently is hidden.")
    seen_impression_window_hours: float = Field(24.0, ge=0, description="'consumed' policy: items shown this recently are hidden too.")
    reload_interval_s: float = Field(2.0, gt=0, description="How often 'current' is checked for a new version.")
    switch_delay_s: float = Field(10.0, ge=0, description="A new version goes live this long after 'current' changed (the pointer "
                                  "file's modification time) in every worker process at once: each loads it meanwhile, so no worker "
                                  "answers from the old version after another answered from the new one (a worker still loading then "
                                  "switches when loaded). 0: each worker switches as soon as it has loaded.")
    reload_backoff_max_s: float = Field(300.0, gt=0, description="A version that failed to load is retried after reload_interval_s "
                                        "doubled per failure, at most this long apart (a new 'current' target is tried at once).")
    # Overload protection (vistaste.serving.limits): per worker process.
    max_concurrency: int = Field(1, gt=0, description="Requests processed at once per worker process (recommendations, events); "
                                 "health, readiness and metrics bypass the limit. Parallelism comes from worker processes: two "
                                 "slates at once in one process ran slower than one after the other (48.8 vs 32.7 slates/s, 2 cores).")
    max_queue: int = Field(16, ge=0, description="Requests waiting for a slot per worker process; beyond it, 503 with Retry-After at once.")
    request_deadline_s: float = Field(2.0, gt=0, description="A request still waiting for a slot this long after it arrived gets 503 "
                                      "with Retry-After (it is not processed); one whose client disconnects while waiting is dropped.")
    retry_after_s: int = Field(1, gt=0, description="Retry-After (seconds) sent with 503 overload answers.")
    read_api_key: SecretStr | None = Field(None, description="When set, /recommendations needs X-API-Key equal to this key (or api_key); "
                                           "reads are open while unset.")
    rate_limit_per_s: float | None = Field(None, gt=0, description="Per-key rate limit (per API key, or per client address without one), "
                                           "requests/s per worker process; 429 with Retry-After beyond it. None: no limit.")
    rate_limit_burst: int = Field(20, gt=0, description="Requests a key may send at once before rate_limit_per_s applies.")
    image_base_url: str | None = Field(None, description="When set, each item also gets image_url = this + '/' + its dataset-relative "
                                       "image path (e.g. a CDN or static file server holding the dataset's images).")
    blas_threads: int = Field(1, gt=0, description="BLAS threads per server process. A slate's algebra is tiny; more threads "
                              "only spin against the other worker processes (p99 went from 37 ms to seconds on 2 cores).")

    @field_validator("feedback_db", mode="before")
    @classmethod
    def _store_target(cls, value):
        """A postgresql:// URL stays a string (a path type would collapse its '//'); anything else is a path."""
        return value if is_postgres_url(value) or not isinstance(value, str) else Path(value)

    def seen_policy(self):
        from vistaste.data.seen import SeenPolicy

        return SeenPolicy(self.seen, self.seen_window_hours, self.seen_impression_window_hours)


@lru_cache
def get_settings() -> Settings:
    return Settings()
