"""The feedback stores behave the same: every behaviour test runs against SQLite and against a real
PostgreSQL (pgserver's binaries; those cases skip, saying why, where it cannot start)."""
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pandas as pd
import pytest

from vistaste.serving import feedback
from vistaste.serving.feedback import EventStore, FeedbackStore, open_store, read_feedback_logs
from vistaste.serving.settings import Settings

T0 = pd.Timestamp("2024-05-01T12:00:00Z")


@pytest.fixture(params=["sqlite", "postgres"])
def target(request, tmp_path):
    """What `feedback_db` would hold: a SQLite path, or a postgresql:// URL to a fresh database."""
    return tmp_path / "fb.sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def store(target):
    opened = open_store(target)
    yield opened
    opened.close()


def click(user, item, minutes, event="click", **extra):
    return {"user_id": user, "item_id": item, "event": event, "timestamp": T0 + pd.Timedelta(minutes=minutes), **extra}


def test_open_store_picks_the_store_from_the_setting(target, store):
    assert isinstance(store, EventStore)
    assert type(store).__name__ == ("FeedbackStore" if isinstance(target, Path) else "PostgresFeedbackStore")
    assert Settings(feedback_db=str(target)).feedback_db == target  # a URL stays a string, a path a Path


def test_a_url_mangled_by_a_path_type_is_refused_not_made_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="looks like a PostgreSQL URL"):
        open_store(Path("postgresql://user@db/feedback"))
    assert list(tmp_path.iterdir()) == []


def test_record_and_count(store):
    assert store.record([click("u1", "a", 0, "impression", position=0, request_id="r1"), click("u1", "a", 1),
                         click("u2", "b", 2, "save")]) == 3
    assert store.record([click("u2", "c", 3)]) == 1
    assert store.counts() == {"impression": 1, "click": 2, "save": 1}


def test_user_events_are_the_latest_oldest_first(store):
    # Recorded out of time order; naive times are UTC, aware ones are converted; a tie keeps the order recorded.
    store.record([click("u1", "c", 30), click("u1", "a", 10, "impression"),
                  {"user_id": "u1", "item_id": "b", "event": "click", "timestamp": "2024-05-01T14:20:00+02:00"},  # 12:20 UTC
                  {"user_id": "u1", "item_id": "d", "event": "save", "timestamp": pd.Timestamp("2024-05-01T12:40:00")}])
    store.record([click("u1", "e", 40), click("u2", "z", 35)])
    at = [T0 + pd.Timedelta(minutes=m) for m in (10, 20, 30, 40, 40)]
    expected = [("a", "impression", at[0]), ("b", "click", at[1]), ("c", "click", at[2]), ("d", "save", at[3]), ("e", "click", at[4])]
    assert store.user_events("u1") == expected
    assert store.user_events("u1", limit=2) == expected[-2:]
    assert store.user_events("nobody") == []
    assert all(ts.tz is not None and ts.utcoffset() == pd.Timedelta(0) for _, _, ts in store.user_events("u1"))


def test_clicks_since_counts_clicks_and_saves_from_the_boundary_on(store):
    store.record([click("u1", "a", 0), click("u1", "b", 5, "impression"), click("u2", "c", 5, "save"), click("u3", "d", 10)])
    recent = store.clicks_since(T0 + pd.Timedelta(minutes=5))
    assert sorted(recent["item_id"]) == ["c", "d"]
    assert str(recent["timestamp"].dt.tz) == "UTC"
    assert len(store.clicks_since(T0 + pd.Timedelta(hours=1))) == 0


def test_export_round_trips_through_parquet_into_training(store, target, tmp_path):
    store.record([click("u1", "a", 2, "impression", position=3), click("u1", "a", 3, position=3), click("u2", "b", 1, "save")])
    frame = store.to_frame()
    assert list(frame.columns) == ["user_id", "item_id", "timestamp", "event", "position"]
    assert list(frame["event"]) == ["save", "impression", "click"]  # time order
    assert frame["position"].isna().tolist() == [True, False, False]
    path = store.export_parquet(tmp_path / "export.parquet")
    pd.testing.assert_frame_equal(read_feedback_logs(path), frame, check_dtype=False)  # Parquet may store a finer time unit
    pd.testing.assert_frame_equal(read_feedback_logs(target), frame)  # what `vistaste train --feedback` reads


def test_both_stores_export_the_same_frame(tmp_path, postgres_url):
    events = [click("u1", "a", 2, "impression", position=3), click("u1", "a", 3, position=3), click("u2", "b", 1, "save"),
              {"user_id": 7, "item_id": 8, "event": "click", "timestamp": "2024-05-01T12:00:00.123456Z"}]
    frames = []
    for where in (tmp_path / "fb.sqlite", postgres_url):
        with_store = open_store(where)
        with_store.record(events)
        frames.append((with_store.to_frame(), with_store.user_events("u1"), with_store.counts()))
        with_store.close()
    (sqlite_frame, sqlite_history, sqlite_counts), (pg_frame, pg_history, pg_counts) = frames
    pd.testing.assert_frame_equal(pg_frame, sqlite_frame)
    assert pg_history == sqlite_history and pg_counts == sqlite_counts


@pytest.mark.parametrize("bad, message", [
    ({"event": "purchase"}, r"event 2: 'event' must be one of .* got 'purchase'"),
    ({"user_id": None}, r"event 2: missing 'user_id'"),
    ({"timestamp": "yesterday-ish"}, r"event 2: 'timestamp' must be a time"),
    ({"position": -1}, r"event 2: 'position' must be an integer from 0"),
    ({"position": "3"}, r"event 2: 'position' must be an integer from 0"),
])
def test_a_bad_event_is_refused_with_its_index_and_nothing_is_written(store, bad, message):
    store.record([click("u0", "x", 0)])
    with pytest.raises(ValueError, match=message):
        store.record([click("u1", "a", 1), click("u1", "b", 2), {**click("u1", "c", 3), **bad}])
    assert store.counts() == {"click": 1}
    assert store.user_events("u1") == []


def test_the_database_refuses_what_slips_past_the_checks_and_rolls_back_the_batch(store, target, monkeypatch):
    # The table's CHECK is the last line: with the Python checks bypassed, the batch fails in the database, all of it.
    module = feedback if isinstance(store, FeedbackStore) else sys.modules[type(store).__module__]
    checked = feedback.event_rows
    monkeypatch.setattr(module, "event_rows", lambda events: checked(events[:-1]) + [("u1", "c", "purchase", T0, None, None)])
    if isinstance(store, FeedbackStore):
        refused = sqlite3.IntegrityError
    else:
        import psycopg

        refused = psycopg.errors.CheckViolation
    with pytest.raises(refused, match="CHECK constraint failed|violates check constraint"):
        store.record([click("u1", "a", 1), click("u1", "b", 2), click("u1", "c", 3)])
    assert store.counts() == {}
    monkeypatch.undo()
    assert store.record([click("u1", "a", 1)]) == 1  # the store is still usable after the rollback


def test_postgres_refuses_nul_which_its_text_cannot_hold(postgres_url):
    store = open_store(postgres_url)
    try:
        with pytest.raises(ValueError, match=r"event 1: 'user_id' must not contain a NUL"):
            store.record([click("u1", "a", 0), click("u\x00", "a", 0)])
        assert store.counts() == {}
        assert store.user_events("u\x00") == []
    finally:
        store.close()


def test_postgres_store_outlives_its_connections_being_cut(postgres_url):
    # What a database restart or failover does to a replica's pooled connections: the next request gets a fresh one.
    import psycopg

    store = open_store(postgres_url)
    try:
        store.record([click("u1", "a", 0)])
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            cut = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
        assert cut >= 1
        assert store.record([click("u1", "b", 1)]) == 1
        assert [item for item, _, _ in store.user_events("u1")] == ["a", "b"]
    finally:
        store.close()


WRITER = textwrap.dedent("""
    import sys, threading
    import pandas as pd
    from vistaste.serving.feedback import open_store

    target, name, threads, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = open_store(target)

    def write(t):
        for b in range(batches):
            store.record([{"user_id": f"{name}-{t}", "item_id": f"i{k}", "event": "click", "timestamp": pd.Timestamp.now(tz="UTC"),
                           "request_id": f"{name}-{t}-{b}-{k}"} for k in range(5)])

    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    store.close()
""")


def test_concurrent_writers_in_several_processes_and_threads_lose_nothing(target, tmp_path):
    processes, threads, batches = 3, 3, 20
    store = open_store(target)  # the schema exists before the writers start, as when the service is up
    command = [sys.executable, "-c", WRITER, str(target)]
    children = [subprocess.Popen([*command, f"p{p}", str(threads), str(batches)]) for p in range(processes)]
    # A reader in this process meanwhile, as the service reads while other replicas write.
    seen = []

    def read():
        for _ in range(20):
            seen.append(len(store.user_events("p0-0")))

    reading = threading.Thread(target=read)
    reading.start()
    assert [child.wait(timeout=120) for child in children] == [0] * processes
    reading.join()
    frame = store.to_frame()
    expected = processes * threads * batches * 5
    assert len(frame) == expected and store.counts() == {"click": expected}
    assert frame.groupby("user_id").size().to_dict() == {f"p{p}-{t}": batches * 5 for p in range(processes) for t in range(threads)}
    if isinstance(store, FeedbackStore):
        with sqlite3.connect(target) as conn:
            request_ids = [row[0] for row in conn.execute("SELECT request_id FROM events")]
    else:
        import psycopg

        with psycopg.connect(target) as conn:
            request_ids = [row[0] for row in conn.execute("SELECT request_id FROM events")]
    assert len(set(request_ids)) == expected  # each acknowledged event once: none lost, none doubled
    assert seen == sorted(seen)  # a reader never sees the log shrink
    store.close()
