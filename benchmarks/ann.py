"""ScaNN vs exact brute force inside the exported model, at several catalog sizes.

    python benchmarks/ann.py --sizes 10000 100000 1000000

For each size: a --no-images world (attribute vectors stand in for pixels), a one-epoch model, then
two exports of the same model: ScaNN with parameters chosen by catalog size, and exact brute force.
Reports recall@100 of ScaNN against exact, queries/s (single and batched, through the SavedModel
signature, user tower included; and single queries through each model's index alone), index build
time and model size. Prints a table, writes
benchmarks/results/ann.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import vistaste  # noqa: F401
from vistaste.bench.world import WorldConfig, generate_world
from vistaste.serving.export import export
from vistaste.serving.index import IndexParams
from vistaste.towers.training import TrainConfig, train


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def _histories(item_ids: np.ndarray, n: int, length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return item_ids[rng.integers(0, len(item_ids), (n, length))]


def bench_size(n_items: int, work: Path, queries: int, k: int, repeats: int = 3) -> dict:
    world = work / f"world-{n_items}"
    if not (world / "catalog.parquet").exists():
        generate_world(world, WorldConfig(items=n_items, users=300, days=6, seed=1, images=False, launch_share=1.0), progress=False)
    model = work / f"model-{n_items}"
    if not (model / "config.json").exists():
        train(world, model, TrainConfig(epochs=1, test_days=1, min_val_users=1), verbose=False)
    root = work / f"export-{n_items}"
    shutil.rmtree(root, ignore_errors=True)
    params = IndexParams.for_catalog(n_items, k)
    t0 = time.perf_counter()
    ann_dir = export(model, world, root, k=k, params=params, version="1")
    ann_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact_dir = export(model, world, root, k=k, params=IndexParams("brute_force"), version="2")
    exact_seconds = time.perf_counter() - t0
    ann_model, exact_model = (tf.saved_model.load(str(d / "saved_model")) for d in (ann_dir, exact_dir))
    # The model's own ranking (``candidates``: no trend boost, nothing excluded), so the figures are the index's.
    def by_history(model):
        signature = model.signatures["candidates"]
        return lambda user_id, history: signature(user_id=user_id, history=history, exclude=tf.fill([tf.shape(history)[0], 1], ""),
                                                  k=tf.constant(k))

    ann, exact = (by_history(m) for m in (ann_model, exact_model))
    items = np.load(ann_dir / "items.npz")
    item_ids = items["ids"]
    history = _histories(item_ids, queries, 10, seed=n_items)
    users = tf.constant([f"bench{i}" for i in range(queries)])
    # Single queries are built before timing, so the loop times the model, not the harness's slicing.
    singles = [(users[i:i + 1], tf.constant(history[i:i + 1])) for i in range(queries)]

    def run(signature, batched: bool):
        if batched:
            start = time.perf_counter()
            out = signature(user_id=users, history=tf.constant(history))
            return out, queries / (time.perf_counter() - start)
        start = time.perf_counter()
        for user, hist in singles:
            signature(user_id=user, history=hist)
        return None, queries / (time.perf_counter() - start)

    for signature in (ann, exact):  # warm up
        signature(user_id=users[:2], history=tf.constant(history[:2]))
    ann_out, ann_batched_qps = run(ann, True)
    exact_out, exact_batched_qps = run(exact, True)
    # Alternate the two models for a few rounds and keep each one's best: this shared 2-core VM's noise
    # otherwise shows as +-20% between identical brute-force models.
    rounds = [(run(ann, False)[1], run(exact, False)[1]) for _ in range(repeats)]
    ann_single_qps, exact_single_qps = max(r[0] for r in rounds), max(r[1] for r in rounds)
    found, truth = ann_out["item_ids"].numpy(), exact_out["item_ids"].numpy()
    recall = float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))

    # The retrieval stage alone (the index inside each SavedModel, on query vectors near the users'
    # histories): what ScaNN replaces. The user tower costs the same in both models and, at ~1-1.5 ms
    # per single query, bounds the end-to-end speed-up.
    rows = {item: r for r, item in enumerate(item_ids)}
    vectors = items["vectors"][np.vectorize(rows.get)(history)].mean(axis=1)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    single_vectors = [tf.constant(vectors[i:i + 1]) for i in range(queries)]
    stage_qps = {"scann": 0.0, "exact": 0.0}
    for _ in range(repeats):
        for name, model in (("scann", ann_model), ("exact", exact_model)):
            model.index(single_vectors[0])
            start = time.perf_counter()
            for vector in single_vectors:
                model.index(vector)
            stage_qps[name] = max(stage_qps[name], queries / (time.perf_counter() - start))
    card = json.loads((ann_dir / "model_card.json").read_text())
    return {
        "items": n_items, "index": params.mode, "num_leaves": params.num_leaves, "leaves_searched": params.num_leaves_to_search,
        "reorder": params.reorder,
        "recall@100_vs_exact": round(recall, 4),
        "scann_qps_single": round(ann_single_qps, 1), "exact_qps_single": round(exact_single_qps, 1),
        "speedup_single": round(ann_single_qps / exact_single_qps, 2),
        "index_only_scann_qps_single": round(stage_qps["scann"], 1), "index_only_exact_qps_single": round(stage_qps["exact"], 1),
        "index_only_speedup_single": round(stage_qps["scann"] / stage_qps["exact"], 2),
        "scann_qps_batched": round(ann_batched_qps, 1), "exact_qps_batched": round(exact_batched_qps, 1),
        "speedup_batched": round(ann_batched_qps / exact_batched_qps, 2),
        "scann_index_build_s": round(card["index"]["build_seconds"], 2), "scann_export_s": round(ann_seconds, 1),
        "exact_export_s": round(exact_seconds, 1),
        "scann_model_mb": round(_size_mb(ann_dir / "saved_model"), 1), "exact_model_mb": round(_size_mb(exact_dir / "saved_model"), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="Timing rounds per model (best kept).")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.work/ann"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        rows.append(bench_size(n, args.work, args.queries, args.k, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    columns = ["items", "index", "recall@100_vs_exact", "scann_qps_single", "exact_qps_single", "speedup_single",
               "index_only_speedup_single", "scann_qps_batched",
               "exact_qps_batched", "speedup_batched", "scann_index_build_s", "scann_model_mb", "exact_model_mb"]
    print()
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    results = Path("benchmarks/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / "ann.json").write_text(json.dumps({"rows": rows, "cpus": os.cpu_count(), "machine": platform.platform()}, indent=2))


if __name__ == "__main__":
    main()
