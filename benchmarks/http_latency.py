"""HTTP latency at a fixed request rate, re-ranking on, against a local `vistaste serve`.

    python benchmarks/http_latency.py --models demo_out/exported --rate 100 --seconds 20 --k 20

Starts the service on 127.0.0.1 (a free port), sends GET /recommendations/{user}?k= at RATE
requests/s for SECONDS (open loop: requests are issued on schedule whatever the latency), then
reports p50/p95/p99 latency, errors and 5xx counts. Bounded in count and time; localhost only.
Writes benchmarks/results/http_latency.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(base: str, users: list[str], rate: float, seconds: float, k: int) -> tuple[list[float], list[int]]:
    latencies, statuses = [], []
    total = int(rate * seconds)
    async with httpx.AsyncClient(base_url=base, timeout=10, limits=httpx.Limits(max_connections=64)) as client:
        async def one(i: int):
            start = time.perf_counter()
            try:
                response = await client.get(f"/recommendations/{users[i % len(users)]}", params={"k": k})
                statuses.append(response.status_code)
            except httpx.HTTPError:
                statuses.append(-1)
            latencies.append(time.perf_counter() - start)

        tasks, t0 = [], time.perf_counter()
        for i in range(total):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return latencies, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("demo_out/exported"))
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="Server processes.")
    args = parser.parse_args()

    users = [str(u) for u in np.load(next(iter(sorted(args.models.glob("[0-9]*")))) / "users.npz")["ids"][:500]]
    port = _free_port()
    feedback = args.models.parent / "bench_feedback.sqlite"
    server = subprocess.Popen([sys.executable, "-m", "vistaste.apps.cli", "serve", "--models", str(args.models),
                               "--feedback-db", str(feedback),
                               "--port", str(port), "--workers", str(args.workers)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).json().get("status") == "ok":
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("service did not start")
            time.sleep(0.5)
        for user in users[:20]:  # warm up
            httpx.get(f"{base}/recommendations/{user}", params={"k": args.k})
        latencies, statuses = asyncio.run(_load(base, users, args.rate, args.seconds, args.k))
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = np.array(latencies) * 1000
    figures = {
        "requests": len(ms), "workers": args.workers, "rate_per_s": args.rate, "seconds": args.seconds, "k": args.k,
        "p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2),
        "errors": int(sum(s != 200 for s in statuses)), "status_5xx": int(sum(500 <= s < 600 for s in statuses)),
        "cpus": os.cpu_count(), "machine": platform.platform(), "target_p99_ms": 50,
    }
    for key, value in figures.items():
        print(f"{key:<14}{value}")
    results = Path("benchmarks/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / "http_latency.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
