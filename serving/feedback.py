"""Durable feedback store for impressions and clicks: SQLite in WAL mode on one machine, or PostgreSQL
shared by several serving replicas (`vistaste.serving.feedback_postgres`). `open_store` picks one from the
``feedback_db`` setting: a path or a ``postgresql://`` URL.

Why SQLite rather than DuckDB: it is in the standard library, WAL mode lets the HTTP workers read while
one writer appends, and with ``synchronous=FULL`` a committed transaction survives a killed process
(and power loss), so an event is acknowledged only after its commit. DuckDB is built for analytics
scans and allows one writing process. Both stores export to Parquet in the interaction-log schema, so
`vistaste train --feedback` closes the loop.
"""
from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import pandas as pd

from vistaste.data.contract import EVENTS
from vistaste.data.io import write_table

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
MAX_POSITION = 2**63 - 1  # a signed 64-bit integer: SQLite INTEGER, PostgreSQL BIGINT
FRAME_COLUMNS = ["user_id", "item_id", "timestamp", "event", "position"]  # the interaction-log columns of an export

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


# Where `vistaste serve` keeps impressions and clicks unless told otherwise (Settings.feedback_db and the CLI read it).
FEEDBACK_DB_DEFAULT = Path("feedback.sqlite")

def is_postgres_url(target: object) -> bool:
    """Whether a ``feedback_db`` value names a PostgreSQL server rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def open_store(target: str | Path) -> EventStore:
    """The feedback store a ``feedback_db`` setting names: a ``postgresql://`` URL opens the shared
    PostgreSQL store (needs ``pip install 'vistaste[postgres]'``), anything else is a SQLite file path.

    >>> store = open_store("feedback.sqlite")                          # doctest: +SKIP
    >>> store = open_store("postgresql://vistaste@db.internal/feedback")  # doctest: +SKIP
    """
    if is_postgres_url(target):
        from vistaste.serving.feedback_postgres import PostgresFeedbackStore

        return PostgresFeedbackStore(target)
    if str(target).startswith(tuple(scheme.replace("//", "/") for scheme in POSTGRES_SCHEMES)):
        # Path("postgresql://h/db") is "postgresql:/h/db": a URL that went through a path type, not a file to create.
        raise ValueError(f"feedback store {str(target)!r} looks like a PostgreSQL URL whose '//' was collapsed by a path type; "
                         "pass the URL as a string")
    return FeedbackStore(target)


def event_rows(events: list[dict]) -> list[tuple[str, str, str, pd.Timestamp, int | None, str | None]]:
    """Check a batch before anything is written and normalise it: (user_id, item_id, event, UTC timestamp,
    position, request_id) per event. Raises ValueError naming the event's index and the field."""
    rows = []
    for i, e in enumerate(events):
        missing = [name for name in ("user_id", "item_id", "event", "timestamp") if e.get(name) is None]
        if missing:
            raise ValueError(f"event {i}: missing {', '.join(repr(name) for name in missing)}")
        if e["event"] not in EVENTS:
            raise ValueError(f"event {i}: 'event' must be one of {EVENTS}, got {e['event']!r}")
        try:
            timestamp = pd.Timestamp(e["timestamp"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"event {i}: 'timestamp' must be a time, got {e['timestamp']!r} ({exc})") from None
        timestamp = timestamp.tz_localize("UTC") if timestamp.tzinfo is None else timestamp.tz_convert("UTC")
        position = e.get("position")
        if position is not None and (isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= MAX_POSITION):
            raise ValueError(f"event {i}: 'position' must be an integer from 0 to {MAX_POSITION} or absent, got {position!r}")
        request_id = None if e.get("request_id") is None else str(e["request_id"])
        rows.append((str(e["user_id"]), str(e["item_id"]), e["event"], timestamp, position, request_id))
    return rows


def events_frame(rows: list[tuple]) -> pd.DataFrame:
    """Interaction-log rows (user_id, item_id, timestamp, event, position) as the export's DataFrame:
    timestamps UTC, positions float (missing: NaN), the same whichever store they come from."""
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    frame["position"] = frame["position"].astype(float)
    return frame


def clicks_frame(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["item_id", "timestamp"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    return frame


class EventStore(ABC):
    """What the service and training read and write, whichever database holds the events. ``record`` is
    all or nothing and returns only after the batch is committed (an event is acknowledged only then)."""

    @abstractmethod
    def record(self, events: list[dict]) -> int:
        """Insert a batch atomically (all or nothing); returns the number stored."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Stored events per event type."""

    @abstractmethod
    def user_events(self, user_id: str, limit: int = 500) -> list[tuple[str, str, pd.Timestamp]]:
        """The user's latest ``limit`` events as (item_id, event, timestamp), oldest first: the hot path of
        serving (the seen-item policy and the live history), kept free of DataFrames."""

    @abstractmethod
    def clicks_since(self, since: pd.Timestamp) -> pd.DataFrame:
        """Clicks and saves at or after ``since``: columns item_id, timestamp (UTC)."""

    @abstractmethod
    def to_frame(self) -> pd.DataFrame:
        """Every event in the interaction-log schema (user_id, item_id, timestamp, event, position), in time order."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection(s)."""

    def export_parquet(self, path: str | Path) -> Path:
        return write_table(self.to_frame(), path)


class FeedbackStore(EventStore):
    """Append-only event log in one SQLite file. ``record`` returns only after the batch is committed to disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one writer at a time within the process; SQLite serialises across processes
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)

    def record(self, events: list[dict]) -> int:
        rows = [(user, item, event, timestamp.isoformat(), position, request_id)
                for user, item, event, timestamp, position, request_id in event_rows(events)]
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
        with self._lock:
            rows = self._conn.execute(
                "SELECT item_id, event, timestamp FROM events WHERE user_id = ? ORDER BY timestamp DESC, id DESC LIMIT ?",
                (user_id, limit)).fetchall()
        return [(item, event, pd.Timestamp(ts)) for item, event, ts in reversed(rows)]

    def clicks_since(self, since: pd.Timestamp) -> pd.DataFrame:
        with self._lock:
            rows = self._conn.execute("SELECT item_id, timestamp FROM events WHERE event IN ('click', 'save') AND timestamp >= ?",
                                      (since.tz_convert("UTC").isoformat(),)).fetchall()
        return clicks_frame(rows)

    def to_frame(self) -> pd.DataFrame:
        with self._lock:
            rows = self._conn.execute("SELECT user_id, item_id, timestamp, event, position FROM events ORDER BY timestamp, id").fetchall()
        return events_frame(rows)

    def close(self) -> None:
        self._conn.close()


def read_feedback_logs(path: str | Path) -> pd.DataFrame:
    """Interaction rows from a feedback store (a .sqlite/.db file or a ``postgresql://`` URL) or its Parquet export."""
    if is_postgres_url(path):
        store = open_store(path)
        try:
            return store.to_frame()
        finally:
            store.close()
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
