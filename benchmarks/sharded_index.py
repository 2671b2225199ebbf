"""A sharded index against one index: recall@100 against exact search and single-query latency.

    .venv/bin/python benchmarks/sharded_index.py                  # 1M x 64 clustered, 4 shards
    .venv/bin/python benchmarks/sharded_index.py --items 200000

Clustered vectors (1,000 centres, unit-normalised) like real embeddings; queries are fresh points near
the centres. Both sides use the parameters `IndexParams.for_catalog` gives their size (each shard its
own), then 4 *exact* shards are checked against one exact index (identical top-100). Latency: single
queries through a tf.function (as inside the exported SavedModel), best of 3 rounds, p50/p99.
Writes benchmarks/results/sharded_index.json.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from vistaste.data.io import write_json
from vistaste.serving.index import IndexParams, build_index
from vistaste.serving.index_tuning import exact_rows, recall_at_k
from vistaste.serving.shards import build_sharded_index

HERE = Path(__file__).resolve().parent


def clustered(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, d))
    items = centres[rng.integers(0, 1000, n)] + 0.5 * rng.normal(size=(n, d))
    queries = centres[rng.integers(0, 1000, 500)] + 0.5 * rng.normal(size=(500, d))
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return items.astype(np.float32), queries.astype(np.float32)


def latency_ms(index, queries: np.ndarray, rounds: int = 3) -> tuple[float, float]:
    search = tf.function(lambda q: index(q)[0])
    singles = [tf.constant(queries[i:i + 1]) for i in range(len(queries))]
    search(singles[0])
    best = None
    for _ in range(rounds):
        times = []
        for q in singles:
            start = time.perf_counter()
            search(q)
            times.append((time.perf_counter() - start) * 1000)
        if best is None or np.median(times) < np.median(best):
            best = times
    return float(np.percentile(best, 50)), float(np.percentile(best, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "sharded_index.json")
    args = parser.parse_args()
    items, queries = clustered(args.items, args.dim, seed=0)
    ids = np.array([f"i{j}" for j in range(args.items)])
    exact = exact_rows(queries, items, args.k)
    row = {str(i): r for r, i in enumerate(ids)}
    results = {"items": args.items, "dim": args.dim, "shards": args.shards, "k": args.k, "queries": len(queries)}
    for name, build in (("one index", lambda: (build_index(ids, items, args.k), [0])),
                        (f"{args.shards} shards", lambda: build_sharded_index(ids, items, args.k, args.shards))):
        started = time.perf_counter()
        index, _ = build()
        build_s = time.perf_counter() - started
        found = index(tf.constant(queries))[1].numpy()
        rows = np.array([[row[b.decode()] for b in r] for r in found])
        p50, p99 = latency_ms(index, queries[:200])
        params = index.params if isinstance(index.params, list) else [index.params]
        results[name] = {"build_s": round(build_s, 2), "recall@100": round(float(recall_at_k(rows, exact).mean()), 4),
                         "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "params": [p.__dict__ for p in params]}
        print(f"{name}: recall@{args.k} {results[name]['recall@100']:.4f}, p50 {p50:.2f} ms, p99 {p99:.2f} ms, build {build_s:.1f} s "
              f"({params[0].mode})", flush=True)
    exact_one = build_index(ids, items, args.k, IndexParams("brute_force"))
    exact_sharded, _ = build_sharded_index(ids, items, args.k, args.shards, IndexParams("brute_force"))
    same = bool((exact_one(tf.constant(queries[:100]))[1].numpy() == exact_sharded(tf.constant(queries[:100]))[1].numpy()).all())
    results["exact_shards_identical_top_k"] = same
    results["p99_ratio_sharded_vs_one"] = round(results[f"{args.shards} shards"]["p99_ms"] / results["one index"]["p99_ms"], 2)
    results["targets"] = {"recall@100": 0.95, "p99_ratio": 2.0}
    results["machine"] = {"cpus": __import__("os").cpu_count(), "platform": platform.platform()}
    print(f"{args.shards} exact shards identical to one exact index: {same}; p99 sharded / one: {results['p99_ratio_sharded_vs_one']}")
    write_json(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
