"""Durable feedback store for impressions and clicks: SQLite in WAL mode.

Why SQLite rather than DuckDB: it is in the standard library, WAL mode lets the HTTP workers read while
one writer appends, and with ``synchronous=FULL`` a committed transaction survives a killed process
(and power loss), so an event is acknowledged only after its commit. DuckDB is built for analytics
scans and allows one writing process. Exports go to Parquet in the interaction-log schema, so
`vistaste train --feedback` closes the loop.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pandas as pd

from vistaste.data.io import write_table
from vistaste.data.schema import EVENTS

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('impression', 'click', 'save')),
    timestamp TEXT NOT NULL,
    position INTEGER,
    request_id TEXT,
    received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, timestamp);
"""


class FeedbackStore:
    """Append-only event log. ``record`` returns only after the batch is committed to disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one writer at a time within the process; SQLite serialises across processes
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)

    def record(self, events: list[dict]) -> int:
        """Insert a batch atomically (all or nothing); returns the number stored."""
        rows = []
        for i, e in enumerate(events):
            if e["event"] not in EVENTS:
                raise ValueError(f"event {i}: 'event' must be one of {EVENTS}, got {e['event']!r}")
            timestamp = pd.Timestamp(e["timestamp"])
            timestamp = timestamp.tz_localize("UTC") if timestamp.tzinfo is None else timestamp.tz_convert("UTC")
            rows.append((str(e["user_id"]), str(e["item_id"]), e["event"], timestamp.isoformat(), e.get("position"), e.get("request_id")))
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT INTO events (user_id, item_id, event, timestamp, position, request_id) "
                                       "VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return len(rows)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._conn.execute("SELECT event, COUNT(*) FROM events GROUP BY event").fetchall())

    def user_events(self, user_id: str, limit: int = 500) -> list[tuple[str, str, pd.Timestamp]]:
        """The user's latest ``limit`` events as (item_id, event, timestamp), oldest first: the hot path of
        serving (the seen-item policy and the live history), kept free of DataFrames."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT item_id, event, timestamp FROM events WHERE user_id = ? ORDER BY timestamp DESC, id DESC LIMIT ?",
                (user_id, limit)).fetchall()
        return [(item, event, pd.Timestamp(ts)) for item, event, ts in reversed(rows)]

    def clicks_since(self, since: pd.Timestamp) -> pd.DataFrame:
        with self._lock:
            rows = self._conn.execute("SELECT item_id, timestamp FROM events WHERE event IN ('click', 'save') AND timestamp >= ?",
                                      (since.tz_convert("UTC").isoformat(),)).fetchall()
        frame = pd.DataFrame(rows, columns=["item_id", "timestamp"])
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
        return frame

    def to_frame(self) -> pd.DataFrame:
        with self._lock:
            frame = pd.read_sql_query("SELECT user_id, item_id, timestamp, event, position FROM events ORDER BY timestamp, id", self._conn)
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
        frame["position"] = frame["position"].astype(float)
        return frame

    def export_parquet(self, path: str | Path) -> Path:
        return write_table(self.to_frame(), path)

    def close(self) -> None:
        self._conn.close()


def read_feedback_logs(path: str | Path) -> pd.DataFrame:
    """Interaction rows from a feedback store (.sqlite/.db) or its Parquet export."""
    path = Path(path)
    if path.suffix in (".parquet", ".csv"):
        from vistaste.data.io import read_table

        frame = read_table(path)
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
        return frame
    if not path.exists():
        raise FileNotFoundError(f"{path}: feedback store not found")
    store = FeedbackStore(path)
    try:
        return store.to_frame()
    finally:
        store.close()
