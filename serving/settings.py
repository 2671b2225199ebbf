"""Deployment settings for `vistaste serve`: one validated object, read from VISTASTE_* variables."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VISTASTE_", env_file=None)

    models_dir: Path = Field(Path("models"), description="Export root holding <version>/ directories and the 'current' pointer.")
    feedback_db: Path = Field(Path("feedback.sqlite"), description="SQLite file for impressions and clicks.")
    api_key: SecretStr | None = Field(None, description="Required in X-API-Key for POST /events; writes are refused while unset.")
    max_k: int = Field(500, gt=0)
    max_history: int = Field(500, gt=0)
    max_events: int = Field(1000, gt=0)
    max_body_bytes: int = Field(1_000_000, gt=0)
    candidates: int = Field(200, gt=0, description="ANN candidates handed to the re-ranker.")
    diversity: str = Field("dpp", pattern="^(dpp|mmr|none)$", description="Re-ranking: DPP (default; kept CTR in the simulated A/B), MMR or none.")
    trade_off: float | None = Field(None, ge=0.0, le=1.0, description="None: the method's measured default.")
    trend_weight: float = Field(0.1, ge=0.0)
    trend_half_life_hours: float = Field(24.0, gt=0)
    seen: str = Field("consumed", pattern="^(consumed|recent)$", description="Seen-item policy (vistaste.data.seen): 'consumed' hides "
                      "everything the user clicked or saved before; 'recent' only what was consumed or shown within seen_window_hours.")
    seen_window_hours: float = Field(24.0 * 7, ge=0, description="'recent' policy: consumed or shown this recently is hidden.")
    seen_impression_window_hours: float = Field(24.0, ge=0, description="'consumed' policy: items shown this recently are hidden too.")
    reload_interval_s: float = Field(2.0, gt=0, description="How often 'current' is checked for a new version.")
    blas_threads: int = Field(1, gt=0, description="BLAS threads per server process. A slate's algebra is tiny; more threads "
                              "only spin against the other worker processes (p99 went from 37 ms to seconds on 2 cores).")

    def seen_policy(self):
        from vistaste.data.seen import SeenPolicy

        return SeenPolicy(self.seen, self.seen_window_hours, self.seen_impression_window_hours)


@lru_cache
def get_settings() -> Settings:
    return Settings()
