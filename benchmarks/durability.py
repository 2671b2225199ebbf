"""Durability: `kill -9` the service during concurrent writes; count acknowledged events that are lost.

    python benchmarks/durability.py --runs 10 --writers 4 --seconds 3
    python benchmarks/durability.py --store postgres --runs 10 --writers 4 --seconds 3

Each run starts `vistaste serve` (no model needed: events are stored without one) on a fresh store, has
WRITERS threads POST batches of events with unique request ids for about SECONDS, kills the whole server
process group with SIGKILL mid-stream, then opens the store and checks that every event whose POST was
answered 200 is there.

--store sqlite (default): a fresh SQLite file. --store postgres: a fresh PostgreSQL cluster from pgserver
(`pip install -e '.[test]'`), the service started on the app factory with VISTASTE_FEEDBACK_DB set to its
URL (the way `serve --workers N` starts each worker); by default the PostgreSQL server's processes are
SIGKILLed at the same moment as the service's (--no-kill-db: only the service), then it is restarted, so
the count is taken after its crash recovery. Writes benchmarks/results/durability.json, or
durability_postgres.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from overload import start_server  # noqa: E402

KEY = "durability-key"
# pgserver runs in a helper process, so the server outlives the handle (cleanup_mode=None) and a killed one is restarted
# (with crash recovery) by a fresh handle, as a new process would find it.
PG_START = "import sys, pgserver; print(pgserver.get_server(sys.argv[1], cleanup_mode=None).get_uri(), flush=True)"
PG_DELETE = "import sys, pgserver; pgserver.get_server(sys.argv[1], cleanup_mode='delete').cleanup()"


def start_postgres(pgdata: Path) -> str:
    """Start (or restart after a crash) the cluster in PGDATA; its URL."""
    return subprocess.run([sys.executable, "-c", PG_START, str(pgdata)], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip().splitlines()[-1]


def delete_postgres(pgdata: Path) -> None:
    subprocess.run([sys.executable, "-c", PG_DELETE, str(pgdata)], capture_output=True, check=True, timeout=120)


def kill_postgres(pgdata: Path) -> int:
    """SIGKILL the postmaster and every backend of the cluster at once, as a crash would; how many processes."""
    import psutil  # a pgserver dependency

    postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
    processes = [postmaster, *postmaster.children(recursive=True)]
    for process in processes:
        process.kill()
    psutil.wait_procs(processes, timeout=10)
    return len(processes)


def one_run(workdir: Path, writers: int, seconds: float, batch: int, workers: int, store: str = "sqlite", kill_db: bool = True) -> dict:
    if store == "postgres":
        pgdata = workdir / "pgdata"
        pgdata.mkdir()
        url = start_postgres(pgdata)
        try:
            server, base = start_server(workdir / "no-models", workdir, workers, {"VISTASTE_API_KEY": KEY}, probe="/healthz",
                                        feedback_db=url)
        except BaseException:
            delete_postgres(pgdata)
            raise
    else:
        server, base = start_server(workdir / "no-models", workdir, workers, {"VISTASTE_API_KEY": KEY}, probe="/healthz")
    acknowledged: list[str] = []
    failed = [0]
    stop = threading.Event()

    def write(writer: int):
        n = 0
        with httpx.Client(base_url=base, timeout=10, headers={"X-API-Key": KEY}) as client:
            while not stop.is_set():
                ids = [f"w{writer}-{n + i}" for i in range(batch)]
                n += batch
                events = [{"user_id": f"u{writer}", "item_id": "i1", "event": "click", "request_id": r} for r in ids]
                try:
                    if client.post("/events", json={"events": events}).status_code == 200:
                        acknowledged.extend(ids)
                except httpx.HTTPError:
                    failed[0] += 1
                    return

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    db_processes_killed = kill_postgres(workdir / "pgdata") if store == "postgres" and kill_db else 0
    os.killpg(server.pid, signal.SIGKILL)  # mid-stream, every process of the server
    server.wait()
    stop.set()
    for t in threads:
        t.join()
    if store == "postgres":
        import psycopg

        url = start_postgres(workdir / "pgdata")  # after a kill: crash recovery from the WAL
        try:
            with psycopg.connect(url) as conn:
                stored = {row[0] for row in conn.execute("SELECT request_id FROM events")}
            recovered = "automatic recovery in progress" in (workdir / "pgdata" / "log").read_text(errors="replace")
        finally:
            delete_postgres(workdir / "pgdata")
    else:
        with sqlite3.connect(workdir / "overload_feedback.sqlite") as conn:
            stored = {row[0] for row in conn.execute("SELECT request_id FROM events")}
    lost = [r for r in acknowledged if r not in stored]
    figures = {"acknowledged": len(acknowledged), "stored": len(stored), "lost": len(lost), "writers_cut_off": failed[0]}
    return {**figures, "db_processes_killed": db_processes_killed, "db_crash_recovery": recovered} if store == "postgres" else figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0, help="Writing time before the kill.")
    parser.add_argument("--batch", type=int, default=10, help="Events per POST.")
    parser.add_argument("--workers", type=int, default=1, help="Server processes.")
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite", help="The feedback store under test.")
    parser.add_argument("--kill-db", action=argparse.BooleanOptionalAction, default=True,
                        help="postgres: SIGKILL the database server too, at the same moment, and count after its recovery.")
    parser.add_argument("--out", type=Path, default=None,
                        help="Default: benchmarks/results/durability.json (sqlite) or durability_postgres.json (postgres).")
    args = parser.parse_args()
    out = args.out or Path("benchmarks/results") / ("durability.json" if args.store == "sqlite" else "durability_postgres.json")
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(Path(tmp), args.writers, args.seconds, args.batch, args.workers, args.store, args.kill_db))
        print(f"run {i + 1}: {runs[-1]}")
    store = {"store": "sqlite"} if args.store == "sqlite" else {"store": "postgres", "database_killed_too": args.kill_db,
                                                                "postgres": _postgres_version()}
    figures = {**store, "runs": args.runs, "writers": args.writers, "workers": args.workers, "batch": args.batch,
               "seconds_before_kill": args.seconds,
               "acknowledged": sum(r["acknowledged"] for r in runs), "lost": sum(r["lost"] for r in runs), "per_run": runs,
               "target_lost": 0, "cpus": os.cpu_count(), "machine": platform.platform()}
    print(json.dumps({k: v for k, v in figures.items() if k != "per_run"}, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))


def _postgres_version() -> str:
    from pgserver.postgres_server import POSTGRES_BIN_PATH

    return subprocess.run([str(POSTGRES_BIN_PATH / "postgres"), "--version"], capture_output=True, text=True, check=True).stdout.strip()


if __name__ == "__main__":
    main()
