"""Service start-up time: from `vistaste serve` to the first ready answer and the first slate.

    python benchmarks/startup.py --models demo_out/exported --workers 1 2 --repeat 3

Starts the server as users do (a subprocess), polls /readyz every 50 ms until it answers 200, then
times the first /recommendations for an unknown user (popular items) and for a known one (the first
ScaNN query of the SavedModel). Each row is the median of ``--repeat`` starts; ``cpu_s`` is the CPU time
of the server's whole process tree from start to exit (steadier than wall time on a shared machine).
Writes benchmarks/results/startup.json.

Without demo_out/exported (`make demo`, ~10 min with images), a 2,000-item export without images takes
about 30 s:

    vistaste world --out W --items 2000 --users 1000 --days 30 --no-images
    vistaste train W --out M --epochs 2 && vistaste export M --data W --out E
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
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


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _known_user(models: Path) -> str | None:
    import numpy as np

    from vistaste.serving.versions import current_version_dir

    ids = np.load(current_version_dir(models) / "users.npz")["ids"]
    return str(ids[0]) if len(ids) else None


def measure(models: Path, workers: int, timeout: float = 300.0) -> dict:
    port = _free_port()
    known = _known_user(models)
    cpu_before = _children_cpu()
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
                first = time.perf_counter()
                known_status = client.get(f"/recommendations/{known}", params={"k": 10}).status_code if known else None
                first_known = time.perf_counter() - first
        finally:
            server.terminate()
            server.wait(timeout=60)
    return {"workers": workers, "ready_s": round(ready, 2) if ready else None, "cpu_s": round(_children_cpu() - cpu_before, 2),
            "first_slate_s": round(first_slate, 3), "first_slate_status": status,
            "first_known_user_slate_s": round(first_known, 3), "first_known_user_status": known_status, "version": readiness.get("version")}


def median_row(runs: list[dict]) -> dict:
    """One row: the median of each timing over ``runs`` (every run's ready_s kept), statuses from the last run."""
    row = dict(runs[-1])
    for key in ("ready_s", "cpu_s", "first_slate_s", "first_known_user_slate_s"):
        row[key] = round(statistics.median(r[key] for r in runs), 3)
    row["ready_s_runs"] = [r["ready_s"] for r in runs]
    row["repeats"] = len(runs)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("demo_out/exported"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="Starts per worker count (the row is their median).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/startup.json"))
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    load_before = os.getloadavg()
    rows = []
    for workers in args.workers:
        runs = []
        for _ in range(args.repeat):
            runs.append(measure(args.models, workers))
            print(runs[-1], flush=True)
        rows.append(median_row(runs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figures = {"rows": rows, "models": str(args.models), "cpus": os.cpu_count(), "load_average": [load_before, os.getloadavg()],
               "machine": platform.platform()}
    args.out.write_text(json.dumps(figures, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
