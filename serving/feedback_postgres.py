"""The feedback store on PostgreSQL, for several serving replicas logging into one place.

The same table, constraints and behaviour as the SQLite store (`vistaste.serving.feedback`): ``record``
is one transaction and returns only after its COMMIT is acknowledged, with ``synchronous_commit=on``
forced for our sessions (and a server running with ``fsync=off`` refused), so an acknowledged event
survives the service or the database being killed. Timestamps are ``timestamptz`` (microseconds; the
SQLite file keeps ISO 8601 text); ``position`` is BIGINT to take the same 64-bit range.

Needs psycopg 3 and its pool: ``pip install 'vistaste[postgres]'``. This module is the only one that
imports them.
"""
from __future__ import annotations

import pandas as pd

from vistaste.serving.feedback import EventStore, clicks_frame, event_rows, events_frame

try:
    import psycopg
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the PostgreSQL feedback store needs psycopg 3 and psycopg-pool: pip install 'vistaste[postgres]'") from exc

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('impression', 'click', 'save')),
    timestamp TIMESTAMPTZ NOT NULL,
    position BIGINT,
    request_id TEXT,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, timestamp);
"""
SCHEMA_LOCK = 0x76697374  # advisory lock key ("vist"): replicas starting together create the table one at a time


def _configure(conn: psycopg.Connection) -> None:
    # Durable commits whatever the server's default, and UTC timestamps back.
    conn.execute("SET synchronous_commit = on")
    conn.execute("SET TIME ZONE 'UTC'")


class PostgresFeedbackStore(EventStore):
    """Append-only event log in a PostgreSQL table ``events``, shared by every replica that opens the same URL.

    A small connection pool per process: reads and writes from the service's threads do not queue behind one
    connection; PostgreSQL serialises nothing between them but row inserts.
    """

    def __init__(self, url: str, *, min_connections: int = 1, max_connections: int = 4, timeout_s: float = 10.0):
        if not 1 <= min_connections <= max_connections:
            raise ValueError(f"need 1 <= min_connections <= max_connections, got {min_connections} and {max_connections}")
        self.url = url
        # check: a connection broken by a database restart is replaced before use, not handed to a request.
        self._pool = ConnectionPool(url, min_size=min_connections, max_size=max_connections, timeout=timeout_s, open=False,
                                    kwargs={"autocommit": True}, configure=_configure, check=ConnectionPool.check_connection,
                                    name="vistaste-feedback")
        self._pool.open(wait=True, timeout=timeout_s)
        try:
            with self._pool.connection() as conn:
                if conn.execute("SHOW fsync").fetchone()[0] != "on":
                    raise ValueError(f"{self._safe_url()}: the server runs with fsync=off, so a committed event could be lost; "
                                     "the feedback store needs fsync=on")
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                    conn.execute(SCHEMA)
        except BaseException:
            self._pool.close()
            raise

    def _safe_url(self) -> str:
        """The URL without its password, for messages."""
        info = psycopg.conninfo.conninfo_to_dict(self.url)
        return " ".join(f"{k}={v}" for k, v in info.items() if k != "password")

    def record(self, events: list[dict]) -> int:
        rows = []
        for i, (user, item, event, timestamp, position, request_id) in enumerate(event_rows(events)):
            for name, text in (("user_id", user), ("item_id", item), ("request_id", request_id)):
                if text is not None and "\x00" in text:  # SQLite would store it; a PostgreSQL text value cannot hold NUL
                    raise ValueError(f"event {i}: {name!r} must not contain a NUL character (\\x00)")
            rows.append((user, item, event, timestamp.floor("us").to_pydatetime(), position, request_id))
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany("INSERT INTO events (user_id, item_id, event, timestamp, position, request_id) "
                               "VALUES (%s, %s, %s, %s, %s, %s)", rows)
        # Leaving conn.transaction() sent COMMIT and had it acknowledged (an error would have raised): durable now.
        return len(rows)

    def counts(self) -> dict[str, int]:
        with self._pool.connection() as conn:
            return dict(conn.execute("SELECT event, COUNT(*) FROM events GROUP BY event").fetchall())

    def user_events(self, user_id: str, limit: int = 500) -> list[tuple[str, str, pd.Timestamp]]:
        if "\x00" in user_id:  # no such user can be stored (record refuses NUL), and PostgreSQL cannot compare with it
            return []
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT item_id, event, timestamp FROM events WHERE user_id = %s ORDER BY timestamp DESC, id DESC LIMIT %s",
                                (user_id, limit)).fetchall()
        return [(item, event, pd.Timestamp(ts)) for item, event, ts in reversed(rows)]

    def clicks_since(self, since: pd.Timestamp) -> pd.DataFrame:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT item_id, timestamp FROM events WHERE event IN ('click', 'save') AND timestamp >= %s",
                                (since.tz_convert("UTC").floor("us").to_pydatetime(),)).fetchall()
        return clicks_frame(rows)

    def to_frame(self) -> pd.DataFrame:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT user_id, item_id, timestamp, event, position FROM events ORDER BY timestamp, id").fetchall()
        return events_frame(rows)

    def close(self) -> None:
        self._pool.close()
