"""Index parameters tuned to a target recall vs the fixed setting by catalog size, on clustered vectors.

    python benchmarks/index_tuning.py                      # 200k x 64, ~5 minutes on 2 cores
    python benchmarks/index_tuning.py --items 1000000     # the issue's 1M x 64 (too heavy for the 2-core CI VM)

Data: unit vectors (as the towers output) around ``--clusters`` random centres; tuning queries and
``--fresh`` held-out queries are fresh draws from the same clusters. For each searcher (ah, today's choice
at 200k; tree_ah with sqrt(n) leaves, today's choice past 250k) and each target recall@k: one build tuned by
``vistaste.serving.index_tuning.tune_index`` on 1,000 drawn queries (and once on synthetic queries: items plus
noise, what it uses without real ones). Reports the chosen leaves searched / re-scoring depth, recall on the
tuning sample and on the held-out queries (numpy brute force), single-query latency through the raw
searcher for the tuned and the fixed setting on the same index (alternated, best of 3 rounds: ratios in one
run are what compare), numpy brute force's latency, build and tuning seconds. "as fixed" tunes to the
fixed setting's own recall (less one standard error): the cost of today's recall when tuned.
Prints a table, writes benchmarks/results/index_tuning.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import vistaste  # noqa: F401
from vistaste.serving.index import IndexParams
from vistaste.serving.index_tuning import exact_rows, recall_at_k, tune_index


def clustered(n_items: int, dim: int, clusters: int, seed: int = 0):
    """Unit item vectors ``[n, dim]`` and a ``draw(n, seed)`` of queries from the same clusters."""
    centres = np.random.default_rng(seed).normal(size=(clusters, dim))

    def draw(n: int, draw_seed: int) -> np.ndarray:
        rng = np.random.default_rng(draw_seed)
        vectors = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)

    return draw(n_items, seed + 1), draw


def single_query_ms(searcher, queries: np.ndarray, k: int, settings: dict[str, tuple[int | None, int]], rounds: int = 3) -> dict:
    """Best-of-``rounds`` ms per single query for each named (leaves, reorder), the settings alternated each round."""
    singles = [tf.constant(q) for q in queries]
    best = {name: math.inf for name in settings}
    for _ in range(rounds):
        for name, (leaves, reorder) in settings.items():
            started = time.perf_counter()
            for query in singles:
                searcher.search(query, final_num_neighbors=k, pre_reorder_num_neighbors=reorder, leaves_to_search=leaves)
            best[name] = min(best[name], (time.perf_counter() - started) / len(singles) * 1e3)
    return {name: round(ms, 4) for name, ms in best.items()}


def exact_ms(items: np.ndarray, queries: np.ndarray, k: int) -> float:
    started = time.perf_counter()
    for query in queries:
        scores = items @ query
        np.argpartition(-scores, k - 1)[:k]
    return round((time.perf_counter() - started) / len(queries) * 1e3, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    parser.add_argument("--fresh", type=int, default=2000, help="Held-out queries the tuned recall is checked on.")
    parser.add_argument("--timed", type=int, default=200, help="Queries timed one at a time.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/index_tuning.json"))
    args = parser.parse_args()

    items, draw = clustered(args.items, args.dim, args.clusters)
    ids = np.arange(args.items).astype(str)
    tuning, fresh = draw(1000, 100), draw(args.fresh, 200)
    fresh_truth = exact_rows(fresh, items, args.k)
    brute_ms = exact_ms(items, fresh[:args.timed], args.k)
    leaves = int(math.sqrt(args.items))
    searchers = {"ah": IndexParams.for_catalog(args.items, args.k, mode="ah"),
                 "tree_ah": IndexParams.for_catalog(args.items, args.k, mode="tree_ah", num_leaves=leaves,
                                                    num_leaves_to_search=max(3 * leaves // 25, 10))}
    rows = []
    for mode, base in searchers.items():
        runs = [(target, tuning) for target in args.targets] + [(0.95, None), ("as fixed", tuning)]
        fixed_bar = None
        for target, queries in runs:
            goal = fixed_bar if target == "as fixed" else target
            index, report = tune_index(ids, items, args.k, goal, queries=queries, base=base)
            if fixed_bar is None:
                fixed_bar = round(report["fixed"]["recall"] - report["fixed"]["recall_stderr"], 4)
            chosen = (index.params.num_leaves_to_search if mode == "tree_ah" else None, index.params.reorder)
            fixed = (base.num_leaves_to_search if mode == "tree_ah" else None, base.reorder)
            searcher = index.searcher()
            ms = single_query_ms(searcher, fresh[:args.timed], args.k, {"tuned": chosen, "fixed": fixed})
            fresh_recall = {name: float(recall_at_k(index.search_rows(fresh, s[0], s[1], searcher=searcher), fresh_truth).mean())
                            for name, s in (("tuned", chosen), ("fixed", fixed))}
            row = {"searcher": mode, "target": goal, "target_label": str(target),
                   "tuning_queries": "drawn" if queries is not None else "synthetic",
                   "leaves": chosen[0], "reorder": chosen[1], "fixed_leaves": fixed[0], "fixed_reorder": fixed[1],
                   "num_leaves": base.num_leaves or None, "recall_tuning": report["recall"], "recall_stderr": report["recall_stderr"],
                   "recall_fresh": round(fresh_recall["tuned"], 4), "fixed_recall_fresh": round(fresh_recall["fixed"], 4),
                   "ms_tuned": ms["tuned"], "ms_fixed": ms["fixed"], "speedup_vs_fixed": round(ms["fixed"] / ms["tuned"], 2),
                   "ms_exact_numpy": brute_ms, "build_s": report["build_seconds"], "tune_s": report["tune_seconds"],
                   "searches": report["searches"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    columns = ["searcher", "target_label", "tuning_queries", "leaves", "reorder", "recall_tuning", "recall_fresh", "ms_tuned",
               "fixed_leaves", "fixed_reorder", "fixed_recall_fresh", "ms_fixed", "speedup_vs_fixed", "ms_exact_numpy", "build_s", "tune_s",
               "searches"]
    print()
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"items": args.items, "dim": args.dim, "clusters": args.clusters, "k": args.k, "rows": rows,
                                    "note": "200k x 64 by default: the issue's 1M x 64 is too heavy for this 2-core machine",
                                    "cpus": os.cpu_count(), "machine": platform.platform()}, indent=2))


if __name__ == "__main__":
    main()
