"""Durability: `kill -9` the service during concurrent writes; count acknowledged events that are lost.

    python benchmarks/durability.py --runs 10 --writers 4 --seconds 3

Each run starts `vistaste serve` (no model needed: events are stored without one) on a fresh SQLite
store, has WRITERS threads POST batches of events with unique request ids for about SECONDS, kills the
whole server process group with SIGKILL mid-stream, then opens the store and checks that every event
whose POST was answered 200 is there. Writes benchmarks/results/durability.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from overload import start_server  # noqa: E402

KEY = "durability-key"


def one_run(workdir: Path, writers: int, seconds: float, batch: int, workers: int) -> dict:
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
    os.killpg(server.pid, signal.SIGKILL)  # mid-stream, every process of the server
    server.wait()
    stop.set()
    for t in threads:
        t.join()
    with sqlite3.connect(workdir / "overload_feedback.sqlite") as conn:
        stored = {row[0] for row in conn.execute("SELECT request_id FROM events")}
    lost = [r for r in acknowledged if r not in stored]
    return {"acknowledged": len(acknowledged), "stored": len(stored), "lost": len(lost), "writers_cut_off": failed[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0, help="Writing time before the kill.")
    parser.add_argument("--batch", type=int, default=10, help="Events per POST.")
    parser.add_argument("--workers", type=int, default=1, help="Server processes.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/durability.json"))
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(Path(tmp), args.writers, args.seconds, args.batch, args.workers))
        print(f"run {i + 1}: {runs[-1]}")
    figures = {"runs": args.runs, "writers": args.writers, "workers": args.workers, "batch": args.batch,
               "seconds_before_kill": args.seconds,
               "acknowledged": sum(r["acknowledged"] for r in runs), "lost": sum(r["lost"] for r in runs), "per_run": runs,
               "target_lost": 0, "cpus": os.cpu_count(), "machine": platform.platform()}
    print(json.dumps({k: v for k, v in figures.items() if k != "per_run"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
