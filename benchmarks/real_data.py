"""Real interaction data: vistaste's two-tower beside the baselines practitioners use, on public logs.

    .venv/bin/python benchmarks/real_data.py                       # MovieLens-100K, both protocols, 3 seeds
    .venv/bin/python benchmarks/real_data.py --protocols fraction --seeds 1

Dataset: MovieLens-100K (943 users, 1,682 movies, 100k timestamped ratings; every rating read as a
click), obtained from the ``recbole`` wheel on PyPI (see ``vistaste.data.public``; GroupLens's license
forbids redistribution, so it is written under the ignored ``benchmarks/.work/``, never committed).
Items are known by ``item_vectors.parquet`` built from their metadata (genre multi-hot + release
decade) and their genres as tags: no images exist.

Protocols: ``fraction`` (global temporal split, the last 20% of positives as test, validation the last
10% before) and ``leave-last`` (each user's last positive as test, the one before as validation). For
each seed: ``vistaste train`` with its defaults (plus the same without logQ), then ``evaluate`` with
every baseline (settings chosen on validation). Prints mean ± std over seeds for the warm-user slice
and writes ``benchmarks/results/real_data.json``.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from vistaste.data.io import write_json
from vistaste.data.public import LICENSE_NOTE, fetch_movielens_100k
from vistaste.towers.config import TrainConfig
from vistaste.towers.evaluation import evaluate
from vistaste.towers.training import train

HERE = Path(__file__).resolve().parent
PROTOCOLS = {"fraction": {"test_fraction": 0.2}, "leave-last": {"leave_last": 1}}
COLUMNS = ("ndcg@10", "recall@10", "recall@50", "coverage@10", "coverage@50")


def run(work: Path, protocols: list[str], seeds: list[int], log=print) -> dict:
    data = fetch_movielens_100k(work / "ml-100k", cache_dir=work / "wheels")
    runs = []
    for protocol in protocols:
        for seed in seeds:
            started = time.perf_counter()
            models, trends = {}, {}
            for name, logq in (("vistaste two-tower", True), ("vistaste two-tower without logQ", False)):
                config = TrainConfig(seed=seed, logq_correction=logq, **PROTOCOLS[protocol])
                out = work / "models" / f"{protocol}-{seed}-{'logq' if logq else 'nologq'}"
                trained = train(data, out, config, verbose=False)
                models[name] = out
                trends[name] = {k: v for k, v in trained.history["trend"].items() if k != "validation"}
                log(f"{protocol} seed {seed}: {name} trained ({trained.history['best_epoch']} epochs chosen on validation)")
            results = evaluate(data, models, seed=seed, log=lambda *a: None)
            seconds = time.perf_counter() - started
            runs.append({"protocol": protocol, "seed": seed, "seconds": seconds, "results": results, "trend_boost": trends})
            warm = results["slices"]["warm users"]
            log(f"{protocol} seed {seed}: {warm['users']} warm users; nDCG@10 " + ", ".join(
                f"{m} {v['ndcg@10']:.4f}" for m, v in warm["methods"].items()) + f" ({seconds:.0f} s)")
    return {"dataset": "MovieLens-100K", "license": LICENSE_NOTE, "protocols": {p: PROTOCOLS[p] for p in protocols}, "seeds": seeds,
            "machine": {"python": platform.python_version(), "processor": platform.processor(), "cpus": __import__("os").cpu_count()},
            "runs": runs, "summary": summarise(runs)}


def summarise(runs: list[dict]) -> dict:
    """{protocol: {slice: {method: {metric: [mean, std]}}}} over seeds."""
    out: dict = {}
    for protocol in sorted({r["protocol"] for r in runs}):
        mine = [r["results"] for r in runs if r["protocol"] == protocol]
        out[protocol] = {}
        for slice_name in mine[0]["slices"]:
            blocks = [r["slices"][slice_name] for r in mine if slice_name in r["slices"]]
            # A row absent in a seed (no boost chosen there) is averaged over the seeds that have it.
            methods = list(dict.fromkeys(m for b in blocks for m in b["methods"]))
            out[protocol][slice_name] = {"users": [b["users"] for b in blocks]}
            for method in methods:
                values = {c: [b["methods"][method][c] for b in blocks if method in b["methods"]] for c in COLUMNS}
                out[protocol][slice_name][method] = {c: [float(np.mean(v)), float(np.std(v))] for c, v in values.items()}
    return out


def table(summary: dict, protocol: str, slice_name: str = "warm users") -> pd.DataFrame:
    block = summary[protocol][slice_name]
    rows = {m: {c: f"{v[c][0]:.4f} ± {v[c][1]:.4f}" for c in COLUMNS} for m, v in block.items() if m != "users"}
    return pd.DataFrame(rows).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--seeds", type=int, default=3, help="Number of seeds (0..N-1).")
    parser.add_argument("--seed-values", default=None, help="Comma-separated seeds to run instead (e.g. 1,2).")
    parser.add_argument("--merge", type=Path, default=None,
                        help="An earlier result file whose runs (other seeds) join this one's in the summary and the output.")
    parser.add_argument("--work", type=Path, default=HERE / ".work", help="Where the dataset and models go (ignored by git).")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "real_data.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seed_values.split(",")] if args.seed_values else list(range(args.seeds))
    report = run(args.work, args.protocols, seeds)
    if args.merge:  # earlier seeds, run before (their results already trimmed as below)
        import json

        earlier = [r for r in json.loads(args.merge.read_text())["runs"] if r["protocol"] in args.protocols and r["seed"] not in seeds]
        report["runs"] = sorted(earlier + report["runs"], key=lambda r: (r["protocol"], r["seed"]))
        report["seeds"] = sorted({r["seed"] for r in report["runs"]})
        report["summary"] = summarise(report["runs"])
    args.seeds = len(report["seeds"])
    for protocol in args.protocols:
        users = report["summary"][protocol]["warm users"]["users"]
        print(f"\n{report['dataset']}, {report['runs'][0]['results']['split']['protocol'] if protocol == args.protocols[0] else protocol}: "
              f"warm users {users}, mean ± std over {args.seeds} seed(s)")
        print(table(report["summary"], protocol).to_markdown())
    for run_ in report["runs"]:
        run_["results"] = {k: run_["results"][k] for k in ("split", "protocol", "slices", "baseline_settings", "test_users_total")}
    write_json(report, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
