"""Prometheus metrics of one app, aggregated across worker processes when they run in multiprocess mode.

With ``vistaste serve --workers N`` each worker is its own process. Set ``PROMETHEUS_MULTIPROC_DIR`` to
an empty, writable directory before starting the server (and empty it before each start): every
worker then writes its samples there and ``GET /metrics``, whichever worker answers, reports the sum
over all workers (prometheus_client's multiprocess mode). Without it, each process reports its own.
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


def multiprocess_dir() -> str | None:
    """The directory prometheus_client's multiprocess mode writes to, or None (read where the library reads it)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vistaste_requests_total", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram("vistaste_request_latency_seconds", "Request latency", ["endpoint"], registry=r,
                                 buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
        self.refused = Counter("vistaste_refused_total", "Requests refused or dropped before processing, by reason "
                               "(overloaded, deadline, rate_limited, too_large, unauthorized, client_gone, ...)", ["reason"], registry=r)
        self.events = Counter("vistaste_events_total", "Feedback events stored", ["event"], registry=r)
        self.ctr = Gauge("vistaste_ctr", "Clicks / impressions over all stored feedback", registry=r, multiprocess_mode="mostrecent")
        self.fallbacks = Counter("vistaste_fallback_total", "Non-personalised responses", ["reason"], registry=r)
        self.reloads = Counter("vistaste_model_reloads_total", "Model versions swapped in", registry=r)
        self.reload_failures = Counter("vistaste_model_reload_failures_total", "Failed attempts to load a new version", registry=r)
        self.version = Gauge("vistaste_model_version_info", "1 for the version a process serves (per process in multiprocess mode)",
                             ["version"], registry=r, multiprocess_mode="liveall")

    def serving(self, version: str, previous: str | None = None) -> None:
        if previous is not None and previous != version:
            self.version.labels(previous).set(0)
        self.version.labels(version).set(1)

    def exposition(self) -> bytes:
        """The text format of this process's metrics, or of all workers' in multiprocess mode."""
        if multiprocess_dir() is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
