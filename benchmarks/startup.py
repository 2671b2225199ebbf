"""Service start-up time: from `vistaste serve` to the first ready answer and the first slate.

    python benchmarks/startup.py --models demo_out/exported --workers 1 2

Starts the server as users do (a subprocess), polls /readyz every 50 ms until it answers 200, then
times the first /recommendations. Writes benchmarks/results/startup.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(models: Path, workers: int, timeout: float = 300.0) -> dict:
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "VISTASTE_API_KEY": "startup-benchmark"}
        if workers > 1:
            env["PROMETHEUS_MULTIPROC_DIR"] = tmp
        command = [sys.executable, "-m", "vistaste.apps.cli", "serve", "--models", str(models), "--feedback-db",
                   str(Path(tmp) / "fb.sqlite"), "--port", str(port), "--workers", str(workers)]
        started = time.perf_counter()
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                ready = None
                while time.perf_counter() - started < timeout:
                    try:
                        if client.get("/readyz").status_code == 200:
                            ready = time.perf_counter() - started
                            break
                    except httpx.TransportError:
                        pass
                    if server.poll() is not None:
                        raise RuntimeError(f"server exited: {server.stderr.read().decode()[-500:]}")
                    time.sleep(0.05)
                readiness = client.get("/readyz").json()
                first = time.perf_counter()
                status = client.get("/recommendations/anyone", params={"k": 10}).status_code
                first_slate = time.perf_counter() - first
        finally:
            server.terminate()
            server.wait(timeout=60)
    return {"workers": workers, "ready_s": round(ready, 2) if ready else None, "first_slate_s": round(first_slate, 3),
            "first_slate_status": status, "version": readiness.get("version")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("demo_out/exported"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/startup.json"))
    args = parser.parse_args()
    rows = []
    for workers in args.workers:
        rows.append(measure(args.models, workers))
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figures = {"rows": rows, "models": str(args.models), "cpus": os.cpu_count(), "machine": platform.platform()}
    args.out.write_text(json.dumps(figures, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
