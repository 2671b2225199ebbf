"""One query at a time: raw ScaNN, the exported SavedModel and FAISS HNSW, side by side, at several catalog sizes.

    python benchmarks/ann.py --sizes 10000 100000 1000000          # needs faiss-cpu: pip install -e '.[bench]'

For each size: a --no-images world (attribute vectors stand in for pixels), a one-epoch model and its export
(``--setting tuned``: as shipped, leaves searched and re-scoring depth tuned at export to recall@100 0.95;
``fixed``: the parameters chosen by catalog size alone, the setting before tuning). Then, on the same query
vectors (the exported user tower's, for random 10-item histories), single queries timed one at a time:

- ``raw_scann``: the exported model's own ScaNN index (its saved searcher state, so the same partitions and
  codes, loaded into scann's pybind searcher by ``vistaste.serving.index.DirectIndex``) called directly from
  Python with the model's k, leaves searched and re-scoring depth: what the index costs with nothing around it;
- ``served_index``: the retrieval stage as served (``Recommender.index_candidates``: that searcher, then the
  seen-item exclusion and ranking of the ``candidates`` signature, in numpy), from a query vector;
- ``exported``: the same stage inside the SavedModel, its ``candidates_by_query`` signature (query vector -> top
  k: the index op, the exclusion, the ranking and the packed outputs);
- a user's whole query, tower included: ``exported_tower`` (``user_embedding``), ``exported_full`` (the
  ``candidates`` signature), ``served`` (``Recommender.candidates`` as served: tower signature + ``served_index``)
  and ``served_signature`` (``Recommender.candidates`` through the ``candidates`` signature, ``direct_index=False``);
- ``hnsw``: FAISS ``IndexHNSWFlat`` (inner product), ``efSearch`` swept; compared at the smallest ``efSearch``
  whose recall@100 reaches the ScaNN index's;
- ``exact``: brute force (one matrix product and a top-k in TensorFlow), the reference every recall is against.

Latency: a warm-up pass, then ``--rounds`` rounds in which every method runs every query once, in turn; each
round's p50 and p99 per method, and the median of those over rounds. Ratios are of p50s measured in the same rounds.
Checked on every query: the SavedModel's top k is raw ScaNN's, and ``served`` returns ``served_signature``'s list.
Prints a table, writes benchmarks/results/ann.json.
"""
from __future__ import annotations

import argparse
import copy
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
from vistaste.serving.index_tuning import exact_rows, recall_at_k
from vistaste.serving.recommender import Recommender
from vistaste.towers.training import TrainConfig, train

try:
    import faiss
except ImportError as exc:  # a benchmark-only dependency
    raise SystemExit("benchmarks/ann.py needs faiss-cpu: pip install -e '.[bench]'") from exc

EF_SEARCH = (100, 120, 140, 160, 200, 240, 320, 400, 512, 768, 1024)  # HNSW returns min(ef, k) results: ef >= k
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 64


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def time_rounds(methods: dict, n_queries: int, rounds: int) -> dict:
    """{method: (p50 ms, p99 ms)}, medians over rounds; ``methods``: {name: (fn(i), queries to time)}.
    Every method runs once over its queries as warm-up, then once per round, methods in turn."""
    for fn, count in methods.values():
        for i in range(min(count, n_queries)):
            fn(i)
    per_round = {name: [] for name in methods}
    for _ in range(rounds):
        for name, (fn, count) in methods.items():
            times = np.empty(min(count, n_queries))
            for i in range(len(times)):
                start = time.perf_counter()
                fn(i)
                times[i] = time.perf_counter() - start
            per_round[name].append((np.percentile(times, 50) * 1e3, np.percentile(times, 99) * 1e3))
    return {name: tuple(round(float(np.median([r[j] for r in values])), 4) for j in (0, 1)) for name, values in per_round.items()}


def build_world(n_items: int, work: Path) -> tuple[Path, Path]:
    world = work / f"world-{n_items}"
    if not (world / "catalog.parquet").exists():
        generate_world(world, WorldConfig(items=n_items, users=300, days=6, seed=1, images=False, launch_share=1.0), progress=False)
    model = work / f"model-{n_items}"
    if not (model / "config.json").exists():
        train(world, model, TrainConfig(epochs=1, test_days=1, min_val_users=1), verbose=False)
    return world, model


def bench_size(n_items: int, work: Path, settings: list[str], n_queries: int, k: int, rounds: int, exact_queries: int) -> list[dict]:
    world, model = build_world(n_items, work)
    shared, rows = None, []
    for setting in settings:
        root = work / f"export-{n_items}-{setting}"
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        version = export(model, world, root, k=k, params=IndexParams.for_catalog(n_items, k) if setting == "fixed" else None, version="1")
        export_seconds = time.perf_counter() - started
        served = Recommender(version)  # as `vistaste serve` loads it: the index searched directly (DirectIndex)
        # The same queries, exact answers and HNSW index for every setting (one model: the same user tower).
        shared = shared or _shared(version, served.model.signatures["user_embedding"], n_queries, k)
        rows.append(bench_setting(served, version, setting, shared, k, rounds, exact_queries))
        rows[-1].update(items=n_items, export_s=round(export_seconds, 1))
        print(json.dumps({key: value for key, value in rows[-1].items() if key != "hnsw"}), flush=True)
    return rows


def _shared(version: Path, tower, n_queries: int, k: int) -> dict:
    """Query vectors (the exported user tower's, for random 10-item histories of unknown users), the exact top ``k``
    of each, and FAISS HNSW over the item vectors with its recall per efSearch."""
    items = np.load(version / "items.npz")
    item_ids, item_vectors = items["ids"].astype(str), items["vectors"].astype(np.float32)
    rng = np.random.default_rng(len(item_ids))
    histories = item_ids[rng.integers(0, len(item_ids), (n_queries, 10))]
    users = np.array([f"bench{i}" for i in range(n_queries)])
    queries = tower(user_id=tf.constant(users), history=tf.constant(histories))["embedding"].numpy()
    started = time.perf_counter()
    truth = exact_rows(queries, item_vectors, k)
    exact_seconds = time.perf_counter() - started
    hnsw, hnsw_report = bench_hnsw(item_vectors, queries, truth, k)
    return {"item_ids": item_ids, "row_of": {item: r for r, item in enumerate(item_ids)}, "users": users, "histories": histories,
            "queries": queries, "truth": truth, "hnsw": hnsw,
            "hnsw_report": {**hnsw_report, "exact_all_queries_s": round(exact_seconds, 2)},
            "singles": [(tf.constant(users[i:i + 1]), tf.constant(histories[i:i + 1])) for i in range(n_queries)],
            "single_vectors": [tf.constant(queries[i:i + 1]) for i in range(n_queries)],
            "numpy_vectors": [np.ascontiguousarray(q) for q in queries], "tf_items": tf.constant(item_vectors)}


def bench_setting(served: Recommender, version: Path, setting: str, shared: dict, k: int, rounds: int, exact_queries: int) -> dict:
    card = json.loads((version / "model_card.json").read_text())["index"]
    by_query, tower, full = (served.model.signatures[s] for s in ("candidates_by_query", "user_embedding", "candidates"))
    through = copy.copy(served)  # the same loaded version, every query through the `candidates` signature
    through.direct_index = None
    users, histories, truth, hnsw = shared["users"], shared["histories"], shared["truth"], shared["hnsw"]
    singles, single_vectors, numpy_vectors, tf_items = (shared[key] for key in ("singles", "single_vectors", "numpy_vectors", "tf_items"))
    n_queries = len(users)
    nothing, k_tensor = tf.constant([[""]]), tf.constant(k)
    # Raw ScaNN: the model's own index (DirectIndex loads its saved searcher state into scann's pybind searcher), searched
    # as the model searches it: its k, leaves searched and re-scoring depth (-1: the searcher's own).
    raw, index_k = served.direct_index.searcher, card["index_k"]
    leaves = card["num_leaves_to_search"] if card["mode"] == "tree_ah" else -1
    reorder = card["reorder"] if card["mode"] != "brute_force" and card["reorder"] else -1
    raw_rows = np.stack([raw.search(q, index_k, reorder, leaves)[0] for q in numpy_vectors])[:, :k]
    exported_ids = np.concatenate([by_query(query=v, exclude=nothing, k=k_tensor)["item_ids"].numpy() for v in single_vectors]).astype(str)
    exported_rows = np.vectorize(shared["row_of"].get)(exported_ids)
    served_ids = [served.candidates(u, list(h), (), k)[0].ids.tolist() for u, h in zip(users, histories)]
    through_ids = [through.candidates(u, list(h), (), k)[0].ids.tolist() for u, h in zip(users, histories)]
    recall = float(recall_at_k(raw_rows, truth).mean())
    sweep = shared["hnsw_report"]["sweep"]
    ef = _matching_ef(sweep, recall)
    hnsw.hnsw.efSearch = ef or EF_SEARCH[-1]
    faiss.omp_set_num_threads(1)  # one query, one thread, like ScaNN's single search
    methods = {
        "raw_scann": (lambda i: raw.search(numpy_vectors[i], index_k, reorder, leaves), n_queries),
        "served_index": (lambda i: served.index_candidates(numpy_vectors[i], (), k), n_queries),
        "exported": (lambda i: by_query(query=single_vectors[i], exclude=nothing, k=k_tensor), n_queries),
        "exported_tower": (lambda i: tower(user_id=singles[i][0], history=singles[i][1]), n_queries),
        "exported_full": (lambda i: full(user_id=singles[i][0], history=singles[i][1], exclude=nothing, k=k_tensor), n_queries),
        "served": (lambda i: served.candidates(users[i], list(histories[i]), (), k), n_queries),
        "served_signature": (lambda i: through.candidates(users[i], list(histories[i]), (), k), n_queries),
        "hnsw": (lambda i: hnsw.search(numpy_vectors[i][None], k), n_queries),
        "exact": (lambda i: tf.math.top_k(tf.matmul(single_vectors[i], tf_items, transpose_b=True), k), exact_queries),
    }
    latency = time_rounds(methods, n_queries, rounds)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    p50 = {name: value[0] for name, value in latency.items()}
    return {
        "setting": setting, "index": card["mode"], "num_leaves": card["num_leaves"], "leaves_searched": card["num_leaves_to_search"],
        "reorder": card["reorder"], "index_k": index_k, "queries": n_queries,
        "recall@100_raw_scann": round(recall, 4),
        "recall@100_exported": round(float(recall_at_k(exported_rows, truth).mean()), 4),
        "exported_equals_raw_top_k": round(float(np.mean([set(a) == set(b) for a, b in zip(exported_rows, raw_rows)])), 4),
        "served_equals_signature": round(float(np.mean([a == b for a, b in zip(served_ids, through_ids)])), 4),
        "hnsw_ef_search": ef, "recall@100_hnsw": sweep[str(ef)]["recall"] if ef else None,
        **{f"{name}_p50_ms": value for name, value in p50.items()},
        **{f"{name}_p99_ms": p99 for name, (_, p99) in latency.items()},
        "served_index_over_raw": round(p50["served_index"] / p50["raw_scann"], 2),
        "exported_over_raw": round(p50["exported"] / p50["raw_scann"], 2),
        "served_over_served_signature": round(p50["served"] / p50["served_signature"], 2),
        "hnsw_over_served_index": round(p50["hnsw"] / p50["served_index"], 2),
        "hnsw_over_exported": round(p50["hnsw"] / p50["exported"], 2),
        "hnsw_over_raw": round(p50["hnsw"] / p50["raw_scann"], 2),
        "exact_over_served_index": round(p50["exact"] / p50["served_index"], 2),
        "index_build_s": round(card["build_seconds"], 2), "model_mb": round(_size_mb(version / "saved_model"), 1),
        "tuning": ({key: card["tuning"].get(key) for key in ("recall", "recall_by_source", "ms_per_query", "fixed")}
                   if card.get("tuning") else None),
        "hnsw": shared["hnsw_report"],
    }


def bench_hnsw(item_vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int):
    """FAISS HNSW (inner product) over the item vectors, and recall@k against exact search per ``efSearch``."""
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index = faiss.IndexHNSWFlat(item_vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    started = time.perf_counter()
    index.add(item_vectors)
    build = time.perf_counter() - started
    sweep = {}
    for ef in EF_SEARCH:
        index.hnsw.efSearch = ef
        _, found = index.search(queries, k)
        sweep[str(ef)] = {"recall": round(float(recall_at_k(found, truth).mean()), 4)}
    return index, {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "build_s": round(build, 1), "sweep": sweep}


def _matching_ef(sweep: dict, recall: float) -> int | None:
    """The smallest efSearch whose recall reaches ``recall`` (None: none of the sweep does)."""
    return next((int(ef) for ef, r in sweep.items() if r["recall"] >= recall), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--settings", nargs="+", choices=["tuned", "fixed"], default=["tuned", "fixed"])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--exact-queries", type=int, default=100, help="Single queries timed for brute force (slow at 1M).")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="Timing rounds; each method's p50/p99 is the median over rounds.")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.work/ann"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ann.json"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        rows.extend(bench_size(n, args.work, args.settings, args.queries, args.k, args.rounds, args.exact_queries))
    columns = ["items", "setting", "index", "recall@100_raw_scann", "recall@100_hnsw", "hnsw_ef_search", "raw_scann_p50_ms",
               "served_index_p50_ms", "exported_p50_ms", "hnsw_p50_ms", "exact_p50_ms", "exported_tower_p50_ms", "served_p50_ms",
               "served_signature_p50_ms", "served_index_over_raw", "exported_over_raw", "hnsw_over_served_index", "hnsw_over_exported"]
    print()
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    args.out.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count(), "machine": platform.platform(), "load_average_at_end": load,
                                    "faiss": faiss.__version__}, indent=2))


if __name__ == "__main__":
    main()
